"""Link tables (interactions, holdings, holdings history: a customer id, a product id and
perhaps a date per row) read in record batches, and rows routed to bucket files.

The streamed trainer (``finrec.training.stream``), batch scoring and campaign planning read link
tables this way so that a bank's customers x months x products rows are never all in memory.
No Keras here: ``finrec score`` and ``finrec plan`` on the numpy tower import this module and
must not pay TensorFlow's import (about 10 s and 750 MB).
"""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from finrec.data import schema as S
from finrec.data import validate as V
from finrec.data.ids import ids_as_text
from finrec.data.io import check_table_file, not_utf8, open_parquet, refuse_repeated_names
from finrec.data.validate import parse_dates
from finrec.errors import DataError, first_line


def link_batches(path: Path, chunk_rows: int, dated: bool = False, stamped: bool = False):
    """Record batches (customer_id, product_id as text) of a link table, CSV or Parquet; with
    ``dated``, of a holdings history (its ``as_of`` parsed, a missing or bad date refused); with
    ``stamped``, with the interactions' ``timestamp`` too when the file has one (parsed; missing
    allowed), so the history's order can be checked against it."""
    # The cheap checks of a table read whole (no such file, empty, not Parquet, binary): a bad
    # file is the user's input error, never an Arrow traceback.
    check_table_file(path)
    columns = [S.CUSTOMER_ID, S.PRODUCT_ID, *((S.AS_OF,) if dated else ())]
    names = _column_names(path)
    # A name given twice: Parquet made the id a frame of two columns (an internal error), CSV
    # silently took the first (a reviewer).
    refuse_repeated_names(names, path)
    # Named before Arrow's "Column ... in include_columns does not exist", with the near names
    # ('product_id ' for 'product_id') that a plain list of the columns hides.
    V.require_columns(pd.DataFrame(columns=names), columns, str(path))
    if stamped and S.TIMESTAMP in names:
        columns.append(S.TIMESTAMP)
    if path.suffix == ".parquet":
        try:
            batches = open_parquet(path).iter_batches(batch_size=chunk_rows, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    elif path.suffix == ".csv":
        options = pacsv.ConvertOptions(
            include_columns=columns, column_types={c: pa.string() for c in columns if c != S.AS_OF}
        )
        try:
            batches = pacsv.open_csv(
                path, read_options=pacsv.ReadOptions(block_size=max(1 << 20, chunk_rows * 32)), convert_options=options
            )
        except (pa.ArrowException, OSError) as exc:
            raise _read_error(path, exc) from None
    else:
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (use .csv or .parquet)")
    offset = 0
    for batch in _readable(batches, path):
        # A Parquet column written from pandas categories comes back dictionary-encoded, and each
        # batch carries the whole file's dictionary: text work on it (ids_as_text) then costs the
        # file's distinct ids per batch, which grew the pass with the square of the customers
        # (100k customers x 12 months: 211 s). Decoded, each batch costs its own rows.
        if any(pa.types.is_dictionary(field.type) for field in batch.schema):
            batch = pa.RecordBatch.from_arrays(
                [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in batch.columns],
                names=batch.schema.names,
            )
        frame = batch.to_pandas()
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
        for column in columns[:2]:
            frame[column] = ids_as_text(frame[column])
        where = f"{path} rows {offset + 1}-{offset + len(frame)}"
        if dated:
            frame[S.AS_OF] = parse_dates(frame[S.AS_OF], S.AS_OF, where)
        if S.TIMESTAMP in columns:
            frame[S.TIMESTAMP] = parse_dates(frame[S.TIMESTAMP], S.TIMESTAMP, where, allow_missing=True)
        offset += len(frame)
        frame = frame.dropna(subset=[c for c in columns if c != S.TIMESTAMP])
        yield frame[columns]


def adoption_dates(path: Path, chunk_rows: int = 1 << 20) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """(first, last) adoption date of an interactions file, read in batches; None when it has no
    ``timestamp`` column, no row, or a row without one (its period cannot be told)."""
    first = last = None
    for frame in link_batches(Path(path), chunk_rows, stamped=True):
        if S.TIMESTAMP not in frame.columns or frame[S.TIMESTAMP].isna().any():
            return None
        if len(frame):
            low, high = frame[S.TIMESTAMP].min(), frame[S.TIMESTAMP].max()
            first = low if first is None else min(first, low)
            last = high if last is None else max(last, high)
    return None if first is None else (first, last)


def _readable(batches, path: Path):
    """``batches`` with a failure while reading (a bad row far into a CSV file, a damaged row
    group) as one bounded ``DataError`` naming the file."""
    try:
        yield from batches
    except (pa.ArrowException, OSError) as exc:
        raise _read_error(path, exc) from None


def _read_error(path: Path, exc: Exception) -> DataError:
    """Arrow's failure to read ``path`` as a bounded ``DataError``; a CSV file that is not UTF-8
    text has its first such line named, as a table read whole has (Arrow says only "invalid
    UTF8 data")."""
    if path.suffix == ".csv" and "UTF8" in str(exc):
        return not_utf8(path, path, first_line(exc))
    return DataError(f"{path}: not a readable {path.suffix[1:].upper()} file ({first_line(exc)})")


def _column_names(path: Path) -> list[str]:
    """The column names of a CSV or Parquet table, from its header or schema alone."""
    if path.suffix == ".parquet":
        try:
            return list(pq.ParquetFile(path).schema_arrow.names)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    # utf-8-sig: a byte-order mark is no part of the first name (Arrow's reader drops it too).
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        try:
            return next(csv.reader(handle), [])
        except csv.Error as exc:  # a name over the csv module's field limit (128 KB)
            raise DataError(f"{path}: not a readable CSV header ({first_line(exc)})") from None


BUCKET_SUFFIX = ".arrows"  # scratch bucket files: Arrow IPC streams, lz4-compressed
_BUCKET_FORMAT = pa.ipc.IpcWriteOptions(compression="lz4")


class BucketWriters:
    """Scratch tables written piece by piece, one Arrow IPC stream per file (opened on first
    write; ``read_bucket`` reads one back).

    Rows wait in memory until the cells pending in all files pass ``buffer_cells``; then each
    file's pending rows are written as one record batch. Written as they came, a table routed
    batch by batch to many buckets made one tiny piece per batch and bucket, a number that grows
    with the square of the data, and so did the time to write and read them (1M customers x 12
    months: 50M history rows in 2,500 batches to 60 buckets). Everything is written at once
    because a pending piece may be a slice that keeps its whole batch in memory.

    IPC streams rather than Parquet: an open Parquet writer keeps about 10 KB per row group it
    has written until it closes (150 writers x 100 row groups of 6,500 rows: +146 MB), and the
    pieces number flushes x buckets (a 10M-customer bank with 12 months of history flushes
    about 500 times); a stream keeps nothing (0 MB in the same test) and wrote it 10x faster. A
    batch whose categories differ from the first's is written with its own dictionary (a
    stream may replace one)."""

    def __init__(self, buffer_cells: int = 1 << 22):
        self.open: dict[Path, pa.ipc.RecordBatchStreamWriter] = {}
        self.schemas: dict[Path, pa.Schema] = {}
        self.pending: dict[Path, list[pd.DataFrame]] = {}
        self.cells = 0
        self.buffer_cells = buffer_cells

    def write(self, path: Path, frame: pd.DataFrame) -> None:
        if len(frame) == 0:
            return
        self.pending.setdefault(path, []).append(frame)
        self.cells += frame.size
        if self.cells > self.buffer_cells:
            self.flush()

    def route(self, frame: pd.DataFrame, bucket: np.ndarray, path_of) -> None:
        """Row i of ``frame`` to file ``path_of(bucket[i])`` (int [n]), rows keeping their order:
        one sort and one gather, then a slice per bucket."""
        order = np.argsort(bucket, kind="stable")
        ordered, sorted_bucket = frame.iloc[order], bucket[order]
        bounds = np.flatnonzero(np.diff(sorted_bucket)) + 1
        for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(order)]):
            if stop > start:
                self.write(path_of(int(sorted_bucket[start])), ordered.iloc[start:stop])

    def flush(self) -> None:
        for path in list(self.pending):
            self._flush(path)
        self.cells = 0

    def _flush(self, path: Path) -> None:
        frames = self.pending.pop(path)
        table = pa.Table.from_pandas(
            frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True), preserve_index=False
        )
        writer = self.open.get(path)
        if writer is None:
            writer = self.open[path] = pa.ipc.new_stream(str(path), table.schema, options=_BUCKET_FORMAT)
            self.schemas[path] = table.schema
        elif table.schema != self.schemas[path]:
            table = table.cast(self.schemas[path])
        # One batch a flush: a concatenated frame's Arrow-backed text columns arrive in the
        # pieces' chunks, which a stream would keep as that many tiny batches.
        writer.write_table(table.combine_chunks())

    def close(self) -> None:
        """Write what is pending and close every file: each one, even when a write or another
        file's close fails (a full disk)."""
        with contextlib.ExitStack() as closing:
            closing.callback(self.pending.clear)
            closing.callback(self.open.clear)
            try:
                self.flush()
            finally:
                for writer in self.open.values():
                    closing.callback(writer.close)


def read_bucket(path: Path) -> pa.Table:
    """A file ``BucketWriters`` wrote, read whole."""
    with pa.ipc.open_stream(path) as reader:
        return reader.read_all()


__all__ = ["BUCKET_SUFFIX", "BucketWriters", "link_batches", "read_bucket"]
