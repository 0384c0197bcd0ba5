"""An append-only, hash-chained record of every recommendation served (MiFID II Art. 16(6)).

One JSON object per line::

    {"seq": 0, "time": "2026-11-29T11:50:52.123456Z", "customer_id": "C0000042",
     "model_version": "2026-11-29T10:02:11+00:00/3f1c0a9b2e77", "filters": {...},
     "rules": ["held", "suitability", ...], "objected": false, "message": null,
     "items": [{"rank": 1, "product_id": "SAV_BASIC", "score": 0.41}, ...],
     "excluded": [{"product_id": "FUND_CRYPTO", "rule": "negative_target_market"}, ...],
     "prev": "<SHA-256 of the previous line>"}

``rules`` are the rules that were applied (every item passed all of them), ``excluded`` names
the first rule that removed each other product. Customer feature values are never written: the
line holds ids, rule names, scores and the filter settings, so a recommendation can be rebuilt
from the customer's data as it stood and the model version named.

``prev`` chains the lines: the first line carries ``GENESIS``, every other one the SHA-256 (hex)
of the previous line's bytes (without its newline). Deleting, inserting, reordering or editing a
line breaks the chain at the first line after the change, and ``seq`` (0, 1, 2, ...) must run
without gaps.

The head file (``<log>.head``) makes a deletion at the end visible too: it records the number of
lines and the last line's hash, and is rewritten with each append, after the line, under the same
lock. It has two fixed slots written in turn with one ``pwrite`` each, every slot with its own
checksum, in one 512-byte sector, which disks are built to write whole: the file always holds the
old head or the new one, never a mix, and the head before the newest stays beside it (the scheme
of a file system's superblock copies). ``verify`` fails when the log has fewer lines than the head
names, or no line with the head's hash there.
A log that runs one line past the head (a writer stopped between the line and the head) is intact
as far as the chain goes; ``Verification.after_head`` says so, and the next writer writes the head
it lacks before its own line. More than one line past the head is no stopped writer's, and is
refused. ``judge_tail`` holds these rules, for ``verify`` and the writer alike. An incomplete last line (a power loss during its write: no
head covers it, no request was answered with it) is reported by ``verify`` and cut by the next
writer. ``verify`` reads the log's size and head under a shared lock, then the lines up to that
size: a live log is checked as one state.

With a secret key (``FINREC_RECORDS_KEY``, or a file named by ``FINREC_RECORDS_KEY_FILE``; at least
16 bytes) every hash is an HMAC-SHA-256 under that key, the chain's and the head's: whoever can
rewrite the files but lacks the key can neither recompute the chain after an edit, nor append
lines, nor write a head that matches a shortened log. Each line of a keyed log also carries its
own seal (``"mac"``, its last field: an HMAC of the line without it, ``sealed_line``), so a line
past the head, which no later ``prev`` covers yet, is authenticated too. The head is a seal as
well, under another label than the chain's (``head_seal``): were it the chain's hash, it would be
the very ``prev`` a forger needs to append a line. The head file records whether the log is
keyed; a keyed log is checked only with its key, and an unkeyed slot in it is no head. A log
starts with a random id, in its first line and in every head (``"log"``): no head of another log
under the same key fits it. It also starts with a head of 0 lines, so the two slots of a keyed
head always hold the newest head and the one before it: a head file with only one (the newest
blanked or replaced to bring the older back, lines deleted with it, or a line put past it) is
refused. A record that fails to be written leaves neither its line nor its head, and a running
writer checks that the lines it wrote are still there before it appends again. (Logs and heads
written before seals, ``"sealed"`` absent, hold unsealed lines and the chain's hash; the next append seals from there on. Stop every older writer before upgrading:
its unsealed lines are refused as written without the key. Such logs have no id and no head of
0 lines: their first head, and a head from another such log, cannot be told from their own.)
What no key shows: a log and head file wiped together, or a log cut to nothing beside its head of
0 lines, look like a new log, which ``verify`` reports as anchored by nothing and the next writer
starts (with a warning); only a head kept elsewhere tells them apart. Nor a log and head file put
back to an older copy of both: each running writer refuses it if it appended since (it checks its
own last line), but a writer that did not, or one started later, goes on from there. Nor the
line of an append that failed, copied while it was on disk and put back past the restored head:
the log then holds a record the service answered with an error (never one fewer than it
answered). What a key cannot show: a log cut back to an
older head together with a copy of that older head file - a head hash kept elsewhere (``head``)
still shows that.

Writers: one ``RecordLog`` per process (one inherited across a ``fork`` refuses) appends under a
thread lock and an exclusive ``flock`` on the log (so several server processes can share one log),
re-reading the last lines and the head when another process appended; each line is written
unbuffered and ``fsync``-ed, then the head slot (a head of n lines in slot n % 2, never the other),
before ``append`` returns; a line that fails to be written is cut back, so nothing unrecorded stays.
A writer refuses a log rewritten in place with another log (its id changed under it); ``verify``
prints the id with the head, both worth keeping elsewhere: a whole other log under the same key is
as valid as this one, and only they tell them apart. A writer refuses a log that does not match its head file
(it would otherwise cover a deletion at the end with a new head), and checks the file when it
opens it (a file that is not a record log is refused before a head file is made for it). Before
each append it checks that the path still names the files it holds open: a log or head file
moved, replaced or deleted (``sed -i``, a rotation) would otherwise take records into a file
nobody can read back, while the service answered as if it had recorded them.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finrec.atomic import fsync_dir
from finrec.errors import FinrecError, RecordLogError

log = logging.getLogger(__name__)

GENESIS = "0" * 64
HEAD_SUFFIX = ".head"
KEY_ENV = "FINREC_RECORDS_KEY"
KEY_FILE_ENV = "FINREC_RECORDS_KEY_FILE"
MIN_KEY_BYTES = 16
_SLOT = 256  # bytes per head slot; the head file is two of them
_TAIL_BLOCK = 1 << 16
KEY_FROM_ENV: Any = object()  # ``key`` default: read the key from the environment


def line_hash(line: bytes, key: bytes | None = None) -> str:
    """SHA-256 (hex) of one line's bytes, without the newline; HMAC-SHA-256 under ``key`` if given."""
    if key is None:
        return hashlib.sha256(line).hexdigest()
    return hmac.new(key, line, hashlib.sha256).hexdigest()


def _labelled(key: bytes, label: bytes, data: bytes) -> str:
    """HMAC-SHA-256 (hex) of ``data`` under ``key`` and a label of its own: a seal of one kind is
    never valid as another (a head's seal as a ``prev``, say)."""
    return hmac.new(key, b"finrec-record-" + label + b"\x00" + data, hashlib.sha256).hexdigest()


def head_seal(line: bytes, key: bytes | None = None) -> str:
    """The hash a head records for its last line: ``line_hash`` for an unkeyed log, an HMAC under
    the head's own label for a keyed one (so no head hash is ever a valid ``prev``)."""
    return line_hash(line) if key is None else _labelled(key, b"head", line)


_WRITTEN_FIELDS = frozenset({"seq", "log", "prev", "mac"})  # the writer's own, never a record's
_MAC_OPEN = b',"mac":"'
_MAC_TAIL = len(_MAC_OPEN) + 64 + 2  # ,"mac":"<64 hex>"}


def _line_mac(body: bytes, key: bytes) -> str:
    return _labelled(key, b"line", body)


def sealed_line(body: bytes, key: bytes) -> bytes:
    """A keyed log's line: the record's JSON with its own seal as the last field, ``"mac"``, an
    HMAC of the JSON without it: a line past the head (which no later ``prev`` covers yet) is
    authenticated too, and a line written or altered without the key is named as such."""
    return body[:-1] + _MAC_OPEN + _line_mac(body, key).encode() + b'"}'


def line_seal_problem(line: bytes, key: bytes) -> str | None:
    """None when ``line`` carries a seal that checks under ``key``; else what is wrong."""
    if len(line) <= _MAC_TAIL or line[-_MAC_TAIL : -_MAC_TAIL + len(_MAC_OPEN)] != _MAC_OPEN:
        return (
            "it carries no seal (a keyed log's writer seals every line): it was written without the key, or by a "
            "finrec writer from before seals (stop every older writer before upgrading)"
        )
    body = line[:-_MAC_TAIL] + b"}"
    if not hmac.compare_digest(_line_mac(body, key).encode(), line[-66:-2]):
        return "its seal does not check under the key: it was written or altered without the key"
    return None


def head_path(path: str | os.PathLike) -> Path:
    """The head file of the record log at ``path``: ``<path>.head``."""
    return Path(f"{os.fspath(path)}{HEAD_SUFFIX}")


def refuse_record_log(path: str | os.PathLike, what: str) -> None:
    """An output (``--json``, ``--out``) must not replace a record log or its head file: the log
    is evidence, and an atomic swap onto it would leave a valid-looking empty file."""
    path = Path(path)
    name = os.fspath(path)
    log = Path(name[: -len(HEAD_SUFFIX)]) if name.endswith(HEAD_SUFFIX) else path
    head = head_path(log)
    # a head file is empty (a writer that has not appended yet) or its two slots: an output of
    # another kind that merely ends in .head is no head file (a reviewer)
    looks = head.is_file() and head.stat().st_size in (0, 2 * _SLOT)
    if looks and log.is_file():
        raise FinrecError(
            f"{what} {path}: that is {'the head file of ' if log != path else ''}the record log {log}; an output "
            "never replaces it (nothing was written)"
        )


def key_from_env(environ: dict[str, str] | None = None) -> bytes | None:
    """The record log's secret key: ``FINREC_RECORDS_KEY`` (the key's text) or the contents of the
    file named by ``FINREC_RECORDS_KEY_FILE`` (a trailing newline dropped); None when neither is set."""
    environ = os.environ if environ is None else environ
    text, file = environ.get(KEY_ENV) or None, environ.get(KEY_FILE_ENV) or None
    if text and file:
        raise FinrecError(f"set {KEY_ENV} or {KEY_FILE_ENV}, not both")
    if file:
        return read_key_file(file, KEY_FILE_ENV)
    return None if text is None else _checked_key(text.encode("utf-8"), KEY_ENV)


def read_key_file(path: str | os.PathLike, what: str = "the key file") -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FinrecError(f"{what}: {path}: no such file")
    with open(path, "rb") as handle:
        raw = handle.read(4097)
    if len(raw) > 4096:
        raise FinrecError(f"{what}: {path}: over 4096 bytes; a key is expected")
    return _checked_key(raw.rstrip(b"\r\n"), f"{what} ({path})")


def _checked_key(key: bytes, what: str) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise FinrecError(f"{what}: the record log's key has {len(key)} byte(s); at least {MIN_KEY_BYTES} are needed")
    return key


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_of(result, model_version: str | None, time: str | None = None) -> dict[str, Any]:
    """The record of one ``finrec.recommend.recommender.RecommendationResult`` (no feature values)."""
    from dataclasses import asdict

    return {
        "time": time or utc_now(),
        "customer_id": result.customer_id,
        "model_version": model_version,
        "filters": asdict(result.filters),
        "rules": list(result.rules),
        "objected": bool(result.objected),
        "message": result.message,
        "items": [
            {"rank": item.rank, "product_id": item.product_id, "score": round(float(item.score), 6)}
            for item in result.items
        ],
        "excluded": [{"product_id": pid, "rule": rule} for pid, rule in result.exclusions],
    }


# ------------------------------------------------------------------------------------ head file


@dataclass(frozen=True)
class Head:
    lines: int  # lines in the log when the head was written
    head: str  # hash of the last of them (its seal in a keyed log)
    keyed: bool  # hashes are HMACs under the log's key
    sealed: bool = True  # False: an older keyed head that holds the chain's hash of its line
    log: str | None = None  # the log's id, also in its first line: no head of another log fits

    def names(self, line: bytes | None, key: bytes | None) -> bool:
        """Whether this head's hash is that of ``line`` (None: the head of 0 lines)."""
        if line is None:
            return self.lines == 0 and self.head == GENESIS
        expected = head_seal(line, key) if self.sealed else line_hash(line, key)
        return hmac.compare_digest(expected, self.head)


def _fields(head: Head) -> dict[str, Any]:
    fields = {"lines": head.lines, "head": head.head, "keyed": head.keyed}
    if head.keyed and head.sealed:
        fields["sealed"] = True
    return fields if head.log is None else {**fields, "log": head.log}


def _head_body(head: Head) -> bytes:
    return json.dumps(_fields(head), sort_keys=True, separators=(",", ":")).encode()


def _slot_check(head: Head, key: bytes | None) -> str:
    """The slot's own checksum: SHA-256, or an HMAC under the key (a label of its own for a sealed
    head, apart from the chain's and the lines' seals)."""
    if not head.keyed:
        return line_hash(_head_body(head))
    return _labelled(key, b"slot", _head_body(head)) if head.sealed else line_hash(_head_body(head), key)


def _slot(head: Head, key: bytes | None) -> bytes:
    check = _slot_check(head, key)
    raw = json.dumps({**_fields(head), "check": check}, separators=(",", ":")).encode()
    return raw.ljust(_SLOT - 1) + b"\n"


def read_heads(path: str | os.PathLike, key: bytes | None) -> list[Head]:
    """The valid slots of the log's head file, newest first; [] when the file is missing or empty.

    Raises ``FinrecError`` when no slot is valid, or the head is keyed and ``key`` is None."""
    file = head_path(path)
    if not file.exists():
        return []
    if not file.is_file():
        raise FinrecError(f"{file}: the record log's head file must be a file")
    with open(file, "rb") as handle:
        data = handle.read(2 * _SLOT + 1)
    if not data:  # created by a writer that has not appended yet
        return []
    heads, keyed_without_key = [], False
    for index in (0, 1):
        try:
            slot = json.loads(data[index * _SLOT : (index + 1) * _SLOT])
            head = Head(
                slot["lines"], slot["head"], slot["keyed"], slot.get("sealed", not slot["keyed"]), slot.get("log")
            )
            # A head of n lines is written to slot n % 2 only: swapped slots kept an old head alive
            # where the next one was to overwrite it (a reviewer cut a record so).
            valid = type(head.lines) is int and head.lines >= 0 and head.lines % 2 == index
            valid = valid and isinstance(head.head, str)
            valid = valid and type(head.keyed) is bool and isinstance(slot["check"], str)
            valid = valid and type(head.sealed) is bool and (head.log is None or isinstance(head.log, str))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
            continue
        if not valid:
            continue
        if head.keyed and key is None:
            keyed_without_key = True
            continue
        if hmac.compare_digest(_slot_check(head, key), slot["check"]):
            heads.append(head)
    if key is not None and any(h.keyed for h in heads):
        # anyone can write an unkeyed slot: in a keyed log it is no head (an attacker put one
        # with an older count beside the genuine older head, a record deleted)
        heads = [h for h in heads if h.keyed]
    if heads:
        return sorted(heads, key=lambda h: -h.lines)
    if keyed_without_key:
        raise FinrecError(
            f"{file}: the log is keyed; set {KEY_ENV} or {KEY_FILE_ENV} (or pass --key-file) to check or append to it"
        )
    raise FinrecError(f"{file}: no valid head in the head file (it was altered, or written under another key)")


def log_id_of(first: bytes | None) -> str | None:
    """The log id the first line names (None: no line yet, or a log begun before ids)."""
    if first is None:
        return None
    try:
        value = json.loads(first).get("log")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Tail:
    """How a log's end stands against its head file (``judge_tail``)."""

    head: Head | None  # the newest head of this log (None: no head)
    behind: bool = False  # one line past the head: a writer stopped between its line and its head
    problem: str | None = None
    bad_line: int | None = None  # the line the problem names, where one does


def judge_tail(
    heads: list[Head], lines: int, last: bytes | None, before: bytes | None, log_id: str | None, key: bytes | None
) -> Tail:
    """The end of a log of ``lines`` lines (the last two ``last``, ``before``; its first line names
    ``log_id``) against its head file's valid heads, for ``verify`` and the writer alike.

    The head must name the last line, or the one before it with the last line linked to it (a
    writer stopped between its line and its head leaves one line past the head, never more). In a
    keyed log: a head of another log (its id) is none of this one's; a line a sealed head covers,
    or past a head, must carry its seal; and the other slot must hold the head before the newest
    (the slots are written in turn, from a head of 0 lines written when a log starts): a head file
    with only the older one valid may have lost its newest with lines at the end, or had a line
    put past it (reviewers). Both slots lie in one 512-byte sector, which disks are built to write
    whole, so a crash leaves the old head file or the new one. (A log begun before seals and ids has no head
    of 0 lines: its first line's head stands alone.)"""
    keyed = key is not None
    ours = [h for h in heads if h.log == log_id] if keyed and lines else heads
    if heads and not ours:
        return Tail(None, problem="the head file holds the head of another log (its id is not this log's)")
    newest = ours[0] if ours else None
    if newest is None:
        if lines:
            return Tail(None, problem="no head in the head file (missing or empty): lines at the end may be deleted")
        return Tail(None)
    if newest.lines > lines:
        return Tail(
            newest,
            problem=f"the log has {lines} line(s) where its head file records {newest.lines}: lines at the end were "
            "deleted",
        )
    if newest.lines < lines - 1:
        return Tail(
            newest,
            problem=f"{lines - newest.lines} lines past the head file's head, which a stopped writer leaves one of: "
            "lines were appended without the writer, or the head was rolled back",
            bad_line=newest.lines + 2,
        )
    behind = newest.lines == lines - 1
    if behind:
        if not newest.names(before, key):
            return Tail(newest, problem=f"line {lines - 1} is not the one its head file records", bad_line=lines - 1)
        unsealed = line_seal_problem(last, key) if keyed else None
        if unsealed:
            return Tail(newest, behind, f"line {lines}, past the head: {unsealed}", bad_line=lines)
        if _prev_of(last) != (GENESIS if before is None else line_hash(before, key)):
            return Tail(
                newest,
                behind,
                f"line {lines}, past the head, does not link to line {lines - 1}: it was appended without the writer",
                bad_line=lines,
            )
    elif lines and not newest.names(last, key):
        return Tail(
            newest,
            problem=f"line {lines} is not the last line its head file records: lines at the end were altered or "
            "replaced",
            bad_line=lines,
        )
    if keyed and lines and newest.sealed and not behind:
        unsealed = line_seal_problem(last, key)
        if unsealed:
            return Tail(newest, behind, f"line {lines}: {unsealed}", bad_line=lines)
    if keyed and newest.lines >= (1 if newest.sealed else 2):
        other = ours[1] if len(ours) > 1 else None
        # one line past the head too: blanking the newest head let a sealed line of a failed
        # append stand in for the record served (a reviewer); the line before that is not at hand
        if other is None or other.lines != newest.lines - 1 or not (behind or other.names(before, key)):
            return Tail(
                newest,
                behind,
                f"the head file's other slot does not hold the head before line {newest.lines}'s (it was blanked "
                "or replaced): the newest head may have been removed with lines at the end"
                + (", or a line put past the head" if behind else ""),
            )
    return Tail(newest, behind)


# ------------------------------------------------------------------------------------ writer


class RecordLog:
    """Appends records to a JSON-lines file, chaining each line to the previous one, and keeps the
    head file (``<path>.head``) in step."""

    def __init__(self, path: str | os.PathLike, durable: bool = True, key: bytes | None = KEY_FROM_ENV):
        """``durable=False`` skips the fsyncs of each append (bulk loads and tests only). ``key``:
        the secret of a keyed log (default: from ``FINREC_RECORDS_KEY`` / ``FINREC_RECORDS_KEY_FILE``;
        None for an unkeyed log)."""
        self.path = Path(path)
        self.durable = durable
        self.key = key_from_env() if key is KEY_FROM_ENV else (None if key is None else _checked_key(key, "key"))
        if self.path.exists() and not self.path.is_file():
            raise FinrecError(f"{self.path}: the record log must be a file")
        if not self.path.parent.is_dir():
            raise FinrecError(f"{self.path.parent}: no such directory for the record log")
        self._lock = threading.Lock()
        # Unbuffered: a failed write left its line in a buffer, written ahead of the next one once
        # space came back (a reviewer), and a buffered read saw bytes another process had cut.
        created = not self.path.exists() or not head_path(self.path).exists()
        self._file = open(self.path, "a+b", buffering=0)  # noqa: SIM115 - held for the process's life; close()
        # (file size, hash of the last line, next seq) as this process last saw the file
        self._tail: tuple[int, str, int] | None = None
        self._log_id: str | None = None  # the log's id (None: a log begun before ids)
        self._id_known = False  # this writer has appended to the log of that id
        # (end, hash) of the last line this writer wrote: kept through failures, never forgotten
        self._own: tuple[int, str] | None = None
        self._broken: str | None = None  # a failed append that could not be undone
        self._pid = os.getpid()
        try:  # before any head file is made: a CSV named by mistake is refused as it is
            fcntl.flock(self._file.fileno(), fcntl.LOCK_SH)
            # checked only: the first append reads the tail again, under the exclusive lock, cuts
            # a torn last line and writes a head a stopped writer left out
            self._checked_tail(os.fstat(self._file.fileno()).st_size)
        except BaseException:
            self._file.close()
            raise
        finally:
            if not self._file.closed:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        try:
            self._head_fd = os.open(head_path(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            self._file.close()
            raise FinrecError(f"{head_path(self.path)}: cannot open the head file ({exc.strerror})") from None
        if created and durable:  # the new names themselves on disk: synced lines beside no head file
            fsync_dir(self.path.parent)
        # the files this writer holds, by device and inode (``_check_still_at_path``)
        self._held = {
            self.path: _identity(os.fstat(self._file.fileno())),
            head_path(self.path): _identity(os.fstat(self._head_fd)),
        }

    def close(self) -> None:
        self._file.close()
        os.close(self._head_fd)

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, record: dict[str, Any]) -> str:
        """Write one record (``seq`` and ``prev`` are added, and the log's id to the first; a keyed
        log's line is sealed); returns the new head's hash (the line's hash; its seal in a keyed
        log): the one to keep elsewhere for ``verify --head``. Raises ``RecordLogError`` when it
        cannot be recorded."""
        reserved = sorted(set(record) & _WRITTEN_FIELDS)
        if reserved:
            raise FinrecError(f"a record may not set {', '.join(reserved)}: the record log writes them")
        if os.getpid() != self._pid:
            # a forked child shares the parent's lock on the open file: their appends interleave
            raise RecordLogError(f"{self.path}: this RecordLog was opened by another process; open one per process")
        with self._lock:
            if self._broken:  # under the lock: a thread waiting on it must not cover the failed line
                raise RecordLogError(self._broken)
            handle = self._file
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                self._check_still_at_path()
                size = os.fstat(handle.fileno()).st_size
                if self._tail is None or self._tail[0] != size:
                    self._check_own_lines(size)
                    self._tail = self._checked_tail(size, repair=True)
                    size = self._tail[0]
                _, prev, seq = self._tail
                first = {"log": self._log_id} if seq == 0 and self._log_id else {}
                try:
                    body = json.dumps(
                        {"seq": seq, **first, **record, "prev": prev},
                        ensure_ascii=False,
                        separators=(",", ":"),
                        allow_nan=False,
                    ).encode("utf-8")
                except (ValueError, TypeError) as exc:  # NaN, a lone surrogate, an object JSON lacks
                    raise FinrecError(f"the record cannot be written as JSON ({exc})") from None
                line = body if self.key is None else sealed_line(body, self.key)
                slot = (seq + 1) % 2 * _SLOT
                kept = os.pread(self._head_fd, _SLOT, slot).ljust(_SLOT, b" ")  # none yet: a blank slot
                try:
                    _write_all(handle.fileno(), line + b"\n")
                    if self.durable:
                        os.fsync(handle.fileno())
                    # The head only after the line is on disk: after a crash it may lag, never lead.
                    seal = self._write_head(seq + 1, line)
                except BaseException:  # an interrupt too, where the process lives on
                    self._undo(size, kept, slot)
                    raise
                self._tail = (size + len(line) + 1, line_hash(line, self.key), seq + 1)
                # known once a line of it is written: a first append that failed leaves no log
                # this writer must keep to (it was refused as "replaced" from then on, a reviewer)
                self._own, self._id_known = self._tail[:2], True
                return seal
            except FinrecError as exc:
                # Every failure to record is the service's, whatever its cause (a file truncated or
                # altered in place, a damaged head): answered as one, never as the caller's error.
                raise RecordLogError(str(exc)) from None
            except OSError as exc:
                raise RecordLogError(f"{self.path}: cannot append to the record log ({exc.strerror})") from None
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _undo(self, size: int, kept: bytes, slot: int) -> None:
        """Take back a record that failed to be written, its head slot first, then its line (a
        full disk, a size limit): the caller was told it failed, and a reviewer put such a line,
        sealed, in place of the one served. The head first: a log of n lines beside a head of
        n + 1 would read as a deletion. If it cannot be undone, this writer appends no more."""
        self._tail = None
        try:
            os.pwrite(self._head_fd, kept, slot)
            if self.durable:
                os.fdatasync(self._head_fd)
            # only once the head is back: a head that may name the line stays with its line
            os.ftruncate(self._file.fileno(), size)
            if self.durable:
                os.fsync(self._file.fileno())
        except OSError as exc:
            self._broken = (
                f"{self.path}: a failed append could not be taken back ({exc.strerror}); not appending: check the "
                f"log with `finrec records verify {self.path}` and restart on it"
            )

    def _check_own_lines(self, size: int) -> None:
        """The lines this writer left are still there, as it left them: the log grows only. A
        reviewer put back an old head file and cut this writer's own records, which its next
        append covered (also after a failed append, when this writer had forgotten them)."""
        if self._own is None:
            return
        left, last_hash = self._own
        if size < left:
            raise FinrecError(
                f"{self.path}: the record log is {size} bytes, shorter than the {left} this writer left: "
                "records were cut"
            )
        if left and line_hash(_line_ending_at(self._file.fileno(), left), self.key) != last_hash:
            raise FinrecError(f"{self.path}: the last line this writer wrote was altered or replaced")

    def _write_head(self, lines: int, last: bytes | None) -> str:
        seal = GENESIS if last is None else head_seal(last, self.key)
        head = Head(lines, seal, self.key is not None, log=self._log_id)
        os.pwrite(self._head_fd, _slot(head, self.key), lines % 2 * _SLOT)
        if self.durable:
            os.fdatasync(self._head_fd)
        return seal

    def _check_still_at_path(self) -> None:
        for name, held in self._held.items():
            try:
                now = _identity(os.stat(name))
            except OSError:
                now = None
            if now != held:
                raise RecordLogError(
                    f"{name}: the file was moved, replaced or deleted while this process held it open; not "
                    "recording (records would go where nobody can read them): restore it, or restart with a "
                    "new log"
                )

    def _checked_tail(self, size: int, repair: bool = False) -> tuple[int, str, int]:
        """(size, hash of the last line, next seq), once the log is found to match its head file.

        An incomplete last line (a power loss during its one write: no head covers it, no request
        was answered with it) wedged every later append (a reviewer); the log is judged without
        it, and with ``repair`` it is cut, once the rest is found intact. ``repair`` also writes the
        head a stopped writer left out (so the slots stay in turn), and starts a new log with a
        head of 0 lines."""
        fd = self._file.fileno()
        complete = _complete_size(fd, size)
        last, before = _read_tail(fd, complete)
        lines = 0 if last is None else _seq_of(last, self.path) + 1
        try:
            heads = read_heads(self.path, self.key)
        except FinrecError as exc:
            if lines or complete != size or "is keyed" in str(exc):
                raise FinrecError(f"{exc}; not appending to {self.path}") from None
            # an empty log beside a head file with nothing valid in it: a crash while its first
            # head was written (a file system may keep the size and lose the bytes); a new log
            heads = []
        keyed = [h for h in heads if h.keyed]
        if heads and bool(keyed) != (self.key is not None):
            state = "with a key" if keyed else "without a key"
            raise FinrecError(f"{self.path}: the record log was written {state}; not appending to it otherwise")
        first = _read_first(fd, complete) if lines else None
        tail = judge_tail(heads, lines, last, before, log_id_of(first), self.key)
        if tail.problem:
            hint = (
                f"; check it with `finrec records verify {self.path} --head H` and start a new log"
                if tail.head is None
                else f" (check it with `finrec records verify {self.path}`)"
            )
            raise FinrecError(
                f"{self.path}: the record log has {lines} line(s) and does not match its head file: {tail.problem}; "
                f"not appending{hint}"
            )
        found = log_id_of(first) if lines else None
        if self._id_known and (found != self._log_id or lines == 0):
            # the file rewritten in place with another log (a rotated one, its head beside it):
            # as valid as any, yet not the log this writer was appending to (a reviewer)
            raise FinrecError(
                f"{self.path}: the record log was replaced by another (its id is {found!r}, this writer's "
                f"{self._log_id!r})"
            )
        if repair and complete != size:
            os.ftruncate(fd, complete)
            if self.durable:
                os.fsync(fd)
            log.warning("%s: cut an incomplete last line of %d byte(s)", self.path, size - complete)
        self._log_id = found
        if repair and lines == 0:
            # A new log: its id, and a head of 0 lines before the first line, so that the first
            # line's head has the one before it as every later head has (judge_tail), and a writer
            # stopped between the first line and its head resumes as after any other line. Always
            # a new id, even beside a head of 0 lines: a log cut to nothing beside its own went on
            # under its id, and looked anchored once appended to (a reviewer).
            log.warning("%s: starting a new record log (no records)", self.path)
            self._log_id = secrets.token_hex(16)
            self._write_head(0, None)
        elif repair and tail.behind:  # the head the stopped writer did not write
            self._write_head(lines, last)
        return complete, (GENESIS if last is None else line_hash(last, self.key)), lines


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _line_ending_at(fd: int, end: int) -> bytes:
    """The line (without its newline) that ends at byte ``end`` of the log."""
    block = _TAIL_BLOCK
    while True:
        start = max(0, end - block)
        data = os.pread(fd, end - start, start)[:-1]
        cut = data.rfind(b"\n")
        if cut >= 0 or start == 0:
            return data[cut + 1 :]
        block *= 4


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_first(fd: int, size: int) -> bytes:
    """The first line (without its newline) of the first ``size`` bytes of a log."""
    block = _TAIL_BLOCK
    while True:
        data = os.pread(fd, min(block, size), 0)
        cut = data.find(b"\n")
        if cut >= 0 or len(data) >= size:
            return data[:cut] if cut >= 0 else data
        block *= 4


def _complete_size(fd: int, size: int) -> int:
    """The size of the log's complete lines: up to its last newline."""
    end = size
    while end > 0:
        start = max(0, end - _TAIL_BLOCK)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def _read_tail(fd: int, size: int) -> tuple[bytes | None, bytes | None]:
    """The last line and the one before it (None where the log has fewer) of a log of ``size``
    bytes of complete lines."""
    if size == 0:
        return None, None
    last = _line_ending_at(fd, size)
    start = size - len(last) - 1
    return last, (_line_ending_at(fd, start) if start > 0 else None)


def _prev_of(line: bytes) -> Any:
    try:
        return json.loads(line).get("prev")
    except (ValueError, AttributeError):
        return None


def _seq_of(line: bytes, path: Path) -> int:
    try:
        seq = json.loads(line)["seq"]
        if type(seq) is not int:
            raise TypeError
        return seq
    except (ValueError, KeyError, TypeError):
        raise FinrecError(
            f"{path}: the last line of the record log is not a record; check it with `finrec records verify {path}`"
        ) from None


# ------------------------------------------------------------------------------------ verify


@dataclass
class Verification:
    ok: bool
    lines: int  # lines read (all of them when ok)
    head: str  # hash of the last good line (GENESIS for an empty log); a sealed head when ok
    bad_line: int | None = None  # 1-based number of the first bad line
    problem: str | None = None
    keyed: bool = False  # the hashes were checked as HMACs under the log's key
    after_head: int = 0  # lines past the head file's head (a writer stopped between line and head)
    anchored: bool = True  # a head (the head file's, or one kept elsewhere) was checked
    unsealed_head: bool = False  # a keyed head written before seals: a line past it is not authenticated
    stored_head: int | None = None  # lines the head file records (None: no head in it)
    log_id: str | None = None  # the log's id, from its first line (None: a log begun before ids)


def verify(path: str | os.PathLike, head: str | None = None, key: bytes | None = KEY_FROM_ENV) -> Verification:
    """Check the chain of a record log, line by line, then its head file; stop at the first problem.

    Line n (1-based) is bad when it is not a JSON object or its ``seq`` is not n - 1 (a line
    before it was deleted, or it was inserted or moved); line n - 1 is bad when line n's
    ``prev`` is not its hash (it was altered; ``GENESIS`` for the first line). Then the end of the
    log must stand as its head file records (``judge_tail``): fewer lines, another line there, or
    more than one line past the head means lines at the end were deleted, altered or appended.
    With ``head`` (a hash kept elsewhere), the log must also still contain the line with that
    hash (it alone anchors a log whose head file is gone). ``key`` (default: from the
    environment) is needed for a keyed log and refused for an unkeyed one; in a keyed log each
    line's own seal is checked first, so the line written or altered without the key is the one
    named. The log's size and head are read under a shared lock, then its lines up to that size:
    a live log is checked as one state (a reviewer's check read a line mid-write)."""
    path = Path(path)
    if not path.is_file():
        raise FinrecError(f"{path}: no such record log")
    key = key_from_env() if key is KEY_FROM_ENV else key
    head_problem, heads = None, []
    with open(path, "rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        try:
            size = os.fstat(handle.fileno()).st_size
            heads = read_heads(path, key)
        except FinrecError as exc:
            head_problem = str(exc)
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        log_id = log_id_of(_read_first(handle.fileno(), size)) if size else None
    if head_problem is not None and "is keyed" in head_problem:
        return Verification(False, 0, GENESIS, None, head_problem)
    if heads and key is not None and not any(h.keyed for h in heads):
        return Verification(False, 0, GENESIS, None, "a key was given but the log was written without one")
    keyed = key is not None
    chain_key = key if keyed else None
    ours = [h for h in heads if h.log == log_id] if keyed and size else heads
    stored = ours[0] if ours else None
    head = None if head is None else checked_head_hash(head)
    prev = before = GENESIS
    number = 0
    last_line = before_line = None
    head_seen = head is None or head == GENESIS
    sealed_seen = False  # a keyed log's lines carry seals from the first one a sealing writer wrote

    def bad(lines, last, line, problem):
        return Verification(False, lines, last, line, problem, keyed)

    with open(path, "rb") as handle:
        for number, raw in enumerate(_lines_up_to(handle, size), start=1):
            if not raw.endswith(b"\n"):
                return bad(number - 1, prev, number, "incomplete line (no newline)")
            line = raw[:-1]
            try:
                record = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                record = None
            if not isinstance(record, dict):
                return bad(number - 1, prev, number, "not a JSON record")
            if record.get("seq") != number - 1:
                return bad(
                    number - 1,
                    prev,
                    number,
                    f"its seq is {record.get('seq')!r} where {number - 1} was expected: a line before "
                    "it was deleted, or this line was inserted or moved",
                )
            if keyed:
                problem = line_seal_problem(line, key)
                carries = problem is None or not problem.startswith("it carries no seal")
                past_head = stored is not None and number > stored.lines
                if problem and (carries or sealed_seen or past_head):
                    return bad(number - 1, prev, number, problem)
                sealed_seen = sealed_seen or carries
            if record.get("prev") != prev:
                if number == 1:
                    return bad(0, prev, 1, "the first line does not start the chain (prev is not GENESIS)")
                return bad(
                    number - 2,
                    before,
                    number - 1,
                    f"its hash is not the one line {number} records: it was altered (or line {number}'s prev was)"
                    + (" or the log was written under another key" if keyed else ""),
                )
            before, prev = prev, line_hash(line, chain_key)
            before_line, last_line = last_line, line
            # a head kept elsewhere is the line's seal in a keyed log (its chain hash before seals)
            head_seen = head_seen or prev == head or (keyed and head_seal(line, chain_key) == head)
    tail = None
    if head_problem is not None:
        if number:
            return bad(number, prev, None, head_problem)
        # an empty log beside a head file with nothing valid: a crash while its first head was
        # written (the next writer starts it anew); as unanchored as a new log
    elif heads or not number or head in (None, GENESIS):  # else a head kept elsewhere alone anchors it
        tail = judge_tail(heads, number, last_line, before_line, log_id, key)
        if tail.problem:
            lines = number if tail.bad_line is None else tail.bad_line - 1
            return bad(lines, prev, tail.bad_line, tail.problem)
    if not head_seen:
        return bad(
            number,
            prev,
            None,
            f"no line has the head hash {head}: lines were deleted or altered at the end, or the log was rewritten",
        )
    stored = None if tail is None else tail.head
    return Verification(
        True,
        number,
        GENESIS if last_line is None else head_seal(last_line, chain_key),
        keyed=keyed,
        after_head=int(tail is not None and tail.behind),
        # a head of 0 lines anchors nothing: a log cut to nothing beside it looks the same
        anchored=(stored is not None and stored.lines > 0) or head not in (None, GENESIS),
        unsealed_head=stored is not None and stored.keyed and not stored.sealed,
        stored_head=None if stored is None else stored.lines,
        log_id=log_id,
    )


def _lines_up_to(handle, size: int):
    """The lines of the first ``size`` bytes (what a writer appends later is not read)."""
    read = 0
    for raw in handle:
        if read + len(raw) > size:
            raw = raw[: size - read]
        if not raw:
            return
        read += len(raw)
        yield raw
        if read >= size:
            return


def checked_head_hash(text: str) -> str:
    """A head hash as given by a person (``--head``): 64 hex digits, any case, spaces around
    dropped; anything else is refused rather than reported as tampering."""
    value = text.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise FinrecError(
            f"--head: {text[:80]!r} is not a head hash (64 hex digits, as `finrec records verify` prints)"
        )
    return value
