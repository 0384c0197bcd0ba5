"""Logs carry ids, never customer feature values; protected columns can be kept out of the
model; the fairness report over protected groups."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time

import corpus
import numpy as np
import pytest

from finrec.cli import main
from finrec.model.towers import CUSTOMER_TOWER

DISTINCT = "123456.789"
DISTINCT_AGE = "77.125"


def _distinctive(directory):
    df = corpus.read(directory, "customers")
    df.loc[3, "income"] = DISTINCT
    df.loc[4, "age"] = DISTINCT_AGE
    corpus.write(directory, "customers", df)


@pytest.mark.slow
def test_cli_logs_never_show_feature_values(csv_data_dir, tmp_path, capsys, caplog):
    data = tmp_path / "data"
    shutil.copytree(csv_data_dir, data)
    _distinctive(data)
    caplog.set_level(logging.DEBUG)
    model = tmp_path / "model"
    texts = []
    for args in (
        ["-v", "train", "--data", data, "--out", model, "--epochs", 1],
        ["-v", "evaluate", "--model", model, "--data", data, "--fairness"],
        ["-v", "score", "--model", model, "--data", data, "--out", tmp_path / "top.csv"],
        ["-v", "recommend", "--model", model, "--data", data, "--customer-id", "C0000004"],
    ):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert code == 0, err
        texts += [out, err]
    texts.append(caplog.text)
    for text in texts:
        assert "123456" not in text and DISTINCT_AGE not in text


@pytest.mark.slow
def test_api_logs_never_show_feature_values(server):
    import httpx

    base = server["base"]
    bodies = [
        {"features": {"income": 123456.789, "age": 77.125, "region": "north"}},
        {"features": {"income": -123456.789}},
        {"features": {"income": "123456.789 euros"}},
        {"features": {"age": 123456.789}},
        {"features": {"income": 123456.789, "risk_tolerance": 9}},
        {"features": {"income": 123456.789, "holdings": ["NOPE"]}},
    ]
    for body in bodies:
        response = httpx.post(f"{base}/recommendations", json=body, timeout=20)
        assert response.status_code < 500
        if response.status_code >= 400:
            assert "123456" not in response.text, response.text
    time.sleep(0.3)
    log = server["log"].read_text(errors="replace")
    assert "123456" not in log and "77.125" not in log


# ------------------------------------------------------------------------------------ protected columns


@pytest.fixture(scope="module")
def blind(small_dataset, fast_config):
    """A model trained with ``exclude_protected=True``."""
    import dataclasses

    from finrec.training.train import fit

    config = dataclasses.replace(fast_config, model=dataclasses.replace(fast_config.model, exclude_protected=True))
    return fit(small_dataset, config.with_overrides(epochs=1), verbose=0)


@pytest.mark.slow
def test_protected_columns_are_not_model_inputs(blind, small_dataset):
    protected = set(small_dataset.schema.customers.protected)
    assert protected == {"gender", "age"}
    pipeline = blind.pipeline
    used = {s.column for s in pipeline.customer_numeric_} | set(pipeline.customer_vocab_)
    assert not used & protected
    assert len(pipeline.customer_numeric_) + len(pipeline.customer_vocab_) > 0
    # the model's inputs are exactly the pipeline's: no slot for a protected column
    names = {tensor.name for tensor in blind.model.get_layer(CUSTOMER_TOWER).inputs}
    assert not any(column in name for name in names for column in protected)


@pytest.mark.slow
def test_changing_gender_or_age_does_not_change_scores(blind, small_dataset):
    customers = small_dataset.customers.head(50).copy()
    base = blind.score(customers, small_dataset.holdings)
    changed = customers.copy()
    genders = sorted(customers["gender"].dropna().unique())
    changed["gender"] = [
        genders[(genders.index(g) + 1) % len(genders)] if g in genders else genders[0] for g in customers["gender"]
    ]
    changed["age"] = 95 - customers["age"]
    np.testing.assert_array_equal(base, blind.score(changed, small_dataset.holdings))


def test_training_hands_its_model_options_to_the_teacher(monkeypatch, small_dataset):
    # Found 2026-11-30: the distillation teacher always read the protected columns and the
    # holdings, so a model trained with exclude_protected learned them through its targets.
    from finrec.config import Config
    from finrec.training import train

    seen = {}

    class Stop(Exception):
        pass

    def spy(dataset, seed=0, **options):
        seen.update(options)
        raise Stop

    monkeypatch.setattr(train, "fit_teacher", spy)
    config = Config.from_dict({"model": {"exclude_protected": True, "use_holdings": False}})
    with pytest.raises(Stop):
        train.fit(small_dataset, config, verbose=0)
    assert seen["exclude_protected"] is True and seen["use_holdings"] is False


# ------------------------------------------------------------------------------------ fairness report


@pytest.fixture(scope="module")
def report(trained, small_dataset):
    from finrec.evaluate.fairness import fairness_report

    return fairness_report(trained, small_dataset, k=5)


def test_fairness_groups_partition_the_customers(report, small_dataset):
    """... every customer who did not object to profiling for marketing: those are not scored."""
    from finrec.data.compliance import without_objections

    kept, objected = without_objections(small_dataset)
    assert objected > 0 and report["objected"] == objected and report["customers"] == len(kept.customers)
    assert set(report["columns"]) == {"gender", "age"}
    n = len(kept.customers)
    for column, body in report["columns"].items():
        assert sum(g["customers"] for g in body["groups"].values()) == n, column
        assert all(g["evaluated"] <= g["customers"] for g in body["groups"].values())
    assert set(report["columns"]["age"]["groups"]) <= {"<30", "30-44", "45-59", "60+", "missing"}
    ages = kept.customers["age"]
    assert report["columns"]["age"]["groups"]["<30"]["customers"] == int((ages < 30).sum())
    assert report["columns"]["gender"]["groups"].keys() == set(kept.customers["gender"].astype(str))


def test_fairness_exposure_sums_to_one(report, trained):
    categories = set(trained.products["product_type"])
    for body in report["columns"].values():
        for group, values in body["groups"].items():
            assert set(values["exposure"]) == categories
            assert math.isclose(sum(values["exposure"].values()), 1.0, abs_tol=1e-9), group
            for name in ("ndcg@5", "recall@5", "mrr"):
                assert values[name] is None or 0 <= values[name] <= 1
        for category, ratio in body["max_ratio"].items():
            assert ratio["ratio"] is None or ratio["ratio"] >= 1.0
            if ratio["highest"] is not None and ratio["ratio"] is not None:
                shares = {g: v["exposure"][category] for g, v in body["groups"].items()}
                assert math.isclose(ratio["ratio"], shares[ratio["highest"]] / shares[ratio["lowest"]])


def test_fairness_metrics_match_evaluate_for_one_group(report, trained, small_dataset):
    # Over the groups, the metrics are the overall ones (of the customers who did not object).
    from finrec.data.compliance import without_objections
    from finrec.evaluate.report import evaluate

    overall = evaluate(trained, without_objections(small_dataset)[0], k=5)["model"]
    gender = report["columns"]["gender"]["groups"]
    weighted = sum(g["ndcg@5"] * g["evaluated"] for g in gender.values() if g["evaluated"]) / overall["customers"]
    assert math.isclose(weighted, overall["ndcg@5"], rel_tol=1e-5)
    assert sum(g["evaluated"] for g in gender.values()) == overall["customers"]


def test_fairness_without_protected_columns(trained, small_dataset):
    import dataclasses

    from finrec.evaluate.fairness import fairness_report, format_fairness

    schema = dataclasses.replace(
        small_dataset.schema, customers=dataclasses.replace(small_dataset.schema.customers, protected=())
    )
    result = fairness_report(trained, dataclasses.replace(small_dataset, schema=schema))
    assert result["columns"] == {}
    assert "no protected" in format_fairness(result)


@pytest.mark.slow
def test_cli_evaluate_fairness(model_dir, small_data_dir, tmp_path, capsys):
    out = tmp_path / "e.json"
    code = main(
        ["evaluate", "--model", str(model_dir), "--data", str(small_data_dir), "--fairness", "--json", str(out)]
    )
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "fairness by gender" in stdout and "fairness by age" in stdout and "max ratio" in stdout
    body = json.loads(out.read_text())
    assert set(body["fairness"]["columns"]) == {"gender", "age"}
    assert "results" in body


def test_fairness_groups_of_integer_codes_are_one_whatever_the_reading(coded_education):
    # A protected column of codes is one group per code, read as float beside a gap, as int or as text.
    from finrec.evaluate.fairness import MISSING, group_labels

    table = coded_education.dataset.schema.customers
    with_gap = group_labels(coded_education.dataset.customers["education"], "education", table)
    assert set(with_gap) == {"1", "2", "3", "4", MISSING}
    expected = group_labels(coded_education.as_float["education"], "education", table).tolist()
    for frame in (coded_education.as_int, coded_education.as_text):
        assert group_labels(frame["education"], "education", table).tolist() == expected
