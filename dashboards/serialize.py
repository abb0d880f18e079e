"""Frozen storage records turned into plain JSON-ready dicts for the API and the pages.

Every float that is NaN or infinite becomes ``None`` (strict JSON has no NaN). Every energy figure keeps
its ``meter`` and ``is_estimate`` next to it, so no client can show an estimate as a measurement
(decision 6).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from nas.config import Candidate
from nas.fidelity import FidelityReport
from nas.reference import TeacherReference
from storage import ArtefactView, ReadingView, StudyInfo, TrialView

__all__ = [
    "clean",
    "clean_dict",
    "describe_candidate",
    "energy_label",
    "fidelity_json",
    "study_meters",
    "study_summary",
    "teacher_json",
    "trial_row",
    "trial_detail",
]

#: Trial states that count as done (a RUNNING trial does not).
DONE_STATES = ("COMPLETE", "FAIL", "PRUNED")


def clean(value: Any) -> Any:
    """A JSON-ready copy of ``value``: NaN and infinities become ``None``, datetimes ISO 8601 strings."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [clean(v) for v in value]
    if hasattr(value, "model_dump"):
        return clean(value.model_dump(mode="json"))
    if is_dataclass(value) and not isinstance(value, type):
        return clean(asdict(value))
    return str(value)


def clean_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`clean` for a mapping, typed as the dict it returns."""
    out: dict[str, Any] = clean(value)
    return out


def energy_label(meters: Iterable[str], is_estimate: bool | None) -> str:
    """How an energy figure is labelled: ``"ESTIMATE (estimate)"`` or ``"measured (nvml-counter)"``."""
    names = ", ".join(sorted({m for m in meters if m and m != "none"})) or "no meter"
    return f"ESTIMATE ({names})" if is_estimate else f"measured ({names})"


def describe_candidate(candidate: Candidate | None, values: Mapping[str, Any] | None = None) -> str:
    """One line describing a candidate, e.g. ``2L d64 h4 ffn128 · local(w=16) · 8-bit · prune heads 25%``."""
    if candidate is None:
        return "no candidate"
    att = candidate.attention
    att_text: str = att.kind
    if att.window is not None:
        att_text += f"(w={att.window})"
    elif att.k is not None:
        att_text += f"(k={att.k})"
    sp = candidate.sparsity
    sparsity = "dense" if sp.kind == "none" or not sp.amount else f"prune {sp.kind} {sp.amount:.0%}"
    distill = "" if candidate.distill.kind == "none" else f" · distill {candidate.distill.kind}"
    return (f"{candidate.n_layers}L d{candidate.d_model} h{candidate.n_heads} ffn{candidate.d_ffn} · "
            f"{att_text} · {candidate.quant.label} · {sparsity}{distill}")


def study_meters(trials: Sequence[TrialView]) -> list[str]:
    """The meters behind a study's joules (inference readings and per-trial cost), sorted."""
    found: set[str] = set()
    for t in trials:
        if t.meter:
            found.add(t.meter)
        if t.cost is not None and t.cost.meter:
            found.add(t.cost.meter)
    found.discard("none")
    return sorted(found)


def study_summary(
    info: StudyInfo, trials: Sequence[TrialView], launch: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The Studies-page record of one study: status, progress against the budget, and its search cost."""
    counts = {state: 0 for state in ("COMPLETE", "FAIL", "PRUNED", "RUNNING")}
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    done = sum(counts[s] for s in DONE_STATES)
    meters = study_meters(trials)
    is_estimate = bool(info.cost_includes_estimate or any(t.cost and t.cost.is_estimate for t in trials))
    budget = info.budget_trials
    return clean_dict({
        "name": info.name,
        "status": info.status,
        "objectives": [{"metric": m, "direction": d} for m, d in info.objectives],
        "optuna_study_id": info.optuna_study_id,
        "created_utc": info.created_utc,
        "updated_utc": info.updated_utc,
        "budget": {"trials": budget, "energy_j": info.budget_energy_j, "wall_s": info.budget_wall_s},
        "trials": {
            "done": done,
            "complete": counts["COMPLETE"],
            "failed": counts["FAIL"],
            "pruned": counts["PRUNED"],
            "running": counts["RUNNING"],
            "total": len(trials),
            "progress": (min(1.0, done / budget) if budget else None),
        },
        "cost": {
            "train_energy_j": info.train_energy_j,
            "measure_energy_j": info.measure_energy_j,
            "total_energy_j": info.total_energy_j,
            "co2eq_g": info.co2eq_g,
            "wall_s": info.wall_s,
            "gpu_s": info.gpu_s,
            "n_trials_unmetered": info.n_trials_unmetered,
            "teacher_energy_j": info.teacher_energy_j,
            "supernet_energy_j": info.supernet_energy_j,
            "meters": meters,
            "is_estimate": is_estimate,
            "label": energy_label(meters, is_estimate),
        },
        "launch": dict(launch) if launch else None,
    })


def fidelity_json(report: FidelityReport) -> dict[str, Any]:
    """A study's fidelity report as JSON (:meth:`nas.fidelity.FidelityReport.to_dict`).

    ``shown`` is False when fewer than two rungs have data; each pair has ``text`` as the CLI prints it
    and ``weak`` when its Spearman is below ``warn_below``; ``warning`` says what that means and the fix.
    """
    return clean_dict(report.to_dict())


def _cost(view: TrialView) -> dict[str, Any] | None:
    c = view.cost
    if c is None:
        return None
    return {
        "train_energy_j": c.train_energy_j,
        "measure_energy_j": c.measure_energy_j,
        "total_energy_j": c.total_energy_j,
        "co2eq_g": c.co2eq_g,
        "wall_s": c.wall_s,
        "gpu_s": c.gpu_s,
        "meter": c.meter,
        "is_estimate": c.is_estimate,
    }


def teacher_json(ref: TeacherReference | None) -> dict[str, Any] | None:
    """The study's teacher as JSON (:meth:`TeacherReference.summary` plus its ``energy_label``), or ``None``."""
    if ref is None:
        return None
    out = ref.summary()
    out["energy_label"] = energy_label([ref.meter or ""], ref.is_estimate) if ref.meter else None
    return clean_dict(out)


def trial_row(view: TrialView, *, on_front: bool, teacher: TeacherReference | None = None,
              noise: str | None = None) -> dict[str, Any]:
    """A trial as one row of the trial table: state, flat values (candidate and metrics) and cost.

    ``noise``: a front member's mark, ``"clear"`` or ``"tied"`` (within the measurement noise).

    With a ``teacher``, ``teacher_ratios`` holds the trial's ratios to it (``accuracy_ratio_to_teacher``,
    ``energy_ratio_to_teacher``, ``teacher_ratio_note``); ``None`` without one.
    """
    values = view.values()
    return clean_dict({
        "number": view.number,
        "state": view.state,
        "fail_reason": view.fail_reason,
        "on_front": on_front,
        "noise": noise if on_front else None,
        "hardware": view.hardware_fingerprint,
        "remeasured": view.remeasured,
        "meter": view.meter,
        "is_estimate": view.is_estimate,
        "energy_label": energy_label([view.meter or ""], view.is_estimate) if view.meter else None,
        "candidate_text": describe_candidate(view.candidate),
        "values": values,
        "cost": _cost(view),
        "teacher_ratios": view.ratios_to(teacher).to_dict() if teacher is not None else None,
        "started_utc": view.started_utc,
        "finished_utc": view.finished_utc,
    })


def _reading(r: ReadingView) -> dict[str, Any]:
    return {
        "kind": r.kind,
        "meter": r.meter,
        "is_estimate": r.is_estimate,
        "label": "ESTIMATE" if r.is_estimate else "measured",
        "exclusive": r.exclusive,
        "energy_j": r.energy_j,
        "energy_per_sample_j": r.energy_per_sample_j,
        "energy_per_sample_net_j": r.energy_per_sample_net_j,
        "idle_w": r.idle_w,
        "cv": r.cv,
        "duration_s": r.duration_s,
        "co2eq_g": r.co2eq_g,
        "hardware_fingerprint": r.hardware_fingerprint,
        "origin": r.origin,
        "provenance": r.provenance,
        "created_utc": r.created_utc,
    }


def _artefact(a: ArtefactView) -> dict[str, Any]:
    # Only the file name: the server's folder layout is not the client's business.
    return {"kind": a.kind, "name": Path(a.path).name, "sha256": a.sha256, "size_bytes": a.size_bytes,
            "created_utc": a.created_utc}


def trial_detail(
    view: TrialView,
    readings: Sequence[ReadingView],
    artefacts: Sequence[ArtefactView],
    *,
    on_front: bool,
    teacher: TeacherReference | None = None,
    noise: str | None = None,
) -> dict[str, Any]:
    """Everything about one trial: candidate, metrics, every energy reading with its provenance, cost.

    With a ``teacher``, its point (``teacher``) and the trial's ratios to it (``teacher_ratios``). ``noise``:
    a front member's mark (``"clear"`` or ``"tied"`` within noise).
    """
    out = trial_row(view, on_front=on_front, teacher=teacher, noise=noise)
    out.update(clean_dict({
        "study": view.study,
        "retryable": view.retryable,
        "optuna_trial_id": view.optuna_trial_id,
        "candidate_hash": view.candidate_hash,
        "candidate": view.candidate.model_dump(mode="json") if view.candidate else None,
        "result": view.result.to_dict() if view.result else None,
        "objectives": view.result.objectives() if view.result else None,
        "rung_accuracies": [{"step": st, "accuracy": acc} for st, acc in view.rung_accuracies],
        "readings": [_reading(r) for r in readings],
        "artefacts": [_artefact(a) for a in artefacts],
    }))
    out["teacher"] = teacher_json(teacher)
    return out
