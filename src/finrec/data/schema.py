"""The data contract: table names, id columns and the ``schema.yaml`` that types the features.

A dataset is a directory holding ``customers``, ``products``, ``interactions`` and optionally
``holdings`` and ``ground_truth`` tables (``.csv`` or ``.parquet``) plus ``schema.yaml``::

    customers: {id: customer_id, numeric: [...], categorical: [...], risk_tolerance: risk_tolerance}
    products:  {id: product_id, numeric: [...], categorical: [...], risk_level: risk_level,
                category: product_type}
    display:   {profile: [...], what_if: [...], segments: [...], product_name: name,
                product_details: [...], labels: {column: text}}          # optional

``display`` only says how the dashboard shows the data; it is no model input, and ``to_dict()``
(the form the model's schema hash is computed from) leaves it out, so editing it never
invalidates a model. The same holds for ``products: {on_offer: column}``: the bank's current word
on which products it still offers (``TableSchema.on_offer``), no model input either.

Column names used across finrec live here and nowhere else.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from finrec.errors import SchemaError, reject_unknown, safe_items, safe_text

CUSTOMERS = "customers"
PRODUCTS = "products"
INTERACTIONS = "interactions"
HOLDINGS = "holdings"
# Optional: one row per product a customer held at each past snapshot date (month ends, typically).
HOLDINGS_HISTORY = "holdings_history"
GROUND_TRUTH = "ground_truth"
SCHEMA_FILE = "schema.yaml"
# How a directory was cut from a larger dataset (``finrec split``): by customer or out of time.
SPLIT_FILE = "split.json"

TABLES = (CUSTOMERS, PRODUCTS, INTERACTIONS, HOLDINGS, HOLDINGS_HISTORY, GROUND_TRUTH)
REQUIRED_TABLES = (CUSTOMERS, PRODUCTS, INTERACTIONS)
TABLE_SUFFIXES = (".parquet", ".csv")
# ``finrec generate --no-ground-truth`` marks a bank it wrote (a later generate may replace it).
GENERATED_MARK = ".finrec-generated"
# Every name a dataset directory may hold: rewriting one replaces it whole, and refuses to when
# it holds anything else (``atomic.check_writable``), which the swap would delete.
DATASET_FILES = frozenset(
    {SCHEMA_FILE, SPLIT_FILE, GENERATED_MARK, *(table + suffix for table in TABLES for suffix in TABLE_SUFFIXES)}
)

# Columns of the link tables (interactions, holdings, ground_truth) are fixed by the contract;
# they refer to the ids named in the schema.
CUSTOMER_ID = "customer_id"
PRODUCT_ID = "product_id"
TIMESTAMP = "timestamp"
AS_OF = "as_of"  # the snapshot date of a holdings_history row
PROBABILITY = "probability"
# A ranker's scores file (``finrec compare --champion-scores``): customer_id, product_id and one
# of these, as ``finrec score`` writes them (higher score, lower rank is better).
SCORE = "score"
RANK = "rank"

# Product columns that the recommender treats as eligibility terms when the table has them.
MIN_INCOME = "min_income"
MIN_CREDIT_SCORE = "min_credit_score"
MIN_AGE = "min_age"
MAX_AGE = "max_age"
# The customer columns those terms are compared with.
INCOME = "income"
CREDIT_SCORE = "credit_score"
AGE = "age"
# Numbers wherever a table has them, features or not: the eligibility rule reads them by name.
ELIGIBILITY_COLUMNS = (INCOME, CREDIT_SCORE, AGE, MIN_INCOME, MIN_CREDIT_SCORE, MIN_AGE, MAX_AGE)

RISK_MIN, RISK_MAX = 1, 7

# Compliance columns (all optional; see ``finrec.data.compliance`` for the rules that read them).
# The regimes a product can fall under; a schema maps the user's own labels onto these.
REGIMES = ("investment", "credit", "deposit", "insurance", "other")
# Customer attributes a schema may name, as ``customers: {knowledge: my_column, ...}``.
CUSTOMER_PROFILE_KEYS = ("knowledge", "loss_capacity", "objective", "horizon", "client_type", "debt_service")
# Target-market terms a schema may name, as ``products: {target_market: {knowledge: my_column, ...}}``,
# and the customer attribute each one is compared with.
TARGET_MARKET_KEYS = {
    "knowledge": "knowledge",
    "loss_capacity": "loss_capacity",
    "horizon": "horizon",
    "objectives": "objective",
    "client_types": "client_type",
    "negative_objectives": "objective",
    "negative_client_types": "client_type",
    "negative_knowledge": "knowledge",
    "negative_loss_capacity": "loss_capacity",
}

_CUSTOMER_KEYS = {
    "id",
    "numeric",
    "categorical",
    "risk_tolerance",
    "protected",
    "log_numeric",
    "consent",
    *CUSTOMER_PROFILE_KEYS,
}
_PRODUCT_KEYS = {
    "id",
    "numeric",
    "categorical",
    "risk_level",
    "category",
    "log_numeric",
    "regime",
    "regimes",
    "target_market",
    "credit_payment",
    "value",
    "on_offer",
}
DISPLAY = "display"
_DISPLAY_KEYS = {"profile", "what_if", "segments", "product_name", "product_details", "labels"}
MAX_LABEL_CHARS = 80


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
    # Products only: the column saying whether the bank still offers each product (true/false,
    # 1/0, yes/no; empty = on offer). A product marked false stays in the table, so the holdings
    # and history of it still load, but is never offered: the ``discontinued`` rule
    # (``finrec.recommend.filters.current_products``) excludes it as one the table lacks. No model
    # input, and no part of the model's schema (``DatasetSchema.to_dict``): naming it after
    # training is no schema change, and training ignores it (past adoptions are still data).
    on_offer: str | None = None
    # Compliance columns (filter inputs only, never model features unless also listed above).
    # Customers: ``consent`` (false / 0 = objected to profiling for marketing) and ``profile``
    # (role -> column, roles from CUSTOMER_PROFILE_KEYS). Products: ``regime`` (the column of
    # regime labels), ``regime_labels`` (label -> one of REGIMES), ``target_market`` (term ->
    # column, terms from TARGET_MARKET_KEYS) and ``credit_payment`` (monthly debt service a credit
    # product adds). Mappings are tuples of pairs so the schema stays hashable.
    consent: str | None = None
    profile: tuple[tuple[str, str], ...] = ()
    regime: str | None = None
    regime_labels: tuple[tuple[str, str], ...] = ()
    target_market: tuple[tuple[str, str], ...] = ()
    credit_payment: str | None = None

    @property
    def compliance_columns(self) -> tuple[str, ...]:
        """Every column the compliance keys name (for the presence check)."""
        named = [
            self.consent,
            self.regime,
            self.credit_payment,
            *(c for _, c in self.profile),
            *(c for _, c in self.target_market),
        ]
        return tuple(dict.fromkeys(c for c in named if c))

    @property
    def named_columns(self) -> tuple[str, ...]:
        """Every column the schema names in this table: id, features, risk, category, value,
        on-offer, protected and compliance columns (each once, in that order)."""
        named = [self.id, *self.numeric, *self.categorical]
        named += [c for c in (self.risk, self.category, self.value, self.on_offer) if c]
        return tuple(dict.fromkeys([*named, *self.protected, *self.compliance_columns]))

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
class DisplayHints:
    """How the dashboard shows a dataset (the ``display:`` section of ``schema.yaml``).

    Every hint is optional; what is not given is derived from the data (``finrec.explain``):
    ``profile`` and ``what_if`` are numeric customer features (the profile's figures and the
    what-if sliders), ``segments`` categorical customer features (the segment filter),
    ``product_name`` the products column that names a product and ``product_details`` the
    products columns shown on a recommendation; ``labels`` maps a column to its friendly name.
    """

    profile: tuple[str, ...] | None = None
    what_if: tuple[str, ...] | None = None
    segments: tuple[str, ...] | None = None
    product_name: str | None = None
    product_details: tuple[str, ...] | None = None
    labels: tuple[tuple[str, str], ...] = ()  # pairs, so that the schema stays hashable

    def label(self, column: str) -> str:
        """The friendly name of ``column``: its label, else the name with spaces for underscores."""
        return dict(self.labels).get(column) or str(column).replace("_", " ").capitalize()

    @property
    def product_columns(self) -> tuple[str, ...]:
        """Products columns the hints name; they must exist in the products table."""
        named = [self.product_name] if self.product_name else []
        return tuple(dict.fromkeys([*named, *(self.product_details or ())]))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("profile", "what_if", "segments", "product_details"):
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value)
        if self.product_name:
            out["product_name"] = self.product_name
        if self.labels:
            out["labels"] = dict(self.labels)
        return out


@dataclass(frozen=True)
class DatasetSchema:
    customers: TableSchema
    products: TableSchema
    display: DisplayHints = DisplayHints()

    def to_dict(self, display: bool = False) -> dict[str, Any]:
        """The ``schema.yaml`` form of this schema; ``display=True`` adds what is the bank's current
        word rather than the model's: the display hints and the products' ``on_offer`` column.

        Without them it is the model's contract: the schema hash and every "same schema?" check
        compare this form, so a display hint or a withdrawn product never makes a model refuse
        its data."""
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
        hints = self.display.to_dict()
        if display and hints:
            out[DISPLAY] = hints
        if display and p.on_offer:
            out[PRODUCTS]["on_offer"] = p.on_offer
        if p.value:
            out[PRODUCTS]["value"] = p.value
        # Compliance keys only when set, so the schema (and its hash) of data without them is unchanged.
        if c.consent:
            out[CUSTOMERS]["consent"] = c.consent
        for role, column in c.profile:
            out[CUSTOMERS][role] = column
        if p.regime:
            out[PRODUCTS]["regime"] = p.regime
        if p.regime_labels:
            out[PRODUCTS]["regimes"] = dict(p.regime_labels)
        if p.target_market:
            out[PRODUCTS]["target_market"] = dict(p.target_market)
        if p.credit_payment:
            out[PRODUCTS]["credit_payment"] = p.credit_payment
        return out

    def without_value(self) -> DatasetSchema:
        """The schema without the products' value column: what a model depends on (the value is
        campaign data, so a model trained before it was named still matches)."""
        return replace(self, products=replace(self.products, value=None))

    def without_protected(self) -> DatasetSchema:
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
            consent=c.consent,
            profile=c.profile,
        )
        return DatasetSchema(customers=customers, products=self.products, display=self.display)

    @classmethod
    def from_dict(cls, raw: Any, source: str = SCHEMA_FILE) -> DatasetSchema:
        """Parse and check the structure of a schema mapping; column presence is checked later
        against the tables (``finrec.data.validate``)."""
        if not isinstance(raw, dict):
            raise SchemaError(
                f"{source}: expected a mapping with keys 'customers' and 'products', got {type(raw).__name__}"
            )
        reject_unknown(raw.keys(), {CUSTOMERS, PRODUCTS, DISPLAY}, source, SchemaError)
        for key in (CUSTOMERS, PRODUCTS):
            if key not in raw:
                raise SchemaError(f"{source}: missing section '{key}'")
        customers = _table_from_dict(raw[CUSTOMERS], _CUSTOMER_KEYS, "risk_tolerance", f"{source}: {CUSTOMERS}")
        products = _table_from_dict(raw[PRODUCTS], _PRODUCT_KEYS, "risk_level", f"{source}: {PRODUCTS}")
        # A product term is only checkable against a customer attribute the schema names.
        declared = dict(customers.profile)
        needs = [(f"target_market.{term}", TARGET_MARKET_KEYS[term]) for term, _ in products.target_market]
        if products.credit_payment:
            needs.append(("credit_payment", "debt_service"))
        for term, role in needs:
            if role not in declared:
                raise SchemaError(
                    f"{source}: {PRODUCTS}.{term} is compared with the customers' '{role}' column, "
                    f"which {CUSTOMERS} does not name (add '{role}: <column>' to {CUSTOMERS})"
                )
        display = _display_from_dict(raw.get(DISPLAY), customers, products, f"{source}: {DISPLAY}")
        return cls(customers=customers, products=products, display=display)


def _column_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise SchemaError(f"{where}: expected a list of column names, got {safe_text(value, quote=True)}")
    for item in value:
        if not isinstance(item, str) or not item:
            raise SchemaError(f"{where}: column names must be non-empty strings, got {safe_text(item, quote=True)}")
    if len(set(value)) != len(value):
        dupes = sorted(v for v, n in Counter(value).items() if n > 1)  # linear: a schema may list 10^5 names
        raise SchemaError(f"{where}: column listed twice: {safe_items(dupes, quote=False)}")
    return tuple(value)


def _optional_column(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SchemaError(f"{where}: expected a column name, got {safe_text(value, quote=True)}")
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
        raise SchemaError(
            f"{where}: columns listed as both numeric and categorical: {safe_items(sorted(overlap), quote=False)}"
        )
    if ident in numeric or ident in categorical:
        raise SchemaError(f"{where}: the id column {safe_text(ident, quote=True)} cannot also be a feature")
    log_numeric = raw.get("log_numeric")
    log_cols = None if log_numeric is None else _column_list(log_numeric, f"{where}.log_numeric")
    if log_cols:
        stray = [c for c in log_cols if c not in numeric]
        if stray:
            raise SchemaError(f"{where}.log_numeric: not in the numeric list: {safe_items(stray, quote=False)}")
    protected = _column_list(raw.get("protected"), f"{where}.protected")
    compliance = _compliance_from_dict(raw, where)
    return TableSchema(
        id=ident,
        numeric=numeric,
        categorical=categorical,
        risk=_optional_column(raw.get(risk_key), f"{where}.{risk_key}"),
        category=_optional_column(raw.get("category"), f"{where}.category"),
        protected=protected,
        log_numeric=log_cols,
        value=_optional_column(raw.get("value"), f"{where}.value") if "value" in allowed else None,
        on_offer=_optional_column(raw.get("on_offer"), f"{where}.on_offer") if "on_offer" in allowed else None,
        **compliance,
    )


def _display_from_dict(raw: Any, customers: TableSchema, products: TableSchema, where: str) -> DisplayHints:
    """Parse the display hints; customer hints must name the schema's features of the right kind
    (products columns are checked against the table, as they need not be features)."""
    if raw is None:
        return DisplayHints()
    if not isinstance(raw, dict):
        raise SchemaError(f"{where}: expected a mapping, got {type(raw).__name__}")
    reject_unknown(raw.keys(), _DISPLAY_KEYS, where, SchemaError)
    lists: dict[str, tuple[str, ...] | None] = {}
    for key in ("profile", "what_if", "segments", "product_details"):
        lists[key] = None if raw.get(key) is None else _column_list(raw.get(key), f"{where}.{key}")
    kinds = {
        "profile": ("numeric", customers.numeric_features),
        "what_if": ("numeric", customers.numeric_features),
        "segments": ("categorical", customers.categorical_features),
    }
    for key, (kind, allowed) in kinds.items():
        stray = [c for c in lists[key] or () if c not in allowed]
        if stray:
            listed = ", ".join(allowed) or "none"
            raise SchemaError(
                f"{where}.{key}: {', '.join(repr(c) for c in stray[:5])} is not a {kind} customer "
                f"column of the schema (its {kind} columns: {listed[:300]})"
            )
    labels = raw.get("labels")
    if labels is None:
        labels = {}
    if not isinstance(labels, dict):
        raise SchemaError(f"{where}.labels: expected a mapping of column name to label, got {type(labels).__name__}")
    known = {
        customers.id,
        *customers.numeric_features,
        *customers.categorical_features,
        products.id,
        *products.numeric_features,
        *products.categorical_features,
        *(lists["product_details"] or ()),
    }
    name = _optional_column(raw.get("product_name"), f"{where}.product_name")
    known.update([name] if name else [])
    for column, text in labels.items():
        if not isinstance(column, str) or column not in known:
            raise SchemaError(
                f"{where}.labels: {str(column)[:100]!r} is not a column the schema or the display section names"
            )
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_LABEL_CHARS:
            raise SchemaError(
                f"{where}.labels.{column}: expected a non-empty text of at most {MAX_LABEL_CHARS} "
                f"characters, got {str(text)[:100]!r}"
            )
    return DisplayHints(
        profile=lists["profile"],
        what_if=lists["what_if"],
        segments=lists["segments"],
        product_name=name,
        product_details=lists["product_details"],
        labels=tuple((str(k), v.strip()) for k, v in labels.items()),
    )


def _compliance_from_dict(raw: dict, where: str) -> dict[str, Any]:
    """The compliance keys of one table section (absent keys: empty)."""
    out: dict[str, Any] = {}
    if "consent" in raw:
        out["consent"] = _optional_column(raw["consent"], f"{where}.consent")
    profile = [(role, _optional_column(raw[role], f"{where}.{role}")) for role in CUSTOMER_PROFILE_KEYS if role in raw]
    if profile:
        out["profile"] = tuple((role, column) for role, column in profile if column)
    if "regime" in raw:
        out["regime"] = _optional_column(raw["regime"], f"{where}.regime")
    if raw.get("regimes") is not None:
        labels = raw["regimes"]
        if not isinstance(labels, dict) or not labels:
            raise SchemaError(f"{where}.regimes: expected a mapping of your labels to {', '.join(REGIMES)}")
        for label, regime in labels.items():
            if regime not in REGIMES:
                raise SchemaError(
                    f"{where}.regimes: label {label!r} maps to {regime!r}; choose one of {', '.join(REGIMES)}"
                )
        if not out.get("regime"):
            raise SchemaError(f"{where}.regimes: labels are given but no 'regime' column is named")
        out["regime_labels"] = tuple((str(label), str(regime)) for label, regime in labels.items())
    if raw.get("target_market") is not None:
        terms = raw["target_market"]
        if not isinstance(terms, dict):
            raise SchemaError(
                f"{where}.target_market: expected a mapping of terms to columns, got {type(terms).__name__}"
            )
        reject_unknown(terms.keys(), TARGET_MARKET_KEYS, f"{where}.target_market", SchemaError)
        out["target_market"] = tuple(
            (term, _optional_column(column, f"{where}.target_market.{term}"))
            for term, column in terms.items()
            if column is not None
        )
    if "credit_payment" in raw:
        out["credit_payment"] = _optional_column(raw["credit_payment"], f"{where}.credit_payment")
    return out


@dataclass(frozen=True)
class SyntheticColumns:
    """Column names of the built-in synthetic bank (see ``finrec.data.synthetic``)."""

    customer_numeric: tuple[str, ...] = (
        "age",
        "income",
        "savings",
        "debt",
        "loan_amount",
        "credit_score",
        "credit_utilization",
        "debt_to_income",
        "digital_engagement",
        "transactions_per_month",
        "tenure_years",
        "num_dependents",
    )
    customer_categorical: tuple[str, ...] = (
        "gender",
        "marital_status",
        "region",
        "employment",
        "education",
        "channel",
    )
    customer_log_numeric: tuple[str, ...] = ("income", "savings", "debt", "loan_amount")
    customer_protected: tuple[str, ...] = ("gender", "age")
    product_numeric: tuple[str, ...] = (
        "expected_yield",
        "duration_months",
        "min_income",
        "min_credit_score",
        "min_age",
        "max_age",
        "monthly_fee",
        "digital_only",
    )
    product_categorical: tuple[str, ...] = ()
    risk_tolerance: str = "risk_tolerance"
    risk_level: str = "risk_level"
    category: str = "product_type"
    # How the dashboard shows this bank: written into its schema.yaml like any bank's hints.
    display: DisplayHints = DisplayHints(
        profile=("age", "income", "savings", "credit_score", "credit_utilization", "digital_engagement"),
        what_if=("income", "risk_tolerance", "digital_engagement", "age"),
        segments=("employment", "channel"),
        product_name="name",
        product_details=(
            "product_type",
            "risk_level",
            "expected_yield",
            "duration_months",
            "monthly_fee",
            "digital_only",
            "min_income",
            "min_credit_score",
            "min_age",
            "max_age",
        ),
        labels=(("expected_yield", "Expected yield (%)"), ("duration_months", "Duration (months, 0 = open-ended)")),
    )
    # Compliance columns (finrec.data.compliance); ``schema()`` lists most of them as model features too.
    consent: str = "marketing_consent"
    compliance_profile: tuple[tuple[str, str], ...] = (
        ("knowledge", "knowledge_level"),
        ("loss_capacity", "loss_capacity"),
        ("objective", "investment_objective"),
        ("horizon", "horizon_years"),
        ("debt_service", "monthly_debt_service"),
    )
    regime_labels: tuple[tuple[str, str], ...] = (
        ("current_account", "deposit"),
        ("savings_account", "deposit"),
        ("term_deposit", "deposit"),
        ("credit_card", "credit"),
        ("personal_loan", "credit"),
        ("mortgage", "credit"),
        ("investment_fund", "investment"),
        ("pension", "investment"),
        ("insurance", "insurance"),
    )
    target_market: tuple[tuple[str, str], ...] = (
        ("knowledge", "tm_min_knowledge"),
        ("loss_capacity", "tm_min_loss_capacity"),
        ("horizon", "tm_min_horizon_years"),
        ("objectives", "tm_objectives"),
        ("negative_objectives", "tm_negative_objectives"),
        ("negative_loss_capacity", "tm_negative_max_loss_capacity"),
    )
    credit_payment: str = "monthly_payment"

    def schema(self) -> DatasetSchema:
        # The compliance attributes are model features too: the adoptions they bind are then
        # learnable, not only filtered.
        profile = dict(self.compliance_profile)
        tm = dict(self.target_market)
        customer_numeric = (
            *self.customer_numeric,
            profile["knowledge"],
            profile["loss_capacity"],
            profile["horizon"],
            profile["debt_service"],
        )
        product_numeric = (
            *self.product_numeric,
            tm["knowledge"],
            tm["loss_capacity"],
            tm["horizon"],
            tm["negative_loss_capacity"],
            self.credit_payment,
        )
        return DatasetSchema(
            customers=TableSchema(
                id=CUSTOMER_ID,
                numeric=customer_numeric,
                categorical=(*self.customer_categorical, profile["objective"]),
                risk=self.risk_tolerance,
                protected=self.customer_protected,
                log_numeric=(*self.customer_log_numeric, profile["debt_service"]),
                consent=self.consent,
                profile=self.compliance_profile,
            ),
            products=TableSchema(
                id=PRODUCT_ID,
                numeric=product_numeric,
                categorical=(*self.product_categorical, tm["objectives"], tm["negative_objectives"]),
                risk=self.risk_level,
                category=self.category,
                log_numeric=(),
                regime=self.category,
                regime_labels=self.regime_labels,
                target_market=self.target_market,
                credit_payment=self.credit_payment,
            ),
            display=self.display,
        )


SYNTHETIC = SyntheticColumns()


def check_model_schema(model: DatasetSchema, data: DatasetSchema, where, model_dir=None) -> None:
    """Refuse data (read from ``where``) whose schema is not the one the model (``model_dir``,
    for the message) was trained on, in the form of ``DatasetSchema.to_dict`` (the display
    hints and ``on_offer`` are the bank's current word) and without the products' value column:
    it is campaign data (``finrec plan``), no model input, so it may be named after training.
    The rules read the columns the schema names (consent, target market, regimes,
    affordability): data naming a rule the model's schema lacks would be filtered without it."""
    mine, theirs = model.without_value().to_dict(), data.without_value().to_dict()
    if mine != theirs:
        model_name = "the model" if model_dir is None else f"model {model_dir}"
        raise SchemaError(
            f"{where}: its schema differs from the one {model_name} was trained on: " + schema_differences(mine, theirs)
        )


def schema_differences(model: dict, data: dict, limit: int = 4) -> str:
    """Where two schema dicts (``DatasetSchema.to_dict``) differ, in a few words: "customers.numeric:
    the model's only 'income', the data's only 'gross_income'". For the message that refuses a
    model on data of another schema, which said only that they differed (found by a tester)."""
    found: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                walk(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        elif a != b:
            if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
                mine, theirs = [x for x in a if x not in b], [x for x in b if x not in a]
                if not mine and not theirs:
                    found.append(f"{path}: the same columns in another order")
                else:
                    found.append(
                        f"{path}: the model's only {safe_items(mine) if mine else 'none'}, "
                        f"the data's only {safe_items(theirs) if theirs else 'none'}"
                    )
            else:
                found.append(f"{path}: the model's {safe_text(a, quote=True)}, the data's {safe_text(b, quote=True)}")

    walk(model, data, "")
    more = f" (and {len(found) - limit} more)" if len(found) > limit else ""
    return "; ".join(found[:limit]) + more
