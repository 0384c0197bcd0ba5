"""The one way finrec reads YAML (``schema.yaml``, training configs, a model's ``config.yaml``).

``yaml.safe_load`` never runs code, but it still expands aliases (a "billion laughs" file of a few
hundred bytes grows to gigabytes), lets a duplicated key silently replace the first one, and reads
a file of any size. finrec's files are small hand-written mappings, so this loader refuses all
three: anchors and aliases, duplicate keys at any level, and files over ``MAX_YAML_BYTES``. Every
failure is the caller's ``FinrecError`` subclass, naming the file and the line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from finrec.errors import FinrecError, safe_text

MAX_YAML_BYTES = 1024**2


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that finrec does not accept."""


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` without anchors, aliases (so without merge keys) or duplicate keys."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(None, None, "anchors and aliases (&name, *name) are not allowed", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    raise yaml.constructor.ConstructorError(
                        None, None, "a key that is a list or mapping", key_node.start_mark
                    ) from None
                if first is not None:
                    raise _Refused(
                        None,
                        None,
                        f"duplicate key {safe_text(key, 80, quote=True)} (first at line {first.line + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str, error: type[FinrecError]) -> Any:
    """The value of a YAML document held in ``text``; ``source`` names it in messages."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no Python tags
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source} line {mark.line + 1}" if mark is not None else source
        problem = safe_text(exc.problem or exc.context or "malformed")
        message = f"{where}: {problem}" if isinstance(exc, _Refused) else f"{where}: not valid YAML ({problem})"
        raise error(message) from None
    except RecursionError:
        raise error(f"{source}: not valid YAML (nested too deeply)") from None
    except Exception as exc:  # noqa: BLE001 - a constructor fails on odd scalars (!!timestamp nope) in many ways
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"{source}: not valid YAML ({safe_text(first)})") from None


def load_yaml(path: str | os.PathLike, error: type[FinrecError], max_bytes: int = MAX_YAML_BYTES) -> Any:
    """The value of the YAML file at ``path``, read only when it holds at most ``max_bytes``.
    ``FileNotFoundError`` is left to the caller, who knows what the file is for."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise error(f"{path}: not a file")
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    if len(data) > max_bytes:
        raise error(f"{path}: over {max_bytes // 1024} KB; a finrec YAML file is a short mapping")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not valid YAML (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    return parse_yaml(text, str(path), error)
