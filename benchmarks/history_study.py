"""History encoders and cold-start dropout on the synthetic bank with a past (issue 13).

One bank (``GeneratorSettings(months=M)``), a random 20% of the customers held out; every variant
trains on the rest with its config and is scored on the held-out customers: nDCG@5 with their
holdings and history (``all``), with both withheld (``withheld``: as new customers), and on the
held-out customers who hold nothing (``cold``). LightGBM with and without the Santander lag set.

    PYTHONPATH=src python benchmarks/history_study.py --customers 8000 --months 24 \
        --variants none events flat gru lgbm lgbm_lags --out benchmarks/results/history_study.json

``--split time`` validates out of time instead (``finrec split --by time`` at the history's last
month-end: train on that month's adoptions, test on the target month of every customer); its
runs are keyed with a ``/time`` suffix. A variant ``<encoder>+drop<rate>`` trains with that
holdings dropout (``events+drop0.1`` is today's default config). ``lgbm_lags_tuned`` is the
quality table's tuned LightGBM (6 trials) given the lag set; ``lgbm_lags_tuned+months`` also trains
it on ``--history-months`` earlier months. ``--history-months N`` sets ``training.history_months``
for the finrec variants (runs keyed ``/hmN``). ``--tree-blend`` sets
``model.tree_blend`` for the finrec variants (default ``auto``, which tries a blend on this bank
where the encoder reads the history); runs that tried one are keyed with a ``/blend`` suffix, the
runs made before the blend existed have none.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from finrec.config import Config, ModelConfig, TrainConfig
from finrec.data import schema as S
from finrec.data.io import validate_tables
from finrec.data.split import split_by_time, split_customer_ids
from finrec.data.synthetic import GeneratorSettings, generate
from finrec.evaluate import baselines
from finrec.evaluate.metrics import summarize
from finrec.evaluate.report import ranking_task
from finrec.features import FeaturePipeline

K = 5


def bank(customers: int, months: int, seed: int, split: str = "customers"):
    """(train, test): 20% of the customers held out (``customers``), or out of time (``time``,
    ``finrec split --by time`` at the last month-end of the history: train on the adoptions of
    that month that the history shows, with the features of the month before; test on the
    target month's adoptions of every customer, with the latest features)."""
    dataset = validate_tables(
        S.SYNTHETIC.schema(), generate(GeneratorSettings(n_customers=customers, months=months, seed=seed))
    )
    if split == "time":
        if not months:
            raise SystemExit("--split time needs a history (--months > 0)")
        parts = split_by_time(dataset, dataset.holdings_history[S.AS_OF].max())
        return parts.train, parts.test
    ids = np.sort(dataset.customers[S.CUSTOMER_ID].astype(str).to_numpy())
    train_ids, test_ids = split_customer_ids(ids, 0.2, np.random.default_rng(seed))
    return dataset.subset_customers(train_ids), dataset.subset_customers(test_ids)


def metrics(score, test, pipeline) -> dict:
    ids, relevant, excluded = ranking_task(pipeline, test)
    customers = test.customers.set_index(S.CUSTOMER_ID, drop=False).loc[ids].reset_index(drop=True)
    held = pipeline.holdings_matrix(ids, test.holdings)
    cold = ~held.any(axis=1)
    full = score(customers, test.holdings, test.holdings_history)
    hidden = score(customers, None, None)
    out = {
        "all": summarize(full, relevant, excluded, k=K)[f"ndcg@{K}"],
        "withheld": summarize(hidden, relevant, excluded, k=K)[f"ndcg@{K}"],
        "cold": summarize(full[cold], relevant[cold], excluded[cold], k=K)[f"ndcg@{K}"] if cold.any() else None,
        "cold_customers": int(cold.sum()),
        "customers": len(ids),
    }
    out["withheld_drop"] = out["all"] - out["withheld"]
    return out


def run(
    variant: str, train, test, seed: int, epochs: int, tree_blend: str = "auto", history_months: int | None = None
) -> dict:
    """One variant's figures; ``history_months`` None: ``TrainConfig``'s default."""
    history_months = TrainConfig().history_months if history_months is None else history_months
    start = time.perf_counter()
    if variant.startswith("lgbm_lags_tuned"):
        # The quality table's tuned baseline (stories.py's budget: 6 trials), given the lags; with
        # ``+months`` also the earlier months (``--history-months``), as the towers get them.
        months = history_months if variant.endswith("+months") else 0
        model = baselines.TunedLightGBM(max_trials=6, num_threads=2, history_lags=6, history_months=months)
        model.fit(train, seed=seed)
        result = metrics(model.score, test, model.pipeline_)
        result["best_params"] = model.best_params_
    elif variant.startswith("lgbm"):
        model = baselines.LightGBMBaseline(num_threads=2, history_lags=6 if variant == "lgbm_lags" else 0)
        model.fit(train, seed=seed)
        result = metrics(model.score, test, model.pipeline_)
    else:
        from finrec.training.train import fit

        encoder, _, dropout = variant.partition("+drop")
        config = Config(
            model=ModelConfig(history_encoder=encoder, tree_blend=tree_blend),
            training=TrainConfig(
                epochs=epochs, seed=seed, holdings_dropout=float(dropout or 0), history_months=history_months
            ),
        ).validate()
        trained = fit(train, config, verbose=0)
        result = metrics(trained.score, test, trained.pipeline)
        result["epochs"] = len(trained.history["loss"])
        result["train_examples"] = trained.history["train_examples"][0]
        if "tree_blend_weight" in trained.history:  # a blend was tried (0: the validation chose none)
            result["tree_blend_weight"] = trained.history["tree_blend_weight"][0]
            if "tree_blend_cold_weight" in trained.history:  # the weight of customers who hold nothing
                result["tree_blend_cold_weight"] = trained.history["tree_blend_cold_weight"][0]
    if test.ground_truth is not None:
        pipeline = FeaturePipeline(train.schema).fit(train)
        ids, relevant, excluded = ranking_task(pipeline, test)
        oracle = baselines.oracle_scores(ids, pipeline.product_ids_, test.ground_truth)
        result["oracle"] = summarize(oracle, relevant, excluded, k=K)[f"ndcg@{K}"]
    result["seconds"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=8000)
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--variants", nargs="+", default=["none", "events", "flat", "gru", "lgbm", "lgbm_lags"])
    parser.add_argument("--split", choices=("customers", "time"), default="customers")
    parser.add_argument("--tree-blend", choices=("auto", "always", "never"), default="auto")
    parser.add_argument(
        "--history-months",
        type=int,
        default=None,
        help="training.history_months (default: the config's; runs keyed /hmN)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/history_study.json"))
    args = parser.parse_args()
    train, test = bank(args.customers, args.months, args.seed, args.split)
    if args.months == 0:
        train, test = (dataclasses.replace(d, holdings_history=None) for d in (train, test))
    store = json.loads(args.out.read_text()) if args.out.exists() else {}
    for variant in args.variants:
        result = run(variant, train, test, args.seed, args.epochs, args.tree_blend, args.history_months)
        key = f"{args.customers}c/{args.months}m/seed{args.seed}/{variant}" + ("/time" if args.split == "time" else "")
        if args.history_months is not None and (not variant.startswith("lgbm") or variant.endswith("+months")):
            key += f"/hm{args.history_months}"
        if "tree_blend_weight" in result:
            key += "/blend"
        store[key] = result
        print(key, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}), flush=True)
        args.out.write_text(json.dumps(store, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
