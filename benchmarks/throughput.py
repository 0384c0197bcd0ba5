"""Training throughput (examples/s) of finrec's training path against a plain Keras model of the
same size, on the TensorFlow (jit_compile False) and JAX backends.

    .venv/bin/python benchmarks/throughput.py [--customers 100000] [--epochs 4] [--backends tensorflow jax]

finrec: ``finrec.training.fit`` with a customer tower of widths 256-128, a 64-d embedding, batch
4096, softmax over the 25-product catalogue (EMA, the per-epoch validation nDCG and early
stopping on, as in production). Plain: a minimal Functional model, Dense 256-128-64 + softmax
over 32 classes, random data, batch 4096, Adam; plain+bn+dropout: the same with finrec's
BatchNorm + ReLU + Dropout(0.1) blocks (the difference between finrec and plain is there). Each backend runs in its own subprocess
(``KERAS_BACKEND``); the first epoch (tracing / compilation) is excluded and the median of the
remaining epochs is reported. "epoch" = the whole epoch as Keras runs it (for finrec including the
validation callback); "train" = first batch start to last batch end. Shared CPUs make single
runs noisy: medians only. Prints a table and writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "throughput.json"


def _timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs: list[tuple[float, float, int]] = []  # (epoch seconds, train seconds, batches)

        def on_epoch_begin(self, epoch, logs=None):
            self._start, self._batches = time.perf_counter(), 0

        def on_train_batch_end(self, batch, logs=None):
            self._last, self._batches = time.perf_counter(), self._batches + 1

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append((time.perf_counter() - self._start, self._last - self._start, self._batches))

    return EpochTimer()


def _summary(timer, examples: int, jit) -> dict:
    steady = timer.epochs[1:]
    epoch = statistics.median(e for e, _, _ in steady)
    train = statistics.median(t for _, t, _ in steady)
    return {
        "examples_per_epoch": examples,
        "epochs_measured": len(steady),
        "batches_per_epoch": steady[0][2],
        "epoch_s": epoch,
        "train_s": train,
        "examples_per_s_epoch": examples / epoch,
        "examples_per_s_train": examples / train,
        "first_epoch_s": timer.epochs[0][0],
        "jit_compile": str(jit),
    }


def run_finrec(customers: int, epochs: int, batch: int) -> dict:
    import keras

    from finrec.config import Config, ModelConfig, TrainConfig
    from finrec.data import schema as S
    from finrec.data.io import validate_tables
    from finrec.data.synthetic import GeneratorSettings, generate
    from finrec.training.train import fit

    data = validate_tables(
        S.SYNTHETIC.schema(), generate(GeneratorSettings(n_customers=customers, seed=0, ground_truth=False))
    )
    config = Config(
        model=ModelConfig(customer_widths=(256, 128), embedding_dim=64),
        training=TrainConfig(batch_size=batch, epochs=epochs, patience=epochs),
    ).validate()
    timer = _timer()
    original = keras.Model.compile

    def compile_without_xla(self, *args, **kwargs):  # the TF reference runs jit_compile=False
        if keras.backend.backend() == "tensorflow":
            kwargs["jit_compile"] = False
        return original(self, *args, **kwargs)

    keras.Model.compile = compile_without_xla
    trained = fit(data, config, verbose=0, callbacks=[timer])
    keras.Model.compile = original
    out = _summary(timer, int(trained.history["train_examples"][0]), trained.model.jit_compile)
    out["products"] = trained.pipeline.n_products
    return out


def run_plain(
    examples: int, epochs: int, batch: int, features: int = 64, classes: int = 32, regularized: bool = False
) -> dict:
    """The reference model; ``regularized`` adds finrec's BatchNorm + Dropout(0.1) after each
    hidden Dense, to show where the difference between the two comes from."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(examples, features)).astype("float32")
    y = rng.integers(0, classes, examples)
    inputs = keras.Input((features,))
    h = inputs
    for width in (256, 128):
        if regularized:
            h = keras.layers.Dense(width, use_bias=False)(h)
            h = keras.layers.Dropout(0.1)(keras.layers.ReLU()(keras.layers.BatchNormalization()(h)))
        else:
            h = keras.layers.Dense(width, activation="relu")(h)
    h = keras.layers.Dense(64)(h)
    model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(h))
    jit = False if keras.backend.backend() == "tensorflow" else "auto"
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=jit)
    timer = _timer()
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[timer])
    return _summary(timer, examples, model.jit_compile)


def worker(args) -> None:
    finrec = run_finrec(args.customers, args.epochs, args.batch)
    plain = run_plain(finrec["examples_per_epoch"], args.epochs, args.batch)
    regularized = run_plain(finrec["examples_per_epoch"], args.epochs, args.batch, regularized=True)
    print("RESULT " + json.dumps({"finrec": finrec, "plain": plain, "plain+bn+dropout": regularized}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is excluded")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    results = {
        "settings": {
            "customers": args.customers,
            "epochs": args.epochs,
            "batch": args.batch,
            "cpus": os.cpu_count(),
            "note": "shared CPUs: medians of the steady epochs",
        }
    }
    for backend in args.backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--customers",
            str(args.customers),
            "--epochs",
            str(args.epochs),
            "--batch",
            str(args.batch),
        ]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{backend} worker failed")
        results[backend] = json.loads(next(l[7:] for l in done.stdout.splitlines() if l.startswith("RESULT ")))

    print(
        f"{'backend':<11}{'model':<18}{'examples/s (epoch)':>20}{'examples/s (train)':>20}{'epoch s':>9}{'1st epoch s':>13}"
    )
    for backend in args.backends:
        for name in ("finrec", "plain", "plain+bn+dropout"):
            r = results[backend][name]
            print(
                f"{backend:<11}{name:<18}{r['examples_per_s_epoch']:>20,.0f}{r['examples_per_s_train']:>20,.0f}"
                f"{r['epoch_s']:>9.2f}{r['first_epoch_s']:>13.2f}"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
