r"""The campaign's fairness constraint: no protected group gets a product category at more than
``ratio`` times the rate of another group.

``evaluate --fairness`` measures exposure as the share of a group's top-k slots that go to each
product category. In a plan, with ``x_gk`` the offers of category k to group g and ``n_g`` the
group's customers, the constraint is on the offer rate per customer, ``r_gk = x_gk / n_g``::

    x_gk * n_h <= R * x_hk * n_g        for every category k and every two groups g, h

(the same ratio as the fairness report's when every customer gets the same number of offers; per
customer rather than per slot, so that the constraint stays linear). Groups without customers
are left out.

Solvers:

- ``solve_exact_fair``: the integer program (every allowed pair a 0/1 variable; capacities,
  contacts and the constraint above) by OR-Tools' SCIP, for problems up to ``EXACT_MAX_PAIRS``
  allowed pairs; its bound is SCIP's.
- ``solve_dual_fair``: Lagrangian. Each pairwise constraint gets a multiplier ``mu >= 0``; they
  turn into a penalty ``pen[g, k]`` on every offer of category k to group g (negative: a bonus
  for a group below the others), so that ``w - pen`` is a plain campaign problem, solved by
  ``solve.solve_dual`` (its bound at the multipliers is a bound on the fair problem, by weak
  duality). The multipliers follow projected subgradient steps (Polyak's step size); each plan
  found is made fair by ``make_fair`` (dropping the least valuable offers of over-exposed
  groups), and the best fair plan is kept with the smallest bound found: a proven gap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from finrec.errors import FinrecError
from finrec.plan.solve import Plan, check_problem, dual_value, is_feasible, plan_value, solve_dual

EXACT_MAX_PAIRS = 200_000


@dataclass
class ExposureLimit:
    """Customer groups and product categories, and the largest rate ratio allowed between groups."""

    groups: np.ndarray  # int64 [n]: the group of each customer, 0..G-1
    categories: np.ndarray  # int64 [P]: the category of each product, 0..K-1
    ratio: float  # R >= 1
    group_names: tuple[str, ...] = ()
    category_names: tuple[str, ...] = ()

    def __post_init__(self):
        self.groups = np.asarray(self.groups, dtype=np.int64)
        self.categories = np.asarray(self.categories, dtype=np.int64)
        ratio = self.ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.integer, np.floating)) or not ratio >= 1:
            raise FinrecError(f"the max exposure ratio must be a number >= 1, got {ratio!r}")
        if not np.isfinite(ratio):
            raise FinrecError("the max exposure ratio must be finite")
        self.ratio = float(ratio)
        self.sizes = np.bincount(self.groups, minlength=int(self.groups.max(initial=-1)) + 1).astype("float64")
        self.n_categories = int(self.categories.max(initial=-1)) + 1

    def counts(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """x [G, K]: offers of each category to each group."""
        G, K = len(self.sizes), self.n_categories
        cell = self.groups[rows] * K + self.categories[cols]
        return np.bincount(cell, minlength=G * K).reshape(G, K).astype("float64")

    def rates(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """r [G, K] = x / n: offers of each category per customer of each group (groups with customers)."""
        present = self.sizes > 0
        return self.counts(rows, cols)[present] / self.sizes[present, None]

    def worst_ratio(self, rows: np.ndarray, cols: np.ndarray) -> float:
        """The largest rate ratio between two groups over the categories offered at all (inf where
        a group gets none of a category another group gets)."""
        r = self.rates(rows, cols)
        worst = 1.0
        for k in range(r.shape[1]):
            high, low = r[:, k].max(initial=0.0), r[:, k].min(initial=np.inf)
            if high > 0:
                worst = max(worst, high / low if low > 0 else np.inf)
        return float(worst)

    def holds(self, rows: np.ndarray, cols: np.ndarray) -> bool:
        """Every pairwise constraint, in exact integer arithmetic (x_gk n_h <= R x_hk n_g)."""
        x = self.counts(rows, cols)[self.sizes > 0]
        n = self.sizes[self.sizes > 0]
        lhs = x[:, None, :] * n[None, :, None]  # [g, h, k] = x_gk n_h
        rhs = self.ratio * x[None, :, :] * n[:, None, None]  # [g, h, k] = R x_hk n_g
        return bool((lhs <= rhs * (1 + 1e-12)).all())


def make_fair(limit: ExposureLimit, w: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The plan with the least valuable offers of over-exposed groups dropped until the limit
    holds. Each pass that changes anything drops an offer, so it ends (at worst with no offers
    of a category). Cutting a group to its allowance can make it the lowest rate, and the others
    then exceed theirs: under a tight ratio (1.0) that takes many passes, and a cap of 100 per
    group returned a plan that broke the limit (a tester: 1.0026 against 1.0, written, exit 0)."""
    keep = np.ones(len(rows), dtype=bool)
    n = limit.sizes
    value = w[rows, cols]
    cell_g, cell_k = limit.groups[rows], limit.categories[cols]
    for _ in range(len(rows) + 1):
        x = limit.counts(rows[keep], cols[keep])
        present = n > 0
        changed = False
        for k in range(x.shape[1]):
            rate = np.where(present, x[:, k] / np.maximum(n, 1), np.inf)
            low = rate[present].min(initial=np.inf)
            allowed = np.floor(limit.ratio * low * n + 1e-9)  # the most offers each group may keep
            for g in np.flatnonzero(present & (x[:, k] > allowed)):
                mine = np.flatnonzero(keep & (cell_g == g) & (cell_k == k))
                drop = int(len(mine) - allowed[g])
                keep[mine[np.argsort(value[mine], kind="stable")[:drop]]] = False
                changed = True
        if not changed:
            break
    return rows[keep], cols[keep]


def fill_fair(
    limit: ExposureLimit,
    w: np.ndarray,
    capacity: np.ndarray,
    contacts: int,
    rows: np.ndarray,
    cols: np.ndarray,
    per_customer: int = 3,
    passes: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """The fair plan with offers added, most valuable first, where a customer has a contact to
    spare, the product a slot and the group room under the limit (each customer's
    ``per_customer`` best allowed offers are the candidates)."""
    n, P = w.shape
    sizes = limit.sizes
    for _ in range(passes):
        used = np.bincount(rows, minlength=n)
        free = np.flatnonzero(used < contacts)
        if len(free) == 0:
            break
        taken = np.zeros((len(free), P), dtype=bool)
        slot = np.full(n, -1)
        slot[free] = np.arange(len(free))
        mine = slot[rows] >= 0
        taken[slot[rows[mine]], cols[mine]] = True
        options = np.where(taken | (w[free] <= 0), np.float32(0), w[free])
        width = min(per_customer, P)
        part = (
            np.argpartition(-options, width - 1, axis=1)[:, :width]
            if width < P
            else np.tile(np.arange(P), (len(free), 1))
        )
        cand_w = np.take_along_axis(options, part, axis=1).ravel()
        cand_i = np.repeat(free, width)[cand_w > 0]
        cand_j = part.ravel()[cand_w > 0]
        cand_w = cand_w[cand_w > 0]
        if len(cand_w) == 0:
            break
        order = np.argsort(-cand_w, kind="stable")
        left = capacity - np.bincount(cols, minlength=P)
        spare = contacts - used
        x = limit.counts(rows, cols)
        present = sizes > 0
        added_i, added_j = [], []
        for i, j in zip(cand_i[order].tolist(), cand_j[order].tolist()):
            if spare[i] <= 0 or left[j] <= 0:
                continue
            g, k = limit.groups[i], limit.categories[j]
            # After the offer g's rate may not pass R times the lowest other group's rate (a
            # rising rate never breaks another group's limit against g).
            rate = np.where(present, x[:, k] / np.maximum(sizes, 1.0), np.inf)
            rate[g] = np.inf
            if (x[g, k] + 1) / sizes[g] > limit.ratio * rate.min() + 1e-12:
                continue
            x[g, k] += 1
            spare[i] -= 1
            left[j] -= 1
            added_i.append(i)
            added_j.append(j)
        if not added_i:
            break
        rows = np.concatenate([rows, np.asarray(added_i, dtype=np.int64)])
        cols = np.concatenate([cols, np.asarray(added_j, dtype=np.int64)])
    return rows, cols


def solve_exact_fair(
    w: np.ndarray,
    capacity: np.ndarray,
    contacts: int,
    limit: ExposureLimit,
    time_limit: float = 120.0,
    backend: str = "SCIP",
) -> Plan:
    """The optimum under the exposure limit by SCIP (an integer program over every allowed pair)."""
    from ortools.linear_solver import pywraplp

    start = time.perf_counter()
    w, capacity = check_problem(w, capacity, contacts)
    pair_rows, pair_cols = np.nonzero(w > 0)
    if len(pair_rows) > EXACT_MAX_PAIRS:
        raise FinrecError(
            f"the exact solver with an exposure limit takes up to {EXACT_MAX_PAIRS} allowed offers, this problem has "
            f"{len(pair_rows)}: use the dual solver"
        )
    solver = pywraplp.Solver.CreateSolver(backend)
    solver.SetTimeLimit(int(time_limit * 1000))
    x = [solver.BoolVar("") for _ in range(len(pair_rows))]
    pair_w = w[pair_rows, pair_cols].astype("float64")
    objective = solver.Objective()
    for var, weight in zip(x, pair_w):
        objective.SetCoefficient(var, float(weight))
    objective.SetMaximization()
    for i in np.unique(pair_rows):
        solver.Add(solver.Sum([x[p] for p in np.flatnonzero(pair_rows == i)]) <= contacts)
    for j in np.flatnonzero(np.isfinite(capacity)):
        solver.Add(solver.Sum([x[p] for p in np.flatnonzero(pair_cols == j)]) <= float(capacity[j]))
    groups, cats = limit.groups[pair_rows], limit.categories[pair_cols]
    present = np.flatnonzero(limit.sizes > 0)
    # x_gk <= contacts n_g, so wherever x_hk >= 1 a ratio of contacts x max(n) already lets every
    # x_gk through: a larger one is the same constraint (x_gk > 0 needs x_hk >= 1), and its
    # coefficient went past SCIP's infinity (--max-exposure-ratio 1e300: "found no plan").
    ratio = min(limit.ratio, float(contacts) * float(limit.sizes.max(initial=1.0)))
    for k in range(limit.n_categories):
        cells = {g: [x[p] for p in np.flatnonzero((groups == g) & (cats == k))] for g in present}
        for g in present:
            for h in present:
                if g != h:
                    # x_gk n_h <= R x_hk n_g
                    solver.Add(
                        solver.Sum(cells[g]) * float(limit.sizes[h])
                        <= ratio * float(limit.sizes[g]) * solver.Sum(cells[h])
                    )
    status = solver.Solve()
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        raise FinrecError(f"the integer program solver found no plan (status {status})")
    chosen = np.array([var.solution_value() > 0.5 for var in x], dtype=bool)
    rows, cols = pair_rows[chosen].astype(np.int64), pair_cols[chosen].astype(np.int64)
    value = plan_value(w, rows, cols)
    bound = max(float(objective.BestBound()), value) if status == pywraplp.Solver.FEASIBLE else value
    method = "exact (integer program, SCIP)" + ("" if status == pywraplp.Solver.OPTIMAL else ", time limit")
    return Plan(rows, cols, value, bound, np.zeros(w.shape[1]), method, time.perf_counter() - start)


def _penalty(limit: ExposureLimit, mu: np.ndarray) -> np.ndarray:
    """pen [G, K] of multipliers mu [G, G, K] >= 0 of the constraints in rate form,
    r_gk - R r_hk <= 0 with r = x / n: d/dx_gk of sum mu_ghk (x_gk / n_g - R x_hk / n_h)."""
    n = np.maximum(limit.sizes, 1.0)
    return (mu.sum(axis=1) - limit.ratio * mu.sum(axis=0)) / n[:, None]


def _penalised(w: np.ndarray, limit: ExposureLimit, pen: np.ndarray) -> np.ndarray:
    adjusted = w - pen[limit.groups][:, limit.categories].astype(np.float32)
    return np.where(w > 0, np.maximum(adjusted, np.float32(0)), np.float32(0))


def solve_dual_fair(
    w: np.ndarray,
    capacity: np.ndarray,
    contacts: int,
    limit: ExposureLimit,
    iterations: int = 25,
    time_limit: float | None = None,
    tolerance: float = 1e-4,
) -> Plan:
    """Lagrangian prices on the exposure constraints (module docstring); every plan made fair."""
    start = time.perf_counter()
    w, capacity = check_problem(w, capacity, contacts)
    n = limit.sizes
    G, K = len(n), limit.n_categories
    mu = np.zeros((G, G, K))
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    bound, prices, sweeps = np.inf, np.zeros(w.shape[1]), 0
    present = n > 0
    for _ in range(iterations):
        pen = _penalty(limit, mu)
        adjusted = _penalised(w, limit, pen)
        relaxed = solve_dual(adjusted, capacity, contacts)
        sweeps += relaxed.sweeps
        # Weak duality: the relaxed problem's proven bound bounds the fair problem too.
        if relaxed.bound < bound:
            bound, prices = relaxed.bound, relaxed.prices
        rows, cols = make_fair(limit, w, relaxed.rows, relaxed.cols)
        rows, cols = fill_fair(limit, w, capacity, contacts, rows, cols)
        value = plan_value(w, rows, cols)
        if best is None or value > best[0]:
            best = (value, rows, cols)
        if bound - best[0] <= tolerance * max(bound, 1e-12):
            break
        if time_limit is not None and time.perf_counter() - start > time_limit:
            break
        r = limit.counts(relaxed.rows, relaxed.cols) / np.maximum(n, 1.0)[:, None]
        violation = r[:, None, :] - limit.ratio * r[None, :, :]  # [g, h, k]: r_gk - R r_hk
        violation[~present] = 0.0
        violation[:, ~present] = 0.0
        violation[np.arange(G), np.arange(G)] = 0.0
        # Projected subgradient: a multiplier at 0 with a satisfied constraint stays there.
        direction = np.where((mu > 0) | (violation > 0), violation, 0.0)
        norm = float((direction**2).sum())
        if norm == 0:
            break  # the relaxed plan is fair: nothing to price
        mu = np.maximum(mu + (relaxed.bound - best[0]) / norm * direction, 0.0)
    value, rows, cols = best
    return Plan(
        rows,
        cols,
        value,
        max(bound, value),
        prices,
        "dual with exposure prices (Lagrangian + min-cost flow, made fair)",
        time.perf_counter() - start,
        sweeps,
    )


__all__ = ["ExposureLimit", "make_fair", "solve_exact_fair", "solve_dual_fair", "dual_value", "is_feasible"]
