"""House rules of ARCHITECTURE.md and STYLE.md, checked: module and function size, lint, strict typing.

Modules stay under 500 lines and functions under 80 (Alembic migrations excepted: a migration is a
frozen record of a schema, not code to read and change). ``ruff`` runs with the project's rules,
public docstrings (``D``, Google convention) and McCabe complexity (``C901``, at most 12) included;
``mypy --strict`` runs as a slow test (about a minute).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nas", "search_spaces", "evaluators", "storage", "dashboards")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _sources() -> list[Path]:
    return [f for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py")) if "migrations" not in f.parts]


def test_modules_are_under_500_lines() -> None:
    big = [f"{f.relative_to(ROOT)}: {n} lines" for f in _sources()
           if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not big, "split these modules:\n" + "\n".join(big)


def test_functions_are_under_80_lines() -> None:
    long = []
    for f in _sources():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name}(): {n} lines")
    assert not long, "split these functions:\n" + "\n".join(long)


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def test_ruff_passes_with_docstring_and_complexity_rules() -> None:
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["ruff"]["lint"]
    assert {"D", "C901"} <= set(lint["select"]) and lint["mccabe"]["max-complexity"] == 12
    res = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.slow
def test_mypy_strict_passes() -> None:
    res = subprocess.run([_tool("mypy"), "--no-incremental"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
