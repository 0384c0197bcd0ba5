"""The Two-Tower model: customer tower x (product tower over the whole catalogue) -> cosine.

The training model is Functional::

    customer inputs -> customer_tower -> c [B, D]
    CatalogueSimilarity(product_tower, catalogue features) : c -> c @ p^T  [B, P]

``CatalogueSimilarity`` holds the catalogue's (already transformed) features as non-trainable
weights and runs the product tower over all of them, so one ``.keras`` file carries both towers
and the catalogue; with tens to hundreds of products that costs less than a customer batch.
Scores are cosine similarities (both embeddings are L2-normalized); the loss divides by the
temperature.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from finrec.config import ModelConfig
from finrec.features import PRODUCT_INDEX, FeaturePipeline
from finrec.model.ensemble import member_scores
from finrec.model.tower_spec import SIMILARITY
from finrec.model.towers import CUSTOMER_TOWER, customer_tower, product_tower

PRODUCT_KNOWN = "product_known"  # float [P]: 1 for products with training adoptions


@keras.saving.register_keras_serializable(package="finrec")
class CatalogueSimilarity(layers.Layer):
    """Cosine similarity of each customer embedding with every product's embedding.

    Shapes: customer embeddings [B, D] -> scores [B, P]. ``feature_shapes`` maps each product
    tower input to its [P, ...] shape; integer inputs are listed in ``integer_features``.

    An ensemble of ``members`` k > 1 (``finrec.model.ensemble``) outputs every member's cosine,
    [B, k * P], for ``losses.MemberMean``; the embeddings themselves stay [B, k * D] whose dot
    product is the members' mean cosine (what serving ranks by).
    """

    def __init__(
        self, product_tower: keras.Model, feature_shapes: dict, integer_features: list, members: int = 1, **kwargs
    ):
        super().__init__(**kwargs)
        self.members = int(members)
        self.product_tower = product_tower
        self.feature_shapes = {k: tuple(v) for k, v in feature_shapes.items()}
        self.integer_features = list(integer_features)
        self.catalogue = {
            name: self.add_weight(name=f"catalogue_{name}", shape=shape, initializer="zeros", trainable=False)
            for name, shape in self.feature_shapes.items()
        }

    def set_catalogue(self, features: dict[str, np.ndarray]) -> None:
        for name, value in features.items():
            self.catalogue[name].assign(np.asarray(value, dtype="float32"))

    def catalogue_inputs(self) -> dict:
        return {
            name: ops.cast(weight, "int32") if name in self.integer_features else ops.convert_to_tensor(weight)
            for name, weight in self.catalogue.items()
        }

    def product_embeddings(self, training=False):
        """[P, D]."""
        return self.product_tower(self.catalogue_inputs(), training=training)

    @property
    def n_products(self) -> int:
        return next(iter(self.feature_shapes.values()))[0]

    def call(self, customer_embeddings, training=False):
        products = self.product_embeddings(training=training)
        if self.members > 1:
            return member_scores(customer_embeddings, products, self.members, self.n_products)
        return ops.matmul(customer_embeddings, ops.transpose(products))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.members * self.n_products)

    def get_config(self):
        config = super().get_config()
        config.update(
            product_tower=keras.saving.serialize_keras_object(self.product_tower),
            feature_shapes={k: list(v) for k, v in self.feature_shapes.items()},
            integer_features=self.integer_features,
            members=self.members,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["product_tower"] = keras.saving.deserialize_keras_object(config["product_tower"])
        return cls(**config)


def build_two_tower(
    pipeline: FeaturePipeline, catalogue: dict[str, np.ndarray], config: ModelConfig, holdings_dropout: float = 0.0
) -> keras.Model:
    """The training model: customer inputs -> cosine scores [B, P] against the catalogue.
    ``holdings_dropout`` (training only) zeroes holdings and history of that share of the rows."""
    customers = customer_tower(pipeline.customer_input_spec(), config, holdings_dropout, pipeline.customer_bins_)
    product_spec = pipeline.product_input_spec()
    if config.product_id_dropout > 0:
        # Products without training adoptions get a zero id embedding (IdDropout).
        catalogue = {**catalogue, PRODUCT_KNOWN: (np.asarray(pipeline.product_popularity_) > 0).astype("float32")}
        product_spec[PRODUCT_KNOWN] = ("known", pipeline.n_products)
    products = product_tower(product_spec, config)
    integer = [name for name, (kind, _) in product_spec.items() if kind == "categorical"]
    similarity = CatalogueSimilarity(
        products,
        feature_shapes={name: value.shape for name, value in catalogue.items()},
        integer_features=integer,
        members=config.ensemble_size,
        name=SIMILARITY,
    )
    similarity.set_catalogue(catalogue)
    inputs = {
        name: keras.Input(shape=tensor.shape[1:], name=name, dtype=tensor.dtype)
        for name, tensor in customers.input.items()
    }
    scores = similarity(customers(inputs))
    return keras.Model(inputs, scores, name="two_tower")


def towers_of(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(customer tower, product tower) of a trained or loaded two-tower model."""
    return model.get_layer(CUSTOMER_TOWER), model.get_layer(SIMILARITY).product_tower


def product_embeddings(model: keras.Model) -> np.ndarray:
    """float32 [P, D] in catalogue order."""
    return keras.ops.convert_to_numpy(model.get_layer(SIMILARITY).product_embeddings(training=False)).astype("float32")


def customer_embeddings(model: keras.Model, inputs: dict[str, np.ndarray], batch_size: int = 8192) -> np.ndarray:
    """float32 [n, D] through the Keras customer tower (the reference for the fast path)."""
    tower = model.get_layer(CUSTOMER_TOWER)
    n = len(next(iter(inputs.values())))
    out = []
    for start in range(0, n, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in inputs.items()}
        out.append(keras.ops.convert_to_numpy(tower(batch, training=False)))
    return np.concatenate(out).astype("float32") if out else np.zeros((0, tower.output.shape[-1]), "float32")


__all__ = [
    "CatalogueSimilarity",
    "build_two_tower",
    "towers_of",
    "product_embeddings",
    "customer_embeddings",
    "PRODUCT_INDEX",
]
