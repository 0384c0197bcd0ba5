"""A tuned LightGBM's scores of held-out customers, written as a bank's own model's scores file.

What a bank's analysts do before `finrec compare --champion-scores`: export their model's score
of every (customer, product not held) pair. Here the bank's model is finrec's `TunedLightGBM`
(the tuned tree of docs/benchmarks.md), fitted on the training side without the customers who
objected to profiling, as `finrec train` fits:

    .venv/bin/python benchmarks/export_lightgbm_scores.py --train D/train --test D/test --out lgb.csv
    .venv/bin/finrec compare --champion-scores lgb.csv --challenger MODEL --data D/test
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from finrec.atomic import atomic_file
from finrec.data.compliance import without_objections
from finrec.data.io import load_dataset
from finrec.evaluate.baselines import TunedLightGBM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, type=Path, help="the training data directory")
    parser.add_argument("--test", required=True, type=Path, help="the held-out customers to score")
    parser.add_argument("--out", required=True, type=Path, help="scores file to write (.csv)")
    parser.add_argument("--trials", type=int, default=6, help="tuning trials (docs/benchmarks.md: 6)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train, _ = without_objections(load_dataset(args.train))
    test = load_dataset(args.test, ground_truth=False)
    model = TunedLightGBM(max_trials=args.trials, num_threads=args.threads).fit(train, seed=args.seed)
    scores = model.score(test.customers, test.holdings, test.holdings_history)  # [n, P]
    ids = test.customers[test.schema.customers.id].astype(str).to_numpy()
    products = np.asarray([str(p) for p in model.pipeline_.product_ids_])
    held = model.pipeline_.holdings_matrix(test.customers[test.schema.customers.id].to_numpy(), test.holdings)
    rows, cols = np.nonzero(~held)
    frame = pd.DataFrame({"customer_id": ids[rows], "product_id": products[cols], "score": scores[rows, cols]})
    with atomic_file(args.out) as handle:
        frame.to_csv(handle, index=False)
    print(f"wrote {len(frame):,} scores of {len(ids):,} customers to {args.out}")
    print(f"tuned LightGBM: {model.best_params_}; {model.budget_['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
