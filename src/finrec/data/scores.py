"""A ranker's scores read from a file: how a bank puts its own model in a seat of ``finrec compare``.

The file is long, one row per (customer, product) pair the ranker scored, CSV or Parquet by its
name's ending:

    customer_id, product_id, score     higher is better (any finite number), or
    customer_id, product_id, rank      lower is better (a top-K list: rank 1 first)

Other columns are ignored. Ids are compared as text, as in every finrec table
(``finrec.data.ids``). A pair the file lacks is a pair the ranker did not rank: ``compare``
grades it as a product the ranker does not know, never a hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from finrec.data import schema as S
from finrec.data.ids import as_arrow_text, ids_as_text, positions_in
from finrec.data.io import Dataset, read_table
from finrec.data.validate import coerce_numeric, id_form_hint, require_columns, require_no_missing_ids, require_rows
from finrec.errors import DataError, safe_items, safe_text

EXAMPLES = 5


@dataclass(frozen=True)
class ScoresFile:
    """A validated scores file.

    ``table``: ``customer_id``, ``product_id`` (text) and ``score`` (float64, finite, higher is
    better; a rank file's ranks negated), one row per pair, in the file's order. ``column``: the
    column the file gave, ``"score"`` or ``"rank"``. ``source``: the file (for messages)."""

    table: pd.DataFrame
    column: str
    source: Path

    @property
    def products(self) -> list[str]:
        """The product ids the file scores for some customer, sorted: its catalogue."""
        return sorted(pc.unique(as_arrow_text(self.table[S.PRODUCT_ID])).to_pylist())

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, source: str | Path = "scores") -> ScoresFile:
        """Validate a long table (``customer_id``, ``product_id`` and ``score`` or ``rank``) held
        in memory as ``read_scores`` validates a file; ``source`` names it in messages."""
        frame = frame.copy(deep=False)
        for column in (S.CUSTOMER_ID, S.PRODUCT_ID):
            if column in frame.columns:
                frame[column] = ids_as_text(frame[column])
        return _validated(frame, Path(source))


def read_scores(path: str | Path) -> ScoresFile:
    """Read and validate a scores file (``.csv`` or ``.parquet``; see the module's docstring).

    Refused with a ``DataError`` naming the file, the row (1-based, the header aside) and the
    value: a missing ``customer_id``, ``product_id`` or value column, both ``score`` and
    ``rank``, an empty id, a value that is not a number, missing or infinite, a pair listed
    twice, a file with a header and no rows. Which customers and products it may name depends
    on the data: ``check_scores_for``."""
    path = Path(path)
    return _validated(read_table(path, id_columns=(S.CUSTOMER_ID, S.PRODUCT_ID)), path)


def _validated(df: pd.DataFrame, source: Path) -> ScoresFile:
    where = str(source)
    require_columns(df, (S.CUSTOMER_ID, S.PRODUCT_ID), where)
    given = [c for c in (S.SCORE, S.RANK) if c in df.columns]
    if len(given) == 2:
        raise DataError(
            f"{where}: both a '{S.SCORE}' and a '{S.RANK}' column; keep one (drop '{S.RANK}' to grade by score, "
            f"as a file of `finrec score` holds both), so that there is one ranking to grade"
        )
    if not given:
        near = [c for c in df.columns if str(c).strip().casefold() in (S.SCORE, S.RANK)]
        hint = f" (the file has {safe_items(near)}: names must match exactly, spaces and case included)" if near else ""
        raise DataError(
            f"{where}: missing the column '{S.SCORE}' (higher is better) or '{S.RANK}' (lower is better){hint}; "
            f"the file has: {safe_items(list(df.columns), 20, quote=False, value_limit=60)}"
        )
    column = given[0]
    require_rows(df, where)
    for id_column in (S.CUSTOMER_ID, S.PRODUCT_ID):
        require_no_missing_ids(df, id_column, where)
    values = coerce_numeric(df[[column]], [column], where)[column].to_numpy()  # not numbers, infinities
    missing = np.isnan(values)
    if missing.any():
        rows = np.flatnonzero(missing)
        raise DataError(
            f"{where}: column '{column}' has {len(rows)} missing value(s), at row(s) {safe_items(rows + 1, EXAMPLES)}; "
            "leave out a pair the model did not score instead"
        )
    # The id columns as read (Arrow-backed text stays so: a round trip through Python objects
    # cost a second for 5M rows).
    table = df[[S.CUSTOMER_ID, S.PRODUCT_ID]].reset_index(drop=True)
    table[S.SCORE] = -values if column == S.RANK else values
    _refuse_repeated_pairs(table, df[column], where)
    return ScoresFile(table, column, source)


def _refuse_repeated_pairs(table: pd.DataFrame, raw: pd.Series, where: str) -> None:
    repeated = table.duplicated([S.CUSTOMER_ID, S.PRODUCT_ID], keep="first").to_numpy()
    if not repeated.any():
        return
    later = int(np.flatnonzero(repeated)[0])
    customer, product = table[S.CUSTOMER_ID].iat[later], table[S.PRODUCT_ID].iat[later]
    same = (table[S.CUSTOMER_ID].to_numpy() == customer) & (table[S.PRODUCT_ID].to_numpy() == product)
    first = int(np.flatnonzero(same)[0])
    raise DataError(
        f"{where}: {int(repeated.sum())} row(s) repeat the (customer_id, product_id) pair of an earlier row, "
        f"e.g. row {later + 1} repeats row {first + 1}: customer {safe_text(customer, quote=True)}, product "
        f"{safe_text(product, quote=True)} ({raw.name} {safe_text(raw.iat[first])} and {safe_text(raw.iat[later])}); "
        "one value per pair"
    )


def check_scores_for(scores: ScoresFile, dataset: Dataset) -> dict[str, int]:
    """Refuse a scores file that does not fit ``dataset``: a product id its products table does
    not know (each named, with its rows), or a file in which no customer of the data with
    adoptions appears (nothing could be compared). Rows of customers the data lacks are allowed
    (a file of the bank's whole population, graded on a sample): ``{"rows", "customers",
    "rows_outside_data"}`` counts them."""
    where = str(scores.source)
    data = f"the data{f' ({dataset.source})' if dataset.source else ''}"
    table = scores.table
    known_products = dataset.products[dataset.schema.products.id].astype(str)
    unknown = positions_in(table[S.PRODUCT_ID], as_arrow_text(known_products)) < 0
    if unknown.any():
        counts = table.loc[unknown, S.PRODUCT_ID].value_counts()
        named = ", ".join(f"{safe_text(p, quote=True)} ({n} row(s))" for p, n in counts.head(EXAMPLES).items())
        more = f", ... and {len(counts) - EXAMPLES} more" if len(counts) > EXAMPLES else ""
        first = int(np.flatnonzero(unknown)[0])
        raise DataError(
            f"{where}: {len(counts)} product id(s) on {int(unknown.sum())} row(s) are not in the products table of "
            f"{data}: {named}{more}; the first at row {first + 1}"
            f"{id_form_hint(counts.index[:20], pd.Index(known_products), 'the products table')}"
        )
    file_customers = as_arrow_text(table[S.CUSTOMER_ID])
    data_customers = as_arrow_text(dataset.customers[dataset.schema.customers.id])
    inside = positions_in(file_customers, data_customers) >= 0
    if not inside.any():
        sample = pc.unique(file_customers)[:EXAMPLES].to_pylist()
        raise DataError(
            f"{where}: none of its customer ids is a customer of {data}, e.g. {safe_items(sample)} "
            f"(the data has e.g. {safe_items(data_customers[:EXAMPLES].to_pylist())})"
            f"{id_form_hint(sample, pd.Index(data_customers.to_pylist()), 'the customers table')}; "
            "ids are compared as text"
        )
    adopters = pc.unique(as_arrow_text(dataset.interactions[S.CUSTOMER_ID])) if len(dataset.interactions) else None
    if adopters is None or not pc.any(pc.is_in(file_customers, value_set=adopters)).as_py():
        raise DataError(
            f"{where}: none of the customers with adoptions in {data} appears in the file "
            f"({0 if adopters is None else len(adopters)} of them): nothing to compare"
        )
    return {
        "rows": len(table),
        "customers": len(pc.unique(file_customers)),
        "rows_outside_data": int((~inside).sum()),
    }
