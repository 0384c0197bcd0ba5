"""The CLI end to end, as a user runs it: generate, split, train, evaluate, score."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from finrec.cli import main


def finrec(*args, cwd=None):
    # As a user runs it: none of the variables that quiet TensorFlow (the Makefile sets one).
    quiet = ("TF_CPP_MIN_LOG_LEVEL", "ABSL_MIN_LOG_LEVEL", "GRPC_VERBOSITY", "PYTHONWARNINGS")
    env = {key: value for key, value in os.environ.items() if key not in quiet}
    done = subprocess.run(
        [sys.executable, "-m", "finrec.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )
    if done.returncode == 0:  # only finrec's own output: no TensorFlow start-up lines or warnings
        assert done.stderr == "", done.stderr[-2000:]
    return done


@pytest.mark.slow
def test_generate_train_evaluate_score(tmp_path):
    bank, split, model = tmp_path / "bank", tmp_path / "split", tmp_path / "model"
    done = finrec("generate", "--out", bank, "--customers", 1200, "--seed", 3)
    assert done.returncode == 0, done.stderr
    assert finrec("split", "--data", bank, "--out", split).returncode == 0
    done = finrec("train", "--data", split / "train", "--out", model, "--epochs", 1, "--seed", 1)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("epoch 1/1, loss "), done.stdout
    assert (model / "model.keras").exists() and (model / "manifest.json").exists()

    done = finrec("evaluate", "--model", model, "--data", split / "test", "--k", 5, "--json", tmp_path / "e.json")
    assert done.returncode == 0, done.stderr
    for name in ("model", "popularity", "random", "oracle", "ndcg@5", "mrr"):
        assert name in done.stdout
    results = json.loads((tmp_path / "e.json").read_text())["results"]
    assert results["model"]["customers"] > 100
    assert results["oracle"]["ndcg@5"] > results["random"]["ndcg@5"]

    out = tmp_path / "top.csv"
    done = finrec("score", "--model", model, "--data", split / "test", "--out", out, "--k", 3)
    assert done.returncode == 0, done.stderr
    top = pd.read_csv(out, dtype={"customer_id": str})
    assert list(top.columns) == ["customer_id", "rank", "product_id", "score"]
    assert top.groupby("customer_id")["rank"].max().max() == 3
    holdings = pd.read_parquet(split / "test" / "holdings.parquet")
    pairs = set(zip(holdings.customer_id, holdings.product_id))
    assert not any((c, p) in pairs for c, p in zip(top.customer_id, top.product_id))
    first = top[top.customer_id == top.customer_id.iloc[0]]
    assert first["score"].is_monotonic_decreasing


def test_input_errors_exit_2_without_traceback(tmp_path, capsys):
    code = main(["evaluate", "--model", str(tmp_path / "none"), "--data", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "schema.yaml" in err


def test_missing_model_dir(tmp_path, small_data_dir, capsys):
    code = main(["evaluate", "--model", str(tmp_path / "none"), "--data", str(small_data_dir)])
    assert code == 2 and "no model directory" in capsys.readouterr().err


def test_bad_config_file(tmp_path, small_data_dir, capsys):
    (tmp_path / "c.yaml").write_text("training: {epochs: -1}\n")
    code = main(
        ["train", "--data", str(small_data_dir), "--out", str(tmp_path / "m"), "--config", str(tmp_path / "c.yaml")]
    )
    assert code == 2 and "training.epochs" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
