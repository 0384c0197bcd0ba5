"""The Streamlit dashboard, driven in-process with ``streamlit.testing``."""

from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from finrec.data import schema as S  # noqa: E402

SCRIPT = str(Path(__file__).resolve().parents[1] / "Recommendation_Dashboard.py")


@pytest.fixture
def app(monkeypatch, model_dir, small_data_dir):
    monkeypatch.setenv("FINREC_MODEL", str(model_dir))
    monkeypatch.setenv("FINREC_DATA", str(small_data_dir))
    at = AppTest.from_file(SCRIPT, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def rerun(widget) -> AppTest:
    """Run the app after changing ``widget``; the page must show no exception and no error."""
    at = widget.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The first dataframe on the page with ``column`` (AppTest does not expose their keys)."""
    for element in at.dataframe:
        value = element.value
        if column in value.columns:
            return value
    raise AssertionError(f"no table with a {column!r} column")


def recommendations(at: AppTest) -> pd.DataFrame:
    return frame_with(at, "reason")


def risk(table: pd.DataFrame) -> pd.Series:
    return table[S.SYNTHETIC.risk_level]


def test_page_shows_five_recommendations(app):
    assert not app.error
    assert [t.label for t in app.tabs] == [
        "Recommendations",
        "Profile",
        "What-if",
        "Embeddings",
        "Explain (SHAP)",
        "Model",
        "Campaign",
        "Monitoring",
    ]
    table = recommendations(app)
    assert len(table) == 5 and table["rank"].tolist() == [1, 2, 3, 4, 5]
    assert table["suitability"].str.startswith("✅").all()  # suitable, affordable or eligible by regime
    assert any("Recommended in" in c.value for c in app.caption)
    assert len(app.get("plotly_chart")) >= 5  # percentiles, gauge, map, two curves


def test_the_audit_of_every_product_shows_no_none(app):
    audit = frame_with(app, "excluded_by")
    eligible = audit["detail"] == "eligible"
    assert eligible.any() and (audit.loc[eligible, "excluded_by"] == "—").all()
    assert not audit.isna().any().any()


def test_customer_and_filter_controls(app, small_dataset, model_dir, small_data_dir):
    first = app.selectbox(key="customer_id").value
    consenting = set(small_dataset.customers.customer_id[small_dataset.customers[S.SYNTHETIC.consent] == 1])
    other = next(o for o in app.selectbox(key="customer_id").options[3:] if str(o).split(" ")[0] in consenting)
    rerun(app.selectbox(key="customer_id").set_value(other))
    assert any(other in m.value for m in app.markdown) and other != first

    rerun(app.radio(key="preset").set_value("conservative"))
    assert (risk(recommendations(app)) <= 3).all()

    category = S.SYNTHETIC.category
    rerun(app.multiselect(key="categories").set_value(["savings_account", "term_deposit"]))
    assert set(recommendations(app)[category]) <= {"savings_account", "term_deposit"}

    # Both mortgages are open to this customer and nothing else is in the category: exactly two
    # recommendations and the warning that there are fewer than five.
    rerun(app.radio(key="preset").set_value("balanced"))
    rerun(app.selectbox(key="customer_id").set_value(_mortgage_customer(app, model_dir, small_data_dir)))
    rerun(app.multiselect(key="categories").set_value(["mortgage"]))
    table = recommendations(app)
    assert table[category].tolist() == ["mortgage", "mortgage"]
    assert sum("Fewer than 5" in w.value and "only 2 product(s)" in w.value for w in app.warning) == 1

    rerun(app.multiselect(key="categories").set_value([]))
    rerun(app.radio(key="preset").set_value("balanced"))
    held = set(small_dataset.holdings.product_id[small_dataset.holdings.customer_id == other])
    rerun(app.checkbox(key="exclude_held").uncheck())
    assert len(recommendations(app)) == 5
    rerun(app.checkbox(key="exclude_held").check())
    assert not set(recommendations(app)[S.PRODUCT_ID]) & held


def _mortgage_customer(app: AppTest, model_dir, small_data_dir) -> str:
    """A listed customer whom both mortgages of the catalogue accept (terms, affordability,
    consent) and who holds neither, as the recommender's own audit says."""
    from finrec.recommend.recommender import Recommender

    rec = Recommender.load(model_dir, small_data_dir)
    mortgages = {p for p, c in zip(rec.pipeline.product_ids_, rec.catalogue.category) if c == "mortgage"}
    assert len(mortgages) == 2
    for cid in app.selectbox(key="customer_id").options:
        audit = rec.audit(str(cid).split(" ")[0], filters={"include_categories": ["mortgage"]})
        if audit.loc[audit.excluded_by.isna(), S.PRODUCT_ID].isin(mortgages).sum() == 2:
            return cid
    raise AssertionError("no listed customer is open to both mortgages")


def test_what_if_slider(app, small_dataset):
    cid = app.selectbox(key="customer_id").value
    before = recommendations(app)
    assert frame_with(app, "move")["move"].eq("=").all()
    # The synthetic bank's schema.yaml names its what-if columns.
    sliders = [s for s in app.slider if str(s.key).startswith("wi_")]
    assert [s.label for s in sliders] == ["Income", "Risk tolerance", "Digital engagement", "Age"]
    rerun(app.slider(key=f"wi_risk_tolerance_id:{cid}").set_value(1))
    after = frame_with(app, "move")
    # A tolerance of 1 leaves no investment product above risk 1 (credit and deposits have their own rules).
    products = small_dataset.products
    investment = {label for label, regime in S.SYNTHETIC.regime_labels if regime == "investment"}
    risky = set(products.name[(products[S.SYNTHETIC.risk_level] > 1) & products[S.SYNTHETIC.category].isin(investment)])
    assert risky and not risky & set(after["product"])
    assert (recommendations(app)["product_id"] == before["product_id"]).all()  # the original is unchanged
    income = app.slider(key=f"wi_income_id:{cid}")
    rerun(income.set_value(income.min))
    engagement = app.slider(key=f"wi_digital_engagement_id:{cid}")
    rerun(engagement.set_value(engagement.max))


def _upload(app: AppTest, data: bytes, name: str = "customers.csv") -> AppTest:
    app.radio(key="source").set_value("Upload CSV").run()
    app.file_uploader(key="upload").set_value((name, data, "text/csv"))
    app.run()
    assert not app.exception, app.exception
    return app


def test_upload_good_csv(app, small_dataset):
    frame = small_dataset.customers.iloc[:3]
    _upload(app, frame.to_csv(index=False).encode())
    assert not app.error
    assert app.selectbox(key="upload_customer").options == frame.customer_id.tolist()
    assert len(recommendations(app)) == 5


@pytest.mark.parametrize(
    "change, column, row",
    [
        (lambda f: f.drop(columns=[S.INCOME]), S.INCOME, None),
        (lambda f: f.assign(**{S.CREDIT_SCORE: ["high", 700]}), S.CREDIT_SCORE, 1),
        (lambda f: f.assign(**{S.INCOME: [1000.0, -1.0]}), S.INCOME, 2),
        (lambda f: f.assign(**{S.AGE: [12, 40]}), S.AGE, 1),
    ],
)
def test_upload_bad_csv_names_the_column(app, small_dataset, change, column, row):
    bad = change(small_dataset.customers.iloc[:2].copy())
    _upload(app, bad.to_csv(index=False).encode())
    assert len(app.error) == 1
    message = app.error[0].value
    assert column in message and (row is None or f"row {row}" in message)
    assert "Traceback" not in message


def test_upload_too_big(app):
    _upload(app, b"a,b\n" + b"1,2\n" * 300_000, "big.csv")
    assert "1 MB" in app.error[0].value


def test_shap_explanation(app):
    rerun(app.button(key="shap_button").click())
    assert any("difference" in s.value and "< 1e-4" in s.value for s in app.success)
    assert any(c.value.startswith("Explained in") for c in app.caption)
    assert len(app.get("plotly_chart")) >= 6


def test_shap_chart_shows_an_unseen_category_as_the_customer_has_it(app, small_dataset):
    import json

    profile = small_dataset.customers.iloc[:1].assign(channel="martian")
    at = _upload(app, profile.to_csv(index=False).encode())
    at = rerun(at.button(key="shap_button").click())
    chart = next(c for c in at.get("plotly_chart") if "Why " in c.proto.spec)
    labels = json.loads(chart.proto.spec)["data"][0]["y"]
    assert "channel = martian (not seen in training: read as missing)" in labels


def test_model_tab_evaluates_on_demand(app, small_data_dir):
    assert app.button(key="evaluate_button")
    shown = [c.value for c in app.caption if "Evaluate on" in c.value]
    # Where the server keeps its files is not the page's business: the data's last two parts only.
    assert len(shown) == 1 and f"`{Path(*Path(small_data_dir).parts[-2:])}`" in shown[0]
    assert str(Path(small_data_dir).parent) not in shown[0]
    rerun(app.button(key="evaluate_button").click())
    table = frame_with(app, "customers")
    assert {"model", "popularity", "random"} <= set(table.index)
    assert pd.api.types.is_integer_dtype(table["customers"]) and (table["customers"] > 0).all()


def test_start_panel_without_a_model(monkeypatch, tmp_path):
    monkeypatch.setenv("FINREC_MODEL", str(tmp_path / "nothing-here"))
    monkeypatch.delenv("FINREC_DATA", raising=False)
    at = AppTest.from_file(SCRIPT, default_timeout=60).run()
    assert not at.exception
    assert at.button(key="build").label == "Build the demo bank and train the default model"
    assert not at.tabs
    from finrec.data.synthetic import GeneratorSettings

    bank = GeneratorSettings()
    assert any(f"({bank.n_customers:,} customers, {bank.n_products} products)" in m.value for m in at.markdown)


def test_damaged_model_is_an_error_not_a_traceback(monkeypatch, tmp_path, model_dir):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    (broken / "history.json").write_text("{}")
    monkeypatch.setenv("FINREC_MODEL", str(broken))
    at = AppTest.from_file(SCRIPT, default_timeout=60).run()
    assert not at.exception
    assert "history.json" in at.error[0].value


@pytest.mark.parametrize("content", ["[" * 100_000 + "]" * 100_000, "[1, 2]", '{"results": 3}', "{not json"])
def test_a_damaged_evaluation_file_is_reported_not_raised(monkeypatch, tmp_path, model_dir, small_data_dir, content):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    (tmp_path / "model-evaluation.json").write_text(content, encoding="utf-8")
    monkeypatch.setenv("FINREC_MODEL", str(model))
    monkeypatch.setenv("FINREC_DATA", str(small_data_dir))
    at = AppTest.from_file(SCRIPT, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    assert any("model-evaluation.json: cannot read it" in w.value for w in at.warning), [w.value for w in at.warning]


def test_campaign_tab_plans_against_greedy(app):
    at = rerun(app.number_input(key="campaign_contacts").set_value(2))
    at = rerun(next(b for b in at.button if b.label == "Plan the campaign").click())
    labels = {m.label: m for m in at.metric}
    assert "Expected value (optimal plan)" in labels
    assert not labels["Expected value (optimal plan)"].delta.startswith("-")  # never below greedy
    prices = frame_with(at, "price")
    assert (prices["price"] >= 0).all() and len(prices) >= 1  # 1% of customers per product binds somewhere
    segments = frame_with(at, "total")
    assert segments.loc["total", "total"] <= 2 * 1500


def test_campaign_plan_is_not_shown_for_other_filters(app):
    """A plan made before the sidebar's filters changed offered what they now exclude (a
    tester: credit cards and funds listed after 'Only these categories: mortgage')."""
    plan = next(b for b in app.button if b.label == "Plan the campaign")
    at = rerun(plan.click())
    assert len(frame_with(at, "total").index) > 3
    at = rerun(at.multiselect(key="categories").set_value(["mortgage"]))
    assert not any("total" in d.value.columns for d in at.dataframe)
    assert any("filters or the model changed" in i.value for i in at.info)
    at = rerun(next(b for b in at.button if b.label == "Plan the campaign").click())
    offered = set(frame_with(at, "total").index) - {"total"}
    assert offered and offered <= {"MORT_FIXED25", "MORT_VARIABLE"}


def test_a_model_whose_data_has_moved_still_shows_every_tab(monkeypatch, tmp_path, model_dir, small_dataset):
    """Without its customer data, an uploaded profile's Explain tab raised "no background
    customers" to the page: the Model, Campaign and Monitoring tabs after it stayed blank, and
    the sidebar did not say the data had moved (a tester)."""
    import json
    import shutil

    moved = tmp_path / "model"
    shutil.copytree(model_dir, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["data_path"] = str(tmp_path / "moved-away" / "train")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("FINREC_MODEL", str(moved))
    monkeypatch.delenv("FINREC_DATA", raising=False)
    at = AppTest.from_file(SCRIPT, default_timeout=120).run()
    assert not at.exception, at.exception
    assert any("`moved-away/train` is no longer there" in w.value for w in at.sidebar.warning)
    at = _upload(at, small_dataset.customers.iloc[:3].to_csv(index=False).encode())
    assert not at.error, [e.value for e in at.error]
    assert len(recommendations(at)) == 5
    assert any("No customers to explain against" in i.value for i in at.info)
    assert any("No customer data is loaded to plan a campaign for" in i.value for i in at.info)  # the Campaign tab
    assert any("No evaluation file and no data to evaluate on" in i.value for i in at.info)  # the Model tab


def test_campaign_of_a_few_customers_offers_something_and_names_missing_segments(
    monkeypatch, tmp_path, model_dir, small_tables
):
    """Under 50 customers, 1% of them rounded every default capacity to 0: the default plan
    offered nothing. A customer without a segment value made a column "nan" (a tester)."""
    from finrec.data.io import write_dataset

    customers = small_tables[S.CUSTOMERS].iloc[:40].copy()
    customers.loc[customers.index[:30], "employment"] = None
    ids = set(customers.customer_id)
    tables = {
        name: customers
        if name == S.CUSTOMERS
        else table[table.customer_id.isin(ids)]
        if "customer_id" in table
        else table
        for name, table in small_tables.items()
        if name != "ground_truth"
    }
    monkeypatch.setenv("FINREC_MODEL", str(model_dir))
    monkeypatch.setenv("FINREC_DATA", str(write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / "few")))
    at = AppTest.from_file(SCRIPT, default_timeout=120).run()
    assert not at.exception, at.exception
    at = rerun(next(b for b in at.button if b.label == "Plan the campaign").click())
    segments = frame_with(at, "total")
    assert segments.loc["total", "total"] > 0
    assert "missing" in segments.columns and not {"nan", "None"} & set(segments.columns)
    assert any(m.value == "**Offers per product and Employment**" for m in at.markdown)


def test_products_the_data_no_longer_lists_are_said_on_the_page(monkeypatch, model_dir, updated_bank):
    """The page counted them in "1 of 25" and the campaign listed capacities for them; only the
    server's log said they are never offered (a tester)."""
    from finrec.data.io import find_table, read_table, write_table

    data = updated_bank(lambda products: products[products.product_id != "FUND_CRYPTO"])
    for table in (S.HOLDINGS, S.INTERACTIONS, "ground_truth"):  # the bank's links to it are gone with it
        path = find_table(data, table)
        links = read_table(path, (S.CUSTOMER_ID, S.PRODUCT_ID))
        write_table(links[links.product_id != "FUND_CRYPTO"], path)
    monkeypatch.setenv("FINREC_MODEL", str(model_dir))
    monkeypatch.setenv("FINREC_DATA", str(data))
    at = AppTest.from_file(SCRIPT, default_timeout=120).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    notes = [i.value for i in at.info if "discontinued" in i.value]
    assert len(notes) == 1 and "'FUND_CRYPTO'" in notes[0] and "never offered" in notes[0]
    assert str(data.parent) not in notes[0]  # where the server keeps its files is not shown


def test_customer_who_objected_gets_a_notice_and_no_recommendation(app, small_dataset):
    customers = small_dataset.customers
    objected = set(customers.customer_id[customers[S.SYNTHETIC.consent] == 0])
    option = next(o for o in app.selectbox(key="customer_id").options if str(o).split(" ")[0] in objected)
    at = rerun(app.selectbox(key="customer_id").set_value(option))
    assert any("objected to profiling" in w.value for w in at.warning)
    assert [t.label for t in at.tabs] == ["Model"]
    assert not any("suitability" in d.value.columns for d in at.dataframe)
