"""Training details: batches, sampled negatives, callbacks."""

import keras
import numpy as np
import pytest

from finrec.config import Config, TrainConfig
from finrec.features import FeaturePipeline
from finrec.model import losses as L
from finrec.training.train import TrainingBatches, build_examples, fit


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


def test_fit_runs_caller_callbacks_with_validation_metrics(small_dataset, monkeypatch):
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(dict(logs or {}))

    traces = []
    if keras.backend.backend() == "tensorflow":
        # On TensorFlow the step's Python body runs only while tf.function traces it.
        from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

        step = TensorFlowTrainer.train_step
        monkeypatch.setattr(TensorFlowTrainer, "train_step", lambda self, data: traces.append(1) or step(self, data))
    config = Config(training=TrainConfig(epochs=1, batch_size=256)).validate()
    fit(small_dataset, config, verbose=0, callbacks=[Spy()])
    assert len(seen) == 1 and "val_ndcg@5" in seen[0]
    # One trace per fit: with the optimizer built inside the first step, its new variables made
    # tf.function trace the whole step twice (~5 s of every fit on 2 cores).
    assert len(traces) == (1 if keras.backend.backend() == "tensorflow" else 0)


def _examples(small_dataset):
    pipeline = FeaturePipeline(small_dataset.schema).fit(small_dataset)
    return build_examples(pipeline, small_dataset)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the tf.data feed is for the TensorFlow backend")
def test_tf_feed_shuffles_every_epoch_and_builds_the_numpy_batches(small_dataset):
    examples = _examples(small_dataset)
    fed = TrainingBatches(examples, 300, np.random.default_rng(4))
    numbers = iter(fed.tf_example_numbers())
    epochs = [np.concatenate([next(numbers).numpy() for _ in range(len(fed))]) for _ in range(3)]
    for order in epochs:  # each epoch: every example once, in batches of 300
        np.testing.assert_array_equal(np.sort(order), np.arange(len(examples)))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    again = iter(TrainingBatches(examples, 300, np.random.default_rng(4)).tf_example_numbers())
    np.testing.assert_array_equal(np.concatenate([next(again).numpy() for _ in range(len(fed))]), epochs[0])  # seeded

    twin = TrainingBatches(examples, 300, np.random.default_rng(4))  # same seed: same numbers
    batches = iter(twin.as_tf_dataset())
    for index in range(len(fed) + 2):  # across the first epoch boundary
        x, y = next(batches)
        want_x, want_y = fed.batch_of(epochs[index // len(fed)][(index % len(fed)) * 300 :][:300])
        np.testing.assert_array_equal(y.numpy(), want_y)
        for name in want_x:
            np.testing.assert_array_equal(x[name].numpy(), want_x[name])
    assert (
        TrainingBatches(
            examples, 300, np.random.default_rng(4), sample_from=np.full(25, 1 / 25), num_negatives=3
        ).as_tf_dataset()
        is None
    )  # sampled negatives stay in numpy


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the tf.data feed is for the TensorFlow backend")
def test_tf_dataset_feed_trains_as_well_as_the_python_feed(small_dataset, fast_config, monkeypatch):
    # The same examples per epoch, shuffled by another generator: equal quality, not weights.
    # Compared near the plateau (7 epochs): at 4 both still climb and the two shuffles differ by
    # ~0.03 on the bank with compliance columns (0.414 vs 0.381; at 7: 0.490 vs 0.468).
    config = fast_config.with_overrides(epochs=7)
    fed = fit(small_dataset, config, verbose=0).history["val_ndcg@5"]
    monkeypatch.setattr(TrainingBatches, "as_tf_dataset", lambda self: None)
    python_fed = fit(small_dataset, config, verbose=0).history["val_ndcg@5"]
    assert max(fed) > fed[0] and max(python_fed) > python_fed[0]  # both learn
    assert abs(max(fed) - max(python_fed)) < 0.03
