"""The holdings history: the contract (reading, validation), the synthetic bank with a past and
the out-of-time split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from finrec.data import history as H
from finrec.data import schema as S
from finrec.data.io import dataset_tables, load_dataset, validate_tables, write_dataset
from finrec.data.split import split_by_time
from finrec.data.synthetic import GeneratorSettings, generate
from finrec.errors import ConfigError, DataError

MONTHS = 6
SETTINGS = GeneratorSettings(n_customers=800, seed=5, months=MONTHS)


@pytest.fixture(scope="module")
def past() -> dict[str, pd.DataFrame]:
    return generate(SETTINGS)


@pytest.fixture(scope="module")
def past_dataset(past):
    return validate_tables(S.SYNTHETIC.schema(), past)


# ------------------------------------------------------------------------------------ generator


def test_months_zero_is_the_bank_without_a_past():
    small = GeneratorSettings(n_customers=200, seed=2)
    before, now = generate(small), generate(GeneratorSettings(n_customers=200, seed=2, months=0))
    assert S.HOLDINGS_HISTORY not in now
    for name, frame in before.items():
        pd.testing.assert_frame_equal(frame, now[name])


def test_months_is_checked():
    with pytest.raises(ConfigError, match="months"):
        generate(GeneratorSettings(n_customers=10, months=-1))
    with pytest.raises(ConfigError, match="months"):
        generate(GeneratorSettings(n_customers=10, months=H.MAX_MONTHS + 1))


def test_the_past_is_month_ends_before_the_target_month(past):
    history, holdings, interactions = past[S.HOLDINGS_HISTORY], past[S.HOLDINGS], past[S.INTERACTIONS]
    dates = sorted(history[S.AS_OF].unique())
    assert [f"{d:%Y-%m-%d}" for d in dates] == [
        "2025-07-31",
        "2025-08-31",
        "2025-09-30",
        "2025-10-31",
        "2025-11-30",
        "2025-12-31",
    ]
    last = history[history[S.AS_OF] == dates[-1]]
    pairs = lambda df: set(zip(df[S.CUSTOMER_ID].astype(str), df[S.PRODUCT_ID].astype(str)))  # noqa: E731
    assert pairs(last) == pairs(holdings)  # holdings is the last snapshot
    stamps = pd.to_datetime(interactions[S.TIMESTAMP])
    assert stamps.min() >= pd.Timestamp("2026-01-01") and stamps.max() <= pd.Timestamp("2026-01-31")
    assert not pairs(interactions) & pairs(holdings)  # nobody adopts what they hold
    # Life cycles: products are closed as well as opened along the way.
    first = pairs(history[history[S.AS_OF] == dates[0]])
    assert first - pairs(last) and pairs(last) - first
    truth = past[S.GROUND_TRUTH].groupby(S.CUSTOMER_ID)[S.PROBABILITY].sum()
    assert np.allclose(truth[truth > 0], 1.0)


def test_the_generated_past_passes_the_contract(past_dataset):
    history = past_dataset.holdings_history
    assert history[S.AS_OF].dtype == "datetime64[ns]"
    assert isinstance(history[S.CUSTOMER_ID].dtype, pd.CategoricalDtype)
    assert set(history[S.CUSTOMER_ID].astype(str)) <= set(past_dataset.customer_ids)


def _market(P: int, types, durations):
    def top_m(G, m):
        order = np.argsort(-G, axis=1)
        mask = np.arange(P)[None, :] < m[:, None]
        return np.nonzero(mask)[0], order[mask]

    return H.Market(
        product_ids=np.array([f"P{i}" for i in range(P)], dtype=object),
        product_types=np.array(types, dtype=object),
        durations=np.array(durations),
        with_holdings=lambda U, held: U.copy(),
        top_m=top_m,
        temperature=1.0,
        monthly_p=0.3,
    )


def _identical(n: int, P: int):
    people = {
        "age": np.full(n, 50.0),
        "employed": np.zeros(n, bool),
        "dependents": np.zeros(n),
        "loan_to_income": np.zeros(n),
    }
    return np.zeros((n, P)), people


def test_the_truth_depends_on_the_past_alone():
    # Identical customers (same utility) differ only by what happened to them: those who closed
    # the card get a lower true chance of it than those who never held one, and those whose
    # deposit matured lately a higher chance of a new deposit. Compared as log odds against the
    # savings account, which no history term touches differently in the two groups (a
    # probability alone also depends on how many products are left to choose from).
    types = ["current_account", "credit_card", "term_deposit", "savings_account"]
    n, P = 4000, len(types)
    U0, people = _identical(n, P)
    held = np.zeros((n, P), bool)
    held[:, 0] = True
    held[: n // 2, 1] = True  # half hold the card
    held[n // 2 :, 2] = True  # the other half a 6-month deposit
    sim = H.simulate(
        U0, held, np.zeros((n, P), bool), people, _market(P, types, [0, 0, 6, 0]), 8, np.random.default_rng(0)
    )
    months = sim.snapshot_month
    ever = np.zeros((n, P), bool)
    ever[sim.snapshot_rows, sim.snapshot_cols] = True
    ever |= held
    closed_card = np.arange(n) < n // 2
    closed_card &= ~sim.held[:, 1]
    never_card = ~ever[:, 1]
    assert closed_card.sum() > 50 and never_card.sum() > 50
    p = sim.probability
    both = (p[:, 1] > 0) & (p[:, 3] > 0)
    odds = np.log(np.where(both, p[:, 1], 1) / np.where(both, p[:, 3], 1))
    assert odds[closed_card & both].mean() < odds[never_card & both].mean() - 0.5
    last = months.max()
    at_last = np.zeros((n, P), bool)
    at_last[sim.snapshot_rows[months == last - 2], sim.snapshot_cols[months == last - 2]] = True
    matured = at_last[:, 2] & ~sim.held[:, 2]  # held two months before the end, not any more
    never_deposit = ~ever[:, 2]
    assert matured.sum() > 50 and never_deposit.sum() > 50
    both = (p[:, 2] > 0) & (p[:, 3] > 0)
    odds = np.log(np.where(both, p[:, 2], 1) / np.where(both, p[:, 3], 1))
    assert (matured & both).sum() > 50
    assert odds[matured & both].mean() > odds[never_deposit & both].mean() + 0.3


# ------------------------------------------------------------------------------------ the contract


SCHEMA = {
    "customers": {"id": "customer_id", "numeric": ["age"], "categorical": [], "risk_tolerance": "risk"},
    "products": {"id": "product_id", "numeric": ["yield"], "categorical": [], "risk_level": "risk_level"},
}


def _tables(history=None, stamps=True):
    interactions = pd.DataFrame({"customer_id": [1, 2, 3], "product_id": ["p2", "p2", "p1"]})
    if stamps:
        interactions["timestamp"] = ["2026-01-05", "2026-01-20", "2026-02-03"]
    tables = {
        "customers": pd.DataFrame({"customer_id": [1, 2, 3], "age": [30, 40, 50], "risk": [1, 4, 7]}),
        "products": pd.DataFrame({"product_id": ["p1", "p2"], "yield": [0.1, 2.5], "risk_level": [1, 5]}),
        "interactions": interactions,
        "holdings": pd.DataFrame({"customer_id": [1, 2], "product_id": ["p1", "p1"]}),
    }
    if history is None:
        history = pd.DataFrame(
            {
                "customer_id": [1, 1, 2, 2, 1],
                "product_id": ["p1", "p1", "p1", "p1", "p1"],
                "as_of": ["2025-11-30", "2025-12-31", "2025-11-30", "2025-12-31", "2025-12-31"],
            }
        )
    tables["holdings_history"] = history
    return tables


def _write(tmp_path, tables, fmt="csv"):
    d = tmp_path / "data"
    d.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_csv(d / f"{name}.csv", index=False) if fmt == "csv" else df.to_parquet(d / f"{name}.parquet")
    (d / "schema.yaml").write_text(yaml.safe_dump(SCHEMA))
    return d


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_history_is_read_typed_and_deduplicated(tmp_path, fmt):
    dataset = load_dataset(_write(tmp_path, _tables(), fmt))
    history = dataset.holdings_history
    assert len(history) == 4  # the repeated (1, p1, 2025-12-31) row is dropped
    assert history[S.AS_OF].dtype == "datetime64[ns]"
    assert list(history[S.CUSTOMER_ID].astype(str)) == ["1", "1", "2", "2"]  # ids as text, like holdings
    absent = load_dataset(_write(tmp_path / "none", {k: v for k, v in _tables().items() if k != "holdings_history"}))
    assert absent.holdings_history is None


def test_history_round_trips_through_write_dataset(tmp_path):
    dataset = load_dataset(_write(tmp_path, _tables()))
    for fmt in ("csv", "parquet"):
        out = write_dataset(dataset_tables(dataset), dataset.schema, tmp_path / f"copy-{fmt}", fmt=fmt)
        again = load_dataset(out).holdings_history
        pd.testing.assert_series_equal(again[S.AS_OF], dataset.holdings_history[S.AS_OF])
        assert list(again[S.PRODUCT_ID].astype(str)) == list(dataset.holdings_history[S.PRODUCT_ID].astype(str))


def _history(**changes):
    h = pd.DataFrame({"customer_id": ["1", "2"], "product_id": ["p1", "p1"], "as_of": ["2025-12-31", "2025-12-31"]})
    for column, value in changes.items():
        if value is None:
            h = h.drop(columns=[column])
        else:
            h.loc[1, column] = value
    return h


@pytest.mark.parametrize(
    "history, fragments",
    [
        (_history(as_of=None), ("holdings_history", "missing column", "'as_of'")),
        (_history(customer_id="NOBODY"), ("holdings_history", "'NOBODY'", "not in customers")),
        (_history(product_id="GHOST"), ("holdings_history", "'GHOST'", "not in products")),
        (_history(customer_id=" "), ("holdings_history", "empty id", "row(s) 2")),
        (_history(as_of="31/31/2025"), ("'as_of'", "not dates", "row 2", "'31/31/2025'")),
        (_history(as_of=""), ("'as_of'", "missing date", "row(s) 2")),
        (_history(as_of="2026-01-20"), ("on or after their first adoption", "'2'", "2026-01-20", "split --by time")),
    ],
)
def test_bad_history_is_refused_with_where_and_what(tmp_path, history, fragments):
    with pytest.raises(DataError) as info:
        load_dataset(_write(tmp_path, _tables(history)))
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def _stray_rows(past, to: str, rows: int = 5) -> dict[str, pd.DataFrame]:
    """``past`` with ``rows`` rows of its latest month dated ``to`` instead, as a typo would."""
    history = past[S.HOLDINGS_HISTORY].copy()
    latest = history.index[history[S.AS_OF] == history[S.AS_OF].max()]
    history.loc[latest[:rows], S.AS_OF] = pd.Timestamp(to)
    interactions = past[S.INTERACTIONS].drop(columns=[S.TIMESTAMP])  # as scoring data: nothing to compare with
    return {**past, S.HOLDINGS_HISTORY: history, S.INTERACTIONS: interactions}


@pytest.mark.parametrize(
    "to, fragment",
    [
        ("2030-01-31", "the latest snapshot month(s), 2030-01, hold 5 row(s), under half the"),
        ("2026-02-28", "with no snapshot in the 1 month(s) between: mistyped as_of dates?"),
    ],
)
def test_a_few_rows_dated_past_the_rest_are_refused(past, to, fragment):
    # Every customer's past is read back from the table's latest month: 5 rows dated 2030 moved the
    # whole bank's history out of the model's window, silently (no interactions to compare with).
    with pytest.raises(DataError) as info:
        validate_tables(S.SYNTHETIC.schema(), _stray_rows(past, to))
    assert fragment in str(info.value) and "holdings_history" in str(info.value)


def test_a_thin_latest_month_right_after_the_rest_is_accepted(past):
    # Customers who closed everything last month: a history the features read as it is.
    assert validate_tables(S.SYNTHETIC.schema(), _stray_rows(past, "2026-01-31")).holdings_history is not None


def test_a_year_typo_over_two_months_is_refused_and_a_quarterly_history_accepted():
    # Rows of November and December mistyped as 2030 make two thin months after the gap; a bank
    # that snapshots every quarter has two empty months between its snapshots, and a thin last
    # quarter (adopters' snapshots stop at their first adoption) is its own spacing (a reviewer).
    from finrec.data.validate import check_latest_snapshot

    monthly = {2025 * 12 + m: 100 for m in range(12)}
    with pytest.raises(DataError, match=r"2030-11 to 2030-12, hold 10 row\(s\), under half the 100 of 2025-12"):
        check_latest_snapshot({**monthly, 2030 * 12 + 10: 5, 2030 * 12 + 11: 5}, "holdings_history")
    quarterly = {2025 * 12 + 2: 100, 2025 * 12 + 5: 100, 2025 * 12 + 8: 100, 2025 * 12 + 11: 45}
    check_latest_snapshot(quarterly, "holdings_history")
    with pytest.raises(DataError, match="2030-12, hold 45 row"):
        check_latest_snapshot({**quarterly, 2025 * 12 + 11: 100, 2030 * 12 + 11: 45}, "holdings_history")


def test_without_timestamps_the_latest_snapshot_is_current(tmp_path):
    # Nothing to compare with: a snapshot dated "after" undated adoptions is accepted.
    dataset = load_dataset(_write(tmp_path, _tables(_history(as_of="2026-06-30"), stamps=False)))
    assert len(dataset.holdings_history) == 2


def test_a_log_loads_when_asked_to_skip_the_order_rule(tmp_path):
    directory = _write(tmp_path, _tables(_history(as_of="2026-01-20")))
    assert load_dataset(directory, history_order=False).holdings_history is not None


# ------------------------------------------------------------------------------------ out of time


def _pairs(df):
    return set(zip(df[S.CUSTOMER_ID].astype(str), df[S.PRODUCT_ID].astype(str)))


def test_time_split_at_the_last_snapshot(past_dataset):
    parts = split_by_time(past_dataset, "2025-12-31")
    train, test = parts.train, parts.test
    # test: the target month's adoptions, predicted from the state at the cutoff
    assert _pairs(test.interactions) == _pairs(past_dataset.interactions)
    assert _pairs(test.holdings) == _pairs(past_dataset.holdings)
    assert test.holdings_history[S.AS_OF].max() == pd.Timestamp("2025-12-31")
    assert test.ground_truth is not None and parts.test_record["ground_truth"]
    # train: December's acquisitions, from the state at the end of November
    history = past_dataset.holdings_history
    nov, dec = (history[history[S.AS_OF] == pd.Timestamp(d)] for d in ("2025-11-30", "2025-12-31"))
    assert _pairs(train.holdings) == _pairs(nov)
    assert _pairs(train.interactions) == _pairs(dec) - _pairs(nov)
    assert train.holdings_history[S.AS_OF].max() == pd.Timestamp("2025-11-30")
    assert train.ground_truth is None
    assert parts.train_record["features_as_of"] == "2025-11-30" and parts.train_record["adoptions_left_out"] > 0
    assert len(train.customers) == len(test.customers) == len(past_dataset.customers)
    # both sides satisfy the contract, the order rule included
    for side in (train, test):
        validate_tables(side.schema, {k: v for k, v in dataset_tables(side).items()})


def test_time_split_inside_the_history(past_dataset):
    parts = split_by_time(past_dataset, "2025-10-15")
    history = past_dataset.holdings_history
    sep = history[history[S.AS_OF] == pd.Timestamp("2025-09-30")]
    assert _pairs(parts.test.holdings) >= _pairs(sep)  # plus adoptions between 09-30 and the cutoff (none here)
    assert parts.test.interactions[S.TIMESTAMP].min() > pd.Timestamp("2025-10-15")
    assert parts.train.interactions[S.TIMESTAMP].max() <= pd.Timestamp("2025-10-15")
    assert parts.train.holdings_history[S.AS_OF].max() == pd.Timestamp("2025-08-31")
    assert parts.test.ground_truth is None and not parts.test_record["ground_truth"]


@pytest.mark.parametrize(
    "cutoff, fragments",
    [
        ("2024-01-01", ("outside the data's dates", "2025-07-31", "2026-01-31")),
        ("2026-03-01", ("outside the data's dates",)),
        ("2025-07-31", ("two snapshots up to the cutoff", "has 1")),
        ("not a date", ("'not a date'", "YYYY-MM-DD")),
    ],
)
def test_time_split_refusals(past_dataset, cutoff, fragments):
    with pytest.raises(DataError) as info:
        split_by_time(past_dataset, cutoff)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_time_split_needs_timestamps_and_two_sides(tmp_path):
    dataset = load_dataset(_write(tmp_path, _tables(stamps=False)))
    with pytest.raises(DataError, match="needs a 'timestamp' column"):
        split_by_time(dataset, "2026-01-10")
    # Two identical snapshots: nothing acquired in December, so the training side is empty.
    dataset = load_dataset(_write(tmp_path / "b", _tables()))
    with pytest.raises(DataError, match="the training side has no adoptions"):
        split_by_time(dataset, "2026-01-01")


def test_time_split_without_history(tmp_path):
    tables = _tables()
    del tables["holdings_history"]
    dataset = load_dataset(_write(tmp_path, tables))
    parts = split_by_time(dataset, "2026-01-31")
    assert _pairs(parts.train.interactions) == {("1", "p2"), ("2", "p2")}
    assert _pairs(parts.test.interactions) == {("3", "p1")}
    assert _pairs(parts.train.holdings) == {("1", "p1"), ("2", "p1")}
    # the test side's state at the cutoff includes what was adopted before it
    assert _pairs(parts.test.holdings) == {("1", "p1"), ("2", "p1"), ("1", "p2"), ("2", "p2")}


def test_day_first_dates_are_read_day_first_and_offsets_become_utc():
    from finrec.data.validate import parse_dates
    from finrec.errors import DataError

    # 11/12/2026 beside 30/06/2026 is 11 December, not 12 November.
    got = parse_dates(pd.Series(["30/06/2026", "11/12/2026", None, "01.02.2026"]), "timestamp", "t", allow_missing=True)
    expected = pd.to_datetime(["2026-06-30", "2026-12-11", None, "2026-02-01"])
    assert got.tolist()[:2] == expected.tolist()[:2] and pd.isna(got[2]) and got[3] == expected[3]
    # Month first where a second field above 12 says so; ISO dates are never read another way.
    assert parse_dates(pd.Series(["06/30/2026", "12/11/2026"]), "t", "t").tolist() == list(
        pd.to_datetime(["2026-06-30", "2026-12-11"])
    )
    assert parse_dates(pd.Series(["2026-01-02", "2026-02-01"]), "t", "t").tolist() == list(
        pd.to_datetime(["2026-01-02", "2026-02-01"])
    )
    # ... not even beside day-first dates (pandas given dayfirst read 2026-01-02 as 1 February).
    got = parse_dates(pd.Series(["30/06/2026", "2026-01-02", "2026-01-02T10:00:00"]), "t", "t")
    assert got.tolist() == [pd.Timestamp("2026-06-30"), pd.Timestamp("2026-01-02"), pd.Timestamp("2026-01-02 10:00")]
    # An impossible date is no example of an ambiguous one.
    with pytest.raises(DataError, match="e.g. '01/02/2026'"):
        parse_dates(pd.Series(["13/14/2026", "01/02/2026"]), "t", "t")
    # Two offsets in one column (summer and winter time): both in UTC, naive.
    got = parse_dates(pd.Series(["2026-06-30T10:00:00+02:00", "2026-12-11T10:00:00+01:00"]), "t", "t")
    assert got.tolist() == list(pd.to_datetime(["2026-06-30 08:00", "2026-12-11 09:00"]))


@pytest.mark.parametrize("text", ["12/01/2025", "01.12.2025", "Dec 1 2025", "20251201", "2025-13-01"])
def test_a_cutoff_is_iso_or_refused(text):
    from finrec.data.split import parse_cutoff
    from finrec.errors import DataError

    with pytest.raises(DataError, match="YYYY-MM-DD"):
        parse_cutoff(text)
    assert parse_cutoff("2025-12-01") == parse_cutoff("2025-12-01T15:30:00") == pd.Timestamp("2025-12-01")
