"""Batch scoring: the top K products of every customer in a dataset, held products excluded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from finrec.data import schema as S
from finrec.data.io import Dataset, write_table
from finrec.recommend.index import top_k


def recommendations_frame(customer_ids: np.ndarray, product_ids: np.ndarray, index: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Long table ``customer_id, rank, product_id, score`` without the excluded (-inf) slots."""
    n, k = index.shape
    valid = np.isfinite(scores).ravel()
    return pd.DataFrame({
        S.CUSTOMER_ID: np.repeat(customer_ids, k)[valid],
        "rank": np.tile(np.arange(1, k + 1), n)[valid],
        S.PRODUCT_ID: product_ids[index.ravel()][valid],
        "score": scores.ravel()[valid].astype("float32"),
    })


def score_dataset(trained, dataset: Dataset, out: str | Path, k: int = 5) -> int:
    """Write the top ``k`` of every customer in ``dataset`` to ``out`` (CSV when the name ends
    in .csv, else Parquet). Returns the number of rows written."""
    cid = dataset.schema.customers.id
    ids = dataset.customers[cid].to_numpy()
    scores = trained.score(dataset.customers, dataset.holdings)
    held = trained.pipeline.holdings_matrix(ids, dataset.holdings)
    index, top = top_k(scores, held, k)
    frame = recommendations_frame(ids, np.asarray(trained.pipeline.product_ids_, dtype=object), index, top)
    write_table(frame, out)
    return len(frame)
