"""Explanations and the views the dashboard builds on them (no shap, no streamlit here).

``CustomerExplainer`` exposes a customer's raw features as one flat float matrix so that a
model-agnostic explainer (SHAP's ``PermutationExplainer``) can perturb them:

>>> explainer = CustomerExplainer(recommender)
>>> x = explainer.encode(customers_frame.iloc[[0]])                 # float [1, F]
>>> f = explainer.score_function("P_FUND_BAL", holdings_ids=["P_CURRENT"])
>>> f(x)                                                             # the score [1]

Categoricals are encoded as their vocabulary code (``0`` = missing or unseen, the model's
out-of-vocabulary slot; ``i`` = the ``i``-th vocabulary entry), numerics stay raw (NaN allowed:
the pipeline imputes it). The holdings are held fixed: they are the context of the explanation,
not one of its features.

The rest of the module is the dashboard's logic in testable form: which columns it shows for a
schema (``display_plan``: the schema's display hints, else derived from the data), reading an
uploaded customer CSV in memory, percentile ranks against the customer base, the suitability
badge, rank changes between two top-K lists and the 2-D projection of the embedding space.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from finrec.data import compliance as C
from finrec.data import schema as S
from finrec.data.categories import as_category_text
from finrec.data.io import prepare_entities, read_csv_bytes
from finrec.data.validate import check_limits, plausible_limits
from finrec.errors import DataError, FinrecError
from finrec.recommend import filters as F

# Uploads are small profiles typed in or exported by an adviser, never a customer base.
MAX_UPLOAD_BYTES = 1024 * 1024
MAX_UPLOAD_ROWS = 1000
# Stricter ranges of the data contract's eligibility columns (``finrec.data.schema``) for an
# uploaded profile, when the table has them: (minimum, maximum), inclusive.
VALUE_RANGES: dict[str, tuple[float | None, float | None]] = {
    S.INCOME: (0.0, None),
    S.AGE: (18.0, 120.0),
    S.CREDIT_SCORE: (300.0, 850.0),
}
# How many columns the dashboard derives when the schema's display hints do not name them.
MAX_WHAT_IF = 4
MAX_PROFILE = 6
# A categorical column with more distinct values than this is no segment (an id, a postcode).
MAX_SEGMENT_VALUES = 20
# The customer id of the rows ``decode`` makes (and of the history held fixed with them).
_EXPLAINED = "explained"
# Text that a missing value turns into on the way through pandas, CSV or str(): never shown.
_EMPTY_TEXT = {"", "nan", "none", "null", "nat", "<na>", "?"}


class CustomerExplainer:
    """A customer's features as a float matrix, and the model's score as a function of it.

    ``background`` (default: the recommender's known customers) is what a feature is "removed"
    to: ``background_matrix()`` draws ``max_background`` of its rows with ``seed``.
    """

    def __init__(
        self,
        recommender,
        background: pd.DataFrame | None = None,
        max_background: int = 100,
        seed: int | np.random.Generator = 0,
    ):
        self.recommender = recommender
        self.pipeline = recommender.pipeline
        self.numeric = [stats.column for stats in self.pipeline.customer_numeric_]
        self.categorical = list(self.pipeline.customer_vocab_)
        self.feature_names = [*self.numeric, *self.categorical]
        self.vocab = {col: list(v) for col, v in self.pipeline.customer_vocab_.items()}
        background = recommender.known_customers if background is None else background
        # Customers who objected to profiling for marketing are no one's reference either.
        self.background = background[~self.objected(background)] if len(background) else background
        self.max_background = int(max_background)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self._background: np.ndarray | None = None
        self._id = self.pipeline.schema.customers.id
        self._history: tuple | None = None  # (customer id, history rows, reference) of the last customer

    # ------------------------------------------------------------------------ consent
    def objected(self, customers: pd.DataFrame) -> np.ndarray:
        """bool [n]: the customers who objected to profiling for marketing (schema ``consent``)."""
        return C.customer_profile(customers, self.pipeline.full_schema.customers)["objected"]

    def refuse_objected(self, customers: pd.DataFrame) -> None:
        """Raise ``FinrecError`` when any of ``customers`` objected: no explanation (SHAP profiles)."""
        if self.objected(customers).any():
            raise FinrecError(
                "the customer objected to profiling for direct marketing (GDPR Art. 21(2)); "
                "no recommendation and no explanation are produced"
            )

    # ------------------------------------------------------------------------ encoding
    def encode(self, customers: pd.DataFrame) -> np.ndarray:
        """float64 [n, F]: numerics raw (NaN when missing), categoricals as vocabulary codes."""
        n = len(customers)
        X = np.full((n, len(self.feature_names)), np.nan, dtype="float64")
        for j, col in enumerate(self.numeric):
            if col in customers:
                X[:, j] = pd.to_numeric(customers[col], errors="coerce").to_numpy(dtype="float64")
        offset = len(self.numeric)
        for j, col in enumerate(self.categorical):
            if col in customers:
                text = as_category_text(customers[col])
                X[:, offset + j] = pd.Categorical(text, categories=self.vocab[col]).codes.astype("float64") + 1
            else:
                X[:, offset + j] = 0.0
        return X

    def decode(self, X: np.ndarray) -> pd.DataFrame:
        """The customers of ``X`` as a raw customers frame (code 0 decodes to a missing value)."""
        X = np.atleast_2d(np.asarray(X, dtype="float64"))
        if X.shape[1] != len(self.feature_names):
            raise FinrecError(f"expected {len(self.feature_names)} feature columns, got {X.shape[1]}")
        columns: dict[str, object] = {self._id: np.full(len(X), _EXPLAINED, dtype=object)}
        for j, col in enumerate(self.numeric):
            columns[col] = X[:, j]
        offset = len(self.numeric)
        for j, col in enumerate(self.categorical):
            codes = np.nan_to_num(X[:, offset + j], nan=0.0)
            codes = np.clip(np.rint(codes), 0, len(self.vocab[col])).astype("int64") - 1  # -1 = missing
            columns[col] = pd.Categorical.from_codes(codes, categories=self.vocab[col])
        return pd.DataFrame(columns)

    def decode_values(self, x: np.ndarray) -> list[str]:
        """One encoded row as display text per feature (for chart labels)."""
        row = self.decode(np.atleast_2d(x)).iloc[0]
        out = []
        for col in self.feature_names:
            value = row[col]
            if value is None or (isinstance(value, float) and np.isnan(value)):
                out.append("missing")
            elif isinstance(value, (float, np.floating)):
                out.append(f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}")
            else:
                out.append(str(value))
        return out

    def value_labels(self, customers: pd.DataFrame) -> list[str]:
        """The first customer's value of each feature as display text (``decode_values``), where
        a category the model never saw, which it reads as missing, says both: "missing" alone
        hid a value the customer has."""
        x = self.encode(customers.iloc[:1])
        out = self.decode_values(x)
        offset = len(self.numeric)
        for j, col in enumerate(self.categorical):
            if x[0, offset + j] == 0 and col in customers:
                recorded = display_value(customers[col].iloc[0])
                if recorded is not None:
                    out[offset + j] = f"{recorded} (not seen in training: read as missing)"
        return out

    # ------------------------------------------------------------------------ scoring
    def holdings_row(self, holdings_ids: Iterable[str] = ()) -> np.ndarray:
        """float32 [P] multi-hot of the held products (unknown ids are refused)."""
        ids = [str(p) for p in holdings_ids]
        row = np.zeros(self.pipeline.n_products, dtype="float32")
        if ids:
            positions = self.pipeline.product_positions(ids)
            unknown = [p for p, i in zip(ids, positions) if i < 0]
            if unknown:
                raise DataError(f"holdings: unknown product id(s) {', '.join(map(repr, unknown[:5]))}")
            row[positions] = 1.0
        return row

    def history_of(self, customer_id: str | None) -> tuple[pd.DataFrame | None, int | None]:
        """(holdings_history rows, reference month) of a known customer, for a model with history
        features; (None, None) otherwise (an uploaded profile has no past, as
        ``Recommender.recommend`` scores it). The reference is the whole table's latest
        snapshot, as the recommender's known customers are scored."""
        if customer_id is None:
            return None, None
        key = str(customer_id).strip()
        cached = self._history  # read once: another session's thread may replace it meanwhile
        if cached is None or cached[0] != key:  # SHAP asks for one customer many times
            cached = (key, *self.recommender.known_history(key))
            self._history = cached
        return cached[1], cached[2]

    def embed(self, X: np.ndarray, holdings_ids: Iterable[str] = (), customer_id: str | None = None) -> np.ndarray:
        """Customer vectors for encoded rows that all hold ``holdings_ids`` (and, for a model
        with history features, all have known customer ``customer_id``'s history): float32
        [n, D], or [n, D + P] with a tree blend (``Recommender.embed``), against the
        recommender's ``product_embeddings``."""
        customers = self.decode(X)
        held = np.repeat(self.holdings_row(holdings_ids)[None, :] > 0, len(customers), axis=0)
        history, reference = self.history_of(customer_id)
        if history is not None and len(history) and len(customers):
            # History is matched to rows by id: rows sharing one id would leave all but the first
            # without it (SHAP scores many rows at once). Each row gets its own id and copy.
            ids = np.array([f"{_EXPLAINED}-{i}" for i in range(len(customers))], dtype=object)
            customers[self._id] = ids
            history = history.iloc[np.tile(np.arange(len(history)), len(customers))].assign(
                **{S.CUSTOMER_ID: np.repeat(ids, len(history))}
            )
        context = self.recommender.context(
            # Decoded from the model's own encoding: the model's columns alone, as it reads them.
            customers,
            held=held,
            history=history,
            history_reference=reference,
            adoption=False,
            validated=True,
        )
        return self.recommender.embed(context)

    def score_function(self, product_id: str, holdings_ids: Iterable[str] = (), customer_id: str | None = None):
        """``f(X [n, F]) -> [n]``: the score (cosine, or blended with the trees) of each encoded
        customer (holding ``holdings_ids``, with ``customer_id``'s history held fixed like the
        holdings: see ``embed``) for ``product_id``; vectorised over rows."""
        position = int(self.pipeline.product_positions([str(product_id)])[0])
        if position < 0:
            raise FinrecError(f"unknown product_id {product_id!r}")
        product = self.recommender.product_embeddings[position].astype("float32")
        held = tuple(str(p) for p in holdings_ids)
        self.holdings_row(held)  # refuse unknown ids now rather than inside the explainer

        def score(X: np.ndarray) -> np.ndarray:
            return (self.embed(X, held, customer_id) @ product).astype("float64")

        return score

    def background_matrix(self) -> np.ndarray:
        """Up to ``max_background`` customers of the background, encoded (drawn once, seeded)."""
        if self._background is None:
            frame = self.background
            if len(frame) == 0:
                raise FinrecError("no background customers: load the model with its customer data")
            if len(frame) > self.max_background:
                rows = np.sort(self.rng.choice(len(frame), self.max_background, replace=False))
                frame = frame.iloc[rows]
            self._background = self.encode(frame)
        return self._background

    def known_customer(self, customer_id: str) -> tuple[np.ndarray, list[str]]:
        """(encoded row [1, F], held product ids) of a customer of the recommender's data."""
        profile = self.recommender.customer_profile(customer_id)
        frame = pd.DataFrame([profile["attributes"]])
        self.refuse_objected(frame)
        return self.encode(frame), list(profile["holdings"])

    def numeric_sensitivity(self, seed: int = 0) -> pd.Series:
        """A cheap global importance of the numeric features, highest first: the mean absolute
        change of every product's score when one feature is shuffled across the background
        customers (no SHAP; one forward pass per feature). They are scored holding nothing, as
        ``score_function`` without holdings: a tree blend's weight for new customers applies."""
        X0 = self.background_matrix()
        products = np.asarray(self.recommender.product_embeddings, dtype="float32")
        base = self.embed(X0) @ products.T
        rng = np.random.default_rng(seed)
        out = {}
        for j, column in enumerate(self.numeric):
            shuffled = X0.copy()
            shuffled[:, j] = rng.permutation(shuffled[:, j])
            out[column] = float(np.abs(self.embed(shuffled) @ products.T - base).mean())
        return pd.Series(out, dtype="float64").sort_values(ascending=False, kind="stable")


def additivity_gap(base_value: float, contributions: np.ndarray, model_score: float) -> float:
    """|base + sum(contributions) - score|: 0 for an exact (efficient) attribution."""
    return float(abs(float(base_value) + float(np.sum(contributions)) - float(model_score)))


# ---------------------------------------------------------------------------------- uploads
def read_customer_upload(
    data: bytes, schema: S.DatasetSchema, name: str = "upload", max_bytes: int = MAX_UPLOAD_BYTES
) -> pd.DataFrame:
    """Validate an uploaded customers CSV held in memory; ``DataError`` names the column and row.

    The table must have the id and every column the schema names; numbers must be numbers, the
    risk tolerance an integer 1-7, and ``VALUE_RANGES`` must hold (negative income, an age outside
    18-120, ... are refused)."""
    if len(data) > max_bytes:
        raise DataError(
            f"{name}: the file is {len(data) / 1024**2:.1f} MB; uploads are limited to "
            f"{max_bytes / 1024**2:.0f} MB (score a large table with `finrec score`)"
        )
    table = schema.customers
    frame = read_csv_bytes(data, (table.id,), name)
    if len(frame) > MAX_UPLOAD_ROWS:
        raise DataError(f"{name}: {len(frame)} rows; upload at most {MAX_UPLOAD_ROWS} customer profiles at a time")
    frame = prepare_entities(frame, table, name)
    check_ranges(frame, name)
    return frame


def check_ranges(
    frame: pd.DataFrame, where: str, ranges: Mapping[str, tuple[float | None, float | None]] = VALUE_RANGES
) -> None:
    """The upload's stricter ranges (a bank customer is an adult with a credit score on the scale)."""
    check_limits(frame, ranges, where)


def _number(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(out) else out


def product_terms(product: Mapping[str, object]) -> str:
    """The contract's eligibility terms of a product in a short phrase ("" when it has none)."""
    parts = []
    income, score = _number(product.get(S.MIN_INCOME)), _number(product.get(S.MIN_CREDIT_SCORE))
    lo, hi = _number(product.get(S.MIN_AGE)), _number(product.get(S.MAX_AGE))
    if income:
        parts.append(f"income ≥ {income:,.0f}")
    if score:
        parts.append(f"credit score ≥ {score:.0f}")
    if lo or hi is not None:
        parts.append(f"age {lo or 0:.0f}–{hi:.0f}" if hi is not None else f"age ≥ {lo:.0f}")
    return "; ".join(parts)


def display_value(value, binary: bool = False) -> str | None:
    """A cell as display text, or None when it holds no value (None, NaN, "", "nan", ...)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if binary and value in (0, 1):
            return "yes" if value else "no"
        if float(value).is_integer():
            return f"{int(value):,}"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    text = str(value).strip()
    return None if text.lower() in _EMPTY_TEXT else text


@dataclass(frozen=True)
class DisplayPlan:
    """Which columns the dashboard shows for one schema, and their labels.

    ``profile`` and ``what_if`` are numeric customer features, ``segments`` categorical ones,
    ``product_name`` / ``product_details`` products columns; ``binary`` the detail columns that
    hold only 0 and 1 (shown as yes / no)."""

    profile: tuple[str, ...]
    what_if: tuple[str, ...]
    segments: tuple[str, ...]
    product_name: str | None
    product_details: tuple[str, ...]
    binary: frozenset[str]
    hints: S.DisplayHints

    def label(self, column: str) -> str:
        return self.hints.label(column)

    def title(self, product: Mapping[str, object], product_id: str) -> str:
        """A product's name, or its id when the catalogue has no name for it."""
        name = display_value(product.get(self.product_name)) if self.product_name else None
        return name or str(product_id)


def display_plan(
    recommender, ranking: Sequence[str] | None = None, max_what_if: int = MAX_WHAT_IF, max_profile: int = MAX_PROFILE
) -> DisplayPlan:
    """The columns to show for ``recommender``'s schema: its display hints where they are given,
    else derived from the data.

    ``ranking`` orders customer features by importance (global SHAP, or
    ``CustomerExplainer.numeric_sensitivity`` before SHAP is computed); the what-if sliders and the
    profile take its first numeric features, or the schema's first ones when it is None. Segments
    are the categorical features with 2 to ``MAX_SEGMENT_VALUES`` values among the customers;
    product details are the recommender's (``recommender.product_columns``)."""
    schema, hints = recommender.schema, recommender.display
    population = recommender.known_customers
    numeric = list(schema.customers.numeric_features)
    ordered = numeric if ranking is None else [c for c in dict.fromkeys(ranking) if c in numeric]
    what_if = hints.what_if if hints.what_if is not None else tuple(ordered[:max_what_if])
    if hints.profile is not None:
        profile = hints.profile
    else:  # the risk tolerance has its own gauge
        profile = tuple([c for c in ordered if c != schema.customers.risk][:max_profile])
    if hints.segments is not None:
        segments = hints.segments
    else:
        segments = tuple(
            c
            for c in schema.customers.categorical_features
            if c not in population or 2 <= population[c].nunique() <= MAX_SEGMENT_VALUES
        )
    details = tuple(recommender.detail_columns)
    binary = set()
    for column in details:
        values = [p.get(column) for p in recommender.products]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and not pd.isna(v)]
        if numbers and len(numbers) == sum(v is not None for v in values) and set(numbers) <= {0, 1}:
            binary.add(column)
    return DisplayPlan(
        profile=tuple(profile),
        what_if=tuple(what_if),
        segments=tuple(segments),
        product_name=recommender.name_column,
        product_details=details,
        binary=frozenset(binary),
        hints=hints,
    )


def product_fields(product: Mapping[str, object], plan: DisplayPlan, schema: S.DatasetSchema) -> list[tuple[str, str]]:
    """(label, text) of each detail of a product that has a value, for its card. The category
    (the card's caption) and the eligibility terms (``product_terms``) are left out."""
    out = []
    skip = {schema.products.category, *(S.MIN_INCOME, S.MIN_CREDIT_SCORE, S.MIN_AGE, S.MAX_AGE)}
    for column in plan.product_details:
        if column in skip:
            continue
        text = display_value(product.get(column), binary=column in plan.binary)
        if text is None:
            continue
        if column == schema.products.risk:
            text = f"{text} / {S.RISK_MAX}"
        out.append((plan.label(column), text))
    return out


def suitability_applies(schema: S.DatasetSchema) -> bool:
    """Suitability compares the product's risk level with the customer's tolerance: both needed."""
    return bool(schema.products.risk and schema.customers.risk)


def recommendations_table(result, plan: DisplayPlan, schema: S.DatasetSchema, tolerance) -> pd.DataFrame:
    """One row per recommended product: rank, id, name, score, the plan's product details, the
    eligibility terms and the suitability badge when they apply, and the filters' reason.
    Detail columns that none of the products has are left out; in a column that some have, the
    others read "—"."""
    risk_col = schema.products.risk
    rows = []
    for item in result.items:
        product = item.product
        row = {"rank": item.rank, schema.products.id: item.product_id}
        if plan.product_name:
            row[plan.product_name] = plan.title(product, item.product_id)
        row["score"] = round(item.score, 4)
        for column in plan.product_details:
            value = product.get(column)
            row[column] = None if display_value(value) is None else value
        row["terms"] = product_terms(product)
        # A regime names its own rule (target market, affordability); else the risk-tolerance badge.
        badge = regime_badge(getattr(item, "regime", None), _unassessed(result, item))
        if badge or suitability_applies(schema):
            row["suitability"] = badge or suitability_badge(product.get(risk_col), tolerance)
        row["reason"] = item.reason
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in [*plan.product_details, "terms"]:
        if column not in table:
            continue
        text = table[column].map(lambda v, c=column: display_value(v, binary=c in plan.binary))
        if text.isna().all():
            table = table.drop(columns=[column])
        elif text.isna().any():  # a grid shows a missing cell as "None": say "—" instead
            table[column] = text.fillna("—")
    return table


# ---------------------------------------------------------------------------------- what-if
@dataclass(frozen=True)
class SliderSpec:
    """A what-if slider for one numeric customer column; ``value`` is its starting position."""

    column: str
    label: str
    low: float
    high: float
    value: float
    step: float
    integer: bool


def _nice_step(span: float) -> float:
    """1, 2 or 5 times a power of ten, about a hundredth of ``span``."""
    raw = max(span / 100.0, 1e-9)
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def slider_spec(
    column: str, value, population: pd.DataFrame, schema: S.DatasetSchema, label: str | None = None
) -> SliderSpec:
    """The range of a what-if slider: the customers' 1st to 99th percentile (widened to hold
    ``value``, kept within the column's plausible limits), integer steps for integer columns
    and the 1-7 scale for the risk tolerance; a missing ``value`` starts at the median."""
    label = label or S.DisplayHints().label(column)
    current = display_value(value)
    current = None if current is None else float(value)
    if column == schema.customers.risk:
        start = int(round(current)) if current is not None else S.RISK_MIN
        return SliderSpec(column, label, S.RISK_MIN, S.RISK_MAX, min(max(start, S.RISK_MIN), S.RISK_MAX), 1, True)
    base = pd.Series(dtype="float64")
    if column in population:
        base = pd.to_numeric(population[column], errors="coerce").astype("float64")
        base = base[np.isfinite(base)]
    if len(base):
        low, high, middle = float(base.quantile(0.01)), float(base.quantile(0.99)), float(base.median())
        integer = bool((base == np.round(base)).all())
    else:
        middle = current if current is not None else 0.0
        low, high = min(0.0, 2 * middle), max(0.0, 2 * middle, 1.0)
        integer = current is None or float(current).is_integer()
    limit_low, limit_high = plausible_limits(schema.customers).get(column, (None, None))
    if limit_low is not None:
        low = max(low, limit_low)
    if limit_high is not None:
        high = min(high, limit_high)
    start = current if current is not None else middle
    low, high = min(low, start), max(high, start)
    if high <= low:
        high = low + 1.0
    step = _nice_step(high - low)
    if integer:
        step = max(1.0, round(step))
        start = float(round(start)) if current is None else start
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step
    if integer and float(start).is_integer():
        return SliderSpec(column, label, int(low), int(high), int(start), int(step), True)
    return SliderSpec(column, label, float(low), float(high), float(start), float(step), False)


# ---------------------------------------------------------------------------------- profile views
def percentile_ranks(population: pd.DataFrame, values: Mapping[str, object], columns: Sequence[str]) -> pd.DataFrame:
    """For each column: the value and its percentile in ``population`` (share of customers with
    a lower value plus half the ties, in %; NaN when the value is missing)."""
    rows = []
    for column in columns:
        if column not in population:
            continue
        base = pd.to_numeric(population[column], errors="coerce").dropna().to_numpy(dtype="float64")
        value = pd.to_numeric(pd.Series([values.get(column)]), errors="coerce").iloc[0]
        if np.isnan(value) or len(base) == 0:
            pct = np.nan
        else:
            pct = 100.0 * ((base < value).sum() + 0.5 * (base == value).sum()) / len(base)
        rows.append({"feature": column, "value": value, "percentile": pct})
    return pd.DataFrame(rows, columns=["feature", "value", "percentile"])


def regime_badge(regime: str | None, unassessed: str | None = None) -> str | None:
    """The badge of a product the risk-tolerance test does not apply to (None: it applies).
    ``unassessed``: what the affordability rule did not check for this credit product, if any."""
    if regime == "credit":
        if unassessed:
            return f"ℹ️ Credit: {unassessed}"
        return "✅ Affordable (credit: assessed on debt service, not risk tolerance)"
    if regime in ("deposit", "insurance", "other"):
        return f"✅ Eligible ({regime}: eligibility terms only)"
    return None


def _unassessed(result, item) -> str | None:
    """What the affordability rule did not check for credit product ``item`` (None: it judged
    it). The badge said "Affordable" for every credit product, also where no rule had looked at
    debt service (a schema without a credit payment; a compliance tester, 2026-12)."""
    rules = getattr(result, "rules", None)
    if rules is None:  # a result from before the rules were listed: as the badge always said
        return None
    if "affordability" not in rules:
        filters = getattr(result, "filters", None)
        if filters is not None and not getattr(filters, "affordability", True):
            return "affordability not assessed (the affordability rule is turned off in these filters)"
        return "affordability not assessed (no monthly payment or credit score cut-off to check)"
    if F.AFFORDABILITY_NOT_ASSESSED in (item.reason or ""):
        return F.AFFORDABILITY_NOT_ASSESSED
    return None


def suitability_badge(risk_level, tolerance) -> str:
    if risk_level is None or pd.isna(risk_level):
        return "ℹ️ No risk level recorded"
    risk = int(risk_level)
    if tolerance is None or pd.isna(tolerance):
        return f"⚠️ Risk {risk}: no risk tolerance recorded"
    tol = int(tolerance)
    if risk <= tol:
        return f"✅ Suitable: risk {risk} ≤ tolerance {tol}"
    return f"⛔ Unsuitable: risk {risk} > tolerance {tol}"


def rank_changes(before: Sequence[str], after: Sequence[str]) -> list[str]:
    """For each product of ``after``: ``new``, ``=`` or ``▲n`` / ``▼n`` against its rank in ``before``."""
    where = {pid: i for i, pid in enumerate(before)}
    marks = []
    for i, pid in enumerate(after):
        if pid not in where:
            marks.append("🆕 new")
        elif where[pid] == i:
            marks.append("=")
        elif where[pid] > i:
            marks.append(f"▲{where[pid] - i}")
        else:
            marks.append(f"▼{i - where[pid]}")
    return marks


@dataclass
class EmbeddingProjection:
    """2-D PCA of the product embeddings (numpy SVD); customers are projected the same way."""

    mean: np.ndarray
    components: np.ndarray  # [2, D]
    explained: np.ndarray  # share of variance of the two axes

    @classmethod
    def fit(cls, embeddings: np.ndarray) -> EmbeddingProjection:
        E = np.asarray(embeddings, dtype="float64")
        mean = E.mean(axis=0)
        _, s, vt = np.linalg.svd(E - mean, full_matrices=False)
        k = min(2, vt.shape[0])
        components = np.zeros((2, E.shape[1]))
        components[:k] = vt[:k]
        var = s**2
        explained = np.zeros(2)
        explained[:k] = var[:k] / var.sum() if var.sum() > 0 else 0.0
        return cls(mean, components, explained)

    def transform(self, X: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(np.asarray(X, dtype="float64")) - self.mean) @ self.components.T


def nearest_products(
    customer_embedding: np.ndarray, product_embeddings: np.ndarray, product_ids: Sequence[str], k: int = 10
) -> pd.DataFrame:
    """The ``k`` products with the highest score for the customer (any eligibility): the cosine
    similarity, or with a tree blend the blended score (both vectors from ``Recommender.embed``
    and ``Recommender.product_embeddings``)."""
    scores = np.asarray(product_embeddings, dtype="float64") @ np.asarray(customer_embedding, dtype="float64").ravel()
    order = np.argsort(-scores, kind="stable")[:k]
    return pd.DataFrame({S.PRODUCT_ID: [product_ids[i] for i in order], "score": scores[order]})


__all__ = [
    "CustomerExplainer",
    "DisplayPlan",
    "EmbeddingProjection",
    "SliderSpec",
    "additivity_gap",
    "check_ranges",
    "display_plan",
    "display_value",
    "nearest_products",
    "percentile_ranks",
    "product_fields",
    "product_terms",
    "rank_changes",
    "read_customer_upload",
    "recommendations_table",
    "slider_spec",
    "suitability_applies",
    "suitability_badge",
    "load_shap",
    "MAX_UPLOAD_BYTES",
    "VALUE_RANGES",
]


_SHAP_IMPORT = threading.Lock()


def load_shap():
    """The ``shap`` module, imported on first use (an optional dependency) with numba's JIT off.

    SHAP compiles its numba kernels on the first explanation in every process: 11 s on an idle
    2-core machine, up to a minute on a busy one. Interpreted, the same kernels explain one customer
    in about 15 ms and a 200-row global view in about 1.5 s (4x the compiled speed): a dashboard
    session or a report never explains enough rows to repay the compile. ``FINREC_SHAP_JIT=1``
    keeps the JIT for long batch explanation jobs. Numba reads the switch when shap's kernels are
    decorated, at shap's import, and it is restored at once so no other numba user is affected.
    """
    with _SHAP_IMPORT:  # two dashboard sessions' first explanations must not interleave the switch
        if "shap" not in sys.modules and os.environ.get("FINREC_SHAP_JIT", "0") != "1":
            import numba

            # The tree blend's loop is decorated at its import: first, or a thread scoring
            # meanwhile would get it interpreted for the whole process.
            import finrec.training.forest_walk  # noqa: F401

            previous = numba.config.DISABLE_JIT
            numba.config.DISABLE_JIT = True
            try:
                import shap
            finally:
                numba.config.DISABLE_JIT = previous
        import shap

    return shap


def permutation_shap(score, x: np.ndarray, background: np.ndarray, max_evals: int | None = None) -> np.ndarray:
    """SHAP values float [n, F] of ``score`` (``f(X [n, F]) -> [n]``) at the rows ``x``, by SHAP's
    ``PermutationExplainer`` against ``background`` (the validation report's global view)."""
    shap = load_shap()
    evals = max_evals if max_evals is not None else 2 * x.shape[1] + 1
    return np.asarray(shap.PermutationExplainer(score, background)(x, max_evals=evals, silent=True).values)
