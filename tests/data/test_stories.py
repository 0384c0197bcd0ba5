"""The development banks (finrec.data.stories): valid data, exact ground truth that the sampled
adoptions follow, determinism per seed, and each story's own property."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from finrec.data.io import load_dataset, write_dataset
from finrec.data.schema import (
    AGE,
    CREDIT_SCORE,
    CUSTOMER_ID,
    CUSTOMERS,
    GROUND_TRUTH,
    HOLDINGS,
    INCOME,
    INTERACTIONS,
    MAX_AGE,
    MIN_AGE,
    MIN_CREDIT_SCORE,
    MIN_INCOME,
    PROBABILITY,
    PRODUCT_ID,
    PRODUCTS,
)
from finrec.data.stories import (
    DEFAULT_CUSTOMERS,
    LADDERS,
    MESSY_MISSING,
    STORIES,
    THRESHOLDS_MISSING,
    build,
    generate_story,
)
from finrec.errors import ConfigError

N = 2000


@pytest.fixture(scope="module")
def banks():
    return {story: generate_story(story, N, seed=5) for story in STORIES}


def _truth_matrix(tables):
    """Ground truth as a [n, P] matrix (NaN where held) in customers x products order."""
    ids = pd.Index(tables[CUSTOMERS][CUSTOMER_ID])
    pids = pd.Index(tables[PRODUCTS][PRODUCT_ID])
    gt = tables[GROUND_TRUTH]
    out = np.full((len(ids), len(pids)), np.nan)
    out[ids.get_indexer(gt[CUSTOMER_ID]), pids.get_indexer(gt[PRODUCT_ID])] = gt[PROBABILITY]
    return out, ids, pids


@pytest.mark.parametrize("story", STORIES)
def test_writes_and_reads_back_as_a_valid_dataset(story, banks, tmp_path):
    tables, schema = banks[story]
    write_dataset(tables, schema, tmp_path / story)
    data = load_dataset(tmp_path / story)
    assert len(data.customers) == N and data.schema == schema
    assert len(data.interactions) == len(tables[INTERACTIONS]) > N // 3
    assert len(data.ground_truth) == len(tables[GROUND_TRUTH])
    ids = tables[CUSTOMERS][CUSTOMER_ID]
    assert ids.is_unique and ids.str.fullmatch(r"CU-[0-9A-F]{9}").all()  # text ids


@pytest.mark.parametrize("story", STORIES)
def test_ground_truth_is_a_distribution_over_non_held_products(story, banks):
    tables, _ = banks[story]
    truth, ids, pids = _truth_matrix(tables)
    h = tables[HOLDINGS]
    held = np.zeros(truth.shape, bool)
    held[ids.get_indexer(h[CUSTOMER_ID]), pids.get_indexer(h[PRODUCT_ID])] = True
    assert np.array_equal(np.isnan(truth), held)  # a row for every product not held, none for held
    assert np.all(truth[~held] >= 0)
    np.testing.assert_allclose(np.nansum(truth, axis=1), 1.0, atol=1e-9)
    a = tables[INTERACTIONS]
    adopted = truth[ids.get_indexer(a[CUSTOMER_ID]), pids.get_indexer(a[PRODUCT_ID])]
    assert np.all(adopted > 0)  # never a held product (NaN) nor one the rules forbid (0)


@pytest.mark.parametrize("story", STORIES)
def test_first_adoptions_follow_the_ground_truth(story, banks):
    """The first pick of each adopter is drawn from the ground truth: the mean truth of the pick
    matches its expectation sum_p p^2 within 4 standard errors, and the per-product counts pass
    a chi-square check; a truth shuffled across customers fails the first check."""
    tables, _ = banks[story]
    truth, ids, pids = _truth_matrix(tables)
    first = tables[INTERACTIONS].drop_duplicates(CUSTOMER_ID, keep="first")  # rows are in pick order
    rows, cols = ids.get_indexer(first[CUSTOMER_ID]), pids.get_indexer(first[PRODUCT_ID])
    p = np.nan_to_num(truth[rows])
    expected = (p**2).sum(axis=1)
    se = np.sqrt(((p**3).sum(axis=1) - expected**2).sum()) / len(rows)
    observed = p[np.arange(len(rows)), cols]
    assert abs(observed.mean() - expected.mean()) < 4 * se
    shuffled = p[np.random.default_rng(0).permutation(len(rows))]
    assert shuffled[np.arange(len(rows)), cols].mean() < expected.mean() - 4 * se
    counts = np.bincount(cols, minlength=len(pids))
    exp_counts = p.sum(axis=0)
    ok = exp_counts >= 5
    chi2 = ((counts[ok] - exp_counts[ok]) ** 2 / exp_counts[ok]).sum()
    assert chi2 < ok.sum() + 5 * np.sqrt(2 * ok.sum())  # mean df, sd sqrt(2 df)


@pytest.mark.parametrize("story", STORIES)
def test_same_seed_same_bank_other_seed_other_customers(story, banks):
    tables, _ = banks[story]
    again, _ = generate_story(story, N, seed=5)
    for name in tables:
        pd.testing.assert_frame_equal(again[name], tables[name])
    other, _ = generate_story(story, N, seed=6)
    assert not other[CUSTOMERS][CUSTOMER_ID].equals(tables[CUSTOMERS][CUSTOMER_ID])
    pd.testing.assert_frame_equal(other[PRODUCTS], tables[PRODUCTS])  # the same bank, other customers


def test_unknown_story_and_bad_sizes_are_refused():
    with pytest.raises(ConfigError, match="unknown story 'nope'; choose one of thresholds"):
        generate_story("nope")
    with pytest.raises(ConfigError, match="n_customers"):
        generate_story("small", 0)
    with pytest.raises(ConfigError, match="seed"):
        generate_story("small", 10, seed=-1)


def test_thresholds_nobody_below_a_threshold_adopts_or_has_probability(banks):
    tables, schema = banks["thresholds"]
    c = tables[CUSTOMERS].set_index(CUSTOMER_ID)
    p = tables[PRODUCTS].set_index(PRODUCT_ID)
    gated = (p[MIN_INCOME] > 0).sum(), (p[MIN_CREDIT_SCORE] > 0).sum(), (p[MIN_AGE] > 18).sum()
    assert min(gated) >= 5
    for name in (INTERACTIONS, GROUND_TRUTH):
        pairs = tables[name]
        if name == GROUND_TRUTH:
            pairs = pairs[pairs[PROBABILITY] > 0]
        cust, prod = c.loc[pairs[CUSTOMER_ID]], p.loc[pairs[PRODUCT_ID]]
        below = (
            (cust[INCOME].to_numpy() < prod[MIN_INCOME].to_numpy())
            | (cust[CREDIT_SCORE].to_numpy() < prod[MIN_CREDIT_SCORE].to_numpy())
            | (cust[AGE].to_numpy() < prod[MIN_AGE].to_numpy())
            | (cust[AGE].to_numpy() > prod[MAX_AGE].to_numpy())
        )
        assert not below.any(), name  # NaN (missing) compares False: only observed values count
    # And the rules bind: many customers are below some product's threshold.
    gt = tables[GROUND_TRUTH]
    assert (gt[PROBABILITY] == 0).mean() > 0.1
    features = [*schema.customers.numeric, *schema.customers.categorical]
    rates = tables[CUSTOMERS][features].isna().mean()
    assert np.allclose(rates, round(THRESHOLDS_MISSING * N) / N)


def test_thresholds_probability_jumps_at_a_threshold():
    """Adoption utility is a step function of income: customers just below and just above an
    income tier edge (35k) differ more than customers 3k apart inside a tier."""
    bank = build("thresholds", 20000, seed=1)
    income = bank.customers[INCOME].to_numpy()
    U = bank.U0
    near = lambda lo, hi: (income >= lo) & (income < hi)  # noqa: E731
    across = np.abs(U[near(33000, 35000)].mean(0) - U[near(35000, 37000)].mean(0)).max()
    inside = np.abs(U[near(28000, 30000)].mean(0) - U[near(30000, 32000)].mean(0)).max()
    assert across > 0.3 and across > 2 * inside


def test_interactions_are_not_explained_by_main_effects():
    """The true utility is mostly interactions: a linear model of the customer columns explains
    little of it (median R^2 over products below 0.3)."""
    bank = build("interactions", 3000, seed=2)
    x = bank.customers[list(bank.schema.customers.numeric)].to_numpy(np.float64)
    x = np.column_stack([np.ones(len(x)), (x - x.mean(0)) / x.std(0)])
    r2 = []
    for p in range(bank.U0.shape[1]):
        y = bank.U0[:, p]
        resid = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
        r2.append(1 - resid.var() / y.var())
    assert np.median(r2) < 0.3


def test_small_is_a_small_sparse_bank():
    tables, _ = generate_story("small", seed=0)
    assert len(tables[CUSTOMERS]) == DEFAULT_CUSTOMERS["small"] == 5000
    assert 30 <= len(tables[PRODUCTS]) <= 34
    per_customer = tables[INTERACTIONS].groupby(CUSTOMER_ID).size()
    assert per_customer.max() == 1 and len(tables[INTERACTIONS]) / 5000 < 0.8


def test_messy_missing_rates_and_high_cardinality_signal(banks):
    tables, schema = banks["messy"]
    c = tables[CUSTOMERS]
    for column, share in MESSY_MISSING.items():
        assert c[column].isna().sum() == round(share * N), column
    # Missing not at random: income is missing far more often for the self-employed.
    missing = c[INCOME].isna()
    assert missing[c["employment"] == "self_employed"].mean() > 1.5 * missing[c["employment"] == "employed"].mean()
    levels = {col: c[col].nunique() for col in ("branch", "employer_sector", "postcode_area")}
    assert levels["branch"] > 120 and levels["employer_sector"] > 60 and levels["postcode_area"] > 200
    assert set(levels) <= set(schema.customers.categorical)
    # The branch carries signal: the true probability of a product differs between large branches.
    truth, ids, pids = _truth_matrix(tables)
    branch = c["branch"].to_numpy()
    masks = [branch == b for b in c["branch"].value_counts().index[:8]]
    f_stats = []
    for p in range(len(pids)):
        groups = [g[~np.isnan(g)] for g in (truth[m, p] for m in masks)]
        values = np.concatenate(groups)
        between = sum(len(g) * (g.mean() - values.mean()) ** 2 for g in groups) / (len(groups) - 1)
        within = sum(((g - g.mean()) ** 2).sum() for g in groups) / (len(values) - len(groups))
        f_stats.append(between / within)
    assert max(f_stats) > 8  # one-way ANOVA: F(7, ~300) > 8 has p < 1e-8 without a branch effect


def test_holdings_adoptions_climb_the_ladders(banks):
    tables, _ = banks["holdings"]
    previous = {}
    for _, steps in LADDERS:
        previous.update({b: a for a, b in zip(steps, steps[1:])})
    held = set(zip(tables[HOLDINGS][CUSTOMER_ID], tables[HOLDINGS][PRODUCT_ID]))
    a = tables[INTERACTIONS]
    next_rung = [p in previous and (c, previous[p]) in held for c, p in zip(a[CUSTOMER_ID], a[PRODUCT_ID])]
    assert np.mean(next_rung) > 0.5
    assert len(tables[HOLDINGS]) / N > 1.8


def test_cli_generate_story_and_its_errors(tmp_path, capsys):
    from finrec.cli import main

    assert main(["generate", "--out", str(tmp_path / "bank"), "--story", "small", "--customers", "300"]) == 0
    data = load_dataset(tmp_path / "bank")
    assert len(data.customers) == 300 and data.ground_truth is not None
    assert "branch" not in data.customers.columns and len(data.products) == 32
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--out", str(tmp_path / "x"), "--story", "nope"])
    assert exc.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    assert main(["generate", "--out", str(tmp_path / "y"), "--story", "messy", "--products", "40"]) == 2
    assert "--products applies to the default bank only" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
