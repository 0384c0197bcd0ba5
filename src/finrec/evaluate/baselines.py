"""Baselines every model is compared with. Each returns a score matrix [n, P] in catalogue
order; higher is better, and held products are excluded by the caller."""

from __future__ import annotations

import numpy as np
import pandas as pd

from finrec.data import schema as S


def random_scores(n_customers: int, n_products: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random scores: the floor any model must clear."""
    return rng.random((n_customers, n_products))


def popularity_scores(n_customers: int, product_counts: np.ndarray) -> np.ndarray:
    """Every customer gets the catalogue ranked by the number of training adoptions."""
    return np.broadcast_to(np.asarray(product_counts, dtype="float64"), (n_customers, len(product_counts)))


def oracle_scores(customer_ids: np.ndarray, product_ids: list[str], ground_truth: pd.DataFrame) -> np.ndarray:
    """The true adoption probability (synthetic data): the best ranking possible. Pairs absent
    from the ground truth (held products) score -inf."""
    scores = np.full((len(customer_ids), len(product_ids)), -np.inf)
    rows = pd.Index(np.asarray(customer_ids).astype(str)).get_indexer(ground_truth[S.CUSTOMER_ID].astype(str))
    cols = pd.Index(product_ids).get_indexer(ground_truth[S.PRODUCT_ID].astype(str))
    keep = (rows >= 0) & (cols >= 0)
    scores[rows[keep], cols[keep]] = ground_truth[S.PROBABILITY].to_numpy()[keep]
    return scores
