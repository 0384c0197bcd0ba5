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
- ``solve_dual``: coordinate descent on ``D`` (each price in turn set to its exact minimiser
  given the others), each customer keeping its top ``c + 1`` reduced values so that an update
  costs O(customers); the plan is read off the prices (each customer's best reduced offers,
  trimmed to the capacities by surplus) and its leftover capacity filled in rounds. It streams
  through [n, P] in float32 and reports the gap it proves.
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
    """The optimum by OR-Tools' min-cost flow: source -> customer (capacity ``contacts``) ->
    product (1 per pair, cost -w scaled to integers) -> sink (capacity ``cap_j``), plus a
    source -> sink bypass at cost 0 so that nobody has to be contacted. ``bound`` adds the
    worst-case effect of rounding the weights (at most one rounding unit per offer); ``prices``
    come from ``solve_dual`` started cold (0 where it is not needed)."""
    from ortools.graph.python import min_cost_flow

    start = time.perf_counter()
    w, capacity = check_problem(w, capacity, contacts)
    n, P = w.shape
    pair_rows, pair_cols = np.nonzero(w > 0)
    if len(pair_rows) == 0:
        return Plan(pair_rows, pair_cols, 0.0, 0.0, np.zeros(P), "exact (min-cost flow)", time.perf_counter() - start)
    active, customer_node = np.unique(pair_rows, return_inverse=True)
    na = len(active)
    source, sink = 0, na + P + 1
    top = float(w.max())
    scale = EXACT_SCALE / top
    costs = -np.rint(w[pair_rows, pair_cols].astype("float64") * scale).astype(np.int64)
    supply = na * contacts
    product_caps = np.where(np.isfinite(capacity), np.minimum(capacity, supply), supply).astype(np.int64)
    tails = np.concatenate([np.zeros(na, np.int64), 1 + customer_node, 1 + na + np.arange(P), [source]])
    heads = np.concatenate([1 + np.arange(na), 1 + na + pair_cols, np.full(P, sink), [sink]])
    caps = np.concatenate([np.full(na, contacts, np.int64), np.ones(len(pair_rows), np.int64), product_caps, [supply]])
    unit = np.concatenate([np.zeros(na, np.int64), costs, np.zeros(P, np.int64), [0]])
    flow = min_cost_flow.SimpleMinCostFlow()
    flow.add_arcs_with_capacity_and_unit_cost(tails, heads, caps, unit)
    flow.set_node_supply(source, supply)
    flow.set_node_supply(sink, -supply)
    status = flow.solve()
    if status != flow.OPTIMAL:
        raise FinrecError(f"the min-cost flow solver did not find an optimum (status {status})")
    arcs = na + np.arange(len(pair_rows))
    chosen = flow.flows(arcs) > 0
    rows, cols = pair_rows[chosen].astype(np.int64), pair_cols[chosen].astype(np.int64)
    value = plan_value(w, rows, cols)
    # True optimum <= rounded optimum + K/2 units <= this plan's true value + K units (K offers at most).
    offers_max = min(na * contacts, float(np.where(np.isfinite(capacity), capacity, supply).sum()))
    bound = value + offers_max / scale
    return Plan(rows, cols, value, bound, np.zeros(P), "exact (min-cost flow)", time.perf_counter() - start)


# ---------------------------------------------------------------------------------- dual


def solve_dual(
    w: np.ndarray,
    capacity: np.ndarray,
    contacts: int = 1,
    max_sweeps: int = 60,
    tolerance: float = 1e-4,
    time_limit: float | None = None,
) -> Plan:
    """Coordinate descent on the dual ``D`` (module docstring), then a plan read off the prices.

    Each sweep sets every capacitated product's price, in turn, to the exact minimiser of ``D``
    over that price with the others fixed: with ``t_i`` the ``c``-th largest reduced value of
    customer i among the other products (0 if fewer are positive) and ``s_i = w_ij - t_i`` (how
    much i gains from j over its alternative), ``lambda_j = max(0, the (cap_j + 1)-th largest
    s_i)``, so that exactly ``cap_j`` customers prefer j. It stops when the plan's proven
    relative gap ``(D - value) / D`` is at most ``tolerance``, when a sweep changes no price,
    after ``max_sweeps`` sweeps or after ``time_limit`` seconds. The plan returned is the best
    one found (it is never worse than ``greedy``, which is one of the candidates)."""
    start = time.perf_counter()
    w, capacity = check_problem(w, capacity, contacts)
    n, P = w.shape
    c = contacts
    capped = np.flatnonzero(np.isfinite(capacity))
    prices = np.zeros(P)
    best = greedy(w, capacity, c)
    best_bound = dual_value(w, capacity, c, prices)
    best.method = "dual"
    if len(capped) == 0 or n == 0:  # nothing binds: each customer's best c offers are optimal
        plan = _read_plan(w, capacity, c, prices, *_top(w, c + 1))
        return Plan(plan[0], plan[1], plan_value(w, *plan), best_bound, prices, "dual", time.perf_counter() - start)
    lam = np.zeros(P, dtype=np.float32)
    values, index = _top(w, c + 1)
    sweeps = 0
    while sweeps < max_sweeps:
        sweeps += 1
        moved = False
        for j in capped:
            in_top = (index[:, :c] == j).any(axis=1)
            alternative = np.where(in_top, values[:, c], values[:, c - 1])
            surplus = w[:, j] - alternative
            new = np.float32(_clearing_price(surplus, int(capacity[j])))
            if new == lam[j]:
                continue
            moved = True
            lam[j] = new
            stale = (index == j).any(axis=1) | (w[:, j] - new > values[:, c])
            rows = np.flatnonzero(stale)
            if len(rows):
                values[rows], index[rows] = _top(w[rows] - lam, c + 1)
        bound = float((lam[capped].astype("float64") * capacity[capped]).sum() + values[:, :c].astype("float64").sum())
        if bound < best_bound:
            best_bound, prices = bound, lam.astype("float64")
        rows_, cols_ = _read_plan(w, capacity, c, lam, values, index)
        value = plan_value(w, rows_, cols_)
        if value > best.value:
            best = Plan(rows_, cols_, value, best_bound, prices, "dual")
        out_of_time = time_limit is not None and time.perf_counter() - start > time_limit
        if not moved or best_bound - best.value <= tolerance * best_bound or out_of_time:
            break
    return Plan(
        best.rows,
        best.cols,
        best.value,
        max(best_bound, best.value),
        prices,
        "dual",
        time.perf_counter() - start,
        sweeps,
    )


def _clearing_price(surplus: np.ndarray, cap: int) -> float:
    """max(0, the (cap + 1)-th largest surplus): the lowest price at which at most ``cap``
    customers gain from the product."""
    if cap >= len(surplus) or (surplus > 0).sum() <= cap:
        return 0.0
    kth = len(surplus) - cap - 1
    return max(float(np.partition(surplus, kth)[kth]), 0.0)


def _read_plan(w, capacity, c, lam, values, index) -> tuple[np.ndarray, np.ndarray]:
    """Each customer's top ``c`` positive reduced offers; a product over its capacity keeps the
    customers with the largest surplus over their next option; leftover capacity is then filled."""
    n = len(w)
    rows = np.repeat(np.arange(n), c)
    cols = index[:, :c].ravel()
    surplus = (values[:, :c] - values[:, c : c + 1]).ravel()
    keep = cols >= 0
    rows, cols, surplus = rows[keep], cols[keep], surplus[keep]
    accepted = _within_capacity(cols, surplus, capacity, tie=w[rows, cols])
    rows, cols = rows[accepted], cols[accepted]
    return _fill(w, capacity, c, rows, cols)


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


def _fill(w, capacity, c, rows, cols) -> tuple[np.ndarray, np.ndarray]:
    """Leftover capacity to customers with contacts left: in rounds, each such customer proposes
    its most valuable allowed offer among products with room, and each product takes the most
    valuable proposals it has room for."""
    n, P = w.shape
    used = np.bincount(rows, minlength=n)
    room = capacity - np.bincount(cols, minlength=P)
    taken_rows, taken_cols = [rows], [cols]
    free = np.flatnonzero(used < c)
    if len(free) == 0 or not (room > 0).any():
        return rows.astype(np.int64), cols.astype(np.int64)
    candidate = w[free].copy()
    offered = np.zeros_like(candidate, dtype=bool)
    position = np.full(n, -1)
    position[free] = np.arange(len(free))
    mine = position[rows] >= 0
    offered[position[rows[mine]], cols[mine]] = True
    candidate[offered] = 0
    left = c - used[free]
    while True:
        candidate[:, room <= 0] = 0
        candidate[left <= 0] = 0
        pick = candidate.argmax(axis=1)
        gain = candidate[np.arange(len(free)), pick]
        proposing = np.flatnonzero(gain > 0)
        if len(proposing) == 0:
            break
        accepted = _within_capacity(pick[proposing], gain[proposing], room)
        who, what = proposing[accepted], pick[proposing[accepted]]
        taken_rows.append(free[who])
        taken_cols.append(what)
        room -= np.bincount(what, minlength=P)
        left[who] -= 1
        candidate[who, what] = 0
    return np.concatenate(taken_rows).astype(np.int64), np.concatenate(taken_cols).astype(np.int64)


def _top(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest of ``max(values, 0)`` per row, descending (float32 [m, k]), and their
    columns (int64 [m, k]; -1 where the value is 0, and as padding when k > P)."""
    m, P = values.shape
    clipped = np.maximum(values, np.float32(0))
    width = min(k, P)
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
