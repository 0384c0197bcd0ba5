r"""Development banks: generative stories unlike the default synthetic bank, each with exact ground truth.

``generate_story("thresholds", seed=0)`` returns ``(tables, schema)``: the same tables as
``finrec.data.synthetic.generate`` (``customers``, ``products``, ``holdings``, ``interactions``,
``ground_truth``) and the story's own ``DatasetSchema`` (its columns differ from the default
bank's). Nothing here touches the disk; ``finrec generate --story NAME`` writes them.

Every story is a latent utility ``U(c, p) = U0(c, p) + sum_j held(c, j) * K[j, p]`` over the
customer's *true* attributes (the customers table shows them with missing values where a story
says so), a hard rule set ``forbidden(c, p)`` (nobody adopts a forbidden product) and the same
sampling as the default bank (``finrec.data.synthetic``):

- holdings (before 2026): ``h`` products per customer (a story's count model), drawn one at a
  time by Gumbel-max over ``U / T`` among products neither held nor forbidden, U recomputed
  with what is held so far (so a holdings ladder climbs rung by rung);
- adoptions (2026): ``m`` products (``synthetic.adoption_counts`` with the story's mean) drawn
  by Plackett-Luce over ``U / T`` on the final holdings, never held nor forbidden;
- ground truth: for every product not held, ``softmax(U / T)`` over products neither held nor
  forbidden (0 for forbidden ones): exactly the distribution of the first adoption.

The bank's structure (catalogue, coefficients, category effects) comes from a fixed stream per
story, so every seed is the same bank with other customers; ``seed`` draws the customers,
missing values and every sampling step. Customer ids are text (``"CU-3F9A0B12C"``).

Stories (``STORIES``):

``thresholds``
    Eligibility as banks write it: hard minimum income, credit score and age bands per product
    (``min_income``, ``min_credit_score``, ``min_age``, ``max_age``: below them nobody adopts),
    and utility made of step functions: per-product effects of income tiers (20k, 35k, 50k,
    75k, 120k), age bands (25, 35, 45, 55, 65), credit-score steps (580, 670, 740, 800),
    savings tiers (1k, 10k, 50k), tenure >= 3 years, dependents >= 1 and high digital
    engagement (> 0.6, digital products). ~1% of every feature value is missing at random.
    32 products, 12k customers.
``interactions``
    Adoption driven by products of two or three features and XOR-like sign conditions
    (income x engagement, age x savings, sign(age) x sign(engagement), income x dependents x
    homeowner, the parity of savings, tenure and travel, ...): each product loads on 2-3 such
    terms with weights of 1-2 and has only weak main effects. 28 products, 12k customers.
``small``
    A small bank: 5k customers, 32 products, ~0.7 adoptions per customer (30% adopt nothing,
    nobody more than one), smooth linear effects, life-stage bumps and holdings complements.
``messy``
    Heavy missingness and high-cardinality categoricals that carry signal: ``branch`` (300
    levels), ``employer_sector`` (120) and ``postcode_area`` (500), Zipf-like frequencies, each
    level with a 3-d latent effect on every product. Missing (``MESSY_MISSING``): income 25%
    (not at random: high earners and the self-employed decline), savings 15% (not at random:
    small balances), credit score 10% (not at random: short tenure and the young),
    digital engagement 20% (branch customers), marital status 12% and dependents 10% (at
    random), employer sector 15% (not at random: the not employed). 30 products, 12k customers.
``holdings``
    Next product in a ladder: five product ladders (everyday banking, cards, lending,
    saving-to-investing, protection); a rung's utility is -2.5 without the rung below it held
    and +3.5 with it; customer features (income, age) matter little.
    24 products, 12k customers.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd

from finrec.data import synthetic
from finrec.data.schema import (
    AGE,
    CREDIT_SCORE,
    CUSTOMER_ID,
    CUSTOMERS,
    GROUND_TRUTH,
    HOLDINGS,
    INCOME,
    INTERACTIONS,
    MAX_AGE,
    MIN_AGE,
    MIN_CREDIT_SCORE,
    MIN_INCOME,
    PROBABILITY,
    PRODUCT_ID,
    PRODUCTS,
    TIMESTAMP,
    DatasetSchema,
    TableSchema,
)
from finrec.errors import ConfigError

__all__ = ["STORIES", "STORY_TEXT", "DEFAULT_CUSTOMERS", "MESSY_MISSING", "StoryBank", "generate_story", "build"]

STORY_TEXT = {
    "thresholds": "hard eligibility rules and step effects, ~1% missing, 32 products",
    "interactions": "adoption driven by 2-3 way feature interactions and XOR conditions, 28 products",
    "small": "5k customers, sparse adoptions (<= 1 each), 32 products",
    "messy": "10-30% missing (partly not at random), high-cardinality categoricals with signal, 30 products",
    "holdings": "next product in a holdings ladder, 24 products",
}
STORIES = tuple(STORY_TEXT)
DEFAULT_CUSTOMERS = {"thresholds": 12000, "interactions": 12000, "small": 5000, "messy": 12000, "holdings": 12000}
MAX_CUSTOMERS = 5_000_000
# Column -> share of its values the messy story leaves missing (exact counts: round(share * n)).
MESSY_MISSING = {
    "income": 0.25,
    "savings": 0.15,
    "credit_score": 0.10,
    "digital_engagement": 0.20,
    "marital_status": 0.12,
    "num_dependents": 0.10,
    "employer_sector": 0.15,
}
THRESHOLDS_MISSING = 0.01
_YEAR = 2026
PRODUCT_TYPE = "product_type"

# Customer columns drawn by synthetic.sample_customers that the stories show.
_SAVINGS, _ENG, _TENURE, _DEPS, _TX = (
    "savings",
    "digital_engagement",
    "tenure_years",
    "num_dependents",
    "transactions_per_month",
)
_MARITAL, _EMPLOYMENT, _REGION, _CHANNEL, _GENDER = "marital_status", "employment", "region", "channel", "gender"
# A fixed structure seed per story: every data seed is the same bank with other customers.
_STRUCTURE_SEED = {"thresholds": 1201, "interactions": 1202, "small": 1203, "messy": 1204, "holdings": 1205}


@dataclass
class StoryBank:
    """A story before sampling: observed tables plus the true utility and rules.

    ``U0`` float [n, P] (utility without holdings), ``K`` float [P, P] (holding row j adds
    ``K[j, p]`` to product p), ``forbidden`` bool [n, P], ``hold_counts`` int [n] (holdings
    drawn per customer), ``mean_adoptions`` and ``temperature`` T."""

    customers: pd.DataFrame
    products: pd.DataFrame
    schema: DatasetSchema
    U0: np.ndarray
    K: np.ndarray
    forbidden: np.ndarray
    hold_counts: np.ndarray
    mean_adoptions: float
    temperature: float = 1.0


# --------------------------------------------------------------------------------------------
# Shared pieces


def _text_ids(n: int, rng: np.random.Generator, prefix: str = "CU") -> np.ndarray:
    """``n`` distinct random text ids like ``CU-3F9A0B12C``."""
    values = rng.integers(0, 16**9, n)
    while True:
        _, first = np.unique(values, return_index=True)
        dup = np.setdiff1d(np.arange(n), first)
        if not len(dup):
            break
        values[dup] = rng.integers(0, 16**9, len(dup))
    return np.array([f"{prefix}-{v:09X}" for v in values], dtype=object)


def _z(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean()) / (x.std() + 1e-12)


def _base_customers(n: int, rng: np.random.Generator) -> pd.DataFrame:
    frame = synthetic.sample_customers(n, rng)
    frame[CUSTOMER_ID] = _text_ids(n, rng)
    return frame


def _mask_values(frame: pd.DataFrame, column: str, rows: np.ndarray) -> None:
    """Set ``frame[column]`` missing on ``rows`` (numeric -> NaN float, text -> None)."""
    if not len(rows):
        return
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values):
        out = values.to_numpy(np.float64).copy()
        out[rows] = np.nan
    else:
        out = values.to_numpy(dtype=object).copy()
        out[rows] = None
    frame[column] = out


def _missing_rows(rng: np.random.Generator, share: float, weight: np.ndarray | None, n: int) -> np.ndarray:
    """Exactly ``round(share * n)`` rows, drawn without replacement with probability
    proportional to ``weight`` (uniform when None): missing not at random when the weight
    depends on the value itself."""
    k = int(round(share * n))
    if k == 0:
        return np.empty(0, np.int64)
    logw = np.zeros(n) if weight is None else np.log(np.maximum(np.asarray(weight, np.float64), 1e-12))
    keys = logw + rng.gumbel(size=n)
    return np.sort(np.argpartition(-keys, k - 1)[:k])


def _schema(numeric, categorical, product_numeric, log_numeric=()) -> DatasetSchema:
    return DatasetSchema(
        customers=TableSchema(
            id=CUSTOMER_ID, numeric=tuple(numeric), categorical=tuple(categorical), log_numeric=tuple(log_numeric)
        ),
        products=TableSchema(
            id=PRODUCT_ID, numeric=tuple(product_numeric), categorical=(), category=PRODUCT_TYPE, log_numeric=()
        ),
    )


def _products(rows: list[tuple], numeric: tuple[str, ...]) -> pd.DataFrame:
    """rows: (product_id, product_type, *numeric values)."""
    frame = pd.DataFrame(rows, columns=[PRODUCT_ID, PRODUCT_TYPE, *numeric])
    for col in numeric:
        frame[col] = frame[col].astype(np.float64)
    return frame


def _same_type_K(types: np.ndarray, value: float) -> np.ndarray:
    K = np.where(types[:, None] == types[None, :], value, 0.0)
    np.fill_diagonal(K, 0.0)
    return K


def _hold_counts(rng: np.random.Generator, n: int, mean: float, high: int) -> np.ndarray:
    return np.minimum(1 + rng.poisson(mean, n), high)


# --------------------------------------------------------------------------------------------
# thresholds

_INCOME_TIERS = (20000, 35000, 50000, 75000, 120000)
_AGE_BANDS = (25, 35, 45, 55, 65)
_SCORE_STEPS = (580, 670, 740, 800)
_SAVINGS_TIERS = (1000, 10000, 50000)
# (id, type, min_income, min_credit_score, min_age, max_age, digital, popularity)
_THRESHOLD_CATALOGUE = (
    ("acct_everyday", "current", 0, 0, 18, 99, 0, 1.0),
    ("acct_young", "current", 0, 0, 18, 25, 0, 0.6),
    ("acct_premier", "current", 75000, 0, 18, 99, 0, -0.2),
    ("acct_app", "current", 0, 0, 18, 99, 1, 0.3),
    ("save_easy", "savings", 0, 0, 18, 99, 0, 0.8),
    ("save_bonus", "savings", 0, 0, 18, 99, 1, 0.2),
    ("save_junior", "savings", 0, 0, 18, 25, 0, -0.3),
    ("save_notice", "savings", 20000, 0, 18, 99, 0, -0.2),
    ("fix_1y", "deposit", 0, 0, 18, 99, 0, 0.0),
    ("fix_3y", "deposit", 0, 0, 35, 99, 0, -0.4),
    ("fix_5y", "deposit", 0, 0, 50, 99, 0, -0.8),
    ("card_classic", "card", 15000, 580, 18, 99, 0, 0.6),
    ("card_rewards", "card", 35000, 670, 21, 99, 0, 0.0),
    ("card_platinum", "card", 75000, 740, 25, 99, 0, -0.6),
    ("card_student", "card", 0, 0, 18, 25, 0, -0.1),
    ("card_builder", "card", 0, 0, 18, 99, 0, -0.7),
    ("loan_small", "loan", 15000, 580, 18, 75, 0, 0.1),
    ("loan_car", "loan", 25000, 620, 21, 70, 0, -0.3),
    ("loan_large", "loan", 50000, 700, 25, 65, 0, -0.7),
    ("mortgage_first", "mortgage", 35000, 670, 21, 45, 0, -0.4),
    ("mortgage_move", "mortgage", 50000, 700, 30, 60, 0, -0.8),
    ("mortgage_btl", "mortgage", 75000, 740, 35, 70, 0, -1.4),
    ("invest_starter", "investment", 0, 0, 18, 99, 1, -0.5),
    ("invest_isa", "investment", 20000, 0, 18, 99, 0, -0.4),
    ("invest_managed", "investment", 50000, 0, 25, 99, 0, -1.0),
    ("invest_private", "investment", 120000, 0, 30, 99, 0, -1.6),
    ("pension_personal", "pension", 20000, 0, 21, 60, 0, -0.6),
    ("pension_sipp", "pension", 50000, 0, 30, 65, 0, -1.1),
    ("insure_home", "insurance", 0, 0, 21, 99, 0, -0.5),
    ("insure_life", "insurance", 0, 0, 21, 65, 0, -0.7),
    ("insure_travel", "insurance", 0, 0, 18, 99, 1, -0.4),
    ("insure_over50", "insurance", 0, 0, 50, 85, 0, -1.0),
)
_THRESHOLD_NUMERIC = (MIN_INCOME, MIN_CREDIT_SCORE, MIN_AGE, MAX_AGE, "digital_only")


def _steps(rng: np.random.Generator, n_levels: int, P: int, scale: float) -> np.ndarray:
    """Per-product effects of ordered levels, [n_levels, P]: a random walk (the steps a bank's
    rule book writes), centred over levels."""
    walk = np.cumsum(rng.normal(0.0, scale, (n_levels, P)), axis=0)
    return walk - walk.mean(axis=0, keepdims=True)


def _thresholds(n: int, rng: np.random.Generator) -> StoryBank:
    srng = np.random.default_rng(_STRUCTURE_SEED["thresholds"])
    cat = _THRESHOLD_CATALOGUE
    P = len(cat)
    products = _products([(c[0], c[1], *c[2:7]) for c in cat], _THRESHOLD_NUMERIC)
    pop = np.array([c[7] for c in cat])
    types = products[PRODUCT_TYPE].to_numpy()
    digital = products["digital_only"].to_numpy() > 0

    base = _base_customers(n, rng)
    income = base[INCOME].to_numpy(np.float64)
    age = base[AGE].to_numpy(np.float64)
    score = base[CREDIT_SCORE].to_numpy(np.float64)
    savings = base[_SAVINGS].to_numpy(np.float64)
    eng = base[_ENG].to_numpy(np.float64)
    U0 = np.zeros((n, P)) + pop
    U0 += _steps(srng, len(_INCOME_TIERS) + 1, P, 0.7)[np.digitize(income, _INCOME_TIERS)]
    U0 += _steps(srng, len(_AGE_BANDS) + 1, P, 0.8)[np.digitize(age, _AGE_BANDS)]
    U0 += _steps(srng, len(_SCORE_STEPS) + 1, P, 0.6)[np.digitize(score, _SCORE_STEPS)]
    U0 += _steps(srng, len(_SAVINGS_TIERS) + 1, P, 0.8)[np.digitize(savings, _SAVINGS_TIERS)]
    U0 += np.outer(base[_TENURE].to_numpy() >= 3, srng.normal(0.0, 0.6, P))
    U0 += np.outer(base[_DEPS].to_numpy() >= 1, srng.normal(0.0, 0.6, P))
    U0 += np.outer(eng > 0.6, np.where(digital, 1.5, srng.normal(0.0, 0.3, P)))
    emp = pd.Categorical(base[_EMPLOYMENT], categories=synthetic.EMPLOYMENTS).codes
    U0 += srng.normal(0.0, 0.5, (len(synthetic.EMPLOYMENTS), P))[emp]

    terms = {c: products[c].to_numpy() for c in (MIN_INCOME, MIN_CREDIT_SCORE, MIN_AGE, MAX_AGE)}
    forbidden = (income[:, None] < terms[MIN_INCOME]) | (score[:, None] < terms[MIN_CREDIT_SCORE])
    forbidden |= (age[:, None] < terms[MIN_AGE]) | (age[:, None] > terms[MAX_AGE])
    # Holding one product of a type lowers its siblings; a current account leads to a card or savings.
    K = _same_type_K(types, -2.0)
    K[np.ix_(types == "current", (types == "card") | (types == "savings"))] += 0.6
    K[np.ix_(types == "mortgage", types == "insurance")] += 0.8

    numeric = (AGE, INCOME, _SAVINGS, CREDIT_SCORE, _TENURE, _DEPS, _ENG, _TX)
    categorical = (_MARITAL, _EMPLOYMENT, _REGION, _CHANNEL)
    customers = base[[CUSTOMER_ID, *numeric, *categorical]].copy()
    for col in (*numeric, *categorical):
        _mask_values(customers, col, _missing_rows(rng, THRESHOLDS_MISSING, None, n))
    return StoryBank(
        customers=customers,
        products=products,
        schema=_schema(numeric, categorical, _THRESHOLD_NUMERIC, log_numeric=(INCOME, _SAVINGS)),
        U0=U0,
        K=K,
        forbidden=forbidden,
        hold_counts=_hold_counts(rng, n, 0.8, 3),
        mean_adoptions=1.3,
    )


# --------------------------------------------------------------------------------------------
# interactions

_INTERACTION_TYPES = ("current", "savings", "card", "loan", "mortgage", "investment", "insurance")


def _interactions(n: int, rng: np.random.Generator) -> StoryBank:
    srng = np.random.default_rng(_STRUCTURE_SEED["interactions"])
    P = 28
    types = np.array([_INTERACTION_TYPES[j % len(_INTERACTION_TYPES)] for j in range(P)], dtype=object)
    ids = [f"{t}_{j // len(_INTERACTION_TYPES) + 1}" for j, t in enumerate(types)]
    fee = np.round(srng.uniform(0, 20, P), 1)
    rate = np.round(srng.uniform(0, 8, P), 2)
    products = _products([(ids[j], types[j], fee[j], rate[j]) for j in range(P)], ("monthly_fee", "rate"))

    base = _base_customers(n, rng)
    age = base[AGE].to_numpy(np.float64)
    income = base[INCOME].to_numpy(np.float64)
    loan = base["loan_amount"].to_numpy(np.float64)
    homeowner = (loan > 1.5 * income).astype(np.int64)
    travel = rng.poisson(np.exp(0.5 + 0.6 * (np.log(income) - 10.5)))
    base["homeowner"], base["travel_days"] = homeowner, travel
    a, i = _z(age), _z(np.log(income))
    s, e = _z(np.log1p(base[_SAVINGS].to_numpy(np.float64))), _z(base[_ENG].to_numpy())
    d, t = _z(np.minimum(base[_DEPS].to_numpy(), 3)), _z(base[_TENURE].to_numpy())
    h, v = _z(homeowner), _z(np.log1p(travel))
    c = _z(base[CREDIT_SCORE].to_numpy(np.float64))
    married = (base[_MARITAL].to_numpy() == "married").astype(np.float64)
    sgn = np.sign
    terms = np.stack(
        [
            i * e,
            a * s,
            sgn(a) * sgn(e),  # XOR: young and digital, or old and not
            sgn(i) * sgn(c),
            i * d * h,  # three-way
            e * v,
            np.where((married > 0) != (homeowner > 0), 1.0, -1.0),  # XOR of two flags
            s * t,
            a * i * e,
            sgn(s) * sgn(t) * sgn(v),  # parity of three signs
        ],
        axis=1,
    )
    terms = np.clip(terms, -3.0, 3.0)
    W = np.zeros((terms.shape[1], P))
    for p in range(P):
        chosen = srng.choice(terms.shape[1], size=int(srng.integers(2, 4)), replace=False)
        W[chosen, p] = srng.choice([-1.0, 1.0], len(chosen)) * srng.uniform(1.0, 2.0, len(chosen))
    mains = np.stack([a, i, s, e, d, t, h, v, c], axis=1)
    U0 = srng.normal(0.0, 0.5, P) + terms @ W + mains @ srng.normal(0.0, 0.15, (mains.shape[1], P))

    numeric = (AGE, INCOME, _SAVINGS, CREDIT_SCORE, _ENG, _TENURE, _DEPS, _TX, "homeowner", "travel_days")
    categorical = (_MARITAL, _EMPLOYMENT, _REGION, _CHANNEL)
    return StoryBank(
        customers=base[[CUSTOMER_ID, *numeric, *categorical]].copy(),
        products=products,
        schema=_schema(numeric, categorical, ("monthly_fee", "rate"), log_numeric=(INCOME, _SAVINGS)),
        U0=U0,
        K=_same_type_K(types, -1.5),
        forbidden=np.zeros((n, P), dtype=bool),
        hold_counts=_hold_counts(rng, n, 0.5, 3),
        mean_adoptions=1.4,
    )


# --------------------------------------------------------------------------------------------
# small

_SMALL_TYPES = ("current", "savings", "deposit", "card", "loan", "mortgage", "investment", "pension", "insurance")


def _linear_bank(n: int, rng: np.random.Generator, srng: np.random.Generator, P: int, scale: float):
    """Customers, product rows and a smooth utility (linear effects + life-stage bumps) shared
    by the small and messy stories. Returns (base frame, products, U0, types, features)."""
    types = np.array([_SMALL_TYPES[j % len(_SMALL_TYPES)] for j in range(P)], dtype=object)
    ids = [f"{t}_{chr(ord('a') + j // len(_SMALL_TYPES))}" for j, t in enumerate(types)]
    fee = np.round(srng.uniform(0, 15, P), 1)
    rate = np.round(srng.uniform(0, 6, P), 2)
    products = _products([(ids[j], types[j], fee[j], rate[j]) for j in range(P)], ("monthly_fee", "rate"))
    base = _base_customers(n, rng)
    age = base[AGE].to_numpy(np.float64)
    emp = base[_EMPLOYMENT].to_numpy()
    X = np.stack(
        [
            (np.log(base[INCOME].to_numpy(np.float64)) - math.log(40000)) / 0.6,
            (np.log1p(base[_SAVINGS].to_numpy(np.float64)) - math.log(20000)) / 1.3,
            (base[CREDIT_SCORE].to_numpy(np.float64) - 680) / 80,
            base[_ENG].to_numpy(np.float64) - 0.5,
            np.minimum(base[_DEPS].to_numpy(), 3).astype(np.float64),
            np.minimum(base[_TENURE].to_numpy(np.float64), 20) / 10,
            (base[_MARITAL].to_numpy() == "married").astype(np.float64),
            (emp == "self_employed").astype(np.float64),
            (emp == "retired").astype(np.float64) - (emp == "student"),
        ],
        axis=1,
    )
    W = srng.normal(0.0, scale, (X.shape[1], P))
    centre, width, weight = srng.uniform(22, 70, P), srng.uniform(6, 14, P), srng.uniform(0, 2.0 * scale / 0.6, P)
    U0 = srng.normal(0.0, 0.6, P) + X @ W
    U0 += weight * np.exp(-0.5 * ((age[:, None] - centre) / width) ** 2)
    return base, products, U0, types


def _small(n: int, rng: np.random.Generator) -> StoryBank:
    srng = np.random.default_rng(_STRUCTURE_SEED["small"])
    base, products, U0, types = _linear_bank(n, rng, srng, 32, 0.6)
    P = len(products)
    K = _same_type_K(types, -1.5) + np.where(srng.random((P, P)) < 0.08, srng.uniform(0.5, 1.5, (P, P)), 0.0)
    np.fill_diagonal(K, 0.0)
    numeric = (AGE, INCOME, _SAVINGS, CREDIT_SCORE, _ENG, _TENURE, _DEPS, _TX)
    categorical = (_GENDER, _MARITAL, _EMPLOYMENT, _REGION, _CHANNEL)
    return StoryBank(
        customers=base[[CUSTOMER_ID, *numeric, *categorical]].copy(),
        products=products,
        schema=_schema(numeric, categorical, ("monthly_fee", "rate"), log_numeric=(INCOME, _SAVINGS)),
        U0=U0,
        K=K,
        forbidden=np.zeros((n, P), dtype=bool),
        hold_counts=_hold_counts(rng, n, 0.6, 3),
        mean_adoptions=0.7,
    )


# --------------------------------------------------------------------------------------------
# messy

# Column -> number of levels of the high-cardinality categoricals.
_HIGH_CARDINALITY = {"branch": 300, "employer_sector": 120, "postcode_area": 500}
_PREFIX = {"branch": "BR", "employer_sector": "SEC", "postcode_area": "PA"}


def _messy(n: int, rng: np.random.Generator) -> StoryBank:
    srng = np.random.default_rng(_STRUCTURE_SEED["messy"])
    base, products, U0, types = _linear_bank(n, rng, srng, 30, 0.4)
    P = len(products)
    for col, levels in _HIGH_CARDINALITY.items():
        # Zipf-like frequencies (fixed per bank), a 3-d latent effect per level on every product.
        freq = 1.0 / np.arange(1, levels + 1) ** 0.9
        freq = srng.permutation(freq / freq.sum())
        effect = srng.normal(0.0, 1.0, (levels, 3)) @ srng.normal(0.0, 0.55, (3, P))
        code = rng.choice(levels, size=n, p=freq)
        U0 = U0 + effect[code]
        base[col] = np.array([f"{_PREFIX[col]}{j + 1:03d}" for j in range(levels)], dtype=object)[code]
    K = _same_type_K(types, -1.5)

    numeric = (AGE, INCOME, _SAVINGS, CREDIT_SCORE, _ENG, _TENURE, _DEPS, _TX)
    categorical = (_MARITAL, _EMPLOYMENT, _CHANNEL, *_HIGH_CARDINALITY)
    customers = base[[CUSTOMER_ID, *numeric, *categorical]].copy()
    income = base[INCOME].to_numpy(np.float64)
    emp = base[_EMPLOYMENT].to_numpy()
    weights = {
        INCOME: np.exp(1.2 * (np.log(income) - math.log(40000)) / 0.6) * np.where(emp == "self_employed", 3.0, 1.0),
        _SAVINGS: np.exp(-0.8 * (np.log1p(base[_SAVINGS].to_numpy(np.float64)) - math.log(20000)) / 1.3),
        CREDIT_SCORE: np.exp(-0.4 * base[_TENURE].to_numpy(np.float64)) + (base[AGE].to_numpy() < 25),
        _ENG: np.where(base[_CHANNEL].to_numpy() == "branch", 4.0, 1.0),
        _MARITAL: None,
        _DEPS: None,
        "employer_sector": np.where(np.isin(emp, ("employed", "self_employed")), 1.0, 12.0),
    }
    for col, share in MESSY_MISSING.items():
        _mask_values(customers, col, _missing_rows(rng, share, weights[col], n))
    return StoryBank(
        customers=customers,
        products=products,
        schema=_schema(numeric, categorical, ("monthly_fee", "rate"), log_numeric=(INCOME, _SAVINGS)),
        U0=U0,
        K=K,
        forbidden=np.zeros((n, P), dtype=bool),
        hold_counts=_hold_counts(rng, n, 0.6, 3),
        mean_adoptions=1.3,
    )


# --------------------------------------------------------------------------------------------
# holdings

LADDERS = (
    ("everyday", ("basic_account", "plus_account", "premium_account", "private_account")),
    ("cards", ("debit_card", "credit_card", "rewards_card", "platinum_card", "charge_card")),
    ("lending", ("overdraft", "personal_loan", "car_loan", "mortgage", "remortgage")),
    ("wealth", ("easy_saver", "fixed_saver", "bond_fund", "balanced_fund", "equity_fund")),
    ("protection", ("travel_cover", "home_cover", "life_cover", "income_protection", "pension")),
)
LADDER_STEP_UP, LADDER_SKIP = 3.5, -2.5


def _holdings(n: int, rng: np.random.Generator) -> StoryBank:
    srng = np.random.default_rng(_STRUCTURE_SEED["holdings"])
    rows, rung, prev = [], [], []
    for family, steps in LADDERS:
        for r, pid in enumerate(steps):
            prev.append(len(rows) - 1 if r else -1)
            rows.append((pid, family, float(r)))
            rung.append(r)
    products = _products(rows, ("rung",))
    P = len(products)
    rung, prev = np.array(rung), np.array(prev)
    base = _base_customers(n, rng)
    X = np.stack(
        [
            (np.log(base[INCOME].to_numpy(np.float64)) - math.log(40000)) / 0.6,
            (base[AGE].to_numpy(np.float64) - 45) / 15,
            base[_ENG].to_numpy(np.float64) - 0.5,
        ],
        axis=1,
    )
    # Higher rungs are taken later in life and with more income: weak feature effects.
    W = srng.normal(0.0, 0.25, (X.shape[1], P)) + np.outer([0.25, 0.2, 0.0], rung)
    U0 = srng.normal(0.0, 0.3, P) + X @ W + LADDER_SKIP * (rung > 0)
    K = np.zeros((P, P))
    K[prev[prev >= 0], np.flatnonzero(prev >= 0)] = LADDER_STEP_UP - LADDER_SKIP
    numeric = (AGE, INCOME, _SAVINGS, CREDIT_SCORE, _ENG, _TENURE, _DEPS)
    categorical = (_MARITAL, _EMPLOYMENT, _REGION, _CHANNEL)
    return StoryBank(
        customers=base[[CUSTOMER_ID, *numeric, *categorical]].copy(),
        products=products,
        schema=_schema(numeric, categorical, ("rung",), log_numeric=(INCOME, _SAVINGS)),
        U0=U0,
        K=K,
        forbidden=np.zeros((n, P), dtype=bool),
        hold_counts=_hold_counts(rng, n, 1.2, 5),
        mean_adoptions=1.2,
    )


_BUILDERS = {
    "thresholds": _thresholds,
    "interactions": _interactions,
    "small": _small,
    "messy": _messy,
    "holdings": _holdings,
}


# --------------------------------------------------------------------------------------------
# Sampling (the same steps as the default bank)


def _check(story, n_customers, seed) -> int:
    if not isinstance(story, str) or story not in STORIES:
        raise ConfigError(f"unknown story {story!r}; choose one of {', '.join(STORIES)}")
    n = DEFAULT_CUSTOMERS[story] if n_customers is None else n_customers
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= MAX_CUSTOMERS:
        raise ConfigError(f"n_customers must be an integer between 1 and {MAX_CUSTOMERS}, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return int(n)


def build(story: str, n_customers: int | None = None, seed: int = 0) -> StoryBank:
    """The story's observed tables and true utility, before any sampling."""
    n = _check(story, n_customers, seed)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _STRUCTURE_SEED[story]]))
    return _BUILDERS[story](n, rng)


def generate_story(
    story: str, n_customers: int | None = None, seed: int = 0, ground_truth: bool = True
) -> tuple[dict[str, pd.DataFrame], DatasetSchema]:
    """(tables, schema) of one story (module docstring); same arguments, same frames."""
    bank = build(story, n_customers, seed)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _STRUCTURE_SEED[story], 1]))
    n, P = bank.U0.shape
    T = bank.temperature
    held = np.zeros((n, P), dtype=bool)
    for step in range(int(bank.hold_counts.max(initial=0))):
        G = (bank.U0 + held @ bank.K) / T + rng.gumbel(size=(n, P))
        G[held | bank.forbidden] = -np.inf
        pick = np.argmax(G, axis=1)
        rows = np.flatnonzero((bank.hold_counts > step) & np.isfinite(G[np.arange(n), pick]))
        held[rows, pick[rows]] = True
    V = (bank.U0 + held @ bank.K) / T
    V[held | bank.forbidden] = -np.inf
    m = synthetic.adoption_counts(rng, np.isfinite(V).sum(axis=1), bank.mean_adoptions)
    ac, ap = synthetic.top_m(V + rng.gumbel(size=(n, P)), m)

    ids = bank.customers[CUSTOMER_ID].to_numpy(dtype=object)
    pids = bank.products[PRODUCT_ID].to_numpy(dtype=object)
    hc, hp = np.nonzero(held)
    # Dates in 2026, ascending in pick order within a customer (as the default bank).
    days = rng.integers(0, 365, len(ac))
    first = np.r_[True, ac[1:] != ac[:-1]] if len(ac) else np.empty(0, bool)
    order = np.lexsort((days, np.cumsum(first)))
    dates = (np.datetime64(f"{_YEAR}-01-01") + days[order].astype("timedelta64[D]")).astype(str).astype(object)
    tables = {
        CUSTOMERS: bank.customers.reset_index(drop=True),
        PRODUCTS: bank.products,
        INTERACTIONS: pd.DataFrame({CUSTOMER_ID: ids[ac], PRODUCT_ID: pids[ap], TIMESTAMP: dates}),
        HOLDINGS: pd.DataFrame({CUSTOMER_ID: ids[hc], PRODUCT_ID: pids[hp]}),
    }
    if ground_truth:
        top = V.max(axis=1, keepdims=True)
        e = np.exp(V - np.where(np.isfinite(top), top, 0.0))
        total = e.sum(axis=1, keepdims=True)
        prob = e / np.where(total > 0, total, 1.0)
        gr, gp = np.nonzero(~held)
        tables[GROUND_TRUTH] = pd.DataFrame({CUSTOMER_ID: ids[gr], PRODUCT_ID: pids[gp], PROBABILITY: prob[gr, gp]})
    return tables, bank.schema
