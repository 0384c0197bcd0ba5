"""Streaming training: one-pass feature statistics, bounded chunks, same batches and metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from finrec.data import schema as S
from finrec.features import FeaturePipeline, NumericStats, quantile_edges
from finrec.model import losses as L
from finrec.training.stream import (
    NumericAccumulator,
    StreamingBatches,
    StreamingPipelineFit,
    StreamingSource,
    partition,
)


def _chunks(values: np.ndarray, size: int):
    for start in range(0, len(values), size):
        yield values[start : start + size]


@pytest.mark.parametrize("log", [None, True, False])
def test_numeric_accumulator_matches_in_memory_stats(log):
    rng = np.random.default_rng(0)
    x = rng.lognormal(8, 1.5, 5000)  # heavy-tailed: detected as log
    x[rng.random(5000) < 0.1] = np.nan
    acc = NumericAccumulator("income", log)
    for chunk in _chunks(x, 333):
        acc.update(chunk)
    got, want = acc.result(), NumericStats.fit("income", x, log)
    assert got.log == want.log
    for name in ("median", "mean", "std"):
        assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-9)


def test_reservoir_median_is_close_beyond_the_reservoir():
    x = np.random.default_rng(1).normal(50, 10, 200_000)
    acc = NumericAccumulator("age", False, reservoir=20_000)
    for chunk in _chunks(x, 7_000):
        acc.update(chunk)
    got = acc.result()
    assert got.median == pytest.approx(np.median(x), abs=0.3)  # ~3 standard errors of the sample median
    assert got.mean == pytest.approx(x.mean(), rel=1e-9)
    assert got.std == pytest.approx(x.std(), rel=1e-9)


def test_streaming_pipeline_fit_equals_feature_pipeline_fit(small_dataset):
    fitter = StreamingPipelineFit(small_dataset.schema)
    customers = small_dataset.customers
    for start in range(0, len(customers), 256):
        fitter.update(customers.iloc[start : start + 256])
    streamed = fitter.finish(small_dataset.products)
    exact = FeaturePipeline(small_dataset.schema).fit(small_dataset)
    assert streamed.customer_vocab_ == exact.customer_vocab_
    assert streamed.product_ids_ == exact.product_ids_
    assert [vars(s) for s in streamed.product_numeric_] == [vars(s) for s in exact.product_numeric_]
    for a, b in zip(streamed.customer_numeric_, exact.customer_numeric_):
        assert (a.column, a.log, a.median) == (b.column, b.log, b.median)
        assert a.mean == pytest.approx(b.mean, rel=1e-9, abs=1e-12)
        assert a.std == pytest.approx(b.std, rel=1e-9)


def test_streaming_pipeline_fits_the_quantile_bins_of_the_piecewise_linear_encoding(small_dataset):
    """Streamed, the bins come from each column's reservoir sample (missing values left out); on a
    bank smaller than the reservoir they are the in-memory bins of the observed values."""
    fitter = StreamingPipelineFit(small_dataset.schema, numeric_bins=8)
    customers = small_dataset.customers
    for start in range(0, len(customers), 256):
        fitter.update(customers.iloc[start : start + 256])
    streamed = fitter.finish(small_dataset.products)
    exact = FeaturePipeline(small_dataset.schema, numeric_bins=8).fit(small_dataset)
    assert streamed.customer_bins_ is not None and len(streamed.customer_bins_) == len(exact.customer_bins_)
    for stats, edges in zip(streamed.customer_numeric_, streamed.customer_bins_):
        observed = pd.to_numeric(customers[stats.column], errors="coerce").dropna().to_numpy()
        assert edges == pytest.approx(quantile_edges(stats.transform(observed), 8))
        assert 1 <= len(edges) <= 9 and edges == sorted(edges)


def test_streaming_batches_cover_every_example_with_role_coded_targets(small_data_dir, small_dataset, tmp_path):
    chunk_rows = 200
    layout = partition(small_data_dir, tmp_path / "work", chunk_rows=chunk_rows, include_objected=True)
    assert len(layout.pieces) > 3  # several buckets: the data really is streamed
    batches = StreamingBatches(layout, batch_size=64, seed=0)
    seen = []
    for i in range(len(batches)):
        x, y = batches[i]
        assert set(x) == set(layout.pipeline.customer_input_spec())
        assert len(y) <= 64 and y.shape[1] == layout.pipeline.n_products
        assert ((y == L.POSITIVE).sum(axis=1) == 1).all()
        assert set(np.unique(y)) <= {L.POSITIVE, L.MASKED, L.OTHER}
        seen.append(len(y))
    # The memory bound: never more than chunk_rows customers held, every piece read once.
    assert batches.max_rows_held <= chunk_rows
    assert batches.pieces_loaded == len(layout.pieces)
    # Every training interaction is one example; together with validation: all of them.
    n_val = len(layout.validation.interactions)
    assert sum(seen) == layout.examples == len(small_dataset.interactions) - n_val
    assert layout.train_customers + len(layout.validation.customers) == len(small_dataset.customers)
    # A new epoch: another order, the same examples.
    batches.on_epoch_end()
    assert sum(len(batches[i][1]) for i in range(len(batches))) == layout.examples


def test_batch_multiple_makes_every_batch_divisible(small_data_dir, tmp_path):
    layout = partition(small_data_dir, tmp_path / "work", chunk_rows=300)
    batches = StreamingBatches(layout, batch_size=64, seed=0, batch_multiple=2)
    assert all(len(batches[i][1]) % 2 == 0 for i in range(len(batches)))


def test_objected_customers_and_their_links_are_left_out(small_data_dir, small_dataset, tmp_path):
    """As `finrec train` leaves them out (GDPR Art. 21(3)): not in a bucket, not in validation."""
    from finrec.data.compliance import without_objections
    from finrec.data.links import BUCKET_SUFFIX, read_bucket

    kept, n_objected = without_objections(small_dataset)
    assert n_objected > 0
    layout = partition(small_data_dir, tmp_path / "work", chunk_rows=300)
    assert layout.objected == n_objected
    assert layout.train_customers + len(layout.validation.customers) == len(kept.customers)
    objected = set(small_dataset.customers.customer_id) - set(kept.customers.customer_id)
    seen = set(layout.validation.customers.customer_id) | set(layout.validation.interactions.customer_id)
    buckets = list(layout.directory.glob(f"*{BUCKET_SUFFIX}"))
    assert buckets
    for path in buckets:
        seen |= set(read_bucket(path).column("customer_id").to_pylist())
    assert seen and not seen & objected
    n_val = len(layout.validation.interactions)
    assert layout.examples == len(kept.interactions) - n_val and layout.dropped_links == 0


@pytest.mark.slow
def test_streaming_training_is_as_good_as_in_memory(tmp_path, fast_config):
    from finrec.config import Config, TrainConfig
    from finrec.data.io import dataset_tables, validate_tables, write_dataset
    from finrec.data.split import split_dataset
    from finrec.data.synthetic import GeneratorSettings, generate
    from finrec.evaluate.report import evaluate
    from finrec.training.train import fit

    data = validate_tables(S.SYNTHETIC.schema(), generate(GeneratorSettings(n_customers=5000, seed=3)))
    train, test = split_dataset(data, 0.2, 0)
    write_dataset(dataset_tables(train), data.schema, tmp_path / "train")
    config = Config(model=fast_config.model, training=TrainConfig(epochs=5, batch_size=128, patience=3)).validate()

    from finrec.data.compliance import without_objections

    in_memory = fit(without_objections(train)[0], config, verbose=0)  # both leave out who objected
    source = StreamingSource(tmp_path / "train", chunk_rows=500, workdir=tmp_path)
    streamed = fit(source, config, verbose=0)

    assert source.last_batches.max_rows_held <= 500
    assert len(source.last_layout.pieces) >= 8
    a = evaluate(in_memory, test, k=5)["model"]["ndcg@5"]
    b = evaluate(streamed, test, k=5)["model"]["ndcg@5"]
    assert b == pytest.approx(a, abs=0.03), (a, b)
    assert b > evaluate(in_memory, test, k=5)["popularity"]["ndcg@5"]
    assert not list(tmp_path.glob("finrec-stream-*"))  # the scratch files are gone


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_history_is_streamed_with_its_customers(tmp_path, fmt):
    # The holdings history is routed by customer like the other links, one record batch at a
    # time; each piece and the validation set carry exactly their customers' snapshots.
    from finrec.data.io import write_dataset
    from finrec.data.synthetic import GeneratorSettings, generate

    tables = generate(GeneratorSettings(n_customers=600, seed=1, months=3, ground_truth=False))
    data = write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / "bank", fmt=fmt)
    # Every customer kept (objected ones too), so the routed rows can be compared with the table.
    layout = partition(data, tmp_path / "work", chunk_rows=150, include_objected=True)
    assert layout.has_history and len(layout.pieces) > 2
    parts = [layout.validation.holdings_history]
    for piece in layout.pieces:
        dataset = layout.read_piece(piece)
        ids = set(dataset.customers[dataset.schema.customers.id])
        assert set(dataset.holdings_history[S.CUSTOMER_ID]) <= ids
        parts.append(dataset.holdings_history)
    import pandas as pd

    streamed = pd.concat(parts, ignore_index=True)
    assert streamed[S.AS_OF].dtype == "datetime64[ns]"
    original = tables[S.HOLDINGS_HISTORY]
    key = lambda df: set(zip(df[S.CUSTOMER_ID].astype(str), df[S.PRODUCT_ID].astype(str), df[S.AS_OF]))  # noqa: E731
    assert key(streamed) == key(original) and len(streamed) == len(original)


def _history_bank(tmp_path, n_customers=600, months=4, seed=1):
    """A bank with a past in which most customers lack the latest snapshot (they closed
    everything last month): a piece's own latest month is then older than the table's, which
    the streamed features must not use as their reference."""
    from finrec.data.io import write_dataset
    from finrec.data.synthetic import GeneratorSettings, generate

    tables = generate(GeneratorSettings(n_customers=n_customers, seed=seed, months=months, ground_truth=False))
    history = tables[S.HOLDINGS_HISTORY]
    latest = history[S.AS_OF] == history[S.AS_OF].max()
    keep_latest = history[S.CUSTOMER_ID].isin(history[S.CUSTOMER_ID][latest].iloc[:3])
    tables[S.HOLDINGS_HISTORY] = history[~latest | keep_latest].reset_index(drop=True)
    return write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / "bank")


def test_streamed_history_features_equal_the_in_memory_ones(tmp_path):
    from finrec.data.io import load_dataset
    from finrec.training.train import build_examples

    data_dir = _history_bank(tmp_path)
    layout = partition(data_dir, tmp_path / "work", chunk_rows=150)
    pipeline = layout.pipeline
    assert pipeline.history_ is not None and len(layout.pieces) > 2
    dataset = load_dataset(data_dir)
    # The history state is what the in-memory fit gives on the same training customers.
    train_ids = pd.concat([layout.read_piece(p).customers[S.CUSTOMER_ID] for p in layout.pieces])
    exact = FeaturePipeline(dataset.schema).fit(dataset.subset_customers(train_ids))
    assert exact.history_.to_dict() == pipeline.history_.to_dict()
    # Every piece's inputs equal the whole table's, transformed at once, for its customers.
    whole = pipeline.transform_customers(dataset.customers, dataset.holdings, history=dataset.holdings_history)
    row_of = pd.Index(dataset.customers[S.CUSTOMER_ID])
    own_reference_differs = False
    for piece in layout.pieces:
        data = layout.read_piece(piece)
        streamed = build_examples(pipeline, data, layout.history_reference).inputs
        rows = row_of.get_indexer(data.customers[S.CUSTOMER_ID])
        assert (rows >= 0).all()
        assert set(streamed) == set(whole) and "history_events" in streamed
        for name, values in streamed.items():
            np.testing.assert_array_equal(values, whole[name][rows], err_msg=name)
        assert streamed["history_events"].any()
        alone = build_examples(pipeline, data).inputs["history_events"]  # the piece's own latest month
        own_reference_differs |= not np.array_equal(alone, streamed["history_events"])
    assert own_reference_differs  # the bank really tests the shared reference


def test_streamed_pieces_train_on_the_earlier_months_of_the_in_memory_fit(tmp_path):
    # Each piece steps through the training customers' snapshot months: its examples, features of
    # then included, are the in-memory fit's for its customers, and the count pass knows them.
    from collections import Counter

    from finrec.data.io import load_dataset
    from finrec.history_features import earlier_months
    from finrec.training.train import build_examples, example_pairs

    data_dir = _history_bank(tmp_path, months=5)
    layout = partition(data_dir, tmp_path / "work", chunk_rows=150, history_months=3)
    pipeline = layout.pipeline
    assert len(layout.pieces) > 2 and len(layout.snapshots) == 5 and layout.earlier_months_used >= 1

    def keys(examples, ids):
        names = sorted(examples.inputs)
        return Counter(
            (ids[r], int(p), b"".join(examples.inputs[n][r].tobytes() for n in names))
            for r, p in zip(examples.customer_rows, examples.positives, strict=True)
        )

    streamed, latest_only, misaligned = Counter(), 0, False
    for piece in layout.pieces:
        data = layout.read_piece(piece)
        examples = layout.piece_examples(data)
        assert piece.examples == len(examples)
        latest_only += len(example_pairs(pipeline, data)[0])
        parts = [data, *(part for part, _ in layout.earlier(data))]
        # A piece none of whose customers holds something at the latest snapshot steps through its
        # own months wrongly: the shared ones are what make the pieces agree with memory.
        own = earlier_months(data, 3)
        misaligned |= [r for _, r in own] != [r for _, r in layout.earlier(data)]
        streamed += keys(examples, np.concatenate([p.customers[S.CUSTOMER_ID].astype(str).to_numpy() for p in parts]))
    dataset = load_dataset(data_dir)
    train_ids = pd.concat([layout.read_piece(p).customers[S.CUSTOMER_ID] for p in layout.pieces])
    train = dataset.subset_customers(train_ids)
    expected, positives = Counter(), np.zeros(pipeline.n_products, dtype="int64")
    months = earlier_months(train, 3)
    for part, reference in [(train, layout.history_reference), *months]:
        examples = build_examples(pipeline, part, reference)
        expected += keys(examples, part.customers[S.CUSTOMER_ID].astype(str).to_numpy())
        if part is not train:
            positives += np.bincount(examples.positives, minlength=len(positives))
    assert streamed == expected and layout.examples > latest_only
    np.testing.assert_array_equal(layout.earlier_positives, positives)
    assert layout.earlier_months_used == len(months) and misaligned


@pytest.mark.slow
def test_streamed_training_learns_from_the_history(tmp_path, fast_config, caplog):
    from finrec.data.io import load_dataset
    from finrec.recommend.recommender import Recommender
    from finrec.training.train import fit

    data_dir = _history_bank(tmp_path, n_customers=600, months=4, seed=2)
    source = StreamingSource(data_dir, chunk_rows=200, workdir=tmp_path)
    trained = fit(source, fast_config.with_overrides(epochs=1, history_months=3), verbose=0)
    assert "history_events" in trained.pipeline.customer_input_spec()
    # The default blends where a history is read; a streamed fit cannot, and says so. It trains on
    # the earlier months as the in-memory fit does.
    assert "model.tree_blend is ignored by the streamed fit" in caplog.text and trained.blend is None
    # (This bank's latest two snapshots hold almost nothing: the third month back gives the adds.)
    assert "history_months" not in caplog.text and trained.history["earlier_months"][0] >= 1
    assert trained.history["train_examples"][0] == source.last_layout.examples
    # The model-risk report says so, and names no teacher: the streamed fit has none.
    from finrec.governance.report import scoring_notes

    (months,) = scoring_notes(trained)
    assert months.startswith("Training months: besides the latest month's adoptions") and "teacher" not in months
    assert source.last_batches.max_rows_held <= 200 and len(source.last_layout.pieces) > 2
    # The tower reads the history: zeroing it moves the embeddings.
    data = load_dataset(data_dir)
    inputs = trained.pipeline.transform_customers(data.customers, data.holdings, history=data.holdings_history)
    assert inputs["history_events"].any()
    tower = Recommender(trained).tower
    blank = dict(inputs, history_events=np.zeros_like(inputs["history_events"]))
    assert not np.allclose(tower(inputs), tower(blank), atol=1e-3)
    # Without history (encoder none) the history table is not even routed.
    off = partition(data_dir, tmp_path / "off", chunk_rows=200, history_encoder="none")
    assert not off.has_history and off.pipeline.history_ is None
    # So such a model trains on the latest month alone, where the in-memory fit would read the
    # months off the history anyway: it says so.
    caplog.clear()
    config = fast_config.with_overrides(epochs=1, history_months=3)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, history_encoder="none"))
    blind = fit(StreamingSource(data_dir, chunk_rows=200, workdir=tmp_path), config, verbose=0)
    assert "training.history_months is ignored by the streamed fit with model.history_encoder none" in caplog.text
    assert blind.history["earlier_months"] == [0.0]


def test_objected_customers_history_is_left_out(tmp_path):
    from finrec.data import compliance as C
    from finrec.data.io import write_dataset
    from finrec.data.synthetic import GeneratorSettings, generate

    tables = generate(GeneratorSettings(n_customers=600, seed=2, months=3, ground_truth=False))
    table = S.SYNTHETIC.schema().customers
    customers = tables[S.CUSTOMERS]
    objected = set(customers[table.id][C.objected(customers[table.consent], "customers.consent")].astype(str))
    data = write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / "bank")
    layout = partition(data, tmp_path / "work", chunk_rows=150)
    seen = set(layout.validation.holdings_history[S.CUSTOMER_ID].astype(str))
    for piece in layout.pieces:
        seen |= set(layout.read_piece(piece).holdings_history[S.CUSTOMER_ID].astype(str))
    assert objected and seen and not seen & objected


def test_streamed_training_takes_the_piecewise_linear_encoding(small_data_dir, tmp_path, fast_config):
    import dataclasses

    from finrec.config import Config
    from finrec.training.train import fit

    config = Config(
        model=dataclasses.replace(fast_config.model, numeric_encoding="ple", numeric_bins=4),
        training=dataclasses.replace(fast_config.training, epochs=1),
    ).validate()
    trained = fit(StreamingSource(small_data_dir, chunk_rows=500, workdir=tmp_path), config, verbose=0)
    assert trained.pipeline.customer_bins_ is not None
    assert any(
        "piecewise" in type(layer).__name__.lower() for layer in trained.model.get_layer("customer_tower").layers
    )
    assert np.isfinite(trained.history["loss"]).all()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_snapshot_after_an_adoption_is_refused_when_streaming(tmp_path, fmt):
    """As the in-memory loader refuses it: a history row dated on or after the customer's first
    adoption would let training see the future."""
    from finrec.data.io import write_dataset
    from finrec.data.synthetic import GeneratorSettings, generate
    from finrec.errors import DataError

    tables = generate(GeneratorSettings(n_customers=400, seed=3, months=3, ground_truth=False))
    assert S.TIMESTAMP in tables[S.INTERACTIONS]
    fine = write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / "fine", fmt=fmt)
    assert partition(fine, tmp_path / "work-fine", chunk_rows=100, include_objected=True).has_history

    adopter = tables[S.INTERACTIONS][S.CUSTOMER_ID].iloc[0]
    late = pd.to_datetime(tables[S.INTERACTIONS][S.TIMESTAMP]).max() + pd.Timedelta(days=31)
    history = tables[S.HOLDINGS_HISTORY].copy()
    history[S.AS_OF] = pd.to_datetime(history[S.AS_OF])
    history.loc[history[S.CUSTOMER_ID] == adopter, S.AS_OF] = late.normalize()
    tables[S.HOLDINGS_HISTORY] = history
    leaky = write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / "leaky", fmt=fmt)
    with pytest.raises(DataError, match="holdings_history"):
        partition(leaky, tmp_path / "work-leaky", chunk_rows=100, include_objected=True)


def test_streamed_training_refuses_rows_dated_past_the_rest(tmp_path):
    """As the loader (``check_latest_snapshot``): a few rows dated years past the rest, in data
    whose adoptions carry no date to compare with, would move every customer's past back."""
    from finrec.data.io import write_dataset
    from finrec.data.synthetic import GeneratorSettings, generate
    from finrec.errors import DataError

    tables = generate(GeneratorSettings(n_customers=300, seed=3, months=3, ground_truth=False))
    tables[S.INTERACTIONS] = tables[S.INTERACTIONS].drop(columns=[S.TIMESTAMP])
    history = tables[S.HOLDINGS_HISTORY].copy()
    history.loc[history.index[:4], S.AS_OF] = pd.Timestamp("2030-06-30")
    tables[S.HOLDINGS_HISTORY] = history
    data = write_dataset(tables, S.SYNTHETIC.schema(), tmp_path / "stray")
    with pytest.raises(DataError, match=r"the latest snapshot month\(s\), 2030-06, hold 4 row"):
        partition(data, tmp_path / "work", chunk_rows=100, include_objected=True)


def test_bucket_writers_route_in_order_and_write_few_batches(tmp_path):
    # Routed batch by batch, each file used to get one piece per batch (a count that grew with
    # the square of the data, benchmarks/scale.py); buffered, a file gets one per flush. (Parts
    # joined in a flush with different categories arrive as plain text.)
    import pyarrow as pa

    from finrec.data.links import BucketWriters, read_bucket

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(10_000)],
            "x": np.arange(10_000),
            "segment": pd.Categorical([f"s{i // 2_500}" for i in range(10_000)]),
        }
    )
    bucket = rng.integers(0, 5, len(frame))
    writers = BucketWriters(buffer_cells=12_000)  # 4,000 rows of 3 columns: a flush every few batches
    for start in range(0, len(frame), 100):
        part = frame.iloc[start : start + 100].copy()
        part["segment"] = part["segment"].cat.remove_unused_categories()
        writers.route(part, bucket[start : start + 100], lambda b: tmp_path / f"b{b}.arrows")
    writers.close()
    for b in range(5):
        with pa.ipc.open_stream(tmp_path / f"b{b}.arrows") as reader:
            batches = list(reader)
        assert len(batches) <= 3  # 100 batches, 2-3 flushes
        expected = frame[bucket == b].reset_index(drop=True)
        got = read_bucket(tmp_path / f"b{b}.arrows").to_pandas()
        pd.testing.assert_frame_equal(
            got.astype({"segment": str}), expected.astype({"segment": str}), check_dtype=False
        )


def test_bucket_writers_write_a_later_flushs_own_categories(tmp_path):
    # A flush of one frame keeps its categories: the stream carries a new dictionary, and each
    # row reads back as its own category.
    import pyarrow as pa

    from finrec.data.links import BucketWriters, read_bucket

    path = tmp_path / "b.arrows"
    writers = BucketWriters(buffer_cells=1)  # every write is a flush
    writers.write(path, pd.DataFrame({"segment": pd.Categorical(["a", "b", "a"]), "x": [1, 2, 3]}))
    writers.write(path, pd.DataFrame({"segment": pd.Categorical(["c", "d"]), "x": [4, 5]}))
    writers.close()
    with pa.ipc.open_stream(path) as reader:
        batches = list(reader)
    assert len(batches) == 2 and all(pa.types.is_dictionary(b.schema.field("segment").type) for b in batches)
    assert [b.column("segment").dictionary.to_pylist() for b in batches] == [["a", "b"], ["c", "d"]]
    got = read_bucket(path).to_pandas()
    assert got["segment"].astype(str).tolist() == ["a", "b", "a", "c", "d"] and got["x"].tolist() == [1, 2, 3, 4, 5]
