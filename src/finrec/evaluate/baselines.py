"""Baselines every model is compared with. Each returns a score matrix [n, P] in catalogue
order; higher is better, and held products are excluded by the caller."""

from __future__ import annotations

import numpy as np
import pandas as pd

from finrec.data import schema as S
from finrec.training.trees import OBJECTIVES, LightGBMBaseline, default_threads


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


# The tuned baseline's search space (issue 12): LightGBM's own defaults are one point of it.
TUNING_GRID = {
    "num_leaves": (7, 15, 31, 63),
    "min_data_in_leaf": (10, 20, 50, 100, 200),
    "learning_rate": (0.03, 0.05, 0.1),
    "feature_fraction": (0.6, 0.8, 1.0),
    "lambda_l2": (0.0, 1.0, 10.0),
}
# Tried first, whatever the budget: LightGBM's defaults, and the setting issue 12 found strong on
# the default bank (7 leaves, 100 per leaf, lr 0.05, features 0.8, L2 1).
TUNING_ANCHORS = (
    {"num_leaves": 31, "min_data_in_leaf": 20, "learning_rate": 0.1, "feature_fraction": 1.0, "lambda_l2": 0.0},
    {"num_leaves": 7, "min_data_in_leaf": 100, "learning_rate": 0.05, "feature_fraction": 0.8, "lambda_l2": 1.0},
)
PER_PRODUCT_ABOVE = 60  # products: above this, per-product binary models replace the multiclass one


class TunedLightGBM:
    """LightGBM tuned with a fixed budget: the baseline a bank's analysts would run.

    ``fit`` holds out ``validation_fraction`` of the training customers, fits one
    ``LightGBMBaseline`` per trial on the rest (each with its own early stopping), ranks every
    product the validation customers do not hold and keeps the parameters with the best
    nDCG@``k`` there (not the log loss: the task is ranking); then refits on all the training
    customers with them. Trials are ``TUNING_ANCHORS`` then a seeded random sample of
    ``TUNING_GRID`` without repeats, until ``max_trials`` are done or ``max_seconds`` have passed
    (at least one trial always runs). ``objective`` is "multiclass", "binary" (one model per
    product) or "auto": binary above ``PER_PRODUCT_ABOVE`` products. ``num_threads`` None uses
    every core, as on a user's machine, or ``OMP_NUM_THREADS`` where it is set. ``history_lags`` > 0 gives every trial the lag set
    (``LightGBMBaseline``) when the data has a history; ``history_months`` > 0 trains every fit on that
    many earlier months too (``finrec.history_features.earlier_months``: the Santander winners'
    practice), multiclass only; validation always judges the latest month.

    After ``fit``: ``best_params_``, ``trials_`` (one dict per trial: params, validation
    nDCG@k and MRR, rounds, seconds), ``budget_`` (trials run, search and refit seconds, the
    limits) and ``model_`` (the refitted ``LightGBMBaseline``).
    """

    def __init__(
        self,
        max_trials: int = 12,
        max_seconds: float | None = None,
        objective: str = "auto",
        validation_fraction: float = 0.2,
        k: int = 5,
        num_threads: int | None = None,
        grid: dict | None = None,
        max_rounds: int = 1000,
        early_stopping_rounds: int = 30,
        history_lags: int = 0,
        history_months: int = 0,
    ):
        if objective not in (*OBJECTIVES, "auto"):
            raise ValueError(f"objective must be 'auto', 'multiclass' or 'binary', got {objective!r}")
        if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
            raise ValueError(f"max_trials must be a positive integer, got {max_trials!r}")
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be positive or None, got {max_seconds!r}")
        self.max_trials = max_trials
        self.max_seconds = max_seconds
        self.objective = objective
        self.validation_fraction = validation_fraction
        self.k = k
        self.num_threads = num_threads
        self.grid = dict(TUNING_GRID if grid is None else grid)
        self.max_rounds = max_rounds
        self.early_stopping_rounds = early_stopping_rounds
        self.history_lags = history_lags
        self.history_months = history_months

    def candidates(self, seed: int) -> list[dict]:
        """The trial order: the anchors that lie in the grid, then the rest of the grid shuffled."""
        import itertools

        names = list(self.grid)
        grid = [dict(zip(names, values)) for values in itertools.product(*(self.grid[n] for n in names))]
        order = np.random.default_rng(seed).permutation(len(grid))
        anchors = [a for a in TUNING_ANCHORS if a in grid]
        return anchors + [grid[i] for i in order if grid[i] not in anchors]

    def _model(self, params: dict, objective: str) -> LightGBMBaseline:
        return LightGBMBaseline(
            objective=objective,
            num_threads=self.num_threads,
            max_rounds=self.max_rounds,
            early_stopping_rounds=self.early_stopping_rounds,
            history_lags=self.history_lags,
            **params,
        )

    def fit(self, dataset, seed: int = 0) -> TunedLightGBM:
        import time

        from finrec.data.split import split_customer_ids
        from finrec.evaluate.metrics import summarize
        from finrec.history_features import earlier_months

        started = time.perf_counter()
        n_products = len(dataset.products)
        objective = self.objective
        if objective == "auto":
            objective = "binary" if n_products > PER_PRODUCT_ABOVE else "multiclass"
        fit_ids, val_ids = split_customer_ids(
            dataset.customer_ids, self.validation_fraction, np.random.default_rng(seed)
        )
        fit_part, val_part = dataset.subset_customers(fit_ids), dataset.subset_customers(val_ids)
        earlier = earlier_months(fit_part, self.history_months)
        self.trials_ = []
        relevant = excluded = val_customers = None
        for params in self.candidates(seed)[: self.max_trials]:
            if self.trials_ and self.max_seconds is not None and time.perf_counter() - started >= self.max_seconds:
                break
            t0 = time.perf_counter()
            model = self._model(params, objective).fit(fit_part, seed=seed, earlier=earlier)
            if relevant is None:  # the validation ranking task, in the pipeline's product order
                pipeline = model.pipeline_
                cid = dataset.schema.customers.id
                ids = val_part.customers[cid].to_numpy()
                rel = pipeline.holdings_matrix(ids, val_part.interactions)
                held = pipeline.holdings_matrix(ids, val_part.holdings)
                keep = (rel & ~held).any(axis=1)
                relevant, excluded = rel[keep], (held & ~rel)[keep]
                val_customers = val_part.customers[keep].reset_index(drop=True)
            scores = model.score(val_customers, val_part.holdings, val_part.holdings_history)
            metrics = summarize(scores, relevant, excluded, k=self.k)
            self.trials_.append(
                {
                    "params": dict(params),
                    f"ndcg@{self.k}": metrics[f"ndcg@{self.k}"],
                    "mrr": metrics["mrr"],
                    "rounds": model.best_iteration_,
                    "seconds": time.perf_counter() - t0,
                }
            )
        search_seconds = time.perf_counter() - started
        best = max(self.trials_, key=lambda t: t[f"ndcg@{self.k}"])
        self.best_params_ = dict(best["params"])
        self.model_ = self._model(self.best_params_, objective).fit(
            dataset, seed=seed, earlier=earlier_months(dataset, self.history_months)
        )
        self.objective_ = objective
        self.best_iteration_ = self.model_.best_iteration_
        self.budget_ = {
            "trials": len(self.trials_),
            "max_trials": self.max_trials,
            "max_seconds": self.max_seconds,
            "search_seconds": search_seconds,
            "total_seconds": time.perf_counter() - started,
            "num_threads": self.num_threads or default_threads(),
            "objective": objective,
        }
        return self

    @property
    def pipeline_(self):
        return self.model_.pipeline_

    def score(
        self, customers: pd.DataFrame, holdings: pd.DataFrame | None = None, history: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Scores float [n, P] of the refitted model (``LightGBMBaseline.score``)."""
        return self.model_.score(customers, holdings, history)
