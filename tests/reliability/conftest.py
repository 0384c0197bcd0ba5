"""Fixtures of the reliability suite: a small CSV copy of the test bank to damage, and one real
``finrec serve`` process (loopback, free port) shared by the REST, privacy and soak tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finrec.data import schema as S
from finrec.data.io import write_dataset

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # `import corpus` from the test modules

N_CUSTOMERS = 300
READY_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def csv_data_dir(tmp_path_factory, small_tables):
    """The first customers of the small bank (with their links), as CSV tables."""
    customers = small_tables["customers"].head(N_CUSTOMERS)
    keep = set(customers["customer_id"])
    tables = {name: (df[df["customer_id"].isin(keep)] if name not in ("customers", "products") and df is not None else df)
              for name, df in small_tables.items()}
    tables["customers"] = customers
    return write_dataset(tables, S.SYNTHETIC.schema(), tmp_path_factory.mktemp("csv") / "bank", fmt="csv")


@pytest.fixture
def damaged(csv_data_dir, tmp_path):
    """``damaged(case)``: a fresh copy of the CSV bank with ``case.damage`` applied; its path."""
    made = []

    def make(case) -> Path:
        made.append(case)
        target = tmp_path / f"data{len(made)}"
        shutil.copytree(csv_data_dir, target)
        case.damage(target)
        return target
    return make


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir, data_dir, log_path: Path):
    """Start ``finrec serve`` on a free loopback port; return (process, base url) once /ready is 200."""
    import httpx

    port = free_port()
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "finrec.cli", "-v", "serve", "--model", str(model_dir), "--data", str(data_dir),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}): {log_path.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_server(process)
            raise RuntimeError(f"the server was not ready after {READY_TIMEOUT_S}s")
        time.sleep(0.2)


def stop_server(process) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def server(model_dir, small_data_dir, tmp_path_factory):
    pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    log_path = tmp_path_factory.mktemp("reliability-serve") / "server.log"
    try:
        process, base = start_server(model_dir, small_data_dir, log_path)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield {"base": base, "pid": process.pid, "log": log_path}
    finally:
        stop_server(process)
