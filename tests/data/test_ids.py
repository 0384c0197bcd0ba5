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
    "links, ids, near",
    [
        (["a", "a", "b", "c", "c", "c"], ["a", "b", "c"], True),  # grouped, in order, everyone
        (["a", "a", "b"], ["a", "b", "c"], True),  # a prefix of the file (a first batch)
        (["a", "b", "b", "c"], ["a", "c", "b"], True),  # another order, within the window
        (["a", "c"], ["a", "b", "c"], True),  # someone holds nothing
        (["a", None, "b"], ["a", "b"], False),  # a missing id
        (["a", "x"], ["a", "b"], False),  # an unknown id
        ([], ["a"], False),
        (["a"], [], False),
    ],
)
def test_positions_near_is_the_hash_lookup_or_declines(links, ids, near):
    import pyarrow as pa

    from finrec.data.ids import positions_in, positions_near

    links, ids = pa.array(links, pa.string()), pa.array(ids, pa.string())
    found = positions_near(links, ids)
    assert (found is not None) == near
    if near:
        np.testing.assert_array_equal(found, positions_in(links, ids))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text("abc", min_size=1, max_size=4), max_size=1500, unique=True),
    st.lists(st.integers(0, 3000), max_size=40),
    st.data(),
)
def test_positions_near_never_disagrees_with_the_hash_lookup(ids, picks, data):
    # Any links, any start: the windowed lookup either declines or gives the hash lookup's
    # positions (ids unique, as a customers file's are); links among the ids from start - 1 to
    # the window's end are never declined.
    import pyarrow as pa

    from finrec.data.ids import positions_in, positions_near

    start = data.draw(st.integers(0, len(ids)))
    near = data.draw(st.booleans()) and start < len(ids)
    if near:
        low = max(start - 1, 0)
        reach = min(len(ids), low + 1024 + 2 * max(len(set(picks)), 1))
        picks = sorted(low + p % (reach - low) for p in picks)
    links = pa.array([ids[p % len(ids)] for p in picks] if ids else [], pa.string())
    found = positions_near(links, pa.array(ids, pa.string()), start)
    if found is not None:
        np.testing.assert_array_equal(found, positions_in(links, pa.array(ids, pa.string())))
    if near and len(links):
        assert found is not None


def test_a_table_read_in_batches_in_the_files_order_is_looked_up_near_each_start():
    import pyarrow as pa

    from finrec.data.ids import positions_in, positions_near

    ids = pa.array([f"c{i}" for i in range(5000)], pa.string())
    rng = np.random.default_rng(0)
    # Grouped by customer in the file's order, a fifth of the customers holding nothing.
    links = pa.array([f"c{i}" for i in range(5000) if i % 5 for _ in range(rng.integers(1, 4))], pa.string())
    cuts = [0, 7, 8, 3100, 6000, len(links)]
    parts, start = [], 0
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        found = positions_near(links.slice(lo, hi - lo), ids, start)
        assert found is not None
        parts.append(found)
        start = int(found.max()) + 1
    np.testing.assert_array_equal(np.concatenate(parts), positions_in(links, ids))
    # Far from the start given, the lookup declines rather than search every id.
    assert positions_near(links.slice(6000, 10), ids, 0) is None


def test_is_in_is_membership_by_the_id_rule():
    from finrec.data.ids import is_in

    values = pd.Series(["a", None, "b", "c", "a"], dtype="str")
    np.testing.assert_array_equal(is_in(values, ["a", "c", "c"]), [True, False, False, True, True])
    np.testing.assert_array_equal(is_in(pd.Series([7, 8]), np.array(["8"])), [False, True])
    categorical = pd.Series(pd.Categorical(["b", None, "a"], categories=["a", "b", "z"]))
    np.testing.assert_array_equal(is_in(categorical, pd.Series(["b"])), [True, False, False])
    assert is_in(pd.Series([], dtype=object), ["a"]).shape == (0,)
