"""The campaign solvers against brute force, and the limits they must respect exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from finrec.errors import FinrecError
from finrec.plan.solve import _top, _top_allowed, dual_value, greedy, solve_dual, solve_exact

INF = np.inf


def brute_force(w: np.ndarray, capacity: np.ndarray, contacts: int) -> float:
    """The best plan's value by enumerating every customer's every set of at most ``contacts`` offers."""
    n, P = w.shape
    options = [s for size in range(contacts + 1) for s in itertools.combinations(range(P), size)]
    best = 0.0
    for choice in itertools.product(options, repeat=n):
        used = np.zeros(P)
        value = 0.0
        for i, products in enumerate(choice):
            for j in products:
                used[j] += 1
                value += w[i, j] if w[i, j] > 0 else -np.inf  # a pair with no value is never allowed
        if (used <= capacity).all() and value > best:
            best = value
    return best


def limits_respected(w, capacity, contacts, plan) -> None:
    rows, cols = plan.rows, plan.cols
    assert len(set(zip(rows.tolist(), cols.tolist()))) == len(rows), "an offer is made twice"
    assert (w[rows, cols] > 0).all(), "an offer that is not allowed"
    assert (np.bincount(rows, minlength=len(w)) <= contacts).all()
    assert (np.bincount(cols, minlength=w.shape[1]) <= capacity).all()
    assert plan.value == pytest.approx(float(w[rows, cols].astype("float64").sum()), rel=1e-6, abs=1e-9)


def tiny_instances(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n, P, contacts = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
        w = np.round(rng.random((n, P)) * 10, 1).astype(np.float32)
        w[rng.random((n, P)) < 0.3] = 0  # forbidden pairs
        capacity = rng.integers(0, n + 1, P).astype(float)
        capacity[rng.random(P) < 0.25] = INF
        yield w, capacity, contacts


@pytest.mark.parametrize("case", range(40))
def test_exact_matches_brute_force(case):
    w, capacity, contacts = list(tiny_instances(40, seed=1))[case]
    plan = solve_exact(w, capacity, contacts)
    limits_respected(w, capacity, contacts, plan)
    assert plan.value == pytest.approx(brute_force(w, capacity, contacts), abs=1e-4)
    assert plan.bound >= plan.value


@pytest.mark.parametrize("case", range(40))
def test_dual_is_feasible_bounded_and_beats_greedy(case):
    w, capacity, contacts = list(tiny_instances(40, seed=2))[case]
    best = brute_force(w, capacity, contacts)
    plan, base = solve_dual(w, capacity, contacts), greedy(w, capacity, contacts)
    limits_respected(w, capacity, contacts, plan)
    limits_respected(w, capacity, contacts, base)
    assert plan.value <= best + 1e-4
    assert plan.bound >= best - 1e-4  # a proven bound is never below the optimum
    assert plan.value >= base.value - 1e-6
    assert base.value <= best + 1e-4


def test_weak_duality_at_any_prices():
    rng = np.random.default_rng(3)
    for w, capacity, contacts in tiny_instances(30, seed=3):
        best = brute_force(w, capacity, contacts)
        prices = np.where(np.isfinite(capacity), rng.random(w.shape[1]) * 10, 0.0)
        assert dual_value(w, capacity, contacts, prices) >= best - 1e-4


def test_dual_close_to_exact_on_larger_instances():
    rng = np.random.default_rng(4)
    for _ in range(5):
        n, P, contacts = 3000, 10, int(rng.integers(1, 3))
        w = (rng.random((n, P)) ** 3 * rng.random(P) * 10).astype(np.float32)
        w[rng.random((n, P)) < 0.3] = 0
        capacity = rng.integers(10, n // 4, P).astype(float)
        capacity[0] = INF
        exact, dual = solve_exact(w, capacity, contacts), solve_dual(w, capacity, contacts)
        limits_respected(w, capacity, contacts, dual)
        assert dual.bound >= exact.value - 1e-3
        assert dual.value >= 0.995 * exact.value
        assert dual.value > greedy(w, capacity, contacts).value


def test_shadow_price_is_the_value_of_one_more_slot():
    """At a dual optimum, lambda_j lies between the gain of one more slot and the loss of one fewer."""
    w = np.array([[9, 4], [8, 1], [7, 6], [3, 2]], dtype=np.float32)
    capacity = np.array([2.0, INF])
    plan = solve_dual(w, capacity, 1)
    assert plan.gap == pytest.approx(0, abs=1e-5)
    more = brute_force(w, np.array([3.0, INF]), 1) - brute_force(w, capacity, 1)
    less = brute_force(w, capacity, 1) - brute_force(w, np.array([1.0, INF]), 1)
    assert more - 1e-5 <= plan.prices[0] <= less + 1e-5
    # By hand: customers 0 and 1 take product 0 (9 + 8); customer 2 takes product 1 (6) and 3 too (2).
    assert plan.value == pytest.approx(25)


def test_greedy_by_hand():
    # Both customers want product 0 (capacity 1): the more valuable offer wins, the other customer
    # gets nothing (greedy does not fall back to a second choice).
    w = np.array([[5, 4], [6, 1]], dtype=np.float32)
    plan = greedy(w, np.array([1.0, INF]), 1)
    assert sorted(zip(plan.rows.tolist(), plan.cols.tolist())) == [(1, 0)]
    assert solve_exact(w, np.array([1.0, INF]), 1).value == pytest.approx(10)  # 6 + 4


def test_top_matches_a_sort():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(50, 7)).astype(np.float32)
    for k in (1, 3, 7, 9):
        top_values, top_index = _top(values, k)
        for i in range(len(values)):
            expected = sorted(np.maximum(values[i], 0), reverse=True)[:k]
            expected += [0.0] * (k - len(expected))
            np.testing.assert_allclose(top_values[i], expected, rtol=1e-6)
            for v, j in zip(top_values[i], top_index[i]):
                assert (j == -1) == (v == 0)
                if j >= 0:
                    assert values[i, j] == v


def test_no_capacity_means_each_customers_best_offers():
    w = np.array([[1, 3, 2], [0, 0, 5]], dtype=np.float32)
    plan = solve_dual(w, np.full(3, INF), 2)
    assert sorted(zip(plan.rows.tolist(), plan.cols.tolist())) == [(0, 1), (0, 2), (1, 2)]
    assert plan.gap == pytest.approx(0)


def test_zero_capacity_and_nothing_allowed():
    w = np.zeros((3, 2), dtype=np.float32)
    for solve in (solve_exact, solve_dual, greedy):
        assert len(solve(w, np.array([1.0, 1.0]), 1).rows) == 0
    w = np.ones((3, 2), dtype=np.float32)
    plan = solve_exact(w, np.array([0.0, 0.0]), 1)
    assert len(plan.rows) == 0


@pytest.mark.parametrize("capacity, contacts", [([1.0], 1), ([-1.0, 1.0], 1), ([1.5, 1.0], 1), ([1.0, 1.0], 0)])
def test_bad_problems_are_refused(capacity, contacts):
    with pytest.raises(FinrecError):
        solve_exact(np.ones((2, 2), dtype=np.float32), np.array(capacity), contacts)


def test_top_breaks_ties_by_the_lower_column():
    values = np.array([[1, 3, 3, 0, 3], [0, 0, 0, 0, 0], [2, 2, 1, 1, 5]], dtype=np.float32)
    top_values, top_index = _top(values, 3)
    np.testing.assert_array_equal(top_values, [[3, 3, 3], [0, 0, 0], [5, 2, 2]])
    np.testing.assert_array_equal(top_index, [[1, 2, 4], [-1, -1, -1], [4, 0, 1]])


def test_top_allowed_picks_the_best_reduced_values_among_allowed_offers():
    rng = np.random.default_rng(7)
    w = np.where(rng.random((60, 8)) < 0.6, rng.random((60, 8)), 0).astype(np.float32)
    lam = rng.random(8).astype(np.float32) * 0.5
    for k in (1, 3, 5, 8):
        part, allowed = _top_allowed(w, lam, k)
        for i in range(len(w)):
            ok = np.flatnonzero(w[i] > 0)
            best = ok[np.argsort(-(w[i, ok] - lam[ok]), kind="stable")][:k]
            assert sorted(part[i][allowed[i]].tolist()) == sorted(best.tolist())
            assert allowed[i].sum() == min(k, len(ok))
