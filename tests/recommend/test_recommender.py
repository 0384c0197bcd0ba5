import numpy as np
import pandas as pd
import pytest

from finrec.errors import DataError, FinrecError, UnknownCustomerError
from finrec.recommend import filters as F
from finrec.recommend.recommender import Recommender


@pytest.fixture(scope="module")
def rec(trained, small_dataset):
    return Recommender(trained, small_dataset)


def test_recommend_known_customer(rec, small_dataset):
    cid = small_dataset.customer_ids[0]
    result = rec.recommend(cid, k=5)
    assert 1 <= len(result.items) <= 5
    assert [i.rank for i in result.items] == list(range(1, len(result.items) + 1))
    scores = [i.score for i in result.items]
    assert scores == sorted(scores, reverse=True)
    held = set(small_dataset.holdings.product_id[small_dataset.holdings.customer_id == cid])
    tolerance = small_dataset.customers.risk_tolerance.iloc[0]
    for item in result.items:
        assert item.product_id not in held
        # Suitability binds investment products; credit is assessed by affordability instead.
        if item.product["product_type"] in ("investment_fund", "pension"):
            assert item.product["risk_level"] <= tolerance
            assert "within tolerance" in item.reason
        if item.product["product_type"] in ("credit_card", "personal_loan", "mortgage"):
            assert "debt service to income after this credit" in item.reason


def test_scores_match_keras(rec, trained, small_dataset):
    cid = small_dataset.customer_ids[3]
    audit = rec.audit(cid, {"suitability": False, "exclude_held": False, "eligibility": False})
    keras_scores = trained.score(small_dataset.customers.iloc[[3]], small_dataset.holdings)[0]
    by_id = dict(zip(trained.pipeline.product_ids_, keras_scores))
    np.testing.assert_allclose(audit.score, [by_id[p] for p in audit.product_id], atol=1e-5)


def test_fewer_than_k_never_filled_with_unsuitable(rec, small_dataset):
    customers = small_dataset.customers
    cid = customers.customer_id[customers.risk_tolerance == 1].iloc[0]
    result = rec.recommend(cid, k=20, filters={"include_categories": ["investment_fund"]})
    assert result.items == [] or all(i.product["risk_level"] <= 1 for i in result.items)
    assert result.message and "eligible" in result.message
    assert len(result.items) == result.eligible < 20


def test_audit_names_the_rule(rec, small_dataset):
    cid = small_dataset.customer_ids[0]
    audit = rec.audit(cid, "conservative")
    # Every rule but consent (this customer did not object: nothing would be ranked at all).
    assert set(audit.excluded_by.dropna()) <= set(F.RULES) - {"consent"}
    held = set(small_dataset.holdings.product_id[small_dataset.holdings.customer_id == cid])
    assert set(audit.product_id[audit.excluded_by == "held"]) == held


def test_new_customer_from_features(rec, small_dataset):
    row = small_dataset.customers.iloc[5].to_dict()
    cid = row.pop("customer_id")
    held = list(small_dataset.holdings.product_id[small_dataset.holdings.customer_id == cid])
    known = rec.recommend(cid, k=5)
    new = rec.recommend({**row, "holdings": held}, k=5)
    assert [i.product_id for i in new.items] == [i.product_id for i in known.items]
    np.testing.assert_allclose([i.score for i in new.items], [i.score for i in known.items], atol=1e-5)


def test_new_customer_with_missing_and_unseen_values(rec):
    result = rec.recommend({"age": 30, "income": 40000, "region": "Atlantis", "risk_tolerance": 3}, k=3)
    assert len(result.items) == 3


def test_nan_in_a_features_dict_is_a_missing_value_as_in_a_pandas_row(rec, small_dataset):
    """A notebook's ``frame.iloc[i].to_dict()`` carries a missing number as NaN: it was refused
    ("must be a finite number"; a compliance column's "must be true/false") while a missing
    category's NaN was read as missing. Each now gives what None gives; infinity is still refused."""
    row = small_dataset.customers.iloc[5].to_dict()
    row.pop("customer_id")
    columns = ["income", "credit_score", "risk_tolerance", "knowledge_level", "monthly_debt_service"]
    columns += ["marketing_consent", "region"]
    for column in columns:
        assert column in row, column
        expected = rec.audit({**row, column: None})
        for missing in (np.nan, np.float32("nan"), pd.NA):
            pd.testing.assert_frame_equal(rec.audit({**row, column: missing}), expected, obj=f"{column}={missing!r}")
    with pytest.raises(DataError, match="features.income must be a finite number"):
        rec.recommend({**row, "income": float("inf")})


@pytest.mark.parametrize(
    "features, fragment",
    [
        ({"income": "lots"}, "features.income"),
        ({"risk_tolerance": 9}, "features.risk_tolerance"),
        ({"holdings": ["NOPE"]}, "unknown product"),
    ],
)
def test_bad_features(rec, features, fragment):
    with pytest.raises(DataError, match=fragment):
        rec.recommend(features)


def test_unknown_customer_and_bad_k(rec):
    with pytest.raises(UnknownCustomerError):
        rec.recommend("nobody")
    with pytest.raises(FinrecError, match="k must be"):
        rec.recommend(rec.known_customers.customer_id.iloc[0], k=0)


def test_a_requested_id_is_stripped_as_the_files_ids_are(rec):
    # The files' ids are stripped text; an id pasted from a padded export (' C0000008 ') was unknown.
    cid = rec.known_customers.customer_id.iloc[0]
    padded = rec.recommend(f" {cid}  ")
    assert padded.customer_id == cid
    assert [i.product_id for i in padded.items] == [i.product_id for i in rec.recommend(cid).items]
    assert rec.customer_profile(f"{cid} ")["customer_id"] == cid


def test_load_from_model_dir(model_dir, small_data_dir):
    rec = Recommender.load(model_dir, small_data_dir)
    cid = rec.known_customers.customer_id.iloc[0]
    assert rec.recommend(cid).items
    profile = rec.customer_profile(cid)
    assert profile["attributes"]["customer_id"] == cid


def test_loading_some_customers_recommends_each_as_loading_all_does(history_rec, tmp_path, capsys):
    """``finrec recommend`` of one customer prepared every customer of the data (4.6 GB for a
    2M-customer bank). ``load(customers=...)`` prepares those alone, and each is answered as
    under a whole load: on a model with history features too, whose features are built against
    the whole table's latest month (a customer whose own last snapshot is older, or who has none,
    included). An id the data lacks is refused by the load, as the whole load's recommend would."""
    from finrec import cli
    from finrec.artifacts import save_model_dir
    from finrec.data import schema as S
    from finrec.data.io import dataset_tables, write_dataset

    data = history_rec.dataset
    model = save_model_dir(history_rec.trained, tmp_path / "model")
    # Without the adoptions: the made-up past is dated after them, which a data directory refuses.
    tables = {**dataset_tables(data), S.INTERACTIONS: data.interactions.iloc[:0]}
    directory = write_dataset(tables, data.schema, tmp_path / "data")
    history = data.holdings_history
    latest = history[S.AS_OF].max()
    in_latest = set(history.customer_id[history[S.AS_OF] == latest].astype(str))
    older = sorted(set(history.customer_id.astype(str)) - in_latest)
    never = sorted(set(data.customers.customer_id.astype(str)) - set(history.customer_id.astype(str)))
    assert older and never  # the cases the reference month matters for
    picked = [older[0], never[0], sorted(in_latest)[0]]
    whole = Recommender.load(model, directory)
    some = Recommender.load(model, directory, customers=[f" {c}" for c in picked])
    assert len(some.known_customers) == 3 < len(whole.known_customers)
    for cid in picked:
        # Alone, its own months are all there is; without Keras (as the command line loads it),
        # the numpy tower from the model file's weights.
        for some in (
            Recommender.load(model, directory, customers=[cid]),
            Recommender.load(model, directory, customers=[cid], keras_model=False),
        ):
            for filters in (None, "conservative"):
                want, got = whole.recommend(cid, k=5, filters=filters), some.recommend(cid, k=5, filters=filters)
                assert [i.product_id for i in got.items] == [i.product_id for i in want.items]
                np.testing.assert_allclose([i.score for i in got.items], [i.score for i in want.items], rtol=1e-5)
                assert [i.reason for i in got.items] == [i.reason for i in want.items]
            assert some.known_history(cid)[1] == whole.known_history(cid)[1]
    with pytest.raises(UnknownCustomerError, match="unknown customer_id 'nobody'"):
        Recommender.load(model, directory, customers=[picked[0], "nobody"])
    # What is on record binds a features request naming any known customer, loaded or not (a
    # tester: with some customers loaded, an objector's features were recommended to, and a
    # holder was offered what they hold); the answer names that customer, as the record log does.
    consent = S.SYNTHETIC.consent
    customers = data.customers
    one = Recommender.load(model, directory, customers=picked[2], keras_model=False)
    objector = str(customers.customer_id[customers[consent] == 0].iloc[0])
    holder = str(data.holdings.customer_id[~data.holdings.customer_id.isin([objector, picked[2]])].iloc[0])
    for cid in (objector, holder):
        row = customers[customers.customer_id == cid].iloc[0].drop(consent).to_dict()  # no consent given
        features = {**row, "customer_id": f" {cid} "}
        got, want = one.recommend(features, k=25), whole.recommend(features, k=25)
        assert got.customer_id == want.customer_id == cid
        assert got.objected == want.objected == (cid == objector)
        assert [i.product_id for i in got.items] == [i.product_id for i in want.items]
    held = set(data.holdings.product_id[data.holdings.customer_id == holder])
    assert held and not held & {i.product_id for i in got.items}
    with pytest.raises(UnknownCustomerError, match=f"customer_id '{holder}' is not among the 1 customer"):
        one.recommend(holder)
    # One id on its own, text or an integer (ids are compared as text): not a bare TypeError.
    assert len(Recommender.load(model, directory, customers=picked[0]).known_customers) == 1
    with pytest.raises(UnknownCustomerError, match="unknown customer_id '7'"):
        Recommender.load(model, directory, customers=7)
    # The command line loads that customer alone, and says so for an unknown one (exit 2).
    assert cli.main(["recommend", "--model", str(model), "--data", str(directory), "--customer-id", picked[0]]) == 0
    assert f"for customer {picked[0]}" in capsys.readouterr().out
    assert cli.main(["recommend", "--model", str(model), "--data", str(directory), "--customer-id", "nobody"]) == 2
    assert "unknown customer_id 'nobody'" in capsys.readouterr().err


def test_display_hints_follow_the_data_and_never_invalidate_the_model(model_dir, small_data_dir, tmp_path):
    import shutil

    import yaml

    from finrec.data import schema as S

    data = tmp_path / "bank"
    shutil.copytree(small_data_dir, data)
    raw = yaml.safe_load((data / "schema.yaml").read_text())
    raw["display"] = {"what_if": ["savings"], "product_details": ["expected_yield"]}
    (data / "schema.yaml").write_text(yaml.safe_dump(raw))
    rec = Recommender.load(model_dir, data)
    assert rec.display.what_if == ("savings",) and rec.detail_columns == ("expected_yield",)
    item = rec.recommend(rec.known_customers.customer_id.iloc[0]).items[0]
    # The name and the detail shown, plus what the filters read (risk, category, eligibility terms).
    assert set(item.product) == {
        "name",
        "expected_yield",
        "risk_level",
        "product_type",
        S.MIN_INCOME,
        S.MIN_CREDIT_SCORE,
        S.MIN_AGE,
        S.MAX_AGE,
    }
    # Served without data, the model shows the hints it was trained with.
    assert Recommender.load(model_dir).display == S.SYNTHETIC.display


def test_product_columns_are_derived_without_hints(small_dataset):
    from dataclasses import replace

    from finrec.data import schema as S
    from finrec.recommend.recommender import product_columns

    bare = replace(small_dataset.schema, display=S.DisplayHints())
    name, details = product_columns(small_dataset.products, bare)
    p = bare.products
    assert name == "name"  # the one text column outside the features that tells products apart
    assert details == (p.category, p.risk, *p.numeric, *p.categorical)
    unnamed = small_dataset.products.drop(columns=["name"])
    assert product_columns(unnamed, bare)[0] is None


def test_load_reuses_a_cached_dataset_while_its_files_are_unchanged(model_dir, small_data_dir, tmp_path):
    """serve --root loads version after version on one data directory: loaded once while unchanged."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_data_dir, data)
    cache: dict = {}
    first = Recommender.load(model_dir, data, datasets=cache)
    second = Recommender.load(model_dir, data, datasets=cache)
    assert second.dataset is first.dataset and len(cache) == 1
    (data / "customers.parquet").write_bytes((data / "customers.parquet").read_bytes())  # touched: reloaded
    third = Recommender.load(model_dir, data, datasets=cache)
    assert third.dataset is not first.dataset and len(cache) == 1
    assert [i.product_id for i in third.recommend(third.known_customers.customer_id.iloc[0]).items] == [
        i.product_id for i in first.recommend(first.known_customers.customer_id.iloc[0]).items
    ]


def test_a_service_filters_with_its_datas_products_table(model_dir, updated_bank, raise_the_bars, small_dataset):
    """``Recommender.load`` with data (``finrec serve --data``, ``recommend``): the rules and the
    details shown read the data's catalogue; ``with_catalogue`` drops a discontinued product
    from a copy, the caller's recommender unchanged."""
    rec = Recommender.load(model_dir, updated_bank(raise_the_bars))
    customers = rec.known_customers
    cid = customers.customer_id[customers.risk_tolerance == 4].iloc[0]
    audit = rec.audit(cid, {"exclude_held": False}).set_index("product_id")
    assert audit.loc["FUND_BOND", "detail"] == "risk level 7 is above the customer's risk tolerance 4"
    assert audit.loc["MORT_FIXED25", "excluded_by"] in ("income", "affordability")
    assert rec.products[rec.pipeline.product_ids_.index("FUND_BOND")]["risk_level"] == 7

    without = small_dataset.products[small_dataset.products.product_id != "INS_TRAVEL"]
    fewer = rec.with_catalogue(without, "bank/products.csv")
    assert fewer.audit(cid).set_index("product_id").loc["INS_TRAVEL", "excluded_by"] == "discontinued"
    assert "INS_TRAVEL" not in [i.product_id for i in fewer.recommend(cid, k=25).items]
    assert fewer.catalogue_changes.discontinued == ("INS_TRAVEL",) and rec.catalogue.discontinued is None


def _moved_model(model_dir, tmp_path):
    """A copy of the model whose manifest records training data that is no longer there."""
    import json
    import shutil

    moved = tmp_path / "model"
    shutil.copytree(model_dir, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["data_path"] = str(tmp_path / "moved-away" / "train")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    return moved


def test_a_data_directory_that_is_not_there_is_named_not_taken_for_no_customers(model_dir, small_dataset, tmp_path):
    """``recommend --data`` with a typo, or a model whose training data was moved, answered a
    known customer "unknown customer_id ... (no customer table is loaded)" (a tester)."""
    known = small_dataset.customers.customer_id.iloc[0]
    with pytest.raises(DataError, match="nowhere: no such data directory"):
        Recommender.load(model_dir, tmp_path / "nowhere")
    rec = Recommender.load(_moved_model(model_dir, tmp_path))
    assert len(rec.known_customers) == 0 and rec.missing_data == str(tmp_path / "moved-away" / "train")
    with pytest.raises(UnknownCustomerError, match="moved-away/train is no longer there; give the data directory"):
        rec.recommend(known)


def test_what_if_changes_only_what_it_is_told(rec, small_dataset, history_rec):
    """The dashboard's what-if sent a changed customer as a dict of features: a new customer,
    without their history. On a model with history features the top 5 moved for 22 of 38
    customers with nothing changed but the income (a tester)."""

    from finrec.data import schema as S

    cid = small_dataset.customer_ids[3]
    profile = rec.customer_profile(cid)
    same, changed = rec.what_if(cid, {}), rec.what_if(cid, {S.INCOME: 50_000.0}, k=4, filters="conservative")
    assert [(i.product_id, i.score) for i in same.items] == [(i.product_id, i.score) for i in rec.recommend(cid).items]
    as_dict = rec.recommend(
        {**profile["attributes"], S.INCOME: 50_000.0, S.HOLDINGS: profile["holdings"]}, 4, "conservative"
    )
    assert [i.product_id for i in changed.items] == [i.product_id for i in as_dict.items]
    np.testing.assert_allclose([i.score for i in changed.items], [i.score for i in as_dict.items], atol=1e-6)
    for change in ({"channel": "martian"}, {"channel": "branch"}, {S.INCOME: None}):
        as_dict = rec.recommend({**profile["attributes"], **change, S.HOLDINGS: profile["holdings"]})
        np.testing.assert_allclose(
            [i.score for i in rec.what_if(cid, change).items], [i.score for i in as_dict.items], atol=1e-6
        )
    with pytest.raises(DataError, match="'postcode' is no customer feature"):
        rec.what_if(cid, {"postcode": "1234"})
    with pytest.raises(DataError, match="features.risk_tolerance must be an integer from 1 to 7"):
        rec.what_if(cid, {"risk_tolerance": 9})
    with pytest.raises(UnknownCustomerError):
        rec.what_if("nobody", {S.INCOME: 1.0})

    with_history = history_rec
    moved = 0
    for cid in small_dataset.customer_ids[:30]:
        before = with_history.recommend(cid)
        if before.objected:
            continue
        unchanged = with_history.what_if(
            cid, {S.INCOME: float(with_history.customer_profile(cid)["attributes"][S.INCOME])}
        )
        assert [(i.product_id, round(i.score, 6)) for i in unchanged.items] == [
            (i.product_id, round(i.score, 6)) for i in before.items
        ]
        profile = with_history.customer_profile(cid)
        moved += [
            i.product_id
            for i in with_history.recommend({**profile["attributes"], S.HOLDINGS: profile["holdings"]}).items
        ] != [i.product_id for i in before.items]
    assert moved  # a dict of features has no history: what the what-if used to show


def test_known_history_is_each_customers_rows_of_the_table(history_rec, small_dataset):
    """Grouped once instead of a scan per call: the same rows, in the table's order, as the
    plain filter; an id the history lacks gets its columns and no row."""
    from finrec.data import schema as S

    table = history_rec.dataset.holdings_history
    latest = table[S.AS_OF].max()
    for cid in [*small_dataset.customer_ids[:25], "nobody"]:
        rows, reference = history_rec.known_history(f" {cid} ")
        expected = table[table[S.CUSTOMER_ID].astype(str) == cid].reset_index(drop=True)
        pd.testing.assert_frame_equal(rows, expected)
        assert reference == latest.year * 12 + latest.month - 1
    assert len(history_rec.known_history("nobody")[0]) == 0


# ------------------------------------------------------------------------------------ from a notebook
def test_a_notebooks_customers_frame_is_checked_as_a_customers_table(rec, small_dataset):
    """``Recommender.context`` takes a user's own frame (README: ``rec.context(customers,
    holdings)``). It was not validated: without the consent column the customers who objected
    to profiling were ranked, and ``"52,000"`` in a numeric column was imputed as missing."""
    customers = small_dataset.customers.head(300)
    objected = (customers["marketing_consent"] == 0).to_numpy()
    assert objected.any()
    with pytest.raises(DataError, match="'marketing_consent'"):
        rec.context(customers.drop(columns="marketing_consent"), small_dataset.holdings)
    written = customers.assign(income=customers["income"].map(lambda v: f"{v:,.0f}"))
    with pytest.raises(DataError, match="column 'income' must be numeric.*thousands separators"):
        rec.context(written, small_dataset.holdings)
    with pytest.raises(DataError, match="column 'age' must be numeric; it holds dates"):
        rec.context(customers.assign(age=pd.Timestamp("1980-01-01")), small_dataset.holdings)
    # The same customers as a notebook types them score as the validated table does.
    base = rec.scores(rec.context(customers, small_dataset.holdings))
    typed = customers.astype(
        {
            "region": "category",
            "channel": "string[pyarrow]",
            "customer_id": "string[pyarrow]",
            "risk_tolerance": "Int64",
        }
    )
    typed.index = typed.index[::-1]  # an index of another order: rows are taken by position
    np.testing.assert_array_equal(rec.scores(rec.context(typed, small_dataset.holdings)), base)
    assert rec.context(customers.iloc[:0], small_dataset.holdings).held.shape == (0, rec.pipeline.n_products)


def test_holdings_and_held_of_the_wrong_form_are_named(rec, small_dataset):
    customers = small_dataset.customers.head(3)
    with pytest.raises(DataError, match="holdings: missing column.*'customer_id'"):
        rec.context(customers, pd.DataFrame({"cust": ["C1"], "product": ["P"]}))  # was a bare KeyError
    with pytest.raises(DataError, match=r"held must have one row per customer.*got shape \(2, 3\)"):
        rec.context(customers, held=np.zeros((2, 3), bool))  # was an IndexError deep in the trees
    ones = rec.context(customers, held=np.ones((3, rec.pipeline.n_products), int))  # was a UFuncTypeError in rank
    assert ones.held.dtype == bool and ones.held.all()
    assert rec.rank(ones, 3).index.shape == (3, 0)


@pytest.mark.parametrize("k", [0, -1, 2.0, True, None, "3"])
def test_rank_refuses_a_k_that_is_no_positive_integer(rec, small_dataset, k):
    context = rec.context(small_dataset.customers.head(5), small_dataset.holdings)
    with pytest.raises(FinrecError, match="k must be a positive integer"):
        rec.rank(context, k)  # -1 was "negative dimensions", 2.0 and None bare TypeErrors


def test_a_customer_that_is_neither_an_id_nor_features_is_named(rec, small_dataset):
    row = small_dataset.customers.iloc[5]
    with pytest.raises(DataError, match=r"got Series \(a row: pass row.to_dict\(\) or its id\)") as caught:
        rec.recommend(row)  # was "unknown customer_id" with the printed row (customer data) in the message
    assert len(str(caught.value)) < 200
    for customer in (None, [row["customer_id"]], 1.5):
        with pytest.raises(DataError, match="a customer is a customer_id"):
            rec.recommend(customer)
    with pytest.raises(DataError, match="changes must be a mapping"):
        rec.what_if(row["customer_id"], None)  # was a bare TypeError
    holdings = ["CUR_BASIC", "SAV_BASIC"]
    as_list = rec.recommend({"age": 40, "holdings": holdings}, k=5)
    for same in (np.array(holdings), pd.Series(holdings)):  # a Series was "truth value ... ambiguous"
        assert rec.recommend({"age": 40, "holdings": same}, k=5).items == as_list.items


def test_monitor_says_when_the_population_has_no_history_the_model_reads(history_rec, small_data_dir, tmp_path, capsys):
    # A tester's population without its holdings_history: the recommended mix read "alert" and
    # nothing said why (score, evaluate, recommend and plan say it). Here, not in
    # tests/governance/test_monitor.py: this file fits history_rec already (make test runs one
    # worker per file), and that one would fit it a second time.
    import json

    from finrec.artifacts import save_model_dir
    from finrec.cli import main
    from finrec.governance import monitor as M

    model = save_model_dir(
        history_rec.trained,
        tmp_path / "model",
        monitoring=M.reference_for(history_rec.trained, history_rec.dataset),
    )
    assert (
        main(["monitor", "--model", str(model), "--data", str(small_data_dir), "--json", str(tmp_path / "d.json")]) == 0
    )
    assert "has none: every customer is scored as one without a past" in capsys.readouterr().err
    assert json.loads((tmp_path / "d.json").read_text())["notes"]


def test_compare_and_the_report_say_when_the_data_has_no_history_the_model_reads(
    history_rec, small_dataset, small_data_dir, tmp_path, capsys
):
    # A README tester: compare and the report scored a history model on data without the table
    # as if every customer were new, without a word (score, evaluate, recommend, plan and monitor
    # say it).
    from finrec.artifacts import save_model_dir
    from finrec.cli import main
    from finrec.governance.report import Context, data_section

    model = save_model_dir(history_rec.trained, tmp_path / "model")
    argv = ["compare", "--champion", str(model), "--challenger", str(model), "--data", str(small_data_dir)]
    assert main([*argv, "--resamples", "20"]) == 0
    err = capsys.readouterr().err
    assert "finrec compare (champion): note: the model reads a holdings_history table" in err
    assert "finrec compare (challenger): note:" in err

    def text(dataset):
        ctx = Context(tmp_path, small_data_dir, {}, history_rec.trained, dataset, None, 5, 0)
        return str(data_section(ctx, None).__dict__)

    assert "this data has none: every figure below scores each customer as one without a past" in text(small_dataset)
    assert "without a past" not in text(history_rec.dataset)


def test_a_withdrawn_product_is_never_recommended_and_its_reason_is_discontinued(
    model_dir, withdrawing_bank, withdrawn
):
    """The data's products table marks a product not on offer (``products.on_offer``) while
    customers still hold it: ``serve --data``, ``recommend`` and the dashboard exclude it as a
    discontinued one, and say so once."""
    rec = Recommender.load(model_dir, withdrawing_bank())
    changes = rec.catalogue_changes
    assert changes.discontinued == changes.withdrawn == (withdrawn,) and changes.unknown == ()
    assert [n.split(": ", 1)[1] for n in changes.notes()] == [
        f"1 product(s) are marked not on offer in column 'on_offer' ('{withdrawn}'): discontinued, never offered"
    ]
    # The same data with the product on offer: the model does recommend it, to many.
    offered = rec.with_catalogue(rec.dataset.products, "products.parquet")
    assert offered.catalogue_changes.notes() == [] and offered.catalogue.discontinued is None
    context = rec.context(rec.known_customers, rec.dataset.holdings, adoption=False, validated=True)
    j = rec.pipeline.product_ids_.index(withdrawn)
    assert (offered.rank(context, k=5).index == j).sum() > 50
    assert not (rec.rank(context, k=5).index == j).any()
    assert not (rec.rank(context, k=25, filters=F.UNFILTERED).index == j).any()

    holders = set(rec.dataset.holdings.customer_id[rec.dataset.holdings.product_id == withdrawn])
    cid = next(c for c in rec.known_customers.customer_id if c not in holders)
    audit = rec.audit(cid, F.UNFILTERED).set_index("product_id")
    assert audit.loc[withdrawn, "excluded_by"] == "discontinued"
    assert audit.loc[withdrawn, "detail"] == "marked not on offer in the data's products table (discontinued)"
    assert withdrawn not in [i.product_id for i in rec.recommend(cid, k=25, filters=F.UNFILTERED).items]
