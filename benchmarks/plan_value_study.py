"""Where a campaign plan's value goes, and which lever brings it back (issue 14: >= 0.95 of the ceiling).

Stage ``fit`` (one model per call, cached): generate a bank (the default bank or a story of
``finrec.data.stories``), split it 80/20 by customer as benchmarks/plan.py does, fit a variant on
the 80% and keep, as arrays, what every lever needs: the model's cosine scores of the held-out
customers and of the calibration customers (the validation customers ``fit`` holds out, adopters
of nothing included), the calibration customers' adoptions and holdings, and, per bank, the
held-out customers' TRUE period adoption probabilities, the filters' allowed mask, the margins
and the capacities (as benchmarks/plan.py: margins per product type, capacities that bind).

Stage ``report``: every lever applied to the cached arrays (calibration method, shrinkage,
averaging variants), each plan solved exactly and judged by its true expected value over the
ceiling (the best plan from the true probabilities).

    PYTHONPATH=src .venv/bin/python benchmarks/plan_value_study.py fit --bank default --seed 0 --variant base
    PYTHONPATH=src .venv/bin/python benchmarks/plan_value_study.py report

Variants: ``base`` (the default config), ``seedN`` (model seed N, same data), ``ens4`` (model
ensemble_size 4), ``cfg-NAME`` (benchmarks/configs/NAME.yaml), ``monitorloss`` (early stopping on the validation loss), ``patienceN``, ``lgbm`` (TunedLightGBM, its multiclass probabilities as scores, log-scores
through the same calibration with temperature 1). Timings: a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import pandas as pd

CACHE = Path(os.environ.get("PLAN_STUDY_CACHE", "/tmp/plan_value_study"))
RESULTS = Path(__file__).parent / "results" / "plan_value_study.json"
MARGIN_BY_TYPE = {  # benchmarks/plan.py's margins, and the stories' type names mapped onto them
    "current_account": 50, "current": 50, "everyday": 50,
    "savings_account": 80, "savings": 80,
    "term_deposit": 120, "deposit": 120,
    "credit_card": 150, "card": 150, "cards": 150,
    "personal_loan": 400, "loan": 400, "lending": 400,
    "mortgage": 2500,
    "investment_fund": 300, "investment": 300, "wealth": 300,
    "pension": 600,
    "insurance": 200, "protection": 200,
}  # fmt: skip
CAPACITY_BY_TYPE = {
    "mortgage": 0.004, "personal_loan": 0.01, "loan": 0.01, "lending": 0.01,
    "investment_fund": 0.01, "investment": 0.01, "wealth": 0.01,
    "pension": 0.01, "credit_card": 0.02, "card": 0.02, "cards": 0.02,
}  # fmt: skip


def label(bank: str, customers: int | None) -> str:
    """The cache name of a bank: its name, and its size when not the default."""
    return bank if customers is None else f"{bank}{customers // 1000}k"


def load_bank(bank: str, seed: int, customers: int | None):
    """(dataset, period-count mean) of the default bank or a story."""
    from finrec.data.io import validate_tables
    from finrec.data.synthetic import GeneratorSettings, generate

    if bank == "default":
        settings = GeneratorSettings(seed=seed, **({"n_customers": customers} if customers else {}))
        from finrec.data import schema as S

        return validate_tables(S.SYNTHETIC.schema(), generate(settings)), settings
    from finrec.data.stories import build, generate_story

    tables, schema = generate_story(bank, n_customers=customers, seed=seed)
    mean = build(bank, n_customers=100, seed=seed).mean_adoptions
    return validate_tables(schema, tables), GeneratorSettings(adoptions_per_customer=mean)


def calibration_ids(dataset, config) -> np.ndarray:
    """The customers ``training.train.fit`` holds out for validation and calibration (the same draws)."""
    from finrec.data import schema as S
    from finrec.data.split import split_customer_ids

    training = config.training
    rng = np.random.default_rng(training.seed)
    with_positives = dataset.interactions[S.CUSTOMER_ID].unique()
    _, val_ids = split_customer_ids(np.sort(with_positives.astype(str)), training.validation_fraction, rng)
    cid = dataset.schema.customers.id
    quiet = np.sort(dataset.customers[cid][~dataset.customers[cid].isin(with_positives)].to_numpy(dtype=str))
    if int(round(len(quiet) * training.validation_fraction)) in (0, len(quiet)):
        return val_ids
    _, quiet_val = split_customer_ids(quiet, training.validation_fraction, np.random.default_rng([training.seed, 1]))
    return np.concatenate([val_ids, quiet_val])


def bank_arrays(bank: str, seed: int, customers, trained, dataset, settings, test, draws: int = 8000) -> Path:
    """Cache the held-out truth of one bank: true period probabilities, allowed mask, values,
    capacity (``trained``: a finrec model of the bank, for its product order and filters)."""
    path = CACHE / f"{label(bank, customers)}_{seed}_truth.npz"
    if path.exists():
        return path
    from finrec.data import schema as S
    from finrec.data.synthetic import period_adoption_probabilities
    from finrec.recommend import filters as F
    from finrec.recommend.recommender import Recommender

    recommender = Recommender(trained)
    pids = [str(p) for p in trained.pipeline.product_ids_]
    ids = test.customers[S.CUSTOMER_ID].astype(str).to_numpy()
    gt = test.ground_truth
    first = np.zeros((len(ids), len(pids)))
    first[
        pd.Index(ids).get_indexer(gt[S.CUSTOMER_ID].astype(str)), trained.pipeline.product_positions(gt[S.PRODUCT_ID])
    ] = gt[S.PROBABILITY]
    true = period_adoption_probabilities(first, settings, draws=draws, seed=seed)
    context = recommender.context(test.customers, test.holdings)
    allowed = ~F.combine(recommender.masks(context, F.Filters.build("balanced")), context.held.shape)
    types = dataset.products.set_index(S.PRODUCT_ID).loc[pids, "product_type"].astype(str)
    values = types.map(MARGIN_BY_TYPE).fillna(100.0).to_numpy(dtype="float64")
    share = types.map(CAPACITY_BY_TYPE)
    capacity = np.where(share.notna(), np.round(share.fillna(0).to_numpy() * len(ids)), np.inf)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, true=true, first=first, mean=settings.adoptions_per_customer, allowed=allowed, held=context.held, values=values, capacity=capacity,
        pids=np.array(pids),
    )  # fmt: skip
    return path


def fit_variant(bank: str, seed: int, variant: str, customers: int | None) -> Path:
    path = CACHE / f"{label(bank, customers)}_{seed}_{variant}.npz"
    if path.exists():
        return path
    from finrec.config import Config
    from finrec.data import schema as S
    from finrec.data.compliance import without_objections
    from finrec.data.split import split_dataset
    from finrec.training.train import fit

    dataset, settings = load_bank(bank, seed, customers)
    train, test = split_dataset(dataset, holdout_fraction=0.2, seed=seed)
    train, _ = without_objections(train)  # as `finrec train` does
    config = Config().with_overrides(seed=seed)
    if variant.startswith("seed"):
        config = config.with_overrides(seed=int(variant[4:]))
    elif variant.startswith("ens"):
        import dataclasses

        config = dataclasses.replace(config, model=dataclasses.replace(config.model, ensemble_size=int(variant[3:])))
        config = config.validate()
    elif variant.startswith("epochs"):
        config = config.with_overrides(epochs=int(variant[6:]))
    elif variant.startswith("cfg-"):  # a candidate config of benchmarks/configs (issue 12's study)
        import dataclasses

        config = Config.from_yaml(Path(__file__).parent / "configs" / f"{variant[4:]}.yaml")
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, seed=seed)).validate()
    elif variant == "monitorloss":  # early stopping on the validation log loss instead of nDCG@5
        config = config.with_overrides(monitor="loss")
    elif variant.startswith("patience"):
        config = config.with_overrides(patience=int(variant[8:]))
    cal_ids = calibration_ids(train, config)
    cal = train.subset_customers(cal_ids)
    start = time.perf_counter()
    if variant == "lgbm":
        from finrec.evaluate.baselines import TunedLightGBM

        rest = train.subset_customers(np.setdiff1d(train.customers[S.CUSTOMER_ID].astype(str), cal_ids))
        model = TunedLightGBM(max_trials=6, num_threads=1).fit(rest, seed=seed)
        score = lambda d: np.log(np.clip(model.score(d.customers, d.holdings), 1e-9, None))  # noqa: E731
        pipeline, temperature = model.pipeline_, 1.0
    else:
        trained = fit(train, config, verbose=0)
        bank_arrays(bank, seed, customers, trained, dataset, settings, test)
        score = lambda d: trained.score(d.customers, d.holdings, d.holdings_history)  # noqa: E731
        pipeline, temperature = trained.pipeline, trained.config.training.temperature
    seconds = time.perf_counter() - start
    cal_customer_ids = cal.customers[S.CUSTOMER_ID].to_numpy()
    np.savez_compressed(
        path,
        test_scores=score(test),
        cal_scores=score(cal),
        cal_adopted=pipeline.holdings_matrix(cal_customer_ids, cal.interactions),
        cal_held=pipeline.holdings_matrix(cal_customer_ids, cal.holdings),
        temperature=temperature,
        seconds=seconds,
        pids=np.array([str(p) for p in pipeline.product_ids_]),
    )
    print(f"{bank} seed {seed} {variant}: fitted in {seconds:.0f}s -> {path}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--bank", default="default")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--variant", default="base")
    f.add_argument("--customers", type=int, default=None)
    r = sub.add_parser("report")
    r.add_argument("--banks", nargs="*", default=None)
    args = parser.parse_args()
    if args.stage == "fit":
        fit_variant(args.bank, args.seed, args.variant, args.customers)
    else:
        from plan_value_levers import report

        report(CACHE, RESULTS, args.banks)


if __name__ == "__main__":
    main()
