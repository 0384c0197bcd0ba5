"""The data contract: table names, id columns and the ``schema.yaml`` that types the features.

A dataset is a directory holding ``customers``, ``products``, ``interactions`` and optionally
``holdings`` and ``ground_truth`` tables (``.csv`` or ``.parquet``) plus ``schema.yaml``::

    customers: {id: customer_id, numeric: [...], categorical: [...], risk_tolerance: risk_tolerance}
    products:  {id: product_id, numeric: [...], categorical: [...], risk_level: risk_level,
                category: product_type}

Column names used across finrec live here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from finrec.errors import SchemaError, reject_unknown

CUSTOMERS = "customers"
PRODUCTS = "products"
INTERACTIONS = "interactions"
HOLDINGS = "holdings"
GROUND_TRUTH = "ground_truth"
SCHEMA_FILE = "schema.yaml"

TABLES = (CUSTOMERS, PRODUCTS, INTERACTIONS, HOLDINGS, GROUND_TRUTH)
REQUIRED_TABLES = (CUSTOMERS, PRODUCTS, INTERACTIONS)
TABLE_SUFFIXES = (".parquet", ".csv")

# Columns of the link tables (interactions, holdings, ground_truth) are fixed by the contract;
# they refer to the ids named in the schema.
CUSTOMER_ID = "customer_id"
PRODUCT_ID = "product_id"
TIMESTAMP = "timestamp"
PROBABILITY = "probability"

# Product columns that the recommender treats as eligibility terms when the table has them.
MIN_INCOME = "min_income"
MIN_CREDIT_SCORE = "min_credit_score"
MIN_AGE = "min_age"
MAX_AGE = "max_age"
# The customer columns those terms are compared with.
INCOME = "income"
CREDIT_SCORE = "credit_score"
AGE = "age"

RISK_MIN, RISK_MAX = 1, 7

_CUSTOMER_KEYS = {"id", "numeric", "categorical", "risk_tolerance", "protected", "log_numeric"}
_PRODUCT_KEYS = {"id", "numeric", "categorical", "risk_level", "category", "log_numeric", "value"}


@dataclass(frozen=True)
class TableSchema:
    """Which columns of one entity table are the id and which are features.

    ``risk`` is the customer's risk tolerance or the product's risk level (1-7) and ``category``
    the product family; both are model features as well as filter inputs. ``log_numeric`` lists
    heavy-tailed numeric columns that are log-transformed before standardizing (when omitted,
    the feature pipeline detects them). ``protected`` lists customer columns that a bank may
    exclude from the model and report fairness over.
    """

    id: str
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    risk: str | None = None
    category: str | None = None
    protected: tuple[str, ...] = ()
    log_numeric: tuple[str, ...] | None = None
    # Products only: the column holding the money one adoption is worth (``finrec plan``); not a
    # model feature unless also listed as numeric.
    value: str | None = None

    @property
    def numeric_features(self) -> tuple[str, ...]:
        """Numeric model inputs: the numeric list plus the risk column."""
        cols = list(self.numeric)
        if self.risk and self.risk not in cols:
            cols.append(self.risk)
        return tuple(cols)

    @property
    def categorical_features(self) -> tuple[str, ...]:
        """Categorical model inputs: the categorical list plus the category column."""
        cols = list(self.categorical)
        if self.category and self.category not in cols:
            cols.append(self.category)
        return tuple(cols)


@dataclass(frozen=True)
class DatasetSchema:
    customers: TableSchema
    products: TableSchema

    def to_dict(self) -> dict[str, Any]:
        """The ``schema.yaml`` form of this schema."""
        c, p = self.customers, self.products
        out: dict[str, Any] = {
            CUSTOMERS: {"id": c.id, "numeric": list(c.numeric), "categorical": list(c.categorical)},
            PRODUCTS: {"id": p.id, "numeric": list(p.numeric), "categorical": list(p.categorical)},
        }
        if c.risk:
            out[CUSTOMERS]["risk_tolerance"] = c.risk
        if c.protected:
            out[CUSTOMERS]["protected"] = list(c.protected)
        if c.log_numeric is not None:
            out[CUSTOMERS]["log_numeric"] = list(c.log_numeric)
        if p.risk:
            out[PRODUCTS]["risk_level"] = p.risk
        if p.category:
            out[PRODUCTS]["category"] = p.category
        if p.log_numeric is not None:
            out[PRODUCTS]["log_numeric"] = list(p.log_numeric)
        if p.value:
            out[PRODUCTS]["value"] = p.value
        return out

    def without_value(self) -> "DatasetSchema":
        """The schema without the products' value column: what a model depends on (the value is
        campaign data, so a model trained before it was named still matches)."""
        return DatasetSchema(customers=self.customers, products=replace(self.products, value=None))

    def without_protected(self) -> "DatasetSchema":
        """The schema with the customers' protected columns removed from the features."""
        c = self.customers
        drop = set(c.protected)
        customers = TableSchema(
            id=c.id,
            numeric=tuple(x for x in c.numeric if x not in drop),
            categorical=tuple(x for x in c.categorical if x not in drop),
            risk=c.risk if c.risk not in drop else None,
            protected=c.protected,
            log_numeric=None if c.log_numeric is None else tuple(x for x in c.log_numeric if x not in drop),
        )
        return DatasetSchema(customers=customers, products=self.products)

    @classmethod
    def from_dict(cls, raw: Any, source: str = SCHEMA_FILE) -> "DatasetSchema":
        """Parse and check the structure of a schema mapping; column presence is checked later
        against the tables (``finrec.data.validate``)."""
        if not isinstance(raw, dict):
            raise SchemaError(f"{source}: expected a mapping with keys 'customers' and 'products', got {type(raw).__name__}")
        reject_unknown(raw.keys(), {CUSTOMERS, PRODUCTS}, source, SchemaError)
        for key in (CUSTOMERS, PRODUCTS):
            if key not in raw:
                raise SchemaError(f"{source}: missing section '{key}'")
        customers = _table_from_dict(raw[CUSTOMERS], _CUSTOMER_KEYS, "risk_tolerance", f"{source}: {CUSTOMERS}")
        products = _table_from_dict(raw[PRODUCTS], _PRODUCT_KEYS, "risk_level", f"{source}: {PRODUCTS}")
        return cls(customers=customers, products=products)


def _column_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise SchemaError(f"{where}: expected a list of column names, got {value!r}")
    for item in value:
        if not isinstance(item, str) or not item:
            raise SchemaError(f"{where}: column names must be non-empty strings, got {item!r}")
    if len(set(value)) != len(value):
        dupes = sorted({v for v in value if list(value).count(v) > 1})
        raise SchemaError(f"{where}: column listed twice: {', '.join(dupes)}")
    return tuple(value)


def _optional_column(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SchemaError(f"{where}: expected a column name, got {value!r}")
    return value


def _table_from_dict(raw: Any, allowed: set[str], risk_key: str, where: str) -> TableSchema:
    if not isinstance(raw, dict):
        raise SchemaError(f"{where}: expected a mapping, got {type(raw).__name__}")
    reject_unknown(raw.keys(), allowed, where, SchemaError)
    ident = _optional_column(raw.get("id"), f"{where}.id")
    if ident is None:
        raise SchemaError(f"{where}: 'id' (the id column) is required")
    numeric = _column_list(raw.get("numeric"), f"{where}.numeric")
    categorical = _column_list(raw.get("categorical"), f"{where}.categorical")
    overlap = set(numeric) & set(categorical)
    if overlap:
        raise SchemaError(f"{where}: columns listed as both numeric and categorical: {', '.join(sorted(overlap))}")
    if ident in numeric or ident in categorical:
        raise SchemaError(f"{where}: the id column '{ident}' cannot also be a feature")
    log_numeric = raw.get("log_numeric")
    log_cols = None if log_numeric is None else _column_list(log_numeric, f"{where}.log_numeric")
    if log_cols:
        stray = [c for c in log_cols if c not in numeric]
        if stray:
            raise SchemaError(f"{where}.log_numeric: not in the numeric list: {', '.join(stray)}")
    protected = _column_list(raw.get("protected"), f"{where}.protected")
    return TableSchema(
        id=ident,
        numeric=numeric,
        categorical=categorical,
        risk=_optional_column(raw.get(risk_key), f"{where}.{risk_key}"),
        category=_optional_column(raw.get("category"), f"{where}.category"),
        protected=protected,
        log_numeric=log_cols,
        value=_optional_column(raw.get("value"), f"{where}.value") if "value" in allowed else None,
    )


@dataclass(frozen=True)
class SyntheticColumns:
    """Column names of the built-in synthetic bank (see ``finrec.data.synthetic``)."""

    customer_numeric: tuple[str, ...] = (
        "age", "income", "savings", "debt", "loan_amount", "credit_score", "credit_utilization",
        "debt_to_income", "digital_engagement", "transactions_per_month", "tenure_years",
        "num_dependents",
    )
    customer_categorical: tuple[str, ...] = (
        "gender", "marital_status", "region", "employment", "education", "channel",
    )
    customer_log_numeric: tuple[str, ...] = ("income", "savings", "debt", "loan_amount")
    customer_protected: tuple[str, ...] = ("gender", "age")
    # Where a customer stands against all customers, in the dashboard's profile.
    customer_profile: tuple[str, ...] = ("income", "savings", "credit_score", "credit_utilization", "digital_engagement")
    product_numeric: tuple[str, ...] = (
        "expected_yield", "duration_months", "min_income", "min_credit_score", "min_age",
        "max_age", "monthly_fee", "digital_only",
    )
    product_categorical: tuple[str, ...] = ()
    customer_segments: tuple[str, ...] = ("employment", "channel")
    digital_engagement: str = "digital_engagement"
    risk_tolerance: str = "risk_tolerance"
    risk_level: str = "risk_level"
    category: str = "product_type"
    product_name: str = "name"
    product_yield: str = "expected_yield"
    product_duration: str = "duration_months"
    product_fee: str = "monthly_fee"
    product_digital: str = "digital_only"

    def schema(self) -> DatasetSchema:
        return DatasetSchema(
            customers=TableSchema(
                id=CUSTOMER_ID,
                numeric=self.customer_numeric,
                categorical=self.customer_categorical,
                risk=self.risk_tolerance,
                protected=self.customer_protected,
                log_numeric=self.customer_log_numeric,
            ),
            products=TableSchema(
                id=PRODUCT_ID,
                numeric=self.product_numeric,
                categorical=self.product_categorical,
                risk=self.risk_level,
                category=self.category,
                log_numeric=(),
            ),
        )


SYNTHETIC = SyntheticColumns()

