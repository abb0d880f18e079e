"""Teachers for distillation: a local Hugging Face classifier folder, or one the service trains itself.

``load_teacher(spec, task)``:

- ``None`` / ``""`` / ``"none"``: no teacher.
- a folder path: any local ``AutoModelForSequenceClassification`` folder (``config.json`` plus weights)
  with its tokenizer; loaded with ``local_files_only=True`` and ``attn_implementation="eager"`` (the fused
  kernels do not return attention maps). Its ``num_labels`` must equal the task's, in the same label
  order. The student must use the teacher's tokenizer: ``task = teacher.adapt_task(task)``.
- a fine-tuned teacher's folder (written by :func:`evaluators.teacher_fit.fit_teacher`:
  ``model.safetensors`` + ``candidate.json`` + ``meta.json`` + the Hugging Face tokenizer files): our own
  model in the teacher's layout, loaded by :func:`load_saved_teacher`.
- ``"auto"``: a bigger model of our own family (default 4 layers, ``d_model`` 128, 4 heads, FFN 256,
  softmax), trained on the task and cached on disk under ``<cache>/teachers/<key>/`` as
  ``model.safetensors`` + ``candidate.json`` + ``meta.json``. The key covers the task fingerprint (data,
  tokenizer, length), the seed, the step budget, the candidate and the optimiser settings, so a second
  call with the same arguments loads instead of training.

Nothing is downloaded: every load is local.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from evaluators.hf_teacher import check_hf_folder, check_teacher_head, load_hf_encoder, warn_unknown_tokens
from evaluators.locks import file_lock
from evaluators.metrics import evaluate
from evaluators.tasks import TaskData
from evaluators.tokenize import TextTokenizer, cache_dir, load_tokenizer
from evaluators.train import TrainResult, build_for_task, resolve_device, train
from evaluators.train_meter import TrainingMeter
from nas.config import Candidate, TrainConfig
from nas.errors import ConfigError
from nas.models import build, load_unique_state, unique_state
from nas.records import TrainSummary
from nas.teacher_shape import TeacherShape

if TYPE_CHECKING:
    from evaluators.meters import EnergyMeter

__all__ = ["Teacher", "load_teacher", "load_hf_teacher", "self_trained_teacher", "default_teacher_candidate",
           "load_saved_teacher", "is_saved_teacher", "train_and_evaluate", "save_teacher_folder"]

log = logging.getLogger(__name__)


class Teacher:
    """A frozen teacher: a module returning ``ModelOutput`` plus the shape facts distillation needs.

    Args:
        name: Human-readable identity (the folder path, or ``auto:<cache key>``).
        model: Module called as ``model(ids, attention_mask=..., output_hidden_states=...,
            output_attentions=...)``; an :class:`~nas.models.EncoderClassifier` for both kinds (a Hugging
            Face folder is converted, :func:`evaluators.hf_teacher.load_hf_encoder`).
        tokenizer: The tokenizer whose ids the teacher reads.
        n_layers: Number of blocks.
        d_model: Hidden width.
        n_heads: Attention heads per block.
        kind: ``"hf"`` or ``"auto"``.
        dev_accuracy: The teacher's dev accuracy on the task, when known.
        training: What training it here cost (a cache miss); ``None`` when it was loaded. Taken once by
            :meth:`take_training`, so its joules are counted once however often the teacher is reused.
        shape: A Hugging Face teacher's shape (from its ``config.json``); None for a self-trained one.
        head_fits: Whether the classification head was trained for the task's labels (False: a fresh head,
            to be fine-tuned).
    """

    def __init__(self, name: str, model: nn.Module, tokenizer: TextTokenizer, n_layers: int, d_model: int,
                 n_heads: int, kind: str, dev_accuracy: float | None = None,
                 training: TrainSummary | None = None, *, shape: TeacherShape | None = None,
                 head_fits: bool = True) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.n_layers = n_layers
        self.d_model = d_model
        self.n_heads = n_heads
        self.kind = kind
        self.dev_accuracy = dev_accuracy
        self._training = training
        self.shape = shape
        self.head_fits = head_fits
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 output_hidden_states: bool = False, output_attentions: bool = False) -> Any:
        """Run the frozen model on a batch; returns its ``ModelOutput``."""
        return self.model(input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states,
                          output_attentions=output_attentions)

    def to(self, device: torch.device | str) -> Teacher:
        """Move the model to ``device``; returns the teacher itself."""
        self.model.to(device)
        return self

    def eval(self) -> Teacher:
        """Put the model in eval mode; returns the teacher itself."""
        self.model.eval()
        return self

    _fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """Content hash of the weights, computed once (the weights are frozen).

        sha1 over every ``state_dict`` entry, in sorted key order: its name, shape, dtype and bytes.
        The key of anything computed from this teacher (:mod:`evaluators.teacher_cache`).
        """
        if self._fingerprint is None:
            h = hashlib.sha1()
            state = self.model.state_dict()
            for name in sorted(state):
                t = state[name].detach().to("cpu").contiguous()
                h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()[:20]
        return self._fingerprint

    def take_training(self) -> TrainSummary | None:
        """The cost of training this teacher, the first time it is asked for; ``None`` afterwards."""
        training, self._training = self._training, None
        return training

    def adapt_task(self, task: TaskData) -> TaskData:
        """``task`` re-encoded with the teacher's tokenizer (returned unchanged when it already is).

        For a Hugging Face teacher, warns when its tokenizer maps more than
        :data:`evaluators.hf_teacher.UNK_WARN_SHARE` of the task's tokens to the unknown token.
        """
        if self.tokenizer.fingerprint != task.tokenizer.fingerprint:
            task = task.with_tokenizer(self.tokenizer)
        if self.kind == "hf":
            warn_unknown_tokens(task, self.name)
        return task

    def __repr__(self) -> str:
        return (f"Teacher(name={self.name!r}, kind={self.kind!r}, n_layers={self.n_layers}, "
                f"d_model={self.d_model}, n_heads={self.n_heads})")


def load_hf_teacher(path: str | Path, num_labels: int | None = None, *, fine_tune: bool = False) -> Teacher:
    """Load a local Hugging Face folder (model and tokenizer), converted into our model, as a teacher.

    Args:
        path: The folder (BERT, RoBERTa, DistilBERT or MiniLM; with or without a classification head).
        num_labels: The task's number of labels; None takes the folder head's.
        fine_tune: The caller will fine-tune the teacher on the task, so a head that does not fit (another
            label count, or none) is no error: it comes back freshly initialised (``head_fits`` False).

    Raises:
        ConfigError: A bad folder (:func:`evaluators.hf_teacher.check_hf_folder`), or a head that does not
            fit the task's labels when ``fine_tune`` is False.
    """
    d = Path(path).expanduser()
    shape = check_hf_folder(d)
    if not fine_tune and num_labels is not None:
        check_teacher_head(shape, num_labels, value=str(d))
    enc = load_hf_encoder(d, num_labels)
    return Teacher(str(d), enc.model, enc.tokenizer, shape.n_layers, shape.d_model, shape.n_heads, kind="hf",
                   shape=shape, head_fits=enc.head_fits)


def default_teacher_candidate(task: TaskData) -> Candidate:
    """The self-trained teacher's architecture: 4 layers, d_model 128, 4 heads, FFN 256, softmax."""
    return Candidate(n_layers=4, d_model=128, n_heads=4, d_ffn=256, dropout=0.1,
                     max_len=max(8, task.max_len), pooling="mean")


def self_trained_teacher(task: TaskData, *, seed: int = 0, steps: int = 1500,
                         candidate: Candidate | None = None, batch_size: int = 32, lr: float = 1e-3,
                         device: str = "auto", root: str | Path | None = None,
                         meter: EnergyMeter | None = None,
                         step_callback: Callable[[], None] | None = None) -> Teacher:
    """Train (or load from the cache) a bigger model of our own family on ``task``.

    Workers that miss the cache at the same time train it once: the first takes a file lock on the
    cache entry, the others wait for it and load.

    Args:
        task: The task (its tokenizer becomes the teacher's).
        seed: Seed of the teacher's initialisation and batch order.
        steps: Training steps.
        candidate: Architecture; default :func:`default_teacher_candidate`.
        batch_size: Training batch size.
        lr: Peak learning rate.
        device: Where to train when the cache misses.
        root: Cache folder; default :func:`evaluators.tokenize.cache_dir`.
        meter: Meters the training on a cache miss (window ``teacher``); the cost is on
            :meth:`Teacher.take_training`.
        step_callback: Called after every training step (the measurement lane's step boundary).

    Returns:
        The teacher, in eval mode with gradients off.
    """
    cand = candidate or default_teacher_candidate(task)
    key_src = json.dumps([task.fingerprint, seed, steps, cand.to_json(), batch_size, lr, 1])
    key = hashlib.sha1(key_src.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", task.name.split("/")[-1] or "task").strip("-")[:40]
    folder = (Path(root) if root is not None else cache_dir()) / "teachers" / f"{slug}-{key}"
    name = f"auto:{slug}-{key}"
    locks = folder.parent.parent / "teacher-locks"
    locks.mkdir(parents=True, exist_ok=True)
    with file_lock(locks / f"{folder.name}.lock"):
        cached = _load_cached_teacher(folder, name, cand, task, seed)
        if cached is not None:
            return cached
        cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device)
        return _train_teacher(folder, name, cand, task, cfg, meter, step_callback)


def _read_saved(folder: Path, vocab_size: int, num_labels: int) -> tuple[nn.Module, Candidate, dict[str, Any]]:
    """The model, candidate and meta of a saved teacher folder (``model.safetensors`` + JSON files)."""
    cand = Candidate.from_json((folder / "candidate.json").read_text())
    meta = json.loads((folder / "meta.json").read_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # every weight is overwritten below; the seed only keeps global RNG untouched
        model = build(cand, vocab_size=vocab_size, num_labels=num_labels)
    load_unique_state(model, load_file(str(folder / "model.safetensors")))
    return model, cand, meta


def _load_cached_teacher(folder: Path, name: str, cand: Candidate, task: TaskData, seed: int) -> Teacher | None:
    if not (folder / "model.safetensors").exists():
        return None
    try:
        model, _cand, meta = _read_saved(folder, task.vocab_size, task.num_labels)
    except Exception as e:  # a corrupt entry is retrained, not fatal
        log.warning("ignoring unreadable cached teacher %s: %s", folder, e)
        return None
    log.info("loaded cached teacher %s (dev accuracy %s)", folder, meta.get("dev_accuracy"))
    return Teacher(name, model, task.tokenizer, cand.n_layers, cand.d_model, cand.n_heads,
                   kind="auto", dev_accuracy=meta.get("dev_accuracy"))


def is_saved_teacher(folder: str | Path) -> bool:
    """Whether ``folder`` holds a saved teacher of ours (a fine-tuned one): weights, candidate and meta."""
    d = Path(folder).expanduser()
    return all((d / f).is_file() for f in ("model.safetensors", "candidate.json", "meta.json"))


def load_saved_teacher(folder: str | Path, num_labels: int | None = None, *,
                       training: TrainSummary | None = None) -> Teacher:
    """Load a fine-tuned teacher's folder (see :func:`evaluators.teacher_fit.fit_teacher`).

    Args:
        folder: ``model.safetensors``, ``candidate.json``, ``meta.json`` and the tokenizer's files.
        num_labels: The task's label count, checked against the saved head when given.
        training: What making the folder cost, when the caller just made it (charged once, see
            :meth:`Teacher.take_training`).

    Raises:
        ConfigError: The folder is incomplete or unreadable, or its labels do not fit the task.
    """
    d = Path(folder).expanduser()
    fix = "fit it again with `nas teacher fit DIR --task T` (or delete the folder so the search refits it)"
    try:
        meta = json.loads((d / "meta.json").read_text())
        if num_labels is not None and int(meta["num_labels"]) != int(num_labels):
            raise ConfigError(f"the fine-tuned teacher has {meta['num_labels']} labels but the task has "
                              f"{num_labels}", field="teacher", value=str(d),
                              fix="fine-tune the source model on this task (teacher: {path: DIR, fine_tune: {}})")
        model, cand, meta = _read_saved(d, int(meta["vocab_size"]), int(meta["num_labels"]))
        tok = load_tokenizer(d)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"unreadable fine-tuned teacher folder ({type(e).__name__}: {e})", field="teacher",
                          value=str(d), fix=fix) from e
    name = str(meta.get("name") or d)
    log.info("loaded fine-tuned teacher %s from %s (dev accuracy %s)", name, d, meta.get("dev_accuracy"))
    return Teacher(name, model, tok, cand.n_layers, cand.d_model, cand.n_heads, kind=str(meta.get("kind", "hf")),
                   dev_accuracy=meta.get("dev_accuracy"), training=training)


def _train_teacher(folder: Path, name: str, cand: Candidate, task: TaskData, cfg: TrainConfig,
                   meter: EnergyMeter | None, step_callback: Callable[[], None] | None) -> Teacher:
    t0 = time.perf_counter()
    model = build_for_task(cand, task, cfg.seed)
    res, acc, training = train_and_evaluate(
        model, task, cfg, meter, key="teacher",
        callback=(lambda _s, _m: step_callback()) if step_callback else None)
    meta = {"task": task.name, "task_fingerprint": task.fingerprint, "seed": cfg.seed, "steps": res.steps,
            "dev_accuracy": acc, "final_loss": res.final_loss, "train_wall_s": res.wall_s,
            "vocab_size": task.vocab_size, "num_labels": task.num_labels}
    save_teacher_folder(folder, model, cand, meta)
    log.info("trained teacher on %s: %d steps, %.1fs, dev accuracy %.4f", task.name, res.steps,
             time.perf_counter() - t0, acc)
    return Teacher(name, model, task.tokenizer, cand.n_layers, cand.d_model, cand.n_heads, kind="auto",
                   dev_accuracy=acc, training=training)


def train_and_evaluate(model: nn.Module, task: TaskData, cfg: TrainConfig, meter: EnergyMeter | None, *,
                       key: str, callback: Callable[[int, nn.Module], bool | None] | None = None,
                       ) -> tuple[TrainResult, float, TrainSummary | None]:
    """Train a teacher on ``task`` and take its dev accuracy, metered as one window named ``key``.

    Returns:
        ``(result, dev accuracy, cost)``; the cost is ``None`` without a meter. The model is left on the CPU.
    """
    book = TrainingMeter(meter, str(resolve_device(cfg.device)), batch_size=cfg.batch_size,
                         seq_len=task.max_len, key=key) if meter is not None else None
    if book is not None:
        book.start()
    try:
        res = train(model, task, cfg, callback=callback)
        acc = evaluate(model, task, cfg.eval_batch_size).accuracy
    finally:
        if book is not None:
            book.stop()
    training = book.summary(steps=res.steps, final_loss=res.final_loss, teacher=None) if book else None
    model.to("cpu")
    return res, acc, training


def save_teacher_folder(folder: Path, model: nn.Module, cand: Candidate, meta: dict[str, Any],
                        tokenizer: TextTokenizer | None = None) -> bool:
    """Write a teacher's folder atomically: a temporary folder renamed into place.

    ``model.safetensors``, ``candidate.json``, ``meta.json`` and, when given, the tokenizer's files. An
    existing ``folder`` (another worker's) is kept; a failed write is logged, never fatal.

    Returns:
        Whether ``folder`` now holds a complete teacher.
    """
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        save_file(unique_state(model), str(tmp / "model.safetensors"))
        (tmp / "candidate.json").write_text(cand.to_json())
        if tokenizer is not None:
            tokenizer.save(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if folder.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(folder)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning("could not cache the teacher in %s: %s", folder, e)
        return False
    return True


def load_teacher(spec: str | None, task: TaskData, *, seed: int = 0, steps: int = 1500,
                 candidate: Candidate | None = None, device: str = "auto",
                 root: str | Path | None = None, meter: EnergyMeter | None = None,
                 step_callback: Callable[[], None] | None = None) -> Teacher | None:
    """Resolve a teacher spec.

    Args:
        spec: ``None``/``"none"`` (no teacher), ``"auto"`` (self-trained, cached), a fine-tuned teacher's
            folder (:func:`load_saved_teacher`), or a local Hugging Face sequence-classification folder.
        task: The task the student trains on.
        seed: Self-trained teacher only: its seed.
        steps: Self-trained teacher only: its training steps.
        candidate: Self-trained teacher only: its architecture.
        device: Self-trained teacher only: where to train it on a cache miss.
        root: Cache folder.
        meter: Self-trained teacher only: meters its training on a cache miss.
        step_callback: Self-trained teacher only: called after every training step.

    Returns:
        The teacher, or ``None``. For a Hugging Face teacher, re-encode the task with
        :meth:`Teacher.adapt_task` before building the student.
    """
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    if spec.strip().lower() == "auto":
        return self_trained_teacher(task, seed=seed, steps=steps, candidate=candidate, device=device,
                                    root=root, meter=meter, step_callback=step_callback)
    if is_saved_teacher(spec):
        return load_saved_teacher(spec, num_labels=task.num_labels)
    return load_hf_teacher(spec, num_labels=task.num_labels)
