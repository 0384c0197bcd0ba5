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


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_history_is_read_per_chunk_and_ranks_as_in_memory(tmp_path, fmt, monkeypatch):
    """A model with history features scores a bank with a past in tiny chunks, each reading only
    its customers' history (``HistoryByChunk``), and ranks every customer exactly as the whole
    table in memory does, also when most customers lack the latest snapshot (a chunk's own latest
    month is then older than the table's, which the features must not take as "now")."""
    import keras

    from finrec.config import ModelConfig
    from finrec.data import schema as S
    from finrec.data.io import load_dataset, read_id_column, write_dataset
    from finrec.data.synthetic import GeneratorSettings, generate
    from finrec.features import FeaturePipeline
    from finrec.model.two_tower import build_two_tower
    from finrec.recommend.batch import HistoryByChunk, RowOfId
    from finrec.training.train import TrainedModel

    tables = generate(GeneratorSettings(n_customers=300, seed=4, months=4, ground_truth=False))
    history = tables[S.HOLDINGS_HISTORY]
    latest = history[S.AS_OF] == history[S.AS_OF].max()
    first = history[S.CUSTOMER_ID][latest].iloc[0]
    # Shuffled and read 50 rows at a time: each batch meets the products in its own order, and
    # the scratch files' product codes must still name the same products in every batch.
    history = history[~latest | (history[S.CUSTOMER_ID] == first)]
    tables[S.HOLDINGS_HISTORY] = history.sample(frac=1.0, random_state=0).reset_index(drop=True)
    monkeypatch.setattr(HistoryByChunk, "BATCH_ROWS", 50)
    folder = write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / "bank", fmt=fmt)
    data = load_dataset(folder)
    pipeline = FeaturePipeline(data.schema).fit(data)
    assert pipeline.history_ is not None
    config = ModelConfig(customer_widths=(16,), product_widths=(16,), embedding_dim=8)
    keras.utils.set_random_seed(0)
    model = build_two_tower(pipeline, pipeline.transform_products(data.products), config, 0.0)
    trained = TrainedModel(model, pipeline, config, data.products)

    # Each chunk's slice is exactly its customers' history.
    ids = read_id_column(next(folder.glob("customers.*")), S.CUSTOMER_ID)
    by_chunk = HistoryByChunk(next(folder.glob("holdings_history.*")), RowOfId(ids), 7, tmp_path / "work")
    part = by_chunk.slice(14, 21)
    want = data.holdings_history[data.holdings_history[S.CUSTOMER_ID].isin(ids[14:21].to_pylist())]
    columns = [S.CUSTOMER_ID, S.PRODUCT_ID, S.AS_OF]
    assert len(want) > 0 and list(part.columns) == columns
    assert sorted(map(tuple, part[columns].astype(str).to_numpy())) == sorted(
        map(tuple, want[columns].astype(str).to_numpy())
    )
    assert part[S.AS_OF].dtype == want[S.AS_OF].dtype
    # A run of rows across two buckets, and one past every customer: the same rows, or none.
    by_bucket = HistoryByChunk(next(folder.glob("holdings_history.*")), RowOfId(ids), 7, tmp_path / "b", max_buckets=3)
    assert by_bucket.rows_per_bucket > 7
    edge = by_bucket.rows_per_bucket - 3
    across = by_bucket.slice(edge, edge + 7)
    near = data.holdings_history[data.holdings_history[S.CUSTOMER_ID].isin(ids[edge : edge + 7].to_pylist())]
    assert len(across) == len(near) > 0 and set(across[S.CUSTOMER_ID]) == set(near[S.CUSTOMER_ID])
    assert len(by_bucket.slice(len(ids), len(ids) + 7)) == 0

    out = tmp_path / "top.parquet"
    score_dataset(Recommender(trained), folder, out, k=3, chunk_rows=7, workers=2)
    top = pd.read_parquet(out)
    full = Recommender(trained, data)
    ranking = full.rank(full._known, 3, None)
    want_top = {
        (cid, r + 1): (pipeline.product_ids_[i], s)
        for cid, row, srow in zip(full._known.ids, ranking.index, ranking.scores)
        for r, (i, s) in enumerate(zip(row, srow))
        if i >= 0
    }
    assert len(top) == len(want_top)
    for cid, rank, pid, score in top[["customer_id", "rank", "product_id", "score"]].itertuples(index=False):
        assert want_top[(cid, rank)][0] == pid
        assert score == pytest.approx(want_top[(cid, rank)][1], abs=1e-5)

    # Without chunk_rows, a model with history takes the smaller history chunk (its inputs are
    # a products x events block per customer), and ranks the same.
    from finrec.recommend import batch

    sizes = []
    chunks = batch.iter_customer_chunks
    monkeypatch.setattr(batch, "HISTORY_CHUNK_ROWS", 11)
    monkeypatch.setattr(batch, "iter_customer_chunks", lambda *a: sizes.append(a[2]) or chunks(*a))
    score_dataset(Recommender(trained), folder, tmp_path / "default.parquet", k=3, workers=2)
    assert sizes == [11]
    again = pd.read_parquet(tmp_path / "default.parquet")
    assert again[["customer_id", "rank", "product_id"]].equals(top[["customer_id", "rank", "product_id"]])
    np.testing.assert_allclose(again["score"], top["score"], atol=1e-6)  # BLAS blocks differ by chunk


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


@pytest.mark.parametrize("order", ["export", "shuffled", "gaps", "strays"])
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_holdings_by_row_read_in_batches_is_the_holdings_matrix(small_dataset, tmp_path, monkeypatch, order, fmt):
    # The scorer keeps 6 bytes a holding, read batch by batch (7 rows here, so customers' links
    # straddle batches): every slice must be the holdings matrix of its customers, whatever the
    # file's order, with customers who hold nothing and links to unknown customers or products.
    import pyarrow as pa

    from finrec.data.io import write_table
    from finrec.features import FeaturePipeline
    from finrec.recommend import batch
    from finrec.recommend.batch import HoldingsByRow

    built = []
    monkeypatch.setattr(batch, "RowOfId", lambda ids, _real=batch.RowOfId: built.append(1) or _real(ids))

    pipeline = FeaturePipeline(small_dataset.schema).fit(small_dataset)
    ids = small_dataset.customers["customer_id"].astype(str).to_numpy()
    position = {c: i for i, c in enumerate(ids)}
    holdings = small_dataset.holdings[["customer_id", "product_id"]].astype(str)
    holdings = holdings.iloc[np.argsort([position[c] for c in holdings["customer_id"]], kind="stable")]
    rng = np.random.default_rng(3)
    if order == "shuffled":
        holdings = holdings.sample(frac=1.0, random_state=3)
    elif order == "gaps":  # every fifth customer holds nothing
        holdings = holdings[~holdings["customer_id"].isin(ids[::5])]
    elif order == "strays":
        strays = pd.DataFrame(
            {"customer_id": ["nobody", ids[4], ids[9]], "product_id": ["CUR_BASIC", "NO_SUCH", "TD_6M"]}
        )
        holdings = pd.concat([holdings.iloc[:40], strays, holdings.iloc[40:]], ignore_index=True)
    path = write_table(holdings.reset_index(drop=True), tmp_path / f"holdings.{fmt}")
    by_row = HoldingsByRow(pipeline, pa.array(ids), path, batch_rows=7)
    assert by_row.rows.dtype == np.int32 and by_row.cols.dtype == np.int16
    # Only links far from the file's order, or to an unknown customer, need the lookup of every
    # id (a CSV reads in blocks of 1 MB: this whole file, which its window then covers).
    assert bool(built) == (order == "strays" or (order == "shuffled" and fmt == "parquet"))
    want = pipeline.holdings_matrix(ids, holdings)
    assert want.sum() > 100
    for start in sorted(rng.choice(len(ids) - 50, 5, replace=False)):
        np.testing.assert_array_equal(by_row.slice(start, start + 50), want[start : start + 50])
    np.testing.assert_array_equal(by_row.slice(0, len(ids)), want)
    assert not HoldingsByRow(pipeline, pa.array(ids), None).slice(0, 10).any()


def test_holdings_in_the_export_order_never_hash_the_ids(small_dataset, tmp_path, monkeypatch):
    import pyarrow as pa

    from finrec.data.io import write_table
    from finrec.features import FeaturePipeline
    from finrec.recommend import batch

    pipeline = FeaturePipeline(small_dataset.schema).fit(small_dataset)
    ids = small_dataset.customers["customer_id"].astype(str).to_numpy()
    position = {c: i for i, c in enumerate(ids)}
    holdings = small_dataset.holdings[["customer_id", "product_id"]].astype(str)
    holdings = holdings.iloc[np.argsort([position[c] for c in holdings["customer_id"]], kind="stable")]
    path = write_table(holdings.reset_index(drop=True), tmp_path / "holdings.parquet")
    monkeypatch.setattr(batch, "RowOfId", lambda *a: pytest.fail("the sorted-hash lookup was built"))
    by_row = batch.HoldingsByRow(pipeline, pa.array(ids), path, batch_rows=11)
    np.testing.assert_array_equal(by_row.slice(0, len(ids)), pipeline.holdings_matrix(ids, holdings))


def test_the_datas_products_table_is_what_the_filters_read(rec, small_data_dir, updated_bank, raise_the_bars, tmp_path):
    """A catalogue updated after training (a fund's risk level raised, a mortgage's minimum
    income out of reach) is what the rules read: the model's saved copy offered the fund to
    customers below its new level and the mortgage to everybody (a tester's finding, 2026-12)."""
    tolerance = rec.known_customers.set_index("customer_id")["risk_tolerance"]
    runs = {}
    for name, data in (("saved", small_data_dir), ("updated", updated_bank(raise_the_bars))):
        stats: dict = {}
        score_dataset(rec, data, tmp_path / f"{name}.parquet", k=25, stats=stats)
        top = pd.read_parquet(tmp_path / f"{name}.parquet")
        runs[name] = (top, top.customer_id.map(tolerance), stats.get("catalogue"))
    top, tol, changes = runs["saved"]
    assert ((top.product_id == "FUND_BOND") & (tol < 7)).any() and (top.product_id == "MORT_FIXED25").any()
    top, tol, changes = runs["updated"]
    assert not ((top.product_id == "FUND_BOND") & (tol < 7)).any()
    assert "MORT_FIXED25" not in set(top.product_id)
    assert changes.notes() == []  # the same products, only their attributes changed


def test_an_unchanged_catalogue_scores_as_the_model_s_own(trained, small_data_dir, tmp_path):
    """The data's products table, equal to the model's, changes no row: the same file as a data
    directory without one (the model's catalogue), and the run says it found no difference."""
    import shutil

    from finrec.data import schema as S
    from finrec.data.io import find_table

    bare = tmp_path / "customers-only"
    shutil.copytree(small_data_dir, bare)
    find_table(bare, S.PRODUCTS).unlink()
    stats: dict = {}
    score_dataset(Recommender(trained), small_data_dir, tmp_path / "with.parquet", k=5, stats=stats)
    score_dataset(Recommender(trained), bare, tmp_path / "without.parquet", k=5)
    assert (tmp_path / "with.parquet").read_bytes() == (tmp_path / "without.parquet").read_bytes()
    assert stats["catalogue"] is not None and stats["catalogue"].notes() == []


def test_the_scorers_history_reader_refuses_rows_dated_past_the_rest(tmp_path):
    """``finrec score`` reads the history in batches, not through the loader: the same rule
    (``check_latest_snapshot``; 50 rows mistyped as 2030 had changed 38% of a bank's top 5)."""
    import pyarrow as pa

    from finrec.data import schema as S
    from finrec.errors import DataError
    from finrec.recommend.batch import HistoryByChunk, RowOfId

    ids = [f"C{i}" for i in range(40)]
    dates = ["2025-11-30"] * 40 + ["2025-12-31"] * 40 + ["2030-12-31"] * 3
    history = pd.DataFrame({S.CUSTOMER_ID: ids + ids + ids[:3], S.PRODUCT_ID: "P1", S.AS_OF: pd.to_datetime(dates)})
    path = tmp_path / "holdings_history.parquet"
    history.to_parquet(path, index=False)
    with pytest.raises(DataError, match=r"the latest snapshot month\(s\), 2030-12, hold 3 row"):
        HistoryByChunk(path, RowOfId(pa.array(ids)), 8, tmp_path / "work")
    history[:80].to_parquet(path, index=False)
    assert HistoryByChunk(path, RowOfId(pa.array(ids)), 8, tmp_path / "ok").reference == 2025 * 12 + 11


def test_a_customer_repeated_in_another_chunk_is_refused_not_scored_twice(rec, small_tables, tmp_path):
    """Chunks were validated one at a time: an id repeated 7 rows later, in the next chunk, was
    scored twice, its top k written twice (a tester)."""
    from finrec.data import schema as S
    from finrec.data.io import write_dataset
    from finrec.errors import DataError

    customers = small_tables["customers"].iloc[:10]
    tables = {**small_tables, "customers": pd.concat([customers, customers.iloc[[0]]], ignore_index=True)}
    tables["holdings"] = small_tables["holdings"][small_tables["holdings"].customer_id.isin(customers.customer_id)]
    tables["interactions"] = small_tables["interactions"].iloc[:0]
    tables.pop("ground_truth", None)
    data = write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / "bank", fmt="csv")
    out = tmp_path / "top.csv"
    first = customers.customer_id.iloc[0]
    with pytest.raises(DataError, match=f"customers.csv: column 'customer_id' must be unique; 1 id.*'{first}'"):
        score_dataset(rec, data, out, k=3, chunk_rows=7)
    assert not out.exists()


def test_a_rule_named_after_training_is_refused_not_dropped(rec, trained, updated_bank, tmp_path):
    """Data whose schema.yaml names a rule the model's schema lacks (here a negative target
    market on knowledge that puts every customer outside FUND_BOND's market): ``score_dataset``
    and ``build_problem`` read the products and customers with the model's schema, so the rule
    was silently off and FUND_BOND offered to all, where ``finrec score`` and ``Recommender.load``
    refuse such data (a compliance tester, 2026-12)."""
    import yaml

    from finrec.data import schema as S
    from finrec.data.io import load_dataset
    from finrec.errors import FinrecError
    from finrec.plan.campaign import build_problem

    data = updated_bank(
        lambda p: p.assign(tm_negative_max_knowledge=np.where(p.product_id == "FUND_BOND", 9.0, np.nan))
    )
    schema = yaml.safe_load((data / S.SCHEMA_FILE).read_text())
    schema[S.PRODUCTS]["target_market"]["negative_knowledge"] = "tm_negative_max_knowledge"
    (data / S.SCHEMA_FILE).write_text(yaml.safe_dump(schema, sort_keys=False))
    with pytest.raises(FinrecError, match="negative_knowledge"):
        score_dataset(rec, data, tmp_path / "top.parquet", k=25)
    assert not (tmp_path / "top.parquet").exists()
    with pytest.raises(FinrecError, match="negative_knowledge"):
        build_problem(rec, data)
    with pytest.raises(FinrecError, match="negative_knowledge"):
        Recommender(trained, load_dataset(data))


def _with_holdings(data_dir, target, edit):
    """A copy of ``data_dir`` whose holdings (and products) ``edit(holdings, products)`` rewrote."""
    import shutil

    from finrec.data import schema as S
    from finrec.data.io import find_table, read_table, write_table

    shutil.copytree(data_dir, target)
    holdings_path, products_path = find_table(target, S.HOLDINGS), find_table(target, S.PRODUCTS)
    holdings, products = edit(
        read_table(holdings_path, ("customer_id", "product_id")), read_table(products_path, ("product_id",))
    )
    write_table(holdings, holdings_path)
    write_table(products, products_path)
    return target


HOLDING_ID_EDITS = {
    # A spreadsheet's lower case, a padded export: every holding named a product nobody lists.
    "products_written_otherwise": (
        lambda h, p: (h.assign(product_id=h.product_id.str.lower()), p),
        "product_id values that are not in products",
    ),
    "customers_written_otherwise": (
        lambda h, p: (h.assign(customer_id=h.customer_id.str.lower()), p),
        "customer_id values that are not in customers",
    ),
}


@pytest.mark.parametrize("case", HOLDING_ID_EDITS, ids=str)
def test_holdings_naming_unknown_ids_are_refused_not_skipped(rec, small_data_dir, tmp_path, case):
    """``score`` and ``plan`` skipped a holding whose customer or product id no table lists: with
    the ids written another way (``cur_basic``), every customer held nothing and was offered
    the products they hold (exit 0), where ``recommend`` and ``serve`` refuse the data (a
    compliance tester, 2026-12)."""
    from finrec.errors import DataError
    from finrec.plan.campaign import build_problem

    edit, fragment = HOLDING_ID_EDITS[case]
    data = _with_holdings(small_data_dir, tmp_path / "bank", edit)
    with pytest.raises(DataError, match=fragment):
        score_dataset(rec, data, tmp_path / "top.parquet", k=5)
    assert not (tmp_path / "top.parquet").exists()
    with pytest.raises(DataError, match=fragment):
        build_problem(rec, data)


def test_a_holding_of_a_product_only_the_data_lists_is_no_error(rec, small_data_dir, tmp_path):
    """A product launched since training (in the data's products table, not the model's) may be
    held: it cannot be offered, and its holdings are no typo."""
    from finrec.plan.campaign import build_problem

    def launch(holdings, products):
        new = products.iloc[[0]].assign(product_id="LAUNCHED")
        held = pd.DataFrame({"customer_id": holdings.customer_id.iloc[:3], "product_id": "LAUNCHED"})
        return pd.concat([holdings, held], ignore_index=True), pd.concat([products, new], ignore_index=True)

    data = _with_holdings(small_data_dir, tmp_path / "bank", launch)
    customers, _ = score_dataset(rec, data, tmp_path / "top.parquet", k=5)
    assert customers == len(rec.known_customers)
    assert "LAUNCHED" not in set(pd.read_parquet(tmp_path / "top.parquet").product_id)
    assert build_problem(rec, data).probability.shape[0] == customers
