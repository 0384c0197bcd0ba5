"""Helpers shared by the tests of the numpy serving tower (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

import keras
import numpy as np


def randomize_batchnorm(tower: keras.Model, rng: np.random.Generator) -> None:
    """Moving stats start at mean 0 / variance 1: move them (and gamma, beta) so that the
    folding of the BatchNorm into the Dense kernels is actually exercised."""
    for layer in tower.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            d = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 1, d))
            layer.moving_variance.assign(rng.uniform(0.1, 4.0, d))
            layer.gamma.assign(rng.uniform(0.5, 2.0, d))
            layer.beta.assign(rng.normal(0, 0.5, d))
