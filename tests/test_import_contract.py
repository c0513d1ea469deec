"""The import contract of pyproject.toml's [tool.importlinter], checked by the suite itself.

supervisor and worker both stand on shared and never import each other (the supervisor reaches
the workers only through processes and files, so a worker never pays for the supervisor's
imports and the other way round); no package's modules import each other in a cycle. The same
``lint-imports`` runs in .ci/run; here a violation fails ``pytest`` too.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports() -> str | None:
    """The lint-imports of this interpreter's environment, else one on PATH, else None."""
    beside = Path(sys.executable).with_name("lint-imports")
    return str(beside) if beside.is_file() else shutil.which("lint-imports")


def test_the_import_contract_is_kept():
    command = _lint_imports()
    if command is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's packages, whatever is installed
    done = subprocess.run([command, "--no-cache", "--no-logo"], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"lint-imports found a broken import contract:\n{done.stdout}{done.stderr}"
