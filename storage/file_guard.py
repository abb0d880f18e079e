"""Is a SQLite database file still the one this process opened?

SQLite keeps writing to an open file after it was deleted (unlinked) or replaced: every commit then
succeeds into a file nobody can open again, and a whole search can be lost without a word. A writer
checks the file's identity (device and inode) after every write; when it changed, it copies what its
connection still sees to ``<path>.rescued-<time>`` (SQLite's online backup, from the open handle) and
stops with an error that says where that copy is.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from nas.errors import StorageError

__all__ = ["FileIdentity"]

log = logging.getLogger(__name__)


class FileIdentity:
    """The (device, inode) of a SQLite file when it was opened."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().resolve()
        st = self.path.stat()
        self._id = (st.st_dev, st.st_ino)

    def changed(self) -> str | None:
        """Why the file is not the one opened (``"deleted"`` or ``"replaced"``), or None."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return "deleted"
        return None if (st.st_dev, st.st_ino) == self._id else "replaced"

    def verify(self, dbapi_connection: Any) -> None:
        """Raise when the file changed, after rescuing what the connection still holds.

        ``dbapi_connection`` is an open ``sqlite3.Connection`` on the old file.

        Raises:
            StorageError: naming the file, what happened and where the rescued copy is.
        """
        why = self.changed()
        if why is None:
            return
        rescued = self.path.with_name(f"{self.path.name}.rescued-{time.strftime('%Y%m%d-%H%M%S')}")
        where = f"everything written so far was copied to {rescued}"
        try:
            target = sqlite3.connect(str(rescued))
            try:
                dbapi_connection.backup(target)
            finally:
                target.close()
        except (sqlite3.Error, AttributeError, OSError) as e:
            log.error("could not rescue %s: %s", self.path, e)
            where = f"and its contents could not be rescued ({e})"
        raise StorageError(
            f"the database file {self.path} was {why} while this process was writing to it; {where}",
            fix=f"stop whatever removes it, then move {rescued.name} back to {self.path.name} and resume",
        )
