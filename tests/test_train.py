"""Training details: batches, sampled negatives, callbacks."""

import keras
import numpy as np

from finrec.config import Config, TrainConfig
from finrec.features import FeaturePipeline
from finrec.model import losses as L
from finrec.train import TrainingBatches, build_examples, fit


def test_batches_code_roles_and_sample_negatives(small_dataset):
    pipeline = FeaturePipeline(small_dataset.schema).fit(small_dataset)
    examples = build_examples(pipeline, small_dataset)
    q = np.full(pipeline.n_products, 1 / pipeline.n_products)
    batches = TrainingBatches(examples, 64, np.random.default_rng(0), sample_from=q, num_negatives=4)
    x, y = batches[0]
    rows = examples.customer_rows[batches.order[:64]]
    assert (y == L.POSITIVE).sum(axis=1).tolist() == [1] * 64
    # held products and other adoptions are masked, never sampled as negatives
    assert (y[examples.never_negative[rows] & (y != L.POSITIVE)] == L.MASKED).all()
    sampled = (y == L.SAMPLED).sum(axis=1)
    assert sampled.max() <= 4 and sampled.mean() > 2
    assert set(x) == set(examples.inputs)


def test_fit_runs_caller_callbacks_with_validation_metrics(small_dataset):
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(dict(logs or {}))

    config = Config(training=TrainConfig(epochs=1, batch_size=256)).validate()
    fit(small_dataset, config, verbose=0, callbacks=[Spy()])
    assert len(seen) == 1 and "val_ndcg@5" in seen[0]
