"""Training on JAX, in one child process (each JAX fit compiles about a hundred XLA programs, ~40 s
on 2 cores, so the suite pays for one JAX process): data-parallel training on 2 (host-platform)
devices matches one-device training, every loss has gradients on JAX arrays, and the model trained
on JAX loads in this TensorFlow process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, keras, numpy as np
    assert keras.backend.backend() == "jax"
    from finrec.config import Config, ModelConfig, TrainConfig
    from finrec.data import schema as S
    from finrec.data.io import validate_tables
    from finrec.data.split import split_dataset
    from finrec.data.synthetic import GeneratorSettings, generate
    from finrec.model import losses as L
    from finrec.training.distributed import fit_data_parallel
    from finrec.evaluate.report import evaluate
    from finrec.training.train import fit

    seen = []

    class Watch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if not seen:
                dist = keras.distribution.distribution()
                seen.append(len(dist.device_mesh.devices.ravel()) if dist is not None else 1)

    data = validate_tables(S.SYNTHETIC.schema(), generate(GeneratorSettings(n_customers=2500, seed=5)))
    train, test = split_dataset(data, 0.2, 0)
    config = Config(model=ModelConfig(customer_widths=(64, 32), product_widths=(32,), embedding_dim=16,
                                      cross_layers=1),
                    training=TrainConfig(epochs=3, batch_size=128, patience=3)).validate()
    one = fit(train, config, verbose=0)
    many = fit_data_parallel(train, config, verbose=0, callbacks=[Watch()])
    weight = many.model.trainable_weights[0].value
    # The other losses are checked directly on JAX arrays: another fit would compile again.
    y = np.array([[1, 2, -1, 0], [0, 1, 0, 2]], "float32")
    scores = np.random.default_rng(0).uniform(-1, 1, (2, 4)).astype("float32")
    log_q = np.log(np.full(4, 0.25))
    gradients = {}
    for loss in (L.InBatchSoftmax(log_q, 0.1), L.SampledSoftmax(log_q, 0.1), L.HardNegativeTriplet(0.2, 2)):
        grad = np.asarray(jax.grad(lambda s: loss(y, s))(scores))
        gradients[type(loss).__name__] = bool(np.isfinite(grad).all() and np.abs(grad).sum() > 0)
    one.model.save(sys.argv[1])
    print("RESULT " + json.dumps({
        "devices": keras.distribution.list_devices(),
        "mesh_devices_during_fit": seen[0],
        "weight_devices": len(weight.sharding.device_set),
        "single": evaluate(one, test, k=5)["model"]["ndcg@5"],
        "parallel": evaluate(many, test, k=5)["model"]["ndcg@5"],
        "epochs": len(many.history["loss"]),
        "losses_finite": bool(np.isfinite(one.history["loss"]).all()),
        "gradients": gradients,
        "products": len(one.products),
    }))
""")


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("jax") / "jax.keras"
    env = dict(
        os.environ, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2", TF_CPP_MIN_LOG_LEVEL="3"
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)], env=env, capture_output=True, text=True, timeout=420
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")))
    return result, path


@pytest.mark.slow
def test_data_parallel_on_two_devices_matches_one_device(jax_run):
    result, _ = jax_run
    assert len(result["devices"]) == 2
    assert result["mesh_devices_during_fit"] == 2
    assert result["weight_devices"] == 2  # weights replicated on both devices
    assert result["epochs"] >= 1
    assert result["parallel"] == pytest.approx(result["single"], abs=0.03), result


@pytest.mark.slow
def test_every_loss_trains_on_jax(jax_run):
    result, _ = jax_run
    assert result["losses_finite"]
    assert result["gradients"] == {"InBatchSoftmax": True, "SampledSoftmax": True, "HardNegativeTriplet": True}


@pytest.mark.slow
def test_trained_on_jax_loads_on_tensorflow(jax_run):
    import keras

    import finrec.model.two_tower  # noqa: F401 - registers finrec's layers, as loading a model directory does

    result, path = jax_run
    model = keras.saving.load_model(path, safe_mode=True, compile=False)  # this process runs TensorFlow
    assert keras.backend.backend() == "tensorflow"
    assert model.output.shape[-1] == result["products"]


def test_data_parallel_needs_jax_and_a_divisible_batch(small_dataset):
    import keras

    from finrec.config import Config, TrainConfig
    from finrec.errors import ConfigError
    from finrec.training.distributed import fit_data_parallel

    if keras.backend.backend() != "jax":
        with pytest.raises(ConfigError, match="JAX"):
            fit_data_parallel(small_dataset, Config())
    else:  # pragma: no cover - the suite runs on TensorFlow
        with pytest.raises(ConfigError, match="divide"):
            fit_data_parallel(small_dataset, Config(training=TrainConfig(batch_size=129)), devices=["cpu:0", "cpu:1"])
