"""A parameter-efficient ensemble of k members inside each tower (TabM-mini: Gorishniy et al.,
"TabM: Advancing Tabular Deep Learning with Parameter-Efficient Ensembling", ICLR 2025).

The concatenated features enter k times, each copy scaled by its member's vector ``r_i``
(initialized to random signs so the members start apart); the hidden layers are shared (they
run on [B, k, width]); each member has its own output head; each member's embedding is
L2-normalized. Training applies the loss to every member's scores (``MemberMean``), so the
members learn as k models, not as one wider model.

Serving needs no change: ``MemberNormalize`` concatenates the k unit vectors and divides by
sqrt(k), so for one customer c and one product p::

    [c_1 .. c_k] / sqrt(k)  .  [p_1 .. p_k] / sqrt(k)  =  mean_i (c_i . p_i)

one dot product of [k * d] embeddings is the mean of the members' cosines: product embeddings
stay precomputable and the index and ranking core see an ordinary tower of dimension k * d.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="finrec")
class MemberInput(layers.Layer):
    """[B, F] -> [B, k, F]: member i sees ``x * r_i`` (``r`` [k, F], trainable, random signs)."""

    def __init__(self, members: int, **kwargs):
        super().__init__(**kwargs)
        self.members = int(members)

    def build(self, input_shape):
        self.r = self.add_weight(
            name="r", shape=(self.members, int(input_shape[-1])), initializer=RandomSigns(self.members)
        )

    def call(self, x):
        return ops.expand_dims(x, 1) * self.r

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.members, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "members": self.members}


@keras.saving.register_keras_serializable(package="finrec")
class MemberDense(layers.Layer):
    """One linear head per member: [B, k, W] -> [B, k, units] with ``kernel`` [k, W, units] and
    ``bias`` [k, units]."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        members, width = int(input_shape[1]), int(input_shape[2])
        self.kernel = self.add_weight(name="kernel", shape=(members, width, self.units), initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(members, self.units), initializer="zeros")

    def call(self, x):
        return ops.einsum("bkw,kwu->bku", x, self.kernel) + self.bias

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="finrec")
class MemberNormalize(layers.Layer):
    """[B, k, d] -> [B, k * d]: each member's vector L2-normalized (as ``UnitNormalization``),
    the k side by side, divided by sqrt(k) (so the whole row has unit norm and a dot product is
    the mean of the members' cosines)."""

    def call(self, x):
        members, dim = x.shape[1], x.shape[2]
        squares = ops.sum(ops.square(x), axis=-1, keepdims=True)
        unit = x * ops.minimum(ops.rsqrt(squares), 1.0 / 1e-12)
        return ops.reshape(unit, (-1, members * dim)) / math.sqrt(members)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] * input_shape[2])


@keras.saving.register_keras_serializable(package="finrec")
class RandomSigns(keras.initializers.Initializer):
    """+1 or -1 with equal odds; the first member all +1 (the plain model)."""

    def __init__(self, members: int, seed: int | None = None):
        self.members = members
        self.seed = seed

    def __call__(self, shape, dtype=None):
        draws = keras.random.uniform(shape, seed=self.seed)
        signs = ops.where(draws < 0.5, -1.0, 1.0)
        first = ops.expand_dims(ops.arange(shape[0]) == 0, -1)
        return ops.cast(ops.where(first, 1.0, signs), dtype or "float32")

    def get_config(self):
        return {"members": self.members, "seed": self.seed}


def member_scores(customer, products, members: int, n_products: int):
    """Each member's cosine: customer [B, k * d], products [P, k * d] (from ``MemberNormalize``)
    -> [B, k * P], member i's scores in columns i * P .. (i + 1) * P."""
    dim = customer.shape[-1] // members
    c = ops.reshape(customer, (-1, members, dim))
    p = ops.reshape(products, (-1, members, dim))
    scores = ops.einsum("bkd,pkd->bkp", c, p) * float(members)
    return ops.reshape(scores, (-1, members * n_products))


__all__ = ["MemberInput", "MemberDense", "MemberNormalize", "RandomSigns", "member_scores"]
