"""A search never writes into a database file that is gone: it rescues what it holds and stops loudly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nas.errors import StorageError
from storage import Store

OBJ = [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")]


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_deleted_or_replaced_database_stops_the_writer(tmp_path: Path, how: str) -> None:
    """Regression: deleting the database mid-search lost the study, and the search reported success."""
    db = tmp_path / "nas.db"
    store = Store.open(str(db))
    store.create_study("kept", json.dumps({"v": 1}), OBJ)
    if how == "deleted":
        db.unlink()
    else:
        shutil.copy(db, tmp_path / "other.db")
        (tmp_path / "other.db").replace(db)
    with pytest.raises(StorageError, match=f"was {how} while this process was writing") as e:
        store.create_study("lost?", "{}", OBJ)
    msg = str(e.value)
    assert "\n" not in msg and "rescued" in msg
    rescued = next(tmp_path.glob("nas.db.rescued-*"))
    assert {s.name for s in Store.open(str(rescued), create=False).list_studies()} == {"kept", "lost?"}
    store.close()


def test_reads_and_writes_of_an_untouched_file_pass(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "nas.db"))
    store.create_study("a", "{}", OBJ)
    store.set_study_status("a", "COMPLETE")
    assert store.get_study("a").status == "COMPLETE" and not list(tmp_path.glob("*.rescued-*"))
