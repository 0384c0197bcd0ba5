"""Client threads that keep a real ``finrec serve`` busy: the roll-out test and benchmark share them.

>>> with ServerProcess(None, "data/bank", "server.log", root="registry") as server, \\
...         Clients(server.base_url, ["C0000001", "C0000002"]) as clients:
...     registry.promote("v0002")
...     seconds = clients.wait_for("v0002", after=time.monotonic(), timeout=15)

Each of ``CLIENTS`` threads (one ``httpx.Client`` each, needs the ``serve`` extra) posts
recommendations back to back, cycling over the customer ids, until stopped; every answer is kept
as (monotonic time, status code or exception name, ``model_version``).
"""

from __future__ import annotations

import threading
import time

CLIENTS = 16


class Clients:
    def __init__(self, base_url: str, customer_ids: list[str], k: int = 3, clients: int = CLIENTS):
        self.base_url = base_url
        self.customer_ids = customer_ids
        self.k = k
        self.results: list[list[tuple[float, object, str | None]]] = [[] for _ in range(clients)]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, number: int) -> None:
        import httpx

        with httpx.Client(base_url=self.base_url, timeout=10.0) as client:
            i = number
            while not self.stop.is_set():
                body = {"customer_id": self.customer_ids[i % len(self.customer_ids)], "k": self.k}
                i += len(self.threads)
                try:
                    response = client.post("/recommendations", json=body)
                    version = response.json().get("model_version") if response.status_code == 200 else None
                    self.results[number].append((time.monotonic(), response.status_code, version))
                except Exception as exc:  # noqa: BLE001 - counted as a failed request
                    self.results[number].append((time.monotonic(), type(exc).__name__, None))

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def all(self) -> list[tuple[float, object, str | None]]:
        return sorted(item for per_client in self.results for item in per_client)

    def first_with(self, version: str, after: float) -> float | None:
        """When every client had seen ``version`` (after ``after``), the latest of their first sightings."""
        firsts = []
        for per_client in self.results:
            seen = next((t for t, _, v in list(per_client) if t >= after and v == version), None)
            if seen is None:
                return None
            firsts.append(seen)
        return max(firsts)

    def wait_for(self, version: str, after: float, timeout: float) -> float | None:
        """Seconds from ``after`` until every client has had an answer from ``version`` (None: not in
        ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.first_with(version, after)
            if seen is not None:
                return seen - after
            time.sleep(0.05)
        return None


def wait_for_log(server, text: str, count: int = 1, timeout: float = 120.0) -> None:
    """Until the log of ``server`` (a ``ServerProcess``) holds ``text`` ``count`` times; ``TimeoutError``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while server.log_text().count(text) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {text!r} in the server log: {server.log_text()[-1500:]}")
        time.sleep(0.1)
