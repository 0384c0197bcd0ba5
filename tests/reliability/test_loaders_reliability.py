"""The loaders against hostile files, beyond the corpus' shapes: a 2 GB sparse table is refused in
seconds with bounded memory, messages are bounded and escaped by one helper and once more by the
CLI, and every YAML file goes through one loader."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from finrec.errors import MAX_MESSAGE_CHARS, ArtifactError, ConfigError, DataError, FinrecError, safe_items, safe_text

SRC = Path(__file__).resolve().parents[2] / "src" / "finrec"

_REFUSE_AND_MEASURE = """
import sys, time
from finrec.data.io import load_dataset
from finrec.errors import DataError
start = time.monotonic()
try:
    load_dataset(sys.argv[1])
except DataError as exc:
    message = str(exc)
else:
    raise SystemExit("accepted")
# VmHWM, not ru_maxrss: Linux carries the forking parent's high-water mark (the test process,
# over 1 GB late in a full run) across exec into ru_maxrss, but VmHWM belongs to this process.
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(len(message), time.monotonic() - start, peak_kb // 1024)
print(message)
"""


def test_sparse_2gb_customers_is_refused_in_seconds_with_bounded_memory(csv_data_dir, tmp_path):
    # Before: 63 s, 14.8 GB resident and a 2 GB message of NUL bytes.
    data = tmp_path / "bank"
    shutil.copytree(csv_data_dir, data)
    (data / "customers.csv").unlink()
    with open(data / "customers.csv", "wb") as handle:
        handle.truncate(2 * 1024**3)  # sparse: no disk used
    process = subprocess.run(
        [sys.executable, "-c", _REFUSE_AND_MEASURE, str(data)], capture_output=True, text=True, timeout=300, check=False
    )
    assert process.returncode == 0, process.stderr[-2000:]
    stats, message = process.stdout.split("\n", 1)
    length, seconds, peak_mb = stats.split()
    assert int(length) < 500 and "binary" in message and "\x00" not in message
    assert float(seconds) < 5, f"the refusal took {seconds} s"
    assert int(peak_mb) < 1024, f"peak resident memory {peak_mb} MB"  # pandas and pyarrow alone take ~200 MB


def test_safe_text_bounds_escapes_and_prints_plain_numbers():
    assert safe_text(np.int64(2)) == "2"
    assert safe_text(np.float64("nan")) == "nan"
    assert safe_text(np.str_("lots"), quote=True) == "'lots'"
    assert safe_text("\x1b]0;title\x07\x1b[31mred\u202e\r\n\x00") == "\\x1b]0;title\\x07\\x1b[31mred\\u202e\\r\\n\\x00"
    assert safe_text("a\x1bb", quote=True) == "'a\\x1bb'"
    long = safe_text("x" * 5_000_000, limit=100)
    assert long == "x" * 100 + "... and 4999900 more character(s)"
    assert safe_text(b"\x00" * 10_000, limit=8) == "\\x00" * 8 + "... and 9992 more character(s)"
    assert safe_text("\ud800") == "\\ud800"  # a lone surrogate cannot break an encoder downstream
    assert safe_items(np.arange(1, 10)) == "1, 2, 3, 4, 5, ... and 4 more"
    assert safe_items(["a", "b"]) == "'a', 'b'"
    assert safe_items(iter(["a", "b", "c"]), limit=1, quote=False) == "a, ... and 2 more"


def _raising(exc: BaseException):
    def command(args) -> int:
        raise exc

    return command


@pytest.mark.parametrize("kind, code", [(DataError, 2), (RuntimeError, 1)])
def test_cli_bounds_and_escapes_every_message(kind, code, monkeypatch, capsys, tmp_path):
    # The last guard: whatever a message builder let through never reaches the terminal raw.
    from finrec import cli

    monkeypatch.setattr(cli, "cmd_generate", _raising(kind("\x1b]0;pwned\x07\x1b[2J" + "y" * 1_000_000)))
    assert cli.main(["generate", "--out", str(tmp_path / "d")]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip("\n").isprintable(), repr(err[:300])
    assert "\\x1b]0;pwned\\x07" in err and len(err) < MAX_MESSAGE_CHARS + 200


def test_one_yaml_loader_for_every_yaml_file():
    # schema.yaml, training configs and a model's config.yaml all go through finrec.safeyaml.
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "safeyaml.py":
            continue
        for match in re.finditer(r"yaml\.(safe_load|load|full_load|unsafe_load|compose|parse)\w*\(", path.read_text()):
            offenders.append(f"{path.relative_to(SRC)}: {match.group(0)}")
    assert not offenders, offenders


def test_yaml_loader_refuses_aliases_duplicates_and_size(tmp_path):
    from finrec.safeyaml import MAX_YAML_BYTES, load_yaml

    cases = {
        "a: &x 1\nb: *x\n": "line 1: anchors and aliases",
        "a:\n  - {b: 1, c: 2, b: 3}\n": "line 2: duplicate key 'b' (first at line 2)",
        "1: a\n1.0: b\n": "duplicate key",
        "a: " + "x" * MAX_YAML_BYTES + "\n": "over 1024 KB",
    }
    for text, fragment in cases.items():
        path = tmp_path / "file.yaml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            load_yaml(path, ConfigError)
    path.write_text("a: [1, 2]\nb: {c: d}\n", encoding="utf-8")
    assert load_yaml(path, ConfigError) == {"a": [1, 2], "b": {"c": "d"}}
    with pytest.raises(FileNotFoundError):  # the caller words a missing file
        load_yaml(tmp_path / "absent.yaml", ConfigError)
    with pytest.raises(ConfigError, match="not a file"):
        load_yaml(tmp_path, ConfigError)


def test_the_dashboard_manifest_read_checks_the_structure_too(model_dir, tmp_path):
    # The dashboard reads the manifest without checksums (for data_path): its shape is still checked.
    from finrec.artifacts import read_manifest

    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = "0" * 64
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a file of the model directory"):
        read_manifest(target, verify=False)
    manifest["files"].pop("../../etc/passwd")
    manifest["data_path"] = ["not", "text"]
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FinrecError, match="'data_path' must be text"):
        read_manifest(target, verify=False)


def test_an_upload_of_nul_bytes_is_refused_from_its_first_bytes():
    # The dashboard holds an upload in memory; a NUL in the header refuses it before pandas runs.
    from finrec.data.io import read_csv_bytes

    start = time.monotonic()
    with pytest.raises(DataError, match="binary"):
        read_csv_bytes(b"\x00" * 5_000_000, ("customer_id",), "upload.csv")
    assert time.monotonic() - start < 2


def test_link_batches_of_a_dictionary_encoded_id_column_carry_only_their_own_ids(tmp_path, monkeypatch):
    # Bug found with benchmarks/scale.py: a history written from pandas categories reads back
    # dictionary-encoded, every batch with the whole file's dictionary, so stripping each batch's
    # ids cost all the file's distinct ids (partitioning 100k customers x 12 months took 211 s,
    # 50k about 20 s; decoded per batch, 7.7 s). Each frame must hold plain text ids, its own.
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from finrec.data import links

    seen = []  # the values each id-text conversion had to work through

    def recording(values):
        seen.append(len(values.cat.categories) if isinstance(values.dtype, pd.CategoricalDtype) else len(values))
        return ids_as_text(values)

    ids_as_text = links.ids_as_text
    monkeypatch.setattr(links, "ids_as_text", recording)
    ids = [f" CU-{i:05d} " for i in range(5000)]
    frame = pd.DataFrame(
        {
            "customer_id": pd.Categorical(ids),
            "product_id": pd.Categorical(["P1", "P2"] * 2500),
            "as_of": pd.to_datetime("2025-12-31"),
        }
    )
    path = tmp_path / "holdings_history.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    assert pa.types.is_dictionary(pq.ParquetFile(path).schema_arrow.field("customer_id").type)
    batches = list(links.link_batches(path, 100, dated=True))
    assert len(seen) == 100 and max(seen) <= 100  # each batch's own ids, not the file's 5000
    assert [len(b) for b in batches] == [100] * 50
    first = batches[0]
    assert not any(isinstance(first[c].dtype, pd.CategoricalDtype) for c in ("customer_id", "product_id"))
    assert first["customer_id"].tolist() == [i.strip() for i in ids[:100]]
    assert pd.concat(batches)["customer_id"].nunique() == 5000


def test_streamed_parquet_reads_hold_one_row_group_not_the_file(tmp_path):
    """Arrow's default pre-buffering kept every row group's raw bytes that a ``ParquetFile`` had
    read until the reader went away: streaming a file held the whole file by its last batch (on
    a 10M-customer bank, 3.5 GB of history). The streaming readers must hold about one row
    group's worth, whatever the file's size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from finrec.data import schema as S
    from finrec.data.io import iter_customer_chunks
    from finrec.data.links import link_batches

    rng = np.random.default_rng(0)
    n, groups = 240_000, 24
    # Random hex ids do not compress: the file's size is its data's.
    ids = [f"{v:016x}" for v in rng.integers(0, 2**63, n)]
    history = pa.table(
        {
            S.CUSTOMER_ID: ids,
            S.PRODUCT_ID: [f"p{v:016x}" for v in rng.integers(0, 2**63, n)],
            S.AS_OF: pa.array(np.full(n, np.datetime64("2026-01-31", "ns"))),
        }
    )
    customers = pa.table(
        {
            "customer_id": ids,
            "age": rng.uniform(18, 90, n),
            "income": rng.uniform(0, 1e5, n),
            "segment": rng.choice(["mass", "affluent"], n),
            "risk": rng.integers(1, 6, n),
        }
    )
    for name, table in (("history", history), ("customers", customers)):
        pq.write_table(table, tmp_path / f"{name}.parquet", row_group_size=n // groups, use_dictionary=False)
    table = S.TableSchema(id="customer_id", numeric=("age", "income"), categorical=("segment",), risk="risk")
    streams = {
        "history": lambda: link_batches(tmp_path / "history.parquet", n // groups, dated=True),
        "customers": lambda: iter_customer_chunks(tmp_path / "customers.parquet", table, n // groups),
    }
    for name, stream in streams.items():
        size = (tmp_path / f"{name}.parquet").stat().st_size
        base, held = pa.total_allocated_bytes(), []
        for batch in stream():
            held.append(pa.total_allocated_bytes() - base)
            del batch
        assert len(held) == groups
        # Pre-buffered, what is held grows by the row groups read (a file this small is read at
        # once, its ranges coalesced) to the file's size.
        assert held[-1] - held[1] < size / 8, (name, held, size)
        assert max(held) < size / 2, (name, held, size)
