"""A LightGBM booster's trees as flat arrays, walked by one compiled loop.

The tree blend runs the teacher on every customer scored. LightGBM's own ``predict`` took 98-105 µs
a customer on one core for the default bank's teacher (2,050 trees: 25 products x 82 rounds), 9x
the rest of batch scoring. A first compiled walk (each tree laid out complete, the rows of a block
stepping down it level by level) took 45-57 µs; testing every split with bit masks took about 5
(eighteenth session); testing narrow integer codes instead of doubles takes about half that
(nineteenth session; ``docs/benchmarks.md``, Batch scoring, has the figures and the end to end).

The arrays come from the booster's text format, the one ``tree_blend.json`` stores, so every
threshold is the exact double LightGBM compares against. The decision rules are LightGBM's
(``include/LightGBM/tree.h``):

- numerical: a NaN counts as 0.0 unless the node's missing type is NaN; a missing value
  (type Zero: |x| <= 1e-35; type NaN: NaN) goes to the node's default side; otherwise left iff
  ``x <= threshold``;
- categorical: NaN, or a value whose ``int(x)`` is negative, goes right; else left iff ``int(x)``
  is in the node's category bitset;
- before any tree, |x| <= kZeroThreshold (1e-35 as a float32) reads as 0.0.

**The walk tests every split of a tree, not a path down it** (QuickScorer: Lucchese et al.,
SIGIR 2015). Number a tree's leaves left to right and give each row one bit per leaf, all set.
A split that sends a row right rules out every leaf of its left subtree: those bits are cleared
(``rule_out``, one mask per split). The row's leaf is then the lowest bit left: a leaf left of
it has a common ancestor with it that sent the row right, which cleared it, and nothing clears
the leaf itself, whose ancestors' left subtrees hold it only where they sent the row left. A
7-leaf tree is 6 tests a row whatever its path, each the same test over a block of rows laid
out column by column: no load waits on the one before, and the compiler turns the tests into
vector instructions. Trees of more than 64 leaves (a bit each) are refused: LightGBM's own
prediction then scores a baseline configured so (``LightGBMBaseline.score``); the teacher and
the adoption model grow 7, whose masks are a byte.

**Each value is tested as a code, not a double.** Before the trees, each column a split reads
is encoded once per row: a numerical value becomes the number of its column's thresholds below
it, so ``x > threshold`` is ``code > the threshold's place``, exactly; a category keeps its code,
or becomes one bit of the code where its column has fewer levels than the code has bits (7 with
one-byte codes), so that a split's category set is one AND instead of a table lookup per row
(the lookups cost more than all other tests together on the default bank's teacher). Codes are
one byte where they all fit one, wider where not (LightGBM's default 255 bins give at most 254
thresholds a column; a column with a missing-value rule adds two and a code for NaN, which can
take it past a byte): a vector instruction tests 4-8 times more rows than with doubles. Missing
values keep LightGBM's rules: a column a split treats as missing gives NaN a code of its own and
0.0 one alone.

The result is tested equal to ``Booster.predict(raw_score=True)`` on data with NaNs, zeros,
negative and unseen categories, every missing-value rule, and each threshold with the doubles
either side of it (``tests/test_forest.py``): each class's leaves are summed in the trees'
order, as LightGBM sums them.

    >>> forest = Forest.from_model_text(booster.model_to_string(num_iteration=best))
    >>> forest.raw_score(x)     # float64 [n, K], as booster.predict(x, raw_score=True)
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

_CATEGORICAL = 1  # the decision type's category bit
_PLAIN, _TABLE, _MISSING, _BITS = 0, 1, 2, 3  # a split's kind (``Forest``)
ZERO_THRESHOLD = float(np.float32(1e-35))  # LightGBM's kZeroThreshold, a float literal widened
_MAX_LEAVES = 64  # a bit per leaf in one 64-bit word: larger trees are refused
_GRID = 4  # cells per threshold in a numerical column's grid (``_Codes``)
_ROWS_PER_THREAD = 2048  # below this a thread's start costs more than its share of the walk


@dataclass(frozen=True, eq=False)
class Forest:
    """Every tree of a LightGBM model in one set of arrays.

    Per tree t: its splits from ``node_start[t]`` to ``node_start[t + 1]`` (LightGBM's order), its
    leaves, left to right, from ``leaf_start[t]`` to ``leaf_start[t + 1]``, its class
    ``tree_class`` int32 [T]. Per split: the column it reads ``feature`` int32, its
    ``threshold`` float64 and LightGBM's decision type ``flags`` int8; ``row`` int32, the code
    row it tests, and ``kind`` int8: 0 a plain compare (right iff the code > ``bound``, the
    threshold's place among its column's thresholds), 1 a category lookup in ``go_left`` uint8
    from ``table_start``, 2 a compare with LightGBM's missing-value rule, 3 a category set as
    the bits ``bound`` (left iff the row's category bit is one of them); ``rule_out``, the
    tree's leaves with the bits of the split's left subtree cleared (a row sent right keeps only
    these), in the narrowest unsigned type that holds a bit per leaf.

    Code rows (one per column a split reads): ``source`` int32, the column; ``row_kind`` int8: 0
    numerical (NaN read as 0.0), 1 numerical whose NaN has its own code ``nan_code``, 2 a
    category code, 3 a category as one bit; the column's thresholds ``edges[edge_start[i]:
    edge_start[i + 1]]`` float64 sorted (with -kZeroThreshold and 0.0 in a column of kind 1,
    whose code ``zero_code`` is then 0.0's alone); ``vocabulary`` int32, the codes a category
    split names (a code outside them, NaN or negative reads as ``vocabulary``, which every split
    sends right). Codes are of ``bound``'s type, the narrowest unsigned one that holds them all.
    """

    n_classes: int
    n_features: int
    node_start: np.ndarray
    leaf_start: np.ndarray
    tree_class: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    kind: np.ndarray
    flags: np.ndarray
    row: np.ndarray
    bound: np.ndarray
    table_start: np.ndarray
    rule_out: np.ndarray
    go_left: np.ndarray
    leaf_value: np.ndarray
    source: np.ndarray
    row_kind: np.ndarray
    edge_start: np.ndarray
    edges: np.ndarray
    grid_start: np.ndarray
    grid_origin: np.ndarray
    grid_scale: np.ndarray
    grid_place: np.ndarray
    vocabulary: np.ndarray
    zero_code: np.ndarray
    nan_code: np.ndarray

    @classmethod
    def from_model_text(cls, text: str) -> Forest:
        """Parse LightGBM's model text (``Booster.model_to_string``): the header's
        ``num_tree_per_iteration`` and ``max_feature_idx``, then each ``Tree=`` block."""
        header, _, body = text.partition("\nTree=")
        body = body.split("\nend of trees", 1)[0]  # then feature importances, whose names could read "Tree="
        fields = dict(line.split("=", 1) for line in header.splitlines() if "=" in line)
        n_classes = int(fields.get("num_tree_per_iteration", "1"))
        n_features = int(fields["max_feature_idx"]) + 1
        trees = [_parse_tree(block) for block in body.split("\nTree=")] if body else []
        categorical: dict[int, int] = {}
        with_missing: set[int] = set()
        for tree in trees:
            for i, f in enumerate(tree["feature"]):
                if tree["decision"][i] & _CATEGORICAL:
                    codes = tree["categories"][i]
                    categorical[f] = max(categorical.get(f, 0), (max(codes) + 1) if codes else 0)
                elif (tree["decision"][i] >> 2) & 3:
                    with_missing.add(f)
        numeric = {f for tree in trees for i, f in enumerate(tree["feature"]) if not tree["decision"][i] & _CATEGORICAL}
        if numeric & categorical.keys():
            raise ValueError(
                f"columns {sorted(numeric & categorical.keys())} are split both as numbers and as categories"
            )

        node_start, leaf_start = [0], [0]
        columns: dict[str, list] = {
            k: [] for k in ("feature", "threshold", "kind", "flags", "table_start", "rule_out", "leaf")
        }
        go_left = _Tables()
        for tree in trees:
            arrays = _layout(tree, categorical, with_missing, go_left)
            for name, values in zip(columns, arrays):
                columns[name].append(values)
            node_start.append(node_start[-1] + len(arrays[0]))
            leaf_start.append(leaf_start[-1] + len(arrays[-1]))

        def joined(name: str, dtype) -> np.ndarray:
            return np.concatenate(columns[name]).astype(dtype) if columns[name] else np.zeros(0, dtype)

        feature, threshold, kind = joined("feature", np.int32), joined("threshold", np.float64), joined("kind", np.int8)
        table_start, tables = joined("table_start", np.int64), go_left.joined()
        codes = _Codes(feature, threshold, kind, categorical, with_missing)
        row, bound, kind = codes.splits(feature, threshold, kind, table_start, tables)
        leaves = np.diff(leaf_start)
        mask = _narrowest(1 << int(leaves.max(initial=1)))
        return cls(
            n_classes=n_classes,
            n_features=n_features,
            node_start=np.asarray(node_start, np.int64),
            leaf_start=np.asarray(leaf_start, np.int64),
            tree_class=np.arange(len(trees), dtype=np.int32) % n_classes,
            feature=feature,
            threshold=threshold,
            kind=kind,
            flags=joined("flags", np.int8),
            row=row,
            bound=bound,
            table_start=table_start,
            rule_out=joined("rule_out", np.uint64).astype(mask),
            go_left=tables,
            leaf_value=joined("leaf", np.float64),
            source=codes.source,
            row_kind=codes.row_kind,
            edge_start=codes.edge_start,
            edges=codes.edges,
            grid_start=codes.grid_start,
            grid_origin=codes.grid_origin,
            grid_scale=codes.grid_scale,
            grid_place=codes.grid_place,
            vocabulary=codes.vocabulary,
            zero_code=codes.zero_code,
            nan_code=codes.nan_code,
        )

    def raw_score(self, x: np.ndarray, threads: int | None = None) -> np.ndarray:
        """float64 [n, K]: the sum of each class's trees' leaves for the rows of ``x`` [n, F]
        (any float dtype; NaN is missing), as ``Booster.predict(x, raw_score=True)``.

        Rows are split over ``threads`` (at least 2,048 rows each). The default: every CPU this
        process may use when called from the main thread (a plan, a service loading its known
        customers, evaluation), one from any other thread, whose caller is the parallelism (the
        batch scorer's chunk workers, where more threads than cores gained nothing: 41,860
        customers/s end to end against 44,812 and 48,011, a noisy machine). The loop releases
        the GIL, so such threads do run at once."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"the forest reads {self.n_features} features; got an array of shape {x.shape}")
        # One layout for every caller: [F, n] float64, row-major, each feature's values in one
        # run. numba compiles a loop anew for each array layout it meets: with three (a batch's
        # column-major matrix, a request's row, a thread's slice) a cold cache cost a service's
        # first request about a second (a reviewer). From ``LightGBMBaseline.matrix``
        # (column-major already) and for one row this is a view; the walk only reads it.
        columns = np.ascontiguousarray(x.T, dtype=np.float64)
        if not columns.flags.writeable:  # numba types a read-only array apart: a second compile
            columns = columns.copy()
        n = len(x)
        out = np.zeros((n, self.n_classes), dtype=np.float64)
        arrays = (
            self.node_start,
            self.leaf_start,
            self.tree_class,
            self.row,
            self.bound,
            self.kind,
            self.flags,
            self.table_start,
            self.rule_out,
            self.rule_out.dtype.type(np.iinfo(self.rule_out.dtype).max),
            self.go_left,
            self.leaf_value,
            self.source,
            self.row_kind,
            self.edge_start,
            self.edges,
            self.grid_start,
            self.grid_origin,
            self.grid_scale,
            self.grid_place,
            self.vocabulary,
            self.zero_code,
            self.nan_code,
        )
        walk = _compiled()
        if threads is None:
            threads = _cpus() if threading.current_thread() is threading.main_thread() else 1
        parts = min(threads, n // _ROWS_PER_THREAD)
        if parts <= 1:
            walk(columns, 0, n, *arrays, out)
            return out
        bounds = np.linspace(0, n, parts + 1).astype(int)
        with ThreadPoolExecutor(parts) as pool:
            done = [pool.submit(walk, columns, a, b, *arrays, out) for a, b in zip(bounds[:-1], bounds[1:])]
            for future in done:
                future.result()
        return out


def _parse_tree(block: str) -> dict:
    """One ``Tree=`` block: split nodes' arrays (empty for a one-leaf tree) and the leaves,
    with each categorical node's category set read from its bitset words."""
    raw = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
    if raw.get("is_linear", "0") != "0":
        raise ValueError("a forest of linear trees (linear_tree) is not walked: its leaves are models, not values")
    tree = {"leaf_value": [float(v) for v in raw["leaf_value"].split()], "feature": [], "categories": {}}
    if int(raw["num_leaves"]) == 1:
        return tree
    tree["feature"] = [int(f) for f in raw["split_feature"].split()]
    tree["decision"] = [int(d) for d in raw["decision_type"].split()]
    tree["threshold"] = [float(t) for t in raw["threshold"].split()]
    tree["left"] = [int(c) for c in raw["left_child"].split()]
    tree["right"] = [int(c) for c in raw["right_child"].split()]
    bounds = [int(b) for b in raw.get("cat_boundaries", "0").split()]
    words = [int(w) for w in raw.get("cat_threshold", "").split()]
    for i, d in enumerate(tree["decision"]):
        if d & _CATEGORICAL:
            k = int(tree["threshold"][i])
            tree["categories"][i] = [
                32 * w + b for w in range(bounds[k + 1] - bounds[k]) for b in range(32) if words[bounds[k] + w] >> b & 1
            ]
    return tree


class _Tables:
    """The categorical nodes' go-left tables, one array: ``add`` returns where a table starts."""

    def __init__(self) -> None:
        self.parts = [np.zeros(1, np.uint8)]  # index 0: the table a plain compare never reads
        self.size = 1

    def add(self, table: np.ndarray) -> int:
        start = self.size
        self.parts.append(table)
        self.size += len(table)
        return start

    def joined(self) -> np.ndarray:
        return np.concatenate(self.parts)


def _layout(tree: dict, categorical: dict[int, int], with_missing: set[int], go_left: _Tables) -> tuple:
    """One parsed tree's arrays: (feature, threshold, kind, flags, table_start, rule_out) per
    split in LightGBM's order, and its leaf values left to right. Its category tables are
    appended to ``go_left``."""
    n_leaves = len(tree["leaf_value"])
    if n_leaves > _MAX_LEAVES:
        raise ValueError(f"a tree of {n_leaves} leaves is not walked (at most {_MAX_LEAVES}: one bit per leaf)")
    splits = len(tree["feature"])
    feature = np.zeros(splits, np.int32)
    threshold = np.zeros(splits)
    kind = np.zeros(splits, np.int8)
    flags = np.zeros(splits, np.int8)
    table_start = np.zeros(splits, np.int64)
    rule_out = np.zeros(splits, np.uint64)
    leaves = np.zeros(n_leaves)
    every = (1 << n_leaves) - 1
    position = 0  # the next leaf's place, left to right

    def place(child: int) -> int:
        """Lay out the subtree at ``child`` (a leaf where negative); its leaves' bits."""
        nonlocal position
        if child < 0:
            leaves[position] = tree["leaf_value"][~child]
            position += 1
            return 1 << (position - 1)
        f = tree["feature"][child]
        feature[child] = f
        flags[child] = tree["decision"][child]
        if flags[child] & _CATEGORICAL:
            kind[child] = _TABLE
            table = np.zeros(categorical[f] + 1, np.uint8)
            table[list(tree["categories"][child])] = 1
            table_start[child] = go_left.add(table)
        else:
            kind[child] = _MISSING if f in with_missing else _PLAIN
            threshold[child] = tree["threshold"][child]
        left = place(tree["left"][child])
        rule_out[child] = every & ~left
        return left | place(tree["right"][child])

    place(0 if splits else ~0)
    return feature, threshold, kind, flags, table_start, rule_out, leaves


class _Codes:
    """The code rows of a forest's splits (``Forest``): which column each reads, how its values
    become codes, and each split's test against them. A value's code is the number of its
    column's thresholds below it, so ``x > threshold`` is ``code > place``: the same answer as
    the float compare, in a narrow integer that fits 4-8 times more rows in each vector
    instruction (a scratch timing, nineteenth session)."""

    def __init__(self, feature, threshold, kind, categorical: dict[int, int], with_missing: set[int]) -> None:
        numeric = sorted({int(f) for f in feature[kind != _TABLE]})
        self.columns = [*numeric, *sorted(categorical)]
        self.row_of = {f: i for i, f in enumerate(self.columns)}
        self.cuts = {}
        for f in numeric:
            cuts = set(threshold[(feature == f) & (kind != _TABLE)].tolist())
            if f in with_missing:  # 0.0 gets a code of its own: zero is a missing value there
                cuts |= {-ZERO_THRESHOLD, 0.0}
            self.cuts[f] = np.array(sorted(cuts), np.float64)
        largest = max(
            [len(self.cuts[f]) + (f in with_missing) for f in numeric] + [categorical[f] for f in categorical],
            default=0,
        )
        dtype = _narrowest(largest + 1)
        bits = 8 * np.dtype(dtype).itemsize
        kinds = [1 if f in with_missing else 0 for f in numeric]
        kinds += [3 if categorical[f] + 1 <= bits else 2 for f in sorted(categorical)]
        self.row_kind = np.asarray(kinds, np.int8)
        self.source = np.asarray(self.columns, np.int32)
        sizes = [len(self.cuts[f]) for f in numeric] + [0] * len(categorical)
        self.edge_start = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.edges = np.concatenate([self.cuts[f] for f in numeric]) if numeric else np.zeros(0)
        self._grids(numeric, len(categorical))
        self.vocabulary = np.asarray([0] * len(numeric) + [categorical[f] for f in sorted(categorical)], np.int32)
        self.zero_code = np.zeros(len(self.columns), dtype)
        self.nan_code = np.zeros(len(self.columns), dtype)
        for i, f in enumerate(numeric):
            if f in with_missing:
                self.zero_code[i] = np.searchsorted(self.cuts[f], 0.0)
                self.nan_code[i] = len(self.cuts[f]) + 1
        self.dtype = dtype

    def _grids(self, numeric: list[int], categorical: int) -> None:
        """Per numerical row, a uniform grid of ``_GRID`` cells per threshold from the lowest to
        the highest (or from the second to the last but one, where the two ends are too far
        apart for doubles: LightGBM writes some NaN rules' thresholds as inf); a
        cell's entry is the count of thresholds below its lower end, where the walk starts
        looking for a value's code. Rows of one threshold, or no usable range, get none (the
        walk then steps from 0)."""
        places, sizes = [], []
        self.grid_origin = np.zeros(len(numeric) + categorical)
        self.grid_scale = np.zeros(len(numeric) + categorical)
        for i, f in enumerate(numeric):
            cuts, cells, scale = self.cuts[f], 0, 0.0
            for low, high in ((0, len(self.cuts[f]) - 1), (1, len(self.cuts[f]) - 2)):
                if high - low >= 1:
                    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                        scale = _GRID * len(cuts) / (cuts[high] - cuts[low])
                    if np.isfinite(scale) and scale > 0:
                        cells = _GRID * len(cuts)
                        break
            if cells:
                self.grid_origin[i], self.grid_scale[i] = cuts[low], scale
                places.append(np.searchsorted(cuts, cuts[low] + np.arange(cells) / scale))
            sizes.append(cells)
        sizes += [0] * categorical
        self.grid_start = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.grid_place = np.concatenate(places).astype(np.int32) if places else np.zeros(0, np.int32)

    def splits(self, feature, threshold, kind, table_start, tables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each split's code row, its ``bound`` and its kind (a category split over a column of
        one-bit codes becomes kind 3, its set as bits)."""
        row = np.zeros(len(feature), np.int32)
        bound = np.zeros(len(feature), self.dtype)
        kind = kind.copy()
        for f, i in self.row_of.items():
            at = np.flatnonzero(feature == f)
            row[at] = i
            if self.row_kind[i] <= 1:  # numerical: the threshold's place among the column's
                bound[at] = np.searchsorted(self.cuts[f], threshold[at])
            elif self.row_kind[i] == 3:
                for j in at.tolist():
                    sent_left = tables[table_start[j] : table_start[j] + self.vocabulary[i] + 1]
                    bound[j] = sum(1 << code for code in np.flatnonzero(sent_left == 1).tolist())
                kind[at] = _BITS
        return row, bound, kind


def _narrowest(values: int) -> type:
    """The narrowest unsigned integer type that holds ``values`` distinct values."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if values <= 1 << (8 * np.dtype(dtype).itemsize):
            return dtype
    raise ValueError(f"{values} values do not fit a 64-bit word")


def _cpus() -> int:
    """``OMP_NUM_THREADS`` where it is set (Ray sets 1 in its workers; LightGBM's predict
    honoured it), else the CPUs this process may use."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _compiled():
    """The compiled walk (``finrec.training.forest_walk``), imported on first use: numba (~0.5 s
    to import) loads only for a model that blends."""
    from finrec.training.forest_walk import walk

    return walk
