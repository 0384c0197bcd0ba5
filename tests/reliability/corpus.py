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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

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
    text = data.decode("utf-8").splitlines()
    head, first, rest = text[0], text[1], text[2:]
    cols = first.split(",")
    cols[-2] = "Sö Paulö"  # a categorical column (channel) in Latin-1
    return "\n".join([head, ",".join(cols), *rest]).encode("latin-1") + b"\n"


def _ragged(data: bytes) -> bytes:
    lines = data.split(b"\n")
    lines[3] = lines[3] + b",1,2,3"
    return b"\n".join(lines)


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
    Case("thousands_separator_in_numeric", set_cell(C, "savings", "1,000"), ("'savings' must be numeric",), upload=True),
    Case("yes_in_numeric", set_cell(C, "age", "yes"), ("'age' must be numeric",), upload=True),
    Case("missing_numeric_is_imputed", set_cell(C, "income", ""), upload=True),
    Case("literal_nan_is_missing", set_cell(C, "income", "NaN"), upload=True),
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
    # ids
    Case("duplicate_customer_id", edit(C, _duplicate_first_id), ("'customer_id'", "must be unique"), upload=True),
    Case("duplicate_product_id", set_cell(P, "product_id", "CUR_BASIC", row=1), ("'product_id'", "must be unique")),
    Case("empty_customer_id", set_cell(C, "customer_id", " "), ("'customer_id'", "empty id"), upload=True),
    Case("interaction_unknown_customer", set_cell(I, "customer_id", "NOBODY"), ("interactions", "'NOBODY'", "not in customers")),
    Case("interaction_unknown_product", set_cell(I, "product_id", "NO_SUCH"), ("interactions", "'NO_SUCH'", "not in products")),
    Case("holding_unknown_product", set_cell(H, "product_id", "GHOST"), ("holdings", "'GHOST'")),
    Case("interaction_empty_customer", set_cell(I, "customer_id", ""), ("interactions", "empty id")),
    Case("formula_ids_load", rename_ids(*FORMULA_IDS)),
    Case("whitespace_around_ids", edit(C, lambda df: df.assign(customer_id="  " + df["customer_id"] + " ")), upload=True),
    Case("very_long_and_unicode_ids", rename_ids("X" * 5000, UNICODE_TEXT, "tab\there")),
    # files
    Case("empty_file", raw_bytes(C, b""), ("customers", "empty"), upload=True),
    Case("header_only", _header_only(C), ("customers", "empty"), upload=True),
    Case("interactions_header_only", _header_only(I), ("interactions", "empty")),
    Case("binary_file", raw_bytes(C, bytes(range(256)) * 40), ("customers",), upload=True),
    Case("gzip_bytes", raw_bytes(C, b"\x1f\x8b\x08\x00" + bytes(range(200)) * 5), ("customers",), upload=True),
    Case("latin1_encoding", transform_bytes(C, _latin1), ("UTF-8",), upload=True),
    Case("ragged_rows", transform_bytes(C, _ragged), ("not a readable CSV",), upload=True),
    Case("semicolon_separated", transform_bytes(C, _semicolons), ("';'", "separated"), upload=True),
    Case("utf8_bom_and_crlf", transform_bytes(C, lambda b: b"\xef\xbb\xbf" + b.replace(b"\n", b"\r\n")), upload=True),
    Case("missing_table", _drop_table(P), ("missing table 'products'",)),
    Case("csv_and_parquet_both", _also_parquet, ("keep one",)),
    Case("corrupt_parquet", _corrupt_parquet, ("products.parquet", "not a readable Parquet")),
    # strings
    Case("unicode_strings", set_cell(C, "region", UNICODE_TEXT), upload=True),
    Case("control_characters", set_cell(C, "region", CONTROL_TEXT), upload=True),
    Case("nul_byte", transform_bytes(C, lambda b: b.replace(b"north", b"no\x00rth", 1)), upload=True),
    # schema
    Case("schema_names_absent_column", schema_edit(lambda r: r["customers"]["numeric"].append("net_worth")),
         ("'net_worth'", "schema.yaml"), SchemaError),
    Case("schema_key_typo", schema_edit(_rename_key("customers", "categorical", "categorcal")),
         ("'categorcal'", "did you mean 'categorical'"), SchemaError),
    Case("schema_not_yaml", schema_text("customers: {id: [unclosed\n\t: :"), ("schema.yaml", "not valid YAML"), SchemaError),
    Case("schema_binary", lambda d: (d / "schema.yaml").write_bytes(bytes(range(256))), ("schema.yaml",), SchemaError),
    Case("schema_is_a_list", schema_text("- customers\n- products\n"), ("expected a mapping",), SchemaError),
    Case("schema_missing_section", schema_edit(lambda r: r.pop("products")), ("missing section 'products'",), SchemaError),
    Case("schema_numeric_is_text", schema_edit(lambda r: r["customers"].__setitem__("numeric", "age")),
         ("expected a list",), SchemaError),
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
    Case("display_hints_changed", schema_edit(_display(what_if=["savings", "debt"], segments=["region"],
                                                       product_details=["expected_yield"],
                                                       labels={"savings": "Savings (EUR)"}))),
    Case("display_hints_removed", schema_edit(lambda r: r.pop("display"))),
    Case("display_unknown_key", schema_edit(_display(colour="blue")), ("display: unknown key 'colour'",), SchemaError),
    Case("display_key_typo", schema_edit(lambda r: r["display"].__setitem__("whatif", r["display"].pop("what_if"))),
         ("unknown key 'whatif'", "did you mean 'what_if'"), SchemaError),
    Case("display_what_if_absent_column", schema_edit(_display(what_if=["net_worth"])),
         ("display.what_if", "'net_worth'", "not a numeric customer column"), SchemaError),
    Case("display_segment_is_numeric", schema_edit(_display(segments=["income"])),
         ("display.segments", "'income'", "not a categorical customer column"), SchemaError),
    Case("display_product_column_absent", schema_edit(_display(product_details=["coupon"])),
         ("display section", "'coupon'", "products"), SchemaError),
    Case("display_label_of_no_column", schema_edit(_display(labels={"shoe_size": "Shoe size"})),
         ("display.labels", "'shoe_size'"), SchemaError),
    Case("display_label_empty", schema_edit(_display(labels={"income": " "})),
         ("display.labels.income", "non-empty"), SchemaError),
    Case("display_is_a_list", schema_edit(lambda r: r.__setitem__("display", ["profile"])),
         ("display: expected a mapping",), SchemaError),
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
    Case("missing_embeddings", _unlink("product_embeddings.npy"), ("product_embeddings.npy is missing",), ArtifactError),
    Case("manifest_not_json", lambda d: (d / "manifest.json").write_text("{not json"), ("manifest.json", "not valid JSON"), ArtifactError),
    Case("manifest_future_format", _manifest(lambda m: m.__setitem__("format_version", 99)), ("99", "retrain"), ArtifactError),
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
    BodyCase("unknown_feature_name", _j({"features": {"favourite_colour": "red"}}), (200,)),
    BodyCase("holdings_unknown", _j({"features": {"holdings": ["NO_SUCH_PRODUCT"]}}), (422,), "NO_SUCH_PRODUCT"),
    BodyCase("holdings_text", _j({"features": {"holdings": "CUR_BASIC"}}), (422,)),
    BodyCase("holdings_numbers", _j({"features": {"holdings": [1, 2]}}), (422,)),
]

def params(cases):
    """``cases`` as pytest parameters; a case with a ``known_bug`` is a strict expected failure."""
    import pytest

    return [pytest.param(c, id=str(c), marks=[pytest.mark.xfail(reason=c.known_bug, strict=True)]
                         if getattr(c, "known_bug", None) else []) for c in cases]


ALL_ERRORS = (DataError, SchemaError, ConfigError, ArtifactError)
