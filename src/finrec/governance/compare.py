"""Champion against challenger: the difference of each ranking metric on the same customers, with a
paired bootstrap confidence interval, so that a promotion is a decision with evidence.

Both rankers rank the same held-out customers; each customer's metric is computed for both, and
the bootstrap resamples customers (the same draw for both rankers), which cancels the variation
between customers that an unpaired comparison would carry. A seat holds a finrec model or a
bank's own model by its scores file (``finrec.data.scores``), graded by the same protocol.
"""

from __future__ import annotations

import logging

import numpy as np

from finrec.data import schema as S
from finrec.data.compliance import objected
from finrec.data.ids import as_arrow_text
from finrec.data.scores import ScoresFile, check_scores_for
from finrec.errors import safe_items, safe_text
from finrec.evaluate.metrics import (
    hit_rate_at_k,
    map_at_k,
    metric_keys,
    mrr,
    ndcg_at_k,
    precision_at_k,
    rank_items,
    recall_at_k,
    relevance_in_rank_order,
)
from finrec.features import link_values

log = logging.getLogger(__name__)

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
_CHUNK = 200  # resamples drawn at a time, at most
# ... and at most this many indices at a time (with their gathered values): 200 resamples of 1.8M
# held-out customers drew 2.8 GB of int64 indices and gathered 2.8 GB more per chunk (a 8.9 GB
# peak for `finrec compare`). Fewer rows per draw leave the draws the same: the generator's stream
# does not depend on how it is split into calls.
_CHUNK_INDICES = 1 << 22


def per_customer_metrics(
    scores: np.ndarray,
    relevant: np.ndarray,
    excluded: np.ndarray | None,
    k: int = 5,
    unrankable: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(rows evaluated, ``{metric: float [n_evaluated]}``): every metric of ``summarize`` per
    customer, for the customers with at least one relevant product that is not excluded (the
    mean of each array is ``summarize``'s value). ``unrankable`` (bool [P], or [n, P] per
    customer: the pairs a scores file lacks): products the ranker cannot rank; relevant ones
    count as relevant but are never a hit, at any rank."""
    relevant = np.asarray(relevant, dtype=bool)
    if excluded is not None:
        relevant = relevant & ~np.asarray(excluded, dtype=bool)
    n_relevant = relevant.sum(axis=1)
    rows = np.flatnonzero(n_relevant > 0)
    ex = None if excluded is None else np.asarray(excluded, dtype=bool)[rows]
    ranking = rank_items(np.asarray(scores)[rows], ex)
    rel = relevance_in_rank_order(ranking, relevant[rows])
    if unrankable is not None:
        never = np.asarray(unrankable, dtype=bool)
        never = np.take_along_axis(never[rows], ranking, axis=1) if never.ndim == 2 else never[ranking]
        rel = rel & ~never
    n_rel = n_relevant[rows]
    values = (
        ndcg_at_k(rel, n_rel, k),
        map_at_k(rel, n_rel, k),
        precision_at_k(rel, k),
        recall_at_k(rel, n_rel, k),
        hit_rate_at_k(rel, k),
        mrr(rel),
    )
    return rows, {key: np.asarray(v, dtype="float64") for key, v in zip(metric_keys(k), values, strict=True)}


def resample_means(differences: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``means[r] = mean_j differences[indices[r, j]]``: the mean of each bootstrap resample."""
    return np.asarray(differences, dtype="float64")[indices].mean(axis=1)


def paired_bootstrap(
    champion: np.ndarray,
    challenger: np.ndarray,
    rng: np.random.Generator,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, float]:
    """Mean of ``challenger - champion`` (per-customer values, paired by position) with a
    percentile bootstrap interval.

    Each resample draws ``n`` customers with replacement (indices from ``rng``), the same for
    both models, and takes the mean difference ``d*_r``; the interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of ``d*``.
    ``share_better`` is the share of resamples with ``d*_r > 0``."""
    return paired_bootstraps({"value": champion}, {"value": challenger}, rng, resamples, confidence)["value"]


def paired_bootstraps(
    champion: dict[str, np.ndarray],
    challenger: dict[str, np.ndarray],
    rng: np.random.Generator,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, dict[str, float]]:
    """``paired_bootstrap`` of every metric (``{metric: float [n]}`` each, the same customers),
    all on the same resamples of customers: one draw of indices serves every metric (the draw
    was most of the cost: six metrics of 1.8M customers took minutes), and the intervals of one
    comparison describe one bootstrap. The first metric's row equals ``paired_bootstrap``'s with
    the same ``rng``."""
    if set(champion) != set(challenger):
        raise ValueError(
            f"champion and challenger must have the same metrics, got {sorted(champion)} and {sorted(challenger)}"
        )
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    a = {key: np.asarray(values, dtype="float64") for key, values in champion.items()}
    b = {key: np.asarray(challenger[key], dtype="float64") for key in champion}
    shapes = {values.shape for values in (*a.values(), *b.values())}
    if len(shapes) > 1 or any(len(shape) != 1 for shape in shapes):
        raise ValueError(f"champion and challenger must be 1-D of the same length, got {sorted(shapes)}")
    n = len(next(iter(a.values()))) if a else 0
    if n == 0:
        nan = float("nan")
        empty = {"champion": nan, "challenger": nan, "difference": nan, "low": nan, "high": nan, "share_better": nan}
        return {key: {**empty, "customers": 0} for key in a}
    d = {key: b[key] - a[key] for key in a}
    means: dict[str, list[np.ndarray]] = {key: [] for key in a}
    rows = max(1, min(_CHUNK, _CHUNK_INDICES // n))
    # int32 indices where they fit: the same values (both draw 32 bits per index below 2**32), half the memory
    dtype = np.int32 if n < 2**31 else np.int64
    for start in range(0, resamples, rows):
        indices = rng.integers(0, n, size=(min(rows, resamples - start), n), dtype=dtype)
        for key, differences in d.items():
            means[key].append(resample_means(differences, indices))
    out = {}
    for key, parts in means.items():
        drawn = np.concatenate(parts)
        low, high = np.quantile(drawn, [(1 - confidence) / 2, (1 + confidence) / 2])
        out[key] = {
            "champion": float(a[key].mean()),
            "challenger": float(b[key].mean()),
            "difference": float(d[key].mean()),
            "low": float(low),
            "high": float(high),
            "share_better": float((drawn > 0).mean()),
            "customers": int(n),
        }
    return out


def verdict(row: dict[str, float]) -> str:
    """``better`` / ``worse`` when the interval excludes 0, else ``no clear difference``."""
    if row["low"] > 0:
        return "better"
    if row["high"] < 0:
        return "worse"
    return "no clear difference"


def compare_models(
    champion,
    challenger,
    dataset,
    k: int = 5,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict:
    """Two rankers on the customers of ``dataset`` that have interactions:
    ``{"metrics": {metric: {champion, challenger, difference, low, high, share_better, verdict}},
    "customers", "catalogues", "seats", ...}``.

    Each seat is a ``TrainedModel`` or a ``ScoresFile`` (``finrec.data.scores.read_scores``: a
    bank's own model's scores, ``customer_id, product_id, score`` or ``rank``), checked against
    the data first (``check_scores_for``).

    Both are graded on one task, over the union of their catalogues (a scores file's: the
    products it names) and the products adopted in the data that neither knows: an adoption of
    a product a ranker does not know stays relevant for it, ranked below all it knows (each
    model was graded on its own catalogue: a challenger trained without a product dropped that
    product's adoptions from its task, and its easier task read as an improvement); it is never
    a hit. So each ranker's means are ``evaluate``'s (with a scores seat: ``evaluate``'s on the
    customers who did not object, below). ``catalogues`` names the products only one
    of them knows. A scores file ranks only the pairs it lists: a pair it lacks is never a hit
    either, and ``seats[role]["coverage"]`` counts them (``scores_coverage``). With a scores
    seat, the customers who objected to profiling are left out for both seats
    (``objected_left_out``): a marketing model's file has none of them, as ``finrec score``'s."""
    from finrec.evaluate.report import adoptions_outside, ranking_task

    seats = {"champion": champion, "challenger": challenger}
    files = {role: check_scores_for(seat, dataset) for role, seat in seats.items() if isinstance(seat, ScoresFile)}
    known = {role: _catalogue(seat) for role, seat in seats.items()}
    union = list(dict.fromkeys([*known["champion"], *known["challenger"]]))
    products = [*union, *adoptions_outside(union, dataset)]
    ids, relevant, excluded = ranking_task(None, dataset, products=products)
    cid = dataset.schema.customers.id
    customers = dataset.customers.set_index(cid, drop=False).loc[ids].reset_index(drop=True)
    left_out = 0
    consent = dataset.schema.customers.consent if files else None
    if consent and consent in customers:
        # A bank's marketing export has none of them (nor has `finrec score`): their data is not
        # processed for marketing. Graded, each pitted the model against a 0 for the file.
        said_no = objected(customers[consent], f"{S.CUSTOMERS}.{consent}")
        if said_no.any():
            keep = ~said_no
            ids, relevant, excluded = ids[keep], relevant[keep], excluded[keep]
            customers = customers[keep].reset_index(drop=True)
            left_out = int(said_no.sum())
    per_seat, described = {}, {}
    for role, seat in seats.items():
        kind = "scores file" if isinstance(seat, ScoresFile) else "model"
        log.info("ranking %s customers with adoptions: the %s (%s)", f"{len(ids):,}", role, kind)
        if isinstance(seat, ScoresFile):
            values = link_values(ids, as_arrow_text(products), seat.table, S.SCORE)
            covered = ~np.isnan(values)
            scores, unrankable = np.where(covered, values, -np.inf), ~covered
        else:
            scores = np.full((len(ids), len(products)), -np.inf, dtype="float64")
            if len(ids):
                position = {p: j for j, p in enumerate(products)}
                scores[:, [position[p] for p in known[role]]] = seat.score(
                    customers, dataset.holdings, dataset.holdings_history
                )
            unrankable = np.isin(np.asarray(products, dtype=object), np.asarray(known[role], dtype=object), invert=True)
        rows, per_seat[role] = per_customer_metrics(scores, relevant, excluded, k, unrankable=unrankable)
        described[role] = {"kind": "model"}
        if isinstance(seat, ScoresFile):
            coverage = scores_coverage(covered[rows], relevant[rows], excluded[rows])
            described[role] = {
                "kind": "scores",
                "file": str(seat.source),
                "column": seat.column,
                "file_rows": files[role]["rows"],
                "file_customers": files[role]["customers"],
                "rows_outside_data": files[role]["rows_outside_data"],
                "coverage": coverage,
            }
    a, b = per_seat["champion"], per_seat["challenger"]
    keys = metric_keys(k)
    log.info("paired bootstrap: %s resamples of %s customers", f"{resamples:,}", f"{len(a[keys[0]]):,}")
    rows = paired_bootstraps(
        {m: a[m] for m in keys}, {m: b[m] for m in keys}, np.random.default_rng(seed), resamples, confidence
    )
    out = {key: {**row, "verdict": verdict(row)} for key, row in rows.items()}
    first, second = known["champion"], known["challenger"]
    return {
        "k": k,
        "customers": len(a[metric_keys(k)[0]]),
        "resamples": resamples,
        "confidence": confidence,
        "seed": seed,
        "seats": described,
        "objected_left_out": left_out,
        "catalogues": {
            "champion_only": [p for p in first if p not in set(second)],
            "challenger_only": [p for p in second if p not in set(first)],
        },
        "metrics": out,
    }


def _catalogue(seat) -> list[str]:
    """The text ids of the products a seat can rank: a model's catalogue, a file's products."""
    if isinstance(seat, ScoresFile):
        return seat.products
    return [str(p) for p in seat.pipeline.product_ids_]


def scores_coverage(covered: np.ndarray, relevant: np.ndarray, excluded: np.ndarray) -> dict[str, int]:
    """What a scores file leaves unranked, over the evaluated customers (bool [n, P] each:
    ``covered``, the pairs it scores; ``relevant``, the adoptions; ``excluded``, the held
    products). ``pairs``: the (customer, product not held) pairs every ranker must rank;
    ``adoptions``: those adopted; ``*_without_score``: those the file lacks (never a hit);
    ``customers_without_scores``: customers it scores no product not held for;
    ``most_per_customer``: the most pairs it lists for one customer (a top-K list's K);
    ``held_pairs_scored``: pairs of a held product it lists (excluded, as for every ranker)."""
    offered = ~excluded
    adopted = relevant & offered
    return {
        "customers": int(len(covered)),
        "customers_without_scores": int((~(covered & offered).any(axis=1)).sum()),
        "pairs": int(offered.sum()),
        "pairs_without_score": int((offered & ~covered).sum()),
        "adoptions": int(adopted.sum()),
        "adoptions_without_score": int((adopted & ~covered).sum()),
        "most_per_customer": int(covered.sum(axis=1).max()) if len(covered) else 0,
        "held_pairs_scored": int((covered & excluded).sum()),
    }


def format_comparison(result: dict) -> str:
    pct = f"{result['confidence']:.0%}"
    header = f"{'metric':<14}{'champion':>10}{'challenger':>12}{'difference':>12}  {pct + ' interval':<22}verdict"
    lines = [header, "-" * (len(header) + 12)]
    for key, row in result["metrics"].items():
        interval = f"[{row['low']:+.4f}, {row['high']:+.4f}]"
        lines.append(
            f"{key:<14}{row['champion']:>10.4f}{row['challenger']:>12.4f}{row['difference']:>+12.4f}  "
            f"{interval:<22}{row['verdict']}"
        )
    lines.append(
        f"{result['customers']} customers, paired bootstrap of {result['resamples']} resamples (seed {result['seed']})"
    )
    if result.get("objected_left_out"):
        lines.append(
            f"{result['objected_left_out']:,} customer(s) with adoptions who objected to profiling are left out, for "
            "both seats: their data is not processed for marketing, and a marketing model's file (as `finrec score`'s) "
            "has none of them"
        )
    for role, seat in result.get("seats", {}).items():
        if seat.get("kind") == "scores":
            lines += format_coverage(role, seat, result["k"])
    seats = result.get("seats", {})
    for role, other, key in (
        ("champion", "challenger", "champion_only"),
        ("challenger", "champion", "challenger_only"),
    ):
        only = result.get("catalogues", {}).get(key)
        if only:
            named = f"{len(only)} product(s) ({safe_items(only, quote=False, value_limit=40)})"
            if seats.get(other, {}).get("kind") == "scores":
                lines.append(
                    f"the {other}'s file scores none of {named} the {role} ranks: their adoptions count against it"
                )
            else:
                lines.append(
                    f"only the {role} knows {named}: their adoptions count against the other model, "
                    "which cannot rank them"
                )
    return "\n".join(lines)


def format_coverage(role: str, seat: dict, k: int) -> list[str]:
    """The lines that say what a scores seat left unranked (``scores_coverage``), so that a
    top-K file is never read as a full ranking."""
    c = seat["coverage"]

    def share(part: int, whole: int) -> str:
        return f"{part:,} of {whole:,} ({part / whole:.1%})" if whole else f"{part:,} of 0"

    lines = [
        f"the {role} is the scores file {safe_text(seat['file'])} (by {seat['column']}): "
        f"{share(c['pairs'] - c['pairs_without_score'], c['pairs'])} pairs of an evaluated customer and a product "
        f"not held are scored, {share(c['adoptions'] - c['adoptions_without_score'], c['adoptions'])} adoptions; "
        "a pair without a score is ranked below every scored one and is never a hit"
    ]
    if c["customers_without_scores"]:
        lines.append(
            f"  {share(c['customers_without_scores'], c['customers'])} evaluated customers have no score at all"
            ": every metric is 0 for them"
        )
    if c["pairs_without_score"]:
        most = c["most_per_customer"]
        lines.append(
            f"  a partial ranking (at most {most:,} product(s) per customer): a top-K file is graded fairly on "
            f"@K metrics with K <= {most:,} only; MRR, which reads the whole ranking, is pessimistic for it"
            + (f", and so are the @{k} metrics (k {k} > {most})" if most < k else "")
        )
    if c["held_pairs_scored"]:
        lines.append(
            f"  {c['held_pairs_scored']:,} scored pair(s) are of a product the customer holds: excluded, "
            "as for every ranker (the file's top-K is shorter for them)"
        )
    if seat.get("rows_outside_data"):
        lines.append(f"  {seat['rows_outside_data']:,} row(s) of customers the data lacks were left out")
    return lines
