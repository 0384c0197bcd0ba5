"""A LightGBM multiclass booster's trees as flat arrays, walked by one compiled loop.

The tree blend runs the teacher on every customer scored. LightGBM's own ``predict`` took 98-105 µs
a customer on one core for the default bank's teacher (2,050 trees: 25 products x 82 rounds), 9x
the rest of batch scoring; this walk takes 45-57 µs on the same trees and inputs (one core; both
over 100,000 customers, one after the other, ``benchmarks/batch_scoring.py`` has the end to end).

The arrays come from the booster's text format, the one ``tree_blend.json`` stores, so every
threshold is the exact double LightGBM compares against. The decision rules are LightGBM's
(``include/LightGBM/tree.h``):

- numerical: a NaN counts as 0.0 unless the node's missing type is NaN; a missing value
  (type Zero: |x| <= 1e-35; type NaN: NaN) goes to the node's default side; otherwise left iff
  ``x <= threshold``;
- categorical: NaN, or a value whose ``int(x)`` is negative, goes right; else left iff ``int(x)``
  is in the node's category bitset;
- before any tree, |x| <= kZeroThreshold (1e-35 as a float32) reads as 0.0.

Each tree is laid out complete (heap order, the children of node k at 2k+1 and 2k+2; a leaf above
the tree's depth is reached through pass-through nodes whose threshold is +inf), so a row takes
exactly ``depth`` steps and the rows of a block step together, level by level: independent work
the processor overlaps, where a walk of one row down one tree waits on every load. (Walking
each row down its own path instead, 3-4 of a tree's 4-6 levels with no pass-through nodes, was
measured slower on the default bank's teacher and real customers: 43.7 against 33.1 µs a
customer, one core, interleaved in one process; on random inputs it had looked faster.) Numerical
columns that no node treats as missing are cleaned (NaN -> 0.0, LightGBM's own rule) and
categorical codes clipped to their vocabulary before the walk, which leaves one compare or one
table lookup per step.

The result is tested equal to ``Booster.predict(raw_score=True)`` on data with NaNs, zeros,
negative and unseen categories (``tests/test_forest.py``).

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
_MAX_DEPTH = 20  # a complete tree of depth d has 2^d - 1 nodes: deeper trees are refused
_ROWS_PER_THREAD = 2048  # below this a thread's start costs more than its share of the walk


@dataclass(frozen=True, eq=False)
class Forest:
    """Every tree of a LightGBM model, complete and in heap order, in one set of arrays.

    Per tree t: ``depth`` int32 [T], its nodes from ``node_start[t]`` (2^depth - 1 of them), its
    leaves from ``leaf_start[t]`` (2^depth), its class ``tree_class`` int32 [T]. Per node:
    ``feature`` int32, ``threshold`` float64, ``kind`` int8 (0 a plain compare, 1 a category
    lookup in ``go_left`` uint8 from ``table_start``, 2 a compare with LightGBM's missing-value
    rule in ``flags``). Columns: ``clean`` int32, numerical columns whose NaN is read as 0.0;
    ``categorical`` int32 with ``vocabulary`` int32, the codes any split names (a code outside
    them, NaN or negative reads as ``vocabulary``, which every split sends right).
    """

    n_classes: int
    n_features: int
    depth: np.ndarray
    node_start: np.ndarray
    leaf_start: np.ndarray
    tree_class: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    kind: np.ndarray
    flags: np.ndarray
    table_start: np.ndarray
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

        depth, node_start, leaf_start = [], [0], [0]
        columns: dict[str, list] = {k: [] for k in ("feature", "threshold", "kind", "flags", "table_start", "leaf")}
        go_left = _Tables()
        for tree in trees:
            d, arrays = _layout(tree, categorical, with_missing, go_left)
            depth.append(d)
            node_start.append(node_start[-1] + 2**d - 1)
            leaf_start.append(leaf_start[-1] + 2**d)
            for name, values in zip(columns, arrays):
                columns[name].append(values)

        def joined(name: str, dtype) -> np.ndarray:
            return np.concatenate(columns[name]).astype(dtype) if columns[name] else np.zeros(0, dtype)

        clean = sorted(set(range(n_features)) - categorical.keys() - with_missing)
        return cls(
            n_classes=n_classes,
            n_features=n_features,
            depth=np.asarray(depth, np.int32),
            node_start=np.asarray(node_start, np.int64),
            leaf_start=np.asarray(leaf_start, np.int64),
            tree_class=np.arange(len(trees), dtype=np.int32) % n_classes,
            feature=joined("feature", np.int32),
            threshold=joined("threshold", np.float64),
            kind=joined("kind", np.int8),
            flags=joined("flags", np.int8),
            table_start=joined("table_start", np.int64),
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
        x = np.array(x, dtype=np.float64, order="C")  # a copy: the cleaning below writes to it
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"the forest reads {self.n_features} features; got an array of shape {x.shape}")
        # LightGBM reads |x| <= kZeroThreshold (1e-35 as a float32) as 0.0 before any tree sees
        # it, NaN as 0.0 in the columns no tree reads as missing, and category codes as integers
        prepare, walk = _compiled()
        prepare(x, self.clean, self.categorical, self.vocabulary)
        out = np.zeros((len(x), self.n_classes), dtype=np.float64)
        arrays = (
            self.depth,
            self.node_start,
            self.leaf_start,
            self.tree_class,
            self.feature,
            self.threshold,
            self.kind,
            self.flags,
            self.table_start,
            self.go_left,
            self.leaf_value,
        )
        if threads is None:
            threads = _cpus() if threading.current_thread() is threading.main_thread() else 1
        parts = min(threads, len(x) // _ROWS_PER_THREAD)
        if parts <= 1:
            walk(x, *arrays, out)
            return out
        bounds = np.linspace(0, len(x), parts + 1).astype(int)
        with ThreadPoolExecutor(parts) as pool:
            done = [pool.submit(walk, x[a:b], *arrays, out[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
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
    """One parsed tree, complete to its depth d and in heap order: (d, (feature, threshold, kind,
    flags, table_start, leaves)). Its category tables are appended to ``go_left``."""
    d = _depth(tree, 0) if tree["feature"] else 0
    if d > _MAX_DEPTH:
        raise ValueError(
            f"a tree of depth {d} is not walked (at most {_MAX_DEPTH}: its complete layout has 2^depth nodes)"
        )
    nodes = 2**d - 1
    feature = np.zeros(nodes, np.int32)
    threshold = np.full(nodes, np.inf)  # a pass-through node: every value goes left
    kind = np.zeros(nodes, np.int8)
    flags = np.zeros(nodes, np.int8)
    table_start = np.zeros(nodes, np.int64)
    leaves = np.zeros(2**d)

    def place(child: int, k: int, level: int) -> None:
        if child < 0:  # a leaf: the leftmost position below k at the full depth
            for _ in range(d - level):
                k = 2 * k + 1
            leaves[k - nodes] = tree["leaf_value"][~child]
            return
        f = tree["feature"][child]
        feature[k] = f
        flags[k] = tree["decision"][child]
        if flags[k] & _CATEGORICAL:
            kind[k] = 1
            table = np.zeros(categorical[f] + 1, np.uint8)
            table[list(tree["categories"][child])] = 1
            table_start[k] = go_left.add(table)
        else:
            kind[k] = 2 if f in with_missing else 0
            threshold[k] = tree["threshold"][child]
        place(tree["left"][child], 2 * k + 1, level + 1)
        place(tree["right"][child], 2 * k + 2, level + 1)

    place(0 if tree["feature"] else ~0, 0, 0)
    return d, (feature, threshold, kind, flags, table_start, leaves)


def _depth(tree: dict, node: int) -> int:
    if node < 0:
        return 0
    return 1 + max(_depth(tree, tree["left"][node]), _depth(tree, tree["right"][node]))


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
