"""Teacher outputs, computed once per (teacher, task, length) and memory-mapped from disk.

Distilling calls the teacher on every batch of every trial; for a real (BERT-sized) teacher that is most
of a trial's cost. :func:`build_or_load` runs the teacher once over the task's training split and writes
what the distillation kinds need under ``<cache_dir()>/teacher-outputs/<key>/``:

- ``logits.npy``: ``(N_train, C)`` float32, every training example;
- ``hidden.npy``: ``(K, L + 1, max_len, d)`` float16, the first ``K`` training examples, only when
  hidden states are needed (kinds ``hidden`` and ``attention``);
- ``attn.npy``: ``(K, L, H, max_len, max_len)`` float16, the first ``K`` examples, only when attention
  maps are needed (kind ``attention``);
- ``meta.json``: what the entry holds (written last: an entry without it is incomplete).

Each batch is trimmed to its longest real row (:func:`evaluators.metrics.trim_batch`) and padded back
to ``max_len`` with zeros; the rows past the first ``K`` (logits only) run sorted by length, so those
batches compute almost no padding. Attention masks padded keys, so a training batch trimmed to a shorter length
reads the same numbers from the slice ``[:T]`` (``[:T, :T]`` for maps) as a live teacher would compute.

The key is a hash of the teacher's weights (:attr:`evaluators.teacher.Teacher.fingerprint`), the task
fingerprint, ``max_len``, what is stored, ``K`` and :data:`FORMAT_VERSION`. An entry that stores more
than asked for is reused (a logits-only request is served by an entry with hidden states); one that
stores less is not extended: a new entry is built (the teacher runs again, logits included), and the
smaller one stays for the requests it serves.

Every array is a read-only memory map (``numpy.lib.format.open_memmap(mode="r")``), so trials and
workers on one host share the pages. Workers that miss at once build once: the first takes a file lock
on the key, the others wait and load. An entry is written to a temporary folder and renamed into place.

The build is metered like a self-trained teacher's training (window ``teacher-cache``); its
:class:`~nas.records.TrainSummary` is handed out once, by :meth:`TeacherOutputs.take_build_cost`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from evaluators.locks import file_lock
from evaluators.metrics import trim_batch
from evaluators.tokenize import cache_dir
from evaluators.train import resolve_device
from evaluators.train_meter import TrainingMeter
from nas.errors import ConfigError
from nas.models import ModelOutput
from nas.records import TrainSummary

if TYPE_CHECKING:
    from evaluators.meters import EnergyMeter
    from evaluators.tasks import TaskData
    from evaluators.teacher import Teacher

__all__ = ["TeacherOutputs", "build_or_load", "teacher_fingerprint", "cache_key", "FORMAT_VERSION",
           "DEFAULT_HIDDEN_EXAMPLES"]

log = logging.getLogger(__name__)

#: Bumped whenever the files' layout or meaning changes (old entries are then simply not found).
FORMAT_VERSION = 1
#: Training examples whose hidden states and attention maps are stored (``K``).
DEFAULT_HIDDEN_EXAMPLES = 4096
_F16_MAX = float(np.finfo(np.float16).max)


def teacher_fingerprint(teacher: Teacher) -> str:
    """Content hash of the teacher's weights (memoized on the teacher; see ``Teacher.fingerprint``)."""
    return teacher.fingerprint


@dataclass(frozen=True)
class _Layout:
    """What one entry stores: logits always; hidden states and attention maps of ``k`` examples."""

    hidden: bool
    attention: bool
    k: int

    def covers(self, other: _Layout) -> bool:
        """Whether an entry of this layout serves a request for ``other``."""
        extra = other.hidden or other.attention
        return ((self.hidden or not other.hidden) and (self.attention or not other.attention)
                and (not extra or self.k == other.k))

    def stored(self) -> list[str]:
        """The arrays' names."""
        return ["logits"] + ["hidden"] * self.hidden + ["attn"] * self.attention


def _layout(needs_hidden: bool, needs_attention: bool, hidden_examples: int, n_train: int) -> _Layout:
    extra = needs_hidden or needs_attention
    if extra and hidden_examples < 1:
        raise ConfigError("hidden_examples must be at least 1 when hidden states or attention maps are "
                          "cached", field="hidden_examples", value=hidden_examples,
                          fix=f"pass hidden_examples >= 1 (default {DEFAULT_HIDDEN_EXAMPLES})")
    return _Layout(needs_hidden, needs_attention, min(hidden_examples, n_train) if extra else 0)


def cache_key(teacher_fp: str, task: TaskData, layout: _Layout) -> str:
    """The entry's folder name: a hash of the teacher, the task, ``max_len``, what is stored, ``K``."""
    src = json.dumps([teacher_fp, task.fingerprint, task.max_len, layout.stored(), layout.k, FORMAT_VERSION])
    return hashlib.sha1(src.encode()).hexdigest()[:20]


class TeacherOutputs:
    """One cache entry, memory-mapped read-only.

    Args:
        folder: The entry's folder (with ``meta.json``).
        build_cost: What building it here cost (a miss); ``None`` when it was loaded.

    Attributes:
        folder: The entry's folder.
        logits: ``(N_train, C)`` float32 memory map.
        hidden: ``(K, L + 1, max_len, d)`` float16 memory map, or ``None``.
        attentions: ``(K, L, H, max_len, max_len)`` float16 memory map, or ``None``.
        meta: The entry's ``meta.json``.
    """

    def __init__(self, folder: Path, build_cost: TrainSummary | None = None) -> None:
        self.folder = folder
        self.meta: dict[str, Any] = json.loads((folder / "meta.json").read_text())
        self.logits = np.lib.format.open_memmap(folder / "logits.npy", mode="r")
        self.hidden = np.lib.format.open_memmap(folder / "hidden.npy", mode="r") if self.meta["hidden"] else None
        self.attentions = (np.lib.format.open_memmap(folder / "attn.npy", mode="r")
                           if self.meta["attention"] else None)
        self._attn_layers: list[bool] = list(self.meta.get("attention_layers") or [])
        self._build_cost = build_cost
        if self.logits.shape[0] != self.meta["n_examples"]:
            raise ValueError(f"{folder}: logits.npy has {self.logits.shape[0]} rows, meta says "
                             f"{self.meta['n_examples']}")

    @property
    def key(self) -> str:
        """The entry's key (its folder name)."""
        return self.folder.name

    @property
    def n_examples(self) -> int:
        """Training examples with logits (``N_train``)."""
        return int(self.meta["n_examples"])

    @property
    def hidden_examples(self) -> int:
        """``K``: the first ``K`` training examples have hidden states/attention maps; 0 when none do."""
        return int(self.meta["hidden_examples"])

    @property
    def task_fingerprint(self) -> str:
        """Fingerprint of the task the entry was computed on."""
        return str(self.meta["task_fingerprint"])

    @property
    def max_len(self) -> int:
        """Sequence length of the stored rows."""
        return int(self.meta["max_len"])

    @property
    def layout(self) -> _Layout:
        """What the entry stores."""
        return _Layout(bool(self.meta["hidden"]), bool(self.meta["attention"]), self.hidden_examples)

    def take_build_cost(self) -> TrainSummary | None:
        """The cost of building this entry, the first time it is asked for; ``None`` afterwards."""
        cost, self._build_cost = self._build_cost, None
        return cost

    def batch(self, indices: torch.Tensor, seq_len: int, device: torch.device | str | None = None, *,
              hidden: bool = True, attention: bool = True) -> ModelOutput:
        """The teacher's outputs for the training examples ``indices``, cut to ``seq_len`` tokens.

        Args:
            indices: ``(B,)`` training-split row numbers.
            seq_len: ``T``, the trimmed batch's length (``1 <= T <= max_len``).
            device: Where the float32 tensors go (default CPU).
            hidden: Return hidden states when the entry stores them.
            attention: Return attention maps when the entry stores them.

        Returns:
            ``logits`` ``(B, C)``; ``hidden_states`` ``L + 1`` tensors ``(B, T, d)`` and ``attentions``
            ``L`` tensors ``(B, H, T, T)`` (``None`` for a layer without maps) when stored and asked
            for, else ``None``.

        Raises:
            IndexError: An index is outside the split, or outside the first ``K`` rows while hidden
                states or attention maps are returned.
        """
        idx = indices.detach().to("cpu", torch.int64).numpy()
        t = int(seq_len)
        if not 1 <= t <= self.max_len:
            raise ValueError(f"seq_len {t} is outside 1..{self.max_len}")
        want_h, want_a = hidden and self.hidden is not None, attention and self.attentions is not None
        limit = self.hidden_examples if want_h or want_a else self.n_examples
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= limit):
            raise IndexError(f"teacher outputs hold rows 0..{limit - 1} for this request, got "
                             f"{int(idx.min())}..{int(idx.max())}")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        logits = _tensor(self.logits[idx], dev)
        hs = tuple(_tensor(self.hidden[idx, :, :t], dev).unbind(1)) if want_h and self.hidden is not None else None
        att: tuple[torch.Tensor | None, ...] | None = None
        if want_a and self.attentions is not None:
            maps = _tensor(self.attentions[idx, :, :, :t, :t], dev).unbind(1)
            att = tuple(m if has else None for m, has in zip(maps, self._attn_layers, strict=True))
        return ModelOutput(logits=logits, hidden_states=hs, attentions=att)

    def __repr__(self) -> str:
        return (f"TeacherOutputs(key={self.key!r}, n_examples={self.n_examples}, "
                f"hidden_examples={self.hidden_examples}, stored={self.layout.stored()})")


def _tensor(a: np.ndarray[Any, Any], device: torch.device) -> torch.Tensor:
    """A numpy slice (already a copy, not a view of the map) as a float32 tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=torch.float32)


def build_or_load(teacher: Teacher, task: TaskData, *, needs_hidden: bool = False,
                  needs_attention: bool = False, hidden_examples: int = DEFAULT_HIDDEN_EXAMPLES,
                  batch_size: int = 64, device: str = "auto", meter: EnergyMeter | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  root: str | Path | None = None) -> TeacherOutputs:
    """The teacher's outputs on ``task``'s training split: loaded from the cache, or computed once.

    Args:
        teacher: The frozen teacher (it must read ``task``'s token ids: see ``Teacher.adapt_task``).
        task: The task; its training split is run through the teacher.
        needs_hidden: Store hidden states (distillation kinds ``hidden`` and ``attention``).
        needs_attention: Store attention maps (kind ``attention``).
        hidden_examples: ``K``: how many of the first training examples get hidden states and maps.
        batch_size: Teacher batch size on a miss.
        device: Where the teacher runs on a miss (``auto``, ``cpu``, ``cuda:N``); it is moved back after.
        meter: Meters the build on a miss (window ``teacher-cache``); the cost is on
            :meth:`TeacherOutputs.take_build_cost`.
        progress: ``progress(done, total)`` after every teacher batch on a miss.
        root: Cache folder; default :func:`evaluators.tokenize.cache_dir`.

    Returns:
        The entry, memory-mapped.

    Raises:
        ConfigError: ``hidden_examples < 1`` with hidden states or maps asked for, or a hidden state too
            large for float16.
        OSError: The entry could not be written (e.g. the disk is full); nothing is left behind.
    """
    want = _layout(needs_hidden, needs_attention, hidden_examples, task.n_train)
    base = (Path(root) if root is not None else cache_dir()) / "teacher-outputs"
    fp = teacher.fingerprint
    k_extra = want.k or min(max(hidden_examples, 1), task.n_train)
    found = _find(base, fp, task, want, k_extra)
    if found is not None:
        return found
    folder = base / cache_key(fp, task, want)
    locks = base / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with file_lock(locks / f"{folder.name}.lock"):
        found = _find(base, fp, task, want, k_extra)
        if found is not None:
            return found
        return _build(folder, teacher, task, want, batch_size, device, meter, progress)


def _find(base: Path, fp: str, task: TaskData, want: _Layout, k_extra: int) -> TeacherOutputs | None:
    """An existing entry that covers ``want`` (the exact layout first), or None.

    ``k_extra`` is the ``K`` of the larger entries tried (those with hidden states or maps).
    """
    for h in dict.fromkeys([want.hidden, True]):
        for a in dict.fromkeys([want.attention, True]):
            layout = _Layout(h, a, k_extra if h or a else 0)
            if not layout.covers(want):
                continue
            folder = base / cache_key(fp, task, layout)
            if not (folder / "meta.json").exists():
                continue
            try:
                out = TeacherOutputs(folder)
            except (OSError, ValueError, KeyError) as e:  # a corrupt entry is rebuilt, not fatal
                log.warning("ignoring unreadable teacher-outputs cache %s: %s", folder, e)
                continue
            log.info("teacher outputs cache hit %s", out)
            return out
    return None


def _build(folder: Path, teacher: Teacher, task: TaskData, layout: _Layout, batch_size: int, device: str,
           meter: EnergyMeter | None, progress: Callable[[int, int], None] | None) -> TeacherOutputs:
    """Run the teacher, write the entry to a temporary folder and rename it into place."""
    dev = resolve_device(device)
    book = (TrainingMeter(meter, str(dev), batch_size=batch_size, seq_len=task.max_len, key="teacher-cache")
            if meter is not None else None)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    params = list(teacher.model.parameters())
    prev = params[0].device if params else torch.device("cpu")
    teacher.to(dev).eval()
    writer = _Writer(tmp, task.n_train, task.max_len, layout)
    if book is not None:
        book.start()
    try:
        n_batches = _run_teacher(teacher, task, writer, batch_size, dev, progress)
        writer.close()
    except BaseException:
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if book is not None:
            book.stop()
        teacher.to(prev)
    cost = book.summary(steps=n_batches, final_loss=float("nan"), teacher=teacher.name) if book else None
    meta = {"teacher": teacher.name, "teacher_fingerprint": teacher.fingerprint, "task": task.name,
            "task_fingerprint": task.fingerprint, "max_len": task.max_len, "n_examples": task.n_train,
            "num_labels": task.num_labels, "hidden": layout.hidden, "attention": layout.attention,
            "hidden_examples": layout.k, "attention_layers": writer.attn_layers, "batch_size": batch_size,
            "format_version": FORMAT_VERSION}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    _publish(tmp, folder)
    out = TeacherOutputs(folder, build_cost=cost)
    log.info("built teacher outputs %s in %d batches", out, n_batches)
    return out


def _publish(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` to ``folder``, replacing an unreadable entry that holds the name (under the lock)."""
    if folder.exists():
        trash = folder.with_name(f"{folder.name}.old{os.getpid()}")
        folder.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    tmp.rename(folder)


def _run_teacher(teacher: Teacher, task: TaskData, writer: _Writer, batch_size: int, dev: torch.device,
                 progress: Callable[[int, int], None] | None) -> int:
    """Run the teacher over the training split; returns the number of batches.

    The first ``K`` rows (when hidden states or attention maps are stored) run in file order; the rest
    need logits only and run sorted by length, so a batch computes almost no padding.
    """
    batches = _batch_rows(task, writer.layout, batch_size)
    with torch.no_grad():
        for b, (rows, extra) in enumerate(batches):
            ids, mask = trim_batch(task.train_ids[rows], task.train_mask[rows])
            out = teacher(ids.to(dev), attention_mask=mask.to(dev),
                          output_hidden_states=writer.layout.hidden and extra,
                          output_attentions=writer.layout.attention and extra)
            writer.write(rows, out, extra)
            if progress is not None:
                progress(b + 1, len(batches))
    return len(batches)


def _batch_rows(task: TaskData, layout: _Layout, batch_size: int) -> list[tuple[torch.Tensor, bool]]:
    """The build's batches: ``(row indices, whether hidden states and maps are stored for them)``."""
    n = task.n_train
    k = min(layout.k, n) if (layout.hidden or layout.attention) else 0
    out = [(torch.arange(i, min(k, i + batch_size)), True) for i in range(0, k, batch_size)]
    rest = k + torch.argsort(task.train_mask[k:].sum(dim=1), descending=True, stable=True)
    out += [(rows, False) for rows in torch.split(rest, batch_size)]
    return out


class _Writer:
    """Writes the entry's arrays into ``tmp``; each is allocated (and its disk space reserved) on first use."""

    def __init__(self, tmp: Path, n: int, max_len: int, layout: _Layout) -> None:
        self.tmp, self.n, self.max_len, self.layout = tmp, n, max_len, layout
        self.maps: dict[str, np.memmap[Any, Any]] = {}
        self.attn_layers: list[bool] = []

    def _array(self, name: str, dtype: type[np.generic], shape: tuple[int, ...]) -> np.memmap[Any, Any]:
        if name not in self.maps:
            path = self.tmp / f"{name}.npy"
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            if hasattr(os, "posix_fallocate"):  # a full disk fails here, not as SIGBUS on a later write
                with open(path, "r+b") as f:
                    os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
            self.maps[name] = mm
        return self.maps[name]

    def write(self, rows: torch.Tensor, out: Any, extra: bool) -> None:
        """Store the teacher's output on the (trimmed) batch of ``rows``; ``extra`` rows are the first K, in order."""
        logits = out.logits.float().cpu().numpy()
        self._array("logits", np.float32, (self.n, logits.shape[1]))[rows.numpy()] = logits
        if not extra:
            return
        i, kk = int(rows[0]), len(rows)
        if self.layout.hidden:
            hs = torch.stack(list(out.hidden_states), dim=1)[:kk]  # (kk, L+1, T, d)
            shape = (self.layout.k, hs.shape[1], self.max_len, hs.shape[3])
            self._array("hidden", np.float16, shape)[i:i + kk, :, :hs.shape[2]] = _half(hs)
        if self.layout.attention:
            maps = list(out.attentions)
            self.attn_layers = [m is not None for m in maps]
            ref = next(m for m in maps if m is not None) if any(self.attn_layers) else None
            if ref is None:
                raise ConfigError("the teacher returns no attention maps (linear or low-rank attention)",
                                  field="distill.kind", value="attention",
                                  fix="use distill kind hidden or logit with this teacher")
            att = torch.stack([m if m is not None else torch.zeros_like(ref) for m in maps], dim=1)[:kk]
            a_shape = (self.layout.k, att.shape[1], att.shape[2], self.max_len, self.max_len)
            self._array("attn", np.float16, a_shape)[i:i + kk, :, :, :att.shape[3], :att.shape[4]] = _half(att)

    def close(self) -> None:
        """Flush and drop the maps."""
        for mm in self.maps.values():
            mm.flush()
        self.maps.clear()


def _half(x: torch.Tensor) -> np.ndarray[Any, Any]:
    """``x`` as float16 numpy, refusing values float16 cannot hold."""
    x = x.float()
    if bool((x.abs() > _F16_MAX).any()):
        raise ConfigError(f"the teacher's activations reach {float(x.abs().max()):.3g}, beyond float16",
                          field="distill.kind", fix="distill with kind logit (logits are stored in float32)")
    return x.to(torch.float16).cpu().numpy()
