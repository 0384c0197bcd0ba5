"""Training: a validation split by customer, batches with role-coded targets, early stopping on
validation nDCG, and a ``TrainedModel`` holding everything the artifact needs.

>>> trained = fit(dataset, Config())
>>> scores = trained.score(dataset.customers, dataset.holdings)   # cosine [n, P]

``fit`` (in memory) and ``finrec.training.stream.StreamingSource`` (in chunks) only prepare
different data; both hand it to ``train_model``, the one routine that builds, compiles and fits.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import pandas as pd

from finrec.config import Config, TrainConfig, checked
from finrec.data import schema as S
from finrec.data.compliance import customer_profile
from finrec.data.ids import is_in
from finrec.data.io import Dataset
from finrec.data.split import split_customer_ids
from finrec.errors import ConfigError, DataError, safe_text
from finrec.evaluate.metrics import summarize
from finrec.features import FeaturePipeline
from finrec.history_features import earlier_months
from finrec.model import losses as L
from finrec.model.two_tower import build_two_tower, customer_embeddings, product_embeddings
from finrec.training.calibration import Calibration, adoption_knots, fit_calibration, log_loss
from finrec.training.trees import BLEND_WEIGHTS, TreeBlend, fit_adoption_model, fit_teacher, teacher_targets

log = logging.getLogger(__name__)


@dataclass
class TrainingExamples:
    """One row per (customer, adopted product): the customer's input row and the product index,
    plus per-customer masks of products that are never negatives (held, other adoptions, or a
    product nobody adopted or holds: a launch)."""

    inputs: dict[str, np.ndarray]  # customer inputs, [n_customers, ...]
    customer_rows: np.ndarray  # int [N]
    positives: np.ndarray  # int [N]
    never_negative: np.ndarray  # bool [n_customers, P]
    soft_targets: np.ndarray | None = None  # float32 [n_customers, P]: a teacher's q (losses.Distillation)

    def __len__(self) -> int:
        return len(self.positives)

    @staticmethod
    def join(parts: list[TrainingExamples]) -> TrainingExamples:
        """The examples of ``parts`` in order, each part's customers' rows after the previous
        parts' (copied once: joining month by month would copy the inputs once per month)."""
        first = parts[0]
        if any((p.soft_targets is None) != (first.soft_targets is None) for p in parts):
            raise ValueError("cannot join examples with and without a teacher's targets")
        offsets = np.cumsum([0] + [len(p.never_negative) for p in parts[:-1]])
        return TrainingExamples(
            {name: np.concatenate([p.inputs[name] for p in parts]) for name in first.inputs},
            np.concatenate([p.customer_rows + offset for p, offset in zip(parts, offsets, strict=True)]),
            np.concatenate([p.positives for p in parts]),
            np.concatenate([p.never_negative for p in parts]),
            None if first.soft_targets is None else np.concatenate([p.soft_targets for p in parts]),
        )

    def drop_remainder(self, multiple: int) -> None:
        """Keep a multiple of ``multiple`` examples (data parallelism: the device count)."""
        keep = len(self) - len(self) % multiple
        self.customer_rows, self.positives = self.customer_rows[:keep], self.positives[:keep]


def build_examples(
    pipeline: FeaturePipeline, dataset: Dataset, history_reference: int | None = None
) -> TrainingExamples:
    """``history_reference``: see ``FeaturePipeline.transform_customers`` (a streamed piece)."""
    cid = dataset.schema.customers.id
    customers = dataset.customers
    inputs = pipeline.transform_customers(
        customers, dataset.holdings, history=dataset.holdings_history, history_reference=history_reference
    )
    rows, positives = example_pairs(pipeline, dataset)
    held = pipeline.holdings_matrix(customers[cid].to_numpy(), dataset.holdings)
    adopted = pipeline.holdings_matrix(customers[cid].to_numpy(), dataset.interactions)
    # An adoption of a held product is not a negative example either way; keep it as a positive.
    # A product nobody adopted and nobody holds (a launch) was not on offer: never a negative
    # either, or every example would push it below the whole catalogue and its attributes could
    # not lift it (benchmarks/cold_products.py). One that customers hold but none adopted is on
    # offer and unpopular: an ordinary negative (on the `small` bank, masking such a product cost
    # one seed 0.022 nDCG@5). A streamed piece judges holders within the piece.
    unavailable = (np.asarray(pipeline.product_popularity_) == 0) & ~held.any(axis=0)
    never_negative = held | adopted | unavailable[None, :]
    return TrainingExamples(inputs, rows, positives, never_negative)


def example_pairs(pipeline: FeaturePipeline, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(customer rows, product positions), int64 [n]: one training example per adoption of a
    known product by a customer of ``dataset`` (``build_examples``' examples, without their
    features: what a streamed fit counts up front)."""
    customers = dataset.customers[dataset.schema.customers.id]
    rows = pd.Index(customers.astype(str)).get_indexer(dataset.interactions[S.CUSTOMER_ID].astype(str))
    positives = pipeline.product_positions(dataset.interactions[S.PRODUCT_ID].to_numpy())
    keep = (rows >= 0) & (positives >= 0)
    return rows[keep].astype("int64"), positives[keep].astype("int64")


class TrainingBatches(keras.utils.PyDataset):
    """Shuffled batches ``(customer inputs, y_true)`` with ``y_true`` [B, P] role-coded as in
    ``finrec.model.losses``; for the sampled loss, ``num_negatives`` products per example are
    drawn from ``q`` (without replacement) and marked ``SAMPLED``."""

    def __init__(
        self,
        examples: TrainingExamples,
        batch_size: int,
        rng: np.random.Generator,
        sample_from: np.ndarray | None = None,
        num_negatives: int = 0,
        shuffle: bool = True,
    ):
        super().__init__()
        self.examples = examples
        self.batch_size = batch_size
        self.rng = rng
        self.sample_from = sample_from
        self.num_negatives = num_negatives
        self.shuffle = shuffle
        self.order = rng.permutation(len(examples)) if shuffle else np.arange(len(examples))

    def __len__(self) -> int:
        return math.ceil(len(self.examples) / self.batch_size)

    def __getitem__(self, index: int):
        return self.batch_of(self.order[index * self.batch_size : (index + 1) * self.batch_size])

    def batch_of(self, batch: np.ndarray):
        """``(x, y)`` for the examples numbered ``batch`` (int [B])."""
        rows = self.examples.customer_rows[batch]
        positives = self.examples.positives[batch]
        x = {name: values[rows] for name, values in self.examples.inputs.items()}
        y = np.where(self.examples.never_negative[rows], L.MASKED, L.OTHER).astype("float32")
        if self.sample_from is not None:
            y[self._sampled(len(batch), y.shape[1])] = L.SAMPLED
            y[self.examples.never_negative[rows]] = L.MASKED
        y[np.arange(len(batch)), positives] = L.POSITIVE
        if self.examples.soft_targets is not None:
            y = np.concatenate([y, self.examples.soft_targets[rows]], axis=1)
        return x, y

    def _sampled(self, n: int, n_products: int) -> np.ndarray:
        """bool [n, P]: ``num_negatives`` products per row drawn without replacement from q."""
        keys = np.log(self.rng.random((n, n_products))) / self.sample_from  # Efraimidis-Spirakis
        k = min(self.num_negatives, n_products)
        top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
        chosen = np.zeros((n, n_products), dtype=bool)
        chosen[np.arange(n)[:, None], top] = True
        return chosen

    def on_epoch_end(self):
        if self.shuffle:
            self.order = self.rng.permutation(len(self.examples))

    def tf_example_numbers(self):
        """Endless ``tf.data.Dataset`` of batches of example numbers (int64 [<= B]): each epoch
        a permutation of all examples, drawn in the graph from a seed taken from ``rng``. A
        Python generator anywhere in a pipeline slowed every TensorFlow training step from 43
        to 66-90 ms on 2 cores, even one called once per epoch."""
        import tensorflow as tf

        seed = int(self.rng.integers(2**31 - 1))
        n, size, n_batches = len(self.examples), self.batch_size, len(self)

        def epoch(number):
            order = tf.range(n, dtype=tf.int64)
            if self.shuffle:
                order = tf.random.experimental.stateless_shuffle(
                    order, seed=tf.stack([tf.constant(seed, tf.int64), number])
                )
            return tf.data.Dataset.range(n_batches).map(lambda i: order[i * size : (i + 1) * size])

        return tf.data.Dataset.range(2**62).flat_map(epoch)

    def as_tf_dataset(self):
        """The batches of ``batch_of`` as an endless ``tf.data.Dataset`` for the TensorFlow
        backend (fit it with ``steps_per_epoch=len(self)``: Keras ends an epoch after that many
        steps without exhausting the data). Keras feeds a ``PyDataset`` to TensorFlow through
        ``from_generator``, converting every batch in Python: on 2 cores that halved the
        training throughput (benchmarks/throughput.py); here the shuffle, the slicing and the
        gathers all run in the graph. None for the sampled loss, whose negatives are drawn per
        batch in numpy."""
        if self.sample_from is not None:
            return None
        import tensorflow as tf

        tables = (
            self.examples.inputs,
            self.examples.customer_rows,
            self.examples.positives,
            self.examples.never_negative,
        )
        soft = self.examples.soft_targets
        if soft is not None:
            tables = (*tables, soft)

        def gather(batch, tables):  # batch_of, in the graph
            inputs, customer_rows, positives, never_negative = tables[:4]
            rows = tf.gather(customer_rows, batch)
            x = {name: tf.gather(values, rows) for name, values in inputs.items()}
            y = tf.where(tf.gather(never_negative, rows), L.MASKED, L.OTHER)
            picks = tf.stack([tf.range(tf.size(batch, out_type=tf.int64)), tf.gather(positives, batch)], axis=1)
            y = tf.tensor_scatter_nd_update(y, picks, tf.fill(tf.shape(batch), L.POSITIVE))
            if soft is not None:
                y = tf.concat([y, tf.gather(tables[4], rows)], axis=1)
            return x, y

        # The tables travel as a repeated dataset element, as Keras does for arrays, rather than
        # as constants captured by the map function (which tf.data would serialize).
        batches = tf.data.Dataset.zip((self.tf_example_numbers(), tf.data.Dataset.from_tensors(tables).repeat()))
        options = tf.data.Options()
        options.experimental_optimization.apply_default_optimizations = False
        batches = batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE).with_options(options)
        return batches.prefetch(tf.data.AUTOTUNE)


class RankingValidation(keras.callbacks.Callback):
    """Adds ``val_ndcg@k`` (and the other ranking metrics) to the epoch logs, so that
    ``EarlyStopping`` can watch it."""

    def __init__(self, inputs: dict[str, np.ndarray], relevant: np.ndarray, excluded: np.ndarray, k: int):
        super().__init__()
        self.inputs, self.relevant, self.excluded, self.k = inputs, relevant, excluded, k

    def on_epoch_end(self, epoch, logs=None):
        scores = customer_embeddings(self.model, self.inputs) @ product_embeddings(self.model).T
        metrics = summarize(scores, self.relevant, self.excluded, k=self.k)
        if logs is not None:
            for name, value in metrics.items():
                if name != "customers":
                    logs[f"val_{name}"] = float(value)


@dataclass
class TrainedModel:
    """A fitted model with its pipeline: what ``finrec.artifacts`` saves and loads."""

    model: keras.Model
    pipeline: FeaturePipeline
    config: Config
    products: pd.DataFrame
    history: dict[str, list[float]] = field(default_factory=dict)
    product_embeddings_: np.ndarray | None = None
    calibration: Calibration | None = None  # scores -> adoption probabilities; None: the model has none
    blend: TreeBlend | None = None  # the tree teacher blended into the scores (model.tree_blend); None: towers alone

    def __post_init__(self):
        if self.product_embeddings_ is None:
            self.product_embeddings_ = product_embeddings(self.model)

    def customer_embeddings(
        self,
        customers: pd.DataFrame,
        holdings: pd.DataFrame | None = None,
        history: pd.DataFrame | None = None,
        history_reference: int | None = None,
    ) -> np.ndarray:
        """float32 [n, D] through the Keras customer tower (``history``: their holdings_history;
        ``history_reference`` as in ``build_examples``)."""
        inputs = self.pipeline.transform_customers(
            customers, holdings, history=history, history_reference=history_reference
        )
        return customer_embeddings(self.model, inputs)

    def score(
        self, customers: pd.DataFrame, holdings: pd.DataFrame | None = None, history: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Cosine similarity of each customer with each product, float32 [n, P]; with a tree
        blend, ``(1 - weight) * cosine + weight * temperature * t(c)`` (``TreeBlend``)."""
        embeddings = self.customer_embeddings(customers, holdings, history)
        cosine = embeddings @ self.product_embeddings_.T
        if self.blend is None:
            return cosine
        held = self.pipeline.holdings_matrix(customers[self.pipeline.schema.customers.id].to_numpy(), holdings)
        # As in serving, customers who objected to profiling are not run through the trees.
        objected = customer_profile(customers, self.pipeline.full_schema.customers)["objected"]
        part = self.blend.part(customers, held, history, skip=objected)
        part = self.blend.with_launches(part, embeddings, self.product_embeddings_, held, skip=objected)
        return self.blend.cosine_part(cosine, held) + part


def make_loss(
    training: TrainConfig, positive_counts: np.ndarray, members: int = 1, distill: bool = False
) -> keras.losses.Loss:
    log_q = L.log_sampling_probability(positive_counts)
    if training.loss == "softmax":
        loss = L.CatalogueSoftmax(training.temperature)
    elif training.loss == "in_batch":
        loss = L.InBatchSoftmax(log_q, training.temperature)
    elif training.loss == "sampled":
        loss = L.SampledSoftmax(log_q, training.temperature)
    else:
        loss = L.HardNegativeTriplet(training.margin, training.hard_negatives)
    if distill:
        loss = L.Distillation(loss, training.distill)
    return L.MemberMean(loss, members) if members > 1 else loss


# Training steps per call of the compiled step at most (``steps_per_execution``).
MOST_STEPS_PER_EXECUTION = 1000


def steps_per_execution(steps_per_epoch: int, most: int = MOST_STEPS_PER_EXECUTION) -> int:
    """The largest divisor of ``steps_per_epoch`` up to ``most``: how many training steps Keras
    runs in one call of its compiled function on the tf.data feed.

    Each call cost ~12 ms of Python on 2 cores (cProfile), as much as a step of the default
    model: with one call per epoch the default bank's whole fit takes 0.77-0.80 of the time
    (``benchmarks/quality_default.py``, docs/benchmarks.md). A divisor, because Keras runs whole
    calls: 16 steps a call on a 47-step epoch would run 48 and start the next epoch's batches
    early. So the fit is step for step the same as one step a call (the same losses, to the last
    digit). ``most`` keeps a huge epoch's progress bar moving."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch!r}")
    return max(d for d in range(1, min(steps_per_epoch, most) + 1) if steps_per_epoch % d == 0)


def compile_for_training(
    model: keras.Model, training: TrainConfig, loss: keras.losses.Loss, steps_per_execution: int = 1
) -> None:
    """AdamW, with an exponential moving average of the weights when ``ema_momentum`` > 0.
    ``steps_per_execution``: training steps per call of the compiled step (see ``train_model``)."""
    optimizer = keras.optimizers.AdamW(
        training.learning_rate,
        weight_decay=training.weight_decay,
        use_ema=training.ema_momentum > 0,
        ema_momentum=training.ema_momentum or 0.99,
    )
    model.compile(optimizer=optimizer, loss=loss, steps_per_execution=steps_per_execution)
    # Keras on TensorFlow builds the optimizer inside the first traced training step; variables
    # created while tracing make tf.function trace the whole step a second time, about 5 s of
    # CPU per fit on 2 cores whatever the data size.
    model.optimizer.build(model.trainable_variables)


def ranking_targets(pipeline: FeaturePipeline, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(relevant, excluded), bool [n, P] in ``data``'s customer order: the products each customer
    adopted, and those held but not adopted (never ranked)."""
    ids = data.customers[data.schema.customers.id].to_numpy()
    relevant = pipeline.holdings_matrix(ids, data.interactions)
    return relevant, pipeline.holdings_matrix(ids, data.holdings) & ~relevant


def validation_setup(
    pipeline: FeaturePipeline,
    val_data: Dataset,
    training: TrainConfig,
    sample_from: np.ndarray | None,
    callbacks: list | None,
    distill: bool = False,
    earlier: list | tuple = (),
) -> tuple[list, TrainingBatches | None]:
    """(callbacks for ``model.fit``, its ``validation_data``): ranking metrics of the validation
    customers in the epoch logs, early stopping on them (or on the validation loss), then the
    caller's callbacks, which see those metrics. ``earlier``: the validation customers' earlier
    months (``history_features.earlier_months``), ranked beside their latest one."""
    val_examples = build_examples(pipeline, val_data)
    inputs, targets = [val_examples.inputs], [ranking_targets(pipeline, val_data)]
    for part, reference in earlier:
        inputs.append(build_examples(pipeline, part, history_reference=reference).inputs)
        targets.append(ranking_targets(pipeline, part))
    inputs = {name: np.concatenate([x[name] for x in inputs]) for name in inputs[0]}
    relevant, excluded = (np.concatenate(side) for side in zip(*targets, strict=True))
    k = training.eval_k
    monitor = f"val_ndcg@{k}" if training.monitor == "ndcg" else "val_loss"
    # With weight averaging, validation and early stopping judge the averaged weights.
    fit_callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if training.ema_momentum > 0 else []
    fit_callbacks += [
        RankingValidation(inputs, relevant, excluded, k),
        keras.callbacks.EarlyStopping(
            monitor=monitor,
            mode="max" if training.monitor == "ndcg" else "min",
            patience=training.patience,
            restore_best_weights=True,
            start_from_epoch=training.min_epochs,
        ),
        *(callbacks or []),
    ]
    validation_data = None
    if training.monitor == "loss":
        if distill:
            # The loss reads a teacher's columns; validation customers have none (the teacher
            # never saw them), so their soft term is 0 and the validation loss is the label's.
            val_examples.soft_targets = np.zeros(val_examples.never_negative.shape, dtype="float32")
        validation_data = TrainingBatches(
            val_examples,
            training.batch_size,
            np.random.default_rng(training.seed + 1),
            sample_from,
            training.num_negatives,
            shuffle=False,
        )
    return fit_callbacks, validation_data


def set_seed(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def sampling_distribution(training: TrainConfig, counts: np.ndarray) -> np.ndarray | None:
    """q [P] from which the sampled loss draws negatives (add-one smoothed popularity); None for
    the other losses."""
    if training.loss != "sampled":
        return None
    counts = np.asarray(counts, dtype="float64")
    return (counts + 1.0) / (counts + 1.0).sum()


def train_model(
    pipeline: FeaturePipeline,
    products: pd.DataFrame,
    val_data: Dataset,
    counts: np.ndarray,
    make_batches,
    config: Config,
    verbose: int | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    record: dict[str, list[float]] | None = None,
    val_earlier: list | tuple = (),
) -> TrainedModel:
    """The one fit routine: build the two towers over ``products``, compile with the configured
    loss, and fit the batches ``make_batches(sample_from)`` returns, validating on ``val_data``
    (and its customers' ``val_earlier`` months, see ``validation_setup``).

    ``counts`` [P] are the training positives per product (logQ and sampling); ``record`` adds
    entries to the history. The batches may offer ``as_tf_dataset()``: on TensorFlow that pure
    tf.data feed replaces Keras' Python generator (which slowed every step, see its docstring)."""
    training = config.training
    if numeric_bins_of(config) and pipeline.customer_bins_ is None:
        raise ConfigError(
            "model.numeric_encoding 'ple' needs quantile bins the feature pipeline did not fit "
            "(a pipeline built without numeric_bins): fit it with FeaturePipeline(..., numeric_bins=N)"
        )
    model = build_two_tower(
        pipeline, pipeline.transform_products(products), config.model, config.training.holdings_dropout
    )
    sample_from = sampling_distribution(training, counts)
    batches = make_batches(sample_from)
    distill = getattr(getattr(batches, "examples", None), "soft_targets", None) is not None
    to_tf = getattr(batches, "as_tf_dataset", None)
    feed = to_tf() if to_tf is not None and keras.backend.backend() == "tensorflow" else None
    compile_for_training(
        model,
        training,
        make_loss(training, counts, config.model.ensemble_size, distill),
        steps_per_execution=steps_per_execution(len(batches)) if feed is not None else 1,
    )
    all_callbacks, validation_data = validation_setup(
        pipeline, val_data, training, sample_from, callbacks, distill, val_earlier
    )
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    start = time.perf_counter()
    # shuffle=False: the batches already hold examples reshuffled every epoch; Keras would also
    # shuffle a PyDataset's batch order (not a tf.data one's), so both feeds train alike, and a
    # streamed one would load a piece per batch.
    history = model.fit(
        feed or batches,
        steps_per_epoch=len(batches) if feed else None,
        epochs=training.epochs,
        shuffle=False,
        validation_data=validation_data,
        callbacks=all_callbacks,
        verbose=verbose,
    )
    seconds = time.perf_counter() - start
    history_record = {name: [float(v) for v in values] for name, values in history.history.items()}
    history_record["fit_seconds"] = [seconds]
    history_record.update(record or {})
    return TrainedModel(model=model, pipeline=pipeline, config=config, products=products, history=history_record)


def fit(
    dataset: Dataset,
    config: Config | None = None,
    verbose: int | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    batch_multiple: int = 1,
    finish: bool = True,
) -> TrainedModel:
    """Train a two-tower model on ``dataset`` (a validation split of its customers is held out
    for early stopping). Same data, config and seed give the same model. Extra ``callbacks``
    (a progress bar, say) see the validation metrics in their epoch logs. ``finish=False`` stops
    once the validation customers have judged the model (its towers and blend): no calibration,
    no adoption model, no refit of the blend's trees, which a trial of ``finrec tune`` never uses.

    ``dataset`` may also be a ``finrec.training.stream.StreamingSource``: the tables are then
    read in chunks (data larger than memory). ``batch_multiple`` > 1 drops the last few examples
    so that every batch divides by it (data parallelism: the device count)."""
    if not isinstance(dataset, Dataset):
        if not callable(getattr(dataset, "fit", None)):
            # A notebook's DataFrame or dict of tables: a bare AttributeError ('... has no attribute fit').
            raise DataError(
                "dataset must be a finrec Dataset (finrec.data.io.load_dataset or validate_tables) or a "
                f"StreamingSource, got {type(dataset).__name__}"
            )
        return dataset.fit(config, verbose=verbose, callbacks=callbacks, batch_multiple=batch_multiple)
    config = checked(config)
    training = config.training
    set_seed(training.seed)
    rng = np.random.default_rng(training.seed)

    with_positives = dataset.interactions[S.CUSTOMER_ID].unique()
    if len(with_positives) < 10:
        raise DataError(
            f"interactions: only {len(with_positives)} customer(s) have interactions; training needs at least 10"
        )
    adopted = dataset.interactions[S.PRODUCT_ID].unique()
    if len(adopted) < 2 <= len(dataset.products):
        # Not refused (the rest still rank by their attributes), but not a model to trust silently.
        log.warning(
            "interactions: every adoption is of one product (%s) of the catalogue's %d: the model learns"
            " to put it first and orders the others by their attributes alone",
            safe_text(adopted[0], quote=True),
            len(dataset.products),
        )
    train_ids, val_ids = split_customer_ids(np.sort(with_positives.astype(str)), training.validation_fraction, rng)
    cid = dataset.schema.customers.id
    without_positives = dataset.customers[cid][~is_in(dataset.customers[cid], with_positives)].to_numpy(dtype=str)
    # The same share of the customers who adopted nothing is held out for the calibration, so
    # that its set has the population's mix; drawn from its own stream, training's draws are the
    # same as without it.
    quiet_train, quiet_val = _hold_out(
        np.sort(without_positives), training.validation_fraction, np.random.default_rng([training.seed, 1])
    )
    train_data = dataset.subset_customers(np.concatenate([train_ids, quiet_train]))
    val_data = dataset.subset_customers(val_ids)

    model_config = config.model
    pipeline = FeaturePipeline(
        dataset.schema,
        model_config.use_holdings,
        model_config.exclude_protected,
        model_config.history_lags,
        model_config.history_encoder,
        numeric_bins_of(config),
    ).fit(train_data)
    split_bins = model_config.split_bins if pipeline.customer_bins_ is not None else 0
    blend = wants_blend(model_config, dataset)
    # The training customers' earlier months (``history_months``) train the towers and the
    # teacher; the validation customers' are ranked beside their latest month, to stop the towers
    # and choose the blend on several times as many adoptions.
    earlier = earlier_months(train_data, training.history_months)
    val_earlier = earlier_months(val_data, training.history_months)
    teacher = None
    if training.distill > 0 or split_bins or blend:
        # Fitted on the training customers only: validation and calibration stay unseen.
        teacher = teacher_for(train_data, config, earlier)
        if split_bins:
            # Before the model is built: its PLE layer takes the bins.
            pipeline.add_split_bins(teacher.numeric_splits(split_bins))
    months = [(train_data, None), *earlier]
    parts = []
    for part, reference in months:
        parts.append(build_examples(pipeline, part, history_reference=reference))
        if training.distill > 0 and teacher is not None:
            parts[-1].soft_targets = teacher_targets(teacher, part, pipeline, reference)
    examples = TrainingExamples.join(parts)
    examples.drop_remainder(batch_multiple)
    counts = np.bincount(examples.positives, minlength=pipeline.n_products)
    log.info(
        "training on %d examples from %d customers and %d earlier month(s) (%d validation customers)",
        len(examples),
        len(train_ids),
        len(months) - 1,
        len(val_ids),
    )

    def make_batches(sample_from):
        size = effective_batch_size(training, len(examples), batch_multiple)
        return TrainingBatches(examples, size, rng, sample_from, training.num_negatives)

    trained = train_model(
        pipeline,
        dataset.products,
        val_data,
        counts,
        make_batches,
        config,
        verbose,
        callbacks,
        record={
            "train_examples": [float(len(examples))],
            "distilled": [float(examples.soft_targets is not None)],
            "earlier_months": [float(len(months) - 1)],
        },
        val_earlier=val_earlier,
    )
    if blend and teacher is not None:
        trained.blend = choose_blend(trained, teacher, val_data, earlier=val_earlier)
    if not finish:
        return trained
    # Where some customers adopted nothing, how likely each is to adopt at all is a model of its own
    # (``finrec.training.calibration``), fitted on the training customers like the teacher.
    adoption_model = adoption_model_for(train_data, config) if len(quiet_train) else None
    # No cross-fit here: without customers who adopted nothing in training there are (almost)
    # none among the calibration customers, and the adoption model is the training's to fit.
    trained.calibration = calibrate(
        trained,
        dataset.subset_customers(np.concatenate([val_ids, quiet_val])),
        adoption_model,
        fit_adoption=False,
        warn_if_all_adopted=False,
    )
    if trained.blend is not None and len(dataset.customers) <= REFIT_MAX_CUSTOMERS:
        trained.blend = refit_blend(trained.blend, dataset, config)
        trained.history["tree_blend_refit"] = [1.0]  # for the model-risk report's method section
    return trained


# Where the blend's teacher is refitted on every training customer (``refit_blend``): on small
# banks, where trees gain most from 25% more adopters and a refit costs a few seconds. On the
# 30,000-customer default bank (24,000 training customers) it gained nothing measurable and
# took training from 43.1 to 68.5 s (median of 3 seeds), past the 60 s target; on a bank with
# a history and 29,600 training customers it lost 0.0015-0.0022 nDCG@5 (2 seeds).
REFIT_MAX_CUSTOMERS = 20_000


def refit_blend(blend: TreeBlend, dataset: Dataset, config: Config) -> TreeBlend:
    """The blend with its teacher refitted on every training customer of ``dataset``. Its weight
    and the calibration were chosen with a teacher that never saw the validation customers, as
    they must be; the trees then learn from the 25% more adopters. ``fit`` refits only up to
    ``REFIT_MAX_CUSTOMERS`` (measurements in docs/benchmarks.md)."""
    return dataclasses.replace(
        blend, teacher=teacher_for(dataset, config, earlier_months(dataset, config.training.history_months))
    )


def teacher_for(dataset: Dataset, config: Config, earlier: list | tuple = ()):
    """The tree teacher of ``config``'s model fitted on ``dataset`` (and its ``earlier`` months):
    the lag features where the model reads the history, and the model's own protected-column and
    holdings options."""
    return fit_teacher(dataset, config.training.seed, earlier=earlier, **tree_options(config))


def adoption_model_for(dataset: Dataset, config: Config, max_rounds: int | None = None):
    """P(adopts anything) fitted on ``dataset`` (``fit_adoption_model``, at most ``max_rounds``
    rounds) with the options that bind the teacher (``teacher_for``)."""
    return fit_adoption_model(dataset, config.training.seed, max_rounds=max_rounds, **tree_options(config))


def tree_options(config: Config) -> dict:
    """What the model's options make of a tree model beside it: the lag features where the model
    reads the history, and its protected-column and holdings options (a column the model must
    not see, the trees must not see either)."""
    model_config = config.model
    return {
        "history_lags": model_config.history_lags if model_config.history_encoder != "none" else 0,
        "exclude_protected": model_config.exclude_protected,
        "use_holdings": model_config.use_holdings,
    }


def wants_blend(model_config, dataset: Dataset) -> bool:
    """Whether ``fit`` tries a tree blend: ``model.tree_blend`` ``always``, or ``auto`` on data
    with a holdings history that the model reads (its teacher then has the lag features)."""
    if model_config.tree_blend == "auto":
        history = dataset.holdings_history
        return history is not None and len(history) > 0 and model_config.history_encoder != "none"
    return model_config.tree_blend == "always"


def choose_blend(
    trained: TrainedModel,
    teacher,
    val_data: Dataset,
    weights: tuple[float, ...] = BLEND_WEIGHTS,
    earlier: list | tuple = (),
) -> TreeBlend | None:
    """The tree blend (``TreeBlend``) whose weights rank the validation customers best (nDCG at
    ``training.eval_k``; a tie goes to the smaller weight), or None when the weight is 0.
    ``earlier``: their earlier months (``history_features.earlier_months``), ranked beside the
    latest. First the weight of customers who hold nothing (``TreeBlend.cold_weight``), on the
    same customers with their holdings and history withheld, as new customers come; then the
    weight of the rest, with that one applied to the validation customers who hold nothing.
    The teacher never saw these customers; the towers' early stopping did, which favours the
    towers."""
    if list(teacher.pipeline_.product_ids_) != list(trained.pipeline.product_ids_):
        log.warning("tree blend skipped: the teacher's catalogue order differs from the model's")
        return None
    pipeline, training = trained.pipeline, trained.config.training
    parts = [(val_data, None), *earlier]
    relevant, excluded = (np.concatenate(side) for side in zip(*(ranking_targets(pipeline, p) for p, _ in parts)))
    k = training.eval_k

    def ndcg(cosine, unit, row_weights):
        w = row_weights[:, None]
        return summarize((1 - w) * cosine + w * unit, relevant, excluded, k=k)[f"ndcg@{k}"]

    cosine, unit, _ = _blend_inputs(trained, teacher, parts, withheld=True)
    found = {w: ndcg(cosine, unit, np.full(len(cosine), w)) for w in weights}
    cold = max(found, key=lambda w: (found[w], -w))
    log.info("tree blend for new customers: validation nDCG@%d by weight %s; chosen %s", k, _rounded(found), cold)
    cosine, unit, held = _blend_inputs(trained, teacher, parts, withheld=False)
    empty = ~held.any(axis=1)
    # Weight 0 is no blend at all: new customers then rank by the towers too.
    found = {w: ndcg(cosine, unit, np.where(empty, cold if w > 0 else 0.0, w)) for w in weights}
    best = max(found, key=lambda w: (found[w], -w))
    log.info("tree blend: validation nDCG@%d by weight %s; chosen %s", k, _rounded(found), best)
    trained.history["tree_blend_weight"] = [float(best)]
    trained.history["tree_blend_cold_weight"] = [float(cold) if best > 0 else 0.0]
    # The validation figure of the scores the model ships (the towers' own is val_ndcg@k):
    # what `finrec tune` ranks trials by.
    trained.history[f"blend_val_ndcg@{k}"] = [float(found[best])]
    return TreeBlend(teacher, float(best), training.temperature, float(cold)) if best > 0 else None


def _blend_inputs(trained: TrainedModel, teacher, parts, withheld: bool):
    """(cosine, temperature * t(c), held) over ``parts`` ((dataset, history reference) pairs),
    stacked: the towers' own cosine [n, P] whatever blend ``trained`` may already carry, the
    teacher's unit part [n, P] and the holdings bool [n, P]; ``withheld``: every customer as
    if new (no holdings, no history)."""
    pipeline, temperature = trained.pipeline, trained.config.training.temperature
    cosines, units, helds = [], [], []
    for part, reference in parts:
        ids = part.customers[part.schema.customers.id].to_numpy()
        holdings, history = (None, None) if withheld else (part.holdings, part.holdings_history)
        embeddings = trained.customer_embeddings(part.customers, holdings, history, reference)
        cosines.append(embeddings @ trained.product_embeddings_.T)
        # Validation customers are training data: whose data trains is the caller's choice
        # (``finrec train`` leaves out customers who objected to profiling), as for the towers and
        # the teacher.
        held = pipeline.holdings_matrix(ids, holdings)
        unit = TreeBlend(teacher, 1.0, temperature)
        tree = unit.part(part.customers, held, history, reference)
        units.append(unit.with_launches(tree, embeddings, trained.product_embeddings_, held))
        helds.append(held)
    return np.concatenate(cosines), np.concatenate(units), np.concatenate(helds)


def _rounded(found: dict) -> dict:
    return {w: round(v, 4) for w, v in found.items()}


SMALLEST_BATCH = 32


def effective_batch_size(training: TrainConfig, n_examples: int, multiple: int = 1) -> int:
    """``training.batch_size``, shrunk on small data so that an epoch has at least
    ``min_steps_per_epoch`` steps, never below ``SMALLEST_BATCH`` (and a multiple of
    ``multiple``, the devices of data parallelism)."""
    size = training.batch_size
    if training.min_steps_per_epoch > 0:
        size = min(size, max(SMALLEST_BATCH, n_examples // training.min_steps_per_epoch))
    return max(multiple, size - size % multiple)


def numeric_bins_of(config: Config) -> int:
    """The quantile bins the feature pipeline fits: only the piecewise-linear encoding uses them."""
    return config.model.numeric_bins if config.model.numeric_encoding == "ple" else 0


def _hold_out(ids: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``split_customer_ids`` that also accepts sets too small to split (all kept)."""
    if int(round(len(ids) * fraction)) in (0, len(ids)):
        return ids, ids[:0]
    return split_customer_ids(ids, fraction, rng)


# Fewest customers of each kind (who adopted something, who adopted nothing) for ``calibrate`` to
# cross-fit an adoption model of its own: each half then has 25 of each, a few trees' worth.
CROSS_FIT_MIN = 50


def cross_fitted_adoption(dataset: Dataset, adopted_any: np.ndarray, held: np.ndarray, config: Config) -> tuple:
    """(adoption model, its out-of-fold P(adopts anything) float [n], "") for the calibration
    customers of ``dataset`` (rows in its order; ``adopted_any`` bool [n], ``held`` bool [n, P]);
    (None, None, why) with fewer than ``CROSS_FIT_MIN`` of either kind, or where the out-of-fold
    probabilities predict no better than the rate (their log loss against the other half's rate);
    ``why`` is "" when every customer adopted something (nothing to say).

    Why cross-fitted: ``g`` (``adoption_knots``) must read probabilities of customers the model
    never saw, or it would trust the trees' fit to their own training data. So the customers are
    split in two halves; a model fitted on each half predicts the other, ``g`` is fitted on those
    predictions, and the model that ships is refitted on every customer with at most the halves'
    rounds (scikit-learn's ``CalibratedClassifierCV(ensemble=False)`` refits the same way)."""
    adopted_any = np.asarray(adopted_any, dtype=bool)
    quiet = int((~adopted_any).sum())
    if min(int(adopted_any.sum()), quiet) < CROSS_FIT_MIN:
        return (
            None,
            None,
            (
                f"{quiet} of these customers adopted nothing: too few to fit an adoption model (at least "
                f"{CROSS_FIT_MIN} of each kind, adopters and not), so the probabilities cannot tell who is likelier "
                "to adopt at all"
                if quiet
                else ""
            ),
        )
    ids = dataset.customers[dataset.schema.customers.id].to_numpy()
    # Halves drawn separately among adopters and the rest: both kinds in both halves.
    half = np.zeros(len(ids), dtype=bool)
    rng = np.random.default_rng([config.training.seed, 2])
    for kind in (adopted_any, ~adopted_any):
        rows = np.flatnonzero(kind)
        half[rng.permutation(rows)[: len(rows) // 2]] = True
    out_of_fold = np.empty(len(ids), dtype="float64")
    rate = np.empty(len(ids), dtype="float64")  # the other half's adoption rate: the model's rival
    rounds = []
    for side in (half, ~half):
        model = adoption_model_for(dataset.subset_customers(ids[~side]), config)
        rounds.append(model.best_iteration_)
        rows = np.flatnonzero(side)
        out_of_fold[rows] = model.adoption_probability(
            dataset.customers.iloc[rows], held=held[rows], history=dataset.holdings_history
        )
        rate[rows] = adopted_any[~side].mean()
    # Where adopting at all barely varies from customer to customer, trees fitted on a few
    # thousand customers learn noise; the model is kept only if its probabilities of each half,
    # mapped as they will be (``g``, fitted on the other half), predict that half better than its
    # rival, the other half's rate. Unmapped, their log loss refused a model that cut the error
    # by a third (2,000 customers, benchmarks/calibrate_refit.py seed 1): trees fitted on half
    # the data are off scale. Mapped by a g fitted on the same customers, noise passed.
    mapped = np.empty(len(ids), dtype="float64")
    for side in (half, ~half):
        x, y = adoption_knots(out_of_fold[~side], adopted_any[~side])
        mapped[side] = np.interp(out_of_fold[side], x, y)
    if log_loss(mapped, adopted_any) >= log_loss(rate, adopted_any):
        return (
            None,
            None,
            (
                f"{quiet} of these customers adopted nothing, but adoption models fitted on each half of them "
                "predicted the other half no better than its adoption rate, so none was kept: the probabilities "
                "take adopting at all as equally likely for everybody"
            ),
        )
    # The model that ships is no sharper than those ``g`` is fitted on: refitted freely, it went
    # on to 16 rounds where the halves had stopped at 1, and ``g``, fitted on their nearly flat
    # probabilities, stretched its spread into an error 11% above no adoption model at all.
    return adoption_model_for(dataset, config, max_rounds=max(1, *rounds)), out_of_fold, ""


def calibrate(
    trained: TrainedModel,
    dataset: Dataset,
    adoption_model=None,
    fit_adoption: bool = True,
    warn_if_all_adopted: bool = True,
) -> Calibration:
    """Fit ``trained``'s probability maps (``finrec.training.calibration``) on ``dataset``, whose
    customers the model must not have been trained on: every one of them is data, adopters of
    nothing included, except those who objected to profiling for marketing; products they hold
    are left out. ``adoption_model``: P(adopts anything),
    fitted on other customers (``adoption_model_for``); None keeps the one of ``trained``'s
    calibration, if it has one (``finrec calibrate`` refits the maps on new data). A model with
    none (trained by streaming, or on data where everybody adopted), or with one an earlier
    calibration cross-fitted, gets one cross-fitted on ``dataset`` (``cross_fitted_adoption``)
    where it has enough customers who adopted nothing, unless ``fit_adoption`` is False.
    ``warn_if_all_adopted``: a warning when every customer adopted something (the training's own
    calibration, on a table of adopters, has its adoption model for that instead)."""
    cid = dataset.schema.customers.id
    pipeline = trained.pipeline
    # Customers who objected to profiling for marketing are neither scored nor run through the
    # trees when served, so their outcomes are no data for the probabilities either.
    objected = customer_profile(dataset.customers, pipeline.full_schema.customers)["objected"]
    if objected.all():
        raise DataError(f"customers: all {len(objected)} objected to profiling for marketing; nothing to calibrate on")
    if objected.any():
        dataset = dataset.subset_customers(dataset.customers[cid].to_numpy()[~objected])
    ids = dataset.customers[cid].to_numpy()
    held = pipeline.holdings_matrix(ids, dataset.holdings)
    adopted = pipeline.holdings_matrix(ids, dataset.interactions)
    if warn_if_all_adopted and len(ids) and adopted.any(axis=1).all():
        # A tester calibrated on adopters alone: the probabilities came out 16% above what the
        # population then adopted, without a word.
        log.warning(
            "every one of the %s calibration customers adopted something: the probabilities will be too high for "
            "a population where some adopt nothing; calibrate on all of a period's held-out customers",
            f"{len(ids):,}",
        )
    log.info("calibrating on %s customers: scoring them", f"{len(ids):,}")
    scores = trained.score(dataset.customers, dataset.holdings, dataset.holdings_history)
    cross_fitted = False
    previous = getattr(trained, "calibration", None)
    # A cross-fitted adoption model was refitted on the customers of an earlier calibration: its
    # map must not be refitted on its own training customers, so each recalibration cross-fits
    # anew (a reviewer). One fitted beside the towers, on training customers, is kept.
    if adoption_model is None and previous is not None and not previous.adoption_cross_fitted:
        adoption_model = previous.adoption_model
    adoption = None
    if adoption_model is not None:
        adoption = adoption_model.adoption_probability(dataset.customers, held=held, history=dataset.holdings_history)
    note = ""
    if adoption_model is None and fit_adoption:
        log.info("fitting the adoption model (cross-fitted)")
        adoption_model, adoption, note = cross_fitted_adoption(dataset, adopted.any(axis=1), held, trained.config)
        cross_fitted = adoption_model is not None
    log.info("fitting each product's map over %s customer-product pairs", f"{int((~held).sum()):,}")
    calibration = fit_calibration(
        scores,
        adopted,
        held,
        list(pipeline.product_ids_),
        trained.config.training.temperature,
        adoption_model=adoption_model,
        adoption=adoption,
    )
    calibration.adoption_cross_fitted = cross_fitted
    calibration.adoption_note = note
    return calibration
