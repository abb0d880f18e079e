"""One error root for the whole service.

Every error a user can trigger is a :class:`NASError` (or a subclass). Messages name the field, the bad
value and the fix, so the CLI can print ``str(err)`` on one line and exit 2 without a traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # nas.records imports nas.config, which imports this module
    from nas.records import FailKind, TrialResult

__all__ = [
    "NASError",
    "ConfigError",
    "DataError",
    "MeterUnavailableError",
    "StorageError",
    "SearchError",
    "ExportError",
    "TrialFailedError",
]


class NASError(Exception):
    """Root of every error raised on purpose by this package.

    Args:
        message: What went wrong, in one sentence.
        field: The offending field or key (e.g. ``"attention.window"``), when there is one.
        value: The bad value, when there is one.
        fix: What the user should do instead.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        value: Any = None,
        fix: str | None = None,
    ) -> None:
        self.field = field
        self.value = value
        self.fix = fix
        parts = []
        if field is not None:
            parts.append(f"{field}: ")
        parts.append(message)
        if value is not None and field is not None:
            parts.append(f" (got {value!r})")
        if fix:
            parts.append(f". Fix: {fix}")
        super().__init__("".join(parts))


class ConfigError(NASError, ValueError):
    """A candidate, spec, option or YAML file is invalid."""


class DataError(NASError):
    """A dataset file is missing, empty or malformed."""


class MeterUnavailableError(NASError):
    """An energy meter the user asked for by name cannot run here."""


class StorageError(NASError):
    """The database could not be read or written, or its schema is out of date."""


class SearchError(NASError):
    """A search could not be started, resumed or continued."""


class ExportError(NASError):
    """A trial could not be exported."""


class TrialFailedError(NASError):
    """A candidate failed while training or measuring (NaN loss, OOM, invalid shapes).

    Args:
        kind: Why, as a :class:`nas.records.FailKind`; ``None`` (the default) is the candidate's own
            fault. ``FailKind.DEVICE`` (the device failed, or was shared during every measurement attempt) spends
            no budget and the candidate may be sampled again.
        partial: The :class:`nas.records.TrialResult` (status ``FAIL``) of what the trial did before it
            failed, so that the joules it spent are stored and counted; set by the trial pipeline.
    """

    def __init__(self, message: str, *, kind: FailKind | None = None, partial: TrialResult | None = None,
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.kind = kind
        self.partial = partial

    @property
    def retryable(self) -> bool:
        """The candidate is not to blame: the trial spends no budget and it may be sampled again."""
        return self.kind is not None and self.kind.retryable
