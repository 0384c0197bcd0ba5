"""Checks of the data contract. Each failure names the file, the column, how many rows are
wrong and a few of them, so that a user can find and fix them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from finrec.data import schema as S
from finrec.data.ids import as_arrow_text, positions_in
from finrec.errors import DataError, SchemaError, safe_items, safe_text

MAX_EXAMPLES = 5
MAX_COLUMNS_SHOWN = 20


def _examples(values: Iterable) -> str:
    """A few of ``values`` for a message: bounded, escaped, numpy scalars as plain numbers."""
    return safe_items(values, MAX_EXAMPLES)


def _name(column) -> str:
    return safe_text(column, quote=True)


def _columns(columns: Iterable) -> str:
    return safe_items(columns, MAX_COLUMNS_SHOWN, quote=False)


def _near_names(missing: Iterable[str], columns: Iterable) -> str:
    """A hint naming the table's columns that differ from a missing one only in surrounding
    spaces or case (``'income '``, ``'Income'``): in a plain list of the columns they look the
    same, and an export's header often carries them."""
    by_key: dict[str, list] = {}
    for column in columns:
        by_key.setdefault(str(column).strip().casefold(), []).append(column)
    pairs = [(near, name) for name in missing for near in by_key.get(str(name).strip().casefold(), ()) if near != name]
    if not pairs:
        return ""
    shown = ", ".join(f"{safe_text(near, quote=True)} for {safe_text(name, quote=True)}" for near, name in pairs[:5])
    return f" (the file has {shown}: names must match exactly, spaces and case included)"


def require_columns(df: pd.DataFrame, columns: Iterable[str], where: str, error=DataError) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise error(
            f"{where}: missing column(s) {safe_items(missing, MAX_COLUMNS_SHOWN)}{_near_names(missing, df.columns)}; "
            f"the file has: {_columns(df.columns)}"
        )


def require_rows(df: pd.DataFrame, where: str) -> None:
    if len(df) == 0:
        raise DataError(f"{where}: the table is empty (a header and no rows)")


def _strictly_increasing(values: pd.Series) -> bool:
    """True for text in strictly increasing order (as exports sorted by id are): one vectorised
    comparison of neighbours, where a uniqueness check would hash every value."""
    if len(values) < 2 or values.dtype == object or not pd.api.types.is_string_dtype(values):
        return False
    text = pa.array(values)
    return text.null_count == 0 and bool(pc.all(pc.less(text[:-1], text[1:])).as_py())


def require_unique(df: pd.DataFrame, column: str, where: str) -> None:
    if _strictly_increasing(df[column]) or df[column].is_unique:  # duplicates are rare: find them only then
        return
    dup = df[column][df[column].duplicated(keep=False)]
    if len(dup):
        raise DataError(
            f"{where}: column {_name(column)} must be unique; {dup.nunique()} id(s) appear more than once, "
            f"e.g. {_examples(dup.unique())}"
        )


def require_no_missing_ids(df: pd.DataFrame, column: str, where: str) -> None:
    bad = df[column].isna() | (df[column].astype(str).str.strip() == "")
    if bad.any():
        rows = np.flatnonzero(bad.to_numpy())
        raise DataError(f"{where}: column {_name(column)} has {len(rows)} empty id(s), at row(s) {_examples(rows + 1)}")


# A number written with a decimal comma (1234,56; 1.234,56; 1 234,56) or comma thousands (1,234.56).
_DECIMAL_COMMA = re.compile(r"[-+]?\d{1,3}([. \u00a0]?\d{3})*,\d+|[-+]?\d{1,3}(,\d{3})+(\.\d+)?")
_DECIMAL_COMMA_HINT = (
    "; numbers must be written without thousands separators and with a decimal point (1234.56), "
    "as a spreadsheet's English-locale CSV writes them"
)


def coerce_numeric(df: pd.DataFrame, columns: Iterable[str], where: str) -> pd.DataFrame:
    """Return ``df`` with ``columns`` as float64; fail on text that is not a number or on
    infinities. Missing values stay NaN (the feature pipeline imputes them)."""
    out = df.copy(deep=False)  # copy-on-write (pandas 3): replacing columns leaves ``df`` as it was
    for column in columns:
        raw = out[column]
        kind = _not_a_number_kind(raw)
        if kind:
            # pandas turns dates and durations into counts of (micro/nano)seconds and a missing
            # one into -9.2e18, and an Arrow timestamp into all-missing: a number of nothing.
            raise DataError(
                f"{where}: column {_name(column)} must be numeric; it holds {kind} ({raw.dtype}); "
                "convert it to a number first (e.g. years or days as a float)"
            )
        if pd.api.types.is_bool_dtype(raw):
            raw = raw.astype(float)
        if pd.api.types.is_numeric_dtype(raw):
            values, not_number = raw, None  # already numbers: nothing can fail to parse
        else:
            values = pd.to_numeric(raw, errors="coerce")
            not_number = values.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
        if not_number is not None and not_number.any():
            rows = np.flatnonzero(not_number.to_numpy())
            first = raw.iloc[rows[0]]
            raise DataError(
                f"{where}: column {_name(column)} must be numeric; {len(rows)} value(s) are not numbers, "
                f"e.g. row {rows[0] + 1}: {safe_text(first, quote=True)}"
                + (f" (other values: {_examples(raw.iloc[rows[1:]])})" if len(rows) > 1 else "")
                + (_DECIMAL_COMMA_HINT if _DECIMAL_COMMA.fullmatch(str(first).strip()) else "")
            )
        values = values.astype("float64")
        infinite = np.isinf(values.to_numpy())
        if infinite.any():
            rows = np.flatnonzero(infinite)
            raise DataError(
                f"{where}: column {_name(column)} has {len(rows)} infinite value(s), at row(s) {_examples(rows + 1)}"
            )
        out[column] = values
    return out


def _not_a_number_kind(values: pd.Series) -> str | None:
    """What a column of a dtype pandas would read as numbers, wrongly, holds (dates, durations,
    periods, complex numbers); None for a column whose values are numbers, booleans or text."""
    dtype = values.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype) or isinstance(dtype, pd.PeriodDtype):
        return "dates"
    if pd.api.types.is_timedelta64_dtype(dtype):
        return "durations"
    if pd.api.types.is_complex_dtype(dtype):
        return "complex numbers"
    if isinstance(dtype, pd.ArrowDtype):
        arrow = dtype.pyarrow_dtype
        if pa.types.is_temporal(arrow):
            return "durations" if pa.types.is_duration(arrow) else "dates"
    return None


def check_risk_scale(df: pd.DataFrame, column: str, where: str) -> None:
    """Risk tolerance and product risk are integers on the 1-7 scale (PRIIPs SRI)."""
    values = df[column].to_numpy(dtype="float64")
    bad = np.isnan(values) | (values < S.RISK_MIN) | (values > S.RISK_MAX) | (values != np.round(values))
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(
            f"{where}: column {_name(column)} must be an integer from {S.RISK_MIN} to {S.RISK_MAX}; "
            f"{len(rows)} row(s) are not, e.g. row {rows[0] + 1}: {safe_text(df[column].iloc[rows[0]], quote=True)}"
        )


# Plausibility limits enforced whatever the schema says: an age outside this range is a typo (a
# birth year, a sign), and a money amount (a ``log_numeric`` column) is never negative (its log
# transform would turn the whole column into NaN).
AGE_RANGE = (0.0, 130.0)


def plausible_limits(table: S.TableSchema) -> dict[str, tuple[float | None, float | None]]:
    """Column -> (minimum, maximum), inclusive, for the columns of ``table`` that have limits."""
    limits: dict[str, tuple[float | None, float | None]] = {c: (0.0, None) for c in (table.log_numeric or ())}
    if S.AGE in table.numeric_features:
        limits[S.AGE] = AGE_RANGE
    return limits


def limit_text(low: float | None, high: float | None) -> str:
    if low == 0 and high is None:
        return "must be at least 0 (an amount of money)"
    if high is None:
        return f"must be at least {low:g}"
    if low is None:
        return f"must be at most {high:g}"
    return f"must be from {low:g} to {high:g}"


def check_limits(df: pd.DataFrame, limits: Mapping[str, tuple[float | None, float | None]], where: str) -> None:
    """Refuse values outside inclusive (minimum, maximum) limits per column; missing values and
    absent columns pass (the imputer and the schema check deal with those)."""
    for column, (low, high) in limits.items():
        if column not in df.columns:
            continue
        values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype="float64")
        bad = np.zeros(len(values), dtype=bool)
        if low is not None:
            bad |= values < low
        if high is not None:
            bad |= values > high
        if bad.any():
            rows = np.flatnonzero(bad)
            raise DataError(
                f"{where}: column {_name(column)} {limit_text(low, high)}; {len(rows)} row(s) are out of "
                f"range, e.g. row {rows[0] + 1}: {values[rows[0]]:g}"
            )


def check_plausible(df: pd.DataFrame, table: S.TableSchema, where: str) -> None:
    """Refuse values outside ``plausible_limits``."""
    check_limits(df, plausible_limits(table), where)


def check_schema_columns(df: pd.DataFrame, table: S.TableSchema, where: str) -> None:
    """Every column the schema names must exist in the table."""
    missing = [c for c in table.named_columns if c not in df.columns]
    if missing:
        raise SchemaError(
            f"schema.yaml names column(s) {safe_items(missing, MAX_COLUMNS_SHOWN)} that {where} does not have"
            f"{_near_names(missing, df.columns)}; its columns are: {_columns(df.columns)}"
        )


# Words accepted in a yes/no column (consent, on_offer), besides 0 and 1 (case-insensitive).
FALSE_WORDS = frozenset({"false", "no", "n", "f", "0", "0.0"})
TRUE_WORDS = frozenset({"true", "yes", "y", "t", "1", "1.0"})


def false_flags(values: pd.Series, where: str) -> np.ndarray:
    """bool [n]: True where a yes/no column says no (``false``/``0``/``no``); ``true``/``1``/
    ``yes`` and a missing value read False. Anything else is refused, naming the column, how
    many values and the first row (1-based) with its value."""
    if pd.api.types.is_bool_dtype(values):
        # A nullable boolean (Parquet's ``boolean`` with a gap) may hold NA: read as missing.
        return ~values.to_numpy(dtype=bool, na_value=True)
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.to_numpy(dtype="float64")
        bad = ~np.isnan(numbers) & (numbers != 0) & (numbers != 1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where}: column '{values.name}' must be true/false or 1/0; "
                f"{int(bad.sum())} value(s) are not, e.g. row {row + 1}: {numbers[row]:g}"
            )
        return numbers == 0
    text = values.astype(object).where(values.notna(), None)
    out = np.zeros(len(values), dtype=bool)
    bad = []
    for i, value in enumerate(text):
        if value is None:
            continue
        word = str(value).strip().lower()
        if word in FALSE_WORDS:
            out[i] = True
        elif word not in TRUE_WORDS and word:
            bad.append(i)
    if bad:
        raise DataError(
            f"{where}: column '{values.name}' must be true/false or 1/0; {len(bad)} value(s) are not, "
            f"e.g. row {bad[0] + 1}: {text.iloc[bad[0]]!r}"
        )
    return out


def withdrawn(df: pd.DataFrame, table: S.TableSchema, where: str) -> np.ndarray:
    """bool [rows]: the products that the schema's ``on_offer`` column marks as no longer
    offered (false / 0 / no; empty = on offer); all False when the schema names no such column."""
    if not table.on_offer:
        return np.zeros(len(df), dtype=bool)
    return false_flags(df[table.on_offer], where)


def check_display_columns(df: pd.DataFrame, hints: S.DisplayHints, where: str) -> None:
    """The products columns that ``schema.yaml``'s display section names must exist."""
    missing = [c for c in hints.product_columns if c not in df.columns]
    if missing:
        raise SchemaError(
            f"schema.yaml's display section names column(s) {', '.join(repr(c) for c in missing[:5])} that {where} "
            f"does not have; its columns are: {', '.join(map(str, df.columns[:20]))}"
        )


def check_references(link: pd.DataFrame, column: str, known: pd.Index, where: str, target: str) -> None:
    # Arrow's hash lookup: pandas' isin on Arrow-backed text turns every value into a Python
    # object first (2.6 s of a 7 s model load on a 30,000-customer bank, measured).
    from finrec.data.ids import as_arrow_text

    found = pc.is_in(as_arrow_text(link[column]), value_set=as_arrow_text(known))
    unknown = pd.Series(~found.to_numpy(zero_copy_only=False), index=link.index)
    if unknown.any():
        values = link.loc[unknown, column].unique()
        raise DataError(
            f"{where}: {int(unknown.sum())} row(s) name {column} values that are not in {target}, "
            f"e.g. {_examples(values)}{id_form_hint(values, known, target)}"
        )


def id_form_hint(unknown, known: pd.Index, target: str) -> str:
    """A hint when an unknown id is a known one written another way: with or without leading
    zeros ('1' for '0000001', as a spreadsheet drops them) or a decimal '.0' ('7.0' for '7', as
    an id column that once held a gap is exported). Ids are compared as text, so those differ."""
    widths = set(pd.Series(known[:1000], dtype=object).astype(str).str.len())
    for value in list(unknown)[:20]:
        text = str(value)
        base = text[:-2] if text.endswith(".0") else text
        for candidate in (base, base.lstrip("0") or "0", *(base.zfill(w) for w in sorted(widths))):
            if candidate != text and candidate in known:
                return (
                    f" (perhaps {safe_text(text, quote=True)} is {safe_text(candidate, quote=True)} in {target}, written "
                    "another way: ids are compared as text, so leading zeros and a decimal '.0' must be alike "
                    "in every table)"
                )
    return ""


def check_timestamps(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """``df`` with its ``timestamp`` column parsed as the history's dates are (``parse_dates``:
    offsets to UTC, day-first and month-first never mixed); a missing timestamp stays missing."""
    if S.TIMESTAMP not in df.columns:
        return df
    out = df.copy()
    out[S.TIMESTAMP] = parse_dates(df[S.TIMESTAMP], S.TIMESTAMP, where, allow_missing=True)
    return out


def check_probabilities(df: pd.DataFrame, where: str) -> pd.DataFrame:
    out = coerce_numeric(df, [S.PROBABILITY], where)
    values = out[S.PROBABILITY].to_numpy()
    bad = np.isnan(values) | (values < 0) | (values > 1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(
            f"{where}: column '{S.PROBABILITY}' must lie in [0, 1]; {len(rows)} row(s) do not, e.g. row {rows[0] + 1}"
        )
    return out


# --------------------------------------------------------------------------------------------
# Dates and the holdings history


# A date written with its day and month first, in either order (30/06/2026, 06.30.2026, 1-2-26);
# ISO dates (2026-06-30) start with the year and never match.
_DAY_MONTH = re.compile(r"^\s*(\d{1,2})[/.-](\d{1,2})[/.-]\d{2,4}(?!\d)")


def _day_first(text: pd.Series, column: str, where: str) -> tuple[np.ndarray, bool]:
    """(bool [n]: which of ``text`` are day-month dates (``_DAY_MONTH``), whether they put the
    day first). A parser left to guess reads each value on its own: in one column 30/06/2026 came
    out as 30 June and 11/12/2026 as 12 November (found by a tester). So a column must show its
    order (some day above 12) and keep it; else it is refused, asking for YYYY-MM-DD."""
    extracted = text.astype(str).str.extract(_DAY_MONTH)
    is_day_month = extracted[0].notna().to_numpy()
    found = extracted.dropna()
    first, second = found[0].astype(int), found[1].astype(int)
    # Both above 12 is no date at all: the parser refuses it, naming the row.
    day_first, month_first = (first > 12) & (second <= 12), (second > 12) & (first <= 12)
    possible = (first <= 12) | (second <= 12)
    if not possible.any():
        return is_day_month, False
    if day_first.any() and month_first.any():
        a, b = text[found.index[day_first.to_numpy()][0]], text[found.index[month_first.to_numpy()][0]]
        raise DataError(
            f"{where}: column {_name(column)} mixes day-first and month-first dates "
            f"({safe_text(a, quote=True)} and {safe_text(b, quote=True)}); write dates as YYYY-MM-DD"
        )
    if not day_first.any() and not month_first.any():
        example = text[found.index[possible.to_numpy()][0]]
        raise DataError(
            f"{where}: column {_name(column)} has dates whose day and month cannot be told apart, "
            f"e.g. {safe_text(example, quote=True)} (no day above 12 shows the order); write dates as YYYY-MM-DD"
        )
    return is_day_month, bool(day_first.any())


def parse_dates(values: pd.Series, column: str, where: str, allow_missing: bool = False) -> pd.Series:
    """``values`` as naive ``datetime64[ns]`` (an offset is converted to UTC first). Each distinct
    text is parsed once (a history repeats a few month-ends over millions of rows). A value that
    is not a date is refused, naming the row; so is a missing one unless ``allow_missing``, and so
    are day-month dates whose order is mixed or cannot be told (``_day_first``)."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert(None).astype("datetime64[ns]")
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values.astype("datetime64[ns]")
    else:
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        text = pd.Series(uniques, dtype=object)
        day_month, dayfirst = _day_first(text, column, where)
        unique_dates = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
        # The order applies to day-month dates only: pandas given dayfirst also read the ISO
        # 2026-01-02 beside them as 1 February (a reviewer).
        for rows, first in ((day_month, dayfirst), (~day_month, False)):
            if rows.any():
                try:
                    part = pd.to_datetime(text[rows], errors="coerce", format="mixed", utc=True, dayfirst=first)
                except (ValueError, TypeError, OverflowError):  # pragma: no cover - coerce keeps these rare
                    continue
                unique_dates[rows] = part
        bad_unique = unique_dates.isna().to_numpy()
        if bad_unique.any():
            rows = np.flatnonzero(bad_unique[codes] & (codes >= 0))
            raise DataError(
                f"{where}: column {_name(column)} has {len(rows)} value(s) that are not dates, "
                f"e.g. row {rows[0] + 1}: {safe_text(values.iloc[rows[0]], quote=True)}"
            )
        lookup = unique_dates.dt.tz_convert(None).astype("datetime64[ns]").to_numpy()
        out = np.full(len(codes), np.datetime64("NaT", "ns"))
        present = codes >= 0
        out[present] = lookup[codes[present]]
        parsed = pd.Series(out, index=values.index, dtype="datetime64[ns]")
    if not allow_missing:
        missing = parsed.isna().to_numpy()
        if missing.any():
            rows = np.flatnonzero(missing)
            raise DataError(
                f"{where}: column {_name(column)} has {len(rows)} missing date(s), at row(s) {_examples(rows + 1)}; "
                "every snapshot needs its date"
            )
    return parsed


def check_id_codes(values: pd.Series, known: pd.Index, column: str, where: str, target: str) -> None:
    """Missing, empty and unknown ids of a categorical id column, checked on its categories
    (a few thousand) rather than its rows (millions)."""
    codes = values.cat.codes.to_numpy()
    categories = values.cat.categories
    empty = np.flatnonzero(pd.Series(categories).astype(str).str.strip().to_numpy() == "")
    bad = codes < 0
    if len(empty):
        bad |= np.isin(codes, empty)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(f"{where}: column {_name(column)} has {len(rows)} empty id(s), at row(s) {_examples(rows + 1)}")
    unknown = np.flatnonzero(positions_in(categories, as_arrow_text(known)) < 0)
    if len(unknown):
        used = np.isin(codes, unknown)
        if used.any():
            values_used = categories[np.unique(codes[used])]
            raise DataError(
                f"{where}: {int(used.sum())} row(s) name {column} values that are not in {target}, "
                f"e.g. {_examples(values_used)}{id_form_hint(values_used, known, target)}"
            )


# Below this many rows in the month before the latest, a thin latest month may be a small bank's
# chance: the check then says nothing.
MIN_SNAPSHOT_ROWS = 20


def months(values) -> np.ndarray:
    """Calendar month numbers (year * 12 + month - 1) of dates; raises DataError on bad dates."""
    dates = pd.to_datetime(pd.Series(values), errors="coerce")
    if dates.isna().any():
        raise DataError(f"{S.HOLDINGS_HISTORY}: {int(dates.isna().sum())} unparseable or missing {S.AS_OF} date(s)")
    return (dates.dt.year.to_numpy() * 12 + dates.dt.month.to_numpy() - 1).astype("int64")


def snapshot_month_rows(month: np.ndarray) -> dict[int, int]:
    """Rows per calendar month of a history, from its rows' month numbers (``months``)."""
    values, counts = np.unique(month, return_counts=True)
    return {int(m): int(c) for m, c in zip(values, counts)}


def check_latest_snapshot(rows_per_month: dict[int, int], where: str) -> None:
    """The features take the history's latest snapshot month as every customer's present, so a
    few rows dated past the rest by a typo (2030 for 2025) moved the whole bank's history back
    (out of the model's window, at 2030) without a word: 50 such rows changed 38% of a bank's
    recommendations (a tester). Refused: the last one to three snapshot months when, together,
    they hold under half the rows of the month before them and the months without a snapshot
    before them are more than the history's own spacing (its widest gap between earlier
    snapshots: a quarterly history's thin last quarter stays accepted, as does a thin latest
    month right after the one before, customers who closed everything)."""
    months = sorted(rows_per_month)
    for tail in range(1, min(3, len(months) - 1) + 1):
        body, late = months[:-tail], months[-tail:]
        before, after = body[-1], late[0]
        spacing = max((b - a for a, b in zip(body, body[1:])), default=1)
        late_rows = sum(rows_per_month[m] for m in late)
        n_before = rows_per_month[before]
        if n_before < MIN_SNAPSHOT_ROWS or 2 * late_rows >= n_before or after - before <= max(1, spacing):
            continue

        def name(month: int) -> str:
            return f"{month // 12:04d}-{month % 12 + 1:02d}"

        named = name(after) if tail == 1 else f"{name(after)} to {name(late[-1])}"
        raise DataError(
            f"{where}: the latest snapshot month(s), {named}, hold {late_rows} row(s), under half the {n_before} "
            f"of {name(before)}, with no snapshot in the {after - before - 1} month(s) between: mistyped as_of "
            "dates? Every customer's history is read back from the latest month, so these rows would move the "
            "whole history back; correct the dates or leave those rows out"
        )


def check_history_order(history: pd.DataFrame, interactions: pd.DataFrame, where: str) -> None:
    """The history describes the time before the adoptions it explains: for every customer, each
    snapshot (the state at the end of its ``as_of`` day) must fall before that customer's first
    adoption (its ``timestamp`` day). Without timestamps there is nothing to compare: the latest
    snapshot is then taken as the current state, just before the adoptions."""
    if S.TIMESTAMP not in interactions.columns or len(history) == 0 or len(interactions) == 0:
        return
    stamps = interactions[S.TIMESTAMP]
    if isinstance(stamps.dtype, pd.DatetimeTZDtype):
        stamps = stamps.dt.tz_convert(None)
    # Grouped by the history's customer codes: no id text is rebuilt for its millions of rows.
    customers = history[S.CUSTOMER_ID]
    if not isinstance(customers.dtype, pd.CategoricalDtype):
        customers = customers.astype("category")
    categories = customers.cat.categories
    codes = customers.cat.codes.to_numpy()
    last = history[S.AS_OF].dt.floor("D").groupby(codes, sort=False).max()
    mine = categories.get_indexer(interactions[S.CUSTOMER_ID].astype(str))
    days = stamps.dt.floor("D").to_numpy()
    first = pd.Series(days[mine >= 0]).groupby(mine[mine >= 0], sort=False).min().dropna()
    if first.empty:
        return
    both = pd.DataFrame({"last": last}).join(first.rename("first"), how="inner")
    late = both[both["last"] >= both["first"]]
    if len(late):
        customer = categories[late.index[0]]
        raise DataError(
            f"{where}: {len(late)} customer(s) have a snapshot dated on or after their first adoption in "
            f"interactions, e.g. customer {safe_text(customer, quote=True)}: snapshot {late['last'].iloc[0]:%Y-%m-%d}, "
            f"adoption {late['first'].iloc[0]:%Y-%m-%d}; the history must end before the adoptions it explains "
            "(a log of every month's adoptions goes through `finrec split --by time`, which cuts both at a cutoff)"
        )
