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
import threading
import time
from pathlib import Path

import httpx

from finrec.governance.registry import Registry
from finrec.serve_process import ServerProcess

CLIENTS = 16
RESULTS = Path(__file__).resolve().parent / "results" / "rollout.json"


class Clients:
    def __init__(self, base_url: str, customer_ids: list[str]):
        self.base_url, self.customer_ids = base_url, customer_ids
        self.answers: list[list[tuple[float, object, str | None]]] = [[] for _ in range(CLIENTS)]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def _run(self, number: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10.0) as client:
            i = number
            while not self.stop.is_set():
                body = {"customer_id": self.customer_ids[i % len(self.customer_ids)], "k": 5}
                i += CLIENTS
                try:
                    response = client.post("/recommendations", json=body)
                    version = response.json().get("model_version") if response.status_code == 200 else None
                    self.answers[number].append((time.monotonic(), response.status_code, version))
                except Exception as exc:  # noqa: BLE001 - a failed request
                    self.answers[number].append((time.monotonic(), type(exc).__name__, None))

    def switch_time(self, version: str, since: float, timeout: float = 60.0) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            firsts = []
            for answers in self.answers:
                seen = next((t for t, _, v in reversed(answers) if t >= since and v == version), None)
                if seen is None:
                    break
                firsts.append(min(t for t, _, v in answers if t >= since and v == version))
            else:
                return max(firsts) - since
            time.sleep(0.05)
        return None


def wait_for_log(server: ServerProcess, text: str, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while server.log_text().count(text) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in the log: {server.log_text()[-1500:]}")
        time.sleep(0.1)


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
            clients = Clients(server.base_url, ids)
            for thread in clients.threads:
                thread.start()
            try:
                wait_for_log(server, f"version {v3} loaded as a standby", 1)
                for _ in range(args.repeats):
                    since = time.monotonic()
                    registry.promote(v3)
                    timings["promote (warm)"].append(clients.switch_time(v3, since))
                    time.sleep(args.settle)  # v1, replaced, loads as the rollback standby
                    since = time.monotonic()
                    registry.rollback()
                    timings["rollback (warm)"].append(clients.switch_time(v1, since))
                    time.sleep(args.settle)
                    # v2 is neither the newest nor the rollback target: not kept loaded
                    since = time.monotonic()
                    registry.promote(v2)
                    timings["promote (cold)"].append(clients.switch_time(v2, since))
                    time.sleep(args.settle)
                    registry.rollback()  # back to v1 with the stack as it began: v2 stays cold next time
                    clients.switch_time(v1, time.monotonic())
                    time.sleep(args.settle)
            finally:
                clients.stop.set()
                for thread in clients.threads:
                    thread.join(timeout=30)
        answers = [a for per_client in clients.answers for a in per_client]
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
