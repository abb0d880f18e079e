"""Tokenizers for tasks: trained on the training split, fixed word vocabularies, or a teacher's own.

Every tokenizer here is a :class:`TextTokenizer`, a thin handle over either a ``tokenizers.Tokenizer``
(WordPiece trained with the ``tokenizers`` library, or a fixed word-level vocabulary for built-in tasks)
or a Hugging Face ``PreTrainedTokenizerBase`` loaded from a local folder (a teacher's tokenizer).

Encoding always yields ``(input_ids, attention_mask)`` as ``torch.long`` tensors of shape
``(N, max_len)``, padded with id 0 and truncated, with ``[CLS]`` first (and ``[SEP]`` last when it fits).
Our own vocabularies reserve ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3``.

WordPiece tokenizers trained on a file are cached on disk, keyed by the file's absolute path, its
modification time and size, the vocabulary size and the lower-casing flag, under
:func:`cache_dir` (``$NAS_CACHE_DIR`` or ``~/.cache/energy-nas``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer

from nas.errors import DataError

if TYPE_CHECKING:
    import torch

__all__ = [
    "SPECIAL_TOKENS",
    "PAD_ID",
    "TextTokenizer",
    "cache_dir",
    "train_wordpiece",
    "cached_wordpiece",
    "word_level",
    "load_tokenizer",
]

log = logging.getLogger(__name__)

#: Special tokens of our own vocabularies, in id order.
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
PAD_ID = 0

_RAW_FILE = "tokenizer.json"
_HF_MARKER = "tokenizer_config.json"


def cache_dir() -> Path:
    """The service's cache folder: ``$NAS_CACHE_DIR`` if set, else ``~/.cache/energy-nas``."""
    env = os.environ.get("NAS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "energy-nas"


class TextTokenizer:
    """A tokenizer handle with one encoding contract, whatever the backend.

    Args:
        backend: A ``tokenizers.Tokenizer`` or a Hugging Face ``PreTrainedTokenizerBase``.
        kind: A short label for logs and provenance (``"wordpiece"``, ``"wordlevel"``, ``"hf"``).
    """

    def __init__(self, backend: Any, kind: str) -> None:
        self.backend = backend
        self.kind = kind
        self._fingerprint: str | None = None

    @property
    def is_hf(self) -> bool:
        """Whether the backend is a Hugging Face (``transformers``) tokenizer."""
        return self.kind == "hf"

    @property
    def vocab_size(self) -> int:
        """Number of ids the model's embedding table must cover."""
        if self.is_hf:
            return int(len(self.backend))
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    @property
    def pad_id(self) -> int:
        """The id used for padding (0 for our own vocabularies)."""
        if self.is_hf:
            pid = self.backend.pad_token_id
            return int(pid) if pid is not None else 0
        return PAD_ID

    def get_vocab(self) -> dict[str, int]:
        """Token → id mapping."""
        return dict(self.backend.get_vocab())

    @property
    def fingerprint(self) -> str:
        """A short hash of the vocabulary; two tokenizers with the same fingerprint give the same ids."""
        if self._fingerprint is None:
            items = sorted(self.get_vocab().items(), key=lambda kv: kv[1])
            h = hashlib.sha1(json.dumps(items, ensure_ascii=False).encode("utf-8"))
            h.update(self.kind.encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def encode(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode texts to padded, truncated ids.

        Args:
            texts: The strings to encode.
            max_len: Length of every output row, ``[CLS]`` and ``[SEP]`` included.

        Returns:
            ``(input_ids, attention_mask)``, both ``torch.long`` of shape ``(len(texts), max_len)``; the
            mask is 1 on real tokens and 0 on padding.
        """
        if max_len < 2:
            raise DataError("max_len must be at least 2 ([CLS] plus one token)", field="max_len",
                            value=max_len, fix="use max_len >= 8")
        texts = list(texts)
        if self.is_hf:
            enc = self.backend(texts, padding="max_length", truncation=True, max_length=max_len,
                               return_tensors="pt")
            ids = enc["input_ids"].long()
            mask = enc["attention_mask"].long()
            return ids, mask
        tok = self.backend
        tok.enable_truncation(max_length=max_len)
        tok.no_padding()
        try:
            encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
            encs = encode(texts, add_special_tokens=True)
        finally:
            tok.no_truncation()
        # Padding in NumPy is faster than asking the tokenizer for padded encodings and their masks.
        ids_np = np.zeros((len(encs), max_len), dtype=np.int64)
        lengths = np.zeros(len(encs), dtype=np.int64)
        for i, e in enumerate(encs):
            row = e.ids
            ids_np[i, : len(row)] = row
            lengths[i] = len(row)
        mask_np = (np.arange(max_len)[None, :] < lengths[:, None]).astype(np.int64)
        if PAD_ID != 0:  # pragma: no cover - our vocabularies always pad with 0
            ids_np[mask_np == 0] = PAD_ID
        return torch.from_numpy(ids_np), torch.from_numpy(mask_np)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids back to text, special tokens dropped (for debugging and round-trip tests)."""
        ids = [int(i) for i in ids]
        return str(self.backend.decode(ids, skip_special_tokens=True))

    def save(self, directory: str | Path) -> Path:
        """Write the tokenizer to ``directory`` (``tokenizer.json``; HF tokenizers add their configs).

        Returns:
            The folder written, which :func:`load_tokenizer` reads back.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.is_hf:
            self.backend.save_pretrained(str(d))
        else:
            self.backend.save(str(d / _RAW_FILE))
            (d / "nas_tokenizer.json").write_text(json.dumps({"kind": self.kind, "version": 1}))
        return d

    def __repr__(self) -> str:
        return f"TextTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def load_tokenizer(directory: str | Path) -> TextTokenizer:
    """Load a tokenizer written by :meth:`TextTokenizer.save`, or any local Hugging Face tokenizer folder.

    Raises:
        DataError: The folder has no ``tokenizer.json`` nor ``tokenizer_config.json``.
    """
    d = Path(directory)
    if (d / _HF_MARKER).exists():
        return TextTokenizer(AutoTokenizer.from_pretrained(str(d), local_files_only=True), "hf")
    if (d / _RAW_FILE).exists():
        kind = "wordpiece"
        meta = d / "nas_tokenizer.json"
        if meta.exists():
            kind = str(json.loads(meta.read_text()).get("kind", kind))
        return TextTokenizer(Tokenizer.from_file(str(d / _RAW_FILE)), kind)
    raise DataError(f"{d}: no tokenizer.json or tokenizer_config.json in this folder",
                    fix="pass a folder written by TextTokenizer.save or tokenizer.save_pretrained")


def _post_processor(cls_id: int, sep_id: int) -> Any:
    return TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                              special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])


def train_wordpiece(texts: Iterable[str], vocab_size: int = 8000, *, lowercase: bool = True,
                    min_frequency: int = 2) -> TextTokenizer:
    """Train a BERT-style WordPiece tokenizer on ``texts`` with the ``tokenizers`` library.

    Args:
        texts: Training-split texts only (never the held-out split).
        vocab_size: Upper bound of the vocabulary, special tokens included.
        lowercase: Lower-case and strip accents before splitting.
        min_frequency: Minimum count of a merged piece.

    Returns:
        A tokenizer with ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3``.
    """
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase or None)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # The trainer puts the special tokens first, in SPECIAL_TOKENS order.
    tok.post_processor = _post_processor(SPECIAL_TOKENS.index("[CLS]"), SPECIAL_TOKENS.index("[SEP]"))
    return TextTokenizer(tok, "wordpiece")


def cached_wordpiece(train_file: str | Path, texts: Sequence[str], vocab_size: int = 8000, *,
                     lowercase: bool = True, root: str | Path | None = None, split_key: str = "") -> TextTokenizer:
    """Train a WordPiece tokenizer on ``texts`` (read from ``train_file``), or reuse the cached one.

    The cache key is the file's absolute path, ``mtime`` and size, ``vocab_size``, ``lowercase`` and
    ``split_key``, so editing the file retrains.

    Args:
        train_file: The file the texts came from (only its identity is used).
        texts: The training texts.
        vocab_size: Vocabulary size.
        lowercase: Lower-case before splitting.
        root: Cache folder; defaults to :func:`cache_dir`.
        split_key: Which rows of the file ``texts`` are (e.g. the splits held out of it), when not all.
    """
    p = Path(train_file).resolve()
    st = p.stat()
    key_src = json.dumps([str(p), st.st_mtime_ns, st.st_size, vocab_size, lowercase, 1, *([split_key] if split_key else [])])
    key = hashlib.sha1(key_src.encode()).hexdigest()[:20]
    folder = Path(root) if root is not None else cache_dir()
    folder = folder / "tokenizers" / key
    if (folder / _RAW_FILE).exists():
        try:
            tok = load_tokenizer(folder)
            log.debug("tokenizer cache hit %s for %s", folder, p)
            return tok
        except Exception as e:  # a corrupt cache entry is retrained, not fatal
            log.warning("ignoring unreadable cached tokenizer %s: %s", folder, e)
    tok = train_wordpiece(texts, vocab_size, lowercase=lowercase)
    try:
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        tok.save(tmp)
        if folder.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(folder)
        log.info("trained WordPiece tokenizer (vocab %d) on %s, cached in %s", tok.vocab_size, p, folder)
    except OSError as e:
        log.warning("could not cache tokenizer in %s: %s", folder, e)
    return tok


def word_level(words: Sequence[str]) -> TextTokenizer:
    """A fixed word-level vocabulary split on whitespace (used by built-in tasks).

    Ids are ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3`` followed by ``words`` in order.
    """
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in words:
        if w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = _post_processor(vocab["[CLS]"], vocab["[SEP]"])
    return TextTokenizer(tok, "wordlevel")
