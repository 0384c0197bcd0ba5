"""The lean inference path: the customer tower as plain numpy, and the catalogue as a matrix.

A single request must not pay for ``model.predict`` (tens of milliseconds of graph dispatch);
``NumpyTower`` runs the same forward pass as the Keras customer tower with a handful of numpy
calls, and ``ProductIndex`` turns customer embeddings into cosine scores and a top K::

    tower = NumpyTower.from_keras(trained.model)        # or the "customer_tower" itself
    index = ProductIndex.from_trained(trained)
    emb = tower(pipeline.transform_customers(customers, holdings))        # float32 [n, D]
    best, scores = index.recommend(emb, excluded=held, k=5)               # [n, k'] each

What ``from_keras`` reads (by the stable layer names of ``finrec.model.towers``) and how it
folds it for inference:

- ``<tower>_emb_<input>`` embedding tables: gathered straight into the concatenated input;
- ``<tower>_bag_<input>`` (holdings, Dense without bias): without cross layers it is folded into
  the first Dense (``holdings @ (W_bag @ W_1)``), with cross layers it stays a matmul because
  the crosses need the concatenated ``x0`` itself;
- ``<tower>_cross_<i>``: ``x0 * (x W + b) + x``;
- ``<tower>_dense_<i>`` + ``<tower>_bn_<i>``: the inference-mode BatchNorm
  ``gamma (x - mean) / sqrt(var + eps) + beta`` is folded into the kernel and a bias; ReLU;
  dropout is the identity at inference;
- ``<tower>_output`` (Dense with bias), then the L2 normalization exactly as Keras'
  ``UnitNormalization`` does it: ``x * min(1 / sqrt(sum x^2), 1 / 1e-12)``.

The concatenation order is read from the model graph (the inbound layers of ``<tower>_concat``).
All math is float32; a batch is processed in chunks of ``chunk_size`` rows through
preallocated buffers, so the intermediate activations stay in cache and the matmuls go to BLAS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# keras.layers.UnitNormalization: ops.normalize(x, order=2, epsilon=1e-12), computed as
# x * minimum(rsqrt(sum(x^2)), 1 / epsilon), i.e. the norm is floored at epsilon.
UNIT_NORM_EPSILON = 1e-12
DEFAULT_CHUNK = 4096

_F32 = np.float32


def _numpy(value) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(value), dtype=_F32)


@dataclass
class _Part:
    """One block of the concatenated tower input: ``columns`` of the concat, fed by ``input``."""

    input: str
    kind: str  # "numeric" | "categorical" | "multi_hot"
    columns: slice  # where it lands in the buffer the first matmul reads
    table: np.ndarray | None = None  # embedding table [vocab, dim] (categorical)


@dataclass
class _Linear:
    kernel: np.ndarray  # float32 [in, out], C-contiguous
    bias: np.ndarray | None  # float32 [out]
    relu: bool


@dataclass
class NumpyTower:
    """A Keras customer tower as a numpy forward pass: ``tower(inputs) -> float32 [n, D]``.

    Build it with ``from_keras``; the fields are the folded weights (see the module doc).
    ``inputs`` is the dict ``FeaturePipeline.transform_customers`` produces (holdings may be
    float or bool); extra keys are ignored.
    """

    parts: list[_Part]
    input_width: int  # width of the buffer the first matmul (or the cross stack) reads
    bag: tuple[str, slice, np.ndarray] | None  # (input, concat columns, W_bag) when not folded
    crosses: list[tuple[np.ndarray, np.ndarray]]  # (W [d, d], b [d]) per cross layer
    layers: list[_Linear]  # dense(+folded BN)+ReLU ..., output (no ReLU)
    flops: int  # of the Keras model, 2 x multiply-adds (see ``flops_per_customer``)
    chunk_size: int = DEFAULT_CHUNK
    _widths: list[int] = field(init=False, repr=False)

    def __post_init__(self):
        self._widths = [layer.kernel.shape[1] for layer in self.layers]

    # ------------------------------------------------------------------------ construction
    @classmethod
    def from_keras(cls, tower, chunk_size: int = DEFAULT_CHUNK) -> "NumpyTower":
        """Extract the weights of ``tower`` (the customer tower, or a two-tower model that
        contains a ``customer_tower`` layer)."""
        from keras import layers as KL

        from finrec.model.towers import CrossLayer

        if not any(layer.name.endswith("_output") for layer in tower.layers):
            tower = tower.get_layer("customer_tower")
        name = tower.name
        by_name = {layer.name: layer for layer in tower.layers}

        def linear_of(dense) -> tuple[np.ndarray, np.ndarray | None]:
            activation = getattr(dense.activation, "__name__", "linear")
            if activation != "linear":  # pragma: no cover - towers.py builds linear Dense layers
                raise ValueError(f"{dense.name}: activation {activation!r} is not supported by the numpy tower")
            return _numpy(dense.kernel), (_numpy(dense.bias) if dense.use_bias else None)

        # -- the concatenated input, in the order of the Concatenate layer's inbound layers
        concat = by_name.get(f"{name}_concat")
        if concat is not None:
            sources = [node.operation for node in concat._inbound_nodes[0].parent_nodes]
        else:  # a single part: whichever layer (or input) feeds the rest
            feeders = [layer for layer in tower.layers if layer.name.startswith((f"{name}_emb_", f"{name}_bag_"))]
            if not feeders:
                feeders = [layer for layer in tower.layers if isinstance(layer, KL.InputLayer) and layer.output.shape[-1]]
            sources = feeders[:1]
        parts: list[_Part] = []
        bag_kernel, offset = None, 0
        for source in sources:
            if source.name.startswith(f"{name}_emb_"):
                table = _numpy(source.embeddings)
                parts.append(_Part(source.name[len(f"{name}_emb_"):], "categorical", slice(offset, offset + table.shape[1]), table))
                offset += table.shape[1]
            elif source.name.startswith(f"{name}_bag_"):
                kernel, bias = linear_of(source)
                if bias is not None:  # pragma: no cover
                    raise ValueError(f"{source.name}: a bag with a bias is not supported")
                parts.append(_Part(source.name[len(f"{name}_bag_"):], "multi_hot", slice(offset, offset + kernel.shape[1])))
                bag_kernel = kernel
                offset += kernel.shape[1]
            elif isinstance(source, KL.InputLayer):
                width = int(source.output.shape[-1])
                parts.append(_Part(source.name, "numeric", slice(offset, offset + width)))
                offset += width
            else:  # pragma: no cover - towers.py builds only these
                raise ValueError(f"{name}: unexpected input layer {source.name!r} of the concatenation")
        concat_width = offset

        crosses = []
        for i in range(sum(isinstance(layer, CrossLayer) for layer in tower.layers)):
            kernel, bias = linear_of(by_name[f"{name}_cross_{i}"].dense)
            crosses.append((kernel, bias if bias is not None else np.zeros(kernel.shape[1], _F32)))

        linears: list[_Linear] = []
        i = 0
        while f"{name}_dense_{i}" in by_name:
            kernel, bias = linear_of(by_name[f"{name}_dense_{i}"])
            bias = np.zeros(kernel.shape[1], _F32) if bias is None else bias
            bn = by_name.get(f"{name}_bn_{i}")
            if bn is not None:
                # Inference BatchNorm is affine per feature: fold it into the kernel and bias.
                # (Computed in float64 and rounded once.)
                var = _numpy(bn.moving_variance).astype("float64")
                scale = 1.0 / np.sqrt(var + float(bn.epsilon))
                if bn.scale:
                    scale = scale * _numpy(bn.gamma)
                shift = -_numpy(bn.moving_mean) * scale
                if bn.center:
                    shift = shift + _numpy(bn.beta)
                kernel = kernel.astype("float64") * scale
                bias = bias * scale + shift
            linears.append(_Linear(kernel, bias, relu=True))
            i += 1
        kernel, bias = linear_of(by_name[f"{name}_output"])
        linears.append(_Linear(kernel, bias, relu=False))

        # -- without crosses the holdings bag is linear into the first linear layer: fold it.
        input_width = concat_width
        bag = None
        if bag_kernel is not None:
            bag_part = next(p for p in parts if p.kind == "multi_hot")
            if crosses:
                bag = (bag_part.input, bag_part.columns, np.ascontiguousarray(bag_kernel, _F32))
            else:
                first = linears[0].kernel
                cols = bag_part.columns
                folded = bag_kernel.astype("float64") @ first[cols].astype("float64")  # [P, h]
                n_bag = bag_kernel.shape[0]
                kernel = np.concatenate([first[: cols.start], folded, first[cols.stop :]])
                # the bag block is now P wide instead of HOLDINGS_BAG_DIM: shift what follows
                shift = n_bag - (cols.stop - cols.start)
                for part in parts:
                    if part.columns.start >= cols.stop:
                        part.columns = slice(part.columns.start + shift, part.columns.stop + shift)
                bag_part.columns = slice(cols.start, cols.start + n_bag)
                input_width = concat_width + shift
                linears[0] = _Linear(kernel, linears[0].bias, linears[0].relu)

        linears = [
            _Linear(np.ascontiguousarray(l.kernel, _F32), None if l.bias is None else np.ascontiguousarray(l.bias, _F32), l.relu)
            for l in linears
        ]
        crosses = [(np.ascontiguousarray(w, _F32), np.ascontiguousarray(b, _F32)) for w, b in crosses]

        from finrec.model.towers import flops_per_example

        return cls(parts=parts, input_width=input_width, bag=bag, crosses=crosses, layers=linears,
                   flops=int(flops_per_example(tower)), chunk_size=chunk_size)

    # ------------------------------------------------------------------------ properties
    @property
    def input_names(self) -> list[str]:
        return [part.input for part in self.parts]

    @property
    def embedding_dim(self) -> int:
        return self._widths[-1]

    def flops_per_customer(self) -> int:
        """2 x multiply-adds of the Keras tower's Dense and cross layers for one customer (the
        same count as ``finrec.model.towers.flops_per_example``; embeddings are lookups). The
        folded numpy pass does slightly fewer or more, depending on the catalogue size."""
        return self.flops

    # ------------------------------------------------------------------------ forward pass
    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Embeddings float32 [n, D], L2-normalized, for the inputs of n customers."""
        try:
            arrays = [inputs[part.input] for part in self.parts]
        except KeyError as exc:
            raise KeyError(f"customer tower input {exc.args[0]!r} is missing") from None
        n = len(arrays[0]) if arrays else 0
        for part, array in zip(self.parts, arrays):
            if len(array) != n:
                raise ValueError(f"input {part.input!r} has {len(array)} rows, expected {n}")
        out = np.empty((n, self.embedding_dim), dtype=_F32)
        if n == 0:
            return out
        c = min(n, self.chunk_size)
        # Work buffers, reused by every chunk.
        x_in = np.empty((c, self.input_width), dtype=_F32)
        if self.crosses:
            cross_a, cross_b = np.empty_like(x_in), np.empty_like(x_in)
        acts = [np.empty((c, w), dtype=_F32) for w in self._widths[:-1]]
        ss = np.empty((c, 1), dtype=_F32)
        for start in range(0, n, c):
            stop = min(start + c, n)
            m = stop - start
            x = x_in[:m]
            # -- the concatenated input
            for part, array in zip(self.parts, arrays):
                block = x[:, part.columns]
                if part.kind == "categorical":
                    np.take(part.table, array[start:stop], axis=0, out=block)
                elif part.kind == "multi_hot" and self.bag is not None:
                    np.matmul(np.asarray(array[start:stop], dtype=_F32), self.bag[2], out=block)
                else:
                    np.copyto(block, array[start:stop], casting="unsafe")
            # -- DCN-v2 crosses: x_{l+1} = x0 * (x_l W + b) + x_l
            if self.crosses:
                x0, cur, buffers = x, x, (cross_a[:m], cross_b[:m])
                for j, (kernel, bias) in enumerate(self.crosses):
                    nxt = buffers[j % 2]  # alternate; x0 (the input buffer) is never overwritten
                    np.matmul(cur, kernel, out=nxt)
                    nxt += bias
                    nxt *= x0
                    nxt += cur
                    cur = nxt
                x = cur
            # -- (dense + folded BN + ReLU) x widths, then the output layer
            for layer, buf in zip(self.layers, acts + [out[start:stop]]):
                y = buf[:m] if buf.shape[0] != m else buf
                np.matmul(x, layer.kernel, out=y)
                if layer.bias is not None:
                    y += layer.bias
                if layer.relu:
                    np.maximum(y, 0.0, out=y)
                x = y
            # -- L2 normalization, as keras UnitNormalization
            s = ss[:m]
            np.einsum("ij,ij->i", x, x, out=s[:, 0])
            np.maximum(s, _F32(UNIT_NORM_EPSILON * UNIT_NORM_EPSILON), out=s)
            np.sqrt(s, out=s)
            np.divide(x, s, out=x)
        return out


# ---------------------------------------------------------------------------------- top K
def top_k(scores: np.ndarray, excluded: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` products per row, best first: indices int [n, k'] and scores [n, k'].

    ``excluded`` (bool [n, P], or None) products are never returned, nor are products whose
    score is -inf. ``k' = min(k, P, most recommendable products in any row)``; a row with fewer
    recommendable products than ``k'`` is padded with index -1 and score -inf (callers drop the
    non-finite slots). Ties keep catalogue order (the lower index first). Scores must not be NaN.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [n, P], got shape {scores.shape}")
    n, p = scores.shape
    k = max(0, min(int(k), p))
    if excluded is None:
        masked = np.array(scores, copy=True)
    else:
        excluded = np.asarray(excluded, dtype=bool)
        if excluded.shape != scores.shape:
            raise ValueError(f"excluded has shape {excluded.shape}, scores {scores.shape}")
        masked = np.where(excluded, -np.inf, scores)
    if not np.issubdtype(masked.dtype, np.floating):
        masked = masked.astype("float64")
    if n * p <= 4096:
        # Small: one stable sort per row (ties keep catalogue order; -inf sorts last).
        index = np.argsort(-masked, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(masked, index, axis=1)
    else:
        # Large: k passes of argmax (the first maximum wins ties), each knocking out its pick;
        # for small k this is several times faster than sorting or argpartition+lexsort.
        index = np.empty((n, k), dtype=np.intp)
        best = np.empty((n, k), dtype=masked.dtype)
        rows = np.arange(n)
        for j in range(k):
            pick = masked.argmax(axis=1)
            index[:, j] = pick
            best[:, j] = masked[rows, pick]
            masked[rows, pick] = -np.inf
    missing = best == -np.inf
    if missing.any():
        index[missing] = -1
        keep = int((~missing).sum(axis=1).max()) if n else 0
        index, best = index[:, :keep], best[:, :keep]
    return index, best


@dataclass
class ProductIndex:
    """The catalogue's embeddings, float32 [P, D] L2-normalized (precomputed by the product
    tower, in catalogue order): ``scores`` are cosine similarities."""

    product_embeddings: np.ndarray

    def __post_init__(self):
        self.product_embeddings = np.ascontiguousarray(self.product_embeddings, dtype=_F32)
        if self.product_embeddings.ndim != 2:
            raise ValueError(f"product embeddings must be [P, D], got shape {self.product_embeddings.shape}")
        self._transposed = np.ascontiguousarray(self.product_embeddings.T)

    @classmethod
    def from_trained(cls, trained) -> "ProductIndex":
        return cls(trained.product_embeddings_)

    @property
    def n_products(self) -> int:
        return self.product_embeddings.shape[0]

    def scores(self, customer_embeddings: np.ndarray) -> np.ndarray:
        """Cosine similarities float32 [n, P]."""
        return np.asarray(customer_embeddings, dtype=_F32) @ self._transposed

    def recommend(self, customer_embeddings: np.ndarray, excluded: np.ndarray | None = None, k: int = 5,
                  chunk_size: int = 16384) -> tuple[np.ndarray, np.ndarray]:
        """``top_k(self.scores(customer_embeddings), excluded, k)``, chunked so that the score
        matrix never has to exist whole; the same result, including the width ``k'``."""
        emb = np.asarray(customer_embeddings, dtype=_F32)
        n = len(emb)
        if n <= chunk_size:
            return top_k(self.scores(emb), excluded, k)
        pieces = [
            top_k(self.scores(emb[s : s + chunk_size]), None if excluded is None else excluded[s : s + chunk_size], k)
            for s in range(0, n, chunk_size)
        ]
        width = max(index.shape[1] for index, _ in pieces)
        index = np.full((n, width), -1, dtype=np.intp)
        best = np.full((n, width), -np.inf, dtype=_F32)
        for s, (i, b) in zip(range(0, n, chunk_size), pieces):
            index[s : s + len(i), : i.shape[1]] = i
            best[s : s + len(b), : b.shape[1]] = b
        return index, best


__all__ = ["NumpyTower", "ProductIndex", "top_k", "UNIT_NORM_EPSILON"]
