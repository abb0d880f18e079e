"""Reading and splitting file tasks (package-private helper of :mod:`evaluators.tasks`).

A file is TSV, CSV (first row is the header) or JSONL (one object per line) with a ``text`` and a
``label`` column. Every :class:`~nas.errors.DataError` raised here names the file, the line, the column
and the fix. :func:`split_rows` decides which rows are train, dev and test when the folder does not
provide every split (see :mod:`evaluators.tasks` for the rule).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas.errors import DataError

__all__ = ["EXTS", "HOLDOUT_FRACTION", "HOLDOUT_SEED", "Row", "SplitFiles", "find_split_files", "read_examples",
           "split_rows", "label_names", "is_int", "fail"]

EXTS = (".tsv", ".csv", ".jsonl")
HOLDOUT_FRACTION = 0.10
HOLDOUT_SEED = 20240601

#: ``(text, raw_label, line_number)``.
Row = tuple[str, str, int]

def fail(path: Path, line: int | None, column: str | None, what: str, fix: str) -> DataError:
    where = str(path)
    if line is not None:
        where += f", line {line}"
    if column is not None:
        where += f", column {column!r}"
    return DataError(f"{where}: {what}", fix=fix)


def _find_columns(path: Path, header: list[str]) -> tuple[int, int]:
    lowered = [h.strip().lower() for h in header]
    idx = {}
    for col in ("text", "label"):
        if col not in lowered:
            raise fail(path, 1, col, f"missing {col!r} column; columns found: {header}",
                        f"name one header column {col!r} (the file needs 'text' and 'label')")
        idx[col] = lowered.index(col)
    return idx["text"], idx["label"]


def _read_delimited(path: Path, delimiter: str) -> list[tuple[str, Any, int]]:
    rows: list[tuple[str, Any, int]] = []
    with path.open("r", encoding="utf-8", newline="") as f:
        reader = (csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE) if delimiter == "\t"
                  else csv.reader(f, delimiter=delimiter))
        try:
            header = next(reader, None)
            while header is not None and not any(h.strip() for h in header):
                header = next(reader, None)
            if header is None:
                raise fail(path, None, None, "file is empty",
                            "write a header row 'text<TAB>label' (or 'text,label') and one row per example")
            t_i, l_i = _find_columns(path, header)
            n_fields = len(header)
            kind = "tab" if delimiter == "\t" else "comma"
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != n_fields:
                    raise fail(path, line, None,
                                f"malformed row: expected {n_fields} {kind}-separated fields "
                                f"({', '.join(header)}), found {len(row)}",
                                f"make every row have {n_fields} fields"
                                + ("; a tab inside the text must be removed" if delimiter == "\t" else
                                   "; quote text that contains commas with double quotes"))
                rows.append((row[t_i], row[l_i], line))
        except csv.Error as e:
            raise fail(path, reader.line_num, None, f"malformed row: {e}",
                        "fix the quoting of this row") from e
    return rows


def _read_jsonl(path: Path) -> list[tuple[str, Any, int]]:
    rows: list[tuple[str, Any, int]] = []
    with path.open("r", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise fail(path, line_no, None, f"malformed JSON at character {e.colno}: {e.msg}",
                            'write one JSON object per line, e.g. {"text": "a fine film", "label": 1}'
                            ) from e
            if not isinstance(obj, dict):
                raise fail(path, line_no, None, f"expected a JSON object, found {type(obj).__name__}",
                            'write one JSON object per line, e.g. {"text": "a fine film", "label": 1}')
            keys = {str(k).lower(): k for k in obj}
            for col in ("text", "label"):
                if col not in keys:
                    raise fail(path, line_no, col, f"missing {col!r} key; keys found: {list(obj)}",
                                f"add a {col!r} key to every line")
            text = obj[keys["text"]]
            if not isinstance(text, str):
                raise fail(path, line_no, "text", f"text must be a string, found {type(text).__name__}",
                            "write the text as a JSON string")
            rows.append((text, obj[keys["label"]], line_no))
    return rows


def read_examples(path: str | Path) -> list[tuple[str, str, int]]:
    """Read ``(text, raw_label, line_number)`` rows from a TSV, CSV or JSONL file, validating each.

    Raises:
        DataError: Missing or empty file, missing column, malformed row, empty text or label. The
            message names the file, the line and the column, and says what to fix.
    """
    p = Path(path)
    if not p.exists():
        raise fail(p, None, None, "file not found", "check the path (expected a .tsv, .csv or .jsonl file)")
    if p.suffix.lower() not in EXTS:
        raise fail(p, None, None, f"unsupported file type {p.suffix!r}",
                    "use a .tsv, .csv or .jsonl file with 'text' and 'label' columns")
    if p.stat().st_size == 0:
        raise fail(p, None, None, "file is empty", "write a header and one example per row")
    try:
        suffix = p.suffix.lower()
        raw = _read_jsonl(p) if suffix == ".jsonl" else _read_delimited(p, "\t" if suffix == ".tsv" else ",")
    except UnicodeDecodeError as e:
        raise fail(p, None, None, f"is not UTF-8 text (byte {e.start})", "save the file as UTF-8") from e
    if not raw:
        raise fail(p, None, None, "file has no examples (only a header or blank lines)",
                    "add at least one row with text and label")
    out: list[tuple[str, str, int]] = []
    for text, label, line in raw:
        if not text.strip():
            raise fail(p, line, "text", "empty text", "fill in the text or delete the row")
        lab = _label_key(label)
        if lab == "":
            raise fail(p, line, "label", "empty label", "fill in the label or delete the row")
        out.append((text, lab, line))
    return out


def _label_key(raw: Any) -> str:
    if isinstance(raw, bool):
        return str(raw).lower()
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    s = str(raw).strip() if raw is not None else ""
    return s


def is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def label_names(train_labels: Sequence[str]) -> tuple[str, ...]:
    uniq = set(train_labels)
    if all(is_int(u) for u in uniq):
        return tuple(str(v) for v in sorted({int(u) for u in uniq}))
    return tuple(sorted(uniq))


@dataclass(frozen=True)
class SplitFiles:
    """The files of a file task: ``dev`` and ``test`` are ``None`` when they are held out of ``train``."""

    train: Path
    dev: Path | None
    test: Path | None


def _first(folder: Path, stem: str) -> Path | None:
    found = [folder / f"{stem}{e}" for e in EXTS if (folder / f"{stem}{e}").exists()]
    return found[0] if found else None


def find_split_files(spec: Path) -> SplitFiles:
    """``train.*``, ``dev.*`` and ``test.*`` of a folder (the first of .tsv, .csv, .jsonl), or one file."""
    if not spec.is_dir():
        return SplitFiles(spec, None, None)
    train = _first(spec, "train")
    if train is None:
        raise fail(spec, None, None, "no train.tsv, train.csv or train.jsonl in this folder",
                   "put a train file (and optionally dev and test files) in the folder, or pass a file path")
    return SplitFiles(train, _first(spec, "dev"), _first(spec, "test"))


def split_rows(files: SplitFiles, train_rows: list[Row], dev_file_rows: list[Row] | None) -> tuple[
        list[Row], list[Row] | None, list[Row] | None]:
    """Make the dev and test splits a folder lacks.

    - **A dev file but no test file**: the dev file is split in two by a fixed permutation (seed
      :data:`HOLDOUT_SEED`): half stays dev, half becomes test. Test is then drawn from the distribution
      the user evaluates on and shares nothing with training. Holding it out of the training file
      instead would not be honest where training rows overlap in content (SST-2's ``train.tsv`` holds
      phrases of the same sentences: a test split held out of it scored 0.916 where dev scored 0.792).
    - **No dev file**: dev (and test, when the folder lacks it too) are held out of the training file by
      the fixed permutation, the same for every search seed, so accuracies stay comparable: dev takes the
      first ``round(10%)`` rows, test the next ones, as many as dev has.

    Args:
        files: Which split files exist.
        train_rows: Every row of the training file.
        dev_file_rows: The rows of the dev file, when there is one.

    Returns:
        ``(train, dev, test)``; ``dev``/``test`` are ``None`` where the folder's own file is used as is.
    """
    need_dev, need_test = files.dev is None, files.test is None
    if not (need_dev or need_test):
        return train_rows, None, None
    if not need_dev and dev_file_rows is not None:  # only test is missing: split the dev file
        if len(dev_file_rows) < 2:
            raise fail(files.dev or files.train, None, None, "needs at least 2 rows to split into dev and test, "
                       f"found {len(dev_file_rows)}", "add rows to the dev file, or provide a test file beside it")
        perm = np.random.default_rng(HOLDOUT_SEED).permutation(len(dev_file_rows)).tolist()
        test_idx = set(perm[:len(dev_file_rows) // 2])
        return (train_rows, [r for i, r in enumerate(dev_file_rows) if i not in test_idx],
                [r for i, r in enumerate(dev_file_rows) if i in test_idx])
    n = len(train_rows)
    tenth = max(1, int(round(n * HOLDOUT_FRACTION)))
    n_dev = tenth
    n_test = tenth if need_test else 0
    if n - n_dev - n_test < 1:
        held = " and ".join(s for s, want in (("dev", True), ("test", need_test)) if want)
        raise fail(files.train, None, None, f"needs at least {n_dev + n_test + 1} rows to hold out {held} "
                   f"splits, found {n}", "add rows, or provide the missing dev/test files beside train")
    perm = np.random.default_rng(HOLDOUT_SEED).permutation(n).tolist()
    dev_idx, test_idx = set(perm[:n_dev]), set(perm[n_dev:n_dev + n_test])
    dev = [r for i, r in enumerate(train_rows) if i in dev_idx]
    test = [r for i, r in enumerate(train_rows) if i in test_idx] if need_test else None
    train = [r for i, r in enumerate(train_rows) if i not in dev_idx and i not in test_idx]
    return train, dev, test
