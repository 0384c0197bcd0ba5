"""``finrec plan``: how good the plan is against the truth, and how fast it plans at scale.

1. Quality. The default bank (30,000 customers) is split 80/20 by customer; the default model is
   trained on the 80% (with its calibration) and plans a campaign for the 20%, with margins per
   product type and capacities that bind. Every plan is judged by its TRUE expected value
   (the synthetic bank's period adoption probabilities x margin): the model's optimal plan, the
   greedy plan from the same probabilities, and the best plan computed from the true
   probabilities themselves (the ceiling), under the same filters, capacities and contact limit.
2. Exact vs dual on the held-out customers: value, proven gap and seconds of each solver.
3. Scale: a bank of ``--customers`` (default 1,000,000) x 25 products planned end to end by the
   CLI (``finrec plan --solver dual``, Parquet out) in a child process: wall time and peak memory.

    PYTHONPATH=src .venv/bin/python benchmarks/plan.py [--customers 1000000] [--skip-quality]
    PYTHONPATH=src .venv/bin/python benchmarks/plan.py --skip-scale --months 12   # a bank with a past

Writes benchmarks/results/plan.json (a section a run skips keeps its previous figures). With
``--skip-quality`` the scale run plans with a default-architecture model trained for 3 epochs
on the default bank (the plan's speed does not depend on how well the model is trained).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pandas as pd

from finrec.artifacts import save_model_dir
from finrec.config import Config
from finrec.data import schema as S
from finrec.data.compliance import without_objections
from finrec.data.io import dataset_tables, validate_tables, write_dataset
from finrec.data.split import split_dataset
from finrec.data.synthetic import GeneratorSettings, generate, period_adoption_probabilities
from finrec.plan.campaign import build_problem, plan_campaign
from finrec.plan.solve import greedy, solve_dual, solve_exact
from finrec.recommend import filters as F
from finrec.recommend.recommender import Recommender
from finrec.training.train import fit

RESULTS = Path(__file__).parent / "results" / "plan.json"
# Money per adoption by product type (illustrative margins) and capacities as a share of customers.
MARGIN = {
    "current_account": 50,
    "savings_account": 80,
    "term_deposit": 120,
    "credit_card": 150,
    "personal_loan": 400,
    "mortgage": 2500,
    "investment_fund": 300,
    "pension": 600,
    "insurance": 200,
}
CAPACITY_SHARE = {
    "mortgage": 0.004,
    "personal_loan": 0.01,
    "investment_fund": 0.01,
    "pension": 0.01,
    "credit_card": 0.02,
}


def with_margins(tables: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], S.DatasetSchema]:
    products = tables["products"].assign(margin=lambda p: p["product_type"].map(MARGIN).astype(float))
    schema_dict = S.SYNTHETIC.schema().to_dict()
    schema_dict["products"]["value"] = "margin"
    return {**tables, "products": products}, S.DatasetSchema.from_dict(schema_dict)


def capacities(products: pd.DataFrame, product_ids: list[str], customers: int) -> np.ndarray:
    share = products.set_index("product_id").loc[product_ids, "product_type"].map(CAPACITY_SHARE)
    return np.where(share.notna(), np.round(share.fillna(0).to_numpy() * customers), np.inf)


# Simulations of the adoption step behind the true period probabilities. The ceiling is the best
# plan *on the simulated truth*, so it also exploits the simulation's noise: at 1,000 draws that
# inflated it by ~1% (judged on an independent simulation), at 8,000 by ~0.15%.
DRAWS = 8000


def quality(
    workdir: Path, seed: int = 0, draws: int = DRAWS, config: Config | None = None, months: int = 0
) -> tuple[dict, Path]:
    settings = GeneratorSettings(seed=seed, months=months)
    tables, schema = with_margins(generate(settings))
    dataset = validate_tables(schema, tables)
    train, test = split_dataset(dataset, holdout_fraction=0.2, seed=seed)
    # As `finrec train` does: customers who objected to profiling are no training data.
    trained = fit(without_objections(train)[0], (config or Config()).with_overrides(seed=seed), verbose=0)
    model_dir = save_model_dir(trained, workdir / "model")
    test_dir = write_dataset(dataset_tables(test), schema, workdir / "test")

    recommender = Recommender(trained)
    problem = build_problem(recommender, test_dir, filters="balanced")
    pids = problem.product_ids
    n = len(problem.customer_ids)
    capacity = capacities(dataset.products, pids, n)

    ids = test.customers["customer_id"].to_numpy()
    pipeline = trained.pipeline
    first = np.zeros((n, len(pids)))
    gt = test.ground_truth
    first[pd.Index(ids).get_indexer(gt["customer_id"]), pipeline.product_positions(gt["product_id"])] = gt[
        "probability"
    ]
    context = recommender.context(test.customers, test.holdings, history=test.holdings_history)
    # A bank with a past: whether a customer adopts at all falls with the products it holds.
    true = period_adoption_probabilities(first, settings, draws=draws, seed=seed, n_held=context.held.sum(axis=1))
    allowed = ~F.combine(recommender.masks(context, F.Filters.build("balanced")), context.held.shape)
    w_true = (true * allowed * problem.values).astype(np.float32)

    rows = {}
    for contacts in (1, 2):
        result = plan_campaign(problem, capacity, contacts, solver="exact")
        ceiling = solve_exact(w_true, capacity, contacts)
        # What a perfect ranking signal would give: the true first-choice probabilities x value.
        first_plan = solve_exact((first * allowed * problem.values).astype(np.float32), capacity, contacts)

        def true_value(plan):
            return float(w_true[plan.rows, plan.cols].astype("float64").sum())

        rows[contacts] = {
            "plan_true_value": true_value(result.plan),
            "greedy_true_value": true_value(result.greedy),
            "ceiling_true_value": ceiling.value,
            "plan_predicted_value": result.plan.value,
            "first_choice_true_value": true_value(first_plan),
            "binding": int(
                sum(
                    np.bincount(result.plan.cols, minlength=len(pids))[np.isfinite(capacity)]
                    >= capacity[np.isfinite(capacity)]
                )
            ),
        }
        rows[contacts]["plan_over_ceiling"] = rows[contacts]["plan_true_value"] / ceiling.value
        rows[contacts]["greedy_over_ceiling"] = rows[contacts]["greedy_true_value"] / ceiling.value
        rows[contacts]["first_choice_over_ceiling"] = rows[contacts]["first_choice_true_value"] / ceiling.value
        # What the plan promises over what it is worth: > 1 is the optimiser's curse.
        rows[contacts]["plan_predicted_over_true"] = result.plan.value / rows[contacts]["plan_true_value"]

    # Exact vs dual on the same problem.
    solvers = {}
    w = problem.weights
    for contacts in (1, 2):
        exact, dual, base = (
            solve_exact(w, capacity, contacts),
            solve_dual(w, capacity, contacts),
            greedy(w, capacity, contacts),
        )
        solvers[contacts] = {
            "exact_value": exact.value,
            "exact_seconds": exact.seconds,
            "dual_value": dual.value,
            "dual_bound": dual.bound,
            "dual_seconds": dual.seconds,
            "dual_sweeps": dual.sweeps,
            "dual_over_exact": dual.value / exact.value,
            "greedy_value": base.value,
        }
    return {
        "customers": n,
        "seed": seed,
        "months": months,
        "draws": draws,
        "calibration": trained.calibration.method,
        "adoption_model": trained.calibration.needs_adoption,
        "capacity": {pid: c for pid, c in zip(pids, capacity.tolist()) if np.isfinite(c)},
        "plans": rows,
        "solvers": solvers,
    }, model_dir


# The plan's peak memory, measured by a small go-between process: a child started straight from
# this one (which holds the generated bank) inherits its memory high-water mark through fork and
# exec on Linux, so this process's RUSAGE_CHILDREN would report ~2 GB whatever the plan used.
PEAK_WRAPPER = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
    "sys.exit(done.returncode)"
)


def scale(workdir: Path, model_dir: Path, customers: int, seed: int = 1) -> dict:
    start = time.perf_counter()
    tables, schema = with_margins(generate(GeneratorSettings(n_customers=customers, seed=seed, ground_truth=False)))
    data = write_dataset(tables, schema, workdir / f"bank_{customers}")
    generate_seconds = time.perf_counter() - start
    pids = list(tables["products"]["product_id"])
    caps = capacities(tables["products"], pids, customers)
    caps_path = workdir / "caps.csv"
    pd.DataFrame(
        {
            "product_id": [p for p, c in zip(pids, caps) if np.isfinite(c)],
            "capacity": [int(c) for c in caps if np.isfinite(c)],
        }
    ).to_csv(caps_path, index=False)
    del tables
    summary = workdir / "summary.json"
    peak_file = workdir / "peak_kib"
    command = [
        sys.executable,
        "-c",
        PEAK_WRAPPER,
        str(peak_file),
        sys.executable,
        "-m",
        "finrec.cli",
        "plan",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--out",
        str(workdir / "plan.parquet"),
        "--capacity",
        str(caps_path),
        "--solver",
        "dual",
        "--json",
        str(summary),
    ]
    load_before = os.getloadavg()  # the machine may be shared: the 1-minute load says how busy it was
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "src"})
    seconds = time.perf_counter() - start
    load_after = os.getloadavg()
    if done.returncode != 0:
        raise SystemExit(f"finrec plan failed: {done.stderr}")
    peak = int(peak_file.read_text()) / 1024  # KiB on Linux
    info = json.loads(summary.read_text())
    return {
        "customers": customers,
        "generate_seconds": generate_seconds,
        "plan_seconds_end_to_end": seconds,
        "peak_rss_mib": peak,
        "load_average_1min": {"before": load_before[0], "after": load_after[0]},
        "summary": info,
        "stdout": done.stdout,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000, help="customers of the scale run")
    parser.add_argument("--skip-quality", action="store_true", help="scale only (a model is then trained quickly)")
    parser.add_argument("--skip-scale", action="store_true", help="quality only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--months", type=int, default=0, help="quality on a bank with this many months of history (default 0: none)"
    )
    parser.add_argument("--config", type=Path, help="a finrec config YAML for the model (default: the default config)")
    parser.add_argument(
        "--results",
        type=Path,
        help="where the JSON goes (default plan.json; with --skip-scale plan_quality[_seedS].json)",
    )
    args = parser.parse_args()
    config = Config.from_yaml(args.config) if args.config else Config()
    out: dict = {"machine": platform.machine(), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.skip_quality:
            tables, schema = with_margins(generate(GeneratorSettings(seed=args.seed)))
            trained = fit(validate_tables(schema, tables), config.with_overrides(seed=args.seed, epochs=3), verbose=0)
            model_dir = save_model_dir(trained, workdir / "model")
        else:
            out["quality"], model_dir = quality(workdir, args.seed, config=config, months=args.months)
            q = out["quality"]
            print(f"Quality on {q['customers']} held-out customers, capacities {q['capacity']}")
            print(
                f"{'contacts':<10}{'plan':>12}{'greedy':>12}{'ceiling':>12}{'plan/ceil':>11}{'greedy/ceil':>12}"
                f"{'binding':>9}{'pred/true':>10}"
            )
            for contacts, r in q["plans"].items():
                print(
                    f"{contacts:<10}{r['plan_true_value']:>12.0f}{r['greedy_true_value']:>12.0f}{r['ceiling_true_value']:>12.0f}"
                    f"{r['plan_over_ceiling']:>11.3f}{r['greedy_over_ceiling']:>12.3f}{r['binding']:>9}"
                    f"{r['plan_predicted_over_true']:>10.3f}"
                )
            print("(true expected value of each plan; ceiling: the best plan computed from the true probabilities)")
            print(
                "plan from the true first-choice probabilities instead of the model's, over the ceiling: "
                + ", ".join(f"{r['first_choice_over_ceiling']:.3f} ({c} contact(s))" for c, r in q["plans"].items())
            )
            print(f"{'contacts':<10}{'exact':>12}{'s':>7}{'dual':>12}{'bound':>12}{'s':>7}{'dual/exact':>11}")
            for contacts, r in q["solvers"].items():
                print(
                    f"{contacts:<10}{r['exact_value']:>12.1f}{r['exact_seconds']:>7.2f}{r['dual_value']:>12.1f}"
                    f"{r['dual_bound']:>12.1f}{r['dual_seconds']:>7.2f}{r['dual_over_exact']:>11.5f}"
                )
        if args.skip_scale:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            name = "plan_quality" + (f"_months{args.months}" if args.months else "")
            name += ".json" if args.seed == 0 else f"_seed{args.seed}.json"
            (args.results or RESULTS.with_name(name)).write_text(json.dumps(out, indent=1, default=str))
            return
        s = scale(workdir, model_dir, args.customers)
        out["scale"] = s
        info = s["summary"]
        print(
            f"Scale: {args.customers} customers x {info['products']} products, `finrec plan --solver dual` end to end "
            f"{s['plan_seconds_end_to_end']:.1f}s (build {info['seconds']['build']:.1f}s, solve {info['seconds']['solve']:.1f}s), "
            f"peak RSS {s['peak_rss_mib']:.0f} MiB, {os.cpu_count()} cores"
        )
        print(s["stdout"])
    results = args.results or RESULTS
    results.parent.mkdir(parents=True, exist_ok=True)
    if results.exists():  # a section this run skipped keeps its last measured figures
        out = {**json.loads(results.read_text()), **out}
    results.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
