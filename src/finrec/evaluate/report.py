"""Evaluate a trained model and the baselines on a dataset (seen or held-out customers).

For every customer with at least one interaction, all products except the ones they hold are
ranked; the interactions are the relevant products (metric definitions: ``metrics``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finrec.data import schema as S
from finrec.data.compliance import customer_profile
from finrec.data.ids import as_arrow_text
from finrec.data.io import Dataset, find_table, read_table
from finrec.errors import FinrecError, safe_items, safe_text
from finrec.evaluate import baselines
from finrec.evaluate.metrics import metric_keys, summarize
from finrec.features import link_matrix
from finrec.training.calibration import brier_score, expected_calibration_error, log_loss, reliability_table

log = logging.getLogger(__name__)

PROBABILITY_BINS = 10
# A product's adoptions are "off by more than chance" where chance puts them as far from the
# predicted count at most this often, both ways together: the normal's |z| > 3.
OFF_BY_CHANCE = 0.0027
POISSON_BELOW = 10.0  # predicted adoptions under which the Poisson tail judges, not the normal's


def ranking_task(
    pipeline, dataset: Dataset, products: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer ids, relevant bool [n, P], excluded bool [n, P]) for customers with interactions,
    over the pipeline's catalogue or the text ids ``products`` (``finrec compare``: two
    catalogues' union; ``pipeline`` may then be None, as for a seat that is a scores file)."""
    cid = dataset.schema.customers.id
    ids = dataset.customers[cid].to_numpy()
    if products is None:
        relevant = pipeline.holdings_matrix(ids, dataset.interactions)
        held = pipeline.holdings_matrix(ids, dataset.holdings)
    else:
        catalogue = as_arrow_text(products)
        relevant, held = (
            link_matrix(ids, catalogue, dataset.interactions),
            link_matrix(ids, catalogue, dataset.holdings),
        )
    keep = (relevant & ~held).any(axis=1)
    return ids[keep], relevant[keep], (held & ~relevant)[keep]


def unknown_adoptions(pipeline, dataset: Dataset) -> dict[str, int]:
    """``{product id: adoptions}`` of the data's interactions whose product the model's catalogue
    lacks (a product launched after the model was trained), by count then id. ``evaluate``
    counts them as misses; the model cannot rank them."""
    return adoptions_outside(pipeline.product_ids_, dataset)


def adoptions_outside(products, dataset: Dataset) -> dict[str, int]:
    """``{product id: adoptions}`` of the data's interactions whose product is not one of the
    ids ``products`` (compared as text), by count then id: ``unknown_adoptions`` of one
    catalogue, or of the union of the rankers ``finrec compare`` grades."""
    interactions = dataset.interactions
    if interactions is None or len(interactions) == 0:
        return {}
    known = set(str(p) for p in products)
    counts = interactions[S.PRODUCT_ID].astype(str).value_counts()
    unknown = {str(p): int(n) for p, n in counts.items() if p not in known}
    return dict(sorted(unknown.items(), key=lambda item: (-item[1], item[0])))


@dataclass(frozen=True)
class GradedTask:
    """``ranking_task`` as ``evaluate`` and ``evaluate --fairness`` grade it: over the model's
    ``n_products`` products, then the ``unknown`` ones the data's adoptions name that the model
    does not know (launched after it was trained), which no ranker of the catalogue can rank.
    ``ids`` [n]; ``relevant``, ``excluded`` bool [n, P + U]."""

    ids: np.ndarray
    relevant: np.ndarray
    excluded: np.ndarray
    n_products: int
    unknown: tuple[str, ...]

    @property
    def never(self) -> np.ndarray | None:
        """bool [P + U]: the unknown products (``summarize``'s ``unrankable``); None without."""
        return np.arange(self.n_products + len(self.unknown)) >= self.n_products if self.unknown else None

    def padded(self, scores: np.ndarray) -> np.ndarray:
        """[m, P] scores of the catalogue -> [m, P + U], the unknown products at -inf (never ranked)."""
        return np.hstack([scores, np.full((len(scores), len(self.unknown)), -np.inf)]) if self.unknown else scores


def graded_task(pipeline, dataset: Dataset) -> GradedTask:
    """The customers with adoptions and their ``GradedTask``: an adoption of a product the model
    does not know stays relevant and is never a hit (``finrec compare`` grades it so too)."""
    catalogue = [str(p) for p in pipeline.product_ids_]
    unknown = tuple(unknown_adoptions(pipeline, dataset))
    ids, relevant, excluded = ranking_task(pipeline, dataset, products=[*catalogue, *unknown] if unknown else None)
    return GradedTask(ids, relevant, excluded, len(catalogue), unknown)


def calibrated_on(manifest: dict, data_dir) -> bool:
    """Whether ``finrec calibrate`` fitted the model's probabilities on the data at ``data_dir``
    (the manifest's ``calibration_data``, or a copy of it with its ``calibration_fingerprint``):
    a check of the probabilities there is optimistic, as metrics on training data are."""
    recorded, recorded_fingerprint = manifest.get("calibration_data"), manifest.get("calibration_fingerprint")
    if data_dir is None or (not recorded and not recorded_fingerprint):
        return False
    if recorded and Path(recorded).resolve() == Path(data_dir).resolve():
        return True
    if not recorded_fingerprint:
        return False
    from finrec.data.io import fingerprint

    try:
        return fingerprint(data_dir) == recorded_fingerprint
    except (FinrecError, OSError):
        return False


def adoptions_trained_on(dataset: Dataset, training_dir, data_dir=None, recorded_fingerprint=None) -> int:
    """How many of the data's adoptions (customer, product pairs) are adoptions of the data the
    model was trained on (``training_dir``, the manifest's ``data_path``): the model learned them,
    so metrics over them are optimistic. Customers alone would not do: an out-of-time test side
    holds the training customers, with the adoptions of the month after.

    When that directory is gone (moved, or copied elsewhere), ``data_dir`` (where ``dataset`` was
    read) whose files have the manifest's ``recorded_fingerprint`` is the training data itself:
    every adoption counts. 0 otherwise, and when the directory is unreadable."""
    interactions = dataset.interactions
    if interactions is None or len(interactions) == 0:
        return 0
    if training_dir is None or not Path(training_dir).is_dir():
        if data_dir is None or not recorded_fingerprint:
            return 0
        from finrec.data.io import fingerprint

        return len(interactions) if fingerprint(data_dir) == recorded_fingerprint else 0
    try:
        path = find_table(Path(training_dir), S.INTERACTIONS, required=False)
        if path is None:
            return 0
        trained_on = read_table(path, (S.CUSTOMER_ID, S.PRODUCT_ID))
    except (FinrecError, OSError):
        return 0
    if not {S.CUSTOMER_ID, S.PRODUCT_ID} <= set(trained_on.columns):
        return 0

    def pairs(links):
        return links[S.CUSTOMER_ID].astype(str) + "\x1f" + links[S.PRODUCT_ID].astype(str)

    return int(pairs(interactions).isin(set(pairs(trained_on))).sum())


def evaluate(trained, dataset: Dataset, k: int = 5, seed: int = 0) -> dict[str, dict[str, float]]:
    """Metrics of the model and of the random, popularity and (with ground truth) oracle
    baselines: ``{"model": {...}, "popularity": {...}, ...}``; ``"model:cold"``: the model on
    the customers who hold nothing (new customers), when there are any.

    An adoption of a product the model does not know (``unknown_adoptions``: launched after
    it was trained) stays relevant and is never a hit, for the model and the baselines that rank
    its catalogue, as ``finrec compare`` grades it: dropping those adoptions from the task (as
    before) made last month's model look better on this month's data than the model trained
    with the new product (a tester's monthly cycle). The oracle ranks them from the truth."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        # The metrics' own check raised a bare ValueError after the model had scored everyone.
        raise FinrecError(f"k must be a positive integer, got {safe_text(k, quote=True)}")
    pipeline = trained.pipeline
    task = graded_task(pipeline, dataset)
    ids, relevant, excluded, padded, never = task.ids, task.relevant, task.excluded, task.padded, task.never
    cid = dataset.schema.customers.id
    customers = dataset.customers.set_index(cid, drop=False).loc[ids].reset_index(drop=True)
    n, n_products = len(ids), task.n_products
    log.info("ranking %s customers with adoptions: the model, then the baselines", f"{n:,}")
    scores = {
        "model": padded(
            trained.score(customers, dataset.holdings, dataset.holdings_history) if n else np.zeros((0, n_products))
        ),
        "popularity": padded(baselines.popularity_scores(n, np.asarray(pipeline.product_popularity_))),
        "random": padded(baselines.random_scores(n, n_products, np.random.default_rng(seed))),
    }
    unrankable = dict.fromkeys(scores, never)
    if dataset.ground_truth is not None:
        products = [*map(str, pipeline.product_ids_), *task.unknown]
        scores["oracle"] = baselines.oracle_scores(ids, products, dataset.ground_truth)
        unrankable["oracle"] = None
    results = {name: summarize(s, relevant, excluded, k=k, unrankable=unrankable[name]) for name, s in scores.items()}
    cold = ~pipeline.holdings_matrix(ids, dataset.holdings).any(axis=1) if n else np.zeros(0, bool)
    if cold.any():
        results["model:cold"] = summarize(scores["model"][cold], relevant[cold], excluded[cold], k=k, unrankable=never)
    return results


def format_table(results: dict[str, dict[str, float]], k: int) -> str:
    """A plain-text table: one row per ranker, one column per metric."""
    keys = metric_keys(k)
    # A k of 3+ digits makes "precision@100" longer than the usual column: the names ran together.
    width = max(13, 1 + max(len(key) for key in keys))
    header = f"{'ranker':<12}" + "".join(f"{key:>{width}}" for key in keys) + f"{'customers':>11}"
    lines = [header, "-" * len(header)]
    for name, metrics in results.items():
        values = "".join(f"{metrics[key]:>{width}.4f}" for key in keys)
        lines.append(f"{name:<12}" + values + f"{metrics['customers']:>11d}")
    return "\n".join(lines)


def probability_check(
    trained, dataset: Dataset, bins: int = PROBABILITY_BINS, max_customers: int | None = None, seed: int = 0
) -> dict[str, Any] | None:
    """The calibrated probabilities (those ``score --probabilities`` writes and ``plan`` plans
    with) against the adoptions ``dataset`` observed; None for a model without calibration.

    Pairs: every customer, those who adopted nothing included (the probabilities say how likely
    that is too), x every product the customer does not hold; customers who objected to
    profiling are left out, as they are never scored. With ``p`` a pair's probability and ``y``
    1 where the customer adopted the product:

    - ``brier = mean (p - y)^2``; ``reference_brier``: the same for one constant, the observed
      rate of these pairs (``skill = 1 - brier / reference_brier`` > 0: the probabilities tell
      the pairs apart better than the rate);
    - ``log_loss = -mean(y ln p + (1 - y) ln(1 - p))``;
    - ``ece = sum_b (n_b / N) |mean_b p - mean_b y|`` over ``bins`` bins of equal numbers of
      pairs by ``p`` (``reliability``: each bin's pairs, mean ``p`` and observed rate);
    - per product, adoptions ``predicted`` (``sum p``) and ``observed`` (``sum y``),
      ``z = (observed - predicted) / sqrt(sum p (1 - p))`` and ``chance``: how often chance
      alone puts the count at least that far from the predicted, both ways (from ``z`` by the
      normal, or below ``POISSON_BELOW`` predicted adoptions from the Poisson tail, where the
      normal overstates: 3 adoptions of a product predicted 0.2 are z +6.2 but chance 0.002).
      Under ``OFF_BY_CHANCE`` the product's level is off (a capacity planned on it would be too).

    ``max_customers``: a sample of that many customers (drawn with ``seed``) where there are more."""
    calibration = getattr(trained, "calibration", None)
    if calibration is None:
        return None
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise FinrecError(f"bins must be a positive integer, got {safe_text(bins, quote=True)}")
    pipeline = trained.pipeline
    cid = dataset.schema.customers.id
    objected = customer_profile(dataset.customers, pipeline.full_schema.customers)["objected"]
    keep = np.flatnonzero(~objected)
    if max_customers is not None and len(keep) > max_customers:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_customers, replace=False))
    if len(keep) < len(objected):
        dataset = dataset.subset_customers(dataset.customers[cid].to_numpy()[keep])
    ids = dataset.customers[cid].to_numpy()
    held = pipeline.holdings_matrix(ids, dataset.holdings)
    adopted = pipeline.holdings_matrix(ids, dataset.interactions) & ~held
    offered = _offered(pipeline.product_ids_, dataset) | adopted.any(axis=0)
    # A product withdrawn before the data's month (marked not on offer, or gone from the bank's
    # table, and adopted by nobody in it) could not be adopted: its predicted adoptions against
    # none observed would read as a level error, and skew the totals. One the data shows adopted
    # was on offer that month (``on_offer`` is the bank's word today): it is checked.
    pairs = ~held & offered
    out: dict[str, Any] = {
        "customers": len(ids),
        "sampled_from": len(objected) - int(objected.sum()) if len(ids) < len(objected) - objected.sum() else None,
        "objected_left_out": int(objected.sum()),
        "pairs": int(pairs.sum()),
        "not_on_offer": [str(p) for p, on in zip(pipeline.product_ids_, offered, strict=True) if not on],
    }
    if out["pairs"] == 0:
        return {**out, "note": "no customer with a product on offer they do not hold: nothing to compare"}
    history = dataset.holdings_history
    scores = trained.score(dataset.customers, dataset.holdings, history)
    adoption = (
        calibration.adoption_probability(dataset.customers, held, history) if calibration.needs_adoption else None
    )
    probability = calibration(scores, held, adoption).astype("float64")
    p, y = probability[pairs], adopted[pairs].astype("float64")
    rate = float(y.mean())
    spread = (probability * (1 - probability) * pairs).sum(axis=0)
    predicted, observed = (probability * pairs).sum(axis=0), (adopted & pairs).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(spread > 0, (observed - predicted) / np.sqrt(spread), np.nan)
    return {
        **out,
        "predicted_adoptions": float(p.sum()),
        "observed_adoptions": int(y.sum()),
        "brier": brier_score(p, y),
        "reference_brier": rate * (1 - rate),  # mean (rate - y)^2 with y the pairs' own outcomes
        "log_loss": log_loss(p, y),
        "ece": expected_calibration_error(p, y, bins=bins),
        "bins": int(min(bins, len(p))),
        "reliability": [
            {"pairs": r["pairs"], "predicted": r["predicted"], "observed": r["true"]}
            for r in reliability_table(p, y, bins=bins)
        ],
        "products": [
            {
                "product_id": str(pid),
                "predicted": float(predicted[j]),
                "observed": int(observed[j]),
                "z": None if math.isnan(z[j]) else float(z[j]),
                "chance": _chance(int(observed[j]), float(predicted[j]), float(z[j])),
            }
            for j, pid in enumerate(pipeline.product_ids_)
            if offered[j]
        ],
    }


def _offered(product_ids, dataset: Dataset) -> np.ndarray:
    """bool [products]: the model's products that ``dataset``'s products table lists as on offer
    (``products.on_offer``; a product it does not list is not offered either)."""
    from finrec.data.validate import withdrawn

    table = dataset.schema.products
    listed = dataset.products[table.id].astype(str)
    on = listed[~withdrawn(dataset.products, table, S.PRODUCTS)]
    return np.isin(np.asarray(product_ids, dtype=str), on.to_numpy(dtype=str))


def _chance(observed: int, predicted: float, z: float) -> float | None:
    """Two-sided tail probability of a count ``observed`` so far from ``predicted`` (see
    ``probability_check``); None where nothing was predicted and nothing observed."""
    if predicted >= POISSON_BELOW:
        return math.erfc(abs(z) / math.sqrt(2))
    if predicted <= 0:
        return None if observed == 0 else 0.0

    def pmf(k: int) -> float:
        return math.exp(k * math.log(predicted) - predicted - math.lgamma(k + 1))

    if observed <= predicted:
        tail = sum(pmf(k) for k in range(observed + 1))  # P(X <= observed)
    else:  # P(X >= observed), summed upwards: 1 - P(X < observed) loses the small tail to round-off
        tail, k, term = 0.0, observed, pmf(observed)
        while term > tail * 1e-17:
            tail, k = tail + term, k + 1
            term = pmf(k)
    return min(1.0, 2 * tail)


def format_probability_check(check: dict[str, Any] | None) -> str:
    """``probability_check`` as text: the totals, the scores, the reliability bins and the
    products whose adoptions are off by more than chance."""
    if check is None:
        return "probabilities: this model has no calibration"
    head = (
        f"probabilities against the adoptions observed: {check['customers']:,} customers"
        + (f" (a sample of {check['sampled_from']:,})" if check.get("sampled_from") else "")
        + f", {check['pairs']:,} pairs of a customer and a product not held"
        + (
            f" ({check['objected_left_out']:,} who objected to profiling left out)"
            if check["objected_left_out"]
            else ""
        )
    )
    if check.get("not_on_offer"):
        head += (
            f"\n  left out, not on offer in the data's products table and adopted by no one in it: "
            f"{safe_items(check['not_on_offer'])} (withdrawn before these adoptions)"
        )
    if "note" in check:
        return f"{head}\n  {check['note']}"
    predicted, observed = check["predicted_adoptions"], check["observed_adoptions"]
    skill = 1 - check["brier"] / check["reference_brier"] if check["reference_brier"] > 0 else float("nan")
    lines = [
        head,
        f"  adoptions predicted {predicted:,.1f}, observed {observed:,}"
        + (f" (observed / predicted {observed / predicted:.3f})" if predicted > 0 else ""),
        f"  Brier {check['brier']:.5f} (a constant at the observed rate: {check['reference_brier']:.5f}; "
        f"skill {skill:.3f}), log loss {check['log_loss']:.5f}, ECE {check['ece']:.5f} ({check['bins']} equal-mass bins)",
        f"  {'pairs':>10}{'predicted':>11}{'observed':>10}",
        *(f"  {r['pairs']:>10,}{r['predicted']:>11.4f}{r['observed']:>10.4f}" for r in check["reliability"]),
    ]
    off = off_by_chance(check)
    if off:
        lines.append(
            f"  products whose adoptions are off the predicted by more than chance ({OFF_BY_CHANCE:g} or less):"
        )
        lines += [
            f"    {safe_text(r['product_id'])}: predicted {r['predicted']:,.1f}, observed {r['observed']:,} "
            f"(z {r['z']:+.1f}, chance {r['chance']:.2g})"
            for r in off
        ]
    else:
        lines.append(f"  every product's adoptions are within chance of the predicted (chance above {OFF_BY_CHANCE:g})")
    return "\n".join(lines)


def off_by_chance(check: dict[str, Any]) -> list[dict[str, Any]]:
    """The products of ``probability_check`` whose adoptions chance puts so far from the
    predicted at most ``OFF_BY_CHANCE`` of the time, the least likely first."""
    off = [r for r in check["products"] if r["chance"] is not None and r["chance"] <= OFF_BY_CHANCE]
    return sorted(off, key=lambda r: r["chance"])
