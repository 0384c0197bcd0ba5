import json
import os
import shutil

import numpy as np
import pytest

from finrec.artifacts import MODEL_FILE, PIPELINE_FILE, load_model_dir, read_manifest, save_model_dir
from finrec.errors import ArtifactError


def test_roundtrip_scores_identical(model_dir, trained, small_dataset):
    loaded = load_model_dir(model_dir).trained
    customers = small_dataset.customers.iloc[:40]
    np.testing.assert_allclose(
        loaded.score(customers, small_dataset.holdings), trained.score(customers, small_dataset.holdings), atol=1e-6
    )
    assert loaded.pipeline.product_ids_ == trained.pipeline.product_ids_
    assert loaded.config == trained.config


@pytest.fixture
def copy_dir(model_dir, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(model_dir, target)
    return target


def test_truncated_model_file_refused(copy_dir):
    path = copy_dir / MODEL_FILE
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="model.keras is damaged"):
        load_model_dir(copy_dir)


def test_altered_pipeline_refused(copy_dir):
    path = copy_dir / PIPELINE_FILE
    path.write_text(path.read_text().replace('"log": true', '"log": false', 1))
    with pytest.raises(ArtifactError, match="pipeline.json is damaged or was altered"):
        load_model_dir(copy_dir)


def test_missing_manifest_and_future_format(copy_dir, tmp_path):
    manifest = json.loads((copy_dir / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format 99 is not supported"):
        read_manifest(copy_dir)
    os.remove(copy_dir / "manifest.json")
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        read_manifest(copy_dir)
    with pytest.raises(ArtifactError, match="no model directory"):
        read_manifest(tmp_path / "nothing")


def test_other_schema_refused(model_dir, small_dataset):
    other = small_dataset.schema.to_dict()
    dropped = other["customers"]["numeric"][-1]
    other["customers"]["numeric"] = [*other["customers"]["numeric"][:-1], "gross_income"]
    with pytest.raises(ArtifactError, match="different schema") as info:
        load_model_dir(model_dir, expect_schema=other)
    # The message says what differs, not only that something does (a tester had to guess).
    assert f"customers.numeric: the model's only '{dropped}', the data's only 'gross_income'" in str(info.value)


def test_schema_differences_name_each_place():
    from finrec.data.schema import schema_differences

    model = {"customers": {"id": "cid", "numeric": ["age", "income"], "risk": "rt"}, "products": {"id": "pid"}}
    data = {"customers": {"id": "cid", "numeric": ["income", "age"], "risk": None}, "products": {"id": "product"}}
    text = schema_differences(model, data)
    assert "customers.numeric: the same columns in another order" in text
    assert "customers.risk: the model's 'rt', the data's None" in text
    assert "products.id: the model's 'pid', the data's 'product'" in text
    many = {"t": {f"c{i}": i for i in range(9)}}
    assert schema_differences(many, {"t": {}}, limit=2).endswith("(and 7 more)")
    assert schema_differences(model, model) == ""


def test_a_model_refuses_data_of_another_schema_but_not_a_value_column_named_later():
    """One check for Recommender.load, monitor and report (written out three times before)."""
    from dataclasses import replace

    from finrec.data import schema as S
    from finrec.errors import SchemaError

    model = S.SYNTHETIC.schema()
    valued = replace(model, products=replace(model.products, value="margin"))
    S.check_model_schema(model, valued, "d", "m")  # campaign data, no model input
    shrunk = replace(model, customers=replace(model.customers, numeric=model.customers.numeric[1:]))
    with pytest.raises(
        SchemaError, match=r"^d: its schema differs from the one model m was trained on: customers\.numeric"
    ):
        S.check_model_schema(model, shrunk, "d", "m")


def test_a_model_trained_with_a_value_column_takes_data_without_it(trained, small_data_dir, tmp_path):
    """The value column is campaign data either way round: a model trained with ``products.value``
    was refused by score, evaluate, plan and Ray on data that no longer names it (a reviewer),
    while recommend, serve and monitor took it (``check_model_schema`` leaves it out of both)."""
    import copy
    from dataclasses import replace

    from finrec.artifacts import expected_schema, load_model_dir, save_model_dir
    from finrec.data.io import read_schema

    valued = copy.copy(trained)
    valued.pipeline = copy.copy(trained.pipeline)
    schema = trained.pipeline.full_schema
    valued.pipeline.full_schema = replace(schema, products=replace(schema.products, value="margin"))
    model = save_model_dir(valued, tmp_path / "valued")
    data = read_schema(small_data_dir)
    assert data.products.value is None
    load_model_dir(model, expect_schema=expected_schema(model, data))  # no refusal
    other = replace(data, customers=replace(data.customers, numeric=data.customers.numeric[1:]))
    with pytest.raises(ArtifactError, match="different schema"):
        load_model_dir(model, expect_schema=expected_schema(model, other))


def test_overwrite_is_atomic_and_keeps_old_on_failure(trained, tmp_path, monkeypatch):
    target = save_model_dir(trained, tmp_path / "m")
    before = (target / "manifest.json").read_text()

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(trained.model), "save", explode)
    with pytest.raises(RuntimeError):
        save_model_dir(trained, target)
    assert (target / "manifest.json").read_text() == before
    load_model_dir(target)  # still loadable
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp directory left behind


def test_a_config_saved_before_a_default_changed_keeps_the_old_value(tmp_path):
    # A model directory's config.yaml written before a key existed trained with the old default;
    # reading it must not silently take today's (retraining from it would change the model).
    from finrec.artifacts import DEFAULTS_BEFORE, _load_config
    from finrec.config import Config

    old = tmp_path / "config.yaml"
    old.write_text("model: {embedding_dim: 32}\ntraining: {epochs: 7}\n")
    loaded = _load_config(old)
    for section, values in DEFAULTS_BEFORE.items():
        for key, value in values.items():
            assert getattr(getattr(loaded, section), key) == value, (section, key)
    assert loaded.training.epochs == 7 and loaded.training.holdings_dropout == 0.0
    assert Config().training.holdings_dropout == 0.1  # today's default differs: the case that matters
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("model: {embedding_dim: 32}\ntraining: {holdings_dropout: 0.3}\n")
    assert _load_config(explicit).training.holdings_dropout == 0.3


def test_a_registry_a_version_or_a_dataset_given_as_the_model_says_where_the_model_is(tmp_path):
    # A tester's monthly cycle passed each as --model and was told only "manifest.json is missing".
    from finrec.artifacts import ArtifactError, read_manifest

    version = tmp_path / "reg" / "versions" / "v0002"
    (version / "model").mkdir(parents=True)
    (version / "model" / "manifest.json").write_text("{}")
    (tmp_path / "reg" / "registry.json").write_text("{}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "schema.yaml").write_text("customers: {}")
    (tmp_path / "other").mkdir()
    expected = {
        version: f"the model is {version / 'model'}",
        tmp_path / "reg": "is a model registry: pass --root",
        tmp_path / "data": "pass it as --data",
        tmp_path / "other": "(manifest.json is missing)",
    }
    for path, hint in expected.items():
        with pytest.raises(ArtifactError) as error:
            read_manifest(path)
        assert hint in str(error.value), str(error.value)


def test_a_hidden_system_file_in_a_model_directory_does_not_block_a_retraining(tmp_path):
    """A reviewer: .DS_Store or a notebook's checkpoints beside a model made a retraining into it
    exit 2 ("holds entries not part of it"); they are the system's, and a user's file still is."""
    from finrec.artifacts import MANIFEST, model_files
    from finrec.atomic import check_writable
    from finrec.errors import FinrecError

    model = tmp_path / "m"
    model.mkdir()
    (model / MANIFEST).write_text("{}")
    (model / ".DS_Store").write_text("")
    check_writable(model, "directory", marker=MANIFEST, owned=model_files)
    (model / "notes.txt").write_text("mine")
    with pytest.raises(FinrecError, match="'notes.txt'"):
        check_writable(model, "directory", marker=MANIFEST, owned=model_files)
