"""The loop that walks a ``Forest`` (``finrec.training.forest``), compiled by numba and cached on
disk (beside this file, or in the user's cache where the package directory is read-only; in
memory only where neither can be written)."""

from __future__ import annotations

import numba
import numpy as np

from finrec.training.forest import ZERO_THRESHOLD

_ZERO_THRESHOLD = ZERO_THRESHOLD
# Rows tested together: 256 measured faster than 1,024 or 4,096, whose running sums leave the
# core's fastest cache (a scratch timing, nineteenth session).
BLOCK = 256
# The lowest set bit's index: isolate the bit, multiply by a de Bruijn sequence, look up the top
# six bits of the product, which differ for each of the 64 single bits.
_DE_BRUIJN = np.uint64(0x03F79D71B4CB0A89)
_BIT_INDEX = np.zeros(64, np.int64)
for _bit in range(64):
    _BIT_INDEX[((1 << _bit) * 0x03F79D71B4CB0A89 % (1 << 64)) >> 58] = _bit
_LOWEST_OF_BYTE = np.array([(v & -v).bit_length() - 1 if v else 0 for v in range(256)], np.int64)


def walk(
    x, start, stop, node_start, leaf_start, tree_class, row, bound, kind, flags, table_start, rule_out, every,
    go_left, leaf, source, row_kind, edge_start, edges, grid_start, grid_origin, grid_scale, grid_place, vocabulary,
    zero_code, nan_code, out,
):  # fmt: skip
    # x: float64 [F, n], a feature's values in one row; rows start to stop of out [n, K] are written
    rows = source.shape[0]
    codes = np.empty((rows, BLOCK), bound.dtype)  # the block's inputs as codes, one row per column read
    alive = np.empty(BLOCK, rule_out.dtype)
    total = np.zeros((out.shape[1], BLOCK), np.float64)
    one, shift = np.uint64(1), np.uint64(58)
    narrow = np.uint64(every) == np.uint64(255)  # a byte of leaves: their lowest bit from a table
    for first in range(start, stop, BLOCK):
        m = min(stop, first + BLOCK) - first
        _encode(
            x, first, m, source, row_kind, edge_start, edges, grid_start, grid_origin, grid_scale, grid_place,
            vocabulary, nan_code, codes,
        )  # fmt: skip
        total[:, :m] = 0.0
        for t in range(tree_class.shape[0]):
            alive[:m] = every
            for j in range(node_start[t], node_start[t + 1]):
                column = codes[row[j]]
                cut, limit = rule_out[j], bound[j]
                if kind[j] == 0:  # right iff x > threshold: its code is past the threshold's
                    for r in range(m):
                        alive[r] &= cut if column[r] > limit else every
                elif kind[j] == 3:  # left iff the row's category bit is in the split's set
                    for r in range(m):
                        alive[r] &= every if (column[r] & limit) != 0 else cut
                elif kind[j] == 1:
                    table = table_start[j]
                    for r in range(m):
                        alive[r] &= every if go_left[table + np.int64(column[r])] == 1 else cut
                else:  # LightGBM's missing-value rule, in full
                    zero, nan = zero_code[row[j]], nan_code[row[j]]
                    missing = (flags[j] >> 2) & 3
                    default_left = (flags[j] & 2) != 0
                    # a NaN reads as 0.0 unless the missing type is NaN; missing as zero or as
                    # NaN goes to the default side (LightGBM acts on types 1 and 2 only: 3 is none)
                    nan_left = default_left if (missing == 1 or missing == 2) else zero <= limit
                    zero_default = missing == 1
                    for r in range(m):
                        code = column[r]
                        if code == nan:
                            left = nan_left
                        elif zero_default and code == zero:
                            left = default_left
                        else:
                            left = code <= limit
                        alive[r] &= every if left else cut
            # each class's leaves summed in the trees' order, from 0.0: LightGBM's sum, to the bit
            c, leaves = tree_class[t], leaf_start[t]
            if narrow:
                for r in range(m):
                    total[c, r] += leaf[leaves + _LOWEST_OF_BYTE[alive[r]]]
            else:
                for r in range(m):
                    bits = np.uint64(alive[r])
                    lowest = bits & (~bits + one)
                    total[c, r] += leaf[leaves + _BIT_INDEX[(lowest * _DE_BRUIJN) >> shift]]
        for r in range(m):
            for c in range(out.shape[1]):
                out[first + r, c] = total[c, r]


def _encode(x, first, m, source, row_kind, edge_start, edges, grid_start, grid_origin, grid_scale, grid_place,
            vocabulary, nan_code, codes):  # fmt: skip
    # Rows first to first + m of x as the walk's codes, as LightGBM reads a value before any tree:
    # |x| <= kZeroThreshold is 0.0; a numerical value's code is the number of its column's
    # thresholds below it (a NaN is 0.0, or its own code where a split treats it as missing); a
    # category code is truncated, and one outside [0, vocabulary) (NaN included) becomes
    # ``vocabulary``, a code no split's set holds (as a bit: one no set holds).
    for i in range(source.shape[0]):
        values, out, kind = x[source[i]], codes[i], row_kind[i]
        if kind <= 1:
            low, count = edge_start[i], edge_start[i + 1] - edge_start[i]
            cells, origin, scale = grid_start[i + 1] - grid_start[i], grid_origin[i], grid_scale[i]
            for r in range(m):
                value = values[first + r]
                if abs(value) <= _ZERO_THRESHOLD:
                    value = 0.0
                if np.isnan(value):
                    if kind == 1:
                        out[r] = nan_code[i]
                        continue
                    value = 0.0
                # A first guess from a uniform grid over the thresholds, then steps to the exact
                # count (whatever the guess, so rounding in the grid cannot change a code): a
                # binary search was 2.6x slower, each step a load waiting on the one before.
                place = 0
                if cells > 0:
                    cell = (value - origin) * scale
                    if cell >= cells:
                        place = count - 1
                    elif cell > 0:
                        place = grid_place[grid_start[i] + np.int64(cell)]
                while place > 0 and edges[low + place - 1] >= value:
                    place -= 1
                while place < count and edges[low + place] < value:
                    place += 1
                out[r] = place
        else:
            limit = vocabulary[i]
            for r in range(m):
                value = values[first + r]
                if abs(value) <= _ZERO_THRESHOLD:
                    value = 0.0
                code = np.trunc(value)
                position = limit if (np.isnan(code) or code < 0 or code >= limit) else np.int64(code)
                out[r] = position if kind == 2 else np.int64(1) << position


# Cached on disk where a location is writable; numba raises at decoration where none is (a
# read-only install and home), and the loop then compiles in memory (~2 s) in each process.
try:
    _encode = numba.njit(nogil=True, cache=True, inline="always")(_encode)
    walk = numba.njit(nogil=True, cache=True)(walk)
except RuntimeError:  # pragma: no cover - depends on the file system
    _encode = numba.njit(nogil=True, inline="always")(_encode)
    walk = numba.njit(nogil=True)(walk)
