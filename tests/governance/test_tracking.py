"""MLflow tracking (the optional extra): a run's parameters, metrics and model files in a local
file store; skipped where MLflow is not installed."""

from __future__ import annotations

import pytest

from finrec.cli import main
from finrec.governance.tracking import flat_params, log_training_run, tracking_uri

mlflow = pytest.importorskip("mlflow")


def test_a_run_lands_in_a_local_file_store(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text('{"format": 1}')
    (model / "product_embeddings.npy").write_bytes(b"\x93NUMPY")
    store = tmp_path / "mlruns"
    config = {"model": {"embedding_dim": 32, "towers": [64, 32]}, "training": {"epochs": 2, "seed": 0}}
    history = {"loss": [1.5, 1.2], "val_ndcg@5": [0.31, 0.35], "fit_seconds": [3.0]}
    run_id = log_training_run(str(store), model, config, history, metrics={"best_val_ndcg@5": 0.35})

    client = mlflow.tracking.MlflowClient(tracking_uri(str(store)))
    run = client.get_run(run_id)
    assert run.data.params["model.embedding_dim"] == "32" and run.data.params["training.epochs"] == "2"
    assert run.data.metrics["best_val_ndcg_at_5"] == pytest.approx(0.35)
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.5, 1.2]
    assert "fit_seconds" not in run.data.metrics
    assert {a.path for a in client.list_artifacts(run_id, "model")} == {
        "model/manifest.json",
        "model/product_embeddings.npy",
    }
    assert client.get_experiment(run.info.experiment_id).name == "finrec"


def test_a_run_registers_a_new_model_version_each_time(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text('{"format": 1}')
    store = tmp_path / "mlruns"
    first = log_training_run(str(store), model, {}, {"loss": [1.0]}, register="bank-recs")
    second = log_training_run(str(store), model, {}, {"loss": [0.9]}, register="bank-recs")
    client = mlflow.tracking.MlflowClient(tracking_uri(str(store)))
    versions = {str(v.version): v for v in client.search_model_versions("name='bank-recs'")}
    assert sorted(versions) == ["1", "2"]
    assert versions["1"].run_id == first and versions["2"].run_id == second
    assert versions["2"].source.endswith("/model")


def test_register_without_mlflow_is_refused_before_training(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "m"), "--mlflow-register", "x"])
    assert code == 2 and "--mlflow-register needs --mlflow" in capsys.readouterr().err


def test_flat_params():
    assert flat_params({"a": {"b": 1, "c": {"d": "x"}}, "e": None}) == {"a.b": "1", "a.c.d": "x", "e": "None"}


def test_train_refuses_a_store_inside_the_model_directory_before_training(tmp_path, capsys):
    out = tmp_path / "model"
    code = main(["train", "--data", str(tmp_path / "no-data"), "--out", str(out), "--mlflow", str(out / "mlruns")])
    assert code == 2 and "inside the model directory" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_train_logs_the_run(small_data_dir, tmp_path, capsys):
    store, out = tmp_path / "mlruns", tmp_path / "model"
    code = main(["train", "--data", str(small_data_dir), "--out", str(out), "--epochs", "1", "--mlflow", str(store)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    run_id = printed.split("logged MLflow run ")[1].split()[0]
    client = mlflow.tracking.MlflowClient(tracking_uri(str(store)))
    run = client.get_run(run_id)
    assert "model.embedding_dim" in run.data.params and "loss" in run.data.metrics
    assert "model/manifest.json" in {a.path for a in client.list_artifacts(run_id, "model")}


def test_a_store_that_cannot_be_written_is_a_finrec_error(tmp_path):
    from finrec.errors import FinrecError

    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text('{"format": 1}')
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the store should be")
    with pytest.raises(FinrecError, match="--mlflow"):
        log_training_run(str(blocked), model, {}, {"loss": [1.0]})
