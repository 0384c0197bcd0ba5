"""The dashboard in a real browser: Streamlit server + headless Debian Chromium via Playwright.

Never downloads a browser through Playwright: the ``chromium`` fixture (tests/conftest.py) launches
``/usr/bin/chromium``.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"streamlit exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"streamlit did not open port {port} within {timeout:.0f}s")


@pytest.fixture
def server(model_dir, small_data_dir, tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "FINREC_MODEL": str(model_dir),
        "FINREC_DATA": str(small_data_dir),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    }
    log = open(tmp_path / "streamlit.log", "wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "Recommendation_Dashboard.py"),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the server's own process group, by its PID
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


def test_dashboard_in_chromium(server, small_dataset, chromium):
    ARTIFACTS.mkdir(exist_ok=True)
    customer = str(small_dataset.customer_ids[21])
    page = chromium.new_page(viewport={"width": 1400, "height": 3000})
    page.goto(server, wait_until="domcontentloaded")
    page.get_by_text("Best match (cosine)").wait_for(timeout=120_000)
    # choose a customer by searching for the id
    search = page.get_by_label("Search by customer id")
    search.fill(customer)
    search.press("Enter")
    page.get_by_text(f"Customer {customer}", exact=True).wait_for(timeout=60_000)
    page.wait_for_timeout(1500)
    cards = page.get_by_text("Similarity", exact=True)
    assert cards.count() == 5
    # Each card carries its regime's badge: suitable (investments), affordable (credit), eligible (the rest).
    badges = sum(page.get_by_text(b, exact=False).count() for b in ("✅ Suitable", "✅ Affordable", "✅ Eligible"))
    assert badges >= 5
    page.screenshot(path=str(ARTIFACTS / "dashboard-recommendations.png"), full_page=False)
    # the SHAP explanation of the top product
    page.get_by_role("tab", name="Explain (SHAP)").click()
    page.get_by_role("button", name="Explain this recommendation").click()
    page.get_by_text("< 1e-4", exact=False).wait_for(timeout=120_000)
    page.wait_for_timeout(1500)
    assert page.locator(".js-plotly-plot").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=False)
    assert not page.get_by_text("Traceback").count()
