"""The dashboard's Monitoring tab, driven in-process with ``streamlit.testing``."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

SCRIPT = str(Path(__file__).resolve().parents[2] / "Recommendation_Dashboard.py")

pytestmark = pytest.mark.slow


def start(monkeypatch, model, data) -> AppTest:
    monkeypatch.setenv("FINREC_MODEL", str(model))
    monkeypatch.setenv("FINREC_DATA", str(data))
    at = AppTest.from_file(SCRIPT, default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    return at


def test_monitoring_tab_shows_the_drift_report(monkeypatch, monitored_model_dir, small_data_dir):
    at = start(monkeypatch, monitored_model_dir, small_data_dir)
    assert "Monitoring" in [t.label for t in at.tabs]
    assert at.text_input(key="monitor_data").value == str(small_data_dir)
    at = at.button(key="monitor_button").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    table = next(d.value for d in at.dataframe if "psi" in d.value.columns)
    assert {"income", "region", "(model scores)", "(recommended mix)"} <= set(table["feature"])
    # the training customers against themselves: no drift
    assert set(table["status"]) == {"🟢 ok"}
    assert [m.label for m in at.metric][-3:] == ["ok", "warn", "alert"]


def test_monitoring_tab_on_a_model_without_reference(monkeypatch, model_dir, small_data_dir):
    at = start(monkeypatch, model_dir, small_data_dir)
    assert any("predates monitoring" in i.value for i in at.info)
