"""Imports flow downward through the layers of ARCHITECTURE.md (AST check, no imports executed)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# module prefix -> forbidden import prefixes
RULES = {
    "nas.vocab": ["torch", "optuna", "sqlalchemy", "ray", "numpy", "transformers", "evaluators", "storage", "search_spaces", "dashboards", "nas.config", "nas.models", "nas.compress", "nas.runner", "nas.export", "nas.cli"],
    "nas.errors": ["torch", "optuna", "sqlalchemy", "ray", "transformers", "evaluators", "storage", "search_spaces", "dashboards"],
    "nas.config": ["torch", "optuna", "sqlalchemy", "ray", "transformers", "evaluators", "storage", "search_spaces", "dashboards"],
    "nas.records": ["torch", "optuna", "sqlalchemy", "ray", "transformers", "evaluators", "storage", "search_spaces", "dashboards"],
    "nas.teacher_shape": ["torch", "optuna", "sqlalchemy", "ray", "transformers", "evaluators", "storage", "search_spaces", "dashboards"],
    "nas.reference": ["torch", "optuna", "sqlalchemy", "ray", "transformers", "evaluators", "storage", "search_spaces", "dashboards"],
    "nas.fidelity": ["torch", "optuna", "sqlalchemy", "ray", "numpy", "transformers", "pydantic", "evaluators", "storage", "search_spaces", "dashboards", "nas.config", "nas.records", "nas.runner", "nas.cli"],
    "nas.failures": ["torch", "optuna", "sqlalchemy", "ray", "numpy", "transformers", "pydantic", "evaluators", "storage", "search_spaces", "dashboards", "nas.config", "nas.records", "nas.runner", "nas.cli"],
    "nas.feasibility": ["torch", "optuna", "sqlalchemy", "ray", "numpy", "transformers", "evaluators", "storage", "search_spaces", "dashboards", "nas.models", "nas.compress", "nas.runner", "nas.export", "nas.cli"],
    "nas.where": ["torch", "optuna", "sqlalchemy", "ray", "numpy", "evaluators", "storage"],
    "nas.dominance": ["torch", "optuna", "sqlalchemy", "ray", "evaluators", "storage"],
    "nas.cost_model": ["torch", "optuna", "sqlalchemy", "ray", "transformers", "evaluators", "storage", "search_spaces", "nas.models", "nas.compress", "nas.runner", "dashboards", "nas.cli"],
    "search_spaces": ["torch", "sqlalchemy", "ray", "transformers", "evaluators", "storage", "nas.models", "nas.compress", "nas.runner", "dashboards"],
    "nas.models": ["optuna", "sqlalchemy", "ray", "evaluators", "storage", "search_spaces", "nas.runner", "dashboards", "nas.cli"],
    "nas.compress": ["optuna", "sqlalchemy", "ray", "evaluators", "storage", "search_spaces", "nas.runner", "dashboards", "nas.cli"],
    "storage": ["torch", "ray", "evaluators", "search_spaces", "nas.models", "nas.compress", "nas.runner", "dashboards", "nas.cli", "transformers"],
    "evaluators": ["optuna", "sqlalchemy", "ray", "storage", "nas.runner", "dashboards", "nas.cli", "nas.export"],
    "nas.runner": ["dashboards", "nas.cli"],
    "nas.export": ["dashboards", "nas.cli", "ray"],
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _files():
    for pkg in ("nas", "search_spaces", "evaluators", "storage", "dashboards"):
        yield from (ROOT / pkg).rglob("*.py")


def test_imports_flow_downward():
    violations = []
    for f in _files():
        mod = _module_name(f)
        for prefix, banned in RULES.items():
            if mod == prefix or mod.startswith(prefix + "."):
                for imp in _imports(f):
                    for b in banned:
                        if imp == b or imp.startswith(b + "."):
                            violations.append(f"{mod} imports {imp} (layer rule: {prefix} must not import {b})")
    assert not violations, "\n".join(violations)


def test_nothing_imports_the_top_layer():
    for f in _files():
        mod = _module_name(f)
        if mod.startswith(("nas.cli", "dashboards")) or mod == "nas.__main__":
            continue
        for imp in _imports(f):
            assert not imp.startswith(("nas.cli", "dashboards")), f"{mod} imports {imp}"


@pytest.mark.parametrize("heavy", ["torch", "optuna", "ray", "sqlalchemy", "transformers"])
def test_import_nas_is_light(heavy):
    code = f"import sys, nas; print({heavy!r} in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert res.stdout.strip() == "False"
