"""How time and memory grow with the number of customers: generate, train (1 epoch), evaluate,
batch-score, peak memory, for 10k, 100k and 1M customers (10M with --max 10000000).

    .venv/bin/python benchmarks/scale.py [--max 1000000] [--stream] [--chunk-rows 200000]

Each size runs in its own subprocess, so its peak resident memory (``ru_maxrss``) is its own.
Steps: ``generate`` (synthetic bank, no ground truth) + ``write`` (Parquet); ``train`` = one
epoch of ``finrec.training.fit`` with the default model at batch 4096 (in memory: ``load_dataset``
then ``fit``; with ``--stream``: ``StreamingSource`` + ``fit``, chunked) including the
validation callback, plus ``load`` (reading and validating the tables; for --stream the
partition pass, reported separately); ``evaluate`` = ``finrec.evaluate.report.evaluate`` on all
customers; ``score`` = ``score_dataset`` (top 5, default filters) to Parquet. Ratios are each
size's time over the previous size's (x10 data). Shared CPUs: single runs, noisy.
Prints a table and writes benchmarks/results/scale.json (scale_stream.json with --stream).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "scale.json"
SIZES = (10_000, 100_000, 1_000_000, 10_000_000)


def worker(n: int, stream: bool, chunk_rows: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from finrec.config import Config
    from finrec.data import schema as S
    from finrec.data.io import load_dataset, write_dataset
    from finrec.data.synthetic import GeneratorSettings, generate
    from finrec.evaluate.report import evaluate
    from finrec.recommend.batch import score_dataset
    from finrec.recommend.recommender import Recommender
    from finrec.training.train import fit

    out: dict = {"customers": n, "mode": "streaming" if stream else "in-memory"}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "bank"
        t = time.perf_counter()
        tables = generate(GeneratorSettings(n_customers=n, seed=0, ground_truth=False))
        out["generate_s"] = time.perf_counter() - t
        t = time.perf_counter()
        write_dataset(tables, S.SYNTHETIC.schema(), data_dir)
        out["write_s"] = time.perf_counter() - t
        out["interactions"] = len(tables["interactions"])
        del tables
        config = Config().with_overrides(epochs=1, batch_size=4096)
        if stream:
            from finrec.training.stream import StreamingSource

            source = StreamingSource(data_dir, chunk_rows=chunk_rows, workdir=Path(tmp))
            trained = fit(source, config, verbose=0)
            out["load_s"] = trained.history["prepare_seconds"][0]
            out["max_rows_held"] = source.last_batches.max_rows_held
            t = time.perf_counter()
            dataset = load_dataset(data_dir)  # evaluate needs the tables in memory
            out["load_for_evaluate_s"] = time.perf_counter() - t
        else:
            t = time.perf_counter()
            dataset = load_dataset(data_dir)
            out["load_s"] = time.perf_counter() - t
            trained = fit(dataset, config, verbose=0)
        out["train_epoch_s"] = trained.history["fit_seconds"][0]
        out["train_examples"] = int(trained.history["train_examples"][0])
        t = time.perf_counter()
        metrics = evaluate(trained, dataset, k=5)
        out["evaluate_s"] = time.perf_counter() - t
        out["ndcg@5"] = metrics["model"]["ndcg@5"]
        del dataset
        t = time.perf_counter()
        scored, rows = score_dataset(Recommender(trained), data_dir, Path(tmp) / "top5.parquet", k=5)
        out["score_s"] = time.perf_counter() - t
        out["scored_customers"] = scored
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


STEPS = ("generate_s", "write_s", "load_s", "train_epoch_s", "evaluate_s", "score_s", "peak_rss_mb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max", type=int, default=1_000_000, help="largest size (10000000 to include 10M)")
    parser.add_argument("--stream", action="store_true", help="train with finrec.training.stream (chunked)")
    parser.add_argument("--chunk-rows", type=int, default=200_000)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.stream, args.chunk_rows)))
        return

    rows = []
    for n in (s for s in SIZES if s <= args.max):
        cmd = [sys.executable, __file__, "--worker", str(n), "--chunk-rows", str(args.chunk_rows)] + (
            ["--stream"] if args.stream else []
        )
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"size {n} failed")
        row = json.loads(next(l[7:] for l in done.stdout.splitlines() if l.startswith("RESULT ")))
        row["total_s"] = time.perf_counter() - t
        if rows:
            row["growth"] = {k: row[k] / rows[-1][k] for k in STEPS if rows[-1].get(k)}
        rows.append(row)
        print(f"{n:>10,} customers done in {row['total_s']:.0f}s", flush=True)

    header = f"{'customers':>11}" + "".join(f"{k[:-2] if k.endswith('_s') else k:>14}" for k in STEPS)
    print(header)
    for row in rows:
        print(f"{row['customers']:>11,}" + "".join(f"{row[k]:>14.1f}" for k in STEPS))
        if "growth" in row:
            print(f"{'  x prev':>11}" + "".join(f"{row['growth'].get(k, float('nan')):>14.1f}" for k in STEPS))
    results = RESULTS.with_name("scale_stream.json") if args.stream else RESULTS
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(
        json.dumps(
            {
                "mode": "streaming" if args.stream else "in-memory",
                "batch_size": 4096,
                "note": "one run per size on 2 shared CPUs: noisy",
                "sizes": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
