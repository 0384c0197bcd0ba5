"""Write files and directories so that a reader sees the old version or the new one, never half.

A directory is built under a temporary sibling name and then swapped into place. On Linux the
swap is one ``renameat2(RENAME_EXCHANGE)`` call, so a process killed at any moment leaves either
the previous directory or the new one at the target path. Where that call is missing, the old
directory is first renamed aside and then replaced, and ``recover`` puts it back if the process
died between the two renames.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path

from finrec.errors import FinrecError

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_BACKUP_SUFFIX = ".finrec-old"


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False when the platform cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``os.umask`` alone
    would set it for a moment, under every other thread)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(target: Path, directory: bool) -> int:
    """The mode a replaced ``target`` keeps, or a new one gets as ``open``/``mkdir`` would give it:
    temporary files are created owner-only, and a model written by a training job could then not
    be read by the service account beside it (a tester)."""
    with contextlib.suppress(OSError):
        if not target.is_symlink():
            return target.stat().st_mode & 0o777  # never a setuid or setgid bit carried over
    return (0o777 if directory else 0o666) & ~_umask()


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(root)


def fsync_dir(path: Path) -> None:
    """Sync a directory's entries (a new or renamed name in it) to disk; best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def recover(target: Path) -> None:
    """Undo an interrupted non-atomic swap: restore ``target`` from its backup if it is gone."""
    target = Path(target)
    backup = target.with_name(target.name + _BACKUP_SUFFIX)
    if backup.exists() and not target.exists():
        os.rename(backup, target)
    elif backup.exists():
        shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory; on normal exit it replaces ``target`` atomically.

    On an exception the temporary directory is removed and ``target`` is untouched.
    """
    target = Path(target).absolute()
    check_writable(target, "directory")
    _make_parent(target)
    recover(target)
    mode = _mode_for(target, directory=True)
    tmp = Path(_writable(target, lambda: tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent)))
    try:
        yield tmp
        os.chmod(tmp, mode)  # after the writing: a read-only mode kept would refuse it (a reviewer)
        _fsync_tree(tmp)
        if not target.exists():
            os.rename(tmp, target)
        elif _exchange(tmp, target):
            _remove(tmp)  # tmp now holds the previous version (or the symlink that was at target)
        else:
            backup = target.with_name(target.name + _BACKUP_SUFFIX)
            os.rename(target, backup)
            os.rename(tmp, target)
            _remove(backup)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w") -> Iterator:
    """Open a temporary file beside ``target``; on normal exit it replaces ``target``."""
    target = Path(target).absolute()
    check_writable(target, "file")
    _make_parent(target)
    fd, tmp_name = _writable(target, lambda: tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp = Path(tmp_name)
    kept = _mode_for(target, directory=False)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), kept)
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_path(target: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """Like ``atomic_file`` for writers that want a path (pyarrow, numpy): yield a temp path."""
    return _atomic_path(Path(target).absolute())


@contextlib.contextmanager
def _atomic_path(target: Path) -> Iterator[Path]:
    check_writable(target, "file")
    _make_parent(target)
    fd, tmp_name = _writable(
        target, lambda: tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent, suffix=target.suffix)
    )
    os.close(fd)
    tmp = Path(tmp_name)
    kept = _mode_for(target, directory=False)
    try:
        yield tmp
        os.chmod(tmp, kept)  # after the writer: a read-only mode kept would refuse it
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------------------------
# Where a writer may write: outputs never destroy inputs


def _remove(path: Path) -> None:
    """Delete what a swap left behind: a directory tree, or a file or symlink (never followed)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def _make_parent(target: Path) -> None:
    _writable(target, lambda: target.parent.mkdir(parents=True, exist_ok=True))


def _writable(target: Path, action):
    try:
        return action()
    except PermissionError:
        raise FinrecError(f"{target}: permission denied; nothing was written, choose another path") from None


def check_writable(
    target: str | os.PathLike,
    kind: str,
    marker: str | None = None,
    what: str = "the output",
    owned: Collection[str] | Callable[[Path], Collection[str]] | None = None,
) -> None:
    """Refuse, before anything is written, a ``target`` that a writer of ``kind`` ("file" or
    "directory") cannot or must not replace: one whose parent is a file, a directory where a file
    goes (or the reverse), or, with ``marker``, a non-empty directory without that file (``finrec
    generate --out .`` would otherwise swap the working directory away). With ``owned`` (the
    names such a directory may hold, or a function of the directory giving them), one with the
    marker that also holds anything else: the swap would delete it with the rest."""
    target = Path(target)
    shown = f"{what} {target}" if what else str(target)
    for parent in target.absolute().parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise FinrecError(f"{shown}: {parent} is not a directory; nothing was written")
            break
    if not target.exists():
        return
    if kind == "file" and target.is_dir():
        raise FinrecError(f"{shown} is a directory; name a file to write (nothing was written)")
    if kind == "directory" and not target.is_dir():
        raise FinrecError(f"{shown} is a file; name a directory to write (nothing was written)")
    if kind == "directory" and marker and not (target / marker).is_file() and any(target.iterdir()):
        raise FinrecError(
            f"{shown} holds other files and no {marker}: writing there would delete them; "
            f"remove it yourself or choose another path (nothing was written)"
        )
    if kind == "directory" and marker and owned is not None and (target / marker).is_file():
        names = owned(target) if callable(owned) else owned
        # Hidden entries (.DS_Store, .ipynb_checkpoints, .nfs*) are the system's, not the user's work.
        foreign = sorted(e.name for e in target.iterdir() if e.name not in names and not e.name.startswith("."))
        if foreign:
            listed = ", ".join(repr(name) for name in foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise FinrecError(
                f"{shown} also holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} that "
                f"{'is' if len(foreign) == 1 else 'are'} not part of it ({listed}): replacing it would "
                f"delete {'it' if len(foreign) == 1 else 'them'}; move {'it' if len(foreign) == 1 else 'them'} "
                "out or choose another path (nothing was written)"
            )


def _overlap(target: Path, real: Path) -> str | None:
    if target == real:
        return "is"
    if real in target.parents:
        return "lies inside"
    if target in real.parents:
        return "contains"
    with contextlib.suppress(OSError):
        if target.exists() and real.exists() and os.path.samefile(target, real):
            return "is"
    return None


def _guarded(path: Path) -> Iterator[Path]:
    """``path`` and, in a directory, the entries that are symlinks: each is protected where it
    really lives (a table linked in from elsewhere is an input there too)."""
    yield path
    if path.is_dir():
        with contextlib.suppress(OSError):
            for entry in path.iterdir():
                if entry.is_symlink():
                    yield entry


def refuse_overlap(
    out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None], what: str = "the output"
) -> None:
    """Raise ``FinrecError`` when the output path ``out`` is, contains or lies inside one of
    ``inputs`` (a description such as "the data directory" -> its path; ``None`` is skipped).

    Paths are compared after resolving symlinks and ``..``, so an alias of an input is caught.
    Call it before anything is written: an atomic swap onto the data directory, or onto a
    directory holding it, would delete the data."""
    target = Path(out).resolve()
    shown = f"{what} {out}" + (f" (that is {target})" if target != Path(out).absolute() else "")
    for label, path in inputs.items():
        if path is None:
            continue
        for candidate in _guarded(Path(path)):
            real = candidate.resolve()
            relation = _overlap(target, real)
            if relation:
                place = str(path) if candidate == Path(path) else f"{candidate} (a link to {real})"
                raise FinrecError(
                    f"{shown} {relation} {label} {place}: an output must not overwrite an "
                    f"input; nothing was written, choose another path"
                )
