"""The default model on the default synthetic bank, scored on held-out customers.

Shows the core target: held-out nDCG@5 of the default model at least 0.95 of the oracle's, well
above popularity, trained in under a minute on 2 cores. Three seeds (data, split and model).

    .venv/bin/python benchmarks/quality_default.py [--seeds 0 1 2]

Prints a table and writes benchmarks/results/quality_default.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from finrec.config import Config
from finrec.data import schema as S
from finrec.data.io import validate_tables
from finrec.data.split import split_dataset
from finrec.data.synthetic import GeneratorSettings, generate
from finrec.evaluate.report import evaluate
from finrec.training.train import fit

RESULTS = Path(__file__).parent / "results" / "quality_default.json"


def run(seed: int) -> dict:
    dataset = validate_tables(S.SYNTHETIC.schema(), generate(GeneratorSettings(seed=seed)))
    train, test = split_dataset(dataset, holdout_fraction=0.2, seed=seed)
    config = Config().with_overrides(seed=seed)
    start = time.perf_counter()
    trained = fit(train, config, verbose=0)
    fit_seconds = time.perf_counter() - start
    results = evaluate(trained, test, k=5, seed=seed)
    return {
        "seed": seed,
        "fit_seconds": fit_seconds,
        "epochs": len(trained.history["loss"]),
        "train_examples": int(trained.history["train_examples"][0]),
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    runs = [run(seed) for seed in args.seeds]

    def stat(values):
        return statistics.median(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    print(
        f"Held-out customers of the default synthetic bank ({GeneratorSettings.n_customers} customers), seeds {args.seeds}"
    )
    print(f"{'ranker':<12}{'ndcg@5':>16}{'mrr':>16}{'map@5':>16}{'hit_rate@5':>16}")
    for name in ("model", "oracle", "popularity", "random"):
        cells = []
        for metric in ("ndcg@5", "mrr", "map@5", "hit_rate@5"):
            med, sd = stat([r["results"][name][metric] for r in runs])
            cells.append(f"{med:.4f} ±{sd:.4f}")
        print(f"{name:<12}" + "".join(f"{c:>16}" for c in cells))
    ratios = [r["results"]["model"]["ndcg@5"] / r["results"]["oracle"]["ndcg@5"] for r in runs]
    fits = [r["fit_seconds"] for r in runs]
    print(
        f"model / oracle nDCG@5: median {statistics.median(ratios):.3f}, min {min(ratios):.3f} (per seed: "
        + ", ".join(f"{x:.3f}" for x in ratios)
        + ")"
    )
    print(
        f"fit time: median {statistics.median(fits):.1f}s, max {max(fits):.1f}s "
        f"({runs[0]['train_examples']} examples, epochs {[r['epochs'] for r in runs]}), {os.cpu_count()} cores"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"machine": platform.machine(), "cores": os.cpu_count(), "runs": runs, "ndcg_ratio_to_oracle": ratios},
            indent=1,
        )
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
