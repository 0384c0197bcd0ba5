"""Champion against challenger: the difference of each ranking metric on the same customers, with a
paired bootstrap confidence interval, so that a promotion is a decision with evidence.

Both models rank the same held-out customers; each customer's metric is computed for both, and
the bootstrap resamples customers (the same draw for both models), which cancels the variation
between customers that an unpaired comparison would carry.
"""

from __future__ import annotations

import numpy as np

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
    mean of each array is ``summarize``'s value). ``unrankable`` (bool [P]): products the model
    cannot rank; relevant ones count as relevant but are never a hit, at any rank."""
    relevant = np.asarray(relevant, dtype=bool)
    if excluded is not None:
        relevant = relevant & ~np.asarray(excluded, dtype=bool)
    n_relevant = relevant.sum(axis=1)
    rows = np.flatnonzero(n_relevant > 0)
    ex = None if excluded is None else np.asarray(excluded, dtype=bool)[rows]
    ranking = rank_items(np.asarray(scores)[rows], ex)
    rel = relevance_in_rank_order(ranking, relevant[rows])
    if unrankable is not None:
        rel = rel & ~np.asarray(unrankable, dtype=bool)[ranking]
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
    a = np.asarray(champion, dtype="float64")
    b = np.asarray(challenger, dtype="float64")
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"champion and challenger must be 1-D of the same length, got {a.shape} and {b.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    n = len(a)
    if n == 0:
        nan = float("nan")
        return {
            "champion": nan,
            "challenger": nan,
            "difference": nan,
            "low": nan,
            "high": nan,
            "share_better": nan,
            "customers": 0,
        }
    d = b - a
    rows = max(1, min(_CHUNK, _CHUNK_INDICES // n))
    # int32 indices where they fit: the same values (both draw 32 bits per index below 2**32), half the memory
    dtype = np.int32 if n < 2**31 else np.int64
    means = np.concatenate(
        [
            resample_means(d, rng.integers(0, n, size=(min(rows, resamples - start), n), dtype=dtype))
            for start in range(0, resamples, rows)
        ]
    )
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {
        "champion": float(a.mean()),
        "challenger": float(b.mean()),
        "difference": float(d.mean()),
        "low": float(low),
        "high": float(high),
        "share_better": float((means > 0).mean()),
        "customers": int(n),
    }


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
    """Both ``TrainedModel``s on the customers of ``dataset`` that have interactions:
    ``{"metrics": {metric: {champion, challenger, difference, low, high, share_better, verdict}}}``.

    Both are graded on one task, over the union of their catalogues: an adoption of a product
    one model does not know stays relevant for it, ranked below all it knows (each model was
    graded on its own catalogue: a challenger trained without a product dropped that product's
    adoptions from its task, and its easier task read as an improvement); it is never a hit.
    ``catalogues`` names the products only one of them knows."""
    first = [str(p) for p in champion.pipeline.product_ids_]
    second = [str(p) for p in challenger.pipeline.product_ids_]
    union = list(dict.fromkeys([*first, *second]))
    from finrec.evaluate.report import ranking_task

    ids, relevant, excluded = ranking_task(champion.pipeline, dataset, products=union)
    cid = dataset.schema.customers.id
    customers = dataset.customers.set_index(cid, drop=False).loc[ids].reset_index(drop=True)
    per_model = []
    for trained, known in ((champion, first), (challenger, second)):
        scores = np.full((len(ids), len(union)), -np.inf, dtype="float64")
        if len(ids):
            position = {p: j for j, p in enumerate(union)}
            scores[:, [position[p] for p in known]] = trained.score(
                customers, dataset.holdings, dataset.holdings_history
            )
        unknown = np.isin(np.asarray(union, dtype=object), np.asarray(known, dtype=object), invert=True)
        per_model.append(per_customer_metrics(scores, relevant, excluded, k, unrankable=unknown)[1])
    a, b = per_model
    rng = np.random.default_rng(seed)
    out = {}
    for key in metric_keys(k):
        row = paired_bootstrap(a[key], b[key], rng, resamples, confidence)
        out[key] = {**row, "verdict": verdict(row)}
    return {
        "k": k,
        "customers": len(a[metric_keys(k)[0]]),
        "resamples": resamples,
        "confidence": confidence,
        "seed": seed,
        "catalogues": {
            "champion_only": [p for p in first if p not in set(second)],
            "challenger_only": [p for p in second if p not in set(first)],
        },
        "metrics": out,
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
    for role, key in (("champion", "champion_only"), ("challenger", "challenger_only")):
        only = result.get("catalogues", {}).get(key)
        if only:
            lines.append(
                f"only the {role} knows {len(only)} product(s) ({', '.join(only[:5])}{', ...' if len(only) > 5 else ''}): "
                "their adoptions count against the other model, which cannot rank them"
            )
    return "\n".join(lines)
