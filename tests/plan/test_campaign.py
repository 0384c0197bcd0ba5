"""``finrec plan`` end to end: limits respected exactly, no forbidden offer, better than greedy."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from finrec.artifacts import load_model_dir
from finrec.cli import main
from finrec.data import schema as S
from finrec.data.io import load_dataset
from finrec.errors import DataError, FinrecError
from finrec.plan.campaign import (
    build_problem,
    capacity_vector,
    offer_reasons,
    plan_campaign,
    plan_table,
    product_values,
    read_capacities,
)
from finrec.recommend import filters as F
from finrec.recommend.recommender import Recommender

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recommender(model_dir):
    return Recommender(load_model_dir(model_dir).trained)


@pytest.fixture(scope="module")
def problem(recommender, small_data_dir):
    return build_problem(recommender, small_data_dir, filters="balanced", chunk_rows=400)


def forbidden(recommender, data_dir, filters) -> np.ndarray:
    """bool [n, P]: what the recommender's own masks exclude, for the customers in file order."""
    dataset = load_dataset(data_dir)
    context = recommender.context(dataset.customers, dataset.holdings)
    return F.combine(recommender.masks(context, F.Filters.build(filters)), context.held.shape)


def test_problem_forbids_exactly_what_the_filters_forbid(recommender, problem, small_data_dir):
    excluded = forbidden(recommender, small_data_dir, "balanced")
    assert excluded.any()
    assert (problem.probability[excluded] == 0).all()
    dataset = load_dataset(small_data_dir)
    context = recommender.context(dataset.customers, dataset.holdings)
    expected = np.where(excluded, 0, recommender.probabilities(context))
    # Chunks change only the last float32 bits of the tower (steep isotonic steps magnify them a little).
    np.testing.assert_allclose(problem.probability, expected, atol=1e-4)


def test_plan_respects_capacities_contacts_and_filters(recommender, problem, small_data_dir):
    capacity = np.full(len(problem.product_ids), np.inf)
    capacity[:5] = [3, 0, 10, 25, 1]
    for contacts in (1, 2):
        result = plan_campaign(problem, capacity, contacts, solver="exact")
        plan = result.plan
        excluded = forbidden(recommender, small_data_dir, "balanced")
        assert not excluded[plan.rows, plan.cols].any()
        assert (np.bincount(plan.rows, minlength=len(problem.customer_ids)) <= contacts).all()
        assert (np.bincount(plan.cols, minlength=len(capacity)) <= capacity).all()
        assert plan.value >= result.greedy.value - 1e-9
        dual = plan_campaign(problem, capacity, contacts, solver="dual").plan
        assert dual.value <= plan.value + 1e-6 and dual.bound >= plan.value - 1e-6


def test_capacities_table(tmp_path):
    ids = ["A", "B", "C"]
    path = tmp_path / "caps.csv"
    pd.DataFrame({"product_id": ["B", "A"], "capacity": [5, 0]}).to_csv(path, index=False)
    np.testing.assert_array_equal(read_capacities(path, ids), [0, 5, np.inf])
    for frame, message in [
        ({"product_id": ["Z"], "capacity": [1]}, "unknown product_id"),
        ({"product_id": ["A", "A"], "capacity": [1, 2]}, "listed twice"),
        # The cell as written, never numpy's repr (np.int64(-5): a tester)
        ({"product_id": ["A"], "capacity": [-1]}, "row 2 has -1$"),
        ({"product_id": ["A"], "capacity": [1.5]}, "row 2 has 1.5$"),
        ({"product_id": ["A"], "capacity": [None]}, "row 2 has an empty cell$"),
        ({"product_id": ["A"], "cap": [1]}, "missing column"),
        # A tester: true read as 1; a capacity without its product read as the product "nan".
        ({"product_id": ["A"], "capacity": [True]}, "row 2 has 'True'$"),
        ({"product_id": ["A", None], "capacity": [1, 4]}, "row 3 has a capacity and no product_id$"),
    ]:
        pd.DataFrame(frame).to_csv(path, index=False)
        with pytest.raises(DataError, match=message):
            read_capacities(path, ids)
    # A spreadsheet's blank trailing rows are no rows.
    path.write_text("product_id,capacity\nB,5\n,\n,\n")
    np.testing.assert_array_equal(read_capacities(path, ids), [np.inf, 5, np.inf])


def test_values_from_the_schema_column(small_dataset):
    products = small_dataset.products.assign(margin=np.arange(len(small_dataset.products), dtype=float))
    ids = list(products["product_id"])[::-1]
    assert (product_values(products, small_dataset.schema, ids) == 1).all()
    schema = S.DatasetSchema.from_dict(
        {
            **small_dataset.schema.to_dict(),
            "products": {**small_dataset.schema.to_dict()["products"], "value": "margin"},
        }
    )
    np.testing.assert_array_equal(product_values(products, schema, ids), np.arange(len(ids), dtype=float)[::-1])
    with pytest.raises(DataError, match="margin") as error:
        product_values(products.assign(margin=-1.0), schema, ids)
    # It read "not so for np.str_('INS_TRAVEL'), ..." (a tester naming a yield that is negative
    # for credit products): the ids as text, each with its value, and the count.
    message = str(error.value)
    assert "np.str_" not in message and f"'{ids[0]}' (-1)" in message, message
    assert f"{len(ids)} product(s) are not" in message
    # A margin of 1e300 overflowed the float32 weights and dropped the product without a word; a
    # true/false column read as 1/0; text is quoted as written (a tester).
    for margin, shown in ((1e300, "(1e+300)"), (True, "(True)"), ("1,480", "('1,480')")):
        column = products.margin.astype(object).where(products.product_id != ids[0], margin)
        if margin is True:
            column = pd.Series([True] * len(products))
        with pytest.raises(DataError, match="must be a number from 0 to 1e\\+12") as error:
            product_values(products.assign(margin=column), schema, ids)
        assert shown in str(error.value), str(error.value)


def test_cli_plan_end_to_end(model_dir, small_data_dir, recommender, tmp_path, capsys):
    # The same bank with a margin per product, named in schema.yaml as the value.
    data = tmp_path / "bank"
    shutil.copytree(small_data_dir, data)
    products = pd.read_parquet(data / "products.parquet")
    margins = dict(zip(products["product_id"], 1.0 + np.arange(len(products)) % 7 * 100.0))
    products.assign(margin=products["product_id"].map(margins)).to_parquet(data / "products.parquet")
    schema = yaml.safe_load((data / "schema.yaml").read_text())
    schema["products"]["value"] = "margin"
    (data / "schema.yaml").write_text(yaml.safe_dump(schema))
    caps = tmp_path / "caps.csv"
    pd.DataFrame({"product_id": list(products["product_id"][:3]), "capacity": [5, 20, 0]}).to_csv(caps, index=False)
    out, summary = tmp_path / "plan.csv", tmp_path / "plan.json"

    code = main(
        [
            "plan",
            "--model",
            str(model_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--capacity",
            str(caps),
            "--contacts-per-customer",
            "2",
            "--min-probability",
            "0.01",
            "--json",
            str(summary),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "greedy" in printed and "proven" in printed
    plan = pd.read_csv(out, dtype={"customer_id": str})
    assert list(plan.columns) == ["customer_id", "product_id", "probability", "expected_value", "reason"]
    assert plan["customer_id"].value_counts().max() <= 2
    counts = plan["product_id"].value_counts()
    for pid, cap in zip(products["product_id"][:3], [5, 20, 0]):
        assert counts.get(pid, 0) <= cap
    assert (plan["probability"] >= 0.01).all()
    np.testing.assert_allclose(plan["expected_value"], plan["probability"] * plan["product_id"].map(margins), rtol=1e-5)
    assert not plan.duplicated(["customer_id", "product_id"]).any()
    # No offer the recommender's filters forbid.
    excluded = forbidden(recommender, small_data_dir, "balanced")
    ids = load_dataset(small_data_dir).customers["customer_id"].astype(str)
    rows = pd.Index(ids).get_indexer(plan["customer_id"])
    cols = pd.Index(recommender.pipeline.product_ids_).get_indexer(plan["product_id"])
    assert (rows >= 0).all() and not excluded[rows, cols].any()
    # Each offer says why it is allowed: investment products by suitability, the other regimes by their own rule.
    investment = plan["reason"].str.startswith("investment product")
    assert investment.any() and plan["reason"][investment].str.contains("within tolerance").all()
    assert plan["reason"].str.match(r"(investment|credit|deposit|insurance|other) product").all()
    info = json.loads(summary.read_text())
    assert info["plan"]["expected_value"] >= info["greedy"]["expected_value"] - 1e-9
    assert info["plan"]["expected_value"] == pytest.approx(plan["expected_value"].sum(), rel=1e-5)
    assert info["bound"] >= info["plan"]["expected_value"]


def test_cli_plan_refuses_bad_input(model_dir, small_data_dir, tmp_path, capsys):
    out = tmp_path / "plan.parquet"
    caps = tmp_path / "caps.csv"
    caps.write_text("product_id,capacity\nNOPE,3\n")
    code = main(
        ["plan", "--model", str(model_dir), "--data", str(small_data_dir), "--out", str(out), "--capacity", str(caps)]
    )
    assert code == 2 and "NOPE" in capsys.readouterr().err and not out.exists()
    code = main(
        [
            "plan",
            "--model",
            str(model_dir),
            "--data",
            str(small_data_dir),
            "--out",
            str(small_data_dir / "customers.parquet"),
        ]
    )
    assert code == 2 and "overwrite" in capsys.readouterr().err
    # Inside the model or the data directory (a plan there made the next calibrate refuse the
    # model directory, a tester), refused before the work, as score's --out is.
    for inside in (model_dir / "plan.csv", small_data_dir / "plan.csv"):
        assert main(["plan", "--model", str(model_dir), "--data", str(small_data_dir), "--out", str(inside)]) == 2
        assert "lies inside" in capsys.readouterr().err and not inside.exists()
    # An argument error is one line, as every bad input's (argparse printed its usage first).
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "plan",
                "--model",
                str(model_dir),
                "--data",
                str(small_data_dir),
                "--out",
                str(out),
                "--contacts-per-customer",
                "0",
            ]
        )
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("finrec plan: error: argument")


def test_a_model_without_calibration_cannot_plan(model_dir, small_data_dir, tmp_path):
    bare = tmp_path / "model"
    shutil.copytree(model_dir, bare)
    manifest = json.loads((bare / "manifest.json").read_text())
    del manifest["files"]["calibration.json"]
    (bare / "calibration.json").unlink()
    (bare / "manifest.json").write_text(json.dumps(manifest))
    recommender = Recommender(load_model_dir(bare).trained)
    assert recommender.calibration is None
    with pytest.raises(FinrecError, match="no calibration"):
        build_problem(recommender, small_data_dir)


def test_naming_a_value_column_later_keeps_the_model_usable(model_dir, small_data_dir, tmp_path, capsys):
    data = tmp_path / "bank"
    shutil.copytree(small_data_dir, data)
    products = pd.read_parquet(data / "products.parquet")
    products.assign(margin=2.0).to_parquet(data / "products.parquet")
    schema = yaml.safe_load((data / "schema.yaml").read_text())
    schema["products"]["value"] = "margin"
    (data / "schema.yaml").write_text(yaml.safe_dump(schema))
    assert main(["score", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "s.parquet")]) == 0
    recommender = Recommender.load(model_dir, data)
    assert recommender.recommend(str(recommender.known_customers["customer_id"].iloc[0]), k=1).items
    capsys.readouterr()


def test_customers_alone_plan_on_the_models_catalogue(recommender, problem, small_data_dir, tmp_path):
    # Data without a products table keeps the model's catalogue (README; ``Recommender.for_data``),
    # as ``finrec score`` does: the plan read the table for the offers' values and stopped there.
    data = tmp_path / "customers_alone"
    shutil.copytree(small_data_dir, data)
    (data / "products.parquet").unlink()
    alone = build_problem(recommender, data, filters="balanced", chunk_rows=400)
    assert alone.catalogue_changes is None and (alone.values == 1).all()
    np.testing.assert_array_equal(alone.probability, problem.probability)
    schema = yaml.safe_load((data / "schema.yaml").read_text())
    schema["products"]["value"] = "margin"  # a value the model's catalogue does not carry
    (data / "schema.yaml").write_text(yaml.safe_dump(schema))
    with pytest.raises(DataError, match="margin"):
        build_problem(recommender, data, chunk_rows=400)
    shutil.copy(small_data_dir / "products.parquet", data)  # a table without it: exit 2, not a KeyError
    with pytest.raises(DataError, match="margin"):
        build_problem(recommender, data, chunk_rows=400)


def test_an_empty_plan_writes_an_empty_table(problem, tmp_path):
    result = plan_campaign(problem, np.zeros(len(problem.product_ids)), 1)
    assert len(result.plan.rows) == 0 and result.plan.value == 0
    table = plan_table(problem, result.plan)
    assert list(table.columns) == ["customer_id", "product_id", "probability", "expected_value", "reason"]
    assert len(table) == 0


def test_cli_plan_with_an_exposure_limit(model_dir, small_data_dir, tmp_path, capsys):
    """--max-exposure-ratio over gender: the written plan's offer rates per category, counted from
    the file and the customers table, stay within the ratio; the cost in value is reported."""
    out, summary = tmp_path / "fair.parquet", tmp_path / "fair.json"
    caps = tmp_path / "caps.csv"
    products = pd.read_parquet(small_data_dir / "products.parquet")
    pd.DataFrame({"product_id": list(products["product_id"][:4]), "capacity": [30, 30, 30, 30]}).to_csv(
        caps, index=False
    )
    args = ["plan", "--model", str(model_dir), "--data", str(small_data_dir), "--capacity", str(caps)]
    code = main([*args, "--out", str(out), "--json", str(summary), "--max-exposure-ratio", "1.1", "--solver", "dual"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "exposure limit over gender" in printed and "holds" in printed
    info = json.loads(summary.read_text())["exposure"]
    assert info["holds"] and info["worst_ratio"] <= 1.1 + 1e-9 and info["cost"] >= 0
    assert "greedy made to keep the exposure limit too" in printed
    plan = pd.read_parquet(out)
    dataset = load_dataset(small_data_dir)
    from finrec.data.compliance import without_objections

    gender = dataset.customers.set_index("customer_id")["gender"].astype(str)
    sizes = gender.value_counts()
    category = products.set_index("product_id")["product_type"]
    counts = pd.crosstab(plan["customer_id"].map(gender), plan["product_id"].map(category))
    rates = counts.reindex(sizes.index, fill_value=0).div(sizes, axis=0)
    offered = rates.loc[:, rates.max() > 0]
    assert (offered.max() <= 1.1 * offered.min() + 1e-9).all()
    assert not set(plan["customer_id"]) - set(without_objections(dataset)[0].customers["customer_id"])
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "x.csv"), "--max-exposure-ratio", "0.5"])
    assert main([*args, "--out", str(tmp_path / "x.csv"), "--max-exposure-ratio", "2", "--protected", "income"]) == 2
    assert "not a protected customer column" in capsys.readouterr().err


def test_credit_offers_state_their_affordability_ratio(recommender, problem):
    """A credit offer's reason gives the debt service to income ratio after the credit, as a
    single recommendation's reason does."""
    from finrec.plan.campaign import offer_reasons

    credit = np.flatnonzero(problem.catalogue.regime_is("credit") & ~np.isnan(problem.catalogue.payment))
    rows, cols = np.nonzero(problem.probability[:, credit] > 0)
    cols = credit[cols]
    known = np.isfinite(problem.income[rows]) & np.isfinite(problem.debt_service[rows]) & (problem.income[rows] > 0)
    rows, cols = rows[known][:200], cols[known][:200]
    assert len(rows)
    reasons = offer_reasons(problem, rows, cols)
    for i, j, reason in zip(rows[:20], cols[:20], reasons[:20]):
        ratio = 12.0 * (problem.debt_service[i] + problem.catalogue.payment[j]) / problem.income[i]
        assert f"debt service to income after this credit {ratio:.1%} within the limit" in reason, reason


def test_cli_plan_filters_with_the_datas_products_table(model_dir, updated_bank, raise_the_bars, tmp_path, capsys):
    """A catalogue changed after training: the plan offers nothing its new risk level or minimum
    income forbids, nor a product the table no longer lists (whose value it may lack too), and
    says which; with 25 contacts a customer, every allowed offer is in the plan."""

    def update(products):
        products = raise_the_bars(products)
        products = products[products.product_id != "INS_TRAVEL"]
        return products.assign(margin=1.0 + np.arange(len(products)) % 3)

    data = updated_bank(update)
    schema = yaml.safe_load((data / "schema.yaml").read_text())
    schema["products"]["value"] = "margin"
    (data / "schema.yaml").write_text(yaml.safe_dump(schema))
    out, summary = tmp_path / "plan.csv", tmp_path / "plan.json"
    args = [
        "plan",
        "--model",
        model_dir,
        "--data",
        data,
        "--out",
        out,
        "--contacts-per-customer",
        25,
        "--json",
        summary,
    ]
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 0, err
    plan = pd.read_csv(out, dtype={"customer_id": str})
    customers = pd.read_parquet(data / "customers.parquet")  # its links still name the product: not load_dataset
    tolerance = plan.customer_id.map(customers.set_index("customer_id")["risk_tolerance"])
    assert not ((plan.product_id == "FUND_BOND") & (tolerance < 7)).any()
    assert not plan.product_id.isin(["MORT_FIXED25", "INS_TRAVEL"]).any()
    assert err.count("('INS_TRAVEL'): taken as discontinued, never offered") == 1, err
    assert json.loads(summary.read_text())["catalogue"]["discontinued"] == ["INS_TRAVEL"]


def test_an_exposure_limit_over_one_group_says_it_compares_nothing():
    from finrec.plan.campaign import format_summary

    row = {"offers": 3, "expected_adoptions": 1.0, "expected_value": 1.0}
    info = {
        "customers": 3, "products": 2, "allowed_pairs": 6, "contacts_per_customer": 1, "method": "exact",
        "plan": row, "greedy": row, "bound": 1.0, "gap": 0.0, "relative_gap": 0.0, "shadow_prices": {},
    }  # fmt: skip
    exposure = {
        "column": "gender", "max_ratio": 1.0, "groups": ["missing"], "value_without_limit": 1.0,
        "value_with_limit": 1.0, "cost": 0.0, "worst_ratio_without_limit": 1.0, "worst_ratio": 1.0, "holds": True,
    }  # fmt: skip
    # A protected column all missing (or of one value) is one group: the summary said the limit
    # "holds" as though the groups had been compared.
    text = format_summary({**info, "exposure": exposure})
    assert "this data has 1 group ('missing'), no two to compare; the limit constrains nothing" in text
    assert "holds" not in text
    two = format_summary({**info, "exposure": {**exposure, "groups": ["female", "male"]}})
    assert "exposure limit over gender (2 groups): rate ratio <= 1 (holds" in two
    # A tester: 5 customers of a group drove the whole plan, and nothing named them.
    small = {**exposure, "groups": ["female", "male", "diverse"], "small_groups": {"diverse": 5}}
    assert "note: small group(s) 'diverse' (5): their rates bound" in format_summary({**info, "exposure": small})
    # Offers allowed and none made: said why, not "0 offers" alone.
    none = {**info, "plan": {**row, "offers": 0}}
    assert "no offer is made: the exposure limit (rate ratio <= 1 over gender) leaves none" in format_summary(
        {**none, "exposure": {**exposure, "groups": ["female", "male"]}}
    )
    assert "no offer is made: every allowed offer is worth 0" in format_summary({**none, "valued_pairs": 0})


def test_an_exact_plan_under_an_exposure_limit_prices_its_binding_capacities(recommender, small_data_dir):
    """An integer program has no duals: under an exposure limit every binding capacity was "worth
    0.0000" one more slot (a tester); the prices come from the dual method, as without a limit."""
    from finrec.plan.campaign import summary

    problem = build_problem(recommender, small_data_dir, filters="balanced", group_column="gender")
    busiest = int(np.argmax((problem.weights > 0).sum(axis=0)))
    capacity = {problem.product_ids[busiest]: 3}
    fair = plan_campaign(problem, capacity, solver="exact", max_exposure_ratio=3.0)
    info = summary(fair)
    assert info["exposure"]["holds"] and problem.product_ids[busiest] in info["shadow_prices"]
    assert info["shadow_prices"][problem.product_ids[busiest]]["price"] > 0


@pytest.mark.parametrize("ratio", [1.2, 2.0])
def test_the_greedy_plan_beside_a_fair_plan_keeps_the_limit_too(recommender, small_data_dir, ratio):
    """The plan was set beside the greedy plan without the limit, which broke it: "plan - greedy"
    priced the limit as the plan's loss (a reviewer)."""
    from finrec.plan.campaign import exposure_limit

    problem = build_problem(recommender, small_data_dir, filters="balanced", group_column="gender")
    busiest = np.argsort(-(problem.weights > 0).sum(axis=0))[:3]
    capacity = {problem.product_ids[j]: 20 for j in busiest}
    result = plan_campaign(problem, capacity, solver="exact", max_exposure_ratio=ratio)
    limit = exposure_limit(problem, ratio)
    base = result.greedy
    assert limit.holds(base.rows, base.cols) and limit.holds(result.plan.rows, result.plan.cols)
    assert base.method == "greedy within the limit"
    assert result.plan.value >= base.value - 1e-6
    cap = capacity_vector(capacity, problem.product_ids)
    assert (np.bincount(base.cols, minlength=len(cap)) <= cap).all()
    assert np.bincount(base.rows, minlength=len(problem.weights)).max(initial=0) <= 1
    assert result.extra["exposure"]["greedy_value_without_limit"] >= base.value - 1e-6


def test_a_capacity_of_zero_is_a_closed_product_not_a_priced_one(problem):
    from finrec.plan.campaign import format_summary, summary

    # Capacity 0 read as a binding capacity with a shadow price: it is no slot to buy more of.
    capacity = np.full(len(problem.product_ids), np.inf)
    capacity[0] = 0
    info = summary(plan_campaign(problem, capacity, 1, solver="exact"))
    closed = problem.product_ids[0]
    assert info["closed"] == [closed] and closed not in info["shadow_prices"]
    text = format_summary(info)
    assert f"closed (capacity 0, never offered): {closed}" in text
    assert f"  {closed} " not in text.split("binding capacities")[-1]


def test_capacities_from_python_are_matched_by_product_id(problem):
    """A notebook gives capacities as a dict, a Series or a frame by product id: a dict and a frame
    were bare TypeError/ValueError, and a Series by product id was read in its own order, landing
    each capacity on another product (a silently different plan)."""
    ids = problem.product_ids
    capacity = np.full(len(ids), np.inf)
    capacity[ids.index(ids[3])], capacity[ids.index(ids[7])] = 2, 0
    expected = plan_campaign(problem, capacity, solver="exact")
    shuffled = pd.Series(capacity, index=ids).iloc[::-1]
    for given in (
        {ids[3]: 2, ids[7]: 0},
        pd.Series({ids[7]: 0, ids[3]: 2}),
        shuffled,
        pd.DataFrame({"product_id": [ids[7], ids[3]], "capacity": [0, 2]}, index=[10, 5]),
        list(capacity),
    ):
        got = plan_campaign(problem, given, solver="exact")
        np.testing.assert_array_equal(got.capacity, capacity)
        assert got.plan.value == pytest.approx(expected.plan.value)
    with pytest.raises(DataError, match=r"capacity: unknown product_id\(s\) 'NOPE'"):
        plan_campaign(problem, {"NOPE": 1})
    with pytest.raises(DataError, match="whole numbers >= 0; row 1 has -1"):
        plan_campaign(problem, {ids[0]: -1})
    # A Series made from a list (index 0, 1, 2, ...) meant positions: named, with the way to say so.
    with pytest.raises(
        FinrecError, match=r"index is the numbers 0, 1, 2, 3, 4, no product id; .* `series.to_numpy\(\)`"
    ):
        plan_campaign(problem, pd.Series(capacity))
    np.testing.assert_array_equal(
        plan_campaign(problem, pd.Series(capacity).to_numpy(), solver="exact").capacity, capacity
    )


def test_plan_inputs_of_the_wrong_form_are_named(recommender, small_data_dir, tmp_path):
    with pytest.raises(FinrecError, match="min probability must be a number in \\[0, 1\\), got '0.1'"):
        build_problem(recommender, small_data_dir, min_probability="0.1")  # was a bare TypeError
    with pytest.raises(FinrecError, match=r"values must have one entry per product \(\d+\), got shape \(2,\)"):
        build_problem(recommender, small_data_dir, values=[1, 2])  # was a broadcast error at solve time
    with pytest.raises(DataError, match="nowhere: no such data directory"):
        build_problem(recommender, tmp_path / "nowhere")  # was a bare FileNotFoundError


def test_an_empty_plan_says_why(recommender, small_data_dir, tmp_path):
    from finrec.plan.campaign import format_summary, summary

    # Every customer objected to profiling: the summary said "0 allowed offers" and nothing else.
    data = tmp_path / "objected"
    shutil.copytree(small_data_dir, data)
    customers = pd.read_parquet(data / "customers.parquet")
    consent = recommender.schema.customers.consent
    customers.assign(**{consent: 0}).to_parquet(data / "customers.parquet")
    problem = build_problem(recommender, data, filters="balanced", chunk_rows=400)
    text = format_summary(summary(plan_campaign(problem, None, 1)))
    n = len(customers)
    assert f"no offer is allowed: all {n} customers objected to profiling for marketing" in text
    assert f"{n} customer(s) objected to profiling for marketing" in text
    floor = build_problem(recommender, small_data_dir, filters="balanced", min_probability=0.999, chunk_rows=400)
    text = format_summary(summary(plan_campaign(floor, None, 1)))
    assert "no offer is allowed: the filters (and the minimum probability) excluded every offer" in text


def test_a_customer_repeated_in_another_chunk_is_refused_before_any_offer(recommender, small_data_dir, tmp_path):
    # Chunks are validated one at a time: an id repeated 400 rows later was two customers to the
    # plan, who could get two offers with one contact each (the second tester).
    data = tmp_path / "bank"
    shutil.copytree(small_data_dir, data)
    path = next(data.glob("customers.*"))
    customers = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
    first = customers[S.SYNTHETIC.schema().customers.id].iloc[0]
    repeated = pd.concat([customers, customers.iloc[[0]]], ignore_index=True)
    repeated.to_parquet(path, index=False) if path.suffix == ".parquet" else repeated.to_csv(path, index=False)
    with pytest.raises(DataError, match=f"must be unique; 1 id.*'{first}'"):
        build_problem(recommender, data, filters="balanced", chunk_rows=400)


def test_an_offers_reason_never_says_an_unknown_income_or_age_meets_a_term(recommender, small_data_dir, tmp_path):
    # A plan's reasons carried the risk tolerance alone, so every offer "meets the income, credit
    # score, age terms", checked or not (the second tester); the recommender's say "unknown".
    data = tmp_path / "bank"
    shutil.copytree(small_data_dir, data)
    path = next(data.glob("customers.*"))
    customers = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    unknown = np.arange(len(customers)) % 2 == 0
    customers.loc[unknown, [S.INCOME, S.AGE]] = np.nan
    customers.to_parquet(path, index=False) if path.suffix == ".parquet" else customers.to_csv(path, index=False)
    problem = build_problem(recommender, data, filters="balanced", chunk_rows=400)
    rows, cols = np.nonzero(problem.probability > 0)
    reasons = offer_reasons(problem, rows, cols)
    barred = problem.catalogue.terms[S.MIN_INCOME][cols] > 0
    assert (unknown[rows] & barred).any() and (~unknown[rows] & barred).any()
    for reason, row_unknown, income_barred in zip(reasons, unknown[rows], barred):
        if row_unknown and income_barred:
            assert "meets the income" not in reason and re.search(r"income(, age)? unknown: the income", reason)
        else:  # known, or a minimum of 0, which bars no income
            assert "meets the income" in reason and "income unknown" not in reason
    ages = np.isfinite(problem.catalogue.terms[S.MAX_AGE]) | (problem.catalogue.terms[S.MIN_AGE] > 0)
    assert ages.all()  # every product here bars some age: an unknown one is never said to meet it
    assert all("age unknown" in reason for reason in reasons[unknown[rows]])


def test_cli_plan_never_offers_a_product_marked_not_on_offer(model_dir, withdrawing_bank, withdrawn, tmp_path, capsys):
    """A product the bank withdrew (``products.on_offer`` false) while customers hold it: the plan
    forbids it, says so once and lists it in the summary's catalogue changes."""
    data = withdrawing_bank("0")
    out, summary = tmp_path / "plan.csv", tmp_path / "plan.json"
    args = [
        "plan",
        "--model",
        model_dir,
        "--data",
        data,
        "--out",
        out,
        "--contacts-per-customer",
        25,
        "--json",
        summary,
    ]
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 0, err
    plan = pd.read_csv(out, dtype={"customer_id": str})
    assert len(plan) and not plan.product_id.eq(withdrawn).any()
    assert err.count(f"marked not on offer in column 'on_offer' ('{withdrawn}'): discontinued, never offered") == 1
    changes = json.loads(summary.read_text())["catalogue"]
    assert changes["discontinued"] == changes["withdrawn"] == [withdrawn]
