import pytest

from finrec.config import Config
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
    ],
)
def test_invalid_configs_name_the_field(raw, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        Config.from_dict(raw)
    assert fragment in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        Config.from_yaml(tmp_path / "absent.yaml")
