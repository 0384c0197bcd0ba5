"""The model registry: numbered versions of model directories and the one that is promoted.

Layout::

    ROOT/
      registry.json          the pointer: {"promoted": "v0002", "stack": ["v0001", "v0002"], "events": [...]}
      versions/
        v0001/
          model/             a model directory: the files its manifest lists (``finrec.artifacts`` layout)
          version.json       when and from where it was registered, its metrics and data fingerprint
          report.html        optional: its validation report (``finrec report``)
      .lock                  serialises the commands that change the registry

``add`` copies a model directory in atomically (a version directory is complete or absent);
``promote`` points ``registry.json`` at a version and pushes it on the stack; ``rollback`` pops
the stack, back to the version promoted before. ``registry.json`` is replaced atomically, so a
server polling it (``finrec serve --root``, ``PointerWatcher``) reads the old pointer or the new
one, never half a file. Every promotion and rollback is kept in ``events`` as an audit trail.
"""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
import logging
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finrec.artifacts import MANIFEST, model_version, read_manifest
from finrec.atomic import atomic_directory, atomic_file
from finrec.errors import FinrecError

log = logging.getLogger(__name__)

POINTER = "registry.json"
VERSIONS = "versions"
MODEL = "model"
VERSION_INFO = "version.json"
REPORT = "report.html"
LOCK = ".lock"
_VERSION_ID = re.compile(r"^v(\d{4,})$")


class RegistryError(FinrecError):
    """A registry command that cannot be carried out (unknown version, nothing to roll back to)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def best_epoch_metrics(history: dict[str, list[float]]) -> dict[str, float]:
    """The validation metrics of the epoch with the best validation nDCG (the weights training
    kept), from a model's ``history.json``; with a tree blend also the blend's weight and its
    validation nDCG (``blend_val_ndcg@k``): the score the model ships, which the towers' own
    figures understate."""
    ndcg = next((name for name in history if name.startswith("val_ndcg@")), None)
    if ndcg is None or not history[ndcg]:
        return {}
    best = max(range(len(history[ndcg])), key=history[ndcg].__getitem__)
    metrics = {
        name: float(values[best]) for name, values in history.items() if name.startswith("val_") and len(values) > best
    }
    for name, values in history.items():
        if (name.startswith("blend_val_") or name in ("tree_blend_weight", "tree_blend_cold_weight")) and values:
            metrics[name] = float(values[-1])
    return metrics


def registry_holding(path: str | Path) -> Path | None:
    """The registry whose root is ``path`` or one of its parents (a ``versions/`` folder holding a
    registered version's ``version.json``, or beside the pointer a ``promote`` writes), or None."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        versions = folder / VERSIONS
        if versions.is_dir() and (
            (folder / POINTER).is_file() or any(versions.glob(f"v*/{VERSION_INFO}"))
        ):  # a project's own versions/ folder beside a stray lock file is no registry
            return folder
    return None


MODEL_HINT = "Write a model elsewhere (calibrate a copy) and register it with `finrec models add`"
OUTPUT_HINT = "only `finrec models` writes there; write the output elsewhere (nothing was written)"


def refuse_registry_write(path: str | Path, what: str, hint: str = MODEL_HINT) -> None:
    """A command that writes a model directory (``train --out``, ``calibrate --model``), or any
    output (``hint=OUTPUT_HINT``), refuses a path at or inside a registry: a registered version is
    what was signed off and is served by its id, yet ``calibrate`` rewrote it in place and the
    server loaded the changed model, and ``monitor --json reg/registry.json`` replaced the pointer
    (testers); ``train --out`` onto the root would replace every version."""
    root = registry_holding(path)
    if root is not None:
        raise RegistryError(
            f"{what} {path}: inside the model registry {root}; a registered version is never changed. {hint}"
        )


def stray_files(model_dir: str | Path) -> list[str]:
    """Names in a model directory that its manifest does not list (left out by ``add``)."""
    model_dir = Path(model_dir)
    listed = {MANIFEST, *read_manifest(model_dir, verify=False).get("files", {})}
    return sorted(p.name for p in model_dir.iterdir() if p.name not in listed and not p.name.startswith("."))


REPORT_SUFFIXES = (".html", ".htm", ".md")
_REPORT_VERSION = re.compile(r"· model version (\S+) ·")


def check_report_of(report: str | Path, manifest: dict[str, Any]) -> None:
    """Refuse a report that is not ``finrec report``'s report of the model of ``manifest``: it
    names the model's version (``artifacts.model_version``) in its subtitle. Any file was kept
    as a version's report: another model's, a text file, a parquet (a tester)."""
    report = Path(report)
    if not report.is_file():
        raise RegistryError(f"{report}: no such report file (write one with `finrec report --out FILE`)")
    if report.suffix.lower() not in REPORT_SUFFIXES:
        raise RegistryError(f"{report}: a report is .html or .md (as `finrec report --out` writes it)")
    with open(report, "rb") as handle:
        head = html.unescape(handle.read(1 << 16).decode("utf-8", errors="replace"))
    expected = model_version(manifest)
    # The exact subtitle text: the title and the model's path come before it and may hold anything.
    if f"· model version {expected} ·" in head:
        return
    found = _REPORT_VERSION.search(head)
    if found is None:
        raise RegistryError(
            f"{report}: not a finrec report naming its model (reports written before finrec named the model "
            "version lack it): write it with `finrec report --model DIR --out FILE`"
        )
    raise RegistryError(
        f"{report}: the report of model version {found.group(1)[:80]}, not of this model ({expected}): "
        "register each model with its own report"
    )


def metrics_from_file(path: str | Path, manifest: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(metrics, notes) from ``models add --metrics``: ``finrec evaluate --json`` output (its
    model's row; refused when it names another model) or a JSON object with numeric metrics."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read the metrics JSON ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise RegistryError(f"{path}: expected a JSON object of metrics")
    notes = []
    if "results" in raw:
        named, expected = raw.get("model_version"), model_version(manifest)
        if named is not None and named != expected:
            raise RegistryError(
                f"{path}: metrics of model version {str(named)[:80]}, not of this model ({expected}): "
                "evaluate this model (`finrec evaluate --json`)"
            )
        if named is None:
            notes.append(f"{path} does not name the model it measured (written before evaluate recorded it)")
        metrics = raw["results"].get("model") if isinstance(raw["results"], dict) else None
    else:
        metrics = raw
    if not isinstance(metrics, dict) or not any(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
    ):
        raise RegistryError(f"{path}: no numeric metric in it (expected `finrec evaluate --json` output)")
    return metrics, notes


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ------------------------------------------------------------------------------ reading
    def state(self) -> dict[str, Any]:
        """The pointer: ``{"promoted": id or None, "stack": [...], "events": [...]}``."""
        return read_pointer(self.root)

    @property
    def promoted(self) -> str | None:
        return self.state()["promoted"]

    def version_ids(self) -> list[str]:
        folder = self.root / VERSIONS
        if not folder.is_dir():
            return []
        ids = [p.name for p in folder.iterdir() if p.is_dir() and _VERSION_ID.match(p.name)]
        return sorted(ids, key=lambda v: int(v[1:]))

    def model_path(self, version: str) -> Path:
        """The model directory of ``version``; a ``RegistryError`` naming the known ones if absent."""
        path = self.root / VERSIONS / str(version) / MODEL
        if not _VERSION_ID.match(str(version)) or not path.is_dir():
            known = ", ".join(self.version_ids()) or "none yet (add one with `finrec models add`)"
            raise RegistryError(f"{self.root}: no version {version!r}; versions: {known}")
        return path

    def info(self, version: str) -> dict[str, Any]:
        path = self.model_path(version).parent / VERSION_INFO
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {"version": version}

    def versions(self) -> list[dict[str, Any]]:
        """Every version's ``version.json``, oldest first, with ``promoted`` set on the one served."""
        promoted = self.promoted
        return [{**self.info(v), "promoted": v == promoted} for v in self.version_ids()]

    # ------------------------------------------------------------------------------ changing
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def same_model(self, model_dir: str | Path) -> list[str]:
        """The versions whose model has the very files of ``model_dir`` (the manifests'
        checksums): registering it again makes a second id of one model."""
        files = read_manifest(model_dir, verify=False).get("files")  # the recorded checksums: no re-hashing
        same = []
        for version in self.version_ids():
            try:
                if read_manifest(self.root / VERSIONS / version / MODEL, verify=False).get("files") == files:
                    same.append(version)
            except FinrecError:
                continue  # a damaged version is no match; `promote` names it when it matters
        return same

    def add(
        self,
        model_dir: str | Path,
        metrics: dict[str, Any] | None = None,
        report: str | Path | None = None,
        note: str | None = None,
    ) -> str:
        """Copy the model directory ``model_dir`` in as a new version (its checksums are checked
        first); returns the new version id. ``metrics`` default to the best epoch's validation
        metrics from the model's training history."""
        model_dir = Path(model_dir)
        manifest = read_manifest(model_dir)
        self._check_root()
        root, source = self.root.resolve(), model_dir.resolve()
        if root == source or source in root.parents:
            # It wrote versions/ into the model directory, and the copy took the half-made
            # versions/ with it: the model's own directory became a registry (a tester).
            raise RegistryError(
                f"{self.root}: the registry would lie inside the model directory {model_dir} and write its "
                "versions into it; choose a registry directory outside the model (nothing was written)"
            )
        if report is not None:  # checked before the model is copied (a missing one was an internal error after it)
            check_report_of(report, manifest)
        if metrics is None:
            try:
                metrics = best_epoch_metrics(json.loads((model_dir / "history.json").read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError):
                metrics = {}
        with self._locked():
            version = f"v{self._last_number() + 1:04d}"
            with atomic_directory(self.root / VERSIONS / version) as tmp:
                # The files the manifest names, nothing else: a version is what was signed off,
                # not the notes or scores someone kept in the folder (a tester).
                (tmp / MODEL).mkdir()
                for name in (MANIFEST, *manifest["files"]):
                    shutil.copy2(model_dir / name, tmp / MODEL / name)
                if report is not None:
                    shutil.copyfile(report, tmp / REPORT)
                info = {
                    "version": version,
                    "registered": _now(),
                    "source": str(model_dir.resolve()),
                    "created": manifest.get("created"),
                    "data_fingerprint": manifest.get("data_fingerprint"),
                    "schema_hash": manifest.get("schema_hash"),
                    "metrics": metrics,
                    "note": note,
                }
                (tmp / VERSION_INFO).write_text(json.dumps(info, indent=1), encoding="utf-8")
            read_manifest(self.root / VERSIONS / version / MODEL)  # the copy is whole
        return version

    def _check_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"--root {self.root}: a file, not a registry directory (nothing was written)")
        outer = registry_holding(self.root.resolve().parent)
        if outer is not None:
            raise RegistryError(
                f"--root {self.root}: inside the model registry {outer}; a registry within another would write "
                "its versions among the signed-off ones: choose a directory outside it (nothing was written)"
            )

    def _last_number(self) -> int:
        """The highest version number ever used: of the version directories and of every version
        the pointer names. A number is never given twice: after a version directory was deleted
        by hand, the next model got its id and, where it had been promoted, was served at once
        under the old promotion, the audit trail naming it."""
        state = self.state()
        named = [*self.version_ids(), *state["stack"], *(event.get("version") for event in state["events"])]
        named += [event.get("previous") for event in state["events"]]
        numbers = [int(match.group(1)) for v in named if isinstance(v, str) and (match := _VERSION_ID.match(v))]
        return max(numbers, default=0)

    def promote(self, version: str) -> dict[str, Any]:
        """Serve ``version`` from now on (its files are checked first); returns the new pointer."""
        read_manifest(self.model_path(version))
        with self._locked():
            state = self.state()
            previous = state["promoted"]
            if previous == version:
                return state
            state["promoted"] = version
            state["stack"].append(version)
            state["events"].append({"action": "promote", "version": version, "previous": previous, "at": _now()})
            self._write(state)
        return state

    def rollback(self) -> dict[str, Any]:
        """Back to the version promoted before the current one; returns the new pointer."""
        with self._locked():
            state = self.state()
            if len(state["stack"]) < 2:
                # After a promotion and its rollback it said "only one promotion so far".
                why = (
                    "no version is promoted"
                    if not state["stack"]
                    else f"nothing was promoted before {state['stack'][0]}, or each later promotion was rolled back"
                )
                raise RegistryError(
                    f"{self.root}: nothing to roll back to ({why}); `finrec models promote VERSION` serves another"
                )
            current = state["stack"].pop()
            target = state["stack"][-1]
            read_manifest(self.model_path(target))
            state["promoted"] = target
            state["events"].append({"action": "rollback", "version": target, "previous": current, "at": _now()})
            self._write(state)
        return state

    def _write(self, state: dict[str, Any]) -> None:
        with atomic_file(self.root / POINTER) as handle:
            json.dump(state, handle, indent=1)


def read_pointer(root: str | Path) -> dict[str, Any]:
    """``registry.json`` of ``root`` (an empty pointer when nothing was promoted yet)."""
    path = Path(root) / POINTER
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"promoted": None, "stack": [], "events": []}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise RegistryError(f"{path}: damaged (not valid JSON)") from None
    if not isinstance(state, dict) or not isinstance(state.get("stack"), list):
        raise RegistryError(f"{path}: not a finrec registry pointer")
    state.setdefault("events", [])
    return state


def promoted_model(root: str | Path) -> tuple[str, Path]:
    """(version id, model directory) of the promoted version; a ``RegistryError`` if none is."""
    registry = Registry(root)
    version = registry.promoted
    if version is None:
        raise RegistryError(f"{root}: no version is promoted (run `finrec models promote --root {root} VERSION`)")
    return version, registry.model_path(version)


class PointerWatcher:
    """Polls ``ROOT/registry.json`` every ``interval`` seconds in a daemon thread and puts the
    promoted version in place when it changes: ``load(version, model_dir)`` builds what serves
    (a ``Recommender``), ``install(version, loaded)`` swaps it in.

    Warm standby: between changes the watcher also loads the versions a switch most likely goes
    to -- the one promoted before the current one (a rollback) and the newest registered one (a
    promotion) -- so that a switch to them is a swap, not a load of seconds. At most those two
    are kept. When ``load`` raises, the failure is logged, the version in place keeps serving,
    and that version is not tried again until the pointer changes."""

    def __init__(
        self,
        root: str | Path,
        current: str | None,
        load: Callable[[str, Path], Any],
        install: Callable[[str, Any], None],
        interval: float = 1.0,
        standby: bool = True,
    ):
        self.registry = Registry(root)
        self.current = current
        self.load = load
        self.install = install
        self.interval = interval
        self.standby = standby
        self.ready: dict[str, Any] = {}  # version -> loaded, the warm standbys
        self._failed: set[str] = set()  # not retried until the pointer changes
        self._seen: str | None = current
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="finrec-registry-watch", daemon=True)

    def start(self) -> PointerWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _load(self, version: str) -> Any:
        if version in self.ready:
            return self.ready.pop(version)
        return self.load(version, self.registry.model_path(version))

    def check(self) -> bool:
        """One poll; True when a new version was put in place."""
        try:
            state = self.registry.state()
        except FinrecError as exc:
            log.warning("registry %s: %s", self.registry.root, exc)
            return False
        version = state["promoted"]
        changed = False
        if version != self._seen:
            self._failed.clear()
            self._seen = version
        if version is not None and version != self.current and version not in self._failed:
            try:
                loaded = self._load(version)
            except Exception as exc:  # noqa: BLE001 - keep serving the version in place
                self._failed.add(version)
                log.error(
                    "version %s could not be loaded, still serving %s: %s",
                    version,
                    self.current,
                    exc if isinstance(exc, FinrecError) else type(exc).__name__,
                )
            else:
                previous = self.current
                self.install(version, loaded)
                self.current, changed = version, True
                log.warning("now serving model version %s (was %s)", version, previous)
        if self.standby:
            self._warm(state)
        return changed

    def standby_versions(self, state: dict[str, Any]) -> list[str]:
        """The rollback target and the newest registered version, except the one serving."""
        wanted = []
        if len(state["stack"]) >= 2:
            wanted.append(state["stack"][-2])
        ids = self.registry.version_ids()
        if ids:
            wanted.append(ids[-1])
        return [v for v in dict.fromkeys(wanted) if v != self.current and v not in self._failed]

    def _warm(self, state: dict[str, Any]) -> None:
        wanted = self.standby_versions(state)
        for version in list(self.ready):
            if version not in wanted:
                del self.ready[version]
        for version in wanted:
            if version not in self.ready:
                try:
                    self.ready[version] = self.load(version, self.registry.model_path(version))
                    log.warning("model version %s loaded as a standby", version)
                except Exception as exc:  # noqa: BLE001 - a broken standby must not stop the watcher
                    self._failed.add(version)
                    log.error(
                        "standby version %s could not be loaded: %s",
                        version,
                        exc if isinstance(exc, FinrecError) else type(exc).__name__,
                    )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()
