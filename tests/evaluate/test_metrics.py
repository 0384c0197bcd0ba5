"""Tests for finrec.evaluate.metrics: hand-computed fixtures, a naive reference, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from finrec.evaluate.metrics import (
    METRIC_ORDER,
    hit_rate_at_k,
    map_at_k,
    metric_keys,
    mrr,
    ndcg_at_k,
    precision_at_k,
    rank_items,
    recall_at_k,
    relevance_in_rank_order,
    summarize,
)

L2_3 = math.log2(3)
L2_5 = math.log2(5)


def _rel(*rows):
    return np.array(rows, dtype=bool)


def _all_metrics(rel, n_rel, k):
    n_rel = np.asarray(n_rel)
    return {
        "precision": precision_at_k(rel, k),
        "recall": recall_at_k(rel, n_rel, k),
        "ndcg": ndcg_at_k(rel, n_rel, k),
        "map": map_at_k(rel, n_rel, k),
        "mrr": mrr(rel),
        "hit": hit_rate_at_k(rel, k),
    }


# ------------------------------------------------------------------ naive reference (per customer)


def naive_precision(rel_row, k):
    return sum(1 for r in range(min(k, len(rel_row))) if rel_row[r]) / k


def naive_recall(rel_row, n_rel, k):
    if n_rel == 0:
        return math.nan
    return sum(1 for r in range(min(k, len(rel_row))) if rel_row[r]) / n_rel


def naive_ndcg(rel_row, n_rel, k):
    if n_rel == 0:
        return math.nan
    dcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(rel_row))) if rel_row[r])
    idcg = sum(1 / math.log2(r + 2) for r in range(min(n_rel, k)))
    return dcg / idcg


def naive_map(rel_row, n_rel, k):
    if n_rel == 0:
        return math.nan
    hits, total = 0, 0.0
    for r in range(min(k, len(rel_row))):
        if rel_row[r]:
            hits += 1
            total += hits / (r + 1)
    return total / min(n_rel, k)


def naive_mrr(rel_row):
    for r, x in enumerate(rel_row):
        if x:
            return 1 / (r + 1)
    return 0.0


def naive_hit(rel_row, k):
    return float(any(rel_row[:k]))


def naive_rank(scores_row, excluded_row):
    items = [j for j in range(len(scores_row)) if not excluded_row[j]]

    def key(j):
        s = scores_row[j]
        return (-(-math.inf if math.isnan(s) else s), j)

    return sorted(items, key=key) + [j for j in range(len(scores_row)) if excluded_row[j]]


# ------------------------------------------------------------------ hand-computed fixtures


def test_brief_example():
    # rel = [0,1,0,1,0], n_relevant=2, k=5
    # precision = 2/5 = 0.4; recall = 2/2 = 1
    # dcg = 1/log2(3) + 1/log2(5); idcg = 1/log2(2) + 1/log2(3) = 1 + 1/log2(3)
    # AP = (P@2 + P@4) / min(2,5) = (1/2 + 2/4) / 2 = 0.5; mrr = 1/2; hit = 1
    m = _all_metrics(_rel([0, 1, 0, 1, 0]), [2], 5)
    assert m["precision"][0] == pytest.approx(0.4)
    assert m["recall"][0] == pytest.approx(1.0)
    assert m["ndcg"][0] == pytest.approx((1 / L2_3 + 1 / L2_5) / (1 + 1 / L2_3))
    assert m["map"][0] == pytest.approx(0.5)
    assert m["mrr"][0] == pytest.approx(0.5)
    assert m["hit"][0] == 1.0


def test_n_relevant_greater_than_k():
    # rel = [1,0,1,0,0,1], n_relevant = 4 (one relevant item not in the list), k = 3
    # top3 = [1,0,1]: hits 2; precision = 2/3; recall = 2/4 = 0.5
    # dcg = 1 + 1/log2(4) = 1.5 ; idcg over min(4,3)=3 ranks = 1 + 1/log2(3) + 1/2
    # AP = (P@1 + P@3) / min(4,3) = (1 + 2/3) / 3 = 5/9; mrr = 1; hit = 1
    m = _all_metrics(_rel([1, 0, 1, 0, 0, 1]), [4], 3)
    assert m["precision"][0] == pytest.approx(2 / 3)
    assert m["recall"][0] == pytest.approx(0.5)
    assert m["ndcg"][0] == pytest.approx(1.5 / (1 + 1 / L2_3 + 0.5))
    assert m["map"][0] == pytest.approx(5 / 9)
    assert m["mrr"][0] == pytest.approx(1.0)
    assert m["hit"][0] == 1.0


def test_no_hit_in_top_k_but_later():
    # rel = [0,0,0,1], n_relevant = 1, k = 2: no hit in the top 2
    # precision = recall = ndcg = map = hit = 0; mrr sees the full list: 1/4
    m = _all_metrics(_rel([0, 0, 0, 1]), [1], 2)
    for name in ("precision", "recall", "ndcg", "map", "hit"):
        assert m[name][0] == 0.0, name
    assert m["mrr"][0] == pytest.approx(0.25)


def test_no_hit_at_all():
    # rel = [0,0,0], n_relevant = 2 (both relevant items outside a truncated list): all zeros
    m = _all_metrics(_rel([0, 0, 0]), [2], 3)
    for name, v in m.items():
        assert v[0] == 0.0, name


def test_k_larger_than_list():
    # rel = [1,0,1], n_relevant = 2, k = 10 (list of 3 only)
    # precision = 2/10 = 0.2 (divide by k); recall = 1
    # dcg = 1 + 1/log2(4) = 1.5; idcg over min(2,10)=2 = 1 + 1/log2(3)
    # AP = (1/1 + 2/3) / 2 = 5/6; mrr = 1; hit = 1
    m = _all_metrics(_rel([1, 0, 1]), [2], 10)
    assert m["precision"][0] == pytest.approx(0.2)
    assert m["recall"][0] == pytest.approx(1.0)
    assert m["ndcg"][0] == pytest.approx(1.5 / (1 + 1 / L2_3))
    assert m["map"][0] == pytest.approx(5 / 6)
    assert m["mrr"][0] == 1.0
    assert m["hit"][0] == 1.0


def test_several_rows_at_once_and_nan_for_no_relevant():
    # row 0: [1,1,0], n=2, k=2 -> everything 1
    # row 1: [0,0,0], n=0       -> recall/ndcg/map NaN, precision 0, mrr 0, hit 0
    # row 2: [0,1,1], n=3, k=2 -> precision 1/2, recall 1/3, dcg 1/log2(3), idcg 1+1/log2(3),
    #                             AP = (1/2)/2 = 1/4, mrr 1/2
    rel = _rel([1, 1, 0], [0, 0, 0], [0, 1, 1])
    n = np.array([2, 0, 3])
    m = _all_metrics(rel, n, 2)
    np.testing.assert_allclose(m["precision"], [1, 0, 0.5])
    np.testing.assert_allclose(m["recall"], [1, np.nan, 1 / 3])
    np.testing.assert_allclose(m["ndcg"], [1, np.nan, (1 / L2_3) / (1 + 1 / L2_3)])
    np.testing.assert_allclose(m["map"], [1, np.nan, 0.25])
    np.testing.assert_allclose(m["mrr"], [1, 0, 0.5])
    np.testing.assert_allclose(m["hit"], [1, 0, 1])
    # with n_relevant, the count-free metrics also mark the row NaN
    np.testing.assert_allclose(precision_at_k(rel, 2, n_relevant=n), [1, np.nan, 0.5])
    np.testing.assert_allclose(hit_rate_at_k(rel, 2, n_relevant=n), [1, np.nan, 1])
    np.testing.assert_allclose(mrr(rel, n_relevant=n), [1, np.nan, 0.5])


def test_empty_inputs():
    rel = np.zeros((0, 5), dtype=bool)
    assert ndcg_at_k(rel, np.zeros(0, int), 3).shape == (0,)
    assert mrr(np.zeros((3, 0), dtype=bool)).tolist() == [0, 0, 0]
    assert precision_at_k(np.zeros((2, 0), dtype=bool), 3).tolist() == [0, 0]
    assert rank_items(np.zeros((0, 4))).shape == (0, 4)


# ------------------------------------------------------------------ ranking


def test_rank_items_ties_by_lower_index():
    scores = np.array([[0.5, 0.9, 0.5, 0.9, 0.1]])
    # 0.9 at items 1,3 -> 1 then 3; 0.5 at 0,2 -> 0 then 2; then 4
    assert rank_items(scores).tolist() == [[1, 3, 0, 2, 4]]


def test_rank_items_exclusion_last_even_with_best_score():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [3.0, 2.0, 1.0, 0.0]])
    excluded = np.array([[False, True, False, False], [True, False, True, False]])
    ranking = rank_items(scores, excluded)
    assert ranking.tolist() == [[3, 2, 0, 1], [1, 3, 0, 2]]
    n_rankable = (~excluded).sum(1)
    for i in range(2):
        assert not excluded[i, ranking[i, : n_rankable[i]]].any()


def test_rank_items_nan_and_inf_scores():
    # NaN == -inf; -inf/NaN still rank before excluded items; ties by index among them.
    scores = np.array([[np.nan, 1.0, -np.inf, np.nan, 2.0, 5.0]])
    excluded = np.array([[False, False, False, False, False, True]])
    assert rank_items(scores, excluded).tolist() == [[4, 1, 0, 2, 3, 5]]
    all_nan = np.full((2, 3), np.nan)
    assert rank_items(all_nan).tolist() == [[0, 1, 2], [0, 1, 2]]


def test_rank_items_does_not_modify_input_and_keeps_float32():
    scores = np.array([[np.nan, 1.0, 2.0]], dtype=np.float32)
    before = scores.copy()
    rank_items(scores, np.array([[False, True, False]]))
    np.testing.assert_array_equal(scores, before)
    assert rank_items(np.array([[1, 3, 2]])).tolist() == [[1, 2, 0]]  # int scores


def test_relevance_in_rank_order_masks_excluded():
    ranking = np.array([[2, 0, 1, 3]])
    relevant = _rel([1, 0, 1, 1])
    excluded = _rel([0, 0, 1, 0])
    # items in order 2,0,1,3 -> relevant 1,1,0,1 ; item 2 excluded -> 0,1,0,1
    assert relevance_in_rank_order(ranking, relevant).tolist() == [[True, True, False, True]]
    masked = relevance_in_rank_order(ranking, relevant, excluded)
    assert masked.tolist() == [[False, True, False, True]]
    # truncated ranking
    assert relevance_in_rank_order(ranking[:, :2], relevant, excluded).tolist() == [[False, True]]


def test_end_to_end_with_exclusion_hand_computed():
    # scores: items 0..4; item 0 held (excluded) although scored highest and "relevant".
    # ranking of the rest: 3 (0.8), 1 (0.6), 4 (0.6, tie -> after 1), 2 (0.1); then 0
    # relevant (non-excluded) = {4}: rel = [0,0,1,0,0], n_relevant = 1
    # k=2: precision 0, recall 0, ndcg 0, map 0, hit 0; mrr = 1/3
    scores = np.array([[0.9, 0.6, 0.1, 0.8, 0.6]])
    relevant = _rel([1, 0, 0, 0, 1])
    excluded = _rel([1, 0, 0, 0, 0])
    ranking = rank_items(scores, excluded)
    assert ranking.tolist() == [[3, 1, 4, 2, 0]]
    rel = relevance_in_rank_order(ranking, relevant, excluded)
    assert rel.tolist() == [[False, False, True, False, False]]
    out = summarize(scores, relevant, excluded, k=2)
    assert out == {
        "ndcg@2": 0.0,
        "map@2": 0.0,
        "precision@2": 0.0,
        "recall@2": 0.0,
        "hit_rate@2": 0.0,
        "mrr": pytest.approx(1 / 3),
        "customers": 1,
    }
    # k=3: hit at rank 3 -> precision 1/3, recall 1, ndcg = (1/log2 4)/1 = 0.5, AP = (1/3)/1
    out = summarize(scores, relevant, excluded, k=3)
    assert out["precision@3"] == pytest.approx(1 / 3)
    assert out["recall@3"] == pytest.approx(1.0)
    assert out["ndcg@3"] == pytest.approx(0.5)
    assert out["map@3"] == pytest.approx(1 / 3)
    assert out["hit_rate@3"] == 1.0


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("k", [0, -1, 2.0, "5", True, None])
def test_bad_k(k):
    rel = _rel([1, 0])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        ndcg_at_k(rel, [1], k)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        precision_at_k(rel, k)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        summarize(np.zeros((1, 2)), rel, None, k=k)


def test_numpy_integer_k_accepted():
    assert precision_at_k(_rel([1, 0]), np.int64(1))[0] == 1.0


def test_shape_mismatches():
    rel = _rel([1, 0], [0, 1])
    with pytest.raises(ValueError, match="n_relevant"):
        recall_at_k(rel, [1, 1, 1], 2)
    with pytest.raises(ValueError, match="smaller than the relevant"):
        recall_at_k(rel, [0, 1], 2)
    with pytest.raises(ValueError, match="negative"):
        map_at_k(rel, [1, -1], 2)
    with pytest.raises(ValueError, match="2-D"):
        mrr(np.array([True, False]))
    with pytest.raises(ValueError, match="excluded"):
        rank_items(np.zeros((2, 3)), np.zeros((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="relevant has shape"):
        summarize(np.zeros((2, 3)), np.zeros((2, 2), dtype=bool), None)
    with pytest.raises(ValueError, match="outside"):
        relevance_in_rank_order(np.array([[0, 5]]), _rel([1, 0]))
    with pytest.raises(ValueError, match="boolean"):
        precision_at_k(np.array([[0, 2]]), 1)


# ------------------------------------------------------------------ vectorised vs naive


@pytest.mark.parametrize(
    "seed,n,P,k,truncate",
    [
        (0, 50, 5, 1, None),
        (1, 80, 25, 5, None),
        (2, 60, 40, 10, 20),
        (3, 40, 7, 12, None),
        (4, 100, 200, 5, 30),
        (5, 30, 3, 3, 2),
    ],
)
def test_vectorised_matches_naive(seed, n, P, k, truncate):
    rng = np.random.default_rng(seed)
    # coarse scores so ties happen; some NaN
    scores = rng.integers(0, 5, size=(n, P)).astype(float)
    scores[rng.random((n, P)) < 0.05] = np.nan
    excluded = rng.random((n, P)) < 0.2
    relevant = rng.random((n, P)) < 0.15
    ranking = rank_items(scores, excluded)
    for i in range(n):
        assert ranking[i].tolist() == naive_rank(scores[i].tolist(), excluded[i].tolist())
    n_rel = (relevant & ~excluded).sum(1)
    L = truncate or P
    rel = relevance_in_rank_order(ranking[:, :L], relevant, excluded)
    got = _all_metrics(rel, n_rel, k)
    rows = rel.tolist()
    want = {
        "precision": [naive_precision(r, k) for r in rows],
        "recall": [naive_recall(r, m, k) for r, m in zip(rows, n_rel.tolist())],
        "ndcg": [naive_ndcg(r, m, k) for r, m in zip(rows, n_rel.tolist())],
        "map": [naive_map(r, m, k) for r, m in zip(rows, n_rel.tolist())],
        "mrr": [naive_mrr(r) for r in rows],
        "hit": [naive_hit(r, k) for r in rows],
    }
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, err_msg=name)

    # summarize (full ranking) == mean of naive over customers with a relevant item;
    # chunking must not matter
    keep = n_rel > 0
    full = relevance_in_rank_order(ranking, relevant, excluded)[keep].tolist()
    nk = n_rel[keep].tolist()
    expected = {
        f"ndcg@{k}": np.mean([naive_ndcg(r, m, k) for r, m in zip(full, nk)]),
        f"map@{k}": np.mean([naive_map(r, m, k) for r, m in zip(full, nk)]),
        f"precision@{k}": np.mean([naive_precision(r, k) for r in full]),
        f"recall@{k}": np.mean([naive_recall(r, m, k) for r, m in zip(full, nk)]),
        f"hit_rate@{k}": np.mean([naive_hit(r, k) for r in full]),
        "mrr": np.mean([naive_mrr(r) for r in full]),
    }
    for chunk in (7, 65536):
        out = summarize(scores, relevant, excluded, k=k, chunk_rows=chunk)
        assert out["customers"] == int(keep.sum())
        for key, v in expected.items():
            assert out[key] == pytest.approx(v, rel=1e-12), (key, chunk)


# ------------------------------------------------------------------ properties

cases = st.integers(1, 12).flatmap(
    lambda P: st.tuples(
        hnp.arrays(np.bool_, st.tuples(st.integers(1, 8), st.just(P))),
        st.integers(1, 15),
    )
)


def _n_rel_with_extra(rel, seed):
    """n_relevant >= visible hits (some relevant items may be outside a truncated list)."""
    extra = np.random.default_rng(seed).integers(0, 3, size=rel.shape[0])
    return rel.sum(1) + extra


@settings(max_examples=150, deadline=None)
@given(cases, st.integers(0, 2**31))
def test_metrics_in_unit_interval(case, seed):
    rel, k = case
    n_rel = _n_rel_with_extra(rel, seed)
    has = n_rel > 0
    for name, v in _all_metrics(rel, n_rel, k).items():
        assert v.shape == (rel.shape[0],)
        vv = v[has]
        assert np.all((vv >= 0) & (vv <= 1 + 1e-12)), name


@settings(max_examples=150, deadline=None)
@given(cases, st.integers(0, 2**31))
def test_precision_times_k_equals_recall_times_n_relevant(case, seed):
    rel, k = case
    n_rel = _n_rel_with_extra(rel, seed)
    has = n_rel > 0
    p = precision_at_k(rel, k)
    r = recall_at_k(rel, n_rel, k)
    np.testing.assert_allclose((p * k)[has], (r * n_rel)[has], rtol=1e-12, atol=1e-12)


@settings(max_examples=150, deadline=None)
@given(cases)
def test_perfect_ranking(case):
    rel, k = case
    n_rel = rel.sum(1)
    perfect = np.sort(rel, axis=1)[:, ::-1]  # relevant first
    m = _all_metrics(perfect, n_rel, k)
    has = n_rel > 0
    np.testing.assert_allclose(m["ndcg"][has], 1.0)
    np.testing.assert_allclose(m["map"][has], 1.0)
    np.testing.assert_allclose(m["mrr"][has], 1.0)
    np.testing.assert_allclose(m["hit"][has], 1.0)
    small = has & (n_rel <= k)
    np.testing.assert_allclose(m["recall"][small], 1.0)


# Few distinct values so ties are common, plus NaN and -inf.
_score_elements = st.one_of(st.sampled_from([-1.0, 0.0, 0.5, 1.0, math.nan, -math.inf]), st.floats(-3, 3))


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 10).flatmap(
        lambda P: st.tuples(
            hnp.arrays(np.float64, (4, P), elements=_score_elements),
            hnp.arrays(np.bool_, (4, P)),
            hnp.arrays(np.bool_, (4, P)),
        )
    ),
    st.integers(1, 12),
    st.randoms(use_true_random=False),
)
def test_permuting_relevant_items_does_not_change_metrics(arrays, k, rnd):
    # Swapping the scores of two relevant items swaps which relevant item sits where, but the
    # relevance pattern in rank order (and so every metric) is unchanged -- except for ties,
    # which the stable sort breaks by index; permuting score *values* among the relevant
    # items keeps the set of occupied ranks.
    scores, relevant, excluded = arrays
    relevant = relevant & ~excluded
    n_rel = relevant.sum(1)
    permuted = scores.copy()
    for i in range(scores.shape[0]):
        idx = np.flatnonzero(relevant[i])
        perm = list(idx)
        rnd.shuffle(perm)
        permuted[i, idx] = scores[i, perm]
    base = relevance_in_rank_order(rank_items(scores, excluded), relevant, excluded)
    after = relevance_in_rank_order(rank_items(permuted, excluded), relevant, excluded)
    m0, m1 = _all_metrics(base, n_rel, k), _all_metrics(after, n_rel, k)
    # Ties between a relevant and an irrelevant item are broken by index, so a permutation can
    # move a relevant item across a tied irrelevant one; compare only rows without such ties.
    for i in range(scores.shape[0]):
        s = np.where(np.isnan(scores[i]), -np.inf, scores[i])[~excluded[i]]
        r = relevant[i][~excluded[i]]
        if set(s[r].tolist()) & set(s[~r].tolist()):
            continue
        for name in m0:
            np.testing.assert_equal(m0[name][i], m1[name][i], err_msg=name)


# ------------------------------------------------------------------ summarize


def test_summarize_skips_customers_without_relevant():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.4], [0.1, 0.2, 0.3], [0.5, 0.4, 0.3]])
    relevant = _rel([1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 1])
    excluded = _rel([0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0])
    # row 0: ranking 0,2,1 -> rel [1,0,0], n=1: all metrics 1 (k=1)
    # row 1: no relevant -> skipped
    # row 2: the only relevant item is excluded -> skipped
    # row 3: ranking 0,1,2 -> rel [0,0,1], n=1: top-1 metrics 0, mrr 1/3
    out = summarize(scores, relevant, excluded, k=1)
    assert out["customers"] == 2
    assert list(out) == metric_keys(1) + ["customers"]
    assert out["ndcg@1"] == pytest.approx(0.5)
    assert out["precision@1"] == pytest.approx(0.5)
    assert out["mrr"] == pytest.approx((1 + 1 / 3) / 2)


def test_summarize_no_customer_left():
    out = summarize(np.zeros((3, 2)), np.zeros((3, 2), dtype=bool), None, k=5)
    assert out["customers"] == 0
    assert all(math.isnan(out[key]) for key in metric_keys(5))


def test_summarize_without_excluded_and_float32():
    rng = np.random.default_rng(7)
    scores = rng.random((500, 30)).astype(np.float32)
    relevant = rng.random((500, 30)) < 0.1
    a = summarize(scores, relevant, None, k=4, chunk_rows=64)
    b = summarize(scores, relevant, np.zeros_like(relevant), k=4)
    assert a == pytest.approx(b)
    assert a["customers"] == int((relevant.sum(1) > 0).sum())


def test_metric_order_and_keys():
    assert METRIC_ORDER == [
        "ndcg@{k}",
        "map@{k}",
        "precision@{k}",
        "recall@{k}",
        "hit_rate@{k}",
        "mrr",
    ]
    assert metric_keys(10) == [
        "ndcg@10",
        "map@10",
        "precision@10",
        "recall@10",
        "hit_rate@10",
        "mrr",
    ]
