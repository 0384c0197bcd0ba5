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
      monitoring.json          optional: the training population's distributions (``finrec monitor``)
      tree_blend.json          optional: the tree teacher blended into the scores, its weight and its
                               LightGBM model in LightGBM's text format (``model.tree_blend``)

A file that is missing, truncated or altered fails its checksum and the directory is refused
with a message naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from finrec.atomic import atomic_directory, check_writable, recover, refuse_overlap
from finrec.config import Config
from finrec.errors import ArtifactError, FinrecError, safe_items, safe_text
from finrec.safeyaml import load_yaml

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
# Optional: models trained before monitoring existed (or saved without a reference) lack it.
MONITORING_FILE = "monitoring.json"
# Optional: only a model whose validation chose a tree blend has it (finrec.training.trees.TreeBlend).
BLEND_FILE = "tree_blend.json"
MODEL_FILES = (
    MANIFEST,
    MODEL_FILE,
    PIPELINE_FILE,
    EMBEDDINGS_FILE,
    PRODUCTS_FILE,
    CONFIG_FILE,
    HISTORY_FILE,
    CALIBRATION_FILE,
    MONITORING_FILE,
    BLEND_FILE,
)


def model_files(path: Path) -> set[str]:
    """The names a model directory at ``path`` may hold (the files a model has, and any its
    manifest lists): retraining into it replaces it whole, and is refused when it holds anything
    else (``atomic.check_writable``). A damaged manifest lists nothing, so a retraining can still
    replace the model it belonged to."""
    names = set(MODEL_FILES)
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        manifest = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
        names.update(str(name) for name in manifest.get("files", {}))
    return names


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _schema_difference(path: Path, data_schema: dict) -> str:
    """ ": where they differ" from the model's own schema (its pipeline file), or "" when that
    file cannot be read (the refusal stands either way)."""
    from finrec.data.schema import schema_differences

    try:
        model_schema = _part(path, PIPELINE_FILE, _load_pipeline).full_schema.to_dict()
    except FinrecError:
        return ""
    found = schema_differences(model_schema, data_schema)
    return f": {found}" if found else ""


def schema_hash(schema_dict: dict) -> str:
    return hashlib.sha256(json.dumps(schema_dict, sort_keys=True).encode()).hexdigest()[:16]


def save_model_dir(
    trained,
    out: str | os.PathLike,
    data_fingerprint: str = "",
    data_path: str | None = None,
    extra: dict[str, Any] | None = None,
    monitoring: dict[str, Any] | None = None,
) -> Path:
    """Write ``trained`` (a ``finrec.training.TrainedModel``) to ``out``, replacing any previous
    model there only once the new one is complete. ``out`` must not overlap the training data
    (``data_path``) nor be a directory of other files: the swap would delete them. ``monitoring``
    (from ``finrec.governance.monitor.build_reference``) is written as ``monitoring.json``."""
    import keras

    out = Path(out)
    refuse_overlap(out, {"the training data": data_path}, what="the model directory")
    check_writable(out, "directory", marker=MANIFEST, what="the model directory", owned=model_files)
    with atomic_directory(out) as tmp:
        trained.model.save(tmp / MODEL_FILE)
        (tmp / PIPELINE_FILE).write_text(json.dumps(trained.pipeline.to_dict(), indent=1), encoding="utf-8")
        np.save(tmp / EMBEDDINGS_FILE, trained.product_embeddings_.astype("float32"), allow_pickle=False)
        pq.write_table(pa.Table.from_pandas(trained.products, preserve_index=False), tmp / PRODUCTS_FILE)
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(trained.config.to_dict(), sort_keys=False), encoding="utf-8")
        (tmp / HISTORY_FILE).write_text(json.dumps(trained.history, indent=1), encoding="utf-8")
        if getattr(trained, "calibration", None) is not None:
            (tmp / CALIBRATION_FILE).write_text(json.dumps(trained.calibration.to_dict()), encoding="utf-8")
        if getattr(trained, "blend", None) is not None:
            (tmp / BLEND_FILE).write_text(json.dumps(trained.blend.to_dict()), encoding="utf-8")
        if monitoring is not None:
            (tmp / MONITORING_FILE).write_text(json.dumps(monitoring, indent=1), encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
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


# Fields whose default changed after models were saved without them (issue 12: PLE, distillation
# and the step floor became the default): a config.yaml written before they existed describes a
# model trained with the old values, which it must keep saying.
DEFAULTS_BEFORE = {
    "model": {"numeric_encoding": "none", "numeric_bins": 16, "tree_blend": "never"},
    "training": {"distill": 0.0, "min_steps_per_epoch": 0, "holdings_dropout": 0.0},
}


def _load_config(file: Path) -> Config:
    raw = load_yaml(file, ArtifactError)
    if isinstance(raw, dict):
        raw = dict(raw)
        for section, old in DEFAULTS_BEFORE.items():
            if isinstance(raw.get(section), dict):
                raw[section] = {**old, **raw[section]}
    return Config.from_dict(raw, source=str(file))


# The files of the format, exactly: a manifest that omits one (whose checksum would then go
# unchecked) or names another is refused.
REQUIRED_FILES = (CONFIG_FILE, HISTORY_FILE, MODEL_FILE, PIPELINE_FILE, EMBEDDINGS_FILE, PRODUCTS_FILE)
# Files a model may carry (a model trained before they existed has none); checked like the rest
# whenever the manifest lists them, and no other name is accepted.
OPTIONAL_FILES = (CALIBRATION_FILE, MONITORING_FILE, BLEND_FILE)
# Read limits for the JSON files, far above what training writes: a file is never read whole
# into memory before its size is known.
MAX_MANIFEST_BYTES = 1024**2
MAX_JSON_BYTES = 256 * 1024**2
_SHA256_HEX = frozenset("0123456789abcdef")
MAX_DETAIL_CHARS = 1000


def _read_json(file: Path, limit: int) -> Any:
    """A JSON file's value; a file over ``limit`` bytes, not UTF-8, not JSON, or nested past
    Python's recursion limit is an ``ArtifactError`` naming the file."""
    with open(file, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ArtifactError(f"{file}: over {limit // 1024**2} MB; not a file finrec wrote")
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ArtifactError(f"{file}: damaged (JSON nested too deeply)") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, an integer of thousands of digits
        raise ArtifactError(f"{file}: damaged (not valid JSON)") from None


def _check_file_name(path: Path, name: Any) -> str:
    """A manifest entry names a file directly inside the model directory, nothing else."""
    if not isinstance(name, str):
        raise ArtifactError(f"{path}: {MANIFEST} lists a file name that is not text: {safe_text(name)}")
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name or os.path.isabs(name):
        raise ArtifactError(
            f"{path}: {MANIFEST} names {safe_text(name, quote=True)}, which is not a file of the "
            "model directory; refused"
        )
    return name


def _check_manifest(path: Path, manifest: Any) -> dict[str, Any]:
    if not isinstance(manifest, dict) or not (
        type(manifest.get("format_version")) is int and manifest["format_version"] == FORMAT_VERSION
    ):
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise ArtifactError(
            f"{path}: model format {safe_text(found, 40, quote=True)} is not supported by this finrec "
            f"(expects {FORMAT_VERSION}); retrain it"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(
            f"{path}: {MANIFEST} has no 'files' map of file names to SHA-256 checksums; damaged or altered"
        )
    for name, checksum in files.items():
        _check_file_name(path, name)
        if not (isinstance(checksum, str) and len(checksum) == 64 and set(checksum) <= _SHA256_HEX):
            raise ArtifactError(
                f"{path}: {MANIFEST}: the checksum of {safe_text(name, quote=True)} is not a SHA-256 "
                f"hex digest: {safe_text(checksum, 80, quote=True)}"
            )
    missing = [name for name in REQUIRED_FILES if name not in files]
    extra = sorted(name for name in files if name not in REQUIRED_FILES and name not in OPTIONAL_FILES)
    if missing:
        raise ArtifactError(
            f"{path}: {MANIFEST} does not list {safe_items(missing, quote=False)}: damaged or "
            "altered (every file of the model must be listed with its checksum)"
        )
    if extra:
        raise ArtifactError(
            f"{path}: {MANIFEST} lists file(s) that are not part of a finrec model: "
            f"{safe_items(extra)}; damaged or altered"
        )
    for key in ("schema_hash", "data_fingerprint", "created", "keras_version", "backend"):
        if key in manifest and not isinstance(manifest[key], str):
            raise ArtifactError(f"{path}: {MANIFEST}: '{key}' must be text, got {safe_text(manifest[key], 80)}")
    if "schema_hash" not in manifest:
        raise ArtifactError(f"{path}: {MANIFEST} has no 'schema_hash'; damaged or altered")
    if manifest.get("data_path") is not None and not isinstance(manifest["data_path"], str):
        raise ArtifactError(f"{path}: {MANIFEST}: 'data_path' must be text, got {safe_text(manifest['data_path'], 80)}")
    return manifest


def _model_hint(path: Path) -> str:
    """Where the model is, when ``path`` is a directory people pass for one: a registry, one of
    its versions, or a dataset (a tester's monthly cycle passed each, and was told only that the
    manifest was missing)."""
    if (path / "model" / MANIFEST).is_file():  # a registry version: versions/v0002
        return f"; the model is {path / 'model'}"
    if (path / "registry.json").is_file() or (path / "versions").is_dir():
        return (
            f"; {path} is a model registry: pass --root {path} where the command takes it (serve, compare), "
            f"or a version's model, {path / 'versions' / 'VERSION' / 'model'}"
        )
    if (path / "schema.yaml").is_file():
        return "; it holds a dataset (schema.yaml): pass it as --data, and a model directory as --model"
    return ""


def read_manifest(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """The manifest of a model directory, after checking its structure and, with ``verify``,
    every file's checksum. The manifest must list exactly ``REQUIRED_FILES``, and may list
    ``OPTIONAL_FILES``."""
    path = Path(path)
    recover(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: no model directory here (train one with `finrec train --data DIR --out {path}`)")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{path}: not a finrec model directory ({MANIFEST} is missing){_model_hint(path)}")
    manifest = _check_manifest(path, _read_json(manifest_path, MAX_MANIFEST_BYTES))
    if verify:
        for name in (*REQUIRED_FILES, *(name for name in OPTIONAL_FILES if name in manifest["files"])):
            file = path / name
            if not file.is_file():
                raise ArtifactError(f"{path}: {name} is missing")
            if _sha256(file) != manifest["files"][name]:
                raise ArtifactError(
                    f"{path}: {name} is damaged or was altered (checksum mismatch); retrain or restore it"
                )
    return manifest


@dataclass
class LoadedArtifacts:
    path: Path
    manifest: dict[str, Any]
    trained: Any  # finrec.training.TrainedModel


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_pipeline_json(raw: Any) -> dict[str, Any]:
    """The shape of ``pipeline.json``, checked before ``FeaturePipeline.from_dict`` trusts it: a
    value of the wrong type would otherwise surface later, as a wrong ranking or a crash."""

    def fail(what: str):
        raise ArtifactError(f"{what}; damaged or altered")

    if not isinstance(raw, dict):
        fail("expected a JSON object")
    keys = (
        "format_version",
        "schema",
        "use_holdings",
        "exclude_protected",
        "customer_numeric",
        "customer_vocab",
        "product_ids",
        "product_numeric",
        "product_vocab",
        "product_popularity",
    )
    missing = [k for k in keys if k not in raw]
    if missing:
        fail(f"missing {safe_items(missing)}")
    for key in ("use_holdings", "exclude_protected"):
        if not isinstance(raw[key], bool):
            fail(f"'{key}' must be true or false, got {safe_text(raw[key], 40)}")
    for side in ("customer", "product"):
        stats = raw[f"{side}_numeric"]
        if not isinstance(stats, list):
            fail(f"'{side}_numeric' must be a list")
        for i, entry in enumerate(stats):
            if not (
                isinstance(entry, dict)
                and set(entry) == {"column", "log", "median", "mean", "std"}
                and isinstance(entry["column"], str)
                and isinstance(entry["log"], bool)
                and all(_finite_number(entry[k]) for k in ("median", "mean", "std"))
                and entry["std"] > 0
            ):
                fail(f"'{side}_numeric'[{i}] is not a column's statistics (column, log, median, mean, std > 0)")
        vocab = raw[f"{side}_vocab"]
        if not (
            isinstance(vocab, dict)
            and all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in vocab.values())
        ):
            fail(f"'{side}_vocab' must map each categorical column to a list of its values")
    ids = raw["product_ids"]
    if not (isinstance(ids, list) and ids and all(isinstance(x, str) for x in ids)) or len(set(ids)) != len(ids):
        fail("'product_ids' must be a non-empty list of distinct product ids")
    popularity = raw["product_popularity"]
    if not (
        isinstance(popularity, list)
        and len(popularity) == len(ids)
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in popularity)
    ):
        fail("'product_popularity' must be one count per product")
    bins = raw.get("customer_bins")  # optional: only the piecewise-linear encoding has them
    if bins is not None and not (
        isinstance(bins, list)
        and len(bins) == len(raw["customer_numeric"])
        and all(
            isinstance(e, list)
            and 1 <= len(e) <= 257
            and all(_finite_number(v) for v in e)
            and all(a < b for a, b in zip(e, e[1:]))
            for e in bins
        )
    ):
        fail("'customer_bins' must be, per customer numeric column, a list of increasing finite bin edges")
    return raw


def _load_pipeline(file: Path):
    from finrec.features import FeaturePipeline

    pipeline = FeaturePipeline.from_dict(_check_pipeline_json(_read_json(file, MAX_JSON_BYTES)))
    for side, table, stats, vocab in (
        ("customer", pipeline.schema.customers, pipeline.customer_numeric_, pipeline.customer_vocab_),
        ("product", pipeline.schema.products, pipeline.product_numeric_, pipeline.product_vocab_),
    ):
        if [s.column for s in stats] != list(table.numeric_features) or list(vocab) != list(table.categorical_features):
            raise ArtifactError(f"the {side} features do not match its schema; damaged or altered")
    return pipeline


def _load_history(file: Path) -> dict[str, list]:
    history = _read_json(file, MAX_JSON_BYTES)
    if not (
        isinstance(history, dict)
        and all(isinstance(v, list) and all(isinstance(x, (int, float)) for x in v) for v in history.values())
    ):
        raise ArtifactError("expected a JSON object of metric name -> list of numbers; damaged or altered")
    return history


def _load_embeddings(file: Path) -> np.ndarray:
    embeddings = np.load(file, allow_pickle=False)
    if not (
        isinstance(embeddings, np.ndarray)
        and embeddings.ndim == 2
        and embeddings.dtype.kind == "f"
        and np.isfinite(embeddings).all()
    ):
        raise ArtifactError("expected a finite float matrix [products, dimension]; damaged or altered")
    return embeddings.astype("float32", copy=False)


def _check_tower(tower, spec: dict[str, tuple[str, int]], dimension: int) -> None:
    import keras

    inputs = tower.input
    sizes = {layer.name: layer.input_dim for layer in tower.layers if isinstance(layer, keras.layers.Embedding)}
    ok = isinstance(inputs, dict) and set(inputs) == set(spec) and tuple(tower.output.shape) == (None, dimension)
    for name, (kind, size) in spec.items() if ok else ():
        shape = tuple(inputs[name].shape)
        if kind == "categorical":
            ok = ok and shape == (None,) and sizes.get(f"{tower.name}_emb_{name}") == size
        elif kind == "known":
            ok = ok and shape == (None,)
        elif isinstance(size, (tuple, list)):  # history inputs: [n, *size]
            ok = ok and shape == (None, *size)
        else:
            ok = ok and shape == (None, size)
    if not ok:
        raise ArtifactError(
            f"{MODEL_FILE}: its {tower.name} does not fit {PIPELINE_FILE} and {EMBEDDINGS_FILE} "
            "(inputs or sizes differ); the files come from different models"
        )


def _check_consistent(pipeline, model, embeddings: np.ndarray, products: pd.DataFrame) -> None:
    """The files of one model agree: the same catalogue, the same input sizes and dimension."""
    from finrec.model.two_tower import PRODUCT_KNOWN, SIMILARITY, towers_of

    _check_products(pipeline, embeddings, products)
    n_products = pipeline.n_products
    customer_tower, product_tower = towers_of(model)
    shapes = model.get_layer(SIMILARITY).feature_shapes
    _check_tower(customer_tower, pipeline.customer_input_spec(), embeddings.shape[1])
    product_spec = pipeline.product_input_spec()
    if PRODUCT_KNOWN in shapes:  # model.product_id_dropout > 0
        product_spec[PRODUCT_KNOWN] = ("known", n_products)
    _check_tower(product_tower, product_spec, embeddings.shape[1])
    if any(shape[0] != n_products for shape in shapes.values()):
        raise ArtifactError(f"{MODEL_FILE}: its catalogue has a different number of products than {PIPELINE_FILE}")


def _check_products(pipeline, embeddings: np.ndarray, products: pd.DataFrame) -> None:
    """The product embeddings and the products table are those of the pipeline's catalogue."""
    n_products = pipeline.n_products
    if embeddings.shape[0] != n_products:
        raise ArtifactError(
            f"{EMBEDDINGS_FILE}: {embeddings.shape[0]} rows for the {n_products} products of "
            f"{PIPELINE_FILE}; the files come from different models"
        )
    product_id = pipeline.schema.products.id
    if product_id not in products.columns:
        raise ArtifactError(f"{PRODUCTS_FILE}: no product id column {safe_text(product_id, quote=True)}")
    ids = products[product_id].astype(str)
    unknown = set(pipeline.product_ids_) - set(ids)
    if not ids.is_unique or unknown:
        raise ArtifactError(
            f"{PRODUCTS_FILE}: its products are not those of {PIPELINE_FILE} (missing: "
            f"{safe_items(sorted(unknown))}); the files come from different models"
        )


def _part(path: Path, name: str, load):
    """``load(path / name)``, every failure an ``ArtifactError`` that names the file."""
    file = path / name
    try:
        return load(file)
    except FinrecError as exc:
        text = safe_text(str(exc), MAX_DETAIL_CHARS)
        if text.startswith(str(path)):  # already names the file (the YAML loader's messages)
            raise ArtifactError(text) from None
        raise ArtifactError(f"{file}: {text.removeprefix(f'{name}: ')}") from None
    except RecursionError:
        raise ArtifactError(f"{file}: damaged (nested too deeply)") from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse a file means a damaged artifact
        first = safe_text(str(exc).split("\n", 1)[0])
        raise ArtifactError(f"{file}: cannot load the model from it ({type(exc).__name__}: {first})") from None


def expected_schema(model_dir: str | os.PathLike, schema) -> dict:
    """The schema dict a model must have been trained on to serve data of ``schema`` (a
    ``DatasetSchema``): its own, or the same but for the products' value column, which is campaign
    data, not a model input (a model trained before it was named, or with one the data no longer
    names, still matches)."""
    expect = schema.to_dict()
    recorded = read_manifest(model_dir, verify=False).get("schema_hash")
    if schema_hash(expect) == recorded:
        return expect
    # Either way round: the column named after training, or the model's dropped from the data
    # since (``data.schema.check_model_schema`` leaves it out of both sides).
    candidates = [schema.without_value()]
    try:
        value = _part(Path(model_dir), PIPELINE_FILE, _load_pipeline).full_schema.products.value
    except FinrecError:
        value = None
    if value:
        candidates.append(replace(schema, products=replace(schema.products, value=value)))
    for candidate in candidates:
        if schema_hash(candidate.to_dict()) == recorded:
            return candidate.to_dict()
    return expect


def load_model_dir(
    path: str | os.PathLike, expect_schema: dict | None = None, keras_model: bool = True
) -> LoadedArtifacts:
    """Load and check a model directory; ``expect_schema`` (a schema dict) must match the one the
    model was trained on when given. Every failure is an ``ArtifactError`` naming the file.

    ``keras_model=False``: for a caller that only serves through the numpy tower (``finrec
    plan``): when the customer tower has only Keras' standard layers its weights are read from
    ``model.keras`` without importing Keras (``ServingModel``, ~10 s less); otherwise the Keras
    model is loaded as usual."""
    path = Path(path)
    manifest = read_manifest(path)
    log.info("loading the model %s", path)
    if expect_schema is not None and schema_hash(expect_schema) != manifest["schema_hash"]:
        raise ArtifactError(
            f"{path}: this model was trained on a different schema than the data given"
            + _schema_difference(path, expect_schema)
        )
    pipeline = _part(path, PIPELINE_FILE, _load_pipeline)
    config = _part(path, CONFIG_FILE, _load_config)
    history = _part(path, HISTORY_FILE, _load_history)
    embeddings = _part(path, EMBEDDINGS_FILE, _load_embeddings)
    products = _part(path, PRODUCTS_FILE, lambda file: pq.read_table(file).to_pandas())
    spec = None if keras_model else _part(path, MODEL_FILE, _read_customer_tower)
    if spec is not None:
        try:
            _check_products(pipeline, embeddings, products)
            _check_saved_tower(spec, pipeline.customer_input_spec(), embeddings.shape[1])
            if spec.catalogue != pipeline.n_products:
                raise ArtifactError(
                    f"{MODEL_FILE}: its catalogue has a different number of products than {PIPELINE_FILE}"
                )
        except FinrecError as exc:
            raise ArtifactError(f"{path}: {exc}") from None
        calibration = _load_calibration_of(path, manifest, pipeline)
        blend = _load_blend_of(path, manifest, pipeline)
        served = ServingModel(pipeline, config, products, history, embeddings, calibration, spec, blend)
        return LoadedArtifacts(path=path, manifest=manifest, trained=served)
    import keras

    from finrec.training.train import TrainedModel

    model = _part(path, MODEL_FILE, lambda file: keras.saving.load_model(file, compile=False, safe_mode=True))
    try:
        _check_consistent(pipeline, model, embeddings, products)
    except FinrecError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a foreign Keras model lacks the towers or layers looked up
        raise ArtifactError(
            f"{path}: {MODEL_FILE} is not a finrec two-tower model "
            f"({type(exc).__name__}: {safe_text(str(exc).split(chr(10), 1)[0])})"
        ) from None
    trained = TrainedModel(
        model=model,
        pipeline=pipeline,
        config=config,
        products=products,
        history=history,
        product_embeddings_=embeddings,
        calibration=_load_calibration_of(path, manifest, pipeline),
        blend=_load_blend_of(path, manifest, pipeline),
    )
    return LoadedArtifacts(path=path, manifest=manifest, trained=trained)


def _load_calibration_of(path: Path, manifest: dict[str, Any], pipeline):
    """The model's ``Calibration``, None when it has none; an adoption model in it must read the
    pipeline's catalogue, as the blend's trees must."""
    if CALIBRATION_FILE not in manifest["files"]:
        return None
    calibration = _part(path, CALIBRATION_FILE, _load_calibration)
    if calibration is not None and calibration.adoption_model is not None:
        _check_trees(path / CALIBRATION_FILE, calibration.adoption_model, pipeline, outputs=1)
    return calibration


def _load_blend_of(path: Path, manifest: dict[str, Any], pipeline):
    """The model's ``TreeBlend``, None when it has none; its catalogue must be the pipeline's."""
    if BLEND_FILE not in manifest["files"]:
        return None
    blend = _part(path, BLEND_FILE, _load_blend)
    classes = np.asarray(blend.teacher.classes_)
    if (
        classes.size == 0
        or (classes < 0).any()
        or (classes >= pipeline.n_products).any()
        or (np.diff(classes) <= 0).any()
    ):
        raise ArtifactError(
            f"{path / BLEND_FILE}: its products are not increasing positions in the catalogue; damaged or altered"
        )
    _check_trees(path / BLEND_FILE, blend.teacher, pipeline, outputs=len(classes))
    return blend


def _check_trees(file: Path, trees, pipeline, outputs: int) -> None:
    """A stored ``LightGBMBaseline`` must read ``pipeline``'s catalogue, its trees score ``outputs``
    values a round and read as many features as its settings give."""
    if list(trees.pipeline_.product_ids_) != list(pipeline.product_ids_):
        raise ArtifactError(f"{file}: its catalogue is not that of {PIPELINE_FILE}")
    booster = trees.booster_
    problem = None
    if booster is not None and booster.num_model_per_iteration() != outputs:
        problem = f"its trees score {booster.num_model_per_iteration()} outputs a round, {outputs} expected"
    elif booster is not None:
        width = trees.record_matrix({}, np.zeros((1, pipeline.n_products), dtype=bool)).shape[1]
        if booster.num_feature() != width:
            problem = f"its trees read {booster.num_feature()} features, its settings give {width}"
    if problem:
        raise ArtifactError(f"{file}: {problem}; damaged or altered")


def _load_blend(file: Path):
    from finrec.training.trees import LAUNCHES_FROM, TreeBlend

    raw = _read_json(file, MAX_JSON_BYTES)
    if not isinstance(raw, dict):
        raise ArtifactError(f"{file}: not a tree blend (expected a JSON object)")
    blend = TreeBlend.from_dict(raw)
    if not (0.0 < blend.weight < 1.0 and blend.temperature > 0 and math.isfinite(blend.temperature)):
        raise ArtifactError(f"{file}: weight {blend.weight} or temperature {blend.temperature} out of range")
    if blend.cold_weight is not None and not 0.0 <= blend.cold_weight < 1.0:
        raise ArtifactError(f"{file}: cold_weight {blend.cold_weight} out of range [0, 1)")
    if blend.launches_from not in LAUNCHES_FROM:
        raise ArtifactError(
            f"{file}: launches_from {safe_text(blend.launches_from, quote=True)} is not one of {', '.join(LAUNCHES_FROM)}"
        )
    return blend


@dataclass
class ServingModel:
    """A model directory loaded without Keras (``load_model_dir(keras_model=False)``): what the
    numpy serving path (``finrec.recommend.Recommender``) reads of a ``TrainedModel``, with the
    customer tower's weights (``tower_spec``) in place of the Keras model."""

    pipeline: Any  # finrec.features.FeaturePipeline
    config: Config
    products: pd.DataFrame
    history: dict[str, list]
    product_embeddings_: np.ndarray
    calibration: Any  # finrec.training.calibration.Calibration | None
    tower_spec: Any  # finrec.model.tower_spec.TowerSpec
    blend: Any = None  # finrec.training.trees.TreeBlend | None
    model: None = None


def _read_customer_tower(file: Path):
    """The customer tower's ``TowerSpec`` read from ``model.keras`` (a zip of ``config.json`` and
    the HDF5 weights) with h5py, not Keras; None when h5py is missing, the tower holds a layer
    only Keras can read (``finrec.model.tower_spec.spec_from_saved``) or anything in the file is
    not as expected: Keras then reads it and has the last word."""
    import io
    import zipfile

    from finrec.model.tower_spec import CUSTOMER_TOWER, spec_from_saved

    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py comes with Keras
        return None
    try:
        with zipfile.ZipFile(file) as archive:
            config = json.loads(archive.read("config.json"))
            weights = archive.read("model.weights.h5")
        variables: dict[str, list[np.ndarray]] = {}
        with h5py.File(io.BytesIO(weights), "r") as store:
            # Keras keeps a layer's variables in a group ``.../vars`` whose "name" attribute is the layer's name.
            towers = [g for g in store["layers"].values() if g["vars"].attrs.get("name") == CUSTOMER_TOWER]
            if len(towers) != 1:
                return None
            for group in towers[0]["layers"].values():
                found = group["vars"]
                variables[str(found.attrs["name"])] = [np.asarray(found[str(i)]) for i in range(len(found))]
        return spec_from_saved(config, variables, CUSTOMER_TOWER)
    except (OSError, KeyError, IndexError, TypeError, ValueError, AttributeError, zipfile.BadZipFile):
        return None


def _check_saved_tower(spec, inputs: dict[str, tuple[str, int]], dimension: int) -> None:
    """``_check_tower`` for a tower read without Keras: the same inputs, sizes and dimension."""
    ok = set(spec.input_shapes) == set(inputs) and spec.output_dim == dimension
    for name, (kind, size) in inputs.items() if ok else ():
        shape = spec.input_shapes[name]
        if kind == "categorical":
            ok = ok and shape == () and spec.embedding_sizes.get(f"{spec.name}_emb_{name}") == size
        elif isinstance(size, (tuple, list)):
            ok = ok and shape == tuple(size)
        else:
            ok = ok and shape == (size,)
    if not ok:
        raise ArtifactError(
            f"{MODEL_FILE}: its {spec.name} does not fit {PIPELINE_FILE} and {EMBEDDINGS_FILE} "
            "(inputs or sizes differ); the files come from different models"
        )


def _load_calibration(file: Path):
    """The model's ``Calibration`` (per-product maps from score to adoption probability), or None
    for another finrec's calibration format: the model still ranks, and `finrec calibrate` writes
    a new one."""
    from finrec.training.calibration import ADOPTION_FORMAT, CALIBRATION_FORMAT, Calibration

    raw = _read_json(file, MAX_JSON_BYTES)
    if isinstance(raw, dict) and raw.get("format") not in (CALIBRATION_FORMAT, ADOPTION_FORMAT):
        log.warning(
            "%s: calibration format %s is not this finrec's (%d or %d); the model has no probabilities until "
            "`finrec calibrate` refits them",
            file,
            safe_text(raw.get("format"), 40),
            CALIBRATION_FORMAT,
            ADOPTION_FORMAT,
        )
        return None
    return Calibration.from_dict(raw, source=str(file))


def read_monitoring(path: str | os.PathLike) -> dict[str, Any] | None:
    """The monitoring reference of a model directory (checksums verified), or None for a model
    saved without one."""
    path = Path(path)
    manifest = read_manifest(path)
    if MONITORING_FILE not in manifest.get("files", {}):
        return None
    reference = _read_json(path / MONITORING_FILE, MAX_JSON_BYTES)
    if not isinstance(reference, dict):
        raise ArtifactError(f"{path}: {MONITORING_FILE} is damaged (not a JSON object)")
    return reference


def model_version(manifest: dict[str, Any]) -> str:
    """A short id of one trained model: its creation time and a digest of its files' checksums
    (two models with the same files have the same id; any retraining changes it)."""
    files = json.dumps(manifest.get("files", {}), sort_keys=True).encode()
    return f"{manifest.get('created', 'unknown')}/{hashlib.sha256(files).hexdigest()[:12]}"
