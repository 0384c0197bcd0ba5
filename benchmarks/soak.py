"""Soak test of the REST API: many concurrent clients, good and bad requests, for a bounded time.

    python benchmarks/soak.py [--seconds 60] [--clients 64] [--model DIR --data DIR]

Starts ``finrec serve`` on a free loopback port (training a small model first when none is
given), runs ``--clients`` concurrent clients mixing good requests (by customer id, by features)
and bad ones (malformed JSON, unknown customer, oversize body, invalid k, unknown filter),
samples the server's RSS every second, and reports: requests by kind and status, any 5xx (the
run fails if there is one), p50/p99 latency of the good requests, and RSS start/end/max and
slope (MB per minute, least squares over the run after a warm-up). Writes
``benchmarks/results/soak.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from finrec.serve_process import ServerProcess

RESULTS = Path(__file__).parent / "results" / "soak.json"
FORMULA = "=cmd|' /C calc'!A0"


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` in MB (psutil when installed, else /proc)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 1e6
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - the process is gone
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        return None
    return None


def requests_mix(customer_ids: list[str], product_ids: list[str]):
    """(kind, body bytes, expected statuses): a weighted draw of good and bad requests."""

    def by_id():
        return (
            "good_id",
            json.dumps({"customer_id": random.choice(customer_ids), "k": random.randint(1, 10)}).encode(),
            {200},
        )

    def by_features():
        features = {
            "age": random.randint(18, 90),
            "income": round(random.uniform(0, 2e5), 2),
            "savings": random.uniform(0, 1e5),
            "risk_tolerance": random.randint(1, 7),
            "region": random.choice(["north", "south", "Zürich", FORMULA]),
            "holdings": random.sample(product_ids, random.randint(0, 2)),
        }
        return "good_features", json.dumps({"features": features, "k": 5}).encode(), {200}

    bad = [
        lambda: ("malformed_json", b'{"customer_id": "C1",', {422}),
        lambda: ("unknown_customer", json.dumps({"customer_id": f"NOPE-{random.randint(0, 10**9)}"}).encode(), {404}),
        lambda: ("oversize", json.dumps({"customer_id": "x" * 70_000}).encode(), {413}),
        lambda: (
            "invalid_k",
            json.dumps({"customer_id": random.choice(customer_ids), "k": random.choice([0, -1, 51, "5"])}).encode(),
            {422},
        ),
        lambda: (
            "unknown_filter",
            json.dumps({"customer_id": random.choice(customer_ids), "filters": {"colour": "red"}}).encode(),
            {422},
        ),
        lambda: (
            "bad_feature",
            json.dumps({"features": {"income": random.choice(["lots", -5.0, None, True])}}).encode(),
            {200, 422},
        ),
    ]
    while True:
        r = random.random()
        if r < 0.45:
            yield by_id()
        elif r < 0.7:
            yield by_features()
        else:
            yield random.choice(bad)()


async def soak(base: str, pid: int, seconds: float, clients: int, customer_ids, product_ids) -> dict:
    import httpx

    stats: dict[str, dict[str, int]] = {}
    latencies: list[float] = []
    unexpected: list[str] = []
    five_xx: list[str] = []
    rss: list[tuple[float, float]] = []
    start = time.monotonic()
    stop_at = start + seconds

    async def sampler():
        while time.monotonic() < stop_at:
            value = rss_mb(pid)
            if value is not None:
                rss.append((time.monotonic() - start, value))
            await asyncio.sleep(1.0)

    async def client(seed: int):
        random.seed(seed)
        mix = requests_mix(customer_ids, product_ids)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
            while time.monotonic() < stop_at:
                kind, body, expected = next(mix)
                t0 = time.perf_counter()
                try:
                    response = await http.post(
                        "/recommendations", content=body, headers={"content-type": "application/json"}
                    )
                    status = response.status_code
                    text = response.text
                except httpx.HTTPError as exc:
                    status, text = 0, type(exc).__name__
                elapsed = time.perf_counter() - t0
                stats.setdefault(kind, {}).setdefault(str(status), 0)
                stats[kind][str(status)] += 1
                if status >= 500:
                    five_xx.append(f"{kind}: {status} {text[:200]}")
                elif status not in expected and len(unexpected) < 20:
                    unexpected.append(f"{kind}: {status} {text[:200]}")
                if "Traceback" in text:
                    five_xx.append(f"{kind}: traceback in the body")
                if kind.startswith("good") and status == 200:
                    latencies.append(elapsed)

    await asyncio.gather(sampler(), *(client(i) for i in range(clients)))
    wall = time.monotonic() - start
    times = np.array([t for t, _ in rss])
    values = np.array([v for _, v in rss])
    warm = times >= min(5.0, seconds / 4)
    slope = float(np.polyfit(times[warm], values[warm], 1)[0] * 60) if warm.sum() >= 3 else float("nan")
    total = sum(sum(v.values()) for v in stats.values())
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "seconds": round(wall, 1),
        "clients": clients,
        "requests": total,
        "requests_per_s": round(total / wall, 1),
        "by_kind": stats,
        "five_xx": len(five_xx),
        "five_xx_examples": five_xx[:10],
        "unexpected_status": unexpected,
        "good_requests": len(latencies),
        "good_p50_ms": round(float(np.percentile(lat, 50)), 1),
        "good_p99_ms": round(float(np.percentile(lat, 99)), 1),
        "rss_mb": {
            "start": round(float(values[0]), 1) if len(values) else None,
            "end": round(float(values[-1]), 1) if len(values) else None,
            "max": round(float(values.max()), 1) if len(values) else None,
            "slope_mb_per_min": round(slope, 2),
        },
        "rss_samples": [[round(t, 1), round(v, 1)] for t, v in rss],
    }


def run(model_dir, data_dir, seconds: float, clients: int, log_path: Path) -> dict:
    from finrec.data.io import load_dataset

    dataset = load_dataset(data_dir, require_interactions=False)
    customer_ids = [str(c) for c in dataset.customer_ids[:2000]]
    product_ids = [str(p) for p in dataset.product_ids]
    with ServerProcess(model_dir, data_dir, log_path) as server:
        server.wait_ready()
        result = asyncio.run(soak(server.base_url, server.pid, seconds, clients, customer_ids, product_ids))
        result["server_alive"] = server.process.poll() is None
    return result


def table(result: dict) -> str:
    lines = [f"{'kind':<18}{'requests':>10}  statuses", "-" * 50]
    for kind, statuses in sorted(result["by_kind"].items()):
        lines.append(
            f"{kind:<18}{sum(statuses.values()):>10}  " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))
        )
    rss = result["rss_mb"]
    lines += [
        "-" * 50,
        f"{result['requests']} requests in {result['seconds']}s from {result['clients']} clients "
        f"({result['requests_per_s']}/s); 5xx: {result['five_xx']}",
        f"good requests: p50 {result['good_p50_ms']} ms, p99 {result['good_p99_ms']} ms",
        f"server RSS: start {rss['start']} MB, end {rss['end']} MB, max {rss['max']} MB, "
        f"slope {rss['slope_mb_per_min']} MB/min",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--model", type=Path, help="model directory (default: train a small one)")
    parser.add_argument("--data", type=Path, help="customer data (default: a small synthetic bank)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir, model_dir = args.data, args.model
        if data_dir is None:
            from finrec.data import schema as S
            from finrec.data.io import write_dataset
            from finrec.data.synthetic import GeneratorSettings, generate

            data_dir = write_dataset(
                generate(GeneratorSettings(n_customers=3000, seed=0)), S.SYNTHETIC.schema(), tmp / "bank"
            )
        if model_dir is None:
            model_dir = tmp / "model"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "finrec.cli",
                    "train",
                    "--data",
                    str(data_dir),
                    "--out",
                    str(model_dir),
                    "--epochs",
                    "2",
                ],
                check=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
        result = run(model_dir, data_dir, args.seconds, args.clients, tmp / "server.log")
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 1 if result["five_xx"] or not result["server_alive"] else 0


if __name__ == "__main__":
    sys.exit(main())
