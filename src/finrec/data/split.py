"""Hold-out splits: by customer, so that evaluation scores customers the model never saw, and
out of time (``split_by_time``), so that it scores the months after those the model saw."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from finrec.data import schema as S
from finrec.data.io import Dataset
from finrec.errors import ConfigError, DataError, safe_items, safe_text


def split_customer_ids(
    ids: np.ndarray, holdout_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle ``ids`` and cut off ``holdout_fraction`` of them. Returns (kept, held_out)."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ConfigError(f"holdout fraction must lie strictly between 0 and 1, got {holdout_fraction}")
    ids = np.asarray(ids)
    order = rng.permutation(len(ids))
    n_out = int(round(len(ids) * holdout_fraction))
    if n_out == 0 or n_out == len(ids):
        raise ConfigError(f"cannot hold out {holdout_fraction:.0%} of {len(ids)} customers: one side would be empty")
    return ids[np.sort(order[n_out:])], ids[np.sort(order[:n_out])]


def split_dataset(dataset: Dataset, holdout_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split a dataset into (train, held-out) by customer; products are shared."""
    train_ids, test_ids = split_customer_ids(dataset.customer_ids, holdout_fraction, np.random.default_rng(seed))
    return dataset.subset_customers(train_ids), dataset.subset_customers(test_ids)


# --------------------------------------------------------------------------------------------
# Out of time


DAY = pd.Timedelta(days=1)


@dataclass
class TimeSplit:
    """The two sides of an out-of-time split and what each one records in ``split.json``."""

    train: Dataset
    test: Dataset
    train_record: dict
    test_record: dict


def _day(value) -> str:
    return f"{pd.Timestamp(value):%Y-%m-%d}"


def parse_cutoff(text) -> pd.Timestamp:
    """A cutoff date (``2025-12-31``, ISO 8601); a time of day is dropped: the cutoff is a whole
    day. Only ISO: ``12/01/2025`` was read as 1 December where a reader of it may mean 12 January."""
    try:
        value = pd.Timestamp(text) if re.match(r"^\d{4}-\d{2}-\d{2}(?:[T ]|$)", str(text)) else pd.NaT
    except (ValueError, TypeError):
        value = pd.NaT
    if pd.isna(value):
        raise DataError(f"--cutoff: {safe_text(text, quote=True)} is not a date (use YYYY-MM-DD)")
    if value.tzinfo is not None:
        value = value.tz_convert(None)
    return value.normalize()


def _acquisitions(history: pd.DataFrame, dates: np.ndarray) -> pd.DataFrame:
    """(customer, product, as_of) of each product a snapshot shows that the one before did not:
    the adoptions the history records, dated at the snapshot that first shows them."""
    if len(dates) < 2:
        return pd.DataFrame({S.CUSTOMER_ID: [], S.PRODUCT_ID: [], S.TIMESTAMP: pd.Series(dtype="datetime64[ns]")})
    c = history[S.CUSTOMER_ID].cat.codes.to_numpy(np.int64)
    p = history[S.PRODUCT_ID].cat.codes.to_numpy(np.int64)
    k = np.searchsorted(dates, history[S.AS_OF].to_numpy())
    n_products = max(len(history[S.PRODUCT_ID].cat.categories), 1)
    key = c * n_products + p
    width = len(dates) + 1
    now = key * width + k
    before = key * width + (k + 1)  # "held at snapshot k" seen from snapshot k + 1
    new = (k > 0) & ~np.isin(now, before)
    return pd.DataFrame(
        {
            S.CUSTOMER_ID: history[S.CUSTOMER_ID].to_numpy()[new].astype(object),
            S.PRODUCT_ID: history[S.PRODUCT_ID].to_numpy()[new].astype(object),
            S.TIMESTAMP: dates[k[new]],
            "_period": k[new],
        }
    )


def _snapshot(history: pd.DataFrame, day) -> pd.DataFrame:
    rows = history[history[S.AS_OF] == day]
    return pd.DataFrame(
        {
            S.CUSTOMER_ID: rows[S.CUSTOMER_ID].to_numpy().astype(object),
            S.PRODUCT_ID: rows[S.PRODUCT_ID].to_numpy().astype(object),
        }
    )


def _links(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[[S.CUSTOMER_ID, S.PRODUCT_ID]].drop_duplicates().reset_index(drop=True)


def split_by_time(dataset: Dataset, cutoff) -> TimeSplit:
    """Split ``dataset`` at the end of the day ``cutoff``: adoptions up to it train, adoptions
    after it test, and each side sees only what was known before its own adoptions.

    * **test**: features as of the cutoff: ``holdings`` = the last snapshot on or before the
      cutoff (the ``holdings`` table when that is the latest snapshot) plus the adoptions between
      that snapshot and the cutoff; ``holdings_history`` = the snapshots up to it; interactions =
      the adoptions after the cutoff.
    * **train**: the same setup one snapshot earlier: ``holdings`` = the snapshot before the
      test's, ``holdings_history`` = the snapshots up to that one, interactions = the adoptions
      after it and up to the cutoff. Older adoptions are left out (they happened before the
      features the model would pair them with; they are counted in the record).
    * The adoptions are the interactions (they need a ``timestamp``) and, for months the
      interactions do not cover, the acquisitions the history shows (a product in a snapshot and
      not in the one before, dated at that snapshot): a dataset whose interactions are only the
      month after its last snapshot splits as well as a log of every month's adoptions.
    * Without a history, ``holdings`` (undated) is taken as the state before the first adoption:
      train pairs it with the adoptions up to the cutoff, test with those after, its holdings
      being ``holdings`` plus the adoptions up to the cutoff.
    * Both sides keep every customer; customer attributes are one table, as of today, on both
      sides (a bank's monthly attribute snapshots would be needed to cut those too). The ground
      truth is kept on the test side only when its features are the latest snapshot (the one the
      ground truth was computed from).
    """
    cutoff = parse_cutoff(cutoff)
    end = cutoff + DAY  # everything strictly before ``end`` is known at the end of the cutoff day
    interactions = dataset.interactions
    if S.TIMESTAMP not in interactions.columns:
        raise DataError(
            "interactions: an out-of-time split needs a 'timestamp' column (the date of each adoption); "
            "this data has none (split it by customer instead)"
        )
    stamps = interactions[S.TIMESTAMP]
    if stamps.isna().any():
        rows = np.flatnonzero(stamps.isna().to_numpy())
        raise DataError(
            f"interactions: {len(rows)} adoption(s) have no timestamp, at row(s) {safe_items(rows[:5] + 1, 5)}; "
            "an out-of-time split needs the date of every adoption"
        )
    history = dataset.holdings_history
    has_history = history is not None and len(history) > 0
    dates = np.sort(history[S.AS_OF].unique()) if has_history else np.empty(0, "datetime64[ns]")
    dates = np.asarray(dates, dtype="datetime64[ns]")

    events = interactions.copy()
    events[S.TIMESTAMP] = stamps.astype("datetime64[ns]")
    derived = 0
    if has_history:
        acquired = _acquisitions(history, dates)
        day = events[S.TIMESTAMP].dt.floor("D").to_numpy()
        period = np.searchsorted(dates, day, side="left")  # the first snapshot that can show it
        covered = pd.MultiIndex.from_arrays(
            [events[S.CUSTOMER_ID].astype(str), events[S.PRODUCT_ID].astype(str), period]
        )
        mine = pd.MultiIndex.from_arrays(
            [acquired[S.CUSTOMER_ID].astype(str), acquired[S.PRODUCT_ID].astype(str), acquired["_period"]]
        )
        acquired = acquired[~mine.isin(covered)].drop(columns="_period")
        derived = len(acquired)
        events = pd.concat([events, acquired], ignore_index=True)

    first = min([events[S.TIMESTAMP].min(), *(dates[:1] if has_history else [])])
    last = events[S.TIMESTAMP].max()
    if not first <= cutoff < last.normalize():
        raise DataError(
            f"--cutoff {_day(cutoff)} is outside the data's dates: they run from {_day(first)} to {_day(last)}; "
            f"a cutoff must leave adoptions on both sides (from {_day(first)} to the day before {_day(last)})"
        )

    if has_history:
        known = dates[dates < np.datetime64(end)]
        if len(known) < 2:
            raise DataError(
                f"--cutoff {_day(cutoff)}: an out-of-time split needs two snapshots up to the cutoff (one for the "
                f"test features, the one before it for the training features); holdings_history has "
                f"{len(known)} by then (its first is {_day(dates[0])}, its last {_day(dates[-1])})"
            )
        test_as_of, train_as_of = pd.Timestamp(known[-1]), pd.Timestamp(known[-2])
        since = events[(events[S.TIMESTAMP] >= test_as_of + DAY) & (events[S.TIMESTAMP] < end)]
        base = dataset.holdings if test_as_of == pd.Timestamp(dates[-1]) else _snapshot(history, test_as_of)
        test_holdings = _links(pd.concat([base, since], ignore_index=True))
        train_holdings = _snapshot(history, train_as_of)
        train_events = events[(events[S.TIMESTAMP] >= train_as_of + DAY) & (events[S.TIMESTAMP] < end)]
        train_history = history[history[S.AS_OF] <= train_as_of].reset_index(drop=True)
        test_history = history[history[S.AS_OF] <= test_as_of].reset_index(drop=True)
        left_out = int((events[S.TIMESTAMP] < train_as_of + DAY).sum())
        keep_truth = test_as_of == pd.Timestamp(dates[-1]) and len(since) == 0
    else:
        test_as_of = train_as_of = None
        train_events = events[events[S.TIMESTAMP] < end]
        train_holdings = dataset.holdings
        test_holdings = _links(pd.concat([dataset.holdings, train_events], ignore_index=True))
        train_history = test_history = history
        left_out = 0
        keep_truth = len(train_events) == 0
    test_events = events[events[S.TIMESTAMP] >= end]
    for side, frame in (("training", train_events), ("test", test_events)):
        if len(frame) == 0:
            raise DataError(
                f"--cutoff {_day(cutoff)}: the {side} side has no adoptions (the data's adoptions run from "
                f"{_day(events[S.TIMESTAMP].min())} to {_day(last)}); choose a cutoff between them"
            )

    def side(events_, holdings_, history_, truth) -> Dataset:
        return replace(
            dataset,
            interactions=events_.reset_index(drop=True),
            holdings=holdings_.reset_index(drop=True),
            holdings_history=history_,
            ground_truth=truth,
        )

    common = {"by": "time", "cutoff": _day(cutoff), "adoptions_from_history": derived}
    train_record = {
        **common,
        "side": "train",
        "features_as_of": None if train_as_of is None else _day(train_as_of),
        "adoptions": len(train_events),
        "adoptions_from": _day(train_events[S.TIMESTAMP].min()),
        "adoptions_to": _day(train_events[S.TIMESTAMP].max()),
        "adoptions_left_out": left_out,
    }
    test_record = {
        **common,
        "side": "test",
        "features_as_of": _day(cutoff) if test_as_of is None else _day(test_as_of),
        "adoptions": len(test_events),
        "adoptions_from": _day(test_events[S.TIMESTAMP].min()),
        "adoptions_to": _day(last),
        "ground_truth": bool(keep_truth and dataset.ground_truth is not None),
    }
    return TimeSplit(
        train=side(train_events, train_holdings, train_history, None),
        test=side(test_events, test_holdings, test_history, dataset.ground_truth if keep_truth else None),
        train_record=train_record,
        test_record=test_record,
    )
