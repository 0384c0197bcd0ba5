"""The package's floors: a module imports only its own floor or the ones below it.

Read from the source (every ``import``, including those inside functions), so a lazy import that
runs back up the stack is caught as well as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "finrec"

# Bottom to top. ``evaluate.metrics`` holds pure numpy metric functions with no finrec import:
# training's validation callback computes the same metrics that ``finrec evaluate`` reports.
FLOORS = [
    ("finrec.errors", "finrec.atomic", "finrec.safeyaml", "finrec.config", "finrec.evaluate.metrics"),
    ("finrec.data",),
    ("finrec.features", "finrec.history_features"),
    ("finrec.model",),
    ("finrec.training",),
    ("finrec.artifacts",),
    ("finrec.evaluate", "finrec.recommend", "finrec.explain", "finrec.plan", "finrec.governance"),
    ("finrec.cli", "finrec.serve", "finrec.serve_process", "finrec.serve_clients"),
    ("finrec.__main__",),  # `python -m finrec`: the command line, nothing else
]
ADAPTERS = ("finrec.cli", "finrec.serve", "finrec.serve_process", "finrec.serve_clients")
ADAPTER_ONLY = ("streamlit", "fastapi", "starlette", "uvicorn", "shap")


def floor_of(module: str) -> int:
    best, floor = -1, None
    for number, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, floor = len(prefix), number
    if floor is None:
        raise AssertionError(f"{module} is on no floor: add it to FLOORS")
    return floor


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # ``from finrec.data import schema`` imports the module finrec.data.schema
            names.update(f"{node.module}.{alias.name}" for alias in node.names if node.module.startswith("finrec"))
    return names


MODULES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_import_runs_back_up(path):
    here = module_name(path)
    if here == "finrec":
        return
    mine = floor_of(here)
    upward = sorted(
        name
        for name in imports_of(path)
        if name.startswith("finrec.") and _floor_or_none(name) is not None and _floor_or_none(name) > mine
    )
    assert not upward, f"{here} (floor {mine}) imports from a floor above it: {upward}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_web_and_explainer_libraries_stay_in_the_adapters(path):
    here = module_name(path)
    allowed = here.startswith(ADAPTERS) or here == "finrec.explain"
    used = sorted(name for name in imports_of(path) if name.split(".")[0] in ADAPTER_ONLY)
    assert allowed or not used, f"{here} imports {used}"


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from finrec.training.train import fit\n")
    assert "finrec.training.train" in imports_of(bad)
    assert floor_of("finrec.training.train") > floor_of("finrec.data.io")


def _floor_or_none(name: str) -> int | None:
    # ``from finrec.data import schema as S`` lists finrec.data.schema; a name imported from a
    # module (a function) is not a module and takes its module's floor.
    try:
        return floor_of(name)
    except AssertionError:
        return None
