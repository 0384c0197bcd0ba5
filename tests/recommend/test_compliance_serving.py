"""Consent and the rules at every entry point, on the synthetic bank and a model trained on it."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from finrec.data import schema as S
from finrec.data.synthetic import GeneratorSettings, forbidden, generate
from finrec.errors import FinrecError
from finrec.governance.records import verify
from finrec.recommend import filters as F
from finrec.recommend.batch import score_dataset
from finrec.recommend.recommender import Recommender

CONSENT = S.SYNTHETIC.consent


@pytest.fixture(scope="module")
def rec(trained, small_dataset):
    return Recommender(trained, small_dataset)


@pytest.fixture(scope="module")
def objected_ids(small_dataset):
    customers = small_dataset.customers
    ids = customers.customer_id[customers[CONSENT] == 0].tolist()
    assert len(ids) > 50  # the synthetic bank has objections to test with
    return ids


def test_no_recommendation_breaks_a_rule_over_every_customer_of_the_default_bank(trained):
    """The property the filters exist for, over all 30,000 customers of the default bank."""
    bank = generate(GeneratorSettings())
    rec = Recommender(trained)
    context = rec.context(bank["customers"], bank["holdings"])
    ranking = rec.rank(context, 5)
    rows, slots = np.nonzero(np.isfinite(ranking.scores))
    cols = ranking.index[rows, slots]
    rules = forbidden(bank["customers"], bank["products"])
    assert not rules[rows, cols].any()
    assert not context.held[rows, cols].any()
    objected = bank["customers"][CONSENT].to_numpy() == 0
    assert objected.any() and not np.isin(rows, np.flatnonzero(objected)).any()
    # Customers who did not object all get recommendations, and the rules did bite.
    assert set(rows) == set(np.flatnonzero(~objected))
    regime = rec.catalogue.regime
    assert ranking.masks["affordability"][:, regime == "credit"].any()
    assert ranking.masks["target_market"][:, regime == "investment"].any()
    # Credit products stay eligible for customers whose risk tolerance is below their risk level.
    credit = regime == "credit"
    above = rec.catalogue.risk[None, :] > bank["customers"]["risk_tolerance"].to_numpy()[:, None]
    assert not ranking.masks["suitability"][:, credit].any()
    assert (above & ~ranking.excluded)[:, credit].any()


def test_recommend_answers_an_objection_with_no_items(rec, objected_ids):
    result = rec.recommend(objected_ids[0], k=5)
    assert result.objected and result.items == [] and result.eligible == 0
    assert "objected to profiling" in result.message
    # `finrec recommend --json` prints to_dict: it said no word of the objection the API's body
    # carries (`objected`), so a script could not tell it from a customer nothing suits.
    assert result.to_dict()["objected"] is True
    row = rec.known_customers.set_index("customer_id").loc[objected_ids[0]].to_dict()
    new = rec.recommend({**row, CONSENT: "no"}, k=5)
    assert new.objected and new.items == []
    assert not rec.recommend({**row, CONSENT: 1}, k=5).objected
    audit = rec.audit(objected_ids[0])
    assert (audit.excluded_by == "consent").all() and audit.score.isna().all()


def test_features_naming_a_known_customer_keep_the_objection_and_holdings_on_record(rec, small_dataset, objected_ids):
    """A request by features that names a known customer's id was scored as a new customer: a
    body that left out the consent column recommended to a customer who objected, and one that
    left out the holdings offered the products the customer holds (the API, the Python API and
    the dashboard's upload; a compliance tester, 2026-12). The bank's record still binds."""
    customers = small_dataset.customers.set_index("customer_id")
    features = customers.loc[objected_ids[0]].drop(CONSENT).to_dict()
    assert rec.recommend({**features, "customer_id": objected_ids[0]}, k=5).objected
    assert rec.recommend({**features, "customer_id": objected_ids[0], CONSENT: "yes"}, k=5).objected
    holdings = small_dataset.holdings
    for cid in holdings.customer_id[~holdings.customer_id.isin(objected_ids)].unique()[:30]:
        held = set(holdings.product_id[holdings.customer_id == cid])
        row = {**customers.loc[cid].to_dict(), "customer_id": cid}
        offered = {item.product_id for item in rec.recommend(row, k=25).items}
        assert offered and not offered & held, cid
        assert {item.product_id for item in rec.recommend(cid, k=25).items} == offered - held
    # Features without an id, or with one nobody has, are a new customer as before.
    assert not rec.recommend({**features, "customer_id": "NOBODY"}, k=5).objected
    assert not rec.recommend(features, k=5).objected


def test_score_leaves_objected_customers_out(rec, small_data_dir, objected_ids, tmp_path):
    stats: dict = {}
    out = tmp_path / "top.parquet"
    customers, rows = score_dataset(rec, small_data_dir, out, k=3, stats=stats, chunk_rows=500)
    scored = set(pq.read_table(out).column("customer_id").to_pylist())
    assert stats["objected"] == len(objected_ids)
    assert not scored & set(objected_ids)
    assert len(scored) == customers - len(objected_ids)


def test_explanations_refuse_objected_customers(rec, objected_ids):
    from finrec.explain import CustomerExplainer

    explainer = CustomerExplainer(rec, max_background=50)
    with pytest.raises(FinrecError, match="objected"):
        explainer.known_customer(objected_ids[0])
    assert not set(explainer.background["customer_id"]) & set(objected_ids)


def test_api_answers_objections_and_records_every_recommendation(
    model_dir, small_data_dir, small_dataset, objected_ids, tmp_path
):
    from fastapi.testclient import TestClient

    from finrec.serve import create_app

    log = tmp_path / "records.jsonl"
    app = create_app(model_dir, small_data_dir, records=log)
    consenting = small_dataset.customers.customer_id[small_dataset.customers[CONSENT] == 1].head(3).tolist()
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.2)
        refused = client.post("/recommendations", json={"customer_id": objected_ids[0], "k": 5})
        assert refused.status_code == 200
        body = refused.json()
        assert body["recommendations"] == [] and body["objected"] and "objected to profiling" in body["message"]
        for cid in consenting:
            answer = client.post(
                "/recommendations", json={"customer_id": cid, "k": 5, "filters": {"max_debt_service_ratio": 0.3}}
            )
            assert answer.status_code == 200 and answer.json()["recommendations"]
            assert answer.json()["filters"]["max_debt_service_ratio"] == 0.3
    result = verify(log)
    assert result.ok and result.lines == 1 + len(consenting)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0]["objected"] and records[0]["items"] == [] and records[0]["customer_id"] == objected_ids[0]
    last = records[-1]
    assert last["customer_id"] == consenting[-1] and last["items"]
    # The record names the model by its creation time and files' digest (README, the record log),
    # not by the folder it is served from: a retraining into the same folder is another model.
    from finrec.artifacts import model_version, read_manifest

    assert last["model_version"] == model_version(read_manifest(model_dir)) != model_dir.name
    assert {e["rule"] for e in last["excluded"]} <= set(F.RULES) and "held" in last["rules"]
    # No feature value of the customer is written: only ids, rule names, scores and settings.
    customer = small_dataset.customers.set_index("customer_id").loc[consenting[-1]]
    text = log.read_text()
    # Whole numbers only: a value's digits inside a hex digest (the chain's hashes) are no leak.
    numbers = set(re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])", text.replace(consenting[-1], "")))
    for column in ("income", "savings", "debt", "credit_score", "monthly_debt_service"):
        assert f"{customer[column]:g}" not in numbers, column
    assert "tolerance" not in text and "is below" not in text  # no reason sentences (they quote values)


def test_dashboard_table_badges_follow_the_regime(rec, small_dataset):
    from finrec.explain import display_plan, recommendations_table

    consenting = small_dataset.customers[small_dataset.customers[CONSENT] == 1]
    plan = display_plan(rec)
    seen = set()
    for cid, tolerance in zip(consenting.customer_id[:300], consenting.risk_tolerance[:300]):
        result = rec.recommend(cid, k=5)
        table = recommendations_table(result, plan, rec.schema, tolerance)
        for item, badge in zip(result.items, table.suitability):
            seen.add(item.regime)
            if item.regime == "credit":
                assert badge.startswith("✅ Affordable")
            elif item.regime == "investment":
                assert badge.startswith("✅ Suitable")
            else:
                assert badge.startswith("✅ Eligible")
    assert {"credit", "deposit"} <= seen


def test_a_credit_product_nothing_assessed_is_never_called_affordable(rec, small_dataset):
    """The dashboard's badge said "Affordable (assessed on debt service)" for every credit
    product, and the reason of one that states no monthly payment said "affordable", where no
    rule had computed its debt service (a compliance tester, 2026-12)."""
    from finrec.explain import display_plan, recommendations_table

    products = small_dataset.products.copy()
    products.loc[products.product_id == "CC_BASIC", "monthly_payment"] = np.nan
    unstated = rec.with_catalogue(products, "products")
    plan = display_plan(rec)
    consenting = small_dataset.customers[small_dataset.customers[CONSENT] == 1]
    seen = {"unstated": 0, "rule off": 0}
    for cid, tolerance in zip(consenting.customer_id[:200], consenting.risk_tolerance[:200]):
        for case, result in (
            ("unstated", unstated.recommend(cid, k=25)),
            ("rule off", rec.recommend(cid, k=25, filters={"affordability": False})),
        ):
            table = recommendations_table(result, plan, rec.schema, tolerance)
            for item, badge in zip(result.items, table.suitability):
                if item.regime != "credit":
                    continue
                if case == "rule off" or item.product_id == "CC_BASIC":
                    seen[case] += 1
                    assert "affordable" not in item.reason.lower() and badge.startswith("ℹ️ Credit:"), (case, item)
                    # and says why: the rule turned off, or no payment stated for this product
                    why = "the affordability rule is turned off" if case == "rule off" else "no monthly payment"
                    assert "not assessed" in badge and why in badge + item.reason, (case, badge, item.reason)
                else:
                    assert "within the limit" in item.reason and badge.startswith("✅ Affordable")
    assert seen["unstated"] and seen["rule off"]


def test_probabilities_never_score_objected_customers(rec, small_dataset, objected_ids, monkeypatch):
    # A campaign plan and `score --probabilities` read these: objected customers get none, and
    # the model never sees their rows.
    customers = small_dataset.customers.head(200)
    context = rec.context(customers, small_dataset.holdings)
    objected = context.attributes["objected"]
    assert objected.any() and not objected.all()
    scored_rows = []
    scores = rec.scores
    monkeypatch.setattr(rec, "scores", lambda ctx: scored_rows.append(len(ctx.ids)) or scores(ctx))
    p = rec.probabilities(context)
    assert scored_rows == [int((~objected).sum())]
    assert (p[objected] == 0).all() and p[~objected].sum() > 0


@pytest.fixture(scope="module")
def termless(small_tables, fast_config):
    """A model of a schema that lists income, credit score and age as no feature, while the
    products keep their eligibility terms (min_income, min_credit_score, min_age, max_age)."""
    import dataclasses

    from finrec.data.io import validate_tables
    from finrec.training.train import fit

    schema = S.SYNTHETIC.schema()
    terms = {S.INCOME, S.CREDIT_SCORE, S.AGE}
    c = schema.customers
    customers = dataclasses.replace(
        c,
        numeric=tuple(x for x in c.numeric if x not in terms),
        log_numeric=tuple(x for x in c.log_numeric if x not in terms),
        protected=tuple(x for x in c.protected if x not in terms),
    )
    schema = dataclasses.replace(schema, customers=customers, display=S.DisplayHints())
    dataset = validate_tables(schema, small_tables)
    return Recommender(fit(dataset, fast_config.with_overrides(epochs=1), verbose=0), dataset)


def test_eligibility_columns_are_numbers_and_read_on_every_path_features_or_not(termless, small_tables):
    """income, credit score and age are read by name by the eligibility terms. Where the schema
    lists them as no feature, text in a table ("17 years") was read as an unknown value, which
    fails no term, and a request's value was dropped: a 16-year-old given by features was offered
    every 18+ product the same customer in a table was refused (a compliance tester, 2026-12)."""
    from finrec.data.io import prepare_entities
    from finrec.errors import DataError
    from finrec.serve import check_feature_keys

    customers = small_tables["customers"].head(40).astype({"age": object})
    customers.loc[customers.index[3], "age"] = "17 years"
    with pytest.raises(DataError, match="column 'age' must be numeric.*'17 years'"):
        prepare_entities(customers, termless.schema.customers, "customers")
    products = small_tables["products"].astype({"min_age": object})
    products.loc[products.index[0], "min_age"] = "eighteen"
    with pytest.raises(DataError, match="column 'min_age' must be numeric"):
        prepare_entities(products, termless.schema.products, "products")

    young = small_tables["customers"].head(40).assign(marketing_consent=1)
    young.loc[young.index[::2], ["age", "income"]] = [16.0, 5_000.0]  # every other one: a minor, poor
    context = termless.context(young, small_tables["holdings"])
    table_allowed = ~F.combine(termless.masks(context, F.Filters()), context.held.shape)
    ids = termless.pipeline.product_ids_
    for row, record in enumerate(young.to_dict("records")):
        record.pop("customer_id")
        held = small_tables["holdings"].product_id[small_tables["holdings"].customer_id == young.customer_id.iloc[row]]
        result = termless.recommend({**record, "holdings": held.tolist()}, k=25)
        assert {i.product_id for i in result.items} == {ids[j] for j in np.flatnonzero(table_allowed[row])}
    assert not table_allowed[::2].any()  # every product asks for 18 or more
    assert table_allowed[1::2].any(axis=1).all()
    check_feature_keys(termless.schema, {S.AGE: 16, S.INCOME: 5000.0, S.CREDIT_SCORE: 700})


def test_a_service_that_enforces_the_rules_refuses_a_request_that_loosens_them(
    model_dir, small_data_dir, small_dataset, monkeypatch
):
    """Any API caller could send ``{"suitability": false}`` and be answered with products above
    the customer's risk tolerance (the record log said so only afterwards). Under
    ``--enforce-rules`` (or its environment variable, which the worker processes read) such a
    request is a 403 naming what it loosens; one that tightens is served; no filters at all is
    the bank's rules, served."""
    from fastapi.testclient import TestClient

    from finrec.serve import ENV_ENFORCE_RULES, app_from_env, create_app

    cid = str(small_dataset.customers.customer_id[small_dataset.customers[CONSENT] == 1].iloc[0])
    loose = {"suitability": False, "max_debt_service_ratio": 0.9}
    monkeypatch.setenv("FINREC_SERVE_MODEL", str(model_dir))
    monkeypatch.setenv("FINREC_SERVE_DATA", str(small_data_dir))
    monkeypatch.setenv(ENV_ENFORCE_RULES, "1")
    for app in (create_app(model_dir, small_data_dir, enforce_rules=True), app_from_env()):
        with TestClient(app) as client:
            deadline = time.monotonic() + 120
            while client.get("/ready").status_code != 200:
                assert time.monotonic() < deadline, client.get("/ready").json()
                time.sleep(0.2)
            refused = client.post("/recommendations", json={"customer_id": cid, "filters": loose})
            assert refused.status_code == 403
            detail = refused.json()["detail"]
            assert "suitability turned off" in detail and "max_debt_service_ratio 0.9 above 0.4" in detail
            for filters in (None, {"preset": "conservative", "max_debt_service_ratio": 0.3}, {"suitability": True}):
                body = {"customer_id": cid, **({"filters": filters} if filters else {})}
                served = client.post("/recommendations", json=body)
                assert served.status_code == 200, served.json()
    monkeypatch.setenv(ENV_ENFORCE_RULES, "true")  # read as off, it left the rules unenforced
    with pytest.raises(FinrecError, match="FINREC_SERVE_ENFORCE_RULES must be 1 \\(on\\) or 0 \\(off\\), got 'true'"):
        app_from_env()
    monkeypatch.delenv(ENV_ENFORCE_RULES)
    with TestClient(create_app(model_dir, small_data_dir)) as client:  # off by default: the caller's choice
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        answer = client.post("/recommendations", json={"customer_id": cid, "filters": loose})
        assert answer.status_code == 200 and answer.json()["filters"]["suitability"] is False
        # Features naming a known customer answer as that customer (the record log had null: a
        # tester); a held product id is read stripped, as ids are; an integer id is an id.
        held = str(small_dataset.holdings.product_id.iloc[0])
        body = {"features": {"customer_id": f" {cid} ", "age": 40, "holdings": [f" {held} "]}}
        answer = client.post("/recommendations", json=body)
        assert answer.status_code == 200 and answer.json()["customer_id"] == cid, answer.text
        assert held not in {item["product_id"] for item in answer.json()["recommendations"]}
        unknown = client.post("/recommendations", json={"customer_id": 42})
        assert unknown.status_code == 404 and unknown.json()["detail"] == "unknown customer_id '42'"


def test_api_answers_503_once_its_record_log_is_replaced_and_refuses_a_non_log(
    model_dir, small_data_dir, small_dataset, tmp_path
):
    # Found by a tester: after `sed -i` on the log (a new file at the path), appends went to the
    # deleted inode and every request still answered 200, recorded nowhere anyone could read.
    from fastapi.testclient import TestClient

    from finrec.serve import create_app

    log = tmp_path / "records.jsonl"
    cid = small_dataset.customers.customer_id[small_dataset.customers[CONSENT] == 1].iloc[0]
    with TestClient(create_app(model_dir, small_data_dir, records=log)) as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.2)
        assert client.post("/recommendations", json={"customer_id": cid}).status_code == 200
        copy = tmp_path / "edited.jsonl"
        copy.write_bytes(log.read_bytes())
        copy.replace(log)  # what sed -i does
        answer = client.post("/recommendations", json={"customer_id": cid})
        assert answer.status_code == 503 and "not recorded" in answer.json()["detail"]
        assert "recommendations" not in answer.json()
    assert len(log.read_bytes().splitlines()) == 1
    other = tmp_path / "customers.csv"
    other.write_text("customer_id,income\nC1,100\n")
    with pytest.raises(FinrecError, match="not a record"):
        create_app(model_dir, small_data_dir, records=other)
    assert not (tmp_path / "customers.csv.head").exists()
