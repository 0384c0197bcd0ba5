"""A slow-body attack on a real ``finrec serve`` (issue 11): more clients than the request limit,
each trickling its body a byte at a time on 127.0.0.1. Every slow body must be cut off with 408
at the total deadline (trickling does not reset it), the clients past the limit get 503 at once,
and ``/health`` and ``/ready`` answer throughout. Small limits keep it to a few seconds."""

from __future__ import annotations

import json
import selectors
import socket
import time

import pytest

from finrec.serve_process import ServerProcess

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.slow

BODY_TIMEOUT_S = 3.0
MAX_REQUESTS = 6
N_SLOW = 10  # more than MAX_REQUESTS, far below uvicorn's connection backstop (4 x MAX_REQUESTS)
TRICKLE_S = 0.4  # a byte this often: each gap is far inside the deadline
MARGIN_S = 3.0
READY_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def server(model_dir, small_data_dir, tmp_path_factory):
    env = {"FINREC_SERVE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S), "FINREC_SERVE_MAX_REQUESTS": str(MAX_REQUESTS)}
    with ServerProcess(model_dir, small_data_dir, tmp_path_factory.mktemp("slow") / "server.log", env=env) as process:
        try:
            process.wait_ready(timeout=READY_TIMEOUT_S)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield process


class SlowClient:
    """A POST whose headers promise 1000 bytes of body, of which it sends one at a time."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(
            b"POST /recommendations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        self.start = time.monotonic()
        self.answer = b""
        self.answered_after: float | None = None
        self.closed = False  # the server closed the connection after answering

    def trickle(self) -> None:
        if self.answered_after is None:
            try:
                self.sock.sendall(b" ")
            except OSError:  # the server hung up; the answer is read below
                pass

    def read(self) -> None:
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if data and self.answered_after is None:
            self.answered_after = time.monotonic() - self.start
        self.answer += data
        self.closed = self.closed or not data

    @property
    def status(self) -> int | None:
        return int(self.answer.split(b" ", 2)[1]) if self.answer.startswith(b"HTTP/1.1 ") else None

    @property
    def body(self) -> dict:
        return json.loads(self.answer.split(b"\r\n\r\n", 1)[1])


def test_slow_bodies_get_408_and_cannot_starve_the_probes(server):
    clients = [SlowClient(server.port) for _ in range(N_SLOW)]
    selector = selectors.DefaultSelector()
    for client in clients:
        selector.register(client.sock, selectors.EVENT_READ, client)
    probes: list[tuple[str, int]] = []
    busy = None
    end = time.monotonic() + BODY_TIMEOUT_S + MARGIN_S
    try:
        next_trickle = time.monotonic()
        while time.monotonic() < end and not all(c.closed for c in clients):
            for key, _ in selector.select(timeout=0.05):
                key.data.read()
                if key.data.closed:
                    selector.unregister(key.fileobj)
            if time.monotonic() >= next_trickle:
                next_trickle += TRICKLE_S
                for client in clients:
                    client.trickle()
                if any(c.answered_after is None for c in clients):  # the attack is still on
                    for path in ("/health", "/ready"):
                        probes.append((path, httpx.get(server.base_url + path, timeout=2).status_code))
                    if busy is None:  # the request limit is taken: a real request is turned away
                        busy = httpx.post(f"{server.base_url}/recommendations", json={"customer_id": "C1"}, timeout=2)
    finally:
        selector.close()
        for client in clients:
            client.sock.close()

    statuses = sorted(c.status for c in clients)
    assert statuses == [408] * MAX_REQUESTS + [503] * (N_SLOW - MAX_REQUESTS), statuses
    for client in clients:
        assert client.closed, "the server must close a refused connection"
        if client.status == 408:  # at the total deadline, however it trickled
            assert BODY_TIMEOUT_S - 0.2 <= client.answered_after <= BODY_TIMEOUT_S + MARGIN_S, client.answered_after
            assert client.body == {"detail": f"the request body did not arrive within {BODY_TIMEOUT_S:g} s"}
        else:  # past the limit: turned away at once, not queued behind the slow ones (which end at the deadline;
            # the margin below it absorbs a busy machine, e.g. the other test worker training a model)
            assert client.answered_after < BODY_TIMEOUT_S - 0.5, client.answered_after
            assert b"retry-after: 1" in client.answer.lower()
    assert busy is not None and busy.status_code == 503 and busy.headers["retry-after"] == "1"
    # Liveness was never starved: both probes answered 200 at every round of the attack.
    assert len(probes) >= 2 * int(BODY_TIMEOUT_S / TRICKLE_S) - 2, probes
    assert {status for _, status in probes} == {200}, probes
    # Once the slow bodies are gone, requests are served again.
    assert (
        httpx.post(f"{server.base_url}/recommendations", json={"customer_id": "NOPE-1"}, timeout=5).status_code == 404
    )


@pytest.mark.parametrize(
    "path, status",
    [
        ("/customers/" + "9" * 400, 422),  # over the 200-character id limit
        ("/customers/" + "9" * 150, 404),  # a long number is an id like any other
        ("/customers/1e400", 404),
        ("/customers/NaN", 404),
        ("/customers/%ED%A0%80", 404),  # a UTF-8-encoded lone surrogate: not UTF-8, decoded with replacement
    ],
)
def test_odd_customer_paths_are_4xx(server, path, status):
    response = httpx.get(server.base_url + path, timeout=5)
    assert response.status_code == status, response.text[:300]
    assert "Traceback" not in response.text and "internal" not in response.text
