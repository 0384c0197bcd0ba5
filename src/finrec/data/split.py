"""Hold-out splits by customer, so that evaluation scores customers the model never saw."""

from __future__ import annotations

import numpy as np

from finrec.data.io import Dataset
from finrec.errors import ConfigError


def split_customer_ids(
    ids: np.ndarray, holdout_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle ``ids`` and cut off ``holdout_fraction`` of them. Returns (kept, held_out)."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ConfigError(f"holdout fraction must lie strictly between 0 and 1, got {holdout_fraction}")
    ids = np.asarray(ids)
    order = rng.permutation(len(ids))
    n_out = int(round(len(ids) * holdout_fraction))
    if n_out == 0 or n_out == len(ids):
        raise ConfigError(f"cannot hold out {holdout_fraction:.0%} of {len(ids)} customers: one side would be empty")
    return ids[np.sort(order[n_out:])], ids[np.sort(order[:n_out])]


def split_dataset(dataset: Dataset, holdout_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split a dataset into (train, held-out) by customer; products are shared."""
    train_ids, test_ids = split_customer_ids(dataset.customer_ids, holdout_fraction, np.random.default_rng(seed))
    return dataset.subset_customers(train_ids), dataset.subset_customers(test_ids)
