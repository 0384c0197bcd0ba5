"""Evaluate a trained model and the baselines on a dataset (seen or held-out customers).

For every customer with at least one interaction, all products except the ones they hold are
ranked; the interactions are the relevant products (metric definitions: ``metrics``).
"""

from __future__ import annotations

import numpy as np

from finrec.data.ids import as_arrow_text
from finrec.data.io import Dataset
from finrec.evaluate import baselines
from finrec.evaluate.metrics import metric_keys, summarize
from finrec.features import link_matrix


def ranking_task(
    pipeline, dataset: Dataset, products: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer ids, relevant bool [n, P], excluded bool [n, P]) for customers with interactions,
    over the pipeline's catalogue or the text ids ``products`` (``finrec compare``: two
    catalogues' union)."""
    cid = dataset.schema.customers.id
    ids = dataset.customers[cid].to_numpy()
    if products is None:
        relevant = pipeline.holdings_matrix(ids, dataset.interactions)
        held = pipeline.holdings_matrix(ids, dataset.holdings)
    else:
        catalogue = as_arrow_text(products)
        relevant, held = (
            link_matrix(ids, catalogue, dataset.interactions),
            link_matrix(ids, catalogue, dataset.holdings),
        )
    keep = (relevant & ~held).any(axis=1)
    return ids[keep], relevant[keep], (held & ~relevant)[keep]


def unknown_adoptions(pipeline, dataset: Dataset) -> dict[str, int]:
    """``{product id: adoptions}`` of the data's interactions whose product the model's catalogue
    lacks (a product launched after the model was trained), by count then id. ``evaluate``
    counts them as misses; the model cannot rank them."""
    interactions = dataset.interactions
    if interactions is None or len(interactions) == 0:
        return {}
    known = set(str(p) for p in pipeline.product_ids_)
    counts = interactions["product_id"].astype(str).value_counts()
    unknown = {str(p): int(n) for p, n in counts.items() if p not in known}
    return dict(sorted(unknown.items(), key=lambda item: (-item[1], item[0])))


def adoptions_trained_on(dataset: Dataset, training_dir) -> int:
    """How many of the data's adoptions (customer, product pairs) are adoptions of the data the
    model was trained on (``training_dir``, the manifest's ``data_path``): the model learned them,
    so metrics over them are optimistic. 0 when that directory is gone or unreadable. Customers
    alone would not do: an out-of-time test side holds the training customers, with the
    adoptions of the month after."""
    from pathlib import Path

    from finrec.data import schema as S
    from finrec.data.io import find_table, read_table
    from finrec.errors import FinrecError

    interactions = dataset.interactions
    if training_dir is None or interactions is None or len(interactions) == 0:
        return 0
    try:
        path = find_table(Path(training_dir), S.INTERACTIONS, required=False)
        if path is None:
            return 0
        trained_on = read_table(path, (S.CUSTOMER_ID, S.PRODUCT_ID))
    except (FinrecError, OSError):
        return 0
    if not {S.CUSTOMER_ID, S.PRODUCT_ID} <= set(trained_on.columns):
        return 0

    def pairs(links):
        return links[S.CUSTOMER_ID].astype(str) + "\x1f" + links[S.PRODUCT_ID].astype(str)

    return int(pairs(interactions).isin(set(pairs(trained_on))).sum())


def evaluate(trained, dataset: Dataset, k: int = 5, seed: int = 0) -> dict[str, dict[str, float]]:
    """Metrics of the model and of the random, popularity and (with ground truth) oracle
    baselines: ``{"model": {...}, "popularity": {...}, ...}``; ``"model:cold"``: the model on
    the customers who hold nothing (new customers), when there are any.

    An adoption of a product the model does not know (``unknown_adoptions``: launched after
    it was trained) stays relevant and is never a hit, for the model and the baselines that rank
    its catalogue, as ``finrec compare`` grades it: dropping those adoptions from the task (as
    before) made last month's model look better on this month's data than the model trained
    with the new product (a tester's monthly cycle). The oracle ranks them from the truth."""
    pipeline = trained.pipeline
    catalogue = [str(p) for p in pipeline.product_ids_]
    unknown = list(unknown_adoptions(pipeline, dataset))
    products = [*catalogue, *unknown]
    if unknown:
        ids, relevant, excluded = ranking_task(pipeline, dataset, products=products)
    else:
        ids, relevant, excluded = ranking_task(pipeline, dataset)
    cid = dataset.schema.customers.id
    customers = dataset.customers.set_index(cid, drop=False).loc[ids].reset_index(drop=True)
    n, n_products = len(ids), len(catalogue)

    def padded(s: np.ndarray) -> np.ndarray:  # the unknown products: never ranked
        return np.hstack([s, np.full((len(s), len(unknown)), -np.inf)]) if unknown else s

    scores = {
        "model": padded(
            trained.score(customers, dataset.holdings, dataset.holdings_history) if n else np.zeros((0, n_products))
        ),
        "popularity": padded(baselines.popularity_scores(n, np.asarray(pipeline.product_popularity_))),
        "random": padded(baselines.random_scores(n, n_products, np.random.default_rng(seed))),
    }
    never = np.arange(len(products)) >= n_products if unknown else None
    unrankable = dict.fromkeys(scores, never)
    if dataset.ground_truth is not None:
        scores["oracle"] = baselines.oracle_scores(ids, products, dataset.ground_truth)
        unrankable["oracle"] = None
    results = {name: summarize(s, relevant, excluded, k=k, unrankable=unrankable[name]) for name, s in scores.items()}
    cold = ~pipeline.holdings_matrix(ids, dataset.holdings).any(axis=1) if n else np.zeros(0, bool)
    if cold.any():
        results["model:cold"] = summarize(scores["model"][cold], relevant[cold], excluded[cold], k=k, unrankable=never)
    return results


def format_table(results: dict[str, dict[str, float]], k: int) -> str:
    """A plain-text table: one row per ranker, one column per metric."""
    keys = metric_keys(k)
    # A k of 3+ digits makes "precision@100" longer than the usual column: the names ran together.
    width = max(13, 1 + max(len(key) for key in keys))
    header = f"{'ranker':<12}" + "".join(f"{key:>{width}}" for key in keys) + f"{'customers':>11}"
    lines = [header, "-" * len(header)]
    for name, metrics in results.items():
        values = "".join(f"{metrics[key]:>{width}.4f}" for key in keys)
        lines.append(f"{name:<12}" + values + f"{metrics['customers']:>11d}")
    return "\n".join(lines)
