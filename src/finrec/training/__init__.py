"""Training the two towers: in memory (``fit``), in chunks from files larger than memory
(``finrec.training.stream.StreamingSource``) and sharded over devices
(``finrec.training.distributed.fit_data_parallel``), all through one routine, ``train_model``.

>>> from finrec.training import fit
>>> trained = fit(dataset, Config())

The names below are imported on first use: ``finrec.training.calibration`` (which serving
reads) must not pull in Keras and TensorFlow through this package.
"""

__all__ = ["TrainedModel", "fit", "train_model"]


def __getattr__(name: str):
    if name in __all__:
        from finrec.training import train

        return getattr(train, name)
    raise AttributeError(f"module 'finrec.training' has no attribute {name!r}")
