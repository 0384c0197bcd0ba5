"""Training: a validation split by customer, batches with role-coded targets, early stopping on
validation nDCG, and a ``TrainedModel`` holding everything the artifact needs.

>>> trained = fit(dataset, Config())
>>> scores = trained.score(dataset.customers, dataset.holdings)   # cosine [n, P]
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import pandas as pd

from finrec.config import Config, TrainConfig
from finrec.data import schema as S
from finrec.data.io import Dataset
from finrec.data.split import split_customer_ids
from finrec.errors import DataError
from finrec.evaluate.metrics import summarize
from finrec.features import FeaturePipeline
from finrec.model import losses as L
from finrec.model.two_tower import build_two_tower, customer_embeddings, product_embeddings

log = logging.getLogger(__name__)


@dataclass
class TrainingExamples:
    """One row per (customer, adopted product): the customer's input row and the product index,
    plus per-customer masks of products that are never negatives (held or other adoptions)."""

    inputs: dict[str, np.ndarray]  # customer inputs, [n_customers, ...]
    customer_rows: np.ndarray  # int [N]
    positives: np.ndarray  # int [N]
    never_negative: np.ndarray  # bool [n_customers, P]

    def __len__(self) -> int:
        return len(self.positives)


def build_examples(pipeline: FeaturePipeline, dataset: Dataset) -> TrainingExamples:
    cid = dataset.schema.customers.id
    customers = dataset.customers
    inputs = pipeline.transform_customers(customers, dataset.holdings)
    rows = pd.Index(customers[cid].astype(str)).get_indexer(dataset.interactions[S.CUSTOMER_ID].astype(str))
    positives = pipeline.product_positions(dataset.interactions[S.PRODUCT_ID].to_numpy())
    keep = (rows >= 0) & (positives >= 0)
    held = pipeline.holdings_matrix(customers[cid].to_numpy(), dataset.holdings)
    adopted = pipeline.holdings_matrix(customers[cid].to_numpy(), dataset.interactions)
    # An adoption of a held product is not a negative example either way; keep it as a positive.
    return TrainingExamples(inputs, rows[keep].astype("int64"), positives[keep].astype("int64"), held | adopted)


class TrainingBatches(keras.utils.PyDataset):
    """Shuffled batches ``(customer inputs, y_true)`` with ``y_true`` [B, P] role-coded as in
    ``finrec.model.losses``; for the sampled loss, ``num_negatives`` products per example are
    drawn from ``q`` (without replacement) and marked ``SAMPLED``."""

    def __init__(self, examples: TrainingExamples, batch_size: int, rng: np.random.Generator,
                 sample_from: np.ndarray | None = None, num_negatives: int = 0, shuffle: bool = True):
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
        batch = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        rows = self.examples.customer_rows[batch]
        positives = self.examples.positives[batch]
        x = {name: values[rows] for name, values in self.examples.inputs.items()}
        y = np.where(self.examples.never_negative[rows], L.MASKED, L.OTHER).astype("float32")
        if self.sample_from is not None:
            y[self._sampled(len(batch), y.shape[1])] = L.SAMPLED
            y[self.examples.never_negative[rows]] = L.MASKED
        y[np.arange(len(batch)), positives] = L.POSITIVE
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

    def __post_init__(self):
        if self.product_embeddings_ is None:
            self.product_embeddings_ = product_embeddings(self.model)

    def customer_embeddings(self, customers: pd.DataFrame, holdings: pd.DataFrame | None = None) -> np.ndarray:
        """float32 [n, D] through the Keras customer tower."""
        return customer_embeddings(self.model, self.pipeline.transform_customers(customers, holdings))

    def score(self, customers: pd.DataFrame, holdings: pd.DataFrame | None = None) -> np.ndarray:
        """Cosine similarity of each customer with each product: float32 [n, P]."""
        return self.customer_embeddings(customers, holdings) @ self.product_embeddings_.T


def _loss(training: TrainConfig, positive_counts: np.ndarray) -> keras.losses.Loss:
    log_q = L.log_sampling_probability(positive_counts)
    if training.loss == "softmax":
        return L.CatalogueSoftmax(training.temperature)
    if training.loss == "in_batch":
        return L.InBatchSoftmax(log_q, training.temperature)
    if training.loss == "sampled":
        return L.SampledSoftmax(log_q, training.temperature)
    return L.HardNegativeTriplet(training.margin, training.hard_negatives)


def compile_for_training(model: keras.Model, training: TrainConfig, loss: keras.losses.Loss) -> None:
    """AdamW, with an exponential moving average of the weights when ``ema_momentum`` > 0."""
    optimizer = keras.optimizers.AdamW(training.learning_rate, weight_decay=training.weight_decay,
                                       use_ema=training.ema_momentum > 0, ema_momentum=training.ema_momentum or 0.99)
    model.compile(optimizer=optimizer, loss=loss)


def validation_setup(pipeline: FeaturePipeline, val_data: Dataset, training: TrainConfig,
                     sample_from: np.ndarray | None, callbacks: list | None) -> tuple[list, TrainingBatches | None]:
    """(callbacks for ``model.fit``, its ``validation_data``): ranking metrics of the validation
    customers in the epoch logs, early stopping on them (or on the validation loss), then the
    caller's callbacks, which see those metrics."""
    cid = val_data.schema.customers.id
    val_examples = build_examples(pipeline, val_data)
    val_ids = val_data.customers[cid].to_numpy()
    relevant = pipeline.holdings_matrix(val_ids, val_data.interactions)
    excluded = pipeline.holdings_matrix(val_ids, val_data.holdings) & ~relevant
    k = training.eval_k
    monitor = f"val_ndcg@{k}" if training.monitor == "ndcg" else "val_loss"
    # With weight averaging, validation and early stopping judge the averaged weights.
    fit_callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if training.ema_momentum > 0 else []
    fit_callbacks += [
        RankingValidation(val_examples.inputs, relevant, excluded, k),
        keras.callbacks.EarlyStopping(
            monitor=monitor, mode="max" if training.monitor == "ndcg" else "min",
            patience=training.patience, restore_best_weights=True,
        ),
        *(callbacks or []),
    ]
    validation_data = None
    if training.monitor == "loss":
        validation_data = TrainingBatches(val_examples, training.batch_size, np.random.default_rng(training.seed + 1),
                                          sample_from, training.num_negatives, shuffle=False)
    return fit_callbacks, validation_data


def set_seed(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def fit(dataset: Dataset, config: Config | None = None, verbose: int | None = None,
        callbacks: list[keras.callbacks.Callback] | None = None, batch_multiple: int = 1) -> TrainedModel:
    """Train a two-tower model on ``dataset`` (a validation split of its customers is held out
    for early stopping). Same data, config and seed give the same model. Extra ``callbacks``
    (a progress bar, say) see the validation metrics in their epoch logs.

    ``dataset`` may also be a ``finrec.data.stream.StreamingSource``: the tables are then read
    in chunks (data larger than memory). ``batch_multiple`` > 1 drops the last few examples so
    that every batch divides by it (data parallelism: the device count)."""
    if not isinstance(dataset, Dataset):
        return dataset.fit(config, verbose=verbose, callbacks=callbacks, batch_multiple=batch_multiple)
    config = (config or Config()).validate()
    training = config.training
    set_seed(training.seed)
    rng = np.random.default_rng(training.seed)

    with_positives = dataset.interactions[S.CUSTOMER_ID].unique()
    if len(with_positives) < 10:
        raise DataError(f"interactions: only {len(with_positives)} customer(s) have interactions; training needs at least 10")
    train_ids, val_ids = split_customer_ids(np.sort(with_positives.astype(str)), training.validation_fraction, rng)
    cid = dataset.schema.customers.id
    without_positives = dataset.customers[cid][~dataset.customers[cid].isin(with_positives)]
    train_data = dataset.subset_customers(np.concatenate([train_ids, without_positives.to_numpy(dtype=str)]))
    val_data = dataset.subset_customers(val_ids)

    pipeline = FeaturePipeline(dataset.schema, config.model.use_holdings, config.model.exclude_protected).fit(train_data)
    catalogue = pipeline.transform_products(dataset.products)
    model = build_two_tower(pipeline, catalogue, config.model)

    examples = build_examples(pipeline, train_data)
    if len(examples) % batch_multiple:
        keep = len(examples) - len(examples) % batch_multiple
        examples.customer_rows, examples.positives = examples.customer_rows[:keep], examples.positives[:keep]
    counts = np.bincount(examples.positives, minlength=pipeline.n_products)
    loss = _loss(training, counts)
    sample_from = (counts + 1.0) / (counts + 1.0).sum() if training.loss == "sampled" else None
    batches = TrainingBatches(examples, training.batch_size, rng, sample_from, training.num_negatives)
    compile_for_training(model, training, loss)
    all_callbacks, validation_data = validation_setup(pipeline, val_data, training, sample_from, callbacks)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    log.info("training on %d examples from %d customers (%d validation customers)", len(examples), len(train_ids), len(val_ids))
    start = time.perf_counter()
    history = model.fit(batches, epochs=training.epochs, validation_data=validation_data, callbacks=all_callbacks, verbose=verbose)
    seconds = time.perf_counter() - start
    record = {name: [float(v) for v in values] for name, values in history.history.items()}
    record["fit_seconds"] = [seconds]
    record["train_examples"] = [float(len(examples))]
    return TrainedModel(model=model, pipeline=pipeline, config=config, products=dataset.products, history=record)
