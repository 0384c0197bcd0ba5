"""The record log: the hash chain, each kind of tampering in a 100k-record log (a deletion at the end
caught by the head file, without a head kept elsewhere), the keyed log, concurrent writers."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from finrec.cli import main
from finrec.errors import FinrecError, RecordLogError
from finrec.governance.records import GENESIS, RecordLog, head_path, key_from_env, line_hash, verify

N = 100_000


def _record(i: int) -> dict:
    return {
        "time": "2026-11-29T12:00:00.000000Z",
        "customer_id": f"C{i:07d}",
        "model_version": "m/abc",
        "items": [{"rank": 1, "product_id": "SAV_BASIC", "score": 0.5}],
        "excluded": [{"product_id": "FUND_CRYPTO", "rule": "negative_target_market"}],
    }


KEY = b"k" * 24


@pytest.fixture(autouse=True)
def _no_key_from_env(monkeypatch):
    monkeypatch.delenv("FINREC_RECORDS_KEY", raising=False)
    monkeypatch.delenv("FINREC_RECORDS_KEY_FILE", raising=False)


@pytest.fixture(scope="module")
def big_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("records") / "records.jsonl"
    with RecordLog(path, durable=False, key=None) as log:
        for i in range(N):
            head = log.append(_record(i))
    return path, head


def _keyed_log(tmp_path, n: int):
    """A keyed log of ``n`` records, as the writer leaves it."""
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=KEY) as log:
        for i in range(n):
            log.append(_record(i))
    return path


def _lines(path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _write(tmp_path, lines: list[bytes], head_of=None):
    """The tampered lines as a log; with ``head_of``, beside that log's head file, as an attacker
    who edits the log in place leaves it."""
    out = tmp_path / "tampered.jsonl"
    out.write_bytes(b"".join(lines))
    if head_of is not None:
        shutil.copyfile(head_path(head_of), head_path(out))
    return out


def test_chain_is_intact_and_each_line_points_at_the_previous(big_log):
    path, head = big_log
    result = verify(path)
    assert result.ok and result.lines == N and result.head == head and result.after_head == 0
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


def test_deleted_tail_is_found_by_the_head_file(big_log, tmp_path):
    path, head = big_log
    short = _write(tmp_path, _lines(path)[:-3], head_of=path)  # the last 3 lines deleted in place
    result = verify(short)
    assert not result.ok and result.lines == N - 3 and "deleted" in result.problem
    head_path(short).unlink()  # ... and the head file with them
    result = verify(short)
    assert not result.ok and "no head" in result.problem
    assert not verify(short, head=head).ok  # a head kept elsewhere still shows it


def test_altered_tail_is_found_by_the_head_file(big_log, tmp_path):
    """The last line rewritten: no later line's prev betrays it; the head file does."""
    lines = _lines(big_log[0])
    record = json.loads(lines[-1])
    record["customer_id"] = "C9999999"
    lines[-1] = json.dumps(record, separators=(",", ":")).encode() + b"\n"
    result = verify(_write(tmp_path, lines, head_of=big_log[0]))
    assert not result.ok and result.bad_line == N and "altered" in result.problem


def test_writer_refuses_a_log_cut_at_the_end(tmp_path):
    """Appending to a shortened log would write a new, matching head and hide the deletion."""
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=None) as log:
        for i in range(5):
            log.append(_record(i))
    path.write_bytes(b"".join(_lines(path)[:-2]))
    with pytest.raises(FinrecError, match="does not match its head file"), RecordLog(path, key=None) as log:
        log.append(_record(9))
    assert not verify(path).ok


def test_a_writer_stopped_between_line_and_head_leaves_a_valid_log(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=None) as log:
        for i in range(3):
            log.append(_record(i))
    kept = head_path(path).read_bytes()
    with RecordLog(path, key=None) as log:
        log.append(_record(3))
    head_path(path).write_bytes(kept)  # the 4th head never reached the disk
    result = verify(path)
    assert result.ok and result.lines == 4 and result.after_head == 1
    with RecordLog(path, key=None) as log:  # the next writer picks up from there
        log.append(_record(4))
    assert verify(path).ok and verify(path).after_head == 0


def test_keyed_log_cannot_be_recomputed_without_the_key(tmp_path, monkeypatch):
    path = _keyed_log(tmp_path, 20)
    assert verify(path, key=KEY).ok and verify(path, key=KEY).keyed
    assert not verify(path, key=None).ok and "keyed" in verify(path, key=None).problem
    assert not verify(path, key=b"x" * 24).ok  # another key
    # A forger without the key rewrites line 10 and recomputes the chain with SHA-256 (as one
    # could for an unkeyed log): the chain no longer checks under the key.
    lines = _lines(path)
    records = [json.loads(line) for line in lines]
    records[9]["customer_id"] = "C9999999"
    prev = records[8]["prev"]
    forged = []
    for i, record in enumerate(records):
        if i >= 9:
            record["prev"] = prev if i == 9 else line_hash(forged[-1][:-1])
        forged.append(json.dumps(record, separators=(",", ":")).encode() + b"\n")
    result = verify(_write(tmp_path, forged, head_of=path), key=KEY)
    assert not result.ok and result.bad_line is not None
    # Cut at the end: the head file cannot be rewritten to match without the key.
    short = _write(tmp_path, lines[:-1], head_of=path)
    assert not verify(short, key=KEY).ok
    # The key from the environment, for the writer and for verify.
    monkeypatch.setenv("FINREC_RECORDS_KEY", KEY.decode())
    assert key_from_env() == KEY
    with RecordLog(path) as log:
        log.append(_record(20))
    assert verify(path).ok and verify(path).lines == 21
    with pytest.raises(FinrecError, match="is keyed"), RecordLog(path, key=None) as log:
        log.append(_record(21))
    monkeypatch.setenv("FINREC_RECORDS_KEY", "short")
    with pytest.raises(FinrecError, match="at least 16"):
        key_from_env()


def test_cli_verify_with_key_file(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=KEY) as log:
        log.append(_record(0))
        log.append(_record(1))
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY + b"\n")
    assert main(["records", "verify", str(path), "--key-file", str(key_file)]) == 0
    assert "keyed" in capsys.readouterr().out
    assert main(["records", "verify", str(path)]) == 2
    assert "FINREC_RECORDS_KEY" in capsys.readouterr().err
    short = _write(tmp_path, _lines(path)[:-1], head_of=path)
    assert main(["records", "verify", str(short), "--key-file", str(key_file)]) == 2
    assert "deleted" in capsys.readouterr().err


def test_garbage_and_torn_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=None) as log:
        for i in range(3):
            log.append(_record(i))
    lines = _lines(path)
    assert verify(_write(tmp_path, [lines[0], b"not json\n", *lines[2:]])).bad_line == 2
    torn = _write(tmp_path, [*lines, lines[0][:10]], head_of=path)
    assert verify(torn).bad_line == 4
    # A power loss during a line's one write: no head covers it and nobody was answered with it.
    # It wedged every later append (a reviewer); the next writer cuts it and goes on.
    with RecordLog(torn, key=None) as log:
        log.append(_record(3))
    result = verify(torn)
    assert result.ok and result.lines == 4 and json.loads(_lines(torn)[-1])["seq"] == 3


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
    logs = [RecordLog(path, durable=False, key=KEY), RecordLog(path, durable=False, key=KEY)]

    def write(log, start):
        for i in range(start, start + 300):
            log.append(_record(i))

    threads = [threading.Thread(target=write, args=(logs[i % 2], i * 1000)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = verify(path, key=KEY)
    assert result.ok and result.lines == 1200 and result.after_head == 0


def _forge_append(path, record: dict) -> None:
    """What someone who can write the files but lacks the key does: append a line whose ``prev``
    is the hash the head file shows."""
    data = head_path(path).read_bytes()
    newest = max((json.loads(data[i : i + 256]) for i in (0, 256) if data[i : i + 1] == b"{"), key=lambda s: s["lines"])
    line = json.dumps({"seq": newest["lines"], **record, "prev": newest["head"]}, separators=(",", ":"))
    with open(path, "ab") as handle:
        handle.write(line.encode() + b"\n")


def test_a_line_appended_without_the_key_is_found_and_never_adopted(tmp_path):
    # Found by a tester: the keyed head held the last line's chain hash, which is the very prev a
    # forger needs; the forged line verified (as "after the head") and the next append adopted it.
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=KEY) as log:
        for i in range(5):
            kept = log.append(_record(i))
    assert verify(path, key=KEY).head == kept
    _forge_append(path, _record(99))
    result = verify(path, key=KEY)
    assert not result.ok and result.bad_line == 6 and result.lines == 5  # the forged line is named
    assert "written without the key" in result.problem
    with pytest.raises(FinrecError, match="does not match its head"), RecordLog(path, key=KEY) as log:
        log.append(_record(5))
    assert len(_lines(path)) == 6  # nothing written over the evidence


def _blank_newest_slot(path) -> None:
    data = bytearray(head_path(path).read_bytes())
    slots = [json.loads(data[i : i + 256]) for i in (0, 256)]
    newest = 0 if slots[0]["lines"] > slots[1]["lines"] else 1
    data[newest * 256 : (newest + 1) * 256] = b" " * 255 + b"\n"
    head_path(path).write_bytes(bytes(data))


def test_a_head_rolled_back_by_blanking_its_newest_slot_is_found(tmp_path):
    # Found by a reviewer: with the newest slot blanked the older one became the head, and the
    # last line could be deleted (or replaced by one with the same seq and prev) unseen.
    path = _keyed_log(tmp_path, 6)
    lines = _lines(path)
    cut = _write(tmp_path, lines[:-1], head_of=path)
    _blank_newest_slot(cut)
    result = verify(cut, key=KEY)
    assert not result.ok and "other slot" in result.problem
    with pytest.raises(FinrecError, match="other slot"), RecordLog(cut, key=KEY) as log:
        log.append(_record(6))
    # The last line swapped for one with its seq and prev, written without the key.
    record = json.loads(lines[-1])
    forged = json.dumps({**record, "customer_id": "C9999999", "mac": None}, separators=(",", ":")).encode()
    replaced = _write(tmp_path, [*lines[:-1], forged + b"\n"], head_of=path)
    _blank_newest_slot(replaced)
    result = verify(replaced, key=KEY)
    assert not result.ok and result.bad_line == 6 and "without the key" in result.problem


def test_an_altered_line_of_a_keyed_log_is_named_by_its_own_seal(tmp_path):
    path = _keyed_log(tmp_path, 5)
    lines = _lines(path)
    lines[2] = lines[2].replace(b"C0000002", b"C0000009")
    result = verify(_write(tmp_path, lines, head_of=path), key=KEY)
    assert not result.ok and result.bad_line == 3 and "altered without the key" in result.problem


def test_a_keyed_writer_stopped_between_line_and_head_still_resumes(tmp_path):
    path = _keyed_log(tmp_path, 3)
    kept = head_path(path).read_bytes()
    with RecordLog(path, key=KEY) as log:
        log.append(_record(3))
    head_path(path).write_bytes(kept)
    assert verify(path, key=KEY).ok and verify(path, key=KEY).after_head == 1
    with RecordLog(path, key=KEY) as log:
        log.append(_record(4))
    result = verify(path, key=KEY)
    assert result.ok and result.lines == 5 and result.after_head == 0


def _legacy_keyed_log(path, n: int) -> None:
    """A keyed log as finrec wrote it before seals: unsealed lines, the head the chain's hash."""
    prev, out = GENESIS, []
    for i in range(n):
        line = json.dumps({"seq": i, **_record(i), "prev": prev}, separators=(",", ":")).encode()
        out.append(line + b"\n")
        prev = line_hash(line, KEY)
    path.write_bytes(b"".join(out))
    slots = []
    for lines in (n - 1, n):
        fields = {"head": line_hash(out[lines - 1][:-1], KEY), "keyed": True, "lines": lines}
        body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
        slot = json.dumps({**fields, "check": line_hash(body, KEY)}, separators=(",", ":")).encode()
        slots.append((lines % 2, slot.ljust(255) + b"\n"))
    head_path(path).write_bytes(b"".join(slot for _, slot in sorted(slots)))


def test_a_keyed_log_written_before_seals_still_verifies_and_is_sealed_from_the_next_append(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    _legacy_keyed_log(path, 4)
    result = verify(path, key=KEY)
    assert result.ok and result.unsealed_head and result.lines == 4
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    assert main(["records", "verify", str(path), "--key-file", str(key_file)]) == 0
    assert "written before finrec sealed them" in capsys.readouterr().out
    with RecordLog(path, key=KEY) as log:
        log.append(_record(4))
        log.append(_record(5))
    result = verify(path, key=KEY)
    assert result.ok and not result.unsealed_head and result.lines == 6
    assert b'"sealed":true' in head_path(path).read_bytes() and b'"mac":' in _lines(path)[-1]
    # Once sealed, an unsealed line after a sealed one is refused.
    lines = _lines(path)
    record = json.loads(lines[-1])
    del record["mac"]
    unsealed = _write(tmp_path, [*lines[:-1], json.dumps(record, separators=(",", ":")).encode() + b"\n"])
    assert not verify(unsealed, key=KEY).ok


def test_a_line_past_a_head_written_before_seals_must_carry_a_seal(tmp_path):
    path = tmp_path / "r.jsonl"
    _legacy_keyed_log(path, 4)
    _forge_append(path, _record(99))  # the legacy head holds the chain hash: the forger's prev
    result = verify(path, key=KEY)
    assert not result.ok and result.bad_line == 5 and "written without the key" in result.problem
    with pytest.raises(FinrecError, match="carries no seal"), RecordLog(path, key=KEY) as log:
        log.append(_record(5))


def test_a_blanked_newest_slot_with_a_line_past_the_older_head_is_refused(tmp_path):
    # A reviewer blanked the newest head and put past the older one a sealed line of an append
    # that had failed: accepted as a writer stopped between line and head. Both slots lie in one
    # sector disks are built to write whole, so a crash never leaves this state: it is refused.
    path = _keyed_log(tmp_path, 5)
    _blank_newest_slot(path)
    result = verify(path, key=KEY)
    assert not result.ok and "or a line put past the head" in result.problem
    with pytest.raises(FinrecError, match="other slot"), RecordLog(path, key=KEY) as log:
        log.append(_record(5))


def test_cli_head_hash_is_read_as_a_person_types_it(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=None) as log:
        heads = [log.append(_record(i)) for i in range(3)]
    assert main(["records", "verify", str(path), "--head", f"  {heads[1].upper()} "]) == 0
    capsys.readouterr()
    assert main(["records", "verify", str(path), "--head", heads[1][:40]]) == 2
    err = capsys.readouterr().err
    assert "not a head hash" in err and "tamper" not in err and "deleted" not in err
    assert main(["records", "verify", str(path), "--head", "ab" * 32]) == 2
    err = capsys.readouterr().err
    assert "the end: no line has the head hash" in err and "(3 line(s)" in err


def test_cli_does_not_call_a_log_without_a_head_anchored(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"")  # a log wiped with its head file, or a new one: the same bytes
    assert main(["records", "verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "nothing anchors this log" in out and "intact" not in out


@pytest.mark.parametrize("change", ["replaced", "deleted", "head replaced", "truncated in place"])
def test_a_writer_refuses_once_its_files_are_no_longer_at_the_path(tmp_path, change):
    # Every failure to record is a RecordLogError (the service's 503), not the caller's 422.
    path = tmp_path / "r.jsonl"
    log = RecordLog(path, durable=False, key=None)
    log.append(_record(0))
    target = head_path(path) if change == "head replaced" else path
    if change == "truncated in place":  # logrotate's copytruncate
        with open(path, "r+b") as handle:
            handle.truncate(0)
    elif change == "deleted":
        path.unlink()
    else:
        copy = tmp_path / "copy"
        copy.write_bytes(target.read_bytes())
        copy.replace(target)
    with pytest.raises(
        RecordLogError, match="records were cut" if change == "truncated in place" else "moved, replaced"
    ):
        log.append(_record(1))
    log.close()


def test_a_file_that_is_not_a_record_log_is_refused_before_a_head_is_made(tmp_path):
    other = tmp_path / "customers.csv"
    other.write_text("customer_id,income\nC1,100\n")
    with pytest.raises(FinrecError, match="not a record"):
        RecordLog(other, key=None)
    assert not head_path(other).exists() and other.read_text() == "customer_id,income\nC1,100\n"


def test_a_head_kept_elsewhere_checks_a_log_whose_head_file_is_gone(tmp_path, capsys):
    # The writer's own message sends the user to `verify --head H` when the head file is gone,
    # and that always failed ("no head file") whatever H was (a reviewer).
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=None) as log:
        heads = [log.append(_record(i)) for i in range(5)]
    head_path(path).unlink()
    assert not verify(path).ok
    assert verify(path, head=heads[2]).ok and verify(path, head=heads[2]).anchored
    assert not verify(path, head="ab" * 32).ok
    assert main(["records", "verify", str(path), "--head", heads[4]]) == 0
    assert "as the head given (no head file) records" in capsys.readouterr().out


def test_an_output_merely_named_like_a_head_file_is_no_record_log(tmp_path):
    from finrec.governance.records import refuse_record_log

    (tmp_path / "results").write_text("x")
    (tmp_path / "results.head").write_text('{"a json output": 1}\n')
    refuse_record_log(tmp_path / "results.head", "--json")  # not refused
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=None) as log:
        log.append(_record(0))
    for target in (path, head_path(path)):
        with pytest.raises(FinrecError, match="the record log"):
            refuse_record_log(target, "--json")


def _unkeyed_slot(lines: int, head: str) -> bytes:
    fields = {"head": head, "keyed": False, "lines": lines}
    body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return json.dumps({**fields, "check": line_hash(body)}, separators=(",", ":")).encode().ljust(255) + b"\n"


def test_an_unkeyed_slot_is_no_head_of_a_keyed_log(tmp_path):
    # A reviewer deleted the newest record: the newest slot overwritten by an unkeyed one (its
    # check a plain SHA-256) naming the head before the genuine older one.
    path = _keyed_log(tmp_path, 10)
    lines = _lines(path)
    cut = _write(tmp_path, lines[:-1], head_of=path)
    data = bytearray(head_path(cut).read_bytes())
    data[0:256] = _unkeyed_slot(8, "ab" * 32)  # slot 0 held the newest head, of 10 lines
    head_path(cut).write_bytes(bytes(data))
    result = verify(cut, key=KEY)
    assert not result.ok and "other slot" in result.problem
    with pytest.raises(FinrecError, match="other slot"), RecordLog(cut, key=KEY) as log:
        log.append(_record(9))


@pytest.mark.parametrize("kept", [1, 2])
def test_the_first_records_of_a_keyed_log_cannot_be_cut_either(tmp_path, kept):
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=KEY) as log:
        for i in range(kept + 1):
            log.append(_record(i))
    cut = _write(tmp_path, _lines(path)[:kept], head_of=path)
    _blank_newest_slot(cut)
    assert not verify(cut, key=KEY).ok


def test_a_legacy_keyed_log_cannot_lose_its_last_line_to_a_blanked_slot(tmp_path):
    path = tmp_path / "r.jsonl"
    _legacy_keyed_log(path, 4)
    cut = _write(tmp_path, _lines(path)[:3], head_of=path)
    _blank_newest_slot(cut)
    assert not verify(cut, key=KEY).ok
    with RecordLog(path, key=KEY) as log:  # upgraded: its first sealed record
        log.append(_record(4))
    cut = _write(tmp_path, _lines(path)[:4], head_of=path)
    _blank_newest_slot(cut)
    assert not verify(cut, key=KEY).ok


def test_a_writer_stopped_between_the_first_line_and_its_head_resumes(tmp_path, monkeypatch):
    # A reviewer: with no head before the first line, that crash left a log no writer would take.
    path = tmp_path / "r.jsonl"
    real = RecordLog._write_head

    on_disk = {}

    def stop_at_first_head(self, lines, last):
        if lines == 1:  # the process killed between the line and its head: the disk as it was then
            on_disk.update(log=path.read_bytes(), head=head_path(path).read_bytes())
            raise KeyboardInterrupt
        return real(self, lines, last)

    monkeypatch.setattr(RecordLog, "_write_head", stop_at_first_head)
    with pytest.raises(KeyboardInterrupt), RecordLog(path, key=KEY) as log:
        log.append(_record(0))
    monkeypatch.setattr(RecordLog, "_write_head", real)
    path.write_bytes(on_disk["log"])  # no process lived on to take the line back
    head_path(path).write_bytes(on_disk["head"])
    result = verify(path, key=KEY)
    assert result.ok and result.lines == 1 and result.after_head == 1
    with RecordLog(path, key=KEY) as log:
        log.append(_record(1))
    result = verify(path, key=KEY)
    assert result.ok and result.lines == 2 and result.after_head == 0


def test_verify_of_a_live_log_sees_one_state(tmp_path):
    # A reviewer's cron check of a live log read a line mid-write ("incomplete line").
    path = tmp_path / "r.jsonl"
    with RecordLog(path, durable=False, key=KEY) as log:
        log.append(_record(0))
    stop = threading.Event()

    def write():
        with RecordLog(path, durable=False, key=KEY) as log:
            i = 0
            while not stop.is_set():
                log.append(_record(i))
                i += 1

    writers = [threading.Thread(target=write) for _ in range(2)]
    for t in writers:
        t.start()
    try:
        results = [verify(path, key=KEY) for _ in range(40)]
    finally:
        stop.set()
        for t in writers:
            t.join()
    assert all(r.ok for r in results), next(r.problem for r in results if not r.ok)
    assert results[-1].lines > 0


def _slot_of(path, lines: int) -> bytes:
    data = head_path(path).read_bytes()
    return next(
        data[i : i + 256]
        for i in (0, 256)
        if data[i : i + 1] == b"{" and json.loads(data[i : i + 256])["lines"] == lines
    )


def test_a_head_of_another_log_under_the_same_key_is_no_head_of_this_one(tmp_path):
    # A reviewer cut a record with a slot of another log (a rotated or second instance's) under
    # the same key: any keyed slot checked out, and the head of 0 lines was the same in every log.
    other = tmp_path / "other.jsonl"
    with RecordLog(other, key=KEY) as log:
        log.append(_record(100))
        genesis = _slot_of(other, 0)  # written when the log started
        for i in range(1, 8):
            log.append(_record(100 + i))
    foreign = _slot_of(other, 8)
    path = _keyed_log(tmp_path, 10)
    lines = _lines(path)
    assert b'"log":' in lines[0] and json.loads(lines[0])["log"] != json.loads(_lines(other)[0])["log"]
    cut = _write(tmp_path, lines[:-1], head_of=path)
    data = bytearray(head_path(cut).read_bytes())
    data[0:256] = foreign  # slot 0 held the head of 10
    head_path(cut).write_bytes(bytes(data))
    assert not verify(cut, key=KEY).ok
    with pytest.raises(FinrecError, match="other slot"), RecordLog(cut, key=KEY) as log:
        log.append(_record(9))
    for kept in (1, 2, 5):  # cut to a few lines beside the other log's head of 0 lines
        short = _write(tmp_path, lines[:kept])
        head_path(short).write_bytes(genesis + b" " * 255 + b"\n")
        result = verify(short, key=KEY)
        assert not result.ok and "another log" in result.problem
        with pytest.raises(FinrecError, match="another log"), RecordLog(short, key=KEY) as log:
            log.append(_record(kept))


def test_more_than_one_line_past_the_head_is_not_a_stopped_writer(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=KEY) as log:
        log.append(_record(0))
        kept = head_path(path).read_bytes()
        log.append(_record(1))
        log.append(_record(2))
    head_path(path).write_bytes(kept)  # the head of 1 line, two sealed lines past it
    result = verify(path, key=KEY)
    assert not result.ok and "2 lines past the head" in result.problem
    with pytest.raises(FinrecError, match="lines past the head"), RecordLog(path, key=KEY) as log:
        log.append(_record(3))


def test_a_log_of_nothing_beside_a_head_of_nothing_is_not_called_anchored(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=KEY) as log:
        log.append(_record(0))
    _blank_newest_slot(path)
    path.write_bytes(b"")  # the only record cut, its head blanked: a new log looks the same
    result = verify(path, key=KEY)
    assert result.ok and not result.anchored


def test_a_running_writer_never_cuts_a_line_its_head_covers(tmp_path):
    # A reviewer stripped the last newline under a running writer, which then cut the whole
    # record (its head covered it) before refusing.
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=KEY) as log:
        for i in range(3):
            log.append(_record(i))
        before = path.read_bytes()
        path.write_bytes(before[:-1])
        with pytest.raises(RecordLogError, match="shorter than the"):
            log.append(_record(3))
    assert path.read_bytes() == before[:-1]


def test_an_empty_log_beside_a_zeroed_head_file_starts_anew(tmp_path):
    # A crash while the first head was written, on a file system that kept the size, not the bytes.
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"")
    head_path(path).write_bytes(b"\0" * 256)
    assert verify(path, key=KEY).ok and not verify(path, key=KEY).anchored
    with RecordLog(path, key=KEY) as log:
        log.append(_record(0))
    assert verify(path, key=KEY).ok and verify(path, key=KEY).lines == 1


def test_swapped_head_slots_are_no_heads(tmp_path):
    # A reviewer swapped the slots so the next head overwrote the newest, not the one two back,
    # then cut the record it covered: a head of n lines is valid in slot n % 2 only.
    path = _keyed_log(tmp_path, 5)
    data = head_path(path).read_bytes()
    head_path(path).write_bytes(data[256:] + data[:256])
    assert not verify(path, key=KEY).ok
    with pytest.raises(FinrecError, match="no valid head"), RecordLog(path, key=KEY) as log:
        log.append(_record(5))


def test_a_writer_refuses_its_log_rewritten_in_place_with_another(tmp_path, capsys):
    other = tmp_path / "rotated.jsonl"
    with RecordLog(other, key=KEY) as log:
        for i in range(3):
            log.append(_record(100 + i))
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=KEY) as log:
        for i in range(5):
            log.append(_record(i))
        ours = verify(path, key=KEY).log_id
        path.write_bytes(other.read_bytes())  # the same inodes, another log's bytes
        head_path(path).write_bytes(head_path(other).read_bytes())
        with pytest.raises(RecordLogError, match="records were cut|replaced|altered"):
            log.append(_record(5))
    # A whole other log under the key is as valid as any: its id, printed, tells it from this one.
    assert verify(path, key=KEY).ok and verify(path, key=KEY).log_id != ours
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    assert main(["records", "verify", str(other), "--key-file", str(key_file)]) == 0
    assert f"; log {verify(other, key=KEY).log_id}" in capsys.readouterr().out


def _disk_full_once(monkeypatch, name: str, part: int) -> None:
    """``os.<name>`` (write or pwrite) in the record log: its first call puts ``part`` bytes on
    disk, then fails with ENOSPC; later calls (the disk has room again) go through."""
    import errno

    from finrec.governance import records

    real, calls = getattr(records.os, name), []

    def full(fd, data, *offset):
        calls.append(1)
        if len(calls) > 1:
            return real(fd, data, *offset)
        real(fd, bytes(data[:part]), *offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.os, name, full)


def test_a_line_that_failed_to_be_written_leaves_nothing_behind(tmp_path, monkeypatch):
    # A reviewer filled the disk: the failed line stayed in a buffer and was written ahead of the
    # next one once space came back, two lines of one seq, and every writer refused the log.
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=KEY) as log:
        for i in range(3):
            log.append(_record(i))
        size = path.stat().st_size
        _disk_full_once(monkeypatch, "write", 10)  # part of the line reached the file
        with pytest.raises(RecordLogError, match="No space left"):
            log.append(_record(3))
        assert path.stat().st_size == size
        log.append(_record(4))
    result = verify(path, key=KEY)
    assert result.ok and result.lines == 4
    assert json.loads(_lines(path)[-1])["customer_id"] == "C0000004"


def test_a_writer_refuses_fields_it_writes_itself_and_use_after_fork(tmp_path, monkeypatch):
    from finrec.governance import records

    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=None) as log:
        for field in ("seq", "prev", "log", "mac"):
            with pytest.raises(FinrecError, match=f"may not set {field}"):
                log.append({**_record(0), field: 1})
        monkeypatch.setattr(records.os, "getpid", lambda: -1)  # as in a forked child
        with pytest.raises(RecordLogError, match="another process"):
            log.append(_record(0))
    assert path.read_bytes() == b""


def test_a_record_whose_head_fails_to_be_written_leaves_nothing_behind(tmp_path, monkeypatch):
    # A reviewer filled the disk between a line and its head: the caller got a 503, the line
    # stayed, sealed, and could later stand in for the record actually served.
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=KEY) as log:
        for i in range(3):
            log.append(_record(i))
        size, head = path.stat().st_size, head_path(path).read_bytes()
        _disk_full_once(monkeypatch, "pwrite", 40)  # part of the slot reached the file
        with pytest.raises(RecordLogError, match="No space left"):
            log.append(_record(3))
        assert path.stat().st_size == size and head_path(path).read_bytes() == head
        log.append(_record(4))
    result = verify(path, key=KEY)
    assert result.ok and result.lines == 4 and b"C0000003" not in path.read_bytes()


def test_a_log_cut_to_nothing_beside_its_first_head_restarts_under_a_new_id(tmp_path):
    # A reviewer cut a log's only record and its head: the next append went on under the old id,
    # and the log looked anchored again with the record gone.
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=KEY) as log:
        log.append(_record(0))
    first_id = verify(path, key=KEY).log_id
    path.write_bytes(b"")
    head_path(path).write_bytes(head_path(path).read_bytes()[:256])  # the head of 0 lines alone
    with RecordLog(path, key=KEY) as log:
        log.append(_record(1))
    result = verify(path, key=KEY)
    assert result.ok and result.log_id != first_id  # the kept id shows the restart


def test_a_running_writer_refuses_its_own_records_cut(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=KEY) as log:
        for i in range(3):
            log.append(_record(i))
        old_head, old_log = head_path(path).read_bytes(), path.read_bytes()
        log.append(_record(3))
        log.append(_record(4))
        # an old head file put back, this writer's last two records cut (limitation (a) for
        # verify, but the writer knows what it wrote)
        path.write_bytes(old_log)
        head_path(path).write_bytes(old_head)
        with pytest.raises(RecordLogError, match="records were cut"):
            log.append(_record(5))


def test_a_record_json_cannot_hold_is_refused_and_leaves_the_log_as_it_was(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=KEY) as log:
        log.append(_record(0))
        for bad in ({"score": float("nan")}, {"note": "\ud800"}):
            with pytest.raises(RecordLogError, match="cannot be written as JSON"):
                log.append({**_record(1), **bad})
        log.append(_record(1))
    assert verify(path, key=KEY).ok and verify(path, key=KEY).lines == 2


def _failing(monkeypatch, name, exc):
    from finrec.governance import records

    real = getattr(records.os, name)
    monkeypatch.setattr(records.os, name, lambda *a: (_ for _ in ()).throw(exc))
    return lambda: monkeypatch.setattr(records.os, name, real)


def test_a_writer_remembers_its_own_lines_through_a_failed_append(tmp_path, monkeypatch):
    # A reviewer: after a failed append the writer forgot what it had written, and an old copy
    # of the log and head, put back, lost its answered records unseen.
    import errno

    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=KEY) as log:
        for i in range(3):
            log.append(_record(i))
        old_log, old_head = path.read_bytes(), head_path(path).read_bytes()
        log.append(_record(3))
        log.append(_record(4))
        restore = _failing(monkeypatch, "write", OSError(errno.ENOSPC, "No space left on device"))
        with pytest.raises(RecordLogError):
            log.append(_record(5))
        restore()
        path.write_bytes(old_log)
        head_path(path).write_bytes(old_head)
        with pytest.raises(RecordLogError, match="records were cut"):
            log.append(_record(6))


def test_an_interrupted_append_is_taken_back(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=KEY) as log:
        for i in range(2):
            log.append(_record(i))
        restore = _failing(monkeypatch, "fsync", KeyboardInterrupt())  # after the line's write
        with pytest.raises(KeyboardInterrupt):
            log.append(_record(2))
        restore()
        assert verify(path, key=KEY).ok and verify(path, key=KEY).lines == 2
        log.append(_record(3))
    assert verify(path, key=KEY).lines == 3 and b"C0000002" not in path.read_bytes()


def test_a_failed_append_that_cannot_be_taken_back_stops_the_writer(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "r.jsonl"
    with RecordLog(path, key=KEY) as log:
        log.append(_record(0))
        restore_sync = _failing(monkeypatch, "fdatasync", OSError(errno.EIO, "Input/output error"))
        restore_cut = _failing(monkeypatch, "ftruncate", OSError(errno.EIO, "Input/output error"))
        with pytest.raises(RecordLogError):
            log.append(_record(1))
        restore_sync()
        restore_cut()
        with pytest.raises(RecordLogError, match="could not be taken back"):
            log.append(_record(2))


def test_a_writer_whose_first_append_failed_goes_on_beside_another(tmp_path, monkeypatch):
    # A reviewer: a worker whose first append to a new log failed (a full disk, a record JSON
    # cannot hold) was refused as "replaced by another" from then on.
    import errno

    path = tmp_path / "r.jsonl"
    first, second = RecordLog(path, key=KEY), RecordLog(path, key=KEY)
    with pytest.raises(RecordLogError):
        first.append({**_record(0), "score": float("nan")})
    restore = _failing(monkeypatch, "write", OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(RecordLogError):
        first.append(_record(0))
    restore()
    second.append(_record(1))
    first.append(_record(2))
    first.close()
    second.close()
    result = verify(path, key=KEY)
    assert result.ok and result.lines == 2


def test_a_thread_waiting_on_a_writer_that_broke_does_not_append(tmp_path, monkeypatch):
    # A reviewer: the "broken" check ran before the lock, so a thread already waiting on it
    # appended after a failed append that could not be taken back, covering its line.
    import errno
    import time

    from finrec.governance import records

    path = tmp_path / "r.jsonl"
    log = RecordLog(path, key=KEY)
    log.append(_record(0))
    started, go = threading.Event(), threading.Event()

    def stalled_write(fd, data):
        started.set()
        go.wait(5)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(records.os, "write", stalled_write)
    monkeypatch.setattr(records.os, "ftruncate", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    errors = {}

    def append(name, i):
        try:
            log.append(_record(i))
        except RecordLogError as exc:
            errors[name] = str(exc)

    first = threading.Thread(target=append, args=("first", 1))
    first.start()
    started.wait(5)
    second = threading.Thread(target=append, args=("second", 2))
    second.start()
    time.sleep(0.2)  # the second thread is waiting on the lock
    go.set()
    first.join()
    second.join()
    log.close()
    assert "could not be taken back" in errors["second"]
