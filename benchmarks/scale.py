"""How time and memory grow with the number of customers: generate, train (1 epoch), evaluate,
batch-score, peak memory, for 10k, 100k and 1M customers (10M with --max 10000000).

    .venv/bin/python benchmarks/scale.py [--max 1000000] [--stream] [--chunk-rows 200000]
        [--months 12] [--sizes 100000 1000000] [--no-evaluate] [--results PATH]

Each size runs in its own subprocess. Memory is read from ``/proc/self/status``: ``VmHWM`` (the
peak resident set) reset before each step by writing 5 to ``/proc/self/clear_refs``, so each
step reports its own peak (``<step>_peak_mb``; ``ru_maxrss`` would carry the parent's across
fork/exec and every earlier step's), and ``peak_rss_mb`` is the largest. ``--months N``
generates a bank with N month-ends of ``holdings_history`` (the default model then uses history
features; streamed, the history is routed in record batches and read per piece, and ``score``
reads it per chunk). ``--no-evaluate`` skips ``evaluate``, which loads every table in memory.
Steps: ``generate`` (synthetic bank, no ground truth, drawn and written to Parquet in blocks
of 1M customers; rows stored before the blocks had a separate ``write`` step); ``train`` = one
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


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - not Linux


def _reset_peak() -> None:
    """Start a new peak: VmHWM back to the current resident set (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:  # pragma: no cover - not Linux, or not allowed: peaks then accumulate
        pass


class _Step:
    """Time and peak memory of one step: ``<name>_s``, ``<name>_peak_mb``, ``<name>_start_mb``."""

    def __init__(self, out: dict, name: str):
        self.out, self.name = out, name

    def __enter__(self):
        _reset_peak()
        self.out[f"{self.name}_start_mb"] = _status_mb("VmRSS")
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.out[f"{self.name}_s"] = time.perf_counter() - self.t
        self.out[f"{self.name}_peak_mb"] = _status_mb("VmHWM")
        return False


def worker(n: int, stream: bool, chunk_rows: int, months: int = 0, evaluate_step: bool = True) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from finrec.config import Config
    from finrec.data import schema as S
    from finrec.data.io import load_dataset, write_dataset_blocks
    from finrec.data.synthetic import GeneratorSettings, generate_blocks
    from finrec.evaluate.report import evaluate
    from finrec.recommend.batch import score_dataset
    from finrec.recommend.recommender import Recommender
    from finrec.training.train import fit

    out: dict = {"customers": n, "mode": "streaming" if stream else "in-memory", "months": months}
    out["import_mb"] = _status_mb("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "bank"
        # Drawn and written block by block (1M customers each), as ``finrec generate`` does: one
        # step, so ``write_s`` is absent and ``generate_s`` includes the writing.
        with _Step(out, "generate"):
            settings = GeneratorSettings(n_customers=n, seed=0, ground_truth=False, months=months)
            rows = write_dataset_blocks(generate_blocks(settings), S.SYNTHETIC.schema(), data_dir)
        out["generate_includes_write"] = True
        out["interactions"] = rows[S.INTERACTIONS]
        out["history_rows"] = rows.get(S.HOLDINGS_HISTORY, 0)
        config = Config().with_overrides(epochs=1, batch_size=4096)
        dataset = None
        if stream:
            from finrec.training.stream import StreamingSource

            source = StreamingSource(data_dir, chunk_rows=chunk_rows, workdir=Path(tmp))
            with _Step(out, "train"):  # the partition pass and one epoch, chunked
                trained = fit(source, config, verbose=0)
            out["load_s"] = trained.history["prepare_seconds"][0]
            out["max_rows_held"] = source.last_batches.max_rows_held
            if evaluate_step:
                t = time.perf_counter()
                dataset = load_dataset(data_dir)  # evaluate needs the tables in memory
                out["load_for_evaluate_s"] = time.perf_counter() - t
        else:
            with _Step(out, "load"):
                dataset = load_dataset(data_dir)
            with _Step(out, "train"):
                trained = fit(dataset, config, verbose=0)
        out["uses_history"] = getattr(trained.pipeline, "history_", None) is not None
        out["train_epoch_s"] = trained.history["fit_seconds"][0]
        out["train_examples"] = int(trained.history["train_examples"][0])
        if evaluate_step:
            with _Step(out, "evaluate"):
                metrics = evaluate(trained, dataset, k=5)
            out["ndcg@5"] = metrics["model"]["ndcg@5"]
        del dataset
        with _Step(out, "score"):
            scored, rows = score_dataset(Recommender(trained), data_dir, Path(tmp) / "top5.parquet", k=5)
        out["scored_customers"] = scored
    out["peak_rss_mb"] = max(v for k, v in out.items() if k.endswith("_peak_mb"))
    out["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


STEPS = ("generate_s", "write_s", "load_s", "train_epoch_s", "evaluate_s", "score_s", "peak_rss_mb")
PEAKS = ("generate_peak_mb", "write_peak_mb", "train_peak_mb", "evaluate_peak_mb", "score_peak_mb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max", type=int, default=1_000_000, help="largest size (10000000 to include 10M)")
    parser.add_argument("--stream", action="store_true", help="train with finrec.training.stream (chunked)")
    parser.add_argument("--chunk-rows", type=int, default=200_000)
    parser.add_argument("--months", type=int, default=0, help="month-ends of holdings history to generate")
    parser.add_argument("--sizes", type=int, nargs="+", help="these sizes instead of 10k, 100k, ... up to --max")
    parser.add_argument("--no-evaluate", action="store_true", help="skip evaluate (it loads every table)")
    parser.add_argument("--results", type=Path, help="results file (default: by mode and months, as below)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args.stream, args.chunk_rows, args.months, not args.no_evaluate)
        print("RESULT " + json.dumps(result))
        return

    rows = []
    for n in args.sizes or [s for s in SIZES if s <= args.max]:
        cmd = [sys.executable, __file__, "--worker", str(n), "--chunk-rows", str(args.chunk_rows)]
        cmd += ["--months", str(args.months)] + (["--stream"] if args.stream else [])
        cmd += ["--no-evaluate"] if args.no_evaluate else []
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"size {n} failed")
        row = json.loads(next(l[7:] for l in done.stdout.splitlines() if l.startswith("RESULT ")))
        row["total_s"] = time.perf_counter() - t
        if rows:
            row["growth"] = {k: row[k] / rows[-1][k] for k in STEPS + PEAKS if rows[-1].get(k) and k in row}
        rows.append(row)
        print(f"{n:>10,} customers done in {row['total_s']:.0f}s", flush=True)

    for columns in (STEPS, PEAKS):
        print(f"{'customers':>11}" + "".join(f"{k[:-2] if k.endswith('_s') else k:>17}" for k in columns))
        for row in rows:
            print(f"{row['customers']:>11,}" + "".join(f"{row.get(k, float('nan')):>17.1f}" for k in columns))
            if "growth" in row:
                print(f"{'  x prev':>11}" + "".join(f"{row['growth'].get(k, float('nan')):>17.1f}" for k in columns))
    results = RESULTS.with_name("scale_stream.json") if args.stream else RESULTS
    if args.months:
        results = results.with_name(f"{results.stem}_months{args.months}.json")
    results = args.results or results
    results.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "mode": "streaming" if args.stream else "in-memory",
        "batch_size": 4096,
        "months": args.months,
        "chunk_rows": args.chunk_rows,
    }
    # The sizes run now replace their own rows; a stored size not run now is kept (a 1M row took
    # most of an hour), unless the stored file ran with other settings.
    kept = []
    if results.exists():
        stored = json.loads(results.read_text())
        if all(stored.get(key) == value for key, value in settings.items()):
            ran = {row["customers"] for row in rows}
            kept = [row for row in stored.get("sizes", []) if row["customers"] not in ran]
    sizes = sorted(kept + rows, key=lambda row: row["customers"])
    body = {**settings, "note": "one run per size on 2 shared CPUs: noisy", "sizes": sizes}
    tmp = results.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=1))
    tmp.replace(results)
    print(f"wrote {results} ({len(rows)} size(s) run now, {len(kept)} kept)")


if __name__ == "__main__":
    main()
