"""Classification tasks: built-in synthetic tasks generated offline, and TSV/CSV/JSONL files.

``load_task(spec)`` returns a frozen :class:`TaskData` with texts, labels, the tokenizer and the already
tokenized tensors of its three splits. ``spec`` is ``builtin:NAME`` or a path.

Splits: train trains; dev selects (ASHA rungs, the sampler's objectives, the Pareto front); test is only
reported, beside dev, so that the accuracy shown for a front member is not the one it was selected on.

Built-in tasks
--------------
Both are generated with NumPy from ``seed`` in well under a second, need no download, and have
balanced binary labels (chance accuracy 50%). Train, dev and test come from three independent streams
of the seed (``SeedSequence.spawn``), so ``n_train`` and ``n_test`` never change dev, and the train and
dev examples are the ones generated before the test split existed.

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
``train.{tsv,csv,jsonl}`` and optionally ``dev.*`` and ``test.*``, or a single training file. With a dev
file but no test file, the dev file is split in half (dev and test); without a dev file, dev (and test)
are held out of the training file. Both use a fixed permutation, the same for every seed, so accuracies
stay comparable (see :func:`evaluators._taskfiles.split_rows`). Labels may be integers or strings; they are mapped to
ids in sorted order (numeric order when every label is an integer). Every
:class:`~nas.errors.DataError` names the file, the line, the column and the fix.
"""

from __future__ import annotations

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
import torch

from evaluators._taskfiles import Row, fail, find_split_files, is_int, label_names, read_examples, split_rows
from evaluators.tokenize import TextTokenizer, cache_dir, cached_wordpiece, word_level
from nas.errors import DataError

if TYPE_CHECKING:
    import torch

__all__ = ["TaskData", "load_task", "BUILTIN_TASKS", "read_examples", "DEFAULT_MAX_LEN"]

log = logging.getLogger(__name__)

DEFAULT_MAX_LEN = 64

#: ``(texts, label ids)`` of one split.
_Split = tuple[list[str], list[int]]


@dataclass(frozen=True, eq=False)
class TaskData:
    """A classification task, tokenized and ready to train on.

    Attributes:
        name: ``builtin:NAME`` or the resolved path it was read from.
        train_texts: Training texts.
        train_labels: Training label ids in ``[0, num_labels)``.
        dev_texts: Held-out texts that select (rungs, sampler, front).
        dev_labels: Their label ids.
        test_texts: Held-out texts that are only reported, never selected on.
        test_labels: Their label ids.
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
        test_ids: ``(N_test, max_len)`` long.
        test_mask: ``(N_test, max_len)`` long.
        test_y: ``(N_test,)`` long.
        seed: Seed the task was generated (built-in) or loaded with.
        source: Identity of the data (generator parameters, or file paths with mtimes), for cache keys.
        chance_accuracy: Accuracy of always predicting the most frequent dev class (the majority-class
            rate a front member must beat).
    """

    name: str
    train_texts: tuple[str, ...]
    train_labels: tuple[int, ...]
    dev_texts: tuple[str, ...]
    dev_labels: tuple[int, ...]
    test_texts: tuple[str, ...]
    test_labels: tuple[int, ...]
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
    test_ids: torch.Tensor
    test_mask: torch.Tensor
    test_y: torch.Tensor
    seed: int = 0
    source: str = ""
    chance_accuracy: float = 0.0

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return len(self.train_labels)

    @property
    def n_dev(self) -> int:
        """Number of dev examples."""
        return len(self.dev_labels)

    @property
    def n_test(self) -> int:
        """Number of test examples."""
        return len(self.test_labels)

    @property
    def vocab_size(self) -> int:
        """Size of the embedding table a student needs (``build(..., vocab_size=task.vocab_size)``)."""
        return self.tokenizer.vocab_size

    @property
    def fingerprint(self) -> str:
        """Hash of the data identity, tokenizer and length: the key of anything trained on this task."""
        src = json.dumps([self.name, self.source, self.seed, self.max_len, self.tokenizer.fingerprint,
                          self.n_train, self.n_dev, self.n_test])
        return hashlib.sha1(src.encode()).hexdigest()[:16]

    def with_tokenizer(self, tokenizer: TextTokenizer, max_len: int | None = None) -> TaskData:
        """The same examples (all three splits) re-encoded with another tokenizer (e.g. a teacher's)."""
        n = self.max_len if max_len is None else max_len
        splits = {"train": (list(self.train_texts), list(self.train_labels)),
                  "dev": (list(self.dev_texts), list(self.dev_labels)),
                  "test": (list(self.test_texts), list(self.test_labels))}
        return _assemble(self.name, splits, self.label_names, tokenizer, n, self.seed, self.source)

    def __repr__(self) -> str:
        return (f"TaskData(name={self.name!r}, n_train={self.n_train}, n_dev={self.n_dev}, "
                f"n_test={self.n_test}, num_labels={self.num_labels}, max_len={self.max_len}, "
                f"tokenizer={self.tokenizer!r})")


_SPLITS = ("train", "dev", "test")


def _encode(splits: dict[str, _Split], tokenizer: TextTokenizer, max_len: int, source: str,
            cache_encoded: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{split: (ids, mask)}``, from the encoded-task cache when ``cache_encoded`` and it is there."""
    npz: Path | None = None
    if cache_encoded:
        key = hashlib.sha1(json.dumps([source, tokenizer.fingerprint, max_len,
                                       *(len(splits[s][0]) for s in _SPLITS), 2]).encode()).hexdigest()[:20]
        npz = cache_dir() / "encoded" / f"{key}.npz"
        if npz.exists():
            try:
                with np.load(npz) as z:
                    out = {s: (torch.from_numpy(z[f"{s}_ids"].astype(np.int64)),
                               torch.from_numpy(z[f"{s}_mask"].astype(np.int64))) for s in _SPLITS}
                log.debug("encoded-task cache hit %s", npz)
                return out
            except (OSError, ValueError, KeyError) as e:
                log.warning("ignoring unreadable encoded-task cache %s: %s", npz, e)
    out = {s: tokenizer.encode(splits[s][0], max_len) for s in _SPLITS}
    if npz is not None:
        try:
            npz.parent.mkdir(parents=True, exist_ok=True)
            tmp = npz.with_name(npz.stem + f".tmp{os.getpid()}.npz")
            arrays = {}
            for s, (ids, mask) in out.items():
                arrays[f"{s}_ids"] = ids.numpy().astype(np.int32)
                arrays[f"{s}_mask"] = mask.numpy().astype(np.uint8)
            np.savez(tmp, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, npz)
        except OSError as e:
            log.warning("could not cache encoded task in %s: %s", npz, e)
    return out


def _assemble(name: str, splits: dict[str, _Split], label_names: Sequence[str], tokenizer: TextTokenizer,
              max_len: int, seed: int, source: str, *, cache_encoded: bool = False) -> TaskData:
    enc = _encode(splits, tokenizer, max_len, source, cache_encoded)
    dev_labels = splits["dev"][1]
    counts = np.bincount(np.asarray(dev_labels, dtype=np.int64), minlength=len(label_names))
    chance = float(counts.max() / max(1, counts.sum())) if len(dev_labels) else 0.0
    fields: dict[str, Any] = {}
    for s in _SPLITS:
        texts, labels = splits[s]
        fields.update({f"{s}_texts": tuple(texts), f"{s}_labels": tuple(int(x) for x in labels),
                       f"{s}_ids": enc[s][0], f"{s}_mask": enc[s][1],
                       f"{s}_y": torch.tensor(list(labels), dtype=torch.long)})
    return TaskData(name=name, num_labels=len(label_names), label_names=tuple(label_names),
                    tokenizer=tokenizer, max_len=max_len, seed=seed, source=source, chance_accuracy=chance,
                    **fields)


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
                  n_train: int | None, n_dev: int | None, n_test: int | None) -> TaskData:
    if name not in _BUILTINS:
        raise DataError(f"unknown built-in task {name!r}", field="task", value=f"builtin:{name}",
                        fix=f"use one of {', '.join('builtin:' + b for b in BUILTIN_TASKS)} or a file path")
    gen, vocab, names, d_train, d_dev = _BUILTINS[name]
    n_tr = d_train if n_train is None else int(n_train)
    n_dv = d_dev if n_dev is None else int(n_dev)
    n_te = n_dv if n_test is None else int(n_test)
    if n_tr < 2 or n_dv < 2 or n_te < 2:
        raise DataError("a built-in task needs at least 2 train, 2 dev and 2 test examples", field="n_train",
                        value=(n_tr, n_dv, n_te), fix="use n_train >= 2, n_dev >= 2 and n_test >= 2")
    # Train, dev and test come from independent streams of the same seed, so n_train and n_test do
    # not change dev. Children 0 and 1 of a SeedSequence do not depend on how many are spawned, so
    # train and dev are the examples generated before the test stream (child 2) was added.
    ss = np.random.SeedSequence([seed, sum(map(ord, name))])
    rng_tr, rng_dv, rng_te = (np.random.default_rng(s) for s in ss.spawn(3))
    splits = {"train": gen(rng_tr, n_tr, max_len), "dev": gen(rng_dv, n_dv, max_len),
              "test": gen(rng_te, n_te, max_len)}
    tok = tokenizer if tokenizer is not None else word_level(vocab)
    source = json.dumps({"builtin": name, "version": 1, "n_train": n_tr, "n_dev": n_dv, "n_test": n_te})
    return _assemble(f"builtin:{name}", splits, names, tok, max_len, seed, source)


# --------------------------------------------------------------------------------------------------
# File tasks
# --------------------------------------------------------------------------------------------------


def _to_ids(rows: list[Row], src: Path, names: tuple[str, ...]) -> _Split:
    """Texts and label ids of held-out rows; a label not in the training file is an error at its line."""
    to_id = {n: i for i, n in enumerate(names)}
    int_labels = all(is_int(n) for n in names)
    texts: list[str] = []
    ids: list[int] = []
    for text, lab, line in rows:
        key = str(int(lab)) if int_labels and is_int(lab) else lab
        if key not in to_id:
            raise fail(src, line, "label", f"unknown label {lab!r}: not seen in the training split "
                       f"(known labels: {list(names)})",
                       "use one of the training labels, or add examples of this label to train")
        texts.append(text)
        ids.append(to_id[key])
    return texts, ids


def _load_files(spec: str, seed: int, max_len: int, tokenizer: TextTokenizer | None,
                vocab_size: int) -> TaskData:
    t0 = time.perf_counter()
    path = Path(spec).expanduser()
    if not path.exists():
        raise fail(path, None, None, "file or folder not found",
                   "pass builtin:longmatch, builtin:sentiment, a .tsv/.csv/.jsonl file, or a folder "
                   "with train.* (and optionally dev.* and test.*)")
    files = find_split_files(path)
    all_train = read_examples(files.train)
    dev_file_rows = read_examples(files.dev) if files.dev is not None else None
    test_file_rows = read_examples(files.test) if files.test is not None else None
    train_rows, held_dev, held_test = split_rows(files, all_train, dev_file_rows)
    # The classes are those of the whole training file, so a holdout never removes one.
    names = label_names([r[1] for r in all_train])
    if len(names) < 2:
        raise fail(files.train, None, "label", f"only one label value found ({names[0]!r})",
                   "a classification task needs at least two classes")
    splits = {"train": _to_ids(train_rows, files.train, names),
              "dev": _to_ids(held_dev if held_dev is not None else dev_file_rows or [],
                             files.dev or files.train, names),
              "test": _to_ids(held_test if held_test is not None else test_file_rows or [],
                              files.test or files.dev or files.train, names)}
    # what was held out of the training file (test split off a dev file takes nothing from it)
    held = [s for s, h in (("dev", held_dev), ("test", held_test)) if h is not None and files.dev is None]
    if tokenizer is None:
        # Trained on the training rows only; the key names the held-out splits, so a tokenizer trained
        # before test rows were held out of this file is not reused (it has seen them).
        tokenizer = cached_wordpiece(files.train, splits["train"][0], vocab_size,
                                     split_key=",".join(held) if held else "")
    ids = []
    for f in (files.train, files.dev, files.test):
        if f is not None:
            st = f.stat()
            ids.append([str(f.resolve()), st.st_mtime_ns, st.st_size])
    source = json.dumps({"files": ids, "vocab_size": vocab_size, "held_out": held})
    task = _assemble(str(path.resolve()), splits, names, tokenizer, max_len, seed, source, cache_encoded=True)
    log.info("loaded %s: %d train / %d dev / %d test%s, %d labels, vocab %d, %.2fs", path, task.n_train,
             task.n_dev, task.n_test, f" ({' and '.join(held)} held out of {files.train.name})" if held else "",
             task.num_labels, tokenizer.vocab_size, time.perf_counter() - t0)
    return task


def load_task(spec: str, *, seed: int = 0, max_len: int | None = None,
              tokenizer: TextTokenizer | None = None, vocab_size: int = 8000, n_train: int | None = None,
              n_dev: int | None = None, n_test: int | None = None) -> TaskData:
    """Load a task by spec.

    Args:
        spec: ``builtin:longmatch``, ``builtin:sentiment``, a TSV/CSV/JSONL file, or a folder with
            ``train.*`` and optionally ``dev.*`` and ``test.*``.
        seed: Generator seed of built-in tasks (file tasks keep their rows; the seed is only recorded).
        max_len: Tokens per row, ``[CLS]``/``[SEP]`` included; default 64.
        tokenizer: Use this tokenizer (e.g. a teacher's) instead of the task's own.
        vocab_size: WordPiece vocabulary size trained on a file task's training split.
        n_train: Built-in tasks only: number of training examples (default 10000).
        n_dev: Built-in tasks only: number of dev examples (default 1000).
        n_test: Built-in tasks only: number of test examples (default: as many as dev).

    Returns:
        The tokenized task.

    Raises:
        DataError: Unknown built-in name, or a file problem (see :func:`read_examples`).
    """
    n = DEFAULT_MAX_LEN if max_len is None else int(max_len)
    if n < 2:
        raise DataError("max_len must be at least 2", field="max_len", value=max_len, fix="use max_len >= 8")
    if spec.startswith("builtin:"):
        return _load_builtin(spec.split(":", 1)[1], seed, n, tokenizer, n_train, n_dev, n_test)
    return _load_files(spec, seed, n, tokenizer, vocab_size)


def replace(task: TaskData, **changes: Any) -> TaskData:
    """``dataclasses.replace`` for :class:`TaskData` (kept for callers that subset splits)."""
    return dataclasses.replace(task, **changes)
