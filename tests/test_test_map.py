"""The test tree mirrors the code: every module of ``supervisor/``, ``worker/`` and ``shared/``
has a test file of its own name in the matching folder under ``tests/``, or a line in that
folder's ``__init__.py`` naming the test files that cover it, and every file named exists.
A new module without either fails here."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def modules() -> list[Path]:
    found = []
    for package in ("supervisor", "worker", "shared"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name != "__init__.py":
                found.append(path.relative_to(ROOT))
    return found


def folder_map(test_dir: Path) -> dict[str, list[str]]:
    """``module -> [test files]`` from the ``- ``name``: ``a.py``, ...`` lines of the folder's
    ``__init__.py`` (``shared/`` also lists ``remote.<name>``)."""
    init = test_dir / "__init__.py"
    text = init.read_text() if init.is_file() else ""
    return {name: re.findall(r"``([\w/]+\.py)``", rest)
            for name, rest in re.findall(r"^- ``([\w.]+)``: (.*)$", text, flags=re.MULTILINE)}


@pytest.mark.parametrize("module", modules(), ids=str)
def test_every_module_has_its_test_file_or_a_line_naming_the_tests_that_cover_it(module: Path) -> None:
    package, *folders, file_name = module.parts
    leaf = file_name.removesuffix(".py")
    if package == "shared" and folders == ["remote"]:  # shared/remote/ is listed in tests/shared/
        test_dir, key = TESTS / "shared", f"remote.{leaf}"
    elif package == "shared" and folders:
        pytest.skip(f"{module}: data, not code")
    else:
        test_dir, key = TESTS.joinpath(package, *folders), leaf
    if (test_dir / f"test_{leaf}.py").is_file():
        return
    named = folder_map(test_dir).get(key)
    assert named, f"{module}: no {test_dir.relative_to(ROOT)}/test_{leaf}.py and no line for it in its __init__.py"
    missing = [name for name in named if not (TESTS / name).is_file()]
    assert not missing, f"{module}: {missing} named in {test_dir.relative_to(ROOT)}/__init__.py do not exist"
