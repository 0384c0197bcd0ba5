"""The recommender a bank serves: one customer's filtered top-K in well under a millisecond.

>>> rec = Recommender.load("models/default")            # the training data is found via the manifest
>>> result = rec.recommend("C0000042", k=5, filters="conservative")
>>> result.items[0].product_id, result.items[0].score, result.items[0].reason

At load the product embeddings are read from the model directory, the customer tower is turned
into a numpy forward pass (``NumpyTower``, BatchNorm folded) and the known customers' inputs are
transformed once; a request is a row lookup, one small matmul per layer, the filter masks and a
partial sort.

``Recommender.rank`` is the one ranking core: a single request, ``finrec score`` (local and on
Ray) and the fairness report all rank through it, so they cannot disagree.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finrec.data import compliance as C
from finrec.data import schema as S
from finrec.data import validate as V
from finrec.data.categories import category_text
from finrec.data.io import (
    Dataset,
    directory_stamp,
    find_table,
    load_dataset,
    prepare_entities,
    read_products,
    read_schema,
)
from finrec.errors import DataError, FinrecError, UnknownCustomerError, safe_text
from finrec.recommend import filters as F
from finrec.recommend.index import NumpyTower, ProductIndex

# Eligibility terms of the data contract: carried with each recommendation when the table has them.
TERM_COLUMNS = tuple(F.TERM_RULES)
log = logging.getLogger(__name__)
NO_CALIBRATION = "this model has no calibration (calibration.json): retrain it to get probabilities"


@dataclass
class Recommendation:
    rank: int
    product_id: str
    score: float
    product: dict[str, Any]
    reason: str
    probability: float | None = None  # calibrated P(adopts); None when the model has no calibration
    regime: str | None = None  # the product's regime when the schema names one


@dataclass
class RecommendationResult:
    customer_id: str | None
    k: int
    items: list[Recommendation]
    eligible: int
    filters: F.Filters
    message: str | None = None
    # Every product a rule removed, as (product_id, rule) in catalogue order: what a record of
    # the recommendation keeps (the rule names, never the customer's values).
    exclusions: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    objected: bool = False  # the customer objected to profiling for marketing: nothing was ranked
    rules: list[str] = dataclasses.field(default_factory=list)  # the rules applied, in ``F.RULES`` order

    def to_dict(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "k": self.k,
            "eligible": self.eligible,
            "message": self.message,
            "filters": asdict(self.filters),
            "recommendations": [asdict(item) for item in self.items],
            "objected": self.objected,
        }


@dataclass
class CustomerContext:
    """Everything a request needs about one or more customers, in model-ready form."""

    ids: np.ndarray
    inputs: dict[str, np.ndarray]
    attributes: dict[str, np.ndarray]
    held: np.ndarray  # bool [n, P]
    # float32 [n, P]: the tree blend's part of the scores (``TreeBlend.part``); None without a blend
    tree: np.ndarray | None = None
    # float64 [n]: P(adopts anything in the period) (``Calibration.adoption_probability``), which
    # the probabilities multiply in; None where the calibration has no adoption model or the
    # context was built without it (ranking alone)
    adoption: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> CustomerContext:
        """The customers at ``rows`` (int [m]), for the model's inputs; the filters' attributes
        are left behind (the masks are computed on the whole context)."""
        tree = None if self.tree is None else self.tree[rows]
        adoption = None if self.adoption is None else self.adoption[rows]
        inputs = {n: v[rows] for n, v in self.inputs.items()}
        return CustomerContext(self.ids[rows], inputs, {}, self.held[rows], tree, adoption)


@dataclass
class Ranking:
    """The top ``k`` of ``n`` customers under some filters."""

    index: np.ndarray  # int [n, k'], best first; -1 where fewer products are eligible
    scores: np.ndarray  # float32 [n, k'] cosine; -inf where fewer products are eligible
    masks: dict[str, np.ndarray]  # rule -> bool [n, P], True = excluded by that rule
    excluded: np.ndarray  # bool [n, P], any rule
    # float32 [n, D] customer embeddings (zero rows for customers who objected, who are not embedded):
    # what the calibrated probabilities of the same customers need, without a second tower pass.
    embeddings: np.ndarray | None = None


class Recommender:
    def __init__(self, trained, dataset: Dataset | None = None, history_reference: int | None = None):
        """``history_reference``: the month the known customers' history features are built
        against where ``dataset`` holds only some customers of a table (``load(customers=...)``):
        the whole table's latest snapshot, as when every customer is loaded; None: ``dataset``'s own."""
        self.trained = trained
        self.pipeline = trained.pipeline
        self.schema = self.pipeline.full_schema
        # A model loaded without Keras (``load_model_dir(keras_model=False)``) brings its tower's weights.
        spec = getattr(trained, "tower_spec", None)
        self.tower = NumpyTower.from_spec(spec) if spec is not None else NumpyTower.from_keras(trained.model)
        # A tree blend ranks through the same core: each product's vector gains its unit vector.
        self.blend = getattr(trained, "blend", None)
        self.index = ProductIndex.from_trained(trained)
        self.product_embeddings = self.index.product_embeddings
        # The data's schema.yaml is the bank's current word on display; the model's copy serves without data.
        self.display = (dataset.schema if dataset is not None else self.schema).display
        self.catalogue_changes: F.CatalogueChanges | None = None
        if dataset is None:
            self._use_products(trained.products)
        else:
            self.check_schema(dataset.schema, dataset.source if dataset.source is not None else "the data")
            source = find_table(dataset.source, S.PRODUCTS) if dataset.source is not None else S.PRODUCTS
            self._use_products(*self._current(dataset.products, source, dataset.schema.products.on_offer))
        self.calibration = getattr(trained, "calibration", None)
        self.dataset = dataset
        self.model_version: str | None = None  # set by ``load`` from the manifest (records name it)
        # The name a service answers with (``finrec serve``: the model's folder or the registry's
        # version id); the record log keeps ``model_version``, which a retraining always changes.
        self.served_version: str | None = None
        # The training data the manifest records when it is no longer there (it was moved): why
        # no customer is known, for the messages that say so.
        self.missing_data: str | None = None
        self._history_reference = history_reference  # see ``known_history``
        # The whole data where ``load(customers=...)`` prepared some of it: what is on record of
        # any customer (objection, holdings) binds a features request that names them.
        self._whole: Dataset | None = None
        self._history_rows: dict[str, np.ndarray] | None = None  # id -> its rows, on first need
        self._known: CustomerContext | None = None
        self._row_of: dict[str, int] = {}
        self._adoption_lock = threading.Lock()
        if dataset is not None:
            # Without the adoption model's trees: a report that only ranks never needs them
            # (``known_adoption`` runs them once, on first need).
            self._known = self.context(
                dataset.customers,
                dataset.holdings,
                history=dataset.holdings_history,
                history_reference=history_reference,
                adoption=False,
                validated=True,
            )
            self._row_of = {str(cid): i for i, cid in enumerate(self._known.ids)}

    # ------------------------------------------------------------------------------ catalogue
    def check_schema(self, schema: S.DatasetSchema, where) -> None:
        """Refuse data whose schema is not the model's: the rules read the columns the schema
        names (consent, target market, regimes, affordability), so data that names a rule the
        model's schema lacks would be filtered without it."""
        S.check_model_schema(self.schema, schema, where)

    def _current(
        self, products: pd.DataFrame, source, on_offer: str | None = None
    ) -> tuple[pd.DataFrame, F.CatalogueChanges]:
        return F.current_products(
            self.trained.products, products, self.schema, self.pipeline.product_ids_, source, on_offer
        )

    def _use_products(self, table: pd.DataFrame, changes: F.CatalogueChanges | None = None) -> None:
        """Filter with, and show, the attributes of ``table`` (the model's products, in any order).
        Without ``changes`` (the model's own copy, served without data) every product is offered:
        which ones the bank still offers is the data's word (``products.on_offer``), not the model's."""
        ids = self.pipeline.product_ids_
        discontinued, withdrawn = (changes.discontinued, changes.withdrawn) if changes is not None else ((), ())
        self.catalogue = F.Catalogue.from_products(table, self.schema, ids, discontinued, withdrawn)
        self.catalogue_changes = changes
        self.name_column, self.detail_columns = product_columns(table, self.schema, self.display)
        shown = [c for c in (self.name_column, *self.detail_columns) if c]
        self.products = _product_details(table, self.schema, ids, shown)

    def with_catalogue(self, products: pd.DataFrame, source, on_offer: str | None = None) -> Recommender:
        """This recommender filtering with the data's validated ``products`` table (read from
        ``source``) where it differs from the model's: the rules read its attributes, a product
        it lacks, or marks not on offer in the data's ``on_offer`` column, is never offered, and
        ``catalogue_changes`` says what differs. A copy: the caller's recommender keeps its
        catalogue."""
        other = copy.copy(self)
        other._use_products(*other._current(products, source, on_offer))
        return other

    def for_data(self, data_dir: str | Path) -> Recommender:
        """``with_catalogue`` of ``data_dir``'s products table; this recommender itself when the
        directory has none (customers alone: the model's catalogue, or its data's, applies).
        Which products are on offer is the data's schema's word (``products.on_offer``), which
        the model's need not name (naming it after training is no schema change)."""
        table = self.schema.products
        if (Path(data_dir) / S.SCHEMA_FILE).is_file():
            schema = read_schema(Path(data_dir))
            # A rule the bank named after training (a consent column, a target-market term) would
            # otherwise be read with the model's schema, which lacks it: the rule silently off
            # (score_dataset and build_problem from Python; the CLI and ``load`` refused).
            self.check_schema(schema, data_dir)
            table = dataclasses.replace(table, on_offer=schema.products.on_offer)
        found = read_products(data_dir, table)
        return self if found is None else self.with_catalogue(*found, on_offer=table.on_offer)

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        data_dir: str | Path | None = None,
        datasets: dict | None = None,
        customers: Iterable | str | int | None = None,
        keras_model: bool = True,
    ) -> Recommender:
        """Load a model directory; known customers come from ``data_dir`` or, when omitted, from
        the training data recorded in the model's manifest (if it is still there). ``datasets``:
        a cache of loaded data directories kept by the caller (``serve --root`` loads version
        after version on the same data): reused while the directory's files are unchanged.

        ``customers``: only these known customers are prepared (the data is still read and
        checked whole; the others are never run through the towers or the trees), and
        each is recommended as when all are loaded: ``finrec recommend`` of one customer
        prepared all 2M of a bank, 4.6 GB. An id the data lacks is an ``UnknownCustomerError``.
        ``keras_model=False``: serve through the numpy tower alone, without importing Keras where
        the tower allows (``load_model_dir``): what answering a request needs, 2 s less to start."""
        from finrec.artifacts import load_model_dir, model_version

        loaded = load_model_dir(model_dir, keras_model=keras_model)
        if data_dir and not Path(data_dir).is_dir():
            # Loading no customers instead answered every known id "unknown customer_id".
            raise DataError(f"{data_dir}: no such data directory")
        recorded = loaded.manifest.get("data_path")
        data_dir = data_dir or recorded
        dataset = reference = None
        if data_dir and Path(data_dir).is_dir():
            dataset = _cached_dataset(Path(data_dir), datasets)
            S.check_model_schema(loaded.trained.pipeline.full_schema, dataset.schema, data_dir, model_dir)
            whole = dataset
            if customers is not None:
                history = getattr(loaded.trained.pipeline, "history_", None) is not None
                dataset, reference = _only(dataset, customers, history)
        recommender = cls(loaded.trained, dataset, history_reference=reference)
        if customers is not None and dataset is not None:
            recommender._whole = whole
        if dataset is None and recorded:
            recommender.missing_data = str(recorded)
        # A service or a single request has no summary to carry it: the log says it, once a load.
        for note in recommender.catalogue_changes.notes() if recommender.catalogue_changes else ():
            log.warning("%s", note)
        recommender.model_version = model_version(loaded.manifest)
        recommender.known_adoption()  # at load, not in the first request for a known customer
        return recommender

    def known_adoption(self) -> np.ndarray | None:
        """float64 [n]: P(adopts anything) of every known customer (``CustomerContext.adoption``),
        computed once, on first need; None without known customers or an adoption model."""
        if self._known is None or self.calibration is None or not self.calibration.needs_adoption:
            return None
        with self._adoption_lock:
            known = self._known
            if known.adoption is None:
                data = self.dataset
                objected = known.attributes.get("objected")
                known.adoption = self._adoption(
                    data.customers, known.held, objected, data.holdings_history, self._history_reference
                )
        return known.adoption

    @property
    def known_customers(self) -> pd.DataFrame:
        if self.dataset is None:
            return pd.DataFrame(columns=[self.schema.customers.id])
        return self.dataset.customers

    # ------------------------------------------------------------------------------ inputs
    def context(
        self,
        customers: pd.DataFrame,
        holdings: pd.DataFrame | None = None,
        held: np.ndarray | None = None,
        history: pd.DataFrame | None = None,
        history_reference: int | None = None,
        adoption: bool = True,
        validated: bool = False,
    ) -> CustomerContext:
        """Customers in model-ready form; their holdings as a links table or, when already
        matched to the rows, as ``held`` bool [n, P]; ``history``: their holdings_history
        (``history_reference``: as in ``FeaturePipeline.transform_customers``, for a chunk).
        ``adoption=False`` leaves out what only the probabilities need (the adoption model's
        trees, where the calibration has one): a ranking that shows no probability.

        ``customers`` are checked against the data contract as a customers table is
        (``prepare_entities``) unless ``validated`` says they already were (a ``Dataset``'s,
        a chunk of ``iter_customer_chunks``): a frame without the consent column ranked the
        customers who objected, and text such as ``"52,000"`` in a numeric column was imputed."""
        if not isinstance(customers, pd.DataFrame):
            raise DataError(f"customers must be a pandas DataFrame, got {type(customers).__name__}")
        if not validated:
            if len(customers):
                customers = prepare_entities(customers, self.schema.customers, S.CUSTOMERS)
            else:  # no one to score: an empty context, as long as the columns are there
                V.check_schema_columns(customers, self.schema.customers, S.CUSTOMERS)
        if holdings is not None:
            if not isinstance(holdings, pd.DataFrame):
                raise DataError(f"holdings must be a pandas DataFrame, got {type(holdings).__name__}")
            V.require_columns(holdings, (S.CUSTOMER_ID, S.PRODUCT_ID), S.HOLDINGS)
        if held is not None:
            held = _held_matrix(held, (len(customers), self.pipeline.n_products))
        cid = self.schema.customers.id
        ids = customers[cid].to_numpy() if cid in customers else np.array([None] * len(customers), dtype=object)
        if ids.dtype != object:  # validated tables hold ids as text already; converting costs ~0.15 s per million
            ids = ids.astype(str).astype(object)
        if held is None:
            held = self.pipeline.holdings_matrix(ids, holdings)
        attributes = F.customer_attributes(customers, self.schema)
        return CustomerContext(
            ids=ids,
            inputs=self.pipeline.transform_customers(
                customers, held=held, history=history, history_reference=history_reference
            ),
            attributes=attributes,
            held=held,
            tree=self._tree(customers, held, attributes.get("objected"), history, history_reference),
            adoption=self._adoption(customers, held, attributes.get("objected"), history, history_reference)
            if adoption
            else None,
        )

    def _adoption(self, customers, held, objected, history=None, reference=None) -> np.ndarray | None:
        """P(adopts anything) of ``customers`` (``Calibration.adoption_probability``); None
        without a calibration that multiplies it in. Customers who objected to profiling for
        marketing are not run through its trees: 0, as their probabilities are."""
        if self.calibration is None or not self.calibration.needs_adoption:
            return None
        if objected is None or not objected.any():
            return self.calibration.adoption_probability(customers, held, history, reference)
        out = np.zeros(len(customers))
        keep = np.flatnonzero(~objected)
        if len(keep):
            out[keep] = self.calibration.adoption_probability(customers.iloc[keep], held[keep], history, reference)
        return out

    def _tree(self, customers, held, objected, history=None, reference=None) -> np.ndarray | None:
        """The tree blend's part (``TreeBlend.part``) of ``customers``; None without a blend.
        Customers who objected to profiling for marketing are not run through the trees either:
        their rows stay 0, as they are never ranked."""
        if self.blend is None:
            return None
        return self.blend.part(customers, held, history, reference, skip=objected)

    def _unknown(self, customer_id) -> UnknownCustomerError:
        """The error for an id no loaded customer has, saying why none is loaded where so."""
        if self._whole is not None:
            return UnknownCustomerError(
                f"customer_id {customer_id!r} is not among the {len(self._row_of)} customer(s) loaded "
                "(Recommender.load(customers=...))"
            )
        if self._known:
            return UnknownCustomerError(f"unknown customer_id {customer_id!r}")
        why = (
            f": the model's training data {self.missing_data} is no longer there; give the data directory"
            if self.missing_data
            else ""
        )
        return UnknownCustomerError(f"unknown customer_id {customer_id!r} (no customer table is loaded{why})")

    def _single(self, customer: str | dict) -> CustomerContext:
        if isinstance(customer, dict):
            return self._from_features(customer)
        key = _customer_key(customer)  # ids are stripped text in the files: so in requests
        row = self._row_of.get(key)
        if row is None:
            raise self._unknown(key)
        known = self._known
        return CustomerContext(
            ids=known.ids[row : row + 1],
            inputs={name: values[row : row + 1] for name, values in known.inputs.items()},
            attributes={name: values[row : row + 1] for name, values in known.attributes.items()},
            held=known.held[row : row + 1],
            tree=None if known.tree is None else known.tree[row : row + 1],
            adoption=None if (adoption := self.known_adoption()) is None else adoption[row : row + 1],
        )

    def _on_record(self, customer_id) -> tuple[str, np.ndarray, np.ndarray] | None:
        """(id, held bool [1, P], objected bool [1]) on record of the known customer a feature
        dict's ``customer_id`` names, or None: from the customers loaded, else from the whole
        data of a ``load(customers=...)`` (where a features request for another known customer
        was answered without their objection and holdings: a tester)."""
        if self._known is None or customer_id is None or isinstance(customer_id, (bool, dict, list, tuple)):
            return None
        if isinstance(customer_id, float) and customer_id.is_integer():
            customer_id = int(customer_id)  # the id rule: 7.0 is customer "7" (``finrec.data.ids``)
        key = str(customer_id).strip()
        row = self._row_of.get(key)
        if row is not None:
            return key, self._known.held[row : row + 1], self._known.attributes["objected"][row : row + 1]
        if self._whole is None:
            return None
        one = self._whole.subset_customers([key])
        if len(one.customers) == 0:
            return None
        held = self.pipeline.holdings_matrix(np.array([key], dtype=object), one.holdings)
        return key, held, F.customer_attributes(one.customers, self.schema)["objected"]

    def _from_features(self, features: dict) -> CustomerContext:
        """A new customer given as raw feature values; ``holdings`` may list held product ids and
        ``history`` past snapshots ``[{"product_id", "as_of"}, ...]`` (absent: no history).
        Missing features are imputed like missing values in training (median / OOV)."""
        # NaN (and pd.NA) is a missing value, as in a pandas row (``frame.iloc[i].to_dict()``): it
        # was refused for a number and read as missing for a category. The API refuses NaN itself
        # (JSON marks a missing value by null).
        features = {key: None if _missing_scalar(value) else value for key, value in dict(features).items()}
        held_ids = features.pop(S.HOLDINGS, None)
        history = features.pop("history", None)
        if isinstance(held_ids, (np.ndarray, pd.Series, pd.Index)) and held_ids.ndim == 1:
            held_ids = held_ids.tolist()  # a notebook's array or column of ids: the same list
        held_ids = [] if held_ids is None else held_ids
        if isinstance(held_ids, str) or not isinstance(held_ids, (list, tuple)):
            raise DataError(f"features.holdings must be a list of product ids, got {type(held_ids).__name__}")
        positions = (
            self.pipeline.product_positions([str(p).strip() for p in held_ids]) if held_ids else np.array([], int)
        )
        if (positions < 0).any():
            unknown = [held_ids[i] for i in np.flatnonzero(positions < 0)[:5]]
            raise DataError(f"features.holdings: unknown product id(s) {', '.join(repr(str(p)) for p in unknown)}")
        record: dict[str, Any] = {}
        # The eligibility terms read income, credit score and age by name, features or not: a
        # value given for a schema that does not list them was dropped, so it failed no term,
        # where the same customer in a table was checked (a compliance tester, 2026-12).
        for column in dict.fromkeys([*self.schema.customers.numeric_features, *F.TERM_VALUES.values()]):
            if features.get(column) is not None:
                record[column] = _number(features[column], column)
        for column, (low, high) in V.plausible_limits(self.schema.customers).items():
            value = record.get(column)
            if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
                raise DataError(f"features.{column} {V.limit_text(low, high)}")
        risk = self.schema.customers.risk
        if risk and risk in record:
            r = record[risk]
            if not r.is_integer() or not S.RISK_MIN <= r <= S.RISK_MAX:
                raise DataError(f"features.{risk} must be an integer from {S.RISK_MIN} to {S.RISK_MAX}")
        for column in self.schema.customers.categorical_features:
            value = features.get(column)
            if value is not None:
                if isinstance(value, (dict, list, tuple)):
                    raise DataError(f"features.{column} must be a single value, got {type(value).__name__}")
                record[column] = category_text(value)
        for column, value in C.check_record(features, self.schema.customers).items():
            record.setdefault(column, value)
        cid = self.schema.customers.id
        held = np.isin(np.arange(self.pipeline.n_products), positions)[None, :]
        inputs = self.pipeline.transform_record(record, positions, history)  # checks the history first
        attributes = F.record_attributes(record, self.schema)
        tree = adoption = None
        if self.blend is not None or (self.calibration is not None and self.calibration.needs_adoption):
            from finrec.history_features import history_records

            past = history_records(history) if history else None
            objected = attributes["objected"][0]  # an objector is not run through the trees either
            if self.blend is not None:
                tree = (
                    np.zeros(held.shape, dtype=np.float32) if objected else self.blend.record_part(record, held, past)
                )
            if self.calibration is not None and self.calibration.needs_adoption:
                adoption = np.zeros(1) if objected else self.calibration.record_adoption_probability(record, held, past)
        on_record = self._on_record(features.get(cid))
        if on_record is not None:
            key, record_held, record_objected = on_record
            # Features that name a known customer are scored as given, but what the bank has on
            # record still binds the rules: their objection and their holdings. A request (or an
            # upload) that left them out offered the products the customer holds, and
            # recommended to a customer who objected to profiling (a compliance tester, 2026-12).
            held = held | record_held
            objected = attributes["objected"] | record_objected
            attributes = {**attributes, "objected": objected}
            if objected[0]:
                tree = None if tree is None else np.zeros(held.shape, dtype=np.float32)
                adoption = None if adoption is None else np.zeros(1)
            shown = key  # the id as the tables hold it: the answer and its record name that customer
        else:
            shown = str(features[cid]) if features.get(cid) is not None else "new"
        return CustomerContext(
            ids=np.array([shown], dtype=object),
            inputs=inputs,
            attributes=attributes,
            held=held,
            tree=tree,
            adoption=adoption,
        )

    # ------------------------------------------------------------------------------ scoring
    def embed(self, context: CustomerContext, workers: int | None = None) -> np.ndarray:
        """Customer vectors through the numpy tower (``workers`` threads; None: the tower's own
        setting): the embeddings float32 [n, D], or with a tree blend [n, D + P] (``TreeBlend``),
        against ``self.product_embeddings`` either way."""
        tower = self.tower if workers is None else dataclasses.replace(self.tower, workers=workers)
        embeddings = tower(context.inputs)
        if self.blend is None:
            return embeddings
        if context.tree is None:
            raise FinrecError(
                "this model blends a tree model into its scores: build the context with Recommender.context"
            )
        # The towers' own product embeddings [P, D] (the index holds the blend's [P, D + P] vectors).
        return self.blend.customer_vectors(
            embeddings, context.tree, context.held, self.trained.product_embeddings_, context.attributes.get("objected")
        )

    def scores(self, context: CustomerContext) -> np.ndarray:
        """Scores float32 [n, P]: the cosine similarity, or with a tree blend the blended score
        (``finrec.training.trees.TreeBlend``)."""
        return self.index.scores(self.embed(context))

    def probabilities(self, context: CustomerContext, scores: np.ndarray | None = None) -> np.ndarray:
        """Calibrated adoption probabilities float32 [n, P] of the customers in ``context`` (their
        cosine ``scores`` [n, P] when already computed); 0 for held products. A model without
        calibration raises ``FinrecError``."""
        if self.calibration is None:
            raise FinrecError(NO_CALIBRATION)
        adoption = self._context_adoption(context)
        objected = context.attributes.get("objected")
        if objected is None or not objected.any():
            return self.calibration(self.scores(context) if scores is None else scores, context.held, adoption)
        if scores is not None:
            out = self.calibration(scores, context.held, adoption)
            out[objected] = 0
            return out
        # Customers who objected to profiling for marketing are not scored: their probabilities stay 0.
        out = np.zeros(context.held.shape, dtype=np.float32)
        keep = np.flatnonzero(~objected)
        if len(keep):
            sub = context.take(keep)
            out[keep] = self.calibration(self.scores(sub), sub.held, sub.adoption)
        return out

    def _context_adoption(self, context: CustomerContext) -> np.ndarray | None:
        """``context.adoption``, checked to be there when the calibration multiplies it in."""
        if self.calibration.needs_adoption and context.adoption is None:
            raise FinrecError(
                "these probabilities need each customer's P(adopts anything): build the context with "
                "Recommender.context(..., adoption=True)"
            )
        return context.adoption

    def masks(self, context: CustomerContext, filters: F.Filters) -> dict[str, np.ndarray]:
        return F.exclusion_masks(context.attributes, context.held, self.catalogue, filters)

    def rank(
        self,
        context: CustomerContext,
        k: int,
        filters: F.Filters | dict | str | None = None,
        workers: int | None = None,
    ) -> Ranking:
        """The ranking core: embeddings, the filter masks, then the top ``k`` eligible products
        of every customer in ``context`` (the [n, P] scores are computed chunk by chunk)."""
        _check_k(k)
        filters = F.Filters.build(filters)
        masks = self.masks(context, filters)
        excluded = F.combine(masks, context.held.shape)
        objected = context.attributes.get("objected")
        if objected is None or not objected.any():
            embeddings = self.embed(context, workers)
            index, best = self.index.recommend(embeddings, excluded, k, workers=workers)
            return Ranking(index, best, masks, excluded, embeddings)
        # Customers who objected to profiling are not even embedded: their rows stay empty.
        keep = np.flatnonzero(~objected)
        width = min(k, excluded.shape[1])
        index = np.full((len(objected), width), -1, dtype=np.int64)
        best = np.full((len(objected), width), -np.inf, dtype=np.float32)
        embeddings = np.zeros((len(objected), self.index.product_embeddings.shape[1]), dtype=np.float32)
        if len(keep):
            sub = context.take(keep)
            embeddings[keep] = self.embed(sub, workers)
            sub_index, sub_best = self.index.recommend(embeddings[keep], excluded[keep], k, workers=workers)
            index[keep, : sub_index.shape[1]] = sub_index
            best[keep, : sub_best.shape[1]] = sub_best
        return Ranking(index, best, masks, excluded, embeddings)

    def ranked_probabilities(self, context: CustomerContext, ranking: Ranking) -> np.ndarray:
        """float32 [n, k']: the calibrated probability of each product ``ranking`` chose (0 where
        it chose none), from the ranking's embeddings: no second tower pass."""
        if self.calibration is None:
            raise FinrecError(NO_CALIBRATION)
        # Customers who objected were not ranked: their index is all -1, their probabilities 0.
        adoption = self._context_adoption(context)
        return self.calibration.at(self.index.scores(ranking.embeddings), context.held, ranking.index, adoption)

    def recommend(
        self, customer: str | dict, k: int = 5, filters: F.Filters | dict | str | None = None
    ) -> RecommendationResult:
        """Top ``k`` eligible products for a known ``customer_id`` or a dict of raw features.

        Filters are masks applied before top-K, so up to ``k`` eligible products come back; when
        fewer are eligible, fewer are returned and ``message`` says so."""
        _check_k(k)
        filters = F.Filters.build(filters)
        context = self._single(customer)
        if isinstance(customer, dict):
            # Features that name a known customer answer (and are recorded) as that customer:
            # their objection and holdings bound the answer, the record log said "null" (a tester).
            named = str(context.ids[0])
            customer_id = named if self._on_record(named) is not None else None
        else:
            customer_id = _customer_key(customer)
        return self._result(context, customer_id, k, filters)

    def what_if(
        self, customer_id: str, changes: dict, k: int = 5, filters: F.Filters | dict | str | None = None
    ) -> RecommendationResult:
        """``recommend`` for a known customer with some attributes changed (``changes``: column ->
        value, checked as a request's features are): their holdings and their history stay
        theirs. A dict of features is a new customer, with no history: on a model with history
        features, any change moved the top K for that reason alone."""
        _check_k(k)
        if not isinstance(changes, Mapping):
            raise DataError(f"what-if: changes must be a mapping of column -> value, got {type(changes).__name__}")
        filters = F.Filters.build(filters)
        key = _customer_key(customer_id)
        row = self._row_of.get(key)
        if row is None:
            raise self._unknown(customer_id)
        columns = {*self.schema.customers.numeric_features, *self.schema.customers.categorical_features}
        unknown = sorted(set(changes) - columns)
        if unknown:
            raise DataError(f"what-if: {', '.join(map(repr, unknown))} is no customer feature of this model")
        customers = self.dataset.customers.iloc[[row]].copy()
        self._from_features({**_jsonable(customers.iloc[0].to_dict()), **changes})  # the values checked
        for column, value in changes.items():
            # As text for a category (a pandas Categorical would make a value it lacks missing).
            numeric = column in self.schema.customers.numeric_features
            customers[column] = pd.Series([value], index=customers.index, dtype="float64" if numeric else object)
        history, reference = self.known_history(key)
        context = self.context(
            customers,
            held=self._known.held[row : row + 1],
            history=history,
            history_reference=reference,
            validated=True,  # the changes were checked as a request's features are, just above
        )
        return self._result(context, key, k, filters)

    def known_history(self, customer_id: str) -> tuple[pd.DataFrame | None, int | None]:
        """A known customer's holdings_history rows and the month their history features are
        built against (the whole table's latest snapshot, as ``known_customers`` are scored), for
        a model with history features; (None, None) otherwise."""
        history = None if self.dataset is None else self.dataset.holdings_history
        if getattr(self.pipeline, "history_", None) is None or history is None:
            return None, None
        if len(history) == 0 and self._history_reference is None:
            return None, None  # (loaded ``customers`` without rows keep the whole table's month)
        if self._history_rows is None:
            from finrec.history_features import months

            if self._history_reference is None:
                self._history_reference = int(months(history[S.AS_OF]).max())
            # Grouped once: a scan of the table per call (the dashboard's explain and what-if)
            # cost seconds on a history of millions of rows.
            self._history_rows = history.groupby(history[S.CUSTOMER_ID].astype(str), sort=False).indices
        rows = self._history_rows.get(str(customer_id).strip(), np.empty(0, dtype=np.intp))
        return history.iloc[rows].reset_index(drop=True), self._history_reference

    def _result(
        self, context: CustomerContext, customer_id: str | None, k: int, filters: F.Filters
    ) -> RecommendationResult:
        """The recommendation of the one customer of ``context``."""
        if context.attributes["objected"][0]:
            # GDPR Art. 21(3): no profiling for marketing at all, so no ranking and no exclusions to record.
            return RecommendationResult(
                customer_id, int(k), [], 0, filters, F.CONSENT_MESSAGE, objected=True, rules=["consent"]
            )
        ranking = self.rank(context, k, filters)
        masks, excluded = ranking.masks, ranking.excluded
        probabilities = self.ranked_probabilities(context, ranking)[0] if self.calibration is not None else None
        items = []
        for rank, (j, score) in enumerate(zip(ranking.index[0], ranking.scores[0]), start=1):
            if not np.isfinite(score):
                break
            items.append(
                Recommendation(
                    rank=rank,
                    product_id=str(self.pipeline.product_ids_[j]),
                    score=float(score),
                    product=self.products[j],
                    reason=F.describe_allowed(context.attributes, self.catalogue, masks, 0, j),
                    probability=None if probabilities is None else float(probabilities[rank - 1]),
                    regime=None if self.catalogue.regime is None else str(self.catalogue.regime[j]),
                )
            )
        eligible = int((~excluded[0]).sum())
        message = None
        if len(items) < k:
            message = (
                f"only {eligible} product(s) are eligible under these filters; returning {len(items)} instead of {k}"
            )
        return RecommendationResult(
            customer_id,
            int(k),
            items,
            eligible,
            filters,
            message,
            exclusions=self._exclusions(masks),
            rules=[r for r in F.RULES if r in masks],
        )

    def _exclusions(self, masks: dict[str, np.ndarray]) -> list[tuple[str, str]]:
        """(product_id, first rule in ``F.RULES`` order) for every product excluded in row 0."""
        rules = [rule for rule in F.RULES if rule in masks]
        if not rules:
            return []
        stacked = np.stack([masks[rule][0] for rule in rules])  # [R, P]
        first = stacked.argmax(axis=0)
        ids = self.pipeline.product_ids_
        return [(str(ids[j]), rules[first[j]]) for j in np.flatnonzero(stacked.any(axis=0))]

    def audit(self, customer: str | dict, filters: F.Filters | dict | str | None = None) -> pd.DataFrame:
        """Every product with its score and, when excluded, the rule that removed it and why."""
        filters = F.Filters.build(filters)
        context = self._single(customer)
        masks = self.masks(context, filters)
        # A customer who objected to profiling is not scored, not even for an audit.
        objected = bool(context.attributes["objected"][0])
        scores = np.full(len(self.pipeline.product_ids_), np.nan) if objected else self.scores(context)[0]
        rows = []
        for j, pid in enumerate(self.pipeline.product_ids_):
            rule = F.first_reason(masks, 0, j)
            rows.append(
                {
                    S.PRODUCT_ID: pid,
                    "score": float(scores[j]),
                    "excluded_by": rule,
                    "detail": F.describe_exclusion(rule, context.attributes, self.catalogue, 0, j, filters)
                    if rule
                    else "eligible",
                }
            )
        return pd.DataFrame(rows).sort_values("score", ascending=False, kind="stable").reset_index(drop=True)

    def customer_profile(self, customer_id: str) -> dict[str, Any]:
        """The raw attributes and holdings of a known customer."""
        row = self._row_of.get(_customer_key(customer_id))
        if row is None:
            raise self._unknown(customer_id)
        record = self.dataset.customers.iloc[row].to_dict()
        held = [self.pipeline.product_ids_[j] for j in np.flatnonzero(self._known.held[row])]
        return {"customer_id": str(customer_id).strip(), "attributes": _jsonable(record), "holdings": held}


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise FinrecError(f"k must be a positive integer, got {safe_text(k, quote=True)}")


def _number(value, column: str) -> float:
    """A request's numeric feature as a float. Messages name the field and the kind of value,
    never the value (it is customer data)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DataError(f"features.{column} must be a number, got {type(_plain(value)).__name__}")
    if not math.isfinite(float(value)):
        raise DataError(f"features.{column} must be a finite number")
    return float(value)


def _missing_scalar(value) -> bool:
    return value is pd.NA or value is pd.NaT or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _customer_key(customer) -> str:
    """A customer id as the loaded tables hold it (stripped text). Anything but text or an
    integer is refused: a pandas row, a list or None was looked up as its printed form and
    answered "unknown customer_id" with the whole row in the message."""
    if isinstance(customer, bool) or not isinstance(customer, (str, int, np.integer)):
        raise DataError(
            f"a customer is a customer_id (text or an integer) or a dict of features, got {type(customer).__name__}"
            + (" (a row: pass row.to_dict() or its id)" if isinstance(customer, pd.Series) else "")
        )
    return str(customer).strip()


def _held_matrix(held, shape: tuple[int, int]) -> np.ndarray:
    """``held`` as bool ``shape`` (customers x the model's products); 0/1 numbers are taken."""
    try:
        matrix = np.asarray(held)
    except (TypeError, ValueError):
        raise DataError(f"held must be a bool array of shape {shape}, got {type(held).__name__}") from None
    if matrix.shape != shape:
        raise DataError(
            f"held must have one row per customer and one column per product of the model {shape}, "
            f"got shape {matrix.shape}"
        )
    if matrix.dtype == bool:
        return matrix
    if matrix.dtype.kind not in "iuf" or not np.isin(matrix, (0, 1)).all():
        raise DataError(f"held must hold True/False (or 1/0), got dtype {matrix.dtype}")
    return matrix.astype(bool)


def _only(dataset: Dataset, customers, history: bool) -> tuple[Dataset, int | None]:
    """(``dataset`` restricted to ``customers``, the month of its whole history's latest snapshot
    where the model reads a ``history``, else None): what ``Recommender.load(customers=...)``
    prepares. ``customers``: ids, or one id."""
    one = isinstance(customers, (str, int, np.integer))
    keys = [_customer_key(c) for c in ([customers] if one else customers)]
    subset = dataset.subset_customers(keys)
    found = set(subset.customers[dataset.schema.customers.id].astype(str))
    missing = [key for key in keys if key not in found]
    if missing:
        raise UnknownCustomerError(f"unknown customer_id {missing[0]!r}")
    table = dataset.holdings_history
    if not history or table is None or len(table) == 0:
        return subset, None
    from finrec.history_features import months

    return subset, int(months(table[S.AS_OF]).max())


def _cached_dataset(data_dir: Path, cache: dict | None) -> Dataset:
    """``load_dataset(data_dir)``, from ``cache`` when its files (names, sizes, mtimes) are unchanged."""
    if cache is None:
        return load_dataset(data_dir, require_interactions=False, ground_truth=False)
    stamp = directory_stamp(data_dir)
    key = str(data_dir.resolve())
    hit = cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    dataset = load_dataset(data_dir, require_interactions=False, ground_truth=False)
    cache.clear()  # one data directory at a time: the older one is not served any more
    cache[key] = (stamp, dataset)
    return dataset


def _plain(value: Any) -> Any:
    """numpy scalars as plain Python values, for messages."""
    return value.item() if isinstance(value, np.generic) else value


def product_columns(
    products: pd.DataFrame, schema: S.DatasetSchema, hints: S.DisplayHints | None = None
) -> tuple[str | None, tuple[str, ...]]:
    """(name column or None, detail columns) of a catalogue: what a recommendation carries.

    The display hints decide when given; otherwise the name is the first text column outside the
    features whose values tell every product apart, and the details are every product feature
    (category, risk, numeric, categorical) plus the contract's eligibility terms, in schema order."""
    hints = hints or schema.display
    p = schema.products
    name = hints.product_name
    if name is None:
        features = {p.id, *p.numeric_features, *p.categorical_features}
        for column in products.columns:
            values = products[column]
            if column in features or not (pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)):
                continue
            if values.notna().all() and values.astype(str).str.strip().ne("").all() and values.is_unique:
                name = str(column)
                break
    if hints.product_details is not None:
        details = list(hints.product_details)
    else:
        details = [c for c in (p.category, p.risk) if c] + [*p.numeric, *p.categorical]
        details += [c for c in TERM_COLUMNS if c in products]
    details = [c for c in dict.fromkeys(details) if c != name and c in products]
    return name, tuple(details)


def _product_details(
    products: pd.DataFrame, schema: S.DatasetSchema, product_ids: list[str], shown: list[str]
) -> list[dict[str, Any]]:
    table = products.set_index(products[schema.products.id].astype(str)).loc[product_ids]
    # The filters' inputs always travel with a recommendation, whatever the display hints say.
    carried = [*shown, *(c for c in (schema.products.risk, schema.products.category) if c), *TERM_COLUMNS]
    columns = [c for c in dict.fromkeys(carried) if c in table]
    return [_jsonable(record) for record in table[columns].to_dict("records")]


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and math.isnan(value):
            value = None
        out[str(key)] = value
    return out
