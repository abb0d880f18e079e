"""``export_trial``: a stored trial to ONNX, TorchScript and an HF-style folder, with parity and a card.

Steps: check the arguments and ``--out`` (cheap, before any work); read the trial, its study spec and
its weights from the database; optionally train longer and re-measure (``--retrain``); bake masks and
fake-quant grids into plain weights; write each format into a temporary folder beside ``--out``; run the
held-out split through every written file and through PyTorch; write ``metrics.json`` and the card; and
only then move the folder into place. Any failure removes the temporary folder, so ``--out`` is never
left half-written (and an existing ``--out`` replaced with ``--force`` survives a failed export).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nas.compress import materialize_
from nas.compress.pack import pack_plan
from nas.config import Candidate
from nas.errors import ConfigError, ExportError
from nas.records import TrialResult

from .base import ExportedFile, Exporter, ExportInputs
from .card import CardInputs, energy_label, fmt, metrics_json, render_card
from .formats import EXPORTERS, FORMATS, all_formats
from .loaded import LoadedModel
from .parity import MIN_AGREEMENT, ParityResult, batches, check_parity, reference_logits
from .retrain import continue_training, retrain_from_scratch
from .source import SavedWeights, TrialSource, db_for_command, load_task_for, load_weights, open_trial

if TYPE_CHECKING:
    from evaluators.tasks import TaskData

__all__ = ["FORMATS", "EXPORTERS", "ExportReport", "export_trial"]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and found.

    Attributes:
        study: Study name.
        trial: Trial number.
        out_dir: The export folder.
        formats: Formats written.
        files: Files and folders written, relative to ``out_dir``.
        parity: One result per exported model file.
        card_path: The model card (``README.md``).
        metrics_path: ``metrics.json``.
        search: The search-time record from the database.
        final: The re-measured record after ``--retrain``, else ``None``.
        retrain_steps: Extra training steps, or ``None``.
        weights_source: Where the weights came from.
        command: The command that reproduces the export.
        elapsed_s: Wall time of the export, seconds.
    """

    study: str
    trial: int
    out_dir: Path
    formats: tuple[str, ...]
    files: tuple[str, ...]
    parity: tuple[ParityResult, ...]
    card_path: Path
    metrics_path: Path
    search: TrialResult
    final: TrialResult | None
    retrain_steps: int | None
    weights_source: str
    command: str
    elapsed_s: float

    def describe(self) -> str:
        """A multi-line human summary: formats, parity, numbers, card path."""
        lines = [f"exported trial {self.trial} of study {self.study!r} to {self.out_dir} "
                 f"({', '.join(self.formats)}) in {self.elapsed_s:.1f} s; weights: {self.weights_source}"]
        for p in self.parity:
            lines.append(f"  parity {p.format:<12} {p.path:<24} {100 * p.agreement:6.2f}% of {p.n_examples} agree, "
                         f"max |logit diff| {fmt(p.max_abs_logit_diff)}")
        for label, r in (("search", self.search), ("final", self.final)):
            if r is None:
                continue
            inf = r.inference
            lines.append(f"  {label:<6} accuracy {fmt(r.accuracy)}, energy {fmt(r.energy_per_sample_j)} J/sample "
                         f"({energy_label(inf)}), p50 {fmt(inf.latency_p50_ms if inf else None)} ms")
        lines.append(f"  model card: {self.card_path}")
        return "\n".join(lines)


def _formats(fmt_name: str) -> tuple[str, ...]:
    name = (fmt_name or "").strip().lower()
    if name == "all":
        return all_formats()
    if name not in EXPORTERS:
        raise ExportError("unknown export format", field="--format", value=fmt_name,
                          fix=f"use one of {', '.join(FORMATS)}")
    return (name,)


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder", field="--out", value=str(out),
                          fix="choose a folder path")
    # the export is written beside --out and renamed into place: its parent must be (or become) a
    # writable folder. Path.exists() is False below a file, so walk up to what really exists.
    existing = out.absolute().parent
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ExportError(f"{existing} is a file, so {out} cannot be created below it", field="--out",
                          value=str(out), fix="choose a folder path whose parents are folders")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError(f"folder {existing} is not writable, so {out} cannot be written", field="--out",
                          value=str(out), fix="choose a writable folder, or fix its permissions")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} is not empty", field="--out", value=str(out),
                          fix="pass --force to replace it, or choose another folder")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` with renames, so readers see the old folder or the new, never a mix."""
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            out.rename(old)
        else:
            out.rmdir()
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _command(study: str, trial: int, fmt_name: str, out: Path, db: str, retrain_steps: int | None) -> str:
    parts = ["nas", "export", study, str(trial), "--format", fmt_name, "--out", str(out.resolve()),
             "--db", db_for_command(db)]
    if retrain_steps:
        parts += ["--retrain", str(retrain_steps)]
    parts.append("--force")
    return " ".join(shlex.quote(p) for p in parts)


def _example(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Two full-length rows: a batch of 1 or a short row would let the exporters specialise those axes.
    idx = np.arange(2) % max(ids.shape[0], 1)
    return np.ascontiguousarray(ids[idx]), np.ascontiguousarray(mask[idx])


@dataclass(frozen=True)
class _Weights:
    """The trained model to export and how it came about.

    Attributes:
        saved: Model, tokenizer and label info.
        task: The study's task, encoded with the model's tokenizer (its dev split checks parity).
        final: The re-measured record after ``--retrain``, else None.
        source: Where the weights came from, for the card.
    """

    saved: SavedWeights
    task: TaskData
    final: TrialResult | None
    source: str


@dataclass(frozen=True)
class _Prepared:
    """The materialised model, ready for the exporters, and the reference to check them against.

    Attributes:
        inputs: What every exporter is given.
        labels: Label names, in class order.
        parts: Dev-split batches the parity check runs.
        reference: PyTorch logits on ``parts``.
    """

    inputs: ExportInputs
    labels: list[str]
    parts: list[tuple[np.ndarray, np.ndarray]]
    reference: np.ndarray


def _checked_exporters(formats: tuple[str, ...], cand: Candidate, trial_number: int) -> list[Exporter]:
    """One exporter per format, each able to export ``cand``.

    Raises:
        ExportError: An exporter cannot export the candidate (it says why).
    """
    exporters = [EXPORTERS[f]() for f in formats]
    for e in exporters:
        reason = e.unsupported_reason(cand)
        if reason:
            raise ExportError(f"trial {trial_number} cannot be exported as {e.name}: {reason}", field="--format",
                              value=e.name, fix="choose another --format, or install what is missing")
    return exporters


def _obtain_weights(src: TrialSource, study: str, trial_number: int, retrain_steps: int | None) -> _Weights:
    """The saved weights (trained further with ``--retrain``), or new ones trained from scratch.

    Args:
        src: The stored trial.
        study: Study name (for messages).
        trial_number: Trial number (for messages).
        retrain_steps: Extra training steps, or None.

    Returns:
        The weights, the task and, after training, the re-measured record.

    Raises:
        ExportError: The trial has no saved weights and ``retrain_steps`` is None.
    """
    cand = src.candidate
    final: TrialResult | None = None
    if src.weights is None:
        if retrain_steps is None:
            raise ExportError(
                f"trial {trial_number} of study {study!r} has no saved weights: {src.weights_problem}",
                field="weights", fix=f"re-run with --retrain STEPS to train the candidate again from scratch "
                f"(the search trained it for {src.spec.fidelity.max_steps} steps)")
        log.info("no saved weights: training trial %d from scratch for %d steps", trial_number, retrain_steps)
        saved, final = retrain_from_scratch(cand, src.spec, int(retrain_steps))
        source = f"trained from scratch for {retrain_steps} steps (--retrain; no saved weights)"
        task = load_task_for(src.spec, cand, saved.tokenizer, int(saved.info["max_len"]))
        return _Weights(saved=saved, task=task, final=final, source=source)
    saved = load_weights(src.weights, cand)
    task = load_task_for(src.spec, cand, saved.tokenizer, int(saved.info["max_len"]))
    source = f"saved by the search ({src.weights})"
    if retrain_steps is not None:
        log.info("training trial %d for %d more steps", trial_number, retrain_steps)
        final = continue_training(saved, cand, src.spec, task, int(retrain_steps))
        source += f", then trained {retrain_steps} more steps (--retrain)"
    return _Weights(saved=saved, task=task, final=final, source=source)


def _prepare(src: TrialSource, weights: _Weights, study: str, trial_number: int) -> _Prepared:
    """Bake the model's masks and fake-quant grids, and compute the PyTorch reference logits.

    Args:
        src: The stored trial.
        weights: The model to export, with its task.
        study: Study name (recorded in the loaded model's metadata).
        trial_number: Trial number (likewise).

    Returns:
        The exporters' inputs and the parity reference.
    """
    saved, task, cand = weights.saved, weights.task, src.candidate
    model = saved.model.cpu().eval()
    plan = pack_plan(model)  # the grids, taken before they are baked in: the hf folder stores them packed
    materialize_(model)  # plain weights: the graphs hold no fake-quant arithmetic or masks
    labels = [str(x) for x in saved.info["label_names"]]
    loaded = LoadedModel(model, saved.tokenizer, labels, int(saved.info["max_len"]), cand,
                         meta={"task": src.view.result.task if src.view.result else src.spec.task,
                               "study": study, "trial": trial_number}, pack=plan)
    dev_ids, dev_mask = task.dev_ids.numpy(), task.dev_mask.numpy()
    parts = batches(dev_ids, dev_mask)
    reference = reference_logits(loaded.logits_from_ids, parts)
    ex_ids, ex_mask = _example(dev_ids, dev_mask)
    inputs = ExportInputs(model=model, candidate=cand, example_ids=ex_ids, example_mask=ex_mask, loaded=loaded)
    return _Prepared(inputs=inputs, labels=labels, parts=parts, reference=reference)


def _export_checked(exporters: list[Exporter], prepared: _Prepared, folder: Path) -> tuple[
        list[ExportedFile], tuple[ParityResult, ...]]:
    """Run every exporter into ``folder`` and check each written model against PyTorch.

    Returns:
        The files written and one parity result per file.

    Raises:
        ExportError: A file agrees with PyTorch on fewer than ``MIN_AGREEMENT`` of the examples.
    """
    written: list[ExportedFile] = []
    for e in exporters:
        log.info("exporting %s", e.name)
        written += e.export(prepared.inputs, folder)
    parity = tuple(check_parity(prepared.reference, f, prepared.parts) for f in written)
    bad = [p for p in parity if not p.passed]
    if bad:
        worst = min(bad, key=lambda p: p.agreement)
        raise ExportError(
            f"parity check failed: {worst.path} agrees with PyTorch on {100 * worst.agreement:.2f}% of "
            f"{worst.n_examples} held-out examples (needs {100 * MIN_AGREEMENT:.0f}%; max |logit diff| "
            f"{worst.max_abs_logit_diff:.3g})", field="--format", value=worst.format,
            fix="export another format, and report the failure")
    return written, parity


def export_trial(
    study: str,
    trial_number: int,
    out_dir: Path | str,
    *,
    fmt: str = "all",
    db: str = "nas.db",
    retrain_steps: int | None = None,
    force: bool = False,
) -> ExportReport:
    """Export a stored, COMPLETE trial.

    Args:
        study: Study name.
        trial_number: Trial number (``nas pareto STUDY`` lists them).
        out_dir: Folder to write; created, or replaced when ``force`` is given.
        fmt: ``onnx``, ``torchscript``, ``hf``, ``tensorrt`` or ``all`` (every format but ``tensorrt``).
        db: Database URL or SQLite path.
        retrain_steps: Train this many more steps (from scratch when the trial has no saved weights) and
            re-measure accuracy and energy before exporting.
        force: Replace a non-empty ``out_dir``.

    Returns:
        An :class:`ExportReport`.

    Raises:
        StorageError: Unknown database, study or trial.
        ExportError: Bad format or ``out_dir``; the trial is not COMPLETE, has no weights (without
            ``retrain_steps``), or cannot be exported in a format; or parity is below 99%.
        ConfigError: ``retrain_steps`` is not positive.
    """
    t0 = time.perf_counter()
    formats = _formats(fmt)
    out = Path(out_dir).expanduser()
    _check_out(out, force)
    if retrain_steps is not None and (isinstance(retrain_steps, bool) or int(retrain_steps) < 1):
        raise ConfigError("must be a positive number of training steps", field="--retrain", value=retrain_steps,
                          fix="pass e.g. --retrain 500, or leave it out")
    src = open_trial(study, trial_number, db)
    cand = src.candidate
    exporters = _checked_exporters(formats, cand, trial_number)
    weights = _obtain_weights(src, study, trial_number, retrain_steps)
    prepared = _prepare(src, weights, study, trial_number)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        written, parity = _export_checked(exporters, prepared, tmp)
        (tmp / "candidate.json").write_text(cand.model_dump_json(indent=2) + "\n")
        files = [*dict.fromkeys(str(f.path) for f in written), "candidate.json", "metrics.json", "README.md"]  # hf runs twice
        search = src.view.result
        assert search is not None  # open_trial returns COMPLETE trials with a result
        card = CardInputs(study=src.study, trial=trial_number, task=search.task, search=search,
                          final=weights.final, retrain_steps=retrain_steps, readings=src.readings,
                          parity=parity, files=files, command=_command(study, trial_number, fmt, out, db, retrain_steps),
                          weights_source=weights.source, labels=prepared.labels, teacher=src.teacher)
        (tmp / "metrics.json").write_text(metrics_json(card))
        (tmp / "README.md").write_text(render_card(card))
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report = ExportReport(
        study=study, trial=trial_number, out_dir=out, formats=formats, files=tuple(files), parity=parity,
        card_path=out / "README.md", metrics_path=out / "metrics.json", search=search, final=weights.final,
        retrain_steps=retrain_steps, weights_source=weights.source, command=card.command,
        elapsed_s=time.perf_counter() - t0,
    )
    log.info("export done: %s", out)
    return report
