"""A corpus of named bad inputs, each run through every entry point (CLI, Python API, REST API,
dashboard upload validator) by ``test_corpus.py``.

* ``DATA_CASES`` damage a copy of a valid CSV dataset directory in place; ``fragments`` must all
  appear in the message (an empty tuple means the input is valid and must be accepted). When
  ``upload`` is set the damage is confined to ``customers.csv``, whose bytes are also fed to the
  dashboard's upload validator.
* ``MODEL_CASES`` damage a copy of a valid model directory.
* ``CONFIG_CASES`` are the text of a training config file.
* ``BODY_CASES`` and ``FEATURE_CASES`` are request bodies for ``POST /recommendations``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from finrec.data import schema as S
from finrec.errors import ArtifactError, ConfigError, DataError, FinrecError, SchemaError

FORMULA_ID = "=cmd|' /C calc'!A0"
FORMULA_IDS = (FORMULA_ID, "+1+1", "-2-2", "@SUM(A1)")
UNICODE_TEXT = "Zürich – 北京 – مرحبا – 🙂"
CONTROL_TEXT = "north\x01\x07\x1b[31m\u202eevil"
DISTINCT_INCOME = 123456.789  # a value no log, response or message may ever show


@dataclass(frozen=True)
class Case:
    name: str
    damage: Callable[[Path], None]
    fragments: tuple[str, ...] = ()
    error: type[FinrecError] = DataError
    upload: bool = False  # the damage touches customers.csv only
    upload_fragments: tuple[str, ...] | None = None  # when the upload validator words it differently
    known_bug: str | None = None  # an open defect: the test is an expected failure until it is fixed

    @property
    def valid(self) -> bool:
        return not self.fragments

    def __str__(self) -> str:  # the test id
        return self.name


# ------------------------------------------------------------------------------------ helpers


def read(d: Path, table: str) -> pd.DataFrame:
    """A table as text, exactly as in the file (no type guessing, no NaN conversion)."""
    return pd.read_csv(d / f"{table}.csv", dtype=str, keep_default_na=False)


def write(d: Path, table: str, df: pd.DataFrame) -> None:
    df.to_csv(d / f"{table}.csv", index=False)


def edit(table: str, fn: Callable[[pd.DataFrame], pd.DataFrame | None]) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        df = read(d, table)
        out = fn(df)
        write(d, table, df if out is None else out)

    return damage


def set_cell(table: str, column: str, value: str, row: int = 1) -> Callable[[Path], None]:
    def fn(df):
        df.loc[row, column] = value

    return edit(table, fn)


def drop_column(table: str, column: str) -> Callable[[Path], None]:
    return edit(table, lambda df: df.drop(columns=[column]))


def raw_bytes(table: str, data: bytes) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        (d / f"{table}.csv").write_bytes(data)

    return damage


def transform_bytes(table: str, fn: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        path = d / f"{table}.csv"
        path.write_bytes(fn(path.read_bytes()))

    return damage


def schema_text(text: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        (d / "schema.yaml").write_text(text, encoding="utf-8")

    return damage


def schema_edit(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    import yaml

    def damage(d: Path) -> None:
        raw = yaml.safe_load((d / "schema.yaml").read_text())
        fn(raw)
        (d / "schema.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    return damage


def _rename_key(section: str, old: str, new: str):
    def fn(raw):
        raw[section][new] = raw[section].pop(old)

    return fn


def _header_only(table: str) -> Callable[[Path], None]:
    return transform_bytes(table, lambda data: data.split(b"\n", 1)[0] + b"\n")


def _duplicate_first_id(df):
    df.loc[1, "customer_id"] = df.loc[0, "customer_id"]


def _latin1(data: bytes) -> bytes:
    # The fourth row (line 5): pandas' offset of the fault is within the cell ("at byte 1"), which
    # sent a user to the file's second byte; the message names the line.
    text = data.decode("utf-8").splitlines()
    cols = text[4].split(",")
    cols[-2] = "Sö Paulö"  # a categorical column (channel) in Latin-1
    text[4] = ",".join(cols)
    return "\n".join(text).encode("latin-1") + b"\n"


def _ragged(data: bytes) -> bytes:
    lines = data.split(b"\n")
    lines[3] = lines[3] + b",1,2,3"
    return b"\n".join(lines)


def _income_twice(data: bytes) -> bytes:
    # Two columns named 'income' (gross and net, say): pandas reads the second as 'income.1'
    # and the schema's 'income' was silently the first.
    head, rest = data.split(b"\n", 1)
    return head.replace(b"savings", b"income", 1) + b"\n" + rest


def _trailing_empty_columns(data: bytes) -> bytes:
    return b"\n".join(line + b",," if line else line for line in data.split(b"\n"))


def _semicolons(data: bytes) -> bytes:
    return data.replace(b",", b";")


def _drop_table(table: str):
    def damage(d: Path) -> None:
        (d / f"{table}.csv").unlink()

    return damage


def _also_parquet(d: Path) -> None:
    read(d, "products").to_parquet(d / "products.parquet")


def _corrupt_parquet(d: Path) -> None:
    (d / "products.csv").unlink()
    (d / "products.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 100 + b"PAR1")


def _no_schema(d: Path) -> None:
    (d / "schema.yaml").unlink()


def _not_a_dir(d: Path) -> None:
    shutil.rmtree(d)


def _file_not_dir(d: Path) -> None:
    shutil.rmtree(d)
    d.write_text("customer_id\n1\n")


def rename_ids(*values: str) -> Callable[[Path], None]:
    """The first customers renamed to ``values``, consistently in every table."""

    def damage(d: Path) -> None:
        customers = read(d, "customers")
        renames = {customers.loc[i, "customer_id"]: value for i, value in enumerate(values)}
        for table in ("customers", "interactions", "holdings", "ground_truth"):
            if (d / f"{table}.csv").exists():
                df = read(d, table)
                df["customer_id"] = df["customer_id"].replace(renames)
                write(d, table, df)

    return damage


def _dates_as(fmt: str, then=None):
    """The interactions' timestamps written as ``fmt`` (e.g. day first), then ``then`` applied."""

    def change(df):
        text = pd.to_datetime(df["timestamp"], format="mixed").dt.strftime(fmt)
        df["timestamp"] = then(text) if then else text

    return change


def _two_offsets(df):
    # ISO 8601 in Madrid time: +02:00 in summer, +01:00 in winter.
    stamps = pd.to_datetime(df["timestamp"], format="mixed")
    df["timestamp"] = [t.strftime("%Y-%m-%dT10:00:00") + ("+02:00" if 4 <= t.month <= 9 else "+01:00") for t in stamps]


def _integer_codes_with_gaps(df):
    # how a SQL export writes a nullable integer column: 1..4, an empty cell where missing
    codes = (df["education"].astype("category").cat.codes + 1).astype(str)
    df["education"] = codes.where(df.index % 17 != 0, "")


def _extra_columns(df):
    df["notes"] = "free text, ignored"
    df["score_2031"] = "1.5"


# ------------------------------------------------------------------------------------ the corpus

C, P, I, H = "customers", "products", "interactions", "holdings"

DATA_CASES: list[Case] = [
    # columns
    Case("missing_feature_column", drop_column(C, "income"), ("'income'", "schema.yaml"), SchemaError, upload=True),
    Case("missing_customer_id_column", drop_column(C, "customer_id"), ("'customer_id'",), SchemaError, upload=True),
    Case("missing_product_id_in_interactions", drop_column(I, "product_id"), ("interactions", "'product_id'")),
    Case("extra_columns_are_ignored", edit(C, _extra_columns), upload=True),
    Case("extra_column_in_interactions", edit(I, lambda df: df.assign(channel="web"))),
    # wrong types
    Case("text_in_numeric", set_cell(C, "income", "lots"), ("'income' must be numeric", "'lots'"), upload=True),
    Case(
        "thousands_separator_in_numeric", set_cell(C, "savings", "1,000"), ("'savings' must be numeric",), upload=True
    ),
    Case("yes_in_numeric", set_cell(C, "age", "yes"), ("'age' must be numeric",), upload=True),
    Case("missing_numeric_is_imputed", set_cell(C, "income", ""), upload=True),
    Case("literal_nan_is_missing", set_cell(C, "income", "NaN"), upload=True),
    Case("integer_categories_with_gaps", edit(C, _integer_codes_with_gaps), upload=True),
    Case("infinity", set_cell(C, "income", "inf"), ("'income'", "infinite"), upload=True),
    Case("minus_infinity", set_cell(C, "debt", "-Infinity"), ("'debt'", "infinite"), upload=True),
    Case("overflowing_number", set_cell(C, "savings", "1e309"), ("'savings'", "infinite"), upload=True),
    # absurd values
    Case("negative_income", set_cell(C, "income", "-5"), ("'income'", "at least 0"), upload=True),
    Case("negative_savings", set_cell(C, "savings", "-0.01"), ("'savings'", "at least 0"), upload=True),
    Case("age_300", set_cell(C, "age", "300"), ("'age'", "130"), upload=True),
    Case("negative_age", set_cell(C, "age", "-1"), ("'age'",), upload=True),
    Case("risk_tolerance_9", set_cell(C, "risk_tolerance", "9"), ("'risk_tolerance'", "1 to 7"), upload=True),
    Case("risk_tolerance_fraction", set_cell(C, "risk_tolerance", "2.5"), ("'risk_tolerance'", "integer"), upload=True),
    Case("risk_tolerance_missing", set_cell(C, "risk_tolerance", ""), ("'risk_tolerance'",), upload=True),
    Case("product_risk_0", set_cell(P, "risk_level", "0"), ("'risk_level'", "1 to 7")),
    Case("probability_over_1", set_cell("ground_truth", "probability", "1.5"), ("'probability'", "[0, 1]")),
    # dates
    Case("unparseable_date", set_cell(I, "timestamp", "31/31/2026"), ("'timestamp'", "not dates", "'31/31/2026'")),
    Case("date_is_text", set_cell(I, "timestamp", "yesterday"), ("'timestamp'", "'yesterday'")),
    # A parser left to guess read 30/06/2026 as 30 June and 11/12/2026 as 12 November in one
    # column, and two UTC offsets (summer and winter time) crashed every command (a tester).
    Case("dates_day_first", edit(I, _dates_as("%d/%m/%Y"))),
    Case("dates_with_two_utc_offsets", edit(I, _two_offsets)),
    Case(
        "dates_day_first_beside_month_first",
        edit(I, _dates_as("%d/%m/%Y", then=lambda t: t.where(t.index != 0, "06/30/2026"))),
        ("'timestamp'", "mixes day-first and month-first", "'06/30/2026'", "YYYY-MM-DD"),
    ),
    Case(
        "dates_whose_day_and_month_cannot_be_told",
        edit(I, _dates_as("%d/%m/%Y", then=lambda t: t.str.replace(r"^\d\d/", "05/", regex=True))),
        ("'timestamp'", "cannot be told apart", "YYYY-MM-DD"),
    ),
    # ids
    Case("duplicate_customer_id", edit(C, _duplicate_first_id), ("'customer_id'", "must be unique"), upload=True),
    Case("duplicate_product_id", set_cell(P, "product_id", "CUR_BASIC", row=1), ("'product_id'", "must be unique")),
    Case("empty_customer_id", set_cell(C, "customer_id", " "), ("'customer_id'", "empty id"), upload=True),
    Case(
        "interaction_unknown_customer",
        set_cell(I, "customer_id", "NOBODY"),
        ("interactions", "'NOBODY'", "not in customers"),
    ),
    Case(
        "interaction_unknown_product",
        set_cell(I, "product_id", "NO_SUCH"),
        ("interactions", "'NO_SUCH'", "not in products"),
    ),
    Case("holding_unknown_product", set_cell(H, "product_id", "GHOST"), ("holdings", "'GHOST'")),
    Case("interaction_empty_customer", set_cell(I, "customer_id", ""), ("interactions", "empty id")),
    Case("formula_ids_load", rename_ids(*FORMULA_IDS)),
    Case(
        "whitespace_around_ids", edit(C, lambda df: df.assign(customer_id="  " + df["customer_id"] + " ")), upload=True
    ),
    Case("very_long_and_unicode_ids", rename_ids("X" * 5000, UNICODE_TEXT, "tab\there")),
    # files
    Case("empty_file", raw_bytes(C, b""), ("customers", "empty"), upload=True),
    Case("header_only", _header_only(C), ("customers", "empty"), upload=True),
    Case("interactions_header_only", _header_only(I), ("interactions", "empty")),
    Case("binary_file", raw_bytes(C, bytes(range(256)) * 40), ("customers",), upload=True),
    Case("gzip_bytes", raw_bytes(C, b"\x1f\x8b\x08\x00" + bytes(range(200)) * 5), ("customers",), upload=True),
    Case("latin1_encoding", transform_bytes(C, _latin1), ("UTF-8", "line 5", "S\\xf6 Paul\\xf6"), upload=True),
    Case("ragged_rows", transform_bytes(C, _ragged), ("not a readable CSV",), upload=True),
    Case("semicolon_separated", transform_bytes(C, _semicolons), ("';'", "separated"), upload=True),
    Case("column_named_twice", transform_bytes(C, _income_twice), ("named 'income'",), upload=True),
    Case("trailing_empty_columns", transform_bytes(C, _trailing_empty_columns), upload=True),
    Case("utf8_bom_and_crlf", transform_bytes(C, lambda b: b"\xef\xbb\xbf" + b.replace(b"\n", b"\r\n")), upload=True),
    Case("missing_table", _drop_table(P), ("missing table 'products'",)),
    Case("csv_and_parquet_both", _also_parquet, ("keep one",)),
    Case("corrupt_parquet", _corrupt_parquet, ("products.parquet", "not a readable Parquet")),
    # strings
    Case("unicode_strings", set_cell(C, "region", UNICODE_TEXT), upload=True),
    Case("control_characters", set_cell(C, "region", CONTROL_TEXT), upload=True),
    Case("nul_byte", transform_bytes(C, lambda b: b.replace(b"north", b"no\x00rth", 1)), upload=True),
    # schema
    Case(
        "schema_names_absent_column",
        schema_edit(lambda r: r["customers"]["numeric"].append("net_worth")),
        ("'net_worth'", "schema.yaml"),
        SchemaError,
    ),
    Case(
        "schema_key_typo",
        schema_edit(_rename_key("customers", "categorical", "categorcal")),
        ("'categorcal'", "did you mean 'categorical'"),
        SchemaError,
    ),
    Case(
        "schema_not_yaml",
        schema_text("customers: {id: [unclosed\n\t: :"),
        ("schema.yaml", "not valid YAML"),
        SchemaError,
    ),
    Case("schema_binary", lambda d: (d / "schema.yaml").write_bytes(bytes(range(256))), ("schema.yaml",), SchemaError),
    Case("schema_is_a_list", schema_text("- customers\n- products\n"), ("expected a mapping",), SchemaError),
    Case(
        "schema_missing_section", schema_edit(lambda r: r.pop("products")), ("missing section 'products'",), SchemaError
    ),
    Case(
        "schema_numeric_is_text",
        schema_edit(lambda r: r["customers"].__setitem__("numeric", "age")),
        ("expected a list",),
        SchemaError,
    ),
    Case("schema_missing", _no_schema, ("missing schema.yaml",), SchemaError),
    # the directory
    Case("directory_does_not_exist", _not_a_dir, ("not a directory",)),
    Case("directory_is_a_file", _file_not_dir, ("not a directory",)),
]

# ---- issue 11, "Your own data in the dashboard": the display hints of schema.yaml are checked like
# every other key, and are no part of the model's contract (changing them never invalidates a model).


def _display(**changes):
    def fn(raw):
        raw.setdefault("display", {}).update(changes)

    return fn


DATA_CASES += [
    Case(
        "display_hints_changed",
        schema_edit(
            _display(
                what_if=["savings", "debt"],
                segments=["region"],
                product_details=["expected_yield"],
                labels={"savings": "Savings (EUR)"},
            )
        ),
    ),
    Case("display_hints_removed", schema_edit(lambda r: r.pop("display"))),
    Case("display_unknown_key", schema_edit(_display(colour="blue")), ("display: unknown key 'colour'",), SchemaError),
    Case(
        "display_key_typo",
        schema_edit(lambda r: r["display"].__setitem__("whatif", r["display"].pop("what_if"))),
        ("unknown key 'whatif'", "did you mean 'what_if'"),
        SchemaError,
    ),
    Case(
        "display_what_if_absent_column",
        schema_edit(_display(what_if=["net_worth"])),
        ("display.what_if", "'net_worth'", "not a numeric customer column"),
        SchemaError,
    ),
    Case(
        "display_segment_is_numeric",
        schema_edit(_display(segments=["income"])),
        ("display.segments", "'income'", "not a categorical customer column"),
        SchemaError,
    ),
    Case(
        "display_product_column_absent",
        schema_edit(_display(product_details=["coupon"])),
        ("display section", "'coupon'", "products"),
        SchemaError,
    ),
    Case(
        "display_label_of_no_column",
        schema_edit(_display(labels={"shoe_size": "Shoe size"})),
        ("display.labels", "'shoe_size'"),
        SchemaError,
    ),
    Case(
        "display_label_empty",
        schema_edit(_display(labels={"income": " "})),
        ("display.labels.income", "non-empty"),
        SchemaError,
    ),
    Case(
        "display_is_a_list",
        schema_edit(lambda r: r.__setitem__("display", ["profile"])),
        ("display: expected a mapping",),
        SchemaError,
    ),
]


# ------------------------------------------------------------------------------------ models


def _truncate(name: str, keep: float = 0.5):
    def damage(d: Path) -> None:
        path = d / name
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return damage


def _alter_pipeline(d: Path) -> None:
    raw = json.loads((d / "pipeline.json").read_text())
    raw["customer_numeric"][0]["mean"] += 1.0
    (d / "pipeline.json").write_text(json.dumps(raw, indent=1))


def _unlink(name: str):
    def damage(d: Path) -> None:
        (d / name).unlink()

    return damage


def _manifest(fn):
    def damage(d: Path) -> None:
        raw = json.loads((d / "manifest.json").read_text())
        fn(raw)
        (d / "manifest.json").write_text(json.dumps(raw))

    return damage


def _pipeline_resealed(d: Path) -> None:
    """An altered pipeline whose checksum was updated too: the content check must still refuse it."""
    import hashlib

    (d / "pipeline.json").write_text(json.dumps({"format_version": 1, "schema": {"customers": {"id": "x"}}}))
    raw = json.loads((d / "manifest.json").read_text())
    raw["files"]["pipeline.json"] = hashlib.sha256((d / "pipeline.json").read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(raw))


def _model_resealed_garbage(d: Path) -> None:
    import hashlib

    (d / "model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    raw = json.loads((d / "manifest.json").read_text())
    raw["files"]["model.keras"] = hashlib.sha256((d / "model.keras").read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(raw))


MODEL_CASES: list[Case] = [
    Case("truncated_model_keras", _truncate("model.keras"), ("model.keras", "damaged"), ArtifactError),
    Case("empty_model_keras", _truncate("model.keras", 0.0), ("model.keras", "damaged"), ArtifactError),
    Case("altered_pipeline_json", _alter_pipeline, ("pipeline.json", "altered"), ArtifactError),
    Case("missing_manifest", _unlink("manifest.json"), ("manifest.json is missing",), ArtifactError),
    Case(
        "missing_embeddings", _unlink("product_embeddings.npy"), ("product_embeddings.npy is missing",), ArtifactError
    ),
    Case(
        "manifest_not_json",
        lambda d: (d / "manifest.json").write_text("{not json"),
        ("manifest.json", "not valid JSON"),
        ArtifactError,
    ),
    Case(
        "manifest_future_format",
        _manifest(lambda m: m.__setitem__("format_version", 99)),
        ("99", "retrain"),
        ArtifactError,
    ),
    Case("manifest_is_a_list", lambda d: (d / "manifest.json").write_text("[1, 2]"), ("format",), ArtifactError),
    Case("pipeline_resealed_incomplete", _pipeline_resealed, ("pipeline.json",), ArtifactError),
    Case("model_resealed_garbage", _model_resealed_garbage, ("cannot load the model",), ArtifactError),
    Case("model_dir_missing", lambda d: shutil.rmtree(d), ("no model directory",), ArtifactError),
]


# ------------------------------------------------------------------------------------ configs


@dataclass(frozen=True)
class ConfigCase:
    name: str
    text: str | bytes
    fragments: tuple[str, ...]
    error: type[FinrecError] = ConfigError

    def __str__(self) -> str:
        return self.name


CONFIG_CASES: list[ConfigCase] = [
    ConfigCase("config_section_typo", "trainng: {epochs: 1}\n", ("'trainng'", "did you mean 'training'")),
    ConfigCase("config_key_typo", "training: {epocs: 1}\n", ("'epocs'", "did you mean 'epochs'")),
    ConfigCase("config_wrong_type", "training: {epochs: many}\n", ("training.epochs", "integer")),
    ConfigCase("config_negative", "training: {epochs: -1}\n", ("training.epochs",)),
    ConfigCase("config_bad_loss", "training: {loss: hinge}\n", ("training.loss", "softmax")),
    ConfigCase("config_not_yaml", "model: {embedding_dim: [1,\n  : :\n", ("not valid YAML",)),
    ConfigCase("config_binary", bytes(range(256)), ("config",)),
    ConfigCase("config_is_a_list", "- 1\n- 2\n", ("expected a mapping",)),
    ConfigCase("config_section_is_text", "model: big\n", ("model", "expected a mapping")),
    ConfigCase("config_dropout_1", "model: {dropout: 1.0}\n", ("model.dropout",)),
    ConfigCase("config_widths_text", "model: {customer_widths: wide}\n", ("customer_widths", "expected a list")),
]


# ------------------------------------------------------------------------------------ REST bodies


@dataclass(frozen=True)
class BodyCase:
    name: str
    body: bytes
    status: tuple[int, ...]
    fragment: str | None = None

    def __str__(self) -> str:
        return self.name


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


BODY_CASES: list[BodyCase] = [
    BodyCase("not_json", b"{not json", (422,)),
    BodyCase("trailing_comma", b'{"customer_id": "C1",}', (422,)),
    BodyCase("empty_body", b"", (422,)),
    BodyCase("json_array", b"[1, 2]", (422,)),
    BodyCase("json_string", b'"C0000001"', (422,)),
    BodyCase("json_null", b"null", (422,)),
    BodyCase("invalid_utf8", b'{"customer_id": "\xff\xfe"}', (422,)),
    BodyCase("nan_id", b'{"customer_id": NaN}', (422,)),
    BodyCase("neither_id_nor_features", _j({"k": 3}), (422,)),
    BodyCase("both_id_and_features", _j({"customer_id": "C1", "features": {"age": 30}}), (422,)),
    BodyCase("unknown_customer", _j({"customer_id": "NOPE-1"}), (404,), "NOPE-1"),
    BodyCase("formula_customer", _j({"customer_id": FORMULA_ID}), (404,)),
    BodyCase("unicode_customer", _j({"customer_id": UNICODE_TEXT}), (404,)),
    BodyCase("control_char_customer", _j({"customer_id": CONTROL_TEXT}), (404,)),
    BodyCase("nul_customer", _j({"customer_id": "C\x000001"}), (404,)),
    BodyCase("k_zero", _j({"customer_id": "C1", "k": 0}), (422,)),
    BodyCase("k_huge", _j({"customer_id": "C1", "k": 10**30}), (422,)),
    BodyCase("k_float", _j({"customer_id": "C1", "k": 2.5}), (422,)),
    BodyCase("k_null", b'{"customer_id": "C1", "k": null}', (422,)),
    BodyCase("unknown_filter", _j({"customer_id": "C1", "filters": {"colour": "red"}}), (422,)),
    BodyCase("filters_not_object", _j({"customer_id": "C1", "filters": "conservative"}), (422,)),
    BodyCase("filter_categories_text", _j({"customer_id": "C1", "filters": {"include_categories": "fund"}}), (422,)),
    BodyCase("deeply_nested", b'{"customer_id": ' + b"[" * 5000 + b"]" * 5000 + b"}", (422,)),
    BodyCase("oversize_body", _j({"customer_id": "x" * 70_000}), (413,)),
    BodyCase("too_many_features", _j({"features": {f"f{i}": 1 for i in range(300)}}), (422,)),
    BodyCase("huge_holdings_list", _j({"features": {"holdings": ["P"] * 1500}}), (422,)),
]

# Bodies of {"features": ...}: one distinctive raw value each, never to be echoed back.
FEATURE_CASES: list[BodyCase] = [
    BodyCase("income_text", _j({"features": {"income": "one hundred twenty-three thousand"}}), (422,), "income"),
    BodyCase("income_nan", b'{"features": {"income": NaN}}', (422,)),
    BodyCase("income_infinity", b'{"features": {"income": Infinity}}', (422,)),
    BodyCase("income_1e309", b'{"features": {"income": 1e309}}', (422,)),
    BodyCase("income_negative", _j({"features": {"income": -123456.789}}), (422,), "income"),
    BodyCase("feature_age_300", _j({"features": {"age": 300.25}}), (422,), "age"),
    BodyCase("income_bool", _j({"features": {"income": True}}), (422,), "income"),
    BodyCase("income_nested", _j({"features": {"income": {"value": 123456.789}}}), (422,)),
    BodyCase("income_list", _j({"features": {"income": [123456.789]}}), (422,)),
    BodyCase("risk_9", _j({"features": {"risk_tolerance": 9}}), (422,), "risk_tolerance"),
    BodyCase("region_unicode", _j({"features": {"region": UNICODE_TEXT, "income": 5e4}}), (200,)),
    BodyCase("region_control", _j({"features": {"region": CONTROL_TEXT, "income": 5e4}}), (200,)),
    BodyCase("region_formula", _j({"features": {"region": FORMULA_ID}}), (200,)),
    # Refused since a tester's sweep (2026-12): a misspelled risk_tolerance was answered as if missing.
    BodyCase("unknown_feature_name", _j({"features": {"favourite_colour": "red"}}), (422,), "favourite_colour"),
    BodyCase("holdings_unknown", _j({"features": {"holdings": ["NO_SUCH_PRODUCT"]}}), (422,), "NO_SUCH_PRODUCT"),
    BodyCase("holdings_text", _j({"features": {"holdings": "CUR_BASIC"}}), (422,)),
    BodyCase("holdings_numbers", _j({"features": {"holdings": [1, 2]}}), (422,)),
]

# ------------------------------------------------------------------------------------ issue 11: REST bodies
# Each was a 500 or a silent coercion: integer literals past the float range, lone surrogate
# escapes (json.loads takes them; no UTF-8 encoder does), NaN / Infinity, deep nesting, and loose
# filter types ("no", 0, true) that turned a filter off or to 1. Raw bytes where the literal matters.

LONE_SURROGATE = b'"\\ud800"'  # the JSON text "\ud800": a high surrogate with no low one after it
DIGITS_400 = b"9" * 400  # a valid JSON integer no float holds
C1 = b'{"customer_id": "C1", '


def _deep(depth: int) -> bytes:
    return b'{"a": ' * depth + b"1" + b"}" * depth


def _filters(filters: dict) -> bytes:
    return _j({"customer_id": "C1", "filters": filters})


BODY_CASES += [
    BodyCase("filter_exclude_held_text", _filters({"exclude_held": "no"}), (422,), "exclude_held"),
    BodyCase("filter_suitability_zero", _filters({"suitability": 0}), (422,), "suitability"),
    BodyCase("filter_eligibility_text", _filters({"eligibility": "false"}), (422,), "eligibility"),
    BodyCase("filter_max_risk_true", _filters({"max_risk": True}), (422,), "max_risk"),
    BodyCase("filter_max_risk_text", _filters({"max_risk": "3"}), (422,), "max_risk"),
    BodyCase("filter_max_risk_float", _filters({"max_risk": 3.0}), (422,), "max_risk"),
    BodyCase("filter_max_risk_400_digits", C1 + b'"filters": {"max_risk": ' + DIGITS_400 + b"}}", (422,), "max_risk"),
    BodyCase("filter_max_risk_nan", C1 + b'"filters": {"max_risk": NaN}}', (422,), "max_risk"),
    BodyCase("k_400_digits", C1 + b'"k": ' + DIGITS_400 + b"}", (422,), '"k"'),
    BodyCase("k_infinity", C1 + b'"k": Infinity}', (422,), '"k"'),
    BodyCase("k_true", _j({"customer_id": "C1", "k": True}), (422,), '"k"'),
    BodyCase(
        "include_categories_lone_surrogate",
        C1 + b'"filters": {"include_categories": [' + LONE_SURROGATE + b"]}}",
        (422,),
        "include_categories",
    ),
    BodyCase(
        "exclude_categories_lone_surrogate",
        C1 + b'"filters": {"exclude_categories": ["fund", "\\udfff"]}}',
        (422,),
        "exclude_categories",
    ),
    BodyCase("customer_id_lone_surrogate", b'{"customer_id": ' + LONE_SURROGATE + b"}", (422,), "customer_id"),
    BodyCase("customer_id_surrogate_pair", b'{"customer_id": "C\\ud83d\\ude42"}', (404,)),  # a valid pair is text
    BodyCase("preset_lone_surrogate", C1 + b'"filters": {"preset": ' + LONE_SURROGATE + b"}}", (422,), "preset"),
    BodyCase("key_lone_surrogate", C1 + LONE_SURROGATE + b": 1}", (422,)),
    BodyCase("deeply_nested_objects", b'{"customer_id": ' + _deep(5000) + b"}", (422,)),
    BodyCase("nested_900_deep_id", b'{"customer_id": ' + _deep(900) + b"}", (422,), "customer_id"),
    BodyCase(
        "nested_900_deep_filters",
        C1 + b'"filters": {"include_categories": ' + b"[" * 900 + b"]" * 900 + b"}}",
        (422,),
        "include_categories",
    ),
]

FEATURE_CASES += [
    BodyCase("income_400_digits", b'{"features": {"income": ' + DIGITS_400 + b"}}", (422,), "income"),
    BodyCase("income_minus_400_digits", b'{"features": {"income": -' + DIGITS_400 + b"}}", (422,), "income"),
    BodyCase("risk_400_digits", b'{"features": {"risk_tolerance": ' + DIGITS_400 + b"}}", (422,), "risk_tolerance"),
    BodyCase(
        "unknown_feature_400_digits",
        b'{"features": {"favourite_number": ' + DIGITS_400 + b"}}",
        (422,),
        "favourite_number",
    ),
    BodyCase("income_300_digits_is_a_number", b'{"features": {"income": 1' + b"0" * 300 + b"}}", (200,)),
    BodyCase(
        "region_lone_surrogate", b'{"features": {"income": 5e4, "region": ' + LONE_SURROGATE + b"}}", (422,), "region"
    ),
    BodyCase("holdings_lone_surrogate", b'{"features": {"holdings": [' + LONE_SURROGATE + b"]}}", (422,), "holdings"),
    BodyCase("feature_name_lone_surrogate", b'{"features": {' + LONE_SURROGATE + b": 1}}", (422,), "surrogate"),
    BodyCase("region_nan", b'{"features": {"region": NaN}}', (422,), "region"),
    BodyCase("region_minus_infinity", b'{"features": {"region": -Infinity}}', (422,), "region"),
    BodyCase("income_nested_900_deep", b'{"features": {"income": ' + b"[" * 900 + b"]" * 900 + b"}}", (422,), "income"),
]


def params(cases):
    """``cases`` as pytest parameters; a case with a ``known_bug`` is a strict expected failure."""
    import pytest

    return [
        pytest.param(
            c,
            id=str(c),
            marks=[pytest.mark.xfail(reason=c.known_bug, strict=True)] if getattr(c, "known_bug", None) else [],
        )
        for c in cases
    ]


ALL_ERRORS = (DataError, SchemaError, ConfigError, ArtifactError)


# ------------------------------------------------------------------------------------ issue 11: loaders
# The model directory's manifest and resealed foreign files, YAML aliases / duplicate keys / size,
# binary, sparse and huge tables, terminal escapes and numpy reprs in messages. Every message of
# every case is also checked to be bounded and printable (``test_corpus.assert_safe_message``).

ESCAPE_TEXT = "\x1b]0;pwned\x07\x1b[2J\x1b[31m"  # OSC window title, clear screen, red
# Nine levels of nine aliases: 9**9 (387 million) strings once expanded.
BILLION_LAUGHS = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi")
)


def _sparse(table: str, suffix: str, size: int = 2 * 1024**3) -> Callable[[Path], None]:
    """The table replaced by a sparse file of ``size`` NUL bytes (no disk used), as truncate -s 2G makes."""

    def damage(d: Path) -> None:
        for old in S.TABLE_SUFFIXES:
            (d / f"{table}{old}").unlink(missing_ok=True)
        with open(d / f"{table}{suffix}", "wb") as handle:
            handle.truncate(size)

    return damage


def _header(fn: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def change(data: bytes) -> bytes:
        head, rest = data.split(b"\n", 1)
        return fn(head) + b"\n" + rest

    return transform_bytes(C, change)


def _many_unknown_long_ids(df):
    df.loc[0:49, "customer_id"] = [f"{'X' * 1000}{i}" for i in range(50)]


def _schema_append(text: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        path = d / "schema.yaml"
        path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")

    return damage


def _schema_nested_duplicate(d: Path) -> None:
    text = (d / "schema.yaml").read_text(encoding="utf-8")
    text = text.replace("  id: customer_id\n", "  id: customer_id\n  id: age\n", 1)
    (d / "schema.yaml").write_text(text, encoding="utf-8")


DATA_CASES += [
    # binary, sparse and huge files: refused after a small read, quickly, with a short message
    Case("sparse_2gb_customers", _sparse(C, ".csv"), ("customers.csv", "binary", "NUL")),
    Case("nul_bytes_file", raw_bytes(C, b"\x00" * 100_000), ("customers", "binary"), upload=True),
    Case(
        "nul_bytes_after_header",
        transform_bytes(C, lambda b: b.split(b"\n", 1)[0] + b"\n" + b"\x00" * 100_000),
        ("customers", "binary"),
        upload=True,
    ),
    Case(
        "utf16_text", transform_bytes(C, lambda b: b.decode("utf-8").encode("utf-16")), ("binary", "UTF-8"), upload=True
    ),
    Case(
        "header_over_1mb",
        _header(lambda h: h + b",x" + b"y" * 5_000_000),
        ("customers.csv", "first line", "1 MB"),
        upload=True,
        upload_fragments=("uploads are limited",),
    ),
    Case(
        "huge_column_name",
        _header(lambda h: b"z" * 600_000 + h[len(b"customer_id") :]),
        ("'customer_id'", "more character"),
        SchemaError,
        upload=True,
    ),
    Case("sparse_parquet", _sparse(P, ".parquet"), ("products.parquet", "PAR1")),
    Case("parquet_without_magic", _sparse(P, ".parquet", 4096), ("products.parquet", "PAR1")),
    # escapes from the file are shown escaped, never sent to the terminal
    Case(
        "escape_codes_in_header",
        _header(lambda h: ESCAPE_TEXT.encode() + h),
        ("'customer_id'", "\\x1b]0;pwned\\x07"),
        SchemaError,
        upload=True,
    ),
    Case(
        "escape_codes_in_cell",
        set_cell(C, "income", ESCAPE_TEXT + "12"),
        ("'income' must be numeric", "\\x1b[31m"),
        upload=True,
    ),
    Case("many_long_unknown_ids", edit(I, _many_unknown_long_ids), ("not in customers", "... and 45 more")),
    # plain numbers: `row 2: nan`, not np.float64(nan); `row(s) 2, 3`, not np.int64(2)
    Case("missing_risk_prints_nan", set_cell(C, "risk_tolerance", ""), ("row 2: nan",), upload=True),
    Case(
        "empty_ids_print_plain_rows",
        edit(C, lambda df: df.assign(customer_id=["", "", *df["customer_id"][2:]])),
        ("at row(s) 1, 2",),
        upload=True,
    ),
    # schema.yaml: aliases, duplicate keys, size, nesting
    Case("schema_billion_laughs", schema_text(BILLION_LAUGHS), ("schema.yaml line 1", "aliases"), SchemaError),
    Case("schema_merge_key", _schema_append("extra: &x {id: a}\nmore:\n  <<: *x\n"), ("aliases",), SchemaError),
    Case(
        "schema_duplicate_top_key",
        _schema_append("customers:\n  id: customer_id\n"),
        ("schema.yaml line", "duplicate key 'customers' (first at line 1)"),
        SchemaError,
    ),
    Case(
        "schema_duplicate_nested_key",
        _schema_nested_duplicate,
        ("line 3", "duplicate key 'id' (first at line 2)"),
        SchemaError,
    ),
    Case("schema_over_1mb", _schema_append("#" + "x" * 1_100_000 + "\n"), ("schema.yaml", "over 1024 KB"), SchemaError),
    Case(
        "schema_deeply_nested",
        schema_text("customers: " + "[" * 50_000 + "]" * 50_000 + "\n"),
        ("schema.yaml", "nested too deeply"),
        SchemaError,
    ),
    # (a plain YAML key stops at 1024 characters; 1000 is still far over a message's share)
    Case(
        "schema_long_escaped_key",
        _schema_append('"\\e]0;pwned\\a' + "k" * 1000 + '": 1\n'),
        ("unknown key", "\\x1b]0;pwned", "more character"),
        SchemaError,
    ),
]


def _resealed(name: str, change: Callable[[Path], None]) -> Callable[[Path], None]:
    """``name`` changed, and its checksum in the manifest updated to match: the content checks
    behind the checksum must refuse it."""
    import hashlib

    def damage(d: Path) -> None:
        change(d / name)
        raw = json.loads((d / "manifest.json").read_text())
        raw["files"][name] = hashlib.sha256((d / name).read_bytes()).hexdigest()
        (d / "manifest.json").write_text(json.dumps(raw))

    return damage


def _keras_config(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Rewrite the ``config.json`` inside a ``model.keras`` zip, the weights left as they are."""
    import zipfile

    def damage(path: Path) -> None:
        with zipfile.ZipFile(path) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
        config = json.loads(files["config.json"])
        change(config)
        files["config.json"] = json.dumps(config).encode()
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)

    return damage


def _grow_catalogue(config: dict) -> None:
    """A model of the same customer tower that scores one more product than the pipeline has."""
    for layer in config["config"]["layers"]:
        if layer["config"].get("name") == "catalogue_similarity":
            shapes = layer["config"]["feature_shapes"]
            for name, shape in shapes.items():
                shapes[name] = [shape[0] + 1, *shape[1:]]


def _text(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text, encoding="utf-8")


def _json_edit(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        raw = json.loads(path.read_text())
        fn(raw)
        path.write_text(json.dumps(raw))

    return change


def _npy(make) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        import numpy as np

        np.save(path, make(np.load(path)), allow_pickle=False)

    return change


def _parquet(fn) -> Callable[[Path], None]:
    return lambda path: fn(pd.read_parquet(path)).to_parquet(path)


def _and(*damages):
    def damage(d: Path) -> None:
        for fn in damages:
            fn(d)

    return damage


def _fewer_products(raw: dict) -> None:
    raw["product_ids"] = raw["product_ids"][:3]
    raw["product_popularity"] = raw["product_popularity"][:3]


_DEEP_JSON = "[" * 100_000 + "]" * 100_000
_PASSWD = "../../etc/passwd"

MODEL_CASES += [
    # the manifest lists exactly the files of the format, each inside the directory
    Case(
        "manifest_files_emptied",
        _and(_manifest(lambda m: m.__setitem__("files", {})), _alter_pipeline),
        ("manifest.json does not list", "pipeline.json"),
        ArtifactError,
    ),
    Case(
        "manifest_entry_dropped",
        _and(_manifest(lambda m: m["files"].pop("pipeline.json")), _alter_pipeline),
        ("manifest.json does not list pipeline.json",),
        ArtifactError,
    ),
    Case(
        "manifest_extra_entry",
        _manifest(lambda m: m["files"].__setitem__("notes.txt", "0" * 64)),
        ("not part of a finrec model", "'notes.txt'"),
        ArtifactError,
    ),
    Case(
        "manifest_entry_outside",
        _manifest(lambda m: m["files"].__setitem__(_PASSWD, "0" * 64)),
        (f"'{_PASSWD}'", "not a file of the model directory"),
        ArtifactError,
    ),
    Case(
        "manifest_entry_absolute",
        _manifest(lambda m: m["files"].__setitem__("/etc/passwd", "0" * 64)),
        ("'/etc/passwd'", "not a file of the model directory"),
        ArtifactError,
    ),
    Case(
        "manifest_entry_in_subdirectory",
        _manifest(lambda m: m["files"].__setitem__("sub/model.keras", "0" * 64)),
        ("'sub/model.keras'", "not a file of the model directory"),
        ArtifactError,
    ),
    Case(
        "manifest_files_is_a_list",
        _manifest(lambda m: m.__setitem__("files", ["model.keras"])),
        ("'files' map",),
        ArtifactError,
    ),
    Case(
        "manifest_checksum_not_text",
        _manifest(lambda m: m["files"].__setitem__("model.keras", 5)),
        ("'model.keras'", "SHA-256"),
        ArtifactError,
    ),
    Case(
        "manifest_format_true",
        _manifest(lambda m: m.__setitem__("format_version", True)),
        ("True", "retrain"),
        ArtifactError,
    ),
    Case(
        "manifest_data_path_not_text",
        _manifest(lambda m: m.__setitem__("data_path", 5)),
        ("'data_path'",),
        ArtifactError,
    ),
    Case(
        "manifest_100k_deep",
        lambda d: (d / "manifest.json").write_text(_DEEP_JSON),
        ("manifest.json", "nested too deeply"),
        ArtifactError,
    ),
    Case(
        "manifest_over_1mb",
        lambda d: (d / "manifest.json").write_text(json.dumps({"x": "y" * 1_100_000})),
        ("manifest.json", "over 1 MB"),
        ArtifactError,
    ),
    Case(
        "manifest_escape_codes",
        _manifest(lambda m: m["files"].__setitem__(ESCAPE_TEXT + "n" * 5000, "0" * 64)),
        ("\\x1b]0;pwned", "more character"),
        ArtifactError,
    ),
    # foreign content behind a resealed checksum
    Case(
        "pipeline_resealed_deep",
        _resealed("pipeline.json", _text(_DEEP_JSON)),
        ("pipeline.json", "nested too deeply"),
        ArtifactError,
    ),
    Case(
        "pipeline_resealed_list",
        _resealed("pipeline.json", _text("[1, 2]")),
        ("pipeline.json", "JSON object"),
        ArtifactError,
    ),
    Case(
        "pipeline_resealed_text_mean",
        _resealed("pipeline.json", _json_edit(lambda r: r["customer_numeric"][0].__setitem__("mean", "x"))),
        ("pipeline.json", "'customer_numeric'[0]"),
        ArtifactError,
    ),
    Case(
        "pipeline_resealed_holdings_text",
        _resealed("pipeline.json", _json_edit(lambda r: r.__setitem__("use_holdings", "no"))),
        ("pipeline.json", "'use_holdings'"),
        ArtifactError,
    ),
    Case(
        "pipeline_resealed_vocab_grown",
        _resealed("pipeline.json", _json_edit(lambda r: r["customer_vocab"]["gender"].append("other"))),
        ("model.keras", "customer_tower", "different models"),
        ArtifactError,
    ),
    Case(
        "pipeline_resealed_fewer_products",
        _resealed("pipeline.json", _json_edit(_fewer_products)),
        ("product_embeddings.npy", "different models"),
        ArtifactError,
    ),
    Case(
        "config_resealed_alias_bomb",
        _resealed("config.yaml", _text(BILLION_LAUGHS)),
        ("config.yaml", "aliases"),
        ArtifactError,
    ),
    Case(
        "config_resealed_duplicate_key",
        _resealed("config.yaml", _text("model: {}\nmodel: {}\n")),
        ("config.yaml line 2", "duplicate key 'model'"),
        ArtifactError,
    ),
    Case(
        "config_resealed_list",
        _resealed("config.yaml", _text("- 1\n")),
        ("config.yaml", "expected a mapping"),
        ArtifactError,
    ),
    Case("history_resealed_list", _resealed("history.json", _text("[1]")), ("history.json",), ArtifactError),
    Case(
        "model_keras_resealed_other_catalogue",
        _resealed("model.keras", _keras_config(_grow_catalogue)),
        ("model.keras",),
        ArtifactError,
    ),
    Case(
        "embeddings_resealed_nan",
        _resealed("product_embeddings.npy", _npy(lambda e: e * float("nan"))),
        ("product_embeddings.npy", "finite"),
        ArtifactError,
    ),
    Case(
        "embeddings_resealed_fewer_rows",
        _resealed("product_embeddings.npy", _npy(lambda e: e[:3])),
        ("product_embeddings.npy", "3 rows"),
        ArtifactError,
    ),
    Case(
        "embeddings_resealed_other_dimension",
        _resealed("product_embeddings.npy", _npy(lambda e: e[:, :3])),
        ("model.keras", "different models"),
        ArtifactError,
    ),
    Case(
        "embeddings_resealed_text",
        _resealed("product_embeddings.npy", _npy(lambda e: e.astype(str))),
        ("product_embeddings.npy",),
        ArtifactError,
    ),
    Case(
        "products_resealed_without_id",
        _resealed("products.parquet", _parquet(lambda df: df.drop(columns="product_id"))),
        ("products.parquet", "'product_id'"),
        ArtifactError,
    ),
    Case(
        "products_resealed_fewer",
        _resealed("products.parquet", _parquet(lambda df: df.head(3))),
        ("products.parquet", "not those of pipeline.json"),
        ArtifactError,
    ),
]

CONFIG_CASES += [
    ConfigCase("config_billion_laughs", BILLION_LAUGHS, ("line 1", "aliases")),
    ConfigCase("config_merge_key", "base: &b {epochs: 1}\ntraining:\n  <<: *b\n", ("aliases",)),
    ConfigCase(
        "config_duplicate_section",
        "training: {epochs: 1}\ntraining: {epochs: 2}\n",
        ("line 2", "duplicate key 'training' (first at line 1)"),
    ),
    ConfigCase(
        "config_duplicate_nested_key",
        "training:\n  epochs: 1\n  epochs: 2\n",
        ("line 3", "duplicate key 'epochs' (first at line 2)"),
    ),
    ConfigCase("config_over_1mb", "#" + "x" * 1_100_000 + "\n", ("over 1024 KB",)),
    ConfigCase("config_deeply_nested", "model: " + "[" * 50_000 + "]" * 50_000 + "\n", ("nested too deeply",)),
    ConfigCase("config_integer_of_5000_digits", "training: {epochs: 1" + "0" * 5000 + "}\n", ("not valid YAML",)),
    ConfigCase(
        "config_escape_codes_in_value",
        'training: {loss: "\\e]0;pwned\\a\\e[31mhinge"}\n',
        ("training.loss", "\\x1b]0;pwned\\x07"),
    ),
    ConfigCase("config_long_value", f"training: {{loss: {'x' * 100_000}}}\n", ("training.loss", "more character")),
]


# ------------------------------------------------------------------------------------ outputs over inputs
# Issue 11, "data loss": an output path that is, contains or lies inside an input (the data
# directory, one of its tables, the model directory, the config file), or that a writer cannot
# write (a directory where a file goes, a directory of other files, a path below a file, an
# unknown suffix), is refused before anything is written. ``test_outputs.py`` runs each case
# through the CLI, the Python API where it has the writer, and the dashboard's demo button.


@dataclass(frozen=True)
class Where:
    """The inputs of an output case, all under ``root``: a CSV dataset, a model directory, a
    config file, a directory of unrelated files, a symlink to the dataset."""

    root: Path

    data = property(lambda self: self.root / "data")
    model = property(lambda self: self.root / "model")
    config = property(lambda self: self.root / "config.yaml")
    notes = property(lambda self: self.root / "notes")  # holds notes/a.txt
    alias = property(lambda self: self.root / "alias")  # a symlink to data


def make_where(root: Path, data: Path, model: Path) -> Where:
    where = Where(root)
    shutil.copytree(data, where.data)
    shutil.copytree(model, where.model)
    where.config.write_text("training: {epochs: 1}\n")
    where.notes.mkdir()
    (where.notes / "a.txt").write_text("a file that is not finrec's\n")
    where.alias.symlink_to(where.data, target_is_directory=True)
    return where


def tree_state(root: Path) -> dict[str, str]:
    """Every path under ``root``: file bytes (SHA-256), link targets and directories, so a test
    can assert that a refused run changed nothing, not even a leftover temporary file."""
    import hashlib
    import os

    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                state[key] = "link:" + os.readlink(path)
            elif path.is_dir():
                state[key] = "dir"
            else:
                state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def _link_holdings_from_elsewhere(where: Where) -> None:
    """holdings.csv is a symlink to a file outside the dataset (a shared export)."""
    shared = where.root / "shared"
    shared.mkdir()
    (where.data / "holdings.csv").rename(shared / "holdings.csv")
    (where.data / "holdings.csv").symlink_to(shared / "holdings.csv")


def _split_train_links_to_data(where: Where) -> None:
    (where.root / "splits").mkdir()
    (where.root / "splits" / "train").symlink_to(where.data, target_is_directory=True)


@dataclass(frozen=True)
class OutputCase:
    """``command`` with its output at ``out(where)``; ``fragments`` must be in the message and,
    when the output overlaps an input, ``input`` names it ("data", "model", "config": the message
    must show its path). ``api``: the Python writer knows the input at stake (it is not told
    about a config file; ``score_dataset`` gets a recommender, not the model directory)."""

    name: str
    command: str  # generate | split | train | train-mlflow | evaluate | score | score-ray | monitor | plan | compare
    out: Callable[[Where], Path]
    fragments: tuple[str, ...]
    input: str | None = None
    api: bool = True
    prepare: Callable[[Where], None] | None = None

    def __str__(self) -> str:
        return self.name


def _over(relation: str) -> tuple[str, ...]:
    return (f" {relation} ", "must not overwrite an input", "nothing was written")


def _other_files(marker: str) -> tuple[str, ...]:
    return ("holds other files", marker, "nothing was written")


def _beside(name: str) -> tuple[str, ...]:
    return ("not part of it", repr(name), "nothing was written")


# A dataset or model directory is replaced whole: anything else kept in it went with it (a
# tester, 2026-12-01: the user's notes beside a generated bank, a registry inside a model).
def _a_bank_with_notes(where: Where) -> None:
    shutil.copytree(where.data, where.root / "bank")
    (where.root / "bank" / "notes.txt").write_text("the user's, not finrec's\n")


def _a_split_with_notes(where: Where) -> None:
    shutil.copytree(where.data, where.root / "train")
    (where.root / "train" / "notes.txt").write_text("the user's, not finrec's\n")


def _a_model_with_a_registry(where: Where) -> None:
    shutil.copytree(where.model, where.root / "m")
    (where.root / "m" / "registry").mkdir()
    (where.root / "m" / "registry" / "registry.json").write_text("{}\n")


def _split_has_other_files(where: Where) -> None:
    (where.root / "train").mkdir()
    (where.root / "train" / "x.txt").write_text("not a dataset\n")


def _a_registry(where: Where) -> None:
    """A registry with one version (as `finrec models add` leaves it) and its pointer."""
    version = where.root / "reg" / "versions" / "v0001"
    shutil.copytree(where.model, version)
    (version / "version.json").write_text('{"id": "v0001"}\n')
    (version / "report.html").write_text("<p>the report that was signed off</p>\n")
    (where.root / "reg" / "registry.json").write_text('{"promoted": "v0001", "stack": ["v0001"], "events": []}\n')


def _a_record_log(where: Where) -> None:
    from finrec.governance.records import RecordLog

    with RecordLog(where.root / "records.jsonl", durable=False, key=None) as log:
        log.append({"customer_id": "C1", "items": []})


# Governance files are no output's to replace (testers, 2026-12-02): `monitor --json` onto the
# registry pointer, `report --out` onto a signed-off version's report, `--json` onto a record log.
_REGISTRY = ("inside the model registry", "only `finrec models` writes there", "nothing was written")
_RECORDS = ("the record log", "nothing was written")


def _governed(name: str, command: str, out, fragments: tuple[str, ...], prepare) -> OutputCase:
    """A command's output onto a governance file: the command's guard (the library's writers do
    not know of registries or record logs), so no Python API case."""
    return OutputCase(name, command, out, fragments, api=False, prepare=prepare)


OUTPUT_CASES: list[OutputCase] = [
    _governed(
        "monitor_json_is_registry_pointer",
        "monitor",
        lambda w: w.root / "reg" / "registry.json",
        _REGISTRY,
        _a_registry,
    ),
    _governed(
        "report_out_is_a_registered_report",
        "report",
        lambda w: w.root / "reg" / "versions" / "v0001" / "report.html",
        _REGISTRY,
        _a_registry,
    ),
    _governed(
        "evaluate_json_inside_registry", "evaluate", lambda w: w.root / "reg" / "metrics.json", _REGISTRY, _a_registry
    ),
    _governed("score_out_inside_registry", "score", lambda w: w.root / "reg" / "top.csv", _REGISTRY, _a_registry),
    _governed("monitor_json_is_record_log", "monitor", lambda w: w.root / "records.jsonl", _RECORDS, _a_record_log),
    _governed(
        "plan_json_is_record_log_head",
        "plan",
        lambda w: w.root / "records.jsonl.head",
        ("the head file of", *_RECORDS),
        _a_record_log,
    ),
    # train: the atomic swap of the model directory would delete whatever it replaces
    OutputCase("train_out_is_data", "train", lambda w: w.data, _over("is"), "data"),
    OutputCase("train_out_is_parent_of_data", "train", lambda w: w.root, _over("contains"), "data"),
    OutputCase("train_out_inside_data", "train", lambda w: w.data / "model", _over("lies inside"), "data"),
    OutputCase("train_out_is_data_via_symlink", "train", lambda w: w.alias, ("that is", *_over("is")), "data"),
    OutputCase("train_out_is_data_via_dotdot", "train", lambda w: w.data / ".." / "data", _over("is"), "data"),
    OutputCase("train_out_is_config", "train", lambda w: w.config, _over("is"), "config", api=False),
    OutputCase("train_out_is_other_files", "train", lambda w: w.notes, _other_files("manifest.json")),
    OutputCase(
        "train_out_is_a_model_with_other_files",
        "train",
        lambda w: w.root / "m",
        _beside("registry"),
        prepare=_a_model_with_a_registry,
    ),
    OutputCase(
        "generate_out_is_a_dataset_with_other_files",
        "generate",
        lambda w: w.root / "bank",
        _beside("notes.txt"),
        prepare=_a_bank_with_notes,
    ),
    OutputCase(
        "split_out_is_a_dataset_with_other_files",
        "split",
        lambda w: w.root,
        _beside("notes.txt"),
        prepare=_a_split_with_notes,
    ),
    OutputCase("train_out_is_a_file", "train", lambda w: w.notes / "a.txt", ("is a file",)),
    OutputCase("train_out_below_a_file", "train", lambda w: w.notes / "a.txt" / "m", ("a.txt is not a directory",)),
    # score: one output file
    OutputCase(
        "score_out_is_customers_table", "score", lambda w: w.data / "customers.csv", _over("lies inside"), "data"
    ),
    OutputCase("score_out_is_data", "score", lambda w: w.data, _over("is"), "data"),
    OutputCase(
        "score_out_is_table_via_symlink",
        "score",
        lambda w: w.alias / "customers.csv",
        ("that is", *_over("lies inside")),
        "data",
    ),
    OutputCase(
        "score_out_is_linked_table",
        "score",
        lambda w: w.root / "shared" / "holdings.csv",
        ("a link to", *_over("is")),
        "data",
        prepare=_link_holdings_from_elsewhere,
    ),
    OutputCase(
        "score_out_is_model_file",
        "score",
        lambda w: w.model / "products.parquet",
        _over("lies inside"),
        "model",
        api=False,
    ),
    OutputCase("score_out_is_a_directory", "score", lambda w: w.notes, ("is a directory",)),
    OutputCase("score_out_unknown_suffix", "score", lambda w: w.root / "top.txt", (".csv or .parquet", "'.txt'")),
    OutputCase(
        "score_out_below_a_file", "score", lambda w: w.notes / "a.txt" / "top.csv", ("a.txt is not a directory",)
    ),
    # score --engine ray: a .csv/.parquet file, or a new directory of part files
    OutputCase(
        "ray_out_is_customers_table", "score-ray", lambda w: w.data / "customers.csv", _over("lies inside"), "data"
    ),
    OutputCase("ray_out_is_data", "score-ray", lambda w: w.data, _over("is"), "data"),
    OutputCase("ray_out_is_parent_of_data", "score-ray", lambda w: w.root, _over("contains"), "data"),
    OutputCase("ray_out_is_model_file", "score-ray", lambda w: w.model / "model.keras", _over("lies inside"), "model"),
    OutputCase("ray_out_is_model", "score-ray", lambda w: w.model, _over("is"), "model"),
    OutputCase("ray_out_is_other_files", "score-ray", lambda w: w.notes, ("not empty",)),
    # evaluate --json (no Python writer: evaluate returns the results)
    OutputCase(
        "evaluate_json_is_customers_table",
        "evaluate",
        lambda w: w.data / "customers.csv",
        _over("lies inside"),
        "data",
        api=False,
    ),
    OutputCase(
        "evaluate_json_is_model_file",
        "evaluate",
        lambda w: w.model / "history.json",
        _over("lies inside"),
        "model",
        api=False,
    ),
    OutputCase("evaluate_json_is_data", "evaluate", lambda w: w.data, _over("is"), "data", api=False),
    OutputCase("evaluate_json_is_a_directory", "evaluate", lambda w: w.notes, ("is a directory",), api=False),
    # split writes OUT/train and OUT/test
    OutputCase("split_out_is_data", "split", lambda w: w.data, _over("lies inside"), "data"),
    OutputCase("split_out_inside_data", "split", lambda w: w.data / "parts", _over("lies inside"), "data"),
    OutputCase(
        "split_train_is_data_via_symlink",
        "split",
        lambda w: w.root / "splits",
        _over("is"),
        "data",
        prepare=_split_train_links_to_data,
    ),
    OutputCase(
        "split_out_holds_other_files",
        "split",
        lambda w: w.root,
        _other_files("schema.yaml"),
        prepare=_split_has_other_files,
    ),
    # monitor, plan and compare --json wrote over their inputs (the data's tables, the model's
    # manifest, the capacity file, the plan itself) and exited 0: found by a tester, 2026-11-30
    OutputCase(
        "monitor_json_is_customers_table",
        "monitor",
        lambda w: w.data / "customers.csv",
        _over("lies inside"),
        "data",
        api=False,
    ),
    OutputCase(
        "monitor_json_is_model_manifest",
        "monitor",
        lambda w: w.model / "manifest.json",
        _over("lies inside"),
        "model",
        api=False,
    ),
    OutputCase(
        "plan_json_is_holdings_table",
        "plan",
        lambda w: w.data / "holdings.csv",
        _over("lies inside"),
        "data",
        api=False,
    ),
    OutputCase("plan_json_is_its_plan", "plan", lambda w: w.root / "plan.csv", ("--out", *_over("is")), api=False),
    OutputCase(
        "compare_json_is_products_table",
        "compare",
        lambda w: w.data / "products.csv",
        _over("lies inside"),
        "data",
        api=False,
    ),
    # train --mlflow: a local tracking store is written like the model, so never into the data
    OutputCase(
        "train_mlflow_inside_data", "train-mlflow", lambda w: w.data / "mlruns", _over("lies inside"), "data", api=False
    ),
    # generate has no input, but must not swap away a directory of other files, nor a bank's own
    # data (a dataset without ground truth: generate replaced it, found by a tester)
    OutputCase("generate_out_is_other_files", "generate", lambda w: w.notes, _other_files("schema.yaml")),
    OutputCase("generate_out_is_a_file", "generate", lambda w: w.notes / "a.txt", ("is a file",)),
    OutputCase(
        "generate_out_is_a_banks_own_data",
        "generate",
        lambda w: w.root / "bank",
        ("without a ground_truth table", "nothing was written"),
        api=False,
        prepare=lambda w: _copy_without_ground_truth(w.data, w.root / "bank"),
    ),
]


def _copy_without_ground_truth(data: Path, target: Path) -> None:
    shutil.copytree(data, target)
    for path in target.glob("ground_truth.*"):
        path.unlink()


@dataclass(frozen=True)
class DemoCase:
    """The dashboard's "build the demo" button with FINREC_MODEL (the model directory to build)
    and FINREC_DATA (``data``: where the copy of the dataset lives, None for unset) relative to
    the case's root; ``typed``: a model directory typed in the sidebar instead."""

    name: str
    model: str
    data: str | None
    fragments: tuple[str, ...]
    typed: str | None = None

    def __str__(self) -> str:
        return self.name


DEMO_CASES: list[DemoCase] = [
    DemoCase("demo_bank_is_finrec_data", "demo/model", "demo/bank", ("is the data in FINREC_DATA",)),
    DemoCase("demo_split_is_finrec_data", "demo/model", "demo/split/train", ("is the data in FINREC_DATA",)),
    DemoCase("demo_outputs_inside_finrec_data", "data/model", "data", ("lies inside the data in FINREC_DATA",)),
    DemoCase("demo_model_is_finrec_data", "data", "data", ("is the data in FINREC_DATA",)),
    DemoCase("demo_model_is_other_files", "notes", None, ("holds other files", "manifest.json")),
    DemoCase("demo_model_is_its_own_bank", "demo/bank", None, ("is the demo bank",)),
    DemoCase(
        "demo_typed_model_inside_finrec_model", "model", None, ("the model in FINREC_MODEL",), typed="model/sub/model"
    ),
]


# ------------------------------------------------------------------------------------ holdings history


def _history(fn: Callable[[pd.DataFrame], pd.DataFrame | None] | None = None) -> Callable[[Path], None]:
    """Add a holdings_history.csv (the holdings, held at two month-ends before the 2026
    adoptions), then apply ``fn`` to it."""

    def damage(d: Path) -> None:
        holdings = read(d, H)
        history = pd.concat(
            [holdings.assign(as_of="2025-11-30"), holdings.assign(as_of="2025-12-31")], ignore_index=True
        )
        out = fn(history) if fn else None
        write(d, S.HOLDINGS_HISTORY, history if out is None else out)

    return damage


def _cell(column: str, value: str, row: int = 1):
    def fn(df):
        df.loc[row, column] = value

    return fn


def _first_adopter_snapshot_late(d: Path) -> None:
    """A snapshot of the first adopter dated on the day of its adoption (the history must precede it)."""
    _history()(d)
    interactions = read(d, I)
    history = read(d, S.HOLDINGS_HISTORY)
    customer, day = interactions.loc[0, "customer_id"], interactions.loc[0, "timestamp"][:10]
    row = pd.DataFrame({"customer_id": [customer], "product_id": [history.loc[0, "product_id"]], "as_of": [day]})
    write(d, S.HOLDINGS_HISTORY, pd.concat([history, row], ignore_index=True))


HH = S.HOLDINGS_HISTORY
DATA_CASES += [
    Case("history_valid", _history()),
    Case("history_duplicate_rows_are_dropped", _history(lambda df: pd.concat([df, df.head(5)], ignore_index=True))),
    Case("history_header_only", _history(lambda df: df.head(0))),
    Case("history_missing_as_of", _history(lambda df: df.drop(columns=["as_of"])), (HH, "'as_of'")),
    Case("history_unknown_customer", _history(_cell("customer_id", "NOBODY")), (HH, "'NOBODY'", "not in customers")),
    Case("history_unknown_product", _history(_cell("product_id", "GHOST")), (HH, "'GHOST'", "not in products")),
    Case("history_empty_id", _history(_cell("customer_id", " ")), (HH, "empty id", "row(s) 2")),
    Case("history_bad_date", _history(_cell("as_of", "31/31/2025")), ("'as_of'", "not dates", "'31/31/2025'")),
    Case("history_missing_date", _history(_cell("as_of", "")), ("'as_of'", "missing date", "row(s) 2")),
    Case("history_after_adoptions", _first_adopter_snapshot_late, (HH, "on or after their first adoption")),
    Case("history_binary", raw_bytes(HH, bytes(range(256)) * 40), (HH, "binary")),
]
