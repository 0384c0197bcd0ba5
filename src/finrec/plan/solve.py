r"""The campaign problem and its solvers: which customer gets which offer, for the most value.

Every customer ``i`` and product ``j`` has a weight ``w_ij = P(i adopts j) * value_j`` (0 where
a filter forbids the offer or the probability is below the floor: such a pair is never chosen)::

    maximise    sum_ij w_ij x_ij
    subject to  sum_j x_ij <= c        for every customer    (contacts per customer)
                sum_i x_ij <= cap_j    for every product j with a capacity
                x_ij in {0, 1}

The constraints form a bipartite b-matching (a transportation problem), whose matrix is totally
unimodular: the linear relaxation has an integral optimum, so min-cost flow solves it exactly
and linear-programming duality gives a certificate. With one price ``lambda_j >= 0`` per
capacitated product (0 for unlimited ones) the dual function is::

    D(lambda) = sum_j lambda_j cap_j + sum_i top_c_i(lambda),
    top_c_i(lambda) = the sum of the c largest of max(w_ij - lambda_j, 0) over j

Every plan is worth at most ``D(lambda)`` for every ``lambda`` (weak duality) and the best plan
is worth ``min D`` (strong duality and integrality). Hence any plan's ``D(lambda) - value`` is
a proven bound on what it leaves on the table, and ``lambda_j`` at the minimum is the shadow
price of product j's capacity: what one more slot is worth.

Solvers:

- ``solve_exact``: OR-Tools' min-cost flow on the whole graph (weights scaled to integers; the
  rounding is bounded and reported). Memory and time grow with the allowed pairs: it suits up
  to a few million of them.
- ``solve_dual``: for millions of customers. Coordinate descent on ``D`` (each price in turn
  set to its exact minimiser given the others) gives near-optimal prices and the bound; the
  prices then prune every customer to a few candidate offers, and min-cost flow solves the
  pruned problem exactly for the customers a capacity concerns. It reports the gap it proves.
- ``greedy``: the baseline a ranked list gives: each customer's best ``c`` offers, each product
  taking them in order of value until full.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from finrec.errors import FinrecError

UNLIMITED = np.inf
EXACT_SCALE = 1e8  # the largest weight becomes this integer cost; the rest are rounded relative to it


@dataclass
class Plan:
    """Offers as (customer row, product column) pairs, with the proof of their quality."""

    rows: np.ndarray  # int64 [m]
    cols: np.ndarray  # int64 [m]
    value: float  # sum of w over the offers
    bound: float  # proven upper bound on the best plan's value (>= value)
    prices: np.ndarray  # float64 [P]: lambda, the shadow price of each capacity (0 where unlimited)
    method: str
    seconds: float = 0.0
    sweeps: int = 0

    @property
    def gap(self) -> float:
        """bound - value: how much more the best plan could be worth, at most."""
        return max(self.bound - self.value, 0.0)

    @property
    def relative_gap(self) -> float:
        return self.gap / self.bound if self.bound > 0 else 0.0


def check_problem(w: np.ndarray, capacity: np.ndarray, contacts: int) -> tuple[np.ndarray, np.ndarray]:
    """``w`` as float32 [n, P] with negatives, NaN and non-finite values set to 0; capacity float64 [P]."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise FinrecError(f"weights must be a [customers, products] matrix, got shape {w.shape}")
    capacity = np.asarray(capacity, dtype="float64")
    if capacity.shape != (w.shape[1],):
        raise FinrecError(f"capacity must have one entry per product ({w.shape[1]}), got shape {capacity.shape}")
    if (
        np.isnan(capacity).any()
        or (capacity < 0).any()
        or (np.isfinite(capacity) & (capacity != np.round(capacity))).any()
    ):
        raise FinrecError("capacities must be whole numbers >= 0 (or unlimited)")
    if isinstance(contacts, bool) or not isinstance(contacts, (int, np.integer)) or contacts < 1:
        raise FinrecError(f"contacts per customer must be a positive integer, got {contacts!r}")
    w = w.astype(np.float32, copy=False)
    if not (np.isfinite(w) & (w >= 0)).all():
        w = np.where(np.isfinite(w) & (w > 0), w, np.float32(0))
    return w, capacity


def plan_value(w: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> float:
    return float(w[rows, cols].astype("float64").sum())


def dual_value(w: np.ndarray, capacity: np.ndarray, contacts: int, prices: np.ndarray, chunk: int = 262_144) -> float:
    """D(prices) of the module docstring (an upper bound on every plan's value)."""
    capped = np.isfinite(capacity)
    total = float((prices[capped] * capacity[capped]).sum())
    lam = prices.astype(np.float32)
    for start in range(0, len(w), chunk):
        values, _ = _top(w[start : start + chunk] - lam, contacts)
        total += float(values.astype("float64").sum())
    return total


def is_feasible(w: np.ndarray, capacity: np.ndarray, contacts: int, rows: np.ndarray, cols: np.ndarray) -> bool:
    """Each pair once, allowed (w > 0), at most ``contacts`` per customer and ``capacity`` per product."""
    if len(rows) == 0:
        return True
    pairs = rows.astype(np.int64) * w.shape[1] + cols
    if len(np.unique(pairs)) != len(pairs) or not (w[rows, cols] > 0).all():
        return False
    if np.bincount(rows, minlength=len(w)).max() > contacts:
        return False
    return bool((np.bincount(cols, minlength=w.shape[1]) <= capacity).all())


# ---------------------------------------------------------------------------------- greedy


def greedy(w: np.ndarray, capacity: np.ndarray, contacts: int = 1) -> Plan:
    """Each customer proposes its ``contacts`` best allowed offers; each product accepts them in
    order of value while it has capacity; a refused customer is not offered anything else."""
    start = time.perf_counter()
    w, capacity = check_problem(w, capacity, contacts)
    values, index = _top(w, contacts)
    rows = np.repeat(np.arange(len(w)), index.shape[1])
    cols, vals = index.ravel(), values.ravel()
    keep = cols >= 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    accepted = _within_capacity(cols, vals, capacity)
    rows, cols = rows[accepted], cols[accepted]
    value = plan_value(w, rows, cols)
    return Plan(
        rows,
        cols,
        value,
        bound=np.inf,
        prices=np.zeros(w.shape[1]),
        method="greedy",
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------- exact


def solve_exact(w: np.ndarray, capacity: np.ndarray, contacts: int = 1) -> Plan:
    """The optimum by OR-Tools' min-cost flow (``flow_plan``) over every allowed pair. ``bound``
    adds the worst-case effect of rounding the weights to integers."""
    start = time.perf_counter()
    w, capacity = check_problem(w, capacity, contacts)
    pair_rows, pair_cols = np.nonzero(w > 0)
    rows, cols, rounding = flow_plan(w, capacity, contacts, pair_rows, pair_cols)
    value = plan_value(w, rows, cols)
    return Plan(
        rows, cols, value, value + rounding, np.zeros(w.shape[1]), "exact (min-cost flow)", time.perf_counter() - start
    )


def flow_plan(
    w: np.ndarray, capacity: np.ndarray, contacts: int, pair_rows: np.ndarray, pair_cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """The best plan using only the given pairs, by min-cost flow: source -> customer (capacity
    ``contacts``) -> product (1 per pair, cost -w scaled to integers) -> sink (capacity
    ``cap_j``), plus a source -> sink bypass at cost 0 so that nobody has to be contacted.
    Returns (rows, cols, the most the rounding of weights can have cost: one unit per offer)."""
    from ortools.graph.python import min_cost_flow

    P = w.shape[1]
    if len(pair_rows) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0.0
    active, customer_node = np.unique(pair_rows, return_inverse=True)
    na = len(active)
    source, sink = 0, na + P + 1
    pair_w = w[pair_rows, pair_cols].astype("float64")
    scale = EXACT_SCALE / float(pair_w.max())
    supply = na * contacts
    product_caps = np.where(np.isfinite(capacity), np.minimum(capacity, supply), supply).astype(np.int64)
    tails = np.concatenate([np.zeros(na, np.int64), 1 + customer_node, 1 + na + np.arange(P), [source]])
    heads = np.concatenate([1 + np.arange(na), 1 + na + pair_cols, np.full(P, sink), [sink]])
    caps = np.concatenate([np.full(na, contacts, np.int64), np.ones(len(pair_rows), np.int64), product_caps, [supply]])
    unit = np.concatenate(
        [np.zeros(na, np.int64), -np.rint(pair_w * scale).astype(np.int64), np.zeros(P, np.int64), [0]]
    )
    flow = min_cost_flow.SimpleMinCostFlow()
    flow.add_arcs_with_capacity_and_unit_cost(tails, heads, caps, unit)
    flow.set_node_supply(source, supply)
    flow.set_node_supply(sink, -supply)
    status = flow.solve()
    if status != flow.OPTIMAL:
        raise FinrecError(f"the min-cost flow solver did not find an optimum (status {status})")
    chosen = flow.flows(na + np.arange(len(pair_rows))) > 0
    # True optimum <= rounded optimum + K/2 units <= the plan's true value + K units (K offers at most).
    offers_max = min(supply, float(np.where(np.isfinite(capacity), capacity, supply).sum()))
    return pair_rows[chosen].astype(np.int64), pair_cols[chosen].astype(np.int64), offers_max / scale


# ---------------------------------------------------------------------------------- dual


def solve_dual(
    w: np.ndarray,
    capacity: np.ndarray,
    contacts: int = 1,
    max_sweeps: int = 30,
    tolerance: float = 1e-6,
    candidates: int = 2,
    time_limit: float | None = None,
    baseline: Plan | None = None,
) -> Plan:
    """Prices by coordinate descent on the dual ``D``, then the best plan among near-optimal pairs.

    1. Each sweep sets every capacitated product's price, in turn, to the exact minimiser of
       ``D`` over that price with the others fixed: with ``t_i`` the ``c``-th largest reduced
       value ``max(w_ik - lambda_k, 0)`` of customer i over the other products and
       ``s_i = w_ij - t_i`` (what i gains from j over its alternative), ``lambda_j = max(0, the
       (cap_j + 1)-th largest s_i)``: at most ``cap_j`` customers strictly prefer j. Each
       customer's top ``c + 1`` reduced values are kept, so an update costs O(customers). It
       stops when a sweep lowers ``D`` by less than ``tolerance`` (relative), after
       ``max_sweeps`` sweeps or after ``time_limit`` seconds; ``D`` at the best prices is the
       bound.
    2. Candidate pairs: each customer's ``contacts + candidates`` allowed offers of highest
       reduced value ``w - lambda``. A customer whose candidates are all unlimited products takes
       its best ``contacts`` of them; the others (those a capacity concerns) go to the exact
       min-cost flow (``flow_plan``) over their candidate pairs. The plan is the optimum over the
       candidate pairs (greedy's, if that is ever better; ``baseline`` is greedy's plan when the
       caller has it already) and ``bound - value`` is its proven gap.
    """
    start = time.perf_counter()
    w, capacity = check_problem(w, capacity, contacts)
    n, P = w.shape
    c = contacts
    capped = np.flatnonzero(np.isfinite(capacity))
    lam = np.zeros(P, dtype=np.float32)
    values, index = _top(w, c + 1)
    best_bound, prices, sweeps = _top_sum(values, c), np.zeros(P), 0
    # The loop reads one rank (or one product's column) of a million customers at a time: kept as
    # contiguous rows, [c + 1, n] and [capped, n], instead of strided columns of [n, c + 1] / [n, P].
    values = np.ascontiguousarray(values.T)
    index = np.ascontiguousarray(index.T, dtype=np.int16 if P < 2**15 else np.int64)
    columns = np.ascontiguousarray(w[:, capped].T)
    while len(capped) and sweeps < max_sweeps:
        sweeps += 1
        for j, w_j in zip(capped, columns):
            in_top = index[0] == j
            for rank in range(1, c):
                in_top |= index[rank] == j
            alternative = np.where(in_top, values[c], values[c - 1])
            new = np.float32(_clearing_price(w_j - alternative, int(capacity[j])))
            if new == lam[j]:
                continue
            lam[j] = new
            stale = w_j - new > values[c]
            stale |= in_top
            stale |= index[c] == j
            stale = np.flatnonzero(stale)
            if len(stale):
                top_values, top_index = _top(w[stale] - lam, c + 1)
                values[:, stale], index[:, stale] = top_values.T, top_index.T
        bound = float((lam[capped].astype("float64") * capacity[capped]).sum() + _top_sum(values.T, c))
        improved = best_bound - bound
        if bound < best_bound:
            best_bound, prices = bound, lam.astype("float64")
        out_of_time = time_limit is not None and time.perf_counter() - start > time_limit
        if improved <= tolerance * abs(best_bound) or out_of_time:
            break
    del values, index, columns
    rows, cols = _candidate_plan(w, capacity, c, prices.astype(np.float32), c + candidates)
    value = plan_value(w, rows, cols)
    base = baseline if baseline is not None else greedy(w, capacity, c)
    if base.value > value:
        rows, cols, value = base.rows, base.cols, base.value
    return Plan(
        rows,
        cols,
        value,
        max(best_bound, value),
        prices,
        "dual (prices + min-cost flow on candidates)",
        time.perf_counter() - start,
        sweeps,
    )


def _candidate_plan(w, capacity, c, lam, k) -> tuple[np.ndarray, np.ndarray]:
    """The best plan over each customer's ``k`` allowed offers of highest reduced value."""
    n, P = w.shape
    k = min(k, P)
    # part [n, k]: the columns, best first; allowed [n, k]: False where a row has fewer than k
    # allowed offers (its column there is a filler that no step below uses).
    part, allowed = _top_allowed(w, lam, k)
    concerned = (np.isfinite(capacity)[part] & allowed).any(axis=1)
    # Customers no capacity concerns: their best c candidates by value, independently of everyone.
    free = np.flatnonzero(~concerned)
    by_value = np.where(allowed[free], w[free[:, None], part[free]], -np.inf)
    order = np.argsort(-by_value, axis=1, kind="stable")[:, :c]
    take = np.isfinite(np.take_along_axis(by_value, order, axis=1))
    free_rows = np.repeat(free, order.shape[1]).reshape(order.shape)[take]
    free_cols = np.take_along_axis(part[free], order, axis=1)[take]
    # The others: exactly, by min-cost flow over their candidate pairs.
    mine = np.flatnonzero(concerned)
    pair_rows = np.repeat(mine, k)
    pair_cols = part[mine].ravel()
    keep = allowed[mine].ravel()
    rows, cols, _ = flow_plan(w, capacity, c, pair_rows[keep], pair_cols[keep])
    return np.concatenate([free_rows, rows]).astype(np.int64), np.concatenate([free_cols, cols]).astype(np.int64)


def _clearing_price(surplus: np.ndarray, cap: int) -> float:
    """max(0, the (cap + 1)-th largest surplus): the lowest price at which at most ``cap``
    customers gain from the product."""
    if cap >= len(surplus) or (surplus > 0).sum() <= cap:
        return 0.0
    kth = len(surplus) - cap - 1
    return max(float(np.partition(surplus, kth)[kth]), 0.0)


def _within_capacity(
    cols: np.ndarray, priority: np.ndarray, capacity: np.ndarray, tie: np.ndarray | None = None
) -> np.ndarray:
    """bool [m]: the offers each product keeps, the highest ``priority`` first, ``capacity`` at most."""
    keys = (cols, -priority) if tie is None else (cols, -priority, -tie)
    order = np.lexsort(keys[::-1])  # lexsort sorts by the last key first
    sorted_cols = cols[order]
    first = np.searchsorted(sorted_cols, sorted_cols, side="left")
    rank = np.arange(len(order)) - first
    keep = np.zeros(len(cols), dtype=bool)
    keep[order] = rank < capacity[sorted_cols]
    return keep


# Up to this many of the largest per row are found by repeated argmax (one pass over the row
# each, ~8x faster than argpartition on [1M, 25]); wider tops by argpartition.
ARGMAX_TOP = 4


def _top(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest of ``max(values, 0)`` per row, descending (float32 [m, k]), and their
    columns (int64 [m, k]; -1 where the value is 0, and as padding when k > P). Among equal
    values the lower column comes first when k <= ``ARGMAX_TOP``."""
    m, P = values.shape
    clipped = np.maximum(values, np.float32(0))
    width = min(k, P)
    if width < P and width <= ARGMAX_TOP:
        rows = np.arange(m)
        top_values = np.empty((m, width), dtype=clipped.dtype)
        top_index = np.empty((m, width), dtype=np.int64)
        for rank in range(width):
            top_index[:, rank] = column = clipped.argmax(axis=1)
            top_values[:, rank] = clipped[rows, column]
            clipped[rows, column] = -1  # below every clipped value: never the argmax again
        top_index[top_values <= 0] = -1
        return top_values.astype(np.float32, copy=False), top_index
    if width < P:
        part = np.argpartition(-clipped, width - 1, axis=1)[:, :width]
    else:
        part = np.broadcast_to(np.arange(P), (m, P))
    picked = np.take_along_axis(clipped, part, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")
    top_values = np.take_along_axis(picked, order, axis=1)
    top_index = np.where(top_values > 0, np.take_along_axis(part, order, axis=1), -1)
    if width < k:
        top_values = np.pad(top_values, ((0, 0), (0, k - width)))
        top_index = np.pad(top_index, ((0, 0), (0, k - width)), constant_values=-1)
    return top_values.astype(np.float32), top_index.astype(np.int64)


def _top_sum(values: np.ndarray, c: int) -> float:
    """The sum of the ``c`` largest reduced values of every row of ``values`` [n, >= c], in float64."""
    return float(np.ascontiguousarray(values[:, :c], dtype=np.float64).sum())


def _top_allowed(w: np.ndarray, lam: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` allowed (w > 0) columns of highest reduced value ``w - lam``, best first
    (int64 [n, k]), and bool [n, k]: False where the row has fewer allowed columns than k."""
    n, P = w.shape
    reduced = w - lam
    np.copyto(reduced, np.float32(-np.inf), where=w <= 0)  # w >= 0 (check_problem): not allowed
    if k >= P or k > ARGMAX_TOP:
        part = np.argpartition(-reduced, k - 1, axis=1)[:, :k] if k < P else np.broadcast_to(np.arange(P), (n, P))
        return part, np.take_along_axis(w, part, axis=1) > 0
    rows = np.arange(n)
    part = np.empty((n, k), dtype=np.int64)
    allowed = np.empty((n, k), dtype=bool)
    for rank in range(k):
        part[:, rank] = column = reduced.argmax(axis=1)
        allowed[:, rank] = reduced[rows, column] > -np.inf
        reduced[rows, column] = -np.inf  # taken (a row with none allowed left repeats a filler column)
    return part, allowed
