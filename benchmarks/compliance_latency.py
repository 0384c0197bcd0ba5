"""Request latency in process with every compliance rule on, and the cost of recording it.

Trains the default architecture briefly (``--epochs``) on a ``--customers`` synthetic bank, then
times ``Recommender.recommend`` (k=5) for known customers (by id) and new ones (by features),
cycling over customers, with:

- ``all_rules``: consent, held, suitability, target market, negative target market,
  affordability (40% limit and a credit score cut-off of 600), eligibility terms;
- ``without_new_rules``: target market and affordability off (what the filters did before);

and one ``RecordLog.append`` of each result (JSON line + fsync) on this machine's disk.

    PYTHONPATH=src .venv/bin/python benchmarks/compliance_latency.py [--reps 3000]

Prints a table and writes benchmarks/results/compliance_latency.json (with the CPU count and the
load average, since other work on the cores moves the tail).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

from finrec.config import Config, TrainConfig  # noqa: E402
from finrec.data import schema as S  # noqa: E402
from finrec.data.io import validate_tables  # noqa: E402
from finrec.data.synthetic import GeneratorSettings, generate  # noqa: E402
from finrec.governance.records import RecordLog, record_of  # noqa: E402
from finrec.recommend.filters import Filters  # noqa: E402
from finrec.recommend.recommender import Recommender  # noqa: E402
from finrec.training.train import fit  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "compliance_latency.json"
K = 5


def timed(fn, arguments: list, reps: int, warmup: int = 300) -> dict[str, float]:
    for i in range(warmup):
        fn(arguments[i % len(arguments)])
    seconds = []
    for i in range(reps):
        start = time.perf_counter()
        fn(arguments[i % len(arguments)])
        seconds.append(time.perf_counter() - start)
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "reps": reps}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3000)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()

    dataset = validate_tables(S.SYNTHETIC.schema(), generate(GeneratorSettings(n_customers=args.customers)))
    trained = fit(dataset, Config(training=TrainConfig(epochs=args.epochs)).validate(), verbose=0)
    rec = Recommender(trained, dataset)
    consent = dataset.customers[S.SYNTHETIC.consent].to_numpy() == 1
    customers = dataset.customers[consent]
    ids = customers["customer_id"].tolist()[:2000]
    features = [
        {**{k: v for k, v in row.items() if k != "customer_id" and v == v}, "holdings": []}
        for row in customers.iloc[:500].to_dict("records")
    ]
    settings = {
        "all_rules": Filters(credit_score_cutoff=600),
        "without_new_rules": Filters(target_market=False, affordability=False),
    }
    rows = {}
    for name, filters in settings.items():
        rows[f"by_id_{name}"] = timed(lambda c, f=filters: rec.recommend(c, k=K, filters=f), ids, args.reps)
        rows[f"by_features_{name}"] = timed(lambda c, f=filters: rec.recommend(c, k=K, filters=f), features, args.reps)
    results = [rec.recommend(c, k=K, filters=settings["all_rules"]) for c in ids[:500]]
    with tempfile.TemporaryDirectory() as tmp, RecordLog(Path(tmp) / "records.jsonl") as log:
        rows["record_append_fsync"] = timed(
            lambda r: log.append(record_of(r, "bench")), results, min(args.reps, 1000), warmup=20
        )

    print(f"{'request':<40}{'p50 ms':>10}{'p99 ms':>10}")
    for name, row in rows.items():
        print(f"{name:<40}{row['p50_ms']:>10.3f}{row['p99_ms']:>10.3f}")
    out = {
        "customers": args.customers,
        "epochs": args.epochs,
        "k": K,
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
