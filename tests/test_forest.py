"""The walked forest equals LightGBM's own prediction, split rule by split rule."""

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from finrec.training.forest import Forest


def _frame(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Numerics with NaNs and exact zeros, one numeric that is never missing, and a categorical
    of 80 levels (its bitsets then span three 32-bit words); a label that reads all of them."""
    income = rng.lognormal(10, 1, n)
    income[rng.random(n) < 0.2] = np.nan
    balance = rng.normal(0, 1, n)
    balance[rng.random(n) < 0.3] = 0.0
    age = rng.integers(18, 90, n).astype(float)
    region = rng.integers(0, 80, n)
    logit = 0.8 * np.nan_to_num(np.log(income) - 10, nan=-1.5) + (balance == 0) + (age > 60) + (region % 7 == 0)
    label = np.digitize(logit + rng.logistic(0, 0.5, n), [0.0, 1.0, 2.0])
    frame = pd.DataFrame(
        {"income": income, "balance": balance, "age": age, "region": pd.Categorical(region, categories=range(80))}
    )
    return frame, label


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    frame, label = _frame(np.random.default_rng(0), 4000)
    params = {"objective": "multiclass", "num_class": 4, "num_leaves": 7, "min_data_in_leaf": 20, "verbose": -1}
    params |= {"cat_smooth": 1, "min_data_per_group": 5, "max_cat_threshold": 64, "num_threads": 1}
    return lgb.train(params, lgb.Dataset(frame, label), num_boost_round=30)


def _codes(frame: pd.DataFrame) -> np.ndarray:
    """float64 [n, 4] as LightGBM reads the frame: category codes, NaN where missing."""
    x = frame.assign(region=frame["region"].cat.codes.astype(float)).to_numpy(dtype=np.float64)
    x[x[:, 3] < 0, 3] = np.nan
    return x


def test_the_walk_equals_lightgbm_on_missing_zero_and_unseen_values(booster):
    text = booster.model_to_string()
    assert (
        "decision_type=" in text
        and any(  # the model has both kinds of split and a NaN rule
            int(d) & 1 for line in text.splitlines() if line.startswith("decision_type=") for d in line[14:].split()
        )
    )
    forest = Forest.from_model_text(text)
    assert (forest.kind == 1).any() and (forest.kind == 2).any()
    frame, _ = _frame(np.random.default_rng(1), 3000)
    x = _codes(frame)
    rng = np.random.default_rng(2)
    x[rng.random(len(x)) < 0.1, 3] = np.nan  # missing category
    x[rng.random(len(x)) < 0.05, 3] = 500.0  # a code no split names
    x[rng.random(len(x)) < 0.05, 3] = -3.0  # negative
    x[rng.random(len(x)) < 0.05, 2] = np.nan  # missing where training never had one
    x[rng.random(len(x)) < 0.05, 0] = 0.0
    expected = booster.predict(x, raw_score=True)
    np.testing.assert_array_equal(forest.raw_score(x), expected)
    # The caller's array is read, never cleaned in place.
    assert np.isnan(x[:, 3]).any()
    # Block boundaries (256 rows) and a single row change nothing.
    np.testing.assert_array_equal(forest.raw_score(x[255:513]), expected[255:513])
    np.testing.assert_array_equal(forest.raw_score(x[7:8]), expected[7:8])
    assert forest.raw_score(x[:0]).shape == (0, 4)


def test_a_best_iteration_and_one_leaf_trees_are_walked_as_saved(booster):
    forest = Forest.from_model_text(booster.model_to_string(num_iteration=10))
    assert len(forest.tree_class) == 40
    x = _codes(_frame(np.random.default_rng(3), 500)[0])
    np.testing.assert_array_equal(forest.raw_score(x), booster.predict(x, raw_score=True, num_iteration=10))
    # A regression on a constant label: one tree of one leaf, no splits at all.
    flat = lgb.train({"objective": "regression", "verbose": -1}, lgb.Dataset(np.ones((50, 2)), np.ones(50)), 1)
    one = Forest.from_model_text(flat.model_to_string())
    assert one.node_start.tolist() == [0, 0] and one.leaf_start.tolist() == [0, 1] and one.n_classes == 1
    np.testing.assert_allclose(one.raw_score(np.zeros((3, 2))), flat.predict(np.zeros((3, 2)), raw_score=True)[:, None])


def test_a_wrong_width_and_linear_trees_are_named(booster):
    forest = Forest.from_model_text(booster.model_to_string())
    with pytest.raises(ValueError, match=r"reads 4 features; got an array of shape \(2, 3\)"):
        forest.raw_score(np.zeros((2, 3)))
    x = np.random.default_rng(5).normal(size=(200, 2))
    linear = lgb.train({"objective": "regression", "linear_tree": True, "verbose": -1}, lgb.Dataset(x, x[:, 0]), 2)
    with pytest.raises(ValueError, match="linear trees"):
        Forest.from_model_text(linear.model_to_string())


def test_threads_walk_one_forest_at_once(booster):
    from concurrent.futures import ThreadPoolExecutor

    forest = Forest.from_model_text(booster.model_to_string())
    x = _codes(_frame(np.random.default_rng(4), 2000)[0])
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(forest.raw_score, np.array_split(x, 8)))
    expected = booster.predict(x, raw_score=True)
    np.testing.assert_array_equal(np.concatenate(parts), expected)
    # One call split over its own threads (2,048 rows each at least) writes every row once.
    wide = np.concatenate([x] * 4)
    np.testing.assert_array_equal(forest.raw_score(wide, threads=3), np.concatenate([expected] * 4))
    np.testing.assert_array_equal(forest.raw_score(wide, threads=1), np.concatenate([expected] * 4))


@pytest.mark.parametrize("zero_as_missing", [False, True])
def test_zero_as_missing_and_lightgbms_zero_threshold(zero_as_missing):
    # Zero set apart from the negatives: LightGBM splits at -kZeroThreshold (1e-35 as a float32),
    # or with zero_as_missing sends zeros to a default side (Zero-type splits). It reads
    # |x| <= kZeroThreshold as 0.0 before any tree: a value of exactly -kZeroThreshold sits on
    # the zero side, not at the split's threshold.
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3000, 3))
    x[rng.random(x.shape) < 0.3] = 0.0
    y = (x[:, 0] > 0.2) + 2.0 * (x[:, 1] == 0) + rng.normal(0, 0.1, 3000)
    params = {"objective": "regression", "zero_as_missing": zero_as_missing, "num_leaves": 7, "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(x, y), 20)
    forest = Forest.from_model_text(booster.model_to_string())
    k = 1.0000000180025095e-35
    if zero_as_missing:
        assert ((forest.flags >> 2) & 3 == 1).any()
    else:
        assert (forest.threshold == -k).any()
    probe = rng.normal(size=(400, 3))
    tiny = [k, -k, 5e-36, -5e-36, 2e-35, -2e-35, 0.0, np.inf, -np.inf, np.nan]
    # every value in every column: row i holds tiny[i], tiny[i + 1], tiny[i + 2]
    probe[: len(tiny)] = np.array(tiny)[(np.arange(len(tiny))[:, None] + np.arange(3)) % len(tiny)]
    np.testing.assert_array_equal(forest.raw_score(probe)[:, 0], booster.predict(probe, raw_score=True))


def test_odd_category_values_and_infinities_go_where_lightgbm_sends_them(booster):
    forest = Forest.from_model_text(booster.model_to_string())
    x = _codes(_frame(np.random.default_rng(7), 600)[0])
    odd = [-0.5, -0.99, 0.5, 3.7, 2.0**31, 1e300, -np.inf, np.inf, 79.999, -1e-40]
    x[: len(odd), 3] = odd
    x[len(odd) : 2 * len(odd), 0] = [np.inf, -np.inf] * (len(odd) // 2)
    np.testing.assert_array_equal(forest.raw_score(x), booster.predict(x, raw_score=True))


def test_trees_of_64_leaves_are_walked_and_65_refused():
    # Every bit of the 64-bit word is a leaf (the highest one included).
    rng = np.random.default_rng(8)
    x = rng.normal(size=(6000, 3))
    y = np.exp(3 * x[:, 0]) + np.sin(4 * x[:, 1]) + rng.normal(0, 0.01, 6000)
    params = {"objective": "regression", "num_leaves": 64, "min_data_in_leaf": 1, "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(x, y), 5)
    forest = Forest.from_model_text(booster.model_to_string())
    assert (np.diff(forest.leaf_start) == 64).any()
    probe = rng.normal(size=(1000, 3)) * 2
    np.testing.assert_array_equal(forest.raw_score(probe)[:, 0], booster.predict(probe, raw_score=True))
    bigger = lgb.train({**params, "num_leaves": 65}, lgb.Dataset(x, y), 1)
    with pytest.raises(ValueError, match=r"a tree of 65 leaves is not walked \(at most 64: one bit per leaf"):
        Forest.from_model_text(bigger.model_to_string())


def test_trees_of_more_leaves_than_bits_are_refused(booster, monkeypatch):
    from finrec.training import forest as forest_module

    monkeypatch.setattr(forest_module, "_MAX_LEAVES", 4)
    with pytest.raises(ValueError, match=r"a tree of \d+ leaves is not walked \(at most 4: one bit per leaf"):
        Forest.from_model_text(booster.model_to_string())


def test_every_caller_shares_one_compiled_walk(booster):
    # numba compiles a loop anew for each array layout: a service's first request after a batch
    # load paid about a second on a cold cache when rows, columns and slices each had their own.
    # (A forest's code and leaf-mask types are one more signature each: other tests' forests.)
    from finrec.training import forest_walk

    forest = Forest.from_model_text(booster.model_to_string())
    x = _codes(_frame(np.random.default_rng(9), 5000)[0])
    expected = booster.predict(x, raw_score=True)
    forest.raw_score(x[:10])
    compiled = len(forest_walk.walk.signatures)
    read_only = np.asfortranarray(x)  # as pandas' to_numpy hands out
    read_only.flags.writeable = False
    callers = ((x, 1), (np.asfortranarray(x), 1), (np.asfortranarray(x), 2), (x[4:5], 1), (read_only, 1))
    for data, threads in callers:
        np.testing.assert_array_equal(
            forest.raw_score(data, threads=threads), expected[4:5] if len(data) == 1 else expected
        )
    assert len(forest_walk.walk.signatures) == compiled


def _at_the_thresholds(forest: Forest, column: int, rng: np.random.Generator) -> np.ndarray:
    """Each threshold of ``column`` and the doubles either side of it, shuffled: the values a
    code must place exactly (``x <= threshold`` is left, one ulp above is right)."""
    cuts = np.unique(forest.threshold[(forest.feature == column) & (forest.kind != 1)])
    values = np.concatenate([cuts, np.nextafter(cuts, -np.inf), np.nextafter(cuts, np.inf)])
    return rng.permutation(values)


@pytest.mark.parametrize(
    "leaves, mask", [(8, np.uint8), (9, np.uint16), (16, np.uint16), (17, np.uint32), (33, np.uint64)]
)
def test_leaf_masks_take_the_narrowest_word_and_thresholds_of_wide_columns_two_bytes(leaves, mask):
    # 700 bins a column: more thresholds than a byte counts, so codes are two bytes wide.
    rng = np.random.default_rng(10)
    x = np.column_stack([rng.lognormal(0, 3, 8000), rng.normal(size=8000), rng.integers(0, 5, 8000)])
    y = np.sin(np.log(x[:, 0])) + x[:, 1] ** 2 + rng.normal(0, 0.05, 8000)
    params = {"objective": "regression", "num_leaves": leaves, "min_data_in_leaf": 2, "max_bin": 700, "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(x, y), 60)
    forest = Forest.from_model_text(booster.model_to_string())
    assert forest.rule_out.dtype == mask and np.diff(forest.leaf_start).max() > np.iinfo(mask).bits // 2
    wide = len(np.unique(forest.threshold[forest.feature == 0])) > 255
    assert forest.bound.dtype == (np.uint16 if wide else np.uint8)
    probe = np.tile(rng.normal(size=(1, 3)), (3000, 1))
    for column in (0, 1):
        values = _at_the_thresholds(forest, column, rng)[:3000]
        probe[: len(values), column] = values
    probe[-500:] = rng.normal(size=(500, 3)) * [50, 3, 3]
    np.testing.assert_array_equal(forest.raw_score(probe)[:, 0], booster.predict(probe, raw_score=True))


def test_every_missing_rule_on_every_split_is_lightgbms():
    # Each numerical split's missing type (none, zero, NaN, and 3, which LightGBM reads as none)
    # and default side rewritten at random
    # in the model text, which LightGBM loads as it is (without the header's tree sizes, which the
    # edit changes): every combination the walk's codes handle, against LightGBM's own reading,
    # on NaNs, zeros, tiny values and the thresholds.
    rng = np.random.default_rng(11)
    x = rng.normal(size=(4000, 3))
    x[rng.random(x.shape) < 0.2] = np.nan
    x[rng.random(x.shape) < 0.2] = 0.0
    y = np.nan_to_num(x[:, 0]) + (x[:, 1] == 0) + np.isnan(x[:, 2]) + rng.normal(0, 0.1, 4000)
    booster = lgb.train({"objective": "regression", "num_leaves": 7, "verbose": -1}, lgb.Dataset(x, y), 15)
    lines = booster.model_to_string().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("decision_type="):
            types = [int(rng.choice([0, 2, 4, 6, 8, 10, 12, 14])) for _ in line[14:].split()]
            lines[i] = "decision_type=" + " ".join(map(str, types))
    text = "\n".join(line for line in lines if not line.startswith("tree_sizes=")) + "\n"
    edited = lgb.Booster(model_str=text)
    forest = Forest.from_model_text(text)
    assert {0, 1, 2, 3} <= set(((forest.flags[forest.kind == 2] >> 2) & 3).tolist())
    probe = rng.normal(size=(3000, 3))
    probe[rng.random(probe.shape) < 0.2] = np.nan
    probe[rng.random(probe.shape) < 0.2] = 0.0
    probe[rng.random(probe.shape) < 0.05] = -1e-36
    for column in range(3):
        values = _at_the_thresholds(forest, column, rng)[:1000]
        probe[1000 : 1000 + len(values), column] = values
    np.testing.assert_array_equal(forest.raw_score(probe)[:, 0], edited.predict(probe, raw_score=True))


@pytest.mark.parametrize("levels", [3, 7, 8])
def test_small_categories_are_tested_as_bits_and_odd_codes_still_go_right(levels):
    # Up to 7 levels (and the code for "none of them") fit a byte's bits: each set is one AND.
    rng = np.random.default_rng(12)
    codes = rng.integers(0, levels, 5000)
    x = np.column_stack([codes, rng.normal(size=5000)]).astype(float)
    y = np.isin(codes, [0, levels - 1]) * 2.0 + x[:, 1] + rng.normal(0, 0.1, 5000)
    params = {"objective": "regression", "num_leaves": 7, "min_data_per_group": 5, "cat_smooth": 1, "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(x, y, categorical_feature=[0]), 20)
    forest = Forest.from_model_text(booster.model_to_string())
    assert (forest.kind == 3).any() == (levels < 8) and (forest.kind == 1).any() == (levels >= 8)
    probe = np.column_stack([rng.integers(0, levels, 2000), rng.normal(size=2000)]).astype(float)
    probe[:12, 0] = [np.nan, -1, -0.5, levels, levels + 0.5, 2.0**40, np.inf, -np.inf, 0.99, 1e-40, -1e-40, 300]
    np.testing.assert_array_equal(forest.raw_score(probe)[:, 0], booster.predict(probe, raw_score=True))


def test_thresholds_far_apart_or_crowded_are_placed_exactly():
    # A column whose values span 1e-300 to 1e300 (its thresholds crowd a few grid cells) and one
    # whose thresholds lie a few ulps apart (a grid too fine for the arithmetic): codes are
    # counted exactly all the same.
    rng = np.random.default_rng(13)
    spread = 10.0 ** rng.uniform(-300, 300, 6000)
    close = 1.0 + rng.integers(0, 40, 6000) * np.finfo(float).eps
    y = np.log10(spread) / 100 + (close > 1 + 20 * np.finfo(float).eps) + rng.normal(0, 0.05, 6000)
    x = np.column_stack([spread, close])
    params = {"objective": "regression", "num_leaves": 15, "min_data_in_leaf": 5, "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(x, y), 30)
    forest = Forest.from_model_text(booster.model_to_string())
    probe = x[:3000].copy()
    for column in (0, 1):
        values = _at_the_thresholds(forest, column, rng)[:1500]
        probe[: len(values), column] = values
    probe[-6:, 0] = [0.0, -1.0, 1e-320, np.inf, 1e308, 5e-324]
    np.testing.assert_array_equal(forest.raw_score(probe)[:, 0], booster.predict(probe, raw_score=True))
