"""Reading and writing datasets: the only data module that touches disk.

Ids are read as strings (``7`` in one file and ``"7"`` in another are the same customer), so
customer and product ids may be integers or text in the user's files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from finrec.atomic import atomic_directory, atomic_path, check_writable, refuse_overlap
from finrec.data import compliance as C
from finrec.data import schema as S
from finrec.data import validate as V
from finrec.data.categories import as_category_text
from finrec.data.ids import as_arrow_text, ids_as_text, positions_in
from finrec.errors import DataError, SchemaError, first_line, reject_unknown, safe_items, safe_text
from finrec.safeyaml import load_yaml

log = logging.getLogger(__name__)

# Refuse files larger than this before reading them: a bank's customer table is big, but a
# multi-gigabyte CSV is better converted to Parquet and scored in chunks (``finrec score``).
MAX_CSV_BYTES = 2 * 1024**3
# A CSV file is sniffed before pandas sees it: its first line must end within this many bytes,
# and a NUL byte in that line, or more than a few in its first or last block, marks a binary file
# (a spreadsheet, an archive, UTF-16 text, or a sparse file of zeros) refused after a small read.
MAX_HEADER_BYTES = 1024**2
SNIFF_BYTES = 64 * 1024
MAX_SNIFF_NULS = 8
PARQUET_MAGIC = b"PAR1"
# Cells a spreadsheet would run as a formula; written CSV files prefix them with a quote.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class Dataset:
    """A validated dataset. ``holdings`` is empty (with its columns) when the file is absent;
    ``ground_truth`` is ``None`` unless the data is synthetic."""

    schema: S.DatasetSchema
    customers: pd.DataFrame
    products: pd.DataFrame
    interactions: pd.DataFrame
    holdings: pd.DataFrame = field(default_factory=lambda: _empty_links())
    # Past snapshots (customer_id, product_id, as_of as datetime64), or None when not given.
    holdings_history: pd.DataFrame | None = None
    ground_truth: pd.DataFrame | None = None
    source: Path | None = None

    @property
    def customer_ids(self) -> np.ndarray:
        return self.customers[self.schema.customers.id].to_numpy()

    @property
    def product_ids(self) -> np.ndarray:
        return self.products[self.schema.products.id].to_numpy()

    def subset_customers(self, ids) -> Dataset:
        """The dataset restricted to the given customers (all products are kept)."""
        # Looked up by hashing in Arrow: pandas' ``isin`` made a Python object of
        # every id kept, 35 s to keep 1.8M of 2M customers (the customers who did not object).
        array_like = (pd.Series, pd.Index, np.ndarray, pa.Array, pa.ChunkedArray)
        keep = pc.unique(as_arrow_text(ids if isinstance(ids, array_like) else list(ids)))

        def rows(table: pd.DataFrame | None, column: str = S.CUSTOMER_ID) -> pd.DataFrame | None:
            return None if table is None else table[positions_in(table[column], keep) >= 0].reset_index(drop=True)

        return replace(
            self,
            customers=rows(self.customers, self.schema.customers.id),
            interactions=rows(self.interactions),
            holdings=rows(self.holdings),
            holdings_history=rows(self.holdings_history),
            ground_truth=rows(self.ground_truth),
        )


def _empty_links() -> pd.DataFrame:
    return pd.DataFrame({S.CUSTOMER_ID: pd.Series(dtype=object), S.PRODUCT_ID: pd.Series(dtype=object)})


# --------------------------------------------------------------------------------------------
# Reading


def find_table(directory: Path, name: str, required: bool = True) -> Path | None:
    """The ``name.parquet`` or ``name.csv`` file in ``directory``."""
    directory = Path(directory)
    if required and not directory.is_dir():
        # Listing what it holds raised a bare FileNotFoundError (build_problem's data_dir).
        raise DataError(f"{directory}: no such data directory")
    found = [directory / f"{name}{suffix}" for suffix in S.TABLE_SUFFIXES if (directory / f"{name}{suffix}").exists()]
    if len(found) > 1:
        raise DataError(f"{directory}: both {found[0].name} and {found[1].name} exist; keep one")
    if not found:
        if required:
            raise DataError(
                f"{directory}: missing table '{name}' (expected {name}.csv or {name}.parquet); "
                f"the directory has: {_listing(directory)}"
            )
        return None
    return found[0]


def _listing(directory: Path) -> str:
    return safe_items(sorted(p.name for p in directory.iterdir()), 20, quote=False) or "nothing"


def read_table(path: Path, id_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read one CSV or Parquet table; id columns are read as strings."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if path.suffix == ".parquet":
        check_parquet_file(path)
        try:
            refuse_repeated_names(pq.read_schema(path).names, path)
            df = pq.read_table(path).to_pandas()
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    elif path.suffix == ".csv":
        if path.stat().st_size > MAX_CSV_BYTES:
            raise DataError(f"{path}: {path.stat().st_size / 1e9:.1f} GB is over the CSV limit; convert it to Parquet")
        check_csv_file(path)
        df = _read_csv(path, id_columns)
    else:
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (use .csv or .parquet)")
    for column in id_columns:
        if column in df.columns:
            df[column] = ids_as_text(df[column])
    return df


def _check_csv_head(head: bytes, tail: bytes, size: int, where) -> None:
    """Refuse a "CSV" file that is obviously not one, from its first ``MAX_HEADER_BYTES`` (or
    fewer) and its last ``SNIFF_BYTES``, before pandas reads it whole."""
    end = head.find(b"\n")
    header = head if end < 0 else head[:end]
    if b"\0" in header or head[:SNIFF_BYTES].count(b"\0") > MAX_SNIFF_NULS or tail.count(b"\0") > MAX_SNIFF_NULS:
        raise DataError(
            f"{where}: a binary file, not CSV text (it holds NUL bytes); is it really a CSV file? "
            "(a spreadsheet or UTF-16 text must be saved as UTF-8 CSV)"
        )
    if end < 0 and size > len(head):
        raise DataError(
            f"{where}: the first line runs past {MAX_HEADER_BYTES // 1024**2} MB without a line break; "
            "it is not a header of column names"
        )


def check_csv_file(path: Path) -> None:
    """Refuse an obviously binary or header-less CSV file after reading a few blocks of it."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(MAX_HEADER_BYTES)
        tail = b""
        if size > len(head):
            handle.seek(max(len(head), size - SNIFF_BYTES))
            tail = handle.read(SNIFF_BYTES)
    _check_csv_head(head, tail, size, path)


def check_parquet_file(path: Path) -> None:
    """Refuse a ".parquet" file without the Parquet marker at its start and end (8 bytes read)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(4)
        handle.seek(max(0, size - 4))
        tail = handle.read(4)
    if size < 12 or head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
        raise DataError(
            f"{path}: not a readable Parquet file (it does not start and end with the Parquet "
            f"marker PAR1); is it really a Parquet file?"
        )


def check_table_file(path: Path) -> None:
    """The cheap checks of ``read_table`` for readers that stream a file (no size limit)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if path.suffix == ".parquet":
        check_parquet_file(path)
    elif path.suffix == ".csv":
        check_csv_file(path)


@contextmanager
def _csv_errors(where, empty: str = "the file has no header and no rows", source=None):
    """pandas' failures to read a CSV file as one bounded ``DataError`` naming ``where``;
    ``source`` (the path, or the bytes held in memory) lets a text that is not UTF-8 be
    located by its line."""
    try:
        yield
    except UnicodeDecodeError as exc:  # before ValueError, its base
        # pandas' offset is within the one cell it decoded, not the file: the line is found here.
        raise not_utf8(where, where if source is None else source, exc.reason) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{where}: {empty}") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"{where}: not a readable CSV file ({first_line(exc)})") from None


def not_utf8(where, source, reason: str) -> DataError:
    """The error for a CSV file (``source``: its path, or the bytes held in memory) that is not
    UTF-8 text, naming its first such line; ``reason``, the reader's own words, where no line
    is found."""
    found = _first_non_utf8_line(source)
    at = f"line {found[0]}, near: {safe_text(found[1], 60)}" if found else reason
    return DataError(
        f"{where}: not UTF-8 text ({at}); a Latin-1 or Windows-1252 export must be saved as UTF-8 "
        "(a spreadsheet's 'CSV UTF-8')"
    )


def _first_non_utf8_line(source) -> tuple[int, bytes] | None:
    """(number, the bytes around the fault) of the first line of a CSV file (a path, or an
    in-memory upload) that is not UTF-8; None when every line is (or the file is gone)."""
    try:
        with open(source, "rb") if isinstance(source, (str, Path)) else nullcontext(source) as handle:
            handle.seek(0)
            for number, line in enumerate(handle, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return number, line[max(0, exc.start - 20) : exc.end + 20].rstrip(b"\r\n")
    except OSError:
        return None
    return None


def _read_csv(source, id_columns: tuple[str, ...], where: str | None = None) -> pd.DataFrame:
    where = where or str(source)
    with _csv_errors(where, source=source):
        df = pd.read_csv(source, dtype={c: str for c in id_columns}, keep_default_na=True, encoding="utf-8")
    _check_separator(df, where)
    _check_duplicate_names(source, where)
    unnamed = [c for c in df.columns if str(c).startswith("Unnamed:")]
    if unnamed and len(unnamed) == len(df.columns):
        raise DataError(f"{where}: the first line is not a header of column names")
    return df


def _check_duplicate_names(source, where) -> None:
    """Refuse a header that names a column twice: pandas renames the second ``income`` to
    ``income.1``, and the schema's ``income`` would silently be the first of the two."""
    try:
        with open(source, "rb") if isinstance(source, (str, Path)) else nullcontext(source) as handle:
            handle.seek(0)
            line = handle.readline(MAX_HEADER_BYTES)
            handle.seek(0)
    except OSError:
        return
    try:
        names = next(csv.reader([line.decode("utf-8-sig", "replace")]), [])
    except csv.Error:  # a name over the csv module's field limit: the schema check names it
        return
    refuse_repeated_names(names, where)


def refuse_repeated_names(names: Iterable[str], where) -> None:
    """A CSV header or a Parquet schema that names a column twice (empty names aside: a
    spreadsheet's trailing empty columns, "a,b,,", are harmless)."""
    twice = [name for name, count in Counter(n for n in names if str(n).strip()).items() if count > 1]
    if twice:
        raise DataError(
            f"{where}: more than one column is named {safe_items(twice, 5)}; "
            "rename them so each column has its own name"
        )


def _check_separator(df: pd.DataFrame, where) -> None:
    """A one-column table whose header holds another separator was not written with commas."""
    if len(df.columns) == 1:
        header = str(df.columns[0])
        for sep in (";", "\t", "|"):
            if sep in header:
                raise DataError(
                    f"{where}: the header is one column {safe_text(header, 80, quote=True)}: the file "
                    f"looks separated by {sep!r}; finrec reads comma-separated files"
                )


def read_csv_bytes(data: bytes, id_columns: tuple[str, ...], where: str) -> pd.DataFrame:
    """Read an uploaded CSV held in memory (the dashboard never writes uploads to disk)."""
    import io as _io

    if not data.strip():
        raise DataError(f"{where}: the file is empty")
    tail = data[-SNIFF_BYTES:] if len(data) > MAX_HEADER_BYTES else b""
    _check_csv_head(data[:MAX_HEADER_BYTES], tail, len(data), where)
    df = _read_csv(_io.BytesIO(data), id_columns, where)
    for column in id_columns:
        if column in df.columns:
            df[column] = ids_as_text(df[column])
    return df


def read_schema(directory: Path) -> S.DatasetSchema:
    path = directory / S.SCHEMA_FILE
    if not path.is_file():
        raise SchemaError(
            f"{directory}: missing {S.SCHEMA_FILE} (it says which columns are ids, numeric and categorical)"
        )
    return S.DatasetSchema.from_dict(load_yaml(path, SchemaError), source=str(path))


def load_dataset(
    directory: str | Path, require_interactions: bool = True, history_order: bool = True, ground_truth: bool = True
) -> Dataset:
    """Read and validate a dataset directory (see the data contract in the README).
    ``ground_truth=False`` leaves the synthetic data's ``ground_truth`` table unread (``None``):
    for the commands that never use it (customers x products rows: 46.6M on a 2M-customer bank,
    which took 8.7 GB and 30 s of ``finrec monitor``'s 59 s to read and check)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory (a dataset is a directory of tables and schema.yaml)")
    schema = read_schema(directory)
    tables: dict[str, pd.DataFrame] = {}
    ids = (S.CUSTOMER_ID, S.PRODUCT_ID, schema.customers.id, schema.products.id)
    for name in S.TABLES:
        if name == S.GROUND_TRUTH and not ground_truth:
            continue
        required = name in (S.CUSTOMERS, S.PRODUCTS) or (name == S.INTERACTIONS and require_interactions)
        path = find_table(directory, name, required=required)
        if path is not None:
            tables[name] = read_history(path) if name == S.HOLDINGS_HISTORY else read_table(path, id_columns=ids)
    log.info("checking %s (%s customers)", directory, f"{len(tables[S.CUSTOMERS]):,}")
    return validate_tables(
        schema, tables, source=directory, history_order=history_order, require_interactions=require_interactions
    )


def validate_tables(
    schema: S.DatasetSchema,
    tables: dict[str, pd.DataFrame],
    source: Path | None = None,
    history_order: bool = True,
    require_interactions: bool = True,
) -> Dataset:
    """Check every table against the contract and return a ``Dataset`` with typed columns.
    ``history_order=False`` accepts a history that overlaps the adoptions (a log that
    ``finrec split --by time`` cuts); everything else about the history is checked as always.
    ``require_interactions=False`` (scoring, monitoring, serving) takes an interactions table of a
    header and no rows as no outcomes, as it takes an absent one."""

    def where(name: str) -> str:
        return f"{name} ({source / name if source else name})"

    # From Python the tables are a dict of frames: a misspelt name ('holding') was left out
    # silently (every customer then held nothing), a missing one or a dict a bare KeyError.
    reject_unknown(tables, S.TABLES, "tables", DataError)
    for name in (S.CUSTOMERS, S.PRODUCTS):
        if name not in tables:
            raise DataError(f"tables: missing table '{name}' (the tables given: {safe_items(tables, 10)})")
    for name, table in tables.items():
        if not isinstance(table, pd.DataFrame):
            raise DataError(f"{where(name)}: expected a pandas DataFrame, got {type(table).__name__}")

    customers = prepare_entities(tables[S.CUSTOMERS], schema.customers, where(S.CUSTOMERS))
    products = prepare_entities(tables[S.PRODUCTS], schema.products, where(S.PRODUCTS))
    V.check_display_columns(products, schema.display, where(S.PRODUCTS))
    customer_index = pd.Index(customers[schema.customers.id])
    product_index = pd.Index(products[schema.products.id])

    def links(name: str, extra: tuple[str, ...] = ()) -> pd.DataFrame | None:
        if name not in tables:
            return None
        df = tables[name].copy()
        V.require_columns(df, (S.CUSTOMER_ID, S.PRODUCT_ID, *extra), where(name))
        for column in (S.CUSTOMER_ID, S.PRODUCT_ID):
            df[column] = ids_as_text(df[column])
        V.require_no_missing_ids(df, S.CUSTOMER_ID, where(name))
        V.require_no_missing_ids(df, S.PRODUCT_ID, where(name))
        V.check_references(df, S.CUSTOMER_ID, customer_index, where(name), S.CUSTOMERS)
        V.check_references(df, S.PRODUCT_ID, product_index, where(name), S.PRODUCTS)
        return df.drop_duplicates([S.CUSTOMER_ID, S.PRODUCT_ID]).reset_index(drop=True)

    interactions = links(S.INTERACTIONS)
    if interactions is None:
        interactions = _empty_links()
    else:
        if require_interactions:
            V.require_rows(interactions, where(S.INTERACTIONS))
        interactions = V.check_timestamps(interactions, where(S.INTERACTIONS))
    holdings = links(S.HOLDINGS)
    history = None
    if S.HOLDINGS_HISTORY in tables:
        history = prepare_history(tables[S.HOLDINGS_HISTORY], customer_index, product_index, where(S.HOLDINGS_HISTORY))
        if history_order:
            V.check_history_order(history, interactions, where(S.HOLDINGS_HISTORY))
        # After the order rule: with dated adoptions, a late snapshot is named by its customer.
        V.check_latest_snapshot(V.snapshot_month_rows(V.months(history[S.AS_OF])), where(S.HOLDINGS_HISTORY))
    ground_truth = links(S.GROUND_TRUTH, (S.PROBABILITY,))
    if ground_truth is not None:
        ground_truth = V.check_probabilities(ground_truth, where(S.GROUND_TRUTH))
    return Dataset(
        schema=schema,
        customers=customers,
        products=products,
        interactions=interactions,
        holdings=holdings if holdings is not None else _empty_links(),
        holdings_history=history,
        ground_truth=ground_truth,
        source=source,
    )


# --------------------------------------------------------------------------------------------
# The holdings history: many rows (customers x snapshots x products), so its ids are kept as
# categoricals (an int32 customer code, an int8/int16 product code and the date: about 13-16
# bytes a row where text ids take over 100) and it is read column by column.

HISTORY_COLUMNS = (S.CUSTOMER_ID, S.PRODUCT_ID, S.AS_OF)


def as_id_categorical(values: pd.Series) -> pd.Series:
    """Ids as a categorical of stripped text (the id rule of ``ids_as_text``, applied to each
    distinct value once); missing stays missing (code -1)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes = values.cat.codes.to_numpy()
        uniques = pd.Series(values.cat.categories)
    else:
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        uniques = pd.Series(uniques)
    text_codes, text_uniques = pd.factorize(ids_as_text(uniques), use_na_sentinel=True)
    mapped = np.full(len(codes), -1, dtype=np.int64)
    present = codes >= 0
    mapped[present] = text_codes[codes[present]]
    categories = pd.Index(np.asarray(text_uniques, dtype=object), dtype=str)
    return pd.Series(pd.Categorical.from_codes(mapped, categories=categories), index=values.index, name=values.name)


def read_history(path: Path) -> pd.DataFrame:
    """Read a ``holdings_history`` file: only its three contract columns (others are left on
    disk), ids as categoricals, dates as found (``prepare_history`` parses them)."""
    path = Path(path)
    check_table_file(path)
    if path.suffix == ".parquet":
        try:
            schema = pq.read_schema(path)
            names = schema.names
            refuse_repeated_names(names, path)
            columns = [c for c in HISTORY_COLUMNS if c in names]
            text = [
                c
                for c in columns
                if pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type)
            ]
            # Text read dictionary-encoded: pandas gets categoricals, never a string per row.
            df = pq.read_table(path, columns=columns, read_dictionary=text).to_pandas()
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
        for column in HISTORY_COLUMNS:
            if column not in df.columns:
                raise DataError(
                    f"{path}: missing column {safe_text(column, quote=True)}; the file has: {safe_items(names, 20, quote=False)}"
                )
        return df
    if path.suffix != ".csv":
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (use .csv or .parquet)")
    if path.stat().st_size > MAX_CSV_BYTES:
        raise DataError(f"{path}: {path.stat().st_size / 1e9:.1f} GB is over the CSV limit; convert it to Parquet")
    header = _read_csv_header(path)
    _check_duplicate_names(path, path)  # pandas' header has renamed a second "as_of" to "as_of.1"
    missing = [c for c in HISTORY_COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {safe_items(missing, 5)}; the file has: {safe_items(header, 20, quote=False)}"
        )
    with _csv_errors(path):
        # Categories while reading: each distinct id and date is stored once.
        return pd.read_csv(path, usecols=list(HISTORY_COLUMNS), dtype="category", encoding="utf-8")


def _read_csv_header(path: Path) -> list[str]:
    with _csv_errors(path):
        frame = pd.read_csv(path, nrows=0, encoding="utf-8")
    _check_separator(frame, path)
    return [str(c) for c in frame.columns]


def prepare_history(df: pd.DataFrame, customers: pd.Index, products: pd.Index, where: str) -> pd.DataFrame:
    """Validate a holdings history and type it: ids as categoricals of text, ``as_of`` as
    ``datetime64[ns]``. Refused: missing columns, empty or unknown ids, missing or unparseable
    dates. Duplicate (customer, product, as_of) rows are dropped, as the other link tables drop
    theirs: a repeated row states the same fact twice (an export joined twice), nothing to refuse.
    An empty table is allowed: no customer has a past yet."""
    V.require_columns(df, HISTORY_COLUMNS, where)
    df = df.reset_index(drop=True)
    out = pd.DataFrame(
        {
            S.CUSTOMER_ID: as_id_categorical(df[S.CUSTOMER_ID]),
            S.PRODUCT_ID: as_id_categorical(df[S.PRODUCT_ID]),
        }
    )
    V.check_id_codes(out[S.CUSTOMER_ID], customers, S.CUSTOMER_ID, where, S.CUSTOMERS)
    V.check_id_codes(out[S.PRODUCT_ID], products, S.PRODUCT_ID, where, S.PRODUCTS)
    out[S.AS_OF] = V.parse_dates(df[S.AS_OF], S.AS_OF, where)
    # Duplicates found on integer keys (customer code, product code, date code), not on text.
    date_codes = pd.factorize(out[S.AS_OF])[0].astype(np.int64)
    n_products = max(len(out[S.PRODUCT_ID].cat.categories), 1)
    key = out[S.CUSTOMER_ID].cat.codes.to_numpy(np.int64) * n_products + out[S.PRODUCT_ID].cat.codes.to_numpy(np.int64)
    key = key * (int(date_codes.max(initial=0)) + 1) + date_codes
    keep = ~pd.Series(key).duplicated().to_numpy()
    if not keep.all():
        out = out[keep]
    return out.reset_index(drop=True)


def prepare_entities(df: pd.DataFrame, table: S.TableSchema, where: str) -> pd.DataFrame:
    """Validate a customers or products table and type its feature columns."""
    V.check_schema_columns(df, table, where)
    V.require_rows(df, where)
    df = df.copy(deep=False)  # copy-on-write (pandas 3): the caller's frame is never changed
    df[table.id] = ids_as_text(df[table.id])
    V.require_no_missing_ids(df, table.id, where)
    V.require_unique(df, table.id, where)
    df = V.coerce_numeric(df, table.numeric_features, where)
    # The eligibility terms' columns are read by name (``finrec.recommend.filters``) whether or
    # not the schema lists them as features: text there ("17 years") read as an unknown value,
    # which fails no term, on the customers' side, and stopped the scorer on the products'.
    # A column the schema lists as categorical (banded ages, "50+") stays a category: a product
    # term on it is refused where the catalogue is built (``filters.Catalogue.from_products``).
    terms = [
        c
        for c in S.ELIGIBILITY_COLUMNS
        if c in df.columns and c not in table.numeric_features and c not in table.categorical_features
    ]
    df = V.coerce_numeric(df, terms, where)
    V.check_plausible(df, table, where)
    if table.risk:
        V.check_risk_scale(df, table.risk, where)
        df[table.risk] = df[table.risk].astype("int64")
    for column in table.categorical_features:
        df[column] = as_category_text(df[column])
    df = C.prepare(df, table, where)
    V.withdrawn(df, table, where)  # refuse an on_offer value that is not yes/no here, at the boundary
    return df.reset_index(drop=True)


def read_products(directory: str | Path, table: S.TableSchema) -> tuple[pd.DataFrame, Path] | None:
    """The validated products table of ``directory`` and its path; None when it has none (a
    directory of customers alone, as ``finrec score`` accepts)."""
    path = find_table(Path(directory), S.PRODUCTS, required=False)
    if path is None:
        return None
    return prepare_entities(read_table(path, (table.id, S.PRODUCT_ID)), table, f"{S.PRODUCTS} ({path})"), path


def open_parquet(path: Path, **options) -> pq.ParquetFile:
    """A Parquet file opened for reading in record batches, without pre-buffering.

    With Arrow's default ``pre_buffer=True`` a ``ParquetFile`` keeps the raw bytes of every row
    group its ``iter_batches`` has read until the reader is released: streaming a file through it
    holds the whole file's compressed bytes by the end. On the 1M-customer bank's 338 MB history
    file Arrow still held 339 MB after the last batch (16 MB without); at 10M customers that was
    most of the scorer's +6.1 GB. Reading one row group at a time is as fast on a local disk."""
    return pq.ParquetFile(path, pre_buffer=False, **options)


def read_id_column(path: Path, column: str) -> pa.Array:
    """One table's id column, normalized as ``read_table`` normalizes ids, in file order."""
    path = Path(path)
    check_table_file(path)
    try:
        if path.suffix == ".parquet":
            values = pq.read_table(path, columns=[column]).column(0).to_pandas()
        else:
            values = pd.read_csv(path, usecols=[column], dtype={column: str})[column]
    except (pa.ArrowException, OSError, ValueError, KeyError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path}: cannot read the id column {safe_text(column, quote=True)} ({first_line(exc)})"
        ) from None
    return pa.array(ids_as_text(values), type=pa.string(), from_pandas=True)


def read_customer_ids(path: Path, column: str) -> pa.Array:
    """A customers table's ids (``read_id_column``), refused when one repeats. A table read in
    chunks is validated a chunk at a time: a customer repeated in another chunk was scored twice.
    Empty ids are left to the chunks' own check, which names their rows."""
    ids = read_id_column(path, column)
    present = pc.filter(ids, pc.not_equal(pc.fill_null(ids, ""), ""))  # ids_as_text stripped them
    if len(present) == pc.count_distinct(present).as_py():
        return ids
    counts = pc.value_counts(present)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist()
    raise DataError(
        f"{path}: column {safe_text(column, quote=True)} must be unique; {len(repeated)} id(s) appear more "
        f"than once, e.g. {safe_items(repeated)}"
    )


def iter_customer_chunks(path: Path, table: S.TableSchema, chunk_rows: int = 200_000) -> Iterator[pd.DataFrame]:
    """Yield validated slices of a customers file of any size, holding one slice in memory."""
    path = Path(path)
    check_table_file(path)
    if path.suffix == ".parquet":
        try:
            parquet = open_parquet(path)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
        # Categorical text arrives dictionary-encoded (pandas Categorical): decoding is faster
        # and the feature codes come from the few categories instead of every row.
        fields = parquet.schema_arrow
        refuse_repeated_names(fields.names, path)  # else a column of the chunk is a frame of two
        text = [
            c
            for c in table.categorical_features
            if c in fields.names
            and (pa.types.is_string(fields.field(c).type) or pa.types.is_large_string(fields.field(c).type))
        ]
        if text:
            parquet = open_parquet(path, read_dictionary=text)
        offset = 0
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            chunk = batch.to_pandas()
            yield prepare_entities(chunk, table, f"{path} rows {offset + 1}-{offset + len(chunk)}")
            offset += len(chunk)
    elif path.suffix == ".csv":
        with _csv_errors(path, empty="the file is empty"):
            reader = pd.read_csv(path, dtype={table.id: str}, chunksize=chunk_rows, encoding="utf-8")
            offset = 0
            for chunk in reader:
                if offset == 0:
                    _check_separator(chunk, path)
                    _check_duplicate_names(path, path)
                if table.id in chunk.columns:  # else prepare_entities names the missing column
                    chunk[table.id] = ids_as_text(chunk[table.id])
                yield prepare_entities(chunk, table, f"{path} rows {offset + 1}-{offset + len(chunk)}")
                offset += len(chunk)
            if offset == 0:
                raise DataError(f"{path}: the table is empty (a header and no rows)")
    else:
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (use .csv or .parquet)")


# --------------------------------------------------------------------------------------------
# Writing


def escape_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """Prefix text cells a spreadsheet would run as a formula with a single quote."""
    out = df.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_PREFIXES) else v
            )
    return out


def directory_stamp(directory: str | Path) -> tuple:
    """(name, size, mtime) of every file in ``directory``: equal stamps, unchanged files (as far as a
    cache of the loaded tables needs to know)."""
    return tuple(
        sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(directory).iterdir() if p.is_file())
    )


def write_table(df: pd.DataFrame | pa.Table, path: str | Path, **parquet_options) -> Path:
    """Write a table atomically: Parquet, or CSV (with formula escaping) when the name ends .csv.
    An Arrow table goes to Parquet as it is (``parquet_options`` for ``pq.write_table``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".csv":
            escape_formulas(df.to_pandas() if isinstance(df, pa.Table) else df).to_csv(tmp, index=False)
        else:
            table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
            pq.write_table(table, tmp, **parquet_options)
    return path


def write_dataset(
    tables: dict[str, pd.DataFrame],
    schema: S.DatasetSchema,
    directory: str | Path,
    fmt: str = "parquet",
    source: str | Path | None = None,
    split: dict | None = None,
) -> Path:
    """Write a dataset directory atomically (all tables and ``schema.yaml``). ``source``, the
    dataset the tables came from, must not overlap ``directory``; an existing ``directory``
    must be a dataset (it has a ``schema.yaml``) or empty. ``split``, how the directory was cut
    from ``source``, is written beside the tables as ``split.json`` (see ``read_split``)."""
    write_dataset_blocks([tables], schema, directory, fmt, source, split)
    return Path(directory)


def write_dataset_blocks(
    blocks: Iterable[dict[str, pd.DataFrame]],
    schema: S.DatasetSchema,
    directory: str | Path,
    fmt: str = "parquet",
    source: str | Path | None = None,
    split: dict | None = None,
) -> dict[str, int]:
    """``write_dataset`` for a dataset that arrives in blocks of rows (each a dict of tables,
    as ``synthetic.generate_blocks`` yields them): each block is appended to its tables' files
    (a Parquet row group; CSV rows under one header) and dropped before the next is asked for,
    so one block is in memory at a time. A table's Parquet types are its first block's: a later
    block is cast to them (its categorical codes may be narrower; wider ones would be refused).
    The directory appears whole or not at all. Returns the rows written per table."""
    if fmt not in ("parquet", "csv"):
        raise DataError(f"unknown format {fmt!r} (use parquet or csv)")
    directory = Path(directory)
    refuse_overlap(directory, {"the source dataset": source}, what="the dataset directory")
    check_writable(directory, "directory", marker=S.SCHEMA_FILE, what="the dataset directory", owned=S.DATASET_FILES)
    rows: dict[str, int] = {}
    writers: dict[str, pq.ParquetWriter] = {}
    with atomic_directory(directory) as tmp:
        try:
            for tables in blocks:
                for name, df in tables.items():
                    if df is None:
                        continue
                    path = tmp / f"{name}.{fmt}"
                    if fmt == "csv":
                        escape_formulas(df).to_csv(
                            path, index=False, mode="a" if name in rows else "w", header=name not in rows
                        )
                    else:
                        table = pa.Table.from_pandas(df, preserve_index=False)
                        if name not in writers:
                            writers[name] = pq.ParquetWriter(path, table.schema)
                        else:
                            # A later block's categorical ids may fit smaller codes: the first block's types rule.
                            table = table.cast(writers[name].schema)
                        writers[name].write_table(table)
                    rows[name] = rows.get(name, 0) + len(df)
                tables = df = table = None  # released before the next block is drawn
        finally:
            for writer in writers.values():
                writer.close()
        text = yaml.safe_dump(schema.to_dict(display=True), sort_keys=False)
        (tmp / S.SCHEMA_FILE).write_text(text, encoding="utf-8")
        if split is not None:
            (tmp / S.SPLIT_FILE).write_text(json.dumps(split, indent=1, default=str), encoding="utf-8")
    return rows


MAX_SPLIT_BYTES = 64 * 1024


def read_split(directory: str | Path) -> dict | None:
    """What ``split.json`` in a dataset directory says about how it was split; ``None`` when the
    directory has none (it was not made by ``finrec split``). A file that is not a small JSON
    object is refused."""
    path = Path(directory) / S.SPLIT_FILE
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_SPLIT_BYTES:
        raise DataError(f"{path}: {path.stat().st_size} bytes; a split record is a small JSON object")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable JSON split record ({first_line(exc)})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: a split record must be a JSON object, got {type(record).__name__}")
    return record


def dataset_tables(dataset: Dataset) -> dict[str, pd.DataFrame]:
    tables = {
        S.CUSTOMERS: dataset.customers,
        S.PRODUCTS: dataset.products,
        S.INTERACTIONS: dataset.interactions,
        S.HOLDINGS: dataset.holdings,
    }
    if dataset.holdings_history is not None:
        tables[S.HOLDINGS_HISTORY] = dataset.holdings_history
    if dataset.ground_truth is not None:
        tables[S.GROUND_TRUTH] = dataset.ground_truth
    return tables


def fingerprint(directory: str | Path) -> str:
    """SHA-256 over the dataset's files (names and bytes), to tell which data a model saw."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.is_file() and (path.suffix in S.TABLE_SUFFIXES or path.name == S.SCHEMA_FILE):
            digest.update(path.name.encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()
