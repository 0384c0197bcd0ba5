"""Latency and throughput of the lean inference path (``finrec.recommend.index``).

Trains the default architecture briefly (2 epochs) on a 4000-customer synthetic bank, then
measures, all on the CPU of this machine:

- one customer, ``NumpyTower`` + ``ProductIndex`` scores + top 5 (held products excluded):
  p50/p99 over ``--reps`` repetitions after a warm-up, cycling over different customers;
  the tower alone and scores + top 5 alone as well;
- for comparison: ``keras.Model.predict`` of the two-tower model on one customer, and a direct
  eager call of the Keras customer tower (``tower(x, training=False)``), ``--keras-reps`` each;
- batch: ``--batch`` customers (rows drawn with replacement from the bank's customers)
  through NumpyTower + scores + top 5, the median of ``--runs`` runs (customers/s), and the
  tower's FLOPs per customer with the GFLOP/s they imply.

    .venv/bin/python benchmarks/inference.py [--reps 3000] [--batch 200000] [--runs 5] [--config F --results F]

Prints a table and writes benchmarks/results/inference.json. The numbers depend on the cores
this process may use and on what else runs on them: the JSON records the CPU count, the
affinity and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from finrec.config import Config  # noqa: E402
from finrec.data import schema as S  # noqa: E402
from finrec.data.io import validate_tables  # noqa: E402
from finrec.data.synthetic import GeneratorSettings, generate  # noqa: E402
from finrec.model.two_tower import customer_embeddings, towers_of  # noqa: E402
from finrec.recommend.index import NumpyTower, ProductIndex  # noqa: E402
from finrec.recommend.recommender import Recommender
from finrec.training.train import fit  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "inference.json"
K = 5


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "reps": len(ms),
    }


def time_each(fn, arguments: list, reps: int, warmup: int) -> list[float]:
    """Seconds of ``fn(*arguments[i % len])`` for each of ``reps`` calls after ``warmup``."""
    for i in range(warmup):
        fn(*arguments[i % len(arguments)])
    out = []
    clock = time.perf_counter
    for i in range(reps):
        args = arguments[i % len(arguments)]
        start = clock()
        fn(*args)
        out.append(clock() - start)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3000)
    parser.add_argument("--keras-reps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--config", type=Path, help="a finrec config YAML (default: the default config)")
    parser.add_argument(
        "--results", type=Path, default=None, help="where the JSON goes (default results/inference.json)"
    )
    args = parser.parse_args(argv)
    load_before = os.getloadavg()

    print(f"generating {args.customers} customers and training the default model {args.epochs} epochs ...", flush=True)
    dataset = validate_tables(S.SYNTHETIC.schema(), generate(GeneratorSettings(n_customers=args.customers)))
    config = (Config.from_yaml(args.config) if args.config else Config()).with_overrides(epochs=args.epochs)
    trained = fit(dataset, config, verbose=0)
    sys.path.insert(0, str(Path(__file__).parent))
    from batch_scoring import ensure_blend

    forced = ensure_blend(trained, dataset, config)
    pipeline, model = trained.pipeline, trained.model
    keras_tower = towers_of(model)[0]

    cid = dataset.schema.customers.id
    inputs = pipeline.transform_customers(dataset.customers, dataset.holdings)
    held = pipeline.holdings_matrix(dataset.customers[cid].to_numpy(), dataset.holdings)
    n_customers = len(held)

    start = time.perf_counter()
    tower = NumpyTower.from_keras(model)
    # The towers' own index: the component timings below are of the tower and the cosine core
    # (a tree blend's trees run in the Recommender rows, which time the whole request).
    index = ProductIndex(trained.product_embeddings_)
    extract_ms = (time.perf_counter() - start) * 1e3
    max_abs_diff = float(np.abs(tower(inputs) - customer_embeddings(model, inputs)).max())

    # ---------------------------------------------------------------- one customer
    singles = [
        ({name: value[i : i + 1] for name, value in inputs.items()}, held[i : i + 1])
        for i in range(min(n_customers, 2000))
    ]

    def request(x, excluded):
        return index.recommend(tower(x), excluded, K)

    embedded = [(tower(x), excluded) for x, excluded in singles]
    # The whole request as the API serves it: lookup, tower, all filters, top-5, result objects.
    recommender = Recommender(trained, dataset)
    by_id = [(customer_id, None) for customer_id in dataset.customers[cid].to_numpy()[: len(singles)]]
    by_features = [
        ({**{k: v for k, v in row.items() if k != cid and v == v}, "holdings": []}, None)
        for row in dataset.customers.iloc[: min(len(singles), 500)].to_dict("records")
    ]
    single = {
        "recommender_by_id_filtered_top5": percentiles_ms(
            time_each(lambda c, _: recommender.recommend(c, k=K), by_id, args.reps, 300)
        ),
        "recommender_by_features_filtered_top5": percentiles_ms(
            time_each(lambda c, _: recommender.recommend(c, k=K), by_features, args.reps, 300)
        ),
        "numpy_tower_scores_top5": percentiles_ms(time_each(request, singles, args.reps, 300)),
        "numpy_tower_only": percentiles_ms(time_each(lambda x, _: tower(x), singles, args.reps, 300)),
        "scores_top5_only": percentiles_ms(
            time_each(lambda e, excluded: index.recommend(e, excluded, K), embedded, args.reps, 300)
        ),
        "keras_predict": percentiles_ms(
            time_each(lambda x, _: model.predict(x, verbose=0), singles, args.keras_reps, 5)
        ),
        "keras_eager_tower_call": percentiles_ms(
            time_each(lambda x, _: keras_tower(x, training=False), singles, args.keras_reps, 5)
        ),
    }

    # ---------------------------------------------------------------- batch
    rows = np.random.default_rng(0).integers(0, n_customers, args.batch)
    batch_inputs = {name: np.ascontiguousarray(value[rows]) for name, value in inputs.items()}
    batch_held = np.ascontiguousarray(held[rows])
    end_to_end, tower_only, top_only = [], [], []
    for run in range(args.runs + 1):  # the first run is a warm-up
        start = time.perf_counter()
        emb = tower(batch_inputs)
        middle = time.perf_counter()
        best, _ = index.recommend(emb, batch_held, K)
        stop = time.perf_counter()
        if run:
            end_to_end.append(stop - start)
            tower_only.append(middle - start)
            top_only.append(stop - middle)
    assert best.shape == (args.batch, K) and not batch_held[np.arange(args.batch)[:, None], best].any()
    flops = tower.flops_per_customer()
    seconds = statistics.median(end_to_end)
    tower_seconds = statistics.median(tower_only)
    batch = {
        "customers": args.batch,
        "runs": args.runs,
        "end_to_end_seconds_median": seconds,
        "end_to_end_customers_per_s": args.batch / seconds,
        "tower_seconds_median": tower_seconds,
        "tower_customers_per_s": args.batch / tower_seconds,
        "scores_top5_seconds_median": statistics.median(top_only),
        "flops_per_customer": flops,
        "tower_gflops_per_s": flops * args.batch / tower_seconds / 1e9,
        "end_to_end_gflops_per_s": flops * args.batch / seconds / 1e9,
        "all_runs_end_to_end_seconds": end_to_end,
    }

    result = {
        "model": {
            "config": asdict(config.model),
            "products": index.n_products,
            "embedding_dim": tower.embedding_dim,
            "customer_inputs": {k: list(v) for k, v in pipeline.customer_input_spec().items()},
        },
        "numpy_vs_keras_max_abs_diff": max_abs_diff,
        "tree_blend_weight": None if trained.blend is None else trained.blend.weight,
        "tree_blend_weight_forced": forced,
        "extract_ms": extract_ms,
        "single_customer": single,
        "batch": batch,
        "environment": {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "blas_threads_env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")},
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
    }

    print(f"\nNumpyTower vs Keras customer tower: max |diff| {max_abs_diff:.2e}; extraction {extract_ms:.1f} ms")
    print(f"\none customer (top {K}, held excluded)          p50 ms    p99 ms    reps")
    for name, stats in single.items():
        print(f"  {name:<40} {stats['p50_ms']:>8.3f}  {stats['p99_ms']:>8.3f}  {stats['reps']:>6}")
    print(f"\nbatch of {args.batch} customers (median of {args.runs} runs)")
    print(f"  end to end: {seconds * 1e3:8.1f} ms  {batch['end_to_end_customers_per_s']:>12,.0f} customers/s")
    print(
        f"  tower:      {tower_seconds * 1e3:8.1f} ms  {batch['tower_customers_per_s']:>12,.0f} customers/s"
        f"  {flops} FLOPs/customer -> {batch['tower_gflops_per_s']:.1f} GFLOP/s"
    )
    print(f"  scores+top{K}: {batch['scores_top5_seconds_median'] * 1e3:6.1f} ms")
    print(
        f"\ncpus {os.cpu_count()} (affinity {len(os.sched_getaffinity(0))}); "
        f"load average before {load_before[0]:.2f}, after {result['environment']['loadavg_after'][0]:.2f}"
    )

    out = args.results or RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
