"""New products: leave one product out, train without it, and see whether its adopters find it.

For each product in a seeded sample (or all): its adoptions and holdings are removed from the
training customers (a launch: nobody has it yet), finrec trains, and the held-out customers who
really adopted it rank the catalogue; we report where the product lands among their non-held
products (hit rate @5, mean rank, 1 = top) beside the category heuristic: every product scored by
the mean training adoptions of the products of its category (the product table's
``--category`` column), the left-out product by its category's mean. A multiclass tree cannot
rank a product it never saw at all. finrec reaches an unseen product only through its
attributes: ``model.product_id_dropout`` > 0 zeroes the id embedding of products without
training adoptions (and, in training, of a random share), so the id cannot dominate.

    PYTHONPATH=src python benchmarks/cold_products.py --customers 6000 --sample 6 \
        --out benchmarks/results/cold_products.json
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
from finrec.data.split import split_customer_ids
from finrec.data.synthetic import GeneratorSettings, generate

K = 5


def rank_of(scores: np.ndarray, held: np.ndarray, product: int) -> np.ndarray:
    """1-based rank of ``product`` per row among the products not held (ties: the worse rank)."""
    masked = np.where(held, -np.inf, scores)
    return (masked >= masked[:, [product]]).sum(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", type=int, default=0, help="products to leave out (0: all)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--id-dropout", type=float, nargs="+", default=[0.2])
    parser.add_argument("--category", default="product_type")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cold_products.json"))
    args = parser.parse_args()

    from finrec.training.train import fit

    data = validate_tables(
        S.SYNTHETIC.schema(), generate(GeneratorSettings(n_customers=args.customers, seed=args.seed))
    )
    ids = np.sort(data.customers[S.CUSTOMER_ID].astype(str).to_numpy())
    train_ids, test_ids = split_customer_ids(ids, 0.2, np.random.default_rng(args.seed))
    train, test = data.subset_customers(train_ids), data.subset_customers(test_ids)
    products = data.products[S.PRODUCT_ID].astype(str).tolist()
    counts = train.interactions[S.PRODUCT_ID].astype(str).value_counts()
    rng = np.random.default_rng(args.seed)
    chosen = sorted(rng.choice(len(products), args.sample, replace=False)) if args.sample else range(len(products))
    store = json.loads(args.out.read_text()) if args.out.exists() else {}
    for j in chosen:
        pid = products[j]
        adopters = test.interactions[S.CUSTOMER_ID][test.interactions[S.PRODUCT_ID].astype(str) == pid].unique()
        if len(adopters) == 0:
            continue
        launch = dataclasses.replace(
            train,
            interactions=train.interactions[train.interactions[S.PRODUCT_ID].astype(str) != pid],
            holdings=train.holdings[train.holdings[S.PRODUCT_ID].astype(str) != pid],
        )
        who = test.subset_customers(adopters)
        category = data.products.set_index(data.products[S.PRODUCT_ID].astype(str))[args.category]
        launch_counts = counts.drop(pid, errors="ignore").reindex(products, fill_value=0).astype(float)
        launch_counts[pid] = np.nan
        by_category = launch_counts.groupby(category.reindex(products).to_numpy()).mean()
        heuristic = np.array([by_category.get(category[p], 0.0) for p in products])
        heuristic = np.nan_to_num(heuristic)[None, :].repeat(len(who.customers), axis=0)
        entry = {"product": pid, "category": str(category[pid]), "adopters": int(len(adopters))}
        for rate in args.id_dropout:
            start = time.perf_counter()
            config = Config(
                model=ModelConfig(product_id_dropout=rate),
                training=TrainConfig(epochs=args.epochs, seed=args.seed),
            ).validate()
            trained = fit(launch, config, verbose=0)
            held = trained.pipeline.holdings_matrix(who.customers[S.CUSTOMER_ID].to_numpy(), who.holdings)
            model_rank = rank_of(trained.score(who.customers, who.holdings), held, j)
            entry[f"finrec_id_dropout_{rate}"] = {
                "hit@5": float((model_rank <= K).mean()),
                "mean_rank": float(model_rank.mean()),
                "seconds": time.perf_counter() - start,
            }
            heuristic_rank = rank_of(heuristic, held, j)
        entry["category_popularity"] = {
            "hit@5": float((heuristic_rank <= K).mean()),
            "mean_rank": float(heuristic_rank.mean()),
        }
        entry["products_not_held"] = float((~held).sum(axis=1).mean())
        store[f"{args.customers}c/seed{args.seed}/{pid}"] = entry
        print(json.dumps(entry), flush=True)
        args.out.write_text(json.dumps(store, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
