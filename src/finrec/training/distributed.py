"""Data-parallel training through Keras 3's distribution API (JAX backend).

>>> # KERAS_BACKEND=jax; on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=2 fakes 2 devices
>>> trained = fit_data_parallel(dataset, config)          # every visible device

Each batch is split evenly across the devices and the model's weights are replicated
(``keras.distribution.DataParallel``); gradients are averaged by XLA's collectives. The batch
size must divide by the device count; the last few examples of an epoch are dropped so that
every batch does (``fit(..., batch_multiple=n)``). The result is an ordinary ``TrainedModel``:
it saves, loads and scores like one trained on one device. The same code runs on several GPUs
or TPU cores; multi-host training also needs ``keras.distribution.initialize()`` first.
"""

from __future__ import annotations

import keras

from finrec.config import Config, checked
from finrec.errors import ConfigError
from finrec.training.train import fit


def data_parallel_devices(devices: list[str] | None = None) -> list[str]:
    """The devices to train on: the ones given, or every device Keras sees."""
    if keras.backend.backend() != "jax":
        raise ConfigError(
            f"data-parallel training needs the JAX backend (KERAS_BACKEND=jax); this is {keras.backend.backend()}"
        )
    return list(devices) if devices else keras.distribution.list_devices()


def fit_data_parallel(
    dataset, config: Config | None = None, devices: list[str] | None = None, verbose: int | None = None, callbacks=None
):
    """``finrec.training.fit`` with the batches sharded over ``devices`` (a ``Dataset`` or a
    ``finrec.training.stream.StreamingSource``). The previous distribution is restored afterwards."""
    config = checked(config)
    devices = data_parallel_devices(devices)
    if config.training.batch_size % len(devices):
        raise ConfigError(f"training.batch_size {config.training.batch_size} must divide by the {len(devices)} devices")
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    try:
        trained = fit(dataset, config, verbose=verbose, callbacks=callbacks, batch_multiple=len(devices))
    finally:
        keras.distribution.set_distribution(previous)
    trained.history["devices"] = [float(len(devices))]
    return trained
