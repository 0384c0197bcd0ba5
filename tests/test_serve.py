"""The REST API against a real ``finrec serve`` process (uvicorn on a free loopback port)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from finrec.serve_process import ServerProcess, free_port

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def server(model_dir, small_data_dir, tmp_path_factory):
    with ServerProcess(model_dir, small_data_dir, tmp_path_factory.mktemp("serve") / "server.log") as process:
        try:
            process.wait_ready(timeout=READY_TIMEOUT_S)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield {"base": process.base_url, "log": process.log_path, "pid": process.pid, "early": process.early}


@pytest.fixture(scope="module")
def client(server):
    responses = []

    def record(response):
        response.read()
        responses.append(response)

    with httpx.Client(base_url=server["base"], timeout=10, event_hooks={"response": [record]}) as c:
        yield c
    # No response, whatever the input, carries a stack trace.
    assert responses
    for response in responses:
        assert "Traceback" not in response.text, (response.request.url, response.text[:500])
        assert response.status_code != 500, (response.request.url, response.text[:500])


@pytest.fixture(scope="module")
def ids(small_dataset):
    holdings = small_dataset.holdings
    holders = holdings.groupby("customer_id")["product_id"].apply(list)
    customer = str(holders.index[0])
    return {
        "customer": customer,
        "held": [str(p) for p in holders.iloc[0]],
        "customers": [str(c) for c in small_dataset.customers["customer_id"].head(20)],
    }


def _detail_locs(response) -> list[list]:
    return [error["loc"] for error in response.json()["detail"]]


# ------------------------------------------------------------------------------------ basics


def test_health_and_ready(client, server):
    assert client.get("/health").json() == {"status": "ok"}
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    # Before the model was in place, /ready said so with a 503.
    for status, body in server["early"]:
        assert status == 503 and body["status"] == "loading"


def test_a_model_that_fails_to_load_stops_the_server(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "finrec.cli", "serve", "--model", str(tmp_path / "missing"), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert process.returncode == 2, process.stderr[-2000:]
    assert "finrec serve: error:" in process.stderr
    assert "Traceback" not in process.stderr


def test_openapi_lists_the_paths_with_schemas(client):
    spec = client.get("/openapi.json").json()
    assert {"/recommendations", "/products", "/customers/{customer_id}", "/health", "/ready"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert {"RecommendationRequest", "RecommendationResponse", "FiltersIn"} <= set(schemas)
    assert schemas["FiltersIn"].get("additionalProperties") is False
    assert client.get("/docs").status_code == 200


def test_products(client, small_dataset):
    body = client.get("/products").json()
    assert body["count"] == len(small_dataset.products) == len(body["products"])
    assert {p["product_id"] for p in body["products"]} == set(small_dataset.products["product_id"].astype(str))
    assert all("risk_level" in p and "product_type" in p for p in body["products"])
    assert all(p["offered"] is True for p in body["products"])  # the data lists every product


def test_a_discontinued_product_is_listed_as_not_offered(trained, small_dataset):
    from finrec.recommend.recommender import Recommender
    from finrec.serve import catalogue_listing

    products = small_dataset.products
    gone = str(products["product_id"].iloc[0])
    recommender = Recommender(trained).with_catalogue(products.iloc[1:], "products.csv")
    listing = catalogue_listing(recommender)
    assert [p["product_id"] for p in listing] == list(trained.pipeline.product_ids_)
    assert {p["product_id"] for p in listing if not p["offered"]} == {gone}


def test_the_service_never_returns_a_product_marked_not_on_offer(model_dir, withdrawing_bank, withdrawn):
    """``serve --data`` on data whose products table marks a product not on offer while customers
    hold it (the service would not start when the bank dropped it instead): by id and by features
    it is never returned, and ``/products`` lists it as not offered."""
    from fastapi.testclient import TestClient

    from finrec.serve import create_app

    data = withdrawing_bank("false")
    holdings = pd.read_parquet(data / "holdings.parquet")
    holders = set(holdings.customer_id[holdings.product_id == withdrawn].astype(str))
    customers = pd.read_parquet(data / "customers.parquet").customer_id.astype(str)
    with TestClient(create_app(model_dir, data)) as client:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.2)
        listing = client.get("/products").json()["products"]
        assert [p["product_id"] for p in listing if not p["offered"]] == [withdrawn]
        returned = set()
        for customer in [c for c in customers if c not in holders][:15]:
            body = client.post("/recommendations", json={"customer_id": customer, "k": 25}).json()
            returned |= {item["product_id"] for item in body["recommendations"]}
        features = {"age": 35, "income": 48000, "savings": 12000, "credit_score": 700, "risk_tolerance": 5}
        for preset in ("balanced", "risk_tolerant"):
            response = client.post(
                "/recommendations", json={"features": features, "k": 25, "filters": {"preset": preset}}
            )
            assert response.status_code == 200, response.text
            returned |= {item["product_id"] for item in response.json()["recommendations"]}
        assert len(returned) > 10 and withdrawn not in returned


def test_customer_profile_and_404(client, ids):
    body = client.get(f"/customers/{ids['customer']}").json()
    assert body["customer_id"] == ids["customer"]
    assert sorted(body["holdings"]) == sorted(ids["held"])
    assert "income" in body["attributes"]
    missing = client.get("/customers/NOPE-123")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "unknown customer_id 'NOPE-123'"}


# ------------------------------------------------------------------------------------ recommendations


def test_recommendations_by_id(client, ids):
    response = client.post("/recommendations", json={"customer_id": ids["customer"], "k": 4})
    assert response.status_code == 200
    body = response.json()
    assert body["customer_id"] == ids["customer"] and body["k"] == 4
    items = body["recommendations"]
    assert 1 <= len(items) <= 4
    assert [item["rank"] for item in items] == list(range(1, len(items) + 1))
    scores = [item["score"] for item in items]
    assert scores == sorted(scores, reverse=True)
    assert not {item["product_id"] for item in items} & set(ids["held"])
    assert all(item["reason"] and item["product"]["risk_level"] for item in items)
    if len(items) < 4:
        assert body["message"]


def test_k_is_respected_across_customers(client, ids):
    for customer in ids["customers"][:10]:
        body = client.post(
            "/recommendations", json={"customer_id": customer, "k": 2, "filters": {"suitability": False}}
        ).json()
        assert len(body["recommendations"]) == 2


def test_recommendations_by_features(client, ids):
    held = ids["held"][:1]
    features = {
        "age": 35,
        "income": 48000,
        "savings": 12000,
        "credit_score": 700,
        "risk_tolerance": 5,
        "region": "north",
        "employment": "employed",
        "holdings": held,
    }
    response = client.post("/recommendations", json={"features": features, "k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["customer_id"] is None
    assert 1 <= len(body["recommendations"]) <= 3
    assert held[0] not in {item["product_id"] for item in body["recommendations"]}
    assert all(item["product"]["risk_level"] <= 5 for item in body["recommendations"])


def test_conservative_preset_caps_risk(client, ids):
    for customer in ids["customers"][:8]:
        body = client.post(
            "/recommendations", json={"customer_id": customer, "k": 10, "filters": {"preset": "conservative"}}
        ).json()
        assert body["filters"]["max_risk"] == 3
        assert all(item["product"]["risk_level"] <= 3 for item in body["recommendations"])


def test_include_categories(client, ids):
    body = client.post(
        "/recommendations",
        json={
            "customer_id": ids["customer"],
            "k": 10,
            "filters": {"include_categories": ["savings_account", "term_deposit"], "suitability": False},
        },
    ).json()
    assert body["recommendations"]
    assert {item["product"]["product_type"] for item in body["recommendations"]} <= {"savings_account", "term_deposit"}


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "payload, loc",
    [
        ({"k": 3}, ["body", "features"]),
        ({"customer_id": "C1", "features": {"age": 30}}, ["body", "features"]),
        ({"customer_id": "C1", "k": 0}, ["body", "k"]),
        ({"customer_id": "C1", "k": "five"}, ["body", "k"]),
        ({"customer_id": "C1", "k": 51}, ["body", "k"]),
        ({"customer_id": "C1", "filters": {"colour": "red"}}, ["body", "filters", "colour"]),
        ({"customer_id": "C1", "filters": {"preset": "yolo"}}, ["body", "filters", "preset"]),
        ({"customer_id": "C1", "filters": {"max_risk": 9}}, ["body", "filters", "max_risk"]),
        # An integer is an id (ids are compared as text); a bool, a float or a 20-digit number is not.
        ({"customer_id": True}, ["body", "customer_id"]),
        ({"customer_id": 4.5}, ["body", "customer_id"]),
        ({"customer_id": 10**19}, ["body", "customer_id"]),
        ({"customer_id": "C1", "extra": True}, ["body", "extra"]),
    ],
)
def test_invalid_bodies_are_422_naming_the_field(client, payload, loc):
    response = client.post("/recommendations", json=payload)
    assert response.status_code == 422, response.text
    assert loc in _detail_locs(response)


@pytest.mark.parametrize(
    "features, words",
    [
        ({"income": "a lot"}, "income"),
        ({"risk_tolerance": 9}, "risk_tolerance"),
        ({"income": 1000, "holdings": ["NO_SUCH_PRODUCT"]}, "NO_SUCH_PRODUCT"),
        # a misspelled key was answered 200 as if the value were missing (a tester)
        ({"income": 1000, "risk_tolerence": 7}, "unknown key 'risk_tolerence' (did you mean 'risk_tolerance'?)"),
        ({"incme": 52000}, "unknown key 'incme' (did you mean 'income'?)"),
    ],
)
def test_values_the_library_refuses_are_422_with_its_message(client, features, words):
    response = client.post("/recommendations", json={"features": features})
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"]


def test_unknown_customer_is_404(client):
    response = client.post("/recommendations", json={"customer_id": "NOPE-999"})
    assert response.status_code == 404
    assert response.json() == {"detail": "unknown customer_id 'NOPE-999'"}


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"customer_id": "C1",}',
        b"",
        b"[1, 2]",
        b'{"customer_id": NaN}',
        b'{"features": {"income": Infinity}}',
    ],
)
def test_malformed_json_is_422(client, raw):
    response = client.post("/recommendations", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text


def test_oversize_body_is_413(client):
    big = b'{"customer_id": "' + b"x" * 70_000 + b'"}'
    response = client.post("/recommendations", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413

    def chunks():  # no Content-Length: counted as it streams
        yield b'{"customer_id": "'
        for _ in range(80):
            yield b"x" * 1000
        yield b'"}'

    response = client.post("/recommendations", content=chunks(), headers={"content-type": "application/json"})
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413


def test_wrong_method_is_405(client):
    assert client.get("/recommendations").status_code == 405


def test_the_log_never_shows_feature_values(client, server):
    client.post("/recommendations", json={"features": {"income": 987654.25, "age": "sixty-one"}})
    client.post("/recommendations", json={"features": {"income": 987654.25, "credit_score": 712}})
    time.sleep(0.2)
    text = server["log"].read_text(errors="replace")
    assert "987654" not in text and "sixty-one" not in text


def _drive(middleware, scope, receive) -> list[dict]:
    """Run an ASGI middleware on one request; the messages it sent."""
    import anyio

    sent = []

    async def send(message):
        sent.append(message)

    anyio.run(middleware, scope, receive, send)
    return sent


async def _reading_app(scope, receive, send):
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_a_stalled_body_gets_408():
    """A client that announces a body and never sends it is cut off with 408, not left holding
    the connection."""
    import anyio

    from finrec.serve import BodySizeLimit

    async def stalled_receive():
        await anyio.sleep(5)
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "path": "/recommendations", "headers": [(b"content-length", b"10")]}
    sent = _drive(BodySizeLimit(_reading_app, max_bytes=100, body_timeout=0.05), scope, stalled_receive)
    assert sent[0]["status"] == 408


def test_a_trickling_body_gets_408_at_the_total_deadline():
    """One byte at a time, each well within the deadline, does not reset it: the whole body must be
    in ``body_timeout`` seconds after the request started."""
    import anyio

    from finrec.serve import BodySizeLimit

    async def trickle():
        await anyio.sleep(0.02)
        return {"type": "http.request", "body": b" ", "more_body": True}

    scope = {"type": "http", "path": "/recommendations", "headers": [(b"content-length", b"90")]}
    start = time.monotonic()
    sent = _drive(BodySizeLimit(_reading_app, max_bytes=100, body_timeout=0.3), scope, trickle)
    assert sent[0]["status"] == 408
    assert 0.25 < time.monotonic() - start < 1.0
    assert b"0.3 s" in sent[1]["body"]


def test_max_requests_spares_the_liveness_probes():
    """Past ``max_requests`` requests in progress a new one gets 503 at once, but /health and
    /ready are not counted and still reach the app."""
    import anyio

    from finrec.serve import BodySizeLimit

    async def main():
        gate = anyio.Event()
        statuses = {}

        async def app(scope, receive, send):
            if scope["path"] == "/slow":
                await gate.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        limit = BodySizeLimit(app, max_bytes=100, body_timeout=10, max_requests=2)

        async def request(name, path):
            async def receive():
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message):
                if message["type"] == "http.response.start":
                    statuses[name] = message["status"], dict(message["headers"])

            await limit({"type": "http", "path": path, "headers": []}, receive, send)

        async with anyio.create_task_group() as tg:
            tg.start_soon(request, "slow1", "/slow")
            tg.start_soon(request, "slow2", "/slow")
            await anyio.sleep(0.05)
            assert limit.in_progress == 2
            await request("third", "/recommendations")
            await request("health", "/health")
            await request("ready", "/ready")
            gate.set()
        await request("after", "/recommendations")
        return statuses, limit.in_progress

    statuses, left = anyio.run(main)
    assert statuses["third"][0] == 503 and statuses["third"][1][b"retry-after"] == b"1"
    assert statuses["health"][0] == statuses["ready"][0] == 200
    assert statuses["slow1"][0] == statuses["slow2"][0] == statuses["after"][0] == 200
    assert left == 0


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"body_timeout": 0}, "body_timeout must be a positive number, got '0'"),
        ({"body_timeout": float("nan")}, "body_timeout"),
        ({"max_requests": 2.5}, "max_requests must be a positive integer"),
        ({"max_requests": True}, "max_requests"),
    ],
)
def test_limits_are_validated(tmp_path, kwargs, words):
    from finrec.errors import ConfigError
    from finrec.serve import create_app

    with pytest.raises(ConfigError, match=words):
        create_app(tmp_path, **kwargs)


def test_limits_from_the_environment_are_validated(tmp_path, monkeypatch, capsys):
    from finrec.cli import main

    monkeypatch.setenv("FINREC_SERVE_MAX_REQUESTS", "many")
    assert main(["serve", "--model", str(tmp_path), "--port", str(free_port())]) == 2
    assert "FINREC_SERVE_MAX_REQUESTS must be a positive integer, got 'many'" in capsys.readouterr().err


def test_a_lone_surrogate_in_a_response_is_escaped_not_a_500():
    """The last line behind the request checks: a string no UTF-8 encoder takes still renders."""
    from finrec.serve import SafeJSONResponse

    assert SafeJSONResponse({"detail": "unknown 'C\ud800'"}).body == b'{"detail":"unknown \'C\\ud800\'"}'
    assert SafeJSONResponse({"detail": "Zürich"}).body == '{"detail":"Zürich"}'.encode()
