"""Errors a user can act on.

Every failure caused by input (a file, a column, a request, a model directory) is raised as a
``FinrecError`` whose message names what is wrong and where. The CLI prints the message and exits
non-zero, the API turns it into a 4xx, the dashboard shows it on the page: none of them shows a
traceback for these.
"""

from __future__ import annotations

import difflib
from typing import Iterable


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


class UnknownCustomerError(FinrecError):
    """A customer id that the loaded data does not contain."""


def reject_unknown(keys: Iterable, allowed: Iterable[str], where: str, error: type[FinrecError] = FinrecError) -> None:
    """Refuse the first key not in ``allowed``, naming it, a close match if there is one, and
    every allowed key: a typo in a config, a schema or a filter must not pass silently."""
    allowed = sorted(allowed)
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise error(f"{where}: unknown key '{key}'{hint}; allowed keys: {', '.join(allowed)}")
