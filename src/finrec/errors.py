"""Errors a user can act on.

Every failure caused by input (a file, a column, a request, a model directory) is raised as a
``FinrecError`` whose message names what is wrong and where. The CLI prints the message and exits
non-zero, the API turns it into a 4xx, the dashboard shows it on the page: none of them shows a
traceback for these.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FinrecError(Exception):
    """Base class for errors caused by the user's input."""


class DataError(FinrecError):
    """A dataset file, table, column or value breaks the data contract."""


class SchemaError(DataError):
    """``schema.yaml`` is missing, malformed, or names columns that are not there."""


class ConfigError(FinrecError):
    """A configuration file or value is invalid."""


class ArtifactError(FinrecError):
    """A model directory is missing, incomplete, altered, or from another format or schema."""


class RecordLogError(FinrecError):
    """The record log can no longer be appended to: a service must answer nothing unrecorded."""


class UnknownCustomerError(FinrecError):
    """A customer id that the loaded data does not contain."""


# How much of one value a message quotes, and how long a whole message may grow: a message must
# never carry a multi-megabyte header, a file of NUL bytes or a terminal escape to the user.
MAX_VALUE_CHARS = 200
MAX_ITEMS = 5
MAX_MESSAGE_CHARS = 2000


def _plain(value: object) -> object:
    """A numpy scalar as the Python number it holds (``2``, not ``np.int64(2)``)."""
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _escape(text: str) -> str:
    if text.isprintable():
        return text
    # Non-printable characters (ESC, BEL, CR, NUL, bidi overrides, lone surrogates) as Python escapes.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, bounded and escaped (it may quote a file)."""
    text = str(exc)
    return safe_text(text.split("\n", 1)[0] if text else type(exc).__name__)


def safe_text(value: object, limit: int = MAX_VALUE_CHARS, quote: bool = False) -> str:
    """``value`` as it may appear in a message: at most ``limit`` characters (then a count of the
    rest), non-printable characters escaped, numpy scalars as plain numbers. ``quote`` puts text
    in quotes (``'lots'``) so that a user sees where a value starts and ends."""
    value = _plain(value)
    if isinstance(value, (bytes, bytearray)):
        rest = len(value) - limit
        text = bytes(value[:limit]).decode("utf-8", "backslashreplace")
    else:
        text = value if isinstance(value, str) else str(value)
        rest = len(text) - limit
        if rest > 0:
            text = text[:limit]
    if quote and isinstance(value, str):
        out = repr(text)
        out = out if out.isprintable() else _escape(out)
    else:
        out = _escape(text)
    return out + (f"... and {rest} more character(s)" if rest > 0 else "")


def safe_items(values, limit: int = MAX_ITEMS, quote: bool = True, value_limit: int = MAX_VALUE_CHARS) -> str:
    """The first ``limit`` of ``values`` through ``safe_text``, comma-separated, then a count of
    the rest (``'a', 'b', ... and 17 more``)."""
    try:
        total = len(values)
    except TypeError:
        values = list(values)
        total = len(values)
    shown = [safe_text(v, value_limit, quote=quote) for v in _head(values, limit)]
    more = total - len(shown)
    return ", ".join(shown) + (f", ... and {more} more" if more > 0 else "")


def _head(values, n: int) -> list:
    out = []
    for value in values:
        if len(out) >= n:
            break
        out.append(value)
    return out


def reject_unknown(keys: Iterable, allowed: Iterable[str], where: str, error: type[FinrecError] = FinrecError) -> None:
    """Refuse the first key not in ``allowed``, naming it, a close match if there is one, and
    every allowed key: a typo in a config, a schema or a filter must not pass silently."""
    allowed = sorted(allowed)
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key)[:100], allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise error(
                f"{where}: unknown key {safe_text(str(key), quote=True)}{hint}; allowed keys: {', '.join(allowed)}"
            )
