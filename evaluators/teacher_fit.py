"""Fine-tuning a Hugging Face teacher on the task, cached by content hash.

A local Hugging Face folder whose classification head does not fit the task (no head, or another label
count) cannot teach as it is: :func:`fit_teacher` converts it into our own model
(:func:`evaluators.hf_teacher.load_hf_encoder`, with a fresh head), fine-tunes it on the task with the
students' training loop (:func:`evaluators.train.train`, metered as a ``teacher-fit`` window) and saves
it under ``<cache>/teachers/ft-<key>/`` (``model.safetensors``, ``candidate.json``, ``meta.json`` and the
teacher's tokenizer files), which :func:`evaluators.teacher.load_teacher` loads like any teacher folder.

The key is a SHA-1 over the model folder's content (the names, sizes and bytes of its config, weight and
tokenizer files), the task's data identity (name, source, seed, row length, split sizes), the fine-tuning
settings, the seed and :data:`FORMAT_VERSION`; the folder's path is not part of it. A second call with
the same inputs loads the cached folder's facts without training. Workers that miss at the same time fit
it once: the first takes a file lock, the others wait and find it cached.

:func:`resolve_teacher` is what a study (or ``nas trial``) calls: it returns the folder trials load,
fine-tuning first when the head does not fit or ``fine_tune`` was asked for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open

from evaluators.hf_teacher import check_hf_folder, load_hf_encoder
from evaluators.locks import file_lock
from evaluators.tasks import TaskData, load_task, replace
from evaluators.teacher import (
    Teacher,
    is_saved_teacher,
    load_saved_teacher,
    load_teacher,
    save_teacher_folder,
    train_and_evaluate,
)
from evaluators.tokenize import cache_dir
from nas.config import TrainConfig
from nas.errors import ConfigError
from nas.records import TrainSummary
from nas.spec import FineTuneSpec, TeacherSpec

if TYPE_CHECKING:
    from evaluators.meters import EnergyMeter

__all__ = ["FittedTeacher", "ResolvedTeacher", "FitProgress", "FORMAT_VERSION", "fit_teacher", "fit_key",
           "folder_digest", "head_fits", "resolve_teacher"]

log = logging.getLogger(__name__)

#: Bump when the fitted folder's layout or the fitting recipe changes: old entries are then refitted.
FORMAT_VERSION = 1
#: ``progress(done, total)`` after every fine-tuning step.
FitProgress = Callable[[int, int], None]
#: Files of a model folder that make its content (config, weights, tokenizer); others (a README) do not.
_CONTENT_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")
_HEAD_PREFIXES = ("classifier.", "score.")


@dataclass(frozen=True)
class FittedTeacher:
    """A fine-tuned teacher's folder and what it cost.

    Attributes:
        folder: ``<cache>/teachers/ft-<key>/``, loadable with :func:`evaluators.teacher.load_teacher`.
        source: The Hugging Face folder it was fine-tuned from (as given).
        key: The cache key (16 hex digits).
        dev_accuracy: Its dev accuracy on the task after fine-tuning.
        training: The fine-tuning's cost (steps, seconds, joules with meter and estimate flag) when this
            call trained it; ``None`` on a cache hit.
        cached: Whether the folder was found in the cache (no training).
        meta: The folder's ``meta.json`` (settings, steps, wall time and joules of the original fitting).
    """

    folder: Path
    source: str
    key: str
    dev_accuracy: float | None
    training: TrainSummary | None
    cached: bool
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        """The teacher's name in records: ``<source> (fine-tuned ft-<key>)``."""
        return f"{self.source} (fine-tuned ft-{self.key})"


@dataclass(frozen=True)
class ResolvedTeacher:
    """What trials load: ``path`` (``auto``, the Hugging Face folder, or its fine-tuned folder).

    Attributes:
        path: The teacher string trials pass to :func:`evaluators.teacher.load_teacher`.
        source: The spec's path.
        fitted: The fine-tuning behind ``path``, or ``None`` when the folder teaches as it is.
    """

    path: str
    source: str
    fitted: FittedTeacher | None = None

    def load(self, task: TaskData, *, seed: int = 0, device: str = "auto", meter: EnergyMeter | None = None,
             step_callback: Callable[[], None] | None = None) -> Teacher | None:
        """The teacher itself; a fine-tuning done by this resolution is charged to it (once)."""
        if self.fitted is not None:
            return load_saved_teacher(self.fitted.folder, task.num_labels, training=self.fitted.training)
        return load_teacher(self.path, task, seed=seed, device=device, meter=meter, step_callback=step_callback)


def folder_digest(path: str | Path) -> str:
    """SHA-1 over a model folder's content: name, size and bytes of each config, weight and tokenizer file.

    Raises:
        ConfigError: ``path`` is not a folder, or has none of those files.
    """
    d = Path(path).expanduser()
    files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix in _CONTENT_SUFFIXES
                   and not f.name.startswith(".")) if d.is_dir() else []
    if not files:
        raise ConfigError("teacher folder not found or has no model files", field="teacher", value=str(d),
                          fix="pass a folder written by model.save_pretrained(...) and tokenizer.save_pretrained")
    h = hashlib.sha1()
    for f in files:
        h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def _data_identity(task: TaskData) -> list[Any]:
    """What the task's examples are, whatever tokenizer encoded them (the teacher's re-encodes them)."""
    return [task.name, task.source, task.seed, task.max_len, task.n_train, task.n_dev, task.n_test,
            list(task.label_names)]


def fit_key(path: str | Path, task: TaskData, settings: FineTuneSpec, seed: int) -> str:
    """The cache key of fine-tuning the folder at ``path`` on ``task`` with ``settings`` and ``seed``."""
    src = json.dumps([folder_digest(path), _data_identity(task), settings.model_dump(mode="json"), seed,
                      FORMAT_VERSION])
    return hashlib.sha1(src.encode()).hexdigest()[:16]


def _head_weights_present(folder: Path) -> bool:
    """Whether the weights hold a classification head (``classifier.*``/``score.*``); trusted for ``.bin``."""
    st = sorted(folder.glob("*.safetensors"))
    if not st:
        return any(folder.glob("*.bin"))
    for f in st:
        with safe_open(str(f), framework="pt") as fh:
            if any(k.startswith(_HEAD_PREFIXES) or ".classifier." in k for k in fh.keys()):  # noqa: SIM118
                return True
    return False


def head_fits(path: str | Path, num_labels: int) -> bool:
    """Whether the folder's classification head fits a task of ``num_labels`` labels.

    It does when ``config.json`` names a sequence-classification architecture with that label count and
    the weights hold the head. A saved (fine-tuned) teacher's folder is checked against its ``meta.json``.

    Raises:
        ConfigError: Not a teacher folder (see :func:`evaluators.hf_teacher.check_hf_folder`).
    """
    d = Path(path).expanduser()
    if is_saved_teacher(d):
        try:
            return int(json.loads((d / "meta.json").read_text())["num_labels"]) == int(num_labels)
        except (OSError, ValueError, KeyError, TypeError):
            return False
    return check_hf_folder(d).num_labels == int(num_labels) and _head_weights_present(d)


def _first_rows(task: TaskData, n: int | None) -> TaskData:
    """``task`` with only its first ``n`` training rows (dev and test unchanged)."""
    if n is None or n >= task.n_train:
        return task
    return replace(task, train_texts=task.train_texts[:n], train_labels=task.train_labels[:n],
                   train_ids=task.train_ids[:n], train_mask=task.train_mask[:n], train_y=task.train_y[:n])


def _cached(folder: Path, source: str, key: str) -> FittedTeacher | None:
    """The cache entry's facts, or None (an incomplete entry is removed, so the refit can take its place)."""
    if not is_saved_teacher(folder):
        if folder.exists():
            log.warning("refitting incomplete cached teacher %s", folder)
            shutil.rmtree(folder, ignore_errors=True)
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as e:
        log.warning("refitting unreadable cached teacher %s: %s", folder, e)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    log.info("reusing fine-tuned teacher %s (dev accuracy %s)", folder, meta.get("dev_accuracy"))
    return FittedTeacher(folder=folder, source=source, key=key, dev_accuracy=meta.get("dev_accuracy"),
                         training=None, cached=True, meta=meta)


def fit_teacher(path: str | Path, task: TaskData, settings: FineTuneSpec | None = None, *, seed: int = 0,
                device: str = "auto", meter: EnergyMeter | None = None, progress: FitProgress | None = None,
                root: str | Path | None = None) -> FittedTeacher:
    """Fine-tune the Hugging Face folder at ``path`` on ``task`` (or find it in the cache).

    Args:
        path: A local Hugging Face folder (config, weights, tokenizer), with or without a head.
        task: The task, in any tokenizer: it is re-encoded with the teacher's.
        settings: Steps, learning rate, batch size, warmup and ``max_examples`` (the first N training
            rows); default :class:`nas.spec.FineTuneSpec`.
        seed: Seed of the batch order (and part of the cache key).
        device: Where to fine-tune on a cache miss.
        meter: Meters the fine-tuning (window ``teacher-fit``); without one the cost has no joules.
        progress: ``progress(done, total)`` after every step.
        root: Cache folder; default :func:`evaluators.tokenize.cache_dir`.

    Returns:
        The fitted folder with its dev accuracy; ``training`` is ``None`` on a cache hit.

    Raises:
        ConfigError: Not a model folder, an unknown model type, or rows longer than its positions.
    """
    settings = settings or FineTuneSpec()
    source = str(path)
    key = fit_key(path, task, settings, seed)
    folder = (Path(root) if root is not None else cache_dir()) / "teachers" / f"ft-{key}"
    locks = folder.parent.parent / "teacher-locks"
    locks.mkdir(parents=True, exist_ok=True)
    with file_lock(locks / f"{folder.name}.lock"):
        hit = _cached(folder, source, key)
        if hit is not None:
            return hit
        return _fit(Path(path).expanduser(), source, key, folder, task, settings, seed=seed, device=device,
                    meter=meter, progress=progress)


def _fit(path: Path, source: str, key: str, folder: Path, task: TaskData, settings: FineTuneSpec, *, seed: int,
         device: str, meter: EnergyMeter | None, progress: FitProgress | None) -> FittedTeacher:
    t0 = time.perf_counter()
    enc = load_hf_encoder(path, task.num_labels)  # a head that does not fit comes back fresh
    model, cand = enc.model, enc.model.candidate
    if task.max_len > cand.max_len:
        raise ConfigError(f"task rows have {task.max_len} tokens but the teacher has {cand.max_len} positions",
                          field="max_len", value=task.max_len, fix=f"load the task with max_len <= {cand.max_len}")
    data = _first_rows(task, settings.max_examples)  # cut first: only the rows used are re-encoded
    if data.tokenizer.fingerprint != enc.tokenizer.fingerprint:
        data = data.with_tokenizer(enc.tokenizer)
    cfg = TrainConfig(steps=settings.steps, lr=settings.lr, batch_size=settings.batch_size,
                      warmup_fraction=settings.warmup_fraction, group_by_length=settings.group_by_length,
                      seed=seed, device=device)
    total = settings.steps

    def step(done: int, _m: Any) -> None:
        if progress is not None:
            progress(done, total)

    log.info("fine-tuning %s on %s: %d steps, batch %d, lr %g, %d training rows", source, task.name, total,
             cfg.batch_size, cfg.lr, data.n_train)
    res, acc, training = train_and_evaluate(model, data, cfg, meter, key="teacher-fit", callback=step)
    summary = training if training is not None else res.to_summary()
    meta = {"format": "nas-fine-tuned-teacher", "version": FORMAT_VERSION, "kind": "hf",
            "name": f"{source} (fine-tuned ft-{key})", "source": source, "key": key,
            "task": task.name, "task_identity": _data_identity(task), "max_len": task.max_len,
            "label_names": list(task.label_names), "num_labels": task.num_labels,
            "vocab_size": int(model.tok_emb.num_embeddings), "head_was_fresh": not enc.head_fits,
            "shape": enc.shape.to_json(),
            "settings": settings.model_dump(mode="json"), "seed": seed, "n_train_used": data.n_train,
            "dev_accuracy": acc, "steps": res.steps, "final_loss": res.final_loss, "wall_s": summary.wall_s,
            "energy_j": summary.energy_j, "meter": summary.meter, "is_estimate": summary.is_estimate,
            "device": summary.device}
    save_teacher_folder(folder, model, cand, meta, tokenizer=enc.tokenizer)
    log.info("fine-tuned %s: %d steps in %.1f s, dev accuracy %.4f -> %s", source, res.steps,
             time.perf_counter() - t0, acc, folder)
    return FittedTeacher(folder=folder, source=source, key=key, dev_accuracy=acc, training=summary, cached=False,
                         meta=meta)


def resolve_teacher(spec: TeacherSpec | str | None, task: TaskData | str, *, seed: int = 0,
                    max_len: int | None = None, device: str = "auto", meter: EnergyMeter | None = None,
                    progress: FitProgress | None = None, root: str | Path | None = None) -> ResolvedTeacher | None:
    """The teacher trials load, fine-tuning first where the spec's folder cannot teach the task as it is.

    ``auto`` and a folder whose head fits (same label count, head weights present) are returned as they
    are, unless ``fine_tune`` is given; any other folder is fine-tuned (``spec.fine_tune`` or the
    defaults) through :func:`fit_teacher`, cached.

    Args:
        spec: The study's teacher (a plain string is ``{path: ...}``); ``None`` or ``"none"``: no teacher.
        task: The task, or its spec string (then loaded with ``seed`` and ``max_len``).
        seed: The study's seed (``spec.train.seed``).
        max_len: Row length when ``task`` is a string (the students' ``max_len``).
        device: Where to fine-tune on a cache miss.
        meter: Meters a fine-tuning.
        progress: ``progress(done, total)`` per fine-tuning step.
        root: Cache folder.

    Returns:
        ``None`` without a teacher, else the folder (or ``auto``) to load and the fine-tuning behind it.
    """
    if isinstance(spec, str):
        spec = None if spec.strip().lower() in ("", "none") else TeacherSpec(path=spec)
    if spec is None:
        return None
    if spec.is_auto:
        return ResolvedTeacher(path=spec.path, source=spec.path)
    data = task if isinstance(task, TaskData) else load_task(task, seed=seed, max_len=max_len)
    if spec.fine_tune is None and head_fits(spec.path, data.num_labels):
        return ResolvedTeacher(path=spec.path, source=spec.path)
    if spec.fine_tune is None:
        log.info("teacher %s has no head for %d labels: fine-tuning it on %s first", spec.path, data.num_labels,
                 data.name)
    fitted = fit_teacher(spec.path, data, spec.fine_tune, seed=seed, device=device, meter=meter,
                         progress=progress, root=root)
    return ResolvedTeacher(path=str(fitted.folder), source=spec.path, fitted=fitted)
