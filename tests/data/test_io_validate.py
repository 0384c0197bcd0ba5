"""The data contract: every validation failure names the file, the column and examples."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from finrec.data import schema as S
from finrec.data.io import (
    fingerprint,
    load_dataset,
    read_csv_bytes,
    validate_tables,
    write_dataset,
    write_dataset_blocks,
    write_table,
)
from finrec.errors import DataError, SchemaError

SCHEMA = {
    "customers": {
        "id": "customer_id",
        "numeric": ["age", "income"],
        "categorical": ["segment"],
        "risk_tolerance": "risk",
    },
    "products": {
        "id": "product_id",
        "numeric": ["yield"],
        "categorical": [],
        "risk_level": "risk_level",
        "category": "ptype",
    },
}


def tables():
    return {
        "customers": pd.DataFrame(
            {
                "customer_id": [1, 2, 3],
                "age": [30, 40, np.nan],
                "income": [1e4, 2e4, 3e4],
                "segment": ["a", "b", "a"],
                "risk": [1, 4, 7],
            }
        ),
        "products": pd.DataFrame(
            {"product_id": ["p1", "p2"], "yield": [0.1, 2.5], "risk_level": [1, 5], "ptype": ["dep", "fund"]}
        ),
        "interactions": pd.DataFrame({"customer_id": [1, 2, 3], "product_id": ["p1", "p2", "p1"]}),
        "holdings": pd.DataFrame({"customer_id": [2], "product_id": ["p1"]}),
    }


def write(tmp_path: Path, t: dict, schema=SCHEMA, fmt="csv") -> Path:
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    for name, df in t.items():
        df.to_csv(d / f"{name}.csv", index=False) if fmt == "csv" else df.to_parquet(d / f"{name}.parquet")
    (d / "schema.yaml").write_text(yaml.safe_dump(schema))
    return d


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_valid_dataset_loads_with_text_ids(tmp_path, fmt):
    ds = load_dataset(write(tmp_path, tables(), fmt=fmt))
    assert list(ds.customer_ids) == ["1", "2", "3"]
    assert set(ds.interactions["customer_id"]) == {"1", "2", "3"}
    assert np.isnan(ds.customers["age"].iloc[2])  # missing numerics stay NaN for the pipeline to impute
    assert ds.customers["risk"].dtype == np.int64


def expect(tmp_path, t, *fragments, schema=SCHEMA, error=DataError):
    with pytest.raises(error) as info:
        load_dataset(write(tmp_path, t, schema))
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_missing_table(tmp_path):
    t = tables()
    del t["interactions"]
    expect(tmp_path, t, "missing table 'interactions'")


def test_a_table_of_a_directory_that_is_not_there_is_named(tmp_path):
    from finrec.data.io import find_table

    with pytest.raises(DataError, match="nowhere: no such data directory"):
        find_table(tmp_path / "nowhere", "customers")  # was a bare FileNotFoundError from its listing
    assert find_table(tmp_path / "nowhere", "holdings", required=False) is None


def test_missing_schema_column(tmp_path):
    t = tables()
    t["customers"] = t["customers"].drop(columns=["income"])
    expect(tmp_path, t, "'income'", "customers", error=SchemaError)


def test_duplicate_ids(tmp_path):
    t = tables()
    t["customers"].loc[2, "customer_id"] = 1
    expect(tmp_path, t, "customer_id", "must be unique", "'1'")


def test_unknown_product_in_interactions(tmp_path):
    t = tables()
    t["interactions"].loc[0, "product_id"] = "p9"
    expect(tmp_path, t, "interactions", "1 row(s)", "'p9'")


@pytest.mark.parametrize(
    "customers, interactions, hint",
    [
        (["0001", "0002", "0003"], ["1", "2", "3"], "'1' is '0001' in customers"),  # zeros a spreadsheet dropped
        (["1", "2", "3"], ["1.0", "2.0", "3.0"], "'1.0' is '1' in customers"),  # an id column exported as float
    ],
)
def test_unknown_ids_written_another_way_are_named(tmp_path, customers, interactions, hint):
    t = tables()
    t["customers"]["customer_id"] = customers
    t["interactions"]["customer_id"] = interactions
    t["holdings"]["customer_id"] = customers[1]
    expect(tmp_path, t, "3 row(s)", hint, "compared as text")


def test_unknown_customer_in_holdings(tmp_path):
    t = tables()
    t["holdings"].loc[0, "customer_id"] = 42
    expect(tmp_path, t, "holdings", "'42'", "not in customers")


def test_non_numeric_value(tmp_path):
    t = tables()
    t["customers"]["income"] = ["1000", "lots", "3000"]
    expect(tmp_path, t, "'income' must be numeric", "row 2", "'lots'")


@pytest.mark.parametrize("value", ["20000,50", "1.234,56", "1,234.56"])
def test_numbers_with_a_decimal_comma_or_thousands_separators_are_named(tmp_path, value):
    t = tables()
    t["customers"]["income"] = ["1000", value, "3000"]
    expect(tmp_path, t, "'income' must be numeric", f"row 2: '{value}'", "decimal point (1234.56)")


def test_plain_text_in_a_numeric_column_gets_no_decimal_hint(tmp_path):
    t = tables()
    t["customers"]["income"] = ["1000", "lots", "3000"]
    with pytest.raises(DataError) as info:
        load_dataset(write(tmp_path, t))
    assert "decimal" not in str(info.value)


def test_risk_out_of_scale(tmp_path):
    t = tables()
    t["customers"].loc[1, "risk"] = 9
    expect(tmp_path, t, "'risk'", "1 to 7")


def test_empty_table(tmp_path):
    t = tables()
    t["products"] = t["products"].iloc[:0]
    expect(tmp_path, t, "products", "empty")


def test_header_only_interactions_are_no_outcomes_where_none_are_required(tmp_path):
    # monitor, report, score and serve --data take a directory without interactions; one whose
    # interactions export came back with a header and no rows was refused as an empty table.
    t = tables()
    t["interactions"] = t["interactions"].iloc[:0]
    d = write(tmp_path, t)
    ds = load_dataset(d, require_interactions=False)
    assert len(ds.interactions) == 0 and len(ds.customers) == 3
    with pytest.raises(DataError, match="interactions .* the table is empty"):
        load_dataset(d)  # train and evaluate need outcomes


def test_column_names_differing_in_spaces_or_case_are_named(tmp_path):
    # In the list of a file's columns 'income ' looks like 'income': the message names the pair.
    t = tables()
    t["customers"] = t["customers"].rename(columns={"income": "Income "})
    expect(tmp_path, t, "'Income ' for 'income'", "spaces and case", error=SchemaError)
    t = tables()
    t["interactions"] = t["interactions"].rename(columns={"product_id": " product_id"})
    (tmp_path / "b").mkdir()
    expect(tmp_path / "b", t, "interactions", "missing column(s) 'product_id' (the file has ' product_id' for")


def test_a_parquet_file_with_a_column_named_twice_is_refused(tmp_path):
    # Arrow allows two fields of one name; finrec score's chunked reader then met a frame where
    # a column belonged: "internal error: TypeError".
    import pyarrow as pa
    import pyarrow.parquet as pq

    from finrec.data.io import iter_customer_chunks

    d = write(tmp_path, tables(), fmt="parquet")
    table = pq.read_table(d / "customers.parquet")
    pq.write_table(table.append_column("income", pa.array([1.0, 2.0, 3.0])), d / "customers.parquet")
    with pytest.raises(DataError, match="more than one column is named 'income'"):
        load_dataset(d)
    with pytest.raises(DataError, match="more than one column is named 'income'"):
        next(iter_customer_chunks(d / "customers.parquet", S.DatasetSchema.from_dict(SCHEMA).customers))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_streamed_link_tables_and_the_history_with_a_column_named_twice_are_refused(tmp_path, suffix):
    # The streamed reader of holdings and interactions: from Parquet an internal error (the id a
    # frame of two columns), from CSV the first of the two read without a word (a reviewer).
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from finrec.data.io import read_history
    from finrec.data.links import link_batches

    def save(name, columns, names):
        table = pa.table([pa.array(c) for c in columns], names=names)
        path = tmp_path / f"{name}{suffix}"
        pq.write_table(table, path) if suffix == ".parquet" else pacsv.write_csv(table, path)
        return path

    links = save("holdings", [["C1"], ["P1"], ["P2"]], ["customer_id", "product_id", "product_id"])
    with pytest.raises(DataError, match="more than one column is named 'product_id'"):
        list(link_batches(links, 100))
    history = save(
        "history", [["C1"], ["P1"], ["2026-01-31"], ["2026-02-28"]], ["customer_id", "product_id", "as_of", "as_of"]
    )
    with pytest.raises(DataError, match="more than one column is named 'as_of'"):
        read_history(history)


def test_schema_key_typo_suggests_fix(tmp_path):
    bad = {**SCHEMA, "customers": {**SCHEMA["customers"], "categorcal": ["segment"]}}
    del bad["customers"]["categorical"]
    expect(tmp_path, tables(), "unknown key 'categorcal'", "did you mean 'categorical'", schema=bad, error=SchemaError)


def test_not_a_csv(tmp_path):
    d = write(tmp_path, tables())
    (d / "customers.csv").write_bytes(bytes(range(256)) * 10)
    with pytest.raises(DataError, match="customers.csv"):
        load_dataset(d)


def test_unparseable_timestamp(tmp_path):
    t = tables()
    t["interactions"]["timestamp"] = ["2026-01-01", "not a date", "2026-02-01"]
    expect(tmp_path, t, "timestamp", "not dates", "row 2")


def test_infinite_value(tmp_path):
    t = tables()
    t["customers"]["income"] = [1.0, np.inf, 2.0]
    expect(tmp_path, t, "infinite", "income")


def test_upload_bytes_empty_and_header_only():
    with pytest.raises(DataError, match="upload: the file is empty"):
        read_csv_bytes(b"  \n", ("customer_id",), "upload")
    assert len(read_csv_bytes(b"customer_id,age\n", ("customer_id",), "upload")) == 0


def test_write_dataset_roundtrip_and_fingerprint(tmp_path, small_tables):
    out = write_dataset(small_tables, S.SYNTHETIC.schema(), tmp_path / "bank")
    first = fingerprint(out)
    ds = load_dataset(out)
    assert len(ds.customers) == len(small_tables["customers"])
    assert ds.ground_truth is not None
    write_dataset(small_tables, S.SYNTHETIC.schema(), out)  # rewriting the same data
    assert fingerprint(out) == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bank")]  # no temp dirs left


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_dataset_written_in_blocks_reads_as_the_whole(tmp_path, fmt):
    from finrec.data.synthetic import GeneratorSettings, generate, generate_blocks

    # 2,100 customers in blocks of 1,000: the last block's categorical ids fit int8 codes where
    # the first block's need int16, so the Parquet writer must take the first block's types.
    settings = GeneratorSettings(n_customers=2100, seed=2, months=3)
    rows = write_dataset_blocks(
        generate_blocks(settings, block_customers=1000), S.SYNTHETIC.schema(), tmp_path / "blocks", fmt
    )
    whole = generate(settings, block_customers=1000)
    assert rows == {name: len(frame) for name, frame in whole.items()}
    write_dataset(whole, S.SYNTHETIC.schema(), tmp_path / "whole", fmt)
    a, b = load_dataset(tmp_path / "blocks"), load_dataset(tmp_path / "whole")
    for name in ("customers", "products", "holdings", "interactions", "ground_truth", "holdings_history"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))


def test_a_failed_block_leaves_the_existing_dataset_whole(tmp_path, small_tables):
    out = write_dataset(small_tables, S.SYNTHETIC.schema(), tmp_path / "bank")
    before = fingerprint(out)

    def blocks():
        yield small_tables
        raise RuntimeError("the generator failed in block 2")

    with pytest.raises(RuntimeError, match="block 2"):
        write_dataset_blocks(blocks(), S.SYNTHETIC.schema(), out)
    assert fingerprint(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]  # no temp dirs left


def test_csv_output_escapes_formulas(tmp_path):
    path = write_table(
        pd.DataFrame({"customer_id": ["=cmd|' /C calc'!A0", "ok", "@x"], "score": [-1.5, 2.0, 3.0]}), tmp_path / "o.csv"
    )
    text = path.read_text()
    assert "'=cmd" in text and "'@x" in text and "-1.5" in text


@pytest.mark.parametrize(
    "ids, duplicated",
    [
        (["a", "b", "c"], None),  # sorted: the neighbour comparison proves uniqueness
        (["c", "a", "b"], None),  # unsorted: the hash check
        (["a", "b", "b", "c"], "'b'"),  # sorted but not strictly
        (["b", "a", "b"], "'b'"),
        (["a", None, "a"], "'a'"),  # a gap in a sorted-looking column must not hide a duplicate
    ],
)
@pytest.mark.parametrize("dtype", ["str", object])
def test_require_unique_fast_and_slow_paths(ids, duplicated, dtype):
    from finrec.data.validate import require_unique

    df = pd.DataFrame({"customer_id": pd.Series(ids, dtype=dtype)})
    if duplicated is None:
        require_unique(df, "customer_id", "customers.csv")
    else:
        with pytest.raises(DataError, match=f"customers.csv: column 'customer_id' must be unique.*{duplicated}"):
            require_unique(df, "customer_id", "customers.csv")


def test_prepare_entities_leaves_the_callers_frame_alone(small_tables):
    from finrec.data.io import prepare_entities

    raw = small_tables[S.CUSTOMERS].head(100).copy()
    raw["age"] = raw["age"].astype(str)  # text numbers get coerced in the result only
    before = raw.copy()
    prepared = prepare_entities(raw, S.SYNTHETIC.schema().customers, "customers")
    assert prepared["age"].dtype == "float64"
    pd.testing.assert_frame_equal(raw, before)


@pytest.mark.parametrize(
    "column, kind",
    [
        (pd.Series(pd.to_datetime(["1990-01-01", None, "1970-06-30"])), "dates"),
        (pd.Series(pd.to_datetime(["1990-01-01", None, "1970-06-30"])).dt.tz_localize("UTC"), "dates"),
        (pd.Series(pd.to_datetime(["1990-01-01", None, "1970-06-30"])).astype("timestamp[us][pyarrow]"), "dates"),
        (pd.Series(pd.to_datetime(["1990-01-01", None, "1970-06-30"])).astype("date32[pyarrow]"), "dates"),
        (pd.Series(pd.period_range("2020-01", periods=3, freq="M")), "dates"),
        (pd.Series(pd.to_timedelta(["1D", None, "2D"])), "durations"),
        (pd.Series([1 + 2j, 3, 4]), "complex numbers"),
    ],
)
def test_a_numeric_column_of_dates_or_durations_is_refused_not_read_as_their_nanoseconds(column, kind):
    """A notebook's frame with a datetime in a numeric column (a birth date for ``age``, a
    Timedelta tenure) was read as (micro)seconds since 1970, a missing date as -9.2e18, an Arrow
    timestamp as all missing: scored silently on a number of nothing."""
    t = tables()
    t["customers"] = t["customers"].assign(income=column)
    with pytest.raises(DataError, match=f"customers.*column 'income' must be numeric; it holds {kind}"):
        validate_tables(S.DatasetSchema.from_dict(SCHEMA), t)


def test_nullable_and_arrow_numbers_read_as_the_plain_ones():
    t = tables()
    plain = validate_tables(S.DatasetSchema.from_dict(SCHEMA), t).customers
    t["customers"] = t["customers"].astype({"age": "Float64", "income": "int64[pyarrow]", "risk": "Int64"})
    other = validate_tables(S.DatasetSchema.from_dict(SCHEMA), t).customers
    pd.testing.assert_frame_equal(plain, other)


# ------------------------------------------------------------------------------------ display hints
DISPLAY = {
    "profile": ["income", "age"],
    "what_if": ["income", "risk"],
    "segments": ["segment"],
    "product_name": "title",
    "product_details": ["ptype", "yield"],
    "labels": {"yield": "Yield (%)"},
}


def test_display_hints_load_and_stay_out_of_the_model_contract(tmp_path, small_tables):
    t = tables()
    t["products"]["title"] = ["Deposit", "Fund"]
    ds = load_dataset(write(tmp_path, t, {**SCHEMA, "display": DISPLAY}))
    hints = ds.schema.display
    assert hints.what_if == ("income", "risk") and hints.product_name == "title"
    assert hints.label("yield") == "Yield (%)" and hints.label("risk_level") == "Risk level"
    # The schema hash and every "same schema?" check read to_dict(): hints change nothing there.
    assert ds.schema.to_dict() == S.DatasetSchema.from_dict(SCHEMA).to_dict()
    assert ds.schema.to_dict(display=True)["display"] == DISPLAY
    # The synthetic bank is one schema among others: its hints are in the schema.yaml it writes.
    out = write_dataset(small_tables, S.SYNTHETIC.schema(), tmp_path / "bank")
    written = yaml.safe_load((out / "schema.yaml").read_text())["display"]
    assert written["what_if"] == list(S.SYNTHETIC.display.what_if)
    assert load_dataset(out).schema.display == S.SYNTHETIC.display


@pytest.mark.parametrize(
    "display, fragments",
    [
        ({"colour": "blue"}, ("display: unknown key 'colour'",)),
        ({"whatif": ["income"]}, ("unknown key 'whatif'", "did you mean 'what_if'")),
        ({"what_if": ["net_worth"]}, ("display.what_if", "'net_worth'", "not a numeric customer column")),
        ({"what_if": ["segment"]}, ("display.what_if", "'segment'", "numeric")),
        ({"segments": ["income"]}, ("display.segments", "'income'", "not a categorical customer column")),
        ({"profile": "income"}, ("display.profile", "expected a list")),
        ({"labels": {"nothing": "x"}}, ("display.labels", "'nothing'")),
        ({"labels": {"income": ""}}, ("display.labels.income", "non-empty")),
        ({"labels": ["income"]}, ("display.labels", "expected a mapping")),
        (["profile"], ("display: expected a mapping",)),
        ({"product_name": "title"}, ("display section", "'title'", "products")),
        ({"product_details": ["ptype", "rate"]}, ("display section", "'rate'", "products")),
    ],
)
def test_display_hints_are_checked(tmp_path, display, fragments):
    expect(tmp_path, tables(), *fragments, schema={**SCHEMA, "display": display}, error=SchemaError)


def test_tables_given_from_python_are_checked_by_name_and_kind():
    schema = S.DatasetSchema.from_dict(SCHEMA)
    t = tables()
    # 'holding' was dropped silently: every customer held nothing and got their products offered.
    with pytest.raises(DataError, match="tables: unknown key 'holding' \\(did you mean 'holdings'\\?\\)"):
        validate_tables(schema, {**t, "holding": t.pop("holdings")})
    with pytest.raises(DataError, match="tables: missing table 'products'"):
        validate_tables(schema, {"customers": t["customers"]})  # was a bare KeyError
    with pytest.raises(DataError, match="customers.*expected a pandas DataFrame, got dict"):
        validate_tables(schema, {**t, "customers": t["customers"].to_dict("list")})  # an AttributeError


def test_a_withdrawn_product_customers_still_hold_loads_and_a_dropped_one_is_still_refused(
    withdrawing_bank, updated_bank, withdrawn
):
    """A tester's monthly cycle: the bank withdrew a product and dropped it from the products
    table, as the README said; every command that loads a dataset then refused the holdings of
    it. Marked not on offer it stays in the table and loads; dropped it is still refused (a
    typo or a broken export must not pass)."""
    dataset = load_dataset(withdrawing_bank())
    assert (dataset.holdings.product_id == withdrawn).sum() > 100
    assert (dataset.interactions.product_id == withdrawn).any()
    assert dataset.schema.products.on_offer == "on_offer"
    # The bank's current word, not the model's contract: the schema hash form leaves it out.
    assert dataset.schema.to_dict() == S.SYNTHETIC.schema().to_dict()
    assert dataset.schema.to_dict(display=True)["products"]["on_offer"] == "on_offer"
    assert S.DatasetSchema.from_dict(dataset.schema.to_dict(display=True)) == dataset.schema

    dropped = updated_bank(lambda products: products[products.product_id != withdrawn])
    with pytest.raises(DataError, match="row\\(s\\) name product_id values that are not in products"):
        load_dataset(dropped)


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_an_on_offer_value_that_is_not_yes_or_no_is_refused_naming_row_and_value(withdrawing_bank, withdrawn, value):
    data = withdrawing_bank(value)
    products = pd.read_parquet(data / "products.parquet")
    row = int(np.flatnonzero(products.product_id == withdrawn)[0]) + 1
    with pytest.raises(DataError) as caught:
        load_dataset(data)
    message = str(caught.value)
    assert f"column 'on_offer' must be true/false or 1/0; 1 value(s) are not, e.g. row {row}: '{value}'" in message
    assert "products" in message


def test_on_offer_words_and_a_missing_column():
    """true/false, yes/no, y/n, t/f and 1/0 in any case; an empty cell is on offer; a column the
    schema names that the table lacks is refused like any other."""
    from finrec.data import validate as V

    table = S.TableSchema(id="product_id", on_offer="live")
    df = pd.DataFrame({"product_id": list("abcdefgh"), "live": ["Yes", "no", "TRUE", "f", None, "0", "1", ""]})
    assert list(V.withdrawn(df, table, "products")) == [False, True, False, True, False, True, False, False]
    numbers = pd.DataFrame({"product_id": ["a", "b", "c"], "live": [1.0, 0.0, np.nan]})
    assert list(V.withdrawn(numbers, table, "products")) == [False, True, False]
    assert not V.withdrawn(df, S.TableSchema(id="product_id"), "products").any()
    with pytest.raises(SchemaError, match="names column\\(s\\) 'live' that products does not have"):
        V.check_schema_columns(df.drop(columns="live"), table, "products")


@pytest.mark.parametrize("given_as", [list, np.array, pd.Series, pd.Index])
def test_subset_customers_keeps_exactly_their_rows_of_every_table(given_as):
    # The subset is looked up by hashing in Arrow (pandas' isin made a Python object of every id
    # kept: 35 s for 1.8M of 2M customers); it must keep what the plain comparison keeps, in
    # order, the history's categorical ids and an id of no table included.
    from finrec.data.synthetic import GeneratorSettings, generate

    data = validate_tables(S.SYNTHETIC.schema(), generate(GeneratorSettings(n_customers=300, seed=3, months=3)))
    assert data.holdings_history is not None and isinstance(
        data.holdings_history[S.CUSTOMER_ID].dtype, pd.CategoricalDtype
    )
    ids = data.customers[S.CUSTOMER_ID].astype(str).tolist()
    keep = [*ids[::3], "nobody"]
    sub = data.subset_customers(given_as(keep))
    wanted = set(keep)
    for name in ("customers", "interactions", "holdings", "holdings_history", "ground_truth"):
        table, column = getattr(data, name), S.CUSTOMER_ID
        expected = table[[str(c) in wanted for c in table[column]]].reset_index(drop=True)
        pd.testing.assert_frame_equal(getattr(sub, name), expected, obj=name)
    assert len(sub.customers) == len(ids[::3])


def test_the_ground_truth_can_be_left_unread(tmp_path):
    from finrec.data.synthetic import GeneratorSettings, generate

    data = write_dataset(generate(GeneratorSettings(n_customers=200, seed=1)), S.SYNTHETIC.schema(), tmp_path / "b")
    assert load_dataset(data).ground_truth is not None
    (data / "ground_truth.parquet").write_bytes(b"PAR1 not a parquet file PAR1")
    with pytest.raises(DataError, match="ground_truth"):
        load_dataset(data)
    left = load_dataset(data, ground_truth=False)
    assert left.ground_truth is None and len(left.customers) == 200
