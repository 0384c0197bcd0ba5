import pytest

from finrec.config import Config, ModelConfig, TrainConfig
from finrec.errors import ConfigError


def test_defaults_validate_and_roundtrip():
    config = Config().validate()
    assert Config.from_dict(config.to_dict()) == config


def test_yaml_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {customer_widths: [32, 16], cross_layers: 1}\ntraining: {loss: triplet, epochs: 2}\n")
    config = Config.from_yaml(path)
    assert config.model.customer_widths == (32, 16) and config.training.loss == "triplet"


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"training": {"los": "softmax"}}, "did you mean 'loss'"),
        ({"training": {"loss": "hinge"}}, "training.loss must be one of"),
        ({"model": {"embedding_dim": 0}}, "model.embedding_dim"),
        ({"model": {"dropout": 1.5}}, "model.dropout"),
        ({"model": {"customer_widths": 64}}, "expected a list"),
        ({"training": {"epochs": "ten"}}, "expected an integer"),
        ({"optimizer": {}}, "unknown key 'optimizer'"),
        ({"training": {"history_months": -1}}, "training.history_months must be an integer from 0 to 24, got -1"),
        ({"training": {"history_months": 2.5}}, "expected an integer"),
        ({"training": {"history_months": 25}}, "training.history_months must be an integer from 0 to 24, got 25"),
        # NaN compares false with every range check, so it passed them and trained a NaN model.
        ({"training": {"weight_decay": float("nan")}}, "training.weight_decay: expected a finite number, got nan"),
        ({"training": {"margin": float("nan")}}, "training.margin: expected a finite number"),
        ({"training": {"learning_rate": float("inf")}}, "training.learning_rate: expected a finite number, got inf"),
        ({"training": {"temperature": "1e999"}}, "training.temperature: expected a finite number"),
        ({"model": {"periodic_sigma": float("inf")}}, "model.periodic_sigma: expected a finite number"),
        # Keras and numpy refused these only once training had begun, as an internal error.
        ({"training": {"seed": -1}}, "training.seed must be an integer from 0 to 4294967295, got -1"),
        ({"training": {"seed": 2**32}}, "training.seed must be an integer from 0 to 4294967295, got 4294967296"),
        # A size far past any use ran out of memory inside the fit with the allocator's traceback.
        ({"model": {"embedding_dim": 10**7}}, "model.embedding_dim must be at most 8192, got 10000000"),
        ({"model": {"customer_widths": [64, 10**6]}}, "model.customer_widths must be at most 8192, got 1000000"),
        ({"model": {"product_widths": [8] * 9}}, "model.product_widths may have at most 8 hidden layers, got 9"),
        ({"model": {"cross_layers": 1000}}, "model.cross_layers must be an integer from 0 to 8, got 1000"),
        ({"model": {"cross_layers": -1}}, "model.cross_layers must be an integer from 0 to 8, got -1"),
        ({"model": {"numeric_embedding_dim": 10**5}}, "model.numeric_embedding_dim must be at most 8192"),
    ],
)
def test_invalid_configs_name_the_field(raw, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        Config.from_dict(raw)
    assert fragment in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        Config.from_yaml(tmp_path / "absent.yaml")


def test_yaml_exponent_numbers_are_numbers(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-3 as the text '1e-3'; it was refused as "expected a number".
    path = tmp_path / "c.yaml"
    path.write_text("training: {learning_rate: 1e-3, weight_decay: 5E-5, temperature: .5e+0}\n")
    training = Config.from_yaml(path).training
    assert (training.learning_rate, training.weight_decay, training.temperature) == (0.001, 5e-5, 0.5)
    path.write_text("training: {learning_rate: 1e-3x}\n")
    with pytest.raises(ConfigError, match="training.learning_rate: expected a number"):
        Config.from_yaml(path)


@pytest.mark.parametrize(
    "build, fragment",
    [
        (lambda: ModelConfig(dropout="0.1"), "model.dropout: expected a number, got '0.1'"),  # was a bare TypeError
        (lambda: ModelConfig(customer_widths=64), "model.customer_widths: expected a list, got 64"),
        (lambda: TrainConfig(learning_rate=None), "training.learning_rate: expected a number, got None"),
        # These passed and meant something else: 'no' is a true string, 1.5 cross layers.
        (lambda: ModelConfig(use_holdings="no"), "model.use_holdings: expected true or false, got 'no'"),
        (lambda: ModelConfig(cross_layers=1.5), "model.cross_layers: expected an integer, got 1.5"),
        (lambda: Config(model={"embedding_dim": 8}), "Config.model must be a ModelConfig.*Config.from_dict"),
        (lambda: Config().with_overrides(epoch=3), "unknown key 'epoch' \\(did you mean 'epochs'\\?\\)"),
    ],
)
def test_a_config_built_in_python_is_typed_as_a_files_is(build, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build()


def test_numpy_numbers_and_arrays_in_a_config_are_the_plain_values():
    # A notebook's np.int64(16) was "must be a positive integer, got 16".
    import numpy as np

    got = Config(
        model=ModelConfig(embedding_dim=np.int64(16), customer_widths=np.array([64, 32]), use_holdings=np.bool_(True)),
        training=TrainConfig(epochs=np.int64(3), learning_rate=np.float32(0.5)),
    ).validate()
    plain = Config(
        model=ModelConfig(embedding_dim=16, customer_widths=(64, 32)), training=TrainConfig(epochs=3, learning_rate=0.5)
    )
    assert got == plain and Config.from_dict(got.to_dict()) == plain


def test_fit_names_a_config_or_dataset_of_the_wrong_kind(small_dataset):
    from finrec.errors import DataError
    from finrec.training.train import fit

    with pytest.raises(ConfigError, match="config must be a finrec.config.Config.*got dict"):
        fit(small_dataset, {"training": {"epochs": 1}})  # was AttributeError: 'dict' ... 'validate'
    with pytest.raises(DataError, match="dataset must be a finrec Dataset.*got dict"):
        fit({"customers": None}, None)


def test_the_readme_config_block_is_every_key_at_its_default():
    # README's config block is read as the list of keys and their defaults: a default changed
    # here, or a key added, must show there.
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if b.startswith("model:"))
    raw = yaml.safe_load(block)
    assert Config.from_dict(raw) == Config()
    assert {k: set(v) for k, v in raw.items()} == {k: set(v) for k, v in Config().to_dict().items()}


def test_min_epochs_above_epochs_is_refused_where_training_starts_and_an_old_models_config_still_reads(
    small_data_dir, tmp_path, capsys
):
    """Accepted, such a run ended at ``epochs`` with early stopping silently off: ``checked`` (every
    trainer's entry) and ``finrec train`` refuse it, before the data is read, naming both, for a
    file's values and an ``--epochs`` override alike. ``Config.from_dict`` still reads it: a model
    trained so before is loaded through it (a reviewer: models that loaded stopped loading)."""
    from finrec.cli import main
    from finrec.config import checked

    old = Config.from_dict({"training": {"epochs": 5, "min_epochs": 10}})  # a saved model's config
    with pytest.raises(ConfigError, match=r"training.min_epochs \(10\) is more than training.epochs \(5\)"):
        checked(old)
    config = Config.from_dict({"training": {"min_epochs": 10}})
    assert checked(config.with_overrides(epochs=10)).training.epochs == 10  # equal is fine
    with pytest.raises(ConfigError, match=r"min_epochs \(10\) is more than training.epochs \(3\)"):
        checked(config.with_overrides(epochs=3))
    path = tmp_path / "c.yaml"
    path.write_text("training: {min_epochs: 10}\n")
    out = tmp_path / "m"
    argv = ["train", "--data", str(small_data_dir), "--out", str(out), "--config", str(path), "--epochs", "3"]
    assert main(argv) == 2
    assert "training.min_epochs (10) is more than training.epochs (3)" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("value, expected", [("1", True), (" 1 ", True), ("0", False), ("", None), (None, None)])
def test_an_on_off_environment_variable_reads_1_0_or_unset(monkeypatch, value, expected):
    from finrec.config import env_switch

    if value is None:
        monkeypatch.delenv("FINREC_TEST_SWITCH", raising=False)
    else:
        monkeypatch.setenv("FINREC_TEST_SWITCH", value)
    assert env_switch("FINREC_TEST_SWITCH") is expected


@pytest.mark.parametrize("value", ["true", "yes", "on", "2", "1x"])
def test_any_other_value_of_an_on_off_variable_is_refused_naming_it(monkeypatch, value):
    """``true`` read as off left a service's rules unenforced without a word (a reviewer)."""
    from finrec.config import env_switch

    monkeypatch.setenv("FINREC_TEST_SWITCH", value)
    with pytest.raises(ConfigError, match=f"FINREC_TEST_SWITCH must be 1 \\(on\\) or 0 \\(off\\), got '{value}'"):
        env_switch("FINREC_TEST_SWITCH")
