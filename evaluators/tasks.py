"""Classification tasks: built-in synthetic tasks generated offline, and TSV/CSV/JSONL files.

``load_task(spec)`` returns a frozen :class:`TaskData` with texts, labels, the tokenizer and the already
tokenized tensors of both splits. ``spec`` is ``builtin:NAME`` or a path.

Built-in tasks
--------------
Both are generated with NumPy from ``seed`` in well under a second, need no download, and have
balanced binary labels (chance accuracy 50%).

``builtin:longmatch`` -- long-range matching.
    30 words (32 tokens with ``[CLS]`` and ``[SEP]``). The first three words repeat one key out of
    ``k0..k3``, the last three words repeat another key, and the 24 words between are fillers
    ``w0..w7``. The label is 1 ("same") when both ends carry the same key. Why hard: the evidence sits
    ~24 positions apart and the label is an equality (XOR-like) relation. A model whose pooled features
    are a sum of per-position features that each see only one end (bag of words, or local attention
    whose receptive field, window x layers, is below the gap) cannot represent it at all and stays at
    chance; some token has to see both ends. Global softmax and linear attention learn it; Linformer
    (low-rank) attention learns it fastest, because its fixed-length projection mixes the two ends
    directly. Chance: 50%.

``builtin:sentiment`` -- synthetic sentiment with negation.
    10-24 words: neutral fillers, 3 or 5 polar words (12 positive, 12 negative) and negators (``not``,
    ``never``, ``hardly``). A negator directly before a polar word flips it (6% of polar words);
    negators also appear before fillers as distractors. The label is the sign of the summed polarity
    (never zero). Why hard: a bag-of-words model cannot tell which polar word is negated and tops out
    near 90%; the rest needs the order of adjacent words (any attention type with a window >= 1 can
    see it). Chance: 50%.

Calibration (default ``TrainConfig``: 300 steps, batch 32, lr 1e-3; CPU, 2 threads, 10k training
examples, seed 0; dev accuracy): the default candidate (2 layers, d_model 64, 4 heads, FFN 128,
softmax) reaches 0.74 on ``longmatch`` in ~7 s and 0.90 on ``sentiment`` in ~6 s; a 1-layer local
model with window 4 stays at chance (0.50) on ``longmatch``. See ``docs/tasks.md``.

File tasks
----------
A file is TSV, CSV (first row is the header) or JSONL (one object per line) with a ``text`` and a
``label`` column (case-insensitive; other columns are ignored). ``PATH`` is a folder holding
``train.{tsv,csv,jsonl}`` and ``dev.{tsv,csv,jsonl}``, or a single training file, in which case a
fixed 10% of its rows (the same for every seed, so dev accuracy stays comparable) is held out. Labels
may be integers or strings; they are mapped to ids in sorted order (numeric order when every label is an
integer). Every :class:`~nas.errors.DataError` names the file, the line, the column and the fix.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evaluators.tokenize import TextTokenizer, cache_dir, cached_wordpiece, word_level
from nas.errors import DataError

if TYPE_CHECKING:
    import torch

__all__ = ["TaskData", "load_task", "BUILTIN_TASKS", "read_examples", "DEFAULT_MAX_LEN"]

log = logging.getLogger(__name__)

DEFAULT_MAX_LEN = 64
_EXTS = (".tsv", ".csv", ".jsonl")
_HOLDOUT_FRACTION = 0.10
_HOLDOUT_SEED = 20240601


@dataclass(frozen=True, eq=False)
class TaskData:
    """A classification task, tokenized and ready to train on.

    Attributes:
        name: ``builtin:NAME`` or the resolved path it was read from.
        train_texts: Training texts.
        train_labels: Training label ids in ``[0, num_labels)``.
        dev_texts: Held-out texts.
        dev_labels: Held-out label ids.
        num_labels: Number of classes.
        label_names: Class names in id order.
        tokenizer: The tokenizer that produced the tensors.
        max_len: Sequence length of every row (``[CLS]``/``[SEP]`` included).
        train_ids: ``(N_train, max_len)`` long.
        train_mask: ``(N_train, max_len)`` long, 1 = real token.
        train_y: ``(N_train,)`` long.
        dev_ids: ``(N_dev, max_len)`` long.
        dev_mask: ``(N_dev, max_len)`` long.
        dev_y: ``(N_dev,)`` long.
        seed: Seed the task was generated (built-in) or loaded with.
        source: Identity of the data (generator parameters, or file paths with mtimes), for cache keys.
        chance_accuracy: Accuracy of always predicting the most frequent dev class.
    """

    name: str
    train_texts: tuple[str, ...]
    train_labels: tuple[int, ...]
    dev_texts: tuple[str, ...]
    dev_labels: tuple[int, ...]
    num_labels: int
    label_names: tuple[str, ...]
    tokenizer: TextTokenizer
    max_len: int
    train_ids: torch.Tensor
    train_mask: torch.Tensor
    train_y: torch.Tensor
    dev_ids: torch.Tensor
    dev_mask: torch.Tensor
    dev_y: torch.Tensor
    seed: int = 0
    source: str = ""
    chance_accuracy: float = 0.0

    @property
    def n_train(self) -> int:
        return len(self.train_labels)

    @property
    def n_dev(self) -> int:
        return len(self.dev_labels)

    @property
    def vocab_size(self) -> int:
        """Size of the embedding table a student needs (``build(..., vocab_size=task.vocab_size)``)."""
        return self.tokenizer.vocab_size

    @property
    def fingerprint(self) -> str:
        """Hash of the data identity, tokenizer and length: the key of anything trained on this task."""
        src = json.dumps([self.name, self.source, self.seed, self.max_len, self.tokenizer.fingerprint,
                          self.n_train, self.n_dev])
        return hashlib.sha1(src.encode()).hexdigest()[:16]

    def with_tokenizer(self, tokenizer: TextTokenizer, max_len: int | None = None) -> TaskData:
        """The same examples re-encoded with another tokenizer (e.g. a Hugging Face teacher's)."""
        n = self.max_len if max_len is None else max_len
        return _assemble(self.name, list(self.train_texts), list(self.train_labels), list(self.dev_texts),
                         list(self.dev_labels), self.label_names, tokenizer, n, self.seed, self.source)

    def __repr__(self) -> str:
        return (f"TaskData(name={self.name!r}, n_train={self.n_train}, n_dev={self.n_dev}, "
                f"num_labels={self.num_labels}, max_len={self.max_len}, tokenizer={self.tokenizer!r})")


def _assemble(name: str, train_texts: list[str], train_labels: list[int], dev_texts: list[str],
              dev_labels: list[int], label_names: Sequence[str], tokenizer: TextTokenizer, max_len: int,
              seed: int, source: str, *, cache_encoded: bool = False) -> TaskData:
    import torch

    tensors = None
    npz: Path | None = None
    if cache_encoded:
        key = hashlib.sha1(json.dumps([source, tokenizer.fingerprint, max_len, len(train_texts),
                                       len(dev_texts), 1]).encode()).hexdigest()[:20]
        npz = cache_dir() / "encoded" / f"{key}.npz"
        if npz.exists():
            try:
                with np.load(npz) as z:
                    tensors = tuple(torch.from_numpy(z[k].astype(np.int64))
                                    for k in ("tr_ids", "tr_mask", "dv_ids", "dv_mask"))
                log.debug("encoded-task cache hit %s", npz)
            except (OSError, ValueError, KeyError) as e:
                log.warning("ignoring unreadable encoded-task cache %s: %s", npz, e)
                tensors = None
    if tensors is None:
        tr_ids, tr_mask = tokenizer.encode(train_texts, max_len)
        dv_ids, dv_mask = tokenizer.encode(dev_texts, max_len)
        if npz is not None:
            try:
                npz.parent.mkdir(parents=True, exist_ok=True)
                tmp = npz.with_name(npz.stem + f".tmp{os.getpid()}.npz")
                np.savez(tmp, tr_ids=tr_ids.numpy().astype(np.int32), tr_mask=tr_mask.numpy().astype(np.uint8),
                         dv_ids=dv_ids.numpy().astype(np.int32), dv_mask=dv_mask.numpy().astype(np.uint8))
                os.replace(tmp, npz)
            except OSError as e:
                log.warning("could not cache encoded task in %s: %s", npz, e)
    else:
        tr_ids, tr_mask, dv_ids, dv_mask = tensors
    dev_y = torch.tensor(dev_labels, dtype=torch.long)
    counts = np.bincount(np.asarray(dev_labels, dtype=np.int64), minlength=len(label_names))
    chance = float(counts.max() / max(1, counts.sum())) if len(dev_labels) else 0.0
    return TaskData(
        name=name, train_texts=tuple(train_texts), train_labels=tuple(int(x) for x in train_labels),
        dev_texts=tuple(dev_texts), dev_labels=tuple(int(x) for x in dev_labels),
        num_labels=len(label_names), label_names=tuple(label_names), tokenizer=tokenizer,
        max_len=max_len, train_ids=tr_ids, train_mask=tr_mask,
        train_y=torch.tensor(train_labels, dtype=torch.long), dev_ids=dv_ids, dev_mask=dv_mask,
        dev_y=dev_y, seed=seed, source=source, chance_accuracy=chance,
    )


# --------------------------------------------------------------------------------------------------
# Built-in tasks
# --------------------------------------------------------------------------------------------------

_LM_KEYS = tuple(f"k{i}" for i in range(4))
_LM_FILLERS = tuple(f"w{i}" for i in range(8))
_LM_WORDS = 30  # 32 tokens with [CLS] and [SEP]
_LM_SPAN = 3  # the key is repeated over the first and the last 3 words

_POS = ("good", "great", "fine", "superb", "lovely", "brilliant", "charming", "moving", "clever",
        "fresh", "delightful", "solid")
_NEG = ("bad", "awful", "dull", "boring", "weak", "messy", "clumsy", "tedious", "bland", "poor",
        "stale", "silly")
_NEGATORS = ("not", "never", "hardly")
_NEGATION_RATE = 0.06
_FILLERS: tuple[str, ...] = ("the", "a", "film", "movie", "plot", "cast", "story", "it", "is", "was", "and", "but",
            "this", "that", "with", "of", "scene", "actor", "script", "ending", "music", "very", "quite",
            "really", "so", "its", "director", "pace", "tone", "style", "dialogue", "camera", "by", "in",
            "on", "for", "as", "at", "which", "overall")
_FILLERS = tuple(w for w in _FILLERS if w not in ("very", "quite", "really", "so"))


def _gen_longmatch(rng: np.random.Generator, n: int, max_len: int) -> tuple[list[str], list[int]]:
    n_words = min(_LM_WORDS, max_len - 2)
    span = _LM_SPAN
    if n_words < 2 * span + 2:
        raise DataError(f"builtin:longmatch needs max_len >= {2 * span + 4}", field="max_len", value=max_len,
                        fix=f"use max_len >= {_LM_WORDS + 2} (the designed length)")
    k = len(_LM_KEYS)
    fill = rng.integers(0, len(_LM_FILLERS), size=(n, n_words))
    labels = np.zeros(n, dtype=np.int64)
    labels[: n // 2] = 1
    rng.shuffle(labels)
    first = rng.integers(0, k, size=n)
    other = (first + rng.integers(1, k, size=n)) % k  # guaranteed different
    second = np.where(labels == 1, first, other)
    fillers = np.asarray(_LM_FILLERS)
    keys = np.asarray(_LM_KEYS)
    words = fillers[fill].astype(object)
    words[:, :span] = keys[first][:, None]
    words[:, n_words - span :] = keys[second][:, None]
    texts = [" ".join(row) for row in words.tolist()]
    return texts, labels.tolist()


def _gen_sentiment(rng: np.random.Generator, n: int, max_len: int) -> tuple[list[str], list[int]]:
    max_words = min(24, max_len - 2)
    if max_words < 10:
        raise DataError("builtin:sentiment needs max_len >= 12", field="max_len", value=max_len,
                        fix="use max_len >= 32")
    min_words = min(10, max_words)
    texts: list[str] = []
    labels: list[int] = []
    lengths = rng.integers(min_words, max_words + 1, size=n)
    n_polar = rng.choice(np.array([3, 5]), size=n)
    for i in range(n):
        length = int(lengths[i])
        words = [_FILLERS[j] for j in rng.integers(0, len(_FILLERS), size=length)]
        # Each polar word takes two slots (an optional negator, then the word), on disjoint slot pairs.
        n_slots = length // 2
        slots = rng.choice(n_slots, size=min(int(n_polar[i]), n_slots), replace=False)
        score = 0
        taken: set[int] = set()
        for s in slots:
            pos_word = bool(rng.random() < 0.5)
            word = _POS[rng.integers(len(_POS))] if pos_word else _NEG[rng.integers(len(_NEG))]
            negated = bool(rng.random() < _NEGATION_RATE)
            if negated:
                words[2 * s] = _NEGATORS[rng.integers(len(_NEGATORS))]
            words[2 * s + 1] = word
            taken.update((2 * s, 2 * s + 1))
            score += (1 if pos_word else -1) * (-1 if negated else 1)
        # Distractor negators before fillers, so counting negators does not help.
        for _ in range(int(rng.integers(0, 3))):
            j = int(rng.integers(0, length - 1))
            if j not in taken and (j + 1) not in taken:
                words[j] = _NEGATORS[rng.integers(len(_NEGATORS))]
        texts.append(" ".join(words))
        labels.append(1 if score > 0 else 0)
    return texts, labels


_BUILTINS: dict[str, tuple[Any, tuple[str, ...], tuple[str, ...], int, int]] = {
    # name: (generator, vocabulary, label names, default n_train, default n_dev)
    "longmatch": (_gen_longmatch, _LM_KEYS + _LM_FILLERS, ("different", "same"), 10000, 1000),
    "sentiment": (_gen_sentiment, _POS + _NEG + _NEGATORS + _FILLERS, ("negative", "positive"), 10000, 1000),
}

#: Names accepted after ``builtin:``.
BUILTIN_TASKS: tuple[str, ...] = tuple(_BUILTINS)


def _load_builtin(name: str, seed: int, max_len: int, tokenizer: TextTokenizer | None,
                  n_train: int | None, n_dev: int | None) -> TaskData:
    if name not in _BUILTINS:
        raise DataError(f"unknown built-in task {name!r}", field="task", value=f"builtin:{name}",
                        fix=f"use one of {', '.join('builtin:' + b for b in BUILTIN_TASKS)} or a file path")
    gen, vocab, label_names, d_train, d_dev = _BUILTINS[name]
    n_tr = d_train if n_train is None else int(n_train)
    n_dv = d_dev if n_dev is None else int(n_dev)
    if n_tr < 2 or n_dv < 2:
        raise DataError("a built-in task needs at least 2 train and 2 dev examples", field="n_train",
                        value=(n_tr, n_dv), fix="use n_train >= 2 and n_dev >= 2")
    # Train and dev come from independent streams of the same seed, so n_train does not change dev.
    ss = np.random.SeedSequence([seed, sum(map(ord, name))])
    rng_tr, rng_dv = (np.random.default_rng(s) for s in ss.spawn(2))
    tr_texts, tr_labels = gen(rng_tr, n_tr, max_len)
    dv_texts, dv_labels = gen(rng_dv, n_dv, max_len)
    tok = tokenizer if tokenizer is not None else word_level(vocab)
    source = json.dumps({"builtin": name, "version": 1, "n_train": n_tr, "n_dev": n_dv})
    return _assemble(f"builtin:{name}", tr_texts, tr_labels, dv_texts, dv_labels, label_names, tok,
                     max_len, seed, source)


# --------------------------------------------------------------------------------------------------
# File tasks
# --------------------------------------------------------------------------------------------------


def _fail(path: Path, line: int | None, column: str | None, what: str, fix: str) -> DataError:
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
            raise _fail(path, 1, col, f"missing {col!r} column; columns found: {header}",
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
                raise _fail(path, None, None, "file is empty",
                            "write a header row 'text<TAB>label' (or 'text,label') and one row per example")
            t_i, l_i = _find_columns(path, header)
            n_fields = len(header)
            kind = "tab" if delimiter == "\t" else "comma"
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != n_fields:
                    raise _fail(path, line, None,
                                f"malformed row: expected {n_fields} {kind}-separated fields "
                                f"({', '.join(header)}), found {len(row)}",
                                f"make every row have {n_fields} fields"
                                + ("; a tab inside the text must be removed" if delimiter == "\t" else
                                   "; quote text that contains commas with double quotes"))
                rows.append((row[t_i], row[l_i], line))
        except csv.Error as e:
            raise _fail(path, reader.line_num, None, f"malformed row: {e}",
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
                raise _fail(path, line_no, None, f"malformed JSON at character {e.colno}: {e.msg}",
                            'write one JSON object per line, e.g. {"text": "a fine film", "label": 1}'
                            ) from e
            if not isinstance(obj, dict):
                raise _fail(path, line_no, None, f"expected a JSON object, found {type(obj).__name__}",
                            'write one JSON object per line, e.g. {"text": "a fine film", "label": 1}')
            keys = {str(k).lower(): k for k in obj}
            for col in ("text", "label"):
                if col not in keys:
                    raise _fail(path, line_no, col, f"missing {col!r} key; keys found: {list(obj)}",
                                f"add a {col!r} key to every line")
            text = obj[keys["text"]]
            if not isinstance(text, str):
                raise _fail(path, line_no, "text", f"text must be a string, found {type(text).__name__}",
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
        raise _fail(p, None, None, "file not found", "check the path (expected a .tsv, .csv or .jsonl file)")
    if p.suffix.lower() not in _EXTS:
        raise _fail(p, None, None, f"unsupported file type {p.suffix!r}",
                    "use a .tsv, .csv or .jsonl file with 'text' and 'label' columns")
    if p.stat().st_size == 0:
        raise _fail(p, None, None, "file is empty", "write a header and one example per row")
    try:
        suffix = p.suffix.lower()
        raw = _read_jsonl(p) if suffix == ".jsonl" else _read_delimited(p, "\t" if suffix == ".tsv" else ",")
    except UnicodeDecodeError as e:
        raise _fail(p, None, None, f"is not UTF-8 text (byte {e.start})", "save the file as UTF-8") from e
    if not raw:
        raise _fail(p, None, None, "file has no examples (only a header or blank lines)",
                    "add at least one row with text and label")
    out: list[tuple[str, str, int]] = []
    for text, label, line in raw:
        if not text.strip():
            raise _fail(p, line, "text", "empty text", "fill in the text or delete the row")
        lab = _label_key(label)
        if lab == "":
            raise _fail(p, line, "label", "empty label", "fill in the label or delete the row")
        out.append((text, lab, line))
    return out


def _label_key(raw: Any) -> str:
    if isinstance(raw, bool):
        return str(raw).lower()
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    s = str(raw).strip() if raw is not None else ""
    return s


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def _label_names(train_labels: Sequence[str]) -> tuple[str, ...]:
    uniq = set(train_labels)
    if all(_is_int(u) for u in uniq):
        return tuple(str(v) for v in sorted({int(u) for u in uniq}))
    return tuple(sorted(uniq))


def _split_file(spec: Path) -> tuple[Path, Path | None]:
    if spec.is_dir():
        train = [spec / f"train{e}" for e in _EXTS if (spec / f"train{e}").exists()]
        dev = [spec / f"dev{e}" for e in _EXTS if (spec / f"dev{e}").exists()]
        if not train:
            raise _fail(spec, None, None, "no train.tsv, train.csv or train.jsonl in this folder",
                        "put a train file (and optionally a dev file) in the folder, or pass a file path")
        return train[0], (dev[0] if dev else None)
    return spec, None


def _load_files(spec: str, seed: int, max_len: int, tokenizer: TextTokenizer | None,
                vocab_size: int) -> TaskData:
    t0 = time.perf_counter()
    path = Path(spec).expanduser()
    if not path.exists():
        raise _fail(path, None, None, "file or folder not found",
                    "pass builtin:longmatch, builtin:sentiment, a .tsv/.csv/.jsonl file, or a folder "
                    "with train.* and dev.*")
    train_file, dev_file = _split_file(path)
    train_rows = read_examples(train_file)
    if dev_file is not None:
        dev_rows = read_examples(dev_file)
    else:
        if len(train_rows) < 2:
            raise _fail(train_file, None, None, "needs at least 2 rows to hold out a dev split",
                        "add rows or provide a separate dev file")
        perm = np.random.default_rng(_HOLDOUT_SEED).permutation(len(train_rows))
        n_dev = max(1, int(round(len(train_rows) * _HOLDOUT_FRACTION)))
        dev_idx = set(perm[:n_dev].tolist())
        dev_rows = [r for i, r in enumerate(train_rows) if i in dev_idx]
        train_rows = [r for i, r in enumerate(train_rows) if i not in dev_idx]
    label_names = _label_names([r[1] for r in train_rows])
    if len(label_names) < 2:
        raise _fail(train_file, None, "label", f"only one label value found ({label_names[0]!r})",
                    "a classification task needs at least two classes")
    to_id = {n: i for i, n in enumerate(label_names)}
    int_labels = all(_is_int(n) for n in label_names)

    def norm(lab: str) -> str:
        return str(int(lab)) if int_labels and _is_int(lab) else lab

    train_texts = [r[0] for r in train_rows]
    train_y = [to_id[norm(r[1])] for r in train_rows]
    dev_texts: list[str] = []
    dev_y: list[int] = []
    dev_src = dev_file if dev_file is not None else train_file
    for text, lab, line in dev_rows:
        key = norm(lab)
        if key not in to_id:
            raise _fail(dev_src, line, "label", f"unknown label {lab!r}: not seen in the training split "
                        f"(known labels: {list(label_names)})",
                        "use one of the training labels, or add examples of this label to train")
        dev_texts.append(text)
        dev_y.append(to_id[key])
    if tokenizer is None:
        tokenizer = cached_wordpiece(train_file, train_texts, vocab_size)
    ids = []
    for f in (train_file, dev_file):
        if f is not None:
            st = f.stat()
            ids.append([str(f.resolve()), st.st_mtime_ns, st.st_size])
    source = json.dumps({"files": ids, "vocab_size": vocab_size})
    task = _assemble(str(path.resolve()), train_texts, train_y, dev_texts, dev_y, label_names, tokenizer,
                     max_len, seed, source, cache_encoded=True)
    log.info("loaded %s: %d train / %d dev, %d labels, vocab %d, %.2fs", path, task.n_train, task.n_dev,
             task.num_labels, tokenizer.vocab_size, time.perf_counter() - t0)
    return task


def load_task(spec: str, *, seed: int = 0, max_len: int | None = None,
              tokenizer: TextTokenizer | None = None, vocab_size: int = 8000, n_train: int | None = None,
              n_dev: int | None = None) -> TaskData:
    """Load a task by spec.

    Args:
        spec: ``builtin:longmatch``, ``builtin:sentiment``, a TSV/CSV/JSONL file, or a folder with
            ``train.*`` and ``dev.*``.
        seed: Generator seed of built-in tasks (file tasks keep their rows; the seed is only recorded).
        max_len: Tokens per row, ``[CLS]``/``[SEP]`` included; default 64.
        tokenizer: Use this tokenizer (e.g. a teacher's) instead of the task's own.
        vocab_size: WordPiece vocabulary size trained on a file task's training split.
        n_train: Built-in tasks only: number of training examples (default 10000).
        n_dev: Built-in tasks only: number of held-out examples (default 1000).

    Returns:
        The tokenized task.

    Raises:
        DataError: Unknown built-in name, or a file problem (see :func:`read_examples`).
    """
    n = DEFAULT_MAX_LEN if max_len is None else int(max_len)
    if n < 2:
        raise DataError("max_len must be at least 2", field="max_len", value=max_len, fix="use max_len >= 8")
    if spec.startswith("builtin:"):
        return _load_builtin(spec.split(":", 1)[1], seed, n, tokenizer, n_train, n_dev)
    return _load_files(spec, seed, n, tokenizer, vocab_size)


def replace(task: TaskData, **changes: Any) -> TaskData:
    """``dataclasses.replace`` for :class:`TaskData` (kept for callers that subset splits)."""
    return dataclasses.replace(task, **changes)
