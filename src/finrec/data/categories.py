"""The category rule, in one place: ``4``, ``4.0`` and ``"4"`` are the same category value.

A column of integer codes with an empty cell is read by pandas as float (``4.0``), the same column
without one as int (``4``), a Parquet string column or a JSON body may hold ``"4"``. Were the
vocabulary the values' plain ``str``, a model fitted on one reading would find every value of
another out of vocabulary, and a score would depend on the chunk a customer was read in. So a
categorical value becomes vocabulary text through ``category_text`` (one value) or
``as_category_text`` (a column) and nothing else:

- missing (None, NaN, ``pd.NA``) stays missing (None);
- a whole float is the text of the integer (``4.0`` -> ``"4"``); another float keeps its text;
- text is kept as it is: ``"04"`` is not ``"4"`` and ``"4.0"`` is not ``"4"`` (only a number can
  have been re-typed on the way; text was written by someone);
- anything else is its ``str``.

``vocabulary_text`` reads a vocabulary saved before the rule (``"4.0"`` where it now says ``"4"``).
Files written under the rule say so (``CATEGORY_RULE``), and are read as written: the text column
``"1.0", "2.5", "3.0"`` must keep its ``"1.0"``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

# Written beside a saved vocabulary (pipeline.json, monitoring.json): its entries follow the rule.
# Absent, the file predates it and ``vocabulary_text`` reads it (a reviewer: renaming every file
# turned a text column's "1.0" out of vocabulary).
CATEGORY_RULE = 1


def category_text(value: Any) -> str | None:
    """The vocabulary text of one categorical value (None when missing)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        if math.isfinite(value) and float(value).is_integer():
            return str(int(value))  # Python's int: no int64 overflow for 1e20
        return str(value)
    return str(value)


def as_category_text(values: pd.Series) -> pd.Series:
    """``category_text`` of each value of a column: object text, missing as None. Text columns
    and text categoricals come back as they are (nothing to re-type, and cheap)."""
    if pd.api.types.is_string_dtype(values) and values.dtype != object:
        return values
    if isinstance(values.dtype, pd.CategoricalDtype):
        if pd.api.types.is_string_dtype(values.cat.categories):
            return values  # a Parquet dictionary column of text
        return _by_distinct(values.cat.codes.to_numpy(), values.cat.categories, values)
    if values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        missing = values.isna()
        return values.where(~missing, None) if missing.any() else values
    if pd.api.types.is_integer_dtype(values) or pd.api.types.is_float_dtype(values):
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        return _by_distinct(codes, uniques, values)
    # A mixed object column (4, "4", 4.0 side by side): value by value, since hashing would
    # merge True with 1 before the rule could tell them apart.
    return pd.Series([category_text(v) for v in values], index=values.index, name=values.name, dtype=object)


def _by_distinct(codes: np.ndarray, uniques, values: pd.Series) -> pd.Series:
    """The rule applied to each distinct value once, gathered by ``codes`` (-1: missing)."""
    # numpy's own scalars: a float32 0.1 is "0.1" as a request sends it, not Python's widened
    # 0.10000000149011612 (a reviewer).
    text = np.array([category_text(v) for v in np.asarray(uniques)] + [None], dtype=object)
    return pd.Series(text[codes], index=values.index, name=values.name, dtype=object)


# How Python and pandas wrote a float: "4.0", "-2.5", "1e+20", "inf".
_FLOAT_TEXT = re.compile(r"-?(\d+\.\d*(e[+-]?\d+)?|\d+e[+-]?\d+|inf)")


def vocabulary_text(vocabulary: list[str]) -> list[str]:
    """A saved vocabulary under the rule, each entry at its position (a position is the code the
    model learned). Before the rule a float column's vocabulary held ``"4.0"``: when every entry
    is float text, the whole ones become ``"4"`` so that 4, 4.0 and ``"4"`` find them. A
    vocabulary with any other text (``"4.0"`` beside ``"basic"``) was written as text and is kept,
    as is one the renaming would give two equal entries."""
    if not vocabulary or not all(isinstance(v, str) and _FLOAT_TEXT.fullmatch(v) for v in vocabulary):
        return list(vocabulary)
    renamed = [category_text(float(v)) for v in vocabulary]
    return renamed if len(set(renamed)) == len(renamed) else list(vocabulary)
