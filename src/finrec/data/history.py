r"""A bank with a past: month-end holdings simulated forward, for ``generate(months=N)``.

``simulate`` takes the customers' state before the first month (the holdings that
``finrec.data.synthetic`` draws) and runs ``N`` months and then the target month. Every month:

1. **Life cycles** close products at the start of the month: a term deposit matures when it has
   been held for its ``duration_months``; a personal loan is paid off at its term (or early, 1% a
   month); a mortgage is paid off early (0.2% a month); cards (1.2%), savings accounts (0.8%),
   funds (1%), pensions and current accounts (0.2%) are closed at those monthly rates; an
   insurance policy lapses at an anniversary with probability 0.15.
2. **The utility of the month** is the generator's ``U`` (customer, product and holdings terms)
   plus what the past adds, each term decaying with the months ``d`` since its event::

     + 1.5 exp(-d/2)   term deposits and funds after a deposit matured (the money looks for a home)
     - 3.0 exp(-d/6)   the product itself after the customer closed it (no quick re-adoption)
     - 1.0 exp(-d/6)   its siblings (same product type) after such a closure
     - 1.5 exp(-d/6)   loans after a loan was paid off
     + 1.0 exp(-d/3)   savings accounts and cards while the current account is new (tenure d)
     + 0.6             investment funds once a savings account has been held 24 months or more
     + life events (latent: never a column, seen only through what they make customers do):
       first job   (employed, age <= 30; 50% had it in the window): cards +1.5 exp(-d/4),
                   savings accounts +0.8 exp(-d/6), car loans +0.5 exp(-d/4)
       a child     (dependents >= 1, age 24-45; 30%): life insurance +2.0 exp(-d/6),
                   savings accounts +0.6 exp(-d/6), car loans +0.5 exp(-d/4)
       a home      (a loan of 1.5x income or more, age 25-55; 35%): mortgages +3.0 exp(-d/0.7),
                   home insurance +2.5 exp(-d/3), life insurance +1.0 exp(-d/6),
                   personal loans +0.6 exp(-d/3)
   where an event's month is uniform over the N + 1 months.
3. **Adoptions** (in the target month never of a product the last snapshot shows, though it may
   have matured since: ``holdings`` is what a model sees): a customer adopts in the month with probability ``q exp(-0.2 max(0, h - 2))``
   (``h`` products held, ``q`` = 0.2 x the generator's ``adoptions_per_customer``, capped at
   0.95), then ``1 + Poisson(0.25)`` products (clipped to what is left), the Gumbel-top-m of
   ``U / T`` over the products neither held nor forbidden, as in the generator.
4. The month-end snapshot of months 1..N is the ``holdings_history``; the last is ``holdings``.

The target month's adoptions are the ``interactions`` (dated in that month, first pick first),
and the ground truth is the softmax of the target month's ``U / T`` over the products neither
held nor forbidden: it accounts for every term above, so a model that reads the history can
approach it and one that reads only ``holdings`` cannot. The months are calendar months ending
with the target month, January of ``TARGET_YEAR``; a snapshot is dated at its month's last day.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAX_MONTHS = 120
TARGET_YEAR = 2026
NONE = -10_000  # "no such event": far enough in the past that every decay is 0

# Monthly closure hazards by product type (term deposits and personal loans also end at term).
CLOSE_HAZARD = {
    "current_account": 0.002,
    "savings_account": 0.008,
    "term_deposit": 0.0,
    "credit_card": 0.012,
    "personal_loan": 0.01,
    "mortgage": 0.002,
    "investment_fund": 0.01,
    "pension": 0.002,
    "insurance": 0.0,
}
LAPSE_AT_ANNIVERSARY = 0.15
MONTHLY_SHARE = 0.25  # q = MONTHLY_SHARE x adoptions_per_customer
MAX_MONTHLY_P = 0.95
SATURATION = 0.15
EXTRA_PER_MONTH = 0.25
NEW_ACCOUNT_MONTHS = 3.0


@dataclass(frozen=True)
class Market:
    """What the simulation needs from the generator: the products and how it draws.

    ``with_holdings(U0, held)`` adds the holdings term to a base utility [n, P];
    ``top_m(G, m)`` returns rows and columns of each row's ``m`` largest entries of G."""

    product_ids: np.ndarray  # [P] text
    product_types: np.ndarray  # [P] text (the generator's product types)
    durations: np.ndarray  # [P] months (0 = open-ended)
    with_holdings: Callable[[np.ndarray, np.ndarray], np.ndarray]
    top_m: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
    temperature: float
    monthly_p: float

    @property
    def base_ids(self) -> np.ndarray:
        return np.array([str(p).rsplit("_V", 1)[0] for p in self.product_ids], dtype=object)


@dataclass
class Simulated:
    """One chunk's past: snapshot rows (customer index, product index, month 1..N), the final
    holdings [n, P], the target month's adoptions (rows, columns, in pick order) and, when asked,
    the target month's true first-choice probabilities [n, P]. ``held`` is the last snapshot (the
    target month may close a product before its adoptions, which the snapshot cannot show)."""

    snapshot_rows: np.ndarray
    snapshot_cols: np.ndarray
    snapshot_month: np.ndarray
    held: np.ndarray
    adopt_rows: np.ndarray
    adopt_cols: np.ndarray
    probability: np.ndarray | None


def month_ends(months: int) -> np.ndarray:
    """datetime64[ns] [months]: the last day of each of the ``months`` months before the target month."""
    target = np.datetime64(f"{TARGET_YEAR}-01", "M")
    starts = target - np.arange(months, 0, -1).astype("timedelta64[M]")
    return ((starts + np.timedelta64(1, "M")).astype("datetime64[D]") - np.timedelta64(1, "D")).astype("datetime64[ns]")


def target_month_days() -> tuple[np.datetime64, int]:
    """The first day of the target month and its number of days."""
    start = np.datetime64(f"{TARGET_YEAR}-01", "M")
    first = start.astype("datetime64[D]")
    return first, int(((start + np.timedelta64(1, "M")).astype("datetime64[D]") - first).astype(int))


def _decay(months_since: np.ndarray, tau: float) -> np.ndarray:
    """exp(-d / tau) for d >= 0, 0 before the event (d < 0)."""
    return np.where(months_since >= 0, np.exp(-np.maximum(months_since, 0) / tau), 0.0)


def _events(people: dict[str, np.ndarray], months: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The month (1..months+1) of each latent life event per customer, ``NONE`` when it did not happen."""
    n = len(people["age"])
    age, employed = people["age"], people["employed"]
    eligible = {
        "first_job": (age <= 30) & employed,
        "child": (people["dependents"] >= 1) & (age >= 24) & (age <= 45),
        "home": (people["loan_to_income"] >= 1.5) & (age >= 25) & (age <= 55),
    }
    share = {"first_job": 0.5, "child": 0.3, "home": 0.35}
    out = {}
    for name, ok in eligible.items():
        happened = ok & (rng.random(n) < share[name])
        out[name] = np.where(happened, rng.integers(1, months + 2, n), NONE)
    return out


# Life-event boosts: (product type or base product id, weight, decay in months).
_EVENT_EFFECTS = {
    "first_job": (("credit_card", 1.5, 4.0), ("savings_account", 0.8, 6.0), ("PL_CAR", 0.5, 4.0)),
    "child": (("INS_LIFE", 2.0, 6.0), ("savings_account", 0.6, 6.0), ("PL_CAR", 0.5, 4.0)),
    "home": (("mortgage", 3.0, 0.7), ("INS_HOME", 2.5, 3.0), ("INS_LIFE", 1.0, 6.0), ("personal_loan", 0.6, 3.0)),
}


def _targets(market: Market, key: str) -> np.ndarray:
    return (market.product_types == key) | (market.base_ids == key)


def adoption_probability(n_held: np.ndarray, monthly_p: float) -> np.ndarray:
    """float64 [n]: P(a customer adopts anything in a month) with ``n_held`` products held at its
    start: ``monthly_p exp(-0.15 max(0, h - 2))`` (step 3 of the module docstring)."""
    return monthly_p * np.exp(-SATURATION * np.maximum(np.asarray(n_held) - 2, 0))


def simulate(
    U0: np.ndarray,
    held: np.ndarray,
    forbidden: np.ndarray,
    people: dict[str, np.ndarray],
    market: Market,
    months: int,
    rng: np.random.Generator,
    ground_truth: bool = True,
) -> Simulated:
    """Run ``months`` months and the target month for one chunk of customers (see the module
    docstring). ``U0`` [n, P] is the utility without holdings, ``held`` [n, P] the holdings before
    the first month, ``forbidden`` [n, P] what the rules never let a customer adopt; ``people``
    holds ``age``, ``employed`` (bool), ``dependents`` and ``loan_to_income`` per customer."""
    n, P = U0.shape
    held = held.copy()
    types = market.product_types
    dur = market.durations.astype(np.int64)
    is_ = {t: types == t for t in CLOSE_HAZARD}
    # Month each holding was opened: the initial ones some time in the past three years (a term
    # product within its term, so maturities spread over the months).
    span = np.where(dur > 0, np.maximum(dur, 1), 36)
    opened = np.where(held, 1 - np.floor(rng.random((n, P)) * span[None, :]).astype(np.int64), NONE)
    closed_at = np.full((n, P), NONE, dtype=np.int64)  # last closure by the customer (not at term)
    matured_at = np.full(n, NONE, dtype=np.int64)  # last term deposit that matured
    paid_off_at = np.full(n, NONE, dtype=np.int64)  # last loan paid off
    events = _events(people, months, rng)
    hazard = np.array([CLOSE_HAZARD.get(t, 0.0) for t in types])
    rows_out, cols_out, month_out = [], [], []
    adopt_rows = adopt_cols = np.empty(0, np.int64)
    probability = None

    last_snapshot = held.copy()
    type_names = list(dict.fromkeys(types))
    type_cols = {t: np.flatnonzero(types == t) for t in type_names}
    term_cols = np.flatnonzero((dur > 0) & (is_["term_deposit"] | is_["personal_loan"]))
    insurance_cols = type_cols.get("insurance", np.empty(0, np.int64))
    boosts = [
        (events[name], weight, tau, np.flatnonzero(_targets(market, key)))
        for name, effects in _EVENT_EFFECTS.items()
        for key, weight, tau in effects
    ]

    def columns(*names: str) -> np.ndarray:
        return np.flatnonzero(np.isin(types, names))

    rollover_cols = columns("term_deposit", "investment_fund")
    loan_cols = columns("personal_loan", "mortgage")
    welcome_cols = columns("savings_account", "credit_card")
    fund_cols = columns("investment_fund")
    saving_cols = columns("savings_account")
    current_cols = columns("current_account")

    for m in range(1, months + 2):
        if m == months + 1:
            last_snapshot = held.copy()  # the end of month N: ``holdings``
        # 1. life cycles at the start of the month (only the few columns each rule concerns)
        at_term = np.zeros((n, P), dtype=bool)
        at_term[:, term_cols] = held[:, term_cols] & (m - opened[:, term_cols] >= dur[term_cols][None, :])
        matured_at[at_term[:, type_cols.get("term_deposit", [])].any(axis=1)] = m
        paid_off_at[at_term[:, type_cols.get("personal_loan", [])].any(axis=1)] = m
        closed = held & ~at_term & (rng.random((n, P), dtype=np.float32) < hazard[None, :])
        if len(insurance_cols):
            age = m - opened[:, insurance_cols]
            anniversary = held[:, insurance_cols] & (age > 0) & (age % 12 == 0)
            closed[:, insurance_cols] |= anniversary & (rng.random(anniversary.shape) < LAPSE_AT_ANNIVERSARY)
        paid_off_at[closed[:, loan_cols].any(axis=1)] = m
        closed_at[closed] = m
        ended = at_term | closed
        held &= ~ended
        opened[ended] = NONE

        # 2. who adopts this month (every customer's utility is needed in the target month
        # only, for the ground truth; before it, only the adopters' is)
        available = (~held & ~forbidden & ~(last_snapshot if m == months + 1 else False)).sum(axis=1)
        p_adopt = adoption_probability(held.sum(axis=1), market.monthly_p)
        count = np.where(rng.random(n) < p_adopt, 1 + rng.poisson(EXTRA_PER_MONTH, n), 0)
        count = np.minimum(count, available)
        target = m == months + 1
        who = np.arange(n) if target else np.flatnonzero(count > 0)

        # 3. their utility: the generator's terms plus what the past adds
        U = market.with_holdings(U0[who], held[who])
        U[:, rollover_cols] += 1.5 * _decay(m - matured_at[who], 2.0)[:, None]
        closed_here = closed_at[who]
        recent_rows = np.flatnonzero((closed_here > NONE).any(axis=1))
        if len(recent_rows):  # closures are rare: their terms are computed where there was one
            since = m - closed_here[recent_rows]
            close_decay = np.where(since < m - NONE, np.exp(-np.minimum(since, 1000) / 6.0), 0.0)
            block = -3.0 * close_decay
            for cols in type_cols.values():
                block[:, cols] -= 1.0 * close_decay[:, cols].max(axis=1, keepdims=True)
            U[recent_rows] += block
        U[:, loan_cols] -= 1.5 * _decay(m - paid_off_at[who], 6.0)[:, None]
        held_who, opened_who = held[who], opened[who]
        current_open = np.where(held_who[:, current_cols], opened_who[:, current_cols], NONE).max(axis=1, initial=NONE)
        U[:, welcome_cols] += 1.0 * _decay(m - current_open, NEW_ACCOUNT_MONTHS)[:, None]
        long_saver = (held_who[:, saving_cols] & (m - opened_who[:, saving_cols] >= 24)).any(axis=1)
        U[:, fund_cols] += 0.6 * long_saver[:, None]
        for month, weight, tau, cols in boosts:
            if len(cols):
                U[:, cols] += weight * _decay(m - month[who], tau)[:, None]

        # 4. adoptions: Gumbel-top-m of U / T over what is neither held nor forbidden
        V = U / market.temperature
        blocked = held_who | forbidden[who]
        if target:  # nor what the last snapshot shows (a deposit maturing now moves the money elsewhere)
            blocked |= last_snapshot[who]
        V[blocked] = -np.inf
        rows, cols = market.top_m(V + rng.gumbel(size=V.shape), count[who])
        rows = who[rows]
        if target:
            adopt_rows, adopt_cols = rows, cols
            if ground_truth:
                top = V.max(axis=1, keepdims=True)
                e = np.exp(V - np.where(np.isfinite(top), top, 0.0))
                total = e.sum(axis=1, keepdims=True)
                probability = e / np.where(total > 0, total, 1.0)
            break
        held[rows, cols] = True
        opened[rows, cols] = m
        # 5. the month-end snapshot
        r, c = np.nonzero(held)
        rows_out.append(r)
        cols_out.append(c)
        month_out.append(np.full(len(r), m, dtype=np.int16))

    def cat(parts, dtype):
        return np.concatenate(parts) if parts else np.empty(0, dtype)

    return Simulated(
        snapshot_rows=cat(rows_out, np.int64),
        snapshot_cols=cat(cols_out, np.int64),
        snapshot_month=cat(month_out, np.int16),
        held=last_snapshot,
        adopt_rows=adopt_rows,
        adopt_cols=adopt_cols,
        probability=probability,
    )
