"""Fairness over the schema's protected customer columns (``protected: [gender, age]``).

For each protected column the customers are split into groups (age in bands ``<30``, ``30-44``,
``45-59``, ``60+``; another numeric column in quartiles; a categorical column by its values, a
missing value being its own group), and for each group the report gives:

- ``customers``: how many customers the group has, and ``evaluated``: how many of them have a
  relevant (taken-up, not held) product and so enter the ranking metrics;
- nDCG@k, recall@k and MRR (``finrec.evaluate.metrics.summarize`` restricted to the group; the
  same ranking as ``finrec evaluate``: every product the customer does not hold);
- ``exposure``: the share of the group's top-k slots that go to each product category (the
  catalogue's ``category`` column; the product id when there is none). Shares sum to 1.

and, per category, the largest ratio between two groups' shares (``max_ratio``, with the groups
it is between; ``None`` when a group gets no slot of a category another group gets), so that a
bank can see a product family steered away from a group. Exposure is over every customer of the
data, whether or not they have interactions, except those who objected to profiling for
marketing (the schema's consent column): they are not scored at all (GDPR Art. 21(3)), and
``objected`` counts them.

>>> report = fairness_report(trained, dataset, k=5)
>>> report["columns"]["gender"]["groups"]["F"]["exposure"]["mortgage"]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from finrec.data import schema as S
from finrec.data.categories import as_category_text
from finrec.data.compliance import without_objections
from finrec.data.io import Dataset
from finrec.evaluate.metrics import summarize
from finrec.evaluate.report import graded_task
from finrec.recommend import filters as F
from finrec.recommend.recommender import Recommender

AGE_BANDS = ((None, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, None, "60+"))
MISSING = "missing"


def protected_groups(dataset: Dataset) -> dict[str, pd.Series]:
    """Column -> group label of each customer (aligned with ``dataset.customers``)."""
    table = dataset.schema.customers
    return {column: group_labels(dataset.customers[column], column, table) for column in table.protected}


def group_labels(values: pd.Series, column: str, table: S.TableSchema) -> pd.Series:
    """The group label of each value of protected ``column`` (age bands, quartiles of another
    number, else the value; ``missing`` for a missing one), index reset."""
    if column == S.AGE:
        x = pd.to_numeric(values, errors="coerce")
        labels = pd.Series(MISSING, index=values.index, dtype=object)
        for low, high, label in AGE_BANDS:
            inside = (
                x.notna() & (x >= (low if low is not None else -np.inf)) & (x < (high if high is not None else np.inf))
            )
            labels[inside] = label
    elif column in table.numeric_features:
        x = pd.to_numeric(values, errors="coerce")
        bands = pd.qcut(x, 4, duplicates="drop")
        labels = bands.astype(object).map(lambda b: MISSING if pd.isna(b) else f"{b.left:g}-{b.right:g}")
    else:
        labels = as_category_text(values).astype(object)
        labels = labels.where(labels.notna(), MISSING)
    return labels.reset_index(drop=True)


def _group_order(column: str, labels: pd.Series) -> list[str]:
    if column == S.AGE:
        order = [label for _, _, label in AGE_BANDS]
        return [g for g in order if (labels == g).any()] + ([MISSING] if (labels == MISSING).any() else [])
    return sorted(labels.unique(), key=lambda g: (g == MISSING, g))


def _categories(trained, dataset: Dataset) -> np.ndarray:
    """The category of each product, in the model's catalogue order."""
    pipeline = trained.pipeline
    column = dataset.schema.products.category
    products = trained.products
    pid = dataset.schema.products.id
    if not column or column not in products:
        return np.asarray(pipeline.product_ids_, dtype=object)
    table = products.set_index(products[pid].astype(str))
    return table.loc[pipeline.product_ids_, column].astype(str).to_numpy(dtype=object)


def _clean(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def fairness_report(trained, dataset: Dataset, k: int = 5) -> dict[str, Any]:
    """Per protected column: per group metrics and exposure, and the max exposure ratio per category."""
    dataset, objected = without_objections(dataset)  # not profiled, not even to measure fairness
    pipeline = trained.pipeline
    cid = dataset.schema.customers.id
    customers = dataset.customers.reset_index(drop=True)
    all_ids = customers[cid].to_numpy()
    groups = protected_groups(dataset)
    report: dict[str, Any] = {"k": int(k), "customers": int(len(customers)), "objected": objected, "columns": {}}
    if not groups:
        return report

    # Ranked as ``finrec evaluate`` ranks (held products excluded, no other filter), through the
    # recommender's ranking core, so the exposure measured is the exposure served.
    recommender = Recommender(trained)
    context = recommender.context(
        customers, dataset.holdings, history=dataset.holdings_history, adoption=False, validated=True
    )
    ranking = recommender.rank(context, k, F.UNFILTERED)
    top, valid = ranking.index, np.isfinite(ranking.scores)
    scores = recommender.scores(context)
    categories = _categories(trained, dataset)
    category_order = list(dict.fromkeys(categories))
    slot_category = categories[top]

    # An adoption of a product the model does not know is a miss, as ``evaluate`` grades it.
    task = graded_task(pipeline, dataset)
    relevant, excluded, never = task.relevant, task.excluded, task.never
    position = pd.Index(all_ids.astype(str)).get_indexer(task.ids.astype(str))
    eval_scores = task.padded(scores[position])

    metric_names = [f"ndcg@{k}", f"recall@{k}", "mrr"]
    for column, labels in groups.items():
        label_values = labels.to_numpy(dtype=object)
        eval_labels = label_values[position]
        per_group: dict[str, Any] = {}
        for group in _group_order(column, labels):
            members = label_values == group
            in_eval = eval_labels == group
            metrics = summarize(eval_scores[in_eval], relevant[in_eval], excluded[in_eval], k=k, unrankable=never)
            slots = slot_category[members][valid[members]]
            counts = pd.Series(slots, dtype=object).value_counts()
            total = int(counts.sum())
            exposure = {c: (float(counts.get(c, 0)) / total if total else 0.0) for c in category_order}
            per_group[str(group)] = {
                "customers": int(members.sum()),
                "evaluated": int(metrics["customers"]),
                **{name: _clean(metrics[name]) for name in metric_names},
                "exposure": exposure,
            }
        ratios: dict[str, Any] = {}
        with_slots = {g: v for g, v in per_group.items() if v["customers"] > 0 and sum(v["exposure"].values()) > 0}
        for category in category_order:
            shares = {g: v["exposure"][category] for g, v in with_slots.items()}
            if len(shares) < 2 or max(shares.values()) == 0:
                ratios[category] = {"ratio": 1.0 if shares else None, "highest": None, "lowest": None}
                continue
            highest = max(shares, key=shares.get)
            lowest = min(shares, key=shares.get)
            low = shares[lowest]
            ratios[category] = {
                "ratio": (shares[highest] / low) if low > 0 else None,
                "highest": highest,
                "lowest": lowest,
            }
        report["columns"][column] = {"groups": per_group, "max_ratio": ratios}
    return report


def format_fairness(report: dict[str, Any]) -> str:
    """Plain-text tables: per protected column, the groups' metrics, then their exposure by category."""
    k = report["k"]
    if not report["columns"]:
        return "fairness: the schema lists no protected customer columns (customers.protected in schema.yaml)"
    lines: list[str] = []
    if report.get("objected"):
        lines.append(f"fairness: {report['objected']} customer(s) who objected to profiling for marketing left out")
    for column, body in report["columns"].items():
        groups = body["groups"]
        lines.append("")
        lines.append(f"fairness by {column} (top {k})")
        header = f"{'group':<12}{'customers':>10}{'evaluated':>10}{f'ndcg@{k}':>10}{f'recall@{k}':>11}{'mrr':>8}"
        lines += [header, "-" * len(header)]
        for group, values in groups.items():
            cells = "".join(
                f"{'-' if values[m] is None else format(values[m], '.4f'):>{w}}"
                for m, w in ((f"ndcg@{k}", 10), (f"recall@{k}", 11), ("mrr", 8))
            )
            lines.append(f"{group[:11]:<12}{values['customers']:>10d}{values['evaluated']:>10d}{cells}")
        categories = list(body["max_ratio"])
        names = list(groups)
        lines.append("")
        lines.append(f"exposure: share of each group's top-{k} slots by product category")
        header = f"{'category':<20}" + "".join(f"{g[:11]:>12}" for g in names) + f"{'max ratio':>12}"
        lines += [header, "-" * len(header)]
        for category in categories:
            ratio = body["max_ratio"][category]["ratio"]
            ratio_text = (
                "inf"
                if ratio is None and body["max_ratio"][category]["highest"]
                else ("-" if ratio is None else f"{ratio:.2f}")
            )
            lines.append(
                f"{category[:19]:<20}"
                + "".join(f"{groups[g]['exposure'][category]:>12.3f}" for g in names)
                + f"{ratio_text:>12}"
            )
    return "\n".join(lines)
