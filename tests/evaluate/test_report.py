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
