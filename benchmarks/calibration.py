"""Calibrated adoption probabilities against the synthetic bank's true ones.

The default bank (30,000 customers) is split by customer 80/20; the default model is trained on
the 80% (its calibration fitted on its own validation customers, as ``finrec train`` does) and
judged on the 20% it never saw. The truth is P(customer adopts the product in the period),
simulated from the generator's first-choice probabilities (``ground_truth``) and its adoption
counts (``period_adoption_probabilities``). Pairs: every held-out customer x product not held.

    PYTHONPATH=src .venv/bin/python benchmarks/calibration.py [--customers 30000] [--seed 0] [--draws 2000]
    PYTHONPATH=src .venv/bin/python benchmarks/calibration.py --months 12   # a bank with a past

Rows: the raw cosine clipped to [0, 1]; the model's own softmax over the catalogue (cosine /
temperature) times the share of customers who adopt anything (a fair "uncalibrated" guess);
the centred isotonic map per product on that softmax, refitted on the model's calibration customers;
the same maps on q alone with no adoption model (where the model has one: P(adopts anything) is
then left to the maps); the maps with an adoption model cross-fitted on the same calibration
customers (what ``finrec calibrate`` gives a model without one, trained by streaming, say); the
calibration stored with the model. With ``--months`` the bank has a
past, and adopting anything at all falls with the products held (``finrec.data.history``).
Columns: ECE against the true probabilities (20 equal-mass bins),
the mean squared error against them, and the Brier score against the held-out adoptions.
Prints a reliability table and writes benchmarks/results/calibration.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import pandas as pd

from finrec.config import Config
from finrec.data import schema as S
from finrec.data.io import validate_tables
from finrec.data.split import split_dataset
from finrec.data.synthetic import GeneratorSettings, generate, period_adoption_probabilities
from finrec.training.calibration import brier_score, expected_calibration_error, fit_calibration, reliability_table
from finrec.training.train import calibrate, fit

RESULTS = Path(__file__).parent / "results" / "calibration.json"


def truth_matrix(test, pipeline) -> np.ndarray:
    """First-choice probabilities [n, P] of the test customers from ``ground_truth`` (0 where held)."""
    ids = test.customers[S.CUSTOMER_ID].astype(str)
    gt = test.ground_truth
    rows = pd.Index(ids).get_indexer(gt[S.CUSTOMER_ID].astype(str))
    cols = pipeline.product_positions(gt[S.PRODUCT_ID].to_numpy())
    out = np.zeros((len(ids), pipeline.n_products))
    out[rows, cols] = gt[S.PROBABILITY].to_numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=GeneratorSettings.n_customers)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=2000, help="simulations of the adoption step per customer")
    parser.add_argument("--months", type=int, default=0, help="months of history of the bank (default 0: none)")
    parser.add_argument("--results", type=Path, help="where the JSON goes (default calibration[_monthsN].json)")
    args = parser.parse_args()

    settings = GeneratorSettings(n_customers=args.customers, seed=args.seed, months=args.months)
    dataset = validate_tables(S.SYNTHETIC.schema(), generate(settings))
    train, test = split_dataset(dataset, holdout_fraction=0.2, seed=args.seed)
    start = time.perf_counter()
    trained = fit(train, Config().with_overrides(seed=args.seed), verbose=0)
    fit_seconds = time.perf_counter() - start
    pipeline = trained.pipeline

    ids = test.customers[S.CUSTOMER_ID].to_numpy()
    held = pipeline.holdings_matrix(ids, test.holdings)
    adopted = pipeline.holdings_matrix(ids, test.interactions)
    first = truth_matrix(test, pipeline)
    true = period_adoption_probabilities(first, settings, draws=args.draws, seed=args.seed, n_held=held.sum(axis=1))
    cosine = trained.score(test.customers, test.holdings, test.holdings_history)
    adoption = trained.calibration.adoption_probability(test.customers, held, test.holdings_history)
    eligible = ~held

    logits = np.where(held, -np.inf, cosine / trained.config.training.temperature)
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    # The share of training customers who adopted anything: what a softmax over the catalogue lacks.
    any_rate = train.interactions[S.CUSTOMER_ID].nunique() / len(train.customers)
    # The previous default, the centred isotonic map, refitted on the same calibration customers.
    from plan_value_study import calibration_ids

    from finrec.data.compliance import without_objections

    # As ``calibrate`` does: customers who objected to profiling are no calibration data.
    cal_data = without_objections(train.subset_customers(calibration_ids(train, trained.config)))[0]
    cal_ids = cal_data.customers[S.CUSTOMER_ID].to_numpy()
    cal_fit = (
        trained.score(cal_data.customers, cal_data.holdings, cal_data.holdings_history),
        pipeline.holdings_matrix(cal_ids, cal_data.interactions),
        pipeline.holdings_matrix(cal_ids, cal_data.holdings),
        list(pipeline.product_ids_),
        trained.config.training.temperature,
    )
    isotonic = fit_calibration(*cal_fit, method="isotonic")
    candidates = {
        "cosine, clipped to [0, 1]": np.clip(cosine, 0, 1),
        "softmax(cos/T) x P(any adoption)": softmax * any_rate,
        "centred isotonic per product": isotonic(cosine, held),
    }
    if trained.calibration.needs_adoption:
        plain = fit_calibration(*cal_fit, method=trained.calibration.method)
        candidates[f"{trained.calibration.method} on q alone (no adoption model)"] = plain(cosine, held)
        # What `finrec calibrate` gives a model that has no adoption model (trained by streaming):
        # one cross-fitted on the same calibration customers.
        bare = copy.copy(trained)
        bare.calibration = None
        crossed = calibrate(bare, cal_data)
        crossed_adoption = crossed.adoption_probability(test.customers, held, test.holdings_history)
        candidates["adoption model cross-fitted on them"] = crossed(cosine, held, crossed_adoption)
    candidates[f"calibrated (this model: {trained.calibration.method})"] = trained.calibration(cosine, held, adoption)
    rows = {}
    for name, predicted in candidates.items():
        p, t, y = predicted[eligible], true[eligible], adopted[eligible]
        rows[name] = {
            "ece": expected_calibration_error(p, t),
            "mse_true": float(np.mean((p - t) ** 2)),
            "brier": brier_score(p, y),
            "mean_predicted": float(p.mean()),
        }
    calibrated = candidates[f"calibrated (this model: {trained.calibration.method})"][eligible]
    reliability = reliability_table(calibrated, true[eligible], bins=10)

    print(
        f"Calibration on {len(ids)} held-out customers x {pipeline.n_products} products "
        f"({int(eligible.sum())} pairs not held; mean true probability {true[eligible].mean():.4f}; "
        f"Brier of the true probabilities {brier_score(true[eligible], adopted[eligible]):.4f})"
    )
    print(f"{'probabilities':<44}{'ECE':>9}{'MSE vs true':>13}{'Brier':>9}{'mean':>9}")
    for name, r in rows.items():
        print(f"{name:<44}{r['ece']:>9.4f}{r['mse_true']:>13.5f}{r['brier']:>9.4f}{r['mean_predicted']:>9.4f}")
    print("reliability of the calibrated probabilities (10 equal-mass bins):")
    print(f"{'pairs':>8}{'predicted':>11}{'true':>9}")
    for r in reliability:
        print(f"{r['pairs']:>8}{r['predicted']:>11.4f}{r['true']:>9.4f}")
    cal = trained.calibration
    print(
        f"calibrated on {cal.customers} validation customers; {sum(cal.pooled)} of {len(cal.pooled)} products "
        f"with too few adoptions use the pooled map; adoption model: "
        f"{f'{cal.adoption_model.best_iteration_} rounds' if cal.needs_adoption else 'none'}; "
        f"fit {fit_seconds:.1f}s on {os.cpu_count()} cores"
    )
    results = args.results or RESULTS.with_name(
        f"calibration_months{args.months}.json" if args.months else RESULTS.name
    )
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(
        json.dumps(
            {
                "machine": platform.machine(),
                "cores": os.cpu_count(),
                "customers": args.customers,
                "seed": args.seed,
                "months": args.months,
                "draws": args.draws,
                "held_out_customers": len(ids),
                "rows": rows,
                "reliability": reliability,
                "calibration_customers": cal.customers,
                "pooled_products": int(sum(cal.pooled)),
                "method": cal.method,
                "adoption_model_rounds": cal.adoption_model.best_iteration_ if cal.needs_adoption else None,
                "fit_seconds": fit_seconds,
            },
            indent=1,
        )
    )
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
