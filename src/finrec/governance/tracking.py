"""Optional MLflow tracking of a training run: ``finrec train --mlflow [URI]`` (``pip install
'finrec[mlflow]'``, which installs ``mlflow-skinny``).

One run per trained model in the experiment ``finrec``: the configuration as parameters (the
sections' fields, dotted: ``model.embedding_dim``), the training history as metrics (one step
per epoch) and the final held-out figures, and the model directory as the run's artifacts
(under ``model/``), so the run can be traced back to the files served. MLflow is imported only
here, when asked for. Without a URI the store is ``./mlruns``; a plain path or ``file:`` URI is
MLflow's local file store, which MLflow 3 keeps only on request (``MLFLOW_ALLOW_FILE_STORE``,
set here for such a URI); any other URI (a tracking server, ``sqlite:///...`` with MLflow's
database extras) is passed through.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from finrec.errors import FinrecError, safe_text

DEFAULT_URI = "mlruns"
EXPERIMENT = "finrec"


def tracking_uri(uri: str | None) -> str:
    """The MLflow URI for ``uri``: a path (or None: ``./mlruns``) becomes a ``file:`` URI."""
    uri = uri or DEFAULT_URI
    if "://" in uri or uri.startswith("file:"):
        return uri
    return Path(uri).resolve().as_uri()


def local_store(uri: str) -> Path | None:
    """The directory of a ``file:`` URI (None for any other store)."""
    if not uri.startswith("file:"):
        return None
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(uri).path))


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested configuration as ``section.field`` -> text (MLflow parameters are text)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = str(value)[:500]
    return out


def check_tracking(uri: str | None, model_dir: str | Path) -> str:
    """Before training: MLflow is importable and a local store is not inside the model directory
    (the model directory is replaced as a whole when written). Returns the tracking URI."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise FinrecError("--mlflow needs MLflow: pip install 'finrec[mlflow]'") from None
    uri = tracking_uri(uri)
    store = local_store(uri)
    if store is not None:
        model = Path(model_dir).resolve()
        if store.resolve() == model or model in store.resolve().parents:
            raise FinrecError(f"--mlflow {store}: the tracking store may not be inside the model directory {model}")
    return uri


def log_training_run(
    uri: str | None,
    model_dir: str | Path,
    config: dict[str, Any],
    history: dict[str, list[float]],
    metrics: dict[str, float] | None = None,
    run_name: str | None = None,
    register: str | None = None,
) -> str:
    """Log one run (parameters, per-epoch history, ``metrics``, the model directory); returns its id.
    ``register``: also add the logged model directory as a new version of that registered model
    (created on first use) in MLflow's model registry."""
    uri = check_tracking(uri, model_dir)
    from mlflow.exceptions import MlflowException

    try:
        return _log_training_run(uri, model_dir, config, history, metrics, run_name, register)
    except (MlflowException, OSError) as exc:  # a server that refuses, a store that cannot be written
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FinrecError(f"--mlflow {safe_text(uri)}: {safe_text(first)}") from None


def _log_training_run(uri, model_dir, config, history, metrics, run_name, register) -> str:
    import mlflow

    if local_store(uri) is not None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(flat_params(config))
        for name, values in history.items():
            if name.endswith("_seconds") or name == "train_examples":
                continue
            for step, value in enumerate(values):
                if value is not None and math.isfinite(float(value)):
                    mlflow.log_metric(_metric_name(name), float(value), step=step)
        finite = {_metric_name(k): float(v) for k, v in (metrics or {}).items() if v is not None and math.isfinite(v)}
        if finite:
            mlflow.log_metrics(finite)
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
    if register:
        register_version(register, run.info.run_id)
    return run.info.run_id


def register_version(name: str, run_id: str) -> str:
    """A new version of registered model ``name`` whose source is the run's ``model`` artifacts;
    returns the version. The client API, not ``mlflow.register_model``: MLflow 3 registers only
    its own logged-model flavours that way, and a finrec model directory is not one."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="finrec two-tower recommender")
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    return str(client.create_model_version(name, source=source, run_id=run_id).version)


def _metric_name(name: str) -> str:
    """MLflow metric names allow letters, digits and ``_ - . / space``: ``ndcg@5`` -> ``ndcg_at_5``."""
    return name.replace("@", "_at_")
