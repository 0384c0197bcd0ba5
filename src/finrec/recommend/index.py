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
- ``<tower>_hist_<input>`` history encoders: their numpy twins (``history_twin``);
- ``<tower>_cross_<i>``: ``x0 * (x W + b) + x``;
- ``<tower>_dense_<i>`` + ``<tower>_bn_<i>``: the inference-mode BatchNorm
  ``gamma (x - mean) / sqrt(var + eps) + beta`` is folded into the kernel and a bias; ReLU;
  dropout is the identity at inference;
- ``<tower>_output`` (Dense with bias), then the L2 normalization exactly as Keras'
  ``UnitNormalization`` does it: ``x * min(1 / sqrt(sum x^2), 1 / 1e-12)`` (computed as
  ``x / max(sqrt(sum x^2), 1e-12)``: an all-zero row stays zero).

The concatenation order is read from the model graph (the inbound layers of ``<tower>_concat``).
All math is float32; a batch is processed in chunks of ``chunk_size`` rows through
preallocated buffers, so the intermediate activations stay in cache and the matmuls go to BLAS.
Batches of ``PARALLEL_MIN_ROWS`` rows or more are split over ``workers`` threads (default: the
CPUs this process may use) with BLAS limited to one thread meanwhile, when ``threadpoolctl`` is
installed (it comes with scikit-learn); without it they run in one thread on threaded BLAS.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from finrec.model.tower_spec import CUSTOMER_TOWER, BatchNorm, TowerSource, TowerSpec

# keras.layers.UnitNormalization: ops.normalize(x, order=2, epsilon=1e-12), computed as
# x * minimum(rsqrt(sum(x^2)), 1 / epsilon), i.e. the norm is floored at epsilon.
UNIT_NORM_EPSILON = 1e-12
DEFAULT_CHUNK = 2048  # rows per pass: activations stay in L2/L3, matmuls stay BLAS-efficient

_F32 = np.float32
# Batches of at least this many rows are split over worker threads (with BLAS limited to one
# thread each, when threadpoolctl is installed): OpenBLAS' own threading of many medium-sized
# matmuls collapses as soon as another process busies a core (10x slower on 2 shared cores).
PARALLEL_MIN_ROWS = 32768

_blas_lock = threading.Lock()
_blas_users = 0
_blas_limit = None


@contextlib.contextmanager
def single_threaded_blas():
    """Inside: BLAS runs single-threaded (our worker threads do the parallelism). Yields False,
    and changes nothing, without threadpoolctl. Reference-counted, so overlapping calls from
    several threads restore the original limit once, when the last one leaves."""
    global _blas_users, _blas_limit
    try:
        import threadpoolctl
    except ImportError:
        yield False
        return
    with _blas_lock:
        if _blas_users == 0:
            _blas_limit = threadpoolctl.threadpool_limits(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield True
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limit.restore_original_limits()
                _blas_limit = None


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _run_ranges(n: int, chunk: int, workers: int | None, run) -> None:
    """``run(start, stop)`` over [0, n): at once when small, else split at chunk boundaries
    over worker threads (numpy releases the GIL in matmuls and ufuncs)."""
    if n < PARALLEL_MIN_ROWS or workers is not None and workers <= 1:
        run(0, n)
        return
    workers = default_workers() if workers is None else workers
    if workers <= 1:
        run(0, n)
        return
    with single_threaded_blas() as limited:
        if not limited:
            run(0, n)
            return
        chunks = -(-n // chunk)
        per_worker = -(-chunks // workers)
        bounds = [(start, min(start + per_worker * chunk, n)) for start in range(0, n, per_worker * chunk)]
        with ThreadPoolExecutor(len(bounds)) as pool:
            for future in [pool.submit(run, start, stop) for start, stop in bounds]:
                future.result()


def _numpy(value) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(value), dtype=_F32)


@dataclass
class _Part:
    """One block of the concatenated tower input: ``columns`` of the concat, fed by ``input``."""

    input: str
    kind: str  # "numeric" | "categorical" | "multi_hot" | "history"
    columns: slice  # where it lands in the buffer the first matmul reads
    table: np.ndarray | None = None  # embedding table [vocab, dim] (categorical)
    encode: object = None  # history: the numpy twin of its encoder (finrec.recommend.history_twin)
    twin: object | None = None  # numpy twin of a numeric embedding layer (finrec.model.numeric)


def _augment(kernel: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """[in, out] kernel and bias -> float32 [in + 1, out] with the bias as its last row: the
    activations carry a constant 1 column, so the matmul adds the bias for free. Per member
    (an ensemble): [k, in, out] and [k, out] (or [out], shared) -> [k, in + 1, out]."""
    bias = np.zeros(kernel.shape[-1]) if bias is None else bias
    bias = np.broadcast_to(bias, kernel.shape[:-2] + (kernel.shape[-1],))
    return np.ascontiguousarray(np.concatenate([kernel, bias[..., None, :]], axis=-2), dtype=_F32)


def _spec_of_keras(tower) -> TowerSpec:
    """The weights of a Keras customer tower (or of the two-tower model holding one) as a
    ``TowerSpec``, read by the stable layer names of ``finrec.model.towers``."""
    from keras import layers as KL

    from finrec.model.ensemble import MemberDense
    from finrec.model.towers import CrossLayer, flops_per_example
    from finrec.recommend.history_twin import twin_of

    if not any(layer.name.endswith("_output") for layer in tower.layers):
        tower = tower.get_layer(CUSTOMER_TOWER)
    name = tower.name
    by_name = {layer.name: layer for layer in tower.layers}

    def linear_of(dense) -> tuple[np.ndarray, np.ndarray | None]:
        activation = getattr(dense.activation, "__name__", "linear")
        if activation != "linear":  # pragma: no cover - towers.py builds linear Dense layers
            raise ValueError(f"{dense.name}: activation {activation!r} is not supported by the numpy tower")
        return _numpy(dense.kernel).astype("float64"), (
            _numpy(dense.bias).astype("float64") if dense.use_bias else None
        )

    # -- the concatenated input, in the order of the Concatenate layer's inbound layers
    concat = by_name.get(f"{name}_concat")
    if concat is not None:
        sources = [node.operation for node in concat._inbound_nodes[0].parent_nodes]
    else:  # a single part: whichever layer (or input) feeds the rest
        sources = [
            layer
            for layer in tower.layers
            if layer.name.startswith((f"{name}_emb_", f"{name}_bag_", f"{name}_numemb_", f"{name}_hist_"))
        ]
        if not sources:
            sources = [layer for layer in tower.layers if isinstance(layer, KL.InputLayer) and layer.output.shape[-1]]
        sources = sources[:1]
    parts: list[TowerSource] = []
    for source in sources:
        if source.name.startswith(f"{name}_emb_"):
            table = _numpy(source.embeddings)
            parts.append(TowerSource(source.name[len(f"{name}_emb_") :], "categorical", table.shape[1], table=table))
        elif source.name.startswith(f"{name}_bag_"):
            bag_kernel, bias = linear_of(source)
            if bias is not None:  # pragma: no cover
                raise ValueError(f"{source.name}: a bag with a bias is not supported")
            parts.append(
                TowerSource(source.name[len(f"{name}_bag_") :], "multi_hot", bag_kernel.shape[1], kernel=bag_kernel)
            )
        elif source.name.startswith(f"{name}_hist_"):
            encode, width = twin_of(source)
            parts.append(TowerSource(source.name[len(f"{name}_hist_") :], "history", width, encode=encode))
        elif source.name.startswith(f"{name}_numemb_"):
            width = int(source.output.shape[-1])
            parts.append(TowerSource(source.name[len(f"{name}_numemb_") :], "numeric", width, twin=source.numpy_twin()))
        elif isinstance(source, KL.InputLayer):
            parts.append(TowerSource(source.name, "numeric", int(source.output.shape[-1])))
        else:  # pragma: no cover - towers.py builds only these
            raise ValueError(f"{name}: unexpected input layer {source.name!r} of the concatenation")

    crosses = [
        linear_of(by_name[f"{name}_cross_{i}"].dense)
        for i in range(sum(isinstance(layer, CrossLayer) for layer in tower.layers))
    ]
    dense: list[tuple[np.ndarray, np.ndarray | None, BatchNorm | None]] = []
    i = 0
    while f"{name}_dense_{i}" in by_name:
        kernel, bias = linear_of(by_name[f"{name}_dense_{i}"])
        bn = by_name.get(f"{name}_bn_{i}")
        if bn is not None:
            bn = BatchNorm(
                _numpy(bn.moving_mean),
                _numpy(bn.moving_variance),
                _numpy(bn.gamma) if bn.scale else None,
                _numpy(bn.beta) if bn.center else None,
                float(bn.epsilon),
            )
        dense.append((kernel, bias, bn))
        i += 1
    output = by_name[f"{name}_output"]
    if isinstance(output, MemberDense):
        output = (_numpy(output.kernel).astype("float64"), _numpy(output.bias).astype("float64"))
    else:
        output = linear_of(output)
    members = by_name.get(f"{name}_members")
    return TowerSpec(
        name=name,
        sources=parts,
        crosses=crosses,
        dense=dense,
        output=output,
        member_scales=None if members is None else _numpy(members.r).astype("float64"),
        flops=int(flops_per_example(tower)),
    )


@dataclass
class NumpyTower:
    """A Keras customer tower as a numpy forward pass: ``tower(inputs) -> float32 [n, D]``.

    Build it with ``from_keras``; the fields are the folded weights (see the module doc). Every
    activation buffer carries a trailing column of ones and every kernel the bias as its last
    row (``[in + 1, out]``), so biases cost no extra pass. ``inputs`` is the dict
    ``FeaturePipeline.transform_customers`` produces (holdings may be float or bool; extra keys
    are ignored).
    """

    parts: list[_Part]
    input_width: int  # columns of the buffer the first matmul (or the cross stack) reads, less the ones
    bag: tuple[slice, np.ndarray] | None  # (concat columns, W_bag [P, 16]) when not folded (crosses)
    crosses: list[np.ndarray]  # augmented [d + 1, d] per cross layer
    layers: list[np.ndarray]  # augmented kernels: (dense + folded BN, ReLU) ..., then the output
    flops: int  # of the Keras model, 2 x multiply-adds (see ``flops_per_customer``)
    # k > 1: an ensemble (finrec.model.ensemble): layers[0] and layers[-1] are per member,
    # [k, in + 1, out] (the members' input scales folded into the first), the rest shared.
    members: int = 1
    chunk_size: int = DEFAULT_CHUNK
    workers: int | None = None  # threads for large batches; None: the CPUs this process may use

    # ------------------------------------------------------------------------ construction
    @classmethod
    def from_keras(cls, tower, chunk_size: int = DEFAULT_CHUNK, workers: int | None = None) -> NumpyTower:
        """Extract the weights of ``tower`` (the customer tower, or a two-tower model that
        contains a ``customer_tower`` layer)."""
        return cls.from_spec(_spec_of_keras(tower), chunk_size, workers)

    @classmethod
    def from_spec(cls, spec: TowerSpec, chunk_size: int = DEFAULT_CHUNK, workers: int | None = None) -> NumpyTower:
        """Fold a tower's weights (``finrec.model.tower_spec``: from a Keras tower or read from a
        saved model without Keras) into the numpy forward pass."""
        parts: list[_Part] = []
        bag_kernel, offset = None, 0
        for source in spec.sources:
            parts.append(
                _Part(
                    source.input,
                    source.kind,
                    slice(offset, offset + source.width),
                    table=source.table,
                    encode=source.encode,
                    twin=source.twin,
                )
            )
            if source.kind == "multi_hot":
                bag_kernel = source.kernel
            offset += source.width
        input_width = offset

        crosses = [_augment(kernel, bias) for kernel, bias in spec.crosses]

        linears: list[tuple[np.ndarray, np.ndarray]] = []  # float64 (kernel, bias)
        for kernel, bias, bn in spec.dense:
            bias = np.zeros(kernel.shape[1]) if bias is None else bias
            if bn is not None:
                # Inference BatchNorm is affine per feature: fold it into the kernel and bias
                # (in float64, rounded to float32 once).
                scale = 1.0 / np.sqrt(bn.moving_variance.astype("float64") + bn.epsilon)
                if bn.gamma is not None:
                    scale = scale * bn.gamma
                shift = -bn.moving_mean * scale
                if bn.beta is not None:
                    shift = shift + bn.beta
                kernel, bias = kernel * scale, bias * scale + shift
            linears.append((kernel, bias))
        linears.append(spec.output)
        members = 1
        if spec.member_scales is not None:
            # member i's first layer reads x * r_i: fold r_i into the rows of the shared kernel
            r = spec.member_scales  # [k, in]
            members = r.shape[0]
            kernel, bias = linears[0]
            linears[0] = (r[:, :, None] * kernel, np.broadcast_to(bias, (members,) + bias.shape))

        # -- without crosses the holdings bag is linear into the first linear layer: fold it
        # (the raw multi-hot row takes the bag's place in the input, times W_bag @ W_1[bag rows]).
        bag = None
        if bag_kernel is not None:
            bag_part = next(p for p in parts if p.kind == "multi_hot")
            cols = bag_part.columns
            if crosses:
                bag = (cols, np.ascontiguousarray(bag_kernel, dtype=_F32))
            else:
                first, bias = linears[0]  # [in, out], or [k, in, out] per member
                first = np.concatenate(
                    [first[..., : cols.start, :], bag_kernel @ first[..., cols, :], first[..., cols.stop :, :]],
                    axis=-2,
                )
                shift = bag_kernel.shape[0] - (cols.stop - cols.start)
                for part in parts:
                    if part.columns.start >= cols.stop:
                        part.columns = slice(part.columns.start + shift, part.columns.stop + shift)
                bag_part.columns = slice(cols.start, cols.start + bag_kernel.shape[0])
                input_width += shift
                linears[0] = (first, bias)

        return cls(
            parts=parts,
            input_width=input_width,
            bag=bag,
            crosses=crosses,
            layers=[_augment(kernel, bias) for kernel, bias in linears],
            flops=int(spec.flops),
            members=members,
            chunk_size=chunk_size,
            workers=workers,
        )

    # ------------------------------------------------------------------------ properties
    @property
    def embedding_dim(self) -> int:
        return self.members * self.layers[-1].shape[-1]

    def flops_per_customer(self) -> int:
        """2 x multiply-adds of the Keras tower's Dense and cross layers for one customer (the
        same count as ``finrec.model.towers.flops_per_example``; embeddings are lookups). The
        folded numpy pass does about as many (it trades the bag matmul for a wider first one)."""
        return self.flops

    # ------------------------------------------------------------------------ forward pass
    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Embeddings float32 [n, D], L2-normalized, for the inputs of n customers."""
        missing = [part.input for part in self.parts if part.input not in inputs]
        if missing:
            raise KeyError(f"customer tower input(s) missing: {', '.join(missing)}")
        arrays = [inputs[part.input] for part in self.parts]
        n = len(arrays[0]) if arrays else 0
        for part, array in zip(self.parts, arrays):
            if len(array) != n:
                raise ValueError(f"input {part.input!r} has {len(array)} rows, expected {n}")
        out = np.empty((n, self.embedding_dim), dtype=_F32)
        if n == 0:
            return out
        _run_ranges(n, self.chunk_size, self.workers, lambda start, stop: self._forward(arrays, out, start, stop))
        return out

    def _forward(self, arrays: list[np.ndarray], out: np.ndarray, begin: int, end: int) -> None:
        """Rows begin:end of ``out``, chunk by chunk through this call's own buffers."""
        c = min(end - begin, self.chunk_size)
        d = self.input_width
        # Work buffers, reused by every chunk; each ends in a column of ones (the bias input).
        x_in = np.ones((c, d + 1), dtype=_F32)
        if self.crosses:
            cross_bufs = (np.ones((c, d + 1), dtype=_F32), np.ones((c, d + 1), dtype=_F32))
        acts = [np.ones((c, kernel.shape[-1] + 1), dtype=_F32) for kernel in self.layers[:-1]]
        if self.members > 1:
            k = self.members
            member_bufs = (
                [np.ones((k * c, kernel.shape[-1] + 1), dtype=_F32) for kernel in self.layers[:-1]],
                np.empty((k, c, self.layers[-1].shape[-1]), dtype=_F32),
                np.empty((k, c, 1), dtype=_F32),
            )
        # np.maximum against an array is several times faster than against a scalar 0
        zeros = np.zeros(max((a.size for a in acts), default=0), dtype=_F32)
        norms = np.empty(c, dtype=_F32)
        for start in range(begin, end, c):
            stop = min(start + c, end)
            m = stop - start
            x = x_in[:m]
            # -- the concatenated input
            for part, array in zip(self.parts, arrays):
                if part.kind == "categorical":
                    x[:, part.columns] = part.table.take(array[start:stop], axis=0)
                elif part.twin is not None:
                    part.twin(array[start:stop], x[:, part.columns])
                elif part.kind == "multi_hot" and self.bag is not None:
                    np.matmul(np.asarray(array[start:stop], dtype=_F32), self.bag[1], out=x[:, part.columns])
                elif part.kind == "history":
                    x[:, part.columns] = part.encode(array[start:stop])
                else:
                    np.copyto(x[:, part.columns], array[start:stop], casting="unsafe")
            # -- DCN-v2 crosses: x_{l+1} = x0 * (x_l W + b) + x_l
            if self.crosses:
                cur = x
                for j, kernel in enumerate(self.crosses):
                    nxt = cross_bufs[j % 2][:m]  # alternate; x0 (the input buffer) stays as it is
                    np.matmul(cur, kernel, out=nxt[:, :d])
                    nxt *= x
                    nxt += cur
                    nxt[:, d] = 1.0
                    cur = nxt
                x = cur
            if self.members > 1:
                self._members_forward(x, member_bufs, out[start:stop])
                continue
            # -- (dense + folded BN + ReLU) x widths
            for kernel, act in zip(self.layers[:-1], acts):
                y = act[:m]
                np.matmul(x, kernel, out=y[:, :-1])
                np.maximum(y, zeros[: y.size].reshape(y.shape), out=y)  # the ones stay ones
                x = y
            # -- the output layer, and the L2 normalization as keras UnitNormalization
            y = out[start:stop]
            np.matmul(x, self.layers[-1], out=y)
            s = norms[:m]
            np.einsum("ij,ij->i", y, y, out=s)
            np.maximum(s, _F32(UNIT_NORM_EPSILON * UNIT_NORM_EPSILON), out=s)
            np.sqrt(s, out=s)
            np.divide(y, s[:, None], out=y)

    def _members_forward(self, x: np.ndarray, bufs, out: np.ndarray) -> None:
        """An ensemble's layers for one chunk: ``x`` [m, d + 1] (with its ones) -> ``out`` [m, k * D].
        The members' first layers in one batched matmul, the shared layers over all k * m rows,
        one head per member, each member's vector normalized (as ``MemberNormalize``)."""
        acts, heads, norms = bufs
        k, m = self.members, len(x)
        h = acts[0][: k * m]
        np.matmul(x[None], self.layers[0], out=h.reshape(k, m, -1)[:, :, :-1])
        np.maximum(h, 0.0, out=h)  # the ones stay ones
        for kernel, act in zip(self.layers[1:-1], acts[1:]):
            y = act[: k * m]
            np.matmul(h, kernel, out=y[:, :-1])
            np.maximum(y, 0.0, out=y)
            h = y
        e, s = heads[:, :m], norms[:, :m]
        np.matmul(h.reshape(k, m, -1), self.layers[-1], out=e)
        np.sqrt(np.einsum("kmd,kmd->km", e, e)[:, :, None], out=s)
        np.maximum(s, _F32(UNIT_NORM_EPSILON), out=s)
        s *= _F32(np.sqrt(k))
        np.divide(e, s, out=out.reshape(m, k, -1).transpose(1, 0, 2))


# ---------------------------------------------------------------------------------- top K
SMALL_TOP_K = 64  # up to this many rows, sort each row; beyond, select column-wise in chunks
TOP_K_CHUNK = 8192


def top_k(
    scores: np.ndarray, excluded: np.ndarray | None, k: int, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` products per row, best first: indices int [n, k'] and scores [n, k'].

    ``excluded`` (bool [n, P], or None) products are never returned, nor are products whose
    score is -inf. ``k' = min(k, P, most recommendable products in any row)``; a row with fewer
    recommendable products than ``k'`` is padded with index -1 and score -inf (callers drop the
    non-finite slots). Ties keep catalogue order (the lower index first). Scores must not be NaN.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [n, P], got shape {scores.shape}")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype("float64")
    if excluded is not None:
        excluded = np.asarray(excluded, dtype=bool)
        if excluded.shape != scores.shape:
            raise ValueError(f"excluded has shape {excluded.shape}, scores {scores.shape}")
    return _top_k(
        lambda: scores,
        lambda start, stop, out: np.copyto(out, scores[start:stop].T),
        scores.shape[0],
        scores.shape[1],
        scores.dtype,
        excluded,
        k,
        workers=workers,
    )


def _top_k(
    scores,
    columns_of,
    n: int,
    p: int,
    dtype,
    excluded: np.ndarray | None,
    k: int,
    chunk: int | None = None,
    workers: int | None = None,
):
    """``top_k``. ``scores()`` gives the whole [n, P] matrix (used for a few rows);
    ``columns_of(start, stop, out)`` writes the scores of rows start:stop transposed, [P, m],
    into ``out`` (so the whole matrix never has to exist at once)."""
    k = max(0, min(int(k), p))
    if n <= SMALL_TOP_K:
        # A few rows (a single request): one stable sort per row; -inf sorts last.
        masked = np.array(scores(), dtype=dtype, copy=True)
        if excluded is not None:
            np.putmask(masked, excluded, -np.inf)
        index = np.argsort(-masked, axis=1, kind="stable")[:, :k]
        best = masked[np.arange(n)[:, None], index]
    else:
        index = np.empty((n, k), dtype=np.intp)
        best = np.empty((n, k), dtype=dtype)
        if k:
            # Many rows: per chunk, scores as [P, m] so that each of the k passes is a handful
            # of vectorised operations across customers instead of one small call per row.
            c = min(n, chunk or TOP_K_CHUNK)
            _run_ranges(
                n,
                c,
                workers,
                lambda start, stop: _select(columns_of, p, dtype, excluded, k, c, index, best, start, stop),
            )
    missing = best == -np.inf
    if missing.any():
        index[missing] = -1
        keep = int((~missing).sum(axis=1).max())
        index, best = index[:, :keep], best[:, :keep]
    return index, best


def _select(columns_of, p, dtype, excluded, k, c, index, best, begin, end) -> None:
    """Rows begin:end of ``index`` and ``best``, chunks of ``c`` rows, this call's own buffers."""
    flat = np.empty(p * c, dtype=dtype)
    hit = np.empty(p * c, dtype=bool)
    weight_type = np.uint8 if p <= 256 else np.int32
    ranks = np.empty(p * c, dtype=weight_type)
    reverse = (p - 1 - np.arange(p)).astype(weight_type)[:, None]  # the lower index wins ties
    if excluded is not None:
        excluded_bytes = np.empty(p * c, dtype=np.uint8)
        penalty = np.empty(p * c, dtype=dtype)
    tops, picks = np.empty((k, c), dtype=dtype), np.empty((k, c), dtype=np.intp)
    offsets = np.arange(c)
    for start in range(begin, end, c):
        stop = min(start + c, end)
        m = stop - start

        def view(buffer, m=m):  # a contiguous [P, m] view of a flat buffer
            return buffer[: p * m].reshape(p, m)

        columns = view(flat)
        columns_of(start, stop, columns)
        if excluded is not None:
            # +inf where allowed, -inf where excluded: min() keeps the score or excludes it
            g = view(penalty)
            np.copyto(view(excluded_bytes), excluded[start:stop].view(np.uint8).T)
            np.copyto(g, view(excluded_bytes))
            np.subtract(0.5, g, out=g)
            np.multiply(g, np.inf, out=g)
            np.minimum(columns, g, out=columns)
        h, r = view(hit), view(ranks)
        for j in range(k):
            top, pick = tops[j, :m], picks[j, :m]
            columns.max(axis=0, out=top)
            np.equal(columns, top, out=h)
            np.multiply(h, reverse, out=r)
            np.subtract(p - 1, r.max(axis=0), out=pick, casting="unsafe")
            flat[pick * m + offsets[:m]] = -np.inf  # knock the pick out for the next pass
        index[start:stop] = picks[:, :m].T
        best[start:stop] = tops[:, :m].T


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
    def from_trained(cls, trained) -> ProductIndex:
        """The index of a trained (or loaded) model: its product embeddings, or with a tree blend
        its product vectors ``[v_p, e_p]`` (``finrec.training.trees.TreeBlend``), which score the
        blend against the customer vectors ``Recommender.embed`` gives."""
        blend = getattr(trained, "blend", None)
        embeddings = trained.product_embeddings_
        return cls(embeddings if blend is None else blend.product_vectors(embeddings))

    @property
    def n_products(self) -> int:
        return self.product_embeddings.shape[0]

    def scores(self, customer_embeddings: np.ndarray) -> np.ndarray:
        """Cosine similarities float32 [n, P]."""
        emb = np.asarray(customer_embeddings, dtype=_F32)
        self._check_width(emb)
        return emb @ self._transposed

    def _check_width(self, emb: np.ndarray) -> None:
        width = self.product_embeddings.shape[1]
        if emb.ndim != 2 or emb.shape[1] != width:
            blend = " (a tree blend's products have D + P: customer vectors come from Recommender.embed)"
            raise ValueError(f"customer vectors must be [n, {width}]{blend}, got shape {emb.shape}")

    def recommend(
        self,
        customer_embeddings: np.ndarray,
        excluded: np.ndarray | None = None,
        k: int = 5,
        chunk_size: int = TOP_K_CHUNK,
        workers: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``top_k(self.scores(customer_embeddings), excluded, k)`` with the scores computed
        chunk by chunk (the [n, P] matrix never exists whole)."""
        emb = np.asarray(customer_embeddings, dtype=_F32)
        self._check_width(emb)
        n, p = len(emb), self.n_products
        if excluded is not None:
            excluded = np.asarray(excluded, dtype=bool)
            if excluded.shape != (n, p):
                raise ValueError(f"excluded has shape {excluded.shape}, expected {(n, p)}")

        def columns_of(start, stop, out):  # [P, m] = P_emb @ emb[start:stop]^T
            np.matmul(self.product_embeddings, emb[start:stop].T, out=out)

        return _top_k(lambda: self.scores(emb), columns_of, n, p, _F32, excluded, k, chunk_size, workers)


__all__ = ["NumpyTower", "ProductIndex", "top_k", "UNIT_NORM_EPSILON"]
