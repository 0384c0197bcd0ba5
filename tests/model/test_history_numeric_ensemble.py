"""History encoders, the piecewise-linear numeric embedding and the ensemble together in one
customer tower: trained briefly, the numpy serving tower equals Keras and a saved model loads
and scores the same."""

from __future__ import annotations

import numpy as np

from finrec.artifacts import load_model_dir, save_model_dir
from finrec.config import Config, ModelConfig, TrainConfig
from finrec.data import schema as S
from finrec.data.io import validate_tables
from finrec.data.synthetic import GeneratorSettings, generate
from finrec.model.towers import CUSTOMER_TOWER
from finrec.recommend.index import NumpyTower
from finrec.training.train import fit


def test_history_ple_and_ensemble_compose_and_survive_save_load(tmp_path):
    data = validate_tables(S.SYNTHETIC.schema(), generate(GeneratorSettings(n_customers=400, seed=3, months=3)))
    config = Config(
        model=ModelConfig(
            customer_widths=(16,),
            product_widths=(16,),
            embedding_dim=8,
            history_lags=3,
            history_encoder="events",
            numeric_encoding="ple",
            numeric_bins=4,
            ensemble_size=2,
        ),
        training=TrainConfig(epochs=1, batch_size=128, holdings_dropout=0.2),
    ).validate()
    trained = fit(data, config, verbose=0)

    tower = trained.model.get_layer(CUSTOMER_TOWER)
    names = [layer.name for layer in tower.layers]
    # every piece is in the tower: the history encoder and PLE before the concat, members after
    assert any("_hist_history" in n for n in names) and any("_numemb_" in n for n in names)
    assert f"{CUSTOMER_TOWER}_members" in names and trained.pipeline.customer_bins_ is not None

    inputs = trained.pipeline.transform_customers(data.customers, data.holdings, history=data.holdings_history)
    want = trained.customer_embeddings(data.customers, data.holdings, data.holdings_history)
    assert want.shape == (len(data.customers), 2 * 8)
    numpy_tower = NumpyTower.from_keras(trained.model)
    assert numpy_tower.members == 2
    np.testing.assert_allclose(numpy_tower(inputs), want, atol=1e-5)

    loaded = load_model_dir(save_model_dir(trained, tmp_path / "m")).trained
    assert loaded.pipeline.customer_bins_ == trained.pipeline.customer_bins_
    assert loaded.pipeline.history_ is not None
    np.testing.assert_allclose(
        loaded.score(data.customers, data.holdings, data.holdings_history),
        trained.score(data.customers, data.holdings, data.holdings_history),
        atol=1e-5,
    )
