"""The validation report: built from the model and the data, with and without outcomes, and
rendered in a real browser (Debian's Chromium through Playwright; never `playwright install`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from finrec.cli import main
from finrec.data import schema as S
from finrec.data.io import write_dataset
from finrec.errors import FinrecError

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SECTIONS = [
    "Intended use",
    "Data",
    "Method",
    "Performance on the customers",
    "Performance by segment",
    "Stability across seeds",
    "Calibration",
    "Fairness",
    "Global explanations",
    "Suitability audit",
    "Limitations and monitoring",
    "Versions",
]


@pytest.fixture(scope="module")
def reports(monitored_model_dir, small_tables, tmp_path_factory):
    """One report on data with outcomes and ground truth, one on a user's profiles only."""
    folder = tmp_path_factory.mktemp("reports")
    profiles = write_dataset(
        {name: small_tables[name] for name in (S.CUSTOMERS, S.PRODUCTS, S.HOLDINGS)},
        S.SYNTHETIC.schema(),
        folder / "profiles",
    )
    with_truth = write_dataset(small_tables, S.SYNTHETIC.schema(), folder / "bank")
    out = {}
    for name, data, suffix in (("bank", with_truth, ".html"), ("profiles", profiles, ".html"), ("md", profiles, ".md")):
        path = folder / f"report-{name}{suffix}"
        assert (
            main(
                [
                    "report",
                    "--model",
                    str(monitored_model_dir),
                    "--data",
                    str(data),
                    "--out",
                    str(path),
                    "--shap-customers",
                    "4",
                    "--no-lightgbm",
                ]
            )
            == 0
        )
        out[name] = path
    return out


def test_report_sections_are_filled(reports):
    html = reports["bank"].read_text()
    for title in SECTIONS:
        assert title in html
    assert "oracle" in html and "popularity" in html and "random" in html  # the baselines
    assert "95% bootstrap interval" in html and "age band" in html and "cold" in html
    assert "Zero unsuitable products were recommended." in html
    # against the ground truth, named for what it is: a choice share, not a period probability
    assert "mean true choice share" in html and "not the chance of adopting it in the period" in html
    # The bank has customers who adopted nothing: the calibration's adoption model is described.
    assert "P(adopts anything) x P(p | adopts something)" in html and "fitted on the training customers" in html
    # The probabilities campaigns plan with, against the adoptions: totals, reliability, each product.
    assert "against the adoptions this data observed" in html
    assert "adoptions predicted" in html and "bins of equal numbers of pairs" in html
    assert html.count("<img src='data:image/svg+xml;base64,") >= 5
    profiles = reports["profiles"].read_text()
    assert "no interactions (outcomes)" in profiles and "Zero unsuitable products were recommended." in profiles
    markdown = reports["md"].read_text()
    assert markdown.startswith("# Validation report") and "## 12. Versions" in markdown and "| --- |" not in markdown


def test_report_refuses_to_overwrite_an_input(monitored_model_dir, small_data_dir, capsys):
    assert (
        main(
            [
                "report",
                "--model",
                str(monitored_model_dir),
                "--data",
                str(small_data_dir),
                "--out",
                str(Path(monitored_model_dir) / "r.html"),
            ]
        )
        == 2
    )
    assert "inside the input" in capsys.readouterr().err
    assert main(["report", "--model", str(monitored_model_dir), "--data", str(small_data_dir), "--out", "r.pdf"]) == 2
    capsys.readouterr()
    given = ["report", "--model", str(monitored_model_dir), "--data", str(small_data_dir), "--out", "r.html"]
    assert main([*given, "--train-data", str(small_data_dir)]) == 2  # read by nothing without --seeds
    assert "--train-data goes with --seeds N" in capsys.readouterr().err


@pytest.mark.browser
def test_report_opens_in_chromium(reports, chromium):
    ARTIFACTS.mkdir(exist_ok=True)
    for name in ("bank", "profiles"):
        page = chromium.new_page(viewport={"width": 1200, "height": 1600})
        page.goto(reports[name].as_uri(), wait_until="load")
        headings = page.locator("h2").all_inner_texts()
        titles = [h.split(". ", 1)[1] for h in headings]
        assert len(titles) == len(SECTIONS) and all(t.startswith(e) for t, e in zip(titles, SECTIONS)), titles
        # every section has content, every image decoded
        assert page.evaluate("[...document.querySelectorAll('section')].every(s => s.children.length > 1)")
        images = page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
        assert images and all(images)
        page.screenshot(path=str(ARTIFACTS / f"report-{name}.png"), full_page=True)
        page.close()


@pytest.mark.slow
def test_report_retrains_other_seeds_itself(monitored_model_dir, small_data_dir, small_dataset):
    """`report --seeds N`: the stability section retrains the model's configuration with N other
    seeds on its training data and tables each one's nDCG beside the model's."""
    from finrec.artifacts import load_model_dir
    from finrec.governance import report as R
    from finrec.recommend.recommender import Recommender

    loaded = load_model_dir(monitored_model_dir)
    ctx = R.Context(
        monitored_model_dir,
        small_data_dir,
        loaded.manifest,
        loaded.trained,
        small_dataset,
        Recommender(loaded.trained, small_dataset),
        5,
        0,
    )
    R._prepare_outcomes(ctx)
    retrained = R.retrain_seeds(ctx, 2, train_data=small_data_dir, epochs=1)
    base = loaded.trained.config.training.seed
    assert [t.config.training.seed for _, t in retrained] == [base + 1, base + 2]
    section = R.stability_section(ctx, [], retrained)
    text = R.render_markdown({"title": "t", "subtitle": "", "sections": [section]})
    assert text.count("retrained here, seed") == 2 and "across 3 seeds" in text
    with pytest.raises(FinrecError, match="--train-data"):
        R.retrain_seeds(ctx, 1, train_data=small_data_dir / "missing")


def test_report_compares_with_a_tuned_lightgbm(trained, small_dataset, small_data_dir, tmp_path):
    """With the training data still where the manifest says, the performance section has a row for
    LightGBM tuned on that data (``TunedLightGBM``), beside the model and the oracle."""
    pytest.importorskip("lightgbm")
    from finrec.artifacts import save_model_dir
    from finrec.governance.monitor import reference_for

    model = save_model_dir(
        trained,
        tmp_path / "model",
        data_path=str(Path(small_data_dir).resolve()),
        monitoring=reference_for(trained, small_dataset),
    )
    out = tmp_path / "report.md"
    args = ["report", "--model", str(model), "--data", str(small_data_dir), "--out", str(out), "--shap-customers", "2"]
    assert main(args) == 0
    performance = out.read_text().split("## 4. Performance on the customers")[1].split("\n## ")[0]
    assert "| LightGBM (tuned) |" in performance and "| oracle |" in performance


def test_the_suitability_check_counts_investment_products_only_where_regimes_are_known():
    # Found when the default model changed (issue 12): a credit product whose risk level was
    # above a customer's tolerance reached a top 5, which the suitability rule allows (it binds
    # investment advice), and the report said "do not deploy".
    from finrec.governance.report import unsuitable_recommendations

    level = np.array([5.0, 5.0, 1.0])  # a credit product, an investment fund, a deposit
    regimes = np.array(["credit", "investment", "deposit"], dtype=object)
    tolerance = np.array([2.0, 6.0])
    index = np.array([[0, 2], [1, -1]])  # customer 0 got the card and the deposit; customer 1 the fund
    assert unsuitable_recommendations(index, level, regimes, tolerance) == 0
    assert unsuitable_recommendations(np.array([[1, 0]]), level, regimes, np.array([2.0])) == 1  # the fund
    assert unsuitable_recommendations(index, level, None, tolerance) == 1  # no regimes: every product counts


def test_the_calibration_section_says_where_the_adoption_model_was_fitted(trained):
    import copy
    from types import SimpleNamespace

    from finrec.governance.report import calibration_section

    def text(cross_fitted):
        calibration = copy.copy(trained.calibration)
        calibration.adoption_cross_fitted = cross_fitted
        ctx = SimpleNamespace(trained=SimpleNamespace(blend=None, calibration=calibration), has_outcomes=False)
        return " ".join(block[1] for block in calibration_section(ctx).blocks if block[0] == "p")

    assert "fitted on the training customers" in text(False) and "finrec calibrate" not in text(False)
    crossed = text(True)
    assert "fitted by `finrec calibrate` on calibration customers" in crossed
    assert "models that had not seen them" in crossed and "training customers" not in crossed


def test_the_probability_check_says_when_the_data_is_the_models_own(trained, small_dataset, small_data_dir):
    """On its training customers the model's scores are surer than on new ones: several products
    read off by more than chance there. The section says the check is not a fair one."""
    from types import SimpleNamespace

    from finrec.data.io import fingerprint
    from finrec.governance.report import Section, probability_part

    def text(data_path, recorded=None):
        manifest = {"data_path": data_path, "data_fingerprint": recorded}
        ctx = SimpleNamespace(
            trained=trained, dataset=small_dataset, manifest=manifest, seed=0, data_dir=small_data_dir
        )
        return " ".join(block[1] for block in probability_part(Section("7"), ctx).blocks if block[0] == "p")

    caveat = "adoptions are ones the model was trained on: the check below is not a fair one"
    assert caveat in text(str(small_data_dir)) and caveat not in text(None)
    assert "Adoptions predicted" in text(None)
    # the training directory moved away since: a copy of it is known by its fingerprint, as evaluate knows it
    gone = str(small_data_dir.parent / "moved-away")
    assert caveat in text(gone, fingerprint(small_data_dir)) and caveat not in text(gone, "0" * 64)


def test_the_probability_check_names_the_products_not_on_offer_it_left_out(trained, withdrawing_bank, withdrawn):
    from types import SimpleNamespace

    from finrec.data.io import load_dataset
    from finrec.governance.report import Section, probability_part

    data = withdrawing_bank()
    dataset = load_dataset(data)
    # withdrawn before the data's month: nobody in it adopted the product
    dataset = dataclasses.replace(
        dataset, interactions=dataset.interactions[dataset.interactions["product_id"] != withdrawn]
    )
    ctx = SimpleNamespace(trained=trained, dataset=dataset, manifest={}, seed=0, data_dir=data)
    section = probability_part(Section("7"), ctx)
    text = " ".join(block[1] for block in section.blocks if block[0] == "p")
    assert f"Left out: {withdrawn}, not on offer in this data's products table and adopted by no one in it" in text
    rows = [row for block in section.blocks if block[0] == "table" for row in block[2] if "product" in row]
    assert rows and withdrawn not in {row["product"] for row in rows}


def test_segments_of_customers_without_an_age_or_income_are_a_group_of_their_own(trained, small_dataset):
    from types import SimpleNamespace

    from finrec.governance.report import segment_groups, segments

    customers = small_dataset.customers.head(200).copy()
    customers.loc[customers.index[:7], "age"] = np.nan  # the report crashed sorting NaN beside text
    customers.loc[customers.index[3:12], "income"] = np.nan
    customers["risk_tolerance"] = customers["risk_tolerance"].astype("float64")
    customers.loc[customers.index[0], "risk_tolerance"] = np.nan
    ctx = SimpleNamespace(trained=trained, dataset=small_dataset)
    found = segments(ctx, customers)
    for name, missing in (("age band", 7), ("income band", 9), ("risk tolerance", 1)):
        labels = found[name]
        assert (labels == "missing").sum() == missing, name
        groups = segment_groups(labels)
        assert groups[-1] == "missing" and all(isinstance(g, str) for g in groups)
    # The quartiles are those of the incomes given: 191 customers in four groups of 47-48.
    counts = found["income band"].value_counts()
    assert sorted(counts.drop("missing")) == [47, 48, 48, 48]
    # Fewer than four incomes: no quartiles, no crash.
    customers.loc[customers.index[3:], "income"] = np.nan
    assert "income band" not in segments(ctx, customers) and "age band" in segments(ctx, customers)


def test_the_suitability_audit_reads_the_risk_levels_the_rules_read(trained, small_dataset):
    from types import SimpleNamespace

    from finrec.governance.report import suitability_section
    from finrec.recommend.recommender import Recommender

    # The bank has since lowered every product's risk level to 1: the rules offer them to
    # everybody, and the audit must judge by the same levels (it read the model's old ones).
    data = type(small_dataset)(**{**vars(small_dataset), "products": small_dataset.products.assign(risk_level=1)})
    ctx = SimpleNamespace(dataset=data, recommender=Recommender(trained, data), trained=trained, k=5, seed=0)
    texts = [block[1] for block in suitability_section(ctx).blocks if block[0] == "p"]
    assert texts[-1] == "Zero unsuitable products were recommended.", texts
    old = Recommender(trained)  # the model's own levels: investment products are held back
    assert (ctx.recommender.catalogue.risk == 1).all() and (old.catalogue.risk > 1).any()


def test_a_report_on_customers_who_all_objected_explains_and_measures_nothing(trained, small_dataset):
    from types import SimpleNamespace

    from finrec.governance.report import explanation_section, fairness_section
    from finrec.recommend.recommender import Recommender

    # Every customer objected to profiling: none is ranked, none is background. The report
    # failed on "no background customers: load the model with its customer data" (exit 2), and
    # its fairness section drew tables without a row.
    customers = small_dataset.customers.assign(marketing_consent=0)
    data = type(small_dataset)(**{**vars(small_dataset), "customers": customers})
    ctx = SimpleNamespace(dataset=data, recommender=Recommender(trained, data), trained=trained, k=5, seed=0)
    texts = [block[1] for block in explanation_section(ctx, 4).blocks]
    assert texts == [
        "None of the 4 customers sampled has an eligible product (a customer who objected to profiling for "
        "marketing is not profiled): nothing to explain."
    ]
    blocks = fairness_section(ctx).blocks
    assert not [b for b in blocks if b[0] == "table"], blocks
    texts = [block[1] for block in blocks]
    assert f"{len(customers):,} customer(s) who objected to profiling for marketing are left out." in texts
    assert "By gender: no customer of this data to measure." in texts


def test_the_fairness_section_shows_a_category_one_group_never_sees_as_inf(trained, small_dataset, monkeypatch):
    from types import SimpleNamespace

    import finrec.evaluate.fairness as fairness
    from finrec.governance.report import fairness_section

    groups = {
        "female": {"customers": 3, "evaluated": 0, "ndcg@5": None, "recall@5": None, "mrr": None,
                   "exposure": {"mortgage": 0.0, "pension": 0.5}},
        "male": {"customers": 4, "evaluated": 0, "ndcg@5": None, "recall@5": None, "mrr": None,
                 "exposure": {"mortgage": 0.25, "pension": 0.5}},
    }  # fmt: skip
    ratios = {
        "mortgage": {"ratio": None, "highest": "male", "lowest": "female"},
        "pension": {"ratio": 1.0, "highest": "female", "lowest": "female"},
    }
    report = {"k": 5, "customers": 7, "objected": 0, "columns": {"gender": {"groups": groups, "max_ratio": ratios}}}
    monkeypatch.setattr(fairness, "fairness_report", lambda *a, **k: report)
    ctx = SimpleNamespace(dataset=small_dataset, trained=trained, k=5, seed=0)
    exposure = [b for b in fairness_section(ctx).blocks if b[0] == "table"][-1][2]
    # Women are never shown a mortgage: the strongest steering, printed "-" ("not applicable")
    # where `finrec evaluate --fairness` prints inf.
    assert [row["max ratio"] for row in exposure] == ["inf (none to female)", "1.00"]


def test_the_explanations_hold_each_sampled_customers_own_holdings(trained, small_dataset, monkeypatch):
    from types import SimpleNamespace

    from finrec.explain import CustomerExplainer
    from finrec.governance.report import explanation_section
    from finrec.recommend.recommender import Recommender

    # Only the sampled customers' holdings are grouped now (every customer's, as Python lists,
    # took 70 s of a report on 2M customers): each explained customer must still hold exactly theirs.
    seen = {}
    original = CustomerExplainer.score_function

    def recording(self, product_id, holdings_ids=(), customer_id=None):
        seen[customer_id] = list(holdings_ids)
        return original(self, product_id, holdings_ids, customer_id)

    monkeypatch.setattr(CustomerExplainer, "score_function", recording)
    ctx = SimpleNamespace(
        dataset=small_dataset, recommender=Recommender(trained, small_dataset), trained=trained, k=5, seed=0
    )
    explanation_section(ctx, 6)
    holdings = small_dataset.holdings
    assert len(seen) >= 3 and any(seen.values())
    for customer, held in seen.items():
        assert held == holdings.loc[holdings[S.CUSTOMER_ID] == customer, S.PRODUCT_ID].tolist(), customer


def test_models_add_keeps_a_report_only_with_its_own_model(reports, monitored_model_dir, model_dir, tmp_path, capsys):
    # Found by a tester: `models add --report` kept any file as a version's signed-off report:
    # another model's, a text file, a parquet.
    from finrec.governance.registry import REPORT, Registry

    root = str(tmp_path / "reg")
    for report in (reports["bank"], reports["md"]):
        assert (
            main(["models", "add", "--root", root, "--model", str(monitored_model_dir), "--report", str(report)]) == 0
        )
    assert (Registry(root).root / "versions" / "v0001" / REPORT).read_bytes() == reports["bank"].read_bytes()
    capsys.readouterr()
    assert main(["models", "add", "--root", root, "--model", str(model_dir), "--report", str(reports["bank"])]) == 2
    assert "not of this model" in capsys.readouterr().err
    text = tmp_path / "notes.md"
    text.write_text("# my notes\n")
    assert main(["models", "add", "--root", root, "--model", str(model_dir), "--report", str(text)]) == 2
    assert "not a finrec report" in capsys.readouterr().err
    table = tmp_path / "scores.parquet"
    table.write_bytes(b"PAR1\x00\x01")
    assert main(["models", "add", "--root", root, "--model", str(model_dir), "--report", str(table)]) == 2
    assert ".html or .md" in capsys.readouterr().err
    assert Registry(root).version_ids() == ["v0001", "v0002"]


def test_stability_counts_each_model_and_seed_once(model_dir, monitored_model_dir, tmp_path):
    # Found by a tester: the model itself and a model of its seed were counted as other seeds,
    # shrinking the spread the section reports towards zero.
    import shutil
    from types import SimpleNamespace

    from finrec.artifacts import load_model_dir
    from finrec.governance.report import distinct_seed_models

    loaded = load_model_dir(model_dir)
    ctx = SimpleNamespace(model_dir=model_dir, manifest=loaded.manifest, trained=loaded.trained)
    copy = shutil.copytree(model_dir, tmp_path / "copy")
    models, notes = distinct_seed_models(ctx, [model_dir, copy, monitored_model_dir])
    assert [path for path, _ in models] == [model_dir]
    assert sum("the same model as" in n for n in notes) == 2 and sum("has the seed of" in n for n in notes) == 1
    # nor a seed that --seeds retrains here (a reviewer): the model of seed s+7, s retrained here
    seed = loaded.trained.config.training.seed
    other = SimpleNamespace(model_dir=tmp_path / "m7", manifest={"created": "x", "files": {}})
    other.trained = SimpleNamespace(config=loaded.trained.config.with_overrides(seed=seed + 7))
    models, notes = distinct_seed_models(
        other, [monitored_model_dir], [(f"retrained here, seed {seed}", loaded.trained)]
    )
    assert len(models) == 1 and notes == [
        f"{monitored_model_dir} has the seed of retrained here, seed {seed} ({seed}): not another seed, left out."
    ]


def test_markdown_shows_markup_in_the_data_as_text():
    # Found by a tester: a product named <b>Gold</b> was passed through as markup to Markdown
    # viewers (the HTML report escaped it; the Markdown one escaped only pipes).
    from finrec.governance import report as R

    section = R.Section("1. Products")
    section.table([{"product": "<b>Gold</b> | card", "share": "10%"}, {"product": "Gold` <img src=x>", "share": "1%"}])
    section.p("The top product is <script>x</script> & more; run `finrec report --seeds N`; ``<i>`.")
    text = R.render_markdown({"title": "t <i>", "subtitle": "", "sections": [section]})
    assert "<b>" not in text and "<script>" not in text and "<i>" not in text and "<img" not in text
    assert "&lt;b&gt;Gold&lt;/b&gt; \\| card" in text and "&amp; more" in text
    assert "`finrec report --seeds N`" in text
