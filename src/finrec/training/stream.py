"""Training on data larger than memory: the tables are read in chunks, never whole.

>>> trained = fit(StreamingSource("data/huge", chunk_rows=200_000), Config())

How it works (three passes over the files, then one pass per epoch over a local copy):

1. **Partition.** The customers file is read in chunks (``iter_customer_chunks``: validated
   slice by slice) and the interactions and holdings files in Arrow record batches. Every row is
   routed by a hash of its customer id, so a customer's features and links land together without
   any lookup table: a fraction ``validation_fraction`` of the customers goes to the validation
   set (capped at ``max_validation`` customers, which are held in memory like in ``fit``), the
   rest to ``B`` bucket files in a scratch directory, ``B`` chosen so a bucket holds about 0.8
   ``chunk_rows`` customers.
2. **Feature statistics in one pass** over the training customers (the same partition pass):
   means and standard deviations from running shifted sums (exact up to rounding), skewness (for
   detecting heavy-tailed columns) from the third moment, vocabularies as running sets, and the
   **median from a reservoir sample** of ``reservoir`` observed values per column (Algorithm R):
   exact while a column has at most ``reservoir`` observed values, an approximation (a quantile
   of a uniform sample) beyond. The median only imputes missing values.
3. **Count.** Each bucket's links are deduplicated and counted, giving the number of batches of
   every epoch up front (``len``) and the product popularity.

Each epoch visits the buckets in a new random order; a bucket is read in pieces of at most
``chunk_rows`` customers (``StreamingBatches.max_rows_held`` records the largest), turned into
``TrainingExamples`` with ``build_examples`` and cut into shuffled batches by ``TrainingBatches``:
the (x, y) batches are those of in-memory training, shuffled within a bucket instead of across
the whole data set (buckets are random samples of customers, so the batches are too). The last
batch of each piece may be short.

Differences from ``fit`` on a ``Dataset``: the validation customers are chosen by hash rather
than by a permutation (the same fraction, a different sample); uniqueness of customer ids and
references of links are checked within a bucket only (links to unknown customers or products are
dropped and counted, not refused); the median is approximate above ``reservoir`` values.
Customers who objected to profiling for marketing are left out by default, with their links, as
``finrec train`` leaves them out (``StreamingSource.include_objected`` keeps them): the streamed
directory cannot be filtered by ``without_objections`` beforehand.
Memory: one piece of customers (``chunk_rows``), the links of one bucket, the validation set and
the reservoirs (8 bytes x ``reservoir`` x numeric columns).

A ``holdings_history`` is routed like the links, one record batch at a time; the same pass counts
the training customers' history rows and their latest snapshot month, all the pipeline's history
state needs (``FeaturePipeline.fit_history``). Each piece's history features are built from its
bucket's history against that month, so they equal the in-memory ones. They are the largest
inputs (float32 [rows, P, F] for the ``events`` encoder: 27 products x 29 features x 4 bytes, ~3 KB a customer),
so with history ``chunk_rows`` bounds most of the memory.

Earlier months (``training.history_months``) stream too: a piece's customers' adds at each of the
last snapshots (``history_features.earlier_months``, stepping through the training customers'
snapshot months, so each customer's months are those of the in-memory fit) are examples of the
piece, with the features of then; the count pass reads every piece once more to count them. They
add the month's adopters to a piece's inputs (a fraction of its customers a month), and the
validation customers' earlier months are ranked beside their latest.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from finrec.config import Config, checked
from finrec.data import compliance as C
from finrec.data import schema as S
from finrec.data.ids import as_arrow_text
from finrec.data.io import Dataset, find_table, iter_customer_chunks, read_schema, read_table
from finrec.data.links import BUCKET_SUFFIX, BucketWriters, link_batches, read_bucket
from finrec.data.validate import check_history_order, check_latest_snapshot, snapshot_month_rows
from finrec.errors import DataError
from finrec.features import FeaturePipeline, NumericStats, fit_vocabulary, quantile_edges
from finrec.history_features import earlier_months, months
from finrec.training.train import (
    TrainingBatches,
    TrainingExamples,
    build_examples,
    effective_batch_size,
    example_pairs,
    numeric_bins_of,
    set_seed,
    train_model,
)

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 200_000
DEFAULT_RESERVOIR = 100_000
DEFAULT_MAX_VALIDATION = 50_000
_BUCKET_FILL = 0.8
# Link tables (three columns) are routed in batches of at least this many rows, however small
# the chunks: each batch costs a fixed overhead per bucket it reaches.
LINK_BATCH_ROWS = 1 << 18
_SPLIT_KEY = "finrec-val-split"  # 16 characters: pandas' hash key
_BUCKET_KEY = "finrec-bucketing"


def _unit_hash(ids: np.ndarray, key: str, seed: int) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per id (same id, key and seed: same number)."""
    salted = np.asarray([f"{seed}:{v}" for v in ids], dtype=object) if seed else np.asarray(ids, dtype=object)
    h = pd.util.hash_array(salted, hash_key=key, categorize=False)
    return (h >> np.uint64(11)).astype("float64") / float(1 << 53)


# ------------------------------------------------------------------------------ statistics


class _Moments:
    """Running count, shifted sums (for mean, variance, third moment), min of observed values."""

    def __init__(self, third: bool = True):
        self.n = 0
        self.shift = None
        self.s1 = self.s2 = self.s3 = 0.0
        self.min = math.inf
        self.third = third

    def update(self, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        if self.shift is None:
            self.shift = float(x.mean()) if np.isfinite(x.mean()) else 0.0
        d = x - self.shift
        self.n += len(x)
        self.s1 += float(d.sum())
        self.s2 += float((d * d).sum())
        if self.third:
            self.s3 += float((d * d * d).sum())
        self.min = min(self.min, float(x.min()))

    def mean_var(self) -> tuple[float, float]:
        m1 = self.s1 / self.n
        return self.shift + m1, max(self.s2 / self.n - m1 * m1, 0.0)

    def skewness(self) -> float:
        m1, m2 = self.s1 / self.n, self.s2 / self.n
        var = m2 - m1 * m1
        if var <= 0:
            return 0.0
        m3 = self.s3 / self.n - 3 * m1 * m2 + 2 * m1**3
        return float(m3 / var**1.5)


class NumericAccumulator:
    """One numeric column's ``NumericStats`` fitted in one pass over chunks (see the module
    docstring: exact moments, reservoir median)."""

    def __init__(self, column: str, log: bool | None, reservoir: int = DEFAULT_RESERVOIR, seed: int = 0):
        self.column, self.log = column, log
        self.raw = _Moments(third=True)
        self.logged = _Moments(third=False)
        self.missing = 0
        self.capacity = reservoir
        self.sample = np.empty(reservoir, dtype="float64")
        self.filled = 0
        self.rng = np.random.default_rng(seed)

    def update(self, values: np.ndarray) -> None:
        x = np.asarray(values, dtype="float64")
        observed = x[~np.isnan(x)]
        self.missing += len(x) - len(observed)
        if len(observed) == 0:
            return
        seen = self.raw.n
        self.raw.update(observed)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.logged.update(np.log1p(observed))
        # Algorithm R, vectorised: item t (0-based, global) replaces slot j ~ U{0..t} if j < capacity.
        take = min(self.capacity - self.filled, len(observed))
        if take > 0:
            self.sample[self.filled : self.filled + take] = observed[:take]
            self.filled += take
        rest = observed[take:]
        if len(rest):
            t = seen + take + np.arange(len(rest))
            slots = (self.rng.random(len(rest)) * (t + 1)).astype("int64")
            hit = slots < self.capacity
            self.sample[slots[hit]] = rest[hit]  # later items overwrite earlier ones, as in sequence

    def result(self) -> NumericStats:
        n_obs = self.raw.n
        log = self.log
        if log is None:
            log = bool(n_obs > 2 and self.raw.min >= 0 and self.raw.skewness() > 2.0)
        if n_obs == 0:
            return NumericStats(column=self.column, log=log, median=0.0, mean=0.0, std=1.0)
        sample = self.sample[: self.filled]
        moments = self.logged if log else self.raw
        median = float(np.median(np.log1p(sample) if log else sample))
        mean_obs, var_obs = moments.mean_var()
        total = n_obs + self.missing
        # Statistics of the column as the model sees it: missing values imputed with the median.
        mean = (n_obs * mean_obs + self.missing * median) / total
        var = (n_obs * (var_obs + (mean_obs - mean) ** 2) + self.missing * (median - mean) ** 2) / total
        std = math.sqrt(max(var, 0.0))
        return NumericStats(
            column=self.column, log=log, median=median, mean=float(mean), std=std if std > 1e-12 else 1.0
        )


class StreamingPipelineFit:
    """Fits a ``FeaturePipeline``'s customer statistics chunk by chunk; products are small and
    fitted exactly, as in ``FeaturePipeline.fit``."""

    def __init__(
        self,
        schema: S.DatasetSchema,
        use_holdings: bool = True,
        exclude_protected: bool = False,
        reservoir: int = DEFAULT_RESERVOIR,
        seed: int = 0,
        history_lags: int = 6,
        history_encoder: str = "events",
        numeric_bins: int = 0,
    ):
        self.pipeline = FeaturePipeline(
            schema, use_holdings, exclude_protected, history_lags, history_encoder, numeric_bins
        )
        c = self.pipeline.schema.customers
        log_c = set(c.log_numeric) if c.log_numeric is not None else None
        self.numeric = [
            NumericAccumulator(col, None if log_c is None else col in log_c, reservoir, seed + i)
            for i, col in enumerate(c.numeric_features)
        ]
        self.vocab: dict[str, set[str]] = {col: set() for col in c.categorical_features}
        self.rows = 0

    def update(self, customers: pd.DataFrame) -> None:
        self.rows += len(customers)
        for acc in self.numeric:
            acc.update(pd.to_numeric(customers[acc.column], errors="coerce").to_numpy(dtype="float64", na_value=np.nan))
        for col, seen in self.vocab.items():
            seen.update(fit_vocabulary(customers[col]))

    def finish(
        self, products: pd.DataFrame, popularity: np.ndarray | None = None, history_rows: int = 0
    ) -> FeaturePipeline:
        """The fitted pipeline; ``history_rows``: the training customers' history rows counted in
        the pass (the history features need nothing else, see ``FeaturePipeline.fit_history``)."""
        p = self.pipeline
        ps = p.schema.products
        log_p = set(ps.log_numeric) if ps.log_numeric is not None else None
        p.customer_numeric_ = [acc.result() for acc in self.numeric]
        if p.numeric_bins:
            # The piecewise-linear encoding's quantile bins, from each column's reservoir sample
            # (approximate above ``reservoir`` values, like the median; missing values left out).
            p.customer_bins_ = [
                quantile_edges(stats.transform(acc.sample[: acc.filled]), p.numeric_bins)
                for acc, stats in zip(self.numeric, p.customer_numeric_)
            ]
        p.customer_vocab_ = {col: sorted(seen) for col, seen in self.vocab.items()}
        p.product_ids_ = [str(v) for v in products[ps.id]]
        p.product_numeric_ = [
            NumericStats.fit(col, products[col].to_numpy(), None if log_p is None else col in log_p)
            for col in ps.numeric_features
        ]
        p.product_vocab_ = {col: fit_vocabulary(products[col]) for col in ps.categorical_features}
        counts = np.zeros(p.n_products, dtype="int64") if popularity is None else np.asarray(popularity, dtype="int64")
        p.product_popularity_ = [int(v) for v in counts]
        return p.fit_history(history_rows)


# ------------------------------------------------------------------------------ reading


def _count_rows(path: Path, table: S.TableSchema, chunk_rows: int) -> int:
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    return sum(len(c) for c in pd.read_csv(path, usecols=[table.id], dtype=str, chunksize=chunk_rows))


@dataclass
class Piece:
    bucket: int
    start: int  # first customer row of the piece in the bucket file
    rows: int
    examples: int


@dataclass
class StreamingLayout:
    """What the partition and count passes found."""

    directory: Path
    schema: S.DatasetSchema
    products: pd.DataFrame
    pipeline: FeaturePipeline
    pieces: list[Piece]
    validation: Dataset
    chunk_rows: int
    train_customers: int
    customers_with_positives: int
    dropped_links: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    has_history: bool = False  # the data has a holdings_history (and the model uses it): pieces carry theirs
    # The training customers' latest snapshot month (``history_features.months``): every piece's
    # history features are built against it, as in memory against the whole table's.
    history_reference: int | None = None
    objected: int = 0  # customers left out: they objected to profiling for marketing
    # Earlier months (``training.history_months``): each piece also trains on the adds of its
    # customers' last ``history_months`` snapshots, stepping through the training customers'
    # snapshot months (``snapshots``) as the in-memory fit steps through the whole table's.
    history_months: int = 0
    snapshots: tuple[int, ...] = ()
    earlier_positives: np.ndarray | None = None  # int [P]: the earlier months' examples per product
    earlier_months_used: int = 0  # how many earlier months gave examples

    def piece_examples(self, data: Dataset):
        """``build_examples`` of one piece's ``data``: its latest month, then its earlier ones."""
        parts = [build_examples(self.pipeline, data, self.history_reference)]
        parts += [build_examples(self.pipeline, part, reference) for part, reference in self.earlier(data)]
        return TrainingExamples.join(parts)

    def earlier(self, data: Dataset) -> list:
        if not (self.has_history and self.history_months):
            return []
        return earlier_months(data, self.history_months, self.snapshots)

    @property
    def examples(self) -> int:
        return sum(p.examples for p in self.pieces)

    def customers_file(self, bucket: int) -> Path:
        return self.directory / f"customers_{bucket:05d}{BUCKET_SUFFIX}"

    def links_file(self, name: str, bucket: int) -> Path:
        return self.directory / f"{name}_{bucket:05d}{BUCKET_SUFFIX}"

    def read_links(self, name: str, bucket: int, ids: pa.Array | None = None) -> pd.DataFrame:
        path = self.links_file(name, bucket)
        if not path.exists():
            return pd.DataFrame({S.CUSTOMER_ID: pd.Series(dtype=object), S.PRODUCT_ID: pd.Series(dtype=object)})
        table = read_bucket(path)
        if ids is not None:
            table = table.filter(pc.is_in(table.column(S.CUSTOMER_ID), value_set=ids))
        return table.to_pandas().drop_duplicates([S.CUSTOMER_ID, S.PRODUCT_ID]).reset_index(drop=True)

    def read_history(self, bucket: int, ids: pa.Array | None = None) -> pd.DataFrame | None:
        """The holdings history of a bucket's customers (``ids``), or None without a history."""
        if not self.has_history:
            return None
        path = self.links_file(S.HOLDINGS_HISTORY, bucket)
        if not path.exists():
            return _empty_history()
        table = read_bucket(path)
        if ids is not None:
            table = table.filter(pc.is_in(table.column(S.CUSTOMER_ID), value_set=ids))
        return table.to_pandas().drop_duplicates().reset_index(drop=True)

    def read_piece(self, piece: Piece) -> Dataset:
        """The customers of one piece (at most ``chunk_rows``) with their links."""
        table = read_bucket(self.customers_file(piece.bucket)).slice(piece.start, piece.rows)
        if table.num_rows < piece.rows:  # pragma: no cover - the layout and the files disagree
            raise DataError(
                f"{self.customers_file(piece.bucket)}: rows {piece.start}-{piece.start + piece.rows} not found"
            )
        customers = table.to_pandas()
        ids = as_arrow_text(customers[self.schema.customers.id])
        return Dataset(
            schema=self.schema,
            customers=customers,
            products=self.products,
            interactions=self.read_links(S.INTERACTIONS, piece.bucket, ids),
            holdings=self.read_links(S.HOLDINGS, piece.bucket, ids),
            holdings_history=self.read_history(piece.bucket, ids),
        )


def _empty_history() -> pd.DataFrame:
    return pd.DataFrame(
        {
            S.CUSTOMER_ID: pd.Series(dtype=object),
            S.PRODUCT_ID: pd.Series(dtype=object),
            S.AS_OF: pd.Series(dtype="datetime64[ns]"),
        }
    )


def partition(
    data_dir: str | Path,
    workdir: str | Path,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    validation_fraction: float = 0.1,
    seed: int = 0,
    use_holdings: bool = True,
    exclude_protected: bool = False,
    reservoir: int = DEFAULT_RESERVOIR,
    max_validation: int = DEFAULT_MAX_VALIDATION,
    history_lags: int = 6,
    history_encoder: str = "events",
    include_objected: bool = False,
    numeric_bins: int = 0,
    history_months: int = 0,
) -> StreamingLayout:
    """Passes 1-3 of the module docstring: bucket files in ``workdir``, the fitted pipeline, the
    validation set and the batch counts. With ``history_encoder`` "none" the holdings history is
    not read at all. ``history_months`` > 0 with a history: the count pass reads every piece
    whole to count its earlier months' adds too (``earlier_months``; one epoch's reading more).

    Customers who objected to profiling for marketing (the schema's consent column) are left out,
    with their links, as ``finrec train`` leaves them out (GDPR Art. 21(3)); ``include_objected``
    keeps them. Their ids are held in memory while partitioning (the links are filtered by them)."""
    started = time.perf_counter()
    data_dir, workdir = Path(data_dir), Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    schema = read_schema(data_dir)
    table = schema.customers
    products_path = find_table(data_dir, S.PRODUCTS)
    from finrec.data.io import prepare_entities

    products = prepare_entities(read_table(products_path, (schema.products.id,)), schema.products, str(products_path))
    customers_path = find_table(data_dir, S.CUSTOMERS)
    interactions_path = find_table(data_dir, S.INTERACTIONS)
    holdings_path = find_table(data_dir, S.HOLDINGS, required=False)
    history_path = find_table(data_dir, S.HOLDINGS_HISTORY, required=False)
    if history_encoder == "none":
        history_path = None

    n_rows = _count_rows(customers_path, table, chunk_rows)
    val_share = min(validation_fraction, max_validation / max(n_rows, 1))
    n_buckets = max(1, math.ceil(n_rows * (1 - val_share) / (_BUCKET_FILL * chunk_rows)))
    val_dir = workdir / "validation"
    val_dir.mkdir(exist_ok=True)

    def route(ids) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=object)
        is_val = _unit_hash(ids, _SPLIT_KEY, seed) < val_share
        bucket = np.minimum((_unit_hash(ids, _BUCKET_KEY, seed) * n_buckets).astype("int64"), n_buckets - 1)
        return is_val, bucket

    stats = StreamingPipelineFit(
        schema, use_holdings, exclude_protected, reservoir, seed, history_lags, history_encoder, numeric_bins
    )
    writers = BucketWriters()
    history_rows, reference = 0, None  # the training customers' history: rows, latest month
    snapshot_months: set[int] = set()
    history_per_month: dict[int, int] = {}  # every history row kept, per snapshot month
    left_out: list[pa.Array] = []  # ids of the customers who objected
    try:
        for chunk in iter_customer_chunks(customers_path, table, chunk_rows):
            if table.consent and not include_objected:
                objected = C.objected(chunk[table.consent], f"{S.CUSTOMERS}.{table.consent}")
                if objected.any():
                    left_out.append(as_arrow_text(chunk[table.id][objected]))
                    chunk = chunk[~objected]
            is_val, bucket = route(chunk[table.id].to_numpy())
            writers.write(val_dir / f"customers{BUCKET_SUFFIX}", chunk[is_val])
            train = chunk[~is_val]
            stats.update(train)
            writers.route(train, bucket[~is_val], lambda b: workdir / f"customers_{b:05d}{BUCKET_SUFFIX}")
        objected_ids = pa.concat_arrays(left_out) if left_out else None
        # The history is routed like the other links, one record batch at a time: a bank's
        # customers x months x products rows are never all in memory.
        for name, path in (
            (S.INTERACTIONS, interactions_path),
            (S.HOLDINGS, holdings_path),
            (S.HOLDINGS_HISTORY, history_path),
        ):
            if path is None:
                continue
            for links in link_batches(
                path, max(chunk_rows, LINK_BATCH_ROWS), dated=name == S.HOLDINGS_HISTORY, stamped=name == S.INTERACTIONS
            ):
                if objected_ids is not None:
                    gone = pc.is_in(as_arrow_text(links[S.CUSTOMER_ID]), value_set=objected_ids)
                    links = links[~gone.to_numpy(zero_copy_only=False)]
                if name == S.HOLDINGS_HISTORY:
                    month = months(links[S.AS_OF])
                    for number, count in snapshot_month_rows(month).items():
                        history_per_month[number] = history_per_month.get(number, 0) + count
                is_val, bucket = route(links[S.CUSTOMER_ID].to_numpy())
                writers.write(val_dir / f"{name}{BUCKET_SUFFIX}", links[is_val])
                train = links[~is_val]
                if name == S.HOLDINGS_HISTORY and len(train):
                    history_rows += len(train)
                    seen = np.unique(month[~is_val])
                    snapshot_months.update(int(m) for m in seen)
                    reference = int(seen[-1]) if reference is None else max(reference, int(seen[-1]))
                writers.route(train, bucket[~is_val], lambda b, name=name: workdir / f"{name}_{b:05d}{BUCKET_SUFFIX}")
    finally:
        writers.close()
    partitioned = time.perf_counter()

    # Count pass: examples per piece, popularity, links that match no customer or product.
    pipeline = stats.finish(products, history_rows=history_rows)
    layout = StreamingLayout(workdir, schema, products, pipeline, [], None, chunk_rows, stats.rows, 0)  # type: ignore[arg-type]
    layout.has_history = history_path is not None
    layout.history_reference = reference
    layout.objected = sum(len(ids) for ids in left_out)
    popularity = np.zeros(pipeline.n_products, dtype="int64")
    matched = 0
    for b in range(n_buckets):
        path = layout.customers_file(b)
        if not path.exists():
            continue
        interactions = layout.read_links(S.INTERACTIONS, b)
        if history_path is not None and S.TIMESTAMP in interactions.columns:
            # As the in-memory loader checks: no snapshot on or after a customer's first adoption
            # (a month-by-month adoption log would otherwise train on the future).
            check_history_order(layout.read_history(b), interactions, str(history_path))
        bucket_ids = read_bucket(path).column(table.id)
        for start in range(0, len(bucket_ids), chunk_rows):
            ids = as_arrow_text(bucket_ids.slice(start, chunk_rows))
            mine = interactions[
                pc.is_in(as_arrow_text(interactions[S.CUSTOMER_ID]), value_set=ids).to_numpy(zero_copy_only=False)
            ]
            positions = pipeline.product_positions(mine[S.PRODUCT_ID].to_numpy())
            known = positions >= 0
            popularity += np.bincount(positions[known], minlength=pipeline.n_products)
            layout.customers_with_positives += int(mine[S.CUSTOMER_ID][known].nunique())
            layout.pieces.append(Piece(b, start, len(ids), int(known.sum())))
            matched += len(mine)
        layout.dropped_links += len(interactions) - matched
        matched = 0
    pipeline.product_popularity_ = [int(v) for v in popularity]
    if layout.has_history and history_months > 0:
        _count_earlier_months(layout, history_months, tuple(sorted(snapshot_months)))
    layout.validation = _read_validation(val_dir, schema, products, history_path is not None)
    if history_path is not None and S.TIMESTAMP in layout.validation.interactions.columns:
        check_history_order(layout.validation.holdings_history, layout.validation.interactions, str(history_path))
    # After the order rule, as the loader: with dated adoptions, a late snapshot is named by its customer.
    check_latest_snapshot(history_per_month, str(history_path))
    layout.seconds = {"partition": partitioned - started, "count": time.perf_counter() - partitioned}
    if layout.dropped_links:
        log.warning(
            "%d interaction(s) name a customer that is not in the customers table; skipped", layout.dropped_links
        )
    return layout


def _count_earlier_months(layout: StreamingLayout, history_months: int, snapshots: tuple[int, ...]) -> None:
    """Each piece's examples grow by its earlier months' (``StreamingLayout.piece_examples``),
    counted here so that an epoch's length is known up front; their positives per product join
    the popularity the loss's logQ reads, as in the in-memory fit."""
    layout.history_months, layout.snapshots = history_months, snapshots
    positives = np.zeros(layout.pipeline.n_products, dtype="int64")
    used: set[int | None] = set()
    for piece in layout.pieces:
        for part, reference in layout.earlier(layout.read_piece(piece)):
            found = example_pairs(layout.pipeline, part)[1]
            piece.examples += len(found)
            positives += np.bincount(found, minlength=len(positives))
            used.add(reference)
    layout.earlier_positives = positives
    layout.earlier_months_used = len(used)


def _read_validation(
    val_dir: Path, schema: S.DatasetSchema, products: pd.DataFrame, has_history: bool = False
) -> Dataset:
    def read(name: str) -> pd.DataFrame:
        path = val_dir / f"{name}{BUCKET_SUFFIX}"
        if path.exists():
            frame = read_bucket(path).to_pandas()
            return (
                frame.drop_duplicates([S.CUSTOMER_ID, S.PRODUCT_ID]).reset_index(drop=True)
                if name != S.CUSTOMERS
                else frame
            )
        if name == S.CUSTOMERS:
            return pd.DataFrame({schema.customers.id: pd.Series(dtype=object)})
        return pd.DataFrame({S.CUSTOMER_ID: pd.Series(dtype=object), S.PRODUCT_ID: pd.Series(dtype=object)})

    return Dataset(
        schema=schema,
        customers=read(S.CUSTOMERS),
        products=products,
        interactions=read(S.INTERACTIONS),
        holdings=read(S.HOLDINGS),
        holdings_history=_read_validation_history(val_dir) if has_history else None,
    )


def _read_validation_history(val_dir: Path) -> pd.DataFrame:
    path = val_dir / f"{S.HOLDINGS_HISTORY}{BUCKET_SUFFIX}"
    if not path.exists():
        return _empty_history()
    return read_bucket(path).to_pandas().drop_duplicates().reset_index(drop=True)


# ------------------------------------------------------------------------------ batches


class StreamingBatches(keras.utils.PyDataset):
    """Batches ``(x, y)`` exactly as ``TrainingBatches`` builds them, one piece of at most
    ``chunk_rows`` customers in memory at a time. Batches never span two pieces; random access
    works (Keras peeks at the first batches) but sequential access is what is fast."""

    def __init__(
        self,
        layout: StreamingLayout,
        batch_size: int,
        seed: int,
        sample_from: np.ndarray | None = None,
        num_negatives: int = 0,
        batch_multiple: int = 1,
    ):
        super().__init__()
        self.layout = layout
        self.batch_size = batch_size
        self.seed = seed
        self.sample_from = sample_from
        self.num_negatives = num_negatives
        self.batch_multiple = batch_multiple
        self.epoch = 0
        self.max_rows_held = 0
        self.pieces_loaded = 0
        self._cached: tuple[int, object] | None = None
        self._plan()

    def _batches_in(self, piece: Piece) -> int:
        n = piece.examples - piece.examples % self.batch_multiple
        return math.ceil(n / self.batch_size)

    def _plan(self) -> None:
        """Visit order of the pieces this epoch, and the first batch index of each."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.layout.pieces))
        self.order = [int(i) for i in order if self._batches_in(self.layout.pieces[i]) > 0]
        counts = [self._batches_in(self.layout.pieces[i]) for i in self.order]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype("int64")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _batches(self, slot: int):
        if self._cached is None or self._cached[0] != slot:
            self._cached = None  # drop the previous piece before reading the next
            piece_index = self.order[slot]
            data = self.layout.read_piece(self.layout.pieces[piece_index])
            self.max_rows_held = max(self.max_rows_held, len(data.customers))
            self.pieces_loaded += 1
            examples = self.layout.piece_examples(data)
            examples.drop_remainder(self.batch_multiple)
            rng = np.random.default_rng([self.seed, self.epoch, piece_index])
            self._cached = (slot, TrainingBatches(examples, self.batch_size, rng, self.sample_from, self.num_negatives))
        return self._cached[1]

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        slot = int(np.searchsorted(self.starts, index, side="right") - 1)
        return self._batches(slot)[index - int(self.starts[slot])]

    def on_epoch_end(self):
        self.epoch += 1
        self._cached = None
        self._plan()


# ------------------------------------------------------------------------------ training


@dataclass
class StreamingSource:
    """A dataset directory to train on in chunks: pass it to ``finrec.training.fit``."""

    data_dir: Path
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    workdir: Path | None = None  # scratch space for the bucket files (default: a temporary directory)
    reservoir: int = DEFAULT_RESERVOIR
    max_validation: int = DEFAULT_MAX_VALIDATION
    include_objected: bool = False  # also train on customers who objected to profiling for marketing

    def __post_init__(self):
        self.data_dir = Path(self.data_dir)
        if self.chunk_rows < 1:
            raise DataError(f"chunk_rows must be a positive integer, got {self.chunk_rows}")
        self.last_batches: StreamingBatches | None = None
        self.last_layout: StreamingLayout | None = None

    def fit(
        self,
        config: Config | None = None,
        verbose: int | None = None,
        callbacks: list[keras.callbacks.Callback] | None = None,
        batch_multiple: int = 1,
    ):
        config = checked(config)
        training = config.training
        set_seed(training.seed)
        scratch = Path(tempfile.mkdtemp(prefix="finrec-stream-", dir=self.workdir))
        try:
            layout = partition(
                self.data_dir,
                scratch,
                self.chunk_rows,
                training.validation_fraction,
                training.seed,
                config.model.use_holdings,
                config.model.exclude_protected,
                self.reservoir,
                self.max_validation,
                config.model.history_lags,
                config.model.history_encoder,
                self.include_objected,
                numeric_bins_of(config),
                training.history_months,
            )
            self.last_layout = layout
            if training.distill > 0:
                # The teacher needs every training row at once, which a streamed fit never has.
                log.warning("training.distill is ignored by the streamed fit: it trains on the adoptions alone")
            if training.history_months and config.model.history_encoder == "none":
                if find_table(self.data_dir, S.HOLDINGS_HISTORY, required=False) is not None:
                    # Unlike the in-memory fit, which reads the months off the history whatever
                    # the encoder: here a model without history features never routes it.
                    log.warning(
                        "training.history_months is ignored by the streamed fit with model.history_encoder none: "
                        "it trains on the latest month"
                    )
            if config.model.split_bins:
                log.warning("model.split_bins is ignored by the streamed fit: its bins are quantiles alone")
            blend = config.model.tree_blend
            if blend == "always" or (blend == "auto" and layout.has_history and config.model.history_encoder != "none"):
                # The trees, like the distillation teacher, need every training row at once.
                log.warning("model.tree_blend is ignored by the streamed fit: the towers rank alone")
            if layout.objected:
                log.info("left out %d customer(s) who objected to profiling for marketing", layout.objected)
            if layout.customers_with_positives < 10:
                raise DataError(
                    f"interactions: only {layout.customers_with_positives} training customer(s) have "
                    "interactions; training needs at least 10"
                )
            log.info(
                "streaming training on %d examples (%d earlier month(s)) in %d piece(s) of <= %d customers "
                "(%d validation customers)",
                layout.examples,
                layout.earlier_months_used,
                len(layout.pieces),
                self.chunk_rows,
                len(layout.validation.customers),
            )
            counts = np.asarray(layout.pipeline.product_popularity_, dtype="int64")
            if layout.earlier_positives is not None:
                counts = counts + layout.earlier_positives

            def make_batches(sample_from):
                self.last_batches = StreamingBatches(
                    layout,
                    effective_batch_size(training, layout.examples, batch_multiple),
                    training.seed,
                    sample_from,
                    training.num_negatives,
                    batch_multiple,
                )
                return self.last_batches

            return train_model(
                layout.pipeline,
                layout.products,
                layout.validation,
                counts,
                make_batches,
                config,
                verbose,
                callbacks,
                record={
                    "train_examples": [float(layout.examples)],
                    "prepare_seconds": [sum(layout.seconds.values())],
                    "distilled": [0.0],
                    "earlier_months": [float(layout.earlier_months_used)],
                },
                # The validation customers' earlier months are ranked beside their latest, as in memory.
                val_earlier=layout.earlier(layout.validation),
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
