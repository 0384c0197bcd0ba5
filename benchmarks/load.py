"""Latency of the REST API under concurrent clients, against a real ``finrec serve`` process.

Starts the server as a subprocess on 127.0.0.1 (loopback only), waits for ``/ready``, then for
each concurrency level runs up to ``--requests`` ``POST /recommendations`` (and at most
``--time-cap`` seconds), one thread with its own ``httpx.Client`` (keep-alive) per client. The
mix: known customers by id, drawn at random (no filter, conservative, categories, risk_tolerant;
k 3-10); then one more level (16 clients) where one request in ten is by features (a new customer
with holdings), the slow path. The server is stopped by its PID.

    .venv/bin/python benchmarks/load.py [--model DIR --data DIR] [--levels 1 16 64] [--requests 2000]

Without ``--model``/``--data`` it generates an 8000-customer bank and trains 3 epochs in a
temporary directory first. Prints a table and writes benchmarks/results/load.json.

The load generator runs on the same machine as the server and competes with it for the CPU
(and the clients' own Python/GIL time is inside the measured latency), so the numbers are an
upper bound on what the server alone would show on these cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from finrec.serve_process import ServerProcess

RESULTS = Path(__file__).parent / "results" / "load.json"
P99_TARGET_MS = 20.0
TARGET_CLIENTS = 16


def cli(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "finrec.cli", *args], check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )


def build_model(workdir: Path, customers: int, epochs: int) -> tuple[Path, Path]:
    data, model = workdir / "bank", workdir / "model"
    print(f"generating {customers} customers and training {epochs} epochs in {workdir} ...", flush=True)
    cli("generate", "--out", str(data), "--customers", str(customers))
    cli("train", "--data", str(data), "--out", str(model), "--epochs", str(epochs))
    return model, data


def request_bodies(
    customer_ids: list[str], product_ids: list[str], n: int, features_share: float = 0.0, seed: int = 0
) -> list[dict]:
    rng = random.Random(seed)
    filters = [
        None,
        {"preset": "conservative"},
        {"include_categories": ["investment_fund", "savings_account"]},
        {"preset": "risk_tolerant", "exclude_held": True},
    ]
    bodies = []
    for _ in range(n):
        body: dict = {"k": rng.choice([3, 5, 5, 10])}
        if rng.random() < features_share:
            body["features"] = {
                "age": rng.randint(18, 80),
                "income": round(rng.uniform(12_000, 150_000)),
                "savings": rng.randint(0, 200_000),
                "credit_score": rng.randint(450, 850),
                "risk_tolerance": rng.randint(1, 7),
                "region": "north",
                "employment": "employed",
                "holdings": rng.sample(product_ids, 2),
            }
        else:
            body["customer_id"] = rng.choice(customer_ids)
        chosen = rng.choice(filters)
        if chosen is not None:
            body["filters"] = chosen
        bodies.append(body)
    return bodies


def run_level(base: str, clients: int, bodies: list[dict], max_requests: int, time_cap: float) -> dict:
    counter = itertools.count()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    deadline = [0.0]

    def worker(i: int) -> None:
        with httpx.Client(base_url=base, timeout=10.0) as client:
            client.get("/health")  # open the keep-alive connection outside the measurement
            barrier.wait()
            while True:
                n = next(counter)
                if n >= max_requests or time.perf_counter() > deadline[0]:
                    return
                body = bodies[n % len(bodies)]
                start = time.perf_counter()
                try:
                    response = client.post("/recommendations", json=body)
                    status = response.status_code
                    response.json()
                except (httpx.HTTPError, ValueError):
                    status = -1
                latencies[i].append((time.perf_counter() - start) * 1000)
                if status != 200:
                    errors[i] += 1
                    with lock:
                        statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + time_cap + 60  # provisional, while the clients connect
    barrier.wait()
    start = time.perf_counter()
    deadline[0] = start + time_cap
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    flat = sorted(x for per in latencies for x in per)
    return {
        "clients": clients,
        "requests": len(flat),
        "p50_ms": round(percentile(flat, 50), 3),
        "p90_ms": round(percentile(flat, 90), 3),
        "p99_ms": round(percentile(flat, 99), 3),
        "max_ms": round(flat[-1], 3) if flat else None,
        "mean_ms": round(statistics.fmean(flat), 3) if flat else None,
        "errors": sum(errors),
        "error_statuses": statuses,
        "req_per_s": round(len(flat) / elapsed, 1) if elapsed > 0 else None,
        "seconds": round(elapsed, 2),
        "time_capped": elapsed >= time_cap,
    }


WRK_SCRIPT = """
local bodies = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "/recommendations", {["Content-Type"] = "application/json"}, bodies[(i %% #bodies) + 1])
end
"""


def _wrk_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_level_wrk(base: str, clients: int, bodies: list[dict], seconds: float, workdir: Path) -> dict:
    """One level driven by wrk (C, one thread, epoll): a load generator light enough that the
    latency measured is the server's, not the client's Python. Bounded by ``seconds``."""
    script = workdir / f"wrk-{clients}.lua"
    script.write_text(WRK_SCRIPT % ",".join(f"[[{json.dumps(b)}]]" for b in bodies))
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{clients}",
            f"-d{max(1, int(seconds))}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            base,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    out = done.stdout
    pct = {m.group(1): _wrk_ms(m.group(2)) for m in re.finditer(r"^\s+(50|99)%\s+(\S+)", out, re.M)}
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, socket.groups())) if socket else 0)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {
        "clients": clients,
        "requests": requests,
        "p50_ms": pct["50"],
        "p99_ms": pct["99"],
        "errors": errors,
        "req_per_s": rate,
        "client": "wrk",
    }


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = q / 100 * (len(sorted_values) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a model directory (with --data); default: train one")
    parser.add_argument("--data", type=Path, help="the dataset directory of --model")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64], help="concurrent clients per level")
    parser.add_argument("--requests", type=int, default=2000, help="requests per level (at most)")
    parser.add_argument("--time-cap", type=float, default=30.0, help="seconds per level (at most)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests first")
    parser.add_argument(
        "--mixed-clients",
        type=int,
        default=TARGET_CLIENTS,
        help="one more level with --features-share of the requests by features (0: skip)",
    )
    parser.add_argument(
        "--features-share", type=float, default=0.1, help="share of new-customer requests in the mixed level"
    )
    parser.add_argument("--customers", type=int, default=8000, help="size of the generated bank")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--client",
        choices=["wrk", "python"],
        default="wrk" if shutil.which("wrk") else "python",
        help="wrk (C, light; the default when installed) or Python threads with httpx",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per level with wrk")
    parser.add_argument("--workers", type=int, default=2, help="server processes (finrec serve --workers)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if (args.model is None) != (args.data is None):
        parser.error("give both --model and --data, or neither")

    with tempfile.TemporaryDirectory(prefix="finrec-load-") as tmp:
        workdir = Path(tmp)
        model, data = (args.model, args.data) if args.model else build_model(workdir, args.customers, args.epochs)
        from finrec.data.io import load_dataset

        dataset = load_dataset(data, require_interactions=False)
        customer_ids = dataset.customers[dataset.schema.customers.id].astype(str).tolist()
        product_ids = dataset.products[dataset.schema.products.id].astype(str).tolist()
        bodies = request_bodies(customer_ids, product_ids, n=max(args.requests, 1000))
        mixed_bodies = request_bodies(
            customer_ids, product_ids, n=max(args.requests, 1000), features_share=args.features_share
        )

        server = ServerProcess(model, data, workdir / "server.log", workers=args.workers)
        base = server.base_url
        try:
            ready_s = server.wait_ready(consecutive=12)  # every worker process has its model
            print(f"server pid {server.pid} ready on {base} after {ready_s:.1f}s", flush=True)
            run_level(base, 4, bodies, args.warmup, args.time_cap)

            def level(clients: int, level_bodies: list[dict]) -> dict:
                if args.client == "wrk":
                    return run_level_wrk(base, clients, level_bodies, args.seconds, workdir)
                return run_level(base, clients, level_bodies, args.requests, args.time_cap)

            levels = []
            for clients in args.levels:
                result = level(clients, bodies)
                levels.append(result)
                print(
                    f"  {clients} client(s): {result['requests']} requests, p99 {result['p99_ms']:.2f} ms", flush=True
                )
            if args.mixed_clients:
                mixed = level(args.mixed_clients, mixed_bodies)
                mixed["features_share"] = args.features_share
                print(
                    f"  {args.mixed_clients} client(s), {args.features_share:.0%} by features: p99 {mixed['p99_ms']:.2f} ms",
                    flush=True,
                )
            else:
                mixed = None
        finally:
            server.stop()
            log_text = server.log_text()
            if log_text.strip():
                print("server log (last lines):\n" + "\n".join(log_text.splitlines()[-20:]), flush=True)
        cpus = os.cpu_count()
        note = f"the load generator ({args.client}) and the server share this machine's {cpus} CPU core(s)" + (
            "; the clients' own Python time is inside each latency" if args.client == "python" else ""
        )
        report = {
            "benchmark": "load",
            "endpoint": "POST /recommendations",
            "mix": "known customers by customer_id, drawn at random; filters none/conservative/categories/risk_tolerant; k 3-10",
            "levels": levels,
            "mixed": mixed,
            "target": {"clients": TARGET_CLIENTS, "p99_ms_below": P99_TARGET_MS, "errors": 0},
            "model": str(model) if args.model else f"generated: {args.customers} customers, {args.epochs} epochs",
            "server_workers": args.workers,
            "machine": {"cpus": cpus, "platform": platform.platform(), "python": platform.python_version()},
            "note": note,
            "server_log_lines": len(log_text.splitlines()),
        }

    print()
    print(f"{'clients':>7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'req/s':>8}")
    for r in levels:
        print(
            f"{r['clients']:>7} {r['requests']:>8} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>6} {r['req_per_s']:>8.1f}"
        )
    if mixed:
        r = mixed
        label = f"{r['clients']}+feat"
        print(
            f"{label:>7} {r['requests']:>8} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>6} {r['req_per_s']:>8.1f}"
            f"   ({r['features_share']:.0%} of requests by features: a new customer)"
        )
    print(f"note: {note}")
    target = next((r for r in levels if r["clients"] == TARGET_CLIENTS), None)
    ok = True
    if target is not None:
        ok = target["p99_ms"] < P99_TARGET_MS and target["errors"] == 0
        print(
            f"target (p99 < {P99_TARGET_MS:.0f} ms at {TARGET_CLIENTS} clients, no errors): {'met' if ok else 'MISSED'}"
        )
    if any(r["errors"] for r in levels + ([mixed] if mixed else [])):
        ok = False
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp_out.write_text(json.dumps(report, indent=1) + "\n")
    tmp_out.replace(args.out)
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
