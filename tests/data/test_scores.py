"""A ranker's scores file (``finrec compare --champion-scores``): what it reads and what it refuses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from finrec.data import schema as S
from finrec.data.scores import ScoresFile, check_scores_for, read_scores
from finrec.errors import MAX_MESSAGE_CHARS, DataError


def write(tmp_path, text: str, name: str = "scores.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_score_file_is_read_as_text_ids_and_finite_scores(tmp_path):
    scores = read_scores(write(tmp_path, "customer_id,product_id,score,segment\n007,A,0.5,x\n7,B,-2,y\n 8 ,A,1e3,z\n"))
    assert scores.column == "score" and list(scores.table.columns) == [S.CUSTOMER_ID, S.PRODUCT_ID, S.SCORE]
    # as everywhere in finrec: "007" and 7 are different ids, surrounding spaces are not part of one
    assert scores.table[S.CUSTOMER_ID].tolist() == ["007", "7", "8"]
    assert scores.table[S.SCORE].tolist() == [0.5, -2.0, 1000.0]
    assert scores.products == ["A", "B"]


def test_a_rank_file_is_lower_is_better(tmp_path):
    scores = read_scores(write(tmp_path, "customer_id,product_id,rank\nc1,A,1\nc1,B,2\nc1,C,3\n"))
    assert scores.column == "rank"
    order = scores.table.sort_values(S.SCORE, ascending=False)[S.PRODUCT_ID].tolist()
    assert order == ["A", "B", "C"]


def test_parquet_ids_read_as_finrec_reads_them(tmp_path):
    # An integer id column, and a float one (as an export with a gap once held), are text "7".
    path = tmp_path / "scores.parquet"
    pd.DataFrame({"customer_id": [7.0, 8.0], "product_id": [1, 2], "score": [0.1, 0.2]}).to_parquet(path)
    scores = read_scores(path)
    assert scores.table[S.CUSTOMER_ID].tolist() == ["7", "8"] and scores.products == ["1", "2"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("customer_id,product_id\nc1,A\n", "missing the column 'score' (higher is better) or 'rank'"),
        ("customer_id,product_id,Score\nc1,A,1\n", "the file has 'Score': names must match exactly"),
        ("customer,product_id,score\nc1,A,1\n", "missing column(s) 'customer_id'"),
        ("customer_id,product_id,score,rank\nc1,A,0.3,1\n", "both a 'score' and a 'rank' column; keep one"),
        ("customer_id,product_id,score\n", "the table is empty"),
        ("customer_id,product_id,score\nc1,A,0.3\nc1,B,\n", "column 'score' has 1 missing value(s), at row(s) 2"),
        ("customer_id,product_id,score\nc1,A,0.3\nc1,B,NaN\n", "column 'score' has 1 missing value(s), at row(s) 2"),
        ("customer_id,product_id,score\nc1,A,inf\nc1,B,1\n", "column 'score' has 1 infinite value(s), at row(s) 1"),
        (
            "customer_id,product_id,rank\nc1,A,1\nc1,B,second\n",
            "must be numeric; 1 value(s) are not numbers, e.g. row 2: 'second'",
        ),
        ("customer_id,product_id,score\nc1,A,0.3\n,B,0.1\n", "column 'customer_id' has 1 empty id(s), at row(s) 2"),
        ("customer_id,product_id,score\nc1,A,0.3\nc1, ,0.1\n", "column 'product_id' has 1 empty id(s), at row(s) 2"),
        (
            "customer_id,product_id,score\nc1,A,0.3\nc2,A,0.2\n c1,A,0.9\n",
            "1 row(s) repeat the (customer_id, product_id) pair of an earlier row, e.g. row 3 repeats row 1: "
            "customer 'c1', product 'A' (score 0.3 and 0.9)",
        ),
    ],
)
def test_bad_files_are_refused_naming_the_file_the_row_and_the_value(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as info:
        read_scores(path)
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message, message


def test_another_suffix_is_refused(tmp_path):
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        read_scores(write(tmp_path, "customer_id,product_id,score\nc1,A,1\n", "scores.txt"))


def test_a_frame_in_memory_is_validated_alike():
    with pytest.raises(DataError, match="^bank: column 'score' has 1 missing"):
        ScoresFile.from_frame(pd.DataFrame({"customer_id": ["a"], "product_id": ["A"], "score": [np.nan]}), "bank")


def _frame(customers, products, scores=None):
    return ScoresFile.from_frame(
        pd.DataFrame(
            {
                "customer_id": customers,
                "product_id": products,
                "score": np.arange(len(customers), dtype=float) if scores is None else scores,
            }
        ),
        "theirs.csv",
    )


def test_unknown_products_are_named_with_their_rows(small_dataset):
    ids = small_dataset.customers["customer_id"].tolist()
    known = small_dataset.products["product_id"].tolist()
    scores = _frame(ids[:6], [known[0], "LOAN_X", "LOAN_X", known[1], "0042", "LOAN_X"])
    with pytest.raises(DataError) as info:
        check_scores_for(scores, small_dataset)
    message = str(info.value)
    assert message.startswith("theirs.csv: 2 product id(s) on 4 row(s) are not in the products table")
    assert "'LOAN_X' (3 row(s)), '0042' (1 row(s)); the first at row 2" in message


def test_many_unknown_products_make_a_bounded_message(small_dataset):
    ids = small_dataset.customers["customer_id"].tolist()
    scores = _frame([ids[0]] * 5000, [f"P{'x' * 500}{j}" for j in range(5000)])
    with pytest.raises(DataError) as info:
        check_scores_for(scores, small_dataset)
    message = str(info.value)
    assert "5000 product id(s) on 5000 row(s)" in message and "... and 4995 more" in message
    assert len(message) < MAX_MESSAGE_CHARS


def test_a_file_of_other_customers_is_refused(small_dataset):
    product = small_dataset.products["product_id"].iloc[0]
    with pytest.raises(DataError, match="none of its customer ids is a customer of the data"):
        check_scores_for(_frame(["nobody", "nor me"], [product, product]), small_dataset)
    # the data's ids with their leading zeros lost (a spreadsheet's export): the hint says so
    import dataclasses

    padded = dataclasses.replace(
        small_dataset,
        customers=small_dataset.customers.head(3).assign(customer_id=["001", "002", "003"]),
        interactions=pd.DataFrame({"customer_id": ["001"], "product_id": [product]}),
    )
    with pytest.raises(DataError) as info:
        check_scores_for(_frame([1, 2], [product, product]), padded)
    assert "perhaps '1' is '001' in the customers table" in str(info.value)


def test_customers_without_adoptions_alone_are_refused(small_dataset):
    adopters = set(small_dataset.interactions["customer_id"])
    idle = [c for c in small_dataset.customers["customer_id"] if c not in adopters][:3]
    product = small_dataset.products["product_id"].iloc[0]
    with pytest.raises(DataError, match="none of the customers with adoptions in the data appears in the file"):
        check_scores_for(_frame(idle, [product] * 3), small_dataset)


def test_rows_of_customers_the_data_lacks_are_counted(small_dataset):
    adopter = small_dataset.interactions["customer_id"].iloc[0]
    products = small_dataset.products["product_id"].iloc[:2].tolist()
    counts = check_scores_for(_frame([adopter, "elsewhere", "elsewhere"], [products[0], *products]), small_dataset)
    assert counts == {"rows": 3, "customers": 2, "rows_outside_data": 2}
