"""Optional extras: a feature whose extra is missing says, in one line, what to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nas._optional import MissingExtraError, try_import
from nas.errors import NASError

ROOT = Path(__file__).resolve().parents[1]


def test_nas_search_without_ray_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    db = tmp_path / "nas.db"
    code = textwrap.dedent(f"""
        import sys
        sys.modules["ray"] = None  # as if the ray extra were not installed
        from nas.cli import main
        main(["search", "--db", {str(db)!r}, "--quiet"])
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "pip install 'energy-nas[ray]'" in lines[0] and "nas search" in lines[0]
    assert not db.exists()  # nothing was written


def test_try_import_defers_only_the_extras_own_modules() -> None:
    with try_import("ray", needed_by="x") as extra:
        raise ModuleNotFoundError("No module named 'ray.tune'", name="ray.tune")
    assert not extra.is_successful()
    with pytest.raises(MissingExtraError, match=r"x needs the 'ray' extra .*pip install 'energy-nas\[ray\]'") as err:
        extra.check()
    assert isinstance(err.value, NASError) and isinstance(err.value, ImportError)
    with pytest.raises(ModuleNotFoundError), try_import("ray"):  # another module: not the extra's fault
        raise ModuleNotFoundError("No module named 'torch'", name="torch")
    with try_import("ray") as fine:
        import json  # noqa: F401
    fine.check()
