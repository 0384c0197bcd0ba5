"""The loop that walks a ``Forest`` (``finrec.training.forest``), compiled by numba and cached on
disk (beside this file, or in the user's cache where the package directory is read-only; in
memory only where neither can be written)."""

from __future__ import annotations

import numba
import numpy as np

from finrec.training.forest import ZERO_THRESHOLD

_DEFAULT_LEFT = 2
_ZERO_THRESHOLD = ZERO_THRESHOLD
BLOCK = 256  # rows that step through a tree together (their inputs stay in the L2 cache)


def walk(
    x, depth, node_start, leaf_start, tree_class, feature, threshold, kind, flags, table_start, go_left, leaf, out
):
    n = x.shape[0]
    at = np.zeros(BLOCK, np.int64)
    for first in range(0, n, BLOCK):
        m = min(n, first + BLOCK) - first
        for t in range(depth.shape[0]):
            nodes = node_start[t]
            leaves = leaf_start[t] - (2 ** depth[t] - 1)
            at[:m] = 0
            for _ in range(depth[t]):
                for r in range(m):
                    k = at[r]
                    j = nodes + k
                    value = x[first + r, feature[j]]
                    if kind[j] == 0:
                        # not >, rather than <=: a pass-through node (threshold +inf) may read a
                        # column that holds NaN, and NaN must go left there too
                        left = not value > threshold[j]
                    elif kind[j] == 1:
                        left = go_left[table_start[j] + np.int64(value)] == 1
                    else:  # LightGBM's missing-value rule, in full
                        missing = (flags[j] >> 2) & 3
                        if np.isnan(value) and missing != 2:
                            value = 0.0
                        if (missing == 1 and -_ZERO_THRESHOLD <= value <= _ZERO_THRESHOLD) or (
                            missing == 2 and np.isnan(value)
                        ):
                            left = (flags[j] & _DEFAULT_LEFT) != 0
                        else:
                            left = value <= threshold[j]
                    at[r] = 2 * k + 2 - np.int64(left)
            for r in range(m):
                out[first + r, tree_class[t]] += leaf[leaves + at[r]]


def prepare(x, clean, categorical, vocabulary):
    # In place, as LightGBM reads a row before any tree: |x| <= kZeroThreshold is 0.0; NaN is 0.0
    # in the ``clean`` columns; a category code is truncated, and one outside [0, vocabulary)
    # (NaN included) becomes ``vocabulary``, a code no tree's table holds. One compiled pass:
    # numpy's ten calls cost a one-customer request ~0.1 ms.
    for r in range(x.shape[0]):
        for c in range(x.shape[1]):
            if abs(x[r, c]) <= _ZERO_THRESHOLD:
                x[r, c] = 0.0
        for i in range(clean.shape[0]):
            if np.isnan(x[r, clean[i]]):
                x[r, clean[i]] = 0.0
        for i in range(categorical.shape[0]):
            c = categorical[i]
            code = np.trunc(x[r, c])
            if np.isnan(code) or code < 0 or code >= vocabulary[i]:
                x[r, c] = vocabulary[i]
            else:
                x[r, c] = code


# Cached on disk where a location is writable; numba raises at decoration where none is (a
# read-only install and home), and the loop then compiles in memory (~2 s) in each process.
try:
    walk = numba.njit(nogil=True, cache=True)(walk)
    prepare = numba.njit(nogil=True, cache=True)(prepare)
except RuntimeError:  # pragma: no cover - depends on the file system
    walk = numba.njit(nogil=True)(walk)
    prepare = numba.njit(nogil=True)(prepare)
