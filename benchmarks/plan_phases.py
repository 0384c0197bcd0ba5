"""Where the seconds of ``finrec plan`` go: the calls ``cli.cmd_plan`` makes, timed one by one in
this process (imports, model load, building the problem, greedy, the dual, summary, reasons and
Arrow table, Parquet).

    PYTHONPATH=src .venv/bin/python benchmarks/plan_phases.py --model M --data D --capacity caps.csv

Prints one JSON line; writes the plan to a temporary directory.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from finrec import cli  # noqa: E402
from finrec.data.io import read_schema  # noqa: E402
from finrec.plan import campaign  # noqa: E402
from finrec.recommend.recommender import Recommender  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--capacity", type=Path)
    parser.add_argument("--contacts", type=int, default=1)
    args = parser.parse_args()
    seconds = {"imports": time.perf_counter() - START}
    start = time.perf_counter()
    # Older finrec versions load through Keras only: the same script times both.
    keyword = {"keras_model": False} if "keras_model" in inspect.signature(cli._load_model_for).parameters else {}
    recommender = Recommender(cli._load_model_for(args.model, read_schema(args.data), **keyword).trained)
    seconds["load model"] = time.perf_counter() - start
    start = time.perf_counter()
    problem = campaign.build_problem(recommender, args.data)
    seconds["build"] = time.perf_counter() - start
    capacity = campaign.read_capacities(args.capacity, problem.product_ids) if args.capacity else None
    result = campaign.plan_campaign(problem, capacity, args.contacts, solver="dual")
    seconds["greedy"], seconds["dual"] = result.greedy.seconds, result.plan.seconds
    start = time.perf_counter()
    campaign.summary(result)
    seconds["summary"] = time.perf_counter() - start
    start = time.perf_counter()
    table = campaign.plan_arrow(problem, result.plan)
    seconds["reasons + arrow"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        campaign.write_plan(table, Path(tmp) / "plan.parquet")
        seconds["write parquet"] = time.perf_counter() - start
    seconds["total"] = time.perf_counter() - START
    out = {k: round(v, 2) for k, v in seconds.items()}
    print(json.dumps({**out, "sweeps": result.plan.sweeps, "value": result.plan.value, "bound": result.plan.bound}))


if __name__ == "__main__":
    main()
