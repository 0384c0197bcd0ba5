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
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers, ops

# A padding bin (a feature with fewer distinct quantiles than bins) starts far above any
# standardized value (which the pipeline clips to +-1e4), so its encoding is always 0.
_PAD_LEFT = 1e30


def bin_table(edges: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """(left, width), float32 [F, T] each, T the most bins of any feature; padding bins have
    ``left`` far above any value (encoding 0) and width 1."""
    n_bins = max(1, max((len(e) - 1 for e in edges), default=1))
    left = np.full((len(edges), n_bins), _PAD_LEFT, dtype="float64")
    width = np.ones((len(edges), n_bins), dtype="float64")
    for j, e in enumerate(edges):
        e = np.asarray(e, dtype="float64")
        if len(e) > 1:
            left[j, : len(e) - 1] = e[:-1]
            width[j, : len(e) - 1] = np.maximum(np.diff(e), 1e-6)
    return left.astype("float32"), width.astype("float32")


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


@dataclass
class NumpyPiecewiseLinear:
    """The numpy twin of ``PiecewiseLinearEmbedding``: ``x`` float32 [n, F] -> [n, F * dim].

    Of a value's encoding only one component is fractional: those of the bins below it are 1 and
    those above 0. So ``encoding @ W_f + b_f`` is ``start[f, k] + frac * W_f[k]`` with k the bin
    the value falls in and ``start[f, k] = b_f + sum_{t < k} W_f[t]`` (prefix sums, computed
    once): a lookup and one multiply-add per output instead of a T-long dot product (32 bins: 1/32
    of the work of the dense form, which had cost more than the rest of the tower)."""

    left: np.ndarray  # [F, T]: each bin's left edge (padding bins: far above any value)
    width: np.ndarray  # [F, T]
    start: np.ndarray  # [F * (T + 1), dim]: row f * (T + 1) + k + 1 = b_f + sum_{t <= k - 1} W_f[t]; k = -1: b_f
    step: np.ndarray  # [F * (T + 1), dim]: row f * (T + 1) + k + 1 = W_f[k]; k = -1: 0

    @classmethod
    def from_weights(cls, left: np.ndarray, width: np.ndarray, kernel: np.ndarray, bias: np.ndarray):
        """From the layer's bin table and weights: ``kernel`` [F, T, dim], ``bias`` [F, dim]."""
        kernel, bias = np.asarray(kernel, "float64"), np.asarray(bias, "float64")
        n_features, n_bins, dim = kernel.shape
        step = np.concatenate([np.zeros((n_features, 1, dim)), kernel], axis=1)  # [F, T + 1, dim]
        start = bias[:, None, :] + np.cumsum(step, axis=1) - step
        return cls(
            np.asarray(left, "float32"),
            np.asarray(width, "float32"),
            start.reshape(-1, dim).astype("float32"),
            step.reshape(-1, dim).astype("float32"),
        )

    def __call__(self, x: np.ndarray, out: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        n_features, n_bins = self.left.shape
        # k: the last bin whose left edge is <= x (-1 below the first); rows of the tables: k + 1.
        rows = np.empty(x.shape, dtype=np.intp)
        for f in range(n_features):
            rows[:, f] = np.searchsorted(self.left[f], x[:, f], side="right")
        bins = np.maximum(rows - 1, 0)
        columns = np.arange(n_features)
        frac = (x - self.left[columns, bins]) / self.width[columns, bins]
        np.clip(frac, 0.0, 1.0, out=frac)
        rows += columns * (n_bins + 1)
        h = self.start[rows] + frac[:, :, None] * self.step[rows]  # [n, F, dim]
        np.maximum(h, 0.0, out=h)
        out[...] = h.reshape(len(x), -1)


@dataclass
class NumpyPeriodic:
    """The numpy twin of ``PeriodicEmbedding``: ``x`` float32 [n, F] -> [n, F * dim]."""

    coefficients: np.ndarray  # [F, K]
    kernel: np.ndarray  # block-diagonal [F * 2K, F * dim]
    bias: np.ndarray  # [F * dim]

    def __call__(self, x: np.ndarray, out: np.ndarray) -> None:
        # (2 pi x) c, in float32 and in this order, as the Keras layer computes it
        v = (np.float32(2.0 * math.pi) * np.asarray(x, dtype=np.float32))[:, :, None] * self.coefficients
        features = np.concatenate([np.cos(v), np.sin(v)], axis=-1)
        np.matmul(features.reshape(len(x), -1), self.kernel, out=out)
        out += self.bias
        np.maximum(out, 0.0, out=out)


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
