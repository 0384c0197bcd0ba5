"""A short soak of the REST API (``benchmarks/soak.py``): 16 clients for 8 s of good and bad
requests; no 5xx, no traceback, and the server's memory does not grow."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("httpx")

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def _soak_module():
    spec = importlib.util.spec_from_file_location("finrec_soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_short_soak(server, small_dataset):
    soak = _soak_module()
    customers = [str(c) for c in small_dataset.customer_ids[:500]]
    products = [str(p) for p in small_dataset.product_ids]
    result = asyncio.run(
        soak.soak(server["base"], server["pid"], seconds=8, clients=16, customer_ids=customers, product_ids=products)
    )
    assert result["five_xx"] == 0, result["five_xx_examples"]
    assert not result["unexpected_status"], result["unexpected_status"]
    assert result["good_requests"] > 20  # real traffic was served (a low bar: the other test worker shares the cores)
    assert {"good_id", "good_features"} <= set(result["by_kind"])
    rss = result["rss_mb"]
    assert rss["start"] and rss["max"] - rss["start"] < 50, rss
