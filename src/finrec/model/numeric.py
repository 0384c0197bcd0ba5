"""Embeddings for numerical features inside the customer tower (Gorishniy et al., "On Embeddings
for Numerical Features in Tabular Deep Learning", NeurIPS 2022).

An MLP fed raw standardized numbers draws smooth functions of them; a bank's rules are steps
(income above a threshold, age under 30). Each numeric feature is therefore first expanded into
a vector that a linear layer can turn into a step, then mapped per feature to ``dim`` values:

- ``PiecewiseLinearEmbedding`` (PLE): bins from the training quantiles of the feature (fitted by
  ``FeaturePipeline`` with ``finrec.features.quantile_edges``, edges in the standardized scale); component t of the encoding is 0 below
  bin t, 1 above it and linear inside it. Then a per-feature linear layer and a ReLU.
- ``PeriodicEmbedding`` (PLR): ``[cos(2 pi c x), sin(2 pi c x)]`` with trainable frequencies c
  per feature, then a per-feature linear layer and a ReLU.

Both map ``x`` float [B, F] -> float [B, F * dim] (features side by side). Each layer has a numpy
twin (``numpy_twin()``: a small picklable object, no Keras) that the serving path
(``finrec.recommend.index.NumpyTower``) calls; it computes the same function to float32 rounding.
Bin edges travel in the layer config (plain lists of numbers), so a saved model reloads with
``safe_mode=True``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from finrec.model.numeric_twin import NumpyPeriodic, NumpyPiecewiseLinear, bin_table


@keras.saving.register_keras_serializable(package="finrec")
class PiecewiseLinearEmbedding(layers.Layer):
    """PLE with quantile bins, a per-feature linear map to ``dim`` and a ReLU.

    Shapes: ``x`` [B, F] -> [B, F * dim]. ``edges``: per feature, the increasing bin edges in the
    scale of ``x`` (``finrec.features.quantile_edges``)."""

    def __init__(self, edges: list[list[float]], dim: int, **kwargs):
        super().__init__(**kwargs)
        self.edges = [[float(v) for v in e] for e in edges]
        self.dim = int(dim)
        self._left, self._width = bin_table(self.edges)

    def build(self, input_shape):
        n_features, n_bins = self._left.shape
        # Per feature: T bins -> dim. Scaled as a Dense of fan-in T would be.
        limit = 1.0 / math.sqrt(n_bins)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(n_features, n_bins, self.dim),
            initializer=keras.initializers.RandomUniform(-limit, limit),
        )
        self.bias = self.add_weight(
            name="bias", shape=(n_features, self.dim), initializer=keras.initializers.RandomUniform(-limit, limit)
        )

    def encode(self, x):
        """[B, F] -> [B, F, T] in [0, 1]."""
        ratio = (ops.expand_dims(x, -1) - ops.convert_to_tensor(self._left)) / ops.convert_to_tensor(self._width)
        return ops.clip(ratio, 0.0, 1.0)

    def call(self, x):
        h = ops.einsum("bft,ftd->bfd", self.encode(ops.cast(x, "float32")), self.kernel) + self.bias
        return ops.reshape(ops.relu(h), (-1, self._left.shape[0] * self.dim))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self._left.shape[0] * self.dim)

    def get_config(self):
        return {**super().get_config(), "edges": self.edges, "dim": self.dim}

    def numpy_twin(self) -> NumpyPiecewiseLinear:
        return NumpyPiecewiseLinear.from_weights(self._left, self._width, _to_numpy(self.kernel), _to_numpy(self.bias))


@keras.saving.register_keras_serializable(package="finrec")
class PeriodicEmbedding(layers.Layer):
    """PLR: ``relu(W_f [cos(2 pi c_f x_f), sin(2 pi c_f x_f)] + b_f)`` per feature f, with
    ``frequencies`` trainable coefficients c_f ~ N(0, sigma).

    Shapes: ``x`` [B, F] -> [B, F * dim]."""

    def __init__(self, frequencies: int, dim: int, sigma: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.frequencies, self.dim, self.sigma = int(frequencies), int(dim), float(sigma)

    def build(self, input_shape):
        n_features = int(input_shape[-1])
        self.coefficients = self.add_weight(
            name="coefficients",
            shape=(n_features, self.frequencies),
            initializer=keras.initializers.RandomNormal(stddev=self.sigma),
        )
        limit = 1.0 / math.sqrt(2 * self.frequencies)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(n_features, 2 * self.frequencies, self.dim),
            initializer=keras.initializers.RandomUniform(-limit, limit),
        )
        self.bias = self.add_weight(
            name="bias", shape=(n_features, self.dim), initializer=keras.initializers.RandomUniform(-limit, limit)
        )

    def call(self, x):
        v = 2.0 * math.pi * ops.expand_dims(ops.cast(x, "float32"), -1) * self.coefficients
        h = ops.einsum("bft,ftd->bfd", ops.concatenate([ops.cos(v), ops.sin(v)], axis=-1), self.kernel) + self.bias
        return ops.reshape(ops.relu(h), (-1, self.coefficients.shape[0] * self.dim))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], int(input_shape[-1]) * self.dim)

    def get_config(self):
        return {**super().get_config(), "frequencies": self.frequencies, "dim": self.dim, "sigma": self.sigma}

    def numpy_twin(self) -> NumpyPeriodic:
        return NumpyPeriodic(_to_numpy(self.coefficients), *_block_diagonal(self.kernel, self.bias))


def _to_numpy(weight) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(weight), dtype="float32")


def _block_diagonal(kernel, bias) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature kernels [F, T, d] as one block-diagonal [F * T, F * d] matrix (one BLAS call
    instead of F small ones), and the bias flattened to [F * d]."""
    kernel, bias = _to_numpy(kernel), _to_numpy(bias)
    n_features, n_in, dim = kernel.shape
    block = np.zeros((n_features * n_in, n_features * dim), dtype="float32")
    for f in range(n_features):
        block[f * n_in : (f + 1) * n_in, f * dim : (f + 1) * dim] = kernel[f]
    return block, bias.reshape(-1)


def numeric_embedding(kind: str, edges: list[list[float]] | None, config, name: str) -> layers.Layer:
    """The configured layer (``config``: a ``ModelConfig``) for ``kind`` 'ple' or 'periodic'."""
    if kind == "ple":
        if not edges:
            raise ValueError("numeric_encoding 'ple' needs the bin edges the feature pipeline fits")
        return PiecewiseLinearEmbedding(edges, config.numeric_embedding_dim, name=name)
    return PeriodicEmbedding(
        config.periodic_frequencies, config.numeric_embedding_dim, config.periodic_sigma, name=name
    )


__all__ = [
    "PiecewiseLinearEmbedding",
    "PeriodicEmbedding",
    "NumpyPiecewiseLinear",
    "NumpyPeriodic",
    "numeric_embedding",
    "bin_table",
]
