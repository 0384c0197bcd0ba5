"""A campaign plan from a model and a customers table: whom to contact, with which product.

>>> recommender = Recommender(load_model_dir("models/default").trained)
>>> problem = build_problem(recommender, "data/bank", filters="balanced", min_probability=0.01)
>>> result = plan_campaign(problem, capacity=read_capacities("caps.csv", problem.product_ids), contacts=1)
>>> print(format_summary(result)); write_plan(plan_table(problem, result.plan), "plan.csv")

``build_problem`` streams the customers table in chunks through the recommender's one ranking
core (``Recommender.context`` and ``Recommender.masks``): every pair a filter forbids gets
probability 0, so no solver can choose it. The probability is the model's calibrated adoption
probability; the value of an adoption comes from the products column the schema names
(``products: {value: margin}``), else 1. ``plan_campaign`` solves the problem of
``finrec.plan.solve`` exactly (min-cost flow) when it is small enough and by its dual otherwise,
and sets both beside the greedy plan a ranked list would give.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from finrec.atomic import refuse_overlap
from finrec.data import schema as S
from finrec.data.compliance import debt_service_ratio_after
from finrec.data.ids import ids_as_text
from finrec.data.io import find_table, iter_customer_chunks, read_customer_ids, read_table, write_table
from finrec.errors import DataError, FinrecError, safe_items, safe_text
from finrec.plan.exposure import EXACT_MAX_PAIRS as FAIR_EXACT_MAX_PAIRS
from finrec.plan.exposure import ExposureLimit, fill_fair, make_fair, solve_dual_fair, solve_exact_fair
from finrec.plan.solve import Plan, greedy, plan_value, solve_dual, solve_exact
from finrec.recommend import filters as F
from finrec.recommend.batch import DEFAULT_CHUNK_ROWS, HistoryByChunk, HoldingsByRow, RowOfId, data_product_ids

log = logging.getLogger(__name__)

# The exact solver's graph holds one arc per allowed pair: beyond this many, the dual method.
EXACT_MAX_PAIRS = 2_000_000
CAPACITY = "capacity"
PLAN_COLUMNS = (S.CUSTOMER_ID, S.PRODUCT_ID, S.PROBABILITY, "expected_value", "reason")
# The eligibility terms' customer columns, a bit each in ``CampaignProblem.unknown_terms``.
TERMS = tuple(F.TERM_VALUES.values())


# The most one adoption may be worth: the offers' expected values are float32 (a plan of
# millions of pairs), and a margin of 1e300 overflowed to inf and dropped the product from the
# plan without a word (a tester). No product earns a trillion a sale.
MAX_VALUE = 1e12
# A protected group smaller than this many customers, or this share of them, is named beside an
# exposure limit's result (its rates bound every other group's).
SMALL_GROUP, SMALL_GROUP_SHARE = 30, 0.005


@dataclass
class CampaignProblem:
    """Everything the solvers and the output need, [n] customers x [P] products."""

    customer_ids: pa.Array  # [n] text, file order
    product_ids: list[str]  # [P] catalogue order
    probability: np.ndarray  # float32 [n, P]; 0 where an offer is not allowed
    values: np.ndarray  # float64 [P], money per adoption
    tolerance: np.ndarray  # float32 [n], the customers' risk tolerance (for the reasons)
    rules: tuple[str, ...]  # the filter rules that were applied
    catalogue: F.Catalogue
    seconds: float = 0.0
    # With ``build_problem(group_column=...)``: the protected group of each customer (int [n]) and
    # the groups' labels, as ``evaluate --fairness`` forms them.
    groups: np.ndarray | None = None
    group_names: tuple[str, ...] = ()
    group_column: str | None = None
    # float32 [n] yearly income and monthly debt service (NaN unknown): the affordability ratio
    # of a credit offer in its reason.
    income: np.ndarray | None = None
    debt_service: np.ndarray | None = None
    # How the data's products table, whose attributes the filters read, differs from the model's.
    catalogue_changes: F.CatalogueChanges | None = None
    # Customers who objected to profiling for marketing: in the problem, never offered anything.
    objected: int = 0
    # uint8 [n]: a bit per eligibility term (``TERMS``) whose value the customer has not on
    # record, which no term bars: their offers' reasons say it is checked at application.
    unknown_terms: np.ndarray | None = None

    @property
    def weights(self) -> np.ndarray:
        """Expected value of each offer, float32 [n, P]."""
        return self.probability * self.values.astype(np.float32)


@dataclass
class CampaignResult:
    plan: Plan
    greedy: Plan
    problem: CampaignProblem
    capacity: np.ndarray  # float64 [P], inf = unlimited
    contacts: int
    extra: dict = field(default_factory=dict)


def product_values(products: pd.DataFrame, schema: S.DatasetSchema, product_ids: list[str]) -> np.ndarray:
    """float64 [P]: the value column the schema names (``products: {value: margin}``), in
    catalogue order; 1 for every product without one. A product the table lacks is worth 0: it
    is discontinued, and the filters never offer it (``Recommender.for_data``)."""
    column = schema.products.value
    if not column:
        return np.ones(len(product_ids))
    if column not in products.columns:
        raise DataError(f"products: no column '{column}' (the value the schema names) in the products table")
    table = products.set_index(products[schema.products.id].astype(str))
    listed = [p for p in product_ids if p in table.index]
    values = np.zeros(len(product_ids))
    if not listed:
        return values
    raw = table.loc[listed, column]
    cells = dict(zip(listed, raw.tolist()))
    if pd.api.types.is_bool_dtype(raw.dtype) or raw.dtype == object:
        # true/false is no money (it read as 1 and 0): as text, which is no number.
        raw = raw.astype(object).map(lambda v: str(v) if isinstance(v, (bool, np.bool_)) else v)
    values[np.isin(product_ids, listed)] = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64")
    bad = ~np.isfinite(values) | (values < 0) | (values > MAX_VALUE)
    if bad.any():
        # The ids were numpy strings: "not so for np.str_('CC_BASIC')", and no value shown.
        examples = ", ".join(
            f"{safe_text(str(p), quote=True)} ({_cell_text(cells.get(str(p)))})"
            for p in np.asarray(product_ids)[bad][:5]
        )
        raise DataError(
            f"products: column '{column}' (the value) must be a number from 0 to {MAX_VALUE:g}; "
            f"{int(bad.sum())} product(s) are not: {examples}; fix the column or name another as "
            "products.value in schema.yaml"
        )
    return values


def _cell_text(cell) -> str:
    """A value cell for a message: a number as such (-1), text quoted ('1,480': the cell, not
    "not a number"), a missing one as empty."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return "empty"
    if isinstance(cell, (int, float, np.integer, np.floating)) and not isinstance(cell, (bool, np.bool_)):
        return f"{float(cell):g}"
    return safe_text(cell, quote=True)


def read_capacities(path: str | Path, product_ids: list[str]) -> np.ndarray:
    """float64 [P] from a CSV or Parquet table ``product_id, capacity`` (the most offers of that
    product); products not listed are unlimited (inf)."""
    path = Path(path)
    return capacity_table(read_table(path, (S.PRODUCT_ID,)), product_ids, str(path), first_row=2, unlimited=False)


def capacity_table(
    table: pd.DataFrame, product_ids: list[str], where: str, first_row: int = 1, unlimited: bool = True
) -> np.ndarray:
    """float64 [P] from a frame of columns ``product_id, capacity`` (``read_capacities``;
    ``first_row``: the number a message gives the frame's first row, 2 in a file under its header;
    ``unlimited``: infinity is taken as no limit, as in an array, not in a file)."""
    missing = [c for c in (S.PRODUCT_ID, CAPACITY) if c not in table.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)}; expected columns product_id, capacity")
    # A spreadsheet's blank rows (",") are no rows: they were read as a product "nan" (a tester).
    table = table[~(table[S.PRODUCT_ID].isna() & table[CAPACITY].isna())]
    blank = np.flatnonzero(table[S.PRODUCT_ID].isna().to_numpy())
    if len(blank):
        raise DataError(f"{where}: row {int(table.index[blank[0]]) + first_row} has a capacity and no product_id")
    ids = ids_as_text(table[S.PRODUCT_ID].reset_index(drop=True))
    dupes = ids[ids.duplicated()].unique()
    if len(dupes):
        raise DataError(f"{where}: product_id listed twice: {safe_items(dupes)}")
    position = {pid: j for j, pid in enumerate(product_ids)}
    unknown = [pid for pid in ids if pid not in position]
    if unknown:
        raise DataError(f"{where}: unknown product_id(s) {safe_items(unknown)} (not in the model's catalogue)")
    raw = table[CAPACITY].reset_index(drop=True)
    if not (pd.api.types.is_numeric_dtype(raw.dtype) or raw.dtype == object) or pd.api.types.is_bool_dtype(raw.dtype):
        # true/false read as 1/0, a duration as unlimited (a tester): a capacity is a count.
        raw = raw.astype(str).where(raw.notna(), None)
    elif raw.dtype == object:
        raw = raw.map(lambda v: str(v) if isinstance(v, (bool, np.bool_, pd.Timedelta)) else v)
    numbers = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64")
    finite = np.isfinite(numbers)
    bad = np.isnan(numbers) | (numbers < 0) | (finite & (numbers != np.round(numbers)))
    if not unlimited:
        bad |= ~finite
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        # The cell as written (numpy's repr showed np.int64(-5)); an empty one is named as such.
        cell = raw.iloc[row]
        shown = (
            "an empty cell" if pd.isna(cell) else safe_text(cell.item() if hasattr(cell, "item") else cell, quote=True)
        )
        line = int(table.index[row]) + first_row  # as in the file, blank rows counted
        raise DataError(f"{where}: column 'capacity' must hold whole numbers >= 0; row {line} has {shown}")
    capacity = np.full(len(product_ids), np.inf)
    capacity[[position[pid] for pid in ids]] = numbers
    return capacity


def capacity_vector(capacity, product_ids: list[str]) -> np.ndarray:
    """float64 [P] in the catalogue's order from what a caller gives ``plan_campaign``: None
    (unlimited), a mapping or a pandas Series product_id -> capacity or a frame ``product_id,
    capacity`` (by id: products not named are unlimited), or one number per product in the
    catalogue's order (``problem.product_ids``). A Series was read in its own order, so a
    Series by product id landed its capacities on other products."""
    if capacity is None:
        return np.full(len(product_ids), np.inf)
    if isinstance(capacity, pd.DataFrame):
        return capacity_table(capacity, product_ids, "capacity")
    if isinstance(capacity, pd.Series):
        if pd.api.types.is_integer_dtype(capacity.index) and not capacity.index.astype(str).isin(product_ids).any():
            # A Series made from a list (0, 1, 2, ...) meant one number per product in order.
            raise FinrecError(
                f"capacity: a Series is read by its index as product ids, and this one's index is the numbers "
                f"{safe_items(capacity.index[:5].tolist(), quote=False)}, no product id; for one number per product "
                "in the catalogue's order pass a list or `series.to_numpy()`, or index the Series by product_id"
            )
        capacity = dict(zip(capacity.index, capacity.to_numpy()))
    if isinstance(capacity, Mapping):
        keys = list(capacity)
        return capacity_table(
            pd.DataFrame({S.PRODUCT_ID: pd.Series(keys, dtype=object), CAPACITY: [capacity[k] for k in keys]}),
            product_ids,
            "capacity",
        )
    try:
        return np.asarray(capacity, dtype="float64")  # by position; solve.check_problem checks the rest
    except (TypeError, ValueError):
        raise FinrecError(
            "capacity must be None, a mapping or Series of product_id -> capacity, a frame of product_id, "
            f"capacity or one number per product, got {type(capacity).__name__}"
        ) from None


def build_problem(
    recommender,
    data_dir: str | Path,
    filters=None,
    min_probability: float = 0.0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    values: np.ndarray | None = None,
    group_column: str | None = None,
) -> CampaignProblem:
    """The calibrated probability of every customer of ``data_dir`` for every product, 0 where a
    filter forbids the offer or the probability is below ``min_probability``; values from the
    schema's value column (``product_values``) unless given. ``group_column``: a protected
    customer column whose groups an exposure limit (``plan_campaign(max_exposure_ratio=...)``)
    will compare."""
    start = time.perf_counter()
    if recommender.calibration is None:
        raise FinrecError(
            "this model has no calibration (calibration.json), so no probabilities to plan with; retrain it"
        )
    if (
        isinstance(min_probability, bool)
        or not isinstance(min_probability, (int, float, np.integer, np.floating))
        or not 0.0 <= min_probability < 1.0
    ):
        raise FinrecError(f"min probability must be a number in [0, 1), got {safe_text(min_probability, quote=True)}")
    filters = F.Filters.build(filters)
    data_dir = Path(data_dir)
    recommender = recommender.for_data(data_dir)
    schema = recommender.schema
    customers_path = find_table(data_dir, S.CUSTOMERS)
    holdings_path = find_table(data_dir, S.HOLDINGS, required=False)
    product_ids = [str(p) for p in recommender.pipeline.product_ids_]
    if values is None:
        from finrec.data.io import read_schema

        data_schema = read_schema(data_dir)
        products_path = find_table(data_dir, S.PRODUCTS, required=False)
        # Customers alone: the model's catalogue applies (``for_data``), its values with it.
        products = (
            recommender.trained.products
            if products_path is None
            else read_table(products_path, (data_schema.products.id,))
        )
        values = product_values(products, data_schema, product_ids)
    else:
        values = _given_values(values, product_ids)
    ids = read_customer_ids(customers_path, schema.customers.id)
    held_by_row = HoldingsByRow(recommender.pipeline, ids, holdings_path, products=data_product_ids(data_dir, schema))
    n, P = len(ids), len(product_ids)
    probability = np.zeros((n, P), dtype=np.float32)
    tolerance = np.full(n, np.nan, dtype=np.float32)
    income = np.full(n, np.nan, dtype=np.float32)
    unknown_terms = np.zeros(n, dtype=np.uint8)
    debt_service = np.full(n, np.nan, dtype=np.float32)
    rules: tuple[str, ...] = ()
    objected = 0
    if group_column is not None and group_column not in schema.customers.protected:
        listed = ", ".join(schema.customers.protected) or "none"
        raise FinrecError(f"--protected {group_column!r}: not a protected customer column of the schema ({listed})")
    group_values: list[pd.Series] = []
    # A model with history features plans on the scores it serves: each chunk reads its
    # customers' history (routed once to scratch files, as finrec score does).
    history_path = find_table(data_dir, S.HOLDINGS_HISTORY, required=False)
    scratch = None
    by_chunk = None
    if history_path is not None and getattr(recommender.pipeline, "history_", None) is not None:
        import tempfile

        scratch = tempfile.TemporaryDirectory(prefix="finrec-plan-")
        by_chunk = HistoryByChunk(history_path, RowOfId(ids), chunk_rows, Path(scratch.name))
    offset = 0
    for chunk in iter_customer_chunks(customers_path, schema.customers, chunk_rows):
        if group_column is not None:
            group_values.append(chunk[group_column])
        stop = offset + len(chunk)
        history = None if by_chunk is None else by_chunk.slice(offset, stop)
        context = recommender.context(
            chunk,
            held=held_by_row.slice(offset, stop),
            history=history,
            history_reference=None if by_chunk is None else by_chunk.reference,
            validated=True,  # iter_customer_chunks validated the chunk
        )
        masks = recommender.masks(context, filters)
        rules = tuple(masks)
        if (said := context.attributes.get("objected")) is not None:
            objected += int(np.count_nonzero(said))
        p = recommender.probabilities(context)
        p[F.combine(masks, p.shape) | (p < min_probability)] = 0.0
        probability[offset:stop] = p
        tolerance[offset:stop] = context.attributes["risk_tolerance"]
        income[offset:stop] = context.attributes[S.INCOME]
        for bit, column in enumerate(TERMS):
            if (on_record := context.attributes.get(column)) is not None:
                unknown_terms[offset:stop] |= np.isnan(np.asarray(on_record, dtype="float64")).astype(np.uint8) << bit
        if "debt_service" in context.attributes:
            debt_service[offset:stop] = context.attributes["debt_service"]
        offset = stop
        log.info("probabilities and rules: %s of %s customers", f"{offset:,}", f"{n:,}")
    if scratch is not None:
        scratch.cleanup()
    groups, group_names = None, ()
    if group_column is not None:
        from finrec.evaluate.fairness import group_labels

        labels = group_labels(pd.concat(group_values, ignore_index=True), group_column, schema.customers)
        codes, names = pd.factorize(labels, sort=True)
        groups, group_names = codes.astype(np.int64), tuple(str(n) for n in names)
    return CampaignProblem(
        ids,
        product_ids,
        probability,
        np.asarray(values, dtype="float64"),
        tolerance,
        rules,
        recommender.catalogue,
        time.perf_counter() - start,
        groups,
        group_names,
        group_column,
        income,
        debt_service,
        recommender.catalogue_changes,
        objected=objected,
        unknown_terms=unknown_terms,
    )


def _given_values(values, product_ids: list[str]) -> np.ndarray:
    """``build_problem``'s ``values``: one finite number >= 0 per product of the catalogue, in its
    order, or a mapping / Series product_id -> value (products not named are worth 1)."""
    if isinstance(values, pd.Series):
        values = dict(zip(values.index, values.to_numpy()))
    if isinstance(values, Mapping):
        known = {pid: j for j, pid in enumerate(product_ids)}
        unknown = [str(p) for p in values if str(p).strip() not in known]
        if unknown:
            raise DataError(f"values: unknown product_id(s) {safe_items(unknown)} (not in the model's catalogue)")
        out = np.ones(len(product_ids))
        for pid, value in values.items():
            out[known[str(pid).strip()]] = _number(value)
        values = out
    try:
        array = np.asarray(values, dtype="float64")
    except (TypeError, ValueError):
        raise FinrecError(f"values must be one number per product, got {type(values).__name__}") from None
    if array.shape != (len(product_ids),):
        raise FinrecError(f"values must have one entry per product ({len(product_ids)}), got shape {array.shape}")
    if not (np.isfinite(array) & (array >= 0) & (array <= MAX_VALUE)).all():
        raise FinrecError(f"values must be numbers from 0 to {MAX_VALUE:g}")
    return array


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise FinrecError(f"values must be numbers, got {safe_text(value, quote=True)}") from None


def exposure_limit(problem: CampaignProblem, ratio: float) -> ExposureLimit:
    """The limit over the problem's protected groups and the catalogue's categories (the product
    id where there is no category column), as ``evaluate --fairness`` measures exposure."""
    if problem.groups is None:
        raise FinrecError("an exposure limit needs the customers' protected groups: build_problem(group_column=...)")
    names = problem.catalogue.category if problem.catalogue.category is not None else problem.product_ids
    codes, categories = pd.factorize(pd.Series(np.asarray(names, dtype=object)), sort=True)
    return ExposureLimit(problem.groups, codes, ratio, problem.group_names, tuple(str(c) for c in categories))


def plan_campaign(
    problem: CampaignProblem,
    capacity: np.ndarray | Mapping | pd.Series | pd.DataFrame | None = None,
    contacts: int = 1,
    solver: str = "auto",
    max_exposure_ratio: float | None = None,
) -> CampaignResult:
    """Solve the campaign problem: ``solver`` is ``exact`` (min-cost flow), ``dual`` or ``auto``
    (exact up to ``EXACT_MAX_PAIRS`` allowed pairs); ``capacity``: see ``capacity_vector``. The shadow prices always come from the
    dual method; with the exact solver its bound is also kept when it is the tighter one.

    ``max_exposure_ratio`` R: no protected group (``problem.groups``) gets a product category at
    more than R times another group's rate per customer (``finrec.plan.exposure``); the plan
    without the limit is solved too, and ``extra["exposure"]`` reports what the limit costs."""
    if solver not in ("auto", "exact", "dual"):
        raise FinrecError(f"solver must be auto, exact or dual, got {solver!r}")
    w = problem.weights
    capacity = capacity_vector(capacity, problem.product_ids)
    log.info("solving: %s allowed offers, %s contact(s) per customer", f"{int(np.count_nonzero(w)):,}", contacts)
    baseline = greedy(w, capacity, contacts)
    dual = solve_dual(w, capacity, contacts, baseline=baseline)
    if max_exposure_ratio is not None:
        return _fair_campaign(problem, w, capacity, contacts, solver, max_exposure_ratio, baseline, dual)
    if solver == "exact" or (solver == "auto" and int((w > 0).sum()) <= EXACT_MAX_PAIRS):
        exact = solve_exact(w, capacity, contacts)
        plan = Plan(
            exact.rows,
            exact.cols,
            exact.value,
            min(exact.bound, dual.bound),
            dual.prices,
            exact.method,
            exact.seconds,
            dual.sweeps,
        )
    else:
        plan = dual
    return CampaignResult(plan, baseline, problem, capacity, contacts)


def _fair_campaign(problem, w, capacity, contacts, solver, ratio, baseline, dual) -> CampaignResult:
    limit = exposure_limit(problem, ratio)
    unlimited = dual
    small = int((w > 0).sum()) <= FAIR_EXACT_MAX_PAIRS
    if solver == "exact" or (solver == "auto" and small):
        unlimited = solve_exact(w, capacity, contacts)
        fair = solve_exact_fair(w, capacity, contacts, limit)
        # An integer program has no duals: its capacities' prices came out 0, one more mortgage
        # slot "worth 0" (a tester). The prices come from the dual method, as without the limit.
        fair = dataclasses.replace(fair, prices=solve_dual_fair(w, capacity, contacts, limit).prices)
    else:
        fair = solve_dual_fair(w, capacity, contacts, limit)
    # The greedy plan it is set beside keeps the limit too: the unlimited one broke it, and "plan -
    # greedy" then priced the limit as the plan's loss (a reviewer).
    start = time.perf_counter()
    rows, cols = fill_fair(limit, w, capacity, contacts, *make_fair(limit, w, baseline.rows, baseline.cols))
    fair_greedy = dataclasses.replace(
        baseline,
        rows=rows,
        cols=cols,
        value=plan_value(w, rows, cols),
        method="greedy within the limit",
        seconds=baseline.seconds + time.perf_counter() - start,
    )
    exposure = {
        "column": problem.group_column,
        "max_ratio": float(ratio),
        "groups": list(limit.group_names),
        "value_without_limit": float(unlimited.value),
        "value_with_limit": float(fair.value),
        "cost": float(unlimited.value - fair.value),
        "greedy_value_without_limit": float(baseline.value),
        "worst_ratio_without_limit": limit.worst_ratio(unlimited.rows, unlimited.cols),
        "worst_ratio": limit.worst_ratio(fair.rows, fair.cols),
        "holds": limit.holds(fair.rows, fair.cols),
        # A group of a few customers sets every other group's allowance (a tester: 5 customers
        # of 6,000 cut the plan's value by three quarters, and nothing named them).
        "small_groups": {
            name: int(size)
            for name, size in zip(limit.group_names, limit.sizes, strict=False)
            if 0 < size < max(SMALL_GROUP, SMALL_GROUP_SHARE * limit.sizes.sum())
        },
    }
    if not exposure["holds"]:
        # Never a plan that breaks the limit it was asked to keep (it was written, exit 0).
        raise FinrecError(
            f"the {fair.method} plan breaks the exposure limit ({exposure['worst_ratio']:.4f} against "
            f"{float(ratio):g}); nothing was written: try --solver exact or a larger --max-exposure-ratio"
        )
    return CampaignResult(fair, fair_greedy, problem, capacity, contacts, extra={"exposure": exposure})


def offer_reasons(problem: CampaignProblem, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Why each offer is allowed (``filters.describe_allowed``), [m] text. The sentence depends
    on the product and the customer's risk tolerance, so it is built once per such pair; a credit
    offer's then states its debt service to income ratio after the credit (affordability), where
    the customer's income and debt service are on record."""
    masks = dict.fromkeys(problem.rules)  # describe_allowed asks only which rules were applied
    tol = problem.tolerance[rows]
    unknown = np.zeros(len(rows), np.uint8) if problem.unknown_terms is None else problem.unknown_terms[rows]
    key = (cols.astype(np.float64) * 1000.0 + np.where(np.isnan(tol), -1.0, tol)) * 8 + unknown

    def attributes(i: int) -> dict[str, np.ndarray]:
        # the terms' values matter only as known or not (1.0 or NaN): no reason prints them
        known = {column: np.array([np.nan if unknown[i] >> bit & 1 else 1.0]) for bit, column in enumerate(TERMS)}
        return {"risk_tolerance": tol[i : i + 1].astype("float64"), **known}

    unique, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    sentences = np.array(
        [F.describe_allowed(attributes(i), problem.catalogue, masks, 0, int(cols[i])) for i in first], dtype=object
    )
    reasons = sentences[inverse] if len(unique) else np.array([], dtype=object)
    catalogue = problem.catalogue
    if "affordability" not in masks or catalogue.payment is None or problem.income is None or not len(rows):
        return reasons
    payment = catalogue.payment[cols]
    credit = catalogue.regime_is("credit")[cols] & ~np.isnan(payment)
    picked = np.flatnonzero(credit)
    ratio = np.full(len(picked), np.nan)
    for j in np.unique(cols[picked]):
        mine = cols[picked] == j
        customers = rows[picked[mine]]
        ratio[mine] = debt_service_ratio_after(
            problem.income[customers].astype("float64"),
            problem.debt_service[customers].astype("float64"),
            catalogue.payment[j : j + 1],
        )[:, 0]
    stated = np.isfinite(ratio)
    for index, value in zip(picked[stated].tolist(), ratio[stated].tolist()):
        reasons[index] = reasons[index].replace(
            "affordable", f"debt service to income after this credit {value:.1%} within the limit", 1
        )
    return reasons


def plan_table(problem: CampaignProblem, plan: Plan) -> pd.DataFrame:
    """``customer_id, product_id, probability, expected_value, reason``, customers in file order."""
    return plan_arrow(problem, plan).to_pandas()


def plan_arrow(problem: CampaignProblem, plan: Plan) -> pa.Table:
    """``plan_table`` as an Arrow table, built without a Python object per offer: ids taken from
    Arrow arrays, the product ids and reasons as indices into their few distinct values."""
    order = np.lexsort((plan.cols, plan.rows))
    rows, cols = plan.rows[order], plan.cols[order]
    probability = problem.probability[rows, cols]
    reasons = offer_reasons(problem, rows, cols)
    codes, distinct = pd.factorize(reasons)
    return pa.table(
        {
            S.CUSTOMER_ID: problem.customer_ids.take(pa.array(rows)),
            S.PRODUCT_ID: pa.array(problem.product_ids, pa.string()).take(pa.array(cols)),
            S.PROBABILITY: pa.array(probability),
            "expected_value": pa.array(probability.astype("float64") * problem.values[cols]),
            "reason": pa.array(list(distinct), pa.string()).take(pa.array(codes.astype(np.int64))),
        }
    )


def write_plan(table: pd.DataFrame | pa.Table, out: str | Path, inputs: tuple[str | Path, ...] = ()) -> Path:
    """Write the plan atomically: CSV when ``out`` ends in .csv, else Parquet (an Arrow table
    straight from Arrow, customer ids without dictionary or statistics); never at, or inside, an
    input (a plan written into the model directory made the next ``calibrate`` refuse it, a
    tester: ``score --out`` was refused there)."""
    out = Path(out)
    if out.suffix not in S.TABLE_SUFFIXES:
        raise FinrecError(f"--out {out}: use a .csv or .parquet file name")
    for source in inputs:
        refuse_overlap(out, {"the input": source}, what="--out")
    if isinstance(table, pa.Table):  # customer ids are all distinct: no dictionary, no statistics for them
        return write_table(table, out, use_dictionary=[S.PRODUCT_ID, "reason"], write_statistics=[S.PRODUCT_ID])
    return write_table(table, out)


def summary(result: CampaignResult) -> dict:
    """Totals of the plan and of greedy, the proven gap and the shadow prices of binding capacities."""
    problem, plan, base = result.problem, result.plan, result.greedy

    def totals(p: Plan) -> dict:
        return {
            "offers": int(len(p.rows)),
            "expected_adoptions": float(problem.probability[p.rows, p.cols].astype("float64").sum()),
            "expected_value": float(p.value),
        }

    used = np.bincount(plan.cols, minlength=len(problem.product_ids))
    # A capacity of 0 closes the product: no slot to price (it read as a binding capacity).
    closed = [j for j in range(len(used)) if result.capacity[j] == 0]
    binding = [j for j in range(len(used)) if 0 < result.capacity[j] < np.inf and used[j] >= result.capacity[j]]
    return {
        "customers": int(len(problem.customer_ids)),
        "products": len(problem.product_ids),
        "allowed_pairs": int((problem.probability > 0).sum()),
        "valued_pairs": int((problem.weights > 0).sum()),
        "objected": problem.objected,
        "contacts_per_customer": result.contacts,
        "method": plan.method,
        "plan": totals(plan),
        "greedy": totals(base),
        "bound": float(plan.bound),
        "gap": float(plan.gap),
        "relative_gap": float(plan.relative_gap),
        "shadow_prices": {
            problem.product_ids[j]: {"capacity": int(result.capacity[j]), "price": float(plan.prices[j])}
            for j in binding
        },
        "closed": [problem.product_ids[j] for j in closed],
        "offers_per_product": {problem.product_ids[j]: int(used[j]) for j in np.flatnonzero(used)},
        "seconds": {"build": problem.seconds, "solve": plan.seconds, "greedy": base.seconds},
        **({"exposure": result.extra["exposure"]} if "exposure" in result.extra else {}),
        **({"catalogue": changes.to_dict()} if (changes := problem.catalogue_changes) and changes.notes() else {}),
    }


def format_summary(info: dict) -> str:
    p, g = info["plan"], info["greedy"]
    lines = [
        f"{info['customers']} customers x {info['products']} products, {info['allowed_pairs']} allowed offers, "
        f"{info['contacts_per_customer']} contact(s) per customer; solver: {info['method']}",
        f"{'':<8}{'offers':>10}{'expected adoptions':>20}{'expected value':>18}",
        f"{'plan':<8}{p['offers']:>10}{p['expected_adoptions']:>20.2f}{p['expected_value']:>18.2f}",
        f"{'greedy':<8}{g['offers']:>10}{g['expected_adoptions']:>20.2f}{g['expected_value']:>18.2f}",
    ]
    gain = p["expected_value"] - g["expected_value"]
    ratio = f" ({gain / g['expected_value']:+.1%})" if g["expected_value"] > 0 else ""
    within = " (greedy made to keep the exposure limit too)" if "exposure" in info else ""
    lines.append(f"plan - greedy: {gain:+.2f}{ratio}{within}")
    lines.append(
        f"proven: no plan is worth more than {info['bound']:.2f}; this one is within {info['gap']:.4g} "
        f"({info['relative_gap']:.3%}) of the best"
    )
    objected = info.get("objected", 0)
    if objected:
        lines.append(
            f"{objected} customer(s) objected to profiling for marketing (GDPR Art. 21(2)): never offered anything"
        )
    if info["allowed_pairs"] == 0:
        # "0 allowed offers" alone left the user to guess why the plan was empty.
        why = (
            f"all {info['customers']} customers objected to profiling for marketing"
            if objected and objected >= info["customers"]
            else "the filters (and the minimum probability) excluded every offer"
            + (f" to the {info['customers'] - objected} customer(s) who did not object" if objected else "")
        )
        lines.append(f"no offer is allowed: {why}")
    elif p["offers"] == 0:
        # Offers were allowed and none was made: 0 offers without a word (a tester).
        if info.get("valued_pairs", 1) == 0:
            why = "every allowed offer is worth 0 (the products' value column)"
        elif "exposure" in info:
            why = (
                f"the exposure limit (rate ratio <= {info['exposure']['max_ratio']:g} over "
                f"{info['exposure']['column']}) leaves none: equal rates in whole offers are often possible only "
                "at none; a larger ratio allows some"
            )
        else:
            why = "every offered product's capacity is 0"
        lines.append(f"no offer is made: {why}")
    if info.get("closed"):
        lines.append(f"closed (capacity 0, never offered): {', '.join(info['closed'])}")
    if info["shadow_prices"]:
        lines.append("binding capacities (shadow price: what one more slot is worth):")
        for pid, row in sorted(info["shadow_prices"].items(), key=lambda item: -item[1]["price"]):
            lines.append(f"  {pid:<24} capacity {row['capacity']:>9}  one more slot is worth {row['price']:.4f}")
    else:
        lines.append("no capacity binds")
    if "exposure" in info and len(info["exposure"]["groups"]) < 2:
        # One group (a column all missing reads as the one group 'missing') has no other to be
        # compared with: "holds" claimed a fairness check that compared nothing.
        e = info["exposure"]
        only = f" ({', '.join(map(repr, e['groups']))})" if e["groups"] else ""
        lines.append(
            f"exposure limit over {e['column']}: this data has {len(e['groups'])} group{only}, no two to compare; "
            f"the limit constrains nothing"
        )
    elif "exposure" in info:
        e = info["exposure"]
        lines.append(
            f"exposure limit over {e['column']} ({len(e['groups'])} groups): rate ratio <= {e['max_ratio']:g} "
            f"({'holds' if e['holds'] else 'BROKEN'}; {e['worst_ratio']:.3f} in the plan, "
            f"{e['worst_ratio_without_limit']:.3f} without the limit); it costs {e['cost']:.2f} of value "
            f"({e['value_without_limit']:.2f} without it"
            + (
                f"; greedy {e['greedy_value_without_limit']:.2f} without it)"
                if "greedy_value_without_limit" in e
                else ")"
            )
        )
        if e.get("small_groups"):
            named = ", ".join(f"{safe_text(g, quote=True)} ({n})" for g, n in e["small_groups"].items())
            lines.append(
                f"note: small group(s) {named}: their rates bound every other group's allowance; a missing value "
                f"is a group of its own; consider merging them in {e['column']} before planning"
            )
    return "\n".join(lines)
