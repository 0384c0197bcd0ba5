"""A real server following the registry: a promotion and a rollback under 16 concurrent clients,
with zero failed requests and the served version switching within 5 s."""

from __future__ import annotations

import time

import pytest

from finrec.governance.registry import Registry
from finrec.serve_clients import Clients, wait_for_log
from finrec.serve_process import ServerProcess

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.slow

SWITCH_WITHIN_S = 5.0


def wait_for_standby(server: ServerProcess, version: str) -> None:
    """The server loads the next likely versions ahead (``PointerWatcher``'s warm standby)."""
    wait_for_log(server, f"version {version} loaded as a standby")


def test_promotion_and_rollback_under_load(model_dir, small_dataset, small_data_dir, tmp_path):
    registry = Registry(tmp_path / "reg")
    v1, v2 = registry.add(model_dir), registry.add(model_dir)
    registry.promote(v1)
    ids = small_dataset.customers["customer_id"].astype(str).tolist()[:200]
    with ServerProcess(None, small_data_dir, tmp_path / "server.log", root=registry.root) as server:
        server.wait_ready()
        with Clients(server.base_url, ids) as clients:
            wait_for_standby(server, v2)
            promoted_at = time.monotonic()
            registry.promote(v2)
            to_v2 = clients.wait_for(v2, promoted_at, timeout=15)
            wait_for_standby(server, v1)  # the version it replaced stays warm for a rollback
            rolled_back_at = time.monotonic()
            registry.rollback()
            to_v1 = clients.wait_for(v1, rolled_back_at, timeout=15)
            time.sleep(0.5)
        results = clients.all()
        log = server.log_text()
    failed = [(status, version) for _, status, version in results if status != 200]
    assert not failed, f"{len(failed)} failed of {len(results)}: {failed[:5]}\n{log[-2000:]}"
    assert to_v2 is not None and to_v2 < SWITCH_WITHIN_S, (to_v2, log[-2000:])
    assert to_v1 is not None and to_v1 < SWITCH_WITHIN_S, (to_v1, log[-2000:])
    assert {version for _, _, version in results} == {v1, v2}  # every response names its version
    # No client sees the old version again once it has seen the new one (between the two switches).
    for per_client in clients.results:
        window = [v for t, _, v in per_client if promoted_at <= t < rolled_back_at]
        if v2 in window:
            assert v1 not in window[window.index(v2) :]
    print(f"{len(results)} requests, 0 failed; switched to {v2} in {to_v2:.2f}s and back to {v1} in {to_v1:.2f}s")
