"""Quality over the development banks: finrec's default against a tuned LightGBM, every story, 3 seeds.

For each story (``finrec.data.stories``, plus today's default bank) and seed (data seed = split
seed = model seed): generate, split 80/20 by customer (``split_dataset``), leave out customers who
objected to profiling (as ``finrec train`` does; only the default bank has them), train finrec
(``finrec.training.fit``, the routine ``finrec train`` calls) with the default config or
``--config FILE``, fit ``TunedLightGBM`` with its budget, and score the held-out customers with
interactions, every product they do not hold ranked (binary nDCG@5 and MRR,
``finrec.evaluate.metrics``, as ``benchmarks/quality.py`` does; its ``Task`` is reused). The
oracle ranks by the true adoption probabilities.

    .venv/bin/python benchmarks/stories.py                                   # everything, 3 seeds
    .venv/bin/python benchmarks/stories.py --seeds 0 --lgbm-threads 1        # as the stored runs were made
    .venv/bin/python benchmarks/stories.py --stories small messy --seeds 0    # a piece
    .venv/bin/python benchmarks/stories.py --variants finrec --config my.yaml --label wide
    .venv/bin/python benchmarks/stories.py --table [--label wide]            # the table from stored runs
    .venv/bin/python benchmarks/stories.py --scale 4 --stories small --seeds 0 # 4x the customers: is the gap data?

Runs are merged into benchmarks/results/stories.json keyed by story|ranker|seed (the finrec
ranker is ``finrec:<label>``, ``finrec:default`` without ``--config``), so subsets can be run
one after another. The table (medians over the stored seeds) is printed after every invocation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "stories.json"  # --results moves it (pieces run side by side)
K = 5
DEFAULT_BANK = "default"
VARIANTS = ("finrec", "lightgbm", "teacher")  # teacher: finrec's distillation teacher on its own


def stories() -> tuple[str, ...]:
    from finrec.data.stories import STORIES

    return (DEFAULT_BANK, *STORIES)


def load_split(story: str, seed: int, scale: float = 1.0):
    from finrec.data import schema as S
    from finrec.data.compliance import without_objections
    from finrec.data.io import validate_tables
    from finrec.data.split import split_dataset
    from finrec.data.stories import DEFAULT_CUSTOMERS, generate_story
    from finrec.data.synthetic import GeneratorSettings, generate

    if story == DEFAULT_BANK:
        n = round(GeneratorSettings.n_customers * scale)
        tables, schema = generate(GeneratorSettings(n_customers=n, seed=seed)), S.SYNTHETIC.schema()
    else:
        tables, schema = generate_story(story, n_customers=round(DEFAULT_CUSTOMERS[story] * scale), seed=seed)
    train, test = split_dataset(validate_tables(schema, tables), holdout_fraction=0.2, seed=seed)
    train, _ = without_objections(train)
    return train, test


def stored_name(story: str, scale: float) -> str:
    """The story's key in the store: ``interactions``, or ``interactions@x4`` at 4x the customers."""
    return story if scale == 1 else f"{story}@x{scale:g}"


def run_one(story: str, seed: int, variants: list[str], args, store: dict) -> None:
    from quality import Task

    from finrec.config import Config
    from finrec.evaluate import baselines
    from finrec.training.train import fit

    started = time.perf_counter()
    train, test = load_split(story, seed, args.scale)
    story = stored_name(story, args.scale)
    task = Task(train, test)
    n, n_products = task.relevant.shape
    print(
        f"[{story} seed {seed}] {len(train.customers)} training customers, {n} held-out customers ranked, "
        f"{n_products} products (data {time.perf_counter() - started:.1f}s)",
        flush=True,
    )
    oracle = baselines.oracle_scores(task.ids, task.pipeline.product_ids_, task.ground_truth)
    popularity = baselines.popularity_scores(n, np.asarray(task.pipeline.product_popularity_))
    for name, scores in (("oracle", oracle), ("popularity", popularity)):
        record(store, story, name, seed, {"metrics": task.metrics(scores), "fit_seconds": 0.0})
    for variant in variants:
        start = time.perf_counter()
        if variant == "lightgbm":
            model = baselines.TunedLightGBM(
                max_trials=args.lgbm_trials, max_seconds=args.lgbm_seconds, num_threads=args.lgbm_threads
            ).fit(train, seed=seed)
            seconds = time.perf_counter() - start
            scores = model.score(task.customers, task.holdings)
            ranker = "lightgbm_tuned"
            entry = {
                "budget": model.budget_,
                "best_params": model.best_params_,
                "rounds": model.best_iteration_,
                "trials": model.trials_,
            }
            detail = f"{model.budget_['trials']} trials, best {model.best_params_}"
        elif variant == "teacher":
            from finrec.training.trees import TEACHER, fit_teacher

            model = fit_teacher(train, seed=seed)
            seconds = time.perf_counter() - start
            scores = model.score(task.customers, task.holdings)
            ranker = "teacher"
            entry = {"params": TEACHER, "rounds": model.best_iteration_}
            detail = f"{model.best_iteration_} rounds"
        else:
            config = Config.from_yaml(args.config) if args.config else Config()
            config = config.with_overrides(seed=seed)
            trained = fit(train, config, verbose=0)
            seconds = time.perf_counter() - start
            scores = trained.score(task.customers, task.holdings)
            ranker = f"finrec:{args.label}"
            epochs = len(trained.history["loss"])
            entry = {"epochs": epochs, "config": config.to_dict(), "config_file": str(args.config or "")}
            detail = f"{epochs} epochs"
        entry.update(fit_seconds=seconds, metrics=task.metrics(scores))
        record(store, story, ranker, seed, entry)
        m = entry["metrics"]["all"]
        print(
            f"[{story} seed {seed}] {ranker:<20} ndcg@5 {m['ndcg@5']:.4f} mrr {m['mrr']:.4f} "
            f"(oracle {store['runs'][f'{story}|oracle|{seed}']['metrics']['all']['ndcg@5']:.4f}) "
            f"fit {seconds:.1f}s, {detail}",
            flush=True,
        )
        save(store)


def record(store: dict, story: str, ranker: str, seed: int, entry: dict) -> None:
    store["runs"][f"{story}|{ranker}|{seed}"] = {
        "story": story,
        "ranker": ranker,
        "seed": seed,
        "date": datetime.date.today().isoformat(),
        **entry,
    }


def load_store() -> dict:
    import quality

    return quality.load_store(RESULTS)  # RESULTS as --results set it


def save(store: dict) -> None:
    store["machine"] = {
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "note": "timings on a shared machine",
    }
    store["summary"] = summarize(store["runs"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(store, indent=1, sort_keys=True, default=float))
    tmp.replace(RESULTS)


def summarize(runs: dict) -> dict:
    """story|ranker -> medians over the stored seeds of nDCG@5, MRR and fit seconds."""
    groups: dict[str, list[dict]] = {}
    for run in runs.values():
        groups.setdefault(f"{run['story']}|{run['ranker']}", []).append(run)
    out = {}
    for key, items in sorted(groups.items()):
        items = sorted(items, key=lambda r: r["seed"])
        out[key] = {
            "seeds": [r["seed"] for r in items],
            f"ndcg@{K}": statistics.median(r["metrics"]["all"][f"ndcg@{K}"] for r in items),
            "mrr": statistics.median(r["metrics"]["all"]["mrr"] for r in items),
            "fit_seconds": statistics.median(r["fit_seconds"] for r in items),
        }
    return out


def _median_of(runs: dict, story: str, ranker: str, seeds: list[int], metric: str) -> float:
    values = [runs[f"{story}|{ranker}|{s}"] for s in seeds]
    if metric == "fit_seconds":
        return statistics.median(v["fit_seconds"] for v in values)
    return statistics.median(v["metrics"]["all"][metric] for v in values)


def table(store: dict, label: str, story_names) -> str:
    """One row per story: medians over the seeds every ranker of the row has."""
    runs = store["runs"]
    finrec = f"finrec:{label}"
    head = (
        f"{'story':<13}{'seeds':>7} | {'nDCG@5 finrec':>13}{'LightGBM':>10}{'oracle':>8}{'f/oracle':>9}"
        f"{'f-LGBM':>8} | {'MRR finrec':>10}{'LightGBM':>10}{'oracle':>8}{'f-LGBM':>8} | "
        f"{'fit s finrec':>12}{'LightGBM':>10}"
    )
    lines = [f"finrec ranker: {finrec}; tuned LightGBM: lightgbm_tuned; medians over seeds", head, "-" * len(head)]
    for story in story_names:
        seeds = sorted(
            r["seed"]
            for r in runs.values()
            if r["story"] == story
            and r["ranker"] == finrec
            and f"{story}|lightgbm_tuned|{r['seed']}" in runs
            and f"{story}|oracle|{r['seed']}" in runs
        )
        if not seeds:
            continue

        nd = f"ndcg@{K}"

        def med(ranker, metric, story=story, seeds=seeds):
            return _median_of(runs, story, ranker, seeds, metric)

        ratio = statistics.median(
            runs[f"{story}|{finrec}|{s}"]["metrics"]["all"][nd] / runs[f"{story}|oracle|{s}"]["metrics"]["all"][nd]
            for s in seeds
        )
        lines.append(
            f"{story:<13}{','.join(map(str, seeds)):>7} | {med(finrec, nd):>13.4f}{med('lightgbm_tuned', nd):>10.4f}"
            f"{med('oracle', nd):>8.4f}{ratio:>9.3f}{med(finrec, nd) - med('lightgbm_tuned', nd):>+8.4f} | "
            f"{med(finrec, 'mrr'):>10.4f}{med('lightgbm_tuned', 'mrr'):>10.4f}{med('oracle', 'mrr'):>8.4f}"
            f"{med(finrec, 'mrr') - med('lightgbm_tuned', 'mrr'):>+8.4f} | "
            f"{med(finrec, 'fit_seconds'):>12.1f}{med('lightgbm_tuned', 'fit_seconds'):>10.1f}"
        )
    lines.append(
        "f/oracle: median over seeds of finrec's nDCG@5 / the oracle's; f-LGBM: difference of the medians. "
        "LightGBM's fit seconds include its search."
    )
    return "\n".join(lines)


def main() -> None:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", nargs="+", default=None, help=f"any of {', '.join(stories())} (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--config", type=Path, help="a finrec config YAML (default: Config() defaults)")
    parser.add_argument("--label", help="the finrec ranker's label (default: the config file's stem, or 'default')")
    parser.add_argument(
        "--lgbm-trials", type=int, default=6, help="TunedLightGBM's trial budget (the stored runs used 6)"
    )
    parser.add_argument("--lgbm-seconds", type=float, default=None, help="TunedLightGBM's time budget (search)")
    parser.add_argument(
        "--lgbm-threads",
        type=int,
        default=None,
        help="LightGBM threads (default: every core, as on a user's machine; the stored runs used 1 because "
        "OpenMP threads spin against other load on a shared 2-core box)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="customers as a multiple of each bank's own count (stored as STORY@xSCALE): how much of a gap is data",
    )
    parser.add_argument("--table", action="store_true", help="only print the table of the stored runs")
    parser.add_argument("--results", type=Path, default=None, help=f"the results file (default {RESULTS})")
    parser.add_argument(
        "--merge", type=Path, nargs="*", default=[], help="merge the runs of these results files into the store"
    )
    args = parser.parse_args()
    if args.results:
        RESULTS = args.results
    args.label = args.label or (args.config.stem if args.config else "default")
    names = args.stories or list(stories())
    for name in names:
        if name not in stories():
            raise SystemExit(f"unknown story {name!r}; choose from {', '.join(stories())}")
    store = load_store()
    for path in args.merge:
        store["runs"].update(json.loads(Path(path).read_text())["runs"])
    if args.merge:
        save(store)
    if not args.table:
        for story in names:
            for seed in args.seeds:
                run_one(story, seed, args.variants, args, store)
        save(store)
        print(f"wrote {RESULTS}")
    print(table(store, args.label, [stored_name(name, args.scale) for name in names]))


if __name__ == "__main__":
    main()
