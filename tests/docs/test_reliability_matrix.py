"""docs/reliability.md holds the fault matrix: every row of its tables names at least one test, and
every test it names exists (found in the named file's syntax tree, not by running it)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "docs" / "reliability.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def rows() -> list[tuple[int, str]]:
    """(line number, text) of every table row of the matrix, headers and separators left out."""
    lines = MATRIX.read_text(encoding="utf-8").splitlines()
    found = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        if number < len(lines) and set(lines[number]) <= set("|-: ") and lines[number].startswith("|"):
            continue  # a header: the next line is its separator
        found.append((number, line))
    return found


def defined_tests(path: Path) -> set[str]:
    """Names of the test functions (and pytest-collected methods) defined in a test file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_row_names_a_test_and_every_named_test_exists() -> None:
    # Given the rows of docs/reliability.md's tables
    found = rows()
    assert len(found) >= 40, "the matrix lost rows"
    missing = []
    for number, line in found:
        references = REFERENCE.findall(line.split("|")[-2])  # the last column: the tests
        # Then each names at least one test, and each named test is defined in the named file
        assert references, f"docs/reliability.md:{number} names no test"
        for file, name in references:
            path = ROOT / file
            if not path.is_file() or name not in defined_tests(path):
                missing.append(f"docs/reliability.md:{number}: {file}::{name}")
    assert not missing, missing


def test_every_fault_matrix_test_is_in_the_matrix() -> None:
    # Given the tests of tests/faults/ (the harness's own oracle check aside)
    text = MATRIX.read_text(encoding="utf-8")
    named = {(file, name) for file, name in REFERENCE.findall(text)}
    unlisted = [
        f"{path.relative_to(ROOT)}::{name}"
        for path in sorted((ROOT / "tests" / "faults").glob("test_*.py"))
        for name in sorted(defined_tests(path))
        if (str(path.relative_to(ROOT)), name) not in named
    ]
    # Then every one of them is a row of the matrix, so the published table is the whole suite
    assert unlisted == [
        "tests/faults/test_fuzz.py::test_the_fuzzed_variables_are_every_setting",
        "tests/faults/test_ownpage_faults.py::test_the_population_plans_every_kind_of_change",
    ]
