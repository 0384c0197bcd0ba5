"""The model registry: versions, promotion, rollback, the pointer a server follows."""

from __future__ import annotations

import json
import re

import pytest

from finrec.cli import main
from finrec.errors import FinrecError
from finrec.governance.registry import POINTER, PointerWatcher, Registry, RegistryError, best_epoch_metrics


def test_add_promote_rollback(model_dir, tmp_path):
    registry = Registry(tmp_path / "reg")
    assert registry.versions() == [] and registry.promoted is None
    v1 = registry.add(model_dir)
    v2 = registry.add(model_dir, metrics={"ndcg@5": 0.5}, note="challenger")
    assert (v1, v2) == ("v0001", "v0002")
    assert (registry.model_path(v2) / "model.keras").is_file()
    assert registry.info(v2)["metrics"] == {"ndcg@5": 0.5} and registry.info(v2)["note"] == "challenger"
    assert "val_ndcg@5" in registry.info(v1)["metrics"]  # from the training history by default

    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()
    registry.promote(v1)
    registry.promote(v2)
    assert registry.promoted == v2 and [v["promoted"] for v in registry.versions()] == [False, True]
    state = registry.rollback()
    assert state["promoted"] == v1 and state["stack"] == [v1]
    assert [(e["action"], e["version"], e["previous"]) for e in state["events"]] == [
        ("promote", v1, None),
        ("promote", v2, v1),
        ("rollback", v1, v2),
    ]
    # the pointer on disk is the same, whole JSON
    assert json.loads((tmp_path / "reg" / POINTER).read_text())["promoted"] == v1
    with pytest.raises(RegistryError, match="no version 'v0009'; versions: v0001, v0002"):
        registry.promote("v0009")


def test_a_damaged_version_is_never_promoted(model_dir, tmp_path):
    registry = Registry(tmp_path / "reg")
    version = registry.add(model_dir)
    (registry.model_path(version) / "pipeline.json").write_text("{}")
    with pytest.raises(FinrecError, match="pipeline.json is damaged"):
        registry.promote(version)
    assert registry.promoted is None


def test_watcher_swaps_on_promotion_and_keeps_serving_after_a_failed_load(model_dir, tmp_path):
    registry = Registry(tmp_path / "reg")
    v1, v2, v3 = (registry.add(model_dir) for _ in range(3))
    registry.promote(v1)
    loads, serving = [], {}

    def load(version, path):
        loads.append(version)
        if version == v3:
            raise FinrecError("broken")
        return f"model {path.parent.name}"

    def install(version, loaded):
        serving["now"] = (version, loaded)

    watcher = PointerWatcher(registry.root, v1, load, install, standby=False)
    assert watcher.check() is False and loads == []  # nothing changed
    registry.promote(v2)
    assert watcher.check() is True and watcher.current == v2 and serving["now"] == (v2, f"model {v2}")
    registry.promote(v3)
    assert watcher.check() is False and watcher.current == v2  # still serving v2
    assert watcher.check() is False and loads == [v2, v3]  # and v3 is not retried every second
    registry.rollback()
    assert watcher.check() is False and watcher.current == v2 and serving["now"][0] == v2


def test_watcher_keeps_the_rollback_target_and_the_newest_version_warm(model_dir, tmp_path):
    registry = Registry(tmp_path / "reg")
    v1, v2 = registry.add(model_dir), registry.add(model_dir)
    registry.promote(v1)
    loads, serving = [], {}

    def load(version, path):
        loads.append(version)
        return version

    watcher = PointerWatcher(registry.root, v1, load, lambda version, loaded: serving.update(now=loaded))
    watcher.check()
    assert set(watcher.ready) == {v2} and loads == [v2]  # the newest, ready before its promotion
    registry.promote(v2)
    assert watcher.check() is True and serving["now"] == v2 and loads == [v2, v1]  # a swap; v1 is the standby
    assert set(watcher.ready) == {v1}
    registry.rollback()
    assert watcher.check() is True and serving["now"] == v1 and loads == [v2, v1, v2]
    watcher.check()
    assert loads == [v2, v1, v2]  # nothing loaded while nothing changes


def test_best_epoch_metrics():
    history = {"loss": [3, 2, 1], "val_ndcg@5": [0.1, 0.3, 0.2], "val_mrr": [0.2, 0.4, 0.3]}
    assert best_epoch_metrics(history) == {"val_ndcg@5": 0.3, "val_mrr": 0.4}
    assert best_epoch_metrics({"loss": [1.0]}) == {}
    blended = {**history, "tree_blend_weight": [0.5], "tree_blend_cold_weight": [0.2], "blend_val_ndcg@5": [0.45]}
    assert best_epoch_metrics(blended) == {
        "val_ndcg@5": 0.3,
        "val_mrr": 0.4,
        "tree_blend_weight": 0.5,
        "tree_blend_cold_weight": 0.2,
        "blend_val_ndcg@5": 0.45,
    }


def test_models_command(model_dir, tmp_path, capsys):
    root = str(tmp_path / "reg")
    metrics = tmp_path / "eval.json"
    metrics.write_text(json.dumps({"k": 5, "results": {"model": {"ndcg@5": 0.42}, "random": {"ndcg@5": 0.1}}}))
    assert main(["models", "add", "--root", root, "--model", str(model_dir), "--promote"]) == 0
    assert main(["models", "add", "--root", root, "--model", str(model_dir), "--metrics", str(metrics)]) == 0
    assert main(["models", "promote", "v0002", "--root", root]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--root", root]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("* v0002") and "0.4200" in lines[-1] and lines[-2].startswith("  v0001")
    assert main(["models", "rollback", "--root", root]) == 0
    assert "rolled back to v0001 (from v0002)" in capsys.readouterr().out
    assert main(["models", "rollback", "--root", root]) == 2
    err = capsys.readouterr().err  # it said "only one promotion so far" after two and a rollback
    assert "nothing was promoted before v0001, or each later promotion was rolled back" in err, err
    assert main(["models", "add", "--root", root, "--model", str(tmp_path / "none")]) == 2


def test_models_list_shows_the_shipped_ndcg_and_says_what_it_was_measured_on(model_dir, tmp_path, capsys):
    # A tester's monthly cycle: the column "val nDCG" showed the towers' validation nDCG of a
    # model that ships a tree blend (0.5290; the blend's 0.5495 ships) beside last month's
    # held-out nDCG given with --metrics (0.5411), as if the two were comparable.
    registry = Registry(tmp_path / "reg")
    registry.add(model_dir, metrics={"val_ndcg@5": 0.529, "tree_blend_weight": 0.8, "blend_val_ndcg@5": 0.5495})
    registry.add(model_dir, metrics={"ndcg@5": 0.5411, "map@5": 0.45})
    registry.add(model_dir, metrics={"val_map@5": 0.3, "val_ndcg@5": 0.5})
    capsys.readouterr()
    assert main(["models", "list", "--root", str(tmp_path / "reg")]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[2:5] == ["nDCG", "measured", "on"]
    assert rows[0].split()[2:4] == ["0.5495", "validation"]
    assert rows[1].split()[2:4] == ["0.5411", "--metrics"]
    assert rows[2].split()[2:4] == ["0.5000", "validation"]


@pytest.mark.parametrize("inside", [".", "registry"])
def test_a_registry_inside_the_model_directory_is_refused(model_dir, tmp_path, capsys, inside):
    # `finrec models add --root M --model M` wrote versions/ into the model directory, the copy
    # of the model carrying the half-made versions/ inside it (a tester's monthly cycle).
    import shutil

    model = shutil.copytree(model_dir, tmp_path / "model")
    before = sorted(p.name for p in model.iterdir())
    root = model / inside
    assert main(["models", "add", "--root", str(root), "--model", str(model)]) == 2
    assert "would lie inside the model directory" in capsys.readouterr().err
    assert sorted(p.name for p in model.iterdir()) == before


def test_a_missing_report_is_refused_before_the_model_is_copied(model_dir, tmp_path, capsys):
    root = tmp_path / "reg"
    # It was an internal error (FileNotFoundError, exit 1) raised after the copy had begun.
    code = main(["models", "add", "--root", str(root), "--model", str(model_dir), "--report", str(tmp_path / "r.html")])
    assert code == 2
    assert "r.html: no such report file" in capsys.readouterr().err
    assert Registry(root).version_ids() == []


def test_a_version_deleted_by_hand_never_gives_its_id_to_the_next_model(model_dir, tmp_path):
    import shutil

    registry = Registry(tmp_path / "reg")
    registry.promote(registry.add(model_dir))
    registry.promote(registry.add(model_dir))
    shutil.rmtree(tmp_path / "reg" / "versions" / "v0002")  # the promoted version, removed by hand
    # The next model was v0002: registry.json still promoted v0002, so a model nobody
    # promoted was served, under the old promotion's audit entry.
    assert registry.add(model_dir) == "v0003"
    assert registry.promoted == "v0002" and registry.version_ids() == ["v0001", "v0003"]


def test_models_list_says_what_was_deleted_by_hand(model_dir, tmp_path, capsys):
    import shutil

    root = tmp_path / "reg"
    assert main(["models", "add", "--root", str(root), "--model", str(model_dir), "--promote"]) == 0
    assert main(["models", "add", "--root", str(root), "--model", str(model_dir), "--promote"]) == 0
    (root / "versions" / "v0001" / "version.json").unlink()
    shutil.rmtree(root / "versions" / "v0002")
    capsys.readouterr()
    # It printed "None" as v0001's registration time, no version marked promoted, and exit 0.
    assert main(["models", "list", "--root", str(root)]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines()[-1].startswith("  v0001    ? (no version.json)") and "None" not in out
    assert "the promoted version v0002 has no directory (deleted?)" in err
    assert main(["models", "rollback", "--root", str(root)]) == 0
    assert main(["models", "list", "--root", str(root)]) == 0


def test_a_registered_version_is_never_rewritten(model_dir, small_data_dir, tmp_path, capsys):
    """`calibrate --model ROOT/versions/v0001/model` rewrote a registered version in place and the
    server loaded the changed model; `train --out` onto or inside a registry would replace its
    versions (a tester's monthly cycle). Both are refused before any work; the files stay."""
    root = tmp_path / "reg"
    assert main(["models", "add", "--root", str(root), "--model", str(model_dir)]) == 0
    version = root / "versions" / "v0001" / "model"
    before = {p.name: p.read_bytes() for p in version.iterdir() if p.is_file()}
    listing = sorted(p.name for p in root.iterdir())
    capsys.readouterr()
    for argv in (
        ["calibrate", "--model", str(version), "--data", str(small_data_dir)],
        ["train", "--data", str(small_data_dir), "--out", str(version)],
        ["train", "--data", str(small_data_dir), "--out", str(root)],
        ["train", "--data", str(small_data_dir), "--out", str(root / "new-model")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"inside the model registry {root.resolve()}; a registered version is never changed" in err, err
    assert {p.name: p.read_bytes() for p in version.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in root.iterdir()) == listing


def test_registering_the_same_model_again_says_so(model_dir, tmp_path, capsys):
    root = str(tmp_path / "reg")
    assert main(["models", "add", "--root", root, "--model", str(model_dir)]) == 0
    assert "same model" not in capsys.readouterr().err
    assert main(["models", "add", "--root", root, "--model", str(model_dir)]) == 0
    assert "note: v0002 is the same model as v0001 (the same files)" in capsys.readouterr().err


def test_a_projects_own_versions_folder_is_no_registry(tmp_path):
    """A reviewer: any parent with versions/ and a .lock counted as a registry, refusing every
    `train --out` below it. A registry is a version.json under versions/, or the pointer."""
    from finrec.governance.registry import registry_holding

    (tmp_path / "versions").mkdir()
    (tmp_path / ".lock").write_text("")
    assert registry_holding(tmp_path / "models" / "new") is None
    (tmp_path / "versions" / "v0001").mkdir()
    (tmp_path / "versions" / "v0001" / "version.json").write_text("{}")
    assert registry_holding(tmp_path / "models" / "new") == tmp_path.resolve()


def test_models_add_refuses_a_root_that_is_a_file_or_inside_a_registry(model_dir, tmp_path, capsys):
    # Found by a tester: a file as --root was an internal error (FileExistsError, exit 1), and a
    # registry could be made inside another one's versions/.
    afile = tmp_path / "reg.txt"
    afile.write_text("x")
    assert main(["models", "add", "--root", str(afile), "--model", str(model_dir)]) == 2
    assert "a file, not a registry directory" in capsys.readouterr().err
    Registry(tmp_path / "reg").add(model_dir)
    for inner in ("reg/versions", "reg/inner"):
        assert main(["models", "add", "--root", str(tmp_path / inner), "--model", str(model_dir)]) == 2
        assert "inside the model registry" in capsys.readouterr().err
    assert Registry(tmp_path / "reg").version_ids() == ["v0001"] and not (tmp_path / "reg" / "inner").exists()


def test_models_add_copies_the_models_files_only_and_checks_its_metrics(model_dir, tmp_path, capsys):
    import shutil

    model = shutil.copytree(model_dir, tmp_path / "model")
    (model / "scores.csv").write_text("customer_id,product_id\n")  # kept beside the model by a user
    root = str(tmp_path / "reg")
    assert main(["models", "add", "--root", root, "--model", str(model)]) == 0
    assert "scores.csv" in capsys.readouterr().err
    registry = Registry(root)
    assert not (registry.model_path("v0001") / "scores.csv").exists()
    assert (registry.model_path("v0001") / "model.keras").is_file()
    other = tmp_path / "other.json"  # `finrec evaluate --json` of another model
    other.write_text(
        json.dumps({"model_version": "2020-01-01T00:00:00+00:00/000000000000", "results": {"model": {"ndcg@5": 0.9}}})
    )
    assert main(["models", "add", "--root", root, "--model", str(model), "--metrics", str(other)]) == 2
    assert "not of this model" in capsys.readouterr().err
    words = tmp_path / "words.json"
    words.write_text(json.dumps({"comment": "looks good"}))
    assert main(["models", "add", "--root", root, "--model", str(model), "--metrics", str(words)]) == 2
    assert "no numeric metric" in capsys.readouterr().err
    assert registry.version_ids() == ["v0001"]


def test_a_report_is_known_by_its_subtitle_whatever_its_model_path_holds(tmp_path):
    # A reviewer: the first "model version " in the file was taken, and a model kept under a
    # folder named "model version 2" had its own report refused as another model's.
    from finrec.artifacts import model_version
    from finrec.governance.registry import check_report_of

    manifest = {"created": "2026-12-02T07:00:00+00:00", "files": {"model.keras": "ab" * 32}}
    mine, other = model_version(manifest), model_version({**manifest, "created": "2020-01-01T00:00:00+00:00"})
    report = tmp_path / "r.html"
    for version, ok in ((mine, True), (other, False)):
        report.write_text(
            "<h1>Validation report: x</h1><p class='sub'>model /m/model version 2/x &amp; co · model version "
            f"{version} · data d · generated now by finrec report</p>"
        )
        if ok:
            check_report_of(report, manifest)
        else:
            with pytest.raises(RegistryError, match=f"model version {re.escape(other)}, not of this model"):
                check_report_of(report, manifest)
