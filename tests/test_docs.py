"""The documents keep their promises about the tests and about each other.

README.md is a front page; the full reliability table, the guarantees in full and the other details
live in docs/. What holds them together is checked here, on the files themselves, so a renamed
test, a dropped row or a moved heading fails the suite instead of leaving a dead reference:

- every test a document names (``supervisor/test_x.py::test_name``, in README.md or any docs/*.md)
  is defined in that file;
- docs/testing.md has one row per guarantee and per row of the fault table in docs/reliability.md
  (and no row for one that is gone), each naming at least one test;
- the README's short list of guarantees names exactly the guarantees of docs/reliability.md;
- every relative link resolves: the file exists and, for a heading anchor, the heading does.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
RELIABILITY = DOCS / "reliability.md"
TESTING = DOCS / "testing.md"
MARKDOWN = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]

# `supervisor/test_x.py::test_name`, `tests/supervisor/test_x.py`, `bench/chaos_soak.py`: a file of
# ours (a test module, or a bench script) and optionally a function in it.
TEST_REF = re.compile(
    r"(?<![\w/.])((?:tests/)?(?:supervisor|worker|shared)/(?:\w+/)?test_\w+\.py|tests/[\w/]+\.py|bench/\w+\.py)"
    r"(?:::(\w+))?")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


# --- parsing the documents ---------------------------------------------------------------------------
def section(markdown: str, heading: str) -> str:
    """The text under ``## heading`` up to the next ``## `` heading."""
    assert f"\n## {heading}\n" in markdown, f"no section '## {heading}'"
    return markdown.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in ``text``, as cells: the header (the line right
    before a ``| --- |`` rule) and the rule are skipped."""
    lines = text.splitlines()
    rule = [bool(re.match(r"^\|\s*-", line)) for line in lines]
    rows = []
    for i, line in enumerate(lines):
        is_header = i + 1 < len(lines) and rule[i + 1]
        if line.startswith("|") and not rule[i] and not is_header:
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def fault_rows() -> list[list[str]]:
    rows = table_rows(section(RELIABILITY.read_text(encoding="utf-8"), "Faults and the tests that prove them"))
    assert rows and all(len(r) == 4 for r in rows), "the fault table has four columns"
    return rows


def guarantees(markdown: str) -> list[str]:
    """The bold titles of the bullets under ``## What is guaranteed``."""
    return re.findall(r"^- \*\*(.+?)\*\*", section(markdown, "What is guaranteed"), flags=re.MULTILINE)


def rows_of_testing_md(heading: str) -> dict[str, str]:
    rows = table_rows(section(TESTING.read_text(encoding="utf-8"), heading))
    assert rows and all(len(r) == 2 for r in rows), f"docs/testing.md '{heading}': two columns"
    return {first: proof for first, proof in rows}


def named_tests(text: str) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in TEST_REF.finditer(text)]


def ref_problem(path: str, name: str | None) -> str | None:
    """None if the file exists (under tests/ or the repository) and defines ``name``."""
    candidates = [REPO / path] if path.startswith(("tests/", "bench/")) else [REPO / "tests" / path]
    file = next((c for c in candidates if c.is_file()), None)
    if file is None:
        return f"{path}: no such file"
    if name is not None and not re.search(rf"^\s*(?:async\s+)?def {re.escape(name)}\(", file.read_text(encoding="utf-8"),
                                          flags=re.MULTILINE):
        return f"{path}::{name}: no such test in that file"
    return None


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    without_code = re.sub(r"^```.*?^```", "", markdown, flags=re.DOTALL | re.MULTILINE)
    for heading in re.findall(r"^#{1,6} (.+)$", without_code, flags=re.MULTILINE):
        base = slug(heading)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


# --- the tests ---------------------------------------------------------------------------------------
def test_every_test_named_in_docs_testing_exists() -> None:
    refs = named_tests(TESTING.read_text(encoding="utf-8"))
    assert len(refs) > 40, "docs/testing.md names too few tests: the parser is broken"
    problems = sorted({p for path, name in refs if (p := ref_problem(path, name)) is not None})
    assert not problems, "docs/testing.md names tests that do not exist:\n" + "\n".join(problems)


def test_every_reliability_row_and_guarantee_has_a_row_in_docs_testing() -> None:
    faults = [row[0] for row in fault_rows()]
    promised = guarantees(RELIABILITY.read_text(encoding="utf-8"))
    assert len(faults) >= 30 and len(promised) >= 10, "the parser found too few rows"
    for heading, expected in (("Faults", faults), ("Guarantees", promised)):
        rows = rows_of_testing_md(heading)
        missing = [f for f in expected if f not in rows]
        stale = [f for f in rows if f not in expected]
        assert not missing, f"docs/testing.md '{heading}' has no row for:\n" + "\n".join(missing)
        assert not stale, f"docs/testing.md '{heading}' has rows for what docs/reliability.md no longer lists:\n" + "\n".join(stale)
        unproven = [f for f, proof in rows.items() if not named_tests(proof)]
        assert not unproven, f"docs/testing.md '{heading}' rows that name no test:\n" + "\n".join(unproven)


def test_every_fault_row_names_the_test_that_proves_it() -> None:
    unproven = [row[0] for row in fault_rows() if not named_tests(row[3])]
    assert not unproven, "docs/reliability.md fault rows without a test:\n" + "\n".join(unproven)


def test_the_readmes_short_guarantees_are_the_full_ones() -> None:
    assert guarantees((REPO / "README.md").read_text(encoding="utf-8")) == guarantees(RELIABILITY.read_text(encoding="utf-8"))


@pytest.mark.parametrize("document", MARKDOWN, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_test_a_document_names_exists(document: Path) -> None:
    problems = sorted({p for path, name in named_tests(document.read_text(encoding="utf-8"))
                       if (p := ref_problem(path, name)) is not None})
    assert not problems, f"{document.name} names tests that do not exist:\n" + "\n".join(problems)


@pytest.mark.parametrize("document", MARKDOWN, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    assert "../shared" not in text, f"{document.name} refers to ../shared, which is not part of the project"
    problems = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (document.parent / path).resolve() if path else document
        if not file.exists():
            problems.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text(encoding="utf-8")):
            problems.append(f"{target}: no heading with that anchor")
    assert not problems, f"{document.name}: broken links:\n" + "\n".join(problems)


def test_the_checks_catch_a_missing_test_and_a_missing_row() -> None:
    assert ref_problem("supervisor/policy/test_policy.py", "test_permanent_worker_exits_give_up_at_once") is None
    assert ref_problem("supervisor/policy/test_policy.py", "test_no_such_thing") is not None
    assert ref_problem("supervisor/test_no_such_file.py", None) is not None
    assert named_tests("`tests/supervisor/test_chaos_soak.py::test_a` and `bench/chaos_soak.py`") == [
        ("tests/supervisor/test_chaos_soak.py", "test_a"), ("bench/chaos_soak.py", None)]
    assert named_tests("`torch/distributed/launcher/api.py`") == []
    assert slug("`gpt2sup run [OPTIONS] [-- WORKER_ARGS...]`") == "gpt2sup-run-options----worker_args"
