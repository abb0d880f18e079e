"""What every benchmark records beside its numbers (imported by the scripts in this folder)."""

from __future__ import annotations

import subprocess

__all__ = ["git_commit"]


def git_commit() -> str | None:
    """The short git commit the benchmark ran at (None outside a checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
