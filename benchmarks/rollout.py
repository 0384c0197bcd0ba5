"""Safe roll-out under load: how long a promotion and a rollback take to reach every client of a
real ``finrec serve --root`` process, and how many requests fail meanwhile.

16 client threads (127.0.0.1 only, one ``httpx.Client`` each) post recommendations back to back.
The registry holds three versions (the same model copied in three times: what is measured is the
switch, not the model). Three switches are timed:

- ``promote (warm)``: promote the newest version, which the server keeps loaded as a standby;
- ``rollback (warm)``: roll back to the version it replaced, kept loaded for that;
- ``promote (cold)``: promote a version that is not kept loaded (it loads on demand first).

A switch's time is from the pointer write until every client has had an answer from the new
version. ``--repeats`` repeats the whole cycle; ``--settle`` seconds after each switch let the
server load its standbys.

    PYTHONPATH=src .venv/bin/python benchmarks/rollout.py --model DIR --data DIR [--repeats 3]

Prints a table and writes benchmarks/results/rollout.json. The clients run on the same machine
as the server and compete with it for the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from finrec.governance.registry import Registry
from finrec.serve_clients import CLIENTS, Clients, wait_for_log
from finrec.serve_process import ServerProcess

SWITCH_TIMEOUT = 60.0
RESULTS = Path(__file__).resolve().parent / "results" / "rollout.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after a switch for the standbys to load")
    args = parser.parse_args()
    from finrec.data.io import load_dataset

    ids = load_dataset(args.data, require_interactions=False).customers.iloc[:, 0].astype(str).tolist()[:2000]
    timings: dict[str, list[float]] = {"promote (warm)": [], "rollback (warm)": [], "promote (cold)": []}
    total = failed = 0
    with tempfile.TemporaryDirectory(prefix="finrec-rollout-") as tmp:
        registry = Registry(Path(tmp) / "reg")
        v1, v2, v3 = (registry.add(args.model) for _ in range(3))
        registry.promote(v1)
        with ServerProcess(None, args.data, Path(tmp) / "server.log", root=registry.root) as server:
            server.wait_ready()
            with Clients(server.base_url, ids, k=5) as clients:
                wait_for_log(server, f"version {v3} loaded as a standby")
                for _ in range(args.repeats):
                    since = time.monotonic()
                    registry.promote(v3)
                    timings["promote (warm)"].append(clients.wait_for(v3, since, SWITCH_TIMEOUT))
                    time.sleep(args.settle)  # v1, replaced, loads as the rollback standby
                    since = time.monotonic()
                    registry.rollback()
                    timings["rollback (warm)"].append(clients.wait_for(v1, since, SWITCH_TIMEOUT))
                    time.sleep(args.settle)
                    # v2 is neither the newest nor the rollback target: not kept loaded
                    since = time.monotonic()
                    registry.promote(v2)
                    timings["promote (cold)"].append(clients.wait_for(v2, since, SWITCH_TIMEOUT))
                    time.sleep(args.settle)
                    registry.rollback()  # back to v1 with the stack as it began: v2 stays cold next time
                    clients.wait_for(v1, time.monotonic(), SWITCH_TIMEOUT)
                    time.sleep(args.settle)
        answers = clients.all()
        total, failed = len(answers), sum(1 for _, status, _ in answers if status != 200)
    print(f"{CLIENTS} clients, {total} requests, {failed} failed")
    print(f"{'switch':<18}{'median s':>10}{'max s':>9}  all")
    rows = {}
    for name, values in timings.items():
        known = [v for v in values if v is not None]
        rows[name] = {
            "seconds": values,
            "median": statistics.median(known) if known else None,
            "max": max(known) if known else None,
        }
        print(
            f"{name:<18}{rows[name]['median'] or float('nan'):>10.2f}{rows[name]['max'] or float('nan'):>9.2f}  "
            + ", ".join("-" if v is None else f"{v:.2f}" for v in values)
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "clients": CLIENTS,
                "requests": total,
                "failed": failed,
                "switches": rows,
                "repeats": args.repeats,
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "platform": platform.platform(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
