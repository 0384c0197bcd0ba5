"""Quality study: finrec's variants against the strongest baselines on held-out customers.

For each dataset and seed the synthetic bank is generated with that seed, split 80/20 by customer
(``split_dataset``, same seed) and every ranker is fitted on the 80% and scored on the held-out
customers that have interactions (all products they do not hold are ranked). Rankers: random,
popularity, the oracle (true adoption probabilities), LightGBM (multiclass over products on
customer features + holdings) and finrec variants. Besides the overall metrics each run records
the cold-start split (held-out customers with vs without a holdings row) and, for finrec models,
the cosine distribution of relevant vs other products.

    .venv/bin/python benchmarks/quality.py --datasets default large hard --variants default lightgbm --seeds 0 1 2
    .venv/bin/python benchmarks/quality.py --datasets default --variants all --seeds 0
    .venv/bin/python benchmarks/quality.py --compare-backends      # default model, default bank, seed 0: TF and JAX
    .venv/bin/python benchmarks/quality.py --markdown              # tables from the stored results

Runs are merged into benchmarks/results/quality.json keyed by (dataset, variant, seed, backend),
so subsets can be run one after another; the summary (median and std over seeds) is recomputed
from every stored run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = Path(__file__).parent / "results" / "quality.json"
K = 5
METRICS = [f"ndcg@{K}", f"map@{K}", "mrr", f"precision@{K}", f"recall@{K}", f"hit_rate@{K}"]
DATASETS = {
    "default": {},
    "large": {"n_products": 120, "n_customers": 30000},
    "hard": {"difficulty": "hard", "n_customers": 30000},
}
BASELINES = ("random", "popularity", "oracle")
VARIANTS = (
    "default",
    "in_batch",
    "sampled",
    "triplet",
    "cross1",
    "no_holdings",
    "wide",
    "temp0.05",
    "temp0.2",
    "holdings_dropout0.1",
    "holdings_dropout0.2",
    "lightgbm",
)
VARIANT_TEXT = {
    "default": "Config() defaults",
    "in_batch": "training.loss: in_batch",
    "sampled": "training.loss: sampled, num_negatives 8 (25 products) / 20 (120 products)",
    "triplet": "training.loss: triplet",
    "cross1": "model.cross_layers: 1",
    "no_holdings": "model.use_holdings: false",
    "wide": "model.customer_widths = product_widths = [256, 128], embedding_dim 64",
    "temp0.05": "training.temperature: 0.05",
    "temp0.2": "training.temperature: 0.2",
    "holdings_dropout0.1": "training.holdings_dropout: 0.1 (cold start: holdings and history zeroed for 10% of rows)",
    "holdings_dropout0.2": "training.holdings_dropout: 0.2",
    "lightgbm": "LightGBMBaseline (multiclass, 31 leaves, lr 0.05, early stopping 30)",
}


def variant_config(name: str, n_products: int, seed: int, extra: dict | None = None):
    from finrec.config import Config, ModelConfig

    config = Config()
    model, training = {}, {"seed": seed}
    if name == "in_batch":
        training["loss"] = "in_batch"
    elif name == "sampled":
        training.update(loss="sampled", num_negatives=8 if n_products <= 25 else 20)
    elif name == "triplet":
        training["loss"] = "triplet"
    elif name == "cross1":
        model["cross_layers"] = 1
    elif name == "no_holdings":
        model["use_holdings"] = False
    elif name == "wide":
        model.update(customer_widths=(256, 128), product_widths=(256, 128), embedding_dim=64)
    elif name.startswith("temp"):
        training["temperature"] = float(name[4:])
    elif name.startswith("holdings_dropout"):
        training["holdings_dropout"] = float(name[len("holdings_dropout") :])
    elif name != "default":
        raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    for key, value in (extra or {}).items():
        (model if key in {f.name for f in dataclasses.fields(ModelConfig)} else training)[key] = value
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, **model),
        training=dataclasses.replace(config.training, **training),
    )
    return config.validate()


def load_dataset(name: str, seed: int):
    from finrec.data import schema as S
    from finrec.data.io import validate_tables
    from finrec.data.split import split_dataset
    from finrec.data.synthetic import GeneratorSettings, generate

    settings = GeneratorSettings(seed=seed, **DATASETS[name])
    dataset = validate_tables(S.SYNTHETIC.schema(), generate(settings))
    return split_dataset(dataset, holdout_fraction=0.2, seed=seed)


class Task:
    """The held-out ranking task: rows are held-out customers with interactions."""

    def __init__(self, train, test):
        from finrec.evaluate.report import ranking_task
        from finrec.features import FeaturePipeline

        self.pipeline = FeaturePipeline(train.schema).fit(train)
        self.ids, self.relevant, self.excluded = ranking_task(self.pipeline, test)
        cid = test.schema.customers.id
        self.customers = test.customers.set_index(cid, drop=False).loc[self.ids].reset_index(drop=True)
        self.holdings = test.holdings
        self.ground_truth = test.ground_truth
        holders = set(test.holdings["customer_id"].astype(str))
        self.with_holdings = np.array([str(i) in holders for i in self.ids], dtype=bool)

    def metrics(self, scores, hidden=None) -> dict:
        """Overall and per cold-start group; ``hidden``: the scores of the same customers with
        their holdings withheld from the model (held products are still excluded)."""
        from finrec.evaluate.metrics import summarize

        out = {"all": summarize(scores, self.relevant, self.excluded, k=K)}
        if hidden is not None:
            out["holdings_hidden"] = summarize(hidden, self.relevant, self.excluded, k=K)
        for group, mask in (("with_holdings", self.with_holdings), ("without_holdings", ~self.with_holdings)):
            out[group] = summarize(scores[mask], self.relevant[mask], self.excluded[mask], k=K)
        return out

    def score_distribution(self, scores) -> dict:
        """Cosine of relevant vs other (rankable, not relevant) products."""
        rankable = ~self.excluded
        relevant = self.relevant & rankable
        other = rankable & ~self.relevant
        quantiles = [0.05, 0.25, 0.5, 0.75, 0.95]
        edges = np.linspace(-1.0, 1.0, 11)
        out = {}
        for name, mask in (("relevant", relevant), ("other", other)):
            values = np.asarray(scores, dtype="float64")[mask]
            hist, _ = np.histogram(np.clip(values, -1.0, 1.0), bins=edges)
            out[name] = {
                "n": int(values.size),
                "mean": float(values.mean()),
                "quantiles": dict(zip([str(q) for q in quantiles], np.quantile(values, quantiles).tolist())),
                "histogram": (hist / max(values.size, 1)).tolist(),
            }
        out["histogram_edges"] = edges.tolist()
        # Probability that a random relevant product outscores a random other one, per customer.
        out["auc"] = _mean_auc(np.asarray(scores, dtype="float64"), relevant, other)
        return out


def _mean_auc(scores, relevant, other) -> float:
    aucs = []
    for s, r, o in zip(scores, relevant, other):
        if r.any() and o.any():
            aucs.append(float((s[r][:, None] > s[o][None, :]).mean() + 0.5 * (s[r][:, None] == s[o][None, :]).mean()))
    return float(np.mean(aucs)) if aucs else float("nan")


def run_one(
    dataset: str,
    seed: int,
    variants: list[str],
    backend: str,
    lgbm_threads: int,
    extra: dict,
    store: dict,
    path: Path = RESULTS,
) -> None:
    import keras

    from finrec.evaluate import baselines
    from finrec.training.train import fit

    started = time.perf_counter()
    train, test = load_dataset(dataset, seed)
    task = Task(train, test)
    print(
        f"[{dataset} seed {seed}] data ready in {time.perf_counter() - started:.1f}s: "
        f"{len(task.ids)} held-out customers ranked ({task.with_holdings.sum()} with holdings), "
        f"{task.pipeline.n_products} products",
        flush=True,
    )
    rng = np.random.default_rng(seed)
    n, n_products = task.relevant.shape
    fixed = {
        "random": baselines.random_scores(n, n_products, rng),
        "popularity": baselines.popularity_scores(n, np.asarray(task.pipeline.product_popularity_)),
        "oracle": baselines.oracle_scores(task.ids, task.pipeline.product_ids_, task.ground_truth),
    }
    for name, scores in fixed.items():
        record(store, dataset, name, seed, "-", {"metrics": task.metrics(scores), "fit_seconds": 0.0})
    suffix = "+" + ",".join(f"{k}={v}" for k, v in sorted(extra.items())) if extra else ""
    for variant in variants:
        start = time.perf_counter()
        if variant == "lightgbm":
            model = baselines.LightGBMBaseline(num_threads=lgbm_threads).fit(train, seed=seed)
            seconds = time.perf_counter() - start
            scores = model.score(task.customers, task.holdings)
            hidden = model.score(task.customers, None)
            entry = {"fit_seconds": seconds, "rounds": model.best_iteration_, "num_threads": lgbm_threads}
            key_backend = "-"
        else:
            config = variant_config(variant, n_products, seed, extra)
            trained = fit(train, config, verbose=0)
            seconds = time.perf_counter() - start
            scores = trained.score(task.customers, task.holdings)
            hidden = trained.score(task.customers, None)
            epochs = len(trained.history["loss"])
            monitor = trained.history.get(f"val_ndcg@{K}", [])
            entry = {
                "fit_seconds": seconds,
                "epochs": epochs,
                "epoch_seconds": trained.history["fit_seconds"][0] / epochs,
                "best_epoch": int(np.argmax(monitor)) + 1 if monitor else None,
                "best_val_ndcg": float(max(monitor)) if monitor else None,
                "config": config.to_dict(),
                "score_distribution": task.score_distribution(scores),
            }
            key_backend = keras.backend.backend()
        entry["metrics"] = task.metrics(scores, hidden)
        record(store, dataset, variant + suffix, seed, key_backend, entry)
        m = entry["metrics"]["all"]
        print(
            f"[{dataset} seed {seed}] {variant + suffix:<14} {key_backend:<10} ndcg@5 {m['ndcg@5']:.4f} mrr {m['mrr']:.4f} "
            f"(oracle {task.metrics(fixed['oracle'])['all']['ndcg@5']:.4f}) fit {seconds:.1f}s"
            + (f", {entry['epochs']} epochs" if "epochs" in entry else f", {entry['rounds']} rounds"),
            flush=True,
        )
        save(store, path)


def record(store: dict, dataset: str, variant: str, seed: int, backend: str, entry: dict) -> None:
    key = f"{dataset}|{variant}|{seed}|{backend}"
    store["runs"][key] = {
        "dataset": dataset,
        "variant": variant,
        "seed": seed,
        "backend": backend,
        "date": datetime.date.today().isoformat(),
        **entry,
    }


def load_store(path: Path = RESULTS) -> dict:
    """The stored runs of a results file (``{"runs": {}}`` when there is none yet)."""
    if path.exists():
        store = json.loads(path.read_text())
        store.setdefault("runs", {})
        return store
    return {"runs": {}}


def summarize_runs(runs: dict) -> dict:
    groups: dict[str, list[dict]] = {}
    for run in runs.values():
        groups.setdefault(f"{run['dataset']}|{run['variant']}|{run['backend']}", []).append(run)
    summary = {}
    for key, items in sorted(groups.items()):
        items = sorted(items, key=lambda r: r["seed"])
        out = {"seeds": [r["seed"] for r in items]}
        for group in ("all", "with_holdings", "without_holdings"):
            out[group] = {m: _stat([r["metrics"][group][m] for r in items]) for m in METRICS}
            out[group]["customers"] = statistics.median([r["metrics"][group]["customers"] for r in items])
        if all("holdings_hidden" in r["metrics"] for r in items):
            out["holdings_hidden"] = {m: _stat([r["metrics"]["holdings_hidden"][m] for r in items]) for m in METRICS}
        out["fit_seconds"] = _stat([r["fit_seconds"] for r in items])
        if "epochs" in items[0]:
            out["epochs"] = [r["epochs"] for r in items]
            out["epoch_seconds"] = _stat([r["epoch_seconds"] for r in items])
        summary[key] = out
    return summary


def _stat(values: list[float]) -> dict:
    """Median and sample std over seeds; NaN (an empty group) when no seed has a value."""
    present = [v for v in values if v == v]
    if not present:
        return {"median": float("nan"), "std": float("nan"), "values": values}
    return {
        "median": statistics.median(present),
        "std": statistics.stdev(present) if len(present) > 1 else 0.0,
        "values": values,
    }


def save(store: dict, path: Path = RESULTS) -> None:
    store["machine"] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    store["summary"] = summarize_runs(store["runs"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(store, indent=1, sort_keys=True))
    tmp.replace(path)


# ------------------------------------------------------------------------------- markdown


def markdown(store: dict) -> str:
    summary = store["summary"]
    lines = []
    order = list(BASELINES) + list(VARIANTS)

    def rank(key):
        variant = key.split("|")[1]
        base = variant.split("+")[0]
        return (order.index(base) if base in order else len(order), variant, key.split("|")[2])

    for dataset in DATASETS:
        keys = sorted((k for k in summary if k.startswith(dataset + "|")), key=rank)
        if not keys:
            continue
        lines += [
            f"#### Dataset `{dataset}` ({_describe(dataset)})",
            "",
            "| ranker | backend | seeds | " + " | ".join(METRICS) + " | fit s | epochs |",
            "|---|---|---|" + "---:|" * (len(METRICS) + 2),
        ]
        for key in keys:
            s = summary[key]
            _, variant, backend = key.split("|")
            cells = [f"{s['all'][m]['median']:.4f} ± {s['all'][m]['std']:.4f}" for m in METRICS]
            fit = (
                f"{s['fit_seconds']['median']:.1f} ± {s['fit_seconds']['std']:.1f}" if variant not in BASELINES else "-"
            )
            epochs = ",".join(str(e) for e in s.get("epochs", [])) or "-"
            lines.append(
                f"| {variant} | {backend} | {','.join(map(str, s['seeds']))} | "
                + " | ".join(cells)
                + f" | {fit} | {epochs} |"
            )
        lines.append("")
    return "\n".join(lines)


def _describe(dataset: str) -> str:
    settings = DATASETS[dataset]
    return "GeneratorSettings(" + ", ".join(f"{k}={v!r}" for k, v in settings.items()) + ")"


def compare_backends(args) -> None:
    for backend in ("tensorflow", "jax"):
        env = dict(os.environ, KERAS_BACKEND=backend)
        cmd = [
            sys.executable,
            __file__,
            "--datasets",
            "default",
            "--variants",
            "default",
            "--seeds",
            "0",
            "--backend",
            backend,
        ]
        print("$ KERAS_BACKEND=" + backend + " " + " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["default"], choices=sorted(DATASETS))
    parser.add_argument(
        "--variants", nargs="+", default=["default", "lightgbm"], help=f"any of {', '.join(VARIANTS)}, or 'all'"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--backend",
        choices=["tensorflow", "jax"],
        default=None,
        help="Keras backend for this process (default: KERAS_BACKEND or tensorflow)",
    )
    parser.add_argument(
        "--lgbm-threads",
        type=int,
        default=1,
        help="LightGBM threads (1: OpenMP threads spin against other load on a shared 2-core box)",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra config overrides for the finrec variants, e.g. epochs=60 patience=8 (recorded in the variant name)",
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help=f"the results file to merge into (default {RESULTS})"
    )
    parser.add_argument("--compare-backends", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="print the stored results as markdown tables")
    args = parser.parse_args()

    if args.markdown:
        print(markdown(load_store(args.results)))
        return
    if args.compare_backends:
        compare_backends(args)
        return
    os.environ["KERAS_BACKEND"] = args.backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    variants = list(VARIANTS) if args.variants == ["all"] else args.variants
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    extra = {}
    for item in args.set:
        key, _, value = item.partition("=")
        extra[key] = json.loads(value) if value[:1] in "0123456789-[tf" else value
        if isinstance(extra[key], list):
            extra[key] = tuple(extra[key])
    store = load_store(args.results)
    for dataset in args.datasets:
        for seed in args.seeds:
            run_one(dataset, seed, variants, os.environ["KERAS_BACKEND"], args.lgbm_threads, extra, store, args.results)
    save(store, args.results)
    print(f"wrote {args.results}")


import numpy as np  # noqa: E402  (after the environment is set; numpy does not pick the backend)

if __name__ == "__main__":
    main()
