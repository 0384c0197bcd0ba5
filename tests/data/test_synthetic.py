"""Tests of the synthetic bank generator (finrec.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from finrec.data.schema import (
    AGE,
    CREDIT_SCORE,
    CUSTOMER_ID,
    CUSTOMERS,
    GROUND_TRUTH,
    HOLDINGS,
    HOLDINGS_HISTORY,
    INCOME,
    INTERACTIONS,
    PROBABILITY,
    PRODUCT_ID,
    PRODUCTS,
    RISK_MAX,
    RISK_MIN,
    SYNTHETIC,
    TIMESTAMP,
)
from finrec.data.synthetic import (
    BASE_CATALOGUE_SIZE,
    TEMPERATURE,
    GeneratorSettings,
    forbidden,
    generate,
    generate_blocks,
    utility,
)
from finrec.errors import ConfigError

SCHEMA = SYNTHETIC.schema()
RT, RL, CAT = SYNTHETIC.risk_tolerance, SYNTHETIC.risk_level, SYNTHETIC.category
N = 3000


@pytest.fixture(scope="module")
def bank() -> dict[str, pd.DataFrame]:
    return generate(GeneratorSettings(n_customers=N, seed=7))


@pytest.fixture(scope="module")
def hard() -> dict[str, pd.DataFrame]:
    return generate(GeneratorSettings(n_customers=N, seed=7, difficulty="hard"))


@pytest.fixture(scope="module")
def large() -> dict[str, pd.DataFrame]:
    return generate(GeneratorSettings(n_customers=1500, n_products=120, seed=3))


def _pairs(df: pd.DataFrame) -> pd.Series:
    return df[CUSTOMER_ID] + "|" + df[PRODUCT_ID]


# ---------------------------------------------------------------- structure


def test_tables_and_columns_follow_the_schema(bank):
    assert set(bank) == {CUSTOMERS, PRODUCTS, INTERACTIONS, HOLDINGS, GROUND_TRUTH}
    c, p = SCHEMA.customers, SCHEMA.products
    # The original columns in their order, then the compliance columns (some also model features).
    assert list(bank[CUSTOMERS].columns) == [
        c.id,
        *SYNTHETIC.customer_numeric,
        *SYNTHETIC.customer_categorical,
        c.risk,
        *c.compliance_columns,
    ]
    assert set(c.numeric) | set(c.categorical) <= set(bank[CUSTOMERS].columns)
    assert set(bank[PRODUCTS].columns) == {
        p.id,
        "name",
        *p.numeric,
        *p.categorical,
        p.risk,
        p.category,
        *p.compliance_columns,
    }
    assert list(bank[INTERACTIONS].columns) == [CUSTOMER_ID, PRODUCT_ID, TIMESTAMP]
    assert list(bank[HOLDINGS].columns) == [CUSTOMER_ID, PRODUCT_ID]
    assert list(bank[GROUND_TRUTH].columns) == [CUSTOMER_ID, PRODUCT_ID, PROBABILITY]
    assert len(bank[CUSTOMERS]) == N and len(bank[PRODUCTS]) == BASE_CATALOGUE_SIZE


def test_ground_truth_can_be_switched_off():
    out = generate(GeneratorSettings(n_customers=50, ground_truth=False))
    assert GROUND_TRUTH not in out and INTERACTIONS in out


def test_dtypes_and_ranges(bank):
    cust, prod = bank[CUSTOMERS], bank[PRODUCTS]
    for col in SCHEMA.customers.numeric:
        assert pd.api.types.is_numeric_dtype(cust[col]), col
        assert cust[col].notna().all() and np.isfinite(cust[col]).all(), col
    for col in SCHEMA.products.numeric:
        assert pd.api.types.is_numeric_dtype(prod[col]), col
    for frame, col in ((cust, RT), (prod, RL)):
        assert pd.api.types.is_integer_dtype(frame[col])
        assert frame[col].between(RISK_MIN, RISK_MAX).all()
    for col in SCHEMA.customers.categorical:
        assert cust[col].map(type).eq(str).all(), col
    assert cust[AGE].between(18, 85).all()
    assert cust[CREDIT_SCORE].between(300, 850).all()
    assert cust["credit_utilization"].between(0, 1).all()
    assert cust["digital_engagement"].between(0, 1).all()
    assert (cust["tenure_years"] <= cust[AGE] - 18).all()
    assert (cust[INCOME] > 0).all() and (cust["savings"] >= 0).all()
    assert (cust["debt"] >= cust["loan_amount"]).all()
    np.testing.assert_allclose(cust["debt_to_income"], cust["debt"] / cust[INCOME], atol=1e-4)
    assert cust["region"].nunique() == 6
    assert set(cust["employment"]) == {"employed", "self_employed", "unemployed", "retired", "student"}
    assert set(cust["education"]) <= {"secondary", "bachelor", "master", "doctorate"}
    assert set(cust["channel"]) == {"branch", "online", "mobile", "mixed"}
    assert (prod["min_age"] < prod["max_age"]).all()
    assert set(prod["digital_only"]) <= {0, 1}


def test_ids_unique_and_readable(bank):
    cust, prod = bank[CUSTOMERS], bank[PRODUCTS]
    assert cust[CUSTOMER_ID].is_unique and prod[PRODUCT_ID].is_unique
    assert cust[CUSTOMER_ID].iloc[0] == "C0000001"
    assert cust[CUSTOMER_ID].str.fullmatch(r"C\d{7}").all()
    assert {
        "CUR_BASIC",
        "SAV_PLUS",
        "TD_12M",
        "CC_GOLD",
        "PL_STANDARD",
        "MORT_FIXED25",
        "FUND_EQUITY",
        "PENSION_GROWTH",
        "INS_HOME",
    } <= set(prod[PRODUCT_ID])
    assert prod[CAT].nunique() >= 9


def test_links_reference_existing_ids_without_duplicates(bank):
    customers = set(bank[CUSTOMERS][CUSTOMER_ID])
    products = set(bank[PRODUCTS][PRODUCT_ID])
    for name in (INTERACTIONS, HOLDINGS, GROUND_TRUTH):
        table = bank[name]
        assert table[CUSTOMER_ID].isin(customers).all(), name
        assert table[PRODUCT_ID].isin(products).all(), name
        assert not _pairs(table).duplicated().any(), name
    held = set(_pairs(bank[HOLDINGS]))
    assert not _pairs(bank[INTERACTIONS]).isin(held).any()


def test_holdings_one_to_three_and_current_accounts_common(bank):
    h = bank[HOLDINGS].merge(bank[PRODUCTS][[PRODUCT_ID, CAT]], on=PRODUCT_ID)
    per_customer = h.groupby(CUSTOMER_ID).size().reindex(bank[CUSTOMERS][CUSTOMER_ID], fill_value=0)
    assert per_customer.between(1, 3).all()
    with_current = h.loc[h[CAT] == "current_account", CUSTOMER_ID].nunique() / N
    assert with_current > 0.9


def test_timestamps_are_2026_dates_in_pick_order(bank):
    ts = bank[INTERACTIONS][TIMESTAMP]
    assert ts.str.fullmatch(r"2026-\d\d-\d\d").all()
    parsed = pd.to_datetime(ts, format="%Y-%m-%d")
    assert parsed.dt.year.eq(2026).all()
    # within a customer the rows are in adoption order, dated ascending
    assert (parsed.groupby(bank[INTERACTIONS][CUSTOMER_ID]).diff().dropna() >= pd.Timedelta(0)).all()


def test_default_settings_give_enough_data_points():
    out = generate()
    assert len(out[CUSTOMERS]) == GeneratorSettings().n_customers
    assert len(out[INTERACTIONS]) + len(out[HOLDINGS]) >= 10_000


def test_adoption_rate_follows_settings(bank, hard):
    assert bank[INTERACTIONS].shape[0] / N == pytest.approx(1.6, abs=0.15)
    assert hard[INTERACTIONS].shape[0] / N == pytest.approx(1.0, abs=0.12)
    per = bank[INTERACTIONS].groupby(CUSTOMER_ID).size()
    none = 1 - len(per) / N
    assert 0.05 < none < 0.2  # some customers adopt nothing
    low = generate(GeneratorSettings(n_customers=2000, adoptions_per_customer=0.5))
    assert low[INTERACTIONS].shape[0] / 2000 == pytest.approx(0.5, abs=0.08)


# ---------------------------------------------------------------- ground truth and signal


def test_ground_truth_is_a_distribution_over_non_held_products(bank):
    gt = bank[GROUND_TRUTH]
    sums = gt.groupby(CUSTOMER_ID)[PROBABILITY].sum()
    assert len(sums) == N
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-9)
    # Positive exactly where the rules allow the product (forbidden ones are never adopted).
    rules = forbidden(bank[CUSTOMERS], bank[PRODUCTS])
    rows = pd.Index(bank[CUSTOMERS][CUSTOMER_ID]).get_indexer(gt[CUSTOMER_ID])
    cols = pd.Index(bank[PRODUCTS][PRODUCT_ID]).get_indexer(gt[PRODUCT_ID])
    np.testing.assert_array_equal(gt[PROBABILITY].to_numpy() > 0, ~rules[rows, cols])
    assert rules[rows, cols].mean() > 0.05  # the rules bite
    assert not _pairs(gt).isin(set(_pairs(bank[HOLDINGS]))).any()
    assert len(gt) == N * len(bank[PRODUCTS]) - len(bank[HOLDINGS])


def test_first_adoptions_match_ground_truth(bank):
    """Expected first-adoption counts per product (sum of probabilities over adopters) match the
    observed ones: the ground truth is the distribution the adoptions were drawn from."""
    first = bank[INTERACTIONS].groupby(CUSTOMER_ID, sort=False).head(1)
    adopters = set(first[CUSTOMER_ID])
    gt = bank[GROUND_TRUTH]
    expected = gt[gt[CUSTOMER_ID].isin(adopters)].groupby(PRODUCT_ID)[PROBABILITY].sum()
    observed = first[PRODUCT_ID].value_counts().reindex(expected.index, fill_value=0)
    z = (observed - expected) / np.sqrt(expected * (1 - expected / len(adopters)))
    assert (z.abs() < 5).all(), z.sort_values()


@pytest.mark.parametrize("which, difficulty", [("bank", "default"), ("hard", "hard"), ("large", "default")])
def test_utility_reproduces_ground_truth(which, difficulty, request):
    bank = request.getfixturevalue(which)
    cust, prod = bank[CUSTOMERS].iloc[:200], bank[PRODUCTS]
    ids, pids = list(cust[CUSTOMER_ID]), list(prod[PRODUCT_ID])
    h = bank[HOLDINGS]
    h = h[h[CUSTOMER_ID].isin(ids)]
    held = np.zeros((len(ids), len(pids)), dtype=bool)
    held[pd.Index(ids).get_indexer(h[CUSTOMER_ID]), pd.Index(pids).get_indexer(h[PRODUCT_ID])] = True
    U = utility(cust, prod, held, difficulty=difficulty) / TEMPERATURE[difficulty]
    U[held | forbidden(cust, prod)] = -np.inf
    e = np.exp(U - U.max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)
    gt = bank[GROUND_TRUTH]
    gt = gt[gt[CUSTOMER_ID].isin(ids)]
    got = prob[pd.Index(ids).get_indexer(gt[CUSTOMER_ID]), pd.Index(pids).get_indexer(gt[PRODUCT_ID])]
    np.testing.assert_allclose(got, gt[PROBABILITY].to_numpy(), rtol=1e-9)


def _hit_rate_at_5(out: dict[str, pd.DataFrame]) -> tuple[float, float]:
    """Hit-rate@5 of each customer's first adoption: oracle (ground truth) vs global popularity,
    both ranking only the products the customer does not hold."""
    first = out[INTERACTIONS].groupby(CUSTOMER_ID, sort=False).head(1)[[CUSTOMER_ID, PRODUCT_ID]]
    gt = out[GROUND_TRUTH].copy()
    gt["popularity"] = gt[PRODUCT_ID].map(out[INTERACTIONS][PRODUCT_ID].value_counts()).fillna(0)
    hits = []
    for col in (PROBABILITY, "popularity"):
        rank = gt.groupby(CUSTOMER_ID)[col].rank(ascending=False, method="first")
        top = gt.loc[rank <= 5, [CUSTOMER_ID, PRODUCT_ID]]
        hits.append(len(first.merge(top, on=[CUSTOMER_ID, PRODUCT_ID])) / len(first))
    return hits[0], hits[1]


@pytest.mark.parametrize("which", ["bank", "hard"])
def test_oracle_beats_popularity(which, request):
    oracle, popularity = _hit_rate_at_5(request.getfixturevalue(which))
    assert oracle > popularity + 0.1, (oracle, popularity)
    assert popularity > 0.25  # the popularity baseline is meaningful, not trivial


def test_hard_is_noisier(bank, hard):
    def top_prob(out):
        return out[GROUND_TRUTH].groupby(CUSTOMER_ID)[PROBABILITY].max().mean()

    assert top_prob(hard) < top_prob(bank)


def test_suitability_is_rarely_broken(bank, hard, large):
    for out in (bank, hard, large):
        for name in (INTERACTIONS, HOLDINGS):
            m = out[name].merge(out[CUSTOMERS][[CUSTOMER_ID, RT]], on=CUSTOMER_ID)
            m = m.merge(out[PRODUCTS][[PRODUCT_ID, RL]], on=PRODUCT_ID)
            assert (m[RL] > m[RT]).mean() < 0.01, name


def test_life_stage_and_complementarity_show_in_adoptions(bank):
    a = bank[INTERACTIONS].merge(bank[CUSTOMERS][[CUSTOMER_ID, AGE]], on=CUSTOMER_ID)
    a = a.merge(bank[PRODUCTS][[PRODUCT_ID, CAT]], on=PRODUCT_ID)
    assert a.loc[a[CAT] == "mortgage", AGE].between(25, 50).mean() > 0.7
    assert a.loc[a[CAT] == "pension", AGE].median() < a.loc[a[CAT] == "term_deposit", AGE].median()
    h = bank[HOLDINGS].merge(bank[PRODUCTS][[PRODUCT_ID, CAT]], on=PRODUCT_ID)
    mortgage_holders = set(h.loc[h[CAT] == "mortgage", CUSTOMER_ID])
    home = set(bank[INTERACTIONS].loc[bank[INTERACTIONS][PRODUCT_ID] == "INS_HOME", CUSTOMER_ID])
    rate_holders = len(home & mortgage_holders) / len(mortgage_holders)
    rate_others = len(home - mortgage_holders) / (N - len(mortgage_holders))
    assert rate_holders > 2 * rate_others


# ---------------------------------------------------------------- customer realism


def test_banker_correlations(bank):
    c = bank[CUSTOMERS]
    young = c[c[AGE] < 50]
    assert young[AGE].corr(young[INCOME]) > 0.1
    assert c[CREDIT_SCORE].corr(c["credit_utilization"]) < -0.3
    assert c[AGE].corr(c["digital_engagement"]) < -0.3
    ranks = c[[INCOME, CREDIT_SCORE, "savings"]].rank()  # Spearman without scipy
    assert ranks[INCOME].corr(ranks[CREDIT_SCORE]) > 0.1
    assert ranks[INCOME].corr(ranks["savings"]) > 0.3
    edu = c.groupby("education")[INCOME].median()
    assert edu["secondary"] < edu["master"]
    emp = c.groupby("employment")[INCOME].median()
    assert emp["student"] < emp["employed"] and emp["unemployed"] < emp["employed"]
    assert c.loc[c["employment"] == "student", AGE].max() < 40
    assert c.loc[c["employment"] == "retired", AGE].min() >= 50
    married = c["marital_status"].eq("married")
    assert married[c[AGE] < 25].mean() < married[c[AGE].between(35, 55)].mean()
    # young, wealthy customers tolerate more risk
    assert c[RT].corr(c[AGE]) < 0 and c[RT].corr(np.log(c[INCOME])) > 0
    mobile = c.groupby("channel")["digital_engagement"].mean()
    assert mobile["mobile"] > mobile["branch"]


# ---------------------------------------------------------------- catalogue size


def test_large_catalogue_builds_variants(large):
    prod = large[PRODUCTS]
    assert len(prod) == 120 and prod[PRODUCT_ID].is_unique
    variants = prod[PRODUCT_ID].str.contains(r"_V\d{2}$")
    assert variants.sum() == 120 - BASE_CATALOGUE_SIZE
    base = generate(GeneratorSettings(n_customers=10))[PRODUCTS]
    assert set(prod[CAT]) == set(base[CAT])
    # variants differ from their base in at least one attribute
    assert prod.drop(columns=[PRODUCT_ID, "name"]).duplicated().sum() < 5
    gt = large[GROUND_TRUTH]
    np.testing.assert_allclose(gt.groupby(CUSTOMER_ID)[PROBABILITY].sum(), 1.0, atol=1e-9)
    assert large[INTERACTIONS][PRODUCT_ID].nunique() > 60


def test_small_catalogue_keeps_core_products():
    out = generate(GeneratorSettings(n_customers=300, n_products=5))
    prod = out[PRODUCTS]
    assert len(prod) == 5 and "CUR_BASIC" in set(prod[PRODUCT_ID])
    assert not _pairs(out[INTERACTIONS]).isin(set(_pairs(out[HOLDINGS]))).any()
    # In a catalogue this small the rules can leave a customer nothing: no adoption, probability 0.
    sums = out[GROUND_TRUTH].groupby(CUSTOMER_ID)[PROBABILITY].sum()
    assert np.all(np.isclose(sums, 1.0, atol=1e-9) | (sums == 0))
    assert not set(sums.index[sums == 0]) & set(out[INTERACTIONS][CUSTOMER_ID])


# ---------------------------------------------------------------- reproducibility and settings


def test_same_settings_same_frames():
    s = GeneratorSettings(n_customers=500, n_products=40, seed=11)
    a, b = generate(s), generate(s)
    assert a.keys() == b.keys()
    for key in a:
        pd.testing.assert_frame_equal(a[key], b[key])


def test_different_seed_different_frames():
    a = generate(GeneratorSettings(n_customers=500, seed=1))
    b = generate(GeneratorSettings(n_customers=500, seed=2))
    assert not a[CUSTOMERS].equals(b[CUSTOMERS])
    assert not a[INTERACTIONS].equals(b[INTERACTIONS])


def test_customers_do_not_depend_on_catalogue_size():
    a = generate(GeneratorSettings(n_customers=200, seed=5))[CUSTOMERS]
    b = generate(GeneratorSettings(n_customers=200, seed=5, n_products=60))[CUSTOMERS]
    pd.testing.assert_frame_equal(a, b)


# ---------------------------------------------------------------- blocks (banks larger than memory)


def _fingerprint(frame: pd.DataFrame) -> int:
    text = {c: str for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)}
    return int(pd.util.hash_pandas_object(frame.astype(text), index=False).sum() % (1 << 61))


def test_a_bank_of_one_block_is_the_bank_generate_always_made():
    # The benchmarks' stored figures were measured on these draws (taken from the code before
    # blocks existed): a bank that fits one block must keep them to the bit.
    settings = GeneratorSettings(n_customers=400, seed=0, months=3)
    blocks = list(generate_blocks(settings))
    assert len(blocks) == 1
    assert {name: _fingerprint(frame) for name, frame in blocks[0].items()} == {
        CUSTOMERS: 709979911659222564,
        GROUND_TRUTH: 2115905218523098051,
        HOLDINGS: 906248606620145480,
        HOLDINGS_HISTORY: 1077669246742252662,
        INTERACTIONS: 1851696968522585930,
        PRODUCTS: 548588070737731577,
    }
    whole = generate(settings)
    for name in whole:
        pd.testing.assert_frame_equal(whole[name], blocks[0][name])


@pytest.fixture(scope="module")
def blocked():
    settings = GeneratorSettings(n_customers=2100, seed=4, months=4)
    return settings, list(generate_blocks(settings, block_customers=1000))


def test_blocks_run_ids_on_and_hold_their_own_links(blocked):
    settings, blocks = blocked
    assert [len(b[CUSTOMERS]) for b in blocks] == [1000, 1000, 100]
    assert PRODUCTS in blocks[0] and all(PRODUCTS not in b for b in blocks[1:])
    ids = np.concatenate([b[CUSTOMERS][CUSTOMER_ID].to_numpy() for b in blocks])
    assert ids.tolist() == [f"C{i:07d}" for i in range(1, 2101)]
    for block in blocks:
        own = set(block[CUSTOMERS][CUSTOMER_ID])
        for name in (HOLDINGS, INTERACTIONS, GROUND_TRUTH, HOLDINGS_HISTORY):
            assert set(block[name][CUSTOMER_ID].astype(str)) <= own, name
        assert block[HOLDINGS][CUSTOMER_ID].nunique() == len(own)  # everyone holds something


def test_blocks_draw_new_customers_from_one_catalogue(blocked):
    settings, blocks = blocked
    # The same products as the seed's one-block bank, and customers that are new draws, not
    # the first block repeated.
    pd.testing.assert_frame_equal(blocks[0][PRODUCTS], generate(GeneratorSettings(n_customers=50, seed=4))[PRODUCTS])
    first, second = (b[CUSTOMERS].drop(columns=CUSTOMER_ID).reset_index(drop=True) for b in blocks[:2])
    assert (first[INCOME] != second[INCOME]).mean() > 0.9
    # Same kind of draw: every block adopts at the bank's rate.
    rates = [len(b[INTERACTIONS]) / len(b[CUSTOMERS]) for b in blocks[:2]]
    assert abs(rates[0] - rates[1]) < 0.15 * max(rates), rates
    again = list(generate_blocks(settings, block_customers=1000))
    for a, b in zip(blocks, again):
        for name in a:
            pd.testing.assert_frame_equal(a[name], b[name])


def test_generate_joins_the_blocks(blocked):
    settings, blocks = blocked
    whole = generate(settings, block_customers=1000)
    for name in (CUSTOMERS, HOLDINGS, INTERACTIONS, GROUND_TRUTH):
        joined = pd.concat([b[name] for b in blocks if name in b], ignore_index=True)
        pd.testing.assert_frame_equal(whole[name], joined)
    history = whole[HOLDINGS_HISTORY]
    assert isinstance(history[CUSTOMER_ID].dtype, pd.CategoricalDtype)
    for column in (CUSTOMER_ID, PRODUCT_ID):
        expected = np.concatenate([b[HOLDINGS_HISTORY][column].astype(str).to_numpy() for b in blocks])
        assert (history[column].astype(str).to_numpy() == expected).all()


def test_block_size_is_checked_when_asked_not_when_drawn():
    with pytest.raises(ConfigError, match="block_customers"):
        generate_blocks(GeneratorSettings(n_customers=10), block_customers=0)
    with pytest.raises(ConfigError, match="n_customers"):
        generate_blocks(GeneratorSettings(n_customers=0))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"n_customers": 0}, "n_customers"),
        ({"n_customers": 2.5}, "n_customers"),
        ({"n_customers": True}, "n_customers"),
        ({"n_products": 4}, "n_products"),
        ({"n_products": 10**6}, "n_products"),
        ({"seed": -1}, "seed"),
        ({"seed": "x"}, "seed"),
        ({"difficulty": "extreme"}, "difficulty"),
        ({"adoptions_per_customer": 0}, "adoptions_per_customer"),
        ({"adoptions_per_customer": float("nan")}, "adoptions_per_customer"),
        ({"adoptions_per_customer": 100}, "adoptions_per_customer"),
        ({"ground_truth": "yes"}, "ground_truth"),
    ],
)
def test_invalid_settings_raise_config_error(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        generate(GeneratorSettings(**kwargs))


def test_settings_must_be_generator_settings():
    with pytest.raises(ConfigError, match="GeneratorSettings"):
        generate({"n_customers": 10})
