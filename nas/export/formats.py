"""Exporters by ``--format`` name.

One :class:`~nas.export.base.Exporter` per name of :data:`nas.vocab.EXPORT_FORMAT`, registered with
:func:`register_exporter` where it is defined.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

from nas.vocab import EXPORT_CHOICE, EXPORT_FORMAT, Registry

from .base import Exporter

__all__ = ["EXPORTERS", "FORMATS", "all_formats", "register_exporter"]

#: Exporters by ``--format`` name, in the order ``all`` writes them (the vocabulary's order).
EXPORTERS: Registry[type[Exporter]] = Registry(EXPORT_FORMAT, "exporter")
#: Every ``--format`` value (the formats, then ``all``).
FORMATS: tuple[str, ...] = EXPORT_CHOICE.names

X = TypeVar("X", bound="type[Exporter]")


def register_exporter(name: str) -> Callable[[X], X]:
    """Class decorator: the exporter of format ``name``, which becomes its :attr:`Exporter.name`.

    Raises:
        ConfigError: ``name`` is not in :data:`nas.vocab.EXPORT_FORMAT`, or already has an exporter.
    """
    return cast("Callable[[X], X]", EXPORTERS.register_class(name, "name"))


def all_formats() -> tuple[str, ...]:
    """The formats ``--format all`` writes, in order: every exporter whose :attr:`Exporter.in_all` is set."""
    return tuple(name for name, exporter in EXPORTERS.items() if exporter.in_all)
