"""Errors a user can act on.

Every failure caused by input (a file, a column, a request, a model directory) is raised as a
``FinrecError`` whose message names what is wrong and where. The CLI prints the message and exits
non-zero, the API turns it into a 4xx, the dashboard shows it on the page: none of them shows a
traceback for these.
"""

from __future__ import annotations


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
