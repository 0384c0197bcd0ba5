"""The validation report a model-risk team reviews before go-live (SR 11-7 / OCC 2011-12: conceptual
soundness, outcomes analysis, ongoing monitoring), generated from a model directory and a dataset:

    finrec report --model models/default --data data/split/test --out report.html   # or report.md

Every section is computed, none is hand-written: intended use; the data (tables, sizes, date range,
each feature's distribution, missingness and drift from training, the fingerprint); the method
(towers, loss, configuration, training curves); performance on the customers of the data against
the baselines with bootstrap intervals; performance by segment; stability across seeds (other
models given with ``--seed-models``); calibration; fairness; global explanations (mean |SHAP|);
the suitability audit; limitations and monitoring thresholds; the versions of every library.

Data without outcomes (no ``interactions``) still gets every section that does not need them;
the outcome sections then say that they need interactions. Plots are SVG images inside the file.
"""

from __future__ import annotations

import logging
import platform
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finrec.config import MAX_SEED
from finrec.data import compliance as C
from finrec.data import schema as S
from finrec.data.categories import as_category_text
from finrec.data.ids import is_in
from finrec.evaluate.fairness import MISSING, group_labels
from finrec.governance import svg
from finrec.governance.compare import paired_bootstrap, per_customer_metrics
from finrec.governance.monitor import ALERT_PSI, WARN_PSI

log = logging.getLogger(__name__)

MAX_EVAL_CUSTOMERS = 20_000
RESAMPLES = 1000
LIGHTGBM_TRIALS = 4  # the tuned baseline's search budget in the report
LIBRARIES = (
    "finrec",
    "numpy",
    "pandas",
    "pyarrow",
    "keras",
    "tensorflow",
    "jax",
    "scikit-learn",
    "lightgbm",
    "shap",
    "fastapi",
    "streamlit",
)


@dataclass
class Section:
    title: str
    blocks: list[tuple] = field(default_factory=list)  # ("p", text) | ("table", columns, rows) | ("img", svg, alt)

    def p(self, text: str) -> Section:
        self.blocks.append(("p", text))
        return self

    def table(self, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Section:
        columns = columns or (list(rows[0]) if rows else [])
        self.blocks.append(("table", columns, rows))
        return self

    def img(self, svg_text: str, alt: str) -> Section:
        self.blocks.append(("img", svg_text, alt))
        return self


@dataclass
class Context:
    """Everything the sections share: the model, the data and the ranking of its customers."""

    model_dir: Path
    data_dir: Path
    manifest: dict
    trained: Any
    dataset: Any
    recommender: Any
    k: int
    seed: int
    eval_ids: np.ndarray | None = None  # customers with outcomes (a sample beyond MAX_EVAL_CUSTOMERS)
    relevant: np.ndarray | None = None
    excluded: np.ndarray | None = None
    eval_customers: pd.DataFrame | None = None
    model_scores: np.ndarray | None = None

    @property
    def has_outcomes(self) -> bool:
        return self.eval_ids is not None and len(self.eval_ids) > 0


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{value:,.{digits}f}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def _interval(row: dict[str, float]) -> str:
    return f"{row['difference']:.4f} [{row['low']:.4f}, {row['high']:.4f}]"


def _mean_interval(values: np.ndarray, seed: int) -> dict[str, float]:
    return paired_bootstrap(np.zeros(len(values)), values, np.random.default_rng(seed), resamples=RESAMPLES)


# ------------------------------------------------------------------------------------ sections


def intended_use(ctx: Context) -> Section:
    categories = (
        sorted(ctx.trained.products[ctx.trained.pipeline.full_schema.products.category].astype(str).unique())
        if ctx.trained.pipeline.full_schema.products.category
        else []
    )
    section = Section("1. Intended use and out-of-scope uses")
    section.p(
        f"Intended use: ranking the {len(ctx.trained.products)} products of the bank's catalogue"
        + (f" ({', '.join(categories)})" if categories else "")
        + " for each existing or prospective retail customer, to support advisers and marketing. Recommendations "
        "are shown after the suitability rule (product risk level at most the customer's risk tolerance) and the "
        "products' eligibility terms have removed what may not be offered."
    )
    section.p(
        "Out of scope: credit decisions (approval, limits, pricing) and any automated decision with legal or "
        "similarly significant effect; advice without a suitability assessment by the bank; customers outside the "
        "population of the training data (see the drift column of section 2); products added to the catalogue "
        "after training (the model must be retrained to score them)."
    )
    return section


def data_section(ctx: Context, drift: dict | None) -> Section:
    dataset, manifest = ctx.dataset, ctx.manifest
    section = Section("2. Data")
    section.table(
        [
            {"": "training data", "value": str(manifest.get("data_path") or "-")},
            {"": "training data fingerprint (manifest)", "value": str(manifest.get("data_fingerprint") or "-")},
            {"": "schema hash", "value": str(manifest.get("schema_hash"))},
            {"": "data of this report", "value": str(ctx.data_dir)},
        ]
    )
    tables = [
        {"table": S.CUSTOMERS, "rows": len(dataset.customers)},
        {"table": S.PRODUCTS, "rows": len(dataset.products)},
        {"table": S.INTERACTIONS, "rows": len(dataset.interactions)},
        {"table": S.HOLDINGS, "rows": len(dataset.holdings)},
        {"table": S.GROUND_TRUTH, "rows": "absent" if dataset.ground_truth is None else len(dataset.ground_truth)},
    ]
    section.table(tables)
    if S.TIMESTAMP in dataset.interactions and len(dataset.interactions):
        stamps = pd.to_datetime(dataset.interactions[S.TIMESTAMP], errors="coerce").dropna()
        if len(stamps):
            section.p(f"Interactions from {stamps.min():%Y-%m-%d} to {stamps.max():%Y-%m-%d}.")
    else:
        section.p("The interactions carry no timestamp: no date range.")
    history = dataset.holdings_history
    if getattr(ctx.trained.pipeline, "history_", None) is not None and (history is None or len(history) == 0):
        # Said by score, evaluate, recommend, plan and monitor; the report measured such a model as
        # if every customer were new, without a word (a tester).
        section.p(
            f"The model reads a {S.HOLDINGS_HISTORY} table and this data has none: every figure below scores each "
            "customer as one without a past, as a new customer is, not as the model serves the bank's customers."
        )
    schema = ctx.trained.pipeline.full_schema
    customers = dataset.customers
    features = drift["features"] if drift else {}
    rows = []
    for column in schema.customers.numeric_features:
        values = pd.to_numeric(customers[column], errors="coerce") if column in customers else pd.Series(dtype=float)
        q = values.quantile([0.05, 0.5, 0.95]) if values.notna().any() else pd.Series([np.nan] * 3)
        entry = features.get(column, {})
        rows.append(
            {
                "feature": column,
                "kind": "numeric",
                "missing": f"{values.isna().mean():.1%}",
                "mean": _number(values.mean()),
                "p5": _number(q.iloc[0]),
                "median": _number(q.iloc[1]),
                "p95": _number(q.iloc[2]),
                "PSI vs training": _number(entry.get("psi")),
                "drift": entry.get("status", "-"),
            }
        )
    for column in schema.customers.categorical_features:
        values = customers[column] if column in customers else pd.Series(dtype=object)
        shares = as_category_text(values).dropna().value_counts(normalize=True)
        top = ", ".join(f"{name} {share:.0%}" for name, share in shares.head(4).items())
        entry = features.get(column, {})
        rows.append(
            {
                "feature": column,
                "kind": f"categorical ({len(shares)})",
                "missing": f"{values.isna().mean():.1%}",
                "mean": top,
                "p5": "",
                "median": "",
                "p95": "",
                "PSI vs training": _number(entry.get("psi")),
                "drift": entry.get("status", "-"),
            }
        )
    section.p(
        "Each customer feature of this data (mean and quantiles; for a category, its most frequent values) "
        "and its population stability index against the training population"
        + ("" if drift else " (not available: the model has no monitoring reference; retrain to record one)")
        + "."
    )
    section.table(rows)
    for column in list(schema.customers.numeric_features)[:12]:
        if column in customers:
            values = pd.to_numeric(customers[column], errors="coerce").dropna()
            if len(values):
                counts, edges = np.histogram(values, bins=20)
                section.img(
                    svg.histogram(counts.tolist(), [_number(e, 2) for e in edges[:-1]], column),
                    f"histogram of {column}",
                )
    return section


def method_section(ctx: Context) -> Section:
    config = ctx.trained.config
    section = Section("3. Method")
    model = ctx.trained.model
    section.p(
        "A two-tower model (Keras 3): a customer tower and a product tower of Dense + BatchNormalization + ReLU "
        "+ Dropout blocks map into one L2-normalised embedding space; the score is their cosine similarity. "
        f"Loss: {config.training.loss} (temperature {config.training.temperature}); trained with AdamW and early "
        f"stopping on validation nDCG@{config.training.eval_k}; {model.count_params():,} parameters."
    )
    rows = [
        {"section": name, "setting": key, "value": str(value)}
        for name, part in config.to_dict().items()
        if isinstance(part, dict)
        for key, value in part.items()
    ]
    for text in scoring_notes(ctx.trained):
        section.p(text)
    section.table(rows)
    history = ctx.trained.history
    losses = {name: values for name, values in history.items() if name in ("loss", "val_loss")}
    if losses:
        section.img(svg.line_chart(losses, "training loss per epoch", "epoch"), "training loss")
    quality = {
        name: values for name, values in history.items() if name.startswith("val_") and "@" in name or name == "val_mrr"
    }
    if quality:
        section.img(svg.line_chart(quality, "validation metrics per epoch", "epoch"), "validation metrics")
    return section


def scoring_notes(trained) -> list[str]:
    """What a validator must know beyond the towers: a tree teacher the loss distils, and a tree
    model blended into the score itself."""
    notes = []
    training = trained.config.training
    history = getattr(trained, "history", {})
    earlier = int(history.get("earlier_months", [0])[0])
    # A streamed fit trains on the adoptions alone, whatever the config says (history "distilled" 0).
    distilled = training.distill > 0 and history.get("distilled", [1.0])[0] > 0
    if earlier:
        trees = distilled or getattr(trained, "blend", None) is not None
        teacher = " (the tree teacher trains on them too)" if trees else ""
        notes.append(
            f"Training months: besides the latest month's adoptions, those of {earlier} earlier month(s), read off "
            "the holdings history as the products held at one snapshot and not at the one before, with the "
            f"holdings and history of that time and today's customer attributes{teacher}. Early stopping (and a "
            "tree blend's weight, where there is one) ranks the validation customers' latest and earlier months, "
            "which never train; the calibration reads the latest month alone."
        )
    if distilled:
        notes.append(
            f"Distillation: the loss is {1 - training.distill:.2g} x the adoptions' cross-entropy + "
            f"{training.distill:.2g} x the cross-entropy against a multiclass LightGBM teacher fitted on the "
            "training customers. The teacher is not used at scoring unless a tree blend is listed below."
        )
    blend = getattr(trained, "blend", None)
    if blend is not None:
        teacher = blend.teacher
        lags = "with the holdings history's lag features" if teacher.lags_ is not None else "without history features"
        protected = "protected columns excluded" if teacher.exclude_protected else "protected columns included"
        notes.append(
            f"Tree blend: the score is {1 - blend.weight:.2g} x the cosine + {blend.weight:.2g} x "
            f"{blend.temperature:g} x the LightGBM model's logit less its mean over the products "
            f"(weight chosen on validation customers). The LightGBM model ({teacher.best_iteration_} rounds, "
            f"{len(teacher.classes_)} products, {protected}, {lags}) runs on every customer scored."
        )
        launches = [trained.pipeline.product_ids_[p] for p in np.flatnonzero(blend.launches())]
        if launches:
            shown = ", ".join(str(p) for p in launches[:5]) + (
                f" and {len(launches) - 5} more" if len(launches) > 5 else ""
            )
            notes.append(
                f"{len(launches)} product(s) the LightGBM model never saw adopted ({shown}) have no logit of its own: "
                "the two-tower model's own logit, centred over the products the LightGBM model knows, stands in "
                "for it, so a new product is ranked by its attributes as the towers see them."
            )
        if blend.cold_weight is not None and blend.cold_weight != blend.weight:
            notes.append(
                f"A customer who holds nothing (a new customer, or one who closed everything) is scored with the tree "
                f"weight {blend.cold_weight:.2g} "
                f"instead of {blend.weight:.2g}: chosen on the same validation customers with their holdings and "
                "history withheld, because the trees learn that case only from the few customers who hold nothing."
            )
        if trained.history.get("tree_blend_refit"):
            notes.append(
                "The blend's LightGBM model was refitted on every training customer after its weight and the "
                "calibration were chosen with one fitted without the validation customers (a small bank: the trees "
                "gain from the larger sample)."
            )
    return notes


def _prepare_outcomes(ctx: Context) -> None:
    from finrec.evaluate.report import ranking_task

    if len(ctx.dataset.interactions) == 0:
        return
    ids, relevant, excluded = ranking_task(ctx.trained.pipeline, ctx.dataset)
    if len(ids) > MAX_EVAL_CUSTOMERS:
        keep = np.sort(np.random.default_rng(ctx.seed).choice(len(ids), MAX_EVAL_CUSTOMERS, replace=False))
        ids, relevant, excluded = ids[keep], relevant[keep], excluded[keep]
    cid = ctx.dataset.schema.customers.id
    ctx.eval_ids, ctx.relevant, ctx.excluded = ids, relevant, excluded
    ctx.eval_customers = ctx.dataset.customers.set_index(cid, drop=False).loc[ids].reset_index(drop=True)
    ctx.model_scores = ctx.trained.score(ctx.eval_customers, ctx.dataset.holdings, ctx.dataset.holdings_history)


NO_OUTCOMES = (
    "This data has no interactions (outcomes), so {what} cannot be measured here; run the report on "
    "held-out customers with interactions (`finrec split`) to fill it."
)


def performance_section(ctx: Context, lightgbm: bool) -> Section:
    from finrec.evaluate import baselines

    section = Section("4. Performance on the customers of this data")
    if not ctx.has_outcomes:
        return section.p(NO_OUTCOMES.format(what="ranking performance"))
    k, n = ctx.k, len(ctx.eval_ids)
    pipeline = ctx.trained.pipeline
    scores = {
        "model": ctx.model_scores,
        "popularity": baselines.popularity_scores(n, np.asarray(pipeline.product_popularity_)),
        "random": baselines.random_scores(n, pipeline.n_products, np.random.default_rng(ctx.seed)),
    }
    notes = []
    if lightgbm:
        lgbm = _lightgbm_scores(ctx)
        if isinstance(lgbm, str):
            notes.append(lgbm)
        else:
            scores["LightGBM (tuned)"] = lgbm
    if ctx.dataset.ground_truth is not None:
        scores["oracle"] = baselines.oracle_scores(ctx.eval_ids, pipeline.product_ids_, ctx.dataset.ground_truth)
    else:
        notes.append("No ground truth in this data: no oracle (the best ranking the true adoption probabilities give).")
    from finrec.evaluate.report import unknown_adoptions

    unknown = unknown_adoptions(pipeline, ctx.dataset)
    if unknown:  # this section grades the model's catalogue only: said, as evaluate and compare count them
        notes.append(
            f"{sum(unknown.values()):,} adoption(s) in this data are of {len(unknown)} product(s) the model does not "
            f"know ({', '.join(list(unknown)[:5])}{' ...' if len(unknown) > 5 else ''}): they are left out of this "
            "section's task, so its figures are higher than the model earns on this data; `finrec evaluate` and "
            "`finrec compare` count them as misses."
        )
    rows, bars = [], {}
    for name, s in scores.items():
        _, per_customer = per_customer_metrics(s, ctx.relevant, ctx.excluded, k)
        row = {"ranker": name, "customers": len(per_customer[f"ndcg@{k}"])}
        for metric in (f"ndcg@{k}", f"recall@{k}", f"hit_rate@{k}", "mrr"):
            interval = _mean_interval(per_customer[metric], ctx.seed)
            row[metric] = _interval(interval)
            if metric == f"ndcg@{k}":
                bars[name] = interval["difference"]
        rows.append(row)
    section.p(
        f"{n:,} customers with outcomes; every product they do not hold is ranked. Each cell is the mean with "
        f"its 95% bootstrap interval ({RESAMPLES} resamples of customers, seed {ctx.seed})."
    )
    section.table(rows)
    section.img(svg.bar_chart(list(bars), list(bars.values()), f"nDCG@{k} by ranker"), f"nDCG@{k} by ranker")
    for note in notes:
        section.p(note)
    return section


def _lightgbm_scores(ctx: Context):
    try:
        import lightgbm  # noqa: F401
    except ImportError:
        return "LightGBM is not installed (`pip install finrec[baselines]`): no LightGBM baseline."
    from finrec.data.compliance import without_objections
    from finrec.data.io import load_dataset
    from finrec.evaluate.baselines import TunedLightGBM

    path = ctx.manifest.get("data_path")
    if not path or not Path(path).is_dir():
        return (
            "The training data recorded in the manifest is gone: no LightGBM baseline (it is trained on the same data)."
        )
    train, _ = without_objections(load_dataset(path))  # as finrec train fitted the model
    # Tuned on a validation split of the training data, as a bank's analysts would run it; a small
    # fixed budget keeps the report to minutes (benchmarks/stories.py uses 6 trials).
    model = TunedLightGBM(max_trials=LIGHTGBM_TRIALS).fit(train, seed=ctx.seed)
    return model.score(ctx.eval_customers, ctx.dataset.holdings, ctx.dataset.holdings_history)


def segments(ctx: Context, customers: pd.DataFrame) -> dict[str, pd.Series]:
    """Segment labels of ``customers``: age band, income quartile, risk tolerance, cold (no holdings)."""
    out: dict[str, pd.Series] = {}
    if S.AGE in customers:  # the fairness report's bands, "missing" included
        out["age band"] = group_labels(customers[S.AGE], S.AGE, ctx.trained.pipeline.full_schema.customers)
    if S.INCOME in customers:
        income = pd.to_numeric(customers[S.INCOME], errors="coerce")
        # Quartiles of the incomes given; a missing one is its own group (rank keeps it NaN).
        # Fewer than four incomes make no quartiles (qcut raised on them: a reviewer).
        if income.notna().sum() >= 4:
            out["income band"] = _with_missing(
                pd.qcut(income.rank(method="first"), 4, labels=["Q1 (lowest)", "Q2", "Q3", "Q4 (highest)"])
            )
    risk = ctx.trained.pipeline.full_schema.customers.risk
    if risk and risk in customers:
        out["risk tolerance"] = _with_missing(pd.to_numeric(customers[risk], errors="coerce").astype("Int64"))
    cid = ctx.dataset.schema.customers.id
    holds = is_in(customers[cid], ctx.dataset.holdings[S.CUSTOMER_ID])
    out["cold (no holdings)"] = pd.Series(
        np.where(holds, "holds products", "cold"), index=customers.index, dtype=object, name=cid
    )
    return out


def _with_missing(values: pd.Series) -> pd.Series:
    """Text labels of ``values``, ``missing`` where a value is: a customer without an age or an
    income is a group of its own, not a crash in sorting the groups (found by a tester)."""
    return values.astype(object).map(lambda v: MISSING if pd.isna(v) else str(v))


def segment_groups(labels: pd.Series) -> list[str]:
    """The groups of a segment's ``labels`` in order, ``missing`` last."""
    return sorted(labels.unique(), key=lambda g: (g == MISSING, g))


def segment_section(ctx: Context) -> Section:
    section = Section("5. Performance by segment")
    if not ctx.has_outcomes:
        return section.p(NO_OUTCOMES.format(what="performance by segment"))
    k = ctx.k
    rows_kept, per_customer = per_customer_metrics(ctx.model_scores, ctx.relevant, ctx.excluded, k)
    customers = ctx.eval_customers.iloc[rows_kept].reset_index(drop=True)
    rows = []
    for name, labels in segments(ctx, customers).items():
        for group in segment_groups(labels):
            members = (labels == group).to_numpy()
            interval = _mean_interval(per_customer[f"ndcg@{k}"][members], ctx.seed)
            rows.append(
                {
                    "segment": name,
                    "group": group,
                    "customers": int(members.sum()),
                    f"ndcg@{k}": _interval(interval),
                    f"recall@{k}": _number(float(per_customer[f"recall@{k}"][members].mean())),
                }
            )
    section.p(f"The model's nDCG@{k} (mean and 95% bootstrap interval) and recall@{k} within each segment.")
    return section.table(rows)


def retrain_seeds(ctx: Context, seeds: int, train_data: Path | None = None, epochs: int | None = None) -> list:
    """The model's configuration retrained with ``seeds`` other seeds (the model's seed + 1, + 2,
    ...) on its training data (``train_data``, else the directory its manifest names), leaving
    out customers who objected to profiling as ``finrec train`` does: [(label, TrainedModel)]."""
    from finrec.data.compliance import without_objections
    from finrec.data.io import load_dataset
    from finrec.errors import FinrecError
    from finrec.training.train import fit

    source = train_data or ctx.manifest.get("data_path")
    if not source or not Path(source).is_dir():
        raise FinrecError(
            f"--seeds: the model's training data {source or '(not recorded)'} is not there; name it with --train-data"
        )
    dataset, _ = without_objections(load_dataset(source))
    config = ctx.trained.config
    base = config.training.seed
    out = []
    for i in range(1, seeds + 1):
        seed = (base + i) % (MAX_SEED + 1)  # a model trained at the top seed wraps to 0, 1, ...
        # A cap on the epochs caps the model's min_epochs with them (``fit`` refuses more).
        shorter = {} if epochs is None else {"min_epochs": min(config.training.min_epochs, epochs)}
        trained = fit(dataset, config.with_overrides(seed=seed, epochs=epochs, **shorter), verbose=0)
        out.append((f"retrained here, seed {seed}", trained))
    return out


def stability_section(ctx: Context, seed_models: list[Path], retrained: list | None = None) -> Section:
    """nDCG across seeds: the model and ``seed_models`` (directories trained elsewhere; the model
    itself, a copy or a model of a seed already counted is left out with a note) and ``retrained``
    ([(label, TrainedModel)] from ``retrain_seeds``: ``finrec report --seeds N``)."""
    section = Section("6. Stability across seeds")
    retrained = retrained or []
    if not seed_models and not retrained:
        return section.p(
            "One model was given. `finrec report --seeds N` retrains its configuration with N other seeds on its "
            "training data; or train them yourself (`finrec train --seed S`) and pass them with "
            "`--seed-models DIR ...`, to measure how much the metrics move with the seed."
        )
    if not ctx.has_outcomes:
        return section.p(NO_OUTCOMES.format(what="stability across seeds"))
    rows, values = [], []
    models, notes = distinct_seed_models(ctx, seed_models, retrained)
    for path, trained in [*models, *retrained]:
        scores = (
            ctx.model_scores
            if trained is ctx.trained
            else trained.score(ctx.eval_customers, ctx.dataset.holdings, ctx.dataset.holdings_history)
        )
        _, per_customer = per_customer_metrics(scores, ctx.relevant, ctx.excluded, ctx.k)
        ndcg = float(per_customer[f"ndcg@{ctx.k}"].mean())
        values.append(ndcg)
        rows.append(
            {
                "model": str(path),
                "seed": trained.config.training.seed,
                f"ndcg@{ctx.k}": _number(ndcg),
                "recall": _number(float(per_customer[f"recall@{ctx.k}"].mean())),
            }
        )
    section.table(rows)
    for note in notes:
        section.p(note)
    if len(values) == 1:
        return section.p("No other seed was left to compare with: the spread across seeds is not measured.")
    return section.p(
        f"nDCG@{ctx.k} across {len(values)} seeds: mean {np.mean(values):.4f}, standard deviation "
        f"{np.std(values, ddof=1) if len(values) > 1 else 0:.4f}, range {min(values):.4f}-{max(values):.4f}."
    )


def distinct_seed_models(ctx: Context, seed_models: list[Path], retrained: list = ()) -> tuple[list, list[str]]:
    """([(path, TrainedModel)] of the model and each seed model that is another model of another
    seed than the model's and ``retrained``'s, [notes on those left out and on configurations that
    differ])."""
    from finrec.artifacts import load_model_dir, model_version

    models, notes = [(ctx.model_dir, ctx.trained)], []
    seen = {model_version(ctx.manifest): str(ctx.model_dir)}
    seeds = {ctx.trained.config.training.seed: str(ctx.model_dir)}
    seeds.update({trained.config.training.seed: label for label, trained in retrained})
    for path in seed_models:
        loaded = load_model_dir(path)
        version, seed = model_version(loaded.manifest), loaded.trained.config.training.seed
        # A tester passed the model itself, and a model of the same seed, and both were counted as
        # other seeds: the spread shrank towards zero and said the model was stable.
        if version in seen:
            notes.append(f"{path} is the same model as {seen[version]} (the same files): counted once.")
            continue
        if seed in seeds:
            notes.append(f"{path} has the seed of {seeds[seed]} ({seed}): not another seed, left out.")
            continue
        if _without_seed(loaded.trained.config) != _without_seed(ctx.trained.config):
            notes.append(
                f"{path} was trained with another configuration than the model's: its spread mixes the "
                "configuration's effect with the seed's."
            )
        seen[version], seeds[seed] = str(path), str(path)
        models.append((path, loaded.trained))
    return models, notes


def _without_seed(config) -> dict:
    settings = config.to_dict()
    settings.get("training", {}).pop("seed", None)
    return settings


def calibration_section(ctx: Context) -> Section:
    section = Section("7. Calibration")
    blended = " blended with the tree model's log-probabilities (section 3)" if ctx.trained.blend is not None else ""
    section.p(
        f"The model's score is a cosine similarity{blended}, not a probability: calibration here asks whether a "
        "higher score means a likelier adoption, per decile of the scores of the products ranked."
    )
    calibration = getattr(ctx.trained, "calibration", None)
    if calibration is not None and calibration.needs_adoption:
        model = calibration.adoption_model
        lags = ", the holdings history's lag features" if model.lags_ is not None else ""
        fitted = (
            f"{model.best_iteration_} rounds; customer columns, holdings and their count{lags}"
            if model.booster_ is not None
            else "no trees: too few customers of either kind, so the rate of those it was fitted on"
        )
        where = (
            "fitted by `finrec calibrate` on calibration customers (the model came without one), those who adopted "
            f"nothing included, then mapped to the rate of {calibration.customers} calibration customers by "
            "predictions from models that had not seen them"
            if calibration.adoption_cross_fitted
            else "fitted on the training customers, those who adopted nothing included, then mapped to the rate of "
            f"{calibration.customers} calibration customers"
        )
        section.p(
            "The probabilities a campaign plans with are factored: P(adopts product p) = P(adopts anything) x "
            f"P(p | adopts something). The first is a binary LightGBM model ({fitted}) {where}; the second, one "
            "map per product of the model's "
            "choice probability, fitted on those of them who adopted something. A softmax over products cannot "
            "say how likely a customer is to adopt at all (a constant added to a customer's scores leaves it as "
            "it is); without the first factor that chance could only follow the products' maps."
        )
    if not ctx.has_outcomes:
        return section.p(NO_OUTCOMES.format(what="the observed adoption rate per score decile"))
    rankable = ~ctx.excluded
    scores = ctx.model_scores[rankable]
    adopted = ctx.relevant[rankable]
    truth = None
    if ctx.dataset.ground_truth is not None:
        from finrec.evaluate import baselines

        probabilities = baselines.oracle_scores(
            ctx.eval_ids, ctx.trained.pipeline.product_ids_, ctx.dataset.ground_truth
        )
        truth = probabilities[rankable]
    edges = np.quantile(scores, np.linspace(0, 1, 11))
    decile = np.clip(np.searchsorted(edges[1:-1], scores, side="right"), 0, 9)
    rows, observed, expected = [], [], []
    for d in range(10):
        members = decile == d
        if not members.any():
            continue
        row = {
            "score decile": d + 1,
            "score range": f"{scores[members].min():.3f} to {scores[members].max():.3f}",
            "pairs": int(members.sum()),
            "observed adoption rate": f"{adopted[members].mean():.4f}",
        }
        observed.append(float(adopted[members].mean()))
        if truth is not None:
            row["mean true choice share"] = f"{truth[members].mean():.4f}"
            expected.append(float(truth[members].mean()))
        rows.append(row)
    section.table(rows)
    series = {"observed": observed, **({"true choice share": expected} if expected else {})}
    section.img(svg.line_chart(series, "adoption rate by score decile", "score decile"), "calibration")
    rising = bool(np.all(np.diff(observed) >= -0.01)) if len(observed) > 1 else True
    section.p(
        (
            "The observed adoption rate rises with the score decile."
            if rising
            else "The observed adoption rate does not rise steadily with the score: review before use."
        )
        # A tester read the two columns as one quantity: they are not on one scale.
        + (
            " The ground truth's probability is each product's share of a customer's next choice (it sums to 1 "
            "over the products), not the chance of adopting it in the period: its column shows whether the "
            "scores order the pairs as the truth does, not the level the observed rate should reach."
            if truth is not None
            else " No ground truth in this data: no true choice shares."
        )
    )
    return probability_part(section, ctx)


def probability_part(section: Section, ctx: Context) -> Section:
    """The calibrated probabilities against the adoptions observed (``probability_check``)."""
    from finrec.errors import safe_items
    from finrec.evaluate.report import (
        OFF_BY_CHANCE,
        adoptions_trained_on,
        calibrated_on,
        off_by_chance,
        probability_check,
    )

    check = probability_check(ctx.trained, ctx.dataset, max_customers=MAX_EVAL_CUSTOMERS, seed=ctx.seed)
    if check is None:
        return section.p("This model has no calibration: it gives no probabilities to check.")
    if "note" in check:
        return section.p(f"Calibrated probabilities: {check['note']}.")
    learned = adoptions_trained_on(
        ctx.dataset, ctx.manifest.get("data_path"), ctx.data_dir, ctx.manifest.get("data_fingerprint")
    )
    if learned:
        # On the training customers the scores are surer than on new ones: several products read
        # off by more than chance on the development bank's own training data.
        section.p(
            f"{learned:,} of this data's {len(ctx.dataset.interactions):,} adoptions are ones the model was trained "
            "on: the check below is not a fair one (the model's scores are surer on the customers it learned from); "
            "run the report on held-out customers or a later month to check the probabilities."
        )
    if calibrated_on(ctx.manifest, ctx.data_dir):
        section.p(
            "The probabilities were calibrated on this very data (`finrec calibrate`): the check below is optimistic; "
            "run the report on customers the calibration did not see to check them."
        )
    predicted, observed = check["predicted_adoptions"], check["observed_adoptions"]
    sample = f" (a sample of {check['sampled_from']:,})" if check.get("sampled_from") else ""
    section.p(
        f"The calibrated probabilities (those `finrec score --probabilities` writes and `finrec plan` plans with) "
        f"against the adoptions this data observed: {check['customers']:,} customers{sample}, those who adopted "
        f"nothing included, x the products each does not hold ({check['pairs']:,} pairs). Adoptions predicted "
        f"{predicted:,.1f}, observed {observed:,}. Brier score {check['brier']:.5f} against "
        f"{check['reference_brier']:.5f} for one constant at the observed rate; log loss {check['log_loss']:.5f}; "
        f"expected calibration error {check['ece']:.5f} over {check['bins']} bins of equal numbers of pairs."
        + (
            f" Left out: {safe_items(check['not_on_offer'], quote=False)}, not on offer in this data's products "
            "table and adopted by no one in it (withdrawn before these adoptions)."
            if check.get("not_on_offer")
            else ""
        )
    )
    rows = check["reliability"]
    section.table(
        [
            {
                "bin": i + 1,
                "pairs": f"{r['pairs']:,}",
                "mean probability": f"{r['predicted']:.4f}",
                "observed rate": f"{r['observed']:.4f}",
            }
            for i, r in enumerate(rows)
        ]
    )
    section.img(
        svg.line_chart(
            {"mean probability": [r["predicted"] for r in rows], "observed rate": [r["observed"] for r in rows]},
            "observed adoption rate by probability bin",
            "probability bin (equal numbers of pairs)",
        ),
        "reliability of the probabilities",
    )
    off = off_by_chance(check)
    section.table(
        [
            {
                "product": r["product_id"],
                "adoptions predicted": f"{r['predicted']:,.1f}",
                "observed": f"{r['observed']:,}",
                "z": "-" if r["z"] is None else f"{r['z']:+.1f}",
                "chance": "-" if r["chance"] is None else f"{r['chance']:.2g}",
            }
            for r in check["products"]
        ]
    )
    return section.p(
        f"Off by more than chance (chance {OFF_BY_CHANCE:g} or less: how often chance alone puts the count so far "
        "from the predicted, both ways; from z = (observed - predicted) / sqrt(sum p (1 - p)), or the Poisson tail "
        "where under 10 adoptions are predicted): "
        + ", ".join(f"{r['product_id']} ({r['chance']:.2g})" for r in off)
        + ". A campaign planned on these products' probabilities over- or under-states their adoptions: "
        "recalibrate (`finrec calibrate`) on recent held-out customers before planning. (Chance alone flags one of "
        f"{len(check['products'])} products in about {min(1.0, len(check['products']) * OFF_BY_CHANCE):.0%} of "
        "reports.)"
        if off
        else f"Every product's adoptions are within chance of the predicted (chance above {OFF_BY_CHANCE:g})."
    )


def fairness_section(ctx: Context) -> Section:
    from finrec.evaluate.fairness import fairness_report

    section = Section("8. Fairness")
    if not ctx.trained.pipeline.full_schema.customers.protected:
        return section.p("The schema lists no protected customer columns (customers.protected in schema.yaml).")
    report = fairness_report(ctx.trained, ctx.dataset, k=ctx.k)
    section.p(
        f"Per group of each protected column: the metrics (where outcomes exist) and the exposure, the share of "
        f"the group's top-{ctx.k} slots that goes to each product category, with the largest ratio between groups "
        f"(as `finrec evaluate --fairness`). Exclusion of protected columns from the model: "
        f"{'yes' if ctx.trained.config.model.exclude_protected else 'no'}."
    )
    if report.get("objected"):
        section.p(f"{report['objected']:,} customer(s) who objected to profiling for marketing are left out.")
    for column, body in report["columns"].items():
        if not body["groups"]:
            section.p(f"By {column}: no customer of this data to measure.")
            continue
        rows = [
            {
                "group": group,
                "customers": values["customers"],
                "evaluated": values["evaluated"],
                **{m: _number(values[m]) for m in (f"ndcg@{ctx.k}", f"recall@{ctx.k}", "mrr")},
            }
            for group, values in body["groups"].items()
        ]
        section.p(f"By {column}:").table(rows)
        exposure = [
            {
                "category": category,
                **{group: f"{values['exposure'][category]:.3f}" for group, values in body["groups"].items()},
                "max ratio": _ratio_text(ratio),
            }
            for category, ratio in body["max_ratio"].items()
        ]
        section.table(exposure)
    return section


def _ratio_text(ratio: dict[str, Any]) -> str:
    """A category's largest exposure ratio between groups; a group shown none of it while another
    is has no finite ratio, and is the strongest steering there is: ``inf``, as ``finrec evaluate
    --fairness`` prints it, naming that group (a bare ``-`` read as "not applicable")."""
    if ratio["ratio"] is None and ratio.get("highest"):
        return f"inf (none to {ratio['lowest']})"
    return _number(ratio["ratio"], 2)


def explanation_section(ctx: Context, n_customers: int) -> Section:
    section = Section("9. Global explanations")
    from importlib.util import find_spec

    if find_spec("shap") is None:
        return section.p("shap is not installed (`pip install finrec[dashboard]`): no SHAP values.")
    from finrec.explain import CustomerExplainer, permutation_shap

    customers = ctx.dataset.customers
    explainer = CustomerExplainer(ctx.recommender, background=customers, max_background=30, seed=ctx.seed)
    rng = np.random.default_rng(ctx.seed)
    pick = np.sort(rng.choice(len(customers), size=min(n_customers, len(customers)), replace=False))
    sample = customers.iloc[pick].reset_index(drop=True)
    ranking = ctx.recommender.rank(
        ctx.recommender.context(
            sample, ctx.dataset.holdings, history=ctx.dataset.holdings_history, adoption=False, validated=True
        ),
        1,
    )
    explained = [i for i in range(len(sample)) if ranking.index[i, 0] >= 0]
    if not explained:
        # Checked before the background is drawn: it leaves out those who objected, so data in
        # which every customer objected has none (the report failed on "no background customers").
        return section.p(
            f"None of the {len(sample):,} customers sampled has an eligible product (a customer who objected to "
            "profiling for marketing is not profiled): nothing to explain."
        )
    background = explainer.background_matrix()
    cid = ctx.dataset.schema.customers.id
    # The sampled customers' holdings only: grouped into lists for every customer of the data,
    # a Python list per customer, they took 7 s at 200,000 customers (70 s at 2M) for 20 explained.
    holdings = ctx.dataset.holdings
    holdings = holdings[is_in(holdings[S.CUSTOMER_ID], sample[cid])]
    held_by = holdings.groupby(S.CUSTOMER_ID)[S.PRODUCT_ID].apply(list).to_dict()
    values = []
    for i in explained:
        product = ctx.trained.pipeline.product_ids_[ranking.index[i, 0]]
        customer = str(sample[cid].iloc[i])
        # Their history held fixed with their holdings: the score explained is the one ranked.
        score = explainer.score_function(product, held_by.get(customer, []), customer)
        x = explainer.encode(sample.iloc[[i]])
        values.append(np.abs(permutation_shap(score, x, background)[0]))
    mean = np.mean(values, axis=0)
    order = np.argsort(-mean)
    section.p(
        f"Mean |SHAP| of each customer feature on the score of each customer's top recommendation, over "
        f"{len(values)} customers of this data (permutation SHAP, {len(background)} background customers, seed "
        f"{ctx.seed}); the holdings are the context, not a feature."
    )
    names = [explainer.feature_names[j] for j in order]
    section.img(svg.bar_chart(names, [float(mean[j]) for j in order], "mean |SHAP| per feature"), "mean |SHAP|")
    return section.table([{"feature": n, "mean |SHAP|": f"{mean[j]:.5f}"} for n, j in zip(names, order)])


def unsuitable_recommendations(
    index: np.ndarray, level: np.ndarray, regimes: np.ndarray | None, tolerance: np.ndarray
) -> int:
    """Recommendations (``index`` int [n, k], -1 = none) of a product whose risk ``level`` [P]
    exceeds the customer's ``tolerance`` [n]. Suitability binds investment advice (MiFID II Art.
    25(2)): where ``regimes`` [P] are known, a deposit, card or loan above the tolerance is no
    breach (their own rules apply); without them every product counts."""
    level = np.asarray(level, dtype="float64")
    if regimes is not None:
        level = np.where(np.asarray(regimes) == "investment", level, -np.inf)
    shown = index >= 0
    return int((level[index[shown]] > np.asarray(tolerance)[np.nonzero(shown)[0]]).sum())


def suitability_section(ctx: Context) -> Section:
    from finrec.recommend import filters as F

    section = Section("10. Suitability audit")
    customers = ctx.dataset.customers
    if len(customers) > MAX_EVAL_CUSTOMERS:
        customers = customers.sample(MAX_EVAL_CUSTOMERS, random_state=ctx.seed).reset_index(drop=True)
    context = ctx.recommender.context(
        customers, ctx.dataset.holdings, history=ctx.dataset.holdings_history, adoption=False, validated=True
    )
    ranking = ctx.recommender.rank(context, ctx.k)  # the default filters, as served
    rows = []
    already = np.zeros_like(ranking.excluded)
    for rule in F.RULES:
        if rule in ranking.masks:
            mask = ranking.masks[rule]
            rows.append(
                {
                    "rule": rule,
                    "customer-product pairs removed": int(mask.sum()),
                    "removed first by this rule": int((mask & ~already).sum()),
                }
            )
            already |= mask
    section.p(
        f"{len(customers):,} customers ranked under the default filters (top {ctx.k}); each rule's exclusions "
        "(a pair can be removed by several rules; 'first' counts it once, in the rules' order)."
    )
    section.table(rows)
    schema = ctx.trained.pipeline.full_schema
    risk_c, risk_p = schema.customers.risk, schema.products.risk
    if not (risk_c and risk_p):
        return section.p(
            "The schema names no risk tolerance or product risk level: the suitability rule does not apply."
        )
    # Checked from the raw columns, independently of the filter code: a missing tolerance counts as 1.
    tolerance = pd.to_numeric(customers[risk_c], errors="coerce").fillna(S.RISK_MIN).to_numpy()
    # The data's products table where it lists a product (the rules read it: a risk level the
    # bank has changed since training), the model's own row for one it no longer lists.
    ids, key = ctx.trained.pipeline.product_ids_, schema.products.id
    tables = [ctx.dataset.products, ctx.trained.products] if ctx.dataset is not None else [ctx.trained.products]
    rows = pd.concat([t.set_index(t[key].astype(str)) for t in tables])
    ordered = rows[~rows.index.duplicated(keep="first")].loc[ids]
    level = pd.to_numeric(ordered[risk_p], errors="coerce").to_numpy()
    regimes = C.product_regimes(ordered, schema.products)
    shown = ranking.index >= 0
    unsuitable = unsuitable_recommendations(ranking.index, level, regimes, tolerance)
    section.table([{"recommendations made": int(shown.sum()), "unsuitable recommended": unsuitable}])
    return section.p(
        "Zero unsuitable products were recommended."
        if unsuitable == 0
        else f"{unsuitable} recommendations exceed the customer's risk tolerance: do not deploy."
    )


def limitations_section(ctx: Context, drift: dict | None) -> Section:
    section = Section("11. Limitations and monitoring")
    section.p(
        "The model learns from past adoptions, which reflect past marketing and eligibility: it can repeat "
        "their biases (see section 8). Scores are similarities, not probabilities (section 7). New products "
        "need retraining. Customers unlike the training population get less reliable rankings."
    )
    section.p(
        f"Monitoring (`finrec monitor --model M --data D`): the population stability index of each customer "
        f"feature, of the score distribution and of the recommended-product mix against the training population; "
        f"status ok below {WARN_PSI}, warn below {ALERT_PSI}, alert from {ALERT_PSI}. An alert calls for review "
        "and, if confirmed, retraining."
    )
    if drift is None:
        return section.p("This model has no monitoring reference (trained before monitoring): retrain to record one.")
    s = drift["summary"]
    section.p(f"This data against the training population: {s['ok']} ok, {s['warn']} warn, {s['alert']} alert.")
    return section.table(
        [
            {"output": name, "PSI": _number(drift[name]["psi"]), "status": drift[name]["status"]}
            for name in ("scores", "recommendations")
        ]
    )


def versions_section(ctx: Context) -> Section:
    section = Section("12. Versions")
    rows = [
        {"component": "python", "version": sys.version.split()[0]},
        {"component": "platform", "version": platform.platform()},
    ]
    for name in LIBRARIES:
        try:
            rows.append({"component": name, "version": metadata.version(name)})
        except metadata.PackageNotFoundError:
            continue
    rows += [
        {"component": "keras backend (training)", "version": str(ctx.manifest.get("backend"))},
        {"component": "keras (training)", "version": str(ctx.manifest.get("keras_version"))},
        {"component": "model created", "version": str(ctx.manifest.get("created"))},
    ]
    return section.table(rows)


# ------------------------------------------------------------------------------------ building and rendering


def build_report(
    model_dir,
    data_dir,
    k: int = 5,
    seed: int = 0,
    seed_models=(),
    shap_customers: int = 20,
    lightgbm: bool = True,
    seeds: int = 0,
    train_data=None,
    seed_epochs: int | None = None,
) -> dict[str, Any]:
    """The report as ``{"title", "subtitle", "sections": [Section]}`` (render with ``render_html``
    or ``render_markdown``). ``seeds``: retrain the model's configuration with that many other
    seeds for the stability section (``retrain_seeds``; ``seed_epochs`` caps their epochs)."""
    from finrec.artifacts import load_model_dir, model_version, read_monitoring
    from finrec.data.io import load_dataset
    from finrec.governance.monitor import monitor
    from finrec.recommend.recommender import Recommender

    loaded = load_model_dir(model_dir)
    dataset = load_dataset(data_dir, require_interactions=False)
    S.check_model_schema(loaded.trained.pipeline.full_schema, dataset.schema, data_dir, model_dir)
    log.info("preparing %s customers", f"{len(dataset.customers):,}")
    recommender = Recommender(loaded.trained, dataset)
    ctx = Context(Path(model_dir), Path(data_dir), loaded.manifest, loaded.trained, dataset, recommender, k, seed)
    _prepare_outcomes(ctx)
    reference = read_monitoring(model_dir)
    drift = (
        monitor(
            reference, recommender, dataset.customers, dataset.holdings, seed=seed, history=dataset.holdings_history
        )
        if reference
        else None
    )
    builders = [
        ("intended use", lambda: intended_use(ctx)),
        ("data", lambda: data_section(ctx, drift)),
        ("method", lambda: method_section(ctx)),
        (
            "performance" + (" (with a LightGBM baseline)" if lightgbm else ""),
            lambda: performance_section(ctx, lightgbm),
        ),
        ("segments", lambda: segment_section(ctx)),
        (
            "stability" + (f" ({seeds} retrained seed(s))" if seeds else ""),
            lambda: stability_section(
                ctx,
                [Path(p) for p in seed_models],
                retrain_seeds(ctx, seeds, Path(train_data) if train_data else None, seed_epochs) if seeds else None,
            ),
        ),
        ("calibration", lambda: calibration_section(ctx)),
        ("fairness", lambda: fairness_section(ctx)),
        (f"explanations ({shap_customers} customers)", lambda: explanation_section(ctx, shap_customers)),
        ("suitability", lambda: suitability_section(ctx)),
        ("limitations", lambda: limitations_section(ctx, drift)),
        ("versions", lambda: versions_section(ctx)),
    ]
    sections = []
    for i, (name, build) in enumerate(builders, 1):
        log.info("section %d of %d: %s", i, len(builders), name)
        sections.append(build())
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "title": f"Validation report: {Path(model_dir).name}",
        # `models add --report` reads the model version back: a report is kept only with its model
        "subtitle": f"model {model_dir} · model version {model_version(ctx.manifest)} · data {data_dir} · "
        f"generated {now} by finrec report",
        "sections": sections,
    }


_CSS = """body{font-family:Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}
h1{color:#1f5f8b}h2{border-bottom:2px solid #1f5f8b;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#eef3f7}img{margin:.4em .4em .4em 0;vertical-align:top}.sub{color:#666}"""


def render_html(report: dict[str, Any]) -> str:
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(report['title'])}</title>"
        f"<style>{_CSS}</style></head><body><h1>{escape(report['title'])}</h1>"
        f"<p class='sub'>{escape(report['subtitle'])}</p><nav><ol>"
    ]
    parts += [
        f"<li><a href='#s{i}'>{escape(s.title.split('. ', 1)[-1])}</a></li>" for i, s in enumerate(report["sections"])
    ]
    parts.append("</ol></nav>")
    for i, section in enumerate(report["sections"]):
        parts.append(f"<section id='s{i}'><h2>{escape(section.title)}</h2>")
        for block in section.blocks:
            if block[0] == "p":
                parts.append(f"<p>{escape(block[1])}</p>")
            elif block[0] == "table":
                _, columns, rows = block
                parts.append(
                    "<table><thead><tr>"
                    + "".join(f"<th>{escape(str(c))}</th>" for c in columns)
                    + "</tr></thead><tbody>"
                )
                parts += [
                    "<tr>" + "".join(f"<td>{escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>"
                    for row in rows
                ]
                parts.append("</tbody></table>")
            else:
                parts.append(f"<img src='{svg.data_uri(block[1])}' alt='{escape(block[2])}'>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_text(text: Any) -> str:
    """Text with HTML's ``&``, ``<`` and ``>`` as entities, everywhere: a product named
    ``<b>Gold</b>`` or ``<script>`` was rendered as markup by a Markdown viewer (a tester), as
    ``render_html`` never lets it be. Code spans too (a backtick in a value opened one, and the
    markup after it went through, a reviewer): finrec's own code spans hold none of the three."""
    return escape(str(text), quote=False)


def _md_cell(value: Any) -> str:
    return _md_text(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# {_md_text(report['title'])}", "", f"_{_md_text(report['subtitle'])}_", ""]
    for section in report["sections"]:
        lines += [f"## {_md_text(section.title)}", ""]
        for block in section.blocks:
            if block[0] == "p":
                lines += [_md_text(block[1]), ""]
            elif block[0] == "table":
                _, columns, rows = block
                lines.append("| " + " | ".join(_md_cell(c) or " " for c in columns) + " |")
                lines.append("|" + "---|" * len(columns))
                lines += ["| " + " | ".join(_md_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
                lines.append("")
            else:
                lines += [f"![{block[2]}]({svg.data_uri(block[1])})", ""]
    return "\n".join(lines)
