"""PSI against hand-computed values, the binning, and drift flagged on exactly the shifted features."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from finrec.cli import EXIT_DRIFT, main
from finrec.data import schema as S
from finrec.data.io import write_dataset
from finrec.data.synthetic import GeneratorSettings, generate
from finrec.governance import monitor as M


def naive_psi(expected, actual, floor=M.PSI_FLOOR):
    e_total, a_total = sum(expected), sum(actual)
    total = 0.0
    for e, a in zip(expected, actual):
        e, a = max(e / e_total, floor), max(a / a_total, floor)
        total += (a - e) * math.log(a / e)
    return total


def test_psi_matches_hand_computed_values():
    # (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5) = 0.1732868 + 0.1013663
    assert M.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.2746531, abs=1e-7)
    # counts are normalised: the same distributions
    assert M.psi([10, 10], [5, 15]) == pytest.approx(0.2746531, abs=1e-7)
    # an empty reference bin is floored at 1e-4 (no renormalisation):
    # (0.5 - 1) ln(0.5/1) + (0.5 - 0.0001) ln(0.5/0.0001) = 0.3465736 + 4.2577451
    assert M.psi([1.0, 0.0], [0.5, 0.5]) == pytest.approx(4.2577451 + 0.3465736, abs=1e-6)
    assert M.psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0


def test_psi_equals_a_naive_loop_and_is_symmetric():
    rng = np.random.default_rng(0)
    for _ in range(20):
        e, a = rng.random(8), rng.random(8)
        e[rng.integers(8)] = 0.0
        assert M.psi(e, a) == pytest.approx(naive_psi(e, a), rel=1e-12)
        assert M.psi(e, a) == pytest.approx(M.psi(a, e), rel=1e-12)
    with pytest.raises(ValueError):
        M.psi([0.5, 0.5], [1.0])


def test_status_thresholds():
    assert [M.status_of(v) for v in (0.0, 0.0999, 0.10, 0.2499, 0.25, 3.0, float("nan"))] == [
        "ok",
        "ok",
        "warn",
        "warn",
        "alert",
        "alert",
        "alert",
    ]


def test_quantile_bins_with_a_missing_bin():
    values = np.arange(1, 11, dtype=float)
    edges = M.quantile_edges(values, n_bins=5)
    assert edges == [2.0, 4.0, 6.0, 8.0]  # observed values at the 20/40/60/80% positions
    counts = M.numeric_counts(np.append(values, [np.nan, np.nan]), edges)
    assert counts.tolist() == [2, 2, 2, 2, 2, 2]  # five bins, then the missing one
    # few distinct values: tied quantiles merge into fewer bins; a value on an edge goes left
    assert M.quantile_edges(np.array([1, 1, 1, 2, 2, 3] * 10), n_bins=10) == [1.0, 2.0, 3.0]
    assert M.numeric_counts(np.array([1.0, 2.0, 2.5, 9.0]), [1.0, 2.0]).tolist() == [1, 1, 2, 0]


def test_categories_unseen_and_missing():
    counts, unseen = M.categorical_counts(pd.Series(["a", "b", "b", "z", None]), ["a", "b"])
    assert counts.tolist() == [1, 2, 1, 1] and list(unseen) == ["z"]
    reference = M.categorical_reference(pd.Series(["a", "b", "b", "a"]))
    result = M.compare(reference, pd.Series(["a", "b", "c", "c"]))
    assert result["unseen_share"] == 0.5 and result["unseen_examples"] == ["c"]
    # shares: reference (0.5, 0.5, 0, 0), now (0.25, 0.25, 0.5, 0)
    assert result["psi"] == pytest.approx(naive_psi([0.5, 0.5, 0, 0], [0.25, 0.25, 0.5, 0]), abs=1e-6)
    assert result["status"] == "alert"


def test_integer_categories_are_the_same_as_float_int_or_text(coded_education):
    # The reference of a float column with gaps (4.0) sees the same rows read as int or text as
    # no drift at all, not as every value unseen.
    reference = M.categorical_reference(coded_education.dataset.customers["education"])
    assert "4" in reference["categories"]
    expected = M.compare(reference, coded_education.as_float["education"])
    for frame in (coded_education.as_int, coded_education.as_text):
        result = M.compare(reference, frame["education"])
        assert result["unseen_share"] == 0 and result == expected


def test_a_reference_saved_with_float_text_categories_still_finds_them(
    monitored_model_dir, trained, small_dataset, coded_education
):
    from finrec.artifacts import read_monitoring
    from finrec.recommend.recommender import Recommender

    reference = read_monitoring(monitored_model_dir)
    entry = M.categorical_reference(coded_education.dataset.customers["education"])
    saved = {**entry, "categories": [f"{float(c)}" for c in entry["categories"]]}  # before the rule
    customers = coded_education.as_int.iloc[:200]
    assert reference.pop("category_rule") == 1  # references saved before the rule have no stamp
    report = M.monitor({**reference, "features": {"education": saved}}, Recommender(trained, small_dataset), customers)
    assert report["features"]["education"] == M.compare(entry, customers["education"])
    assert report["features"]["education"]["unseen_share"] == 0
    # Stamped, it is read as written: its "1.0" was text then, and "1" is another value.
    stamped = {**reference, "category_rule": 1, "features": {"education": saved}}
    report = M.monitor(stamped, Recommender(trained, small_dataset), customers)
    assert report["features"]["education"]["unseen_share"] > 0.5


def test_many_categories_fold_into_other():
    values = pd.Series([f"id{i}" for i in range(50)])
    reference = M.categorical_reference(values, max_categories=10)
    assert len(reference["categories"]) == 11 and reference["categories"][-1] == M.OTHER
    assert M.compare(reference, values)["psi"] == pytest.approx(0.0)


# ------------------------------------------------------------------------------------ end to end

SHIFTED = {"income", "region", "credit_utilization"}


@pytest.fixture(scope="module")
def population():
    """A fresh draw of the same bank (a new seed): the same population, other customers."""
    return generate(GeneratorSettings(n_customers=4000, seed=99))


def shifted(tables):
    customers = tables["customers"].copy()
    customers["income"] = customers["income"] * 1.6  # rescaled (say, another currency)
    top = customers["region"].value_counts().index[0]
    customers["region"] = customers["region"].replace({top: top.upper() + "_RENAMED"})  # a renamed category
    blank = np.random.default_rng(1).random(len(customers)) < 0.4
    customers["credit_utilization"] = customers["credit_utilization"].mask(blank)  # values blanked
    return {**tables, "customers": customers}


def test_monitor_flags_exactly_the_shifted_features(monitored_model_dir, tmp_path, population):
    data = write_dataset(shifted(population), S.SYNTHETIC.schema(), tmp_path / "shifted")
    report = M.monitor_model(monitored_model_dir, data)
    statuses = {name: entry["status"] for name, entry in report["features"].items()}
    assert {name for name, status in statuses.items() if status == "alert"} == SHIFTED, report["features"]
    assert {name for name, status in statuses.items() if status != "alert"} == set(statuses) - SHIFTED
    assert all(statuses[name] == "ok" for name in set(statuses) - SHIFTED), report["features"]
    region = report["features"]["region"]
    assert region["unseen_share"] > 0.1 and region["unseen_examples"][0].endswith("_RENAMED")
    assert report["features"]["credit_utilization"]["missing_share"] == pytest.approx(0.4, abs=0.03)
    assert report["summary"]["status"] == "alert"


def test_the_same_population_is_stable(monitored_model_dir, tmp_path, population):
    data = write_dataset(population, S.SYNTHETIC.schema(), tmp_path / "fresh")
    report = M.monitor_model(monitored_model_dir, data)
    assert "notes" not in report  # every customer column is one the schema names
    worst = max(entry["psi"] for entry in report["features"].values())
    assert all(entry["status"] == "ok" for entry in report["features"].values()), report["features"]
    assert worst < 0.05  # sampling noise, well under the 0.10 threshold
    assert report["scores"]["status"] == "ok", report["scores"]
    assert report["recommendations"]["status"] == "ok", report["recommendations"]
    assert set(report["scores"]) >= {"psi", "status"} and set(report["recommendations"]) >= {"psi", "status"}


def test_a_column_the_schema_does_not_name_is_noted_not_passed_over(monitored_model_dir, tmp_path, population):
    # Found by a tester: a column the bank added to the population was ignored without a word.
    customers = population["customers"].assign(open_banking_score=1.0)
    data = write_dataset({**population, "customers": customers}, S.SYNTHETIC.schema(), tmp_path / "wider")
    notes = M.monitor_model(monitored_model_dir, data).get("notes", [])
    assert any("'open_banking_score'" in note and "not monitored" in note for note in notes), notes


def test_monitor_never_reads_the_ground_truth(monitored_model_dir, tmp_path, population):
    # The synthetic oracle's customers x products rows are no input of monitoring: on a 2M bank
    # reading and checking them took 8.7 GB and half of the command's time. An unreadable file
    # shows that they are not read at all.
    data = write_dataset(population, S.SYNTHETIC.schema(), tmp_path / "fresh")
    (data / "ground_truth.parquet").write_bytes(b"PAR1 not a parquet file PAR1")
    report = M.monitor_model(monitored_model_dir, data)
    assert report["customers"] == len(population["customers"])


def test_monitor_command(monitored_model_dir, model_dir, tmp_path, population, capsys):
    data = write_dataset(shifted(population), S.SYNTHETIC.schema(), tmp_path / "shifted")
    out = tmp_path / "drift.json"
    assert main(["monitor", "--model", str(monitored_model_dir), "--data", str(data), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["features"]["income"]["status"] == "alert"
    assert "income" in capsys.readouterr().out
    assert (
        main(["monitor", "--model", str(monitored_model_dir), "--data", str(data), "--fail-on", "alert"]) == EXIT_DRIFT
    )
    # a model saved without a reference: one clear line, exit 2
    assert main(["monitor", "--model", str(model_dir), "--data", str(data)]) == 2
    assert "predates monitoring" in capsys.readouterr().err


def test_sampling_noise_matches_simulated_psi():
    """Two samples of one population: the mean PSI is close to (B - 1)(1/n_ref + 1/n_cur)."""
    rng = np.random.default_rng(5)
    values = []
    for _ in range(300):
        reference = M.numeric_reference(rng.lognormal(10, 1, 2000))
        values.append(M.compare(reference, rng.lognormal(10, 1, 500))["psi"])
    assert M.sampling_noise(10, 2000, 500) == pytest.approx(9 * (1 / 2000 + 1 / 500))
    assert np.mean(values) == pytest.approx(M.sampling_noise(10, 2000, 500), rel=0.15)


def test_the_reference_is_checked_like_every_model_file(monitored_model_dir, tmp_path):
    import shutil

    from finrec.artifacts import MONITORING_FILE, load_model_dir, read_monitoring
    from finrec.errors import ArtifactError

    assert read_monitoring(monitored_model_dir)["version"] == M.REFERENCE_VERSION
    load_model_dir(monitored_model_dir)  # an optional file the manifest lists is accepted
    altered = shutil.copytree(monitored_model_dir, tmp_path / "altered")
    (altered / MONITORING_FILE).write_text('{"version": 1}')
    with pytest.raises(ArtifactError, match="monitoring.json is damaged or was altered"):
        read_monitoring(altered)


def test_the_recommended_mix_is_that_of_the_datas_products_table(
    monitored_model_dir, tmp_path, population, monkeypatch
):
    # A product the data's table no longer lists is never recommended, in monitoring as in score
    # (monitor filtered with the model's saved copy of the catalogue: a reviewer).
    seen = []
    real = M.monitor

    def spy(reference, recommender, *args, **kwargs):
        seen.append(recommender.catalogue)
        return real(reference, recommender, *args, **kwargs)

    monkeypatch.setattr(M, "monitor", spy)
    products = population["products"]
    gone = str(products["product_id"].iloc[0])
    tables = {
        name: (df[df["product_id"].astype(str) != gone] if df is not None and "product_id" in df else df)
        for name, df in population.items()
    }
    data = write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / "fewer")
    M.monitor_model(monitored_model_dir, data)
    catalogue = seen[0]
    assert catalogue.discontinued is not None and catalogue.discontinued.sum() == 1


@pytest.fixture
def bank_with_a_value(small_data_dir, tmp_path):
    """The small bank with the products' value column named after the model was trained (``value:
    monthly_fee``, campaign data for ``finrec plan``, no model input)."""
    import shutil

    import yaml

    data = shutil.copytree(small_data_dir, tmp_path / "valued")
    schema = yaml.safe_load((data / "schema.yaml").read_text())
    schema["products"]["value"] = "monthly_fee"
    (data / "schema.yaml").write_text(yaml.safe_dump(schema))
    return data


@pytest.mark.parametrize(
    "command",
    [
        ["monitor"],
        ["compare", "--resamples", "20"],
        ["report", "--no-lightgbm", "--shap-customers", "2"],
    ],
)
def test_a_value_column_named_after_training_is_no_schema_change(
    command, monitored_model_dir, bank_with_a_value, tmp_path, capsys
):
    # A tester's monthly cycle: the bank named its margin column in month 3 for `finrec plan`;
    # score, plan and evaluate took the data, monitor, compare and report refused it ("its schema
    # differs ...: products.value").
    model = ["--model", str(monitored_model_dir)]
    if command[0] == "compare":
        model = ["--champion", str(monitored_model_dir), "--challenger", str(monitored_model_dir)]
    if command[0] == "report":
        model += ["--out", str(tmp_path / "r.md")]
    code = main([command[0], *model, "--data", str(bank_with_a_value), *command[1:]])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "schema differs" not in err and "different schema" not in err


@pytest.mark.parametrize(
    "command",
    [
        ["monitor"],
        ["compare", "--resamples", "20"],
        ["report", "--no-lightgbm", "--shap-customers", "2"],
        ["score"],
    ],
)
def test_an_on_offer_column_named_after_training_is_no_schema_change(
    command, monitored_model_dir, withdrawing_bank, withdrawn, tmp_path, capsys
):
    # A tester's monthly cycle: the bank withdrew a product its customers still hold. Dropped from
    # the products table, every command that loads the dataset refused the holdings of it;
    # marked in a products.on_offer column named after training, each takes the data.
    model = ["--model", str(monitored_model_dir)]
    if command[0] == "compare":
        model = ["--champion", str(monitored_model_dir), "--challenger", str(monitored_model_dir)]
    if command[0] in ("report", "score"):
        model += ["--out", str(tmp_path / ("r.md" if command[0] == "report" else "s.csv"))]
    code = main([command[0], *model, "--data", str(withdrawing_bank()), *command[1:]])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "schema differs" not in err and "different schema" not in err and "unknown key" not in err
    if command[0] == "score":
        assert not pd.read_csv(tmp_path / "s.csv").product_id.eq(withdrawn).any()
