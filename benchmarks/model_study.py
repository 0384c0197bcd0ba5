"""The modelling study of issue 12: finrec candidate configs on the development banks.

For each story (``finrec.data.stories`` plus today's default bank) and seed: generate, split 80/20
by customer (same seed), leave out customers who objected (as ``finrec train`` does), train each
candidate with ``finrec.training.fit`` (config from ``benchmarks/configs/<name>.yaml``; ``default``
is ``Config()``), score the held-out customers with interactions (``quality.Task``: every
product they do not hold ranked, binary nDCG@5 and MRR) beside the oracle.

    .venv/bin/python benchmarks/model_study.py --stories thresholds small --seeds 0 --candidates default ple
    .venv/bin/python benchmarks/model_study.py --table

Runs are merged into benchmarks/results/model_study.json keyed by story|candidate|seed; the table
(medians over stored seeds) is printed after every invocation. The tuned LightGBM column comes
from ``benchmarks/stories.py`` (``--config benchmarks/configs/<name>.yaml`` runs a candidate there).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "model_study.json"
CONFIGS = HERE / "configs"
from stories import DEFAULT_BANK, load_split  # noqa: E402  (the same banks and splits)


def config_of(name: str, seed: int):
    import dataclasses

    from finrec.config import Config

    config = Config() if name == "default" else Config.from_yaml(CONFIGS / f"{name}.yaml")
    return dataclasses.replace(config, training=dataclasses.replace(config.training, seed=seed)).validate()


def run(story: str, seed: int, candidates: list[str], store: dict) -> None:
    from quality import Task

    from finrec.evaluate import baselines
    from finrec.training.train import fit

    train, test = load_split(story, seed)
    task = Task(train, test)
    oracle = task.metrics(baselines.oracle_scores(task.ids, task.pipeline.product_ids_, task.ground_truth))["all"]
    store["runs"][f"{story}|oracle|{seed}"] = {"story": story, "candidate": "oracle", "seed": seed, "all": oracle}
    for name in candidates:
        start = time.perf_counter()
        trained = fit(train, config_of(name, seed), verbose=0)
        seconds = time.perf_counter() - start
        m = task.metrics(trained.score(task.customers, task.holdings))["all"]
        store["runs"][f"{story}|{name}|{seed}"] = {
            "story": story,
            "candidate": name,
            "seed": seed,
            "all": m,
            "fit_seconds": seconds,
            "epochs": len(trained.history["loss"]),
            "date": datetime.date.today().isoformat(),
        }
        print(
            f"[{story} seed {seed}] {name:<14} ndcg@5 {m['ndcg@5']:.4f} mrr {m['mrr']:.4f} "
            f"(oracle {oracle['ndcg@5']:.4f}) fit {seconds:.0f}s {len(trained.history['loss'])} epochs",
            flush=True,
        )
        save(store)


def save(store: dict) -> None:
    """Merge into the stored runs (another invocation may have added some meanwhile)."""
    RESULTS.parent.mkdir(exist_ok=True)
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": {}}
    stored["runs"].update(store["runs"])
    store["runs"] = stored["runs"]
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(stored, indent=1))
    tmp.replace(RESULTS)


def table(store: dict) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in store["runs"].values():
        groups.setdefault((r["story"], r["candidate"]), []).append(r)
    lines = ["| story | candidate | seeds | nDCG@5 | MRR | / oracle | fit s |", "|---|---|---|---:|---:|---:|---:|"]
    for (story, name), runs in sorted(groups.items()):
        oracle = groups.get((story, "oracle"))
        nd = statistics.median(r["all"]["ndcg@5"] for r in runs)
        mrr = statistics.median(r["all"]["mrr"] for r in runs)
        ratio = nd / statistics.median(r["all"]["ndcg@5"] for r in oracle) if oracle else float("nan")
        fit_s = statistics.median(r.get("fit_seconds", 0.0) for r in runs)
        seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
        lines.append(f"| {story} | {name} | {seeds} | {nd:.4f} | {mrr:.4f} | {ratio:.3f} | {fit_s:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stories", nargs="+", default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--candidates", nargs="+", default=["default", "ple", "ensemble4", "ple_ensemble4"])
    parser.add_argument("--table", action="store_true", help="only print the table of stored runs")
    args = parser.parse_args()
    store = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": {}}
    if not args.table:
        from finrec.data.stories import STORIES

        for seed in args.seeds:
            for story in args.stories or (DEFAULT_BANK, *STORIES):
                run(story, seed, args.candidates, store)
    print(table(store))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
