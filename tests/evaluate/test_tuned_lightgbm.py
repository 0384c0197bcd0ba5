"""TunedLightGBM: a fixed-budget search chosen by validation nDCG, refitted; scores of the right
shape, parameters from the grid, the budget recorded, and better than popularity."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lightgbm")

from finrec.data.split import split_dataset
from finrec.evaluate.baselines import TUNING_ANCHORS, TunedLightGBM, popularity_scores
from finrec.evaluate.metrics import summarize
from finrec.evaluate.report import ranking_task

# A small grid and one thread (OpenMP threads spin against other load on a shared 2-core box).
GRID = {
    "num_leaves": (7, 31),
    "min_data_in_leaf": (20, 100),
    "learning_rate": (0.05, 0.1),
    "feature_fraction": (0.8, 1.0),
    "lambda_l2": (0.0, 1.0),
}
FAST = {"num_threads": 1, "grid": GRID, "max_rounds": 150, "early_stopping_rounds": 15}


@pytest.fixture(scope="module")
def split(small_dataset):
    return split_dataset(small_dataset, holdout_fraction=0.2, seed=0)


@pytest.fixture(scope="module")
def tuned(split):
    return TunedLightGBM(max_trials=3, **FAST).fit(split[0], seed=0)


def _ndcg(model, test, scores_of):
    ids, relevant, excluded = ranking_task(model.pipeline_, test)
    customers = test.customers.set_index(test.schema.customers.id, drop=False).loc[ids].reset_index(drop=True)
    return summarize(scores_of(customers), relevant, excluded, k=5)


def test_searches_the_budget_and_picks_the_best_validation_ndcg(tuned):
    assert len(tuned.trials_) == tuned.budget_["trials"] == 3
    # The anchors (both in this grid) are tried first; every trial's params come from the grid, no repeats.
    assert [t["params"] for t in tuned.trials_[:2]] == list(TUNING_ANCHORS)
    for trial in tuned.trials_:
        assert all(trial["params"][name] in values for name, values in GRID.items())
        assert 0 < trial["ndcg@5"] <= 1 and trial["rounds"] >= 1
    assert len({tuple(t["params"].items()) for t in tuned.trials_}) == 3
    assert tuned.best_params_ == max(tuned.trials_, key=lambda t: t["ndcg@5"])["params"]
    assert tuned.budget_["total_seconds"] >= tuned.budget_["search_seconds"] > 0
    assert tuned.budget_["objective"] == "multiclass"  # 25 products: one multiclass model


def test_scores_have_the_catalogue_shape_and_beat_popularity(tuned, split):
    test = split[1]
    scores = tuned.score(test.customers.iloc[:30], test.holdings)
    assert scores.shape == (30, tuned.pipeline_.n_products)
    model = _ndcg(tuned, test, lambda c: tuned.score(c, test.holdings))
    popular = _ndcg(tuned, test, lambda c: popularity_scores(len(c), np.asarray(tuned.pipeline_.product_popularity_)))
    assert model["customers"] > 100
    assert model["ndcg@5"] > popular["ndcg@5"] + 0.03


def test_time_budget_stops_after_one_trial_and_binary_models_rank(split):
    train, test = split
    model = TunedLightGBM(max_trials=5, max_seconds=1e-6, objective="binary", **FAST).fit(train, seed=0)
    assert model.budget_["trials"] == 1 and model.budget_["objective"] == "binary"
    scores = model.score(test.customers.iloc[:20], test.holdings)
    assert scores.shape == (20, model.pipeline_.n_products) and np.all((scores >= 0) & (scores <= 1))
    binary = _ndcg(model, test, lambda c: model.score(c, test.holdings))
    popular = _ndcg(model, test, lambda c: popularity_scores(len(c), np.asarray(model.pipeline_.product_popularity_)))
    assert binary["ndcg@5"] > popular["ndcg@5"] + 0.03


def test_bad_budget_is_refused():
    with pytest.raises(ValueError, match="max_trials must be a positive integer, got 0"):
        TunedLightGBM(max_trials=0)
    with pytest.raises(ValueError, match="objective must be"):
        TunedLightGBM(objective="lambdarank")
