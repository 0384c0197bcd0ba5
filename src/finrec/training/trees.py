"""Gradient-boosted trees over products: the baseline every model is compared with
(``finrec.evaluate.baselines``) and the teacher finrec's towers learn from.

A multiclass LightGBM on customer columns and holdings wins on bank product data (the Santander
competition; ``shared/reference.md``), because a bank's rules are thresholds and steps that trees
find and a smooth MLP does not. Distillation gives the towers that knowledge: a small, fixed tree
model (``TEACHER``, seconds to fit) is fitted on the training customers, and its adoption
distribution over each customer's products not held becomes a second target of the loss
(``finrec.model.losses.Distillation``). Distillation alone changes nothing at serving: the towers
rank. A ``TreeBlend`` (``model.tree_blend``) also adds the teacher's log-probabilities to the scores.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from finrec.data import schema as S
from finrec.data.categories import category_text
from finrec.features import FeaturePipeline
from finrec.training.forest import Forest

log = logging.getLogger(__name__)


def default_threads() -> int:
    """LightGBM's threads: ``OMP_NUM_THREADS`` where it is set (the usual limit for OpenMP
    libraries, which LightGBM itself honours but an explicit ``num_threads`` overrides), else
    every core. More OpenMP threads than free cores busy-wait: the report's tuned LightGBM took
    224 s instead of 19 s beside other busy processes on 2 cores."""
    import os

    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


OBJECTIVES = ("multiclass", "binary", "adoption")


class LightGBMBaseline:
    """Multiclass gradient-boosted trees over products: the family that wins on bank product data
    (Santander; ``shared/reference.md``). One training row per (customer, adopted product); the
    features are the customer's numeric columns (raw, NaN allowed), its categorical columns as
    pandas ``category`` (the training vocabulary; unseen values become missing) and the holdings
    multi-hot. 10% of the training customers with adoptions are held out for early stopping.
    ``history_lags`` > 0 adds, when the data has a ``holdings_history``, the Santander winners'
    lag set per product (``HistoryFeatures.lag_table``): ownership 1..lags snapshots back, months
    since the last add and drop (NaN: never), add and drop counts.

    ``exclude_protected`` leaves the schema's protected customer columns out, and
    ``use_holdings=False`` the holdings, as the model options of the same names do: the teacher
    of a model that must not see a column must not see it either, or its targets carry it.

    ``objective="binary"`` fits one binary model per product instead (rows: every training
    customer not holding it; label: adopted it), which scales to large catalogues where one
    multiclass tree per class and round does not; the score is each model's probability.

    ``objective="adoption"`` fits one binary model of whether a customer adopts anything at all
    (rows: every training customer, those who adopted nothing included), read by
    ``adoption_probability``: the propensity a calibration multiplies into its probabilities
    (``finrec.training.calibration``). Its features add the number of products held, a sum over
    the holdings columns that trees would otherwise build split by split.

    >>> model = LightGBMBaseline().fit(train_dataset, seed=0)
    >>> scores = model.score(test.customers, test.holdings)   # class probabilities [n, P]

    lightgbm is imported inside ``fit``: importing this module costs nothing.
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
        exclude_protected: bool = False,
        use_holdings: bool = True,
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
        self.exclude_protected = exclude_protected
        self.use_holdings = use_holdings

    def features(
        self,
        customers: pd.DataFrame,
        holdings: pd.DataFrame | None = None,
        history: pd.DataFrame | None = None,
        held: np.ndarray | None = None,
        reference: int | None = None,
    ) -> pd.DataFrame:
        """The feature frame of ``customers`` (rows in the order given), categoricals as pandas
        categories: what ``fit`` trains on. Their holdings come from the ``holdings`` link table
        or, already matched to the rows in the catalogue's order, as ``held`` bool [n, P];
        ``reference``: the history's latest month when ``history`` is one chunk's slice of a
        larger table (``HistoryFeatures.ownership``)."""
        columns = self._columns(customers, holdings, history, held, reference)
        for col, vocab in self.pipeline_.customer_vocab_.items():
            codes = columns[f"cat_{col}"]
            columns[f"cat_{col}"] = pd.Categorical.from_codes(np.where(np.isnan(codes), -1, codes).astype(int), vocab)
        return pd.DataFrame(columns, index=pd.RangeIndex(len(customers)))

    def matrix(
        self,
        customers: pd.DataFrame,
        holdings: pd.DataFrame | None = None,
        history: pd.DataFrame | None = None,
        held: np.ndarray | None = None,
        reference: int | None = None,
    ) -> np.ndarray:
        """float64 [n, F]: ``features`` with each category as its code (NaN: missing or unseen),
        as LightGBM reads a pandas frame; predicting from it skips pandas' conversion."""
        return _stack(self._columns(customers, holdings, history, held, reference), len(customers))

    def record_matrix(self, record: dict, held: np.ndarray, history: pd.DataFrame | None = None) -> np.ndarray:
        """float64 [1, F]: ``matrix`` of one customer given as raw values (the request path:
        dict lookups instead of pandas, which cost ~20 ms a request); ``held`` bool [1, P];
        ``history``: its snapshots as a frame of customer id ``"new"`` or None."""
        pipeline = self.pipeline_
        numeric = {}
        for stats in pipeline.customer_numeric_:
            value = record.get(stats.column)
            numeric[stats.column] = np.array([np.nan if value is None else float(value)])
        codes = {}
        if not hasattr(self, "_code_of"):
            self._code_of = {
                col: {v: i for i, v in enumerate(vocab)} for col, vocab in pipeline.customer_vocab_.items()
            }
        for col in pipeline.customer_vocab_:
            text = category_text(record.get(col))
            code = -1 if text is None else self._code_of[col].get(text, -1)
            codes[col] = np.array([np.nan if code < 0 else float(code)])
        columns = self._assemble(numeric, codes, np.array(["new"], dtype=object), held, history, None)
        return _stack(columns, 1)

    def _columns(self, customers, holdings, history, held, reference) -> dict[str, np.ndarray]:
        pipeline = self.pipeline_
        pipeline.check_customer_columns(customers)
        numeric = {
            stats.column: pd.to_numeric(customers[stats.column], errors="coerce").to_numpy(dtype="float64")
            for stats in pipeline.customer_numeric_
        }
        codes = {}
        for col in pipeline.customer_vocab_:
            # the tower's lookup (arrow, one hash per value): pandas' Categorical over text cost
            # batch scoring a tenth of its time
            found = pipeline.category_positions(col, customers[col]).astype("float64")
            found[found < 0] = np.nan
            codes[col] = found
        cid = pipeline.schema.customers.id
        ids = customers[cid].to_numpy() if cid in customers else np.full(len(customers), None)
        held = pipeline.holdings_matrix(ids, holdings) if held is None else np.asarray(held, dtype=bool)
        return self._assemble(numeric, codes, ids, held, history, reference)

    def _assemble(self, numeric, codes, ids, held, history, reference) -> dict[str, np.ndarray]:
        """The columns in the order the trees were fitted on: numerics, category codes,
        holdings, then the lag set."""
        pipeline = self.pipeline_
        columns: dict[str, np.ndarray] = {f"num_{s.column}": numeric[s.column] for s in pipeline.customer_numeric_}
        columns.update({f"cat_{col}": codes[col] for col in pipeline.customer_vocab_})
        held = np.asarray(held, dtype=bool)
        if getattr(self, "use_holdings", True):
            as_float = held.astype("float32")
            for j in range(pipeline.n_products):
                columns[f"held_{j}"] = as_float[:, j]
            if self.objective == "adoption":
                columns["held_count"] = held.sum(axis=1).astype("float64")
        if getattr(self, "lags_", None) is not None:
            cube = self.lags_.ownership(ids, history, held, pipeline.product_positions, reference)
            for name, values in self.lags_.lag_table(cube).items():
                for j in range(pipeline.n_products):
                    columns[f"{name}_{j}"] = values[:, j]
        return columns

    def fit(self, dataset, seed: int = 0, earlier: list | tuple = ()) -> LightGBMBaseline:
        """Fit on ``dataset``'s adoptions; ``earlier``: (dataset, history reference) pairs of
        earlier months (``history_features.earlier_months``) whose adoptions train too (the
        multiclass objective only). Early stopping judges 10% of the customers with adoptions
        in ``dataset``, on its own month, and none of their earlier months trains."""
        _passive_openmp()
        import lightgbm as lgb

        from finrec.data.split import split_customer_ids
        from finrec.features import FeaturePipeline
        from finrec.history_features import HistoryFeatures

        self.pipeline_ = FeaturePipeline(
            dataset.schema, use_holdings=True, exclude_protected=self.exclude_protected, history_encoder="none"
        ).fit(dataset)
        # record_matrix's lookups and the walked trees belong to the previous fit
        self.__dict__.pop("_code_of", None)
        self.__dict__.pop("forest_", None)
        self.__dict__.pop("_unwalkable", None)
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
        if self.objective != "multiclass":
            if len(earlier):
                raise ValueError("LightGBMBaseline.fit: earlier months train the multiclass objective only")
            if self.objective == "adoption":
                return self._fit_adoption(dataset, customers, rows, seed)
            return self._fit_binary(dataset, customers, seed)
        x = self.features(customers, dataset.holdings, dataset.holdings_history)
        with_positives = np.unique(customers[cid].astype(str).to_numpy()[rows])
        _, val_ids = split_customer_ids(with_positives, self.validation_fraction, np.random.default_rng(seed))
        is_val = _member(customers[cid].astype(str).to_numpy()[rows], val_ids)
        x_train, labels_train = [x.iloc[rows[~is_val]]], [labels[~is_val]]
        for part, reference in earlier:
            part_customers = part.customers.reset_index(drop=True)
            part_ids = part_customers[cid].astype(str)
            part_rows = pd.Index(part_ids).get_indexer(part.interactions[S.CUSTOMER_ID].astype(str))
            part_labels = self.pipeline_.product_positions(part.interactions[S.PRODUCT_ID].to_numpy())
            keep = (part_rows >= 0) & (part_labels >= 0)
            keep[keep] = ~_member(part_ids.to_numpy()[part_rows[keep]], val_ids)
            if keep.any():
                part_x = self.features(part_customers, part.holdings, part.holdings_history, reference=reference)
                x_train.append(part_x.iloc[part_rows[keep]])
                labels_train.append(part_labels[keep])
        # Classes are the products seen as adoptions; score() maps them back to catalogue columns.
        self.classes_ = np.unique(np.concatenate([labels, *labels_train[1:]]))
        y = np.searchsorted(self.classes_, labels)
        x_train = pd.concat(x_train, ignore_index=True)
        y_train = np.searchsorted(self.classes_, np.concatenate(labels_train))
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
        train_set = lgb.Dataset(x_train, y_train, free_raw_data=False)
        val_set = lgb.Dataset(x.iloc[rows[is_val]].reset_index(drop=True), y[is_val], reference=train_set)
        self.booster_, self.best_iteration_ = self._boost(params, train_set, val_set)
        return self

    def numeric_splits(self, top: int) -> dict[str, list[float]]:
        """Per customer numeric column, the ``top`` split thresholds (raw scale) of the fitted
        trees that carry the most summed split gain, increasing; columns never split are absent.
        Where a tree splits is where the data has a step (an age limit, an income floor)."""
        boosters = [self.booster_] if self.booster_ is not None else list(getattr(self, "boosters_", {}).values())
        gains: dict[str, dict[float, float]] = {}
        for booster in boosters:
            model = booster.dump_model(num_iteration=booster.best_iteration or None)
            names = model["feature_names"]
            stack = [tree["tree_structure"] for tree in model["tree_info"]]
            while stack:
                node = stack.pop()
                if "split_feature" not in node:
                    continue
                name = names[node["split_feature"]]
                # LightGBM writes 1e300 for "every value" (a split sending only missing values left).
                if name.startswith("num_") and node.get("decision_type") == "<=" and abs(node["threshold"]) < 1e30:
                    column = gains.setdefault(name[len("num_") :], {})
                    threshold = float(node["threshold"])
                    column[threshold] = column.get(threshold, 0.0) + float(node["split_gain"])
                stack += [node["left_child"], node["right_child"]]
        return {
            column: sorted(t for t, _ in sorted(found.items(), key=lambda item: -item[1])[:top])
            for column, found in gains.items()
        }

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
        is_val = _member(ids.astype(str), val_ids)
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
            self.boosters_[p], best = self._boost(params, train_set, val_set)
            rounds.append(best)
        self.booster_ = None
        self.best_iteration_ = int(np.median(rounds)) if rounds else 0
        return self

    def _fit_adoption(self, dataset, customers: pd.DataFrame, rows: np.ndarray, seed: int) -> LightGBMBaseline:
        """``objective="adoption"``: label 1 for the customers at ``rows`` (those with an
        adoption), 0 for the rest; early stopping on ``validation_fraction`` of all customers.
        Too few of either class on either side leaves the base rate (``rate_``) alone."""
        import lightgbm as lgb

        from finrec.data.split import split_customer_ids

        ids = customers[dataset.schema.customers.id].astype(str).to_numpy()
        y = np.zeros(len(customers), dtype="float64")
        y[rows] = 1.0
        self.classes_ = np.empty(0, dtype=np.int64)
        self.rate_ = float(y.mean())
        self.booster_, self.best_iteration_ = None, 0
        _, val_ids = split_customer_ids(ids, self.validation_fraction, np.random.default_rng(seed))
        is_val = _member(ids, val_ids)
        fit_y, val_y = y[~is_val], y[is_val]
        if min(fit_y.sum(), len(fit_y) - fit_y.sum()) < 2 or min(val_y.sum(), len(val_y) - val_y.sum()) < 1:
            return self
        x = self.matrix(customers, dataset.holdings, dataset.holdings_history)
        params = {"objective": "binary", "metric": "binary_logloss", **self._tree_params(seed)}
        train_set = lgb.Dataset(x[~is_val], fit_y, free_raw_data=False)
        val_set = lgb.Dataset(x[is_val], val_y, reference=train_set)
        self.booster_, self.best_iteration_ = self._boost(params, train_set, val_set)
        return self

    def _boost(self, params: dict, train_set, val_set):
        """(booster, best round): LightGBM trained on ``train_set`` until ``val_set``'s loss has not
        improved for ``early_stopping_rounds`` rounds."""
        import lightgbm as lgb

        booster = lgb.train(
            params,
            train_set,
            num_boost_round=self.max_rounds,
            valid_sets=[val_set],
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )
        return booster, int(booster.best_iteration or booster.current_iteration())

    def adoption_probability(
        self,
        customers: pd.DataFrame,
        holdings: pd.DataFrame | None = None,
        history: pd.DataFrame | None = None,
        held: np.ndarray | None = None,
        reference: int | None = None,
    ) -> np.ndarray:
        """float64 [n]: P(the customer adopts anything in the period), the ``objective="adoption"``
        model's probability (its base rate where it fitted no trees); arguments as ``features``."""
        if self.booster_ is None or len(customers) == 0:
            return self._adoption_of(np.empty((len(customers), 0)))
        return self._adoption_of(self.matrix(customers.reset_index(drop=True), holdings, history, held, reference))

    def record_adoption_probability(self, record: dict, held: np.ndarray, history: pd.DataFrame | None = None):
        """``adoption_probability`` of one customer given as raw values: float64 [1]."""
        if self.booster_ is None:
            return self._adoption_of(np.empty((1, 0)))
        return self._adoption_of(self.record_matrix(record, held, history))

    def _adoption_of(self, x: np.ndarray) -> np.ndarray:
        if self.objective != "adoption":
            raise ValueError(f"adoption_probability needs objective='adoption', not {self.objective!r}")
        if self.booster_ is None or len(x) == 0:
            return np.full(len(x), self.rate_, dtype="float64")
        raw = self.forest().raw_score(x)[:, 0]
        return 1.0 / (1.0 + np.exp(-raw))

    def score(
        self,
        customers: pd.DataFrame,
        holdings: pd.DataFrame | None = None,
        history: pd.DataFrame | None = None,
        reference: int | None = None,
    ) -> np.ndarray:
        """Class probabilities, float [n, P] in the pipeline's product order; products never
        adopted in training score 0 (``reference`` as in ``features``)."""
        out = np.zeros((len(customers), self.pipeline_.n_products), dtype="float64")
        if len(customers) == 0:
            return out
        if self.objective == "binary":
            x = self.matrix(customers.reset_index(drop=True), holdings, history, reference=reference)
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
        x = self.matrix(customers.reset_index(drop=True), holdings, history, reference=reference)
        forest = self._walkable_forest()
        if forest is None:
            proba = self.booster_.predict(x, num_iteration=self.best_iteration_)
            out[:, self.classes_] = np.asarray(proba).reshape(len(customers), len(self.classes_))
            return out
        # LightGBM's multiclass probability is the softmax of the raw scores, which the walked
        # forest gives several times faster (the teacher scores every training month in a fit).
        raw = forest.raw_score(x)
        raw -= raw.max(axis=1, keepdims=True)
        proba = np.exp(raw)
        proba /= proba.sum(axis=1, keepdims=True)
        out[:, self.classes_] = proba
        return out

    def _walkable_forest(self) -> Forest | None:
        """``forest()``, or None where a tree has more leaves than the walker takes (64: a model
        a user configured with more; the teacher has 7, the tuned baseline at most 63):
        LightGBM's own prediction then scores. The answer is kept until the next fit."""
        if getattr(self, "_unwalkable", False):
            return None
        try:
            return self.forest()
        except ValueError:
            self._unwalkable = True
            return None

    def logits(
        self,
        customers: pd.DataFrame,
        holdings: pd.DataFrame | None = None,
        history: pd.DataFrame | None = None,
        held: np.ndarray | None = None,
        reference: int | None = None,
    ) -> np.ndarray:
        """float32 [n, P] in the pipeline's product order: the multiclass model's raw score of
        each product less the row's mean over the products it knows, which is its
        log-probability up to a per-customer constant; 0 for a product never adopted in
        training (arguments as ``features``)."""
        if self.objective != "multiclass" or self.booster_ is None or len(customers) == 0:
            return np.zeros((len(customers), self.pipeline_.n_products), dtype=np.float32)
        return self._logits_of(self.matrix(customers.reset_index(drop=True), holdings, history, held, reference))

    def _logits_of(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), self.pipeline_.n_products), dtype=np.float32)
        if self.objective != "multiclass" or self.booster_ is None or len(x) == 0:
            return out
        raw = self.forest().raw_score(x)
        centred = raw.mean(axis=1, keepdims=True)
        if np.array_equal(self.classes_, np.arange(out.shape[1])):  # every product a class: the common case
            # the float64 difference rounded once to float32 in place: the same bits as through a
            # float64 temporary and a scattered write, 4-5x faster (0.43 against 0.10 µs a row)
            np.subtract(raw, centred, out=out, casting="same_kind")
        else:
            out[:, self.classes_] = raw - centred
        return out

    def forest(self) -> Forest:
        """The booster's trees up to its best round as a ``Forest``: what ``logits`` walks,
        16-17x faster than LightGBM's own prediction and equal to it (``finrec.training.forest``).
        Built once, under a lock: the batch scorer's threads ask for it at once."""
        with _FOREST_LOCK:
            if getattr(self, "forest_", None) is None:
                self.forest_ = Forest.from_model_text(self.booster_.model_to_string(num_iteration=self.best_iteration_))
        return self.forest_

    def record_logits(self, record: dict, held: np.ndarray, history: pd.DataFrame | None = None) -> np.ndarray:
        """``logits`` of one customer given as raw values (``record_matrix``): float32 [1, P]."""
        return self._logits_of(self.record_matrix(record, held, history))

    def to_dict(self) -> dict:
        """A fitted multiclass or adoption model as JSON-ready values: its settings, its feature
        pipeline, the booster as LightGBM's own text format (no pickle)."""
        if self.objective == "binary":
            raise ValueError("a per-product binary LightGBMBaseline cannot be saved")
        lags = getattr(self, "lags_", None)
        extra = {"objective": self.objective, "rate": self.rate_} if self.objective == "adoption" else {}
        return {
            **extra,
            "num_leaves": self.num_leaves,
            "exclude_protected": self.exclude_protected,
            "use_holdings": self.use_holdings,
            "history_lags": self.history_lags,
            "pipeline": self.pipeline_.to_dict(),
            "lags": None if lags is None else lags.to_dict(),
            "classes": [int(c) for c in self.classes_],
            "best_iteration": int(self.best_iteration_),
            "booster": None if self.booster_ is None else self.booster_.model_to_string(num_iteration=-1),
        }

    @classmethod
    def from_dict(cls, raw: dict) -> LightGBMBaseline:
        """The model ``to_dict`` wrote (a ``KeyError`` or ``TypeError`` if it is incomplete)."""
        _passive_openmp()
        import lightgbm as lgb

        from finrec.history_features import HistoryFeatures

        model = cls(
            num_leaves=int(raw["num_leaves"]),
            history_lags=int(raw["history_lags"]),
            exclude_protected=bool(raw["exclude_protected"]),
            use_holdings=bool(raw["use_holdings"]),
            # Absent: a teacher, the only kind saved before adoption models.
            objective=str(raw.get("objective", "multiclass")),
        )
        if model.objective == "adoption":
            model.rate_ = float(raw["rate"])
        model.pipeline_ = FeaturePipeline.from_dict(raw["pipeline"])
        model.lags_ = None if raw["lags"] is None else HistoryFeatures.from_dict(raw["lags"])
        model.classes_ = np.asarray(raw["classes"], dtype=np.int64)
        model.best_iteration_ = int(raw["best_iteration"])
        model.booster_ = None if raw["booster"] is None else lgb.Booster(model_str=str(raw["booster"]))
        return model


_FOREST_LOCK = threading.Lock()


def _member(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """bool [n]: ``np.isin(values, ids)`` for strings, by hashing: ``np.isin`` sorts object
    arrays, 1.7-2.0 s of every teacher fit on the 30k-customer bank."""
    return pd.Index(ids).get_indexer(values) >= 0


def _stack(columns: dict[str, np.ndarray], n: int) -> np.ndarray:
    """float64 [n, F], column-major: each column is written in one contiguous run (row-major,
    every column touched every row's cache line: a tenth of a second per 200,000 customers), and
    the forest reads its rows block by block, column by column, either way."""
    out = np.empty((len(columns), n), dtype="float64")
    for j, values in enumerate(columns.values()):
        out[j] = values
    return out.T


def _passive_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning, unless the user chose otherwise (read when
    LightGBM's OpenMP runtime starts, so before its first import). The teacher runs inside every
    ``finrec train``: on 2 cores beside one busy process it took 23.6 s spinning and 14.7 s
    passive (8.8 s and 10.0 s alone), and beside the two workers of the test suite 89-343 s."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# The teacher's settings: the tuned baseline's strong anchor (7 leaves, 100 per leaf, L2 1,
# features 0.8; ``evaluate.baselines.TUNING_ANCHORS``) at learning rate 0.1, which stops in
# 27-150 rounds: 1-5 s on a 12k-customer bank, about 9 s on the 30k default bank, on 2 cores.
TEACHER = {
    "num_leaves": 7,
    "min_data_in_leaf": 100,
    "lambda_l2": 1.0,
    "feature_fraction": 0.8,
    "learning_rate": 0.1,
    "early_stopping_rounds": 20,
}


def fit_teacher(
    dataset,
    seed: int = 0,
    history_lags: int = 0,
    exclude_protected: bool = False,
    use_holdings: bool = True,
    earlier: list | tuple = (),
) -> LightGBMBaseline:
    """The distillation teacher (``TEACHER``) fitted on ``dataset``'s adoptions; it stops early
    on 10% of those customers (``LightGBMBaseline.fit``). ``history_lags`` > 0 gives it the
    Santander winners' lag features where the data has a ``holdings_history`` (the trees' own
    ground: hundreds of sparse binary columns), whose knowledge the towers then learn.
    ``exclude_protected`` and ``use_holdings``: the student's model options, which bind the
    teacher too (see ``LightGBMBaseline``); ``earlier``: the earlier months that train the
    towers (``LightGBMBaseline.fit``) train it too."""
    start = time.perf_counter()
    teacher = LightGBMBaseline(
        **TEACHER, history_lags=history_lags, exclude_protected=exclude_protected, use_holdings=use_holdings
    ).fit(dataset, seed=seed, earlier=earlier)
    log.info("distillation teacher: %d rounds in %.1f s", teacher.best_iteration_, time.perf_counter() - start)
    return teacher


def fit_adoption_model(
    dataset,
    seed: int = 0,
    history_lags: int = 0,
    exclude_protected: bool = False,
    use_holdings: bool = True,
    max_rounds: int | None = None,
) -> LightGBMBaseline:
    """P(a customer adopts anything in the period): ``objective="adoption"`` with the teacher's
    settings (``TEACHER``) and the same options (the model's protected columns and holdings bind
    it too), fitted on every customer of ``dataset``, those who adopted nothing included;
    ``max_rounds`` caps its boosting rounds (early stopping may end it sooner)."""
    start = time.perf_counter()
    model = LightGBMBaseline(
        **TEACHER,
        **({"max_rounds": int(max_rounds)} if max_rounds is not None else {}),
        history_lags=history_lags,
        exclude_protected=exclude_protected,
        use_holdings=use_holdings,
        objective="adoption",
    ).fit(dataset, seed=seed)
    log.info("adoption model: %d rounds in %.1f s", model.best_iteration_, time.perf_counter() - start)
    return model


def teacher_targets(
    teacher: LightGBMBaseline, dataset, pipeline: FeaturePipeline, history_reference: int | None = None
) -> np.ndarray:
    """q, float32 [n_customers, P] in ``dataset``'s customer order and ``pipeline``'s product
    order: the teacher's class probabilities with held products set to 0, renormalized to sum
    to 1 over the rest of each row (a row is all 0 where every product is held or the teacher
    gives the rest no mass). ``history_reference``: as in ``build_examples``."""
    cid = dataset.schema.customers.id
    ids = dataset.customers[cid].to_numpy()
    q = teacher.score(dataset.customers, dataset.holdings, dataset.holdings_history, history_reference)
    # Columns by product id: the teacher's pipeline and ours may order the catalogue alike, but
    # nothing here relies on it.
    columns = pd.Index(teacher.pipeline_.product_ids_).get_indexer(pipeline.product_ids_)
    q = np.where(columns[None, :] >= 0, q[:, np.maximum(columns, 0)], 0.0)
    q[pipeline.holdings_matrix(ids, dataset.holdings)] = 0.0
    total = q.sum(axis=1, keepdims=True)
    return np.divide(q, total, out=np.zeros_like(q), where=total > 0).astype("float32")


# The blend weights tried on the validation customers (``model.tree_blend``), 0 first: no blend.
BLEND_WEIGHTS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# Where a launch's blend part comes from (``TreeBlend.launches_from``).
LAUNCHES_FROM = ("towers", "zero")


@dataclass
class TreeBlend:
    """The tree teacher's view blended into the towers' scores (``model.tree_blend``)::

        score(c, p) = (1 - weight) * cos(u_c, v_p) + weight * temperature * t_p(c)

    t_p(c) is the teacher's logit of product p less the customer's mean over the products it
    knows (``LightGBMBaseline.logits``): its log-probability up to a per-customer constant, which
    no ranking sees. Times the temperature it is on the cosine's scale, so ``score /
    temperature`` stays the logit the calibration reads.

    A product the teacher never saw adopted (a launch) has no tree logit: the towers' own logit,
    centred the same way, stands in for it (``with_launches``: ``temperature * t_l(c) = cos(u_c,
    v_l) - mean over the known products of cos(u_c, v_p)``), so the launch scores ``cos_l -
    weight * mean cos`` and meets the other products on the towers' scale. A 0 there (the mean
    of the known products) put every launch mid-catalogue: on the default bank of 6,000 customers
    a left-out term deposit's real adopters found it in their top 5 at 0.03-0.11 against the
    towers' 0.95 (``benchmarks/cold_products.py``). A model saved before keeps the 0
    (``launches_from`` "zero"): its weights and calibration were chosen with it.

    It is still a dot product: the customer vector ``[(1 - weight) u_c, weight * temperature *
    t(c)]`` against the product vector ``[v_p, e_p]`` (e_p: the p-th unit vector). Product
    vectors stay precomputed and one ranking core serves both; only the customer side runs the
    trees (``LightGBMBaseline.forest``: about 5 µs a customer for 1,750 trees on one core).

    A customer who holds nothing (a new customer; also one who closed everything, history or not)
    is blended with ``cold_weight`` instead: the validation customers choose it with their
    holdings and history withheld (``choose_blend``).
    The trees learn new customers only from the few who hold nothing, while the towers train
    with holdings dropout: on a bank with a past, a weight of 0.7-0.8 cost withheld customers
    0.04-0.07 nDCG@5 where the towers alone lost 0.03. None (a model saved before): ``weight``.
    The weight is still the customer's own, so the score stays one dot product."""

    teacher: LightGBMBaseline
    weight: float
    temperature: float
    cold_weight: float | None = None
    # "towers": the launches' part from the towers (``with_launches``); "zero": a model saved
    # before, whose weights and calibration were chosen with 0 there, keeps its scores.
    launches_from: str = "towers"

    def weights(self, held: np.ndarray) -> np.ndarray:
        """float64 [n]: each customer's weight, ``cold_weight`` where ``held`` (bool [n, P]) is
        all False."""
        held = np.asarray(held, dtype=bool)
        out = np.full(len(held), self.weight, dtype=np.float64)
        if self.cold_weight is not None:
            out[~held.any(axis=1)] = self.cold_weight
        return out

    def part(
        self,
        customers: pd.DataFrame,
        held: np.ndarray,
        history: pd.DataFrame | None = None,
        reference: int | None = None,
        skip: np.ndarray | None = None,
    ) -> np.ndarray:
        """float32 [n, P]: ``weight * temperature * t(c)`` of ``customers`` holding ``held``
        (each customer's weight: ``weights``);
        rows where ``skip`` (bool [n]) is True are never run through the trees and stay 0: the
        customers who objected to profiling for marketing."""
        held = np.asarray(held, dtype=bool)
        # Rows weighted 0 (a cold weight of 0) need no trees either.
        weights = self.weights(held)
        skip = weights == 0 if skip is None else np.asarray(skip, dtype=bool) | (weights == 0)
        if not skip.any():
            logits = self.teacher.logits(customers, held=held, history=history, reference=reference)
        else:
            logits = np.zeros(held.shape, dtype=np.float32)
            keep = np.flatnonzero(~skip)
            if len(keep):
                logits[keep] = self.teacher.logits(
                    customers.iloc[keep], held=held[keep], history=history, reference=reference
                )
        return self._scaled(logits, weights)

    def record_part(self, record: dict, held: np.ndarray, history: pd.DataFrame | None = None) -> np.ndarray:
        """``part`` of one customer given as raw values (``LightGBMBaseline.record_matrix``)."""
        return self._scaled(self.teacher.record_logits(record, held, history), self.weights(held))

    def _scaled(self, logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
        # The factors are rounded to float32 once, from float64, as a single weight's always were:
        # a model scores to the bit as before the per-customer weights.
        scale = (weights * self.temperature).astype(np.float32)
        return (logits * scale[:, None]).astype(np.float32, copy=False)

    def cosine_part(self, cosine: np.ndarray, held: np.ndarray) -> np.ndarray:
        """``(1 - weight) * cosine`` row by row (``weights``): float32 [n, ...] for ``cosine``
        (scores [n, P] or embeddings [n, D]) of customers holding ``held`` (bool [n, P])."""
        return (cosine * (1.0 - self.weights(held)).astype(np.float32)[:, None]).astype(np.float32, copy=False)

    def launches(self) -> np.ndarray:
        """bool [P]: the products the teacher never saw adopted, in the pipeline's order (none
        when the teacher gives no logits at all, every ``part`` then 0, or for a model saved
        before launches took the towers' part)."""
        launch = np.zeros(self.teacher.pipeline_.n_products, dtype=bool)
        if (
            self.launches_from == "towers"
            and self.teacher.objective == "multiclass"
            and self.teacher.booster_ is not None
        ):
            launch[:] = True
            launch[self.teacher.classes_] = False
        return launch

    def with_launches(
        self,
        part: np.ndarray,
        embeddings: np.ndarray,
        product_embeddings: np.ndarray,
        held: np.ndarray,
        skip: np.ndarray | None = None,
    ) -> np.ndarray:
        """``part`` [n, P] with the launches' columns (``launches``) filled from the towers:
        ``weight * (cos(u_c, v_l) - mean_p cos(u_c, v_p))`` over the known products p, from the
        customers' embeddings [n, D] and the products' [P, D]; ``part`` itself when there are none.
        Rows where ``skip`` (bool [n]) is True stay as ``part`` has them (0: the customers who
        objected to profiling, whom no part of the blend scores)."""
        launch = self.launches()
        if not launch.any() or launch.all():
            return part
        known_mean = embeddings @ product_embeddings[~launch].mean(axis=0)  # [n]: u_c . mean v_p
        filled = np.array(part, dtype=np.float32, copy=True)
        towers = embeddings @ product_embeddings[launch].T - known_mean[:, None]
        weights = self.weights(held)
        if skip is not None:
            weights = np.where(np.asarray(skip, dtype=bool), 0.0, weights)
        filled[:, launch] = (towers * weights[:, None]).astype(np.float32)
        return filled

    def customer_vectors(
        self,
        embeddings: np.ndarray,
        part: np.ndarray,
        held: np.ndarray,
        product_embeddings: np.ndarray,
        skip: np.ndarray | None = None,
    ) -> np.ndarray:
        """float32 [n, D + P] from the towers' embeddings [n, D] and ``part`` [n, P] of customers
        holding ``held`` (bool [n, P]); ``product_embeddings`` [P, D] fill the launches' part
        (``with_launches``, ``skip`` as there)."""
        part = self.with_launches(part, embeddings, product_embeddings, held, skip)
        return np.concatenate([self.cosine_part(embeddings, held), part], axis=1).astype(np.float32, copy=False)

    @staticmethod
    def product_vectors(product_embeddings: np.ndarray) -> np.ndarray:
        """float32 [P, D + P]: each product's embedding, then its unit vector."""
        n = len(product_embeddings)
        return np.concatenate([product_embeddings, np.eye(n, dtype=np.float32)], axis=1).astype(np.float32)

    def to_dict(self) -> dict:
        out = {"weight": self.weight, "temperature": self.temperature, "teacher": self.teacher.to_dict()}
        if self.cold_weight is not None:
            out["cold_weight"] = self.cold_weight
        out["launches_from"] = self.launches_from
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> TreeBlend:
        cold = raw.get("cold_weight")
        return cls(
            LightGBMBaseline.from_dict(raw["teacher"]),
            float(raw["weight"]),
            float(raw["temperature"]),
            None if cold is None else float(cold),
            # Absent: a model saved before launches took the towers' part scores as it did.
            raw.get("launches_from", "zero"),
        )


__all__ = [
    "BLEND_WEIGHTS",
    "LAUNCHES_FROM",
    "OBJECTIVES",
    "TEACHER",
    "LightGBMBaseline",
    "TreeBlend",
    "default_threads",
    "fit_adoption_model",
    "fit_teacher",
    "teacher_targets",
]
