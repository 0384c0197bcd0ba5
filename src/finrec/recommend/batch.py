"""Batch scoring: the top K eligible products of every customer in a table of any size.

The customers file (Parquet or CSV) is read in chunks, so the table is never whole in memory.
Memory still grows with the customers: the id lookups and the holdings (6 bytes a holding);
on the synthetic bank with 12 months of history the scorer added +1.0 GB at 1M and +2.3 GB at
10M (docs/benchmarks.md). Each chunk goes through the
same numpy path as a single request (``Recommender``): features, customer tower, cosine
against the precomputed product embeddings, the filter masks, then a partial sort. Rows are
streamed to one output file that replaces ``out`` only when complete.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from finrec.atomic import atomic_path, check_writable, refuse_overlap
from finrec.data import schema as S
from finrec.data import validate as V
from finrec.data.ids import as_arrow_text, positions_in, positions_near
from finrec.data.io import (
    FORMULA_PREFIXES,
    find_table,
    iter_customer_chunks,
    read_customer_ids,
    read_id_column,
)
from finrec.data.links import BUCKET_SUFFIX, BucketWriters, link_batches, read_bucket
from finrec.data.validate import check_latest_snapshot, snapshot_month_rows
from finrec.errors import FinrecError
from finrec.history_features import months
from finrec.recommend import filters as F
from finrec.recommend.index import default_workers, single_threaded_blas

log = logging.getLogger(__name__)

OUTPUT_SCHEMA = pa.schema(
    [
        (S.CUSTOMER_ID, pa.string()),
        ("rank", pa.int16()),
        (S.PRODUCT_ID, pa.string()),
        ("score", pa.float32()),
    ]
)
# ``finrec score --probabilities``: the calibrated adoption probability beside the score.
PROBABILITY_SCHEMA = OUTPUT_SCHEMA.append(pa.field(S.PROBABILITY, pa.float32()))
DEFAULT_CHUNK_ROWS = 131_072  # measured best of 64k/128k/256k on 1M customers, 2 cores
# With history features a customer's inputs hold a products x event-features block (25 x 29
# floats on the synthetic bank, about 9 KB a customer with the arrays that build it): chunks of
# 131k customers peaked at 4.5 GB at 1M customers (benchmarks/scale.py --months 12).
HISTORY_CHUNK_ROWS = 32_768
OUTPUT_SUFFIXES = (".csv", ".parquet")


def check_scores_output(out, inputs: dict, what: str = "out") -> None:
    """Refuse, before any work, an output the scorer must not or cannot write: one over an input
    (``inputs``: description -> path), a name that is neither .csv nor .parquet, an existing
    directory, a path below a file."""
    out = Path(out)
    refuse_overlap(out, inputs, what=what)
    check_writable(out, "file", what=what)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise FinrecError(
            f"{what} {out}: name a file ending in .csv or .parquet "
            f"(got {repr(out.suffix) if out.suffix else 'no suffix'}); nothing was written"
        )


class HoldingsLookup:
    """bool [n, P] rows of held products for any list of customer ids, built once."""

    def __init__(self, pipeline, holdings: pd.DataFrame | None):
        self.n_products = pipeline.n_products
        if holdings is None or len(holdings) == 0:
            self.index = pa.array([], type=pa.string())
            self.matrix = np.zeros((0, self.n_products), dtype=bool)
            return
        self.index = pc.unique(as_arrow_text(holdings[S.CUSTOMER_ID]))
        self.matrix = pipeline.holdings_matrix(self.index, holdings)

    def rows(self, customer_ids) -> np.ndarray:
        positions = positions_in(customer_ids, self.index)
        held = np.zeros((len(customer_ids), self.n_products), dtype=bool)
        found = positions >= 0
        held[found] = self.matrix[positions[found]]
        return held


class HoldingsByRow:
    """Held products by the customer's row number in the customers file, read from the holdings
    file in record batches. What stays is 6 bytes a holding (the row as int32, the product as
    int16) and one batch at a time, not the table: read whole, 58M holdings of 10M customers took
    +3.0 GB and the matching +1.4 GB more at its peak (a scratch measurement of the 10M bank).
    Each batch is looked up among the ids just past the row the last batch reached when the
    file follows the customers file's order (``positions_near``), else by sorted hashes
    (``RowOfId``). Each chunk is then a slice of sorted row numbers, so the cost stays linear in
    the data (a per-chunk lookup against every holder would grow with chunks x holders)."""

    BATCH_ROWS = 1 << 20

    def __init__(
        self,
        pipeline,
        customer_ids: pa.Array,
        holdings_path: Path | None,
        batch_rows: int = BATCH_ROWS,
        products: pa.Array | None = None,
    ):
        """``products``: when given, the data's product ids; a row naming a customer the customers
        file lacks, or a product neither the model nor ``products`` lists, is then refused as
        ``load_dataset`` refuses it (``check_holding_ids``), instead of being skipped."""
        self.n_products = pipeline.n_products
        row_type = np.int32 if len(customer_ids) < 2**31 else np.int64
        col_type = np.int16 if self.n_products < 2**15 else np.int32
        rows, cols = [np.zeros(0, row_type)], [np.zeros(0, col_type)]
        row_of, next_row = None, 0
        for links in link_batches(Path(holdings_path), batch_rows) if holdings_path is not None else ():
            if len(links) == 0:  # every row of the batch lacked an id
                continue
            values = as_arrow_text(links[S.CUSTOMER_ID])
            found = positions_near(values, customer_ids, next_row)
            if found is None:
                row_of = row_of or RowOfId(customer_ids)  # built once, only for a table out of order
                found = row_of(values)
            if (found >= 0).any():
                next_row = int(found.max()) + 1
            col = pipeline.product_positions(links[S.PRODUCT_ID])
            if products is not None:
                check_holding_ids(links, found, col, customer_ids, pipeline, products, holdings_path)
            keep = (found >= 0) & (col >= 0)
            rows.append(found[keep].astype(row_type))
            cols.append(col[keep].astype(col_type))
        self.rows, self.cols = np.concatenate(rows), np.concatenate(cols)
        if len(self.rows) > 1 and (self.rows[1:] < self.rows[:-1]).any():
            order = np.argsort(self.rows, kind="stable")
            self.rows, self.cols = self.rows[order], self.cols[order]

    def slice(self, start: int, stop: int) -> np.ndarray:
        """bool [stop - start, P] for the customers in file rows ``start:stop``."""
        lo, hi = np.searchsorted(self.rows, [start, stop])
        held = np.zeros((stop - start, self.n_products), dtype=bool)
        held[self.rows[lo:hi] - start, self.cols[lo:hi]] = True
        return held


def check_holding_ids(
    links: pd.DataFrame, found: np.ndarray, col: np.ndarray, customer_ids, pipeline, products, path
) -> None:
    """Refuse a batch of holdings that names a customer the customers file lacks (``found`` -1)
    or a product that neither the model's catalogue (``col`` -1) nor the data's ``products``
    lists, with ``load_dataset``'s message. Skipped, such rows were a customer's holdings lost:
    ids written another way than the customers or products tables write them (``cur_basic`` for
    ``CUR_BASIC``, ``1`` for ``0001``) made every customer hold nothing, and ``score`` and ``plan``
    offered the products they hold, where ``recommend`` and ``serve`` refuse the data."""
    where = f"{S.HOLDINGS} ({path})"
    if (found < 0).any():
        V.check_references(links, S.CUSTOMER_ID, pd.Index(as_arrow_text(customer_ids).to_pandas()), where, S.CUSTOMERS)
    if (col < 0).any():
        known = pa.concat_arrays([as_arrow_text(pipeline.product_ids_), as_arrow_text(products)])
        V.check_references(links, S.PRODUCT_ID, pd.Index(known.to_pandas()), where, S.PRODUCTS)


def data_product_ids(data_dir: Path, schema: S.DatasetSchema) -> pa.Array:
    """The product ids of ``data_dir``'s products table (none when it has none: the model's
    catalogue then applies)."""
    path = find_table(Path(data_dir), S.PRODUCTS, required=False)
    return pa.array([], pa.string()) if path is None else read_id_column(path, schema.products.id)


class RowOfId:
    """Row numbers of ids in the customers file, for many lookups without a hash table of every
    id rebuilt per lookup: the ids' 64-bit hashes sorted once (16 bytes a customer), each lookup
    a binary search, then checked against the id text (a collision or an absent id gives -1; a
    repeated id, its first row, as ``positions_in``)."""

    def __init__(self, ids: pa.Array, step: int = 1 << 20):
        self.ids = as_arrow_text(ids)
        hashes = np.concatenate(
            [np.zeros(0, np.uint64)] + [self._hash(self.ids[i : i + step]) for i in range(0, len(ids), step)]
        )
        self.order = np.argsort(hashes, kind="stable")
        self.sorted = hashes[self.order]

    @staticmethod
    def _hash(values: pa.Array) -> np.ndarray:
        return pd.util.hash_array(np.asarray(values.to_numpy(zero_copy_only=False), dtype=object), categorize=False)

    def __call__(self, values) -> np.ndarray:
        values = as_arrow_text(values)
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if len(self.sorted) == 0 or len(values) == 0:
            return np.full(len(values), -1, dtype=np.int64)
        hashes = self._hash(values)
        at = np.minimum(np.searchsorted(self.sorted, hashes), len(self.sorted) - 1)
        rows = np.where(self.sorted[at] == hashes, self.order[at], -1).astype(np.int64)
        same = pc.equal(values, self.ids.take(pa.array(np.maximum(rows, 0)))).fill_null(False)
        rows[~same.to_numpy(zero_copy_only=False)] = -1
        return rows


class HistoryByChunk:
    """The holdings history of any run of rows of the customers file, without the table in
    memory. One pass reads the history in record batches (``finrec.training.stream``'s reader,
    dates checked as there), finds each row's customer row (``RowOfId``) and appends it to a
    bucket file of ``rows_per_bucket`` consecutive customer rows (a multiple of the scoring
    chunk); a chunk then reads only its bucket(s), filtered to its rows. ``reference`` is the
    table's latest snapshot month, which every chunk's features share (as the whole table would
    give them). Memory: one record batch, the row lookup, the products' names and the
    ``BucketWriters`` buffer (4M cells: 1.4M of these rows).

    A bucket file is an Arrow IPC stream of three numbers a row: the customer's row (int32), the
    product's code (int32; ``products`` holds the names) and the snapshot date (timestamp); the
    ids come back from the customers file's own id column. With Parquet files (one small row
    group per batch and bucket, about 10 KB each kept by the open writer) the scorer's RSS at 10M
    customers x 12 months climbed by about 0.9 GB during the routing and fell when the writers
    closed; with IPC streams it stays flat, and the peak fell from +2.5 to +2.3 GB
    (docs/benchmarks.md)."""

    BATCH_ROWS = 1 << 20

    def __init__(self, path: Path, rows: RowOfId, chunk_rows: int, workdir: Path, max_buckets: int = 256):
        n_chunks = max(1, math.ceil(len(rows.ids) / chunk_rows))
        self.rows_per_bucket = chunk_rows * math.ceil(n_chunks / max_buckets)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ids = rows.ids
        self.reference: int | None = None
        codes: dict[str, int] = {}
        row_type = np.int32 if len(rows.ids) < 2**31 else np.int64
        writers = BucketWriters()
        per_month: dict[int, int] = {}  # the scored customers' history rows per snapshot month
        try:
            for links in link_batches(Path(path), self.BATCH_ROWS, dated=True):
                if len(links) == 0:
                    continue
                row = rows(links[S.CUSTOMER_ID])
                known = row >= 0
                if not known.any():
                    continue
                links, row = links[known], row[known]
                # The latest snapshot of the customers scored: a stray later row of an unknown
                # customer must not shift everyone's lags.
                month = months(links[S.AS_OF])
                latest = int(month.max())
                self.reference = latest if self.reference is None else max(self.reference, latest)
                for number, count in snapshot_month_rows(month).items():
                    per_month[number] = per_month.get(number, 0) + count
                local, names = pd.factorize(links[S.PRODUCT_ID].to_numpy())
                product = np.array([codes.setdefault(name, len(codes)) for name in names], np.int32)[local]
                compact = pd.DataFrame(
                    {"row": row.astype(row_type), "product": product, S.AS_OF: links[S.AS_OF].to_numpy()}
                )
                writers.route(compact, row // self.rows_per_bucket, self._file)
        finally:
            writers.close()
        check_latest_snapshot(per_month, str(path))
        self.products = pa.array(list(codes), pa.string())

    def _file(self, bucket: int) -> Path:
        return self.workdir / f"history_{bucket:05d}{BUCKET_SUFFIX}"

    def slice(self, start: int, stop: int) -> pd.DataFrame:
        """The history rows (customer_id, product_id, as_of) of the customers in file rows
        ``start:stop``: bucket by bucket, each in the history file's order."""
        parts = []
        for b in range(start // self.rows_per_bucket, (stop - 1) // self.rows_per_bucket + 1):
            if self._file(b).exists():
                table = read_bucket(self._file(b))
                row = table.column("row")
                parts.append(table.filter(pc.and_(pc.greater_equal(row, start), pc.less(row, stop))))
        table = pa.concat_tables(parts) if parts else None
        if table is None or table.num_rows == 0:
            return pd.DataFrame(
                {
                    S.CUSTOMER_ID: pd.Series(dtype=object),
                    S.PRODUCT_ID: pd.Series(dtype=object),
                    S.AS_OF: pd.Series(dtype="datetime64[ns]"),
                }
            )
        return pd.DataFrame(
            {
                S.CUSTOMER_ID: self.ids.take(table.column("row")).to_pandas(),
                S.PRODUCT_ID: self.products.take(table.column("product")).to_pandas(),
                S.AS_OF: table.column(S.AS_OF).to_pandas(),
            }
        )


def topk_table(
    customer_ids, product_ids: pa.Array, index: np.ndarray, scores: np.ndarray, probabilities: np.ndarray | None = None
) -> pa.Table:
    """Long table ``customer_id, rank, product_id, score`` [+ ``probability`` when given, [n, k]];
    slots with no eligible product dropped. ``customer_ids``: [n] text (Arrow, pandas or numpy)."""
    n, k = index.shape
    valid = np.isfinite(scores).ravel()
    owner = np.repeat(np.arange(n), k)[valid]
    columns = {
        S.CUSTOMER_ID: as_arrow_text(customer_ids).take(owner),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int16), n)[valid]),
        S.PRODUCT_ID: product_ids.take(index.ravel()[valid]),
        "score": pa.array(scores.ravel()[valid].astype(np.float32)),
    }
    if probabilities is None:
        return pa.table(columns, schema=OUTPUT_SCHEMA)
    columns[S.PROBABILITY] = pa.array(probabilities.ravel()[valid].astype(np.float32))
    return pa.table(columns, schema=PROBABILITY_SCHEMA)


def _escape(array: pa.Array) -> pa.Array:
    values = pd.Series(array.to_numpy(zero_copy_only=False), dtype=object)
    risky = values.str.startswith(FORMULA_PREFIXES).fillna(False).to_numpy(dtype=bool)
    if not risky.any():
        return array
    values[risky] = "'" + values[risky]
    return pa.array(values, pa.string())


class TopKWriter:
    """Streams tables to Parquet, or CSV with formula escaping when the name ends in .csv."""

    def __init__(self, path: Path, schema: pa.Schema = OUTPUT_SCHEMA):
        self.path = Path(path)
        self.schema = schema
        self.csv = self.path.suffix == ".csv"
        self.rows = 0

    def __enter__(self):
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        # Customer ids are all distinct: dictionary-encoding them and their min/max statistics
        # only cost time (together about half of the write, measured on 1M customers).
        self._writer = (
            pacsv.CSVWriter(str(tmp), self.schema)
            if self.csv
            else pq.ParquetWriter(
                str(tmp),
                self.schema,
                use_dictionary=["rank", S.PRODUCT_ID],
                write_statistics=["rank", S.PRODUCT_ID, "score"],
            )
        )
        return self

    def write(self, table: pa.Table) -> None:
        if self.csv:
            table = table.set_column(0, S.CUSTOMER_ID, _escape(table.column(0).combine_chunks()))
            table = table.set_column(2, S.PRODUCT_ID, _escape(table.column(2).combine_chunks()))
        self._writer.write_table(table)
        self.rows += table.num_rows

    def __exit__(self, kind, value, traceback):
        self._writer.close()
        return self._atomic.__exit__(kind, value, traceback)


def score_dataset(
    recommender,
    data_dir: str | Path,
    out: str | Path,
    k: int = 5,
    filters=None,
    chunk_rows: int | None = None,
    workers: int | None = None,
    probabilities: bool = False,
    stats: dict | None = None,
) -> tuple[int, int]:
    """Write the top ``k`` eligible products of every customer in ``data_dir``'s customers table
    to ``out``. Returns (customers read, rows written). ``probabilities`` adds the calibrated
    adoption probability of each row (the model must have a calibration). ``stats``, when given,
    receives ``objected``: the customers who objected to profiling for marketing, who are neither
    ranked nor in the output (``Recommender.rank`` leaves their rows empty); and ``catalogue``:
    the ``CatalogueChanges`` of ``data_dir``'s products table, whose attributes the filters read
    (``Recommender.for_data``), or None.

    This thread reads and validates chunks and writes finished ones in file order; ``workers``
    threads (default: the CPUs this process may use) each featurize, rank (tower, cosine,
    filters, top-k) and tabulate a whole chunk. At most ``workers`` chunks wait at once, so
    memory stays bounded. Arrow, the Parquet writer and numpy's kernels release the GIL, so
    the threads share the cores (the measurements are in docs/benchmarks.md)."""
    filters = F.Filters.build(filters)
    calibration = recommender.calibration if probabilities else None
    if probabilities and calibration is None:
        raise FinrecError("--probabilities: this model has no calibration (calibration.json); retrain it")
    data_dir = Path(data_dir)
    source = recommender.dataset.source if getattr(recommender, "dataset", None) is not None else None
    check_scores_output(out, {"the data directory": data_dir, "the recommender's data": source})
    recommender = recommender.for_data(data_dir)
    customers_path = find_table(data_dir, S.CUSTOMERS)
    holdings_path = find_table(data_dir, S.HOLDINGS, required=False)
    # A model with history features routes the history once to scratch files by customer row
    # (never the whole table in memory); each chunk reads its customers' rows and builds their
    # features against the table's common latest snapshot. Without them it is never read.
    history_path = find_table(data_dir, S.HOLDINGS_HISTORY, required=False)
    if getattr(recommender.pipeline, "history_", None) is None:
        history_path = None
    if chunk_rows is None:
        chunk_rows = DEFAULT_CHUNK_ROWS if history_path is None else HISTORY_CHUNK_ROWS
    table = recommender.schema.customers
    chunks = iter_customer_chunks(customers_path, table, chunk_rows)
    # The first chunk is read before anything else, so a broken file fails with the contract's
    # own message (empty, wrong separator, missing column) rather than in the id-column read.
    first = next(chunks, None)
    chunks = itertools.chain([first] if first is not None else [], chunks)
    product_ids = pa.array(recommender.pipeline.product_ids_, pa.string())

    customer_ids = None

    def match_holdings() -> HoldingsByRow:
        nonlocal customer_ids
        customer_ids = read_customer_ids(customers_path, table.id)
        products = data_product_ids(data_dir, recommender.schema)
        return HoldingsByRow(recommender.pipeline, customer_ids, holdings_path, products=products)

    scratch = tempfile.TemporaryDirectory(prefix="finrec-score-") if history_path is not None else None
    workers = workers or default_workers()
    # BLAS threads would fight the chunk workers for the cores (OpenBLAS spins idle threads):
    # the workers are the parallelism.
    with (
        TopKWriter(Path(out), PROBABILITY_SCHEMA if calibration else OUTPUT_SCHEMA) as writer,
        ThreadPoolExecutor(max_workers=workers) as pool,
        ThreadPoolExecutor(max_workers=1) as side,
        single_threaded_blas(),
        scratch or contextlib.nullcontext(),
    ):
        lookup = side.submit(match_holdings)  # meanwhile this thread reads the first chunks
        by_chunk = (
            side.submit(lambda: HistoryByChunk(history_path, RowOfId(customer_ids), chunk_rows, Path(scratch.name)))
            if scratch is not None
            else None
        )

        objected = no_eligible = 0

        def score(start: int, chunk: pd.DataFrame) -> tuple[pa.Table, int, int]:
            held = lookup.result().slice(start, start + len(chunk))
            history, reference = None, None
            if by_chunk is not None:
                history, reference = by_chunk.result().slice(start, start + len(chunk)), by_chunk.result().reference
            context = recommender.context(
                chunk,
                held=held,
                history=history,
                history_reference=reference,
                adoption=calibration is not None,
                validated=True,  # iter_customer_chunks validated the chunk
            )
            ranking = recommender.rank(context, k, filters, workers=1)
            # The calibration needs the whole score row (a softmax): from the ranking's embeddings.
            chosen = recommender.ranked_probabilities(context, ranking) if calibration is not None else None
            table_ = topk_table(chunk[table.id], product_ids, ranking.index, ranking.scores, chosen)
            objected_ = np.asarray(context.attributes["objected"], dtype=bool)
            empty = ~np.isfinite(ranking.scores).any(axis=1) & ~objected_
            return table_, int(objected_.sum()), int(empty.sum())

        written = 0

        def write(done, size: int) -> None:
            nonlocal objected, no_eligible, written
            table_, count, empty = done.result()
            writer.write(table_)
            objected += count
            no_eligible += empty
            written += size
            log.info("scored %s of %s customers", f"{written:,}", f"{len(customer_ids):,}")

        in_flight: collections.deque = collections.deque()
        n_customers = 0
        for chunk in chunks:
            in_flight.append((pool.submit(score, n_customers, chunk), len(chunk)))
            n_customers += len(chunk)
            while len(in_flight) > workers or (in_flight and in_flight[0][0].done()):
                write(*in_flight.popleft())
        while in_flight:
            write(*in_flight.popleft())
    if stats is not None:
        stats["objected"] = objected
        stats["no_eligible"] = no_eligible  # ranked, no product passed the filters: no row
        stats["catalogue"] = recommender.catalogue_changes
    return n_customers, writer.rows
