"""The compliance rules per product regime, as pure numpy functions over raw columns.

finrec applies these rules as masks before the top K (``finrec.recommend.filters``); the
synthetic bank uses the same functions so that its true adoption process respects them. Both
read the columns a ``schema.yaml`` names (``finrec.data.schema``): none is required, and a rule
whose columns are absent does not run.

Regimes (``products: {regime: COLUMN, regimes: {your_label: investment, ...}}``):

- ``investment`` (MiFID II Art. 25(2), ESMA35-43-1163 / ESMA35-43-620): the product's risk level
  against the customer's risk tolerance (``suitability``), the manufacturer's target market
  (``target_market``) and negative target market (``negative_target_market``);
- ``credit`` (EU Consumer Credit Directive, creditworthiness): ``affordability`` only, never the
  risk level;
- ``deposit``, ``insurance``, ``other``: the eligibility terms only (``min_income`` ...).

Scales: ``knowledge`` (knowledge and experience) and ``loss_capacity`` (ability to bear losses)
are ordinal levels, higher = more (the synthetic bank: knowledge 1 basic, 2 informed, 3 advanced;
loss capacity 1 no capital loss, 2 limited loss, 3 loss of the capital, 4 loss beyond it);
``horizon`` is in years; ``objective`` and ``client_type`` are labels. A product's list terms
(``objectives`` ...) are labels separated by ``|``; an empty cell sets no term. Labels are
trimmed and compared without regard to case ("Growth " is "growth").

A customer value that is unknown (missing) cannot show that the customer is inside a target
market, outside a negative one, or able to afford a credit: each of those rules excludes the
product then. (The eligibility terms are the opposite: an unknown value fails no term, the bank
checks it at application; ``finrec.recommend.filters``.)

Shapes: customer arrays [n], product arrays [P], masks bool [n, P], True = excluded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from finrec.data import schema as S
from finrec.data import validate as V
from finrec.data.categories import as_category_text, category_text
from finrec.errors import DataError

LIST_SEPARATOR = "|"
# A common supervisory ceiling on debt service to income (several EU macroprudential DSTI limits
# sit at 40-50%); a bank sets its own through ``Filters.max_debt_service_ratio``.
DEFAULT_MAX_DEBT_SERVICE_RATIO = 0.40
# Target-market terms compared as customer value >= product minimum.
MINIMUM_TERMS = ("knowledge", "loss_capacity", "horizon")
# Terms whose product cell lists the labels a customer's value must be among.
LIST_TERMS = ("objectives", "client_types")
# Negative target market: the customer is in it when their label is listed ...
NEGATIVE_LIST_TERMS = ("negative_objectives", "negative_client_types")
# ... or their level is at or below the product's value.
NEGATIVE_MAXIMUM_TERMS = ("negative_knowledge", "negative_loss_capacity")
NUMERIC_PROFILE = ("knowledge", "loss_capacity", "horizon", "debt_service")
LABEL_PROFILE = ("objective", "client_type")


def objected(values: pd.Series, where: str) -> np.ndarray:
    """bool [n]: True where the customer objected to profiling for marketing (GDPR Art. 21(2)).

    ``false``/``0``/``no`` = objected; ``true``/``1``/``yes`` and a missing value = no objection
    on record. Anything else is refused, naming the column and a row (``V.false_flags``)."""
    return V.false_flags(values, where)


def label_sets(values: Iterable) -> list[frozenset[str] | None]:
    """``"growth|income"`` -> {"growth", "income"}; a missing or empty cell -> None (no term)."""
    out: list[frozenset[str] | None] = []
    for value in values:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            out.append(None)
            continue
        labels = frozenset(part.strip() for part in str(value).split(LIST_SEPARATOR) if part.strip())
        out.append(labels or None)
    return out


@dataclass(frozen=True)
class LabelTerm:
    """A list term of every product, ready for fast membership tests: ``table[code, p]`` is True
    when label ``code`` is listed by product p (the last row: a label no product lists, or an
    unknown one); ``stated[p]`` is True when p sets the term at all; ``shown[code]``: the label
    as the products' table first writes it (one spelling per label, whichever product wrote it).

    Labels match without regard to case (``vocabulary`` keys are casefolded): a customer table
    exported as "Speculation" was in no negative target market listing "speculation", the
    product offered, and outside every positive one that lists it (a compliance tester, 2026-12).
    A bank's label codes never tell two meanings apart by case alone."""

    vocabulary: dict[str, int]
    table: np.ndarray  # bool [L + 1, P]
    stated: np.ndarray  # bool [P]
    shown: tuple[str, ...] = ()

    @classmethod
    def from_cells(cls, cells: Iterable) -> LabelTerm:
        sets = label_sets(cells)
        first: dict[str, str] = {}
        for labels in sets:
            for label in sorted(labels or ()):
                first.setdefault(label.casefold(), label)
        vocabulary = {key: i for i, key in enumerate(sorted(first))}
        table = np.zeros((len(vocabulary) + 1, len(sets)), dtype=bool)
        for j, labels in enumerate(sets):
            for label in labels or ():
                table[vocabulary[label.casefold()], j] = True
        shown = tuple(first[key] for key in vocabulary)
        return cls(vocabulary, table, np.array([s is not None for s in sets], dtype=bool), shown)

    def code(self, value) -> int:
        """The row of ``table`` for one customer label (the last row when unlisted or unknown)."""
        return (
            self.vocabulary.get(value.casefold(), len(self.vocabulary))
            if isinstance(value, str)
            else len(self.vocabulary)
        )

    def listed(self, column: int) -> list[str]:
        """The labels product ``column`` lists (each as ``shown``), sorted."""
        return sorted(self.shown[i] for i in np.flatnonzero(self.table[:-1, column]))

    def contains(self, values, columns: np.ndarray | None = None) -> np.ndarray:
        """bool [n, P]: customer label ``values[i]`` is listed by product p (False when unknown);
        with ``columns`` (product positions), bool [n, len(columns)] for those products only.
        ``values``: an array of labels, or the ``Labels`` of one."""
        table = self.table if columns is None else self.table[:, columns]
        if not isinstance(values, Labels) and len(values) <= _FEW:
            # A request: dict lookups (hashing through pandas costs more than the whole rule).
            codes = np.fromiter((self.code(v) for v in values), dtype=np.intp, count=len(values))
            return table[codes]
        labels = Labels.of(values)
        # Each distinct label is looked up once; a missing one (code -1) takes the last entry.
        lookup = np.fromiter((self.code(u) for u in labels.uniques), dtype=np.intp, count=len(labels.uniques))
        return table[np.append(lookup, len(self.vocabulary))[labels.codes]]


_FEW = 64


@dataclass(frozen=True)
class Labels:
    """A column of customer labels hashed once (``pd.factorize``): ``codes`` intp [n] into
    ``uniques``, -1 where missing. The rules that read one column twice (listed, unknown) share it:
    hashing a million strings is the costly part of a target-market check."""

    codes: np.ndarray
    uniques: np.ndarray

    @classmethod
    def of(cls, values) -> Labels:
        if isinstance(values, Labels):
            return values
        codes, uniques = pd.factorize(np.asarray(values, dtype=object))
        return cls(np.asarray(codes, dtype=np.intp), np.asarray(uniques, dtype=object))

    def unknown(self) -> np.ndarray:
        """bool [n]: missing, or not text (labels are text; anything else counts as unknown)."""
        text = np.fromiter((isinstance(u, str) for u in self.uniques), dtype=bool, count=len(self.uniques))
        return ~np.append(text, False)[self.codes]


def regimes_of(labels: pd.Series, mapping: dict[str, str], where: str) -> np.ndarray:
    """[P] canonical regime per product: the label itself when it is one of ``S.REGIMES``, else
    ``mapping[label]``. An unmapped label is refused (a typo must not silently skip a rule)."""
    text = labels.astype(object).where(labels.notna(), None)
    out = []
    for i, label in enumerate(text):
        label = None if label is None else str(label)
        regime = mapping.get(label, label) if label is not None else None
        if regime not in S.REGIMES:
            raise DataError(
                f"{where}: column '{labels.name}' row {i + 1}: regime label {label!r} is not one of "
                f"{', '.join(S.REGIMES)} and schema.yaml's 'regimes' does not map it"
            )
        out.append(regime)
    return np.array(out, dtype=object)


def _unknown(values) -> np.ndarray:
    """bool [n]: the label is missing (labels are text; anything else counts as unknown)."""
    if not isinstance(values, Labels) and len(values) <= _FEW:
        return np.fromiter((not isinstance(v, str) for v in values), dtype=bool, count=len(values))
    return Labels.of(values).unknown()


def outside_target_market(customer: dict[str, np.ndarray], terms: dict, applies: np.ndarray) -> np.ndarray:
    """bool [n, P]: the customer is outside product p's (positive) target market.

    ``terms``: term -> float [P] (NaN = not set) for the level terms, ``LabelTerm`` for the list
    terms. For each term the product sets (and only for products where ``applies``)::

        knowledge_c < knowledge_p,  loss_capacity_c < loss_capacity_p,  horizon_c < horizon_p,
        objective_c not in objectives_p,  client_type_c not in client_types_p

    any of which (or an unknown customer value) puts the customer outside."""
    out, cols = _on_applying(_rows(customer), applies)
    sub = np.zeros((len(out), len(cols)), dtype=bool)
    for term in MINIMUM_TERMS:
        if term in terms:
            minimum = terms[term][cols]
            value = customer[term][:, None]
            sub |= ~np.isnan(minimum)[None, :] & (np.isnan(value) | (value < minimum[None, :]))
    for term in LIST_TERMS:
        if term in terms:
            term_ = terms[term]
            sub |= term_.stated[cols][None, :] & ~term_.contains(customer[S.TARGET_MARKET_KEYS[term]], cols)
    out[:, cols] = sub
    return out


def in_negative_target_market(customer: dict[str, np.ndarray], terms: dict, applies: np.ndarray) -> np.ndarray:
    """bool [n, P]: the customer is in product p's negative target market::

        objective_c in negative_objectives_p,  client_type_c in negative_client_types_p,
        knowledge_c <= negative_knowledge_p,   loss_capacity_c <= negative_loss_capacity_p

    (an unknown customer value counts as in it, for a product that sets that term)."""
    out, cols = _on_applying(_rows(customer), applies)
    sub = np.zeros((len(out), len(cols)), dtype=bool)
    for term in NEGATIVE_LIST_TERMS:
        if term in terms:
            term_ = terms[term]
            values = customer[S.TARGET_MARKET_KEYS[term]]
            if len(values) > _FEW:
                values = Labels.of(values)  # hashed once for both tests
            sub |= term_.contains(values, cols) | (term_.stated[cols][None, :] & _unknown(values)[:, None])
    for term in NEGATIVE_MAXIMUM_TERMS:
        if term in terms:
            maximum = terms[term][cols]
            value = customer[S.TARGET_MARKET_KEYS[term]][:, None]
            sub |= ~np.isnan(maximum)[None, :] & (np.isnan(value) | (value <= maximum[None, :]))
    out[:, cols] = sub
    return out


def debt_service_ratio_after(income: np.ndarray, debt_service: np.ndarray, payment: np.ndarray) -> np.ndarray:
    """float [n, P]: ``12 * (debt_service_c + payment_p) / income_c``: the share of yearly income
    that would go to debt service after taking product p (monthly amounts, yearly income). NaN
    when income or debt service is unknown, +inf when income is not positive."""
    # In place in one [n, P] buffer (a plan checks a million customers): the same operations.
    ratio = np.add(debt_service[:, None], payment[None, :], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.multiply(12.0, ratio, out=ratio)
        np.divide(ratio, income[:, None], out=ratio)
    unusable = ~(income > 0)
    ratio[unusable] = np.where(np.isnan(income[unusable]), np.nan, np.inf)[:, None]
    return ratio


def unaffordable(
    income: np.ndarray,
    debt_service: np.ndarray | None,
    credit_score: np.ndarray,
    payment: np.ndarray | None,
    applies: np.ndarray,
    max_ratio: float | None,
    cutoff: float | None,
) -> np.ndarray:
    """bool [n, P]: credit product p fails the creditworthiness assessment for customer c::

        12 * (debt_service_c + payment_p) / income_c > max_ratio     (when p states a payment)
        credit_score_c < cutoff                                       (when a cut-off is set)

    an unknown income, debt service or credit score fails the part that needs it."""
    out, cols = _on_applying(len(income), applies)
    sub = np.zeros((len(out), len(cols)), dtype=bool)
    if max_ratio is not None and payment is not None and debt_service is not None:
        ratio = debt_service_ratio_after(income, debt_service, payment[cols])
        stated = ~np.isnan(payment[cols])[None, :]
        sub |= stated & (np.isnan(ratio) | (ratio > max_ratio))
    if cutoff is not None:
        sub |= (np.isnan(credit_score) | (credit_score < cutoff))[:, None]
    out[:, cols] = sub
    return out


def _rows(customer: dict[str, np.ndarray]) -> int:
    return len(next(iter(customer.values())))


def _on_applying(n: int, applies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The all-False bool [n, P] mask and the positions of the products a rule applies to: the
    rules compute on those columns only (a batch of a million customers, a few products each)."""
    return np.zeros((n, len(applies)), dtype=bool), np.flatnonzero(applies)


def numeric_columns(table: S.TableSchema) -> dict[str, str]:
    """Column -> role of the compliance columns that hold numbers (levels, years, amounts)."""
    out = {column: role for role, column in table.profile if role in NUMERIC_PROFILE}
    out.update(
        {
            column: term
            for term, column in table.target_market
            if term in MINIMUM_TERMS or term in NEGATIVE_MAXIMUM_TERMS
        }
    )
    if table.credit_payment:
        out[table.credit_payment] = "credit_payment"
    return out


# Roles whose values are amounts or durations, never negative.
_NON_NEGATIVE = {"horizon", "debt_service", "credit_payment"}


def prepare(df: pd.DataFrame, table: S.TableSchema, where: str) -> pd.DataFrame:
    """Type and check a table's compliance columns: numbers where a number is expected (missing
    stays NaN), amounts and horizons at least 0, consent values readable, regime labels mapped.
    Called by ``finrec.data.io.prepare_entities`` after the feature columns."""
    numeric = numeric_columns(table)
    if not numeric and not table.consent and not table.regime:
        return df
    df = V.coerce_numeric(df, [c for c in numeric if c not in table.numeric_features], where)
    V.check_limits(df, {c: (0.0, None) for c, role in numeric.items() if role in _NON_NEGATIVE}, where)
    if table.consent:
        objected(df[table.consent], where)
    if table.regime:
        regimes_of(df[table.regime], dict(table.regime_labels), where)
    return df


# --------------------------------------------------------------------------------------------
# Reading the columns a schema names


def product_terms(products: pd.DataFrame, table: S.TableSchema) -> dict:
    """Target-market term -> float [P] (NaN = not set) or ``LabelTerm``, in ``products`` order."""
    terms: dict = {}
    for term, column in table.target_market:
        if term in LIST_TERMS or term in NEGATIVE_LIST_TERMS:
            terms[term] = LabelTerm.from_cells(products[column].astype(object).where(products[column].notna(), None))
        else:
            terms[term] = pd.to_numeric(products[column], errors="coerce").to_numpy(dtype="float64")
    return terms


def product_regimes(products: pd.DataFrame, table: S.TableSchema) -> np.ndarray | None:
    """[P] canonical regime per product, or None when the schema names no regime column."""
    if not table.regime:
        return None
    return regimes_of(products[table.regime], dict(table.regime_labels), f"{S.PRODUCTS}.{table.regime}")


def product_payments(products: pd.DataFrame, table: S.TableSchema) -> np.ndarray | None:
    """float [P] monthly payment each credit product adds (NaN = not stated), or None."""
    if not table.credit_payment:
        return None
    return pd.to_numeric(products[table.credit_payment], errors="coerce").to_numpy(dtype="float64")


def _column_labels(column: pd.Series) -> np.ndarray:
    """object [n]: each label as category text (a label column of codes read as float, 4.0, still
    says "4": ``finrec.data.categories``), None where missing."""
    # as_category_text hashes each distinct value once; a rule applied value by value cost batch
    # scoring a tenth of its time. A copy: a text column comes back as the caller's own array.
    labels = as_category_text(column).to_numpy(dtype=object, copy=True)
    labels[pd.isna(labels)] = None
    # Trimmed as the products' list cells are (``label_sets``), in Arrow: "income " is "income",
    # and a blank label is unknown. Untrimmed, a padded label was in no negative target market
    # (a compliance tester, 2026-12).
    text = pa.array(labels, type=pa.string(), from_pandas=True)
    trimmed = pc.utf8_trim_whitespace(text)
    if trimmed.equals(text) and not pc.any(pc.equal(text, "")).as_py():
        return labels
    trimmed = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)
    return trimmed.to_numpy(zero_copy_only=False).astype(object)


def _label(value) -> str | None:
    """One customer label as ``_column_labels`` reads it: category text, trimmed; blank = None."""
    text = category_text(value)
    return (text.strip() or None) if text is not None else None


def customer_profile(customers: pd.DataFrame, table: S.TableSchema, where: str = S.CUSTOMERS) -> dict[str, np.ndarray]:
    """The customer side of the rules: float [n] per numeric role (NaN = unknown or not named),
    object [n] per label role (None = unknown), and ``objected`` bool [n]."""
    n = len(customers)
    named = dict(table.profile)
    out: dict[str, np.ndarray] = {}
    for role in NUMERIC_PROFILE:
        column = named.get(role)
        if column and column in customers:
            out[role] = pd.to_numeric(customers[column], errors="coerce").to_numpy(dtype="float64")
        else:
            out[role] = np.full(n, np.nan)
    for role in LABEL_PROFILE:
        column = named.get(role)
        out[role] = (
            _column_labels(customers[column]) if column and column in customers else np.full(n, None, dtype=object)
        )
    if table.consent and table.consent in customers:
        out["objected"] = objected(customers[table.consent], where)
    else:
        out["objected"] = np.zeros(n, dtype=bool)
    return out


def record_profile(record: dict, table: S.TableSchema) -> dict[str, np.ndarray]:
    """``customer_profile`` of one customer given as a dict keyed by column name (values already
    checked; see ``check_record``)."""
    named = dict(table.profile)
    out: dict[str, np.ndarray] = {}
    for role in NUMERIC_PROFILE:
        value = record.get(named[role]) if role in named else None
        out[role] = np.array([np.nan if value is None else float(value)])
    for role in LABEL_PROFILE:
        value = record.get(named[role]) if role in named else None
        out[role] = np.array([_label(value)], dtype=object)
    consent = record.get(table.consent) if table.consent else None
    out["objected"] = np.array([consent is not None and str(consent).strip().lower() in V.FALSE_WORDS])
    return out


def check_record(features: dict, table: S.TableSchema) -> dict:
    """The compliance values of a customer given as raw features, checked: numbers for the
    numeric roles (at least 0 for amounts and horizons), text for labels, true/false or 1/0 for
    consent. Messages name the field, never the value."""
    import math

    named = dict(table.profile)
    out: dict = {}
    for role, column in named.items():
        value = features.get(column)
        if value is None:
            continue
        if role in NUMERIC_PROFILE:
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float, np.integer, np.floating))
                or not math.isfinite(float(value))
            ):
                raise DataError(f"features.{column} must be a finite number")
            if role in _NON_NEGATIVE and value < 0:
                raise DataError(f"features.{column} must be at least 0")
            out[column] = float(value)
        else:
            if isinstance(value, (dict, list, tuple)):
                raise DataError(f"features.{column} must be a single value")
            out[column] = str(value)
    if table.consent and features.get(table.consent) is not None:
        value = features[table.consent]
        word = str(value).strip().lower() if isinstance(value, (str, bool, int, float, np.generic)) else None
        if word not in V.FALSE_WORDS and word not in V.TRUE_WORDS:
            raise DataError(f"features.{table.consent} must be true/false or 1/0")
        out[table.consent] = value
    return out


def without_objections(dataset):
    """(the ``finrec.data.io.Dataset`` without the customers who objected to profiling for
    marketing, how many were left out). GDPR Art. 21(3): their data is no longer processed for
    that purpose, so a marketing model is not trained on it either."""
    table = dataset.schema.customers
    if not table.consent:
        return dataset, 0
    objected_rows = objected(dataset.customers[table.consent], f"{S.CUSTOMERS}.{table.consent}")
    if not objected_rows.any():
        return dataset, 0
    keep = dataset.customers[table.id][~objected_rows]
    return dataset.subset_customers(keep), int(objected_rows.sum())
