"""The ``finrec`` command line.

    finrec generate  --out DIR [--customers N] [--products P] [--difficulty hard] [--seed S]
    finrec split     --data DIR --out DIR [--holdout 0.2] [--seed S]
    finrec train     --data DIR --out MODEL_DIR [--config FILE] [--epochs N] [--seed S]
    finrec evaluate  --model MODEL_DIR --data DIR [--k 5] [--json FILE]
    finrec score     --model MODEL_DIR --data DIR --out FILE [--k K]
    finrec recommend --model MODEL_DIR --customer-id ID [-k 5] [--preset conservative] [--category C] [--json]
    finrec calibrate --model MODEL_DIR --data DIR
    finrec plan      --model MODEL_DIR --data DIR --out plan.csv [--capacity caps.csv] [--contacts-per-customer 1]
    finrec serve     --model MODEL_DIR [--host 127.0.0.1] [--port 8000]

Errors in the input print one clear line and exit with status 2; nothing is half-written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from finrec.errors import FinrecError

log = logging.getLogger("finrec")

EXIT_INPUT_ERROR = 2
EXIT_INTERNAL_ERROR = 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, got {value}")
    return value


def _quiet_backend(verbose: int = 0) -> None:
    """A user sees finrec's own output only: TensorFlow's C++ start-up lines (oneDNN, absl, CUDA
    probing) and the libraries' Python warnings appear with ``-v``. Runs before any backend is
    imported; a TF_CPP_MIN_LOG_LEVEL the user set is kept."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    for module in ("tensorflow", "keras", "jax", "absl", "google", "ray", "numba"):
        warnings.filterwarnings("ignore", module=module)
    for name in ("tensorflow", "absl", "jax", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _epoch_lines(epochs: int, k: int):
    """One line per epoch in finrec's words, instead of Keras' progress bar (which ``-v`` shows)."""
    import keras

    def line(epoch, logs):
        parts = [f"epoch {epoch + 1}/{epochs}", f"loss {logs.get('loss', float('nan')):.4f}"]
        if f"val_ndcg@{k}" in logs:
            parts.append(f"validation nDCG@{k} {logs[f'val_ndcg@{k}']:.4f}")
        print(", ".join(parts), flush=True)

    return keras.callbacks.LambdaCallback(on_epoch_end=line)


# ------------------------------------------------------------------------------------ commands


def cmd_generate(args) -> int:
    from finrec.data import schema as S
    from finrec.data.io import write_dataset
    from finrec.data.synthetic import GeneratorSettings, generate

    settings = GeneratorSettings(
        n_customers=args.customers, n_products=args.products, seed=args.seed, difficulty=args.difficulty,
        ground_truth=not args.no_ground_truth,
    )
    tables = generate(settings)
    write_dataset(tables, S.SYNTHETIC.schema(), args.out, fmt=args.format)
    points = len(tables["interactions"]) + len(tables["holdings"])
    print(f"wrote {args.out}: {len(tables['customers'])} customers, {len(tables['products'])} products, "
          f"{len(tables['interactions'])} interactions, {len(tables['holdings'])} holdings ({points} customer-product points)")
    return 0


def cmd_split(args) -> int:
    from finrec.data.io import dataset_tables, load_dataset, write_dataset
    from finrec.data.split import split_dataset

    dataset = load_dataset(args.data)
    train, test = split_dataset(dataset, args.holdout, args.seed)
    out = Path(args.out)
    write_dataset(dataset_tables(train), dataset.schema, out / "train")
    write_dataset(dataset_tables(test), dataset.schema, out / "test")
    print(f"wrote {out / 'train'} ({len(train.customers)} customers) and {out / 'test'} ({len(test.customers)} held-out customers)")
    return 0


def cmd_train(args) -> int:
    from finrec.artifacts import save_model_dir
    from finrec.config import Config
    from finrec.data.io import fingerprint, load_dataset
    from finrec.training.train import fit

    config = Config.from_yaml(args.config) if args.config else Config()
    config = config.with_overrides(epochs=args.epochs, seed=args.seed)
    dataset = load_dataset(args.data)
    k = config.training.eval_k
    if args.verbose:
        trained = fit(dataset, config)
    else:
        trained = fit(dataset, config, verbose=0, callbacks=[_epoch_lines(config.training.epochs, k)])
    history = trained.history
    key = f"val_ndcg@{k}"
    best = max(history.get(key, [float("nan")]))
    save_model_dir(trained, args.out, data_fingerprint=fingerprint(args.data), data_path=str(Path(args.data).resolve()))
    epochs = len(history.get("loss", []))
    print(f"trained {epochs} epoch(s) in {history['fit_seconds'][0]:.1f}s; best validation nDCG@{k} {best:.4f}; model written to {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from finrec.atomic import atomic_file
    from finrec.data.io import load_dataset
    from finrec.evaluate.report import evaluate, format_table

    dataset = load_dataset(args.data)
    loaded = _load_model_for(args.model, dataset.schema)
    results = evaluate(loaded.trained, dataset, k=args.k, seed=args.seed)
    print(format_table(results, args.k))
    output = {"k": args.k, "data": str(args.data), "results": results}
    if args.fairness:
        from finrec.evaluate.fairness import fairness_report, format_fairness

        output["fairness"] = fairness_report(loaded.trained, dataset, k=args.k)
        print(format_fairness(output["fairness"]))
    if args.json:
        with atomic_file(args.json) as handle:
            json.dump(output, handle, indent=1)
    return 0


def _filters_from(args) -> dict:
    filters = {"preset": args.preset, "suitability": not args.no_suitability, "exclude_held": not args.include_held}
    if args.category:
        filters["include_categories"] = args.category
    if args.exclude_category:
        filters["exclude_categories"] = args.exclude_category
    return filters


def cmd_score(args) -> int:
    from finrec.data.io import read_schema
    from finrec.recommend.batch import DEFAULT_CHUNK_ROWS, score_dataset
    from finrec.recommend.recommender import Recommender

    loaded = _load_model_for(args.model, read_schema(args.data))
    from finrec.recommend.filters import UNFILTERED

    filters = UNFILTERED if args.unfiltered else _filters_from(args)
    chunk_rows = args.chunk_rows or DEFAULT_CHUNK_ROWS
    if args.engine == "ray":
        if args.probabilities:
            raise FinrecError("--probabilities is not available with --engine ray yet; use the local engine")
        from finrec.recommend.ray_engine import score_dataset_ray

        customers, rows = score_dataset_ray(args.model, args.data, args.out, k=args.k, filters=filters,
                                            batch_rows=min(chunk_rows, 65_536))
        print(f"wrote {rows} recommendations for {customers} customers to {args.out}")
        return 0
    customers, rows = score_dataset(Recommender(loaded.trained), args.data, args.out, k=args.k, filters=filters,
                                    chunk_rows=chunk_rows, probabilities=args.probabilities)
    print(f"wrote {rows} recommendations for {customers} customers to {args.out}")
    return 0


def cmd_recommend(args) -> int:
    from finrec.recommend.recommender import Recommender

    recommender = Recommender.load(args.model, args.data)
    result = recommender.recommend(args.customer_id, k=args.k, filters=_filters_from(args))
    if args.json:
        print(json.dumps(result.to_dict(), indent=1, default=str))
        return 0
    print(f"Top {args.k} for customer {args.customer_id} ({result.eligible} eligible products)")
    for item in result.items:
        product = item.product
        chance = "" if item.probability is None else f"  P(adopt) {item.probability:.1%}"
        print(f"{item.rank:>2}. {item.product_id:<20} score {item.score:+.3f}{chance}  {product.get('product_type', '')}, "
              f"risk {product.get('risk_level', '?')}  [{item.reason}]")
    if result.message:
        print(f"note: {result.message}")
    return 0


def _load_model_for(model_dir: Path, schema):
    """The model directory, checked against the data's schema. The products' value column is
    campaign data, not a model input: a model trained before it was named still matches."""
    from finrec.artifacts import load_model_dir, read_manifest, schema_hash

    expect = schema.to_dict()
    if schema.products.value and schema_hash(expect) != read_manifest(model_dir, verify=False).get("schema_hash"):
        expect = schema.without_value().to_dict()
    return load_model_dir(model_dir, expect_schema=expect)


def cmd_calibrate(args) -> int:
    from finrec.artifacts import save_model_dir
    from finrec.data import schema as S
    from finrec.data.io import find_table, fingerprint, load_dataset, read_id_column
    from finrec.training.train import calibrate

    dataset = load_dataset(args.data)
    loaded = _load_model_for(args.model, dataset.schema)
    manifest = loaded.manifest
    trained_on = manifest.get("data_path")
    # Calibrating on customers the model learned from would make it look surer than it is.
    if trained_on and Path(trained_on).is_dir():
        seen = set(read_id_column(find_table(Path(trained_on), S.CUSTOMERS), dataset.schema.customers.id).to_pylist())
        overlap = [c for c in dataset.customers[dataset.schema.customers.id].astype(str) if c in seen]
        if overlap:
            raise FinrecError(f"{args.data}: {len(overlap)} customer(s) (e.g. {overlap[0]!r}) are in the data the model "
                              f"was trained on ({trained_on}); calibrate on held-out customers")
    trained = loaded.trained
    trained.calibration = calibrate(trained, dataset)
    save_model_dir(trained, args.model, data_fingerprint=manifest.get("data_fingerprint", ""), data_path=trained_on,
                   extra={"calibration_data": str(Path(args.data).resolve()),
                          "calibration_fingerprint": fingerprint(args.data)})
    print(f"calibrated {args.model} on {trained.calibration.customers} customers of {args.data}")
    return 0


def cmd_plan(args) -> int:
    from finrec.data.io import read_schema
    from finrec.plan import campaign
    from finrec.recommend.recommender import Recommender

    loaded = _load_model_for(args.model, read_schema(args.data))
    recommender = Recommender(loaded.trained)
    problem = campaign.build_problem(recommender, args.data, _filters_from(args), args.min_probability,
                            **({"chunk_rows": args.chunk_rows} if args.chunk_rows else {}))
    capacity = campaign.read_capacities(args.capacity, problem.product_ids) if args.capacity else None
    result = campaign.plan_campaign(problem, capacity, args.contacts_per_customer, solver=args.solver)
    info = campaign.summary(result)
    campaign.write_plan(campaign.plan_table(problem, result.plan), args.out,
               inputs=tuple(p for p in (args.data, args.model, args.capacity) if p))
    print(campaign.format_summary(info))
    print(f"wrote {info['plan']['offers']} offers to {args.out}")
    if args.json:
        from finrec.atomic import atomic_file

        with atomic_file(args.json) as handle:
            json.dump(info, handle, indent=1)
    return 0


def _probability_floor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {value}")
    return value


def cmd_serve(args) -> int:
    from finrec.serve import run

    run(args.model, data_dir=args.data, host=args.host, port=args.port, workers=args.workers)
    return 0


# ------------------------------------------------------------------------------------ parser


def _filter_arguments(p: argparse.ArgumentParser) -> None:
    from finrec.recommend.filters import DEFAULT_PRESET, PRESET_HELP, PRESET_NAMES

    p.add_argument("--preset", choices=PRESET_NAMES, default=DEFAULT_PRESET, help=PRESET_HELP)
    p.add_argument("--category", action="append", help="only these product categories (repeatable)")
    p.add_argument("--exclude-category", action="append", help="never these categories (repeatable)")
    p.add_argument("--no-suitability", action="store_true", help="turn the risk-tolerance rule off (explicitly)")
    p.add_argument("--include-held", action="store_true", help="allow products the customer already holds")


def build_parser() -> argparse.ArgumentParser:
    from finrec.data.synthetic import GeneratorSettings

    parser = argparse.ArgumentParser(prog="finrec", description="Bank product recommendations with a Two-Tower model.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="build the synthetic bank dataset")
    p.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    p.add_argument("--customers", type=_positive_int, default=GeneratorSettings.n_customers)
    p.add_argument("--products", type=_positive_int, default=GeneratorSettings.n_products,
                   help="the base catalogue has 25; more builds variants")
    p.add_argument("--difficulty", choices=["default", "hard"], default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    p.add_argument("--no-ground-truth", action="store_true", help="skip the true probabilities (smaller output)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("split", help="split a dataset by customer into train/ and test/")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--holdout", type=_fraction, default=0.2, help="fraction of customers held out")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("train", help="train a model and write its directory")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--config", type=Path, help="YAML config (model: / training: sections)")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="ranking metrics of a model and the baselines on a dataset")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--k", type=_positive_int, default=5)
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    p.add_argument("--fairness", action="store_true", help="also metrics and exposure per group of each protected column")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="write the top K products of every customer")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help=".csv or .parquet")
    p.add_argument("--k", type=_positive_int, default=5)
    _filter_arguments(p)
    p.add_argument("--unfiltered", action="store_true",
                   help="exclude held products only, as `evaluate` ranks (to recompute its metrics)")
    p.add_argument("--chunk-rows", type=_positive_int, default=None,
                   help="customers per chunk (bounds memory; default 131,072)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="ray: score on Ray Data (RAY_ADDRESS names a cluster; else a local Ray)")
    p.add_argument("--probabilities", action="store_true",
                   help="add a probability column: the calibrated chance the customer adopts the product")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("recommend", help="the top K eligible products of one customer, with reasons")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--customer-id", required=True)
    p.add_argument("--data", type=Path, help="customer data (default: the model's training data)")
    p.add_argument("-k", "--k", type=_positive_int, default=5)
    _filter_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("calibrate", help="refit a model's probabilities on held-out customers (rewrites the model)")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="held-out customers with their interactions")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("plan", help="a campaign: whom to contact with which product, under capacities")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="dataset directory: the customers to plan for")
    p.add_argument("--out", required=True, type=Path, help="the plan, .csv or .parquet")
    p.add_argument("--capacity", type=Path, help="table product_id, capacity (products not listed: unlimited)")
    p.add_argument("--contacts-per-customer", type=_positive_int, default=1, help="most offers per customer (default 1)")
    p.add_argument("--min-probability", type=_probability_floor, default=0.0,
                   help="never offer below this calibrated adoption probability (default 0)")
    p.add_argument("--solver", choices=["auto", "exact", "dual"], default="auto",
                   help="exact: min-cost flow; dual: prices per capacity, for millions of customers; auto: by size")
    from finrec.recommend.filters import DEFAULT_PRESET, PRESET_HELP, PRESET_NAMES

    # Held products, suitability and the eligibility terms always apply to a campaign: only the
    # tightening filters are offered here.
    p.add_argument("--preset", choices=PRESET_NAMES, default=DEFAULT_PRESET, help=PRESET_HELP)
    p.add_argument("--category", action="append", help="only these product categories (repeatable)")
    p.add_argument("--exclude-category", action="append", help="never these categories (repeatable)")
    p.set_defaults(no_suitability=False, include_held=False)
    p.add_argument("--chunk-rows", type=_positive_int, default=None, help="customers read per chunk")
    p.add_argument("--json", type=Path, help="also write the summary as JSON")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("serve", help="the REST API")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", type=Path, help="customer data (default: the model's training data)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=_positive_int, default=1, help="server processes (each loads the model)")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_backend(args.verbose)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except FinrecError as exc:
        print(f"finrec {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print(f"finrec {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
        if os.environ.get("FINREC_DEBUG"):
            raise
        print(f"finrec {args.command}: internal error: {type(exc).__name__}: {exc} (set FINREC_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
