"""The numpy twins of the numeric embeddings (``finrec.model.numeric``), without Keras: the
serving path and the Keras-free model reader (``finrec.model.tower_spec``) compute the layers'
function with them, to float32 rounding."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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


# The bin lookup's grid: cells per feature between its first and last break.
_GRID = 4096
_LARGEST = np.finfo(np.float32).max


def _finite(x) -> np.ndarray:
    """float32 ``x`` with +-inf as the largest finite values: the encoding is flat beyond the
    edges, so the output is the same, and no value can step past a feature's +inf sentinel.
    NaN stays NaN. (The pipeline clips standardized values to +-1e4: this is for other callers.)"""
    return np.clip(np.asarray(x, dtype=np.float32), -_LARGEST, _LARGEST)


@dataclass
class NumpyPiecewiseLinear:
    """The numpy twin of ``PiecewiseLinearEmbedding``: ``x`` float32 [n, F] -> [n, F * dim].

    Of a value's encoding only one component is fractional: those of the bins below it are 1 and
    those above 0. So ``relu(encoding @ W_f + b_f)`` is affine in x between two breaks (the bins'
    edges): ``relu(value[f, s] + (x - origin[f, s]) * slope[f, s])`` with s the count of breaks
    <= x (0: below every bin, constant ``b_f``; past the last: constant ``b_f + sum_t W_f[t]``).
    A lookup and one multiply-add per output instead of a T-long dot product.

    The count starts from a uniform grid over each feature's breaks (the count at the cell's
    lower end), then steps up and down against the breaks themselves until no value moves: exact
    whatever the grid's rounding, and one or two steps where a cell holds at most one break."""

    breaks: np.ndarray  # [F, T + 1] float32: bin edges, the last bin's right end, then +inf
    origin: np.ndarray  # [F * (T + 3)] float32: where segment s of feature f starts (0 if constant)
    slope: np.ndarray  # [F * (T + 3), dim] float32: per segment, d output / d x
    value: np.ndarray  # [F * (T + 3), dim] float32: per segment, the output (before the ReLU) at origin

    @classmethod
    def from_weights(cls, left: np.ndarray, width: np.ndarray, kernel: np.ndarray, bias: np.ndarray):
        """From the layer's bin table (``bin_table``) and weights: ``kernel`` [F, T, dim], ``bias`` [F, dim]."""
        left, width = np.asarray(left, "float64"), np.asarray(width, "float64")
        kernel, bias = np.asarray(kernel, "float64"), np.asarray(bias, "float64")
        n_features, n_bins, dim = kernel.shape
        real = left < _PAD_LEFT / 2  # padding bins encode 0 for every value: never a segment
        breaks = np.full((n_features, n_bins + 1), np.inf)
        # Segment s of feature f is row f * (T + 3) + s + 1: rows line up with the padded breaks
        # (``_padded``) so that one index serves all; row f * (T + 3) is never read.
        origin = np.zeros((n_features, n_bins + 3))
        slope = np.zeros((n_features, n_bins + 3, dim))
        value = np.zeros((n_features, n_bins + 3, dim))
        for f in range(n_features):
            t = int(real[f].sum())  # a feature's real bins come first (bin_table)
            total = bias[f].copy()
            value[f, 1] = total  # below the first edge
            for k in range(t):
                breaks[f, k] = left[f, k]
                origin[f, k + 2] = left[f, k]
                slope[f, k + 2] = kernel[f, k] / width[f, k]
                value[f, k + 2] = total
                total = total + kernel[f, k]
            if t:
                breaks[f, t] = left[f, t - 1] + width[f, t - 1]
                value[f, t + 2] = total  # past the last bin
        return cls(
            breaks.astype("float32"),
            origin.reshape(-1).astype("float32"),
            slope.reshape(-1, dim).astype("float32"),
            value.reshape(-1, dim).astype("float32"),
        )

    def __post_init__(self):
        n_features, n_breaks = self.breaks.shape
        # Per feature: -inf, its breaks, +inf (the steps' comparisons need no bounds checks).
        # Index i = f * (T + 3) + s + 1 stands for "s breaks <= x": _padded[i] is break s (the
        # one a step up tests) and _previous[i] break s - 1 (the one a step down tests).
        stride = n_breaks + 2
        padded = np.full((n_features, stride), np.inf, dtype=np.float32)
        padded[:, 0] = -np.inf
        padded[:, 1:-1] = self.breaks
        self._padded = padded.ravel()
        self._previous = np.insert(self._padded[:-1], 0, np.float32(-np.inf))
        finite = np.isfinite(self.breaks)
        # The grid spans the second to the last-but-one break: the extreme quantile edges are
        # the training minimum and maximum, and one outlier there would crowd every other break
        # into a few cells (a cell's crowd is the steps its values take).
        lo, hi = np.zeros(n_features), np.zeros(n_features)
        for f in range(n_features):
            b = self.breaks[f, finite[f]].astype("float64")
            inner = b[1:-1] if len(b) > 3 else b
            if len(inner):
                lo[f], hi[f] = inner[0], inner[-1]
        span = hi - lo
        # The grid of feature f occupies cells f * (_GRID + 2) + c: c = 0 below lo, c = 1 + j
        # for [lo + j / scale, lo + (j + 1) / scale), c = _GRID + 1 at or past hi. x * scale +
        # shift, clipped to the feature's cells and truncated, is the cell.
        first = np.arange(n_features) * (_GRID + 2)
        with np.errstate(over="ignore"):
            scale = np.where(span > 0, _GRID / np.where(span > 0, span, 1.0), 0.0)
            shift = first + 1 - lo * scale
        # Breaks closer than float32 can scale (a span near 1e-38) get no grid: their values all
        # start from the first cell and step, as a constant feature's do, instead of an inf
        # scale turning 0 * inf into NaN.
        gridded = (scale < _LARGEST) & (np.abs(shift) < _LARGEST)
        scale, shift = np.where(gridded, scale, 0.0), np.where(gridded, shift, first + 1.0)
        self._scale = scale.astype(np.float32)
        self._shift = shift.astype(np.float32)
        self._floor = first.astype(np.float32)
        self._ceiling = (first + _GRID + 1).astype(np.float32)
        start = np.zeros((n_features, _GRID + 2), dtype=np.int64)  # breaks <= the cell's lower end
        for f in range(n_features):
            b = self.breaks[f, finite[f]].astype("float64")
            if scale[f] > 0:
                start[f, 1:] = np.searchsorted(b, lo[f] + np.arange(_GRID + 1) / scale[f], side="right")
            else:
                start[f, 1:] = len(b)
        self._start = (start + (np.arange(n_features) * stride + 1)[:, None]).ravel().astype(np.intp)

    def rows(self, x: np.ndarray) -> np.ndarray:
        """intp [n, F]: f * (T + 3) + s + 1 with s the count of feature f's breaks <= x[:, f]
        (``np.searchsorted(breaks[f], x[:, f], side='right')``), a row of ``origin``, ``slope`` and ``value``."""
        return self._rows(_finite(x))

    def _rows(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # a huge value's cell overflows to inf: the last cell
            t = np.multiply(x, self._scale)
            t += self._shift
        # fmax/fmin rather than clip: a NaN lands in the first cell (a valid index) and comes out
        # NaN, as from the Keras layer, instead of an undefined integer.
        np.fmax(t, self._floor, out=t)
        np.fmin(t, self._ceiling, out=t)
        index = np.take(self._start, t.astype(np.intp))
        # The grid only picks where to start: step until the count agrees with the breaks.
        while True:
            up = x >= np.take(self._padded, index)
            if not up.any():
                break
            index += up
        while True:
            down = x < np.take(self._previous, index)
            if not down.any():
                break
            index -= down
        return index

    def __call__(self, x: np.ndarray, out: np.ndarray) -> None:
        # Measured per 2,048 rows x 17 features x 8 dims: arithmetic on the [n, F, dim] block
        # written through a strided view of ``out`` costs 4x that on a contiguous block and a copy.
        x = _finite(x)
        n, n_features = x.shape
        rows = self._rows(x)
        local = x - np.take(self.origin, rows)  # [n, F]
        h = np.take(self.slope, rows, axis=0)  # [n, F, dim]
        h *= local[:, :, None]
        h += np.take(self.value, rows, axis=0)
        np.maximum(h, 0.0, out=h)
        out[...] = h.reshape(n, -1)


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


__all__ = ["NumpyPiecewiseLinear", "NumpyPeriodic", "bin_table"]
