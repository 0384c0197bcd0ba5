"""The id rule, in one place: ``7``, ``7.0`` and ``"7"`` name the same customer or product.

Ids are compared as stripped text everywhere (files, requests, link tables). These helpers turn
whatever a file or a request holds into that text, as pandas objects or Arrow string arrays, and
look ids up in a vocabulary of ids.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def ids_as_text(values: pd.Series) -> pd.Series:
    """Ids as stripped text (missing stays missing); ``7``, ``7.0`` and ``"7"`` agree."""
    if pd.api.types.is_integer_dtype(values):
        return values.astype(str).astype(object)
    if pd.api.types.is_float_dtype(values):
        whole = values.notna() & (values == values.round())
        text = values.astype(object).where(values.notna(), None)
        text[whole] = values[whole].astype("int64").astype(str)
        text[~whole & values.notna()] = values[~whole & values.notna()].astype(str)
        return text.astype(object)
    if pd.api.types.is_string_dtype(values) and values.dtype != object:
        return values.str.strip()  # Arrow-backed text: stays columnar, no per-value Python
    text = values.astype(object)
    missing = text.isna()
    if missing.any():
        text = text.where(~missing, None)
    stripped = text[~missing].astype(str).str.strip()
    text = text.copy()
    text[~missing] = stripped
    return text


def as_arrow_text(values) -> pa.Array:
    """Values as an Arrow string array (nulls kept); zero-copy for Arrow-backed pandas text."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if values.type == pa.string() else pc.cast(values, pa.string())
    try:
        return pa.array(values, type=pa.string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        series = pd.Series(values, dtype=object)
        return pa.array(series.astype(str).where(series.notna(), None), type=pa.string(), from_pandas=True)


def positions_in(values, vocabulary: pa.Array) -> np.ndarray:
    """Index of each value in ``vocabulary`` (hash lookup in Arrow); -1 when absent or missing.
    A pandas categorical (what a Parquet file's dictionary column loads as: the holdings
    history) looks each category up once and gathers by its codes: 0.01 s instead of 0.15 s
    for a million rows, and the history's lookups run dozens of times in a fit."""
    if isinstance(getattr(values, "dtype", None), pd.CategoricalDtype):
        codes = np.asarray(values.cat.codes if isinstance(values, pd.Series) else values.codes)
        categories = values.dtype.categories
        out = np.full(len(codes), -1, dtype=np.int64)
        present = codes >= 0
        if len(categories) <= len(codes):
            found = positions_in(pd.Series(categories, dtype=object), vocabulary)
            out[present] = found[codes[present]]
        else:  # a small slice of a large column keeps every category: look up the used ones
            used, inverse = np.unique(codes[present], return_inverse=True)
            out[present] = positions_in(pd.Series(categories[used], dtype=object), vocabulary)[inverse]
        return out
    found = pc.index_in(as_arrow_text(values), value_set=vocabulary, skip_nulls=True)
    return found.fill_null(-1).to_numpy(zero_copy_only=False)


def is_in(values, ids) -> np.ndarray:
    """bool [n]: whether each of ``values`` (text ids, a categorical among them) is one of ``ids``,
    by hashing in Arrow; a missing value never is. pandas' ``isin`` on Arrow-backed text makes a
    Python object of every id it is given first: keeping 1.8M of 2M customers took 10.8 s per
    links table (35 s for a dataset, ``Dataset.subset_customers``), the hash lookup 0.7 s."""
    return positions_in(values, pc.unique(as_arrow_text(ids))) >= 0


def positions_near(values, ids: pa.Array, start: int = 0) -> np.ndarray | None:
    """int64 [n]: the positions in ``ids`` of ``values`` when they all lie near ``start``: in
    ``ids[start - 1:]``, within twice the runs of equal values plus 1,024. That is a link table read in
    batches in the customers file's order (a batch may begin inside the links of the customer at
    ``start - 1``; customers who hold nothing are skipped). The lookup then hashes that window of
    ids, not all of them. None when a value is missing or lies elsewhere: the caller then looks
    them up in all of ``ids``."""
    values = as_arrow_text(values)
    ids = as_arrow_text(ids)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    n = len(values)
    if n == 0 or values.null_count or not 0 <= start <= len(ids):
        return None
    runs = 1 + int(pc.sum(pc.not_equal(values[1:], values[:-1])).as_py() or 0)
    low = max(start - 1, 0)
    window = ids.slice(low, 2 * runs + 1024)
    found = pc.index_in(values, value_set=window)
    if found.null_count:
        return None
    return found.to_numpy().astype(np.int64) + low
