"""A model saved with its monitoring reference (the shared ``trained`` model of tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def monitored_model_dir(tmp_path_factory, trained, small_dataset):
    from finrec.artifacts import save_model_dir
    from finrec.governance.monitor import reference_for

    return save_model_dir(
        trained, tmp_path_factory.mktemp("monitored") / "model", monitoring=reference_for(trained, small_dataset)
    )
