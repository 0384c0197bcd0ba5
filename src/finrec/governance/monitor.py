"""Drift monitoring: how far a scoring population has moved from the population the model was
trained on, measured by the population stability index (PSI).

At training, ``build_reference`` records the training customers' distributions in the model
directory (``monitoring.json``, see ``finrec.artifacts``):

- each numeric customer feature: the edges of its decile bins (quantiles of the training values;
  tied quantiles merge, so a feature with few distinct values gets fewer bins) and the share of
  training customers in each bin, plus the share of missing values;
- each categorical customer feature: the share of each training category, plus the shares of
  unseen categories (zero at training) and of missing values;
- the model's output: the distribution of the top-K recommendation scores (binned like a numeric
  feature) and the mix of recommended products (shares like a categorical feature), for the
  training customers under the default filters.

``monitor`` bins a new population with the same edges and categories and reports, per feature,
the PSI with a status: ``ok`` (PSI < 0.10), ``warn`` (< 0.25) or ``alert`` -- the thresholds
commonly used for credit scorecards. Missing values and unseen categories are bins of their own,
so blanked values and renamed categories show up as drift.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from finrec.data import schema as S
from finrec.data.categories import CATEGORY_RULE, as_category_text, vocabulary_text
from finrec.errors import DataError

REFERENCE_VERSION = 1
N_BINS = 10
PSI_FLOOR = 1e-4
WARN_PSI = 0.10
ALERT_PSI = 0.25
MAX_CATEGORIES = 200
MAX_SCORED_CUSTOMERS = 50_000
MISSING = "(missing)"
UNSEEN = "(unseen)"
OTHER = "(other)"
STATUSES = ("ok", "warn", "alert")


# ------------------------------------------------------------------------------------ statistics


def psi(expected: np.ndarray, actual: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population stability index of two distributions over the same bins.

    ``PSI = sum_i (a_i - e_i) * ln(a_i / e_i)`` where ``e_i`` and ``a_i`` are the shares of the
    reference (expected) and current (actual) populations in bin ``i``, each raised to at least
    ``floor`` so that an empty bin gives a large but finite term (no renormalisation after the
    floor). Both inputs are shares (summing to 1) or counts (normalised here). PSI is symmetric,
    non-negative and 0 only for identical distributions.
    """
    e = np.asarray(expected, dtype="float64")
    a = np.asarray(actual, dtype="float64")
    if e.shape != a.shape or e.ndim != 1 or len(e) == 0:
        raise ValueError(f"psi: expected and actual must be 1-D of the same length, got {e.shape} and {a.shape}")
    if (e < 0).any() or (a < 0).any() or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi: shares must be non-negative with a positive total")
    e = np.maximum(e / e.sum(), floor)
    a = np.maximum(a / a.sum(), floor)
    return float(np.sum((a - e) * np.log(a / e)))


def status_of(value: float, warn: float = WARN_PSI, alert: float = ALERT_PSI) -> str:
    """``ok`` below ``warn``, ``warn`` below ``alert``, else ``alert`` (NaN counts as alert)."""
    if not math.isfinite(value) or value >= alert:
        return "alert"
    return "warn" if value >= warn else "ok"


def quantile_edges(values: np.ndarray, n_bins: int = N_BINS) -> list[float]:
    """The inner edges of ``n_bins`` quantile bins of the finite ``values``: observed values
    (numpy's ``lower`` quantile, so a discrete feature's edges are its own values), duplicates
    merged."""
    values = np.asarray(values, dtype="float64")
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return []
    inner = np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1], method="lower")
    return [float(x) for x in np.unique(inner)]


def numeric_counts(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts in the bins ``(-inf, e0], (e0, e1], ..., (e_last, inf)`` and, last, missing (NaN)."""
    values = np.asarray(values, dtype="float64")
    missing = np.isnan(values)
    bins = np.searchsorted(np.asarray(edges, dtype="float64"), values[~missing], side="left")
    counts = np.bincount(bins, minlength=len(edges) + 1).astype("float64")
    return np.append(counts, float(missing.sum()))


def categorical_counts(values: pd.Series, categories: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(counts over ``categories`` then ``(unseen)`` then ``(missing)``; the unseen values).

    A category in ``categories`` named ``(other)`` collects every value outside the others that
    the reference folded into it (see ``categorical_reference``); without it, values outside
    ``categories`` are unseen."""
    series = as_category_text(pd.Series(values, copy=False))
    missing = series.isna().to_numpy()
    text = series[~missing].astype(object)
    position = {name: i for i, name in enumerate(categories)}
    codes = text.map(position)
    unseen_mask = codes.isna().to_numpy()
    counts = np.zeros(len(categories) + 2)
    known = codes[~unseen_mask].to_numpy(dtype="int64")
    counts[: len(categories)] = np.bincount(known, minlength=len(categories))
    unseen_values = text[unseen_mask]
    if OTHER in position:
        counts[position[OTHER]] += len(unseen_values)
        unseen_values = unseen_values.iloc[:0]
    counts[-2] = len(unseen_values)
    counts[-1] = missing.sum()
    return counts, unseen_values.unique()


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [float(c / total) if total else 0.0 for c in counts]


def numeric_reference(values: np.ndarray, n_bins: int = N_BINS) -> dict[str, Any]:
    values = np.asarray(values, dtype="float64")
    edges = quantile_edges(values, n_bins)
    finite = values[np.isfinite(values)]
    return {
        "kind": "numeric",
        "edges": edges,
        "shares": _shares(numeric_counts(values, edges)),
        "count": int(len(values)),
        "mean": float(finite.mean()) if len(finite) else None,
    }


def categorical_reference(values: pd.Series, max_categories: int = MAX_CATEGORIES) -> dict[str, Any]:
    """Shares of each training category; beyond the ``max_categories`` most frequent, the rest
    share one ``(other)`` bin (an id-like column must not make a reference of a million bins)."""
    series = pd.Series(values, copy=False)
    frequency = as_category_text(series).dropna().value_counts(sort=True)
    categories = sorted(frequency.index[:max_categories].tolist())
    if len(frequency) > max_categories:
        categories.append(OTHER)
    counts, _ = categorical_counts(series, categories)
    return {"kind": "categorical", "categories": categories, "shares": _shares(counts), "count": int(len(series))}


def compare(reference: Mapping[str, Any], values, warn: float = WARN_PSI, alert: float = ALERT_PSI) -> dict[str, Any]:
    """The PSI of ``values`` against one reference entry, with its status and the shares of
    missing (and, for categories, unseen) values then and now."""
    expected = np.asarray(reference["shares"], dtype="float64")
    if reference["kind"] == "numeric":
        counts = numeric_counts(np.asarray(values, dtype="float64"), reference["edges"])
        unseen = None
    else:
        counts, unseen = categorical_counts(values, reference["categories"])
    if counts.sum() == 0:
        return {"psi": None, "status": "alert", "kind": reference["kind"], "count": 0, "note": "no values to compare"}
    value = psi(expected, counts)
    actual = counts / counts.sum()
    out: dict[str, Any] = {
        "psi": round(value, 6),
        "status": status_of(value, warn, alert),
        "kind": reference["kind"],
        "count": int(counts.sum()),
        "missing_share": float(actual[-1]),
        "reference_missing_share": float(expected[-1]),
    }
    if reference["kind"] == "numeric":
        finite = np.asarray(values, dtype="float64")
        finite = finite[np.isfinite(finite)]
        out["mean"] = float(finite.mean()) if len(finite) else None
        out["reference_mean"] = reference.get("mean")
    else:
        out["unseen_share"] = float(actual[-2])
        out["unseen_examples"] = [str(v) for v in list(unseen)[:5]]
    return out


# ------------------------------------------------------------------------------------ populations


def model_outputs(
    recommender,
    customers: pd.DataFrame,
    holdings: pd.DataFrame | None,
    k: int,
    rng: np.random.Generator,
    max_customers: int = MAX_SCORED_CUSTOMERS,
    history: pd.DataFrame | None = None,
) -> tuple[np.ndarray, pd.Series]:
    """(top-``k`` scores, recommended product ids) of up to ``max_customers`` customers (a seeded
    sample beyond that) under the default filters, flattened over customers and ranks; with their
    ``history`` (a holdings_history) as the model is served."""
    if len(customers) > max_customers:
        rows = np.sort(rng.choice(len(customers), size=max_customers, replace=False))
        customers = customers.iloc[rows].reset_index(drop=True)
    if len(customers) == 0:
        return np.zeros(0), pd.Series([], dtype=object)
    ranking = recommender.rank(
        recommender.context(customers, holdings, history=history, adoption=False, validated=True), k
    )
    shown = ranking.index >= 0
    product_ids = np.asarray(recommender.pipeline.product_ids_, dtype=object)
    return ranking.scores[shown].astype("float64"), pd.Series(product_ids[ranking.index[shown]])


def feature_columns(schema) -> tuple[list[str], list[str]]:
    """(numeric, categorical) customer feature columns of a schema (the risk column is numeric)."""
    return list(schema.customers.numeric_features), list(schema.customers.categorical_features)


def build_reference(
    recommender,
    customers: pd.DataFrame,
    holdings: pd.DataFrame | None = None,
    k: int = 5,
    seed: int = 0,
    n_bins: int = N_BINS,
    history: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The reference distributions of a training population (what ``monitoring.json`` holds)."""
    numeric, categorical = feature_columns(recommender.schema)
    features = {name: numeric_reference(_numeric(customers, name), n_bins) for name in numeric}
    features |= {name: categorical_reference(customers[name]) for name in categorical}
    scores, recommended = model_outputs(
        recommender, customers, holdings, k, np.random.default_rng(seed), history=history
    )
    recommendations = categorical_reference(recommended)
    # Every catalogue product is a known bin, so a product never recommended at training but
    # recommended now is drift in the mix, not an "unseen" value.
    catalogue = sorted(str(p) for p in recommender.pipeline.product_ids_)
    counts, _ = categorical_counts(recommended, catalogue)
    recommendations = {**recommendations, "categories": catalogue, "shares": _shares(counts)}
    return {
        "version": REFERENCE_VERSION,
        "category_rule": CATEGORY_RULE,
        "customers": int(len(customers)),
        "k": int(k),
        "n_bins": int(n_bins),
        "thresholds": {"warn": WARN_PSI, "alert": ALERT_PSI},
        "features": features,
        "scores": numeric_reference(scores, n_bins),
        "recommendations": recommendations,
    }


def monitor(
    reference: Mapping[str, Any],
    recommender,
    customers: pd.DataFrame,
    holdings: pd.DataFrame | None = None,
    seed: int = 0,
    history: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Compare a scoring population with ``reference``: ``{"features": {name: {psi, status,
    ...}}, "scores": {...}, "recommendations": {...}, "summary": {...}}``."""
    if reference.get("version") != REFERENCE_VERSION:
        raise DataError(
            f"monitoring reference version {reference.get('version')!r} is not supported "
            f"(expects {REFERENCE_VERSION}); retrain the model"
        )
    thresholds = reference.get("thresholds", {})
    warn, alert = float(thresholds.get("warn", WARN_PSI)), float(thresholds.get("alert", ALERT_PSI))
    features: dict[str, Any] = {}
    for name, entry in reference["features"].items():
        if name not in customers:
            features[name] = {
                "psi": None,
                "status": "alert",
                "kind": entry["kind"],
                "count": 0,
                "note": "column absent from the data",
            }
            continue
        if entry["kind"] == "numeric":
            values = _numeric(customers, name)
        else:
            values = customers[name]
            if reference.get("category_rule") is None:
                # saved before the category rule: it may hold "4.0" where the data now says "4"
                entry = {**entry, "categories": vocabulary_text(list(entry["categories"]))}
        features[name] = compare(entry, values, warn, alert)
    scores, recommended = model_outputs(
        recommender, customers, holdings, int(reference["k"]), np.random.default_rng(seed), history=history
    )
    report = {
        "customers": int(len(customers)),
        "reference_customers": int(reference["customers"]),
        "thresholds": {"warn": warn, "alert": alert},
        "features": features,
        "scores": compare(reference["scores"], scores, warn, alert),
        "recommendations": compare(reference["recommendations"], recommended, warn, alert),
    }
    report["summary"] = summary(report)
    report["sampling_noise_psi"] = sampling_noise(
        int(reference.get("n_bins", N_BINS)), int(reference["customers"]), len(customers)
    )
    return report


def sampling_noise(n_bins: int, n_reference: int, n_current: int) -> float:
    """The PSI two samples of one population show on average: ``(B - 1) (1/n_ref + 1/n_cur)``
    for ``B`` bins (PSI is close to a chi-square statistic over the harmonic sample size)."""
    if n_reference <= 0 or n_current <= 0:
        return float("nan")
    return (n_bins - 1) * (1 / n_reference + 1 / n_current)


def summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """How many entries have each status, and the worst."""
    entries = [*report["features"].values(), report["scores"], report["recommendations"]]
    counts = {status: sum(1 for e in entries if e["status"] == status) for status in STATUSES}
    worst = max((e["status"] for e in entries), key=STATUSES.index, default="ok")
    return {**counts, "status": worst}


def format_report(report: Mapping[str, Any]) -> str:
    """A plain-text table, worst first."""
    rows = [(name, entry) for name, entry in report["features"].items()]
    rows += [("(model scores)", report["scores"]), ("(recommended mix)", report["recommendations"])]
    rows.sort(key=lambda row: (-STATUSES.index(row[1]["status"]), -(row[1]["psi"] or math.inf)))
    header = f"{'feature':<26}{'kind':<13}{'PSI':>9}  {'status':<7}note"
    lines = [header, "-" * (len(header) + 20)]
    for name, entry in rows:
        psi_text = f"{entry['psi']:.4f}" if entry["psi"] is not None else "-"
        lines.append(f"{name:<26}{entry['kind']:<13}{psi_text:>9}  {entry['status']:<7}{_note(entry)}")
    s = report["summary"]
    lines.append(
        f"{report['customers']} customers against {report['reference_customers']} at training: "
        f"{s['ok']} ok, {s['warn']} warn, {s['alert']} alert "
        f"(sampling noise alone gives a numeric feature a PSI of about {report['sampling_noise_psi']:.3f} at these sizes)"
    )
    return "\n".join(lines)


def _note(entry: Mapping[str, Any]) -> str:
    if "note" in entry:
        return entry["note"]
    notes = []
    if entry.get("missing_share", 0) > entry.get("reference_missing_share", 0) + 0.01:
        notes.append(f"missing {entry['missing_share']:.1%} (was {entry['reference_missing_share']:.1%})")
    if entry.get("unseen_share", 0) > 0:
        notes.append(f"unseen {entry['unseen_share']:.1%} e.g. {', '.join(entry['unseen_examples'][:3])}")
    mean, ref = entry.get("mean"), entry.get("reference_mean")
    if mean is not None and ref:
        notes.append(f"mean {mean:.4g} (was {ref:.4g})")
    return "; ".join(notes)


def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


# ------------------------------------------------------------------------------------ entry points


def reference_for(trained, dataset, k: int = 5, seed: int = 0) -> dict[str, Any]:
    """The reference of a just-trained model (``finrec.training.TrainedModel``) on its training
    ``dataset``: pass it to ``finrec.artifacts.save_model_dir(..., monitoring=...)``."""
    from finrec.recommend.recommender import Recommender

    return build_reference(
        Recommender(trained), dataset.customers, dataset.holdings, k=k, seed=seed, history=dataset.holdings_history
    )


def monitor_model(model_dir, data_dir, seed: int = 0) -> dict[str, Any]:
    """``finrec monitor``: the drift report of the customers in ``data_dir`` against the
    reference saved in ``model_dir``."""
    from pathlib import Path

    from finrec.artifacts import load_model_dir, read_monitoring
    from finrec.data.io import find_table, load_dataset
    from finrec.recommend.recommender import Recommender

    reference = read_monitoring(model_dir)
    if reference is None:
        raise DataError(
            f"{model_dir}: this model predates monitoring (it has no monitoring.json); "
            "retrain it with `finrec train` to record the training population"
        )
    # The recommendations monitored go through the numpy tower, as `score` and `serve` make them:
    # the Keras model was rebuilt for nothing.
    loaded = load_model_dir(model_dir, keras_model=False)
    dataset = load_dataset(data_dir, require_interactions=False, ground_truth=False)
    # Without the products' value column, which was refused here while score, plan and evaluate took it.
    S.check_model_schema(loaded.trained.pipeline.full_schema, dataset.schema, data_dir, model_dir)
    # The recommendations monitored are those `score` and `serve` make: filtered with the data's
    # products table (a reviewer: the model's saved copy was used).
    source = find_table(Path(data_dir), S.PRODUCTS)
    report = monitor(
        reference,
        Recommender(loaded.trained).with_catalogue(dataset.products, source, dataset.schema.products.on_offer),
        dataset.customers,
        dataset.holdings,
        seed=seed,
        history=dataset.holdings_history,
    )
    notes = []
    if getattr(loaded.trained.pipeline, "history_", None) is not None and dataset.holdings_history is None:
        # The scores and the recommended mix moved to "alert" without a word (a tester's population
        # without the table): every customer ranked as one without a past.
        notes.append(
            f"the model reads a {S.HOLDINGS_HISTORY} table and {data_dir} has none: every customer is scored as "
            "one without a past, which moves the scores and the recommended mix"
        )
    named = set(dataset.schema.customers.named_columns)
    unread = [str(c) for c in dataset.customers.columns if c not in named]
    if unread:
        # A column the bank added to the population was passed over without a word (a tester):
        # the model cannot read it, and nothing here says how it moved.
        shown = ", ".join(repr(c[:60]) for c in unread[:5]) + (" ..." if len(unread) > 5 else "")
        notes.append(
            f"{len(unread)} customer column(s) of {data_dir} the model's schema does not name: {shown}; the model "
            "does not read them and they are not monitored (retrain with them in schema.yaml to use them)"
        )
    return {"model": str(model_dir), "data": str(data_dir), **report, **({"notes": notes} if notes else {})}
