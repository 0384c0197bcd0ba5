"""The ``finrec`` command line.

    finrec generate  --out DIR [--story NAME] [--customers N] [--products P] [--difficulty hard] [--seed S] [--months N]
    finrec split     --data DIR --out DIR [--by customer] [--holdout 0.2] [--seed S] | --by time --cutoff DATE
    finrec train     --data DIR --out MODEL_DIR [--config FILE] [--epochs N] [--seed S] [--mlflow [URI]]
    finrec tune      --data DIR --out DIR --budget SECONDS [--trials N] [--seed S] [--config FILE]
    finrec evaluate  --model MODEL_DIR --data DIR [--k 5] [--json FILE]
    finrec score     --model MODEL_DIR --data DIR --out FILE [--k K]
    finrec recommend --model MODEL_DIR --customer-id ID [-k 5] [--preset conservative] [--category C] [--json]
    finrec calibrate --model MODEL_DIR --data DIR
    finrec plan      --model MODEL_DIR --data DIR --out plan.csv [--capacity caps.csv] [--contacts-per-customer 1]
                     [--max-exposure-ratio R [--protected COLUMN]]
    finrec serve     --model MODEL_DIR | --root REGISTRY [--host 127.0.0.1] [--port 8000] [--records FILE]
    finrec records verify FILE [--head HASH] [--key-file F]
    finrec monitor   --model MODEL_DIR --data DIR [--json FILE] [--fail-on alert]
    finrec models    list|add|promote|rollback --root REGISTRY ...
    finrec compare   --champion MODEL_DIR | --champion-scores FILE --challenger MODEL_DIR | --challenger-scores FILE
                     --data DIR [--k 5] [--json FILE]
    finrec report    --model MODEL_DIR --data DIR --out report.html|report.md

Errors in the input print one clear line and exit with status 2; nothing is half-written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from finrec.config import MAX_SEED
from finrec.errors import MAX_MESSAGE_CHARS, FinrecError, safe_text

log = logging.getLogger("finrec")

EXIT_INPUT_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_BROKEN_PIPE = 141  # as a shell reports a command killed by SIGPIPE (128 + 13)
# "1": a line on standard error per stage of a long command, "0": none; unset: on a terminal only
# (a pipe or a log file gets finrec's output alone, as before).
ENV_PROGRESS = "FINREC_PROGRESS"
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {MAX_SEED}, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {MAX_SEED}, got {value}")
    return value


def _months(text: str) -> int:
    from finrec.data.history import MAX_MONTHS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of months, got {text!r}") from None
    if not 0 <= value <= MAX_MONTHS:
        raise argparse.ArgumentTypeError(f"expected 0 to {MAX_MONTHS} months, got {value}")
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
    # On CPUs with AVX-512 / AMX, TensorFlow announces its oneDNN kernels through absl before any
    # log level applies; only turning them off (its own advice) keeps the line away. A user's
    # setting is kept, and ``-v`` leaves them on.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
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
    from finrec.atomic import check_writable
    from finrec.data import schema as S
    from finrec.data.io import find_table, write_dataset_blocks
    from finrec.data.synthetic import GeneratorSettings, generate_blocks

    _refuse_governed(args.out, "--out")
    check_writable(args.out, "directory", marker=S.SCHEMA_FILE, what="--out", owned=S.DATASET_FILES)
    out = Path(args.out)
    generated = find_table(out, S.GROUND_TRUTH, required=False) is not None or (out / S.GENERATED_MARK).is_file()
    if (out / S.SCHEMA_FILE).is_file() and not generated:
        # A generated bank has its ground truth (or, with --no-ground-truth, the mark); a dataset
        # with neither is a bank's own data, which a synthetic one must never replace.
        raise FinrecError(
            f"--out {out} holds a dataset without a ground_truth table (not one `finrec generate` wrote: "
            "a bank's own data?); nothing was written, choose another directory"
        )
    if args.story != "default":
        from finrec.data.stories import generate_story
        from finrec.errors import ConfigError

        for flag, value in (
            ("--products", args.products),
            ("--difficulty", args.difficulty),
            ("--months", args.months or None),
        ):
            if value is not None:
                raise ConfigError(
                    f"{flag} applies to the default bank only; --story {args.story} has its own catalogue"
                )
        tables, schema = generate_story(args.story, args.customers, args.seed, ground_truth=not args.no_ground_truth)
        blocks = [tables]
    else:
        settings = GeneratorSettings(
            n_customers=args.customers or GeneratorSettings.n_customers,
            n_products=args.products or GeneratorSettings.n_products,
            seed=args.seed,
            difficulty=args.difficulty or "default",
            ground_truth=not args.no_ground_truth,
            months=args.months,
        )
        # Block by block: a bank of 10M customers with a history never sits in memory whole.
        blocks, schema = generate_blocks(settings), S.SYNTHETIC.schema()
    rows = write_dataset_blocks(blocks, schema, args.out, fmt=args.format)
    if args.no_ground_truth:  # what lets a later `generate` replace it (see above)
        (out / S.GENERATED_MARK).write_text("written by finrec generate --no-ground-truth\n")
    points = rows[S.INTERACTIONS] + rows[S.HOLDINGS]
    past = ""
    if S.HOLDINGS_HISTORY in rows:
        past = f", {rows[S.HOLDINGS_HISTORY]} history rows over {args.months} month-end(s)"
    print(
        f"wrote {args.out}: {rows[S.CUSTOMERS]} customers, {rows[S.PRODUCTS]} products, "
        f"{rows[S.INTERACTIONS]} interactions, {rows[S.HOLDINGS]} holdings ({points} customer-product points)"
        f"{past}"
    )
    return 0


def cmd_split(args) -> int:
    from finrec.atomic import check_writable, refuse_overlap
    from finrec.data import schema as S
    from finrec.data.io import dataset_tables, load_dataset, write_dataset
    from finrec.data.split import split_dataset

    out = Path(args.out)
    if args.by == "time" and args.cutoff is None:
        raise FinrecError("split --by time needs --cutoff DATE (adoptions up to that day train, later ones test)")
    if args.by == "customer" and args.cutoff is not None:
        raise FinrecError("--cutoff goes with --by time; a split by customer has no cutoff")
    if args.by == "time" and args.holdout is not None:
        raise FinrecError(
            "--holdout goes with --by customer; an out-of-time split holds out the adoptions after --cutoff"
        )
    for part in ("train", "test"):
        refuse_overlap(out / part, {"--data": args.data}, what=f"the {part} output")
        _refuse_governed(out / part, f"the {part} output")
        check_writable(out / part, "directory", marker=S.SCHEMA_FILE, what=f"the {part} output", owned=S.DATASET_FILES)
    source = str(Path(args.data).resolve())
    if args.by == "time":
        from finrec.data.split import parse_cutoff, split_by_time

        cutoff = parse_cutoff(args.cutoff)  # before the (long) load: a typo fails at once
        # A log of every month's adoptions overlaps its history: the split cuts both at the cutoff.
        dataset = load_dataset(args.data, history_order=False)
        parts = split_by_time(dataset, cutoff)
        train, test = parts.train, parts.test
        records = {"train": {**parts.train_record, "source": source}, "test": {**parts.test_record, "source": source}}
    else:
        holdout = 0.2 if args.holdout is None else args.holdout
        dataset = load_dataset(args.data)
        train, test = split_dataset(dataset, holdout, args.seed)
        records = {
            part: {"by": "customer", "side": part, "holdout": holdout, "seed": args.seed, "source": source}
            for part in ("train", "test")
        }
    write_dataset(dataset_tables(train), dataset.schema, out / "train", source=args.data, split=records["train"])
    write_dataset(dataset_tables(test), dataset.schema, out / "test", source=args.data, split=records["test"])
    if args.by == "time":
        r, t = records["train"], records["test"]
        print(
            f"wrote {out / 'train'} ({r['adoptions']} adoptions {r['adoptions_from']} to {r['adoptions_to']}, features as of "
            f"{r['features_as_of'] or 'holdings'}) and {out / 'test'} ({t['adoptions']} adoptions after {t['cutoff']}, "
            f"features as of {t['features_as_of']}); {len(train.customers)} customers on both sides"
        )
        if r["adoptions_left_out"]:
            print(
                f"left out {r['adoptions_left_out']} adoption(s) older than the training features ({r['features_as_of']})"
            )
        return 0
    print(
        f"wrote {out / 'train'} ({len(train.customers)} customers) and {out / 'test'} ({len(test.customers)} held-out customers)"
    )
    return 0


def cmd_train(args) -> int:
    from finrec.artifacts import MANIFEST, model_files, save_model_dir
    from finrec.atomic import check_writable, refuse_overlap
    from finrec.config import Config, checked
    from finrec.data.io import fingerprint, load_dataset
    from finrec.governance.registry import refuse_registry_write
    from finrec.training.train import fit

    # Checked before the (long) training as well as by save_model_dir: the atomic swap onto the
    # data directory, or onto a directory holding it, would delete the data.
    refuse_overlap(args.out, {"--data": args.data, "--config": args.config}, what="--out")
    refuse_registry_write(args.out, "--out")
    check_writable(args.out, "directory", marker=MANIFEST, what="--out", owned=model_files)
    if args.mlflow_register and args.mlflow is None:
        raise FinrecError("--mlflow-register needs --mlflow (the run whose model directory it registers)")
    if args.mlflow is not None:  # before the (long) training: MLflow present, the store not inside --out
        from finrec.governance.tracking import check_tracking, local_store

        store = local_store(check_tracking(args.mlflow or None, args.out))
        if store is not None:  # a local store is an output like the model: never in an input
            refuse_overlap(store, {"--data": args.data, "--config": args.config}, what="--mlflow")
    config = Config.from_yaml(args.config) if args.config else Config()
    config = checked(config.with_overrides(epochs=args.epochs, seed=args.seed))  # before the data is read
    dataset = load_dataset(args.data)
    if not args.include_objected:
        from finrec.data.compliance import without_objections

        dataset, left_out = without_objections(dataset)
    k = config.training.eval_k
    if args.verbose:
        trained = fit(dataset, config)
    else:
        trained = fit(dataset, config, verbose=0, callbacks=[_epoch_lines(config.training.epochs, k)])
    history = trained.history
    key = f"val_ndcg@{k}"
    best = max(history.get(key, [float("nan")]))
    from finrec.governance.monitor import reference_for

    save_model_dir(
        trained,
        args.out,
        data_fingerprint=fingerprint(args.data),
        data_path=str(Path(args.data).resolve()),
        monitoring=reference_for(trained, dataset, k=k, seed=config.training.seed),
    )
    epochs = len(history.get("loss", []))
    blend = ""
    if f"blend_val_ndcg@{k}" in history:
        weight = history["tree_blend_weight"][0]
        cold = history.get("tree_blend_cold_weight", [weight])[0]
        weights = f"weight {weight:g}" + (f", {cold:g} for customers who hold nothing" if cold != weight else "")
        blend = (
            f", with the tree blend ({weights}) {history[f'blend_val_ndcg@{k}'][0]:.4f}"
            if weight > 0
            else ", no tree blend chosen"
        )
    print(
        f"trained {epochs} epoch(s) in {history['fit_seconds'][0]:.1f}s; best validation nDCG@{k} {best:.4f}{blend}; "
        f"model written to {args.out}"
    )
    if not args.include_objected and left_out:
        print(
            f"left out {left_out} customer(s) who objected to profiling for marketing (--include-objected keeps them)"
        )
    if args.mlflow is not None:
        from finrec.governance.tracking import log_training_run

        run_id = log_training_run(
            args.mlflow or None,
            args.out,
            config.to_dict(),
            history,
            metrics={f"best_val_ndcg@{k}": best, "epochs": float(epochs)},
            run_name=Path(args.out).name,
            register=args.mlflow_register,
        )
        print(f"logged MLflow run {run_id} (parameters, metrics, the model directory)")
        if args.mlflow_register:
            print(f"registered it as a new version of MLflow model {args.mlflow_register!r}")
    return 0


def cmd_tune(args) -> int:
    import csv

    import yaml

    from finrec.atomic import atomic_directory, check_writable, refuse_overlap
    from finrec.config import Config
    from finrec.data.compliance import without_objections
    from finrec.data.io import load_dataset
    from finrec.training.tune import tune

    refuse_overlap(args.out, {"--data": args.data, "--config": args.config}, what="--out")
    _refuse_governed(args.out, "--out")
    check_writable(
        args.out, "directory", marker="trials.json", what="--out", owned={"config.yaml", "trials.csv", "trials.json"}
    )
    base = Config.from_yaml(args.config) if args.config else Config()
    dataset, _ = without_objections(load_dataset(args.data))  # as finrec train sees it

    def progress(row):
        print(f"trial {row['trial']}: validation nDCG {row['score']:.4f} in {row['seconds']:.1f}s", flush=True)

    result = tune(dataset, base, args.budget, args.trials, args.seed, progress=progress)
    columns = list(result.rows[0])
    with atomic_directory(args.out) as tmp:
        (tmp / "config.yaml").write_text(
            f"# finrec tune: best of {len(result.rows)} trial(s), {result.metric} {result.best_score:.4f}\n"
            + yaml.safe_dump(result.best.to_dict(), sort_keys=False)
        )
        with open(tmp / "trials.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(
                {k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in result.rows
            )
        (tmp / "trials.json").write_text(
            json.dumps({"metric": result.metric, "best_score": result.best_score, "trials": result.rows}, indent=1)
        )
    print(
        f"best {result.metric} {result.best_score:.4f} of {len(result.rows)} trial(s); "
        f"config written to {args.out / 'config.yaml'} (finrec train --config)"
    )
    return 0


def _refuse_governed(path: Path | None, what: str) -> None:
    """No output lands in a model registry (its pointer, a signed-off version's report) or on a
    record log or its head: testers replaced the registry pointer with ``monitor --json`` and a
    registered version's report with ``report --out``."""
    if path is None:
        return
    from finrec.governance.records import refuse_record_log
    from finrec.governance.registry import OUTPUT_HINT, refuse_registry_write

    refuse_registry_write(path, what, hint=OUTPUT_HINT)
    refuse_record_log(path, what)


def _check_json_output(path: Path | None, inputs: dict) -> None:
    """``--json FILE``, checked before any work: neither an input nor inside one (nor another
    output), nor a governance file, and writable. Nothing is written when it fails."""
    if path is None:
        return
    from finrec.atomic import check_writable, refuse_overlap

    refuse_overlap(path, inputs, what="--json")
    _refuse_governed(path, "--json")
    check_writable(path, "file", what="--json")


def cmd_evaluate(args) -> int:
    from finrec.atomic import atomic_file
    from finrec.data.io import load_dataset, read_split
    from finrec.evaluate.report import adoptions_trained_on, evaluate, format_table, unknown_adoptions

    _check_json_output(args.json, {"--data": args.data, "--model": args.model})
    dataset = load_dataset(args.data)
    loaded = _load_model_for(args.model, dataset.schema)
    if args.probabilities and getattr(loaded.trained, "calibration", None) is None:
        from finrec.recommend.recommender import NO_CALIBRATION

        raise FinrecError(f"{args.model}: {NO_CALIBRATION}")
    results = evaluate(loaded.trained, dataset, k=args.k, seed=args.seed)
    _history_note("evaluate", loaded.trained.pipeline, args.data)
    unknown = unknown_adoptions(loaded.trained.pipeline, dataset)
    if unknown:
        named = ", ".join(f"{safe_text(p, 40)} ({n})" for p, n in list(unknown.items())[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        print(
            f"finrec evaluate: note: {sum(unknown.values())} adoption(s) in {safe_text(args.data)} are of "
            f"{len(unknown)} product(s) the model does not know: {named}{more}; they count as misses (the model "
            "cannot rank them): retrain with them to rank them",
            file=sys.stderr,
        )
    trained_on = loaded.manifest.get("data_path")
    learned = adoptions_trained_on(dataset, trained_on, args.data, loaded.manifest.get("data_fingerprint"))
    if learned:
        print(
            f"finrec evaluate: note: {learned} of the {len(dataset.interactions)} adoption(s) in {safe_text(args.data)} "
            f"are in the data the model was trained on ({safe_text(trained_on)}): the metrics are optimistic; "
            "evaluate on held-out customers or a later month (`finrec split`)",
            file=sys.stderr,
        )
    split = read_split(args.data)
    print(_split_line(split))
    print(format_table(results, args.k))
    from finrec.artifacts import model_version

    output = {
        "k": args.k,
        "data": str(args.data),
        "model_version": model_version(loaded.manifest),  # `models add --metrics` checks it is this model's
        "split": split,
        "results": results,
    }
    if args.fairness:
        from finrec.evaluate.fairness import fairness_report, format_fairness

        log.info("fairness: metrics and exposure by protected group")
        output["fairness"] = fairness_report(loaded.trained, dataset, k=args.k)
        print(format_fairness(output["fairness"]))
    if args.probabilities:
        from finrec.evaluate.report import format_probability_check, probability_check

        log.info("probabilities against the adoptions")
        output["probabilities"] = probability_check(loaded.trained, dataset)
        print(format_probability_check(output["probabilities"]))
        from finrec.evaluate.report import calibrated_on

        if calibrated_on(loaded.manifest, args.data):  # the manifest recorded it; nothing read it (a tester)
            print(
                f"finrec evaluate: note: the model's probabilities were calibrated on {safe_text(args.data)} "
                "(`finrec calibrate`): the probability check is optimistic; check them on other customers",
                file=sys.stderr,
            )
    if args.json:
        with atomic_file(args.json) as handle:
            json.dump(output, handle, indent=1)
    return 0


def _split_line(split: dict | None) -> str:
    """Which split the scored data is, in one line (from its ``split.json``)."""
    if not split:
        return "split: not recorded (the data was not made by `finrec split`)"
    side = safe_text(split.get("side", "?"))
    if split.get("by") == "time":
        return (
            f"split: out of time, {side} side, cutoff {safe_text(split.get('cutoff'))} "
            f"(features as of {safe_text(split.get('features_as_of'))}, adoptions {safe_text(split.get('adoptions_from'))} "
            f"to {safe_text(split.get('adoptions_to'))})"
        )
    if split.get("by") == "customer":
        holdout, seed = safe_text(split.get("holdout")), safe_text(split.get("seed"))
        return f"split: random customers, {side} side (holdout {holdout}, seed {seed})"
    return f"split: {safe_text(split.get('by'))} ({side} side)"


def _filters_from(args) -> dict:
    from finrec.recommend.filters import DEFAULT_PRESET

    filters = {
        "preset": args.preset or DEFAULT_PRESET,
        "suitability": not args.no_suitability,
        "exclude_held": not args.include_held,
    }
    if args.category:
        filters["include_categories"] = args.category
    if args.exclude_category:
        filters["exclude_categories"] = args.exclude_category
    if args.max_debt_service_ratio is not None:
        filters["max_debt_service_ratio"] = args.max_debt_service_ratio
    if args.credit_score_cutoff is not None:
        filters["credit_score_cutoff"] = args.credit_score_cutoff
    return filters


def _refuse_filters_with_unfiltered(args) -> None:
    """--unfiltered is evaluate's ranking: a filter flag beside it was silently dropped (``--unfiltered
    --category pension`` wrote every category)."""
    flags = [flag for flag, dest in args.filter_flags if getattr(args, dest) not in (None, False)]
    if flags:
        raise FinrecError(
            f"--unfiltered ranks as `finrec evaluate` does (held products out, no other rule) and takes no filter; "
            f"drop --unfiltered or {', '.join(flags)}"
        )


def _history_note(command: str, pipeline, data_dir) -> None:
    """A model that reads a holdings_history, given data without one, scores every customer as
    one with no past (a new customer): its ranking moved for about a third of a bank's top 5,
    without a word when the table was left behind (a tester). Said once on stderr."""
    from finrec.data import schema as S
    from finrec.data.io import find_table

    if getattr(pipeline, "history_", None) is None or data_dir is None:
        return
    if find_table(Path(data_dir), S.HOLDINGS_HISTORY, required=False) is None:
        print(
            f"finrec {command}: note: the model reads a {S.HOLDINGS_HISTORY} table and {safe_text(data_dir)} has "
            "none: every customer is scored as one without a past, as a new customer is",
            file=sys.stderr,
        )


def _catalogue_notes(command: str, changes) -> None:
    """Where the data's products table and the model's catalogue differ (``CatalogueChanges``),
    said once on stderr: the output alone would not show what was left out."""
    for note in changes.notes() if changes is not None else ():
        print(f"finrec {command}: note: {safe_text(note, MAX_MESSAGE_CHARS)}", file=sys.stderr)


def cmd_score(args) -> int:
    from finrec.data.io import read_schema
    from finrec.recommend.batch import DEFAULT_CHUNK_ROWS, check_scores_output, score_dataset
    from finrec.recommend.recommender import Recommender

    inputs = {"--data": args.data, "--model": args.model}
    _refuse_governed(args.out, "--out")
    if args.engine == "ray":
        from finrec.recommend.ray_engine import check_ray_output

        check_ray_output(args.out, inputs, what="--out")
    else:
        check_scores_output(args.out, inputs, what="--out")
    loaded = _load_model_for(args.model, read_schema(args.data), keras_model=False)  # scores through the numpy tower
    from finrec.recommend.filters import UNFILTERED

    if args.unfiltered:
        _refuse_filters_with_unfiltered(args)
    filters = UNFILTERED if args.unfiltered else _filters_from(args)
    chunk_rows = args.chunk_rows  # None: the scorer's default (smaller for a model with history)
    stats: dict = {}
    if args.engine == "ray":
        from finrec.recommend.ray_engine import score_dataset_ray

        customers, rows = score_dataset_ray(
            args.model,
            args.data,
            args.out,
            k=args.k,
            filters=filters,
            batch_rows=min(chunk_rows or DEFAULT_CHUNK_ROWS, 65_536),
            probabilities=args.probabilities,
            stats=stats,
        )
    else:
        customers, rows = score_dataset(
            Recommender(loaded.trained),
            args.data,
            args.out,
            k=args.k,
            filters=filters,
            chunk_rows=chunk_rows,
            probabilities=args.probabilities,
            stats=stats,
        )
    _catalogue_notes("score", stats.get("catalogue"))
    _history_note("score", loaded.trained.pipeline, args.data)
    empty = stats.get("no_eligible", 0)
    print(f"wrote {rows} recommendations for {customers - stats['objected'] - empty} customers to {args.out}")
    if empty:  # they were counted among the customers written for, with no row in the file
        print(f"{empty} customer(s) have no eligible product under these filters: absent from the output")
    if stats["objected"]:
        print(
            f"{stats['objected']} customer(s) objected to profiling for marketing: not scored, absent from the output"
        )
    return 0


def cmd_recommend(args) -> int:
    from finrec.recommend.filters import Filters
    from finrec.recommend.recommender import Recommender

    filters = Filters.build(_filters_from(args))  # a bad flag is refused before the data is read
    # That customer alone is prepared: all of them cost a 2M-customer bank 4.6 GB and minutes.
    recommender = Recommender.load(args.model, args.data, customers=[args.customer_id], keras_model=False)
    result = recommender.recommend(args.customer_id, k=args.k, filters=filters)
    _history_note("recommend", recommender.pipeline, args.data)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1, default=str))
        return 0
    # The id as the data holds it (stripped), and never an escape sequence from the command line.
    print(f"Top {args.k} for customer {safe_text(result.customer_id)} ({result.eligible} eligible products)")
    category, risk = recommender.schema.products.category, recommender.schema.products.risk
    for item in result.items:
        product = item.product
        # Only what this catalogue has: no "risk ?" for a bank without risk levels.
        about = [
            str(product[category]) if category and product.get(category) is not None else "",
            f"risk {product[risk]}" if risk and product.get(risk) is not None else "",
        ]
        about = ", ".join(a for a in about if a)
        chance = "" if item.probability is None else f"  P(adopt) {item.probability:.1%}"
        print(f"{item.rank:>2}. {item.product_id:<20} score {item.score:+.3f}{chance}  {about}  [{item.reason}]")
    if result.message:
        print(f"note: {result.message}")
    return 0


def _load_model_for(model_dir: Path, schema, keras_model: bool = True):
    """The model directory, checked against the data's schema. The products' value column is
    campaign data, not a model input: a model trained before it was named still matches.
    ``keras_model=False``: the numpy tower is all the caller needs (``load_model_dir``)."""
    from finrec.artifacts import expected_schema, load_model_dir

    return load_model_dir(model_dir, expect_schema=expected_schema(model_dir, schema), keras_model=keras_model)


def _adoptions_after(trained_on: Path, data) -> tuple | None:
    """(the training data's last adoption, the first and last of ``data``'s) when every adoption
    of ``data`` is dated after every one the model was trained on; None otherwise, or where a
    table has no dates."""
    from finrec.data import schema as S
    from finrec.data.io import find_table
    from finrec.data.links import adoption_dates

    trained = adoption_dates(find_table(trained_on, S.INTERACTIONS))
    given = adoption_dates(find_table(Path(data), S.INTERACTIONS))
    if trained is None or given is None or not given[0] > trained[1]:
        return None
    return trained[1], given[0], given[1]


def cmd_calibrate(args) -> int:
    from finrec.artifacts import read_monitoring, save_model_dir
    from finrec.data import schema as S
    from finrec.data.io import find_table, fingerprint, load_dataset, read_id_column
    from finrec.errors import safe_text
    from finrec.governance.registry import refuse_registry_write
    from finrec.training.calibration import MIN_POSITIVES
    from finrec.training.train import calibrate

    refuse_registry_write(args.model, "--model")  # calibrate rewrites the model directory
    dataset = load_dataset(args.data, ground_truth=False)
    loaded = _load_model_for(args.model, dataset.schema)
    manifest = loaded.manifest
    trained_on = manifest.get("data_path")
    # Calibrating on customers the model learned from would make it look surer than it is.
    if trained_on and Path(trained_on).is_dir():
        seen = set(read_id_column(find_table(Path(trained_on), S.CUSTOMERS), dataset.schema.customers.id).to_pylist())
        overlap = [c for c in dataset.customers[dataset.schema.customers.id].astype(str) if c in seen]
        later = _adoptions_after(Path(trained_on), args.data) if overlap else None
        if overlap and later is None:
            raise FinrecError(
                f"{args.data}: {len(overlap)} customer(s) (e.g. {safe_text(overlap[0], quote=True)}) are in the data the model "
                f"was trained on ({trained_on}); calibrate on held-out customers, or on adoptions of a later period "
                "(every interactions timestamp after the training data's last)"
            )
        if later is not None:
            # Out of time: the same customers' adoptions of a later month are outcomes the model
            # never saw, the recalibration a bank runs each month (a tester's monthly cycle: it
            # was refused because the customers were the same).
            print(
                f"finrec calibrate: note: {len(overlap)} of these customers are ones the model was trained on; their "
                f"adoptions here ({later[1]:%Y-%m-%d} to {later[2]:%Y-%m-%d}) all come after the training data's last "
                f"({later[0]:%Y-%m-%d}), so they are calibrated on out of time",
                file=sys.stderr,
            )
    else:
        # The training directory moved or was deleted (last month's split): a copy of it was
        # calibrated on without a word, every customer one the model learned from (a tester).
        recorded = manifest.get("data_fingerprint")
        if recorded and fingerprint(args.data) == recorded:
            raise FinrecError(
                f"{args.data}: this is the data the model was trained on (the same files as the manifest's "
                f"fingerprint; {safe_text(trained_on or 'its training directory')} is gone); calibrate on held-out customers"
            )
        where = (
            f"the data the model was trained on ({safe_text(trained_on)}) is gone"
            if trained_on
            else "the model does not record the data it was trained on"
        )
        print(
            f"finrec calibrate: note: {where}, so whether these customers are held out cannot be checked; "
            "calibrate on customers the model never saw",
            file=sys.stderr,
        )
    trained = loaded.trained
    calibration = calibrate(trained, dataset)
    # The model directory is rewritten in place: a handful of adoptions would replace the
    # calibration it has with noise (10 customers moved products' probabilities 2-10x).
    adoptions = sum(calibration.positives)
    if adoptions < MIN_POSITIVES:
        raise FinrecError(
            f"{args.data}: {adoptions} adoption(s) of {calibration.customers} customer(s) to calibrate on; at least "
            f"{MIN_POSITIVES} are needed (a product needs as many for a map of its own); the model is unchanged"
        )
    trained.calibration = calibration
    # Rewritten whole (atomically), so the monitoring reference recorded at training is carried over.
    save_model_dir(
        trained,
        args.model,
        data_fingerprint=manifest.get("data_fingerprint", ""),
        data_path=trained_on,
        monitoring=read_monitoring(args.model),
        extra={"calibration_data": str(Path(args.data).resolve()), "calibration_fingerprint": fingerprint(args.data)},
    )
    calibration = trained.calibration
    left_out = len(dataset.customers) - calibration.customers
    if calibration.needs_adoption and not calibration.adoption_cross_fitted:
        adoption = "; P(adopts anything): the model's adoption model, its map refitted"
    elif calibration.needs_adoption:
        adoption = (
            f"; P(adopts anything): an adoption model fitted on these customers "
            f"({calibration.adoption_model.best_iteration_} rounds), its map on predictions of the half that did not fit it"
        )
    else:
        adoption = ""
    print(
        f"calibrated {args.model} on {calibration.customers} customers of {args.data}"
        + (f" ({left_out} who objected to profiling for marketing left out)" if left_out else "")
        + adoption
    )
    if calibration.adoption_note:
        print(f"note: {calibration.adoption_note}")
    return 0


def _exposure_column(args, schema) -> str | None:
    """The protected column an exposure limit compares groups of (--protected, else the first)."""
    if args.max_exposure_ratio is None:
        if args.protected:
            raise FinrecError("--protected names the groups of --max-exposure-ratio; give that too")
        return None
    if args.protected:
        return args.protected
    if not schema.customers.protected:
        raise FinrecError("--max-exposure-ratio: the schema lists no protected customer column (customers.protected)")
    return schema.customers.protected[0]


def _exposure_ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}") from None
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 1, got {text}")
    return value


def cmd_plan(args) -> int:
    from finrec.atomic import check_writable, refuse_overlap
    from finrec.data.io import read_schema
    from finrec.plan import campaign
    from finrec.recommend.recommender import Recommender

    inputs = {"--data": args.data, "--model": args.model, "--capacity": args.capacity}
    _check_json_output(args.json, {**inputs, "--out": args.out})
    # Before the work, as score's --out is: a plan inside the model directory made the next
    # calibrate refuse that directory (a tester).
    refuse_overlap(args.out, inputs, what="--out")
    _refuse_governed(args.out, "--out")
    check_writable(args.out, "file", what="--out")
    # The plan scores through the numpy tower only: no Keras import when the tower allows (~10 s).
    loaded = _load_model_for(args.model, read_schema(args.data), keras_model=False)
    recommender = Recommender(loaded.trained)
    problem = campaign.build_problem(
        recommender,
        args.data,
        _filters_from(args),
        args.min_probability,
        **({"chunk_rows": args.chunk_rows} if args.chunk_rows else {}),
        group_column=_exposure_column(args, recommender.schema),
    )
    capacity = campaign.read_capacities(args.capacity, problem.product_ids) if args.capacity else None
    result = campaign.plan_campaign(
        problem, capacity, args.contacts_per_customer, solver=args.solver, max_exposure_ratio=args.max_exposure_ratio
    )
    info = campaign.summary(result)
    campaign.write_plan(
        campaign.plan_arrow(problem, result.plan),
        args.out,
        inputs=tuple(p for p in (args.data, args.model, args.capacity) if p),
    )
    _catalogue_notes("plan", problem.catalogue_changes)
    _history_note("plan", loaded.trained.pipeline, args.data)
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
    from finrec.atomic import refuse_overlap
    from finrec.serve import run

    if args.records:  # the log is an output: never a file of the model, the registry or the data
        from finrec.governance.registry import OUTPUT_HINT, refuse_registry_write

        refuse_registry_write(args.records, "--records", hint=OUTPUT_HINT)
        refuse_overlap(
            args.records, {"--model": args.model, "--root": args.root, "--data": args.data}, what="--records"
        )
    run(
        args.model,
        data_dir=args.data,
        host=args.host,
        port=args.port,
        workers=args.workers,
        body_timeout=args.body_timeout,
        max_requests=args.max_requests,
        registry_root=args.root,
        records=args.records,
        enforce_rules=args.enforce_rules,
    )
    return 0


def cmd_records_verify(args) -> int:
    from finrec.governance.records import KEY_FROM_ENV, read_key_file, verify

    key = read_key_file(args.key_file, "--key-file") if args.key_file else KEY_FROM_ENV
    result = verify(args.file, head=args.head, key=key)
    if not result.ok:
        where = f"line {result.bad_line}" if result.bad_line else "the end"
        print(
            f"finrec records verify: {args.file}: {where}: {result.problem} "
            f"({result.lines} line(s) before it are intact)",
            file=sys.stderr,
        )
        return EXIT_INPUT_ERROR
    if not result.anchored:  # a new log, or one wiped together with its head file: nothing tells them apart
        print(
            f"{args.file}: {result.lines} record(s) and no head of a record in its head file: nothing anchors this "
            "log (a log wiped, or cut to nothing, with its head file looks the same); check it against a head kept "
            "elsewhere with --head H"
        )
        return 0
    keyed = " (keyed: every line's seal, the HMAC chain and the head checked)" if result.keyed else ""
    what = "chain intact" if result.lines else "empty"
    anchor = "the head given (no head file)" if result.stored_head is None else "its head file"
    named = f"; log {result.log_id}" if result.log_id else ""
    # The head and the log's id are what to keep elsewhere: together they name this log at this point.
    print(f"{args.file}: {result.lines} record(s), {what}, as {anchor} records{keyed}; head {result.head}{named}")
    if result.after_head:
        print(
            f"note: {result.after_head} line(s) after the head file's head (a writer stopped between line and "
            "head)" + ("; each carries its own seal" if result.keyed else "")
        )
    if result.unsealed_head:
        print(
            "note: the log and its head were written before finrec sealed them: lines past this head could not be "
            "told from lines appended without the key; the next record appended with the key seals it"
        )
    return 0


# ------------------------------------------------------------------------------------ governance

EXIT_DRIFT = 3


def cmd_monitor(args) -> int:
    from finrec.atomic import atomic_file
    from finrec.governance.monitor import STATUSES, format_report, monitor_model

    _check_json_output(args.json, {"--data": args.data, "--model": args.model})
    report = monitor_model(args.model, args.data, seed=args.seed)
    print(format_report(report))
    for note in report.get("notes", ()):
        print(f"finrec monitor: note: {safe_text(note, MAX_MESSAGE_CHARS)}", file=sys.stderr)
    if args.json:
        with atomic_file(args.json) as handle:
            json.dump(report, handle, indent=1)
    if args.fail_on and STATUSES.index(report["summary"]["status"]) >= STATUSES.index(args.fail_on):
        print(f"finrec monitor: drift at or above {args.fail_on!r} (exit {EXIT_DRIFT})", file=sys.stderr)
        return EXIT_DRIFT
    return 0


def cmd_models(args) -> int:
    from finrec.governance.registry import Registry, RegistryError, metrics_from_file, stray_files

    registry = Registry(args.root)
    if args.action == "add":
        from finrec.artifacts import read_manifest

        metrics, notes = None, []
        if args.metrics:
            # the recorded checksums suffice to name the model; `add` verifies the files once
            metrics, notes = metrics_from_file(args.metrics, read_manifest(args.model, verify=False))
        same = registry.same_model(args.model)
        left_out = stray_files(args.model)
        version = registry.add(args.model, metrics=metrics, report=args.report, note=args.note)
        print(f"registered {args.model} as {version} in {args.root}")
        if left_out:
            shown = ", ".join(safe_text(name, 60) for name in left_out[:5]) + (" ..." if len(left_out) > 5 else "")
            notes.append(f"{len(left_out)} file(s) the manifest does not list were left out: {shown}")
        for note in notes:
            print(f"finrec models: note: {safe_text(note, MAX_MESSAGE_CHARS)}", file=sys.stderr)
        if same:
            print(
                f"finrec models: note: {version} is the same model as {', '.join(same)} (the same files); "
                "both ids now name it",
                file=sys.stderr,
            )
        if args.promote:
            registry.promote(version)
            print(f"promoted {version}")
        return 0
    if args.action == "promote":
        state = registry.promote(args.version)
        print(f"promoted {state['promoted']}")
        return 0
    if args.action == "rollback":
        state = registry.rollback()
        print(f"rolled back to {state['promoted']} (from {state['events'][-1]['previous']})")
        return 0
    versions = registry.versions()
    if args.json:
        print(json.dumps({"promoted": registry.promoted, "versions": versions}, indent=1))
        return 0
    promoted = registry.promoted
    lost = promoted is not None and not any(info["promoted"] for info in versions)
    if not versions and not lost:
        print(f"{args.root}: no versions yet (`finrec models add --root {args.root} --model DIR`)")
        return 0
    print(f"  {'version':<9}{'registered':<27}{'nDCG':>8} {'measured on':<12}{'data':<18}source")
    for info in versions:
        ndcg, measured = _registry_ndcg(info.get("metrics"))
        # version.json unreadable (deleted or damaged by hand): said, not printed as "None"
        registered = info.get("registered") or "? (no version.json)"
        print(
            f"{'*' if info['promoted'] else ' '} {info['version']:<9}{str(registered):<27}"
            f"{(f'{ndcg:.4f}' if isinstance(ndcg, (int, float)) else '-'):>8} {measured:<12}"
            f"{str(info.get('data_fingerprint') or '-')[:16]:<18}{info.get('source', '')}"
        )
    if lost:  # printed as nothing marked promoted, exit 0
        raise RegistryError(
            f"{args.root}: the promoted version {promoted} has no directory (deleted?); "
            "`finrec models promote VERSION` or `finrec models rollback` serves another"
        )
    return 0


def _registry_ndcg(metrics) -> tuple[float | None, str]:
    """(nDCG, what it was measured on) for ``models list``: the tree blend's validation nDCG where
    the model ships a blend (the towers' own figure understates it), else the validation nDCG,
    else the nDCG of the metrics given to ``models add --metrics`` (``finrec evaluate --json``:
    customers of the data evaluated). The column was "val nDCG" for all three, and read the
    towers' figure first: a held-out nDCG beside a validation one, as if comparable."""
    metrics = metrics if isinstance(metrics, dict) else {}

    def first(prefix: str):
        return next((v for k, v in metrics.items() if str(k).startswith(prefix) and isinstance(v, (int, float))), None)

    for prefix, measured in (("blend_val_ndcg@", "validation"), ("val_ndcg@", "validation"), ("ndcg@", "--metrics")):
        value = first(prefix)
        if value is not None:
            return value, measured
    return None, "-"


def _registry_model(name: Path | None, root: Path | None, role: str) -> Path:
    """A model directory, or with ``--root`` a version id of that registry (the champion defaults
    to the promoted version)."""
    from finrec.governance.registry import Registry, promoted_model

    if root is None:
        if name is None:
            raise FinrecError(
                f"--{role} or --{role}-scores is required (a model directory, a version id with --root, "
                "or another model's scores file)"
            )
        return name
    if name is None:
        if role != "champion":
            raise FinrecError(f"--{role} or --{role}-scores is required")
        return promoted_model(root)[1]
    return name if name.is_dir() else Registry(root).model_path(str(name))


def cmd_compare(args) -> int:
    from finrec.atomic import atomic_file
    from finrec.data.io import load_dataset
    from finrec.data.scores import check_scores_for, read_scores
    from finrec.governance.compare import compare_models, format_comparison

    given = {}  # role -> ("model", path) or ("scores", path)
    for role in ("champion", "challenger"):
        model, scores = getattr(args, role), getattr(args, f"{role}_scores")
        if model is not None and scores is not None:
            raise FinrecError(f"--{role} and --{role}-scores both given; the {role}'s seat takes one")
        if scores is not None:
            given[role] = ("scores", scores)
        else:
            given[role] = ("model", _registry_model(model, args.root, role))
    flags = {f"--{role}{'-scores' if kind == 'scores' else ''}": path for role, (kind, path) in given.items()}
    _check_json_output(args.json, {"--data": args.data, **flags})
    dataset = load_dataset(args.data, ground_truth=False)  # compare grades the adoptions, no oracle
    seats = {}
    for role, (kind, path) in given.items():  # the files first: a bad one is refused before a model loads
        if kind == "scores":
            seats[role] = read_scores(path)
            check_scores_for(seats[role], dataset)
    versions = {}
    for role, (kind, path) in given.items():
        if kind == "model":
            # as evaluate loads it: a products value column named after training is no model input
            loaded = _load_model_for(path, dataset.schema)
            seats[role], versions[role] = loaded.trained, loaded.manifest
            _history_note(f"compare ({role})", seats[role].pipeline, args.data)
    _compare_notes(given, versions, args.k, len(dataset.products))
    result = compare_models(
        seats["champion"],
        seats["challenger"],
        dataset,
        k=args.k,
        resamples=args.resamples,
        confidence=args.confidence,
        seed=args.seed,
    )
    paths = {role: str(path) for role, (_, path) in given.items()}
    result = {**paths, "data": str(args.data), **result}
    for role, (kind, path) in given.items():
        print(f"{role} {'scores ' if kind == 'scores' else ''}{path}")
    print(format_comparison(result))
    if args.json:
        with atomic_file(args.json) as handle:
            json.dump(result, handle, indent=1)
    return 0


def _compare_notes(given: dict, manifests: dict, k: int, products: int) -> None:
    """What makes a comparison say nothing, said before it is printed (a tester compared a model
    with itself, and at a k past the catalogue, and read the zeros as findings)."""
    from finrec.artifacts import model_version

    notes = []
    (kind_a, path_a), (kind_b, path_b) = given["champion"], given["challenger"]
    if kind_a == kind_b == "model" and model_version(manifests["champion"]) == model_version(manifests["challenger"]):
        notes.append("the champion and the challenger are the same model (the same files): every difference is 0")
    elif kind_a == kind_b == "scores" and Path(path_a).resolve() == Path(path_b).resolve():
        notes.append("the champion and the challenger are the same scores file: every difference is 0")
    if k >= products:
        notes.append(
            f"--k {k} is at least the {products} products of the catalogue: each ranker ranks all of them, so "
            "recall@k is 1 for both and only the order within the whole list is compared"
        )
    for note in notes:
        print(f"finrec compare: note: {note}", file=sys.stderr)


def cmd_report(args) -> int:
    from finrec.atomic import atomic_file
    from finrec.governance.report import build_report, render_html, render_markdown

    out = Path(args.out)
    if out.suffix.lower() not in (".html", ".htm", ".md"):
        raise FinrecError(f"--out {out}: the name must end in .html or .md")
    if args.train_data and not args.seeds:  # it was read by nothing, silently (a tester)
        raise FinrecError("--train-data goes with --seeds N: it is the data the other seeds are retrained on")
    for given in (args.model, args.data, *args.seed_models, *([args.train_data] if args.train_data else [])):
        if out.resolve().is_relative_to(Path(given).resolve()):
            raise FinrecError(f"--out {out}: inside the input {given}; write the report elsewhere")
    _refuse_governed(out, "--out")
    report = build_report(
        args.model,
        args.data,
        k=args.k,
        seed=args.seed,
        seed_models=args.seed_models,
        shap_customers=args.shap_customers,
        lightgbm=not args.no_lightgbm,
        seeds=args.seeds,
        train_data=args.train_data,
    )
    text = render_markdown(report) if out.suffix.lower() == ".md" else render_html(report)
    with atomic_file(out) as handle:
        handle.write(text)
    print(f"wrote {out} ({len(report['sections'])} sections)")
    return 0


def _governance_parsers(sub) -> None:
    p = sub.add_parser("monitor", help="population stability (PSI) of a scoring population against the training one")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="the scoring population (a dataset directory)")
    p.add_argument("--json", type=Path, help="also write the report as JSON")
    p.add_argument("--fail-on", choices=["warn", "alert"], help=f"exit {EXIT_DRIFT} when any entry reaches this status")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the sample scored when the data is large")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("models", help="the model registry: list, add, promote, rollback")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("list", help="every version; * marks the promoted one")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("add", help="copy a trained model directory in as a new version")
    a.add_argument("--model", required=True, type=Path)
    a.add_argument(
        "--metrics",
        type=Path,
        help="metrics JSON (e.g. from `finrec evaluate --json`); default: the best epoch's validation metrics",
    )
    a.add_argument("--report", type=Path, help="its validation report (from `finrec report`), kept beside it")
    a.add_argument("--note", help="a free-text note kept with the version")
    a.add_argument("--promote", action="store_true", help="also promote it")
    a = actions.add_parser("promote", help="serve this version from now on")
    a.add_argument("version", help="a version id such as v0002")
    actions.add_parser("rollback", help="back to the version promoted before the current one")
    for a in actions.choices.values():
        a.add_argument("--root", required=True, type=Path, help="the registry directory")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "compare",
        help="champion vs challenger: metric differences with paired bootstrap intervals",
        description="Champion vs challenger on the same held-out customers: per metric, both means and the "
        "challenger's difference with a paired bootstrap interval. A seat holds a finrec model directory or "
        "another model's scores file (--champion-scores / --challenger-scores): CSV or Parquet with the columns "
        "customer_id, product_id and either score (higher is better) or rank (lower is better, a top-K list). "
        "A pair the file lacks is never a hit; the output counts them (a top-K file is graded fairly on @K "
        "metrics with K up to its length only).",
    )
    p.add_argument("--champion", type=Path, help="model directory (or, with --root, a version id; default: promoted)")
    p.add_argument(
        "--champion-scores",
        type=Path,
        metavar="FILE",
        help="the champion as a scores file (customer_id, product_id, score|rank; .csv or .parquet)",
    )
    p.add_argument("--challenger", type=Path, help="model directory (or, with --root, a version id)")
    p.add_argument(
        "--challenger-scores",
        type=Path,
        metavar="FILE",
        help="the challenger as a scores file (customer_id, product_id, score|rank; .csv or .parquet)",
    )
    p.add_argument("--data", required=True, type=Path, help="held-out customers with interactions")
    p.add_argument("--root", type=Path, help="a model registry whose version ids --champion/--challenger may name")
    p.add_argument("--k", type=_positive_int, default=5)
    p.add_argument("--resamples", type=_positive_int, default=2000, help="bootstrap resamples")
    p.add_argument("--confidence", type=_fraction, default=0.95)
    p.add_argument("--seed", type=_seed, default=0, help="seed of the bootstrap")
    p.add_argument("--json", type=Path, help="also write the comparison as JSON")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="the validation report of a model on a dataset (HTML or Markdown)")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="held-out customers (with or without interactions)")
    p.add_argument("--out", required=True, type=Path, help="report.html or report.md")
    p.add_argument("--k", type=_positive_int, default=5)
    p.add_argument("--seed", type=_seed, default=0, help="seed of the samples, the bootstrap and the random baseline")
    p.add_argument(
        "--seed-models",
        type=Path,
        nargs="*",
        default=[],
        help="the same configuration trained with other seeds, for the stability section",
    )
    p.add_argument(
        "--seeds",
        type=_positive_int,
        default=0,
        help="retrain the model's configuration with N other seeds on its training data (stability section)",
    )
    p.add_argument("--train-data", type=Path, help="the training data for --seeds (default: the manifest's)")
    p.add_argument("--shap-customers", type=_positive_int, default=20, help="customers explained for mean |SHAP|")
    p.add_argument(
        "--no-lightgbm",
        action="store_true",
        help="skip the LightGBM baseline (it is trained on the "
        "model's training data, which takes a while on a large bank)",
    )
    p.set_defaults(func=cmd_report)


# ------------------------------------------------------------------------------------ parser


def _filter_arguments(p: argparse.ArgumentParser, relaxable: bool = True) -> None:
    """The filter flags, defined once; ``relaxable=False`` leaves out the two that turn a rule off
    (a campaign plan never relaxes them)."""
    from finrec.recommend.filters import PRESET_HELP, PRESET_NAMES

    # None, not the default preset, so that `score --unfiltered` can tell a --preset given from none.
    added = [
        p.add_argument("--preset", choices=PRESET_NAMES, default=None, help=PRESET_HELP),
        p.add_argument("--category", action="append", help="only these product categories (repeatable)"),
        p.add_argument("--exclude-category", action="append", help="never these categories (repeatable)"),
    ]
    if relaxable:
        added += [
            p.add_argument(
                "--no-suitability", action="store_true", help="turn the risk-tolerance rule off (explicitly)"
            ),
            p.add_argument("--include-held", action="store_true", help="allow products the customer already holds"),
        ]
    else:
        p.set_defaults(no_suitability=False, include_held=False)
    added += [
        p.add_argument(
            "--max-debt-service-ratio",
            type=float,
            default=None,
            help="credit affordability: debt service after the new credit, as a share of income (default 0.40)",
        ),
        p.add_argument(
            "--credit-score-cutoff", type=float, default=None, help="credit products need at least this credit score"
        ),
    ]
    # Each flag and where it lands, for `score --unfiltered`, which takes none of them.
    p.set_defaults(filter_flags=[(action.option_strings[0], action.dest) for action in added])


def build_parser() -> argparse.ArgumentParser:
    from finrec.data.synthetic import GeneratorSettings

    parser = _Parser(prog="finrec", description="Bank product recommendations with a Two-Tower model.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from finrec.data.stories import DEFAULT_CUSTOMERS, STORY_TEXT

    p = sub.add_parser("generate", help="build the synthetic bank dataset")
    p.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    p.add_argument(
        "--story",
        choices=["default", *STORY_TEXT],
        default="default",
        help="which bank: default (the synthetic bank), or a development story: "
        + "; ".join(f"{name}: {text}" for name, text in STORY_TEXT.items()).replace("%", "%%"),
    )
    p.add_argument(
        "--customers",
        type=_positive_int,
        default=None,
        help=f"default {GeneratorSettings.n_customers} (stories: "
        + ", ".join(f"{name} {n}" for name, n in DEFAULT_CUSTOMERS.items())
        + ")",
    )
    p.add_argument(
        "--products",
        type=_positive_int,
        default=None,
        help=f"default bank only: the base catalogue has {GeneratorSettings.n_products}; more builds variants",
    )
    p.add_argument("--difficulty", choices=["default", "hard"], default=None, help="default bank only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    p.add_argument("--no-ground-truth", action="store_true", help="skip the true probabilities (smaller output)")
    p.add_argument(
        "--months",
        type=_months,
        default=0,
        help="month-end holdings history before the target month (0: none); interactions are the target month's",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("split", help="split a dataset into train/ and test/: by customer, or out of time")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--by", choices=["customer", "time"], default="customer", help="customer: random customers held out (default)"
    )
    p.add_argument("--cutoff", help="with --by time: adoptions up to this day (YYYY-MM-DD) train, later ones test")
    p.add_argument("--holdout", type=_fraction, default=None, help="fraction of customers held out (default 0.2)")
    p.add_argument("--seed", type=_seed, default=0)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("train", help="train a model and write its directory")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--config", type=Path, help="YAML config (model: / training: sections)")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--seed", type=_seed)
    p.add_argument(
        "--include-objected",
        action="store_true",
        help="also train on customers who objected to profiling for marketing (left out by default)",
    )
    p.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        default=None,
        metavar="URI",
        help="log the run to MLflow (pip install 'finrec[mlflow]'): parameters, metrics, the model directory; "
        "URI default ./mlruns (a local file store)",
    )
    p.add_argument(
        "--mlflow-register",
        metavar="NAME",
        default=None,
        help="with --mlflow: also register the logged model directory as a new version of MLflow model NAME",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="search the model and training settings on your data within a time budget")
    p.add_argument("--data", required=True, type=Path, help="training data (its validation split judges)")
    p.add_argument("--out", required=True, type=Path, help="directory for config.yaml, trials.csv, trials.json")
    p.add_argument("--budget", required=True, type=_positive_float, help="seconds for the whole search")
    p.add_argument("--trials", type=_positive_int, help="at most this many trials (the first is the base config)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the search")
    p.add_argument("--config", type=Path, help="base YAML config (default: the built-in defaults)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("evaluate", help="ranking metrics of a model and the baselines on a dataset")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--k", type=_positive_int, default=5)
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the random baseline")
    p.add_argument(
        "--fairness", action="store_true", help="also metrics and exposure per group of each protected column"
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="also the calibrated probabilities against the adoptions observed (Brier, ECE, per product)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="write the top K products of every customer")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help=".csv or .parquet")
    p.add_argument("--k", type=_positive_int, default=5)
    _filter_arguments(p)
    p.add_argument(
        "--unfiltered",
        action="store_true",
        help="exclude held products only, as `evaluate` ranks (to recompute its metrics)",
    )
    p.add_argument(
        "--chunk-rows",
        type=_positive_int,
        default=None,
        help="customers per chunk (bounds memory; default 131,072, 32,768 for a model with history)",
    )
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="ray: score on Ray Data (RAY_ADDRESS names a cluster; else a local Ray)",
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="add a probability column: the calibrated chance the customer adopts the product",
    )
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
    p.add_argument(
        "--contacts-per-customer", type=_positive_int, default=1, help="most offers per customer (default 1)"
    )
    p.add_argument(
        "--min-probability",
        type=_probability_floor,
        default=0.0,
        help="never offer below this calibrated adoption probability (default 0)",
    )
    p.add_argument(
        "--solver",
        choices=["auto", "exact", "dual"],
        default="auto",
        help="exact: min-cost flow; dual: prices per capacity, for millions of customers; auto: by size",
    )
    p.add_argument(
        "--max-exposure-ratio",
        type=_exposure_ratio,
        default=None,
        help="no protected group gets a product category at more than R times another group's rate per customer",
    )
    p.add_argument("--protected", help="the protected customer column of --max-exposure-ratio (default: the first)")
    # Held products, suitability and the eligibility terms always apply to a campaign.
    _filter_arguments(p, relaxable=False)
    p.add_argument("--chunk-rows", type=_positive_int, default=None, help="customers read per chunk")
    p.add_argument("--json", type=Path, help="also write the summary as JSON")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("serve", help="the REST API")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path)
    source.add_argument("--root", type=Path, help="a model registry: serve its promoted version, follow promotions")
    p.add_argument("--data", type=Path, help="customer data (default: the model's training data)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=_positive_int, default=1, help="server processes (each loads the model)")
    p.add_argument(
        "--body-timeout",
        type=_positive_float,
        default=None,
        help="seconds from a request's start by which its whole body must arrive, else 408 (default 10)",
    )
    p.add_argument(
        "--max-requests",
        type=_positive_int,
        default=None,
        help="requests in progress per process, /health and /ready aside, else 503 (default 512)",
    )
    p.add_argument("--records", type=Path, help="append every recommendation served to this hash-chained record log")
    p.add_argument(
        "--enforce-rules",
        action="store_true",
        help="refuse (403) a request whose filters turn a rule off or loosen a limit; tightening stays "
        "allowed (also FINREC_SERVE_ENFORCE_RULES=1)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("records", help="the record log of recommendations served")
    records = p.add_subparsers(dest="records_command", required=True, metavar="ACTION")
    q = records.add_parser("verify", help="check a record log's hash chain; exit 2 naming the first bad line")
    q.add_argument("file", type=Path)
    q.add_argument("--head", help="a head hash kept elsewhere: the log must still contain that line")
    q.add_argument(
        "--key-file", type=Path, help="the log's secret key (default: FINREC_RECORDS_KEY or FINREC_RECORDS_KEY_FILE)"
    )
    q.set_defaults(func=cmd_records_verify)
    _governance_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_backend(args.verbose)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format=LOG_FORMAT)
    try:
        with _progress_lines(args):
            return args.func(args)
    except FinrecError as exc:
        # The last guard before the terminal: bounded, and no escape sequence from the input gets through.
        print(f"finrec {args.command}: error: {safe_text(str(exc), MAX_MESSAGE_CHARS)}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print(f"finrec {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError as exc:
        if not _stdout_closed():
            return _internal_error(args, exc)  # another pipe (a service, a FIFO --out): a failure
        # The reader stopped reading (`finrec evaluate | head`): its choice, not an internal
        # error. Python's advice: point stdout at devnull so the exit's flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
        if os.environ.get("FINREC_DEBUG"):
            raise
        return _internal_error(args, exc)


class _ProgressFormatter(logging.Formatter):
    """``finrec compare [6 s]: paired bootstrap ...``: the command, the seconds since it began.
    A warning or an error keeps the usual form, its traceback included (``serve``'s unhandled
    request errors), as without progress lines."""

    def __init__(self, command: str):
        super().__init__()
        self.command, self.start = command, time.monotonic()
        self.usual = logging.Formatter(LOG_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            return self.usual.format(record)
        message = safe_text(record.getMessage(), MAX_MESSAGE_CHARS)
        return f"finrec {self.command} [{time.monotonic() - self.start:.0f} s]: {message}"


@contextmanager
def _progress_lines(args):
    """finrec's own log lines (each stage of a long command: ``compare`` ran 6 minutes on 2M
    customers without a word) on standard error, on a terminal or with ``FINREC_PROGRESS=1``;
    ``-v`` shows them already, with every library's."""
    from finrec.config import env_switch

    wanted = env_switch(ENV_PROGRESS)
    if args.verbose or not (sys.stderr.isatty() if wanted is None else wanted):
        yield
        return
    logger = logging.getLogger("finrec")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ProgressFormatter(args.command))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # each line once: not again through the root's handler
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class _Parser(argparse.ArgumentParser):
    """argparse's parser with its errors in one line, exit 2, as every other bad input's: it
    printed the whole usage first (13 lines for ``plan --contacts-per-customer 0``, a tester).
    The subcommands' parsers are of this class too (``add_subparsers`` makes them so)."""

    def error(self, message: str):
        self.exit(
            EXIT_INPUT_ERROR, f"{self.prog}: error: {safe_text(message, MAX_MESSAGE_CHARS)} (see {self.prog} -h)\n"
        )


def _internal_error(args, exc: BaseException) -> int:
    print(
        f"finrec {args.command}: internal error: {type(exc).__name__}: {safe_text(str(exc), MAX_MESSAGE_CHARS)} "
        "(set FINREC_DEBUG=1 for a traceback)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL_ERROR


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone: the kernel flags its write end
    with POLLERR (Linux and macOS)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no real stdout
        return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
