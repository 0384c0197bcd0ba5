"""Model directories survive a killed training run; same data and seed give the same metrics;
artifacts never go through pickle."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finrec.artifacts import load_model_dir

SRC = Path(__file__).resolve().parents[2] / "src" / "finrec"


def _train(data_dir, out: Path, epochs: int) -> subprocess.Popen:
    # Patience = epochs: early stopping must not end a run the test means to kill mid-fit
    # (training got fast enough to finish within the test's wait).
    config = out.parent / "train-config.yaml"
    config.write_text(f"training:\n  patience: {epochs}\n", encoding="utf-8")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "finrec.cli",
            "train",
            "--data",
            str(data_dir),
            "--out",
            str(out),
            "--epochs",
            str(epochs),
            "--config",
            str(config),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


@pytest.mark.slow
def test_killed_during_fit_keeps_the_previous_model(model_dir, small_data_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    before = _manifest(target)
    process = _train(small_data_dir, target, epochs=50)
    try:
        time.sleep(random.uniform(8, 14))  # past the imports, inside data loading or fit
        assert process.poll() is None, "training ended before it could be killed"
    finally:
        _kill(process)
    loaded = load_model_dir(target)
    assert loaded.manifest == before


@pytest.mark.slow
def test_killed_while_saving_keeps_a_complete_model(model_dir, small_data_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    before = _manifest(target)
    process = _train(small_data_dir, target, epochs=1)
    seen_tmp = False
    try:
        deadline = time.monotonic() + 240
        while process.poll() is None and time.monotonic() < deadline:
            if any(p.name.startswith(".model.tmp-") for p in tmp_path.iterdir()):
                seen_tmp = True
                break
            time.sleep(0.005)
    finally:
        _kill(process)
    loaded = load_model_dir(target)  # verifies every checksum
    if seen_tmp and loaded.manifest != before:
        # The save finished before the kill landed: then the new model must be whole.
        assert set(loaded.manifest["files"]) == set(before["files"])
    else:
        assert loaded.manifest == before
    assert seen_tmp, "the temporary model directory was never seen"


@pytest.mark.slow
def test_same_data_and_seed_give_the_same_metrics(small_dataset, fast_config):
    from finrec.evaluate.report import evaluate
    from finrec.training.train import fit

    # Determinism does not depend on the data's size: 600 customers, one epoch.
    data = small_dataset.subset_customers(small_dataset.customer_ids[:600])
    config = fast_config.with_overrides(epochs=1, seed=3)
    first = evaluate(fit(data, config, verbose=0), data, k=5)
    second = evaluate(fit(data, config, verbose=0), data, k=5)
    assert first.keys() == second.keys()
    for name in first:
        for key, value in first[name].items():
            assert abs(value - second[name][key]) <= 1e-6, (name, key, value, second[name][key])


def _source_files():
    return sorted(SRC.rglob("*.py"))


def test_no_pickle_on_the_artifact_path():
    offenders = []
    for path in _source_files():
        text = path.read_text()
        if re.search(r"^\s*(import|from)\s+(c?pickle|joblib|dill|cloudpickle)\b", text, re.M):
            offenders.append(f"{path.name}: imports pickle")
        if re.search(r"allow_pickle\s*=\s*True|safe_mode\s*=\s*False|read_pickle|to_pickle", text):
            offenders.append(f"{path.name}: pickle-based load or save")
        for call in re.finditer(r"np\.load\((?P<args>[^)]*)\)", text):
            if "allow_pickle=False" not in call.group("args"):
                offenders.append(f"{path.name}: np.load without allow_pickle=False")
    assert not offenders, offenders
    artifacts = (SRC / "artifacts.py").read_text()
    assert "safe_mode=True" in artifacts


def test_models_load_with_safe_mode(model_dir, monkeypatch):
    import keras

    calls = []
    original = keras.saving.load_model

    def spy(*args, **kwargs):
        calls.append(kwargs.get("safe_mode"))
        return original(*args, **kwargs)

    monkeypatch.setattr(keras.saving, "load_model", spy)
    load_model_dir(model_dir)
    assert calls == [True]
