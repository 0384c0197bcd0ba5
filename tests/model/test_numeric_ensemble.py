"""Numeric embeddings (PLE, periodic) and the TabM-mini ensemble: the Keras layers against their
numpy twins in the serving tower, the ensemble's one-dot-product identity, its loss, the bins'
persistence, and a save / load / batch-score round trip."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from towers_util import randomize_batchnorm  # tests/towers_util.py

from finrec.artifacts import load_model_dir, save_model_dir
from finrec.config import Config, ModelConfig, TrainConfig
from finrec.errors import ConfigError
from finrec.features import CUSTOMER_NUMERIC, FeaturePipeline, quantile_edges
from finrec.model import losses as L
from finrec.model.numeric import PiecewiseLinearEmbedding
from finrec.model.towers import flops_per_example
from finrec.model.two_tower import build_two_tower, product_embeddings, towers_of
from finrec.recommend.index import NumpyTower, ProductIndex
from finrec.training.train import fit, make_loss

ATOL = 1e-5


@pytest.fixture(scope="module")
def ple_pipeline(small_dataset):
    return FeaturePipeline(small_dataset.schema, numeric_bins=8).fit(small_dataset)


def random_inputs(spec, n, rng):
    out = {}
    for name, (kind, size) in spec.items():
        if kind == "numeric":
            out[name] = rng.normal(0, 2, (n, size)).astype("float32")
        elif kind == "categorical":
            out[name] = rng.integers(0, size, n).astype("int32")
        else:
            out[name] = (rng.random((n, size)) < 0.2).astype("float32")
    return out


def randomize(tower, rng):
    """Move the BatchNorm statistics and the members' scales off their initial values, so that
    the numpy tower's folding is exercised."""
    randomize_batchnorm(tower, rng)
    for layer in tower.layers:
        if layer.name.endswith("_members"):
            layer.r.assign(rng.normal(1, 0.5, layer.r.shape))


CASES = [
    # (numeric_encoding, ensemble_size, cross_layers, widths)
    ("ple", 1, 0, (32, 16)),
    ("periodic", 1, 0, (32,)),
    ("none", 4, 0, (32, 16)),
    ("ple", 3, 0, (32, 16, 8)),
    ("periodic", 2, 1, (32,)),
]


@pytest.mark.parametrize("encoding, members, cross, widths", CASES)
def test_numpy_tower_matches_keras(ple_pipeline, small_dataset, encoding, members, cross, widths):
    rng = np.random.default_rng(members * 10 + cross)
    # The weights `randomize` leaves to Keras' initialisers come from its global seed: unseeded,
    # they depended on the tests run before in the same worker, and a CI run drew a member whose
    # output was all zeros for 3 of the 300 rows (norm 0.866, not 1).
    keras.utils.set_random_seed(members * 10 + cross)
    config = ModelConfig(
        customer_widths=widths,
        product_widths=(16,),
        embedding_dim=8,
        cross_layers=cross,
        numeric_encoding=encoding,
        ensemble_size=members,
    )
    model = build_two_tower(ple_pipeline, ple_pipeline.transform_products(small_dataset.products), config)
    customer_tower = towers_of(model)[0]
    randomize(customer_tower, rng)
    inputs = random_inputs(ple_pipeline.customer_input_spec(), 300, rng)
    if encoding == "ple":  # beyond every bin (the pipeline's clip); cos/sin of such values differ by float32 ulps
        inputs[CUSTOMER_NUMERIC][0], inputs[CUSTOMER_NUMERIC][1] = -1e4, 1e4
    expected = keras.ops.convert_to_numpy(customer_tower(inputs, training=False))
    assert expected.shape == (300, members * 8)
    tower = NumpyTower.from_keras(model, chunk_size=64)
    got = tower(inputs)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(tower({k: v[7:8] for k, v in inputs.items()}), expected[7:8], atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert tower.embedding_dim == members * 8
    assert tower.flops_per_customer() == flops_per_example(customer_tower)


def test_piecewise_linear_encoding_is_a_ramp_per_bin():
    layer = PiecewiseLinearEmbedding([[0.0, 1.0, 3.0], [5.0]], dim=2)
    x = np.array([[-1.0, 0.0], [0.5, 9.0], [2.0, 9.0], [7.0, 9.0]], dtype="float32")
    encoded = keras.ops.convert_to_numpy(layer.encode(x))
    # feature 0: bins [0, 1) and [1, 3); feature 1 is constant (a single edge): no bin, always 0
    np.testing.assert_allclose(encoded[:, 0], [[0, 0], [0.5, 0], [1, 0.5], [1, 1]], atol=1e-6)
    assert (encoded[:, 1] == 0).all()


def test_piecewise_linear_twin_equals_the_layer_at_edges_and_beyond():
    # The twin looks up the value's bin instead of a dot product over every bin: check it on
    # values below, on and above every edge, inside bins, and a feature without a bin (padding).
    edges = [[-1.0, -0.2, 0.0, 0.7, 2.5], [5.0], [0.0, 1e-3, 1.0]]
    layer = PiecewiseLinearEmbedding(edges, dim=3)
    layer.build((None, 3))
    rng = np.random.default_rng(5)
    for weight in layer.weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    points = sorted({v for e in edges for v in e} | {-1e4, 1e4, -0.6, 0.35, 3.0, 5e-4, 0.5})
    x = np.array([[a, b, c] for a in points for b in (-1e4, 5.0, 6.0) for c in points], dtype="float32")
    expected = keras.ops.convert_to_numpy(layer(x))
    got = np.empty_like(expected)
    layer.numpy_twin()(x, got)
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)
    strided = np.zeros((len(x), expected.shape[1] + 4), dtype="float32")  # the tower writes into a column slice
    layer.numpy_twin()(x, strided[:, 2:-2])
    np.testing.assert_allclose(strided[:, 2:-2], expected, atol=2e-5, rtol=1e-5)


def test_piecewise_linear_twin_counts_bins_exactly_on_crowded_and_skewed_edges():
    # The twin finds each value's bin from a grid, then steps against the edges: the count must
    # equal searchsorted's for quantile edges an outlier stretches (one edge at 1e4), for edges
    # closer than the grid's cells, and for values on every edge, between them, beyond, and NaN.
    rng = np.random.default_rng(11)
    bulk = np.sort(rng.normal(size=40))
    edges = [
        [*np.quantile(bulk, np.linspace(0, 1, 31)).tolist(), 1e4],  # a far outlier as the last edge
        [-1e4, *np.linspace(-0.5, 0.5, 30).tolist()],  # and as the first
        np.cumsum(np.full(33, 1e-5)).tolist(),  # 33 edges within 3.3e-4: 4096 cells cannot split them
        [0.0, 1.0],
        [2.0],  # no bin
    ]
    layer = PiecewiseLinearEmbedding(edges, dim=4)
    layer.build((None, len(edges)))
    for weight in layer.weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    twin = layer.numpy_twin()
    on_edges = [np.array(e, dtype="float32") for e in edges]
    columns = [
        np.concatenate(
            [e, np.nextafter(e, np.float32(-np.inf)), rng.normal(size=300).astype("float32") * s, [-1e4, 1e4]]
        )
        for e, s in zip(on_edges, (3.0, 1.0, 1e-4, 1.0, 1.0))
    ]
    n = max(len(c) for c in columns)
    x = np.stack([np.resize(c, n) for c in columns], axis=1).astype("float32")
    counts = twin.rows(x) - (np.arange(len(edges)) * (twin.breaks.shape[1] + 2) + 1)
    expected_counts = np.stack(
        [np.searchsorted(twin.breaks[f], x[:, f], side="right") for f in range(len(edges))], axis=1
    )
    np.testing.assert_array_equal(counts, expected_counts)
    got = np.empty((n, 4 * len(edges)), dtype="float32")
    twin(x, got)
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(layer(x)), atol=2e-5, rtol=1e-5)
    # Beyond the outermost edges the encoding is flat: +-inf give what +-1e4 give (the pipeline's
    # clip; every edge here lies within it), and no count steps past a feature's last break.
    x[:2] = [[np.inf] * len(edges), [-np.inf] * len(edges)]
    twin(x, got)
    bounds = np.array([[1e4] * len(edges), [-1e4] * len(edges)], dtype="float32")
    np.testing.assert_allclose(got[:2], keras.ops.convert_to_numpy(layer(bounds)), atol=2e-5, rtol=1e-5)
    x[3, 1] = np.nan  # as the Keras layer: NaN in, NaN out (for that feature only)
    twin(x, got)
    assert np.isnan(got[3, 4:8]).all() and not np.isnan(np.delete(got[3], range(4, 8))).any()


def test_quantile_edges_are_distinct_and_ignore_missing():
    values = np.array([0, 0, 0, 0, 1, 2, 3, np.nan, 4], dtype=float)
    edges = quantile_edges(values, 4)
    assert edges == sorted(set(edges)) and edges[0] == 0 and edges[-1] == 4
    assert quantile_edges(np.full(10, 2.0), 8) == [2.0]


def test_ensemble_dot_product_is_the_members_mean_cosine(ple_pipeline, small_dataset):
    config = ModelConfig(customer_widths=(16,), product_widths=(16,), embedding_dim=4, ensemble_size=3)
    model = build_two_tower(ple_pipeline, ple_pipeline.transform_products(small_dataset.products), config)
    inputs = random_inputs(ple_pipeline.customer_input_spec(), 20, np.random.default_rng(0))
    customers = keras.ops.convert_to_numpy(towers_of(model)[0](inputs, training=False))
    products = product_embeddings(model)
    member_scores = keras.ops.convert_to_numpy(model(inputs, training=False))  # [B, k * P]
    n_products = ple_pipeline.n_products
    assert member_scores.shape == (20, 3 * n_products)
    per_member = member_scores.reshape(20, 3, n_products)
    np.testing.assert_allclose(customers @ products.T, per_member.mean(axis=1), atol=1e-5)
    c, p = customers.reshape(20, 3, 4), products.reshape(-1, 3, 4)
    for i in range(3):  # each member's block is its own cosine
        cos = (c[:, i] / np.linalg.norm(c[:, i], axis=1, keepdims=True)) @ (
            p[:, i] / np.linalg.norm(p[:, i], axis=1, keepdims=True)
        ).T
        np.testing.assert_allclose(per_member[:, i], cos, atol=1e-5)


def test_member_mean_loss_averages_the_members():
    rng = np.random.default_rng(0)
    y = np.zeros((6, 5), "float32")
    y[np.arange(6), rng.integers(0, 5, 6)] = L.POSITIVE
    y[0, (np.argmax(y[0]) + 1) % 5] = L.MASKED
    blocks = [rng.uniform(-1, 1, (6, 5)).astype("float32") for _ in range(3)]
    base = L.CatalogueSoftmax(0.1)
    combined = float(L.MemberMean(base, 3)(y, np.concatenate(blocks, axis=1)))
    assert combined == pytest.approx(np.mean([float(base(y, b)) for b in blocks]), rel=1e-5)
    assert isinstance(make_loss(TrainConfig(), np.ones(5), members=3), L.MemberMean)
    assert isinstance(make_loss(TrainConfig(), np.ones(5)), L.CatalogueSoftmax)


def test_config_validates_the_new_fields():
    Config.from_dict({"model": {"numeric_encoding": "ple", "numeric_bins": 32, "ensemble_size": 4}})
    for bad, word in (
        ({"numeric_encoding": "splines"}, "numeric_encoding"),
        ({"numeric_bins": 1}, "numeric_bins"),
        ({"ensemble_size": 0}, "ensemble_size"),
        ({"ensemble_size": 2, "customer_widths": []}, "hidden layer"),
        ({"periodic_sigma": 0}, "periodic_sigma"),
        ({"split_bins": -1}, "split_bins"),
        ({"split_bins": 65}, "split_bins"),
        ({"split_bins": 2.5}, "split_bins"),
    ):
        with pytest.raises(ConfigError, match=word):
            Config.from_dict({"model": bad})
    with pytest.raises(ConfigError, match="min_epochs"):
        Config.from_dict({"training": {"min_epochs": -1}})


def test_min_epochs_holds_off_early_stopping(small_dataset):
    from finrec.training.train import validation_setup

    pipeline = FeaturePipeline(small_dataset.schema).fit(small_dataset)
    callbacks, _ = validation_setup(pipeline, small_dataset, TrainConfig(min_epochs=7), None, None)
    stopping = [c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)]
    assert len(stopping) == 1 and stopping[0].start_from_epoch == 7


def test_train_save_load_and_batch_score(tmp_path, small_dataset, small_data_dir):
    """A short real fit of PLE + a 2-member ensemble; the saved model reloads in safe mode with
    its bins, and batch scoring ranks by the one [P, k * d] product matrix."""
    from finrec.recommend.batch import score_dataset
    from finrec.recommend.recommender import Recommender

    config = Config(
        ModelConfig(
            customer_widths=(32,), product_widths=(16,), embedding_dim=8, numeric_encoding="ple", ensemble_size=2
        ),
        TrainConfig(epochs=1, batch_size=256, patience=1),
    ).validate()
    trained = fit(small_dataset, config, verbose=0)
    assert np.isfinite(trained.history["loss"]).all()
    assert trained.pipeline.customer_bins_ and trained.product_embeddings_.shape[1] == 16
    path = save_model_dir(trained, tmp_path / "model")
    loaded = load_model_dir(path).trained
    assert loaded.pipeline.customer_bins_ == trained.pipeline.customer_bins_
    inputs = loaded.pipeline.transform_customers(small_dataset.customers, small_dataset.holdings)
    emb = NumpyTower.from_keras(loaded.model)(inputs)
    np.testing.assert_allclose(
        emb, trained.customer_embeddings(small_dataset.customers, small_dataset.holdings), atol=ATOL
    )
    recommender = Recommender.load(path)
    if loaded.blend is not None:  # the default tries a tree blend: the customer side gains the trees' part
        context = recommender.context(small_dataset.customers, small_dataset.holdings)
        emb = loaded.blend.customer_vectors(emb, context.tree, context.held, loaded.product_embeddings_)
    scores = ProductIndex.from_trained(loaded).scores(emb)

    n, written = score_dataset(recommender, small_data_dir, tmp_path / "scores.parquet", k=1)
    top = pd.read_parquet(tmp_path / "scores.parquet")
    assert n == len(small_dataset.customers) and written > 0
    row = {str(c): i for i, c in enumerate(small_dataset.customers[small_dataset.schema.customers.id])}
    some = top.head(50)
    expected = np.array(
        [scores[row[c], loaded.pipeline.product_ids_.index(p)] for c, p in zip(some.customer_id, some.product_id)]
    )
    np.testing.assert_allclose(some.score.to_numpy(), expected, atol=1e-4)


def test_old_pipeline_files_load_without_bins(ple_pipeline):
    raw = ple_pipeline.to_dict()
    assert raw["customer_bins"] == ple_pipeline.customer_bins_
    del raw["customer_bins"]
    assert FeaturePipeline.from_dict(raw).customer_bins_ is None


def test_a_config_saved_before_the_new_defaults_keeps_its_old_values(tmp_path):
    # PLE, distillation and the step floor became defaults after models were saved without the
    # keys: such a config.yaml must still describe the model it trained.
    from finrec.artifacts import _load_config

    old = tmp_path / "config.yaml"
    old.write_text("model: {embedding_dim: 16}\ntraining: {epochs: 3}\n", encoding="utf-8")
    config = _load_config(old)
    assert (config.model.numeric_encoding, config.training.distill, config.training.min_steps_per_epoch) == (
        "none",
        0.0,
        0,
    )
    assert (config.model.embedding_dim, config.training.epochs) == (16, 3)
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump(Config().to_dict()), encoding="utf-8")
    assert _load_config(new) == Config()  # a config written today reads back as written


def test_split_bins_come_from_the_teacher_and_survive_save_load(tmp_path, small_dataset):
    """``model.split_bins``: the teacher's split thresholds become narrow PLE bins (the teacher is
    fitted for them even without distillation); the saved model and its numpy tower keep them."""
    from finrec.features import SPLIT_HALF_WIDTH

    base = Config(
        ModelConfig(customer_widths=(32,), product_widths=(16,), embedding_dim=8, numeric_bins=8),
        TrainConfig(epochs=1, batch_size=256, patience=1, distill=0.0, min_steps_per_epoch=0),
    )
    plain = fit(small_dataset, base.validate(), verbose=0)
    model = dataclasses.replace(base.model, split_bins=3)
    split = fit(small_dataset, dataclasses.replace(base, model=model).validate(), verbose=0)

    def narrow(edges):
        return int(np.isclose(np.diff(edges), 2 * SPLIT_HALF_WIDTH, rtol=1e-6).sum())

    assert sum(narrow(e) for e in plain.pipeline.customer_bins_) == 0
    added = [narrow(e) for e in split.pipeline.customer_bins_]
    assert sum(added) >= 3 and max(added) <= 3  # at most 3 per column
    path = save_model_dir(split, tmp_path / "model")
    loaded = load_model_dir(path).trained
    assert loaded.pipeline.customer_bins_ == split.pipeline.customer_bins_
    inputs = loaded.pipeline.transform_customers(small_dataset.customers, small_dataset.holdings)
    np.testing.assert_allclose(
        NumpyTower.from_keras(loaded.model)(inputs),
        split.customer_embeddings(small_dataset.customers, small_dataset.holdings),
        atol=ATOL,
    )
