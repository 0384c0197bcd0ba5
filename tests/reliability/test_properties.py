"""Property-based tests (hypothesis) of the feature pipeline, the validation and the metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from finrec.data import schema as S
from finrec.data.io import prepare_entities
from finrec.errors import DataError
from finrec.evaluate.metrics import summarize
from finrec.features import FeaturePipeline

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def pipeline(small_dataset):
    return FeaturePipeline(small_dataset.schema).fit(small_dataset)


def _numbers(max_magnitude: float = 1e30):
    return st.one_of(
        st.none(),
        st.just(float("nan")),
        st.floats(min_value=-max_magnitude, max_value=max_magnitude, allow_nan=False),
        st.integers(min_value=-(10**9), max_value=10**9),
    )


def _record(pipeline):
    numeric = {s.column: _numbers() for s in pipeline.customer_numeric_}
    categorical = {
        col: st.one_of(st.none(), st.sampled_from(vocab or ["x"]), st.text(max_size=12))
        for col, vocab in pipeline.customer_vocab_.items()
    }
    return st.fixed_dictionaries({}, optional={**numeric, **categorical})


@SETTINGS
@given(data=st.data())
def test_any_finite_or_missing_numbers_give_finite_float32(pipeline, data):
    record = data.draw(_record(pipeline))
    inputs = pipeline.transform_record({k: v for k, v in record.items()})
    numeric = inputs["customer_numeric"]
    assert numeric.dtype == np.float32 and np.isfinite(numeric).all()


def test_huge_finite_values_stay_finite(pipeline):
    column = next(s.column for s in pipeline.customer_numeric_ if not s.log)
    numeric = pipeline.transform_record({column: 1e300})["customer_numeric"]
    assert np.isfinite(numeric).all()


@SETTINGS
@given(values=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=5))
def test_unseen_categories_map_to_the_oov_code(pipeline, values):
    col = next(iter(pipeline.customer_vocab_))
    unseen = [v for v in values if v not in set(pipeline.customer_vocab_[col])]
    if not unseen:
        return
    codes = pipeline.transform_record({col: unseen[0]})
    index = list(pipeline.customer_vocab_).index(col)
    assert codes[f"customer_cat_{index}"][0] == 0
    frame = pd.DataFrame({c: [np.nan] * len(unseen) for c in [s.column for s in pipeline.customer_numeric_]})
    for other in pipeline.customer_vocab_:
        frame[other] = [None] * len(unseen)
    frame[col] = unseen
    frame[pipeline.schema.customers.id] = [f"N{i}" for i in range(len(unseen))]
    assert (pipeline.transform_customers(frame)[f"customer_cat_{index}"] == 0).all()


@SETTINGS
@given(data=st.data())
def test_transform_record_equals_transform_customers(pipeline, data):
    record = data.draw(_record(pipeline))
    row = {
        s.column: np.nan if record.get(s.column) is None else float(record[s.column])
        for s in pipeline.customer_numeric_
    }
    for col in pipeline.customer_vocab_:
        row[col] = record.get(col)
    row[pipeline.schema.customers.id] = "N1"
    frame = pd.DataFrame([row])
    for col in pipeline.customer_vocab_:
        frame[col] = frame[col].astype(object)
    one = pipeline.transform_record(record)
    many = pipeline.transform_customers(frame)
    assert set(one) == set(many)
    for name in one:
        np.testing.assert_allclose(one[name], many[name], rtol=1e-6, atol=1e-6, err_msg=name)


TABLE = S.TableSchema(
    id="customer_id", numeric=("age", "income"), categorical=("segment",), risk="risk", log_numeric=("income",)
)


@SETTINGS
@given(
    garbage=st.lists(st.text(max_size=15), min_size=1, max_size=6), column=st.sampled_from(["age", "income", "risk"])
)
def test_garbage_in_numeric_columns_is_a_data_error(garbage, column):
    n = len(garbage)
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i}" for i in range(n)],
            "age": ["40"] * n,
            "income": ["1000"] * n,
            "segment": ["a"] * n,
            "risk": ["3"] * n,
        }
    )
    frame[column] = pd.Series(garbage, dtype=object)
    try:
        out = prepare_entities(frame, TABLE, "customers")
    except DataError as exc:
        assert f"'{column}'" in str(exc)
    else:  # only text that is a plausible number (or blank, for a feature) gets through
        values = out[column].to_numpy(dtype="float64")
        assert not np.isinf(values).any()
        assert np.isnan(values).all() or np.nanmin(values) >= 0


@SETTINGS
@given(n=st.integers(0, 8), p=st.integers(1, 7), k=st.integers(1, 9), seed=st.integers(0, 2**31 - 1))
def test_summarize_stays_in_the_unit_interval(n, p, k, seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, p))
    scores[rng.random((n, p)) < 0.1] = np.nan
    scores[rng.random((n, p)) < 0.1] = -np.inf
    relevant = rng.random((n, p)) < 0.3
    excluded = (rng.random((n, p)) < 0.3) & ~relevant
    result = summarize(scores, relevant, excluded, k=k)
    assert 0 <= result["customers"] <= n
    for key, value in result.items():
        if key == "customers":
            continue
        if result["customers"] == 0:
            assert np.isnan(value)
        else:
            assert 0.0 <= value <= 1.0, (key, value)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@SETTINGS
@given(
    edges=st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=40, unique=True).map(sorted),
    values=st.lists(
        st.one_of(st.floats(width=32, allow_nan=False), st.sampled_from([0.0, 1e-30, -1e-30])), min_size=1, max_size=60
    ),
)
@example(edges=[0.0, 1.4e-45, 2.8e-45, 4.2e-45, 5.6e-45, 7e-45], values=[0.0, 3e-45, 1.0, -1.0])
def test_the_ple_twin_counts_bins_as_searchsorted_does(edges, values):
    # The serving twin of the piecewise-linear encoding finds each value's bin from a grid and
    # steps against the edges: for any edges and any finite or infinite value, the count must be
    # np.searchsorted's over its breaks (bug class: a count off by one, or stepping past a feature).
    # Found in CI's warnings (2026-11-30): edges ~1e-45 apart overflowed the grid's float32 scale
    # to inf and 0 * inf gave NaN; the steps still counted right, so only a warning showed it.
    from finrec.model.numeric_twin import NumpyPiecewiseLinear, bin_table

    left, width = bin_table([edges, [0.0, 1.0]])
    twin = NumpyPiecewiseLinear.from_weights(left, width, np.ones((*left.shape, 2)), np.zeros((2, 2)))
    x = np.array([[v, 0.5] for v in values + edges], dtype=np.float32)
    counts = twin.rows(x) - (np.arange(2) * (twin.breaks.shape[1] + 2) + 1)
    finite = np.clip(x[:, 0], -np.finfo(np.float32).max, np.finfo(np.float32).max)
    np.testing.assert_array_equal(counts[:, 0], np.searchsorted(twin.breaks[0], finite, side="right"))
    assert (counts[:, 1] == 1).all()


@SETTINGS
@given(
    values=st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "zz"])), max_size=30),
    vocabulary=st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c"])), unique=True, max_size=4),
    extra=st.lists(st.sampled_from(["u", "v", "w", "x", "y"]), unique=True, max_size=5),
)
def test_id_lookup_of_text_and_categoricals_is_a_dict_lookup_where_missing_never_matches(values, vocabulary, extra):
    # Found in review (2026-11-30): Arrow's index_in matched a missing id to a missing entry of the
    # vocabulary; and a categorical column now takes its own path (through its categories, all of
    # them or the used ones). Both must be the naive lookup.
    import pyarrow as pa

    from finrec.data.ids import positions_in

    first = {}
    for i, v in enumerate(vocabulary):
        if v is not None:
            first.setdefault(v, i)
    want = [first.get(v, -1) if v is not None else -1 for v in values]
    vocab = pa.array(vocabulary, type=pa.string())
    categories = sorted({v for v in values if v is not None} | set(extra))
    for column in (pd.Series(values, dtype=object), pd.Series(pd.Categorical(values, categories=categories))):
        assert positions_in(column, vocab).tolist() == want
