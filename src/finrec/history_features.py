"""Features from the ``holdings_history`` table: how each customer's holdings changed.

The history (one row per product held at each past snapshot, ``as_of`` a date) is put on a
monthly grid ending at the customer's prediction time: the latest snapshot month ``r`` of the
history given (the whole table's latest month, so a customer who closed everything still gets
the common reference) and then the current ``holdings`` as month ``r + 1``. Over the last
``HORIZON`` history months plus the current one, ownership is a cube O [n, T = HORIZON + 1, P]:

- an *add* of product p at month j: held at j, not at j - 1 (held at the window's start counts
  as an add there: its start is unknown, at least that old); a *drop*: held at j - 1, not at j;
- per product (the ``events`` block, float32 [n, P, F]): ownership at each of the last ``lags``
  history months (lag 1 = the latest snapshot), months since the last add and since the last
  drop as one-hot time buckets (``TIME_BUCKETS``; never in the window = all zeros), log1p of the
  add and drop counts, and the tenure of the current holding as time buckets (zeros when not
  held). A customer without history has an all-zero block, as holdings dropout makes it;
- the snapshot sequence for a sequence encoder (float32 [n, lags + 1, P]: the last ``lags``
  history months, oldest first, then the current holdings);
- the Santander winners' raw set for trees (``lag_table``): lags, months since the last add and
  drop (NaN: never), add and drop counts.

The buckets are fixed (no fitted statistics); ``HistoryFeatures`` records the lags and the
encoder so the saved pipeline rebuilds the same inputs. Memory is O(n x T x P) bools per call:
callers transform customers in chunks for large tables.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from finrec.data import schema as S
from finrec.data.ids import as_arrow_text, positions_in
from finrec.data.io import Dataset
from finrec.data.validate import months
from finrec.errors import ArtifactError, DataError

HORIZON = 24  # history months looked at (adds and drops older than that are outside the window)
# Months since an event, bucketed: 0, 1, 2, 3, 4-6, 7-12, 13+ (lower edges); the model learns a
# weight per bucket, which is the "learned encoding of time".
TIME_BUCKETS = (0, 1, 2, 3, 4, 7, 13)
ENCODERS = ("events", "flat", "gru", "none")

EVENTS_INPUT = "history_events"  # float32 [n, P, F]
FLAT_INPUT = "history_flat"  # float32 [n, P * F]
SEQUENCE_INPUT = "history_sequence"  # float32 [n, lags + 1, P]


def _buckets(since: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """One-hot time buckets float32 [..., len(TIME_BUCKETS)]; rows where ``valid`` is False are zero."""
    slot = np.digitize(since, TIME_BUCKETS) - 1  # bucket index, -1 below 0 (cannot happen)
    out = np.zeros(since.shape + (len(TIME_BUCKETS),), dtype="float32")
    idx = np.nonzero(valid)
    out[idx + (slot[idx],)] = 1.0
    return out


class HistoryFeatures:
    """The history part of a ``FeaturePipeline``: ``lags`` snapshots and the tower's ``encoder``
    (``events``: per-product event block; ``flat``: the same block flattened; ``gru``: the
    snapshot sequence).

    >>> h = HistoryFeatures(lags=6, encoder="events").fit(n_products=27)
    >>> inputs = h.transform(customer_ids, history, current_held, product_positions)
    """

    def __init__(self, lags: int = 6, encoder: str = "events"):
        if encoder not in ENCODERS or encoder == "none":
            raise ValueError(f"history encoder must be one of events, flat, gru; got {encoder!r}")
        if not 1 <= lags <= HORIZON:
            raise ValueError(f"history lags must lie in [1, {HORIZON}], got {lags}")
        self.lags = int(lags)
        self.encoder = encoder

    def fit(self, n_products: int) -> HistoryFeatures:
        self.n_products_ = int(n_products)
        return self

    @property
    def n_event_features(self) -> int:
        return self.lags + 3 * len(TIME_BUCKETS) + 2

    def input_spec(self) -> dict[str, tuple[str, Any]]:
        """Input name -> (kind, shape without the batch)."""
        p, f = self.n_products_, self.n_event_features
        if self.encoder == "events":
            return {EVENTS_INPUT: ("history_events", (p, f))}
        if self.encoder == "flat":
            return {FLAT_INPUT: ("history_flat", (p * f,))}
        return {SEQUENCE_INPUT: ("history_sequence", (self.lags + 1, p))}

    # ------------------------------------------------------------------------ the cube
    def ownership(
        self,
        customer_ids,
        history: pd.DataFrame | None,
        held: np.ndarray,
        product_positions,
        reference: int | None = None,
    ) -> np.ndarray:
        """bool [n, HORIZON + 1, P]: history months r - HORIZON + 1 .. r, then ``held`` (the
        current snapshot). ``product_positions(ids) -> int`` maps product ids (-1 unknown).
        ``reference``: the month number r (``months``) when ``history`` is a slice of a larger
        table (a chunk's customers), so that every slice shares the table's latest snapshot;
        None: the latest month of ``history`` itself."""
        n, p = held.shape
        cube = np.zeros((n, HORIZON + 1, p), dtype=bool)
        cube[:, HORIZON] = held
        if history is None or len(history) == 0 or n == 0:
            return cube
        month = months(history[S.AS_OF])
        reference = month.max() if reference is None else reference
        step = HORIZON - 1 - (reference - month)  # r -> HORIZON - 1
        rows = positions_in(history[S.CUSTOMER_ID], as_arrow_text(np.asarray(customer_ids, dtype=object)))
        cols = product_positions(history[S.PRODUCT_ID])
        keep = (rows >= 0) & (cols >= 0) & (step >= 0) & (step < HORIZON)  # a later month: not this reference's past
        cube[rows[keep], step[keep], cols[keep]] = True
        return cube

    # ------------------------------------------------------------------------ features
    @staticmethod
    def events_of(cube: np.ndarray, lags: int) -> dict[str, np.ndarray]:
        """The raw event quantities of an ownership cube [n, T, P]: lags bool [n, P, lags]
        (lag 1 first), since_add / since_drop / tenure int [n, P] (-1: none), adds / drops int [n, P]."""
        t = cube.shape[1]
        now = t - 1
        prev = np.concatenate([np.zeros_like(cube[:, :1]), cube[:, :-1]], axis=1)
        adds = cube & ~prev
        drops = prev & ~cube
        drops[:, 0] = False

        def since_last(events):  # months from the last event to now, -1 when none
            last = now - np.argmax(events[:, ::-1], axis=1)
            return np.where(events.any(axis=1), now - last, -1)

        since_add = since_last(adds)
        held = cube[:, now]
        lag_block = np.stack([cube[:, now - k] for k in range(1, lags + 1)], axis=-1)
        return {
            "lags": lag_block,
            "since_add": since_add,
            "since_drop": since_last(drops),
            "tenure": np.where(held, since_add, -1),
            "adds": adds.sum(axis=1),
            "drops": drops.sum(axis=1),
        }

    def event_block(self, cube: np.ndarray) -> np.ndarray:
        """float32 [n, P, F]: lags, buckets(since add), buckets(since drop), log1p counts, buckets(tenure)."""
        e = self.events_of(cube, self.lags)
        parts = [
            e["lags"].astype("float32"),
            _buckets(e["since_add"], e["since_add"] >= 0),
            _buckets(e["since_drop"], e["since_drop"] >= 0),
            np.log1p(e["adds"]).astype("float32")[..., None],
            np.log1p(e["drops"]).astype("float32")[..., None],
            _buckets(e["tenure"], e["tenure"] >= 0),
        ]
        return np.concatenate(parts, axis=-1)

    def transform(
        self, customer_ids, history: pd.DataFrame | None, held: np.ndarray, product_positions, reference=None
    ) -> dict[str, np.ndarray]:
        """The model inputs of the encoder (see ``input_spec``; ``reference`` as in ``ownership``)."""
        cube = self.ownership(customer_ids, history, held, product_positions, reference)
        if self.encoder == "gru":
            return {SEQUENCE_INPUT: cube[:, HORIZON - self.lags :].astype("float32")}
        block = self.event_block(cube)
        if self.encoder == "flat":
            return {FLAT_INPUT: block.reshape(len(block), -1)}
        return {EVENTS_INPUT: block}

    def lag_table(self, cube: np.ndarray) -> dict[str, np.ndarray]:
        """The Santander winners' set, float [n, P] per name: ``lag_<k>``, ``since_add``,
        ``since_drop`` (NaN: never), ``adds``, ``drops``."""
        e = self.events_of(cube, self.lags)
        out = {f"lag_{k + 1}": e["lags"][..., k].astype("float32") for k in range(self.lags)}
        for name in ("since_add", "since_drop"):
            out[name] = np.where(e[name] >= 0, e[name], np.nan).astype("float32")
        out["adds"], out["drops"] = e["adds"].astype("float32"), e["drops"].astype("float32")
        return out

    # ------------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {"lags": self.lags, "encoder": self.encoder, "n_products": self.n_products_, "horizon": HORIZON}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> HistoryFeatures:
        try:
            if raw["horizon"] != HORIZON:
                raise ArtifactError(f"history features: horizon {raw['horizon']} is not supported ({HORIZON})")
            return cls(int(raw["lags"]), str(raw["encoder"])).fit(int(raw["n_products"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"history features in the pipeline file are incomplete or altered ({exc!r})") from None


def history_records(entries, where: str = "features.history") -> pd.DataFrame:
    """A new customer's history given as a list of ``{"product_id": .., "as_of": ..}`` (the API)
    as a ``holdings_history`` frame for that one customer (id ``"new"``)."""
    if isinstance(entries, (str, bytes)) or not isinstance(entries, (list, tuple)):
        raise DataError(f"{where} must be a list of {{product_id, as_of}} entries")
    rows = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or S.PRODUCT_ID not in entry or S.AS_OF not in entry:
            raise DataError(f"{where}[{i}] must be a mapping with '{S.PRODUCT_ID}' and '{S.AS_OF}'")
        rows.append((str(entry[S.PRODUCT_ID]), entry[S.AS_OF]))
    frame = pd.DataFrame(rows, columns=[S.PRODUCT_ID, S.AS_OF])
    frame.insert(0, S.CUSTOMER_ID, "new")
    try:
        frame[S.AS_OF] = pd.to_datetime(frame[S.AS_OF], errors="raise")
    except (ValueError, TypeError):
        raise DataError(f"{where}: an '{S.AS_OF}' value is not a date") from None
    return frame


# ---------------------------------------------------------------------------- earlier months
def earlier_months(dataset: Dataset, count: int, snapshots=None) -> list[tuple[Dataset, int | None]]:
    """The adoptions of up to ``count`` months before the dataset's own, read off its history:
    the Santander winners trained on several months, not only the latest.

    Back from the latest, each snapshot month ``m`` of ``dataset.holdings_history`` becomes a
    dataset as it stood then: ``holdings`` the snapshot at ``m``, ``holdings_history`` the
    snapshots before ``m``, and ``interactions`` the products held at the next snapshot (the
    current ``holdings`` after the latest one) but not at ``m``: that month's adds. Its customers
    are those with an add who held something at ``m``: one who held nothing may not yet have
    been a customer, and a first account opened with the bank is not what is recommended.
    Customer attributes are today's (the contract keeps no past ones). Returns (dataset,
    history reference month: its history's latest month, None when it has none), latest month
    first, skipping months without an add; ground truth is dropped (it describes today).

    ``snapshots``: the snapshot months (``months``) of the whole table when ``dataset`` is a part
    of it (a streamed piece), so that every part steps through the same months: a customer's
    months are then those the whole table gives it (one absent from a snapshot held nothing).
    """
    history = dataset.holdings_history
    if count <= 0 or history is None or len(history) == 0:
        return []
    holdings = dataset.holdings
    # Customers and products as integer codes: the snapshots are compared as (customer, product)
    # numbers, not text (24 months of 37,000 customers took 25 s with text keys).
    n_history = len(history)
    customer, customer_names = pd.factorize(pd.concat([history[S.CUSTOMER_ID], holdings[S.CUSTOMER_ID]]).astype(str))
    product, _ = pd.factorize(pd.concat([history[S.PRODUCT_ID], holdings[S.PRODUCT_ID]]).astype(str))
    key = customer.astype("int64") * (int(product.max()) + 1) + product
    month = months(history[S.AS_OF])
    snapshots = np.unique(month if snapshots is None else np.asarray(snapshots, dtype="int64"))[::-1]
    row_of = customer_names.get_indexer(dataset.customers[dataset.schema.customers.id].astype(str))
    later, later_key, later_customer = holdings, key[n_history:], customer[n_history:]
    out: list[tuple[Dataset, int | None]] = []
    for i, m in enumerate(snapshots[:count]):
        at = np.flatnonzero(month == m)
        held_then = np.zeros(len(customer_names), dtype=bool)
        held_then[customer[at]] = True
        is_add = ~np.isin(later_key, key[at]) & held_then[later_customer]
        adds = later[is_add][[S.CUSTOMER_ID, S.PRODUCT_ID]]
        theirs = np.zeros(len(customer_names), dtype=bool)
        theirs[later_customer[is_add]] = True
        later, later_key, later_customer = history.iloc[at], key[at], customer[at]
        if len(adds) == 0:
            continue
        # Dated the day after the snapshot: the adds happened after it, by the next one.
        after = pd.Timestamp(year=int(m // 12), month=int(m % 12) + 1, day=1) + pd.offsets.MonthBegin(1)
        past = np.flatnonzero((month < m) & theirs[customer[:n_history]])
        as_then = replace(
            dataset,
            customers=dataset.customers[(row_of >= 0) & theirs[np.maximum(row_of, 0)]].reset_index(drop=True),
            holdings=later[theirs[later_customer]][[S.CUSTOMER_ID, S.PRODUCT_ID]].reset_index(drop=True),
            interactions=adds.reset_index(drop=True).assign(**{S.TIMESTAMP: after}),
            holdings_history=history.iloc[past].reset_index(drop=True),
            ground_truth=None,
        )
        reference = int(snapshots[i + 1]) if i + 1 < len(snapshots) else None
        out.append((as_then, reference))
    return out
