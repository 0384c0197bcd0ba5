"""finrec: personalized bank product recommendations with a Keras 3 two-tower model.

One module per stage: ``finrec.data`` (schema, synthetic bank, io, validation, split),
``finrec.features``, ``finrec.model``, ``finrec.training``, ``finrec.evaluate``,
``finrec.recommend``, ``finrec.explain``, ``finrec.serve`` and ``finrec.cli``. Importing the
package itself imports none of them (nor TensorFlow).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("finrec")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0+unknown"
