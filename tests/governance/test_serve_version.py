"""Every answer of the API names the model version that produced it (in-process app)."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from finrec.governance.registry import Registry  # noqa: E402
from finrec.serve import MODEL_VERSION_HEADER, create_app  # noqa: E402


def ready(client: TestClient) -> None:
    deadline = time.monotonic() + 120
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_model_directory_is_its_own_version(model_dir, small_data_dir, small_dataset):
    with TestClient(create_app(model_dir, small_data_dir)) as client:
        ready(client)
        customer = str(small_dataset.customer_ids[0])
        response = client.post("/recommendations", json={"customer_id": customer, "k": 2})
        assert response.status_code == 200
        assert response.json()["model_version"] == model_dir.name == response.headers[MODEL_VERSION_HEADER]
        assert client.get("/products").headers[MODEL_VERSION_HEADER] == model_dir.name
        assert client.post("/recommendations", json={"customer_id": "nobody"}).headers[MODEL_VERSION_HEADER]


def test_the_registry_pointer_is_followed(model_dir, small_data_dir, small_dataset, tmp_path):
    registry = Registry(tmp_path / "reg")
    v1, v2 = registry.add(model_dir), registry.add(model_dir)
    registry.promote(v1)
    app = create_app(None, small_data_dir, registry_root=registry.root, poll_seconds=0.2)
    with TestClient(app) as client:
        ready(client)
        body = {"customer_id": str(small_dataset.customer_ids[0]), "k": 1}
        assert client.post("/recommendations", json=body).json()["model_version"] == v1
        registry.promote(v2)
        deadline = time.monotonic() + 60
        while client.post("/recommendations", json=body).json()["model_version"] != v2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.get("/ready").headers[MODEL_VERSION_HEADER] == v2
