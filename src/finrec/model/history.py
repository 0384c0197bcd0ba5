"""Tower layers for holdings history and cold start (registered, every backend, no ``Lambda``).

- ``ProductEventEncoder``: the per-product event block [B, P, F] -> ReLU(x_p K + b_p) [B, P, E],
  one kernel K [F, E] shared by all products (months since an add mean the same for every
  product) and a bias b_p [P, E] per product (which product it is), flattened to [B, P * E];
- ``history_encoder``: builds the configured encoder (``events``, ``flat`` = a Dense over the
  flattened block, ``gru`` = a GRU over the snapshot sequence [B, T, P]);
- ``ColdStartDropout``: in training, zeroes all of its inputs (holdings and history) for the same
  random ``rate`` of the rows, so that a customer with nothing held is a case the model has seen;
  the identity at inference;
- ``IdDropout``: the product tower's id embedding times ``known`` [P] (0 for a product without
  training adoptions: its id embedding learned nothing but "not adopted") and, in training, zero
  for a random ``rate`` of the products, so the attributes alone must place a product.

The numpy serving tower reads these layers by name (``<tower>_hist_<input>``); see
``finrec.recommend.history_twin``.
"""

from __future__ import annotations

import keras
from keras import layers, ops

HISTORY_EVENT_DIM = 8  # E: per-product embedding of its event features
HISTORY_FLAT_DIM = 32  # the Dense over the flattened block
HISTORY_GRU_UNITS = 32


@keras.saving.register_keras_serializable(package="finrec")
class ProductEventEncoder(layers.Layer):
    """[B, P, F] -> [B, P * units]: ReLU(x[:, p] @ kernel + bias[p]) per product, flattened."""

    def __init__(self, units: int = HISTORY_EVENT_DIM, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        _, p, f = input_shape
        self.kernel = self.add_weight(name="kernel", shape=(f, self.units), initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(p, self.units), initializer="zeros")

    def call(self, x):
        y = ops.relu(ops.einsum("bpf,fe->bpe", x, self.kernel) + self.bias)
        return ops.reshape(y, (-1, y.shape[1] * self.units))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] * self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="finrec")
class ColdStartDropout(layers.Layer):
    """Inputs: a list of batch-first tensors; in training each row of all of them is zeroed with
    probability ``rate`` (the same rows in every input); unscaled, since zero is the real state
    of a customer who holds nothing. Identity at inference."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.rate <= 0:
            return list(inputs)
        first = inputs[0]
        keep = ops.cast(keras.random.uniform((ops.shape(first)[0],), seed=self.seed_generator) >= self.rate, "float32")
        out = []
        for x in inputs:
            mask = ops.reshape(keep, (-1,) + (1,) * (len(x.shape) - 1))
            out.append(x * ops.cast(mask, x.dtype))
        return out

    def compute_output_shape(self, input_shape):
        return list(input_shape)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="finrec")
class IdDropout(layers.Layer):
    """``[id_embeddings [P, d], known [P]] -> [P, d]``: rows of unknown products are zero; in
    training a further ``rate`` of the rows is zeroed at random (unscaled, like ``known``)."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        emb, known = inputs
        mask = ops.cast(known, emb.dtype)
        if training and self.rate > 0:
            keep = keras.random.uniform(ops.shape(mask), seed=self.seed_generator) >= self.rate
            mask = mask * ops.cast(keep, emb.dtype)
        return emb * ops.expand_dims(mask, -1)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def history_encoder(kind: str, input_name: str, tower_name: str):
    """The layer that turns one history input into a flat part of the tower's concatenation."""
    name = f"{tower_name}_hist_{input_name}"
    if kind == "history_events":
        return ProductEventEncoder(HISTORY_EVENT_DIM, name=name)
    if kind == "history_flat":
        return layers.Dense(HISTORY_FLAT_DIM, use_bias=False, name=name)
    if kind == "history_sequence":
        return layers.GRU(HISTORY_GRU_UNITS, name=name)
    raise ValueError(f"unknown history input kind {kind!r}")  # pragma: no cover - our own pipeline


HISTORY_KINDS = ("history_events", "history_flat", "history_sequence")

__all__ = [
    "ProductEventEncoder",
    "ColdStartDropout",
    "IdDropout",
    "history_encoder",
    "HISTORY_KINDS",
]
