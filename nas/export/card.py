"""The model card (``README.md``) and ``metrics.json`` of an export.

Every number is read from a record, never typed: the search-time numbers from the stored
:class:`~nas.records.TrialResult` and its readings, the study's search cost from
:class:`storage.StudyInfo`, the final numbers from the ``--retrain`` re-measurement, and the parity
numbers from the check that just ran. :func:`fmt` is the one formatter, so a test can compare the card
with the database value by value. An estimated energy is labelled ``ESTIMATE`` wherever it appears.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from nas.config import Candidate
from nas.records import InferenceEnergy, TrialResult
from nas.reference import TeacherReference, ratio_text

from .hf_standard import standard_family, why_not_standard
from .parity import MIN_AGREEMENT, ParityResult

if TYPE_CHECKING:
    from storage import ReadingView, StudyInfo

__all__ = ["fmt", "CardInputs", "render_card", "metrics_json", "energy_label"]


def fmt(value: Any) -> str:
    """The card's number format: 6 significant digits for floats, integers as they are, ``n/a`` for None."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def energy_label(inf: InferenceEnergy | None) -> str:
    """``meter`` plus ``ESTIMATE`` when the meter's numbers are estimates, not measurements."""
    if inf is None:
        return "no measurement"
    return f"{inf.meter}, ESTIMATE (not a measurement)" if inf.is_estimate else f"{inf.meter}, measured"


@dataclass(frozen=True)
class CardInputs:
    """What the card is written from."""

    study: StudyInfo
    trial: int
    task: str
    search: TrialResult
    final: TrialResult | None
    retrain_steps: int | None
    readings: Sequence[ReadingView]
    parity: Sequence[ParityResult]
    files: Sequence[str]
    command: str
    weights_source: str
    labels: Sequence[str]
    teacher: TeacherReference | None = None


def _rows(r: TrialResult) -> list[tuple[str, Any]]:
    inf, tr, m = r.inference, r.train, r.metrics
    est = " (ESTIMATE)" if inf is not None and inf.is_estimate else ""
    test = " (ESTIMATE)" if tr is not None and tr.is_estimate else ""
    return [
        ("test accuracy (reported, never selected on)", m.test_accuracy if m else None),
        ("test macro-F1", m.test_macro_f1 if m else None),
        ("test examples", m.n_test_examples if m else None),
        ("dev accuracy (the search selected on it)", m.accuracy if m else None),
        ("dev macro-F1", m.macro_f1 if m else None),
        ("dev examples", m.n_examples if m else None),
        ("dev majority-class rate", m.majority_accuracy if m else None),
        (f"energy per sample, gross [J]{est}", inf.energy_per_sample_j if inf else None),
        (f"energy per sample, idle-corrected [J]{est}", inf.energy_per_sample_net_j if inf else None),
        (f"idle power used for the correction [W]{est}", inf.idle_w if inf else None),
        ("CV of the per-window J/sample", inf.cv if inf else None),
        ("energy meter", energy_label(inf)),
        ("latency p50 per batch [ms]", inf.latency_p50_ms if inf else None),
        ("latency p95 per batch [ms]", inf.latency_p95_ms if inf else None),
        ("throughput [samples/s]", inf.throughput_samples_s if inf else None),
        ("parameters", r.params),
        ("size as served [bytes]", r.size_bytes),
        ("FLOPs per sample", r.flops_per_sample),
        ("kernels", r.kernels),
        ("training steps", tr.steps if tr else None),
        (f"training energy [J]{test}", tr.energy_j if tr else None),
        ("training meter", tr.meter if tr else None),
    ]


def _table(search: TrialResult, final: TrialResult | None) -> list[str]:
    rows = _rows(search)
    if final is None:
        lines = ["| metric | search (database) |", "|---|---|"]
        lines += [f"| {name} | {fmt(v)} |" for name, v in rows]
        return lines
    final_rows = dict(_rows(final))
    lines = ["| metric | search (database) | final (after --retrain) |", "|---|---|---|"]
    for name, v in rows:
        lines.append(f"| {name} | {fmt(v)} | {fmt(final_rows.get(name))} |")
    return lines


def _provenance(inf: InferenceEnergy | None) -> list[str]:
    if inf is None:
        return ["No inference measurement is stored for this trial."]
    p = inf.provenance
    shape = (f"batch {fmt(inf.batch_size)} x sequence {fmt(inf.seq_len)}, {fmt(inf.n_windows)} windows of "
             f"{fmt(inf.window_s)} s, dtype {fmt(inf.dtype)}, serving form {fmt(inf.serving_form)}")
    lines = [
        f"- meter: `{inf.meter}`" + (" — **ESTIMATE**: CPU TDP x utilisation, not a measurement" if inf.is_estimate
                                     else ""),
        f"- exclusive device during the windows: {fmt(inf.exclusive)}",
        f"- shape of the run: {shape}",
        f"- per-window J/sample: {', '.join(fmt(w) for w in inf.windows_j_per_sample) or 'n/a'} (CV {fmt(inf.cv)})",
        f"- kernels: {fmt(inf.kernels)}",
        f"- device: {fmt(p.device)} ({fmt(p.device_name)}), driver {fmt(p.driver_version)}, "
        f"power limit {fmt(p.power_limit_w)} W, SM clock {fmt(p.sm_clock_mhz)} MHz",
        f"- temperature before / after: {fmt(p.temperature_before_c)} / {fmt(p.temperature_after_c)} °C",
        f"- CPU energy mode: {fmt(p.cpu_mode)}",
        f"- software: {', '.join(f'{k} {v}' for k, v in sorted(p.versions.items())) or 'n/a'}",
        f"- host: {fmt(p.host_id)}, measured at {fmt(p.time_utc)}",
    ]
    lines += [f"- {k}: not available ({why})" for k, why in sorted(p.absent.items())]
    return lines


def _ratios(r: TrialResult, ref: TeacherReference) -> dict[str, Any]:
    """``r``'s ratios to the teacher (:func:`nas.reference.ratios_to_teacher`, same checks as every display)."""
    return ref.ratios_of(r).to_dict()


def _teacher(c: CardInputs) -> list[str]:
    """The "Teacher reference" section: the teacher's point, then this model's ratios to it."""
    ref = c.teacher
    if ref is None:
        return []
    inf = ref.result.inference
    meter = energy_label(inf)
    shape = f"batch {fmt(inf.batch_size)} x sequence {fmt(inf.seq_len)} on {fmt(ref.hardware_fingerprint)}" \
        if inf else "not measured"
    lines = [
        "## Teacher reference",
        "",
        f"The study's teacher `{ref.name}` ({ref.source}), assessed like every trial: same protocol, meter, "
        "batch size and sequence length. A ratio below 1 means less than the teacher's.",
        "",
        f"- teacher dev accuracy: {fmt(ref.dev_accuracy)}; test accuracy: {fmt(ref.test_accuracy)}",
        f"- teacher energy per sample: {fmt(ref.energy_per_sample_j)} J (meter {meter})",
        f"- measured as: {shape}",
        f"- what the teacher cost this study: {fmt(ref.search_cost_j)} J"
        + (" (ESTIMATE)" if ref.cost_is_estimate and ref.search_cost_j is not None else "")
        + f" (fine-tuning and outputs cache {fmt(ref.train_energy_j)} J, measurement {fmt(ref.measure_energy_j)} J;"
        " part of the study's search cost below)",
        "",
        "| this model | dev accuracy / teacher's | J/sample / teacher's | note |",
        "|---|---|---|---|",
    ]
    for label, result in (("search (database)", c.search), ("final (after --retrain)", c.final)):
        if result is not None:
            r = _ratios(result, ref)
            lines.append(f"| {label} | {ratio_text(r['accuracy_ratio_to_teacher'])} | "
                         f"{ratio_text(r['energy_ratio_to_teacher'])} | {r['teacher_ratio_note'] or '-'} |")
    return [*lines, ""]


def _cost(s: StudyInfo) -> list[str]:
    est = " — includes ESTIMATES" if s.cost_includes_estimate else ""
    bound = (f" — a lower bound: {s.n_trials_unmetered} trial(s) ran unmetered" if s.n_trials_unmetered else "")
    return [
        f"- total energy: {fmt(s.total_energy_j)} J{est}{bound} (training {fmt(s.train_energy_j)} J, "
        f"measurement {fmt(s.measure_energy_j)} J"
        + (f"; the teacher's part: {fmt(s.teacher_energy_j)} J" if s.teacher_energy_j is not None else "") + ")",
        f"- CO2-equivalent: {fmt(s.co2eq_g)} g",
        f"- trial wall time: {fmt(s.wall_s)} s; GPU time: {fmt(s.gpu_s)} GPU-s",
        f"- trials: {fmt(s.n_trials_complete)} complete, {fmt(s.n_trials_failed)} failed, "
        f"{fmt(s.n_trials_pruned)} pruned",
    ]


def _structure(cand: Candidate) -> list[str]:
    """The "Structure" section: per-layer shapes, sharing, low-rank weights, inference depth, when used."""
    lines: list[str] = []
    if cand.layers is not None:
        lines.append(f"- per-layer shapes (HAT): heads {[s.n_heads for s in cand.layers]}, FFN widths "
                     f"{[s.d_ffn for s in cand.layers]} (layer 0 first); n_heads and d_ffn above are the widest layer's.")
    if cand.sharing.kind != "none":
        size = cand.sharing.group_size or cand.n_layers
        part = {"all": "whole block", "attention": "attention", "ffn": "FFN"}[cand.sharing.kind]
        lines.append(f"- cross-layer sharing (ALBERT): each group of {size} consecutive layers shares one {part}. "
                     "Parameters and size count the shared weights once; FLOPs and energy do not shrink, "
                     "since every layer still computes.")
    for group, ratio in (("attention (q/k/v/out)", cand.rank.attention), ("FFN (fc1/fc2)", cand.rank.ffn)):
        if ratio < 1:
            lines.append(f"- low-rank weights: the {group} Linears are factorised at rank ratio {ratio:g} of their "
                         "width (up x down); parameters and FLOPs both shrink.")
    if len(cand.kept_layers) < cand.n_layers:
        lines.append(f"- inference depth: trained {cand.n_layers} layers (LayerDrop rate {cand.layerdrop:g}); "
                     f"serves {len(cand.kept_layers)} of them (layers {', '.join(str(i) for i in cand.kept_layers)}, "
                     "0-based). The numbers above are of the served depth.")
    return ["## Structure", "", *lines, ""] if lines else []


def _transformers_use(c: CardInputs) -> list[str]:
    """How ``transformers`` loads ``hf/`` (a BERT/DistilBERT, or custom code), when it was exported."""
    if "hf" not in c.files:
        return []
    family = standard_family(c.search.candidate)
    flag = "" if family else ", trust_remote_code=True"
    why = (f"`hf/` is a standard {family} checkpoint: no custom code runs." if family else
           "`hf/` runs its own `modeling_energy_nas.py` (needs torch and transformers only), because "
           f"{'; '.join(why_not_standard(c.search.candidate))}.")
    return ["```python", "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            f'model = AutoModelForSequenceClassification.from_pretrained("hf"{flag})',
            f'tokenizer = AutoTokenizer.from_pretrained("hf"{flag})', "```", "", why, ""]


def render_card(c: CardInputs) -> str:
    """The ``README.md`` text."""
    cand = c.search.candidate
    depth = f"{len(cand.kept_layers)} of {cand.n_layers}" if len(cand.kept_layers) < cand.n_layers else f"{cand.n_layers}"
    title = (f"{depth} x d{cand.d_model} {cand.attention.kind} encoder, {cand.quant.label}, "
             f"sparsity {cand.sparsity.kind}")
    final_inf = c.final.inference if c.final else None
    out = [
        f"# {c.study.name} / trial {c.trial}: {title}",
        "",
        f"Sequence classifier for `{c.task}` (labels: {', '.join(c.labels)}), chosen by an energy-aware "
        f"architecture search and exported by energy-nas. Weights: {c.weights_source}.",
        "",
        "## Use it",
        "",
        "```",
        "nas predict . \"some text\"",
        "python -c \"import nas; print(nas.load('.').predict(['some text']))\"",
        "```",
        "",
        "The ONNX (`onnx/model.onnx`) and TorchScript (`torchscript/model.pt`) files, where exported, take "
        "`input_ids` and `attention_mask` (int64, batch x sequence, sequence <= max_len) encoded by the "
        "tokenizer in `hf/`, and return `logits`. `nas predict` and `nas.load` need the `hf/` folder.",
        "",
        *_transformers_use(c),
        "## Numbers",
        "",
        "Train trains, dev selects, test reports: the search picked this model by its dev accuracy, so "
        "the test accuracy (a split nothing was selected on) is the estimate to expect on new data. "
        "Search-time numbers are read from the study database; "
        + ("final numbers were re-measured after training "
           f"{fmt(c.retrain_steps)} more steps (--retrain) with the study's own protocol." if c.final else
           "no re-measurement was asked for (--retrain)."),
        "",
        *_table(c.search, c.final),
        "",
        *_teacher(c),
        *_structure(cand),
        "## Energy provenance (search-time measurement)",
        "",
        *_provenance(c.search.inference),
    ]
    if c.final is not None:
        out += ["", "## Energy provenance (final re-measurement)", "", *_provenance(final_inf)]
    out += [
        "",
        "## Parity of the exported files",
        "",
        f"The task's dev split run through each file and through PyTorch. An export fails below "
        f"{fmt(100 * MIN_AGREEMENT)}% agreement.",
        "",
        "| file | engine | examples | agreement | max abs logit diff |",
        "|---|---|---|---|---|",
        *[f"| `{p.path}` | {p.engine} | {fmt(p.n_examples)} | {fmt(100 * p.agreement)}% | "
          f"{fmt(p.max_abs_logit_diff)} |" for p in c.parity],
        "",
        "## Candidate",
        "",
        "```json",
        cand.model_dump_json(indent=2),
        "```",
        "",
        f"## Search cost of the whole study `{c.study.name}`",
        "",
        *_cost(c.study),
        "",
        "## Reproduce",
        "",
        "```",
        c.command,
        "```",
        "",
        "## Files",
        "",
        *[f"- `{f}`" for f in c.files],
        "",
    ]
    return "\n".join(out)


def _study_cost(s: StudyInfo) -> dict[str, Any]:
    return {
        "total_energy_j": s.total_energy_j, "train_energy_j": s.train_energy_j,
        "measure_energy_j": s.measure_energy_j, "co2eq_g": s.co2eq_g, "wall_s": s.wall_s, "gpu_s": s.gpu_s,
        "includes_estimate": s.cost_includes_estimate, "n_trials_unmetered": s.n_trials_unmetered,
        "teacher_energy_j": s.teacher_energy_j,
        "n_trials_complete": s.n_trials_complete,
        "n_trials_failed": s.n_trials_failed, "n_trials_pruned": s.n_trials_pruned,
    }


def _reading(r: ReadingView) -> dict[str, Any]:
    prov: Mapping[str, Any] | None = r.provenance
    return {
        "kind": r.kind, "meter": r.meter, "is_estimate": r.is_estimate, "exclusive": r.exclusive,
        "energy_j": r.energy_j, "energy_per_sample_j": r.energy_per_sample_j,
        "energy_per_sample_net_j": r.energy_per_sample_net_j, "idle_w": r.idle_w, "cv": r.cv,
        "hardware_fingerprint": r.hardware_fingerprint, "provenance": dict(prov) if prov else None,
    }


def metrics_json(c: CardInputs) -> str:
    """``metrics.json``: the same records as the card, in full, for machines."""
    doc = {
        "study": c.study.name,
        "trial": c.trial,
        "task": c.task,
        "exported_utc": datetime.now(timezone.utc).isoformat(),
        "weights_source": c.weights_source,
        "retrain_steps": c.retrain_steps,
        "search": c.search.to_dict(),
        "final": c.final.to_dict() if c.final else None,
        "readings": [_reading(r) for r in c.readings],
        "study_cost": _study_cost(c.study),
        "teacher": None if c.teacher is None else {
            **c.teacher.summary(), "record": c.teacher.to_dict(),
            "ratios": {"search": _ratios(c.search, c.teacher),
                       "final": _ratios(c.final, c.teacher) if c.final else None}},
        "parity": [p.to_dict() for p in c.parity],
        "files": list(c.files),
        "command": c.command,
    }
    return json.dumps(doc, indent=2, default=str) + "\n"
