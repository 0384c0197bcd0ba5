"""The LightGBM baseline: beats popularity on held-out customers, scores in catalogue order,
and is deterministic with a seed."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lightgbm")

from finrec.data.split import split_dataset
from finrec.evaluate.baselines import LightGBMBaseline, popularity_scores
from finrec.evaluate.metrics import summarize
from finrec.evaluate.report import ranking_task


@pytest.fixture(scope="module")
def split(small_dataset):
    return split_dataset(small_dataset, holdout_fraction=0.2, seed=0)


# One thread: on a shared 2-core machine LightGBM's OpenMP threads spin against the other load
# and a fit takes ~8x longer than with one thread (27 s vs 3.4 s measured).
LGBM = {"num_threads": 1}


@pytest.fixture(scope="module")
def fitted(split):
    return LightGBMBaseline(**LGBM).fit(split[0], seed=0)


def _held_out_rows(model, test):
    ids, relevant, excluded = ranking_task(model.pipeline_, test)
    cid = test.schema.customers.id
    customers = test.customers.set_index(cid, drop=False).loc[ids].reset_index(drop=True)
    return customers, relevant, excluded


def test_beats_popularity_on_held_out_ndcg(fitted, split):
    customers, relevant, excluded = _held_out_rows(fitted, split[1])
    scores = fitted.score(customers, split[1].holdings)
    lgbm = summarize(scores, relevant, excluded, k=5)
    popular = summarize(
        popularity_scores(len(customers), np.asarray(fitted.pipeline_.product_popularity_)), relevant, excluded, k=5
    )
    assert lgbm["customers"] > 100
    assert lgbm["ndcg@5"] > popular["ndcg@5"] + 0.03


def test_output_shape_and_product_order(fitted, split):
    test = split[1]
    customers = test.customers.iloc[:40]
    scores = fitted.score(customers, test.holdings)
    assert scores.shape == (40, fitted.pipeline_.n_products)
    assert fitted.pipeline_.product_ids_ == [str(p) for p in test.products[test.schema.products.id]]
    assert np.all(scores >= 0) and np.allclose(scores[:, fitted.classes_].sum(axis=1), 1.0)
    # LightGBM's own probabilities, whether the forest walker takes its trees or not (31 leaves
    # grow trees deeper than it walks: LightGBM then predicts).
    want = fitted.booster_.predict(fitted.matrix(customers, test.holdings), num_iteration=fitted.best_iteration_)
    np.testing.assert_allclose(scores[:, fitted.classes_], want, rtol=1e-9, atol=1e-12)
    # A row's scores do not depend on the other rows, nor on the order they come in.
    reversed_scores = fitted.score(customers.iloc[::-1], test.holdings)
    np.testing.assert_allclose(reversed_scores[::-1], scores, rtol=1e-12, atol=1e-12)
    # Each column is the probability of that catalogue product: the column of a product nobody
    # adopted is 0, and the most adopted product has the largest mean probability.
    never = np.setdiff1d(np.arange(fitted.pipeline_.n_products), fitted.classes_)
    assert np.all(scores[:, never] == 0)
    popularity = np.asarray(fitted.pipeline_.product_popularity_)
    assert np.argmax(scores.mean(axis=0)) == np.argmax(popularity)


def test_holdings_are_a_feature(fitted, split):
    test = split[1]
    customers = test.customers.iloc[:200]
    with_holdings = fitted.score(customers, test.holdings)
    without = fitted.score(customers, None)
    assert not np.allclose(with_holdings, without)


def test_deterministic_with_a_seed(fitted, split):
    train, test = split
    again = LightGBMBaseline(**LGBM).fit(train, seed=0)
    customers = test.customers.iloc[:100]
    np.testing.assert_array_equal(again.score(customers, test.holdings), fitted.score(customers, test.holdings))
    assert again.best_iteration_ == fitted.best_iteration_


def test_early_stopping_holds_out_the_drawn_customers_adoptions(split, monkeypatch):
    import lightgbm as lgb

    from finrec.data.split import split_customer_ids

    sizes = []

    def train(params, train_set, **kwargs):
        sizes.append((train_set.construct().num_data(), kwargs["valid_sets"][0].construct().num_data()))
        return real_train(params, train_set, **kwargs)

    real_train = lgb.train
    monkeypatch.setattr(lgb, "train", train)
    model = LightGBMBaseline(**LGBM).fit(split[0], seed=0)
    adopters = split[0].interactions["customer_id"].astype(str)
    _, val_ids = split_customer_ids(np.unique(adopters.to_numpy()), model.validation_fraction, np.random.default_rng(0))
    held_out = int(adopters.isin(set(val_ids)).sum())
    assert 0 < held_out < len(adopters)
    assert sizes == [(len(adopters) - held_out, held_out)]


@pytest.mark.parametrize("value, expected", [("3", 3), ("", None), ("0", None), ("two", None), (None, None)])
def test_lightgbm_threads_honour_omp_num_threads(monkeypatch, value, expected):
    """An explicit num_threads would override OMP_NUM_THREADS, the limit a user (or a test runner
    with one worker per core) sets for every OpenMP library."""
    import os

    from finrec.evaluate.baselines import default_threads

    if value is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert default_threads() == (expected or os.cpu_count())
