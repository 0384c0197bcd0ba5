"""One typed configuration for model and training, validated once where it enters.

A config file is YAML with two optional sections; anything left out takes the default below::

    model:    {embedding_dim: 32, customer_widths: [128, 64], cross_layers: 0, ...}
    training: {loss: softmax, temperature: 0.1, epochs: 30, ...}

The defaults are the configuration the quality study picked (``docs/benchmarks.md``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from finrec.errors import ConfigError, reject_unknown, safe_text
from finrec.safeyaml import load_yaml

LOSSES = ("softmax", "in_batch", "sampled", "triplet")
HISTORY_ENCODERS = ("events", "flat", "gru", "none")  # finrec.history_features.ENCODERS
NUMERIC_ENCODINGS = ("none", "ple", "periodic")
MONITORS = ("ndcg", "loss")
TREE_BLENDS = ("auto", "always", "never")  # not on/off: YAML reads those as booleans
# Keras' set_random_seed and numpy's legacy generators take seeds below 2**32 only.
MAX_SEED = 2**32 - 1
# Bounds on the towers' shapes: far above any size that helps, far below one that exhausts memory.
MAX_WIDTH = 8192
MAX_LAYERS = 8
DEFAULT_NUMERIC_BINS = 32  # the default model's PLE bins, which a feature pipeline fits unless told


@dataclass(frozen=True)
class ModelConfig:
    """Tower shapes. Both towers map into one ``embedding_dim`` space, L2-normalized.

    ``numeric_encoding``: how the customer tower sees numeric columns: ``none`` (standardized
    values), ``ple`` (piecewise-linear encoding over ``numeric_bins`` quantile bins) or
    ``periodic`` (``periodic_frequencies`` trainable frequencies, initial scale
    ``periodic_sigma``), each then mapped per column to ``numeric_embedding_dim`` values.
    ``ensemble_size`` k > 1: k members sharing the hidden layers (TabM-mini); the exported
    embeddings are k * ``embedding_dim`` wide and score as the members' mean cosine."""

    embedding_dim: int = 32
    customer_widths: tuple[int, ...] = (128, 64)
    product_widths: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    cross_layers: int = 0
    max_categorical_embedding_dim: int = 8
    product_id_embedding_dim: int = 16
    use_holdings: bool = True
    exclude_protected: bool = False
    # holdings_history (when the data has one): the last ``history_lags`` snapshots, encoded by
    # ``history_encoder`` (events per product, the block flattened, a GRU over snapshots, none).
    history_lags: int = 6
    history_encoder: str = "events"
    # > 0: the product-id embedding is dropped for that share of products in training and is
    # zero for products without training adoptions (new products rank by their attributes).
    product_id_dropout: float = 0.0
    numeric_encoding: str = "ple"
    numeric_bins: int = DEFAULT_NUMERIC_BINS
    # > 0 with PLE: each numeric column also gets a narrow bin (a step) at each of the tree
    # teacher's ``split_bins`` most useful split thresholds on it (the teacher is fitted for them
    # when distillation is off), so a rule's threshold (age 25, an income floor) is a step the
    # tower can take exactly. Off: on the six development banks 8 changed nothing beyond noise.
    split_bins: int = 0
    numeric_embedding_dim: int = 8
    periodic_frequencies: int = 16
    periodic_sigma: float = 0.1
    ensemble_size: int = 1
    # The tree teacher's log-probabilities blended into the scores (finrec.training.trees.TreeBlend),
    # with a weight the validation customers choose (0: no blend). ``always`` (the default): tried
    # on every bank; on the six development banks it never lost and gained up to +0.005 nDCG@5,
    # and with a history +0.005 to +0.007 out of time. The cost is the trees' walk at scoring
    # (batch scoring about 6x slower). ``auto``: only where the data has a holdings_history the
    # model reads; ``never``: the towers alone, at full batch speed.
    tree_blend: str = "always"

    def __post_init__(self) -> None:
        _type_fields(self, "model")

    def validate(self) -> None:
        _positive(self.embedding_dim, "model.embedding_dim", MAX_WIDTH)
        _choice(self.numeric_encoding, NUMERIC_ENCODINGS, "model.numeric_encoding")
        for name in ("numeric_bins", "numeric_embedding_dim", "periodic_frequencies", "ensemble_size"):
            _positive(getattr(self, name), f"model.{name}", MAX_WIDTH)
        if self.numeric_bins < 2 or self.numeric_bins > 256:
            raise ConfigError(f"model.numeric_bins must lie in [2, 256], got {self.numeric_bins}")
        if not isinstance(self.split_bins, int) or not 0 <= self.split_bins <= 64:
            raise ConfigError(f"model.split_bins must be an integer from 0 to 64, got {self.split_bins!r}")
        if self.ensemble_size > 32:
            raise ConfigError(f"model.ensemble_size must be at most 32, got {self.ensemble_size}")
        if not self.periodic_sigma > 0:
            raise ConfigError(f"model.periodic_sigma must be > 0, got {self.periodic_sigma}")
        if self.ensemble_size > 1 and not (self.customer_widths and self.product_widths):
            raise ConfigError("model.ensemble_size > 1 needs at least one hidden layer in each tower (the shared part)")
        for name in ("customer_widths", "product_widths"):
            widths = getattr(self, name)
            if len(widths) > MAX_LAYERS:
                raise ConfigError(f"model.{name} may have at most {MAX_LAYERS} hidden layers, got {len(widths)}")
            for width in widths:
                _positive(width, f"model.{name}", MAX_WIDTH)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must lie in [0, 1), got {self.dropout}")
        cross = self.cross_layers
        if isinstance(cross, bool) or not isinstance(cross, int) or not 0 <= cross <= MAX_LAYERS:
            raise ConfigError(
                f"model.cross_layers must be an integer from 0 to {MAX_LAYERS}, got {safe_text(cross, quote=True)}"
            )
        _positive(self.max_categorical_embedding_dim, "model.max_categorical_embedding_dim", MAX_WIDTH)
        _positive(self.product_id_embedding_dim, "model.product_id_embedding_dim", MAX_WIDTH)
        _choice(self.history_encoder, HISTORY_ENCODERS, "model.history_encoder")
        _choice(self.tree_blend, TREE_BLENDS, "model.tree_blend")
        if not isinstance(self.history_lags, int) or not 1 <= self.history_lags <= 24:
            raise ConfigError(f"model.history_lags must be an integer from 1 to 24, got {self.history_lags!r}")
        if not 0.0 <= self.product_id_dropout < 1.0:
            raise ConfigError(f"model.product_id_dropout must lie in [0, 1), got {self.product_id_dropout}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. ``loss`` is one of softmax (over the whole catalogue), in_batch or sampled
    (negatives with logQ correction and accidental-hit removal) or triplet (hard negatives).
    ``ema_momentum`` > 0 keeps an exponential moving average of the weights, which validation
    judges and the saved model uses (0 turns it off). Early stopping never ends training before
    ``min_epochs`` (on a small bank an epoch is a handful of steps and the first epochs' scores
    are noise)."""

    loss: str = "softmax"
    temperature: float = 0.1
    num_negatives: int = 8
    margin: float = 0.2
    hard_negatives: int = 1
    # At most 30 (early stopping ends most runs sooner): the bound that keeps a 30k-customer bank
    # under a minute on 2 cores (30 epochs x ~1.6 s + the teacher). Every stored run of the
    # default had its best epoch at or before 30, and the best weights are what training keeps.
    epochs: int = 30
    batch_size: int = 512
    learning_rate: float = 0.005
    weight_decay: float = 0.0001
    ema_momentum: float = 0.99
    patience: int = 5
    min_epochs: int = 0
    validation_fraction: float = 0.1
    monitor: str = "ndcg"
    eval_k: int = 5
    seed: int = 0
    # Cold start: zero the holdings and history of this share of the training rows (in the model,
    # so every feed gets it), so that customers with nothing held are a case it has learned.
    # 0.1 (issue 13): the default bank's loss when holdings are withheld fell from 0.049 to 0.015
    # nDCG@5 (LightGBM: 0.036), and the six development banks moved -0.001 to +0.006.
    holdings_dropout: float = 0.1
    # > 0: the loss also matches a gradient-boosted teacher's adoption distribution per customer
    # (knowledge distillation), with this weight; the label's term keeps 1 - weight.
    distill: float = 0.8
    # On small data the batch shrinks (to no fewer than 32 examples) so that an epoch has at
    # least this many steps: with 5k customers and batch 512 an epoch was 7 steps, and the
    # weight average and early stopping judged a model that had barely moved (0 turns it off).
    min_steps_per_epoch: int = 50
    # With a holdings_history, the adds of this many earlier months (one per snapshot, back from
    # the latest) are training examples too, with the features the customers had then
    # (``history_features.earlier_months``); the validation customers' months never train.
    # 6 (issue 13; docs/benchmarks.md): on the bank with a past at the real data's size, 3 seeds,
    # +0.025 to +0.033 nDCG@5 out of time and +0.017 to +0.043 by customer over 0.
    history_months: int = 6

    def __post_init__(self) -> None:
        _type_fields(self, "training")

    def validate(self) -> None:
        _choice(self.loss, LOSSES, "training.loss")
        _choice(self.monitor, MONITORS, "training.monitor")
        if not self.temperature > 0:
            raise ConfigError(f"training.temperature must be > 0, got {self.temperature}")
        for name in ("num_negatives", "hard_negatives", "epochs", "batch_size", "patience", "eval_k"):
            _positive(getattr(self, name), f"training.{name}")
        if not self.learning_rate > 0:
            raise ConfigError(f"training.learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0 or self.margin < 0:
            raise ConfigError("training.weight_decay and training.margin must be >= 0")
        if isinstance(self.min_epochs, bool) or not isinstance(self.min_epochs, int) or self.min_epochs < 0:
            raise ConfigError(f"training.min_epochs must be an integer >= 0, got {self.min_epochs!r}")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ConfigError(f"training.ema_momentum must lie in [0, 1), got {self.ema_momentum}")
        if not 0.0 <= self.holdings_dropout < 1.0:
            raise ConfigError(f"training.holdings_dropout must lie in [0, 1), got {self.holdings_dropout}")
        if (
            isinstance(self.min_steps_per_epoch, bool)
            or not isinstance(self.min_steps_per_epoch, int)
            or self.min_steps_per_epoch < 0
        ):
            raise ConfigError(f"training.min_steps_per_epoch must be an integer >= 0, got {self.min_steps_per_epoch!r}")
        if (
            isinstance(self.history_months, bool)
            or not isinstance(self.history_months, int)
            or not 0 <= self.history_months <= 24
        ):
            raise ConfigError(f"training.history_months must be an integer from 0 to 24, got {self.history_months!r}")
        if not 0.0 <= self.distill < 1.0:
            raise ConfigError(f"training.distill must lie in [0, 1), got {self.distill}")
        if not 0.0 < self.validation_fraction < 0.5:
            raise ConfigError(f"training.validation_fraction must lie in (0, 0.5), got {self.validation_fraction}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"training.seed must be an integer from 0 to {MAX_SEED}, got {self.seed!r}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name, kind in (("model", ModelConfig), ("training", TrainConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(
                    f"Config.{name} must be a {kind.__name__} (a mapping of settings goes through "
                    f"Config.from_dict), got {type(getattr(self, name)).__name__}"
                )

    def validate(self) -> Config:
        self.model.validate()
        self.training.validate()
        return self

    def with_overrides(self, **training: Any) -> Config:
        """A copy with some training fields replaced (the CLI's --epochs, --seed)."""
        changes = {k: v for k, v in training.items() if v is not None}
        reject_unknown(changes, {f.name for f in fields(TrainConfig)}, "training overrides", ConfigError)
        if not changes:
            return self
        return dataclasses.replace(self, training=dataclasses.replace(self.training, **changes)).validate()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": _plain(dataclasses.asdict(self.model)),
            "training": _plain(dataclasses.asdict(self.training)),
        }

    @classmethod
    def from_dict(cls, raw: Any, source: str = "config") -> Config:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping with sections 'model' and 'training'")
        reject_unknown(raw, {"model", "training"}, source, ConfigError)
        model = _section(ModelConfig, raw.get("model") or {}, f"{source}: model")
        training = _section(TrainConfig, raw.get("training") or {}, f"{source}: training")
        return cls(model=model, training=training).validate()

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        path = Path(path)
        try:
            raw = load_yaml(path, ConfigError)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        return cls.from_dict(raw, source=str(path))


def env_switch(name: str) -> bool | None:
    """An on/off environment variable: ``1`` on, ``0`` off, unset or empty None (the caller's
    default). Anything else is refused naming the variable: ``true`` read as off left a service's
    rules unenforced without a word (a reviewer)."""
    value = os.environ.get(name, "").strip()
    if value in ("", "0", "1"):
        return None if value == "" else value == "1"
    raise ConfigError(f"{name} must be 1 (on) or 0 (off), got {safe_text(value, quote=True)}")


def checked(config: Any) -> Config:
    """The validated config a training entry point was given (None: the defaults)."""
    if config is None:
        return Config().validate()
    if not isinstance(config, Config):
        raise ConfigError(
            f"config must be a finrec.config.Config (Config.from_dict / Config.from_yaml read one), "
            f"got {type(config).__name__}"
        )
    config = config.validate()
    training = config.training
    if training.min_epochs > training.epochs:
        # Accepted, the run ended at ``epochs`` with early stopping silently off. Checked where a
        # training starts, not in ``validate``: a saved model's config is read back through it,
        # and models trained so before still load.
        raise ConfigError(
            f"training.min_epochs ({training.min_epochs}) is more than training.epochs ({training.epochs}): "
            "training never runs that long; lower min_epochs or raise epochs"
        )
    return config


def _type_fields(section: Any, where: str) -> None:
    """Each field of a config section as its annotation says (``_coerce``, as a file's values
    are read): built in Python with a wrong type, a field failed later as a bare TypeError
    (``dropout="0.1"``), or passed and meant something else (``use_holdings="no"`` is true,
    ``cross_layers=1.5``); numpy numbers and arrays become Python's."""
    hints = typing.get_type_hints(type(section))
    for f in fields(section):
        value = getattr(section, f.name)
        typed = _coerce(value, hints[f.name], f"{where}.{f.name}")
        if typed is not value:
            object.__setattr__(section, f.name, typed)


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _positive(value: Any, name: str, most: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {safe_text(value, quote=True)}")
    if most is not None and value > most:
        # Far above any useful size, and well before a fit that runs out of memory with an
        # allocator's traceback (a tester's item: no bound on embedding_dim or cross_layers).
        raise ConfigError(f"{name} must be at most {most}, got {value}")


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {safe_text(value, quote=True)}")


# YAML 1.1 (PyYAML) reads 1e-3 as text (its floats need a dot and a signed exponent); YAML 1.2
# and every user read it as a number, so a number field takes it as one.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _section(kind: type, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {safe_text(raw, quote=True)}")
    known = {f.name: f for f in fields(kind)}
    reject_unknown(raw, known, where, ConfigError)
    hints = typing.get_type_hints(kind)
    values = {}
    for key, value in raw.items():
        values[key] = _coerce(value, hints[key], f"{where}.{key}")
    return kind(**values)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    if isinstance(value, np.generic):
        value = value.item()  # a numpy number or bool (a notebook's np.int64(64)) as Python's
    elif isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {safe_text(value, quote=True)}")
        return tuple(_coerce(v, typing.get_args(hint)[0], name) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {safe_text(value, quote=True)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {safe_text(value, quote=True)}")
        return value
    if hint is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {safe_text(value, quote=True)}")
        if not math.isfinite(value):
            # YAML's .nan / .inf: the range checks below compare false with NaN and let it through.
            raise ConfigError(f"{name}: expected a finite number, got {value}")
        return float(value)
    if hint is str:
        if isinstance(value, bool):  # YAML 1.1 reads unquoted on/off/yes/no as booleans
            raise ConfigError(f"{name}: expected text, got the boolean {value} (quote a value such as 'on' or 'no')")
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected text, got {safe_text(value, quote=True)}")
        return value
    if isinstance(hint, types.UnionType):  # pragma: no cover - no optional fields yet
        return value
    return value
