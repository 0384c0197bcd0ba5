"""Numpy twins of the history encoders of ``finrec.model.history`` (the serving tower never runs
Keras): each ``twin_of(layer)`` returns ``encode(x) -> float32 [n, width]`` computing what the
Keras layer computes at inference, to ~1e-6.

- ``ProductEventEncoder``: relu(einsum(x [n, P, F], K [F, E]) + b [P, E]) flattened;
- ``Dense`` (the flat encoder, no bias): x @ W;
- ``GRU`` (Keras 3 defaults: tanh, sigmoid recurrent activation, ``reset_after=True``, one
  state): for each step t, with ``xz|xr|xh = x_t W + b_in`` and ``hz|hr|hh = h U + b_rec``:
  ``z = s(xz + hz)``, ``r = s(xr + hr)``, ``c = tanh(xh + r * hh)``, ``h = z * h + (1 - z) * c``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_F32 = np.float32


def _numpy(value) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(value), dtype=_F32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (np.tanh(0.5 * x) + 1.0)).astype(_F32)  # overflow-free


def twin_of(layer) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """(encode, output width) of a history encoder layer."""
    from keras import layers as KL

    from finrec.model.history import ProductEventEncoder

    if isinstance(layer, ProductEventEncoder):
        kernel, bias = _numpy(layer.kernel), _numpy(layer.bias)

        def events(x: np.ndarray) -> np.ndarray:
            y = np.einsum("npf,fe->npe", np.asarray(x, _F32), kernel, optimize=True)
            y += bias
            np.maximum(y, 0, out=y)
            return y.reshape(len(y), -1)

        return events, bias.size
    if isinstance(layer, KL.GRU):
        return _gru_twin(layer)
    if isinstance(layer, KL.Dense):
        if layer.use_bias or getattr(layer.activation, "__name__", "linear") != "linear":  # pragma: no cover
            raise ValueError(f"{layer.name}: only a linear Dense without bias has a numpy twin")
        kernel = _numpy(layer.kernel)
        return (lambda x: np.asarray(x, _F32) @ kernel), kernel.shape[1]
    raise ValueError(f"{layer.name}: no numpy twin for a {type(layer).__name__} history encoder")  # pragma: no cover


def _gru_twin(layer) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    cell = layer.cell
    checks = (
        getattr(cell.activation, "__name__", "") == "tanh",
        getattr(cell.recurrent_activation, "__name__", "") == "sigmoid",
        cell.reset_after,
        cell.use_bias,
        not layer.go_backwards,
        not layer.return_sequences,
    )
    if not all(checks):  # pragma: no cover - finrec.model.history builds the defaults
        raise ValueError(f"{layer.name}: only a default Keras GRU has a numpy twin")
    w, u = _numpy(cell.kernel), _numpy(cell.recurrent_kernel)
    b = _numpy(cell.bias)  # [2, 3 units]: input bias, recurrent bias
    units = u.shape[0]

    def gru(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, _F32)
        n, steps, _ = x.shape
        projected = (x.reshape(n * steps, -1) @ w + b[0]).reshape(n, steps, 3 * units)
        h = np.zeros((n, units), dtype=_F32)
        for t in range(steps):
            xz, xr, xh = np.split(projected[:, t], 3, axis=1)
            hz, hr, hh = np.split(h @ u + b[1], 3, axis=1)
            z = _sigmoid(xz + hz)
            r = _sigmoid(xr + hr)
            c = np.tanh(xh + r * hh)
            h = z * h + (1.0 - z) * c
        return h.astype(_F32)

    return gru, units


__all__ = ["twin_of"]
