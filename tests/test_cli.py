"""The CLI end to end, as a user runs it: generate, split, train, evaluate, score."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from finrec.cli import main


def finrec(*args, cwd=None):
    # As a user runs it: none of the variables that quiet TensorFlow (the Makefile sets one).
    quiet = ("TF_CPP_MIN_LOG_LEVEL", "ABSL_MIN_LOG_LEVEL", "GRPC_VERBOSITY", "PYTHONWARNINGS")
    env = {key: value for key, value in os.environ.items() if key not in quiet}
    done = subprocess.run(
        [sys.executable, "-m", "finrec.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )
    if done.returncode == 0:  # only finrec's own output: no TensorFlow start-up lines or warnings
        assert done.stderr == "", done.stderr[-2000:]
    return done


@pytest.mark.slow
def test_generate_train_evaluate_score(tmp_path):
    bank, split, model = tmp_path / "bank", tmp_path / "split", tmp_path / "model"
    done = finrec("generate", "--out", bank, "--customers", 1200, "--seed", 3)
    assert done.returncode == 0, done.stderr
    assert finrec("split", "--data", bank, "--out", split).returncode == 0
    done = finrec("train", "--data", split / "train", "--out", model, "--epochs", 1, "--seed", 1)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("epoch 1/1, loss "), done.stdout
    assert (model / "model.keras").exists() and (model / "manifest.json").exists()

    done = finrec("evaluate", "--model", model, "--data", split / "test", "--k", 5, "--json", tmp_path / "e.json")
    assert done.returncode == 0, done.stderr
    for name in ("model", "popularity", "random", "oracle", "ndcg@5", "mrr"):
        assert name in done.stdout
    results = json.loads((tmp_path / "e.json").read_text())["results"]
    assert results["model"]["customers"] > 100
    assert results["oracle"]["ndcg@5"] > results["random"]["ndcg@5"]
    # registered with its own metrics: the JSON names the model it measured
    done = finrec("models", "add", "--root", tmp_path / "reg", "--model", model, "--metrics", tmp_path / "e.json")
    assert done.returncode == 0 and "does not name" not in done.stderr, done.stderr

    out = tmp_path / "top.csv"
    done = finrec("score", "--model", model, "--data", split / "test", "--out", out, "--k", 3)
    assert done.returncode == 0, done.stderr
    top = pd.read_csv(out, dtype={"customer_id": str})
    assert list(top.columns) == ["customer_id", "rank", "product_id", "score"]
    assert top.groupby("customer_id")["rank"].max().max() == 3
    holdings = pd.read_parquet(split / "test" / "holdings.parquet")
    pairs = set(zip(holdings.customer_id, holdings.product_id))
    assert not any((c, p) in pairs for c, p in zip(top.customer_id, top.product_id))
    first = top[top.customer_id == top.customer_id.iloc[0]]
    assert first["score"].is_monotonic_decreasing


def test_input_errors_exit_2_without_traceback(tmp_path, capsys):
    code = main(["evaluate", "--model", str(tmp_path / "none"), "--data", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "schema.yaml" in err


def test_missing_model_dir(tmp_path, small_data_dir, capsys):
    code = main(["evaluate", "--model", str(tmp_path / "none"), "--data", str(small_data_dir)])
    assert code == 2 and "no model directory" in capsys.readouterr().err


def test_bad_config_file(tmp_path, small_data_dir, capsys):
    (tmp_path / "c.yaml").write_text("training: {epochs: -1}\n")
    code = main(
        ["train", "--data", str(small_data_dir), "--out", str(tmp_path / "m"), "--config", str(tmp_path / "c.yaml")]
    )
    assert code == 2 and "training.epochs" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("command", ["split", "train", "tune", "evaluate", "monitor", "compare", "report"])
@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_a_seed_out_of_range_is_an_input_error(tmp_path, small_data_dir, command, seed, capsys):
    # numpy and Keras refused these seeds mid-run, as an internal error (exit 1).
    with pytest.raises(SystemExit) as info:
        main([command, "--seed", seed])
    assert info.value.code == 2
    assert f"--seed: expected a whole number from 0 to 4294967295, got {seed}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ history and time


@pytest.fixture(scope="module")
def bank_with_past(tmp_path_factory):
    bank = tmp_path_factory.mktemp("past") / "bank"
    assert main(["generate", "--out", str(bank), "--customers", "400", "--months", "4", "--seed", "2"]) == 0
    return bank


def test_generate_months_writes_a_history(bank_with_past, capsys):
    history = pd.read_parquet(bank_with_past / "holdings_history.parquet")
    assert sorted(history["as_of"].dt.strftime("%Y-%m-%d").unique()) == [
        "2025-09-30",
        "2025-10-31",
        "2025-11-30",
        "2025-12-31",
    ]


def test_split_by_time_records_how(bank_with_past, tmp_path, capsys):
    out = tmp_path / "oot"
    code = main(["split", "--data", str(bank_with_past), "--out", str(out), "--by", "time", "--cutoff", "2025-12-31"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "features as of 2025-11-30" in printed and "adoptions after 2025-12-31" in printed
    train = json.loads((out / "train" / "split.json").read_text())
    test = json.loads((out / "test" / "split.json").read_text())
    assert (train["by"], train["side"], train["cutoff"], train["features_as_of"]) == (
        "time",
        "train",
        "2025-12-31",
        "2025-11-30",
    )
    assert (test["side"], test["features_as_of"], test["adoptions_from"]) == ("test", "2025-12-31", "2026-01-01")
    assert not (out / "train" / "ground_truth.parquet").exists() and (out / "test" / "ground_truth.parquet").exists()
    code = main(["split", "--data", str(bank_with_past), "--out", str(tmp_path / "cs")])
    assert code == 0
    record = json.loads((tmp_path / "cs" / "test" / "split.json").read_text())
    assert (record["by"], record["holdout"], record["seed"]) == ("customer", 0.2, 0)
    # the customer split carries the history of its customers
    history = pd.read_parquet(tmp_path / "cs" / "test" / "holdings_history.parquet")
    customers = pd.read_parquet(tmp_path / "cs" / "test" / "customers.parquet")
    assert len(history) > 0 and set(history["customer_id"]) <= set(customers["customer_id"])


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--by", "time"], "needs --cutoff"),
        (["--cutoff", "2025-12-31"], "--cutoff goes with --by time"),
        (["--by", "time", "--cutoff", "2025-12-31", "--holdout", "0.3"], "--holdout goes with --by customer"),
        (["--by", "time", "--cutoff", "someday"], "'someday' is not a date"),
        (["--by", "time", "--cutoff", "2030-01-01"], "outside the data's dates"),
        (["--by", "time", "--cutoff", "2025-09-30"], "two snapshots up to the cutoff"),
    ],
)
def test_split_by_time_refusals_exit_2(bank_with_past, tmp_path, capsys, extra, fragment):
    code = main(["split", "--data", str(bank_with_past), "--out", str(tmp_path / "s"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1, err
    assert not (tmp_path / "s").exists()


def test_split_by_time_needs_timestamps(small_data_dir, tmp_path, capsys):
    data = tmp_path / "bank"
    import shutil

    shutil.copytree(small_data_dir, data)
    interactions = pd.read_parquet(data / "interactions.parquet").drop(columns=["timestamp"])
    interactions.to_parquet(data / "interactions.parquet")
    code = main(["split", "--data", str(data), "--out", str(tmp_path / "s"), "--by", "time", "--cutoff", "2026-06-30"])
    assert code == 2 and "needs a 'timestamp' column" in capsys.readouterr().err


@pytest.mark.slow
def test_a_history_model_on_data_without_its_history_says_so(bank_with_past, tmp_path, capsys):
    # The history table left behind, every customer was scored as one without a past, silently.
    import shutil

    config = tmp_path / "fast.yaml"
    config.write_text(
        "model: {customer_widths: [16], product_widths: [16], embedding_dim: 8, tree_blend: never}\n"
        "training: {epochs: 1, distill: 0.0, min_steps_per_epoch: 0, history_months: 0}\n"
    )
    model = tmp_path / "m"
    assert main(["train", "--data", str(bank_with_past), "--out", str(model), "--config", str(config)]) == 0
    bare = tmp_path / "bare"
    shutil.copytree(bank_with_past, bare)
    next(bare.glob("holdings_history.*")).unlink()
    capsys.readouterr()
    note = "note: the model reads a holdings_history table and"
    out = tmp_path / "top.csv"
    assert main(["score", "--model", str(model), "--data", str(bare), "--out", str(out)]) == 0
    assert note in capsys.readouterr().err
    assert main(["score", "--model", str(model), "--data", str(bank_with_past), "--out", str(out)]) == 0
    assert note not in capsys.readouterr().err
    customer = pd.read_csv(out, dtype={"customer_id": str})["customer_id"].iloc[0]
    assert main(["recommend", "--model", str(model), "--data", str(bare), "--customer-id", customer]) == 0
    assert note in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_says_which_split_it_scored(bank_with_past, model_dir, tmp_path, capsys):
    out = tmp_path / "oot"
    assert (
        main(["split", "--data", str(bank_with_past), "--out", str(out), "--by", "time", "--cutoff", "2025-12-31"]) == 0
    )
    capsys.readouterr()
    code = main(
        ["evaluate", "--model", str(model_dir), "--data", str(out / "test"), "--json", str(tmp_path / "e.json")]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.startswith("split: out of time, test side, cutoff 2025-12-31"), printed
    assert json.loads((tmp_path / "e.json").read_text())["split"]["cutoff"] == "2025-12-31"
    code = main(["evaluate", "--model", str(model_dir), "--data", str(bank_with_past)])
    assert code == 0 and "split: not recorded" in capsys.readouterr().out


def test_score_leaves_out_a_discontinued_product_and_names_an_unknown_one(model_dir, updated_bank, tmp_path, capsys):
    """The bank's products table lacks a product the model knows (discontinued: never offered)
    and lists one it does not (a launch the model cannot score): both said once, by id."""

    def relaunch(products):
        new = products[products.product_id == "SAV_BASIC"].assign(product_id="NEW_ACC", name="New account")
        return pd.concat([products[products.product_id != "INS_TRAVEL"], new], ignore_index=True)

    out = tmp_path / "top.csv"
    data = updated_bank(relaunch)
    code = main(["score", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--k", "25"])
    err = capsys.readouterr().err
    assert code == 0, err
    top = pd.read_csv(out)
    assert not top.product_id.isin(["INS_TRAVEL", "NEW_ACC"]).any() and top.product_id.nunique() > 10
    assert err.count("1 product(s) of the model are not in this products table ('INS_TRAVEL')") == 1, err
    assert err.count("1 product(s) are not in the model's catalogue ('NEW_ACC')") == 1 and "retrain" in err, err
    assert "products.parquet" in err


def test_a_reader_that_stops_reading_is_no_internal_error(tmp_path):
    # `finrec ... | head`: the pipe closes while the command still writes.
    script = (
        "import sys; from finrec import cli\n"
        "def shout(args):\n"
        "    for _ in range(100000): print('x' * 80)\n"
        "    return 0\n"
        "cli.cmd_generate = shout  # build_parser binds the command by name\n"
        "sys.exit(cli.main(['generate', '--out', sys.argv[1]]))\n"
    )
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    done = subprocess.run(
        f'"{sys.executable}" -c "$S" "{tmp_path / "bank"}" | head -1; echo "rc=${{PIPESTATUS[0]}}"',
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        env={**os.environ, "S": script, "PYTHONPATH": src},
        timeout=120,
    )
    assert done.stdout == "x" * 80 + "\nrc=141\n", done.stdout[-200:]
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_score_unfiltered_ranks_every_product_not_held(model_dir, small_dataset, small_data_dir, tmp_path):
    from finrec.data.compliance import customer_profile

    # As evaluate ranks: no target-market or affordability rule either (they had stayed on).
    out = tmp_path / "all.csv"
    n_products = len(small_dataset.products)
    assert (
        main(
            [
                "score",
                "--model",
                str(model_dir),
                "--data",
                str(small_data_dir),
                "--out",
                str(out),
                "--k",
                str(n_products),
                "--unfiltered",
            ]
        )
        == 0
    )
    rows = pd.read_csv(out, dtype={"customer_id": str})
    customers = small_dataset.customers
    served = customers["customer_id"][~customer_profile(customers, small_dataset.schema.customers)["objected"]]
    held = small_dataset.holdings.groupby("customer_id").size()
    expected = n_products - held.reindex(served).fillna(0).astype(int)
    got = rows.groupby("customer_id").size().reindex(served).fillna(0).astype(int)
    assert (got.to_numpy() == expected.to_numpy()).all()


@pytest.mark.parametrize(
    "flags",
    [["--category", "pension"], ["--preset", "conservative"], ["--include-held"], ["--credit-score-cutoff", "600"]],
)
def test_score_unfiltered_refuses_a_filter_beside_it(model_dir, small_data_dir, tmp_path, flags, capsys):
    # The filter was silently dropped: `--unfiltered --category pension` wrote every category.
    out = tmp_path / "all.csv"
    argv = ["score", "--model", str(model_dir), "--data", str(small_data_dir), "--out", str(out), "--unfiltered"]
    assert main([*argv, *flags]) == 2
    assert f"drop --unfiltered or {flags[0]}" in capsys.readouterr().err
    assert not out.exists()


def test_python_dash_m_finrec_is_the_command_line(tmp_path):
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = {**os.environ, "PYTHONPATH": src}
    done = subprocess.run([sys.executable, "-m", "finrec", "--help"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "plan" in done.stdout and "calibrate" in done.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "finrec",
            "score",
            "--model",
            str(tmp_path / "none"),
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "o.csv"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("finrec score: error:"), bad.stderr


def test_a_broken_pipe_elsewhere_is_an_internal_error(monkeypatch, tmp_path, capsys):
    import finrec.cli as cli

    def lost(args):  # a service or a FIFO output that went away, stdout still open
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_generate", lost)
    assert main(["generate", "--out", str(tmp_path / "bank")]) == 1
    assert "internal error: BrokenPipeError" in capsys.readouterr().err


def test_evaluate_counts_adoptions_of_a_launch_the_model_does_not_know_as_misses(
    model_dir, updated_bank, tmp_path, capsys
):
    """A tester's monthly cycle: last month's model on this month's data, where 25 customers took
    up a product launched since. Those adoptions left the task without a word, and the old model
    read better than the one trained with the launch; now they count as misses, named on stderr."""
    from finrec.data.io import find_table, read_table, write_table

    data = updated_bank(
        lambda products: pd.concat(
            [products, products[products.product_id == "SAV_BASIC"].assign(product_id="GREEN_SAVER")],
            ignore_index=True,
        )
    )
    path = find_table(data, "interactions")
    interactions = read_table(path, ("customer_id", "product_id"))
    customers = interactions["customer_id"].drop_duplicates().iloc[:25]
    launch = pd.DataFrame({"customer_id": customers, "product_id": "GREEN_SAVER"})
    write_table(pd.concat([interactions, launch], ignore_index=True), path)
    assert main(["evaluate", "--model", str(model_dir), "--data", str(data), "--json", str(tmp_path / "e.json")]) == 0
    err = capsys.readouterr().err
    assert "25 adoption(s)" in err and "GREEN_SAVER (25)" in err and "count as misses" in err, err
    with_launch = json.loads((tmp_path / "e.json").read_text())["results"]["model"]
    write_table(interactions, path)  # the same data without the launch
    assert main(["evaluate", "--model", str(model_dir), "--data", str(data), "--json", str(tmp_path / "f.json")]) == 0
    without = json.loads((tmp_path / "f.json").read_text())["results"]["model"]
    assert with_launch["customers"] == without["customers"]  # each of the 25 had adopted something else too
    assert with_launch["recall@5"] < without["recall@5"]


def test_evaluate_says_when_the_adoptions_are_the_ones_the_model_was_trained_on(
    trained, small_data_dir, updated_bank, tmp_path, capsys
):
    """A tester's monthly cycle: last month's test side given to this month's model, which was
    trained on those same adoptions, read 0.68 nDCG@5 against 0.57 on held-out customers, with
    no word. An out-of-time test side (the same customers, the next month's adoptions) is fine."""
    from finrec.artifacts import save_model_dir
    from finrec.data.io import find_table, read_table, write_table

    model = save_model_dir(trained, tmp_path / "model", data_path=str(small_data_dir))
    assert main(["evaluate", "--model", str(model), "--data", str(small_data_dir)]) == 0
    err = capsys.readouterr().err
    assert "are in the data the model was trained on" in err and "the metrics are optimistic" in err, err
    later = updated_bank(lambda products: products)  # the same customers, other adoptions
    path = find_table(later, "interactions")
    interactions = read_table(path, ("customer_id", "product_id"))
    products = sorted(interactions["product_id"].unique())
    rotate = dict(zip(products, products[1:] + products[:1], strict=True))
    shifted = interactions.assign(product_id=interactions["product_id"].map(rotate))
    key = ["customer_id", "product_id"]
    pairs = shifted.merge(interactions[key], on=key, how="left", indicator=True)
    write_table(pairs[pairs["_merge"] == "left_only"].drop(columns="_merge").drop_duplicates(), path)
    assert main(["evaluate", "--model", str(model), "--data", str(later)]) == 0
    assert "trained on" not in capsys.readouterr().err
    # the training directory moved away since: a copy of it is known by its fingerprint
    from finrec.data.io import fingerprint

    moved = save_model_dir(
        trained, tmp_path / "moved", data_fingerprint=fingerprint(small_data_dir), data_path=str(tmp_path / "gone")
    )
    assert main(["evaluate", "--model", str(moved), "--data", str(small_data_dir)]) == 0
    assert "are in the data the model was trained on" in capsys.readouterr().err


def test_score_counts_only_the_customers_it_wrote_for(model_dir, small_data_dir, tmp_path, capsys):
    """`finrec score --category mortgage` said "wrote N recommendations for <every customer
    ranked>" while most customers had no eligible mortgage and no row in the file (a tester's
    monthly cycle: 3,663 said, 1,008 written). Those without an eligible product are counted apart."""
    import re

    out = tmp_path / "top.csv"
    code = main(
        ["score", "--model", str(model_dir), "--data", str(small_data_dir), "--out", str(out)]
        + ["--category", "mortgage"]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    written = pd.read_csv(out, dtype={"customer_id": str})["customer_id"].nunique()
    said = int(re.search(r"recommendations for (\d+) customers", printed).group(1))
    empty = int(re.search(r"(\d+) customer\(s\) have no eligible product", printed).group(1))
    assert said == written and empty > 0, printed


def test_every_flag_the_readme_shows_exists():
    # The README's command lines are a contract: a flag renamed or dropped must leave them too.
    import re
    from pathlib import Path

    from finrec.cli import build_parser

    def commands(parser):
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        return sub.choices

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    top = commands(build_parser())
    checked = 0
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in block.splitlines():
            words = line.split("#")[0].split()
            if "finrec" not in words:
                continue
            words = words[words.index("finrec") + 1 :]
            parser = top[words[0]]
            if words[1:] and not words[1].startswith("-") and parser._subparsers is not None:
                names = re.split(r"[|;]", words[1])
                parsers = [commands(parser)[name] for name in names if name]
            else:
                parsers = [parser]
            for flag in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", " ".join(words[1:])):
                for p in parsers:
                    assert flag in p._option_string_actions, f"README: finrec {words[0]} {flag}"
                    checked += 1
    assert checked > 50


def test_score_leaves_out_a_product_marked_not_on_offer(model_dir, withdrawing_bank, withdrawn, tmp_path, capsys):
    """``products.on_offer`` named after training: no schema change, the product is never
    scored for anyone (not even --unfiltered), and stderr says so once, by id."""
    data = withdrawing_bank()
    for flag in ([], ["--unfiltered"]):
        out = tmp_path / f"top{len(flag)}.csv"
        code = main(["score", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--k", "25", *flag])
        err = capsys.readouterr().err
        assert code == 0, err
        top = pd.read_csv(out)
        assert not top.product_id.eq(withdrawn).any() and top.product_id.nunique() > 10
        note = f"1 product(s) are marked not on offer in column 'on_offer' ('{withdrawn}'): discontinued, never offered"
        assert err.count(note) == 1 and "are not in this products table" not in err, err


# ------------------------------------------------------------------------------------ compare with a scores file


@pytest.fixture(scope="module")
def exported_scores(model_dir, small_data_dir, tmp_path_factory):
    """The model's scores of every product not held, as `finrec score --unfiltered` exports them
    (customers who objected to profiling left out), with its rank column dropped: a bank's own
    model's file. Its path."""
    folder = tmp_path_factory.mktemp("theirs")
    ranked = folder / "ranked.parquet"
    argv = ["score", "--model", str(model_dir), "--data", str(small_data_dir), "--out", str(ranked), "--unfiltered"]
    assert main([*argv, "--k", "25"]) == 0
    path = folder / "theirs.csv"
    pd.read_parquet(ranked).drop(columns="rank").to_csv(path, index=False)
    return path


def test_compare_seats_a_scores_file(model_dir, small_data_dir, exported_scores, tmp_path, capsys):
    out = tmp_path / "compare.json"
    argv = ["compare", "--champion-scores", str(exported_scores), "--challenger", str(model_dir)]
    assert main([*argv, "--data", str(small_data_dir), "--resamples", "100", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["champion"] == str(exported_scores) and result["challenger"] == str(model_dir)
    champion = result["seats"]["champion"]
    assert champion["kind"] == "scores" and champion["column"] == "score"
    coverage = champion["coverage"]
    # the export lacks the customers who objected: left out for both seats, the model's own
    # export grades as the model to float32 rounding of the scores it wrote
    assert coverage["customers_without_scores"] == 0 and result["objected_left_out"] > 0
    for row in result["metrics"].values():
        assert abs(row["difference"]) < 1e-3
    printed = capsys.readouterr().out
    assert f"champion scores {exported_scores}" in printed and "objected to profiling are left out" in printed


def test_compare_two_scores_files_without_a_model(small_data_dir, exported_scores, tmp_path):
    out = tmp_path / "compare.json"
    argv = ["compare", "--champion-scores", str(exported_scores), "--challenger-scores", str(exported_scores)]
    assert main([*argv, "--data", str(small_data_dir), "--resamples", "50", "--json", str(out)]) == 0
    for row in json.loads(out.read_text())["metrics"].values():
        assert row["difference"] == 0 and row["verdict"] == "no clear difference"


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda f: f.assign(rank=1), "both a 'score' and a 'rank' column; keep one"),
        (lambda f: f.drop(columns="score"), "missing the column 'score' (higher is better) or 'rank'"),
        (
            lambda f: f.assign(score=f["score"].where(f.index != 3)),
            "column 'score' has 1 missing value(s), at row(s) 4",
        ),
        (lambda f: f.assign(score=f["score"].astype(object).where(f.index != 0, "high")), "e.g. row 1: 'high'"),
        (lambda f: pd.concat([f, f.iloc[[2]]]), "1 row(s) repeat the (customer_id, product_id) pair"),
        (lambda f: f.assign(product_id=f["product_id"].where(f.index % 2 == 1, "LOAN_X")), "'LOAN_X' ("),
        (lambda f: f.assign(customer_id="X" + f["customer_id"]), "none of its customer ids is a customer of the data"),
    ],
)
def test_compare_refuses_a_bad_scores_file(
    model_dir, small_data_dir, exported_scores, tmp_path, edit, fragment, capsys
):
    frame = pd.read_csv(exported_scores, dtype={"customer_id": str, "product_id": str}).head(200)
    bad = tmp_path / "bad.csv"
    edit(frame).to_csv(bad, index=False)
    argv = ["compare", "--champion-scores", str(bad), "--challenger", str(model_dir), "--data", str(small_data_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"finrec compare: error: {bad}: ") and fragment in err, err
    assert err.count("\n") == 1


def test_compare_never_writes_over_a_scores_file(model_dir, small_data_dir, exported_scores, capsys):
    before = exported_scores.read_bytes()
    argv = ["compare", "--champion-scores", str(exported_scores), "--challenger", str(model_dir)]
    assert main([*argv, "--data", str(small_data_dir), "--json", str(exported_scores)]) == 2
    err = capsys.readouterr().err
    assert f"is --champion-scores {exported_scores}" in err and exported_scores.read_bytes() == before


def test_compare_takes_one_thing_per_seat(model_dir, small_data_dir, exported_scores, capsys):
    argv = ["compare", "--champion", str(model_dir), "--champion-scores", str(exported_scores)]
    assert main([*argv, "--challenger", str(model_dir), "--data", str(small_data_dir)]) == 2
    assert "--champion and --champion-scores both given" in capsys.readouterr().err
    assert main(["compare", "--champion-scores", str(exported_scores), "--data", str(small_data_dir)]) == 2
    assert "--challenger or --challenger-scores is required" in capsys.readouterr().err


def test_progress_lines_on_request_and_never_in_a_pipe(
    model_dir, small_data_dir, small_dataset, tmp_path, capsys, monkeypatch
):
    """``compare`` ran 6 minutes on 2M customers without a word. With ``FINREC_PROGRESS=1`` (or on
    a terminal) each stage of a command is a line on standard error, with the seconds since it
    began; unset in a pipe (as here) or ``0``, standard error holds finrec's own messages
    alone, as before; the handler leaves with the command."""
    import logging

    n = len(small_dataset.customers)
    finrec_logger = logging.getLogger("finrec")
    before = (finrec_logger.level, finrec_logger.propagate, list(finrec_logger.handlers))
    monkeypatch.setenv("FINREC_PROGRESS", "1")
    assert (
        main(["score", "--model", str(model_dir), "--data", str(small_data_dir), "--out", str(tmp_path / "a.parquet")])
        == 0
    )
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("finrec score [") for line in lines), lines
    assert any(line.endswith(f"loading the model {model_dir}") for line in lines)
    assert lines[-1].endswith(f"scored {n:,} of {n:,} customers"), lines
    assert (finrec_logger.level, finrec_logger.propagate, list(finrec_logger.handlers)) == before
    for setting in ("0", None):
        if setting is None:
            monkeypatch.delenv("FINREC_PROGRESS")
        else:
            monkeypatch.setenv("FINREC_PROGRESS", setting)
        out = tmp_path / f"b{setting}.parquet"
        assert main(["score", "--model", str(model_dir), "--data", str(small_data_dir), "--out", str(out)]) == 0
        assert capsys.readouterr().err == ""
    monkeypatch.setenv("FINREC_PROGRESS", "true")  # neither on nor off: refused, naming it
    assert (
        main(["score", "--model", str(model_dir), "--data", str(small_data_dir), "--out", str(tmp_path / "c.csv")]) == 2
    )
    assert "FINREC_PROGRESS must be 1 (on) or 0 (off), got 'true'" in capsys.readouterr().err
    assert not (tmp_path / "c.csv").exists()


def test_a_warning_among_progress_lines_keeps_its_usual_form_and_traceback():
    """A server's unhandled-request error came through the progress form as one line of literal
    "\\n", its traceback dropped (a reviewer): a warning or an error keeps the usual form."""
    import logging
    import sys

    from finrec.cli import _ProgressFormatter

    formatter = _ProgressFormatter("serve")
    info = logging.LogRecord("finrec.x", logging.INFO, __file__, 1, "loading the model %s", ("m",), None)
    assert formatter.format(info) == "finrec serve [0 s]: loading the model m"
    try:
        raise ValueError("boom")
    except ValueError:
        error = logging.LogRecord(
            "finrec.serve", logging.ERROR, __file__, 1, "unhandled\nsecond line", (), sys.exc_info()
        )
    text = formatter.format(error)
    assert text.startswith("ERROR finrec.serve: unhandled\nsecond line\nTraceback (most recent call last):")
    assert text.rstrip().endswith("ValueError: boom")
