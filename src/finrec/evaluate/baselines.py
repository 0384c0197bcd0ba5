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


class LightGBMBaseline:
    """Multiclass gradient-boosted trees over products: the family that wins on bank product data
    (Santander; ``shared/reference.md``). One training row per (customer, adopted product); the
    features are the customer's numeric columns (raw, NaN allowed), its categorical columns as
    pandas ``category`` (the training vocabulary; unseen values become missing) and the holdings
    multi-hot. 10% of the training customers with adoptions are held out for early stopping.
    ``history_lags`` > 0 adds, when the data has a ``holdings_history``, the Santander winners'
    lag set per product (``HistoryFeatures.lag_table``): ownership 1..lags snapshots back, months
    since the last add and drop (NaN: never), add and drop counts.

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
    ):
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
        import os

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
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "num_threads": self.num_threads or os.cpu_count() or 1,
            "seed": seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
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

    def score(
        self, customers: pd.DataFrame, holdings: pd.DataFrame | None = None, history: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Class probabilities, float [n, P] in the pipeline's product order; products never
        adopted in training score 0."""
        out = np.zeros((len(customers), self.pipeline_.n_products), dtype="float64")
        if len(customers) == 0:
            return out
        if self.booster_ is None:
            out[:, self.classes_] = 1.0
            return out
        x = self.features(customers.reset_index(drop=True), holdings, history)
        proba = self.booster_.predict(x, num_iteration=self.best_iteration_)
        out[:, self.classes_] = np.asarray(proba).reshape(len(customers), len(self.classes_))
        return out
