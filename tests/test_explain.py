import numpy as np
import pandas as pd
import pytest

from finrec import explain as X
from finrec.data import schema as S
from finrec.errors import DataError, FinrecError
from finrec.recommend.recommender import Recommender

ALL = {"suitability": False, "exclude_held": False, "eligibility": False}


@pytest.fixture(scope="module")
def rec(trained, small_dataset):
    return Recommender(trained, small_dataset)


@pytest.fixture(scope="module")
def explainer(rec):
    return X.CustomerExplainer(rec, max_background=40, seed=3)


def test_feature_names_follow_the_pipeline(explainer, rec):
    c = rec.schema.customers
    assert explainer.feature_names == [*c.numeric_features, *c.categorical_features]


def test_score_function_matches_the_recommender(rec, explainer, small_dataset):
    for row in (0, 7, 42):
        cid = small_dataset.customer_ids[row]
        x, held = explainer.known_customer(cid)
        audit = rec.audit(cid, ALL).set_index(S.PRODUCT_ID)["score"]
        for pid in audit.index[:3].tolist() + audit.index[-2:].tolist():
            assert explainer.score_function(pid, held)(x)[0] == pytest.approx(audit[pid], abs=1e-5)


def test_score_function_is_vectorised(rec, explainer, small_dataset):
    pid = rec.pipeline.product_ids_[0]
    frame = small_dataset.customers.iloc[:200]
    X_ = explainer.encode(frame)
    many = explainer.score_function(pid)(X_)
    one_by_one = [explainer.score_function(pid)(X_[i : i + 1])[0] for i in (0, 99, 199)]
    assert many.shape == (200,)
    np.testing.assert_allclose(many[[0, 99, 199]], one_by_one, atol=1e-6)


def test_permutation_shap_adds_up_to_the_score(rec, explainer, small_dataset):
    shap = pytest.importorskip("shap")
    cid = small_dataset.customer_ids[11]
    x, held = explainer.known_customer(cid)
    pid = rec.recommend(cid, k=1).items[0].product_id
    f = explainer.score_function(pid, held)
    out = shap.PermutationExplainer(f, explainer.background_matrix())(x, silent=True)
    base = float(np.ravel(out.base_values)[0])
    assert X.additivity_gap(base, out.values[0], f(x)[0]) < 1e-4
    assert base == pytest.approx(f(explainer.background_matrix()).mean(), abs=1e-6)


def test_encode_decode_round_trip(explainer, small_dataset):
    frame = small_dataset.customers.iloc[:50]
    encoded = explainer.encode(frame)
    decoded = explainer.decode(encoded)
    np.testing.assert_array_equal(explainer.encode(decoded), encoded)
    for column in explainer.numeric:
        np.testing.assert_allclose(decoded[column].to_numpy(), frame[column].to_numpy(dtype="float64"))
    for column in explainer.categorical:
        assert decoded[column].astype(object).tolist() == frame[column].tolist()


def test_unseen_and_missing_categories_use_the_oov_slot(rec, explainer, small_dataset):
    row = small_dataset.customers.iloc[[5]].copy()
    column = explainer.categorical[0]
    unseen, missing = row.copy(), row.copy()
    unseen[column] = "planet_mars"
    missing[column] = None
    j = explainer.feature_names.index(column)
    assert explainer.encode(unseen)[0, j] == 0 == explainer.encode(missing)[0, j]
    assert pd.isna(explainer.decode(explainer.encode(unseen))[column].iloc[0])
    pid = rec.pipeline.product_ids_[3]
    f = explainer.score_function(pid)
    features = unseen.drop(columns=[rec.schema.customers.id]).iloc[0].to_dict()
    expected = rec.audit(features, ALL).set_index(S.PRODUCT_ID)["score"][pid]
    assert f(explainer.encode(unseen))[0] == pytest.approx(expected, abs=1e-5)
    assert f(explainer.encode(unseen))[0] == pytest.approx(f(explainer.encode(missing))[0], abs=1e-7)


def test_missing_numeric_is_imputed(explainer, rec):
    x = explainer.background_matrix()[:1].copy()
    x[0, 0] = np.nan
    assert np.isfinite(explainer.score_function(rec.pipeline.product_ids_[0])(x)).all()


def test_unknown_ids_are_refused(explainer, rec):
    with pytest.raises(FinrecError, match="unknown product_id"):
        explainer.score_function("NOPE")
    with pytest.raises(DataError, match="NOPE"):
        explainer.score_function(rec.pipeline.product_ids_[0], ["NOPE"])


def test_background_is_seeded_and_capped(rec):
    a = X.CustomerExplainer(rec, max_background=30, seed=1).background_matrix()
    b = X.CustomerExplainer(rec, max_background=30, seed=1).background_matrix()
    assert a.shape == (30, len(X.CustomerExplainer(rec).feature_names))
    np.testing.assert_array_equal(a, b)


def test_embedding_is_the_recommenders(rec, explainer, small_dataset):
    cid = small_dataset.customer_ids[2]
    x, held = explainer.known_customer(cid)
    embedding = explainer.embed(x, held)[0]
    scores = rec.audit(cid, ALL).set_index(S.PRODUCT_ID)["score"]
    near = X.nearest_products(embedding, rec.product_embeddings, rec.pipeline.product_ids_, k=5)
    np.testing.assert_allclose(near.cosine, scores.loc[near[S.PRODUCT_ID]].to_numpy(), atol=1e-5)
    assert near.cosine.is_monotonic_decreasing


def test_projection_of_products(rec):
    projection = X.EmbeddingProjection.fit(rec.product_embeddings)
    points = projection.transform(rec.product_embeddings)
    assert points.shape == (len(rec.product_embeddings), 2)
    np.testing.assert_allclose(points.mean(axis=0), 0, atol=1e-9)
    assert points[:, 0].var() >= points[:, 1].var()
    assert 0 < projection.explained.sum() <= 1 + 1e-9


def test_views():
    population = pd.DataFrame({S.INCOME: [1.0, 2.0, 3.0, 4.0]})
    ranks = X.percentile_ranks(population, {S.INCOME: 3.0}, [S.INCOME, "absent"])
    assert ranks.percentile.tolist() == [62.5]
    assert X.rank_changes(["a", "b", "c"], ["b", "a", "c", "d"]) == ["▲1", "▼1", "=", "🆕 new"]
    assert X.suitability_badge(3, 5) == "✅ Suitable: risk 3 ≤ tolerance 5"
    assert X.suitability_badge(6, 5).startswith("⛔")
    assert "income ≥ 20,000" in X.product_terms({S.MIN_INCOME: 20000.0, S.MIN_AGE: 18, S.MAX_AGE: 75})


# ------------------------------------------------------------------------------------ uploads
def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def test_upload_good(small_dataset):
    frame = X.read_customer_upload(_csv(small_dataset.customers.iloc[:3]), small_dataset.schema, "c.csv")
    assert frame[small_dataset.schema.customers.id].tolist() == small_dataset.customers.customer_id.iloc[:3].tolist()


@pytest.mark.parametrize("change, pattern", [
    (lambda f: f.drop(columns=[S.INCOME]), f"'{S.INCOME}'"),
    (lambda f: f.assign(**{S.CREDIT_SCORE: ["high", 700, 700]}), f"column '{S.CREDIT_SCORE}' must be numeric.*row 1"),
    (lambda f: f.assign(**{S.INCOME: [100.0, -5.0, 100.0]}), f"column '{S.INCOME}' must be at least 0.*row 2"),
    (lambda f: f.assign(**{S.AGE: [40, 40, 130]}), f"column '{S.AGE}' must be from 18 to 120.*row 3"),
    (lambda f: f.assign(**{S.SYNTHETIC.risk_tolerance: [9, 2, 2]}), f"column '{S.SYNTHETIC.risk_tolerance}'.*1 to 7.*row 1"),
])
def test_upload_refused_with_column_and_row(small_dataset, change, pattern):
    bad = change(small_dataset.customers.iloc[:3].copy())
    with pytest.raises(DataError, match=pattern):
        X.read_customer_upload(_csv(bad), small_dataset.schema, "c.csv")


def test_upload_too_big_or_empty(small_dataset):
    with pytest.raises(DataError, match="limited to 1 MB"):
        X.read_customer_upload(b"x" * (X.MAX_UPLOAD_BYTES + 1), small_dataset.schema, "big.csv")
    with pytest.raises(DataError, match="empty"):
        X.read_customer_upload(b"", small_dataset.schema, "empty.csv")
