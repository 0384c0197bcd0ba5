"""The loop that walks a ``Forest`` (``finrec.training.forest``), compiled by numba and cached on
disk (beside this file, or in the user's cache where the package directory is read-only; in
memory only where neither can be written)."""

from __future__ import annotations

import numba
import numpy as np

from finrec.training.forest import ZERO_THRESHOLD

_DEFAULT_LEFT = 2
_ZERO_THRESHOLD = ZERO_THRESHOLD
# Rows tested together (a prototype: 6.4 µs a customer with 256, over 8 with 64 or 1,024).
BLOCK = 256
_EVERY = np.uint64(0xFFFFFFFFFFFFFFFF)
# The lowest set bit's index: isolate the bit, multiply by a de Bruijn sequence, look up the top
# six bits of the product, which differ for each of the 64 single bits.
_DE_BRUIJN = np.uint64(0x03F79D71B4CB0A89)
_BIT_INDEX = np.zeros(64, np.int64)
for _bit in range(64):
    _BIT_INDEX[((1 << _bit) * 0x03F79D71B4CB0A89 % (1 << 64)) >> 58] = _bit


def walk(
    x, start, stop, node_start, leaf_start, tree_class, feature, threshold, kind, flags, table_start, rule_out,
    go_left, leaf, out,
):  # fmt: skip
    # x: float64 [F, n], a feature's values in one row; rows start to stop of out [n, K] are written
    width = x.shape[0]
    # the block's inputs side by side (reading them in place from x measured 12% slower)
    block = np.empty((width, BLOCK), np.float64)
    alive = np.empty(BLOCK, np.uint64)
    total = np.zeros((out.shape[1], BLOCK), np.float64)
    one, shift = np.uint64(1), np.uint64(58)
    for first in range(start, stop, BLOCK):
        m = min(stop, first + BLOCK) - first
        for c in range(width):
            block[c, :m] = x[c, first : first + m]
        total[:, :m] = 0.0
        for t in range(tree_class.shape[0]):
            alive[:m] = _EVERY
            for j in range(node_start[t], node_start[t + 1]):
                column = block[feature[j]]
                cut = rule_out[j]
                if kind[j] == 0:
                    # right iff x > threshold; no NaN reaches a plain compare (``clean``)
                    bound = threshold[j]
                    for r in range(m):
                        alive[r] &= cut if column[r] > bound else _EVERY
                elif kind[j] == 1:
                    table = table_start[j]
                    for r in range(m):
                        if go_left[table + np.int64(column[r])] != 1:
                            alive[r] &= cut
                else:  # LightGBM's missing-value rule, in full
                    missing = (flags[j] >> 2) & 3
                    default_left = (flags[j] & _DEFAULT_LEFT) != 0
                    for r in range(m):
                        value = column[r]
                        if np.isnan(value) and missing != 2:
                            value = 0.0
                        if (missing == 1 and -_ZERO_THRESHOLD <= value <= _ZERO_THRESHOLD) or (
                            missing == 2 and np.isnan(value)
                        ):
                            left = default_left
                        else:
                            left = value <= threshold[j]
                        if not left:
                            alive[r] &= cut
            # each class's leaves summed in the trees' order, from 0.0: LightGBM's sum, to the bit
            c, leaves = tree_class[t], leaf_start[t]
            for r in range(m):
                bits = alive[r]
                lowest = bits & (~bits + one)
                total[c, r] += leaf[leaves + _BIT_INDEX[(lowest * _DE_BRUIJN) >> shift]]
        for r in range(m):
            for c in range(out.shape[1]):
                out[first + r, c] = total[c, r]


def prepare(x, clean, categorical, vocabulary):
    # In place on x [F, n], as LightGBM reads a row before any tree: |x| <= kZeroThreshold is
    # 0.0; NaN is 0.0 in the ``clean`` columns; a category code is truncated, and one outside
    # [0, vocabulary) (NaN included) becomes ``vocabulary``, a code no tree's table holds. One
    # compiled pass: numpy's ten calls cost a one-customer request ~0.1 ms.
    n = x.shape[1]
    for c in range(x.shape[0]):
        values = x[c]
        for r in range(n):
            if abs(values[r]) <= _ZERO_THRESHOLD:
                values[r] = 0.0
    for i in range(clean.shape[0]):
        values = x[clean[i]]
        for r in range(n):
            if np.isnan(values[r]):
                values[r] = 0.0
    for i in range(categorical.shape[0]):
        values, limit = x[categorical[i]], vocabulary[i]
        for r in range(n):
            code = np.trunc(values[r])
            if np.isnan(code) or code < 0 or code >= limit:
                values[r] = limit
            else:
                values[r] = code


# Cached on disk where a location is writable; numba raises at decoration where none is (a
# read-only install and home), and the loop then compiles in memory (~2 s) in each process.
try:
    walk = numba.njit(nogil=True, cache=True)(walk)
    prepare = numba.njit(nogil=True, cache=True)(prepare)
except RuntimeError:  # pragma: no cover - depends on the file system
    walk = numba.njit(nogil=True)(walk)
    prepare = numba.njit(nogil=True)(prepare)
