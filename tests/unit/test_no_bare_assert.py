"""Library code raises the package's errors: an ``assert`` statement vanishes under
``python -O``, so none may stand anywhere in pytest_dataplane."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest_dataplane

PACKAGE = Path(pytest_dataplane.__file__).parent


def assert_statements(source: str) -> list[int]:
    return [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Assert)]


def test_the_check_sees_an_assert_statement_and_not_a_word() -> None:
    source = 'x = "assert y"\n# assert z\nif x:\n    assert x, "bare"\n'
    assert assert_statements(source) == [4]


def test_no_module_of_the_package_has_an_assert_statement() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50  # the whole package is walked, not an empty directory
    found = {
        str(path.relative_to(PACKAGE)): lines
        for path in modules
        if (lines := assert_statements(path.read_text(encoding="utf-8")))
    }
    assert found == {}, f"bare assert statements (module: lines): {found}"
