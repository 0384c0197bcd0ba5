"""The dashboard on a bank of its own: a schema that shares no column name with the synthetic bank
(ids included), no risk tolerance or risk level, other product columns, some of them empty, and no
display hints, so that every column the page shows is derived from the data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from finrec.data import schema as S  # noqa: E402
from finrec.data.io import write_dataset  # noqa: E402
from finrec.data.synthetic import GeneratorSettings, generate  # noqa: E402

SCRIPT = str(Path(__file__).resolve().parents[1] / "Recommendation_Dashboard.py")
C, P = "kd_", "pr_"  # every customers column starts with C, every products column with P
# Words a missing value turns into on the way through pandas or str(); none may reach the page.
EMPTY = re.compile(r"\b(nan|NaN|None|null|NaT)\b|<NA>")


def own_bank(directory: Path) -> tuple[Path, set[str]]:
    """A small synthetic bank with every entity column renamed and the risk columns dropped; its
    directory and the synthetic bank's column names."""
    tables = generate(GeneratorSettings(n_customers=600, seed=5))
    synthetic = {*tables[S.CUSTOMERS].columns, *tables[S.PRODUCTS].columns}
    syn = S.SYNTHETIC
    customers = tables["customers"].drop(columns=[syn.risk_tolerance]).add_prefix(C)
    products = tables["products"].drop(columns=[syn.risk_level, "digital_only"]).add_prefix(P)
    # Current accounts and insurance have no yield and no fixed term; insurance has no currency.
    no_yield = products[f"{P}{syn.category}"].isin(["current_account", "insurance"])
    products.loc[no_yield, f"{P}expected_yield"] = np.nan
    products.loc[no_yield | (products[f"{P}duration_months"] == 0), f"{P}duration_months"] = np.nan
    products[f"{P}currency"] = np.where(products[f"{P}{syn.category}"] == "insurance", None, "EUR")
    tables = {**tables, S.CUSTOMERS: customers, S.PRODUCTS: products}
    numeric = [f"{C}{c}" for c in syn.customer_numeric]
    schema = S.DatasetSchema.from_dict(
        {
            "customers": {
                "id": f"{C}{S.CUSTOMER_ID}",
                "numeric": numeric,
                "categorical": [f"{C}{c}" for c in syn.customer_categorical],
                "log_numeric": [f"{C}{c}" for c in syn.customer_log_numeric],
            },
            "products": {
                "id": f"{P}{S.PRODUCT_ID}",
                "category": f"{P}{syn.category}",
                "categorical": [f"{P}currency"],
                "numeric": [f"{P}{c}" for c in ("expected_yield", "duration_months", "monthly_fee", "min_income")],
            },
        }
    )
    assert not schema.display.to_dict()  # nothing to lean on: the page derives every column
    return write_dataset(tables, schema, directory, fmt="csv"), synthetic


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    from finrec.cli import main
    from finrec.config import Config, ModelConfig, TrainConfig

    root = tmp_path_factory.mktemp("own")
    data, synthetic = own_bank(root / "bank")
    header = {
        name: (data / f"{name}.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
        for name in (S.CUSTOMERS, S.PRODUCTS)
    }
    assert not synthetic & {*header[S.CUSTOMERS], *header[S.PRODUCTS]}
    config = Config(
        model=ModelConfig(customer_widths=(32,), product_widths=(16,), embedding_dim=8),
        training=TrainConfig(epochs=2, batch_size=128, patience=1),
    ).validate()
    (root / "config.yaml").write_text(yaml.safe_dump(config.to_dict()), encoding="utf-8")
    args = ["train", "--data", data, "--out", root / "model", "--config", root / "config.yaml"]
    assert main([str(a) for a in args]) == 0
    return {"data": data, "model": root / "model", "customers": header[S.CUSTOMERS]}


@pytest.fixture
def app(monkeypatch, bank):
    monkeypatch.setenv("FINREC_MODEL", str(bank["model"]))
    monkeypatch.setenv("FINREC_DATA", str(bank["data"]))
    at = AppTest.from_file(SCRIPT, default_timeout=120).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def texts(node) -> list[str]:
    """Every text a reader sees in ``node``: markdown, captions, metric labels and values."""
    out = [m.value for m in node.markdown] + [c.value for c in node.caption]
    return out + [t for m in node.metric for t in (m.label, m.value)]


def assert_no_empty_words(node) -> None:
    shown = [t for t in texts(node) if EMPTY.search(t)]
    assert not shown, shown


def recommendations(at: AppTest):
    return next(d.value for d in at.dataframe if "reason" in d.value.columns)


def test_the_page_shows_this_banks_columns(app, bank):
    recs, profile, what_if = app.tabs[0], app.tabs[1], app.tabs[2]
    label = S.DisplayHints().label

    # What-if: several sliders, each for a numeric customer column of this schema.
    sliders = [s for s in app.slider if str(s.key).startswith("wi_")]
    assert len(sliders) >= 3
    for slider in sliders:
        column = re.fullmatch(r"wi_(.+)_id:.+", slider.key).group(1)
        assert column.startswith(C) and slider.label == label(column)
    # Profile: several figures named after this schema's columns.
    figures = [m.label for m in profile.metric]
    assert len(figures) >= 3 and set(figures) <= {label(c) for c in bank["customers"]}, figures
    # Cards: this catalogue's columns, and nothing of a risk level it does not have.
    table = recommendations(app)
    assert {f"{P}{S.PRODUCT_ID}", f"{P}name", f"{P}product_type", f"{P}monthly_fee"} <= set(table.columns)
    assert "suitability" not in table and not any("Risk" in t or "tolerance" in t for t in texts(recs))
    assert any(label(f"{P}monthly_fee") in t for t in texts(recs))
    # The default config tries a tree blend: the labels then say score, not cosine.
    blended = (bank["model"] / "tree_blend.json").exists()
    best, each = ("Best match (blended score)", "Score") if blended else ("Best match (cosine)", "Similarity")
    assert [m.label for m in recs.metric] == ["Eligible products", "Preset", best] + [each] * 5
    for node in (recs, profile, what_if, app.sidebar):
        assert_no_empty_words(node)
    # A grid shows a missing cell as "None": every cell has a value ("—" where a product has none).
    assert not table.isna().any().any(), table.isna().sum()
    assert not table.astype(str).map(lambda v: v.strip() in {"nan", "None", "?", ""}).any().any()


def test_products_without_yield_or_term_show_no_empty_field(app):
    app.checkbox(key="exclude_held").uncheck()
    at = app.multiselect(key="categories").set_value(["insurance"]).run()
    assert not at.exception and not at.error
    table = recommendations(at)
    assert len(table) == 3 and set(table[f"{P}product_type"]) == {"insurance"}
    # No product of the three has a yield, a term or a currency: the columns are left out.
    assert not {f"{P}expected_yield", f"{P}duration_months", f"{P}currency", "terms"} & set(table.columns)
    cards = [m.value for m in at.tabs[0].markdown if "**" in m.value]
    label = S.DisplayHints().label
    assert len([c for c in cards if c.startswith("**#")]) == 3
    assert any(label(f"{P}monthly_fee") in c for c in cards)
    assert not any(label(f"{P}expected_yield") in c or label(f"{P}duration_months") in c for c in cards)
    assert not any(re.search(r"\*\*\s*\*\*|\?|:\s*$", c) for c in cards), cards  # no field without a value
    assert_no_empty_words(at.tabs[0])


def test_a_what_if_slider_moves_this_customer(app):
    slider = next(s for s in app.slider if str(s.key).startswith("wi_"))
    at = slider.set_value(slider.max).run()
    assert not at.exception and not at.error
    moves = next(d.value for d in at.dataframe if "move" in d.value.columns)
    assert len(moves) == 5
