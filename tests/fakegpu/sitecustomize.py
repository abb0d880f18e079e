"""Fake GPUs in every Python process started with ``NAS_FAKE_GPUS=N`` and this folder on ``PYTHONPATH``.

Ray's workers (and the nodes ``ray start`` runs) inherit the environment, so a test that sets both before
starting Ray gets trials whose NVML shows N fake boards (see ``nas_fake_gpu.py``). Without
``NAS_FAKE_GPUS`` this file does nothing. The patches apply when the patched module is first imported,
so processes that never import it (Ray's own agents) pay nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any


class _Patching(importlib.abc.Loader):
    def __init__(self, inner: Any, patch: Callable[[ModuleType], Any]) -> None:
        self.inner, self.patch = inner, patch

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        self.patch(module)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``patches[name](module)`` right after ``name`` is first imported."""

    def __init__(self, patches: dict[str, Callable[[ModuleType], Any]]) -> None:
        self.patches = patches

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        patch = self.patches.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Patching(spec.loader, patch)
                return spec
        return None


def _fake() -> ModuleType:
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.append(here)
    import nas_fake_gpu

    return nas_fake_gpu


if os.environ.get("NAS_FAKE_GPUS"):
    sys.meta_path.insert(0, _AfterImport({
        "pynvml": lambda m: _fake().install(m),
        "evaluators.placement": lambda m: _fake().patch_placement(m),
    }))
