"""Ranking metrics for product recommendation, vectorised over customers.

In the style of Microsoft Recommenders' evaluation module: pure numpy functions, each with its
formula and edge cases in the docstring. No function loops over customers in Python; the only
loop is over row chunks in :func:`summarize`, which bounds memory on 1M customers x 200 products.

Notation used in the docstrings:

* ``n`` customers (rows), ``P`` products (columns), ``L`` length of a (possibly truncated)
  ranking, ``k`` the cut-off.
* ``rel`` is bool ``[n, L]``: ``rel[i, r]`` is True when the item ranked at position ``r``
  (0-based, so rank ``r + 1``) for customer ``i`` is relevant. Build it with
  :func:`rank_items` and :func:`relevance_in_rank_order`.
* ``n_relevant`` is int ``[n]``: how many relevant items customer ``i`` has in total. It may exceed
  the number of True entries in ``rel[i]`` when the caller truncated the ranking, never fall
  below it.

Customers with ``n_relevant == 0`` have no defined recall, NDCG or MAP: these functions return
NaN for them, and :func:`summarize` leaves them out of its averages. Typical flow::

    ranking = rank_items(scores, excluded=held)          # int  [n, P]
    rel = relevance_in_rank_order(ranking, bought, held)  # bool [n, P]
    n_rel = (bought & ~held).sum(axis=1)                   # int  [n]
    ndcg = ndcg_at_k(rel, n_rel, k=5)                      # float[n]
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "METRIC_ORDER",
    "hit_rate_at_k",
    "map_at_k",
    "metric_keys",
    "mrr",
    "ndcg_at_k",
    "precision_at_k",
    "rank_items",
    "recall_at_k",
    "relevance_in_rank_order",
    "summarize",
]

#: Metric key templates in display order; format with ``k`` (``"ndcg@{k}".format(k=5)``).
METRIC_ORDER: list[str] = [
    "ndcg@{k}",
    "map@{k}",
    "precision@{k}",
    "recall@{k}",
    "hit_rate@{k}",
    "mrr",
]

#: Rows processed at a time by :func:`summarize`.
DEFAULT_CHUNK_ROWS = 65536


def metric_keys(k: int) -> list[str]:
    """The keys of :func:`summarize`'s metrics for cut-off ``k``, in :data:`METRIC_ORDER`.

    ``metric_keys(5) == ["ndcg@5", "map@5", "precision@5", "recall@5", "hit_rate@5", "mrr"]``.
    """
    k = _check_k(k)
    return [template.format(k=k) for template in METRIC_ORDER]


# --------------------------------------------------------------------------- validation


def _check_k(k: object) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k must be a positive integer, got {k!r} ({type(k).__name__})")
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    return int(k)


def _as_bool_2d(name: str, a: object) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, items], got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be boolean (or 0/1), got values other than 0 and 1")
    return arr.astype(bool)


def _check_rel(rel: object) -> np.ndarray:
    return _as_bool_2d("rel", rel)


def _check_n_relevant(n_relevant: object, rel: np.ndarray) -> np.ndarray:
    n_rel = np.asarray(n_relevant)
    if n_rel.shape != (rel.shape[0],):
        raise ValueError(f"n_relevant must have shape ({rel.shape[0]},) to match rel {rel.shape}, got {n_rel.shape}")
    if n_rel.dtype.kind not in "iub":
        whole = n_rel.dtype.kind == "f" and np.all(np.isfinite(n_rel))
        if whole and np.all(n_rel == np.round(n_rel)):
            n_rel = n_rel.astype(np.int64)
        else:
            raise ValueError(f"n_relevant must hold non-negative integers, got dtype {n_rel.dtype}")
    n_rel = n_rel.astype(np.int64, copy=False)
    if n_rel.size and n_rel.min() < 0:
        raise ValueError("n_relevant must hold non-negative integers, got a negative count")
    if rel.size and np.any(rel.sum(axis=1) > n_rel):
        bad = int(np.flatnonzero(rel.sum(axis=1) > n_rel)[0])
        raise ValueError(
            f"n_relevant is smaller than the relevant items visible in rel "
            f"(row {bad}: n_relevant={int(n_rel[bad])}, hits={int(rel[bad].sum())})"
        )
    return n_rel


def _nan_where_no_relevant(values: np.ndarray, n_relevant: object | None, rel: np.ndarray) -> np.ndarray:
    if n_relevant is None:
        return values
    n_rel = _check_n_relevant(n_relevant, rel)
    return np.where(n_rel > 0, values, np.nan)


# --------------------------------------------------------------------------- ranking


def rank_items(scores: np.ndarray, excluded: np.ndarray | None = None) -> np.ndarray:
    """Item indices of each row sorted best first, excluded items last.

    Args:
        scores: float ``[n, P]``, higher is better. NaN counts as ``-inf``.
        excluded: bool ``[n, P]`` or None; True marks items that must never be recommended
            (e.g. products the customer already holds).

    Returns:
        int ``[n, P]`` (``np.intp``): ``ranking[i, r]`` is the item at rank ``r + 1`` for row ``i``.

    Order within a row:

    1. non-excluded items by descending score, NaN and ``-inf`` scores at the end of this block;
    2. ties (including among NaN/``-inf``) broken by lower item index (stable sort);
    3. all excluded items last, in index order, whatever their score.

    So ``ranking[i, :n_rankable[i]]`` with ``n_rankable = (~excluded).sum(axis=1)`` is exactly the
    list of recommendable items. Edge cases: ``P == 0`` or ``n == 0`` gives an empty ``[n, P]``
    array; an all-excluded row is just ``0..P-1``.

    Implementation: one stable ``argsort`` of the key ``-score`` where NaN scores become ``+inf``
    and excluded items become NaN, which numpy sorts after every number.
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be a 2-D array [n, P], got shape {s.shape}")
    if s.dtype.kind not in "biuf":
        raise ValueError(f"scores must be numeric, got dtype {s.dtype}")
    dtype = s.dtype if s.dtype.kind == "f" else np.float64
    key = np.negative(s, dtype=dtype)  # fresh array: never modifies the caller's scores
    key[np.isnan(key)] = np.inf
    if excluded is not None:
        ex = _as_bool_2d("excluded", excluded)
        if ex.shape != s.shape:
            raise ValueError(f"excluded has shape {ex.shape}, scores has shape {s.shape}")
        key[ex] = np.nan
    return np.argsort(key, axis=1, kind="stable")


def relevance_in_rank_order(
    ranking: np.ndarray, relevant: np.ndarray, excluded: np.ndarray | None = None
) -> np.ndarray:
    """Relevance of each ranked item, in rank order.

    Args:
        ranking: int ``[n, L]`` item indices best first (``L <= P``; a truncated ranking is fine).
        relevant: bool ``[n, P]``, True for items the customer actually took.
        excluded: bool ``[n, P]`` or None; excluded items never count as relevant.

    Returns:
        bool ``[n, L]``: with ``j = ranking[i, r]``,
        ``rel[i, r] = relevant[i, j] and not excluded[i, j]``.
    """
    rk = np.asarray(ranking)
    rv = _as_bool_2d("relevant", relevant)
    if rk.ndim != 2:
        raise ValueError(f"ranking must be a 2-D array [n, L], got shape {rk.shape}")
    if rk.dtype.kind not in "iu":
        raise ValueError(f"ranking must hold integer item indices, got dtype {rk.dtype}")
    if rk.shape[0] != rv.shape[0]:
        raise ValueError(f"ranking has {rk.shape[0]} rows, relevant has {rv.shape[0]}")
    if rk.shape[1] > rv.shape[1]:
        raise ValueError(f"ranking has {rk.shape[1]} columns, more than the {rv.shape[1]} items")
    if rk.size and (rk.min() < 0 or rk.max() >= rv.shape[1]):
        raise ValueError(f"ranking holds item indices outside [0, {rv.shape[1]})")
    rel = np.take_along_axis(rv, rk, axis=1)
    if excluded is not None:
        ex = _as_bool_2d("excluded", excluded)
        if ex.shape != rv.shape:
            raise ValueError(f"excluded has shape {ex.shape}, relevant has shape {rv.shape}")
        rel &= ~np.take_along_axis(ex, rk, axis=1)
    return rel


# --------------------------------------------------------------------------- metrics


def _hits_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    return rel[:, :k].sum(axis=1, dtype=np.int64)


def precision_at_k(rel: np.ndarray, k: int, *, n_relevant: np.ndarray | None = None) -> np.ndarray:
    """Precision at k per customer.

    ``precision@k = (sum_{r=1..k} rel_r) / k``

    Args:
        rel: bool ``[n, L]`` relevance in rank order.
        k: positive int cut-off.
        n_relevant: optional int ``[n]``; when given, rows with ``n_relevant == 0`` are NaN
            (for consistency with the other metrics). Without it, such rows are 0.

    Returns:
        float ``[n]`` in ``[0, 1]``.

    Edge cases: always divides by ``k``, even when fewer than ``k`` items were ranked
    (``L < k``), so a short list is penalised.
    """
    k = _check_k(k)
    rel = _check_rel(rel)
    return _nan_where_no_relevant(_hits_at_k(rel, k) / k, n_relevant, rel)


def recall_at_k(rel: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Recall at k per customer.

    ``recall@k = (sum_{r=1..k} rel_r) / n_relevant``

    Args:
        rel: bool ``[n, L]`` relevance in rank order.
        n_relevant: int ``[n]`` total relevant items per customer (>= hits in ``rel``).
        k: positive int cut-off.

    Returns:
        float ``[n]`` in ``[0, 1]``; NaN where ``n_relevant == 0``.

    Edge cases: when ``n_relevant > k`` recall cannot reach 1 (it is not capped at
    ``min(n_relevant, k)``, unlike MAP and NDCG).
    """
    k = _check_k(k)
    rel = _check_rel(rel)
    n_rel = _check_n_relevant(n_relevant, rel)
    hits = _hits_at_k(rel, k).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, hits / np.maximum(n_rel, 1), np.nan)


def _discounts(k: int) -> np.ndarray:
    """float ``[k]``: ``1 / log2(r + 1)`` for ranks ``r = 1..k``."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ndcg_at_k(rel: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Normalised discounted cumulative gain at k, binary gain, per customer.

    ``DCG@k  = sum_{r=1..k} rel_r / log2(r + 1)``

    ``IDCG@k = sum_{r=1..min(n_relevant, k)} 1 / log2(r + 1)``

    ``NDCG@k = DCG@k / IDCG@k``

    Args:
        rel: bool ``[n, L]`` relevance in rank order.
        n_relevant: int ``[n]`` total relevant items per customer (>= hits in ``rel``).
        k: positive int cut-off.

    Returns:
        float ``[n]`` in ``[0, 1]``; NaN where ``n_relevant == 0``.

    Edge cases: ``L < k`` sums over the ``L`` available ranks only, while the ideal still uses
    ``min(n_relevant, k)`` (a truncated list that hides relevant items scores below 1).
    """
    k = _check_k(k)
    rel = _check_rel(rel)
    n_rel = _check_n_relevant(n_relevant, rel)
    disc = _discounts(k)
    top = rel[:, :k]
    dcg = top.astype(np.float64) @ disc[: top.shape[1]]
    ideal = np.concatenate(([0.0], np.cumsum(disc)))  # ideal[m] = IDCG with m relevant items
    idcg = ideal[np.minimum(n_rel, k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, dcg / np.where(idcg > 0, idcg, 1.0), np.nan)


def map_at_k(rel: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Average precision at k per customer (the caller's mean over customers is MAP@k).

    ``AP@k = (sum_{r=1..k} rel_r * precision@r) / min(n_relevant, k)``

    with ``precision@r = (sum_{j=1..r} rel_j) / r``.

    Args:
        rel: bool ``[n, L]`` relevance in rank order.
        n_relevant: int ``[n]`` total relevant items per customer (>= hits in ``rel``).
        k: positive int cut-off.

    Returns:
        float ``[n]`` in ``[0, 1]``; NaN where ``n_relevant == 0``.

    Edge cases: the denominator ``min(n_relevant, k)`` lets a customer with more than ``k``
    relevant items still reach 1 when the top ``k`` are all hits.
    """
    k = _check_k(k)
    rel = _check_rel(rel)
    n_rel = _check_n_relevant(n_relevant, rel)
    top = rel[:, :k]
    cum_hits = np.cumsum(top, axis=1, dtype=np.float64)  # [n, min(L, k)]
    prec_at_r = cum_hits / np.arange(1, top.shape[1] + 1, dtype=np.float64)
    summed = np.where(top, prec_at_r, 0.0).sum(axis=1)
    denom = np.minimum(n_rel, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, summed / np.maximum(denom, 1), np.nan)


def mrr(rel: np.ndarray, *, n_relevant: np.ndarray | None = None) -> np.ndarray:
    """Reciprocal rank of the first relevant item per customer (mean over customers is MRR).

    ``RR = 1 / min{r : rel_r}`` over the whole ranking given (no cut-off), 0 if no item is relevant.

    Args:
        rel: bool ``[n, L]`` relevance in rank order.
        n_relevant: optional int ``[n]``; when given, rows with ``n_relevant == 0`` are NaN.

    Returns:
        float ``[n]`` in ``[0, 1]``.

    Edge cases: a truncated ranking (``L < P``) gives 0 to customers whose first hit lies beyond
    ``L``; ``L == 0`` gives all zeros.
    """
    rel = _check_rel(rel)
    if rel.shape[1] == 0:
        out = np.zeros(rel.shape[0], dtype=np.float64)
    else:
        first = np.argmax(rel, axis=1)  # index of the first True, 0 when none
        out = np.where(rel.any(axis=1), 1.0 / (first + 1.0), 0.0)
    return _nan_where_no_relevant(out, n_relevant, rel)


def hit_rate_at_k(rel: np.ndarray, k: int, *, n_relevant: np.ndarray | None = None) -> np.ndarray:
    """Hit rate at k per customer.

    ``hit@k = 1 if sum_{r=1..k} rel_r > 0 else 0``

    Args:
        rel: bool ``[n, L]`` relevance in rank order.
        k: positive int cut-off.
        n_relevant: optional int ``[n]``; when given, rows with ``n_relevant == 0`` are NaN.

    Returns:
        float ``[n]`` of 0.0 / 1.0.
    """
    k = _check_k(k)
    rel = _check_rel(rel)
    out = rel[:, :k].any(axis=1).astype(np.float64)
    return _nan_where_no_relevant(out, n_relevant, rel)


# --------------------------------------------------------------------------- summary


def summarize(
    scores: np.ndarray,
    relevant: np.ndarray,
    excluded: np.ndarray | None,
    k: int = 5,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    unrankable: np.ndarray | None = None,
) -> dict[str, float]:
    """Rank, score every metric, and average over the customers that can be evaluated.

    Args:
        scores: float ``[n, P]`` model scores, higher is better (NaN counts as ``-inf``).
        relevant: bool ``[n, P]`` ground truth (e.g. products acquired in the test period).
        excluded: bool ``[n, P]`` or None; items never ranked and never relevant
            (e.g. products already held).
        k: positive int cut-off.
        chunk_rows: rows processed at a time; bounds memory at about
            ``chunk_rows * P * 17`` bytes (float64 key, intp ranking, bool relevance).
        unrankable: bool ``[P]`` or None; products the ranker cannot rank (a product the model
            does not know): a relevant one counts as relevant but is never a hit, at any rank.

    Returns:
        ``{"ndcg@k", "map@k", "precision@k", "recall@k", "hit_rate@k", "mrr"}`` (with the actual
        ``k``, order of :data:`METRIC_ORDER`) mapped to their mean over evaluated customers, plus
        ``"customers"``: how many customers were evaluated (an ``int``).

    Customers with no relevant, non-excluded item are skipped. When none is left, every metric
    is NaN and ``"customers"`` is 0. MRR is over the full ranking of non-excluded items.
    """
    k = _check_k(k)
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, numbers.Integral) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    s = np.asarray(scores)
    rv = _as_bool_2d("relevant", relevant)
    if s.ndim != 2:
        raise ValueError(f"scores must be a 2-D array [n, P], got shape {s.shape}")
    if rv.shape != s.shape:
        raise ValueError(f"relevant has shape {rv.shape}, scores has shape {s.shape}")
    ex = None
    if excluded is not None:
        ex = _as_bool_2d("excluded", excluded)
        if ex.shape != s.shape:
            raise ValueError(f"excluded has shape {ex.shape}, scores has shape {s.shape}")
    never = None
    if unrankable is not None:
        never = np.asarray(unrankable, dtype=bool)
        if never.shape != (s.shape[1],):
            raise ValueError(f"unrankable has shape {never.shape}, expected ({s.shape[1]},)")

    keys = metric_keys(k)
    totals = dict.fromkeys(keys, 0.0)
    customers = 0
    for start in range(0, s.shape[0], chunk_rows):
        stop = start + chunk_rows
        rel_c = rv[start:stop]
        ex_c = None if ex is None else ex[start:stop]
        if ex_c is not None:
            rel_c = rel_c & ~ex_c
        n_rel = rel_c.sum(axis=1, dtype=np.int64)
        keep = n_rel > 0
        if not keep.any():
            continue
        n_rel = n_rel[keep]
        rel_c = rel_c[keep]
        ex_c = None if ex_c is None else ex_c[keep]
        ranking = rank_items(s[start:stop][keep], ex_c)
        rel = relevance_in_rank_order(ranking, rel_c)  # rel_c is already masked by ex_c
        if never is not None:
            rel = rel & ~never[ranking]
        values = (
            ndcg_at_k(rel, n_rel, k),
            map_at_k(rel, n_rel, k),
            precision_at_k(rel, k),
            recall_at_k(rel, n_rel, k),
            hit_rate_at_k(rel, k),
            mrr(rel),
        )
        for key, v in zip(keys, values, strict=True):
            totals[key] += float(v.sum())
        customers += int(keep.sum())

    result = {key: (totals[key] / customers if customers else float("nan")) for key in keys}
    result["customers"] = customers
    return result
