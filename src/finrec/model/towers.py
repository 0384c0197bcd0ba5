"""Customer and product towers: Functional-API ``keras.Model``s from feature inputs to one
L2-normalized embedding space.

Both towers share one shape (``tower``)::

    inputs -> [numeric | categorical embeddings | extra embeddings] -> concat
           -> (CrossLayer x cross_layers) -> (Dense -> BatchNorm -> ReLU -> Dropout) x widths
           -> Dense(embedding_dim) -> UnitNormalization

Layer names are stable (``<tower>_dense_<i>``, ``<tower>_bn_<i>``, ...): the fast numpy
inference path (``finrec.recommend.index``) reads weights by them.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from finrec.config import ModelConfig
from finrec.model.ensemble import MemberDense, MemberInput, MemberNormalize
from finrec.model.history import HISTORY_KINDS, ColdStartDropout, IdDropout, history_encoder
from finrec.model.numeric import PeriodicEmbedding, PiecewiseLinearEmbedding, numeric_embedding
from finrec.model.tower_spec import CUSTOMER_TOWER, PRODUCT_TOWER  # stable names, defined without Keras

HOLDINGS_BAG_DIM = 16


@keras.saving.register_keras_serializable(package="finrec")
class CrossLayer(layers.Layer):
    """DCN-v2 feature cross: ``x_{l+1} = x_0 * (W x_l + b) + x_l``.

    Shapes: ``x0``, ``x`` [batch, d] -> [batch, d].
    """

    def build(self, input_shape):
        dim = input_shape[0][-1]
        self.dense = layers.Dense(dim, name="cross_dense")
        self.dense.build((None, dim))

    def call(self, inputs):
        x0, x = inputs
        return x0 * self.dense(x) + x


def categorical_embedding_dim(vocabulary_size: int, max_dim: int) -> int:
    """The fastai rule of thumb (1.6 * n^0.56), capped at ``max_dim``."""
    return int(max(2, min(max_dim, round(1.6 * vocabulary_size**0.56))))


def tower(
    name: str,
    input_spec: dict[str, tuple[str, int]],
    widths: tuple[int, ...],
    config: ModelConfig,
    id_embedding_dim: int | None = None,
    cold_start_dropout: float = 0.0,
    id_dropout: float = 0.0,
    numeric_edges: list[list[float]] | None = None,
) -> keras.Model:
    """Build one tower from an input spec of ``name -> (kind, size)`` (see ``FeaturePipeline``).

    kinds: ``numeric`` (float [b, size]), ``categorical`` (int [b], vocabulary ``size``, code 0 =
    OOV), ``multi_hot`` (float [b, size], summed into a bag of embeddings), ``history_*`` (float
    [b, *size], through ``finrec.model.history.history_encoder``), ``known`` (float [b]: the
    product tower's id embedding is zeroed where 0, see ``IdDropout``). ``cold_start_dropout`` > 0
    zeroes holdings and history together for that share of the training rows.

    With ``numeric_edges`` (the pipeline's quantile bins) or ``config.numeric_encoding``
    'periodic', the ``customer_numeric`` input goes through a numeric embedding
    (``finrec.model.numeric``) first. With ``config.ensemble_size`` k > 1 the hidden layers run
    on k scaled copies of the features and the output is k unit vectors side by side / sqrt(k)
    (``finrec.model.ensemble``): [b, k * embedding_dim]. The history encoders' outputs and the
    numeric embedding are parts of the one concatenation; the ensemble's copies start after it.
    """
    inputs, parts = {}, []
    dropped = [n for n, (kind, _) in input_spec.items() if kind == "multi_hot" or kind in HISTORY_KINDS]
    held_in: dict = {}
    for input_name in dropped:
        kind, size = input_spec[input_name]
        shape = tuple(size) if isinstance(size, (tuple, list)) else (size,)
        inputs[input_name] = keras.Input(shape=shape, name=input_name, dtype="float32")
    if dropped and cold_start_dropout > 0:
        outs = ColdStartDropout(cold_start_dropout, name=f"{name}_coldstart")([inputs[n] for n in dropped])
        held_in = dict(zip(dropped, outs))
    else:
        held_in = {n: inputs[n] for n in dropped}
    for input_name, (kind, size) in input_spec.items():
        if kind == "numeric":
            inputs[input_name] = keras.Input(shape=(size,), name=input_name, dtype="float32")
            encoding = config.numeric_encoding if input_name == "customer_numeric" else "none"
            if size and encoding != "none":
                layer = numeric_embedding(encoding, numeric_edges, config, name=f"{name}_numemb_{input_name}")
                parts.append(layer(inputs[input_name]))
            elif size:
                parts.append(inputs[input_name])
        elif kind == "categorical":
            inputs[input_name] = keras.Input(shape=(), name=input_name, dtype="int32")
            dim = (
                id_embedding_dim
                if input_name == "product_index" and id_embedding_dim
                else categorical_embedding_dim(size, config.max_categorical_embedding_dim)
            )
            parts.append(layers.Embedding(size, dim, name=f"{name}_emb_{input_name}")(inputs[input_name]))
        elif kind == "multi_hot":
            # A multi-hot row times a matrix is the sum of the held products' embeddings.
            parts.append(
                layers.Dense(HOLDINGS_BAG_DIM, use_bias=False, name=f"{name}_bag_{input_name}")(held_in[input_name])
            )
        elif kind in HISTORY_KINDS:
            parts.append(history_encoder(kind, input_name, name)(held_in[input_name]))
        elif kind == "known":
            inputs[input_name] = keras.Input(shape=(), name=input_name, dtype="float32")
        else:  # pragma: no cover - the spec comes from our own pipeline
            raise ValueError(f"unknown input kind {kind!r}")
    if "known" in {kind for kind, _ in input_spec.values()}:
        # The id embedding (parts[0]: product_index comes first) of unknown products is zero.
        known = next(n for n, (kind, _) in input_spec.items() if kind == "known")
        parts[0] = IdDropout(id_dropout, name=f"{name}_id_dropout")([parts[0], inputs[known]])
    x = layers.Concatenate(name=f"{name}_concat")(parts) if len(parts) > 1 else parts[0]
    x0 = x
    for i in range(config.cross_layers):
        x = CrossLayer(name=f"{name}_cross_{i}")([x0, x])
    members = config.ensemble_size
    if members > 1:
        x = MemberInput(members, name=f"{name}_members")(x)
    for i, width in enumerate(widths):
        x = layers.Dense(width, use_bias=False, name=f"{name}_dense_{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn_{i}")(x)
        x = layers.ReLU(name=f"{name}_relu_{i}")(x)
        if config.dropout > 0:
            x = layers.Dropout(config.dropout, name=f"{name}_dropout_{i}")(x)
    if members > 1:
        x = MemberDense(config.embedding_dim, name=f"{name}_output")(x)
        outputs = MemberNormalize(name=f"{name}_l2")(x)
    else:
        x = layers.Dense(config.embedding_dim, name=f"{name}_output")(x)
        outputs = layers.UnitNormalization(name=f"{name}_l2")(x)
    inputs = {n: inputs[n] for n in input_spec}  # the spec's order, whichever were made first
    return keras.Model(inputs, outputs, name=name)


def customer_tower(
    input_spec: dict[str, tuple[str, int]],
    config: ModelConfig,
    cold_start_dropout: float = 0.0,
    numeric_edges: list[list[float]] | None = None,
) -> keras.Model:
    return tower(
        CUSTOMER_TOWER,
        input_spec,
        config.customer_widths,
        config,
        cold_start_dropout=cold_start_dropout,
        numeric_edges=numeric_edges,
    )


def product_tower(input_spec: dict[str, tuple[str, int]], config: ModelConfig) -> keras.Model:
    return tower(
        PRODUCT_TOWER,
        input_spec,
        config.product_widths,
        config,
        config.product_id_embedding_dim,
        id_dropout=config.product_id_dropout,
    )


def flops_per_example(model: keras.Model) -> int:
    """Multiply-adds x 2 of the Dense, cross and numeric-embedding layers for one example
    (embeddings are lookups); an ensemble's shared layers count once per member."""
    members = max([layer.members for layer in model.layers if isinstance(layer, MemberInput)], default=1)
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Dense):
            kernel = layer.kernel
            # The holdings bag and history encoders run before the ensemble's copies: once.
            total += 2 * math.prod(kernel.shape) * (1 if "_bag_" in layer.name or "_hist_" in layer.name else members)
        elif isinstance(layer, (MemberDense, PiecewiseLinearEmbedding, PeriodicEmbedding)):
            total += 2 * math.prod(layer.kernel.shape)
        elif isinstance(layer, CrossLayer):
            total += 2 * math.prod(layer.dense.kernel.shape) + 3 * layer.dense.kernel.shape[0]
    return total


__all__ = [
    "CUSTOMER_TOWER",
    "PRODUCT_TOWER",
    "CrossLayer",
    "customer_tower",
    "product_tower",
    "tower",
    "flops_per_example",
    "ops",
]
