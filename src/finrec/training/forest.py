"""A LightGBM booster's trees as flat arrays, walked by one compiled loop.

The tree blend runs the teacher on every customer scored. LightGBM's own ``predict`` took 98-105 µs
a customer on one core for the default bank's teacher (2,050 trees: 25 products x 82 rounds), 9x
the rest of batch scoring. A first compiled walk (each tree laid out complete, the rows of a block
stepping down it level by level) took 45-57 µs; this one takes about 5 (eighteenth session, a
scratch timing: the default bank's teacher of 1,750 trees on 100,000 customers of a fresh bank,
one core: 5.2 µs against 29.8 for the first walk and 85-91 for LightGBM, equal to the last bit;
``benchmarks/batch_scoring.py`` has the end to end).

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
(``rule_out``, one 64-bit mask per split). The row's leaf is then the lowest bit left: a leaf
left of it has a common ancestor with it that sent the row right, which cleared it, and nothing
clears the leaf itself, whose ancestors' left subtrees hold it only where they sent the row left.
A 7-leaf tree is 6 tests a row whatever its path, each the same compare over a block of rows laid
out column by column: no load waits on the one before, and the compiler turns the compares into
vector instructions. Trees of more than 64 leaves (a bit each) are refused: LightGBM's own
prediction then scores a baseline configured so (``LightGBMBaseline.score``); the teacher and
the adoption model grow 7. Numerical columns that no split treats as missing
are cleaned (NaN -> 0.0, LightGBM's own rule) and categorical codes clipped to their vocabulary
before the walk, which leaves one compare or one table lookup per test.

The result is tested equal to ``Booster.predict(raw_score=True)`` on data with NaNs, zeros,
negative and unseen categories (``tests/test_forest.py``): each class's leaves are summed in
the trees' order, as LightGBM sums them.

    >>> forest = Forest.from_model_text(booster.model_to_string(num_iteration=best))
    >>> forest.raw_score(x)     # float64 [n, K], as booster.predict(x, raw_score=True)
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

_CATEGORICAL = 1
ZERO_THRESHOLD = float(np.float32(1e-35))  # LightGBM's kZeroThreshold, a float literal widened
_MAX_LEAVES = 64  # a bit per leaf in one 64-bit word: larger trees are refused
_ROWS_PER_THREAD = 2048  # below this a thread's start costs more than its share of the walk


@dataclass(frozen=True, eq=False)
class Forest:
    """Every tree of a LightGBM model in one set of arrays.

    Per tree t: its splits from ``node_start[t]`` to ``node_start[t + 1]`` (LightGBM's order), its
    leaves, left to right, from ``leaf_start[t]`` to ``leaf_start[t + 1]``, its class
    ``tree_class`` int32 [T]. Per split: ``feature`` int32, ``threshold`` float64, ``kind`` int8
    (0 a plain compare, 1 a category lookup in ``go_left`` uint8 from ``table_start``, 2 a compare
    with LightGBM's missing-value rule in ``flags``), ``rule_out`` uint64, the tree's leaves with
    the bits of the split's left subtree cleared (a row sent right keeps only these). Columns:
    ``clean`` int32, numerical columns whose NaN is read as 0.0; ``categorical`` int32 with
    ``vocabulary`` int32, the codes any split names (a code outside them, NaN or negative reads
    as ``vocabulary``, which every split sends right).
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
    table_start: np.ndarray
    rule_out: np.ndarray
    go_left: np.ndarray
    leaf_value: np.ndarray
    clean: np.ndarray
    categorical: np.ndarray
    vocabulary: np.ndarray

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

        clean = sorted(set(range(n_features)) - categorical.keys() - with_missing)
        return cls(
            n_classes=n_classes,
            n_features=n_features,
            node_start=np.asarray(node_start, np.int64),
            leaf_start=np.asarray(leaf_start, np.int64),
            tree_class=np.arange(len(trees), dtype=np.int32) % n_classes,
            feature=joined("feature", np.int32),
            threshold=joined("threshold", np.float64),
            kind=joined("kind", np.int8),
            flags=joined("flags", np.int8),
            table_start=joined("table_start", np.int64),
            rule_out=joined("rule_out", np.uint64),
            go_left=go_left.joined(),
            leaf_value=joined("leaf", np.float64),
            clean=np.asarray(clean, np.int32),
            categorical=np.asarray(sorted(categorical), np.int32),
            vocabulary=np.asarray([categorical[f] for f in sorted(categorical)], np.int32),
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
        # One layout for every caller: [F, n], row-major, each feature's values in one run. numba
        # compiles a loop anew for each array layout it meets: with three (a batch's column-major
        # matrix, a request's row, a thread's slice) a cold cache cost a service's first request
        # about a second (a reviewer). A copy, which the cleaning below writes to; from
        # ``LightGBMBaseline.matrix`` (column-major already) a plain memory copy.
        columns = np.array(x.T, dtype=np.float64, order="C", copy=True)
        n = len(x)
        # LightGBM reads |x| <= kZeroThreshold (1e-35 as a float32) as 0.0 before any tree sees
        # it, NaN as 0.0 in the columns no tree reads as missing, and category codes as integers
        prepare, walk = _compiled()
        prepare(columns, self.clean, self.categorical, self.vocabulary)
        out = np.zeros((n, self.n_classes), dtype=np.float64)
        arrays = (
            self.node_start,
            self.leaf_start,
            self.tree_class,
            self.feature,
            self.threshold,
            self.kind,
            self.flags,
            self.table_start,
            self.rule_out,
            self.go_left,
            self.leaf_value,
        )
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
            kind[child] = 1
            table = np.zeros(categorical[f] + 1, np.uint8)
            table[list(tree["categories"][child])] = 1
            table_start[child] = go_left.add(table)
        else:
            kind[child] = 2 if f in with_missing else 0
            threshold[child] = tree["threshold"][child]
        left = place(tree["left"][child])
        rule_out[child] = every & ~left
        return left | place(tree["right"][child])

    place(0 if splits else ~0)
    return feature, threshold, kind, flags, table_start, rule_out, leaves


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
    """The compiled loops (``finrec.training.forest_walk``: prepare, walk), imported on first
    use: numba (~0.5 s to import) loads only for a model that blends."""
    from finrec.training.forest_walk import prepare, walk

    return prepare, walk
