"""Atomic writes leave files with the modes a plain write would give them."""

from __future__ import annotations

import os
import stat

import pytest

from finrec.atomic import atomic_directory, atomic_file, atomic_path


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_outputs_get_the_umask_modes_not_owner_only(tmp_path, umask_027):
    # Found by a tester: every atomic write was 0600 (0700 for a model directory), so the service
    # account beside the training job could not read the model it was meant to serve.
    with atomic_file(tmp_path / "a.json") as handle:
        handle.write("{}")
    with atomic_path(tmp_path / "b.parquet") as tmp:
        tmp.write_bytes(b"x")
    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert _mode(tmp_path / "a.json") == 0o640
    assert _mode(tmp_path / "b.parquet") == 0o640
    assert _mode(tmp_path / "model") == 0o750


def test_a_replaced_output_keeps_its_mode(tmp_path, umask_027):
    target = tmp_path / "plan.csv"
    target.write_text("old")
    os.chmod(target, 0o604)
    with atomic_file(target) as handle:
        handle.write("new")
    assert target.read_text() == "new" and _mode(target) == 0o604
    folder = tmp_path / "model"
    folder.mkdir()
    os.chmod(folder, 0o711)
    with atomic_directory(folder) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert _mode(folder) == 0o711


def test_a_read_only_output_is_replaced_and_stays_read_only(tmp_path):
    # Found by a reviewer: the kept mode was set on the temporary file before it was written, so a
    # read-only output (or model directory) could no longer be written by anyone but root.
    target = tmp_path / "scores.parquet"
    target.write_bytes(b"old")
    os.chmod(target, 0o444)
    with atomic_path(target) as tmp:
        assert os.access(tmp, os.W_OK) or os.geteuid() == 0
        assert _mode(tmp) & 0o200  # the writer's own file is writable while it writes
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o444
    folder = tmp_path / "model"
    folder.mkdir()
    os.chmod(folder, 0o555)
    with atomic_directory(folder) as tmp:
        assert _mode(tmp) & 0o200
        (tmp / "manifest.json").write_text("{}")
    assert _mode(folder) == 0o555 and (folder / "manifest.json").read_text() == "{}"
    os.chmod(folder, 0o755)
    setuid = tmp_path / "tool.sh"
    setuid.write_text("old")
    os.chmod(setuid, 0o4755)
    with atomic_file(setuid) as handle:
        handle.write("new")
    assert _mode(setuid) == 0o755
