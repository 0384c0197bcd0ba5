"""Which products may be shown to which customer, applied as masks before top-K.

Rules, in the order an exclusion is attributed (the first rule that removes a product names it):

1. ``held``: the customer already holds the product (on by default);
2. ``suitability``: product risk level above the customer's risk tolerance (MiFID II / PRIIPs
   SRI 1-7; on by default; a customer with no recorded tolerance is treated as 1, the most
   cautious). A preset can tighten it, never loosen it;
3. ``risk_cap``: the preset's ceiling (``conservative``: risk level at most 3);
4. ``category``: not among the included categories, or among the excluded ones;
5. ``income`` / ``credit_score`` / ``age``: the product's eligibility terms
   (``min_income``, ``min_credit_score``, ``min_age``, ``max_age``) when both tables have them.

Shapes: customer columns are [n]; product attributes [P]; every mask is bool [n, P], True =
excluded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from finrec.data import schema as S
from finrec.errors import FinrecError, reject_unknown

RULES = ("held", "suitability", "risk_cap", "category", "income", "credit_score", "age")
CONSERVATIVE_MAX_RISK = 3


@dataclass(frozen=True)
class Filters:
    """Filter settings. ``exclude_held`` and ``suitability`` are on unless turned off explicitly."""

    exclude_held: bool = True
    suitability: bool = True
    max_risk: int | None = None
    include_categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    eligibility: bool = True
    preset: str | None = None

    @classmethod
    def build(cls, value: "Filters | dict | str | None" = None) -> "Filters":
        """From a ``Filters``, a preset name, or a dict such as ``{"preset": "conservative",
        "include_categories": ["investment_fund"]}`` (unknown keys are refused)."""
        if value is None:
            return cls()
        if isinstance(value, Filters):
            return value
        if isinstance(value, str):
            return preset(value)
        if not isinstance(value, dict):
            raise FinrecError(f"filters: expected a mapping or a preset name, got {type(value).__name__}")
        reject_unknown(value, cls.__dataclass_fields__, "filters")
        values = dict(value)
        base = preset(values.pop("preset")) if values.get("preset") else cls()
        for key in ("include_categories", "exclude_categories"):
            if key in values:
                values[key] = tuple(values[key] or ())
        max_risk = values.get("max_risk")
        if max_risk is not None and (not isinstance(max_risk, int) or not S.RISK_MIN <= max_risk <= S.RISK_MAX):
            raise FinrecError(f"filters.max_risk must be an integer from {S.RISK_MIN} to {S.RISK_MAX}, got {max_risk!r}")
        return replace(base, **values)


def preset(name: str) -> Filters:
    """The filters of a named preset (``PRESETS``)."""
    if name not in PRESETS:
        raise FinrecError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


# The presets every entry point offers (CLI choices, API, dashboard), defined here only.
PRESETS: dict[str, Filters] = {
    "balanced": Filters(preset="balanced"),
    "conservative": Filters(max_risk=CONSERVATIVE_MAX_RISK, preset="conservative"),
    "risk_tolerant": Filters(preset="risk_tolerant"),
}
PRESET_NAMES = tuple(PRESETS)
# How ``finrec evaluate`` ranks: held products out, no suitability or eligibility rule.
UNFILTERED = Filters(suitability=False, eligibility=False)
DEFAULT_PRESET = "balanced"
PRESET_HELP = (f"conservative: risk level at most {CONSERVATIVE_MAX_RISK}; balanced (the default) and risk_tolerant: "
               "the customer's own tolerance; every preset keeps risk within the customer's tolerance")


@dataclass
class Catalogue:
    """The product attributes the filters read, in catalogue order ([P] arrays)."""

    product_ids: np.ndarray
    risk: np.ndarray | None
    category: np.ndarray | None
    terms: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_products(cls, products: pd.DataFrame, schema: S.DatasetSchema, product_ids: list[str]) -> "Catalogue":
        table = products.set_index(products[schema.products.id].astype(str)).loc[product_ids]
        p = schema.products
        # A product with no stated term sets no bar: missing minimums are -inf, maximums +inf.
        unset = {S.MIN_INCOME: -np.inf, S.MIN_CREDIT_SCORE: -np.inf, S.MIN_AGE: -np.inf, S.MAX_AGE: np.inf}
        terms = {c: _filled(table[c].to_numpy(dtype="float64"), fill) for c, fill in unset.items() if c in table}
        return cls(
            product_ids=np.asarray(product_ids, dtype=object),
            risk=table[p.risk].to_numpy(dtype="float64") if p.risk else None,
            category=table[p.category].astype(str).to_numpy() if p.category else None,
            terms=terms,
        )

    @property
    def categories(self) -> list[str]:
        return sorted(set(self.category)) if self.category is not None else []


def customer_attributes(customers: pd.DataFrame, schema: S.DatasetSchema) -> dict[str, np.ndarray]:
    """The raw customer columns the rules compare with ([n] float arrays, NaN when unknown)."""
    n = len(customers)

    def column(name: str | None) -> np.ndarray:
        if name and name in customers:
            return pd.to_numeric(customers[name], errors="coerce").to_numpy(dtype="float64")
        return np.full(n, np.nan)

    return {
        "risk_tolerance": column(schema.customers.risk),
        S.INCOME: column(S.INCOME),
        S.CREDIT_SCORE: column(S.CREDIT_SCORE),
        S.AGE: column(S.AGE),
    }


def record_attributes(record: dict[str, Any], schema: S.DatasetSchema) -> dict[str, np.ndarray]:
    """``customer_attributes`` for one customer given as a dict of already-checked values."""

    def value(name: str | None) -> np.ndarray:
        raw = record.get(name) if name else None
        return np.array([np.nan if raw is None else float(raw)])

    return {
        "risk_tolerance": value(schema.customers.risk),
        S.INCOME: value(S.INCOME),
        S.CREDIT_SCORE: value(S.CREDIT_SCORE),
        S.AGE: value(S.AGE),
    }


def exclusion_masks(attributes: dict[str, np.ndarray], held: np.ndarray, catalogue: Catalogue, filters: Filters) -> dict[str, np.ndarray]:
    """bool [n, P] per rule (True = excluded by that rule); rules that do not apply are absent."""
    masks: dict[str, np.ndarray] = {}
    if filters.exclude_held:
        masks["held"] = held
    if catalogue.risk is not None:
        tolerance = _filled(attributes["risk_tolerance"], S.RISK_MIN)[:, None]
        if filters.suitability:
            masks["suitability"] = catalogue.risk[None, :] > tolerance
        if filters.max_risk is not None:
            masks["risk_cap"] = np.broadcast_to(catalogue.risk[None, :] > filters.max_risk, held.shape)
    if catalogue.category is not None and (filters.include_categories or filters.exclude_categories):
        bad = np.zeros(len(catalogue.category), dtype=bool)
        if filters.include_categories:
            bad |= ~np.isin(catalogue.category, list(filters.include_categories))
        if filters.exclude_categories:
            bad |= np.isin(catalogue.category, list(filters.exclude_categories))
        masks["category"] = np.broadcast_to(bad, held.shape)
    if filters.eligibility:
        # A customer value that is unknown fails no term: the bank checks it at application.
        def below(value: np.ndarray, minimum: np.ndarray) -> np.ndarray:
            return _filled(value, np.inf)[:, None] < minimum[None, :]

        if S.MIN_INCOME in catalogue.terms:
            masks["income"] = below(attributes[S.INCOME], catalogue.terms[S.MIN_INCOME])
        if S.MIN_CREDIT_SCORE in catalogue.terms:
            masks["credit_score"] = below(attributes[S.CREDIT_SCORE], catalogue.terms[S.MIN_CREDIT_SCORE])
        age = attributes[S.AGE]
        age_bad = np.zeros(held.shape, dtype=bool)
        if S.MIN_AGE in catalogue.terms:
            age_bad |= below(age, catalogue.terms[S.MIN_AGE])
        if S.MAX_AGE in catalogue.terms:
            age_bad |= _filled(age, -np.inf)[:, None] > catalogue.terms[S.MAX_AGE][None, :]
        if S.MIN_AGE in catalogue.terms or S.MAX_AGE in catalogue.terms:
            masks["age"] = age_bad
    return masks


def _filled(values: np.ndarray, fill: float) -> np.ndarray:
    """``values`` with NaN replaced (np.nan_to_num is ~10x slower on the few-element arrays of a request)."""
    return np.where(np.isnan(values), fill, values)


def combine(masks: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    excluded = np.zeros(shape, dtype=bool)
    for mask in masks.values():
        excluded |= mask
    return excluded


def first_reason(masks: dict[str, np.ndarray], row: int, column: int) -> str | None:
    """The first rule (in ``RULES`` order) that excludes product ``column`` for customer ``row``."""
    for rule in RULES:
        if rule in masks and masks[rule][row, column]:
            return rule
    return None


def describe_exclusion(rule: str, attributes: dict[str, np.ndarray], catalogue: Catalogue, row: int, column: int) -> str:
    """A sentence for an auditor."""
    tolerance = attributes["risk_tolerance"][row]
    if rule == "held":
        return "already held"
    if rule == "suitability":
        return f"risk level {int(catalogue.risk[column])} is above the customer's risk tolerance {_fmt(tolerance)}"
    if rule == "risk_cap":
        return f"risk level {int(catalogue.risk[column])} is above the preset's ceiling"
    if rule == "category":
        return f"category {catalogue.category[column]!r} is filtered out"
    if rule == "income":
        return f"income {_fmt(attributes[S.INCOME][row])} is below the minimum {_fmt(catalogue.terms[S.MIN_INCOME][column])}"
    if rule == "credit_score":
        return f"credit score {_fmt(attributes[S.CREDIT_SCORE][row])} is below the minimum {_fmt(catalogue.terms[S.MIN_CREDIT_SCORE][column])}"
    if rule == "age":
        lo = catalogue.terms.get(S.MIN_AGE, np.array([np.nan] * len(catalogue.product_ids)))[column]
        hi = catalogue.terms.get(S.MAX_AGE, np.array([np.nan] * len(catalogue.product_ids)))[column]
        return f"age {_fmt(attributes[S.AGE][row])} is outside {_fmt(lo)}-{_fmt(hi)}"
    return rule


def describe_allowed(attributes: dict[str, np.ndarray], catalogue: Catalogue, masks: dict[str, np.ndarray], row: int, column: int) -> str:
    """Why a recommended product passed every active rule."""
    parts = []
    if "suitability" in masks:
        parts.append(f"risk {int(catalogue.risk[column])} within tolerance {_fmt(attributes['risk_tolerance'][row])}")
    if "risk_cap" in masks:
        parts.append("within the preset's risk ceiling")
    terms = [name for name in ("income", "credit_score", "age") if name in masks]
    if terms:
        parts.append("meets the " + ", ".join(t.replace("_", " ") for t in terms) + " terms")
    if "category" in masks:
        parts.append("matches the chosen categories")
    if "held" in masks:
        parts.append("not already held")
    return "; ".join(parts) if parts else "no filters applied"


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "unknown"
    value = float(value)
    if not np.isfinite(value):
        return "no limit"
    return f"{value:,.0f}" if value.is_integer() or abs(value) >= 100 else f"{value:.2f}"
