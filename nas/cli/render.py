"""Rich tables and plain serialisations for the CLI.

Every energy figure shows its meter, and an estimate is marked ``(estimate)`` or ``ESTIMATE``. A study
with a measured teacher shows the teacher's point and each trial's ratios to it
(:func:`nas.reference.ratios_to_teacher`, through :meth:`storage.TrialView.ratios_to`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nas.fidelity import DESCRIPTION, FidelityReport
from nas.records import TrialResult
from nas.reference import TeacherReference, ratio_text

if TYPE_CHECKING:
    from nas.runner.tracking import StudyLogs


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(v)


def _energy(v: float | None, meter: str | None, is_estimate: bool | None, unit: str = "J") -> str:
    if v is None:
        return f"- ({meter or 'no meter'})"
    tag = ", ESTIMATE" if is_estimate else ", measured"
    return f"{_fmt(v)} {unit} (meter {meter}{tag})"


def to_jsonable(obj: Any) -> Any:
    """Frozen records (dataclasses, pydantic) to plain JSON values."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, TrialResult):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict) or hasattr(obj, "items"):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


def view_to_dict(view: Any, teacher: TeacherReference | None = None) -> dict[str, Any]:
    """A stored trial as JSON: the flat values first, then the full record.

    With a ``teacher``, the ratios to it follow the flat values (``accuracy_ratio_to_teacher``,
    ``energy_ratio_to_teacher``, ``teacher_ratio_note``) with the teacher's point (``teacher``).
    """
    d = {"number": view.number, "state": view.state, "fail_reason": view.fail_reason,
         **{k: v for k, v in view.values().items() if k not in ("number", "state")}}
    if teacher is not None:
        d.update(view.ratios_to(teacher).to_dict())
        d["teacher"] = teacher.point()
    d["remeasured"] = view.remeasured
    d["noise"] = view.noise
    d["rung_accuracies"] = [list(r) for r in view.rung_accuracies]
    d["candidate"] = to_jsonable(view.candidate) if view.candidate is not None else None
    d["result"] = view.result.to_dict() if view.result is not None else None
    d["cost"] = to_jsonable(view.cost) if view.cost is not None else None
    return d


def teacher_line(ref: TeacherReference) -> str:
    """The teacher's point in one line, printed above a front table (meter named, estimates labelled)."""
    inf = ref.result.inference
    shape = f", batch {inf.batch_size} x seq {inf.seq_len} on {ref.hardware_fingerprint}" if inf else ""
    return (f"teacher {ref.name} ({ref.source}): dev acc {_fmt(ref.dev_accuracy)}, test acc "
            f"{_fmt(ref.test_accuracy)}, J/sample {_energy(ref.energy_per_sample_j, ref.meter, ref.is_estimate)}"
            f"{shape}; it cost this study {_fmt(ref.search_cost_j)} J"
            + (" (ESTIMATE)" if ref.cost_is_estimate and ref.search_cost_j is not None else ""))


def trial_table(r: TrialResult) -> Table:
    """A trial record as a two-column table: candidate, compression, accuracy, energy and cost."""
    t = Table(title=f"Trial on {r.task}: {r.status}", show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    c = r.candidate
    t.add_row("candidate", f"{c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads, FFN {c.d_ffn}, "
              f"{c.attention.kind} attention")
    t.add_row("compression", f"bits emb/attn/ffn {c.quant.embedding_bits}/{c.quant.attention_bits}/"
              f"{c.quant.ffn_bits} {c.quant.scheme}; sparsity {c.sparsity.kind} {c.sparsity.amount:g}")
    if r.metrics:
        _accuracy_rows(t, r.metrics)
    inf = r.inference
    if inf:
        t.add_row("energy / sample (gross)", _energy(inf.energy_per_sample_j, inf.meter, inf.is_estimate))
        t.add_row("energy / sample (idle-corrected)",
                  _energy(inf.energy_per_sample_net_j, inf.meter, inf.is_estimate)
                  + (f", idle {inf.idle_w:.1f} W" if inf.idle_w is not None else ""))
        t.add_row("CV over windows", f"{inf.cv:.2%}" if inf.cv is not None else "-")
        t.add_row("latency p50 / p95", f"{inf.latency_p50_ms:.2f} / {inf.latency_p95_ms:.2f} ms per batch of "
                  f"{inf.batch_size} x {inf.seq_len}")
        t.add_row("throughput", f"{inf.throughput_samples_s:.0f} samples/s ({inf.serving_form}, {inf.dtype})")
        t.add_row("device", f"{inf.provenance.device_name or inf.provenance.device}")
    for other in r.other_forms:
        t.add_row(f"energy / sample ({other.serving_form})",
                  _energy(other.energy_per_sample_j, other.meter, other.is_estimate)
                  + f", p50 {other.latency_p50_ms:.2f} ms; {other.kernels}")
    if r.train:
        t.add_row("training", f"{r.train.steps} steps in {r.train.wall_s:.1f} s, "
                  + _energy(r.train.energy_j, r.train.meter, r.train.is_estimate))
        tt = r.train.teacher_training
        if tt is not None:
            t.add_row("teacher training (this trial)", f"{tt.steps} steps in {tt.wall_s:.1f} s, "
                      + _energy(tt.energy_j, tt.meter, tt.is_estimate))
    if r.co2eq_g is not None:
        t.add_row("CO2eq (training)", f"{r.co2eq_g:.4g} g")
    t.add_row("params / size", f"{_fmt(r.params)} / {_fmt(r.size_bytes)} bytes (computed at the weights' bit-widths)")
    t.add_row("FLOPs / sample", _fmt(r.flops_per_sample))
    t.add_row("kernels", r.kernels or "-")
    if r.error:
        t.add_row("error", r.error)
    return t


def _accuracy_rows(t: Table, m: Any) -> None:
    """Test accuracy first (nothing selects on it), then dev (what the search selected on)."""
    if m.test_accuracy is not None:
        f1 = f"{m.test_macro_f1:.4f}" if m.test_macro_f1 is not None else "-"
        t.add_row("test accuracy / macro-F1", f"{m.test_accuracy:.4f} / {f1} "
                  f"(n={_fmt(m.n_test_examples)}; reported, never selected on)")
    else:
        t.add_row("test accuracy / macro-F1", "- (not measured: stored before test splits)")
    t.add_row("dev accuracy / macro-F1", f"{m.accuracy:.4f} / {m.macro_f1:.4f} (n={m.n_examples}; selected on)")
    if m.majority_accuracy is not None:
        trivial = m.accuracy <= m.majority_accuracy
        t.add_row("dev majority-class rate", f"{m.majority_accuracy:.4f}"
                  + (" (dev accuracy is not above it: kept off the front by default)" if trivial else ""))


def kept_out_note(kept_out: list[Any]) -> str | None:
    """``2 trials at or below the majority-class rate (0.500) kept out; --include-trivial shows them``."""
    if not kept_out:
        return None
    rates = sorted({float(v.values()["majority_accuracy"]) for v in kept_out
                    if v.values().get("majority_accuracy") is not None})
    n = len(kept_out)
    return (f"{n} trial{'s' if n != 1 else ''} at or below the majority-class rate "
            f"({', '.join(f'{r:.3f}' for r in rates)}) kept out; --include-trivial shows them")


def _short_candidate(c: Any, vals: dict[str, Any]) -> str:
    if c is None:
        return "-"
    attn = c.attention.kind + (f"/w{c.attention.window}" if c.attention.window else "") + (
        f"/k{c.attention.k}" if c.attention.k else "")
    q = c.quant
    bits = f"{q.embedding_bits}/{q.attention_bits}/{q.ffn_bits}b"
    sp = "" if c.sparsity.kind == "none" else f" {c.sparsity.kind}:{c.sparsity.amount:g}"
    return f"{c.n_layers}x{c.d_model} h{c.n_heads} ffn{c.d_ffn} {attn} {bits}{sp}"


def front_table(views: list[Any], objectives: list[tuple[str, str]] | Any, title: str = "Pareto front",
                teacher: TeacherReference | None = None) -> Table:
    """The front, best first objective on top; one compact candidate column, meter per row.

    The test accuracy comes first (the number to expect on new data); the objectives follow, with
    ``accuracy`` shown as the dev accuracy the front was selected on. With a ``teacher``, the columns
    ``acc/teacher`` (dev accuracy ratio) and ``J/teacher`` (J/sample ratio, ``-`` where the meters or the
    protocol differ) follow the objectives.
    """
    objs = [m for m, _ in objectives]
    t = Table(title=title, title_justify="left")
    t.add_column("#", justify="right")
    t.add_column("test acc", justify="right")
    for m in objs:
        label = {"accuracy": "dev acc", "macro_f1": "dev macro F1", "energy_per_sample_j": "J/sample"}.get(m, m)
        t.add_column(label.replace("_", " "), justify="right")
    if teacher is not None:
        t.add_column("acc/teacher", justify="right")
        t.add_column("J/teacher", justify="right")
    marked = any(v.noise for v in views)
    if marked:
        t.add_column("noise")
    t.add_column("candidate")
    t.add_column("meter")
    hardware = sorted({str(v.hardware_fingerprint) for v in views})
    notes: dict[str, None] = {}
    for v in sorted(views, key=lambda v: v.values().get(objs[0]) or 0, reverse=True):
        vals = v.values()
        meter = (vals.get("meter") or "-") + (" (estimate)" if vals.get("is_estimate") else "")
        ratios = []
        if teacher is not None:
            r = v.ratios_to(teacher)
            ratios = [ratio_text(r.accuracy_ratio), ratio_text(r.energy_ratio)]
            if r.note:
                notes[f"#{v.number}: {r.note}"] = None
        t.add_row(str(v.number), _fmt(vals.get("test_accuracy")), *[_fmt(vals.get(m)) for m in objs], *ratios,
                  *([v.noise or "-"] if marked else []), _short_candidate(v.candidate, vals), meter)
    t.caption = ("no complete trial matches" if not views else f"hardware: {', '.join(hardware)}")
    if any(v.noise == "tied" for v in views):
        t.caption += ("\ntied: another trial may dominate it within the measurement noise (95% interval of the "
                      "J/sample mean); clear: none may (docs/measurement.md)")
    if any(v.remeasured for v in views):
        t.caption += " (re-measured by `nas remeasure`: energy and latency from this machine, accuracy from the search)"
    if notes:
        t.caption += "\nno ratio where " + "; ".join(escape(n) for n in notes)
    return t


def front_csv(views: list[Any], teacher: TeacherReference | None = None) -> str:
    """The front's trials as CSV, one row per trial (empty text for an empty front).

    With a ``teacher``, each row also has the ratios (``accuracy_ratio_to_teacher``,
    ``energy_ratio_to_teacher``, ``teacher_ratio_note``) and the teacher's point (``teacher_*``).
    """
    buf = io.StringIO()
    rows = [{"number": v.number, **{k: val for k, val in v.values().items() if k != "number"}} for v in views]
    if teacher is not None:
        point = {f"teacher_{k}": val for k, val in teacher.point().items()}
        for row, v in zip(rows, views, strict=True):
            row.update(v.ratios_to(teacher).to_dict())
            row.update(point)
    if not rows:
        return ""
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def studies_table(infos: list[Any]) -> Table:
    """One row per study: status, trial counts, budget, search energy, CO2eq and wall time."""
    t = Table(title="Studies", title_justify="left")
    for col in ["study", "status", "complete", "pruned", "failed", "budget", "search energy", "CO2eq", "wall"]:
        t.add_column(col)
    for i in infos:
        t.add_row(i.name, i.status, str(i.n_trials_complete), str(i.n_trials_pruned), str(i.n_trials_failed),
                  str(i.budget_trials or "-"), study_energy(i),
                  f"{i.co2eq_g:.3g} g" if i.co2eq_g is not None else "unknown", f"{i.wall_s:.0f} s")
    return t


def study_energy(i: Any) -> str:
    """A study's search energy as a table cell.

    The cell holds the known joules, labelled, with a lower-bound note when some trials ran unmetered;
    ``unknown`` when nothing was metered.
    """
    if i.total_energy_j is None:
        return "unknown (not metered)"
    cell = f"{i.total_energy_j:.1f} J"
    if i.cost_includes_estimate:
        cell += " (includes estimates)"
    if i.n_trials_unmetered:
        cell = f">= {cell}, {i.n_trials_unmetered} trial(s) unmetered"
    return cell


def trial_view(v: Any, teacher: TeacherReference | None = None, readings: Sequence[Any] = ()) -> Table:
    """A stored trial as a table: its record (else its candidate), failure reason, cost and provenance.

    With a ``teacher``, its point and this trial's ratios to it follow. ``readings`` (the trial's stored
    readings) add one row per reading ``nas remeasure`` took on another machine.
    """
    if v.result is not None and v.state == "COMPLETE":
        t = trial_table(v.result)
        t.title = f"Trial {v.number} of {v.study}: {v.state}"
    else:
        t = Table(title=f"Trial {v.number} of {v.study}: {v.state}", show_header=False, title_justify="left")
        t.add_column("field", style="bold")
        t.add_column("value")
        if v.candidate is not None:
            t.add_row("candidate", json.dumps(v.candidate.flat()))
    if v.fail_reason:
        t.add_row("reason", v.fail_reason)
    if v.result is not None and v.result.placement is not None:
        t.add_row("placed on", escape(v.result.placement.describe()))
    if v.rung_accuracies:
        t.add_row("dev accuracy at rungs", ", ".join(f"step {st}: {acc:.4f}" for st, acc in v.rung_accuracies)
                  + " (mid-training)")
    if v.cost is not None:
        c = v.cost
        t.add_row("search cost", f"train {_fmt(c.train_energy_j)} J + measure {_fmt(c.measure_energy_j)} J "
                  f"(meter {c.meter}{', ESTIMATE' if c.is_estimate else ''}), {c.wall_s:.1f} s wall, "
                  f"{c.gpu_s:.1f} GPU-s")
    if v.result is not None and v.result.inference is not None:
        p = v.result.inference.provenance
        t.add_row("provenance", escape(json.dumps(to_jsonable(p), default=str)[:2000]))
    for r in readings:
        if r.origin == "remeasure":
            t.add_row(f"re-measured on {escape(str(r.hardware_fingerprint))}",
                      f"{r.kind.removeprefix('inference:')}: J/sample {_energy(r.energy_per_sample_j, r.meter, r.is_estimate)}"
                      f", CV {_fmt(r.cv)} ({r.created_utc:%Y-%m-%d %H:%M} UTC, `nas remeasure`)")
    _replaced_rows(t, readings)
    if teacher is not None:
        _teacher_rows(t, v, teacher)
    return t


#: Why a trial's first reading is no longer its reading of record, by the origin of the one that replaced it.
_REPLACED_BY = {
    "tie_break": "measured again with more windows to settle a tie within noise on the front (front.ties)",
    "final": "the front member was fine-tuned from the supernet before the search ended (fidelity.final_steps) "
             "and measured again",
}


def _replaced_rows(t: Table, readings: Any) -> None:
    """``nas show``'s rows for first readings that a later one (tie_break, final) replaced as the one of record."""
    for r in readings:
        if not r.kind.startswith("inference:") or r.origin is not None:
            continue
        later = next((o.origin for o in readings if o.origin in _REPLACED_BY and o.kind == r.kind), None)
        if later is None:
            continue
        windows = (r.provenance or {}).get("n_windows")
        t.add_row("first reading (replaced)",
                  f"{r.kind.removeprefix('inference:')}: J/sample {_energy(r.energy_per_sample_j, r.meter, r.is_estimate)}"
                  f", CV {_fmt(r.cv)} over {windows} windows; {_REPLACED_BY[later]}")


def _teacher_rows(t: Table, v: Any, ref: TeacherReference) -> None:
    """The teacher section of ``nas show``: the teacher's point, then this trial's ratios to it."""
    r = v.ratios_to(ref)
    t.add_row("teacher (reference)", escape(f"{ref.name} ({ref.source})"))
    t.add_row("teacher dev / test accuracy", f"{_fmt(ref.dev_accuracy)} / {_fmt(ref.test_accuracy)}")
    t.add_row("teacher energy / sample", _energy(ref.energy_per_sample_j, ref.meter, ref.is_estimate))
    t.add_row("dev accuracy / teacher's", ratio_text(r.accuracy_ratio))
    t.add_row("J/sample / teacher's", ratio_text(r.energy_ratio) + (f" ({escape(r.note)})" if r.note else ""))


def study_view(i: Any, fidelity: FidelityReport, teacher: TeacherReference | None = None,
               logs: StudyLogs | None = None) -> Group:
    """``nas show STUDY``: status, trial counts, budget and cost, teacher, log folders, fidelity."""
    t = Table(title=f"Study {i.name}: {i.status}", show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    t.add_row("objectives", ", ".join(f"{m} ({d})" for m, d in i.objectives))
    t.add_row("trials", f"{i.n_trials_complete} complete, {i.n_trials_pruned} stopped early, "
              f"{i.n_trials_failed} failed")
    t.add_row("budget", f"{i.budget_trials or '-'} trials, {_fmt(i.budget_energy_j)} J, {_fmt(i.budget_wall_s)} s")
    t.add_row("search energy", study_energy(i))
    if i.supernet_energy_j is not None:
        t.add_row("of which the supernet", f"{i.supernet_energy_j:.4g} J (training, every run; "
                  "fidelity.kind: supernet)")
    t.add_row("CO2eq", f"{i.co2eq_g:.3g} g" if i.co2eq_g is not None else "unknown")
    t.add_row("wall / GPU", f"{i.wall_s:.0f} s / {i.gpu_s:.0f} GPU-s")
    if teacher is not None:
        t.add_row("teacher (reference)", escape(teacher_line(teacher)))
    if logs is not None and logs.tensorboard is not None:
        t.add_row("TensorBoard logs", escape(f"{logs.n_event_files} event file(s): tensorboard --logdir "
                                             f"{logs.tensorboard}"))
    if logs is not None and logs.wandb is not None:
        t.add_row("W&B runs", escape(f"{logs.wandb} (offline runs: wandb sync {logs.wandb}/offline-run-*)"))
    section = fidelity_section(fidelity)
    return Group(t, section) if section is not None else Group(t)


def fidelity_section(report: FidelityReport) -> Text | None:
    """The Fidelity section: one line per pair of consecutive rungs, the warning in bold; ``None`` if none."""
    if not report.shown:
        return None
    text = Text("\nFidelity", style="bold")
    text.append(f": {DESCRIPTION}\n", style="default")
    for pair in report.pairs:
        text.append(f"  {pair.text()}\n", style="yellow" if pair.weak else "default")
    text.append(f"  ({report.note()})\n", style="dim")
    warning = report.warning()
    if warning:
        text.append(warning, style="bold red")
    return text


def _predicted(p: Any, unit: str, is_estimate: bool) -> str:
    tag = " (ESTIMATE)" if is_estimate and unit == "J" else ""
    return (f"{_fmt(p.median)} {unit}{tag}, {1 - p.confidence:.0%}-{p.confidence:.0%} interval "
            f"{_fmt(p.low)} to {_fmt(p.high)}")


def cost_prediction_table(pred: Any) -> Table:
    """``nas predict-cost``: the predictions with their intervals, what the model was fitted on, its error."""
    m = pred.model
    t = Table(title=f"Predicted cost on {m.hardware} (study {pred.study}; not measured)", show_header=False,
              title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    c = pred.inputs.candidate
    t.add_row("candidate", escape(_short_candidate(c, c.flat())))
    x = pred.inputs
    t.add_row("served-form profile", f"{_fmt(x.flops_per_sample)} FLOPs / sample, {x.aten_ops} ATen operators per "
              f"forward pass, {_fmt(x.elements_per_sample)} elements written / sample (built on the CPU)")
    t.add_row("measurement shape", f"batch {pred.inputs.batch_size} x seq {pred.inputs.seq_len}")
    t.add_row("energy / sample", _predicted(pred.predictions["energy_per_sample_j"], "J", m.is_estimate)
              + f" (meter {m.meter})")
    t.add_row("latency p50", _predicted(pred.predictions["latency_p50_ms"], "ms per batch", m.is_estimate))
    t.add_row("fitted on", escape(m.describe()))
    if pred.held_out is not None:
        t.add_row("held-out error", "; ".join(
            f"{k}: median {s['median_abs_pct_error']:.1%}, mean {s['mean_abs_pct_error']:.1%}"
            for k, s in pred.held_out.summary.items() if s.get("n")) + f" ({pred.held_out.folds}-fold on the study)")
    t.add_row("constraints", escape(", ".join(pred.constraints)) or "none")
    t.add_row("verdict", escape(pred.infeasible) if pred.infeasible else
              "not predicted infeasible" + ("" if pred.constraints else " (the study has no constraints)"))
    return t


def cost_check_table(check: Any) -> Table:
    """``nas show STUDY TRIAL``: measured J/sample and latency beside a model that never saw this trial."""
    m = check.model
    t = Table(title=f"Predicted vs measured (cost model of the study's other {len(m.trials)} trials on "
              f"{m.hardware}, meter {m.meter}{', ESTIMATE' if m.is_estimate else ''})", title_justify="left")
    for col in ("metric", "measured", "predicted", "interval", "error"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for target, p in check.predictions.items():
        err = check.error(target)
        t.add_row(target, _fmt(check.measured.get(target)), _fmt(p.median), f"{_fmt(p.low)} to {_fmt(p.high)}",
                  f"{err:+.1%}" if err is not None else "-")
    return t
