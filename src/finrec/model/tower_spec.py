"""The customer tower's weights as plain arrays: what the numpy tower folds, with no Keras import.

``finrec.recommend.index.NumpyTower`` turns a ``TowerSpec`` into its numpy forward pass. A spec
comes from a live Keras tower (``NumpyTower.from_keras``) or, for a tower made only of Keras'
standard layers, straight from a saved model's ``config.json`` and weights (``spec_from_saved``,
fed by ``finrec.artifacts``): loading TensorFlow costs ~10 s of a command that only needs the
customer embeddings, such as ``finrec plan``.

Importing this module imports no Keras: it holds the tower names and plain dataclasses only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from finrec.model.numeric_twin import NumpyPiecewiseLinear, bin_table

# Stable layer names: the numpy inference path finds the customer tower by this name.
CUSTOMER_TOWER = "customer_tower"
PRODUCT_TOWER = "product_tower"
SIMILARITY = "catalogue_similarity"  # the two-tower model's layer scoring the catalogue

# The Keras layers a saved tower may hold for ``spec_from_saved`` (anything else: load Keras).
STANDARD_LAYERS = frozenset(
    {"InputLayer", "Embedding", "Dense", "Concatenate", "BatchNormalization", "ReLU", "Dropout", "UnitNormalization"}
)
# finrec's own layers it reads too (registered name -> class name): no Keras code runs in them at
# inference that numpy cannot (the cold-start dropout is the identity there).
FINREC_LAYERS = {
    "finrec>PiecewiseLinearEmbedding": "PiecewiseLinearEmbedding",
    "finrec>ColdStartDropout": "ColdStartDropout",
}


def _readable(layer: dict) -> bool:
    if layer.get("class_name") in STANDARD_LAYERS and layer.get("module") == "keras.layers":
        return True
    return FINREC_LAYERS.get(layer.get("registered_name")) == layer.get("class_name")


@dataclass
class TowerSource:
    """One block of the concatenated tower input, fed by model input ``input``."""

    input: str
    kind: str  # "numeric" | "categorical" | "multi_hot" | "history"
    width: int  # its columns in the concatenation
    table: np.ndarray | None = None  # categorical: the embedding table float32 [vocab, width]
    kernel: np.ndarray | None = None  # multi_hot: the holdings bag float64 [P, width] (no bias)
    encode: object = None  # history: the numpy twin of its encoder (finrec.recommend.history_twin)
    twin: object = None  # numeric embedding: its numpy twin (finrec.model.numeric)


@dataclass
class BatchNorm:
    """Inference-mode BatchNorm statistics (float32 [units]); gamma/beta None when not used."""

    moving_mean: np.ndarray
    moving_variance: np.ndarray
    gamma: np.ndarray | None
    beta: np.ndarray | None
    epsilon: float


@dataclass
class TowerSpec:
    """The customer tower, layer by layer: kernels and biases float64, as the folding reads them."""

    name: str
    sources: list[TowerSource]  # in the order of the concatenation
    crosses: list[tuple[np.ndarray, np.ndarray | None]]  # per cross layer: its Dense (kernel, bias)
    dense: list[tuple[np.ndarray, np.ndarray | None, BatchNorm | None]]  # hidden layers, then ReLU
    output: tuple[np.ndarray, np.ndarray | None]  # the output Dense ([k, in, out] for an ensemble)
    member_scales: np.ndarray | None  # an ensemble's per-member input scales float64 [k, in]
    flops: int  # 2 x multiply-adds of the Keras tower (finrec.model.towers.flops_per_example)
    # Saved towers only: input name -> shape without the batch axis, and the embedding sizes:
    # what ``finrec.artifacts`` checks against the feature pipeline.
    input_shapes: dict[str, tuple] = field(default_factory=dict)
    embedding_sizes: dict[str, int] = field(default_factory=dict)
    catalogue: int | None = None  # the products the similarity layer scores

    @property
    def output_dim(self) -> int:
        return int(self.output[0].shape[-1])


def spec_from_saved(model_config: dict, variables: dict[str, list[np.ndarray]], name: str = CUSTOMER_TOWER):
    """The ``TowerSpec`` of tower ``name`` of a saved two-tower model, from its ``config.json``
    (parsed) and its weights (layer name -> the layer's variables in Keras' order, float32);
    None when the tower has a layer outside ``STANDARD_LAYERS`` and ``FINREC_LAYERS`` (an
    ensemble, crosses, history encoders, periodic embeddings): those need Keras to be read."""
    tower = next(
        (
            layer
            for layer in model_config.get("config", {}).get("layers", [])
            if layer.get("class_name") == "Functional" and layer.get("config", {}).get("name") == name
        ),
        None,
    )
    if tower is None:
        return None
    layers = tower["config"]["layers"]
    if not all(_readable(layer) for layer in layers):
        return None
    by_name = {layer["config"]["name"]: layer for layer in layers}
    config = {n: layer["config"] for n, layer in by_name.items()}

    def weights(layer: str, count: int) -> list[np.ndarray]:
        found = variables.get(layer)
        if found is None or len(found) != count:
            raise ValueError(f"{layer}: expected {count} weight arrays, found {0 if found is None else len(found)}")
        return [np.asarray(v, dtype=np.float32) for v in found]

    def linear(layer: str) -> tuple[np.ndarray, np.ndarray | None]:
        c = config[layer]
        if by_name[layer]["class_name"] != "Dense" or c.get("activation", "linear") != "linear":
            raise ValueError(f"{layer}: not a linear Dense layer")
        found = weights(layer, 2 if c["use_bias"] else 1)
        # Keras refuses weights whose shapes differ from the config; so must this reader (a
        # bias or BatchNorm vector of length 1 would otherwise broadcast into wrong scores).
        if found[0].ndim != 2 or found[0].shape[1] != c["units"]:
            raise ValueError(f"{layer}: kernel of shape {found[0].shape}, expected (n, {c['units']})")
        if c["use_bias"] and found[1].shape != (c["units"],):
            raise ValueError(f"{layer}: bias of shape {found[1].shape}, expected ({c['units']},)")
        return found[0].astype("float64"), (found[1].astype("float64") if c["use_bias"] else None)

    def fed_width(layer: str) -> int:
        """The last dimension of the input layer feeding ``layer`` (through the cold-start
        dropout, whose output i is its input i)."""
        feeding, _, index = by_name[layer]["inbound_nodes"][0]["args"][0]["config"]["keras_history"]
        while by_name[feeding]["class_name"] == "ColdStartDropout":
            feeding, _, index = by_name[feeding]["inbound_nodes"][0]["args"][0][index]["config"]["keras_history"]
        return int(config[feeding]["batch_shape"][-1])

    def require_rows(layer: str, kernel: np.ndarray, width: int) -> None:
        if kernel.shape[0] != width:
            raise ValueError(f"{layer}: kernel of shape {kernel.shape}, expected ({width}, ...) from the layer before")

    concat = by_name.get(f"{name}_concat")
    if concat is not None:
        inbound = concat["inbound_nodes"][0]["args"][0]
        sources = [tensor["config"]["keras_history"][0] for tensor in inbound]
    else:  # a single part: whichever layer (or input) feeds the rest
        prefixes = (f"{name}_emb_", f"{name}_bag_", f"{name}_numemb_")
        sources = [n for n in by_name if n.startswith(prefixes)] or [
            n
            for n, layer in by_name.items()
            if layer["class_name"] == "InputLayer" and (config[n]["batch_shape"][1:] or [0])[-1]
        ]
        sources = sources[:1]
    parts: list[TowerSource] = []
    embedding_sizes: dict[str, int] = {}
    extra_flops = 0  # of the numeric embedding, counted as flops_per_example does
    for source in sources:
        kind = by_name[source]["class_name"]
        if source.startswith(f"{name}_emb_") and kind == "Embedding":
            (table,) = weights(source, 1)
            want = (int(config[source]["input_dim"]), int(config[source]["output_dim"]))
            if table.shape != want:
                raise ValueError(f"{source}: embedding table of shape {table.shape}, expected {want}")
            parts.append(TowerSource(source[len(f"{name}_emb_") :], "categorical", table.shape[1], table=table))
            embedding_sizes[source] = int(config[source]["input_dim"])
        elif source.startswith(f"{name}_bag_") and kind == "Dense":
            kernel, bias = linear(source)
            if bias is not None:
                raise ValueError(f"{source}: a bag with a bias is not supported")
            require_rows(source, kernel, fed_width(source))
            parts.append(TowerSource(source[len(f"{name}_bag_") :], "multi_hot", kernel.shape[1], kernel=kernel))
        elif source.startswith(f"{name}_numemb_") and kind == "PiecewiseLinearEmbedding":
            left, width = bin_table(config[source]["edges"])
            dim = int(config[source]["dim"])
            kernel, bias = weights(source, 2)
            n_features = fed_width(source)
            if kernel.shape != (*left.shape, dim) or bias.shape != (left.shape[0], dim) or n_features != left.shape[0]:
                raise ValueError(
                    f"{source}: kernel {kernel.shape} and bias {bias.shape} for {n_features} input column(s), "
                    f"expected {(*left.shape, dim)} and {(left.shape[0], dim)} from its bins"
                )
            twin = NumpyPiecewiseLinear.from_weights(left, width, kernel, bias)
            parts.append(TowerSource(source[len(f"{name}_numemb_") :], "numeric", n_features * dim, twin=twin))
            extra_flops += 2 * kernel.size
        elif kind == "InputLayer":
            parts.append(TowerSource(source, "numeric", int(config[source]["batch_shape"][-1])))
        else:
            raise ValueError(f"{name}: unexpected input layer {source!r} of the concatenation")

    dense: list[tuple[np.ndarray, np.ndarray | None, BatchNorm | None]] = []
    width = sum(part.width for part in parts)
    i = 0
    while f"{name}_dense_{i}" in by_name:
        kernel, bias = linear(f"{name}_dense_{i}")
        require_rows(f"{name}_dense_{i}", kernel, width)
        width = kernel.shape[1]
        bn_name = f"{name}_bn_{i}"
        bn = None
        if bn_name in by_name:
            c = config[bn_name]
            if c.get("axis", -1) not in (-1, [-1]):
                raise ValueError(f"{bn_name}: only the last axis is supported")
            found = weights(bn_name, 2 + bool(c["scale"]) + bool(c["center"]))
            if any(v.shape != (width,) for v in found):
                raise ValueError(f"{bn_name}: variables of shapes {[v.shape for v in found]}, expected ({width},)")
            gamma = found.pop(0) if c["scale"] else None
            beta = found.pop(0) if c["center"] else None
            bn = BatchNorm(found[0], found[1], gamma, beta, float(c["epsilon"]))
        dense.append((kernel, bias, bn))
        i += 1
    output = linear(f"{name}_output")
    require_rows(f"{name}_output", output[0], width)
    dense_layers = [n for n, layer in by_name.items() if layer["class_name"] == "Dense"]
    flops = sum(2 * math.prod(weights(n, 2 if config[n]["use_bias"] else 1)[0].shape) for n in dense_layers)
    inputs = {
        n: tuple(config[n]["batch_shape"][1:]) for n, layer in by_name.items() if layer["class_name"] == "InputLayer"
    }
    # The catalogue the saved model scores, as Keras' load would check it against the pipeline.
    similarity = [
        layer["config"].get("feature_shapes", {})
        for layer in model_config.get("config", {}).get("layers", [])
        if layer.get("config", {}).get("name") == SIMILARITY
    ]
    sizes = {int(shape[0]) for shapes in similarity for shape in shapes.values()}
    if len(similarity) != 1 or len(sizes) != 1:
        raise ValueError(f"{SIMILARITY}: not one layer with one catalogue size")
    return TowerSpec(
        name=name,
        sources=parts,
        crosses=[],
        dense=dense,
        output=output,
        member_scales=None,
        flops=int(flops + extra_flops),
        input_shapes=inputs,
        embedding_sizes=embedding_sizes,
        catalogue=sizes.pop(),
    )
