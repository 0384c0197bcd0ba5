"""The category rule (finrec.data.categories): 4, 4.0 and "4" are one category value."""

import numpy as np
import pandas as pd
import pytest

from finrec.data.categories import as_category_text, category_text, vocabulary_text


@pytest.mark.parametrize(
    "value, text",
    [
        (4, "4"),
        (4.0, "4"),
        ("4", "4"),
        (np.int64(4), "4"),
        (np.float32(4.0), "4"),
        (2.5, "2.5"),
        (1e20, "100000000000000000000"),
        ("04", "04"),  # text someone wrote: not the number 4
        ("4.0", "4.0"),
        (" 4", " 4"),
        (None, None),
        (np.nan, None),
        (pd.NA, None),
    ],
)
def test_category_text(value, text):
    assert category_text(value) == text


@pytest.mark.parametrize(
    "column",
    [
        pd.Series([1.0, np.nan, 4.0, 2.5]),  # integer codes with a gap, as read_csv types them
        pd.Series([1, None, 4, 2.5], dtype=object),  # a JSON body's numbers
        pd.Series(["1", None, "4", "2.5"], dtype=object),
        pd.Series(["1", None, "4", "2.5"], dtype="str"),
        pd.Series([1, None, 4.0, "2.5"], dtype=object),
        pd.Series(pd.Categorical([1.0, None, 4.0, 2.5])),
    ],
    ids=["float", "int_and_float_objects", "object_text", "arrow_text", "mixed", "float_categorical"],
)
def test_every_reading_of_a_column_gives_the_same_text(column):
    text = as_category_text(column)
    assert [None if pd.isna(v) else v for v in text] == ["1", None, "4", "2.5"]


def test_an_int_column_and_a_float_column_with_a_gap_agree_value_for_value():
    codes = pd.Series([3, 1, 4, 1, 2])
    with_gap = pd.Series([3.0, 1.0, 4.0, np.nan, 2.0])
    assert as_category_text(codes).tolist()[:3] == as_category_text(with_gap).tolist()[:3] == ["3", "1", "4"]
    assert as_category_text(with_gap).iloc[3] is None


def test_a_text_column_is_kept_as_it_is():
    column = pd.Series(["04", "4", "north"], dtype=object)
    assert as_category_text(column) is column


def test_a_float_vocabulary_saved_before_the_rule_is_read_at_the_same_positions():
    assert vocabulary_text(["1.0", "10.0", "2.0", "2.5"]) == ["1", "10", "2", "2.5"]


@pytest.mark.parametrize(
    "vocabulary",
    [
        ["4.0", "basic"],  # written as text: "4.0" beside a word is a label, not a float
        ["04", "4"],
        ["4", "4.0"],  # renaming would give two entries "4"
        [],
    ],
)
def test_a_text_vocabulary_is_kept(vocabulary):
    assert vocabulary_text(vocabulary) == vocabulary


def test_a_float32_column_reads_as_a_request_sends_it():
    column = pd.Series(np.array([0.1, 2.0, np.nan], dtype="float32"))
    assert as_category_text(column).tolist() == ["0.1", "2", None] == [category_text(0.1), category_text(2), None]
