"""The record log: the hash chain, each kind of tampering in a 100k-record log, concurrent writers."""

from __future__ import annotations

import json
import threading

import pytest

from finrec.cli import main
from finrec.errors import FinrecError
from finrec.governance.records import GENESIS, RecordLog, line_hash, verify

N = 100_000


def _record(i: int) -> dict:
    return {
        "time": "2026-11-29T12:00:00.000000Z",
        "customer_id": f"C{i:07d}",
        "model_version": "m/abc",
        "items": [{"rank": 1, "product_id": "SAV_BASIC", "score": 0.5}],
        "excluded": [{"product_id": "FUND_CRYPTO", "rule": "negative_target_market"}],
    }


@pytest.fixture(scope="module")
def big_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("records") / "records.jsonl"
    with RecordLog(path, durable=False) as log:
        for i in range(N):
            head = log.append(_record(i))
    return path, head


def _lines(path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _write(tmp_path, lines: list[bytes]):
    out = tmp_path / "tampered.jsonl"
    out.write_bytes(b"".join(lines))
    return out


def test_chain_is_intact_and_each_line_points_at_the_previous(big_log):
    path, head = big_log
    result = verify(path)
    assert result.ok and result.lines == N and result.head == head
    lines = _lines(path)
    first, second = json.loads(lines[0]), json.loads(lines[1])
    assert first["prev"] == GENESIS and first["seq"] == 0
    assert second["prev"] == line_hash(lines[0][:-1]) and second["seq"] == 1


def test_deleted_line_is_found(big_log, tmp_path):
    lines = _lines(big_log[0])
    del lines[50_000]  # line 50,001
    result = verify(_write(tmp_path, lines))
    assert not result.ok and result.bad_line == 50_001 and "deleted" in result.problem


def test_inserted_line_is_found(big_log, tmp_path):
    lines = _lines(big_log[0])
    # A forger copies a neighbour and changes the customer: seq and prev look plausible.
    forged = json.loads(lines[69_999])
    forged["customer_id"] = "C9999999"
    lines.insert(70_000, json.dumps(forged, separators=(",", ":")).encode() + b"\n")
    result = verify(_write(tmp_path, lines))
    assert not result.ok and result.bad_line in (70_000, 70_001)


def test_reordered_lines_are_found(big_log, tmp_path):
    lines = _lines(big_log[0])
    lines[30_000], lines[30_001] = lines[30_001], lines[30_000]
    result = verify(_write(tmp_path, lines))
    assert not result.ok and result.bad_line == 30_001


def test_altered_line_is_named(big_log, tmp_path):
    lines = _lines(big_log[0])
    record = json.loads(lines[12_344])
    record["items"][0]["product_id"] = "FUND_CRYPTO"
    lines[12_344] = json.dumps(record, separators=(",", ":")).encode() + b"\n"
    result = verify(_write(tmp_path, lines))
    assert not result.ok and result.bad_line == 12_345 and "altered" in result.problem


def test_deleted_tail_is_found_against_a_kept_head(big_log, tmp_path):
    path, head = big_log
    lines = _lines(path)[:-3]
    short = _write(tmp_path, lines)
    assert verify(short).ok  # a shorter chain is still a chain ...
    result = verify(short, head=head)  # ... but not the one whose head was kept
    assert not result.ok and "head" in result.problem
    assert verify(path, head=head).ok


def test_garbage_and_torn_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordLog(path) as log:
        for i in range(3):
            log.append(_record(i))
    lines = _lines(path)
    assert verify(_write(tmp_path, [lines[0], b"not json\n", *lines[2:]])).bad_line == 2
    torn = _write(tmp_path, [*lines, lines[0][:10]])
    assert verify(torn).bad_line == 4
    with pytest.raises(FinrecError, match="incomplete line"):
        RecordLog(torn).append(_record(9))


def test_cli_verify_exit_codes(big_log, tmp_path, capsys):
    path, head = big_log
    assert main(["records", "verify", str(path)]) == 0
    assert head in capsys.readouterr().out
    lines = _lines(path)
    del lines[10]
    assert main(["records", "verify", str(_write(tmp_path, lines))]) == 2
    assert "line 11" in capsys.readouterr().err


def test_threads_and_processes_share_one_chain(tmp_path):
    """Two writers on one file (as two server processes would be) and threads on each."""
    path = tmp_path / "shared.jsonl"
    logs = [RecordLog(path, durable=False), RecordLog(path, durable=False)]

    def write(log, start):
        for i in range(start, start + 300):
            log.append(_record(i))

    threads = [threading.Thread(target=write, args=(logs[i % 2], i * 1000)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = verify(path)
    assert result.ok and result.lines == 1200
