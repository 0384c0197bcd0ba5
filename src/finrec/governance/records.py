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
without gaps. Deleting lines at the end leaves a valid shorter chain: ``verify`` returns the
last line's hash (the head), which an auditor can keep elsewhere and give back as ``head``.
Anyone who can rewrite the whole file can also recompute the chain; the head kept elsewhere is
what makes that visible.

Writers: one ``RecordLog`` per process appends under a thread lock and an exclusive ``flock`` on
the file (so several server processes can share one log), re-reading the last line when another
process appended; each line is written with one ``write`` and ``fsync``-ed before ``append``
returns.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finrec.errors import FinrecError

GENESIS = "0" * 64
_TAIL_BLOCK = 1 << 16


def line_hash(line: bytes) -> str:
    """SHA-256 (hex) of one line's bytes, without the newline."""
    return hashlib.sha256(line).hexdigest()


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


class RecordLog:
    """Appends records to a JSON-lines file, chaining each line to the previous one."""

    def __init__(self, path: str | os.PathLike, durable: bool = True):
        """``durable=False`` skips the fsync of each line (bulk loads and tests only)."""
        self.path = Path(path)
        self.durable = durable
        if self.path.exists() and not self.path.is_file():
            raise FinrecError(f"{self.path}: the record log must be a file")
        if not self.path.parent.is_dir():
            raise FinrecError(f"{self.path.parent}: no such directory for the record log")
        self._lock = threading.Lock()
        self._file = open(self.path, "a+b")  # noqa: SIM115 - held open for the process's life; closed by close()
        # (file size, hash of the last line, next seq) as this process last saw the file
        self._tail: tuple[int, str, int] | None = None

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, record: dict[str, Any]) -> str:
        """Write one record (``seq`` and ``prev`` are added); returns the new line's hash."""
        with self._lock:
            handle = self._file
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                size = os.fstat(handle.fileno()).st_size
                if self._tail is None or self._tail[0] != size:
                    self._tail = (size, *_read_tail(handle, size, self.path))
                _, prev, seq = self._tail
                line = json.dumps(
                    {"seq": seq, **record, "prev": prev}, ensure_ascii=False, separators=(",", ":"), allow_nan=False
                ).encode("utf-8")
                handle.seek(0, os.SEEK_END)
                handle.write(line + b"\n")
                handle.flush()
                if self.durable:
                    os.fsync(handle.fileno())
                digest = line_hash(line)
                self._tail = (size + len(line) + 1, digest, seq + 1)
                return digest
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_tail(handle, size: int, path: Path) -> tuple[str, int]:
    """(hash of the last line, the next seq) of a log of ``size`` bytes; (GENESIS, 0) when empty."""
    if size == 0:
        return GENESIS, 0
    block = _TAIL_BLOCK
    while True:
        start = max(0, size - block)
        handle.seek(start)
        data = handle.read(size - start)
        if not data.endswith(b"\n"):
            raise FinrecError(
                f"{path}: the record log ends with an incomplete line; check it with `finrec records verify {path}`"
            )
        body = data[:-1]
        cut = body.rfind(b"\n")
        if cut >= 0 or start == 0:
            last = body[cut + 1 :]
            break
        block *= 4
    try:
        seq = json.loads(last)["seq"]
    except (ValueError, KeyError, TypeError):
        raise FinrecError(
            f"{path}: the last line of the record log is not a record; check it with `finrec records verify {path}`"
        ) from None
    return line_hash(last), int(seq) + 1


@dataclass
class Verification:
    ok: bool
    lines: int  # lines read (all of them when ok)
    head: str  # hash of the last good line (GENESIS for an empty log)
    bad_line: int | None = None  # 1-based number of the first bad line
    problem: str | None = None


def verify(path: str | os.PathLike, head: str | None = None) -> Verification:
    """Check the chain of a record log, line by line; stop at the first bad line.

    Line n (1-based) is bad when it is not a JSON object or its ``seq`` is not n - 1 (a line
    before it was deleted, or it was inserted or moved); line n - 1 is bad when line n's
    ``prev`` is not its hash (it was altered; ``GENESIS`` for the first line). With ``head`` (a
    hash kept elsewhere), the log must still contain the line with that hash: deleting or
    altering lines at the end is caught too."""
    path = Path(path)
    if not path.is_file():
        raise FinrecError(f"{path}: no such record log")
    prev = before = GENESIS
    number = 0
    head_seen = head is None or head == GENESIS
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                return Verification(False, number - 1, prev, number, "incomplete line (no newline)")
            line = raw[:-1]
            try:
                record = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                record = None
            if not isinstance(record, dict):
                return Verification(False, number - 1, prev, number, "not a JSON record")
            if record.get("seq") != number - 1:
                return Verification(
                    False,
                    number - 1,
                    prev,
                    number,
                    f"its seq is {record.get('seq')!r} where {number - 1} was expected: a line before "
                    "it was deleted, or this line was inserted or moved",
                )
            if record.get("prev") != prev:
                if number == 1:
                    return Verification(
                        False, 0, prev, 1, "the first line does not start the chain (prev is not GENESIS)"
                    )
                return Verification(
                    False,
                    number - 2,
                    before,
                    number - 1,
                    f"its hash is not the one line {number} records: it was altered (or line {number}'s prev was)",
                )
            before, prev = prev, line_hash(line)
            head_seen = head_seen or prev == head
    if not head_seen:
        return Verification(
            False,
            number,
            prev,
            number or None,
            f"no line has the head hash {head}: lines were deleted or altered at the end, or the log was rewritten",
        )
    return Verification(True, number, prev)
