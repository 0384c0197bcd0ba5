"""Batch scoring throughput of the default model, end to end and compute only.

    .venv/bin/python benchmarks/batch_scoring.py [--customers 1000000] [--repeats 3]

End to end = `finrec score`'s path: read the customers Parquet in chunks, validate, features,
customer tower (numpy), cosine against the catalogue, filters, top-5, write Parquet. Compute only =
tower + scores + filters + top-5 on inputs already in memory. Also prints the tower's FLOPs per
customer and the throughput they imply, to show the distance to the hardware. Prints a table and
writes benchmarks/results/batch_scoring.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


from finrec.config import Config
from finrec.data import schema as S
from finrec.data.io import load_dataset, validate_tables, write_dataset
from finrec.data.synthetic import GeneratorSettings, generate
from finrec.recommend import filters as F
from finrec.recommend.batch import HoldingsLookup, score_dataset
from finrec.recommend.recommender import Recommender
from finrec.training.train import fit

RESULTS = Path(__file__).parent / "results" / "batch_scoring.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", type=Path, help="a finrec config YAML (default: the default config)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where the JSON goes (default {RESULTS})")
    args = parser.parse_args()
    config = Config.from_yaml(args.config) if args.config else Config()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = validate_tables(S.SYNTHETIC.schema(), generate(GeneratorSettings(n_customers=8000, seed=0)))
        trained = fit(train, config.with_overrides(epochs=3), verbose=0)
        forced = ensure_blend(trained, train, config)
        rec = Recommender(trained)
        tables = generate(GeneratorSettings(n_customers=args.customers, seed=1, ground_truth=False))
        write_dataset(tables, S.SYNTHETIC.schema(), tmp / "big")
        out = tmp / "top5.parquet"

        end_to_end = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            customers, rows = score_dataset(rec, tmp / "big", out, k=5)
            end_to_end.append(customers / (time.perf_counter() - start))

        data = load_dataset(tmp / "big", require_interactions=False)
        sample = data.customers.iloc[:262_144]
        held = HoldingsLookup(rec.pipeline, data.holdings).rows(sample.customer_id.to_numpy())
        context = rec.context(
            sample, held=held, adoption=False, validated=True
        )  # with a tree blend, the trees run here
        inputs, attributes = context.inputs, context.attributes
        compute, tower_only = [], []
        for _ in range(max(args.repeats, 5)):
            start = time.perf_counter()
            scores = rec.index.scores(rec.embed(context))
            masks = F.exclusion_masks(attributes, held, rec.catalogue, F.Filters())
            from finrec.recommend.index import top_k

            top_k(scores, F.combine(masks, scores.shape), 5)
            compute.append(len(sample) / (time.perf_counter() - start))
            start = time.perf_counter()
            rec.tower(inputs)
            tower_only.append(len(sample) / (time.perf_counter() - start))
        start = time.perf_counter()
        rec.rank(rec.context(sample, held=held, adoption=False, validated=True), 5, F.Filters())
        frame_rate = len(sample) / (time.perf_counter() - start)

    flops = rec.tower.flops_per_customer() + 2 * rec.product_embeddings.size
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "customers": args.customers,
        "rows_written": rows,
        "end_to_end_customers_per_s": statistics.median(end_to_end),
        "end_to_end_runs": end_to_end,
        "compute_customers_per_s": statistics.median(compute),
        "tower_only_customers_per_s": statistics.median(tower_only),
        "features_plus_compute_customers_per_s": frame_rate,
        "flops_per_customer": flops,
        "achieved_gflops_tower": statistics.median(tower_only) * rec.tower.flops_per_customer() / 1e9,
        "peak_rss_mb": peak_mb,
        "cores": os.cpu_count(),
        "config": trained.config.to_dict(),
        "tree_blend_weight": None if trained.blend is None else trained.blend.weight,
        "tree_blend_weight_forced": forced,
    }
    print(
        f"Batch scoring, default model (widths {list(trained.config.model.customer_widths)}, "
        f"embedding {trained.config.model.embedding_dim}), {args.customers:,} customers, {os.cpu_count()} cores"
    )
    print(f"{'stage':<44}{'customers/s (median)':>22}")
    print(
        f"{'end to end (read, features, score, filter, top-5, write)':<44}{result['end_to_end_customers_per_s']:>22,.0f}"
    )
    print(f"{'features + score + filter + top-5 (in memory)':<44}{frame_rate:>22,.0f}")
    print(f"{'score + filter + top-5 (inputs ready)':<44}{result['compute_customers_per_s']:>22,.0f}")
    print(f"{'customer tower only':<44}{result['tower_only_customers_per_s']:>22,.0f}")
    print(
        f"FLOPs per customer (tower + cosine): {flops:,}; the tower ran at {result['achieved_gflops_tower']:.1f} GFLOP/s; "
        f"at 100 GFLOP/s (2 AVX2 cores, rough peak) the limit would be {100e9 / flops:,.0f} customers/s"
    )
    print(f"peak RSS {peak_mb:,.0f} MB")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.results}")


def ensure_blend(trained, train, config) -> bool:
    """With ``model.tree_blend: always``, a blend to measure even where this small bank's
    validation chose none (weight 0.5 then; its cost does not depend on the weight). True when
    forced."""
    if config.model.tree_blend != "always" or trained.blend is not None:
        return False
    from finrec.training.trees import TreeBlend, fit_teacher

    trained.blend = TreeBlend(fit_teacher(train, 0), 0.5, config.training.temperature)
    print("the validation chose no blend; measuring one of weight 0.5", flush=True)
    return True


if __name__ == "__main__":
    main()
