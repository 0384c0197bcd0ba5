"""Which products may be shown to which customer, applied as masks before top-K.

Rules, in the order an exclusion is attributed (the first rule that removes a product names it):

0. ``consent``: the customer objected to profiling for marketing (GDPR Art. 21(2)); every
   product, always (not a filter a caller can turn off);
   ``discontinued``: a product of the model's catalogue that the data's products table no
   longer lists, or lists as not on offer (the schema's ``products.on_offer`` column false:
   withdrawn, while customers still hold it) (``current_products``); always, too;
1. ``held``: the customer already holds the product (on by default);
2. ``suitability``: product risk level above the customer's risk tolerance (MiFID II / PRIIPs
   SRI 1-7; on by default; a customer with no recorded tolerance is treated as 1, the most
   cautious). A preset can tighten it, never loosen it;
3. ``risk_cap``: the preset's ceiling (``conservative``: risk level at most 3);
4. ``target_market`` / ``negative_target_market``: outside the product's target market, or in
   its negative target market (``finrec.data.compliance``);
5. ``affordability``: a credit product whose debt service to income after the new credit is
   above ``max_debt_service_ratio``, or a credit score below ``credit_score_cutoff``;
6. ``category``: not among the included categories, or among the excluded ones;
7. ``income`` / ``credit_score`` / ``age``: the product's eligibility terms
   (``min_income``, ``min_credit_score``, ``min_age``, ``max_age``) when both tables have them.

When the schema names a product ``regime`` column, rules 2-4 apply to ``investment`` products
only and rule 5 to ``credit`` products only (deposits, insurance and the rest: eligibility
terms). Without it, rules 2-3 apply to every product, as before regimes existed.

Shapes: customer columns are [n]; product attributes [P]; every mask is bool [n, P], True =
excluded.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from finrec.data import compliance as C
from finrec.data import schema as S
from finrec.data import validate as V
from finrec.errors import DataError, FinrecError, reject_unknown, safe_items, safe_text

RULES = (
    "consent",
    "discontinued",
    "held",
    "suitability",
    "risk_cap",
    "target_market",
    "negative_target_market",
    "affordability",
    "category",
    "income",
    "credit_score",
    "age",
)
CONSERVATIVE_MAX_RISK = 3
DEFAULT_MAX_DEBT_SERVICE_RATIO = C.DEFAULT_MAX_DEBT_SERVICE_RATIO
CONSENT_MESSAGE = (
    "the customer objected to profiling for direct marketing (GDPR Art. 21(2)); no personalised recommendation is made"
)


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
    target_market: bool = True
    affordability: bool = True
    max_debt_service_ratio: float = DEFAULT_MAX_DEBT_SERVICE_RATIO
    credit_score_cutoff: float | None = None

    @classmethod
    def build(cls, value: Filters | dict | str | None = None) -> Filters:
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
        # None is a setting not given, for every field (a JSON null, an unset field): it turned a
        # switch off, and was refused for the debt-service limit (a tester).
        values = {key: v for key, v in value.items() if v is not None}
        base = preset(values.pop("preset")) if values.get("preset") else cls()
        for key in _SWITCHES:
            if key in values:
                if not isinstance(values[key], (bool, np.bool_)):
                    # "no" is truthy: the rule stayed on while the caller meant it off (the API is strict).
                    raise FinrecError(f"filters.{key} must be true or false, got {safe_text(values[key], quote=True)}")
                values[key] = bool(values[key])
        for key in ("include_categories", "exclude_categories"):
            if key in values:
                given = values[key]
                # One category named alone is that category, not its letters.
                values[key] = (given,) if isinstance(given, str) else tuple(given)
        both = set(map(str, values.get("include_categories", ()))) & set(map(str, values.get("exclude_categories", ())))
        if both:
            # Each such category was dropped, and with it every product: 0 recommendations, exit 0.
            raise FinrecError(
                f"filters: {safe_items(sorted(both))} both included (include_categories) and excluded "
                "(exclude_categories); name a category in one of them"
            )
        # (A "max_risk": null is no ceiling given, not the preset's lifted: a conservative request
        # with it was answered with risk 7 funds.)
        max_risk = values.get("max_risk")
        if isinstance(max_risk, np.integer):
            max_risk = values["max_risk"] = int(max_risk)
        if max_risk is not None and (
            isinstance(max_risk, bool) or not isinstance(max_risk, int) or not S.RISK_MIN <= max_risk <= S.RISK_MAX
        ):
            raise FinrecError(
                f"filters.max_risk must be an integer from {S.RISK_MIN} to {S.RISK_MAX}, got {max_risk!r}"
            )
        if max_risk is not None and base.max_risk is not None and max_risk > base.max_risk:
            # A preset's ceiling is its meaning ("conservative: risk level at most 3"); raised, the
            # answer and its record said "conservative" over risk 7 funds (a compliance tester).
            raise FinrecError(
                f"filters.max_risk {max_risk} is above the {base.preset} preset's ceiling {base.max_risk}; "
                "a preset can be tightened, never loosened (choose another preset to allow more risk)"
            )
        ratio = _finite(values.get("max_debt_service_ratio", base.max_debt_service_ratio))
        if ratio is None or not 0 < ratio <= 5:
            raise FinrecError(
                "filters.max_debt_service_ratio must be a number in (0, 5] (0.4 = 40% of income), got "
                f"{safe_text(values.get('max_debt_service_ratio'), quote=True)}"
            )
        if "max_debt_service_ratio" in values and type(values["max_debt_service_ratio"]) not in (int, float):
            values["max_debt_service_ratio"] = ratio  # a numpy number as Python's
        if "credit_score_cutoff" in values:
            cutoff = _finite(values["credit_score_cutoff"])
            if cutoff is None:
                raise FinrecError(
                    f"filters.credit_score_cutoff must be a finite number, got "
                    f"{safe_text(values['credit_score_cutoff'], quote=True)}"
                )
            if type(values["credit_score_cutoff"]) not in (int, float):
                values["credit_score_cutoff"] = cutoff
        return replace(base, **values)


# The rules a request can switch off (``Filters`` fields that are True by default).
_SWITCHES = ("exclude_held", "suitability", "eligibility", "target_market", "affordability")


def loosened(filters: Filters, floor: Filters | None = None) -> list[str]:
    """What ``filters`` allows that ``floor`` (default: ``Filters()``, every rule on at its
    default limit) does not, one phrase each; [] when ``filters`` is at least as strict.

    A rule switched off, a limit raised (``max_debt_service_ratio``) or dropped (``max_risk``,
    ``credit_score_cutoff``), a category ``floor`` excludes no longer excluded, or one outside
    ``floor``'s ``include_categories`` let in. ``finrec serve --enforce-rules`` refuses a request
    whose filters loosen anything: its callers may tighten the bank's rules, never relax them."""
    floor = Filters() if floor is None else floor
    out = [f"{name} turned off" for name in _SWITCHES if getattr(floor, name) and not getattr(filters, name)]
    if filters.max_debt_service_ratio > floor.max_debt_service_ratio:
        # Enough digits that a limit just above reads as above (0.4000001, not "0.4 above 0.4").
        ratio, limit = filters.max_debt_service_ratio, floor.max_debt_service_ratio
        out.append(f"max_debt_service_ratio {ratio:.12g} above {limit:.12g}")
    if floor.max_risk is not None and filters.max_risk is None:
        out.append(f"max_risk ceiling {floor.max_risk} dropped")
    elif floor.max_risk is not None and filters.max_risk > floor.max_risk:
        out.append(f"max_risk {filters.max_risk} above {floor.max_risk}")
    if floor.credit_score_cutoff is not None and filters.credit_score_cutoff is None:
        out.append(f"credit_score_cutoff {floor.credit_score_cutoff:g} dropped")
    elif floor.credit_score_cutoff is not None and filters.credit_score_cutoff < floor.credit_score_cutoff:
        out.append(f"credit_score_cutoff {filters.credit_score_cutoff:g} below {floor.credit_score_cutoff:g}")
    let_in = sorted(set(floor.exclude_categories) - set(filters.exclude_categories))
    if let_in:
        out.append(f"exclude_categories no longer excludes {safe_items(let_in)}")
    if floor.include_categories and not filters.include_categories:
        out.append("include_categories dropped (every category let in)")
    elif floor.include_categories:
        outside = sorted(set(filters.include_categories) - set(floor.include_categories))
        if outside:
            out.append(f"include_categories lets in {safe_items(outside)}")
    return out


def _finite(value) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None: a 400-digit
    integer raised numpy's TypeError (a 500 from the API, a tester)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


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
# How ``finrec evaluate`` ranks: held products out, no other rule (the target-market and
# affordability rules, added after it, had been left on: `score --unfiltered` then differed from
# evaluate's ranking, found by a tester). Consent is no filter setting: objectors are never scored.
UNFILTERED = Filters(suitability=False, eligibility=False, target_market=False, affordability=False)
DEFAULT_PRESET = "balanced"
PRESET_HELP = (
    f"conservative: risk level at most {CONSERVATIVE_MAX_RISK}; balanced (the default) and risk_tolerant: "
    "the customer's own tolerance; every preset keeps risk within the customer's tolerance"
)


@dataclass
class Catalogue:
    """The product attributes the filters read, in catalogue order ([P] arrays)."""

    product_ids: np.ndarray
    risk: np.ndarray | None
    category: np.ndarray | None
    terms: dict[str, np.ndarray] = field(default_factory=dict)
    regime: np.ndarray | None = None  # [P] canonical regime (``S.REGIMES``), None without a regime column
    target_market: dict = field(default_factory=dict)  # term -> float [P] or ``LabelTerm``
    payment: np.ndarray | None = None  # [P] monthly payment of a credit product (NaN = not stated)
    discontinued: np.ndarray | None = None  # bool [P]: not in the data's products table; None: all listed
    # bool [P]: those of ``discontinued`` the table lists as not on offer (for the reason's words)
    withdrawn: np.ndarray | None = None

    @classmethod
    def from_products(
        cls,
        products: pd.DataFrame,
        schema: S.DatasetSchema,
        product_ids: list[str],
        discontinued: tuple[str, ...] = (),
        withdrawn: tuple[str, ...] = (),
    ) -> Catalogue:
        table = products.set_index(products[schema.products.id].astype(str)).loc[product_ids]
        p = schema.products
        # A product with no stated term sets no bar: missing minimums are -inf, maximums +inf.
        unset = {S.MIN_INCOME: -np.inf, S.MIN_CREDIT_SCORE: -np.inf, S.MIN_AGE: -np.inf, S.MAX_AGE: np.inf}
        terms = {c: _filled(table[c].to_numpy(dtype="float64"), fill) for c, fill in unset.items() if c in table}
        banded = {
            column: TERM_VALUES[TERM_RULES[column]]
            for column, values in terms.items()
            if np.isfinite(values).any() and TERM_VALUES[TERM_RULES[column]] in schema.customers.categorical_features
        }
        if banded:
            # "50+" read as a number is unknown, and an unknown value fails no term: every band
            # would pass an 18+ product's minimum.
            column, customer_column = next(iter(banded.items()))
            raise DataError(
                f"products: column '{column}' sets a bar on the customers' '{customer_column}', which the schema "
                f"lists as categorical (bands cannot be compared with a number); list '{customer_column}' under "
                f"customers' numeric columns, or leave '{column}' empty"
            )
        return cls(
            product_ids=np.asarray(product_ids, dtype=object),
            risk=table[p.risk].to_numpy(dtype="float64") if p.risk else None,
            category=table[p.category].astype(str).to_numpy() if p.category else None,
            terms=terms,
            regime=C.product_regimes(table, p),
            target_market=C.product_terms(table, p),
            payment=C.product_payments(table, p),
            discontinued=np.isin(np.asarray(product_ids, dtype=object), list(discontinued)) if discontinued else None,
            withdrawn=np.isin(np.asarray(product_ids, dtype=object), list(withdrawn)) if withdrawn else None,
        )

    def regime_is(self, regime: str) -> np.ndarray:
        """bool [P]: products of ``regime``; without a regime column every product counts as any
        regime, except that only products stating a payment count as credit."""
        if self.regime is not None:
            return self.regime == regime
        if regime == "credit":
            return ~np.isnan(self.payment) if self.payment is not None else np.zeros(len(self.product_ids), bool)
        return np.ones(len(self.product_ids), dtype=bool)

    @property
    def categories(self) -> list[str]:
        return sorted(set(self.category)) if self.category is not None else []


def check_categories(catalogue: Catalogue, filters: Filters) -> None:
    """Refuse a category filter that names no category of the catalogue, or any without a
    category column: a typo (``--category morgage``) excluded every product (a plan of 0 offers,
    exit 0) or, excluded, none, and without the column the filter was skipped."""
    for key in ("include_categories", "exclude_categories"):
        names = getattr(filters, key)
        if not names:
            continue
        if catalogue.category is None:
            raise FinrecError(
                f"filters.{key}: the products have no category column to filter by (products.category in schema.yaml)"
            )
        known = catalogue.categories
        unknown = [str(name) for name in names if str(name) not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0][:100], known, n=1)
            hint = f" (did you mean {safe_text(close[0], quote=True)}?)" if close else ""
            raise FinrecError(
                f"filters.{key}: unknown product categor{'y' if len(unknown) == 1 else 'ies'} "
                f"{safe_items(unknown)}{hint}; the catalogue's: {safe_items(known, 20, quote=False)}"
            )


# The eligibility terms and the rule each feeds (``exclusion_masks``).
TERM_RULES = {S.MIN_INCOME: "income", S.MIN_CREDIT_SCORE: "credit_score", S.MIN_AGE: "age", S.MAX_AGE: "age"}


@dataclass(frozen=True)
class CatalogueChanges:
    """How the data's products table (``source``) differs from the model's catalogue, by id."""

    source: str
    # The model's products never offered: those the table lacks and those it marks not on offer.
    discontinued: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()  # the table's products the model lacks: cannot be scored
    withdrawn: tuple[str, ...] = ()  # those of ``discontinued`` the table lists as not on offer
    on_offer: str | None = None  # the column that marks them

    def notes(self) -> list[str]:
        """One sentence per kind of difference (none when the table lists the model's products)."""
        notes = []
        missing = tuple(p for p in self.discontinued if p not in self.withdrawn)
        if missing:
            notes.append(
                f"{self.source}: {len(missing)} product(s) of the model are not in this products table "
                f"({safe_items(missing)}): taken as discontinued, never offered"
            )
        if self.withdrawn:
            notes.append(
                f"{self.source}: {len(self.withdrawn)} product(s) are marked not on offer in column "
                f"{safe_text(self.on_offer, quote=True)} ({safe_items(self.withdrawn)}): discontinued, never offered"
            )
        if self.unknown:
            notes.append(
                f"{self.source}: {len(self.unknown)} product(s) are not in the model's catalogue "
                f"({safe_items(self.unknown)}): they cannot be scored and are left out; to offer them, retrain on "
                "data whose products table has them (a product nobody has adopted yet ranks by its attributes)"
            )
        return notes

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "discontinued": list(self.discontinued),
            "unknown": list(self.unknown),
            "withdrawn": list(self.withdrawn),
        }


def current_products(
    model_products: pd.DataFrame,
    products: pd.DataFrame,
    schema: S.DatasetSchema,
    product_ids: list[str],
    source,
    on_offer: str | None = None,
) -> tuple[pd.DataFrame, CatalogueChanges]:
    """The model's products (``product_ids``) with the attributes of the data's validated
    ``products`` table read from ``source``, and how the two differ. The bank's current table
    wins: a rule must never run on a risk level or a minimum the bank has since changed. A term
    column the model's catalogue has must still be there, or its rule would silently stop.

    ``on_offer``: the column of the data's schema (``products.on_offer``) that marks a product the
    bank withdrew while customers still hold it: discontinued, as one the table lacks."""
    gone = [c for c in TERM_RULES if c in model_products and c not in products]
    if gone:
        raise DataError(
            f"{source}: no column {safe_items(gone)}, which the {TERM_RULES[gone[0]]} rule reads (the model's "
            "catalogue has it); add it to the products table (an empty cell sets no bar for that product)"
        )
    key = schema.products.id
    listed = products[key].astype(str)
    known = set(product_ids)
    present = set(listed)
    off = V.withdrawn(products, replace(schema.products, on_offer=on_offer), str(source))
    withdrawn = set(listed[off])
    absent = tuple(p for p in product_ids if p not in present)
    unknown = tuple(p for p in listed if p not in known and p not in withdrawn)  # not on offer: no loss
    table = products[listed.isin(known).to_numpy()]
    if absent:
        # The model's own row only holds the product's place: the discontinued rule excludes it.
        old = model_products[model_products[key].astype(str).isin(absent).to_numpy()]
        table = pd.concat([table, old], ignore_index=True)
    marked = tuple(p for p in product_ids if p in withdrawn)
    discontinued = tuple(p for p in product_ids if p not in present or p in withdrawn)
    return table, CatalogueChanges(str(source), discontinued, unknown, marked, on_offer if marked else None)


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
        **C.customer_profile(customers, schema.customers),
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
        **C.record_profile(record, schema.customers),
    }


def exclusion_masks(
    attributes: dict[str, np.ndarray], held: np.ndarray, catalogue: Catalogue, filters: Filters
) -> dict[str, np.ndarray]:
    """bool [n, P] per rule (True = excluded by that rule); rules that do not apply are absent."""
    masks: dict[str, np.ndarray] = {}
    objected = attributes.get("objected")
    if objected is not None and objected.any():
        masks["consent"] = np.broadcast_to(objected[:, None], held.shape)
    if catalogue.discontinued is not None and catalogue.discontinued.any():
        masks["discontinued"] = np.broadcast_to(catalogue.discontinued, held.shape)
    if filters.exclude_held:
        masks["held"] = held
    investment = catalogue.regime_is("investment")
    if catalogue.risk is not None:
        tolerance = _filled(attributes["risk_tolerance"], S.RISK_MIN)[:, None]
        if filters.suitability:
            masks["suitability"] = (catalogue.risk[None, :] > tolerance) & investment[None, :]
        if filters.max_risk is not None:
            masks["risk_cap"] = np.broadcast_to((catalogue.risk > filters.max_risk) & investment, held.shape)
    if filters.target_market and catalogue.target_market:
        outside = C.outside_target_market(attributes, catalogue.target_market, investment)
        if outside.any() or len(outside) == 1:
            masks["target_market"] = outside
        negative = C.in_negative_target_market(attributes, catalogue.target_market, investment)
        if negative.any() or len(negative) == 1:
            masks["negative_target_market"] = negative
    if filters.affordability and (catalogue.payment is not None or filters.credit_score_cutoff is not None):
        masks["affordability"] = C.unaffordable(
            attributes[S.INCOME],
            attributes.get("debt_service"),
            attributes[S.CREDIT_SCORE],
            catalogue.payment,
            catalogue.regime_is("credit"),
            filters.max_debt_service_ratio,
            filters.credit_score_cutoff,
        )
    check_categories(catalogue, filters)
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


def describe_exclusion(
    rule: str,
    attributes: dict[str, np.ndarray],
    catalogue: Catalogue,
    row: int,
    column: int,
    filters: Filters | None = None,
) -> str:
    """A sentence for an auditor (``filters``: the limits applied, for the affordability rule)."""
    tolerance = attributes["risk_tolerance"][row]
    if rule == "consent":
        return "the customer objected to profiling for direct marketing"
    if rule == "discontinued":
        if catalogue.withdrawn is not None and catalogue.withdrawn[column]:
            return "marked not on offer in the data's products table (discontinued)"
        return "no longer in the data's products table (discontinued)"
    if rule in ("target_market", "negative_target_market"):
        return _describe_target_market(rule, attributes, catalogue, row, column)
    if rule == "affordability":
        return _describe_affordability(attributes, catalogue, row, column, filters)
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


def describe_allowed(
    attributes: dict[str, np.ndarray], catalogue: Catalogue, masks: dict[str, np.ndarray], row: int, column: int
) -> str:
    """Why a recommended product passed every active rule."""
    parts = []
    investment = catalogue.regime is None or catalogue.regime[column] == "investment"
    if catalogue.regime is not None:
        parts.append(f"{catalogue.regime[column]} product")
    if "suitability" in masks and investment:
        parts.append(f"risk {int(catalogue.risk[column])} within tolerance {_fmt(attributes['risk_tolerance'][row])}")
    if "risk_cap" in masks and investment:
        parts.append("within the preset's risk ceiling")
    if "target_market" in masks and investment and _sets_target_market(catalogue, column):
        parts.append("inside the target market")
    if "negative_target_market" in masks and investment and _sets_target_market(catalogue, column):
        parts.append("outside the negative target market")
    if "affordability" in masks and catalogue.regime_is("credit")[column]:
        parts.append(_affordability_text(attributes, catalogue, row, column, passed=True))
    terms = [name for name in ("income", "credit_score", "age") if name in masks]
    # An unknown value fails no term (the bank checks it at application): "meets" would claim a
    # check that was not made.
    unknown = [name for name in terms if _term_unchecked(attributes, catalogue, name, row, column)]
    met = [name for name in terms if name not in unknown]
    if met:
        parts.append("meets the " + ", ".join(t.replace("_", " ") for t in met) + " terms")
    if unknown:
        words = ", ".join(t.replace("_", " ") for t in unknown)
        parts.append(f"{words} unknown: the {words} terms are checked at application")
    if "category" in masks:
        parts.append("matches the chosen categories")
    if "held" in masks:
        parts.append("not already held")
    return "; ".join(parts) if parts else "no filters applied"


_TERM_BOUNDS = {"income": (S.MIN_INCOME,), "credit_score": (S.MIN_CREDIT_SCORE,), "age": (S.MIN_AGE, S.MAX_AGE)}
# The customer column each eligibility term reads.
TERM_VALUES = {"income": S.INCOME, "credit_score": S.CREDIT_SCORE, "age": S.AGE}


def _term_unchecked(attributes: dict, catalogue: Catalogue, name: str, row: int, column: int) -> bool:
    """Whether the product sets a bar on ``name`` (income, credit score, age) that the customer's
    unknown value was let through (a minimum of 0 bars none of these non-negative values)."""
    values = attributes.get(TERM_VALUES[name])
    if values is None or not np.isnan(values[row]):
        return False
    for bound in _TERM_BOUNDS[name]:
        limit = catalogue.terms[bound][column] if bound in catalogue.terms else np.nan
        if np.isfinite(limit) and (bound == S.MAX_AGE or limit > 0):
            return True
    return False


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "unknown"
    value = float(value)
    if not np.isfinite(value):
        return "no limit"
    return f"{value:,.0f}" if value.is_integer() or abs(value) >= 100 else f"{value:.2f}"


def _sets_target_market(catalogue: Catalogue, column: int) -> bool:
    for term in catalogue.target_market.values():
        if isinstance(term, C.LabelTerm) and term.stated[column]:
            return True
        if isinstance(term, np.ndarray) and not np.isnan(term[column]):
            return True
    return False


_TERM_WORDS = {
    "knowledge": "knowledge and experience",
    "loss_capacity": "loss capacity",
    "horizon": "horizon (years)",
    "objective": "objective",
    "client_type": "client type",
}


def _describe_target_market(
    rule: str, attributes: dict[str, np.ndarray], catalogue: Catalogue, row: int, column: int
) -> str:
    """Which target-market term failed, for an auditor (the first failing term)."""
    one = {name: values[row : row + 1] for name, values in attributes.items()}
    applies = np.zeros(len(catalogue.product_ids), dtype=bool)
    applies[column] = True
    check = C.outside_target_market if rule == "target_market" else C.in_negative_target_market
    for term, values in catalogue.target_market.items():
        if check(one, {term: values}, applies)[0, column]:
            role = S.TARGET_MARKET_KEYS[term]
            customer = attributes[role][row]
            shown = customer if isinstance(customer, str) else _fmt(customer)
            if isinstance(values, C.LabelTerm):
                listed = values.listed(column)
                relation = "is listed in" if rule == "negative_target_market" else "is not among"
                return f"{_TERM_WORDS[role]} {shown} {relation} {'|'.join(listed)}"
            bound = _fmt(values[column])
            if rule == "negative_target_market":
                return f"{_TERM_WORDS[role]} {shown} is at or below the negative target market's {bound}"
            return f"{_TERM_WORDS[role]} {shown} is below the target market's minimum {bound}"
    return rule.replace("_", " ")


def _ratio(attributes: dict[str, np.ndarray], catalogue: Catalogue, row: int, column: int) -> float:
    """Debt service to income after product ``column`` (NaN when not computable, or when the
    caller kept only some attributes: a campaign plan's reasons carry the risk tolerance alone)."""
    income, debt = attributes.get(S.INCOME), attributes.get("debt_service")
    if catalogue.payment is None or income is None or debt is None or np.isnan(catalogue.payment[column]):
        return float("nan")
    return float(
        C.debt_service_ratio_after(income[row : row + 1], debt[row : row + 1], catalogue.payment[column : column + 1])[
            0, 0
        ]
    )


# The reason of a credit product that states no monthly payment: no debt-service ratio was
# computed, so "affordable" would claim a check that was not made (a compliance tester, 2026-12).
AFFORDABILITY_NOT_ASSESSED = "debt service not assessed (no monthly payment stated)"


def _affordability_text(
    attributes: dict[str, np.ndarray], catalogue: Catalogue, row: int, column: int, passed: bool
) -> str:
    if passed and (catalogue.payment is None or np.isnan(catalogue.payment[column])):
        return AFFORDABILITY_NOT_ASSESSED
    ratio = _ratio(attributes, catalogue, row, column)
    if np.isnan(ratio):
        return "affordable" if passed else "credit score below the cut-off"
    return f"debt service to income after this credit {ratio:.1%}" + (" within the limit" if passed else "")


def _describe_affordability(
    attributes: dict[str, np.ndarray], catalogue: Catalogue, row: int, column: int, filters: Filters | None
) -> str:
    limits = filters or Filters()
    stated = catalogue.payment is not None and not np.isnan(catalogue.payment[column])
    ratio = _ratio(attributes, catalogue, row, column)
    if stated and np.isnan(ratio):
        return "affordability cannot be assessed: income or current debt service is not on record"
    if stated and ratio > limits.max_debt_service_ratio:
        return (
            f"debt service to income after this credit {ratio:.1%} is above the limit "
            f"{limits.max_debt_service_ratio:.0%}"
        )
    score = attributes[S.CREDIT_SCORE][row]
    return f"credit score {_fmt(score)} is below the cut-off {_fmt(limits.credit_score_cutoff)}"
