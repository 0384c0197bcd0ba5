"""Model structure, save/load, backends, and behaviour a banker would expect."""

import keras
import numpy as np
import pytest

from finrec.config import ModelConfig
from finrec.features import FeaturePipeline
from finrec.model.two_tower import build_two_tower, product_embeddings, towers_of


@pytest.fixture(scope="module")
def pipeline(small_dataset):
    return FeaturePipeline(small_dataset.schema).fit(small_dataset)


def test_embeddings_are_unit_length_and_scores_cosine(trained, small_dataset):
    emb = trained.customer_embeddings(small_dataset.customers.iloc[:50], small_dataset.holdings)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(trained.product_embeddings_, axis=1), 1, atol=1e-5)
    scores = trained.score(small_dataset.customers.iloc[:50], small_dataset.holdings)
    assert scores.shape == (50, len(small_dataset.products)) and np.abs(scores).max() <= 1 + 1e-5


def test_both_towers_are_functional_models(trained):
    customer, product = towers_of(trained.model)
    assert isinstance(customer, keras.Model) and isinstance(product, keras.Model)
    assert customer.output.shape[-1] == product.output.shape[-1]


def test_cross_layer_option_builds_and_roundtrips(tmp_path, pipeline, small_dataset):
    catalogue = pipeline.transform_products(small_dataset.products)
    model = build_two_tower(
        pipeline, catalogue, ModelConfig(cross_layers=2, customer_widths=(16,), product_widths=(16,))
    )
    assert any("cross" in layer.name for layer in towers_of(model)[0].layers)
    x = pipeline.transform_customers(small_dataset.customers.iloc[:20], small_dataset.holdings)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(model.predict(x, verbose=0), again.predict(x, verbose=0), atol=1e-6)
    np.testing.assert_allclose(product_embeddings(model), product_embeddings(again), atol=1e-6)


def test_without_holdings_has_no_holdings_input(small_dataset):
    p = FeaturePipeline(small_dataset.schema, use_holdings=False).fit(small_dataset)
    model = build_two_tower(
        p, p.transform_products(small_dataset.products), ModelConfig(customer_widths=(8,), product_widths=(8,))
    )
    assert "holdings" not in towers_of(model)[0].input


def test_model_learns_over_popularity(trained, small_dataset):
    from finrec.evaluate.report import evaluate

    results = evaluate(trained, small_dataset, k=5)
    assert results["model"]["ndcg@5"] > results["popularity"]["ndcg@5"] > results["random"]["ndcg@5"]


def test_directional_risk_tolerance_raises_risky_products(trained, small_dataset):
    """Behaviour: raising a customer's risk tolerance should raise the scores of high-risk
    investment products relative to deposits, on average over customers."""
    customers = small_dataset.customers.sample(300, random_state=0).copy()
    products = trained.products.set_index("product_id").loc[trained.pipeline.product_ids_]
    risky = (products["risk_level"] >= 5).to_numpy()
    safe = (products["risk_level"] <= 1).to_numpy()
    low = customers.assign(risk_tolerance=1)
    high = customers.assign(risk_tolerance=7)
    gap_low = trained.score(low)[:, risky].mean() - trained.score(low)[:, safe].mean()
    gap_high = trained.score(high)[:, risky].mean() - trained.score(high)[:, safe].mean()
    assert gap_high > gap_low


def test_invariance_to_customer_id_and_row_order(trained, small_dataset):
    customers = small_dataset.customers.iloc[:30]
    renamed = customers.assign(customer_id=[f"X{i}" for i in range(30)])
    np.testing.assert_allclose(trained.score(customers), trained.score(renamed), atol=1e-6)
    reversed_scores = trained.score(customers.iloc[::-1])
    np.testing.assert_allclose(trained.score(customers)[::-1], reversed_scores, atol=1e-6)
