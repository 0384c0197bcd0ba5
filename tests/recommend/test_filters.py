"""Each filter rule, the presets, and fewer-than-K, on hand-built catalogues."""

import numpy as np
import pandas as pd
import pytest

from finrec.data import schema as S
from finrec.errors import FinrecError
from finrec.recommend import filters as F

SCHEMA = S.DatasetSchema.from_dict(
    {
        "customers": {
            "id": "customer_id",
            "numeric": ["age", "income", "credit_score"],
            "risk_tolerance": "risk_tolerance",
        },
        "products": {
            "id": "product_id",
            "numeric": ["min_income", "min_credit_score", "min_age", "max_age"],
            "risk_level": "risk_level",
            "category": "product_type",
        },
    }
)
PRODUCTS = pd.DataFrame(
    {
        "product_id": ["dep", "fund", "crypto", "loan", "student"],
        "risk_level": [1, 4, 7, 2, 1],
        "product_type": ["deposit", "fund", "fund", "loan", "account"],
        "min_income": [0, 0, 0, 30000, 0],
        "min_credit_score": [0, 0, 0, 650, 0],
        "min_age": [18, 18, 18, 18, 18],
        "max_age": [99, 99, 99, 70, 25],
    }
)
CATALOGUE = F.Catalogue.from_products(PRODUCTS, SCHEMA, list(PRODUCTS.product_id))


def masks_for(customer: dict, filters=None, held=None):
    attrs = F.customer_attributes(pd.DataFrame([customer]), SCHEMA)
    held = np.zeros((1, 5), bool) if held is None else np.array([held])
    return F.exclusion_masks(attrs, held, CATALOGUE, F.Filters.build(filters)), attrs


CUSTOMER = {"customer_id": "c", "age": 40, "income": 50000, "credit_score": 700, "risk_tolerance": 4}


def excluded(masks):
    return list(PRODUCTS.product_id[F.combine(masks, (1, 5))[0]])


def test_suitability_excludes_risk_above_tolerance():
    masks, _ = masks_for(CUSTOMER)
    assert excluded(masks) == ["crypto", "student"]
    assert F.first_reason(masks, 0, 2) == "suitability"


def test_suitability_can_be_turned_off_explicitly():
    masks, _ = masks_for(CUSTOMER, {"suitability": False})
    assert "crypto" not in excluded(masks)


def test_missing_tolerance_is_most_cautious():
    masks, _ = masks_for({**CUSTOMER, "risk_tolerance": np.nan})
    assert excluded(masks) == ["fund", "crypto", "loan", "student"]


def test_conservative_caps_risk_at_three_and_never_loosens():
    masks, _ = masks_for({**CUSTOMER, "risk_tolerance": 7}, "conservative")
    assert excluded(masks) == ["fund", "crypto", "student"]
    masks, _ = masks_for({**CUSTOMER, "risk_tolerance": 1}, "conservative")
    assert "loan" in excluded(masks)  # the customer's own tolerance still binds


def test_risk_tolerant_uses_own_tolerance():
    masks, _ = masks_for({**CUSTOMER, "risk_tolerance": 7}, "risk_tolerant")
    assert "crypto" not in excluded(masks)


def test_categories_include_and_exclude():
    masks, _ = masks_for(CUSTOMER, {"include_categories": ["fund", "deposit"]})
    assert excluded(masks) == ["crypto", "loan", "student"]
    masks, _ = masks_for(CUSTOMER, {"exclude_categories": ["deposit"]})
    assert "dep" in excluded(masks) and F.first_reason(masks, 0, 0) == "category"


def test_eligibility_terms():
    masks, attrs = masks_for({**CUSTOMER, "income": 20000})
    assert F.first_reason(masks, 0, 3) == "income"
    assert "below the minimum 30,000" in F.describe_exclusion("income", attrs, CATALOGUE, 0, 3)
    masks, _ = masks_for({**CUSTOMER, "credit_score": 600})
    assert F.first_reason(masks, 0, 3) == "credit_score"
    masks, _ = masks_for({**CUSTOMER, "age": 75})
    assert F.first_reason(masks, 0, 3) == "age"
    masks, _ = masks_for({**CUSTOMER, "age": 20, "risk_tolerance": 7})
    assert "student" not in excluded(masks)


def test_a_reason_never_says_an_unknown_value_meets_a_term():
    """An unknown income or age fails no term (checked at application), yet the reason said
    "meets the income, credit score, age terms" (a tester)."""
    masks, attrs = masks_for({**CUSTOMER, "income": np.nan, "age": np.nan})
    loan = F.describe_allowed(attrs, CATALOGUE, masks, 0, 3)  # minimum income 30,000, age 18-70
    assert "meets the credit score terms" in loan
    assert "income, age unknown: the income, age terms are checked at application" in loan
    assert "meets the income" not in loan
    # A minimum of 0 bars no income: only the age terms were not checked.
    dep = F.describe_allowed(attrs, CATALOGUE, masks, 0, 0)
    assert "meets the income, credit score terms; age unknown" in dep
    masks, attrs = masks_for(CUSTOMER)
    assert "meets the income, credit score, age terms" in F.describe_allowed(attrs, CATALOGUE, masks, 0, 3)


def test_held_is_first_reason():
    masks, _ = masks_for(CUSTOMER, held=[False, False, True, False, False])
    assert F.first_reason(masks, 0, 2) == "held"
    masks, _ = masks_for(CUSTOMER, {"exclude_held": False}, held=[True, False, False, False, False])
    assert "dep" not in excluded(masks)


@pytest.mark.parametrize("bad", [{"colour": "red"}, {"max_risk": 9}, "aggressive", 3])
def test_bad_filters_refused(bad):
    with pytest.raises(FinrecError):
        F.Filters.build(bad)


def test_a_presets_risk_ceiling_is_never_lifted():
    """``{"preset": "conservative", "max_risk": null}`` (an API client's unset field) lifted the
    preset's ceiling: risk 7 funds under "conservative", and so did an explicit 7 (a compliance
    tester, 2026-12). None is no ceiling given; a lower one tightens; a higher one is refused."""
    assert F.Filters.build({"preset": "conservative", "max_risk": None}).max_risk == F.CONSERVATIVE_MAX_RISK
    assert F.Filters.build({"preset": "conservative", "max_risk": 2}).max_risk == 2
    assert F.Filters.build({"preset": "balanced", "max_risk": 6}).max_risk == 6
    assert F.Filters.build({"max_risk": None}).max_risk is None
    with pytest.raises(FinrecError, match="above the conservative preset's ceiling 3"):
        F.Filters.build({"preset": "conservative", "max_risk": 7})
    with pytest.raises(FinrecError, match="max_risk"):
        F.Filters.build({"max_risk": True})


def test_a_category_both_included_and_excluded_is_refused():
    # It emptied every customer's list: `score --category fund --exclude-category fund` wrote 0 rows, exit 0.
    with pytest.raises(FinrecError, match="'fund' both included .* and excluded"):
        F.Filters.build({"include_categories": ["fund", "dep"], "exclude_categories": ["fund"]})
    assert F.Filters.build({"include_categories": ["dep"], "exclude_categories": ["fund"]}).include_categories == (
        "dep",
    )


def test_a_term_column_gone_from_the_datas_products_table_is_refused(small_dataset):
    """An eligibility term outside the schema's features (read because the table has it) must not
    vanish with the data's copy of the table: its rule would silently stop."""
    from finrec.errors import DataError

    products = small_dataset.products
    ids = list(products.product_id)
    with pytest.raises(DataError) as info:
        F.current_products(products, products.drop(columns=S.MAX_AGE), small_dataset.schema, ids, "bank/products.csv")
    assert str(info.value).startswith("bank/products.csv: no column 'max_age', which the age rule reads")
    table, changes = F.current_products(products, products.iloc[1:], small_dataset.schema, ids, "p.csv")
    catalogue = F.Catalogue.from_products(table, small_dataset.schema, ids, changes.discontinued)
    assert changes.discontinued == (ids[0],) and list(np.flatnonzero(catalogue.discontinued)) == [0]


def test_a_product_marked_not_on_offer_is_discontinued_and_keeps_its_row(small_dataset):
    """``products.on_offer`` false: discontinued as one the table lacks, with its own note and
    reason; the table's current attributes stay its row; one the model lacks and the table marks
    not on offer is no launch to retrain for. Dropped and withdrawn ones are told apart."""
    products = small_dataset.products
    ids = list(products.product_id)
    model_ids = ids[:-1]  # the table's last product is a launch the model lacks
    live = np.where(products.product_id.isin([ids[1], ids[-1]]), "false", "true")
    table, changes = F.current_products(
        products, products.iloc[1:].assign(live=live[1:]), small_dataset.schema, model_ids, "p.csv", "live"
    )
    assert changes.discontinued == (ids[0], ids[1]) and changes.withdrawn == (ids[1],) and changes.unknown == ()
    assert changes.notes() == [
        f"p.csv: 1 product(s) of the model are not in this products table ('{ids[0]}'): taken as discontinued, "
        "never offered",
        f"p.csv: 1 product(s) are marked not on offer in column 'live' ('{ids[1]}'): discontinued, never offered",
    ]
    assert changes.to_dict()["withdrawn"] == [ids[1]]
    assert (
        sorted(table.product_id) == sorted(model_ids) and table.set_index("product_id").loc[ids[1], "live"] == "false"
    )
    catalogue = F.Catalogue.from_products(
        table, small_dataset.schema, model_ids, changes.discontinued, changes.withdrawn
    )
    assert list(np.flatnonzero(catalogue.discontinued)) == [0, 1] and list(np.flatnonzero(catalogue.withdrawn)) == [1]
    held = np.zeros((1, len(model_ids)), dtype=bool)
    masks = F.exclusion_masks({"risk_tolerance": np.array([7.0])}, held, catalogue, F.UNFILTERED)
    assert list(np.flatnonzero(masks["discontinued"][0])) == [0, 1]
    words = [F.describe_exclusion("discontinued", {"risk_tolerance": np.array([7.0])}, catalogue, 0, j) for j in (0, 1)]
    assert words == [
        "no longer in the data's products table (discontinued)",
        "marked not on offer in the data's products table (discontinued)",
    ]


def test_a_category_the_catalogue_lacks_is_refused():
    # A typo excluded every product: `finrec plan --category morgage` wrote 0 offers, exit 0,
    # and the API answered 200 with nothing; excluded, it removed nothing.
    for key in ("include_categories", "exclude_categories"):
        with pytest.raises(
            FinrecError, match=rf"filters.{key}: unknown product category 'fnd' \(did you mean 'fund'\?\)"
        ):
            masks_for(CUSTOMER, {key: ["deposit", "fnd"]})
    with pytest.raises(FinrecError, match="categories 'x', 'y'; the catalogue's: account, deposit, fund, loan$"):
        masks_for(CUSTOMER, {"include_categories": ["x", "y"]})
    # Without a category column the filter was skipped: every product came back.
    bare = F.Catalogue.from_products(
        PRODUCTS.drop(columns="product_type"),
        S.DatasetSchema.from_dict({**SCHEMA.to_dict(), "products": {**SCHEMA.to_dict()["products"], "category": None}}),
        list(PRODUCTS.product_id),
    )
    attrs = F.customer_attributes(pd.DataFrame([CUSTOMER]), SCHEMA)
    with pytest.raises(FinrecError, match="no category column"):
        F.exclusion_masks(attrs, np.zeros((1, 5), bool), bare, F.Filters.build({"include_categories": ["fund"]}))


def test_a_term_on_a_column_the_schema_lists_as_categorical_is_refused(small_dataset):
    """Banded ages ("50+") listed as a categorical feature load as categories (a reviewer: the
    compliance sweep's coercion refused them at load); a product's minimum age cannot be
    compared with a band (read as a number it is unknown, and an unknown value fails no term),
    so a catalogue with such a term is refused, naming both columns."""
    from dataclasses import replace

    from finrec.data.io import prepare_entities
    from finrec.errors import DataError

    schema = small_dataset.schema
    customers_schema = replace(
        schema.customers,
        numeric=tuple(c for c in schema.customers.numeric if c != S.AGE),
        categorical=(*schema.customers.categorical, S.AGE),
        log_numeric=None,
    )
    banded = small_dataset.customers.assign(age=np.where(small_dataset.customers.age >= 50, "50+", "under 50"))
    prepared = prepare_entities(banded, customers_schema, "customers")
    assert set(prepared[S.AGE]) == {"50+", "under 50"}
    banded_schema = replace(schema, customers=customers_schema)
    products = small_dataset.products.copy()
    ids = products[schema.products.id].astype(str).tolist()
    products[S.MIN_AGE] = products[S.MAX_AGE] = np.nan
    F.Catalogue.from_products(products, banded_schema, ids)  # no term set: nothing to compare
    products.loc[products.index[0], S.MIN_AGE] = 18
    with pytest.raises(
        DataError,
        match=r"products: column 'min_age' sets a bar on the customers' 'age', which the schema lists as categorical",
    ):
        F.Catalogue.from_products(products, banded_schema, ids)
    F.Catalogue.from_products(products, schema, ids)  # a numeric age takes it


def test_loosened_names_each_relaxed_rule_and_nothing_for_a_tighter_request():
    """``serve --enforce-rules`` refuses exactly what ``loosened`` names: a rule switched off, a
    limit raised or dropped, a category let back in; a tightening is never named."""
    assert F.loosened(F.Filters()) == []
    for tighter in (
        {"max_risk": 2},
        {"preset": "conservative"},
        {"max_debt_service_ratio": 0.3},
        {"credit_score_cutoff": 650},
        {"exclude_categories": ["loan"]},
        {"include_categories": ["savings"]},
    ):
        assert F.loosened(F.Filters.build(tighter)) == [], tighter
    assert F.loosened(F.Filters.build({"suitability": False, "eligibility": False})) == [
        "suitability turned off",
        "eligibility turned off",
    ]
    assert F.loosened(F.Filters(exclude_held=False, target_market=False, affordability=False)) == [
        "exclude_held turned off",
        "target_market turned off",
        "affordability turned off",
    ]
    assert F.loosened(F.Filters.build({"max_debt_service_ratio": 0.6})) == ["max_debt_service_ratio 0.6 above 0.4"]
    # Against a stricter floor (a bank's own): a dropped ceiling, cut-off or category list is looser.
    floor = F.Filters(
        max_risk=3, credit_score_cutoff=600, exclude_categories=("crypto",), include_categories=("savings", "loan")
    )
    assert F.loosened(floor, floor) == []
    assert F.loosened(F.Filters(), floor) == [
        "max_risk ceiling 3 dropped",
        "credit_score_cutoff 600 dropped",
        "exclude_categories no longer excludes 'crypto'",
        "include_categories dropped (every category let in)",
    ]
    assert F.loosened(
        F.Filters(max_risk=4, credit_score_cutoff=550, exclude_categories=("crypto",), include_categories=("fund",)),
        floor,
    ) == ["max_risk 4 above 3", "credit_score_cutoff 550 below 600", "include_categories lets in 'fund'"]


def test_filters_from_python_are_checked_as_the_api_checks_them():
    """A tester: ``{"suitability": "no"}`` left the rule on ("no" is truthy) and ``None`` turned
    it off; a numpy integer ceiling was refused; one category named alone was split into its
    letters; a 400-digit cut-off raised numpy's TypeError (a 500 from the API); a null limit was
    refused while a null ceiling meant "not given"."""
    for bad in ("no", 0, 1, "false"):
        with pytest.raises(FinrecError, match="filters.suitability must be true or false"):
            F.Filters.build({"suitability": bad})
    assert F.Filters.build({"suitability": np.bool_(False)}).suitability is False
    none = F.Filters.build(
        {"suitability": None, "eligibility": None, "max_debt_service_ratio": None, "credit_score_cutoff": None}
    )
    assert none == F.Filters()  # None is a setting not given
    assert F.Filters.build({"max_risk": np.int64(3)}).max_risk == 3
    assert F.Filters.build({"include_categories": "mortgage"}).include_categories == ("mortgage",)
    for huge in (10**400, -(10**400), float("inf"), float("nan"), "650", True):
        with pytest.raises(FinrecError, match="filters.credit_score_cutoff must be a finite number"):
            F.Filters.build({"credit_score_cutoff": huge})
    with pytest.raises(FinrecError, match="filters.max_debt_service_ratio must be a number in"):
        F.Filters.build({"max_debt_service_ratio": 10**400})
    assert F.Filters.build({"credit_score_cutoff": np.float32(600.5)}).credit_score_cutoff == 600.5
    # A limit just above the default reads as above it.
    assert F.loosened(F.Filters.build({"max_debt_service_ratio": 0.4000001})) == [
        "max_debt_service_ratio 0.4000001 above 0.4"
    ]
