"""Fixtures of the reliability suite: a small CSV copy of the test bank to damage, and one real
``finrec serve`` process (loopback, free port) shared by the REST, privacy and soak tests."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from finrec.data import schema as S
from finrec.data.io import write_dataset
from finrec.serve_process import ServerProcess

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # `import corpus` from the test modules

N_CUSTOMERS = 300
READY_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def csv_data_dir(tmp_path_factory, small_tables):
    """The first customers of the small bank (with their links), as CSV tables."""
    customers = small_tables["customers"].head(N_CUSTOMERS)
    keep = set(customers["customer_id"])
    tables = {
        name: (df[df["customer_id"].isin(keep)] if name not in ("customers", "products") and df is not None else df)
        for name, df in small_tables.items()
    }
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


@pytest.fixture(scope="session")
def server(model_dir, small_data_dir, tmp_path_factory):
    pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    log_path = tmp_path_factory.mktemp("reliability-serve") / "server.log"
    with ServerProcess(model_dir, small_data_dir, log_path, verbose=True) as process:
        try:
            process.wait_ready(timeout=READY_TIMEOUT_S)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield {"base": process.base_url, "pid": process.pid, "log": log_path}
