"""Training the two towers: in memory (``fit``), in chunks from files larger than memory
(``finrec.training.stream.StreamingSource``) and sharded over devices
(``finrec.training.distributed.fit_data_parallel``), all through one routine, ``train_model``.

>>> from finrec.training import fit
>>> trained = fit(dataset, Config())
"""

from finrec.training.train import TrainedModel, fit, train_model

__all__ = ["TrainedModel", "fit", "train_model"]
