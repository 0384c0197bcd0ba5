"""Baselines every model is compared with. Each returns a score matrix [n, P] in catalogue
order; higher is better, and held products are excluded by the caller."""

from __future__ import annotations

import numpy as np
import pandas as pd

from finrec.data import schema as S


def default_threads() -> int:
    """LightGBM's threads: ``OMP_NUM_THREADS`` where it is set (the usual limit for OpenMP
    libraries, which LightGBM itself honours but an explicit ``num_threads`` overrides), else
    every core. More OpenMP threads than free cores busy-wait: the report's tuned LightGBM took
    224 s instead of 19 s beside other busy processes on 2 cores."""
    import os

    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


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


OBJECTIVES = ("multiclass", "binary")


class LightGBMBaseline:
    """Multiclass gradient-boosted trees over products: the family that wins on bank product data
    (Santander; ``shared/reference.md``). One training row per (customer, adopted product); the
    features are the customer's numeric columns (raw, NaN allowed), its categorical columns as
    pandas ``category`` (the training vocabulary; unseen values become missing) and the holdings
    multi-hot. 10% of the training customers with adoptions are held out for early stopping.
    ``history_lags`` > 0 adds, when the data has a ``holdings_history``, the Santander winners'
    lag set per product (``HistoryFeatures.lag_table``): ownership 1..lags snapshots back, months
    since the last add and drop (NaN: never), add and drop counts.

    ``objective="binary"`` fits one binary model per product instead (rows: every training
    customer not holding it; label: adopted it), which scales to large catalogues where one
    multiclass tree per class and round does not; the score is each model's probability.

    >>> model = LightGBMBaseline().fit(train_dataset, seed=0)
    >>> scores = model.score(test.customers, test.holdings)   # class probabilities [n, P]

    Needs the optional extra ``finrec[baselines]`` (lightgbm is imported inside ``fit``).
    """

    def __init__(
        self,
        num_leaves: int = 31,
        learning_rate: float = 0.05,
        max_rounds: int = 1000,
        min_data_in_leaf: int = 20,
        feature_fraction: float = 0.8,
        bagging_fraction: float = 0.8,
        bagging_freq: int = 1,
        early_stopping_rounds: int = 30,
        validation_fraction: float = 0.1,
        num_threads: int | None = None,
        history_lags: int = 0,
        lambda_l2: float = 0.0,
        objective: str = "multiclass",
    ):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        self.lambda_l2 = lambda_l2
        self.objective = objective
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.max_rounds = max_rounds
        self.min_data_in_leaf = min_data_in_leaf
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.bagging_freq = bagging_freq
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.num_threads = num_threads
        self.history_lags = history_lags

    def features(
        self, customers: pd.DataFrame, holdings: pd.DataFrame | None = None, history: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """The feature frame of ``customers`` (rows in the order given)."""
        pipeline = self.pipeline_
        pipeline.check_customer_columns(customers)
        columns: dict[str, object] = {}
        for stats in pipeline.customer_numeric_:
            columns[f"num_{stats.column}"] = pd.to_numeric(customers[stats.column], errors="coerce").to_numpy(
                dtype="float64"
            )
        for col, vocab in pipeline.customer_vocab_.items():
            values = customers[col].astype(object).where(customers[col].notna(), None)
            text = np.array([None if v is None else str(v) for v in values], dtype=object)
            columns[f"cat_{col}"] = pd.Categorical(text, categories=vocab)
        cid = pipeline.schema.customers.id
        held = pipeline.holdings_matrix(customers[cid].to_numpy(), holdings)
        for j in range(pipeline.n_products):
            columns[f"held_{j}"] = held[:, j].astype("float32")
        if getattr(self, "lags_", None) is not None:
            cube = self.lags_.ownership(customers[cid].to_numpy(), history, held, pipeline.product_positions)
            for name, values in self.lags_.lag_table(cube).items():
                for j in range(pipeline.n_products):
                    columns[f"{name}_{j}"] = values[:, j]
        return pd.DataFrame(columns, index=pd.RangeIndex(len(customers)))

    def fit(self, dataset, seed: int = 0) -> LightGBMBaseline:
        import lightgbm as lgb

        from finrec.data.split import split_customer_ids
        from finrec.features import FeaturePipeline
        from finrec.history_features import HistoryFeatures

        self.pipeline_ = FeaturePipeline(dataset.schema, use_holdings=True, history_encoder="none").fit(dataset)
        has_history = dataset.holdings_history is not None and len(dataset.holdings_history) > 0
        self.lags_ = None
        if self.history_lags > 0 and has_history:
            self.lags_ = HistoryFeatures(self.history_lags, "events").fit(self.pipeline_.n_products)
        cid = dataset.schema.customers.id
        customers = dataset.customers.reset_index(drop=True)
        rows = pd.Index(customers[cid].astype(str)).get_indexer(dataset.interactions[S.CUSTOMER_ID].astype(str))
        labels = self.pipeline_.product_positions(dataset.interactions[S.PRODUCT_ID].to_numpy())
        keep = (rows >= 0) & (labels >= 0)
        rows, labels = rows[keep], labels[keep]
        if len(rows) == 0:
            raise ValueError("LightGBMBaseline.fit: the dataset has no interactions")
        if self.objective == "binary":
            return self._fit_binary(dataset, customers, seed)
        # Classes are the products seen as adoptions; score() maps them back to catalogue columns.
        self.classes_ = np.unique(labels)
        y = np.searchsorted(self.classes_, labels)
        x = self.features(customers, dataset.holdings, dataset.holdings_history)

        with_positives = np.unique(customers[cid].astype(str).to_numpy()[rows])
        _, val_ids = split_customer_ids(with_positives, self.validation_fraction, np.random.default_rng(seed))
        is_val = np.isin(customers[cid].astype(str).to_numpy()[rows], val_ids)
        params = {
            "objective": "multiclass",
            "num_class": len(self.classes_),
            "metric": "multi_logloss",
            **self._tree_params(seed),
        }
        if len(self.classes_) == 1:  # one class: a constant model
            self.booster_ = None
            self.best_iteration_ = 0
            return self
        train_set = lgb.Dataset(x.iloc[rows[~is_val]].reset_index(drop=True), y[~is_val], free_raw_data=False)
        val_set = lgb.Dataset(x.iloc[rows[is_val]].reset_index(drop=True), y[is_val], reference=train_set)
        self.booster_ = lgb.train(
            params,
            train_set,
            num_boost_round=self.max_rounds,
            valid_sets=[val_set],
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )
        self.best_iteration_ = int(self.booster_.best_iteration or self.booster_.current_iteration())
        return self

    def _tree_params(self, seed: int) -> dict:

        return {
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2,
            "num_threads": self.num_threads or default_threads(),
            "seed": seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }

    def _fit_binary(self, dataset, customers: pd.DataFrame, seed: int) -> LightGBMBaseline:
        import lightgbm as lgb

        from finrec.data.split import split_customer_ids

        cid = dataset.schema.customers.id
        ids = customers[cid].to_numpy()
        adopted = self.pipeline_.holdings_matrix(ids, dataset.interactions)
        held = self.pipeline_.holdings_matrix(ids, dataset.holdings)
        x = self.features(customers, dataset.holdings, dataset.holdings_history)
        _, val_ids = split_customer_ids(ids.astype(str), self.validation_fraction, np.random.default_rng(seed))
        is_val = np.isin(ids.astype(str), val_ids)
        params = {"objective": "binary", "metric": "binary_logloss", **self._tree_params(seed)}
        self.classes_ = np.flatnonzero(adopted.any(axis=0))
        self.boosters_, self.rates_, rounds = {}, {}, []
        for p in self.classes_:
            rows = ~held[:, p]
            y = adopted[:, p].astype("float64")
            fit_rows, val_rows = rows & ~is_val, rows & is_val
            self.rates_[p] = float(y[rows].mean())
            # Too few positives on either side to fit and stop early: the product's base rate.
            if y[fit_rows].sum() < 2 or y[val_rows].sum() < 1:
                continue
            train_set = lgb.Dataset(x[fit_rows].reset_index(drop=True), y[fit_rows])
            val_set = lgb.Dataset(x[val_rows].reset_index(drop=True), y[val_rows], reference=train_set)
            booster = lgb.train(
                params,
                train_set,
                num_boost_round=self.max_rounds,
                valid_sets=[val_set],
                callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
            )
            self.boosters_[p] = booster
            rounds.append(int(booster.best_iteration or booster.current_iteration()))
        self.booster_ = None
        self.best_iteration_ = int(np.median(rounds)) if rounds else 0
        return self

    def score(
        self, customers: pd.DataFrame, holdings: pd.DataFrame | None = None, history: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Class probabilities, float [n, P] in the pipeline's product order; products never
        adopted in training score 0."""
        out = np.zeros((len(customers), self.pipeline_.n_products), dtype="float64")
        if len(customers) == 0:
            return out
        if self.objective == "binary":
            x = self.features(customers.reset_index(drop=True), holdings, history)
            for p in self.classes_:
                booster = self.boosters_.get(p)
                if booster is None:
                    out[:, p] = self.rates_[p]
                else:
                    out[:, p] = booster.predict(x, num_iteration=booster.best_iteration or None)
            return out
        if self.booster_ is None:
            out[:, self.classes_] = 1.0
            return out
        x = self.features(customers.reset_index(drop=True), holdings, history)
        proba = self.booster_.predict(x, num_iteration=self.best_iteration_)
        out[:, self.classes_] = np.asarray(proba).reshape(len(customers), len(self.classes_))
        return out


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
    (``LightGBMBaseline``) when the data has a history.

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

        started = time.perf_counter()
        n_products = len(dataset.products)
        objective = self.objective
        if objective == "auto":
            objective = "binary" if n_products > PER_PRODUCT_ABOVE else "multiclass"
        fit_ids, val_ids = split_customer_ids(
            dataset.customer_ids, self.validation_fraction, np.random.default_rng(seed)
        )
        fit_part, val_part = dataset.subset_customers(fit_ids), dataset.subset_customers(val_ids)
        self.trials_ = []
        relevant = excluded = val_customers = None
        for params in self.candidates(seed)[: self.max_trials]:
            if self.trials_ and self.max_seconds is not None and time.perf_counter() - started >= self.max_seconds:
                break
            t0 = time.perf_counter()
            model = self._model(params, objective).fit(fit_part, seed=seed)
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
        self.model_ = self._model(self.best_params_, objective).fit(dataset, seed=seed)
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
