"""Optional extras (``pip install 'energy-nas[ray]'``...), imported where they are needed (layer L0).

One helper for every optional import, after Optuna's ``try_import``: the import runs inside the
context manager; a missing module of that extra is remembered instead of raised, and :meth:`check`
turns it into a one-line :class:`MissingExtraError` that names the extra to install::

    with try_import("ray", needed_by="`nas search`") as ray_extra:
        from nas.runner.driver import run_study
    ray_extra.check()

Only a missing module of the extra itself is caught: any other ``ImportError`` (a broken install of
something else) propagates as it is, so the fix named is never the wrong one.
"""

from __future__ import annotations

from types import TracebackType

from nas.errors import NASError

__all__ = ["MissingExtraError", "try_import", "EXTRA_MODULES"]

#: The top-level modules each extra provides.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "ray": ("ray",),
    "codecarbon": ("codecarbon",),
    "export": ("onnx", "onnxruntime", "onnxscript"),
    "dashboard": ("fastapi", "uvicorn", "plotly", "httpx"),
    "postgres": ("psycopg",),
    "gpu": ("pynvml",),
    "wandb": ("wandb",),
    "optuna-dashboard": ("optuna_dashboard",),
    "tensorrt": ("tensorrt",),
}


class MissingExtraError(NASError, ImportError):
    """An optional extra that a feature needs is not installed; the message names the ``pip`` command."""


class try_import:  # noqa: N801 - used like a function, as Optuna's try_import
    """A context manager that defers a missing optional module until :meth:`check`.

    Args:
        extra: The extra that provides the modules (a key of :data:`EXTRA_MODULES`).
        needed_by: What needs it, for the message (e.g. ``"`nas search`"``).
    """

    def __init__(self, extra: str, *, needed_by: str = "this feature") -> None:
        self.extra = extra
        self.needed_by = needed_by
        self._modules = EXTRA_MODULES.get(extra, (extra,))
        self._missing: ImportError | None = None

    def __enter__(self) -> try_import:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if isinstance(exc, ImportError) and (exc.name or "").split(".")[0] in self._modules:
            self._missing = exc
            return True
        return False

    def is_successful(self) -> bool:
        """Whether every import in the block succeeded."""
        return self._missing is None

    def check(self) -> None:
        """Raise :class:`MissingExtraError` if an import of the extra failed.

        Raises:
            MissingExtraError: ``"`nas search` needs Ray ('ray' is not installed). Fix: pip install
                'energy-nas[ray]'"``.
        """
        if self._missing is not None:
            name = (self._missing.name or self.extra).split(".")[0]
            raise MissingExtraError(f"{self.needed_by} needs the {self.extra!r} extra ({name!r} is not installed)",
                                    fix=f"pip install 'energy-nas[{self.extra}]'") from self._missing
