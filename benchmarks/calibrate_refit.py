"""``finrec calibrate`` on a model that has no adoption model: what the cross-fitted one brings.

A model trained by streaming (or on data where every customer adopted something) has no
adoption model; ``calibrate`` now cross-fits one on the calibration customers themselves
(``finrec.training.train.cross_fitted_adoption``). This measures it on a bank with 12 months of
history, where whether a customer adopts at all falls with the products it holds:

1. generate 60,000 customers (``--months 12``), train the default model on 40% of them;
2. from the other 60%, hold 6,000 customers out for judging and recalibrate on the first N of
   the rest, for each N in ``--sizes``, three ways: the model stripped of its adoption model
   with ``fit_adoption=False`` (the maps on q alone: what ``calibrate`` gave such a model
   before), the same model with the cross-fitted adoption model (today's ``calibrate``), and the
   model as trained, keeping its adoption model (fitted on the training customers) and refitting
   its map;
3. judge each by the mean squared error of its probabilities against the true ones (every
   held-out customer x product not held; ``period_adoption_probabilities``).

    PYTHONPATH=src .venv/bin/python benchmarks/calibrate_refit.py [--seed 0] [--sizes 2000 5000 10000 20000 30000]

Writes benchmarks/results/calibrate_refit[_seedS].json and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from calibration import truth_matrix

from finrec.config import Config
from finrec.data import schema as S
from finrec.data.compliance import without_objections
from finrec.data.io import validate_tables
from finrec.data.split import split_dataset
from finrec.data.synthetic import GeneratorSettings, generate, period_adoption_probabilities
from finrec.training.train import calibrate, fit

RESULTS = Path(__file__).parent / "results" / "calibrate_refit.json"
JUDGED = 6000
WAYS = ("no adoption model", "cross-fitted (calibrate today)", "the model's own, map refitted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--customers", type=int, default=60000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 10000, 20000, 30000])
    parser.add_argument("--draws", type=int, default=2000, help="simulations of the adoption step per customer")
    args = parser.parse_args()

    settings = GeneratorSettings(n_customers=args.customers, seed=args.seed, months=args.months)
    dataset = validate_tables(S.SYNTHETIC.schema(), generate(settings))
    train, rest = split_dataset(dataset, holdout_fraction=0.6, seed=args.seed)
    trained = fit(without_objections(train)[0], Config().with_overrides(seed=args.seed), verbose=0)
    pipeline = trained.pipeline
    order = np.random.default_rng(args.seed).permutation(rest.customers[S.CUSTOMER_ID].to_numpy())
    judged, pool = rest.subset_customers(order[:JUDGED]), order[JUDGED:]
    if max(args.sizes) > len(pool):
        raise SystemExit(f"--sizes: at most {len(pool)} calibration customers on this bank")
    ids = judged.customers[S.CUSTOMER_ID].to_numpy()
    held = pipeline.holdings_matrix(ids, judged.holdings)
    first = truth_matrix(judged, pipeline)
    true = period_adoption_probabilities(first, settings, draws=args.draws, seed=args.seed, n_held=held.sum(axis=1))
    cosine = trained.score(judged.customers, judged.holdings, judged.holdings_history)
    eligible = ~held

    def error(calibration) -> float:
        adoption = calibration.adoption_probability(judged.customers, held, judged.holdings_history)
        p = calibration(cosine, held, adoption)
        return float(np.mean((p[eligible] - true[eligible]) ** 2))

    bare = copy.copy(trained)
    bare.calibration = None  # as a model trained by streaming comes
    rows = {
        "as trained": {"mse_true": error(trained.calibration), "calibration_customers": trained.calibration.customers}
    }
    print(f"{'calibration customers':<24}" + "".join(f"{way:>32}" for way in WAYS) + "   (MSE vs true x 1e6)")
    for n in args.sizes:
        data = rest.subset_customers(pool[:n])
        found = {
            WAYS[0]: calibrate(bare, data, fit_adoption=False),
            WAYS[1]: calibrate(bare, data),
            WAYS[2]: calibrate(trained, data),
        }
        rows[str(n)] = {
            way: {
                "mse_true": error(c),
                "adoption_rounds": c.adoption_model.best_iteration_ if c.needs_adoption else None,
            }
            for way, c in found.items()
        }
        print(f"{n:<24}" + "".join(f"{rows[str(n)][way]['mse_true'] * 1e6:>32.1f}" for way in WAYS), flush=True)
    print(
        f"as trained (calibrated on its {trained.calibration.customers} validation customers): {rows['as trained']['mse_true'] * 1e6:.1f}"
    )
    results = RESULTS.with_name(f"calibrate_refit_seed{args.seed}.json") if args.seed else RESULTS
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(
        json.dumps(
            {
                "machine": platform.machine(),
                "cores": os.cpu_count(),
                "customers": args.customers,
                "months": args.months,
                "seed": args.seed,
                "judged_customers": JUDGED,
                "training_customers": len(train.customers),
                "rows": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
