"""Paired bootstrap of metric differences: the pure parts against naive loops, then the command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from finrec.cli import main
from finrec.evaluate.metrics import summarize
from finrec.governance import compare as C


def test_per_customer_metrics_average_to_summarize():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(300, 12))
    relevant = rng.random((300, 12)) < 0.15
    excluded = (rng.random((300, 12)) < 0.2) & ~relevant
    relevant[:20] = False  # customers with nothing to find are skipped
    rows, per_customer = C.per_customer_metrics(scores, relevant, excluded, k=5)
    expected = summarize(scores, relevant, excluded, k=5)
    assert len(rows) == expected["customers"] and rows.min() >= 20
    for key, values in per_customer.items():
        assert values.mean() == pytest.approx(expected[key], rel=1e-12), key


def test_resample_means_equal_a_naive_loop():
    rng = np.random.default_rng(1)
    d = rng.normal(size=50)
    indices = rng.integers(0, 50, size=(30, 50))
    naive = [sum(d[j] for j in row) / len(row) for row in indices]
    assert C.resample_means(d, indices) == pytest.approx(naive, rel=1e-12)


def test_paired_bootstrap():
    a = np.array([0.2, 0.5, 0.1, 0.9])
    row = C.paired_bootstrap(a, a + 0.1, np.random.default_rng(0), resamples=500)
    # a constant difference: every resample has the same mean
    assert (row["difference"], row["low"], row["high"], row["share_better"]) == pytest.approx((0.1, 0.1, 0.1, 1.0))
    assert C.verdict(row) == "better"

    rng = np.random.default_rng(2)
    base = rng.random(4000)
    noise = rng.normal(0.0, 0.2, size=4000)
    row = C.paired_bootstrap(base, base + 0.01 + noise, np.random.default_rng(3), resamples=2000)
    # the interval is about the normal one: difference +- 1.96 sd / sqrt(n)
    half = 1.96 * (0.01 + noise).std() / np.sqrt(4000)
    assert row["high"] - row["low"] == pytest.approx(2 * half, rel=0.1)
    assert row["low"] < row["difference"] < row["high"]
    # seeded: the same seed gives the same interval
    again = C.paired_bootstrap(base, base + 0.01 + noise, np.random.default_rng(3), resamples=2000)
    assert again == row
    assert C.verdict({"low": -0.1, "high": 0.2}) == "no clear difference"
    assert C.verdict({"low": -0.3, "high": -0.1}) == "worse"
    with pytest.raises(ValueError):
        C.paired_bootstrap(a, a[:2], np.random.default_rng(0))


def test_every_metric_is_bootstrapped_on_the_same_resamples():
    """One draw of customers serves every metric (each metric drew its own: six draws of 1.8M
    customers' indices were most of compare's minutes at a bank's size). A metric that is twice
    another has, on the same resamples, exactly twice its interval."""
    rng = np.random.default_rng(5)
    base, noise = rng.random(701), rng.normal(0, 0.05, 701)
    a = {"one": base, "two": 2 * base}
    b = {"one": base + noise, "two": 2 * (base + noise)}
    rows = C.paired_bootstraps(a, b, np.random.default_rng(9), resamples=300)
    assert rows["two"]["low"] == pytest.approx(2 * rows["one"]["low"], rel=1e-12)
    assert rows["two"]["high"] == pytest.approx(2 * rows["one"]["high"], rel=1e-12)
    assert rows["two"]["share_better"] == rows["one"]["share_better"]
    # the first metric's row is the one-metric bootstrap's with the same generator
    assert rows["one"] == C.paired_bootstrap(base, base + noise, np.random.default_rng(9), resamples=300)
    with pytest.raises(ValueError, match="the same metrics"):
        C.paired_bootstraps(a, {"one": base}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="1-D of the same length"):
        C.paired_bootstraps(a, {"one": base, "two": base[:5]}, np.random.default_rng(0))


def test_the_bootstrap_draws_bounded_chunks_and_the_same_resamples(monkeypatch):
    # 200 resamples of 1.8M customers at a time drew 2.8 GB of indices and gathered 2.8 GB more:
    # the draws now come a few rows at a time, and are the draws of one 200-row call.
    monkeypatch.setattr(C, "_CHUNK_INDICES", 10_000)
    n, resamples = 3_001, 450
    rng = np.random.default_rng(5)
    a, b = rng.random(n), rng.random(n)
    drawn = []

    class Recording:
        def __init__(self, seed):
            self.rng = np.random.default_rng(seed)

        def integers(self, *args, size, **kwargs):
            drawn.append(size[0] * size[1])
            return self.rng.integers(*args, size=size, **kwargs)

    row = C.paired_bootstrap(a, b, Recording(3), resamples=resamples)
    assert max(drawn) <= 10_000
    reference = np.random.default_rng(3)  # the former draw: int64, 200 resamples a call
    d = b - a
    means = np.concatenate(
        [d[reference.integers(0, n, size=(min(200, resamples - s), n))].mean(axis=1) for s in range(0, resamples, 200)]
    )
    low, high = np.quantile(means, [0.025, 0.975])
    assert (row["low"], row["high"], row["share_better"]) == (low, high, (means > 0).mean())


def test_pairing_narrows_the_interval():
    """Customers differ far more than the models do: pairing removes the customers' variation."""
    rng = np.random.default_rng(4)
    customers = rng.random(2000)
    a = customers + rng.normal(0, 0.01, 2000)
    b = customers + 0.005 + rng.normal(0, 0.01, 2000)
    row = C.paired_bootstrap(a, b, np.random.default_rng(0), resamples=1000)
    unpaired_half = 1.96 * np.sqrt(a.var() / 2000 + b.var() / 2000)
    assert row["high"] - row["low"] < unpaired_half / 5
    assert C.verdict(row) == "better"


def test_compare_command(model_dir, small_data_dir, tmp_path, capsys):
    out = tmp_path / "compare.json"
    assert (
        main(
            [
                "compare",
                "--champion",
                str(model_dir),
                "--challenger",
                str(model_dir),
                "--data",
                str(small_data_dir),
                "--resamples",
                "200",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["customers"] > 100
    for row in result["metrics"].values():  # a model against itself: no difference at all
        assert row["difference"] == 0 and row["low"] == row["high"] == 0 and row["verdict"] == "no clear difference"
    printed = capsys.readouterr()
    assert "ndcg@5" in printed.out
    # said, not left for the reader to take the zeros as a finding (a tester)
    assert "the same model (the same files): every difference is 0" in printed.err
    root = tmp_path / "reg"
    assert main(["models", "add", "--root", str(root), "--model", str(model_dir), "--promote"]) == 0
    assert (
        main(
            [
                "compare",
                "--root",
                str(root),
                "--challenger",
                "v0001",
                "--data",
                str(small_data_dir),
                "--resamples",
                "50",
                "--k",
                "100",
            ]
        )
        == 0
    )
    assert "--k 100 is at least the" in capsys.readouterr().err
    assert main(["compare", "--root", str(root), "--challenger", "v0007", "--data", str(small_data_dir)]) == 2


def test_a_challenger_without_a_product_is_graded_on_the_same_task():
    from types import SimpleNamespace

    import pandas as pd

    class Stub:
        """A model that knows ``products`` and scores them ``points`` for every customer."""

        def __init__(self, products, points):
            self.pipeline = SimpleNamespace(product_ids_=list(products))
            self.points = np.asarray(points, dtype="float32")

        def score(self, customers, holdings, history):
            return np.tile(self.points, (len(customers), 1))

    # 30 customers adopted A, 10 adopted B. The challenger was trained without A.
    ids = [f"c{i}" for i in range(40)]
    dataset = SimpleNamespace(
        schema=SimpleNamespace(customers=SimpleNamespace(id="customer_id")),
        customers=pd.DataFrame({"customer_id": ids}),
        interactions=pd.DataFrame({"customer_id": ids, "product_id": ["A"] * 30 + ["B"] * 10}),
        holdings=pd.DataFrame({"customer_id": [], "product_id": []}),
        holdings_history=None,
    )
    champion = Stub(["A", "B", "C"], [3, 2, 1])
    challenger = Stub(["B", "C"], [2, 1])
    result = C.compare_models(champion, challenger, dataset, k=5, resamples=200)
    # Each was graded on its own catalogue: the A adopters left the challenger's task, and on
    # the 10 B adopters it looked "better" (nDCG 1.0 against 0.63).
    assert result["customers"] == 40
    ndcg = result["metrics"]["ndcg@5"]
    assert ndcg["champion"] == pytest.approx((30 + 10 / np.log2(3)) / 40)
    assert ndcg["challenger"] == pytest.approx(10 / 40)  # an A it cannot rank is never a hit
    assert ndcg["verdict"] == "worse" and result["metrics"]["mrr"]["challenger"] == pytest.approx(0.25)
    assert result["catalogues"] == {"champion_only": ["A"], "challenger_only": []}
    assert "only the champion knows 1 product(s) (A)" in C.format_comparison(result)


def test_an_adoption_no_ranker_knows_is_a_miss_for_both_as_evaluate_grades_it():
    """5 customers adopted Z, a product launched after both models: they stay in the task (as in
    ``evaluate``), at 0 for both; they were dropped, and compare's means were not evaluate's."""
    from types import SimpleNamespace

    import pandas as pd

    ids = [f"c{i}" for i in range(45)]
    dataset = SimpleNamespace(
        schema=SimpleNamespace(customers=SimpleNamespace(id="customer_id", consent=None)),
        customers=pd.DataFrame({"customer_id": ids}),
        interactions=pd.DataFrame({"customer_id": ids, "product_id": ["A"] * 30 + ["B"] * 10 + ["Z"] * 5}),
        holdings=pd.DataFrame({"customer_id": [], "product_id": []}),
        holdings_history=None,
    )

    class Stub:
        pipeline = SimpleNamespace(product_ids_=["A", "B", "C"])

        def score(self, customers, holdings, history):
            return np.tile(np.array([3, 2, 1], dtype="float32"), (len(customers), 1))

    result = C.compare_models(Stub(), Stub(), dataset, k=5, resamples=50)
    assert result["customers"] == 45
    assert result["metrics"]["ndcg@5"]["champion"] == pytest.approx((30 + 10 / np.log2(3)) / 45)
    assert result["catalogues"] == {"champion_only": [], "challenger_only": []}


def test_per_customer_unrankable_pairs_are_never_hits():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(200, 8))
    relevant = rng.random((200, 8)) < 0.2
    never = rng.random(8) < 0.3
    # a [P] mask and the same mask for every customer agree
    one = C.per_customer_metrics(scores, relevant, None, k=3, unrankable=never)[1]
    every = C.per_customer_metrics(scores, relevant, None, k=3, unrankable=np.tile(never, (200, 1)))[1]
    assert all(np.array_equal(one[key], every[key]) for key in one)
    # per customer: a pair it cannot rank is a miss even when ranked first; the others are untouched
    first = np.argmax(scores, axis=1)
    pairs = np.zeros((200, 8), dtype=bool)
    pairs[np.arange(200), first] = True
    rows, hit = C.per_customer_metrics(scores, relevant, None, k=1, unrankable=pairs)
    assert hit["hit_rate@1"].sum() == 0 and len(rows) == int(relevant.any(axis=1).sum())


# ------------------------------------------------------------------------------------ a scores seat


def model_scores(trained, dataset, top: int | None = None) -> pd.DataFrame:
    """``customer_id, product_id, score`` of ``trained`` for every customer of ``dataset`` and
    every product of its catalogue, as a bank would export its own model's; with ``top``, the
    ``customer_id, product_id, rank`` of each customer's best ``top`` products not held."""
    from finrec.data.ids import as_arrow_text
    from finrec.features import link_matrix

    customers = dataset.customers
    scores = trained.score(customers, dataset.holdings, dataset.holdings_history).astype("float64")
    ids = customers["customer_id"].to_numpy()
    products = np.array([str(p) for p in trained.pipeline.product_ids_], dtype=object)
    n, p = scores.shape
    if top is None:
        return pd.DataFrame(
            {"customer_id": np.repeat(ids, p), "product_id": np.tile(products, n), "score": scores.ravel()}
        )
    held = link_matrix(ids, as_arrow_text(list(products)), dataset.holdings)
    best = np.argsort(-np.where(held, -np.inf, scores), axis=1, kind="stable")[:, :top]
    return pd.DataFrame(
        {
            "customer_id": np.repeat(ids, top),
            "product_id": products[best].ravel(),
            "rank": np.tile(np.arange(1, top + 1), n),
        }
    )


def test_a_file_of_the_models_own_scores_ties_with_it(trained, small_dataset):
    from finrec.data.compliance import without_objections
    from finrec.data.scores import ScoresFile
    from finrec.evaluate.report import evaluate

    theirs = ScoresFile.from_frame(model_scores(trained, small_dataset), "theirs.csv")
    result = C.compare_models(theirs, trained, small_dataset, k=5, resamples=200)
    # with a scores seat the customers who objected are left out, as evaluate --fairness leaves them
    alone = evaluate(trained, without_objections(small_dataset)[0], k=5)["model"]
    assert result["customers"] == alone["customers"] and result["objected_left_out"] > 0
    for key, row in result["metrics"].items():
        assert row["champion"] == row["challenger"] == pytest.approx(alone[key], rel=1e-12), key
        assert row["difference"] == row["low"] == row["high"] == 0 and row["verdict"] == "no clear difference"
    seat = result["seats"]["champion"]
    assert seat["kind"] == "scores" and seat["column"] == "score" and result["seats"]["challenger"] == {"kind": "model"}
    coverage = seat["coverage"]
    assert coverage["pairs_without_score"] == coverage["adoptions_without_score"] == 0
    assert coverage["customers_without_scores"] == 0 and coverage["held_pairs_scored"] > 0
    text = C.format_comparison(result)
    assert "the champion is the scores file theirs.csv (by score)" in text and "partial ranking" not in text


def test_a_file_of_random_scores_is_worse(trained, small_dataset):
    from finrec.data.scores import ScoresFile

    frame = model_scores(trained, small_dataset)
    frame["score"] = np.random.default_rng(0).random(len(frame))
    result = C.compare_models(trained, ScoresFile.from_frame(frame), small_dataset, k=5, resamples=500)
    for key in ("ndcg@5", "hit_rate@5", "mrr"):
        row = result["metrics"][key]
        assert row["high"] < 0 and row["verdict"] == "worse", key


def test_a_top5_file_grades_as_the_full_ranking_at_5_and_says_it_is_partial(trained, small_dataset):
    from finrec.data.scores import ScoresFile

    top5 = ScoresFile.from_frame(model_scores(trained, small_dataset, top=5), "top5.parquet")
    result = C.compare_models(trained, top5, small_dataset, k=5, resamples=200)
    for key in ("ndcg@5", "map@5", "precision@5", "recall@5", "hit_rate@5"):
        row = result["metrics"][key]
        assert row["challenger"] == row["champion"] and row["difference"] == 0, key
    # beyond the 5 it lists, every adoption is a miss: the file's MRR is lower, never higher
    assert result["metrics"]["mrr"]["challenger"] < result["metrics"]["mrr"]["champion"]
    coverage = result["seats"]["challenger"]["coverage"]
    assert coverage["most_per_customer"] == 5 and coverage["held_pairs_scored"] == 0
    assert coverage["pairs"] - coverage["pairs_without_score"] == 5 * coverage["customers"]
    assert 0 < coverage["adoptions_without_score"] < coverage["adoptions"]
    text = C.format_comparison(result)
    assert "a partial ranking (at most 5 product(s) per customer)" in text, text
    assert "@K metrics with K <= 5 only; MRR, which reads the whole ranking, is pessimistic" in text
    # a product no customer's top 5 holds is one the file never scores, not one it "does not know"
    assert "only the champion knows" not in text
    if result["catalogues"]["champion_only"]:
        assert "the challenger's file scores none of" in text
    longer = "\n".join(C.format_coverage("challenger", result["seats"]["challenger"], 10))
    assert "and so are the @10 metrics (k 10 > 5)" in longer


def test_with_a_scores_seat_the_customers_who_objected_are_left_out_for_both(trained, small_dataset):
    """A bank's export, like ``finrec score``, lacks the customers who objected to profiling.
    Graded, each pitted the model against a 0 for the file (the model's own export read worse
    than the model); with a scores seat they are left out for both seats, and counted."""
    from finrec.data.compliance import customer_profile
    from finrec.data.scores import ScoresFile

    objected = customer_profile(small_dataset.customers, small_dataset.schema.customers)["objected"]
    said_no = set(small_dataset.customers["customer_id"][objected])
    frame = model_scores(trained, small_dataset)
    theirs = ScoresFile.from_frame(frame[~frame["customer_id"].isin(said_no)])
    result = C.compare_models(trained, theirs, small_dataset, k=5, resamples=100)
    evaluated = said_no & set(small_dataset.interactions["customer_id"])
    assert result["objected_left_out"] == len(evaluated) > 0
    assert result["seats"]["challenger"]["coverage"]["customers_without_scores"] == 0
    for row in result["metrics"].values():
        assert row["difference"] == 0
    assert f"{len(evaluated)} customer(s) with adoptions who objected to profiling are left out" in C.format_comparison(
        result
    )
    # two models: graded on every customer, as evaluate grades them
    assert C.compare_models(trained, trained, small_dataset, k=5, resamples=10)["objected_left_out"] == 0
