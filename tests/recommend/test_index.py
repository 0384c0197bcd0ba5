"""The numpy inference path against the Keras customer tower, and the top K."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from towers_util import randomize_batchnorm  # tests/towers_util.py

from finrec.config import ModelConfig
from finrec.features import FeaturePipeline
from finrec.model.towers import flops_per_example
from finrec.model.two_tower import build_two_tower, towers_of
from finrec.recommend.index import NumpyTower, ProductIndex, top_k

ATOL = 1e-5


@pytest.fixture(scope="module")
def pipelines(small_dataset):
    return {hold: FeaturePipeline(small_dataset.schema, use_holdings=hold).fit(small_dataset) for hold in (True, False)}


def random_inputs(spec: dict, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random numeric rows, valid category codes (0 = OOV included) and multi-hot holdings."""
    out = {}
    for name, (kind, size) in spec.items():
        if kind == "numeric":
            out[name] = rng.normal(0, 2, (n, size)).astype("float32")
        elif kind == "categorical":
            codes = rng.integers(0, size, n).astype("int32")
            codes[:3] = 0
            out[name] = codes
        else:
            out[name] = (rng.random((n, size)) < 0.2).astype("float32")
    return out


def keras_embeddings(tower: keras.Model, inputs: dict) -> np.ndarray:
    return keras.ops.convert_to_numpy(tower(inputs, training=False))


ARCHITECTURES = [
    # (cross_layers, dropout, widths, use_holdings)
    (0, 0.0, (32,), True),
    (0, 0.3, (64, 32, 16), False),
    (2, 0.0, (64, 32, 16), True),
    (2, 0.3, (32,), False),
    (0, 0.0, (64, 32, 16), True),
    (2, 0.3, (64, 32, 16), True),
    (1, 0.0, (), True),  # straight from the concatenation to the output layer
]


@pytest.mark.parametrize("cross, dropout, widths, holdings", ARCHITECTURES)
def test_numpy_tower_matches_keras(pipelines, small_dataset, cross, dropout, widths, holdings):
    rng = np.random.default_rng(cross * 100 + len(widths) * 10 + holdings)
    pipeline = pipelines[holdings]
    config = ModelConfig(
        customer_widths=widths, product_widths=(16,), embedding_dim=8, cross_layers=cross, dropout=dropout
    )
    model = build_two_tower(pipeline, pipeline.transform_products(small_dataset.products), config)
    customer_tower = towers_of(model)[0]
    randomize_batchnorm(customer_tower, rng)
    inputs = random_inputs(pipeline.customer_input_spec(), 257, rng)

    expected = keras_embeddings(customer_tower, inputs)
    for tower in (NumpyTower.from_keras(customer_tower), NumpyTower.from_keras(model, chunk_size=64)):
        got = tower(inputs)
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
        # one customer at a time gives the same rows
        np.testing.assert_allclose(tower({k: v[5:6] for k, v in inputs.items()}), expected[5:6], atol=ATOL, rtol=0)
    assert tower.flops_per_customer() == flops_per_example(customer_tower)
    assert tower({k: v[:0] for k, v in inputs.items()}).shape == (0, 8)


def test_numpy_tower_after_training_mode_updates(pipelines, small_dataset):
    """BatchNorm statistics that forward passes in training mode moved (not assigned) fold the
    same way."""
    rng = np.random.default_rng(1)
    pipeline = pipelines[True]
    config = ModelConfig(customer_widths=(32, 16), product_widths=(16,), embedding_dim=8, cross_layers=1, dropout=0.2)
    customer_tower = towers_of(build_two_tower(pipeline, pipeline.transform_products(small_dataset.products), config))[
        0
    ]
    inputs = random_inputs(pipeline.customer_input_spec(), 512, rng)
    for _ in range(5):
        customer_tower(inputs, training=True)
    moved = keras.ops.convert_to_numpy(customer_tower.get_layer("customer_tower_bn_0").moving_variance)
    assert np.abs(moved - 1).max() > 0.01
    np.testing.assert_allclose(
        NumpyTower.from_keras(customer_tower)(inputs), keras_embeddings(customer_tower, inputs), atol=ATOL, rtol=0
    )


def test_numpy_tower_on_the_trained_model(trained, small_dataset):
    inputs = trained.pipeline.transform_customers(small_dataset.customers, small_dataset.holdings)
    tower = NumpyTower.from_keras(trained.model)
    got = tower(inputs)
    np.testing.assert_allclose(
        got, trained.customer_embeddings(small_dataset.customers, small_dataset.holdings), atol=ATOL, rtol=0
    )
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    index = ProductIndex.from_trained(trained)
    np.testing.assert_allclose(
        index.scores(got), trained.score(small_dataset.customers, small_dataset.holdings), atol=ATOL, rtol=0
    )


def test_worker_threads_give_the_same_results(trained, small_dataset, monkeypatch):
    """Large batches are split over threads (BLAS single-threaded meanwhile, then restored)."""
    import finrec.recommend.index as index_module

    threadpoolctl = pytest.importorskip("threadpoolctl")
    blas_threads = [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
    inputs = trained.pipeline.transform_customers(small_dataset.customers, small_dataset.holdings)
    held = inputs["holdings"] > 0
    index = ProductIndex.from_trained(trained)
    serial = NumpyTower.from_keras(trained.model, chunk_size=100, workers=1)
    expected = serial(inputs)
    expected_top = index.recommend(expected, held, 5, chunk_size=100, workers=1)
    monkeypatch.setattr(index_module, "PARALLEL_MIN_ROWS", 1)
    parallel = NumpyTower.from_keras(trained.model, chunk_size=100, workers=3)
    np.testing.assert_array_equal(parallel(inputs), expected)
    for got, want in zip(index.recommend(expected, held, 5, chunk_size=100, workers=3), expected_top):
        np.testing.assert_array_equal(got, want)
    assert [
        info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"
    ] == blas_threads


def test_numpy_tower_reports_missing_inputs(trained):
    with pytest.raises(KeyError, match="holdings"):
        NumpyTower.from_keras(trained.model)({"customer_numeric": np.zeros((1, 3), "float32")})


# ----------------------------------------------------------------------------------- top K
def test_top_k_best_first_and_never_excluded():
    rng = np.random.default_rng(0)
    for n, p in ((3, 6), (500, 40)):  # the sort path and the argmax path
        scores = rng.normal(size=(n, p)).astype("float32")
        excluded = rng.random((n, p)) < 0.3
        index, best = top_k(scores, excluded, 4)
        assert index.shape == best.shape == (n, 4)
        rows = np.arange(n)[:, None]
        valid = index >= 0
        assert not excluded[rows, np.where(valid, index, 0)][valid].any()
        np.testing.assert_array_equal(best[valid], scores[rows, np.where(valid, index, 0)][valid])
        assert (np.diff(best, axis=1) <= 0).all()
        # the same set as a full sort of the allowed scores
        expected = np.sort(np.where(excluded, -np.inf, scores), axis=1)[:, ::-1][:, :4]
        np.testing.assert_array_equal(best, expected)


def test_top_k_fewer_than_k_when_too_many_excluded():
    scores = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.4, 0.6]], dtype="float32")
    excluded = np.array([[True, False, True, True], [False, True, True, False]])
    index, best = top_k(scores, excluded, 3)
    assert index.shape == (2, 2)  # no row has more than 2 recommendable products
    np.testing.assert_array_equal(index, [[1, -1], [3, 0]])
    np.testing.assert_array_equal(best, np.array([[0.1, -np.inf], [0.6, 0.2]], dtype="float32"))
    all_excluded = top_k(scores, np.ones_like(excluded), 3)
    assert all_excluded[0].shape == (2, 0)
    # k larger than the catalogue
    assert top_k(scores, None, 10)[0].shape == (2, 4)


def test_top_k_ties_keep_catalogue_order():
    for n in (1, 2000):  # both paths
        scores = np.tile(np.array([0.5, 0.7, 0.5, 0.7, 0.5, 0.1], dtype="float32"), (n, 1))
        index, best = top_k(scores, None, 4)
        np.testing.assert_array_equal(index, np.tile([1, 3, 0, 2], (n, 1)))
        np.testing.assert_array_equal(best[0], np.array([0.7, 0.7, 0.5, 0.5], dtype="float32"))
        excluded = np.zeros_like(scores, dtype=bool)
        excluded[:, 0] = True
        np.testing.assert_array_equal(top_k(scores, excluded, 3)[0], np.tile([1, 3, 2], (n, 1)))


def test_top_k_paths_agree_with_a_stable_sort_under_many_ties():
    """The column-wise selection (many rows, several chunks) against a per-row stable sort."""
    import finrec.recommend.index as index_module

    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, (700, 12)).astype("float32")  # ties everywhere
    excluded = rng.random((700, 12)) < 0.4
    masked = np.where(excluded, -np.inf, scores)
    order = np.argsort(-masked, axis=1, kind="stable")[:, :5]
    expected_scores = np.take_along_axis(masked, order, axis=1)
    expected = np.where(np.isfinite(expected_scores), order, -1)
    chunk = index_module.TOP_K_CHUNK
    try:
        index_module.TOP_K_CHUNK = 128
        index, best = top_k(scores, excluded, 5)
    finally:
        index_module.TOP_K_CHUNK = chunk
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_array_equal(best, expected_scores)


def test_product_index_recommend_matches_top_k_in_chunks():
    rng = np.random.default_rng(3)
    products = rng.normal(size=(30, 8)).astype("float32")
    products /= np.linalg.norm(products, axis=1, keepdims=True)
    customers = rng.normal(size=(1000, 8)).astype("float32")
    excluded = rng.random((1000, 30)) < 0.5
    index = ProductIndex(products)
    expected = top_k(index.scores(customers), excluded, 5)
    for chunk in (64, 1000, 5000):
        got = index.recommend(customers, excluded, 5, chunk_size=chunk)
        np.testing.assert_array_equal(got[0], expected[0])
        # (BLAS may block a smaller matmul differently: the last bits of a score can differ)
        np.testing.assert_allclose(got[1], expected[1], atol=1e-6, rtol=0)


def test_customer_vectors_of_the_wrong_width_are_named():
    # A tree blend's index holds [v_p, e_p] (D + P columns): the towers' embeddings alone are the
    # wrong width, and used to fail deep in numpy's matmul.
    index = ProductIndex(np.eye(6, 10, dtype="float32"))
    with pytest.raises(ValueError, match=r"customer vectors must be \[n, 10\].*Recommender.embed.*\(3, 4\)"):
        index.scores(np.zeros((3, 4), dtype="float32"))
    with pytest.raises(ValueError, match=r"must be \[n, 10\]"):
        index.recommend(np.zeros((3, 4), dtype="float32"), k=2)
