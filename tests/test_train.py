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


def test_a_product_nobody_adopted_is_never_a_negative(small_dataset):
    # A launch: product j has no adoptions (nor holders) in the training data. It was not on
    # offer, so no example may push it down; every other product stays a negative where not held.
    import dataclasses

    j_id = str(small_dataset.products.product_id.iloc[3])
    launch = dataclasses.replace(
        small_dataset,
        interactions=small_dataset.interactions[small_dataset.interactions.product_id.astype(str) != j_id],
        holdings=small_dataset.holdings[small_dataset.holdings.product_id.astype(str) != j_id],
    )
    pipeline = FeaturePipeline(launch.schema).fit(launch)
    j = int(pipeline.product_positions(np.array([j_id]))[0])
    examples = build_examples(pipeline, launch)
    assert examples.never_negative[:, j].all()
    x, y = TrainingBatches(examples, 64, np.random.default_rng(0))[0]
    assert (y[:, j] == L.MASKED).all() and (y == L.OTHER).any(axis=0).sum() == pipeline.n_products - 1
    # With the product adopted it is an ordinary negative again.
    full = build_examples(FeaturePipeline(small_dataset.schema).fit(small_dataset), small_dataset)
    assert not full.never_negative[:, j].all()
    # Held by some but adopted by none: on offer and unpopular, a negative for those without it.
    unpopular = dataclasses.replace(launch, holdings=small_dataset.holdings)
    kept = build_examples(FeaturePipeline(unpopular.schema).fit(unpopular), unpopular)
    holders = pipeline.holdings_matrix(unpopular.customers.customer_id.to_numpy(), unpopular.holdings)[:, j]
    assert holders.any() and (kept.never_negative[:, j] == holders).all()


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


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the tf.data feed is for the TensorFlow backend")
def test_soft_targets_travel_beside_the_roles_in_both_feeds(small_dataset):
    examples = _examples(small_dataset)
    n_products = examples.never_negative.shape[1]
    rng = np.random.default_rng(0)
    examples.soft_targets = rng.dirichlet(np.ones(n_products), size=len(examples.never_negative)).astype("float32")
    fed = TrainingBatches(examples, 100, np.random.default_rng(3))
    x, y = fed[0]
    rows = examples.customer_rows[fed.order[:100]]
    assert y.shape == (100, 2 * n_products)
    np.testing.assert_array_equal(y[:, n_products:], examples.soft_targets[rows])
    assert (y[:, :n_products] == L.POSITIVE).sum(axis=1).tolist() == [1] * 100
    twin = TrainingBatches(examples, 100, np.random.default_rng(3))
    first = next(iter(twin.tf_example_numbers())).numpy()
    _, tf_y = next(iter(TrainingBatches(examples, 100, np.random.default_rng(3)).as_tf_dataset()))
    np.testing.assert_array_equal(tf_y.numpy(), fed.batch_of(first)[1])


def test_steps_per_execution_is_the_largest_divisor_of_the_epoch():
    from finrec.training.train import steps_per_execution

    assert steps_per_execution(47) == 47  # a whole epoch per call
    assert steps_per_execution(1) == 1
    assert steps_per_execution(2400, most=1000) == 800  # divides the epoch: no step of the next
    assert steps_per_execution(1009, most=1000) == 1  # a prime past the cap: one step a call
    with pytest.raises(ValueError, match="got 0"):
        steps_per_execution(0)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the tf.data feed is for the TensorFlow backend")
def test_many_steps_per_call_train_exactly_as_one_step_per_call(small_dataset, fast_config, monkeypatch):
    from finrec.training import train as T

    config = fast_config.with_overrides(epochs=2)
    calls = fit(small_dataset, config, verbose=0)
    assert calls.model.steps_per_execution > 1
    monkeypatch.setattr(T, "steps_per_execution", lambda steps: 1)
    steps = fit(small_dataset, config, verbose=0)
    assert steps.model.steps_per_execution == 1
    assert calls.history["loss"] == steps.history["loss"]
    assert calls.history["val_ndcg@5"] == steps.history["val_ndcg@5"]


def test_effective_batch_size_keeps_enough_steps_per_epoch():
    from finrec.training.train import SMALLEST_BATCH, effective_batch_size

    floor = TrainConfig(batch_size=512, min_steps_per_epoch=50)
    assert effective_batch_size(floor, 100_000) == 512  # large data: the configured batch
    assert effective_batch_size(floor, 3_500) == 70  # a 5k-customer bank: 50 steps, not 7
    assert effective_batch_size(floor, 500) == SMALLEST_BATCH  # never below 32
    assert effective_batch_size(floor, 3_500, multiple=4) == 68  # data parallel: divides by the devices
    assert effective_batch_size(TrainConfig(batch_size=512, min_steps_per_epoch=0), 3_500) == 512  # off


def test_distilled_fit_records_the_teacher_and_a_plain_fit_does_not(small_dataset, fast_config):
    distilled = fit(small_dataset, fast_config.with_overrides(epochs=1, distill=0.5), verbose=0)
    plain = fit(small_dataset, fast_config.with_overrides(epochs=1, distill=0.0), verbose=0)
    assert distilled.history["distilled"] == [1.0] and plain.history["distilled"] == [0.0]
    assert distilled.model.loss.name.endswith("_distilled") and not plain.model.loss.name.endswith("_distilled")


def test_distilled_fit_can_stop_on_the_validation_loss(small_dataset, fast_config):
    # Validation customers have no teacher targets: their batches carry zero columns, so the
    # distilled loss reads the same [B, 2P] shape and reduces to the label's term there.
    config = fast_config.with_overrides(epochs=2, distill=0.5, monitor="loss")
    trained = fit(small_dataset, config, verbose=0)
    assert trained.history["distilled"] == [1.0]
    assert len(trained.history["val_loss"]) == 2 and all(np.isfinite(trained.history["val_loss"]))


def test_a_training_set_with_one_product_ever_adopted_is_warned_of(small_dataset, monkeypatch, caplog):
    """Trained without a word before (a tester): the model can only learn to put that product first."""
    import dataclasses

    from finrec.data import schema as S
    from finrec.training import train as T

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):  # the check runs before the split; the fit itself is not needed
        raise Stop

    monkeypatch.setattr(T, "split_customer_ids", stop)
    interactions = small_dataset.interactions
    first = interactions[S.PRODUCT_ID].iloc[0]
    for data, warned in [
        (dataclasses.replace(small_dataset, interactions=interactions[interactions[S.PRODUCT_ID] == first]), True),
        (small_dataset, False),
    ]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="finrec.training.train"), pytest.raises(Stop):
            fit(data, Config())
        message = f"every adoption is of one product ('{first}') of the catalogue's {len(small_dataset.products)}"
        assert (message in caplog.text) is warned
