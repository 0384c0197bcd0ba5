"""Outputs never destroy inputs: every ``OUTPUT_CASES`` entry of ``corpus.py`` through the CLI and
the Python API, every ``DEMO_CASES`` entry through the dashboard's "build the demo" button. Each
is refused with a clear message (CLI exit 2, ``FinrecError``, an error on the page) and nothing
under the case's directory changes, not even a temporary file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from corpus import DEMO_CASES, OUTPUT_CASES, Where, make_where, tree_state

from finrec.cli import main
from finrec.errors import FinrecError

API_CASES = [case for case in OUTPUT_CASES if case.api]
SCRIPT = str(Path(__file__).resolve().parents[2] / "Recommendation_Dashboard.py")


def test_every_entry_point_and_command_is_covered():
    names = [c.name for c in [*OUTPUT_CASES, *DEMO_CASES]]
    assert len(names) == len(set(names))
    assert {c.command for c in OUTPUT_CASES} == {
        "generate",
        "split",
        "train",
        "train-mlflow",
        "evaluate",
        "score",
        "score-ray",
        "monitor",
        "plan",
        "compare",
        "report",
    }
    assert {c.command for c in API_CASES} == {"generate", "split", "train", "score", "score-ray"}


@pytest.fixture
def where(tmp_path, csv_data_dir, model_dir) -> Where:
    return make_where(tmp_path / "case", csv_data_dir, model_dir)


def _prepared(case, where: Where):
    if case.prepare:
        case.prepare(where)
    return case.out(where), tree_state(where.root)


def _assert_message(case, where: Where, message: str) -> None:
    for fragment in case.fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    if case.input:
        assert str(getattr(where, case.input)) in message, message


def _cli_args(case, where: Where, out) -> list[str]:
    w = where
    return [
        str(a)
        for a in {
            "generate": ["generate", "--out", out, "--customers", 50],
            "split": ["split", "--data", w.data, "--out", out],
            "train": ["train", "--data", w.data, "--out", out, "--config", w.config, "--epochs", 1],
            "evaluate": ["evaluate", "--model", w.model, "--data", w.data, "--json", out],
            "monitor": ["monitor", "--model", w.model, "--data", w.data, "--json", out],
            "plan": ["plan", "--model", w.model, "--data", w.data, "--out", w.root / "plan.csv", "--json", out],
            "compare": ["compare", "--champion", w.model, "--challenger", w.model, "--data", w.data, "--json", out],
            "train-mlflow": [
                "train",
                "--data",
                w.data,
                "--out",
                w.root / "m",
                "--config",
                w.config,
                "--epochs",
                1,
                "--mlflow",
                out,
            ],
            "report": ["report", "--model", w.model, "--data", w.data, "--out", out],
            "score": ["score", "--model", w.model, "--data", w.data, "--out", out],
            "score-ray": ["score", "--model", w.model, "--data", w.data, "--out", out, "--engine", "ray"],
        }[case.command]
    ]


@pytest.mark.parametrize("case", OUTPUT_CASES, ids=str)
def test_cli_refuses_and_changes_nothing(case, where, capsys):
    out, before = _prepared(case, where)
    code = main(_cli_args(case, where, out))
    _, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith(f"finrec {case.command.split('-')[0]}: error:") and err.count("\n") == 1, err
    _assert_message(case, where, err)
    assert tree_state(where.root) == before


@pytest.mark.parametrize("case", API_CASES, ids=str)
def test_python_api_refuses_and_changes_nothing(case, where, request):
    from finrec.data import schema as S
    from finrec.data.io import dataset_tables, load_dataset, write_dataset

    out, before = _prepared(case, where)
    with pytest.raises(FinrecError) as info:
        if case.command == "train":
            from finrec.artifacts import save_model_dir

            save_model_dir(request.getfixturevalue("trained"), out, data_path=str(where.data))
        elif case.command == "score":
            from finrec.artifacts import load_model_dir
            from finrec.recommend.batch import score_dataset
            from finrec.recommend.recommender import Recommender

            score_dataset(Recommender(load_model_dir(where.model).trained), where.data, out)
        elif case.command == "score-ray":
            from finrec.recommend.ray_engine import score_dataset_ray

            score_dataset_ray(where.model, where.data, out)
        elif case.command == "split":
            dataset = load_dataset(where.data)
            write_dataset(dataset_tables(dataset), dataset.schema, out / "train", source=where.data)
        elif case.command == "generate":
            write_dataset(dataset_tables(load_dataset(where.data)), S.SYNTHETIC.schema(), out)
    _assert_message(case, where, str(info.value))
    assert tree_state(where.root) == before


# ------------------------------------------------------------------------------------ allowed


def test_split_beside_its_data_and_generate_over_a_dataset_are_allowed(where, capsys):
    # The refusals are about overlap, not about being near: OUT/train and OUT/test beside
    # OUT/data are new paths, and generate may replace a dataset on purpose (it reads none).
    before = tree_state(where.data)
    assert main(["split", "--data", str(where.data), "--out", str(where.root)]) == 0, capsys.readouterr().err
    assert (where.root / "train" / "schema.yaml").is_file() and tree_state(where.data) == before
    assert main(["generate", "--out", str(where.root / "train"), "--customers", "40"]) == 0, capsys.readouterr().err
    assert main(["generate", "--out", str(where.root / "empty"), "--customers", "40"]) == 0
    (where.root / "fresh").mkdir()
    assert main(["generate", "--out", str(where.root / "fresh"), "--customers", "40"]) == 0
    # A bank generated without its ground truth is still one generate may replace (a reviewer).
    lean = str(where.root / "lean")
    for _ in range(2):
        assert main(["generate", "--out", lean, "--customers", "40", "--no-ground-truth"]) == 0, capsys.readouterr().err


def test_retraining_replaces_a_model_directory(where, trained):
    from finrec.artifacts import read_manifest, save_model_dir

    save_model_dir(trained, where.model, data_path=str(where.data))
    assert read_manifest(where.model)["data_path"] == str(where.data)


def test_a_symlinked_model_directory_is_replaced_without_touching_its_target(where, trained):
    # The swap used to leave a half-done state (rmtree refuses a symlink): now the link is
    # replaced by the new directory and the directory it pointed to is left as it was.
    from finrec.artifacts import load_model_dir, save_model_dir

    link = where.root / "model-link"
    link.symlink_to(where.model, target_is_directory=True)
    before = tree_state(where.model)
    save_model_dir(trained, link)
    assert not link.is_symlink() and load_model_dir(link).manifest
    assert tree_state(where.model) == before


# ------------------------------------------------------------------------------------ dashboard


@pytest.mark.parametrize("case", DEMO_CASES, ids=str)
def test_dashboard_demo_button_refuses_and_changes_nothing(case, where, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    root = where.root
    if case.data:
        (root / case.data).parent.mkdir(parents=True, exist_ok=True)
        if not (root / case.data).exists():
            shutil.copytree(where.data, root / case.data)
        monkeypatch.setenv("FINREC_DATA", str(root / case.data))
    else:
        monkeypatch.delenv("FINREC_DATA", raising=False)
    monkeypatch.setenv("FINREC_MODEL", str(root / case.model))
    before = tree_state(root)
    at = AppTest.from_file(SCRIPT, default_timeout=120).run()
    assert not at.exception, at.exception
    if case.typed:
        at = at.text_input(key="model_dir").set_value(str(root / case.typed)).run()
        assert not at.exception, at.exception
    at = at.button(key="build").click().run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    for fragment in case.fragments:
        assert fragment in errors[0], errors[0]
    assert tree_state(root) == before
