"""The id rule: ``7``, ``7.0`` and ``"7"`` are one id, in pandas and in Arrow."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finrec.data.ids import as_arrow_text, ids_as_text, positions_in


@pytest.mark.parametrize(
    "values",
    [
        pd.Series([7, 8]),
        pd.Series([7.0, 8.0]),
        pd.Series(["7", " 8 "]),
        pd.Series(["7", "8"], dtype="string[pyarrow]"),
    ],
)
def test_integers_floats_and_text_give_the_same_ids(values):
    assert list(ids_as_text(values)) == ["7", "8"]


def test_missing_ids_stay_missing_and_fractions_keep_their_digits():
    text = ids_as_text(pd.Series([7.5, np.nan, 3.0]))
    assert text[0] == "7.5" and text[1] is None and text[2] == "3"


def test_positions_in_finds_text_and_marks_unknown_and_missing():
    vocabulary = pa.array(["a", "b"])
    np.testing.assert_array_equal(positions_in(["b", "z", None, "a"], vocabulary), [1, -1, -1, 0])
    assert as_arrow_text(pd.Series(["x", None])).null_count == 1


@pytest.mark.parametrize(
    "values",
    [
        ["b", "z", None, "a", "b", "a"],  # unknown, missing, repeated
        [None, None],  # no category at all
        [],
    ],
)
def test_a_categorical_column_finds_the_same_positions_through_its_categories(values):
    # A Parquet dictionary column loads as a pandas categorical: the lookup goes through its
    # categories (unused ones included) and must equal the lookup of its text.
    vocabulary = pa.array(["a", "b", "c"])
    column = pd.Series(pd.Categorical(values, categories=["unused", "a", "z", "b"] if values else []))
    want = positions_in(pd.Series(values, dtype=object), vocabulary)
    np.testing.assert_array_equal(positions_in(column, vocabulary), want)
    np.testing.assert_array_equal(positions_in(column.array, vocabulary), want)  # a bare Categorical too


@pytest.mark.parametrize(
    "links, ids",
    [
        (["a", "a", "b", "c", "c", "c"], ["a", "b", "c"]),  # grouped, in order, everyone: fast path
        (["a", "b", "b", "c"], ["a", "c", "b"]),  # grouped, another order
        (["a", "b", "a"], ["a", "b"]),  # not grouped
        (["a", "c"], ["a", "b", "c"]),  # someone holds nothing
        (["a", None, "b"], ["a", "b"]),  # a missing id
        (["a", "x", "b"], ["a", "x", "b"]),
        (["a", "x"], ["a", "b"]),  # an unknown id, the right count
        ([], ["a"]),
        (["a"], []),
    ],
)
def test_run_positions_equals_hash_lookup(links, ids):
    import pyarrow as pa

    from finrec.data.ids import positions_in, run_positions

    links, ids = pa.array(links, pa.string()), pa.array(ids, pa.string())
    np.testing.assert_array_equal(run_positions(links, ids), positions_in(links, ids))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from("abcdef"), min_size=0, max_size=6, unique=True),
    st.lists(st.tuples(st.sampled_from("abcdefg"), st.integers(1, 3)), max_size=8),
    st.booleans(),
)
def test_run_positions_property(ids, runs, in_id_order):
    import pyarrow as pa

    from finrec.data.ids import positions_in, run_positions

    if in_id_order:  # the export order the fast path is for: every id, grouped, in order
        runs = [(i, n) for i, (_, n) in zip(ids, runs + [("a", 1)] * len(ids))]
    links = pa.array([i for i, n in runs for _ in range(n)], pa.string())
    ids = pa.array(ids, pa.string())
    np.testing.assert_array_equal(run_positions(links, ids), positions_in(links, ids))


def test_run_positions_skips_the_hash_for_grouped_links(monkeypatch):
    import pyarrow as pa

    from finrec.data import ids as I

    monkeypatch.setattr(I, "positions_in", lambda *a: pytest.fail("hash lookup used"))
    links, ids = pa.array(["a", "a", "b", "c"]), pa.array(["a", "b", "c"])
    np.testing.assert_array_equal(I.run_positions(links, ids), [0, 0, 1, 2])
