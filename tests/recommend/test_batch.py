"""Batch scoring equals per-customer recommendations, in chunks, for Parquet and CSV."""

import numpy as np
import pandas as pd
import pytest

from finrec.recommend.batch import score_dataset
from finrec.recommend.recommender import Recommender


@pytest.fixture(scope="module")
def rec(trained, small_dataset):
    return Recommender(trained, small_dataset)


@pytest.mark.parametrize(
    "filters, suffix",
    [
        (None, ".parquet"),
        ("conservative", ".csv"),
        ({"include_categories": ["investment_fund", "pension"]}, ".parquet"),
    ],
)
def test_batch_equals_single_requests(rec, small_data_dir, tmp_path, filters, suffix):
    out = tmp_path / f"top{suffix}"
    customers, rows = score_dataset(rec, small_data_dir, out, k=4, filters=filters, chunk_rows=333)
    assert customers == len(rec.known_customers)
    table = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out, dtype={"customer_id": str})
    assert len(table) == rows
    for cid in rec.known_customers.customer_id.sample(40, random_state=0):
        single = rec.recommend(cid, k=4, filters=filters)
        batch = table[table.customer_id == cid].sort_values("rank")
        assert list(batch.product_id) == [i.product_id for i in single.items]
        np.testing.assert_allclose(batch.score, [i.score for i in single.items], atol=1e-5)


def test_rewrite_replaces_output_atomically(rec, small_data_dir, tmp_path):
    out = tmp_path / "top.parquet"
    score_dataset(rec, small_data_dir, out, k=2)
    first = pd.read_parquet(out)
    score_dataset(rec, small_data_dir, out, k=3, chunk_rows=1000)
    assert pd.read_parquet(out)["rank"].max() == 3 > first["rank"].max()
    assert [p.name for p in tmp_path.iterdir()] == ["top.parquet"]


def test_same_output_whatever_the_threads_and_holdings_order(rec, small_data_dir, tmp_path):
    """The fast path for holdings listed in customer order and the hash lookup for any other
    order, and one or several worker threads, all write the same rows."""
    import shutil

    import pyarrow.parquet as pq

    reference = tmp_path / "reference.parquet"
    score_dataset(rec, small_data_dir, reference, k=4, chunk_rows=250, workers=1)
    expected = pq.read_table(reference)
    assert expected.schema.field("customer_id").type == "string"  # plain text, not a dictionary
    assert expected.schema.field("product_id").type == "string"

    shuffled = tmp_path / "shuffled"
    shutil.copytree(small_data_dir, shuffled)
    holdings = pd.read_parquet(shuffled / "holdings.parquet")
    holdings.sample(frac=1.0, random_state=1).to_parquet(shuffled / "holdings.parquet", index=False)
    for data_dir, workers in [(small_data_dir, 3), (shuffled, 1), (shuffled, 2)]:
        out = tmp_path / f"top-{data_dir.name}-{workers}.parquet"
        score_dataset(rec, data_dir, out, k=4, chunk_rows=250, workers=workers)
        assert pq.read_table(out).equals(expected)


def test_probabilities_come_from_the_ranking_pass(rec, small_data_dir, tmp_path, monkeypatch):
    """With --probabilities each chunk goes through the customer tower once (the calibration reads
    the ranking's embeddings), and gives what the full probability row gives."""
    context = rec.context(rec.known_customers, rec.dataset.holdings)
    embedded = []
    embed = rec.embed

    def counting(ctx, workers=None):
        embedded.append(len(ctx.ids))
        return embed(ctx, workers)

    monkeypatch.setattr(rec, "embed", counting)
    out = tmp_path / "top.parquet"
    customers, _ = score_dataset(rec, small_data_dir, out, k=3, chunk_rows=500, probabilities=True)
    monkeypatch.undo()
    assert sum(embedded) == customers - int(context.attributes["objected"].sum())  # each one embedded once
    table = pd.read_parquet(out)
    full = rec.probabilities(context)
    row = {cid: i for i, cid in enumerate(context.ids)}
    cols = {pid: j for j, pid in enumerate(rec.pipeline.product_ids_)}
    expected = full[table.customer_id.map(row).to_numpy(), table.product_id.map(cols).to_numpy()]
    np.testing.assert_allclose(table.probability, expected, atol=1e-5)
