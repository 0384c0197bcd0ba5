"""A real server following the registry: a promotion and a rollback under 16 concurrent clients,
with zero failed requests and the served version switching within 5 s."""

from __future__ import annotations

import threading
import time

import pytest

from finrec.governance.registry import Registry
from finrec.serve_process import ServerProcess

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.slow

CLIENTS = 16
SWITCH_WITHIN_S = 5.0


class Clients:
    """``CLIENTS`` threads posting recommendations back to back until stopped; each answer is
    kept as (monotonic time, status or exception name, model_version)."""

    def __init__(self, base_url: str, customer_ids: list[str]):
        self.base_url = base_url
        self.customer_ids = customer_ids
        self.results: list[list[tuple[float, object, str | None]]] = [[] for _ in range(CLIENTS)]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def _run(self, number: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10.0) as client:
            i = number
            while not self.stop.is_set():
                body = {"customer_id": self.customer_ids[i % len(self.customer_ids)], "k": 3}
                i += CLIENTS
                try:
                    response = client.post("/recommendations", json=body)
                    version = response.json().get("model_version") if response.status_code == 200 else None
                    self.results[number].append((time.monotonic(), response.status_code, version))
                except Exception as exc:  # noqa: BLE001 - counted as a failed request
                    self.results[number].append((time.monotonic(), type(exc).__name__, None))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def all(self):
        return sorted(item for per_client in self.results for item in per_client)

    def first_with(self, version: str, after: float) -> float | None:
        """When every client had seen ``version`` (after ``after``), the latest of their first sightings."""
        firsts = []
        for per_client in self.results:
            seen = [t for t, _, v in per_client if t >= after and v == version]
            if not seen:
                return None
            firsts.append(seen[0])
        return max(firsts)

    def wait_for(self, version: str, after: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.first_with(version, after)
            if seen is not None:
                return seen - after
            time.sleep(0.05)
        return None


def wait_for_standby(server: ServerProcess, version: str, timeout: float = 120.0) -> None:
    """The server loads the next likely versions ahead (``PointerWatcher``'s warm standby)."""
    deadline = time.monotonic() + timeout
    while f"version {version} loaded as a standby" not in server.log_text():
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.1)


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
