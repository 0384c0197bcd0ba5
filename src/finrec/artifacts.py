"""The model directory: written atomically, checked on load.

Layout::

    MODEL_DIR/
      manifest.json            format version, data fingerprint, schema hash, SHA-256 of each file
      model.keras              the two-tower Keras model (loaded with safe_mode=True)
      pipeline.json            the fitted feature pipeline (JSON, never pickle)
      product_embeddings.npy   float32 [P, D], catalogue order
      products.parquet         the catalogue with its details (for the recommender)
      config.yaml              the training configuration
      history.json             per-epoch training and validation metrics
      calibration.json         optional: per-product maps from score to adoption probability

A file that is missing, truncated or altered fails its checksum and the directory is refused
with a message naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from finrec.atomic import atomic_directory, recover
from finrec.config import Config
from finrec.errors import ArtifactError, FinrecError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.keras"
PIPELINE_FILE = "pipeline.json"
EMBEDDINGS_FILE = "product_embeddings.npy"
PRODUCTS_FILE = "products.parquet"
CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.json"
# Optional: a model without it loads and ranks, with no probabilities (finrec.training.calibration).
CALIBRATION_FILE = "calibration.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def schema_hash(schema_dict: dict) -> str:
    return hashlib.sha256(json.dumps(schema_dict, sort_keys=True).encode()).hexdigest()[:16]


def save_model_dir(trained, out: str | os.PathLike, data_fingerprint: str = "", data_path: str | None = None,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write ``trained`` (a ``finrec.training.TrainedModel``) to ``out``, replacing any previous
    model there only once the new one is complete."""
    import keras

    out = Path(out)
    with atomic_directory(out) as tmp:
        trained.model.save(tmp / MODEL_FILE)
        (tmp / PIPELINE_FILE).write_text(json.dumps(trained.pipeline.to_dict(), indent=1), encoding="utf-8")
        np.save(tmp / EMBEDDINGS_FILE, trained.product_embeddings_.astype("float32"), allow_pickle=False)
        pq.write_table(pa.Table.from_pandas(trained.products, preserve_index=False), tmp / PRODUCTS_FILE)
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(trained.config.to_dict(), sort_keys=False), encoding="utf-8")
        (tmp / HISTORY_FILE).write_text(json.dumps(trained.history, indent=1), encoding="utf-8")
        if getattr(trained, "calibration", None) is not None:
            (tmp / CALIBRATION_FILE).write_text(json.dumps(trained.calibration.to_dict()), encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "keras_version": keras.__version__,
            "backend": keras.backend.backend(),
            "schema_hash": schema_hash(trained.pipeline.full_schema.to_dict()),
            "data_fingerprint": data_fingerprint,
            "data_path": data_path,
            "files": {name: _sha256(tmp / name) for name in files},
            **(extra or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return out


def read_manifest(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """The manifest of a model directory, after checking the format and every file's checksum."""
    path = Path(path)
    recover(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: no model directory here (train one with `finrec train --data DIR --out {path}`)")
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: not a finrec model directory ({MANIFEST} is missing)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(f"{manifest_path}: damaged (not valid JSON)") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{path}: model format {found!r} is not supported by this finrec (expects {FORMAT_VERSION}); retrain it")
    if verify:
        for name, expected in manifest.get("files", {}).items():
            file = path / name
            if not file.is_file():
                raise ArtifactError(f"{path}: {name} is missing")
            if _sha256(file) != expected:
                raise ArtifactError(f"{path}: {name} is damaged or was altered (checksum mismatch); retrain or restore it")
    return manifest


@dataclass
class LoadedArtifacts:
    path: Path
    manifest: dict[str, Any]
    trained: Any  # finrec.training.TrainedModel


def load_model_dir(path: str | os.PathLike, expect_schema: dict | None = None) -> LoadedArtifacts:
    """Load and check a model directory; ``expect_schema`` (a schema dict) must match the one the
    model was trained on when given."""
    import keras

    from finrec.features import FeaturePipeline
    from finrec.training.train import TrainedModel

    path = Path(path)
    manifest = read_manifest(path)
    if expect_schema is not None and schema_hash(expect_schema) != manifest.get("schema_hash"):
        raise ArtifactError(f"{path}: this model was trained on a different schema than the data given")
    try:
        pipeline = FeaturePipeline.from_dict(json.loads((path / PIPELINE_FILE).read_text(encoding="utf-8")))
        config = Config.from_dict(yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8")), source=str(path / CONFIG_FILE))
        history = json.loads((path / HISTORY_FILE).read_text(encoding="utf-8"))
        embeddings = np.load(path / EMBEDDINGS_FILE, allow_pickle=False)
        products = pq.read_table(path / PRODUCTS_FILE).to_pandas()
        model = keras.saving.load_model(path / MODEL_FILE, compile=False, safe_mode=True)
    except FinrecError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse a file means a damaged artifact
        raise ArtifactError(f"{path}: cannot load the model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    trained = TrainedModel(model=model, pipeline=pipeline, config=config, products=products, history=history,
                           product_embeddings_=embeddings, calibration=_load_calibration(path, manifest))
    return LoadedArtifacts(path=path, manifest=manifest, trained=trained)


def _load_calibration(path: Path, manifest: dict[str, Any]):
    """The model's ``Calibration``, or None when it has none (a model trained before it existed)."""
    from finrec.training.calibration import CALIBRATION_FORMAT, Calibration

    if CALIBRATION_FILE not in manifest.get("files", {}):
        return None
    try:
        raw = json.loads((path / CALIBRATION_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(f"{path}: {CALIBRATION_FILE} is damaged (not valid JSON)") from None
    if isinstance(raw, dict) and raw.get("format") != CALIBRATION_FORMAT:
        # Another finrec's calibration: the model still ranks; `finrec calibrate` writes a new one.
        log.warning("%s: calibration format %r is not this finrec's (%d); the model has no probabilities until "
                    "`finrec calibrate` refits them", path, raw.get("format"), CALIBRATION_FORMAT)
        return None
    return Calibration.from_dict(raw, source=str(path / CALIBRATION_FILE))
