"""The package itself: a regular package with a version, light to import."""

import subprocess
import sys
import tomllib
from pathlib import Path


def test_version_matches_pyproject():
    import finrec

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert finrec.__version__ == pyproject["project"]["version"]
    assert finrec.__file__ is not None  # a regular package: `pip install .` ships every module


def test_importing_the_package_loads_no_backend():
    code = "import sys, finrec; print(sorted(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )
