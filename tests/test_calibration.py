"""Calibrated adoption probabilities: the fit, its storage, and every place that shows them."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from finrec.artifacts import CALIBRATION_FILE, load_model_dir
from finrec.cli import main
from finrec.data import schema as S
from finrec.data.io import validate_tables
from finrec.data.synthetic import GeneratorSettings, generate, period_adoption_probabilities
from finrec.errors import ArtifactError, DataError, FinrecError
from finrec.recommend.recommender import Recommender
from finrec.training.calibration import (
    Calibration,
    brier_score,
    centred_knots,
    choice_probabilities,
    expected_calibration_error,
    fit_calibration,
    log_loss,
    reliability_table,
)

T = 0.5


def synthetic_scores(n=4000, P=3, seed=0):
    """Cosine scores, some products held, and a true adoption probability that is a known
    increasing function of each product's choice probability q."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(-1, 1, (n, P))
    held = rng.random((n, P)) < 0.15
    q = choice_probabilities(scores, held, T)
    true = np.where(held, 0.0, 0.8 * q**1.5 * (1 + np.arange(P)) / P)
    adopted = rng.random((n, P)) < true
    return scores, adopted, held, true


def test_choice_probabilities_by_a_loop():
    scores = np.array([[0.1, 0.5, -0.2], [0.3, 0.3, 0.9], [0.2, 0.1, 0.0]])
    held = np.array([[False, True, False], [False, False, False], [True, True, True]])
    q = choice_probabilities(scores, held, T)
    for i in range(3):
        free = [j for j in range(3) if not held[i, j]]
        total = sum(np.exp(scores[i, j] / T) for j in free)
        for j in range(3):
            assert q[i, j] == pytest.approx(0.0 if held[i, j] else np.exp(scores[i, j] / T) / total)


def test_plain_isotonic_maps_match_scikit_learn():
    from sklearn.isotonic import IsotonicRegression

    scores, adopted, held, _ = synthetic_scores()
    calibration = fit_calibration(scores, adopted, held, ["a", "b", "c"], T, centred=False, method="isotonic")
    probs = calibration(scores, held)
    q = choice_probabilities(scores, held, T)
    for j in range(3):
        mask = ~held[:, j]
        reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(q[mask, j], adopted[mask, j])
        np.testing.assert_allclose(probs[mask, j], reference.predict(q[mask, j]), atol=1e-6)
    assert (probs[held] == 0).all() and probs.min() >= 0 and probs.max() <= 1


def test_centred_knots_sit_at_the_block_means():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(1)
    x = rng.random(500)
    y = (rng.random(500) < x**2).astype(float)
    kx, ky = centred_knots(x, y)
    fitted = IsotonicRegression(y_min=0, y_max=1).fit(x, y).predict(x)
    levels = np.unique(fitted)
    np.testing.assert_allclose(ky[1:-1], levels)
    for level, centre in zip(levels, kx[1:-1]):
        assert centre == pytest.approx(x[fitted == level].mean())
    assert (np.diff(kx) > 0).all() and (np.diff(ky[1:-1]) > 0).all()
    assert kx[0] == x.min() and kx[-1] == x.max() and 0 <= ky[0] <= ky[1] and ky[-2] <= ky[-1] <= 1


@pytest.mark.parametrize("method", ["beta", "platt", "isotonic"])
def test_calibration_recovers_known_probabilities(method):
    scores, adopted, held, _ = synthetic_scores(n=20000)
    calibration = fit_calibration(scores, adopted, held, ["a", "b", "c"], T, method=method)
    assert calibration.method == method
    test_scores, _, test_held, test_true = synthetic_scores(n=20000, seed=1)
    free = ~test_held
    assert expected_calibration_error(calibration(test_scores, test_held)[free], test_true[free]) < 0.01
    assert expected_calibration_error(np.clip(test_scores, 0, 1)[free], test_true[free]) > 0.1


@pytest.mark.parametrize("method", ["beta", "platt"])
def test_logistic_maps_are_scikit_learns_logistic_regression(method):
    from sklearn.linear_model import LogisticRegression

    scores, adopted, held, _ = synthetic_scores()
    calibration = fit_calibration(scores, adopted, held, ["a", "b", "c"], T, method=method)
    probs = calibration(scores, held)
    q = choice_probabilities(scores, held, T)
    for j in range(3):
        free = ~held[:, j]
        qj = np.clip(q[free, j], 1e-12, 1 - 1e-6)  # q = 1 for a customer holding all but one
        X = np.log(qj)[:, None] if method == "platt" else np.stack([np.log(qj), -np.log1p(-qj)], 1)
        model = LogisticRegression(C=1e6, max_iter=1000).fit(X, adopted[free, j])
        if (model.coef_ >= 0).all():  # the unconstrained fit is the constrained one
            np.testing.assert_allclose(probs[free, j], model.predict_proba(X)[:, 1], atol=2e-3)
        # Strictly increasing in q: the calibrated order is the model's (no ties for a plan to break).
        order = np.argsort(q[free, j])
        assert (np.diff(probs[free, j][order]) >= 0).all() and len(np.unique(probs[free, j])) > 0.9 * free.sum()
    assert (probs[held] == 0).all()


def test_a_backwards_product_gets_its_rate_not_a_falling_map():
    scores, adopted, held, _ = synthetic_scores()
    q = choice_probabilities(scores, held, T)
    adopted[:, 1] = np.random.default_rng(3).random(len(q)) < 0.3 * (1 - q[:, 1])  # falls with q
    calibration = fit_calibration(scores, adopted, held, ["a", "b", "c"], T)
    probs = calibration(scores, held)[~held[:, 1], 1]
    assert np.ptp(probs) < 1e-9 and probs.mean() == pytest.approx(adopted[~held[:, 1], 1].mean(), rel=1e-3)


def test_the_logistic_map_tempers_the_top_where_isotonic_overstates_it():
    """A plan picks each product's top customers: there the isotonic map's last blocks, fitted on
    a handful of lucky adopters, overstate the probability of new customers; the two-parameter
    map does not (benchmarks/plan_value_study.py measured it on the development banks)."""
    rng = np.random.default_rng(0)

    def draw(n, P=4):
        scores = rng.normal(0, 0.3, (n, P))
        held = np.zeros((n, P), bool)
        true = 1 / (1 + np.exp(0.5 - 1.2 * np.log(choice_probabilities(scores, held, T))))
        return scores, held, true, rng.random((n, P)) < true

    scores, held, _, adopted = draw(3000)  # the calibration customers
    new_scores, new_held, new_true, _ = draw(20000)  # the customers a campaign plans for
    ratio = {}
    for method in ("beta", "isotonic"):
        probs = fit_calibration(scores, adopted, held, list("abcd"), T, method=method)(new_scores, new_held)
        top = np.argsort(-probs, axis=0)[:200]  # each product's best 1%
        ratio[method] = np.take_along_axis(probs, top, 0).sum() / np.take_along_axis(new_true, top, 0).sum()
    assert abs(ratio["beta"] - 1) < 0.05 and ratio["isotonic"] > 1.15, ratio


def test_beta_bends_where_q_nears_one_and_platt_cannot():
    """The next rung of a ladder: q near 1 for many customers, and the adoption probability
    saturating below 1 there. Beta calibration follows it; Platt's one slope in ln q cannot."""
    rng = np.random.default_rng(2)
    n = 20000
    scores = np.stack([rng.normal(0, 0.6, n), np.zeros(n)], axis=1)  # q of product 0 spans (0, 1)
    held = np.zeros((n, 2), bool)
    q = choice_probabilities(scores, held, T)
    true = 1 / (1 + np.exp(-(0.5 + 1.0 * np.log(q) - 0.8 * np.log1p(-q))))
    adopted = rng.random((n, 2)) < true
    error = {
        method: expected_calibration_error(
            fit_calibration(scores, adopted, held, ["a", "b"], T, method=method)(scores, held)[:, 0], true[:, 0]
        )
        for method in ("beta", "platt")
    }
    assert error["beta"] < 0.01 < error["platt"], error


@pytest.mark.parametrize("method", ["beta", "isotonic"])
def test_rare_products_use_the_pooled_map_at_their_own_rate(method):
    scores, adopted, held, _ = synthetic_scores(n=3000)
    adopted[:, 2] = False
    adopted[np.flatnonzero(~held[:, 2])[:5], 2] = True  # 5 adoptions: too few for a map of its own
    calibration = fit_calibration(scores, adopted, held, ["a", "b", "c"], T, min_positives=20, method=method)
    assert calibration.pooled == [False, False, True]
    free = ~held[:, 2]
    mean = calibration(scores, held)[free, 2].mean()
    assert mean == pytest.approx((5 + adopted[~held].mean()) / (free.sum() + 1), rel=0.05)


@pytest.mark.parametrize("method", ["beta", "platt", "isotonic"])
def test_json_round_trip_and_damage(method):
    scores, adopted, held, _ = synthetic_scores()
    calibration = fit_calibration(scores, adopted, held, ["a", "b", "c"], T, method=method)
    again = Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert again.method == method
    np.testing.assert_array_equal(again(scores, held), calibration(scores, held))
    raw = calibration.to_dict()
    raw["products"][0]["y"] = list(reversed(raw["products"][0]["y"]))
    with pytest.raises(ArtifactError, match="non-decreasing"):
        Calibration.from_dict(raw)
    with pytest.raises(ArtifactError, match="damaged"):
        Calibration.from_dict({**calibration.to_dict(), "temperature": -1})
    with pytest.raises(ArtifactError, match="damaged"):
        Calibration.from_dict({"format": 2})


def test_probabilities_at_chosen_products_equal_the_whole_rows():
    scores, adopted, held, _ = synthetic_scores(n=500, P=3)
    calibration = fit_calibration(scores, adopted, held, ["a", "b", "c"], T)
    rng = np.random.default_rng(1)
    index = rng.integers(-1, 3, size=(500, 2))  # -1: no product chosen in that slot
    whole = calibration(scores, held)
    expected = np.where(index >= 0, np.take_along_axis(whole, np.maximum(index, 0), axis=1), 0.0)
    picks_held = held[np.arange(500), np.maximum(index[:, 0], 0)] & (index[:, 0] >= 0)
    assert (index >= 0).any() and (index < 0).any() and picks_held.any()
    np.testing.assert_array_equal(calibration.at(scores, held, index), expected)  # held products: 0
    for row in range(20):  # one customer at a time: the request path
        one = calibration.at(scores[row : row + 1], held[row : row + 1], index[row : row + 1])
        np.testing.assert_array_equal(one, expected[row : row + 1])
    with pytest.raises(ValueError, match="catalogue positions"):
        calibration.at(scores, held, np.full((500, 2), 3))


def test_measures_by_hand():
    predicted = np.array([0.1, 0.2, 0.3, 0.4])
    true = np.array([0.0, 0.2, 0.5, 0.4])
    # Two equal-mass bins: |0.15 - 0.1| and |0.35 - 0.45|, each half the pairs.
    assert expected_calibration_error(predicted, true, bins=2) == pytest.approx(0.5 * 0.05 + 0.5 * 0.1)
    assert brier_score(predicted, [0, 0, 1, 1]) == pytest.approx((0.01 + 0.04 + 0.49 + 0.36) / 4)
    assert reliability_table(predicted, true, bins=2)[1] == {
        "pairs": 2,
        "predicted": pytest.approx(0.35),
        "true": pytest.approx(0.45),
    }


def test_period_probabilities_by_simulation():
    # One customer, two products available: with one adoption always, P(adopt) = the first choice.
    first = np.array([[0.7, 0.3, 0.0]])
    settings = GeneratorSettings(adoptions_per_customer=0.9)  # p0 = 0.1, m = 1 otherwise
    p = period_adoption_probabilities(first, settings, draws=20000, seed=0)
    np.testing.assert_allclose(p[0], [0.9 * 0.7, 0.9 * 0.3, 0.0], atol=0.01)


def test_period_probabilities_of_a_bank_with_a_past():
    # The target month: adopting at all with 0.4 exp(-0.15 max(0, h - 2)), then 1 + Poisson(0.25)
    # products. With two available, both are taken when m >= 2 (1 - e^-0.25), else the first choice.
    from finrec.data import history

    first = np.array([[0.7, 0.3, 0.0], [0.7, 0.3, 0.0]])
    settings = GeneratorSettings(months=6)  # monthly share 0.25 x 1.6 adoptions = 0.4
    p = period_adoption_probabilities(first, settings, draws=40000, seed=0, n_held=np.array([2, 6]))
    two = 1 - np.exp(-history.EXTRA_PER_MONTH)
    for row, h in enumerate((2, 6)):
        any_ = 0.4 * np.exp(-0.15 * max(0, h - 2))
        np.testing.assert_allclose(
            p[row], [any_ * (0.7 * (1 - two) + two), any_ * (0.3 * (1 - two) + two), 0], atol=0.01
        )
    with pytest.raises(ValueError, match="n_held"):
        period_adoption_probabilities(first, settings, draws=10)


@pytest.fixture(scope="module")
def adoption_model(small_dataset):
    from finrec.training.trees import fit_adoption_model

    return fit_adoption_model(small_dataset, seed=0)


def _with_adopting(n=4000, seed=0):
    """Customers who adopt one product with a probability of their own (``pi``, known), chosen
    by the choice probabilities q of their scores: P(adopt p) = pi * q_p, which no map of q
    alone can follow. Returns scores, adopted, held, pi and that truth."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(-1, 1, (n, 3))
    held = rng.random((n, 3)) < 0.15
    held[held.all(axis=1), 0] = False
    q = choice_probabilities(scores, held, T)
    pi = rng.uniform(0.1, 0.9, n)
    choice = (rng.random(n)[:, None] > np.cumsum(q, axis=1)).sum(axis=1).clip(0, 2)
    adopted = np.zeros((n, 3), dtype=bool)
    active = rng.random(n) < pi
    adopted[np.flatnonzero(active), choice[active]] = True
    return scores, adopted, held, pi, pi[:, None] * q


def test_an_adoption_model_factors_the_probability(adoption_model):
    from finrec.training.calibration import adoption_knots

    scores, adopted, held, pi, _ = _with_adopting()
    calibration = fit_calibration(scores, adopted, held, ["a", "b", "c"], T, adoption_model=adoption_model, adoption=pi)
    assert calibration.needs_adoption and calibration.customers == len(scores)
    # The product maps are those of the customers who adopted something, fitted alone ...
    some = adopted.any(axis=1)
    alone = fit_calibration(scores[some], adopted[some], held[some], ["a", "b", "c"], T)
    for x, y, x_alone, y_alone in zip(calibration.knots_x, calibration.knots_y, alone.knots_x, alone.knots_y):
        np.testing.assert_array_equal(x, x_alone)
        np.testing.assert_array_equal(y, y_alone)
    # ... and g, Platt on logit pi over every customer, keeps the calibration customers' rate.
    x, y = adoption_knots(pi, some)
    np.testing.assert_array_equal(calibration.adoption_x, x)
    g = np.interp(pi, x, y)
    assert np.all(np.diff(y) >= 0) and abs(g.mean() - some.mean()) < 2e-3
    np.testing.assert_allclose(g, pi, atol=0.05)  # pi is the truth here: g is near the identity
    probabilities = calibration(scores, held, g)
    np.testing.assert_allclose(probabilities, (g[:, None] * alone(scores, held)).astype(np.float32), rtol=1e-6)
    index = np.argsort(-scores, axis=1)[:, :2]
    np.testing.assert_array_equal(calibration.at(scores, held, index, g), np.take_along_axis(probabilities, index, 1))
    for wrong in (None, g[:-1]):
        with pytest.raises(ValueError, match="adoption"):
            calibration(scores, held, wrong)
        with pytest.raises(ValueError, match="adoption"):
            calibration.at(scores, held, index, wrong)


def test_the_adoption_model_brings_the_probabilities_near_the_truth(adoption_model):
    # Where adopting at all differs by customer, the maps on q alone cannot follow it.
    scores, adopted, held, pi, true = _with_adopting(n=20000)
    free = ~held
    plain = fit_calibration(scores, adopted, held, ["a", "b", "c"], T)(scores, held)
    factored = fit_calibration(scores, adopted, held, ["a", "b", "c"], T, adoption_model=adoption_model, adoption=pi)
    g = np.interp(pi, factored.adoption_x, factored.adoption_y)
    error_plain = np.mean((plain[free] - true[free]) ** 2)
    error_factored = np.mean((factored(scores, held, g)[free] - true[free]) ** 2)
    assert error_factored < 0.5 * error_plain, (error_factored, error_plain)


def test_a_calibration_with_an_adoption_model_survives_json_and_damage(adoption_model, small_dataset):
    scores, adopted, held, pi, _ = _with_adopting()
    calibration = fit_calibration(scores, adopted, held, ["a", "b", "c"], T, adoption_model=adoption_model, adoption=pi)
    raw = json.loads(json.dumps(calibration.to_dict()))
    assert raw["format"] == 3 and fit_calibration(scores, adopted, held, ["a", "b", "c"], T).to_dict()["format"] == 2
    again = Calibration.from_dict(raw)
    assert len(again.knots_x) == 3
    customers = small_dataset.customers.iloc[:100]
    ids = customers["customer_id"].to_numpy()
    held_here = adoption_model.pipeline_.holdings_matrix(ids, small_dataset.holdings)
    g = calibration.adoption_probability(customers, held_here)
    np.testing.assert_array_equal(again.adoption_probability(customers, held_here), g)
    np.testing.assert_array_equal(again(scores[:100], held[:100], g), calibration(scores[:100], held[:100], g))
    falling = json.loads(json.dumps(raw))
    falling["adoption"]["y"] = falling["adoption"]["y"][::-1]
    with pytest.raises(ArtifactError, match="adopting anything"):
        Calibration.from_dict(falling)
    without = {k: v for k, v in raw.items() if k != "adoption"}
    with pytest.raises(ArtifactError, match="adoption"):
        Calibration.from_dict(without)


@pytest.mark.slow
def test_a_context_without_adoption_is_refused_its_probabilities(trained, small_dataset):
    recommender = Recommender(trained)
    assert trained.calibration.needs_adoption
    customers = small_dataset.customers.iloc[:20]
    bare = recommender.context(customers, small_dataset.holdings, adoption=False)
    assert bare.adoption is None
    with pytest.raises(FinrecError, match="adoption=True"):
        recommender.probabilities(bare)
    full = recommender.context(customers, small_dataset.holdings)
    np.testing.assert_array_equal(full.adoption, trained.calibration.adoption_probability(customers, full.held))
    # One customer given as raw features (the request path) gets the probabilities of the frame path.
    row = customers.iloc[3]
    record = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
    record["holdings"] = [recommender.pipeline.product_ids_[j] for j in np.flatnonzero(full.held[3])]
    result = recommender.recommend(record, k=3)
    expected = recommender.probabilities(full)[3]
    for item in result.items:
        j = recommender.pipeline.product_ids_.index(item.product_id)
        assert item.probability == pytest.approx(float(expected[j]), rel=1e-5)


@pytest.mark.slow
def test_customers_who_objected_never_reach_the_adoption_trees(
    trained, small_dataset, small_data_dir, tmp_path, monkeypatch
):
    from finrec.data.compliance import customer_profile
    from finrec.recommend.batch import score_dataset
    from finrec.training.train import calibrate

    model = trained.calibration.adoption_model
    seen = []
    real = type(model).adoption_probability

    def spy(self, customers, *args, **kwargs):
        seen.append(customers[S.CUSTOMER_ID].astype(str).tolist())
        return real(self, customers, *args, **kwargs)

    monkeypatch.setattr(type(model), "adoption_probability", spy)
    customers = small_dataset.customers
    objected = customer_profile(customers, small_dataset.schema.customers)["objected"]
    assert objected.sum() > 10
    refused = set(customers[S.CUSTOMER_ID].astype(str)[objected])
    recommender = Recommender(trained)
    context = recommender.context(customers, small_dataset.holdings)
    assert (context.adoption[objected] == 0).all() and (context.adoption[~objected] > 0).all()
    calibrated = calibrate(trained, small_dataset)  # nor are they calibration data
    assert calibrated.customers == int((~objected).sum())
    with pytest.raises(DataError, match="all 5 objected"):  # nobody left: a clear message, not a crash
        calibrate(trained, small_dataset.subset_customers(customers[S.CUSTOMER_ID][objected].iloc[:5]))
    assert len(seen) == 2 and not refused & set(seen[0]) and not refused & set(seen[1])
    # A ranking alone never runs the adoption trees; with probabilities it does.
    seen.clear()
    score_dataset(recommender, small_data_dir, tmp_path / "top.csv", k=2, workers=1)
    assert seen == []
    score_dataset(recommender, small_data_dir, tmp_path / "p.csv", k=2, workers=1, probabilities=True)
    assert seen and not refused & set(sum(seen, []))
    # No customers at all: no probabilities, no error.
    empty = recommender.context(customers.iloc[:0], small_dataset.holdings)
    assert empty.adoption.shape == (0,) and recommender.probabilities(empty).shape == (0, len(trained.products))


def _adopting_by_age(dataset, seed=0):
    """``dataset`` where adopting anything at all depends on age: customers over 50 keep their
    adoptions with probability 0.2, the others with 0.9."""
    customers = dataset.customers
    keep = np.random.default_rng(seed).random(len(customers)) < np.where(customers["age"] > 50, 0.2, 0.9)
    kept = dataset.interactions[S.CUSTOMER_ID].isin(customers[S.CUSTOMER_ID][keep])
    return type(dataset)(**{**vars(dataset), "interactions": dataset.interactions[kept].reset_index(drop=True)})


@pytest.mark.slow
def test_a_model_without_an_adoption_model_gets_one_cross_fitted(trained, small_dataset, monkeypatch):
    import copy

    from finrec.data.compliance import customer_profile
    from finrec.training import train as training

    data = _adopting_by_age(small_dataset)
    bare = copy.copy(trained)
    bare.calibration = None  # as a model trained by streaming comes
    fitted, predicted, models = [], [], []
    real = training.adoption_model_for

    def spy(dataset, config, max_rounds=None):
        model = real(dataset, config, max_rounds=max_rounds)
        fitted.append(set(dataset.customers[S.CUSTOMER_ID].astype(str)))
        models.append(model)
        own = model.adoption_probability
        index = len(fitted) - 1

        def predict(customers, *args, **kwargs):
            predicted.append((index, set(customers[S.CUSTOMER_ID].astype(str))))
            return own(customers, *args, **kwargs)

        model.adoption_probability = predict
        return model

    monkeypatch.setattr(training, "adoption_model_for", spy)
    calibration = training.calibrate(bare, data)
    assert calibration.needs_adoption
    customers = data.customers
    objected = customer_profile(customers, data.schema.customers)["objected"]
    served = set(customers[S.CUSTOMER_ID].astype(str)[~objected])
    # Two halves, each fitting a model that predicts the other half only; then one on everybody.
    assert len(fitted) == 3 and fitted[2] == served
    assert fitted[0] | fitted[1] == served and not fitted[0] & fitted[1]
    assert [index for index, _ in predicted] == [0, 1]
    for index, seen in predicted:
        assert seen == served - fitted[index]
    # The model that ships has at most the halves' rounds: g was fitted on models of that size.
    cap = max(1, models[0].best_iteration_, models[1].best_iteration_)
    assert models[2].max_rounds == cap and models[2].best_iteration_ <= cap
    assert calibration.adoption_model is models[2]
    # Adopters and the rest are split evenly: both kinds in both halves.
    adopters = set(data.interactions[S.CUSTOMER_ID].astype(str)) & served
    for half in fitted[:2]:
        assert abs(len(half & adopters) - len(adopters) / 2) <= 1
        assert abs(len(half - adopters) - len(served - adopters) / 2) <= 1
    # The shipped model with its map: each age group's mean probability is its own rate.
    predicted.clear()
    keep = ~objected
    held = trained.pipeline.holdings_matrix(customers[S.CUSTOMER_ID].to_numpy()[keep], data.holdings)
    g = calibration.adoption_probability(customers[keep], held)
    adopted = customers[S.CUSTOMER_ID][keep].isin(adopters).to_numpy()
    old = customers["age"].to_numpy()[keep] > 50
    for group in (old, ~old):
        assert abs(g[group].mean() - adopted[group].mean()) < 0.05, (g[group].mean(), adopted[group].mean())
    assert g[~old].mean() - g[old].mean() > 0.4
    # Too few who adopted nothing, or asked not to: no adoption model.
    assert not training.calibrate(bare, data, fit_adoption=False).needs_adoption
    monkeypatch.setattr(training, "CROSS_FIT_MIN", len(customers))
    fitted.clear()
    assert not training.calibrate(bare, data).needs_adoption and fitted == []
    # A model that has one keeps it: nothing is fitted.
    assert training.calibrate(trained, data).adoption_model is trained.calibration.adoption_model and fitted == []


def test_log_loss_by_a_loop_and_scikit_learn():
    from sklearn.metrics import log_loss as sklearn_log_loss

    rng = np.random.default_rng(3)
    p, y = rng.uniform(0.01, 0.99, 200), rng.random(200) < 0.3
    naive = -sum(np.log(pi) if yi else np.log(1 - pi) for pi, yi in zip(p, y)) / len(p)
    assert log_loss(p, y) == pytest.approx(naive, rel=1e-12)
    assert log_loss(p, y) == pytest.approx(sklearn_log_loss(y, p), rel=1e-9)
    assert np.isfinite(log_loss(np.array([0.0, 1.0]), np.array([True, False])))  # clipped, not inf


@pytest.mark.slow
def test_an_adoption_model_that_learns_nothing_is_not_kept(trained, small_dataset):
    import copy

    from finrec.training.train import CROSS_FIT_MIN, calibrate, cross_fitted_adoption

    # Whether a customer adopts at all is a coin, whatever its columns say.
    customers = small_dataset.customers
    keep = np.random.default_rng(5).random(len(customers)) < 0.5
    kept = small_dataset.interactions[S.CUSTOMER_ID].isin(customers[S.CUSTOMER_ID][keep])
    data = type(small_dataset)(
        **{**vars(small_dataset), "interactions": small_dataset.interactions[kept].reset_index(drop=True)}
    )
    adopted_any = customers[S.CUSTOMER_ID].isin(data.interactions[S.CUSTOMER_ID]).to_numpy()
    assert min(adopted_any.sum(), (~adopted_any).sum()) >= CROSS_FIT_MIN
    held = trained.pipeline.holdings_matrix(customers[S.CUSTOMER_ID].to_numpy(), data.holdings)
    model, _, why = cross_fitted_adoption(data, adopted_any, held, trained.config)
    assert model is None and "no better than its adoption rate" in why
    bare = copy.copy(trained)
    bare.calibration = None
    assert not calibrate(bare, data).needs_adoption
    # Where adopting depends on age, the same customers give a model that is kept.
    driven = _adopting_by_age(small_dataset)
    adopted_any = customers[S.CUSTOMER_ID].isin(driven.interactions[S.CUSTOMER_ID]).to_numpy()
    model, out_of_fold, why = cross_fitted_adoption(driven, adopted_any, held, trained.config)
    assert model is not None and out_of_fold.shape == (len(customers),) and why == ""


@pytest.mark.slow
def test_an_adoption_model_that_is_not_the_models_is_refused(trained, tmp_path):
    import hashlib

    from finrec.artifacts import MANIFEST, save_model_dir

    save_model_dir(trained, tmp_path / "model")
    file = tmp_path / "model" / CALIBRATION_FILE
    assert json.loads(file.read_text())["adoption"]["model"]["booster"] is not None
    for change, message in (
        (lambda model: model["pipeline"].update(product_ids=model["pipeline"]["product_ids"][::-1]), "catalogue"),
        (lambda model: model.update(use_holdings=False), "its trees read"),
        (lambda model: model.update(objective="multiclass"), "not one"),
    ):
        raw = json.loads(file.read_text())
        change(raw["adoption"]["model"])
        file.write_text(json.dumps(raw))
        manifest = json.loads((tmp_path / "model" / MANIFEST).read_text())
        manifest["files"][CALIBRATION_FILE] = hashlib.sha256(file.read_bytes()).hexdigest()
        (tmp_path / "model" / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ArtifactError, match=message):
            load_model_dir(tmp_path / "model")
        save_model_dir(trained, tmp_path / "model")


@pytest.mark.slow
def test_trained_model_is_calibrated_on_new_customers(trained):
    assert trained.calibration is not None and trained.calibration.customers > 0
    settings = GeneratorSettings(n_customers=1500, seed=8)
    fresh = validate_tables(S.SYNTHETIC.schema(), generate(settings))
    pipeline = trained.pipeline
    ids = fresh.customers["customer_id"].to_numpy()
    held = pipeline.holdings_matrix(ids, fresh.holdings)
    first = np.zeros(held.shape)
    gt = fresh.ground_truth
    first[pd.Index(ids).get_indexer(gt["customer_id"]), pipeline.product_positions(gt["product_id"])] = gt[
        "probability"
    ]
    true = period_adoption_probabilities(first, settings, draws=400, seed=0)
    cosine = trained.score(fresh.customers, fresh.holdings)
    # The generator's banks have customers who adopt nothing (10%): the calibration has an adoption model.
    assert trained.calibration.needs_adoption
    adoption = trained.calibration.adoption_probability(fresh.customers, held)
    calibrated = trained.calibration(cosine, held, adoption)
    ece, ece_raw = (expected_calibration_error(p[~held], true[~held]) for p in (calibrated, np.clip(cosine, 0, 1)))
    assert ece < 0.03 and ece < ece_raw / 2, (ece, ece_raw)


@pytest.mark.slow
def test_model_dir_carries_the_calibration(model_dir, trained, small_dataset):
    loaded = load_model_dir(model_dir)
    assert CALIBRATION_FILE in loaded.manifest["files"]
    recommender = Recommender(loaded.trained, small_dataset)
    customer = str(small_dataset.customers["customer_id"].iloc[0])
    result = recommender.recommend(customer, k=3)
    context = recommender.context(small_dataset.customers.iloc[:1], small_dataset.holdings)
    probs = recommender.probabilities(context)[0]
    for item in result.items:
        j = recommender.pipeline.product_ids_.index(item.product_id)
        assert item.probability == pytest.approx(float(probs[j]), abs=1e-6)
    assert "probability" in result.to_dict()["recommendations"][0]


def _without_calibration(model_dir, bare):
    """A copy of ``model_dir`` at ``bare`` as a model saved before calibration existed."""
    shutil.copytree(model_dir, bare)
    manifest = json.loads((bare / "manifest.json").read_text())
    del manifest["files"][CALIBRATION_FILE]
    (bare / CALIBRATION_FILE).unlink()
    (bare / "manifest.json").write_text(json.dumps(manifest))
    return bare


@pytest.mark.slow
def test_a_model_without_calibration_still_recommends(model_dir, small_dataset, small_data_dir, tmp_path, capsys):
    bare = _without_calibration(model_dir, tmp_path / "model")
    recommender = Recommender(load_model_dir(bare).trained, small_dataset)
    items = recommender.recommend(str(small_dataset.customers["customer_id"].iloc[0]), k=2).items
    assert items and all(item.probability is None for item in items)
    code = main(
        [
            "score",
            "--model",
            str(bare),
            "--data",
            str(small_data_dir),
            "--out",
            str(tmp_path / "s.csv"),
            "--probabilities",
        ]
    )
    assert code == 2 and "no calibration" in capsys.readouterr().err


@pytest.mark.slow
def test_damaged_calibration_is_refused(model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    (copy / CALIBRATION_FILE).write_text("{}")
    with pytest.raises(ArtifactError, match=CALIBRATION_FILE):
        load_model_dir(copy)


@pytest.mark.slow
def test_score_probabilities_column(model_dir, small_data_dir, tmp_path):
    out = tmp_path / "top.csv"
    assert (
        main(
            [
                "score",
                "--model",
                str(model_dir),
                "--data",
                str(small_data_dir),
                "--out",
                str(out),
                "--k",
                "3",
                "--probabilities",
            ]
        )
        == 0
    )
    table = pd.read_csv(out)
    assert list(table.columns) == ["customer_id", "rank", "product_id", "score", "probability"]
    assert table["probability"].between(0, 1).all()
    # The same probabilities as a single request gives (one ranking core, one calibration).
    recommender = Recommender.load(model_dir, small_data_dir)
    for customer, rows in list(table.groupby("customer_id"))[:30]:
        expected = {item.product_id: item.probability for item in recommender.recommend(str(customer), k=3).items}
        for pid, probability in zip(rows["product_id"], rows["probability"]):
            assert probability == pytest.approx(expected[pid], abs=1e-5)
    plain = tmp_path / "plain.csv"
    assert (
        main(["score", "--model", str(model_dir), "--data", str(small_data_dir), "--out", str(plain), "--k", "3"]) == 0
    )
    assert "probability" not in pd.read_csv(plain).columns


@pytest.mark.slow
def test_rest_api_returns_probability_beside_score(model_dir, small_data_dir, small_dataset):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from finrec.serve import create_app

    with TestClient(create_app(model_dir, small_data_dir)) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:  # loads in the background
            time.sleep(0.2)
        customer = str(small_dataset.customers["customer_id"].iloc[0])
        body = client.post("/recommendations", json={"customer_id": customer, "k": 2}).json()
    for item in body["recommendations"]:
        assert 0 <= item["probability"] <= 1 and "score" in item


@pytest.mark.slow
def test_calibrate_command_refits_on_held_out_customers(model_dir, small_data_dir, tmp_path, capsys, monkeypatch):
    from finrec.artifacts import read_monitoring, save_model_dir
    from finrec.data.io import load_dataset, write_dataset
    from finrec.governance.monitor import reference_for

    copy = tmp_path / "model"
    trained = load_model_dir(model_dir).trained
    # As `finrec train` writes it: the training data recorded, with the monitoring reference.
    reference = reference_for(trained, load_dataset(small_data_dir), k=5, seed=0)
    save_model_dir(trained, copy, data_path=str(small_data_dir), monitoring=reference)
    # The training data itself is refused: its customers taught the model.
    assert main(["calibrate", "--model", str(copy), "--data", str(small_data_dir)]) == 2
    assert "trained on" in capsys.readouterr().err
    tables = generate(GeneratorSettings(n_customers=800, seed=21))
    for name in ("customers", "holdings", "interactions", "ground_truth"):  # new people, new ids
        tables[name] = tables[name].assign(customer_id="N" + tables[name]["customer_id"].astype(str))
    fresh = write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / "fresh")
    before = load_model_dir(copy).trained.calibration
    assert main(["calibrate", "--model", str(copy), "--data", str(fresh)]) == 0
    loaded = load_model_dir(copy)  # checksums verified: the directory was rewritten whole
    # The customers who objected to profiling for marketing are no calibration data.
    from finrec.data.compliance import customer_profile

    objected = int(customer_profile(tables["customers"], S.SYNTHETIC.schema().customers)["objected"].sum())
    assert objected > 0 and f"({objected} who objected" in capsys.readouterr().out
    calibration = loaded.trained.calibration
    assert calibration.customers == 800 - objected != before.customers
    # The adoption model is the trained one, its map refitted on the new customers.
    assert before.needs_adoption and calibration.needs_adoption
    assert calibration.adoption_model.to_dict() == before.adoption_model.to_dict()
    assert not np.array_equal(calibration.adoption_y, before.adoption_y)
    # A model without an adoption model gets one fitted on these customers, and says so, where
    # adopting at all differs from customer to customer (here: by age) ...
    customers = tables["customers"]
    keep = np.random.default_rng(4).random(len(customers)) < np.where(customers["age"] > 50, 0.2, 0.9)
    driven_tables = dict(tables)
    driven_tables["interactions"] = tables["interactions"][
        tables["interactions"]["customer_id"].isin(customers["customer_id"][keep])
    ]
    driven = write_dataset(driven_tables, S.SYNTHETIC.schema(), tmp_path / "driven")
    bare = load_model_dir(copy).trained
    bare.calibration = None
    save_model_dir(bare, copy, data_path=str(small_data_dir), monitoring=reference)
    assert main(["calibrate", "--model", str(copy), "--data", str(driven)]) == 0
    assert "an adoption model fitted on these customers" in capsys.readouterr().out
    crossed = load_model_dir(copy).trained.calibration
    assert crossed.needs_adoption and crossed.adoption_model.to_dict() != before.adoption_model.to_dict()
    assert crossed.adoption_cross_fitted and not before.adoption_cross_fitted
    assert json.loads((copy / CALIBRATION_FILE).read_text())["adoption"]["cross_fitted"] is True
    # Recalibrated again, it cross-fits anew: the old model was refitted on these very customers,
    # whose outcomes its map must not be fitted on (same customers, same seed: the same model).
    import finrec.training.train as training

    fits = []
    real = training.adoption_model_for
    monkeypatch.setattr(training, "adoption_model_for", lambda *a, **k: fits.append(1) or real(*a, **k))
    assert main(["calibrate", "--model", str(copy), "--data", str(driven)]) == 0
    assert "an adoption model fitted on these customers" in capsys.readouterr().out and len(fits) == 3
    again = load_model_dir(copy).trained.calibration
    assert again.adoption_cross_fitted and again.adoption_model.to_dict() == crossed.adoption_model.to_dict()
    np.testing.assert_array_equal(again.adoption_y, crossed.adoption_y)
    monkeypatch.setattr(training, "adoption_model_for", real)
    # ... not where it is one chance in ten for everybody (the generator's bank): the trees
    # predict no better than the rate, so none is kept, and it says so ...
    save_model_dir(bare, copy, data_path=str(small_data_dir), monitoring=reference)
    assert main(["calibrate", "--model", str(copy), "--data", str(fresh)]) == 0
    assert "predicted the other half no better than its adoption rate" in capsys.readouterr().out
    assert not load_model_dir(copy).trained.calibration.needs_adoption
    # ... nor where too few of them adopted nothing.
    monkeypatch.setattr(training, "CROSS_FIT_MIN", 800)
    assert main(["calibrate", "--model", str(copy), "--data", str(driven)]) == 0
    assert "too few to fit an adoption model (at least 800 of each kind" in capsys.readouterr().out
    assert not load_model_dir(copy).trained.calibration.needs_adoption
    assert loaded.manifest["calibration_data"] == str(fresh.resolve())
    assert read_monitoring(copy) == json.loads(json.dumps(reference))  # the reference survives the rewrite
    # A check of the probabilities on the data they were calibrated on is optimistic, and says so
    # (the manifest recorded that data, and nothing read it: a tester).
    from finrec.evaluate.report import calibrated_on

    capsys.readouterr()
    assert main(["evaluate", "--model", str(copy), "--data", str(driven), "--probabilities"]) == 0
    assert "probabilities were calibrated on" in capsys.readouterr().err
    manifest = load_model_dir(copy).manifest
    assert calibrated_on(manifest, shutil.copytree(driven, tmp_path / "driven-copy"))  # known by its fingerprint
    assert not calibrated_on(manifest, fresh) and not calibrated_on(loaded.manifest, driven)


@pytest.mark.slow
def test_another_calibration_format_loads_without_probabilities(model_dir, small_dataset, tmp_path):
    import hashlib

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    raw = json.loads((copy / CALIBRATION_FILE).read_text())
    (copy / CALIBRATION_FILE).write_text(json.dumps({**raw, "format": 99}))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][CALIBRATION_FILE] = hashlib.sha256((copy / CALIBRATION_FILE).read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    recommender = Recommender(load_model_dir(copy).trained, small_dataset)
    assert recommender.calibration is None
    assert recommender.recommend(str(small_dataset.customers["customer_id"].iloc[0]), k=1).items[0].probability is None


@pytest.mark.slow
def test_calibrate_refuses_a_handful_of_adoptions_and_leaves_the_model_as_it_was(model_dir, tmp_path, capsys):
    from finrec.data.io import write_dataset

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    tables = generate(GeneratorSettings(n_customers=800, seed=22))
    for name in ("customers", "holdings", "interactions", "ground_truth"):  # new people, new ids
        tables[name] = tables[name].assign(customer_id="N" + tables[name]["customer_id"].astype(str))
    few = tables["customers"]["customer_id"].head(10)
    tables = {n: t[t["customer_id"].isin(few)] if "customer_id" in t else t for n, t in tables.items()}
    tiny = write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / "tiny")
    before = (copy / CALIBRATION_FILE).read_bytes()
    # Ten customers' dozen adoptions replaced the model's calibration (exit 0): products'
    # probabilities moved by factors of 2 to 10, and the one fitted at training was gone.
    assert main(["calibrate", "--model", str(copy), "--data", str(tiny)]) == 2
    err = capsys.readouterr().err
    assert "adoption(s) of" in err and "at least 20 are needed" in err and "the model is unchanged" in err
    assert (copy / CALIBRATION_FILE).read_bytes() == before


def test_evaluate_probabilities_checks_them_against_the_adoptions(model_dir, small_data_dir, tmp_path, capsys):
    """``evaluate --probabilities``: the calibrated probabilities against the adoptions observed,
    printed and in the JSON; a model without calibration is refused before any work."""
    out = tmp_path / "e.json"
    code = main(
        ["evaluate", "--model", str(model_dir), "--data", str(small_data_dir), "--probabilities", "--json", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 0
    check = json.loads(out.read_text())["probabilities"]
    assert check["pairs"] > 0 and 0 < check["brier"] < check["reference_brier"]
    assert (
        f"adoptions predicted {check['predicted_adoptions']:,.1f}, observed {check['observed_adoptions']:,}" in printed
    )
    assert len(check["products"]) == 25 and len(check["reliability"]) == 10

    bare = _without_calibration(model_dir, tmp_path / "bare")
    code = main(
        ["evaluate", "--model", str(bare), "--data", str(small_data_dir), "--probabilities", "--json", str(out)]
    )
    assert code == 2 and "no calibration" in capsys.readouterr().err


def test_calibrate_refuses_a_copy_of_the_training_data_once_its_directory_is_gone(
    trained, small_data_dir, tmp_path, capsys
):
    # A tester's monthly cycle: last month's split was moved away, and a copy of the training
    # data was calibrated on without a word (the customer check reads the recorded directory).
    from finrec.artifacts import read_manifest, save_model_dir
    from finrec.cli import main
    from finrec.data.io import fingerprint

    model = save_model_dir(
        trained, tmp_path / "model", data_fingerprint=fingerprint(small_data_dir), data_path=str(tmp_path / "moved")
    )
    before = read_manifest(model)
    assert main(["calibrate", "--model", str(model), "--data", str(small_data_dir)]) == 2
    assert "this is the data the model was trained on" in capsys.readouterr().err
    assert read_manifest(model) == before


def test_calibrate_takes_the_training_customers_adoptions_of_a_later_period(
    trained, small_tables, small_data_dir, tmp_path, capsys
):
    """A bank recalibrates each month on what its customers adopted since: the same customers,
    adoptions the model never saw. They were refused because the customers were the same (a
    tester's monthly cycle); adoptions that overlap the training period still are."""
    from finrec.artifacts import save_model_dir
    from finrec.data.io import write_dataset

    model = save_model_dir(trained, tmp_path / "model", data_path=str(small_data_dir))
    stamps = pd.to_datetime(small_tables["interactions"]["timestamp"])
    last = stamps.max()
    shifts = {"later": last - stamps.min() + pd.Timedelta(days=1), "overlapping": pd.Timedelta(days=1)}
    for name, shift in shifts.items():
        tables = dict(small_tables, interactions=small_tables["interactions"].assign(timestamp=stamps + shift))
        data = write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / name)
        code = main(["calibrate", "--model", str(model), "--data", str(data)])
        err = capsys.readouterr().err
        if name == "later":
            assert code == 0, err
            assert (
                f"all come after the training data's last ({last:%Y-%m-%d}), so they are calibrated on out of time"
                in err
            )
        else:
            assert code == 2 and "or on adoptions of a later period" in err


def test_calibrating_on_adopters_alone_says_the_probabilities_will_be_too_high(trained, small_dataset, caplog):
    """A tester calibrated on customers who all adopted something: the probabilities came out 16%
    above what the population then adopted, without a word."""
    import logging

    from finrec.training.train import calibrate

    adopters = small_dataset.interactions.customer_id.unique()[:300]
    with caplog.at_level(logging.WARNING, logger="finrec.training.train"):
        calibrate(trained, small_dataset.subset_customers(adopters), fit_adoption=False)
    assert any("calibration customers adopted something" in r.message for r in caplog.records), caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="finrec.training.train"):
        calibrate(trained, small_dataset, fit_adoption=False)  # some adopt nothing: no such warning
    assert not any("adopted something" in r.message for r in caplog.records)
