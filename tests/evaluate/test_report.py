import pytest

from finrec.evaluate.metrics import metric_keys
from finrec.evaluate.report import format_table


@pytest.mark.parametrize("k", [5, 100, 1000])
def test_format_table_keeps_columns_apart_for_any_k(k):
    # With k = 1000 the header read "map@1000precision@1000": the names outgrew a fixed column.
    keys = metric_keys(k)
    metrics = {key: 0.5 for key in keys} | {"customers": 7}
    header, rule, row = format_table({"model": metrics}, k).splitlines()
    assert header.split() == ["ranker", *keys, "customers"]
    assert row.split() == ["model", *["0.5000"] * len(keys), "7"]
    assert len(rule) == len(header) == len(row)


@pytest.mark.parametrize("k", [0, -3, 3.0, None, "5"])
def test_evaluate_refuses_a_k_that_is_no_positive_integer_before_scoring(k):
    # From a notebook: a bare ValueError from the metrics, after the model had scored everyone.
    from finrec.errors import FinrecError
    from finrec.evaluate.report import evaluate

    with pytest.raises(FinrecError, match="k must be a positive integer"):
        evaluate(object(), object(), k=k)  # refused before the model or the data is read
