"""Explanations and the views the dashboard builds on them (no shap, no streamlit here).

``CustomerExplainer`` exposes a customer's raw features as one flat float matrix so that a
model-agnostic explainer (SHAP's ``PermutationExplainer``) can perturb them:

>>> explainer = CustomerExplainer(recommender)
>>> x = explainer.encode(customers_frame.iloc[[0]])                 # float [1, F]
>>> f = explainer.score_function("P_FUND_BAL", holdings_ids=["P_CURRENT"])
>>> f(x)                                                             # cosine similarity [1]

Categoricals are encoded as their vocabulary code (``0`` = missing or unseen, the model's
out-of-vocabulary slot; ``i`` = the ``i``-th vocabulary entry), numerics stay raw (NaN allowed:
the pipeline imputes it). The holdings are held fixed: they are the context of the explanation,
not one of its features.

The rest of the module is the dashboard's logic in testable form: reading an uploaded customer
CSV in memory, percentile ranks against the customer base, the suitability badge, rank changes
between two top-K lists and the 2-D projection of the embedding space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from finrec.data import compliance as C
from finrec.data import schema as S
from finrec.data.io import prepare_entities, read_csv_bytes
from finrec.data.validate import check_limits
from finrec.errors import DataError, FinrecError
from finrec.features import HOLDINGS_INPUT

# Uploads are small profiles typed in or exported by an adviser, never a customer base.
MAX_UPLOAD_BYTES = 1024 * 1024
MAX_UPLOAD_ROWS = 1000
# Plausibility ranges of customer columns when the table has them: (minimum, maximum), inclusive.
VALUE_RANGES: dict[str, tuple[float | None, float | None]] = {
    S.INCOME: (0.0, None),
    S.AGE: (18.0, 120.0),
    S.CREDIT_SCORE: (300.0, 850.0),
}
# Customer columns shown as percentile bars, when the schema has them (the synthetic bank names
# the last three; other schemas fall back to their first numeric columns).
PROFILE_COLUMNS = S.SYNTHETIC.customer_profile
DIGITAL_ENGAGEMENT = S.SYNTHETIC.digital_engagement
SEGMENT_COLUMNS = S.SYNTHETIC.customer_segments
# Product detail columns of the synthetic catalogue shown on the recommendation cards.
NAME, YIELD, DURATION = S.SYNTHETIC.product_name, S.SYNTHETIC.product_yield, S.SYNTHETIC.product_duration
FEE, DIGITAL_ONLY = S.SYNTHETIC.product_fee, S.SYNTHETIC.product_digital


class CustomerExplainer:
    """A customer's features as a float matrix, and the model's score as a function of it.

    ``background`` (default: the recommender's known customers) is what a feature is "removed"
    to: ``background_matrix()`` draws ``max_background`` of its rows with ``seed``.
    """

    def __init__(self, recommender, background: pd.DataFrame | None = None, max_background: int = 100,
                 seed: int | np.random.Generator = 0):
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

    # ------------------------------------------------------------------------ consent
    def objected(self, customers: pd.DataFrame) -> np.ndarray:
        """bool [n]: the customers who objected to profiling for marketing (schema ``consent``)."""
        return C.customer_profile(customers, self.pipeline.full_schema.customers)["objected"]

    def refuse_objected(self, customers: pd.DataFrame) -> None:
        """Raise ``FinrecError`` when any of ``customers`` objected: no explanation (SHAP profiles)."""
        if self.objected(customers).any():
            raise FinrecError("the customer objected to profiling for direct marketing (GDPR Art. 21(2)); "
                              "no recommendation and no explanation are produced")

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
                text = customers[col].map(lambda v: None if pd.isna(v) else str(v))
                X[:, offset + j] = pd.Categorical(text, categories=self.vocab[col]).codes.astype("float64") + 1
            else:
                X[:, offset + j] = 0.0
        return X

    def decode(self, X: np.ndarray) -> pd.DataFrame:
        """The customers of ``X`` as a raw customers frame (code 0 decodes to a missing value)."""
        X = np.atleast_2d(np.asarray(X, dtype="float64"))
        if X.shape[1] != len(self.feature_names):
            raise FinrecError(f"expected {len(self.feature_names)} feature columns, got {X.shape[1]}")
        columns: dict[str, object] = {self._id: np.full(len(X), "explained", dtype=object)}
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

    def embed(self, X: np.ndarray, holdings_ids: Iterable[str] = ()) -> np.ndarray:
        """Customer embeddings float32 [n, D] for encoded rows that all hold ``holdings_ids``."""
        inputs = self.pipeline.transform_customers(self.decode(X))
        if HOLDINGS_INPUT in inputs:
            inputs[HOLDINGS_INPUT][:] = self.holdings_row(holdings_ids)
        return self.recommender.tower(inputs)

    def score_function(self, product_id: str, holdings_ids: Iterable[str] = ()):
        """``f(X [n, F]) -> [n]``: cosine similarity of each encoded customer (holding
        ``holdings_ids``) with ``product_id``; vectorised over rows."""
        position = int(self.pipeline.product_positions([str(product_id)])[0])
        if position < 0:
            raise FinrecError(f"unknown product_id {product_id!r}")
        product = self.recommender.product_embeddings[position].astype("float32")
        held = tuple(str(p) for p in holdings_ids)
        self.holdings_row(held)  # refuse unknown ids now rather than inside the explainer

        def score(X: np.ndarray) -> np.ndarray:
            return (self.embed(X, held) @ product).astype("float64")

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


def additivity_gap(base_value: float, contributions: np.ndarray, model_score: float) -> float:
    """|base + sum(contributions) - score|: 0 for an exact (efficient) attribution."""
    return float(abs(float(base_value) + float(np.sum(contributions)) - float(model_score)))


# ---------------------------------------------------------------------------------- uploads
def read_customer_upload(data: bytes, schema: S.DatasetSchema, name: str = "upload",
                         max_bytes: int = MAX_UPLOAD_BYTES) -> pd.DataFrame:
    """Validate an uploaded customers CSV held in memory; ``DataError`` names the column and row.

    The table must have the id and every column the schema names; numbers must be numbers, the
    risk tolerance an integer 1-7, and ``VALUE_RANGES`` must hold (negative income, an age outside
    18-120, ... are refused)."""
    if len(data) > max_bytes:
        raise DataError(f"{name}: the file is {len(data) / 1024**2:.1f} MB; uploads are limited to "
                        f"{max_bytes / 1024**2:.0f} MB (score a large table with `finrec score`)")
    table = schema.customers
    frame = read_csv_bytes(data, (table.id,), name)
    if len(frame) > MAX_UPLOAD_ROWS:
        raise DataError(f"{name}: {len(frame)} rows; upload at most {MAX_UPLOAD_ROWS} customer profiles at a time")
    frame = prepare_entities(frame, table, name)
    check_ranges(frame, name)
    return frame


def check_ranges(frame: pd.DataFrame, where: str, ranges: Mapping[str, tuple[float | None, float | None]] = VALUE_RANGES) -> None:
    """The upload's stricter ranges (a bank customer is an adult with a credit score on the scale)."""
    check_limits(frame, ranges, where)


def _number(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(out) else out


def product_terms(product: Mapping[str, object]) -> str:
    """The eligibility terms and fees of a product in a short phrase."""
    parts = []
    income, score = _number(product.get(S.MIN_INCOME)), _number(product.get(S.MIN_CREDIT_SCORE))
    lo, hi = _number(product.get(S.MIN_AGE)), _number(product.get(S.MAX_AGE))
    fee, digital = _number(product.get(FEE)), _number(product.get(DIGITAL_ONLY))
    if income:
        parts.append(f"income ≥ {income:,.0f}")
    if score:
        parts.append(f"credit score ≥ {score:.0f}")
    if lo is not None or hi is not None:
        parts.append(f"age {lo or 0:.0f}–{hi:.0f}" if hi is not None else f"age ≥ {lo:.0f}")
    if fee:
        parts.append(f"fee {fee:g}/month")
    if digital:
        parts.append("digital only")
    return "; ".join(parts) or "no terms"


def duration_text(months) -> str:
    value = _number(months)
    return "open-ended" if not value else f"{value:.0f} months"


def recommendations_table(result, schema: S.DatasetSchema, tolerance) -> pd.DataFrame:
    """One row per recommended product: rank, name, category, score, risk, yield, duration,
    terms, suitability badge and the filters' reason."""
    risk_col, category_col = schema.products.risk, schema.products.category
    rows = []
    for item in result.items:
        product = item.product
        rows.append({
            "rank": item.rank,
            S.PRODUCT_ID: item.product_id,
            NAME: product.get(NAME, item.product_id),
            category_col or "category": product.get(category_col) if category_col else None,
            "score": round(item.score, 4),
            risk_col or "risk": product.get(risk_col) if risk_col else None,
            YIELD: product.get(YIELD),
            DURATION: duration_text(product.get(DURATION)),
            "terms": product_terms(product),
            "suitability": regime_badge(getattr(item, "regime", None))
            or suitability_badge(product.get(risk_col) if risk_col else None, tolerance),
            "reason": item.reason,
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- profile views
def profile_columns(schema: S.DatasetSchema, preferred: Sequence[str] = PROFILE_COLUMNS, n: int = 5) -> list[str]:
    numeric = list(schema.customers.numeric)
    chosen = [c for c in preferred if c in numeric]
    return chosen or numeric[:n]


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


def regime_badge(regime: str | None) -> str | None:
    """The badge of a product the risk-tolerance test does not apply to (None: it applies)."""
    if regime == "credit":
        return "✅ Affordable (credit: assessed on debt service, not risk tolerance)"
    if regime in ("deposit", "insurance", "other"):
        return f"✅ Eligible ({regime}: eligibility terms only)"
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
    def fit(cls, embeddings: np.ndarray) -> "EmbeddingProjection":
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


def nearest_products(customer_embedding: np.ndarray, product_embeddings: np.ndarray, product_ids: Sequence[str],
                     k: int = 10) -> pd.DataFrame:
    """The ``k`` products with the highest cosine similarity to the customer (any eligibility)."""
    scores = np.asarray(product_embeddings, dtype="float64") @ np.asarray(customer_embedding, dtype="float64").ravel()
    order = np.argsort(-scores, kind="stable")[:k]
    return pd.DataFrame({S.PRODUCT_ID: [product_ids[i] for i in order], "cosine": scores[order]})


__all__ = [
    "CustomerExplainer", "EmbeddingProjection", "additivity_gap", "check_ranges", "nearest_products",
    "percentile_ranks", "product_terms", "profile_columns", "rank_changes", "read_customer_upload",
    "recommendations_table", "suitability_badge",
    "MAX_UPLOAD_BYTES", "VALUE_RANGES",
]

