r"""A synthetic retail bank: customers, products, holdings, adoptions and the true adoption model.

``generate(GeneratorSettings(...))`` returns a dict of DataFrames with the keys ``customers``,
``products``, ``holdings``, ``interactions`` and (when ``ground_truth`` is on) ``ground_truth``,
laid out as ``finrec.data.schema.SYNTHETIC.schema()`` describes. Everything is vectorised with
numpy over customers x products; randomness comes only from generators seeded by
``settings.seed`` (same settings, same frames). Nothing here touches the disk.

Customers
---------
Demographics: ``age`` 18-85 (a skewed beta), ``gender``, ``marital_status`` (single, married,
divorced, widowed; marriage rises from the late twenties, widowhood after 70), ``region`` (six
regions), ``employment`` (student below ~24, retired from ~64, otherwise employed,
self_employed or unemployed) and ``education`` (secondary < bachelor < master < doctorate; no
master below 22, no doctorate below 26).

Money (float64, whole currency units; income to the nearest 10) follows a log-normal model:
``log income`` rises with age up to 50, falls slowly after 55 and drops at retirement, rises with
education, and is low for students and the unemployed. ``savings`` grows with income and age.
Customers of mortgage age with enough income often carry a large ``loan_amount`` (2-4.5x
income, amortising after 35); some others carry a small consumer loan. ``credit_utilization``
(0-1) is higher for low incomes; ``debt`` = ``loan_amount`` + card balance (utilisation x a
card limit of 15% of income); ``debt_to_income`` = debt / income. ``credit_score`` (300-850)
rises with age and income and falls with utilisation and unemployment.

Behaviour: ``digital_engagement`` (0-1) falls with age and rises with education;
``transactions_per_month`` is Poisson with a rate rising with engagement and income;
``tenure_years`` <= age - 18; ``num_dependents`` is Poisson, higher for the married in mid life;
``channel`` (branch, online, mobile, mixed) is driven by engagement.
``risk_tolerance`` (1-7) rounds a latent score that is higher for the young, high income, high
savings, more education and the self-employed, plus noise.

Products
--------
The base catalogue holds 25 products of nine types (``product_type``): current_account,
savings_account, term_deposit, credit_card, personal_loan, mortgage, investment_fund, pension
and insurance. ``risk_level`` is PRIIPs-like (1 deposits, loans and insurance; 2 variable-rate
mortgage and the safe pension; 3 bond fund; 4 balanced; 5-6 equity; 7 crypto).
``expected_yield`` is the customer's return in % per year: positive for deposits, funds and
pensions, the (negative) APR for credit cards and loans, 0 for insurance and current accounts
without interest. ``duration_months`` is the term (0 = open-ended), ``monthly_fee`` the fee or
premium per month, ``digital_only`` 1 for app-only products, and ``min_income``,
``min_credit_score``, ``min_age``, ``max_age`` the eligibility terms (0 = none). ``name`` is a
descriptive column, not a feature.

With ``n_products < 25`` the catalogue keeps the most common products (a fixed priority order);
with ``n_products > 25`` it adds variants of the base products in round robin
(``FUND_EQUITY_V02``...) with jittered yields, fees, terms, thresholds, digital flag and, for
funds and pensions, a risk level one step away.

The latent utility
------------------
For customer c and product p with type t(p) (T is the choice temperature)::

    U(c, p) = pop_p                                              base popularity
            + sum_f W[f, p] * x_f(c)                              linear effects
            + sum_t K[t, p] * held_t(c)                           holdings: complement / substitute
            + k * A_p * exp(-((age_c - a_p) / s_p)^2 / 2)         life stage bump
            + 2.5 * log_sigmoid(3 * (ln income_c - ln min_income_p))    [min_income_p > 0]
            + 2.5 * log_sigmoid((credit_score_c - min_credit_score_p) / 25)  [min_cs_p > 0]
            - 8 * [age_c < min_age_p or age_c > max_age_p]        eligibility
            + k * 3 * digital_only_p * (digital_engagement_c - 0.45)
            + k * 1.5 * [t(p) in {fund, pension}] * exp(-((rt_c - r_p) / 1.2)^2 / 2)   risk fit
            - [r_p > rt_c] * (4 + 3 * (r_p - rt_c))               suitability penalty
            + beta_t(p) * (yield_p - yield_base(p)) - 0.1 * (fee_p - fee_base(p))    variant terms

where ``rt`` is risk_tolerance and ``r`` risk_level; the customer features are
``x = (z_inc, z_sav, dti, z_eng, dependents, married, student, retired, self_employed,
unemployed, z_edu, z_loan)`` with ``z_inc = (ln income - ln 40000) / 0.6``,
``z_sav = (ln(1 + savings) - ln 20000) / 1.3``, ``dti = min(debt_to_income, 8)``,
``z_eng = digital_engagement - 0.5``, ``dependents = min(num_dependents, 4)``,
``z_edu = education level - 1`` (secondary = 0) and ``z_loan = ln(1 + loan_amount / income)``;
``held_t(c)`` is 1 when c holds a product of type t. ``W`` and the holdings matrix ``K``
combine a per-type row with per-product extras (``_TYPE_COEF``, ``_SAME_TYPE``,
``_BASE_CATALOGUE``): savings drive term deposits, funds and pensions; debt-to-income drives loans
and cards down; a current account raises credit cards and savings, a savings account raises term
deposits and funds, a mortgage raises home (and life) insurance; holding a product of the same
type lowers its siblings (few customers open a second current account or mortgage). ``A, a,
s`` are the product's life-stage weight, centre and width (mortgages around 36, pensions 42-50,
student accounts around 20, long deposits around 62). ``yield_base`` and ``fee_base`` are those of
the base product a variant derives from (so the terms are 0 in the base catalogue) and ``pop``
of a variant is its base's popularity minus the log of its family size. ``k`` scales the
interaction terms: 1 by default, 1.6 for ``difficulty="hard"``, where the holdings matrix ``K``
is scaled by k as well and the temperature ``T`` is 1.8 instead of 1.0.

U is a deterministic function of the observed customer columns, the customer's holdings and the
product columns; all randomness is in the sampling below.

Sampling
--------
Holdings (before 2026): 97% of customers hold a current account, drawn by Gumbel-max over
``U/T`` among current accounts; then ``clip(Poisson(0.8), 0, 2)`` further products (at least one
for those without a current account) by Gumbel-top-k over ``U/T`` (U recomputed with the current
account held), never a product already held.

Adoptions (``interactions``, dated in 2026): with U recomputed on the final holdings, each
customer adopts ``m`` products: ``m = 0`` with probability ``p0`` (10%), otherwise
``m = 1 + Poisson(lambda)`` clipped to the number of products not held, with
``lambda = mean / (1 - p0) - 1`` (``p0 = 1 - mean`` and ``lambda = 0`` when the mean is below
0.9), where mean is ``adoptions_per_customer`` (times 0.625 for ``difficulty="hard"``, so the
default 1.6 becomes 1.0). The products are the Gumbel-top-m of ``U/T`` over non-held products
(Plackett-Luce without replacement); the first pick gets the earliest date.

The rules: a product the default filters exclude for a customer (``forbidden``: suitability of
investment products, target market, negative target market, affordability at a 40% debt
service to income, and the income, credit score and age terms) is never adopted; adoptions and
the ground truth are drawn over the products neither held nor forbidden (holdings, from before,
are not). The number of adoptions is clipped to the products left.

Ground truth: for every customer and every product not held,
``probability = softmax over non-held, non-forbidden products of U/T`` (0 for forbidden ones):
exactly the distribution of the first adoption. It sums to 1 per customer (0 for a customer the
rules leave nothing, which only a tiny catalogue allows).

A past (``months`` > 0)
-----------------------
``finrec.data.history.simulate`` replaces the adoption step: from the holdings above it runs
``months`` months of life cycles, closures, life events and monthly adoptions, then the target
month (January 2026). ``holdings_history`` holds the month-end snapshots, ``holdings`` the last,
``interactions`` the target month's adoptions and the ground truth the target month's first-choice
probabilities, which depend on the history (see that module). ``months=0`` draws exactly the
frames it drew before the option existed (the history has a random stream of its own).

Compliance columns
------------------
Drawn from a fourth random stream (so the columns above are the same as before they existed):
``marketing_consent`` (0 for 8% of customers: objected to profiling for marketing),
``knowledge_level`` 1-3 (education, savings, risk tolerance), ``loss_capacity`` 1-4 (savings,
income, debt), ``investment_objective`` (preservation, income, growth, retirement; by age and
risk tolerance), ``horizon_years`` (shorter with age); ``monthly_debt_service`` follows from the
loans and card balance. Funds and pensions carry target-market terms (``tm_*``, a variant keeps
its base's) and credit products ``monthly_payment`` (the annuity of 15,000 / 250,000 for loans /
mortgages over their term at their rate; 3% of a card limit of 15% of the minimum income).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from finrec.data import compliance as C
from finrec.data import history
from finrec.data.schema import (
    AGE,
    AS_OF,
    CREDIT_SCORE,
    CUSTOMER_ID,
    CUSTOMERS,
    GROUND_TRUTH,
    HOLDINGS,
    HOLDINGS_HISTORY,
    INCOME,
    INTERACTIONS,
    MAX_AGE,
    MIN_AGE,
    MIN_CREDIT_SCORE,
    MIN_INCOME,
    PROBABILITY,
    PRODUCT_ID,
    PRODUCTS,
    RISK_MAX,
    RISK_MIN,
    SYNTHETIC,
    TIMESTAMP,
)
from finrec.errors import ConfigError

__all__ = [
    "GeneratorSettings",
    "generate",
    "generate_blocks",
    "BLOCK_CUSTOMERS",
    "utility",
    "forbidden",
    "DIFFICULTIES",
    "TEMPERATURE",
    "BASE_CATALOGUE_SIZE",
    "sample_customers",
    "top_m",
    "adoption_counts",
]

DIFFICULTIES = ("default", "hard")
MAX_CUSTOMERS = 50_000_000
# Banks above this many customers are drawn in blocks (``generate_blocks``): a block of 1M with 12
# months of history peaks near 4 GB, and a bank of 10M drawn whole would need ten times that.
BLOCK_CUSTOMERS = 1_000_000
BLOCK_KEY = 0xB10C  # the blocks' streams: SeedSequence(seed, spawn_key=(BLOCK_KEY, i))
MAX_PRODUCTS = 5_000
MAX_ADOPTIONS = 10.0
NAME = "name"

# Customer columns without a named constant in the schema; the output frame is ordered by the
# schema's lists, so a renamed column there fails loudly (KeyError) instead of silently.
_SAVINGS, _DEBT, _LOAN = "savings", "debt", "loan_amount"
_UTIL, _DTI, _ENG = "credit_utilization", "debt_to_income", "digital_engagement"
_TX, _TENURE, _DEPS = "transactions_per_month", "tenure_years", "num_dependents"
_GENDER, _MARITAL, _REGION = "gender", "marital_status", "region"
_EMPLOYMENT, _EDUCATION, _CHANNEL = "employment", "education", "channel"
# Product columns without a named constant.
_YIELD, _DURATION, _FEE, _DIGITAL = "expected_yield", "duration_months", "monthly_fee", "digital_only"

REGIONS = ("capital", "north", "south", "east", "west", "central")
REGION_P = (0.25, 0.15, 0.18, 0.12, 0.14, 0.16)
EDUCATIONS = ("secondary", "bachelor", "master", "doctorate")
EMPLOYMENTS = ("employed", "self_employed", "unemployed", "retired", "student")
MARITAL = ("single", "married", "divorced", "widowed")
CHANNELS = ("branch", "online", "mobile", "mixed")
GENDERS = ("female", "male")

TYPES = (
    "current_account",
    "savings_account",
    "term_deposit",
    "credit_card",
    "personal_loan",
    "mortgage",
    "investment_fund",
    "pension",
    "insurance",
)
_TYPE_INDEX = {t: i for i, t in enumerate(TYPES)}
_FEATURES = (
    "z_inc",
    "z_sav",
    "dti",
    "z_eng",
    "deps",
    "married",
    "student",
    "retired",
    "self_employed",
    "unemployed",
    "z_edu",
    "z_loan",
)
_FEATURE_INDEX = {f: i for i, f in enumerate(_FEATURES)}

OBJECTIVES = ("preservation", "income", "growth", "retirement")
OBJECTION_P = 0.08  # share of customers who objected to profiling for marketing
# Target market of the base investment products: minimum knowledge (1-3), loss capacity (1-4)
# and horizon (years), the objectives it serves, those of its negative target market, and the
# loss capacity at or below which a customer is in its negative target market.
_TARGET_MARKET = {
    "FUND_BOND": (1, 2, 3, "income|preservation|retirement", None, np.nan),
    "FUND_BALANCED": (2, 2, 5, "growth|income|retirement", "preservation", 1),
    "FUND_EQUITY": (2, 3, 7, "growth|retirement", "preservation|income", 1),
    "FUND_CRYPTO": (3, 4, 5, "growth", "preservation|income|retirement", 2),
    "PENSION_SAFE": (1, 1, 10, "retirement|preservation", None, np.nan),
    "PENSION_GROWTH": (1, 2, 15, "retirement|growth", "preservation", 1),
}
# The amount a typical credit of each type lends, for its monthly payment.
_TYPICAL_AMOUNT = {"personal_loan": 15000.0, "mortgage": 250000.0}

HOLD_CURRENT_P = 0.97
EXTRA_HOLDINGS_MEAN = 0.8
EXTRA_HOLDINGS_MAX = 2
NO_ADOPTION_P = 0.10
HARD_ADOPTION_FACTOR = 0.625
TEMPERATURE = {"default": 1.0, "hard": 1.8}
_INTERACTION_SCALE = {"default": 1.0, "hard": 1.6}
_YEAR = 2026


@dataclass(frozen=True)
class GeneratorSettings:
    """What to generate. ``n_products`` 25 is the base catalogue; more adds product variants.

    ``difficulty="hard"`` scales the interaction terms by 1.6, raises the choice temperature
    from 1.0 to 1.8 and multiplies ``adoptions_per_customer`` by 0.625 (1.6 -> 1.0).
    """

    n_customers: int = 30000
    n_products: int = 25
    seed: int = 0
    difficulty: str = "default"
    adoptions_per_customer: float = 1.6
    ground_truth: bool = True
    # Months of history before the target month (``finrec.data.history``); 0: no history, and
    # the adoptions of a year drawn from the holdings as they are (the behaviour before history).
    months: int = 0

    def validate(self) -> GeneratorSettings:
        """Raise ``ConfigError`` naming the first invalid setting; return self."""
        _check_int("n_customers", self.n_customers, 1, MAX_CUSTOMERS)
        _check_int("n_products", self.n_products, 5, MAX_PRODUCTS)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("months", self.months, 0, history.MAX_MONTHS)
        if not isinstance(self.difficulty, str) or self.difficulty not in DIFFICULTIES:
            raise ConfigError(
                f"difficulty must be one of {', '.join(repr(d) for d in DIFFICULTIES)}, got {self.difficulty!r}"
            )
        a = self.adoptions_per_customer
        if isinstance(a, bool) or not isinstance(a, numbers.Real) or not math.isfinite(a) or not 0 < a <= MAX_ADOPTIONS:
            raise ConfigError(f"adoptions_per_customer must be a number in (0, {MAX_ADOPTIONS:g}], got {a!r}")
        if not isinstance(self.ground_truth, (bool, np.bool_)):
            raise ConfigError(f"ground_truth must be true or false, got {self.ground_truth!r}")
        return self


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")


# --------------------------------------------------------------------------------------------
# Product catalogue
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Base:
    pid: str
    name: str
    ptype: str
    risk: int
    yld: float
    dur: int
    min_inc: float
    min_cs: int
    min_age: int
    max_age: int
    fee: float
    digital: int
    pop: float
    life: tuple[float, float, float] = (0.0, 1.0, 0.0)  # centre, width, weight
    coef: dict = field(default_factory=dict)  # extra feature / held_<type> coefficients


_BASE_CATALOGUE: tuple[_Base, ...] = (
    _Base("CUR_BASIC", "Basic current account", "current_account", 1, 0.0, 0, 0, 0, 18, 85, 3.0, 0, 1.0),
    _Base(
        "CUR_PREMIUM",
        "Premium current account",
        "current_account",
        1,
        0.25,
        0,
        60000,
        650,
        18,
        85,
        14.0,
        0,
        -0.5,
        coef={"z_inc": 0.8},
    ),
    _Base(
        "CUR_STUDENT",
        "Student current account",
        "current_account",
        1,
        0.0,
        0,
        0,
        0,
        18,
        27,
        0.0,
        0,
        0.5,
        life=(20.0, 3.0, 1.0),
        coef={"student": 2.5},
    ),
    _Base("CUR_DIGITAL", "Digital current account", "current_account", 1, 0.0, 0, 0, 0, 18, 85, 0.0, 1, 0.3),
    _Base("SAV_BASIC", "Easy-access savings", "savings_account", 1, 1.25, 0, 0, 0, 18, 85, 0.0, 0, 0.6),
    _Base(
        "SAV_PLUS",
        "Savings plus (app)",
        "savings_account",
        1,
        2.6,
        0,
        25000,
        0,
        18,
        85,
        0.0,
        1,
        0.1,
        coef={"z_sav": 0.3},
    ),
    _Base("TD_6M", "Term deposit 6 months", "term_deposit", 1, 2.7, 6, 0, 0, 18, 85, 0.0, 0, -0.2),
    _Base("TD_12M", "Term deposit 12 months", "term_deposit", 1, 3.0, 12, 0, 0, 18, 85, 0.0, 0, 0.0),
    _Base(
        "TD_36M",
        "Term deposit 36 months",
        "term_deposit",
        1,
        3.4,
        36,
        0,
        0,
        18,
        85,
        0.0,
        0,
        -0.6,
        life=(62.0, 12.0, 0.8),
    ),
    _Base("CC_BASIC", "Classic credit card", "credit_card", 1, -19.9, 0, 12000, 580, 18, 85, 0.0, 0, 0.6),
    _Base(
        "CC_GOLD", "Gold credit card", "credit_card", 1, -17.5, 0, 50000, 690, 21, 85, 9.0, 0, -0.3, coef={"z_inc": 0.6}
    ),
    _Base(
        "CC_CASHBACK",
        "Cashback card (app)",
        "credit_card",
        1,
        -21.9,
        0,
        20000,
        620,
        18,
        85,
        2.0,
        1,
        0.2,
        coef={"z_eng": 0.5},
    ),
    _Base("PL_STANDARD", "Personal loan", "personal_loan", 1, -8.9, 60, 15000, 600, 18, 75, 0.0, 0, 0.1),
    _Base(
        "PL_CAR",
        "Car loan",
        "personal_loan",
        1,
        -6.4,
        72,
        20000,
        620,
        18,
        75,
        0.0,
        0,
        -0.2,
        life=(40.0, 12.0, 0.5),
        coef={"deps": 0.2},
    ),
    _Base(
        "MORT_FIXED25",
        "Fixed-rate mortgage 25y",
        "mortgage",
        1,
        -3.9,
        300,
        30000,
        660,
        21,
        60,
        0.0,
        0,
        -0.4,
        life=(36.0, 8.0, 2.5),
    ),
    _Base(
        "MORT_VARIABLE",
        "Variable-rate mortgage",
        "mortgage",
        2,
        -3.3,
        300,
        35000,
        680,
        21,
        60,
        0.0,
        0,
        -0.8,
        life=(36.0, 8.0, 2.5),
    ),
    _Base("FUND_BOND", "Bond fund", "investment_fund", 3, 3.8, 0, 0, 0, 18, 85, 1.0, 0, -0.3),
    _Base("FUND_BALANCED", "Balanced fund", "investment_fund", 4, 5.2, 0, 0, 0, 18, 85, 1.0, 0, -0.2),
    _Base("FUND_EQUITY", "Global equity fund", "investment_fund", 6, 7.5, 0, 0, 0, 18, 85, 1.0, 0, -0.5),
    _Base("FUND_CRYPTO", "Crypto basket (app)", "investment_fund", 7, 12.0, 0, 0, 0, 18, 70, 0.0, 1, -1.5),
    _Base(
        "PENSION_SAFE",
        "Pension plan - secure",
        "pension",
        2,
        3.0,
        0,
        0,
        0,
        18,
        64,
        0.0,
        0,
        -0.4,
        life=(50.0, 10.0, 1.5),
    ),
    _Base(
        "PENSION_GROWTH",
        "Pension plan - growth",
        "pension",
        5,
        6.0,
        0,
        0,
        0,
        18,
        58,
        0.0,
        0,
        -0.6,
        life=(42.0, 10.0, 1.5),
    ),
    _Base(
        "INS_HOME",
        "Home insurance",
        "insurance",
        1,
        0.0,
        12,
        0,
        0,
        18,
        85,
        25.0,
        0,
        -0.6,
        coef={"held_mortgage": 2.5, "z_loan": 0.5},
    ),
    _Base(
        "INS_LIFE",
        "Life insurance",
        "insurance",
        1,
        0.0,
        240,
        0,
        0,
        18,
        70,
        30.0,
        0,
        -0.9,
        life=(40.0, 12.0, 0.6),
        coef={"deps": 0.6, "married": 0.4, "held_mortgage": 1.0},
    ),
    _Base(
        "INS_TRAVEL",
        "Travel insurance",
        "insurance",
        1,
        0.0,
        12,
        0,
        0,
        18,
        85,
        6.0,
        0,
        -0.5,
        life=(30.0, 12.0, 0.4),
        coef={"z_inc": 0.5, "z_eng": 0.5},
    ),
)
BASE_CATALOGUE_SIZE = len(_BASE_CATALOGUE)

# Which base products a catalogue smaller than the base one keeps, most important first.
_PRIORITY = (
    "CUR_BASIC",
    "SAV_BASIC",
    "CC_BASIC",
    "PL_STANDARD",
    "FUND_BALANCED",
    "MORT_FIXED25",
    "TD_12M",
    "PENSION_GROWTH",
    "INS_HOME",
    "FUND_EQUITY",
    "CUR_DIGITAL",
    "SAV_PLUS",
    "CC_GOLD",
    "FUND_BOND",
    "INS_LIFE",
    "CUR_STUDENT",
    "PENSION_SAFE",
    "TD_36M",
    "PL_CAR",
    "CC_CASHBACK",
    "CUR_PREMIUM",
    "TD_6M",
    "MORT_VARIABLE",
    "INS_TRAVEL",
    "FUND_CRYPTO",
)

# Per-type linear effects of the customer features and of held product types.
_TYPE_COEF: dict[str, dict[str, float]] = {
    "current_account": {},
    "savings_account": {"z_sav": 0.4, "held_current_account": 0.5},
    "term_deposit": {"z_sav": 1.0, "z_eng": -0.3, "held_savings_account": 1.0},
    "credit_card": {"z_inc": 0.4, "dti": -0.6, "z_eng": 0.4, "student": -0.8, "held_current_account": 1.0},
    "personal_loan": {"dti": -1.0, "z_sav": -0.6, "deps": 0.25, "z_inc": 0.2, "held_credit_card": 0.4},
    "mortgage": {
        "married": 0.8,
        "deps": 0.3,
        "z_inc": 0.5,
        "dti": -0.4,
        "z_loan": 1.0,
        "student": -2.0,
        "retired": -2.0,
    },
    "investment_fund": {
        "z_sav": 1.1,
        "z_inc": 0.3,
        "z_edu": 0.3,
        "held_savings_account": 0.6,
        "held_term_deposit": 0.4,
    },
    "pension": {"z_inc": 0.5, "self_employed": 0.8, "retired": -2.5, "held_investment_fund": 0.4},
    "insurance": {"z_inc": 0.2},
}
# Holding a product of the same type lowers the utility of its siblings.
_SAME_TYPE = {
    "current_account": -3.0,
    "savings_account": -1.5,
    "term_deposit": -0.6,
    "credit_card": -1.5,
    "personal_loan": -2.0,
    "mortgage": -4.0,
    "investment_fund": -0.4,
    "pension": -1.5,
    "insurance": -0.3,
}
# Utility per percentage point of yield above the base product's (variants only).
_YIELD_BETA = {
    "current_account": 0.5,
    "savings_account": 0.8,
    "term_deposit": 0.8,
    "credit_card": 0.1,
    "personal_loan": 0.5,
    "mortgage": 0.5,
    "investment_fund": 0.3,
    "pension": 0.3,
    "insurance": 0.0,
}
_DURATIONS = {
    "term_deposit": (3, 6, 9, 12, 18, 24, 36, 48, 60),
    "personal_loan": (12, 24, 36, 48, 60, 72, 84),
    "mortgage": (120, 180, 240, 300, 360),
}
_RISK_FIT_TYPES = ("investment_fund", "pension")
_RISK_FIT_W, _RISK_FIT_SD = 1.5, 1.2
_DIGITAL_W, _DIGITAL_PIVOT = 3.0, 0.45
_THRESH_W = 2.5
_AGE_PENALTY = 8.0
_SUIT_BASE, _SUIT_STEP = 4.0, 3.0


@dataclass(frozen=True)
class _Catalogue:
    frame: pd.DataFrame
    pop: np.ndarray  # [P]
    W: np.ndarray  # [F, P] feature effects
    K: np.ndarray  # [n_types, P] holdings effects
    life_c: np.ndarray
    life_w: np.ndarray
    life_a: np.ndarray
    type_idx: np.ndarray  # [P] index into TYPES
    risk_fit: np.ndarray  # [P] bool
    attr: np.ndarray  # [P] variant attribute bonus


def _catalogue(n_products: int, rng: np.random.Generator, k: float) -> _Catalogue:
    if n_products <= BASE_CATALOGUE_SIZE:
        keep = set(_PRIORITY[:n_products])
        bases = [b for b in _BASE_CATALOGUE if b.pid in keep]
        rows = [(b, b.pid, b.name, b.risk, b.yld, b.dur, b.min_inc, b.min_cs, b.fee, b.digital) for b in bases]
    else:
        rows = [
            (b, b.pid, b.name, b.risk, b.yld, b.dur, b.min_inc, b.min_cs, b.fee, b.digital) for b in _BASE_CATALOGUE
        ]
        n_var = n_products - BASE_CATALOGUE_SIZE
        j = np.arange(n_var)
        base_i = j % BASE_CATALOGUE_SIZE
        version = j // BASE_CATALOGUE_SIZE + 1
        u_yield = rng.uniform(0.85, 1.15, n_var)
        u_fee = rng.uniform(0.7, 1.3, n_var)
        u_inc = rng.uniform(0.8, 1.25, n_var)
        d_cs = rng.integers(-40, 41, n_var)
        flip = rng.random(n_var) < 0.25
        d_risk = rng.choice(np.array([-1, 0, 0, 1]), n_var)
        u_dur = rng.random(n_var)
        for v in range(n_var):
            b = _BASE_CATALOGUE[base_i[v]]
            risk, yld = b.risk, b.yld * u_yield[v]
            if b.ptype == "investment_fund":
                risk = int(np.clip(b.risk + d_risk[v], 2, 7))
            elif b.ptype == "pension":
                risk = int(np.clip(b.risk + d_risk[v], 2, 6))
            yld += 1.5 * (risk - b.risk)
            dur = b.dur
            if b.ptype in _DURATIONS:
                choices = _DURATIONS[b.ptype]
                dur = choices[int(u_dur[v] * len(choices))]
                if b.ptype == "term_deposit":  # longer terms pay more
                    yld += 0.3 * math.log(dur / b.dur)
            if b.ptype == "current_account" and b.yld == 0:  # some variants pay a little interest
                yld = 0.5 * u_dur[v]
            fee = round(b.fee * u_fee[v], 1) if b.fee > 0 else 0.0
            min_inc = round(b.min_inc * u_inc[v], -3) if b.min_inc > 0 else 0.0
            min_cs = int(np.clip(b.min_cs + d_cs[v], 300, 850)) if b.min_cs > 0 else 0
            digital = 1 - b.digital if flip[v] else b.digital
            tag = f"V{version[v]:02d}"
            rows.append(
                (
                    b,
                    f"{b.pid}_{tag}",
                    f"{b.name} {tag}",
                    risk,
                    round(float(yld), 2),
                    dur,
                    float(min_inc),
                    min_cs,
                    fee,
                    digital,
                )
            )

    bases = [r[0] for r in rows]
    family = pd.Series([b.pid for b in bases]).value_counts()
    P = len(rows)
    frame = pd.DataFrame(
        {
            PRODUCT_ID: [r[1] for r in rows],
            NAME: [r[2] for r in rows],
            SYNTHETIC.category: [b.ptype for b in bases],
            SYNTHETIC.risk_level: np.array([r[3] for r in rows], dtype=np.int64),
            _YIELD: np.array([r[4] for r in rows], dtype=np.float64),
            _DURATION: np.array([r[5] for r in rows], dtype=np.int64),
            MIN_INCOME: np.array([r[6] for r in rows], dtype=np.float64),
            MIN_CREDIT_SCORE: np.array([r[7] for r in rows], dtype=np.int64),
            MIN_AGE: np.array([b.min_age for b in bases], dtype=np.int64),
            MAX_AGE: np.array([b.max_age for b in bases], dtype=np.int64),
            _FEE: np.array([r[8] for r in rows], dtype=np.float64),
            _DIGITAL: np.array([r[9] for r in rows], dtype=np.int64),
        }
    )
    frame = frame[[PRODUCT_ID, NAME, SYNTHETIC.category, SYNTHETIC.risk_level, *SYNTHETIC.product_numeric]]
    frame = _with_product_terms(frame, bases)

    W = np.zeros((len(_FEATURES), P))
    K = np.zeros((len(TYPES), P))
    for p, b in enumerate(bases):
        coef = dict(_TYPE_COEF[b.ptype])
        for name, value in b.coef.items():
            coef[name] = coef.get(name, 0.0) + value
        same = f"held_{b.ptype}"
        coef[same] = coef.get(same, 0.0) + _SAME_TYPE[b.ptype]
        for name, value in coef.items():
            if name.startswith("held_"):
                K[_TYPE_INDEX[name[5:]], p] = k * value
            else:
                W[_FEATURE_INDEX[name], p] = value
    pop = np.array([b.pop - math.log(family[b.pid]) for b in bases])
    yld = frame[_YIELD].to_numpy()
    fee = frame[_FEE].to_numpy()
    attr = np.array([_YIELD_BETA[b.ptype] for b in bases]) * (yld - np.array([b.yld for b in bases]))
    attr -= 0.1 * (fee - np.array([b.fee for b in bases]))
    return _Catalogue(
        frame=frame,
        pop=pop,
        W=W,
        K=K,
        life_c=np.array([b.life[0] for b in bases]),
        life_w=np.array([b.life[1] for b in bases]),
        life_a=k * np.array([b.life[2] for b in bases]),
        type_idx=np.array([_TYPE_INDEX[b.ptype] for b in bases]),
        risk_fit=np.array([b.ptype in _RISK_FIT_TYPES for b in bases]),
        attr=attr,
    )


# --------------------------------------------------------------------------------------------
# Customers
# --------------------------------------------------------------------------------------------


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _pick(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One index per row of a [n, k] matrix of (unnormalised) probabilities."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cum[:, -1]
    return np.minimum((cum < u[:, None]).sum(axis=1), probs.shape[1] - 1)


def _customer_ids(n: int, start: int = 0, total: int | None = None) -> np.ndarray:
    """Ids ``start + 1`` .. ``start + n``, zero-padded to the width of the bank's ``total``."""
    width = max(7, len(str(n if total is None else total)))
    return np.array([f"C{i:0{width}d}" for i in range(start + 1, start + n + 1)], dtype=object)


def _customers(
    n: int, rng: np.random.Generator, ids: np.ndarray | None = None
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    age = np.minimum(18 + np.floor(68 * rng.beta(1.9, 2.5, n)), 85).astype(np.int64)
    a = age.astype(np.float64)
    gender = rng.integers(0, 2, n)
    region = _pick(rng, np.broadcast_to(np.array(REGION_P), (n, len(REGIONS))))

    p_wid = 0.35 * _sigmoid((a - 75) / 6)
    p_mar = 0.65 * _sigmoid((a - 29) / 4) * (1 - p_wid)
    p_div = 0.12 * _sigmoid((a - 35) / 6)
    marital = _pick(rng, np.stack([np.clip(1 - p_wid - p_mar - p_div, 0.02, 1), p_mar, p_div, p_wid], axis=1))
    married = marital == 1

    p_student = 0.7 * _sigmoid((23 - a) / 1.5)
    p_retired = _sigmoid((a - 64) / 1.5)
    rest = np.clip(1 - p_student - p_retired, 0, 1)
    employment = _pick(rng, np.stack([0.78 * rest, 0.13 * rest, 0.09 * rest, p_retired, p_student], axis=1))
    unemployed, self_employed = employment == 2, employment == 1

    edu_logits = np.stack(
        [
            0.8 + 0.015 * (a - 40),
            np.full(n, 0.5),
            np.where(a < 22, -np.inf, 0.0),
            np.where(a < 26, -np.inf, -1.6),
        ],
        axis=1,
    )
    edu = np.argmax(edu_logits + rng.gumbel(size=(n, 4)), axis=1)

    emp_eff = np.array([0.0, 0.1, -0.9, -0.35, -1.3])[employment]
    sd = np.where(self_employed, 0.7, 0.45)
    log_inc = (
        9.9
        + 0.03 * (np.minimum(a, 50) - 18)
        - 0.008 * np.maximum(a - 55, 0)
        + np.array([0.0, 0.25, 0.4, 0.55])[edu]
        + emp_eff
        + sd * rng.standard_normal(n)
    )
    income = np.maximum(np.round(np.exp(log_inc) / 10) * 10, 1200.0)
    li = np.log(income)

    log_sav = li - 1.6 + 0.035 * (a - 18) + 0.15 * edu + rng.standard_normal(n)
    savings = np.round(np.exp(log_sav))

    p_mort = 0.6 * np.exp(-0.5 * ((a - 42) / 10) ** 2) * _sigmoid(3 * (li - 10.2)) * np.where(married, 1.2, 0.8)
    u = rng.random(n)
    has_mort = u < p_mort
    has_small = (~has_mort) & (u < p_mort + 0.25)
    amort = np.clip(1 - np.maximum(a - 35, 0) / 30, 0.15, 1)
    loan_amount = np.where(
        has_mort,
        income * rng.uniform(2.0, 4.5, n) * amort,
        np.where(has_small, income * rng.uniform(0.05, 0.5, n), 0.0),
    )
    loan_amount = np.round(loan_amount)

    util = np.round(_sigmoid(-1.0 - 0.6 * (li - 10.5) - 0.02 * (a - 40) + 0.9 * rng.standard_normal(n)), 3)
    debt = np.round(loan_amount + util * 0.15 * income)
    s = 0.6 + 0.025 * (a - 40) + 0.5 * (li - 10.5) - 3.0 * (util - 0.3) - 0.5 * unemployed
    credit_score = np.clip(np.round(300 + 550 * _sigmoid(s + 0.5 * rng.standard_normal(n))), 300, 850).astype(np.int64)
    dti = np.round(debt / income, 4)

    eng = np.round(_sigmoid(1.6 - 0.065 * (a - 18) + 0.3 * edu + 0.7 * rng.standard_normal(n)), 3)
    tx = rng.poisson(np.exp(1.5 + 1.3 * eng + 0.3 * (li - 10.5))).astype(np.int64)
    tenure = np.round(rng.random(n) ** 1.3 * np.minimum(a - 18, 40), 1)
    lam = np.where(married, 1.5, 0.35) * np.exp(-0.5 * ((a - 42) / 12) ** 2)
    deps = np.minimum(rng.poisson(lam), 6).astype(np.int64)
    ch_logits = np.stack([1.5 - 4 * eng + 0.02 * (a - 40), 0.3 + 0.5 * eng, -1.5 + 4 * eng, np.full(n, 0.4)], axis=1)
    channel = np.argmax(ch_logits + rng.gumbel(size=(n, 4)), axis=1)

    rt_latent = (
        3.6
        - 0.035 * (a - 40)
        + 0.7 * (li - 10.6)
        + 0.25 * (np.log1p(savings) - 10)
        + 0.3 * edu
        + 0.3 * self_employed
        + 0.9 * rng.standard_normal(n)
    )
    risk_tol = np.clip(np.round(rt_latent), RISK_MIN, RISK_MAX).astype(np.int64)

    cols = {
        CUSTOMER_ID: _customer_ids(n) if ids is None else ids,
        AGE: age,
        INCOME: income,
        _SAVINGS: savings,
        _DEBT: debt,
        _LOAN: loan_amount,
        CREDIT_SCORE: credit_score,
        _UTIL: util,
        _DTI: dti,
        _ENG: eng,
        _TX: tx,
        _TENURE: tenure,
        _DEPS: deps,
        _GENDER: np.array(GENDERS, dtype=object)[gender],
        _MARITAL: np.array(MARITAL, dtype=object)[marital],
        _REGION: np.array(REGIONS, dtype=object)[region],
        _EMPLOYMENT: np.array(EMPLOYMENTS, dtype=object)[employment],
        _EDUCATION: np.array(EDUCATIONS, dtype=object)[edu],
        _CHANNEL: np.array(CHANNELS, dtype=object)[channel],
        SYNTHETIC.risk_tolerance: risk_tol,
    }
    order = [CUSTOMER_ID, *SYNTHETIC.customer_numeric, *SYNTHETIC.customer_categorical, SYNTHETIC.risk_tolerance]
    frame = pd.DataFrame({c: cols[c] for c in order})
    return frame, _utility_inputs(frame)


def _utility_inputs(customers: pd.DataFrame) -> dict[str, np.ndarray]:
    """The customer side of the utility, from the observed columns only."""
    col = lambda name: customers[name].to_numpy()  # noqa: E731
    income = col(INCOME).astype(np.float64)
    edu = pd.Categorical(customers[_EDUCATION], categories=EDUCATIONS).codes.astype(np.float64)
    emp = customers[_EMPLOYMENT].to_numpy()
    X = np.stack(
        [
            (np.log(income) - math.log(40000)) / 0.6,
            (np.log1p(col(_SAVINGS).astype(np.float64)) - math.log(20000)) / 1.3,
            np.minimum(col(_DTI).astype(np.float64), 8.0),
            col(_ENG).astype(np.float64) - 0.5,
            np.minimum(col(_DEPS), 4).astype(np.float64),
            (customers[_MARITAL].to_numpy() == "married").astype(np.float64),
            (emp == "student").astype(np.float64),
            (emp == "retired").astype(np.float64),
            (emp == "self_employed").astype(np.float64),
            (emp == "unemployed").astype(np.float64),
            edu - 1.0,
            np.log1p(col(_LOAN).astype(np.float64) / income),
        ],
        axis=1,
    )
    return {
        "X": X,
        "age": col(AGE).astype(np.float64),
        "log_income": np.log(income),
        "credit_score": col(CREDIT_SCORE).astype(np.float64),
        "eng": col(_ENG).astype(np.float64),
        "rt": col(SYNTHETIC.risk_tolerance).astype(np.float64),
    }


# --------------------------------------------------------------------------------------------
# Compliance columns and the rules that bind adoption


def _with_compliance_columns(customers: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Add the suitability profile, marketing consent and monthly debt service (see the README's
    compliance section), drawn from their own stream ``rng``."""
    n = len(customers)
    a = customers[AGE].to_numpy(np.float64)
    income = customers[INCOME].to_numpy(np.float64)
    savings = customers[_SAVINGS].to_numpy(np.float64)
    loan = customers[_LOAN].to_numpy(np.float64)
    card = np.maximum(customers[_DEBT].to_numpy(np.float64) - loan, 0.0)
    edu = pd.Categorical(customers[_EDUCATION], categories=EDUCATIONS).codes.astype(np.float64)
    rt = customers[SYNTHETIC.risk_tolerance].to_numpy(np.float64)
    dti = customers[_DTI].to_numpy(np.float64)
    z_sav = (np.log1p(savings) - math.log(20000)) / 1.3
    z_inc = (np.log(income) - math.log(40000)) / 0.6

    knowledge = 1 + np.digitize(0.6 * edu + 0.6 * z_sav + 0.2 * (rt - 4) + rng.standard_normal(n), [0.4, 1.6])
    capacity = 1 + np.digitize(
        0.8 * z_sav + 0.5 * z_inc - 0.4 * np.minimum(dti, 5) + 0.8 * rng.standard_normal(n), [-0.9, 0.2, 1.4]
    )
    logits = np.stack(
        [
            0.8 - 0.5 * (rt - 3.5) + 0.02 * (a - 50),  # preservation
            0.2 + 0.03 * (a - 50),  # income
            0.6 + 0.5 * (rt - 3.5) - 0.03 * (a - 40),  # growth
            0.9 - 0.15 * np.abs(a - 52) / 5,  # retirement
        ],
        axis=1,
    )
    objective = np.argmax(logits + rng.gumbel(size=(n, 4)), axis=1)
    horizon = np.maximum(1, np.round(np.clip(67 - a, 2, 35) * rng.uniform(0.3, 1.0, n))).astype(np.int64)
    consent = (rng.random(n) >= OBJECTION_P).astype(np.int64)
    # Loans up to half a year's income repay over 5 years at 8%, larger ones over 25 years at 4%
    # (annuity factors); cards pay 3% of the balance a month.
    debt_service = np.round(np.where(loan <= 0.5 * income, 0.020276, 0.005278) * loan + 0.03 * card)

    names = dict(SYNTHETIC.compliance_profile)
    out = customers.copy()
    out[SYNTHETIC.consent] = consent
    out[names["knowledge"]] = knowledge.astype(np.int64)
    out[names["loss_capacity"]] = capacity.astype(np.int64)
    out[names["objective"]] = np.array(OBJECTIVES, dtype=object)[objective]
    out[names["horizon"]] = horizon
    out[names["debt_service"]] = debt_service
    return out


def _annuity(amount: float, apr_percent: float, months: int) -> float:
    r = abs(apr_percent) / 100 / 12
    return amount / months if r == 0 else amount * r / (1 - (1 + r) ** -months)


def _with_product_terms(frame: pd.DataFrame, bases: list[_Base]) -> pd.DataFrame:
    """Add the target-market terms of investment products (a variant keeps its base's) and the
    monthly payment of credit products: 3% of a card limit (15% of the minimum income, at least
    2,000), the annuity of a typical loan or mortgage over the product's term at its rate."""
    tm = dict(SYNTHETIC.target_market)
    rows = [_TARGET_MARKET.get(b.pid, (np.nan, np.nan, np.nan, None, None, np.nan)) for b in bases]
    out = frame.copy()
    for i, term in enumerate(
        ("knowledge", "loss_capacity", "horizon", "objectives", "negative_objectives", "negative_loss_capacity")
    ):
        values = [r[i] for r in rows]
        out[tm[term]] = pd.Series(values, dtype=object if term.endswith("objectives") else np.float64)
    payment = np.full(len(frame), np.nan)
    for j, b in enumerate(bases):
        if b.ptype == "credit_card":
            payment[j] = 0.03 * max(2000.0, 0.15 * float(frame[MIN_INCOME].iloc[j]))
        elif b.ptype in _TYPICAL_AMOUNT:
            payment[j] = _annuity(_TYPICAL_AMOUNT[b.ptype], float(frame[_YIELD].iloc[j]), int(frame[_DURATION].iloc[j]))
    out[SYNTHETIC.credit_payment] = np.round(payment, 2)
    return out


def _rules(customers: pd.DataFrame, products: pd.DataFrame):
    """``forbidden(sl)`` -> bool [n, P]: what the default filters exclude for customers ``sl``
    besides held products: suitability of investment products, the target market and negative
    target market, affordability at the default limit, and the eligibility terms (income,
    credit score, age). The same functions as the recommender's filters (``finrec.data.compliance``)."""
    schema = SYNTHETIC.schema()
    profile = C.customer_profile(customers, schema.customers)
    terms = C.product_terms(products, schema.products)
    regime = C.product_regimes(products, schema.products)
    payment = C.product_payments(products, schema.products)
    investment, credit = regime == "investment", regime == "credit"
    income = customers[INCOME].to_numpy(np.float64)
    score = customers[CREDIT_SCORE].to_numpy(np.float64)
    age = customers[AGE].to_numpy(np.float64)
    rt = customers[SYNTHETIC.risk_tolerance].to_numpy(np.float64)
    risk = products[SYNTHETIC.risk_level].to_numpy(np.float64)
    terms_min = {c: products[c].to_numpy(np.float64) for c in (MIN_INCOME, MIN_CREDIT_SCORE, MIN_AGE, MAX_AGE)}

    def forbidden(sl: slice) -> np.ndarray:
        part = {name: values[sl] for name, values in profile.items()}
        out = C.outside_target_market(part, terms, investment) | C.in_negative_target_market(part, terms, investment)
        out |= C.unaffordable(
            income[sl], part["debt_service"], score[sl], payment, credit, C.DEFAULT_MAX_DEBT_SERVICE_RATIO, None
        )
        out |= (risk[None, :] > rt[sl, None]) & investment[None, :]
        out |= income[sl, None] < terms_min[MIN_INCOME][None, :]
        out |= score[sl, None] < terms_min[MIN_CREDIT_SCORE][None, :]
        out |= (age[sl, None] < terms_min[MIN_AGE][None, :]) | (age[sl, None] > terms_min[MAX_AGE][None, :])
        return out

    return forbidden


def forbidden(customers: pd.DataFrame, products: pd.DataFrame) -> np.ndarray:
    """bool [n_customers, n_products] for frames made by ``generate``: the products the rules
    forbid each customer (``_rules``); their adoption probability is 0 and nobody adopts them."""
    return _rules(customers, products)(slice(None))


# --------------------------------------------------------------------------------------------
# Utility and sampling
# --------------------------------------------------------------------------------------------


def _base_utility(cust: dict[str, np.ndarray], sl: slice, cat: _Catalogue, k: float) -> np.ndarray:
    """U without the holdings term for customers ``sl``: [n, P]."""
    pf = cat.frame
    age = cust["age"][sl, None]
    U = cust["X"][sl] @ cat.W
    U += cat.pop + cat.attr
    U += cat.life_a * np.exp(-0.5 * ((age - cat.life_c) / cat.life_w) ** 2)
    min_inc = pf[MIN_INCOME].to_numpy(np.float64)
    has = min_inc > 0
    if has.any():
        U[:, has] += _THRESH_W * _log_sigmoid(3.0 * (cust["log_income"][sl, None] - np.log(min_inc[has])))
    min_cs = pf[MIN_CREDIT_SCORE].to_numpy(np.float64)
    has = min_cs > 0
    if has.any():
        U[:, has] += _THRESH_W * _log_sigmoid((cust["credit_score"][sl, None] - min_cs[has]) / 25.0)
    outside = (age < pf[MIN_AGE].to_numpy()) | (age > pf[MAX_AGE].to_numpy())
    U -= _AGE_PENALTY * outside
    U += (k * _DIGITAL_W) * pf[_DIGITAL].to_numpy(np.float64) * (cust["eng"][sl, None] - _DIGITAL_PIVOT)
    rt = cust["rt"][sl, None]
    r = pf[SYNTHETIC.risk_level].to_numpy(np.float64)
    U += (k * _RISK_FIT_W) * cat.risk_fit * np.exp(-0.5 * ((rt - r) / _RISK_FIT_SD) ** 2)
    over = np.maximum(r - rt, 0.0)
    U -= (over > 0) * (_SUIT_BASE + _SUIT_STEP * over)
    return U


def _with_holdings(U0: np.ndarray, held: np.ndarray, cat: _Catalogue) -> np.ndarray:
    n_types = len(TYPES)
    held_types = np.zeros((len(held), n_types))
    rows, cols = np.nonzero(held)
    held_types[rows, cat.type_idx[cols]] = 1.0
    return U0 + held_types @ cat.K


def utility(
    customers: pd.DataFrame, products: pd.DataFrame, held: np.ndarray | None = None, difficulty: str = "default"
) -> np.ndarray:
    """The latent utility U [n_customers, n_products] for frames made by ``generate``.

    ``held`` is an optional boolean [n_customers, n_products] matrix of holdings. The products must
    come from ``generate`` (the per-product coefficients are looked up by product id). The ground
    truth is ``softmax(U / TEMPERATURE[difficulty])`` over the products neither held nor
    ``forbidden``.
    """
    if difficulty not in DIFFICULTIES:
        raise ConfigError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    k = _INTERACTION_SCALE[difficulty]
    cat = _catalogue_from_frame(products, k)
    cust = _utility_inputs(customers)
    U0 = _base_utility(cust, slice(None), cat, k)
    if held is None:
        return U0
    return _with_holdings(U0, np.asarray(held, dtype=bool), cat)


def _catalogue_from_frame(products: pd.DataFrame, k: float) -> _Catalogue:
    by_id = {b.pid: b for b in _BASE_CATALOGUE}
    ids = products[PRODUCT_ID].astype(str).tolist()
    base_ids = []
    for pid in ids:
        base = pid if pid in by_id else pid.rsplit("_V", 1)[0]
        if base not in by_id:
            raise ConfigError(f"product '{pid}' is not from the synthetic catalogue")
        base_ids.append(base)
    full = _catalogue(BASE_CATALOGUE_SIZE, np.random.default_rng(0), k)
    idx = [list(full.frame[PRODUCT_ID]).index(b) for b in base_ids]
    family = pd.Series(base_ids).value_counts()
    bases = [by_id[b] for b in base_ids]
    yld = products[_YIELD].to_numpy(np.float64)
    fee = products[_FEE].to_numpy(np.float64)
    attr = np.array([_YIELD_BETA[b.ptype] for b in bases]) * (yld - np.array([b.yld for b in bases]))
    attr -= 0.1 * (fee - np.array([b.fee for b in bases]))
    return _Catalogue(
        frame=products.reset_index(drop=True),
        pop=np.array([b.pop - math.log(family[b.pid]) for b in bases]),
        W=full.W[:, idx],
        K=full.K[:, idx],
        life_c=full.life_c[idx],
        life_w=full.life_w[idx],
        life_a=full.life_a[idx],
        type_idx=full.type_idx[idx],
        risk_fit=full.risk_fit[idx],
        attr=attr,
    )


def _top_m(G: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of each row's ``m`` largest entries of G, in descending order per row."""
    if m.max(initial=0) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    width = int(m.max())
    if width < G.shape[1]:
        part = np.argpartition(-G, width - 1, axis=1)[:, :width]
        order = np.take_along_axis(part, np.argsort(-np.take_along_axis(G, part, axis=1), axis=1), axis=1)
    else:
        order = np.argsort(-G, axis=1)
    mask = np.arange(width)[None, :] < m[:, None]
    rows = np.nonzero(mask)[0]
    return rows, order[mask]


def _adoption_counts(rng: np.random.Generator, available: np.ndarray, mean: float) -> np.ndarray:
    p0 = NO_ADOPTION_P
    lam = mean / (1 - p0) - 1
    if lam < 0:
        p0, lam = 1 - mean, 0.0
    m = 1 + rng.poisson(lam, len(available))
    m[rng.random(len(available)) < p0] = 0
    return np.minimum(m, available)


def generate(
    settings: GeneratorSettings = GeneratorSettings(), block_customers: int = BLOCK_CUSTOMERS
) -> dict[str, pd.DataFrame]:
    """Generate the synthetic bank described in the module docstring: ``generate_blocks``'
    blocks joined (one block, as it always was, up to ``block_customers`` customers)."""
    blocks = list(generate_blocks(settings, block_customers))
    if len(blocks) == 1:
        return blocks[0]
    out = {}
    for name in blocks[0]:
        parts = [block[name] for block in blocks if name in block]
        if name == HOLDINGS_HISTORY:
            # Each block's ids are categories of their own: unite them, not decode 12 x holdings rows.
            out[name] = pd.DataFrame(
                {
                    c: union_categoricals([part[c] for part in parts])
                    if c != AS_OF
                    else np.concatenate([part[c].to_numpy() for part in parts])
                    for c in parts[0].columns
                }
            )
        else:
            out[name] = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    return out


def generate_blocks(
    settings: GeneratorSettings = GeneratorSettings(), block_customers: int = BLOCK_CUSTOMERS
) -> Iterator[dict[str, pd.DataFrame]]:
    """The bank of ``generate``, ``block_customers`` customers at a time, for banks larger than
    memory (``finrec generate`` writes them as they come; a block of 1M customers with 12 months
    of history peaks near 4 GB).

    The first block holds ``products``; every block holds its customers and their links. A bank
    of at most ``block_customers`` customers is one block drawn from the seed's own streams, so
    it is the bank ``generate`` has always made. A larger bank draws block ``i`` from streams of
    its own (``SeedSequence(seed, spawn_key=(BLOCK_KEY, i))``) with the one catalogue of the
    seed: the customers are the same kind of draw, and the ids run on across blocks."""
    if not isinstance(settings, GeneratorSettings):
        raise ConfigError(f"settings must be a GeneratorSettings, got {type(settings).__name__}")
    settings.validate()
    _check_int("block_customers", block_customers, 1, MAX_CUSTOMERS)
    return _blocks(settings, block_customers)  # checked now, not at the first block


def _blocks(settings: GeneratorSettings, block_customers: int) -> Iterator[dict[str, pd.DataFrame]]:
    seq = np.random.SeedSequence(int(settings.seed))
    # The fourth stream draws the compliance columns: spawning it leaves the first three (and so
    # every column they drew before those columns existed) exactly as they were.
    rng_c, rng_p, rng_s, rng_x = (np.random.default_rng(s) for s in seq.spawn(4))
    cat = _catalogue(settings.n_products, rng_p, _INTERACTION_SCALE[settings.difficulty])
    n = settings.n_customers
    if n <= block_customers:
        yield _block(settings, cat, (rng_c, rng_s, rng_x), seq, 0, n)
        return
    for i, start in enumerate(range(0, n, block_customers)):
        block_seq = np.random.SeedSequence(int(settings.seed), spawn_key=(BLOCK_KEY, i))
        rng_c, _, rng_s, rng_x = (np.random.default_rng(s) for s in block_seq.spawn(4))
        tables = _block(settings, cat, (rng_c, rng_s, rng_x), block_seq, start, n, min(block_customers, n - start))
        if i:
            del tables[PRODUCTS]
        yield tables
        del tables  # not held while the next block is drawn


def _block(
    settings: GeneratorSettings,
    cat: _Catalogue,
    rngs: tuple[np.random.Generator, np.random.Generator, np.random.Generator],
    seq: np.random.SeedSequence,
    start_id: int,
    total: int,
    size: int | None = None,
) -> dict[str, pd.DataFrame]:
    """Customers ``start_id`` .. ``start_id + size`` of a bank of ``total`` and their links,
    drawn from ``rngs`` (customers, sampling, compliance columns) and, with months, a stream
    spawned from ``seq`` after its first four."""
    rng_c, rng_s, rng_x = rngs
    k = _INTERACTION_SCALE[settings.difficulty]
    T = TEMPERATURE[settings.difficulty]
    mean = settings.adoptions_per_customer * (HARD_ADOPTION_FACTOR if settings.difficulty == "hard" else 1.0)
    n = total if size is None else size

    customers, cust = _customers(n, rng_c, _customer_ids(n, start_id, total))
    customers = _with_compliance_columns(customers, rng_x)
    products = cat.frame
    forbidden_in = _rules(customers, products)
    P = len(products)
    is_current = cat.type_idx == _TYPE_INDEX["current_account"]
    chunk = max(1, 6_000_000 // P)

    hold_c, hold_p, act_c, act_p, gt_c, gt_p, gt_v = [], [], [], [], [], [], []
    past_c, past_p, past_m = [], [], []
    if settings.months:
        # A fifth stream, spawned after the four above: with months=0 nothing changes.
        rng_h = np.random.default_rng(seq.spawn(1)[0])
        market = history.Market(
            product_ids=products[PRODUCT_ID].to_numpy(dtype=object),
            product_types=products[SYNTHETIC.category].to_numpy(dtype=object),
            durations=products[_DURATION].to_numpy(np.int64),
            with_holdings=lambda U, held: _with_holdings(U, held, cat),
            top_m=_top_m,
            temperature=T,
            monthly_p=min(history.MAX_MONTHLY_P, history.MONTHLY_SHARE * mean),
        )
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        nc = sl.stop - sl.start
        U0 = _base_utility(cust, sl, cat, k)
        held = np.zeros((nc, P), dtype=bool)
        # 1. a current account for nearly everyone
        has_cur = rng_s.random(nc) < HOLD_CURRENT_P
        if is_current.any():
            G = U0 / T + rng_s.gumbel(size=(nc, P))
            G[:, ~is_current] = -np.inf
            pick = np.argmax(G, axis=1)
            rows = np.nonzero(has_cur)[0]
            held[rows, pick[rows]] = True
        else:
            has_cur[:] = False
        # 2. up to two more products from the utility given that account
        extra = np.minimum(rng_s.poisson(EXTRA_HOLDINGS_MEAN, nc), EXTRA_HOLDINGS_MAX)
        extra = np.where(has_cur, extra, np.maximum(extra, 1))
        G = _with_holdings(U0, held, cat) / T + rng_s.gumbel(size=(nc, P))
        G[held] = -np.inf
        rows, cols = _top_m(G, np.minimum(extra, P - held.sum(axis=1)))
        held[rows, cols] = True
        if settings.months:
            # 3'. a past: month-ends of life cycles and life events, then the target month
            sim = history.simulate(
                U0,
                held,
                forbidden_in(sl),
                _people(customers, cust, sl),
                market,
                settings.months,
                rng_h,
                settings.ground_truth,
            )
            held = sim.held
            past_c.append(sim.snapshot_rows + start)
            past_p.append(sim.snapshot_cols)
            past_m.append(sim.snapshot_month)
        hr, hp = np.nonzero(held)
        hold_c.append(hr + start)
        hold_p.append(hp)
        if settings.months:
            act_c.append(sim.adopt_rows + start)
            act_p.append(sim.adopt_cols)
            if settings.ground_truth:
                gr, gp = np.nonzero(~held)
                gt_c.append(gr + start)
                gt_p.append(gp)
                gt_v.append(sim.probability[gr, gp])
            continue
        # 3. adoptions: Plackett-Luce on the final utility, never a held product nor one the
        # rules forbid (a customer who cannot take a product up does not)
        V = _with_holdings(U0, held, cat) / T
        V[held | forbidden_in(sl)] = -np.inf
        m = _adoption_counts(rng_s, np.isfinite(V).sum(axis=1), mean)
        G = V + rng_s.gumbel(size=(nc, P))
        rows, cols = _top_m(G, m)
        act_c.append(rows + start)
        act_p.append(cols)
        if settings.ground_truth:
            # A customer the rules leave nothing (possible in a tiny catalogue) gets probability 0 everywhere.
            top = V.max(axis=1, keepdims=True)
            e = np.exp(V - np.where(np.isfinite(top), top, 0.0))
            total = e.sum(axis=1, keepdims=True)
            prob = e / np.where(total > 0, total, 1.0)
            gr, gp = np.nonzero(~held)
            gt_c.append(gr + start)
            gt_p.append(gp)
            gt_v.append(prob[gr, gp])

    ids = customers[CUSTOMER_ID].to_numpy(dtype=object)
    pids = products[PRODUCT_ID].to_numpy(dtype=object)
    hc, hp = np.concatenate(hold_c), np.concatenate(hold_p)
    holdings = pd.DataFrame({CUSTOMER_ID: ids[hc], PRODUCT_ID: pids[hp]})

    ac, ap = np.concatenate(act_c), np.concatenate(act_p)
    # dates in 2026 (with a past: in its target month), ascending in pick order within a customer
    if settings.months:
        first_day, n_days = history.target_month_days()
        days = rng_h.integers(0, n_days, len(ac))
    else:
        first_day = np.datetime64(f"{_YEAR}-01-01")
        days = rng_s.integers(0, 365, len(ac))
    first = np.r_[True, ac[1:] != ac[:-1]] if len(ac) else np.empty(0, bool)
    group = np.cumsum(first) - 1
    order = np.lexsort((days, group))
    days = days[order]  # sorted within each customer's contiguous block
    dates = (first_day + days.astype("timedelta64[D]")).astype(str).astype(object)
    interactions = pd.DataFrame({CUSTOMER_ID: ids[ac], PRODUCT_ID: pids[ap], TIMESTAMP: dates})

    out = {CUSTOMERS: customers, PRODUCTS: products, INTERACTIONS: interactions, HOLDINGS: holdings}
    if settings.months:
        # Ids as categoricals: a history has months x holdings rows, each id stored once.
        month = np.concatenate(past_m).astype(np.int64)
        out[HOLDINGS_HISTORY] = pd.DataFrame(
            {
                CUSTOMER_ID: pd.Categorical.from_codes(np.concatenate(past_c), categories=pd.Index(ids, dtype=str)),
                PRODUCT_ID: pd.Categorical.from_codes(np.concatenate(past_p), categories=pd.Index(pids, dtype=str)),
                AS_OF: history.month_ends(settings.months)[month - 1],
            }
        )
    if settings.ground_truth:
        out[GROUND_TRUTH] = pd.DataFrame(
            {
                CUSTOMER_ID: ids[np.concatenate(gt_c)],
                PRODUCT_ID: pids[np.concatenate(gt_p)],
                PROBABILITY: np.concatenate(gt_v),
            }
        )
    return out


def _people(customers: pd.DataFrame, cust: dict[str, np.ndarray], sl: slice) -> dict[str, np.ndarray]:
    """What the life events of ``history.simulate`` depend on, for customers ``sl``."""
    employment = customers[_EMPLOYMENT].to_numpy()[sl]
    income = customers[INCOME].to_numpy(np.float64)[sl]
    return {
        "age": cust["age"][sl],
        "employed": np.isin(employment, ("employed", "self_employed")),
        "dependents": customers[_DEPS].to_numpy()[sl],
        "loan_to_income": customers[_LOAN].to_numpy(np.float64)[sl] / income,
    }


def period_adoption_probabilities(
    first_choice: np.ndarray,
    settings: GeneratorSettings,
    draws: int = 2000,
    seed: int = 0,
    n_held: np.ndarray | None = None,
) -> np.ndarray:
    """P(customer adopts product p at all in the period) [n, P], by simulating the adoption step.

    ``first_choice`` [n, P] is the ground truth (softmax of U/T over products not held, 0 where
    held), which is all the adoption step depends on: each draw takes ``m`` from the count
    distribution of ``generate`` and the Gumbel-top-m of ``log first_choice`` (Plackett-Luce),
    and the result is the share of ``draws`` in which p was picked. Its standard error is at most
    ``0.5 / sqrt(draws)`` per entry and averages out over many customers.

    A bank with a past (``settings.months`` > 0) draws the target month's count instead: 0 with
    probability 1 - ``history.adoption_probability`` of the ``n_held`` products each customer
    holds (int [n], required; the last snapshot's, which leaves out the month's own closures,
    about 1% of holdings), else ``1 + Poisson(0.25)``."""
    first_choice = np.asarray(first_choice, dtype=np.float64)
    mean = settings.adoptions_per_customer * (HARD_ADOPTION_FACTOR if settings.difficulty == "hard" else 1.0)
    rng = np.random.default_rng(seed)
    n, P = first_choice.shape
    available = (first_choice > 0).sum(axis=1)
    adopting = None
    if settings.months:
        if n_held is None or len(n_held) != n:
            raise ValueError(f"a bank with a past needs n_held [{n}], the products each customer holds")
        adopting = history.adoption_probability(n_held, min(history.MAX_MONTHLY_P, history.MONTHLY_SHARE * mean))
    with np.errstate(divide="ignore"):
        logits = np.log(first_choice)
    counts = np.zeros((n, P), dtype=np.int64)
    for _ in range(draws):
        if adopting is None:
            m = _adoption_counts(rng, available, mean)
        else:
            m = np.where(
                rng.random(n) < adopting, np.minimum(1 + rng.poisson(history.EXTRA_PER_MONTH, n), available), 0
            )
        rows, cols = _top_m(logits + rng.gumbel(size=(n, P)), m)
        counts[rows, cols] += 1
    return counts / draws


# --------------------------------------------------------------------------------------------
# Hooks for the other generative stories (``finrec.data.stories``): the same customers and the
# same sampling steps, so every story's adoptions follow one documented process.


def sample_customers(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """The customer columns this bank draws (demographics, money, behaviour; no compliance
    columns), ``n`` rows from ``rng``: what ``generate`` draws from its first stream."""
    _check_int("n_customers", n, 1, MAX_CUSTOMERS)
    return _customers(n, rng)[0]


def top_m(G: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of each row's ``m[row]`` largest entries of ``G`` [n, P], largest first
    per row: with Gumbel noise added to log-probabilities, a Plackett-Luce draw without replacement."""
    return _top_m(G, np.asarray(m))


def adoption_counts(rng: np.random.Generator, available: np.ndarray, mean: float) -> np.ndarray:
    """How many products each customer adopts (the module docstring's count model with mean
    ``mean``), clipped to ``available`` [n]."""
    return _adoption_counts(rng, np.asarray(available), mean)
