"""``modeling_energy_nas.py``: the model's own source, assembled into one file that needs no energy-nas.

An ``hf/`` folder whose model ``transformers`` does not have (:mod:`nas.export.hf_standard` says which)
ships this file and names it in ``config.json``'s ``auto_map``, so
``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`` runs it. The file is
not a second copy of the model kept by hand: :func:`modeling_source` cuts it out of the modules the
search trains and exports with (:data:`PARTS`), at export time, so it cannot drift from them. Each part's
imports of ``nas`` are dropped (the names they bring are in the file); any other import must be of the
standard library, ``torch``, ``safetensors`` or ``transformers``, or the assembly fails. The source is
the same for every candidate (the candidate is in ``config.json``), so ``transformers``' module cache
never mixes two exports up.
"""

from __future__ import annotations

import ast
import functools
import importlib
import sys
from pathlib import Path

from nas.errors import ExportError
from nas.version import VERSION

__all__ = ["MODELING_FILE", "PARTS", "modeling_source", "write_modeling", "auto_map"]

#: The file name in ``hf/`` (``auto_map`` names its classes as ``modeling_energy_nas.<Class>``).
MODELING_FILE = "modeling_energy_nas.py"

#: What the file holds, in order: a module, and the top-level names taken from it (None: all of it).
PARTS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("nas.errors", ("NASError", "ConfigError", "ExportError")),
    ("nas.vocab", ("Term", "E", "T", "Vocabulary", "Registry", "ATTENTION_KIND")),
    ("nas.models.lowrank", None),
    ("nas.models.attention", None),
    ("nas.models.sparse_attention", None),
    ("nas.models.encoder", None),
    ("nas.compress.quant", ("QuantGrid",)),
    ("nas.compress.act_quant", ("ACTIVATION_BITS", "MOMENTUM", "_round_ste", "ActivationQuant", "_mark_ready",
                                "_quant_input", "quantize_activations_")),
    ("nas.compress.pack", ("_CODES", "_FIX", "PackPlan", "unpack_codes", "_grid_of", "unpack_state")),
    ("nas.export.hf_modeling", None),
)
_ALLOWED_ROOTS = frozenset({"torch", "safetensors", "transformers", "__future__"})
_DROPPED_ROOTS = frozenset({"nas", "pydantic", "pydantic_core"})
_FIX = "report this as a bug: the model's source imports something the exported file cannot"


def _names(node: ast.stmt) -> set[str]:
    """The top-level names a statement defines."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    out: set[str] = set()
    for t in targets:
        out |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return out


def _import_root(node: ast.Import | ast.ImportFrom) -> str:
    if isinstance(node, ast.ImportFrom):
        return "nas" if node.level else (node.module or "").split(".")[0]
    return node.names[0].name.split(".")[0]


def _bound(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The names an import statement binds."""
    return {(a.asname or a.name).split(".")[0] for a in node.names}


def _used(body: list[ast.stmt]) -> set[str]:
    """The names a list of statements reads."""
    return {n.id for stmt in body for n in ast.walk(stmt) if isinstance(n, ast.Name)}


def _segment(source: str, node: ast.stmt) -> str:
    """The statement's source, decorators included."""
    lines = source.splitlines()
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    assert node.end_lineno is not None
    return "\n".join(lines[first - 1 : node.end_lineno])


def _part(module: str, names: tuple[str, ...] | None) -> tuple[list[str], list[str]]:
    """The imports and the statements that ``module`` contributes.

    Raises:
        ExportError: The module imports a package the exported file cannot, or lacks a named definition.
    """
    source = Path(importlib.import_module(module).__file__ or "").read_text(encoding="utf-8")
    tree = ast.parse(source)
    imports: list[ast.Import | ast.ImportFrom] = []
    body: list[ast.stmt] = []
    for i, node in enumerate(tree.body):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            root = _import_root(node)
            if root in _DROPPED_ROOTS:
                continue
            if root not in _ALLOWED_ROOTS and root not in sys.stdlib_module_names:
                raise ExportError(f"{module} imports {root}, which {MODELING_FILE} cannot", field=module, fix=_FIX)
            imports.append(node)
        elif i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the module docstring
        elif isinstance(node, ast.If) or "__all__" in _names(node):
            continue  # TYPE_CHECKING blocks and export lists
        elif names is None or _names(node) & set(names):
            body.append(node)
    for node in body:  # an import inside a function would reach for energy-nas when the user's model runs it
        for inner in ast.walk(node):
            if isinstance(inner, (ast.Import, ast.ImportFrom)) and _import_root(inner) in _DROPPED_ROOTS:
                raise ExportError(f"{module} imports {_import_root(inner)} inside a definition (line {inner.lineno}), "
                                  f"which {MODELING_FILE} cannot", field=module, fix=_FIX)
    missing = set(names or ()) - set().union(*(_names(n) for n in body))
    if missing:
        raise ExportError(f"{module} has no {', '.join(sorted(missing))}", field=module, fix=_FIX)
    used = _used(body)  # a part taken in pieces brings only the imports its pieces read
    kept = [ast.unparse(n) for n in imports if names is None or _bound(n) & used or isinstance(n, ast.ImportFrom)
            and n.module == "__future__"]
    return kept, [f"# ---- from {module}", *(_segment(source, n) for n in body)]


@functools.lru_cache(maxsize=1)
def modeling_source() -> str:
    """The text of ``modeling_energy_nas.py`` (the same for every candidate of this build).

    Raises:
        ExportError: A part imports what the file cannot, or a name is defined by two parts.
    """
    imports: list[str] = []
    body: list[str] = []
    for module, names in PARTS:
        part_imports, part_body = _part(module, names)
        imports += [i for i in part_imports if i not in imports]
        body += part_body
    defined: dict[str, int] = {}
    for stmt in ast.parse("\n".join(body)).body:
        for name in _names(stmt) - {"log"}:
            defined[name] = defined.get(name, 0) + 1
    twice = sorted(n for n, count in defined.items() if count > 1)
    if twice:
        raise ExportError(f"{MODELING_FILE} would define {', '.join(twice)} twice", field="PARTS", fix=_FIX)
    future = [i for i in imports if i.startswith("from __future__")]
    head = [f'"""Energy-nas encoder classifier for transformers (trust_remote_code), generated by energy-nas '
            f'{VERSION}.\n\nSelf-contained: it needs torch, safetensors and transformers only. Its parts '
            'are the\nsource of the energy-nas modules named in the "# ---- from" lines."""']
    text = "\n".join([*head, *future, *(i for i in imports if i not in future)]) + "\n\n\n" + "\n\n\n".join(body) + "\n"
    compile(text, MODELING_FILE, "exec")  # a broken assembly fails here, at export, not at the user's
    return text


def write_modeling(folder: Path) -> Path:
    """Write ``modeling_energy_nas.py`` into ``folder``; returns its path."""
    path = folder / MODELING_FILE
    path.write_text(modeling_source(), encoding="utf-8")
    return path


def auto_map() -> dict[str, str]:
    """``config.json``'s ``auto_map``: the config and model classes in :data:`MODELING_FILE`."""
    stem = MODELING_FILE.removesuffix(".py")
    return {"AutoConfig": f"{stem}.EnergyNasConfig",
            "AutoModelForSequenceClassification": f"{stem}.EnergyNasForSequenceClassification"}
