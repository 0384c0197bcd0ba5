"""The rules per regime, each checked against a naive loop over every customer and product."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from finrec.data import compliance as C
from finrec.data import schema as S
from finrec.data.categories import category_text
from finrec.data.io import validate_tables
from finrec.errors import DataError, SchemaError
from finrec.recommend import filters as F

SCHEMA = {
    "customers": {
        "id": "customer_id",
        "numeric": ["age", "income", "credit_score"],
        "risk_tolerance": "rt",
        "consent": "consent",
        "knowledge": "know",
        "loss_capacity": "cap",
        "objective": "goal",
        "horizon": "years",
        "client_type": "kind",
        "debt_service": "ds",
    },
    "products": {
        "id": "product_id",
        "numeric": ["min_income"],
        "risk_level": "risk",
        "category": "family",
        "regime": "family",
        "regimes": {
            "fund": "investment",
            "loan": "credit",
            "card": "credit",
            "account": "deposit",
            "cover": "insurance",
        },
        "target_market": {
            "knowledge": "tm_know",
            "loss_capacity": "tm_cap",
            "horizon": "tm_years",
            "objectives": "tm_goals",
            "client_types": "tm_kinds",
            "negative_objectives": "ntm_goals",
            "negative_loss_capacity": "ntm_cap",
        },
        "credit_payment": "payment",
    },
}


def _bank(seed: int = 0, n: int = 400):
    rng = np.random.default_rng(seed)
    goals = np.array(["growth", "income", "preservation", "retirement", None], dtype=object)
    customers = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "age": rng.integers(18, 90, n),
            "income": np.where(rng.random(n) < 0.05, np.nan, rng.integers(0, 120_000, n)),
            "credit_score": rng.integers(300, 850, n),
            "rt": rng.integers(1, 8, n),
            "consent": rng.choice(np.array(["yes", "no", None, "1", "0", "true", "FALSE"], dtype=object), n),
            "know": np.where(rng.random(n) < 0.1, np.nan, rng.integers(1, 4, n)),
            "cap": rng.integers(1, 5, n).astype(float),
            "goal": goals[rng.integers(0, 5, n)],
            "years": rng.integers(0, 30, n),
            "kind": rng.choice(np.array(["retail", "professional"], dtype=object), n),
            "ds": np.where(rng.random(n) < 0.05, np.nan, rng.integers(0, 3000, n)),
        }
    )
    products = pd.DataFrame(
        {
            "product_id": ["F1", "F2", "F3", "L1", "L2", "C1", "A1", "I1"],
            "family": ["fund", "fund", "fund", "loan", "loan", "card", "account", "cover"],
            "risk": [3, 6, 7, 1, 2, 1, 1, 1],
            "min_income": [0, 0, 0, 20_000, 30_000, 0, 0, 0],
            "tm_know": [1, 2, 3, None, None, None, None, None],
            "tm_cap": [2, 3, 4, None, None, None, None, None],
            "tm_years": [3, 7, None, None, None, None, None, None],
            "tm_goals": ["income|preservation", "growth|retirement", "growth", None, None, None, None, None],
            "tm_kinds": [None, None, "professional", None, None, None, None, None],
            "ntm_goals": [None, "preservation", "preservation|income", None, None, None, None, None],
            "ntm_cap": [None, 1, 2, None, None, None, None, None],
            "payment": [None, None, None, 300.0, 1300.0, 90.0, None, None],
        }
    )
    tables = {
        "customers": customers,
        "products": products,
        "interactions": pd.DataFrame({"customer_id": ["c0"], "product_id": ["A1"]}),
    }
    return validate_tables(S.DatasetSchema.from_dict(SCHEMA), tables)


@pytest.fixture(scope="module")
def bank():
    return _bank()


def _masks(dataset, filters=None):
    catalogue = F.Catalogue.from_products(dataset.products, dataset.schema, list(dataset.product_ids))
    attributes = F.customer_attributes(dataset.customers, dataset.schema)
    held = np.zeros((len(dataset.customers), len(catalogue.product_ids)), dtype=bool)
    return F.exclusion_masks(attributes, held, catalogue, F.Filters.build(filters)), catalogue, attributes


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _split(cell) -> set[str] | None:
    return None if _missing(cell) else set(cell.split("|"))


def test_target_market_matches_a_naive_loop(bank):
    masks, _, _ = _masks(bank)
    for i, c in enumerate(bank.customers.to_dict("records")):
        for j, p in enumerate(bank.products.to_dict("records")):
            outside = negative = False
            if p["family"] == "fund":
                for cust, prod in (("know", "tm_know"), ("cap", "tm_cap"), ("years", "tm_years")):
                    if not _missing(p[prod]) and (_missing(c[cust]) or c[cust] < p[prod]):
                        outside = True
                for cust, prod in (("goal", "tm_goals"), ("kind", "tm_kinds")):
                    if _split(p[prod]) is not None and (_missing(c[cust]) or c[cust] not in _split(p[prod])):
                        outside = True
                if _split(p["ntm_goals"]) is not None and (_missing(c["goal"]) or c["goal"] in _split(p["ntm_goals"])):
                    negative = True
                if not _missing(p["ntm_cap"]) and (_missing(c["cap"]) or c["cap"] <= p["ntm_cap"]):
                    negative = True
            assert masks["target_market"][i, j] == outside, (i, j)
            assert masks["negative_target_market"][i, j] == negative, (i, j)
    assert masks["target_market"].any() and masks["negative_target_market"].any()


@pytest.mark.parametrize("limit, cutoff", [(0.4, None), (0.25, 600)])
def test_affordability_matches_a_naive_loop_and_ignores_risk(bank, limit, cutoff):
    masks, _, _ = _masks(bank, {"max_debt_service_ratio": limit, "credit_score_cutoff": cutoff})
    for i, c in enumerate(bank.customers.to_dict("records")):
        for j, p in enumerate(bank.products.to_dict("records")):
            bad = False
            if p["family"] in ("loan", "card"):
                if _missing(c["income"]) or _missing(c["ds"]):
                    bad = True
                elif c["income"] <= 0 or 12 * (c["ds"] + p["payment"]) / c["income"] > limit:
                    bad = True
                if cutoff is not None and c["credit_score"] < cutoff:
                    bad = True
            assert masks["affordability"][i, j] == bad, (i, j)
    credit = bank.products.family.isin(["loan", "card"]).to_numpy()
    # Credit products are never removed for risk tolerance; deposits and insurance by eligibility only.
    assert not masks["suitability"][:, credit].any()
    other = bank.products.family.isin(["account", "cover"]).to_numpy()
    for rule in ("suitability", "target_market", "negative_target_market", "affordability"):
        assert not masks[rule][:, other].any(), rule
    fund = (bank.products.family == "fund").to_numpy()
    tolerance = bank.customers.rt.to_numpy()[:, None]
    np.testing.assert_array_equal(
        masks["suitability"][:, fund], bank.products.risk.to_numpy()[fund][None, :] > tolerance
    )


def test_consent_excludes_every_product_of_those_who_objected(bank):
    masks, _, attributes = _masks(bank)
    words = bank.customers.consent.map(lambda v: None if v is None else str(v).lower())
    objected = words.isin(["no", "0", "false"]).to_numpy()
    np.testing.assert_array_equal(attributes["objected"], objected)
    np.testing.assert_array_equal(masks["consent"], np.repeat(objected[:, None], len(bank.products), axis=1))
    assert F.first_reason(masks, int(np.flatnonzero(objected)[0]), 0) == "consent"


@pytest.mark.parametrize("dtype", ["boolean", "Int64"])
def test_nullable_consent_column_with_a_gap_reads_as_no_objection(dtype):
    # A Parquet export's nullable boolean (or Int64) consent column with a missing cell raised
    # pandas' "cannot convert to 'bool'-dtype" ValueError: a traceback from finrec train.
    values = pd.Series([True, False, None, True], dtype="boolean").astype(dtype)
    np.testing.assert_array_equal(C.objected(values.rename("consent"), "customers"), [False, True, False, False])


def test_audit_sentences_name_the_term(bank):
    masks, catalogue, attributes = _masks(bank, {"credit_score_cutoff": 600})
    seen = set()
    for rule in ("target_market", "negative_target_market", "affordability"):
        rows, cols = np.nonzero(masks[rule])
        for i, j in list(zip(rows, cols))[:50]:
            text = F.describe_exclusion(rule, attributes, catalogue, i, j, F.Filters(credit_score_cutoff=600))
            assert text and text != rule
            seen.add(text.split(" ")[0])
    assert {"knowledge", "objective", "debt", "credit"} & seen


def test_without_regime_suitability_applies_to_every_product_as_before():
    schema = {
        "customers": {"id": "customer_id", "numeric": [], "risk_tolerance": "rt"},
        "products": {"id": "product_id", "numeric": [], "risk_level": "risk"},
    }
    tables = {
        "customers": pd.DataFrame({"customer_id": ["a", "b"], "rt": [1, 7]}),
        "products": pd.DataFrame({"product_id": ["x", "y"], "risk": [1, 5]}),
        "interactions": pd.DataFrame({"customer_id": ["a"], "product_id": ["x"]}),
    }
    dataset = validate_tables(S.DatasetSchema.from_dict(schema), tables)
    masks, _, _ = _masks(dataset)
    assert set(masks) == {"held", "suitability"}
    np.testing.assert_array_equal(masks["suitability"], [[False, True], [False, False]])


def test_schema_round_trips_and_keeps_old_hashes():
    parsed = S.DatasetSchema.from_dict(SCHEMA)
    assert S.DatasetSchema.from_dict(parsed.to_dict()) == parsed
    plain = {
        "customers": {"id": "c", "numeric": ["x"], "categorical": []},
        "products": {"id": "p", "numeric": [], "categorical": []},
    }
    assert S.DatasetSchema.from_dict(plain).to_dict() == plain
    assert S.DatasetSchema.from_dict(S.SYNTHETIC.schema().to_dict(display=True)) == S.SYNTHETIC.schema()


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda s: s["products"]["regimes"].update(fund="equity"), "choose one of"),
        (lambda s: s["products"]["target_market"].update(knowlege="tm_know"), "did you mean 'knowledge'"),
        (lambda s: s["customers"].pop("debt_service"), "'debt_service' column"),
        (lambda s: s["customers"].pop("objective"), "'objective' column"),
        (lambda s: s["products"].pop("regime"), "no 'regime' column"),
    ],
)
def test_schema_mistakes_are_named(change, fragment):
    import copy

    raw = copy.deepcopy(SCHEMA)
    change(raw)
    with pytest.raises(SchemaError, match=fragment):
        S.DatasetSchema.from_dict(raw)


@pytest.mark.parametrize(
    "table, column, value, fragment",
    [
        ("customers", "consent", "maybe", "true/false or 1/0"),
        ("customers", "ds", -5, "at least 0"),
        ("customers", "know", "expert", "must be numeric"),
        ("products", "family", "crypto", "regime label 'crypto'"),
    ],
)
def test_bad_values_are_named(table, column, value, fragment):
    dataset = _bank(n=20)
    tables = {
        "customers": dataset.customers.copy(),
        "products": dataset.products.copy(),
        "interactions": dataset.interactions,
    }
    frame = tables[table]
    frame[column] = frame[column].astype(object)
    frame.loc[3, column] = value
    with pytest.raises(DataError, match=fragment):
        validate_tables(S.DatasetSchema.from_dict(SCHEMA), tables)


def test_training_data_without_objections(bank):
    from finrec.data.compliance import without_objections

    kept, left_out = without_objections(bank)
    objected = bank.customers.consent.map(lambda v: None if v is None else str(v).lower()).isin(["no", "0", "false"])
    assert left_out == int(objected.sum()) > 0
    assert set(kept.customers.customer_id) == set(bank.customers.customer_id[~objected])
    assert set(kept.interactions.customer_id) <= set(kept.customers.customer_id)


def test_label_lookups_agree_with_the_per_value_definition():
    """The vectorised label paths (text or missing values) give what the per-value rule gives:
    a label is known only when it is text, and matches only a label the product lists, whatever
    its case ("Growth" is "growth")."""
    term = C.LabelTerm.from_cells(["growth|income", None, "income"])
    mixed = np.array(["growth", None, "income", "other", np.nan, "", "Growth"], dtype=object)
    expected_codes = [term.vocabulary.get(v.lower(), 2) if isinstance(v, str) else 2 for v in mixed]
    assert expected_codes[-1] == expected_codes[0] == term.vocabulary["growth"]
    np.testing.assert_array_equal(term.contains(mixed), term.table[expected_codes])  # few: dict lookups
    many = np.tile(mixed, 20)  # more than C._FEW values: the pandas hash lookup
    assert len(many) > C._FEW
    np.testing.assert_array_equal(term.contains(many), term.table[np.tile(expected_codes, 20)])
    np.testing.assert_array_equal(C._unknown(mixed), [not isinstance(v, str) for v in mixed])
    odd = np.array(["growth", 7, None], dtype=object)  # not all text: the per-value path
    np.testing.assert_array_equal(term.contains(odd), term.table[[term.vocabulary["growth"], 2, 2]])
    np.testing.assert_array_equal(C._unknown(odd), [False, True, True])
    column = pd.Series(["growth", None, "income", "growth"])
    for series in (column, column.astype("category"), column.astype(object)):
        assert C._column_labels(series).tolist() == ["growth", None, "income", "growth"]
    numbers = pd.Series([1, None, 3, 1], dtype="category")  # categories that are not text
    assert C._column_labels(numbers).tolist() == [category_text(v) for v in numbers.tolist()] == ["1", None, "3", "1"]


def test_label_lookups_agree_for_a_request_and_a_batch():
    # A batch hashes each distinct label once (pd.factorize); a request looks each value up in
    # a dict. Both must treat missing values and non-text alike (unknown, listed by nothing).
    term = C.LabelTerm.from_cells(["growth|income", None, "income", "retirement"])
    values = np.array(["growth", None, np.nan, "income", 7, "cash", pd.NA, "retirement", "income"], dtype=object)
    batch = np.resize(values, 10 * len(values))  # over C._FEW: the hashed path
    expected = np.array(
        [
            [v == "growth" or v == "income", False, v == "income", v == "retirement"]
            if isinstance(v, str)
            else [False] * 4
            for v in values
        ]
    )
    for i in range(0, len(batch), len(values)):  # the request path, a few values at a time
        np.testing.assert_array_equal(term.contains(batch[i : i + len(values)]), expected)
    np.testing.assert_array_equal(term.contains(batch), np.tile(expected, (10, 1)))
    np.testing.assert_array_equal(term.contains(batch, np.array([2, 0])), np.tile(expected[:, [2, 0]], (10, 1)))
    unknown = np.array([not isinstance(v, str) for v in batch])
    np.testing.assert_array_equal(C.Labels.of(batch).unknown(), unknown)
    np.testing.assert_array_equal(C._unknown(batch[:9]), unknown[:9])
