"""Shared fixtures: a small synthetic bank and one model trained on it, built once per run."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Two workers share 2 cores (make test runs pytest -n auto): OpenMP libraries (LightGBM) that
# start a thread per core busy-wait on each other, 10x slower, so each worker gets one.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from finrec.data import schema as S
from finrec.data.io import validate_tables, write_dataset
from finrec.data.synthetic import GeneratorSettings, generate

SMALL = GeneratorSettings(n_customers=1500, seed=7)
CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright never downloads a browser here (`make chromium`)


@pytest.fixture(scope="session")
def small_tables():
    return generate(SMALL)


@pytest.fixture(scope="session")
def small_dataset(small_tables):
    return validate_tables(S.SYNTHETIC.schema(), small_tables)


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory, small_tables):
    return write_dataset(small_tables, S.SYNTHETIC.schema(), tmp_path_factory.mktemp("data") / "bank")


@pytest.fixture
def updated_bank(small_data_dir, tmp_path):
    """``updated_bank(edit)``: a copy of the small bank whose products table the bank changed
    after training (``edit(products) -> products``); its path."""
    import shutil

    from finrec.data.io import find_table, read_table, write_table

    made = []

    def make(edit) -> Path:
        made.append(edit)
        target = tmp_path / f"updated{len(made)}"
        shutil.copytree(small_data_dir, target)
        path = find_table(target, S.PRODUCTS)
        write_table(edit(read_table(path, (S.PRODUCT_ID,))), path)
        return target

    return make


@pytest.fixture(scope="session")
def withdrawn():
    """The product ``withdrawing_bank`` withdraws: the most adopted one, held by 164 customers."""
    return "SAV_BASIC"


@pytest.fixture
def withdrawing_bank(updated_bank, withdrawn):
    """``withdrawing_bank(value="no")``: a copy of the small bank whose products table has an
    ``on_offer`` column, named in schema.yaml after the model was trained, that marks ``withdrawn``
    with ``value`` (every other product "yes"), while its holdings and adoptions stay; its path."""
    import numpy as np
    import yaml

    def make(value="no") -> Path:
        data = updated_bank(
            lambda products: products.assign(on_offer=np.where(products.product_id == withdrawn, value, "yes"))
        )
        schema = yaml.safe_load((data / S.SCHEMA_FILE).read_text())
        schema[S.PRODUCTS]["on_offer"] = "on_offer"
        (data / S.SCHEMA_FILE).write_text(yaml.safe_dump(schema, sort_keys=False))
        return data

    return make


@pytest.fixture(scope="session")
def raise_the_bars():
    """An ``updated_bank`` edit, the tester's (2026-12, cases/i13): FUND_BOND's risk level 3 ->
    7, and a mortgage minimum income nobody has."""

    def edit(products):
        products = products.copy()
        products.loc[products.product_id == "FUND_BOND", "risk_level"] = 7
        products.loc[products.product_id == "MORT_FIXED25", "min_income"] = 10_000_000.0
        return products

    return edit


@pytest.fixture(scope="session")
def fast_config():
    from finrec.config import Config, ModelConfig, TrainConfig

    return Config(
        model=ModelConfig(customer_widths=(64, 32), product_widths=(32,), embedding_dim=16, tree_blend="auto"),
        # Fast: no tree teacher, no blend (this bank has no history) and the batch as given (the
        # defaults distil, blend and shrink the batch of small data; tests/test_trees.py,
        # test_train.py, recommend/test_tree_blend.py and every CLI run cover those paths).
        training=TrainConfig(epochs=5, batch_size=128, patience=2, distill=0.0, min_steps_per_epoch=0),
    ).validate()


@pytest.fixture(scope="session")
def trained(small_dataset, fast_config):
    from finrec.training.train import fit

    return fit(small_dataset, fast_config, verbose=0)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, trained):
    from finrec.artifacts import save_model_dir

    return save_model_dir(trained, tmp_path_factory.mktemp("models") / "model")


@pytest.fixture(scope="session")
def coded_education(small_dataset):
    """The small bank with ``education`` as integer codes 1..k, every 17th customer's missing: its
    ``dataset`` holds them as ``read_csv`` types such a column (float, NaN), and the customers
    whose code is known come as that float, as int (a file or chunk without a gap) and as text
    (a Parquet string column): ``as_float``, ``as_int``, ``as_text``."""
    import dataclasses
    from types import SimpleNamespace

    customers = small_dataset.customers
    codes = (customers["education"].astype("category").cat.codes + 1).astype("float64")
    codes.iloc[::17] = float("nan")
    known = customers[codes.notna()].assign(education=codes[codes.notna()]).reset_index(drop=True)
    return SimpleNamespace(
        dataset=dataclasses.replace(small_dataset, customers=customers.assign(education=codes)),
        as_float=known,
        as_int=known.astype({"education": "int64"}),
        as_text=known.astype({"education": "int64"}).astype({"education": str}),
    )


@pytest.fixture
def chromium():
    """A headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright), closed after
    the test; the test is skipped when either is missing."""
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (run `make chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def history_rec(small_dataset, fast_config):
    """A model with history features, on the small bank with a made-up past of 3 month-ends."""
    import dataclasses

    import numpy as np
    import pandas as pd

    from finrec.recommend.recommender import Recommender
    from finrec.training.train import fit

    rng = np.random.default_rng(0)
    h = small_dataset.holdings
    months = [pd.Timestamp("2026-01-31") + pd.offsets.MonthEnd(m) for m in range(3)]
    history = pd.concat(
        [h[rng.random(len(h)) < 0.5 + 0.2 * m].assign(**{S.AS_OF: month}) for m, month in enumerate(months)],
        ignore_index=True,
    )
    data = dataclasses.replace(small_dataset, holdings_history=history)
    trained = fit(data, fast_config.with_overrides(epochs=1), verbose=0)
    assert trained.pipeline.history_ is not None
    return Recommender(trained, data)
