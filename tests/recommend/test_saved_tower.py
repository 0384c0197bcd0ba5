"""The customer tower read from a saved model without Keras: the same numpy tower as from Keras."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from towers_util import randomize_batchnorm  # tests/towers_util.py

from finrec.artifacts import ServingModel, _check_saved_tower, _read_customer_tower, load_model_dir
from finrec.config import ModelConfig
from finrec.errors import ArtifactError
from finrec.features import FeaturePipeline
from finrec.model.two_tower import build_two_tower, towers_of
from finrec.recommend.index import NumpyTower
from finrec.recommend.recommender import Recommender

SRC = Path(__file__).resolve().parents[2] / "src"


def same_tower(a: NumpyTower, b: NumpyTower) -> None:
    """Bit for bit: the folded kernels, the input layout and the flops."""
    assert len(a.layers) == len(b.layers) and all(np.array_equal(x, y) for x, y in zip(a.layers, b.layers))
    assert (a.input_width, a.flops, a.members, a.bag is None) == (b.input_width, b.flops, b.members, b.bag is None)
    assert [(p.input, p.kind, p.columns) for p in a.parts] == [(p.input, p.kind, p.columns) for p in b.parts]
    for p, q in zip(a.parts, b.parts):
        assert (p.table is None and q.table is None) or np.array_equal(p.table, q.table)


@pytest.mark.parametrize("widths, holdings", [((32, 16), True), ((), False)])
def test_saved_standard_tower_folds_like_keras(tmp_path, small_dataset, widths, holdings):

    pipeline = FeaturePipeline(small_dataset.schema, use_holdings=holdings).fit(small_dataset)
    config = ModelConfig(customer_widths=widths, product_widths=(16,), embedding_dim=8, dropout=0.2)
    model = build_two_tower(pipeline, pipeline.transform_products(small_dataset.products), config)
    randomize_batchnorm(towers_of(model)[0], np.random.default_rng(3))
    model.save(tmp_path / "model.keras")
    spec = _read_customer_tower(tmp_path / "model.keras")
    assert spec is not None and spec.catalogue == pipeline.n_products
    same_tower(NumpyTower.from_spec(spec), NumpyTower.from_keras(model))
    _check_saved_tower(spec, pipeline.customer_input_spec(), 8)
    with pytest.raises(ArtifactError, match="does not fit"):
        _check_saved_tower(spec, pipeline.customer_input_spec(), 16)


def test_saved_ple_tower_reads_without_keras_and_scores_like_it(tmp_path, small_dataset):
    # The piecewise-linear encoding is finrec's own layer: the reader rebuilds its numpy twin from
    # the bins in config.json and the weights, as from_keras does from the live layer.
    pipeline = FeaturePipeline(small_dataset.schema, numeric_bins=8).fit(small_dataset)
    config = ModelConfig(customer_widths=(16,), product_widths=(16,), embedding_dim=8, numeric_encoding="ple")
    model = build_two_tower(pipeline, pipeline.transform_products(small_dataset.products), config)
    randomize_batchnorm(towers_of(model)[0], np.random.default_rng(4))
    model.save(tmp_path / "model.keras")
    spec = _read_customer_tower(tmp_path / "model.keras")
    assert spec is not None
    fast, slow = NumpyTower.from_spec(spec), NumpyTower.from_keras(model)
    same_tower(fast, slow)
    inputs = pipeline.transform_customers(small_dataset.customers.head(200), small_dataset.holdings)
    np.testing.assert_array_equal(fast(inputs), slow(inputs))
    _check_saved_tower(spec, pipeline.customer_input_spec(), 8)


def test_a_tower_keras_must_read_is_left_to_keras(tmp_path, small_dataset):
    pipeline = FeaturePipeline(small_dataset.schema).fit(small_dataset)
    config = ModelConfig(customer_widths=(16,), product_widths=(16,), embedding_dim=8, cross_layers=1)
    build_two_tower(pipeline, pipeline.transform_products(small_dataset.products), config).save(tmp_path / "m.keras")
    assert _read_customer_tower(tmp_path / "m.keras") is None  # a CrossLayer: registered, not standard
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(tmp_path / "m.keras") as source, zipfile.ZipFile(broken, "w") as target:
        target.writestr("config.json", json.dumps({"config": {"layers": "not a list"}}))
        target.writestr("model.weights.h5", source.read("model.weights.h5"))
    assert _read_customer_tower(broken) is None
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    assert _read_customer_tower(tmp_path / "junk.keras") is None


def test_a_model_directory_without_keras_serves_the_same(model_dir, small_dataset):
    served = load_model_dir(model_dir, keras_model=False).trained
    assert isinstance(served, ServingModel) and served.model is None
    keras_loaded = load_model_dir(model_dir).trained
    fast, slow = Recommender(served), Recommender(keras_loaded)
    same_tower(fast.tower, slow.tower)
    customers = small_dataset.customers.head(300)
    holdings = small_dataset.holdings[small_dataset.holdings["customer_id"].isin(customers["customer_id"])]
    a, b = fast.context(customers, holdings), slow.context(customers, holdings)
    np.testing.assert_array_equal(fast.probabilities(a), slow.probabilities(b))


def test_loading_and_batch_scoring_on_the_numpy_tower_import_no_keras(model_dir, small_data_dir, tmp_path):
    # finrec score and plan skip TensorFlow's import (~10 s): the link-table reader batch scoring
    # shares with the streamed trainer (finrec.data.links) once came from the trainer's Keras
    # module and brought it back.
    code = (
        "import sys; from finrec.artifacts import load_model_dir; from finrec.recommend.recommender import Recommender;"
        "from finrec.recommend.batch import score_dataset;"
        f"rec = Recommender(load_model_dir({str(model_dir)!r}, keras_model=False).trained);"
        f"assert score_dataset(rec, {str(small_data_dir)!r}, {str(tmp_path / 'top.parquet')!r}, k=2)[1] > 0;"
        "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules, 'Keras was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    "layer, cut",
    [
        ("customer_tower_emb_customer_cat_0", 0),
        ("customer_tower_bn_0", 0),
        ("customer_tower_output", 1),
        ("customer_tower_numemb_customer_numeric", 0),
    ],
    ids=["short_embedding_table", "short_batchnorm_vector", "short_bias", "short_ple_kernel"],
)
def test_saved_weights_of_another_shape_are_left_to_keras(tmp_path, small_dataset, layer, cut):
    """A resealed model.keras whose weights no longer fit its config: Keras refuses it, and the
    reader without Keras must not serve it (a vector of length 1 would broadcast into wrong scores)."""
    import io

    import h5py

    pipeline = FeaturePipeline(small_dataset.schema, numeric_bins=8).fit(small_dataset)
    config = ModelConfig(customer_widths=(16,), product_widths=(16,), embedding_dim=8, numeric_encoding="ple")
    model = build_two_tower(pipeline, pipeline.transform_products(small_dataset.products), config)
    path = tmp_path / "model.keras"
    model.save(path)
    assert _read_customer_tower(path) is not None
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    buffer = io.BytesIO(files["model.weights.h5"])
    with h5py.File(buffer, "r+") as store:
        (tower,) = [g for g in store["layers"].values() if g["vars"].attrs.get("name") == "customer_tower"]
        (group,) = [g for g in tower["layers"].values() if g["vars"].attrs.get("name") == layer]
        name = str(cut) if str(cut) in group["vars"] else "0"
        values = np.asarray(group["vars"][name])
        del group["vars"][name]
        group["vars"][name] = values[:1]
    files["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    assert _read_customer_tower(path) is None
