"""Batch scoring on Ray Data gives the in-process scorer's rankings (local Ray, 2 CPUs)."""

from __future__ import annotations

import re

import pandas as pd
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _sorted(path) -> pd.DataFrame:
    frame = (
        pq.read_table(path).to_pandas()
        if path.is_file()
        else pd.concat(pq.read_table(p).to_pandas() for p in sorted(path.glob("*.parquet")))
    )
    return frame.sort_values(["customer_id", "rank"]).reset_index(drop=True)


@pytest.mark.slow
def test_ray_scoring_matches_local_scoring(local_ray, model_dir, small_data_dir, tmp_path):
    from finrec.artifacts import load_model_dir
    from finrec.recommend.batch import score_dataset
    from finrec.recommend.ray_engine import score_dataset_ray
    from finrec.recommend.recommender import Recommender

    local = tmp_path / "local.parquet"
    local_stats, ray_stats = {}, {}
    n_local, rows_local = score_dataset(
        Recommender(load_model_dir(model_dir).trained),
        small_data_dir,
        local,
        k=5,
        filters={"preset": "conservative"},
        probabilities=True,
        stats=local_stats,
    )
    on_ray = tmp_path / "ray.parquet"
    n_ray, rows_ray = score_dataset_ray(
        model_dir,
        small_data_dir,
        on_ray,
        k=5,
        filters={"preset": "conservative"},
        batch_rows=400,
        probabilities=True,
        stats=ray_stats,
    )
    assert (n_ray, rows_ray) == (n_local, rows_local)
    # Customers who objected: left out and counted by both engines alike.
    assert ray_stats["objected"] == local_stats["objected"] > 0
    # One file, in input order, the same rows (scores to float32 rounding of the same arithmetic).
    a, b = pq.read_table(local).to_pandas(), pq.read_table(on_ray).to_pandas()
    pd.testing.assert_frame_equal(a[["customer_id", "rank", "product_id"]], b[["customer_id", "rank", "product_id"]])
    assert (a["score"] - b["score"]).abs().max() < 1e-5
    assert (a["probability"] - b["probability"]).abs().max() < 1e-5 and a["probability"].gt(0).any()

    # A name without a table suffix: a directory of part files written by the workers.
    parts, parts_stats = tmp_path / "parts", {}
    score_dataset_ray(
        model_dir, small_data_dir, parts, k=5, filters={"preset": "conservative"}, batch_rows=400, stats=parts_stats
    )
    assert parts_stats["no_eligible"] == local_stats["no_eligible"]  # counted from the part files
    c, d = _sorted(parts), _sorted(local)
    pd.testing.assert_frame_equal(
        c[["customer_id", "rank", "product_id"]], d[["customer_id", "rank", "product_id"]], check_dtype=False
    )
    assert (c["score"] - d["score"]).abs().max() < 1e-5


@pytest.mark.slow
def test_ray_scores_csv_as_the_local_engine_does(local_ray, model_dir, small_tables, tmp_path):
    """A CSV customers table gives the local engine's rankings, on CSV and on Parquet alike.
    Customer ids with leading zeros only survive read as text: read as numbers they would
    no longer match the holdings, and held products would be recommended."""
    from finrec.artifacts import load_model_dir
    from finrec.data import schema as S
    from finrec.data.io import write_dataset
    from finrec.recommend.batch import score_dataset
    from finrec.recommend.ray_engine import score_dataset_ray
    from finrec.recommend.recommender import Recommender

    customers = small_tables["customers"]
    renamed = dict(zip(customers["customer_id"], (f"{i:07d}" for i in range(len(customers)))))
    tables = {
        name: (df.assign(customer_id=df["customer_id"].map(renamed)) if df is not None and "customer_id" in df else df)
        for name, df in small_tables.items()
    }
    csv_dir = write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / "csv", fmt="csv")
    parquet_dir = write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / "parquet")
    filters = {"preset": "conservative"}
    recommender = Recommender(load_model_dir(model_dir).trained)
    results = {}
    for name, engine, data in [
        ("local csv", "local", csv_dir),
        ("ray csv", "ray", csv_dir),
        ("local parquet", "local", parquet_dir),
    ]:
        out = tmp_path / f"{name.replace(' ', '-')}.parquet"
        if engine == "ray":
            counts = score_dataset_ray(model_dir, data, out, k=5, filters=filters, batch_rows=400)
        else:
            counts = score_dataset(recommender, data, out, k=5, filters=filters)
        results[name] = (counts, pq.read_table(out).to_pandas())
    (counts, a) = results["local csv"]
    assert counts[0] == len(customers)
    assert a["customer_id"].str.fullmatch(r"\d{7}").all() and a["customer_id"].iloc[0] == "0000000"
    held = set(zip(tables["holdings"]["customer_id"], tables["holdings"]["product_id"]))
    assert held and not held & set(zip(a["customer_id"], a["product_id"]))
    for name in ("ray csv", "local parquet"):
        other_counts, b = results[name]
        assert other_counts == counts, name
        pd.testing.assert_frame_equal(
            a[["customer_id", "rank", "product_id"]], b[["customer_id", "rank", "product_id"]]
        )
        assert (a["score"] - b["score"]).abs().max() < 1e-5, name


def test_ray_refuses_what_the_local_engine_refuses(local_ray, model_dir, small_tables, tmp_path):
    """Each Ray batch was validated alone: an id repeated in another batch was scored twice, a
    customers CSV of a header alone gave an empty output with exit 0, and an unknown preset
    killed every scoring actor in its constructor (ActorDiedError, not a FinrecError). The local
    engine refuses all three by name (a tester)."""
    from finrec.data import schema as S
    from finrec.data.io import write_dataset
    from finrec.errors import DataError, FinrecError
    from finrec.recommend.ray_engine import score_dataset_ray

    customers = small_tables["customers"].iloc[:10]
    tables = {
        "customers": pd.concat([customers, customers.iloc[[0]]], ignore_index=True),
        "products": small_tables["products"],
        "interactions": small_tables["interactions"].iloc[:0],
    }
    repeated = write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / "repeated", fmt="csv")
    out = tmp_path / "top.csv"
    with pytest.raises(DataError, match="must be unique; 1 id"):
        score_dataset_ray(model_dir, repeated, out, batch_rows=7)
    header_only = write_dataset({**tables, "customers": customers.iloc[:0]}, S.SYNTHETIC.schema(), tmp_path / "empty")
    (header_only / "customers.parquet").unlink()
    customers.iloc[:0].to_csv(header_only / "customers.csv", index=False)
    with pytest.raises(DataError, match="customers.csv.*the table is empty"):
        score_dataset_ray(model_dir, header_only, out)
    # The local engine's own words for a file separated by ';' (Ray's read named a missing id column).
    text = (header_only / "customers.csv").read_text()
    (header_only / "customers.csv").write_text(
        text.replace(",", ";") + customers.iloc[:2].to_csv(index=False, header=False, sep=";")
    )
    with pytest.raises(DataError, match="separated by ';'"):
        score_dataset_ray(model_dir, header_only, out)
    good = write_dataset({**tables, "customers": customers}, S.SYNTHETIC.schema(), tmp_path / "good")
    with pytest.raises(FinrecError, match="unknown preset 'cautious'"):
        score_dataset_ray(model_dir, good, out, filters={"preset": "cautious"})
    assert not out.exists()


def test_bad_data_on_ray_is_a_data_error_naming_the_batch_not_an_internal_error(
    local_ray, model_dir, small_tables, tmp_path
):
    """A value that is not a number (past the first rows) failed in a worker: Ray wrapped the DataError in its
    UserCodeException, and the CLI said "internal error: RayTaskError(UserCodeException)" with
    the remote traceback, exit 1; a holdings table without its customer_id column was a
    KeyError in every actor's constructor (a tester). The CLI exits 2 on the DataError."""
    from finrec.data import schema as S
    from finrec.data.io import write_dataset
    from finrec.errors import DataError
    from finrec.recommend.ray_engine import score_dataset_ray

    customers = small_tables["customers"].iloc[:1100].astype({"age": object})
    customers.loc[customers.index[1050], "age"] = "abc"
    tables = {
        "customers": customers,
        "products": small_tables["products"],
        "interactions": small_tables["interactions"].iloc[:0],
    }
    data = write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / "bad-age", fmt="csv")
    out = tmp_path / "top.csv"
    with pytest.raises(DataError) as caught:
        score_dataset_ray(model_dir, data, out, batch_rows=100)
    message = str(caught.value)
    # Ray cuts blocks as it likes: the batch's first id and the row in it must find the value.
    found = re.search(r"the Ray batch of \d+ rows from customer_id '(\w+)'.*e\.g\. row (\d+): 'abc'", message)
    assert found and "column 'age' must be numeric" in message and "\n" not in message, message
    start = customers.customer_id.tolist().index(found[1])
    assert customers.age.iloc[start + int(found[2]) - 1] == "abc"
    # In the first rows, which the driver checks before Ray starts: the local engine's message.
    early = write_dataset(
        {**tables, "customers": customers.iloc[1040:]}, S.SYNTHETIC.schema(), tmp_path / "early", fmt="csv"
    )
    with pytest.raises(DataError, match=r"customers.csv rows 1-60: column 'age' must be numeric.*row 11: 'abc'"):
        score_dataset_ray(model_dir, early, out)
    holdings = write_dataset(
        {**tables, "customers": customers.assign(age=40), "holdings": small_tables["holdings"].iloc[:5]},
        S.SYNTHETIC.schema(),
        tmp_path / "bad-holdings",
        fmt="csv",
    )
    (holdings / "holdings.csv").write_text("custid,product_id\nC1,CUR_BASIC\n")
    with pytest.raises(DataError, match="holdings.csv: missing column.*'customer_id'"):
        score_dataset_ray(model_dir, holdings, out)
    assert not out.exists()


@pytest.mark.slow
def test_ray_counts_customers_with_no_eligible_product_as_the_local_engine_does(
    local_ray, model_dir, small_data_dir, tmp_path
):
    """`score --engine ray --category mortgage` said it wrote for every customer ranked, while
    most had no eligible mortgage and no row (the local engine counts them apart since the
    twentieth session). Counted from the rows written (a directory of part files: in
    ``test_ray_scoring_matches_local_scoring``)."""
    from finrec.artifacts import load_model_dir
    from finrec.recommend.batch import score_dataset
    from finrec.recommend.ray_engine import score_dataset_ray
    from finrec.recommend.recommender import Recommender

    only = {"include_categories": ["mortgage"]}
    local_stats = {}
    score_dataset(
        Recommender(load_model_dir(model_dir).trained), small_data_dir, tmp_path / "l.csv", 5, only, stats=local_stats
    )
    written = pd.read_csv(tmp_path / "l.csv", dtype={"customer_id": str})["customer_id"].nunique()
    assert local_stats["no_eligible"] > 0 and written > 0
    ray_stats = {}
    n, _ = score_dataset_ray(model_dir, small_data_dir, tmp_path / "r.csv", 5, only, batch_rows=300, stats=ray_stats)
    assert ray_stats["no_eligible"] == local_stats["no_eligible"]
    assert n - ray_stats["objected"] - ray_stats["no_eligible"] == written


def test_customers_are_counted_across_batches_that_split_their_rows():
    """A batch of output rows may end inside a customer's rows: that customer counts once."""
    import pyarrow as pa

    from finrec.recommend.ray_engine import _count_runs

    count, last = 0, None
    for batch in (["a", "a", "b"], ["b", "b", "c"], [], ["c", "d", "d"], ["e"]):
        count, last = _count_runs(pa.chunked_array([pa.array(batch, pa.string())]), count, last)
    assert (count, last) == (5, "e")


def test_ray_refuses_holdings_naming_unknown_ids_as_the_local_engine_does(model_dir, small_data_dir, tmp_path):
    """The workers skipped a holding of a product no table lists (ids written another way,
    ``cur_basic``): every customer held nothing and was offered what they hold. The driver checks
    every row's ids before Ray starts, as the local engine does (a compliance tester, 2026-12)."""
    import shutil

    from finrec.data.io import read_table, write_table
    from finrec.errors import DataError
    from finrec.recommend.ray_engine import score_dataset_ray

    data = tmp_path / "bank"
    shutil.copytree(small_data_dir, data)
    holdings = read_table(data / "holdings.parquet", ("customer_id", "product_id"))
    write_table(holdings.assign(product_id=holdings.product_id.str.lower()), data / "holdings.parquet")
    with pytest.raises(DataError, match="product_id values that are not in products, e.g. .*'cur_basic'"):
        score_dataset_ray(model_dir, data, tmp_path / "top.parquet")
    assert not (tmp_path / "top.parquet").exists()


@pytest.mark.slow
def test_ray_scores_data_that_names_a_value_column_after_training(local_ray, model_dir, updated_bank, tmp_path):
    """A products value column (``finrec plan``'s money) named after training is no schema change
    for the local engine; the Ray driver compared the whole schema and refused the model."""
    import yaml

    from finrec.artifacts import load_model_dir
    from finrec.data import schema as S
    from finrec.recommend.batch import score_dataset
    from finrec.recommend.ray_engine import score_dataset_ray
    from finrec.recommend.recommender import Recommender

    data = updated_bank(lambda products: products.assign(margin=10.0))
    schema = yaml.safe_load((data / S.SCHEMA_FILE).read_text())
    schema[S.PRODUCTS]["value"] = "margin"
    (data / S.SCHEMA_FILE).write_text(yaml.safe_dump(schema, sort_keys=False))
    local, on_ray = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    score_dataset(Recommender(load_model_dir(model_dir).trained), data, local, k=3)
    score_dataset_ray(model_dir, data, on_ray, k=3, batch_rows=400)
    a, b = _sorted(local), _sorted(on_ray)
    pd.testing.assert_frame_equal(a[["customer_id", "rank", "product_id"]], b[["customer_id", "rank", "product_id"]])
