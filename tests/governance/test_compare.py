"""Paired bootstrap of metric differences: the pure parts against naive loops, then the command."""

from __future__ import annotations

import json

import numpy as np
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
    assert "ndcg@5" in capsys.readouterr().out
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
            ]
        )
        == 0
    )
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
