"""Plotly figures of a study, built as plain dicts (``{"data": [...], "layout": {...}}``).

The browser draws them with the locally served Plotly bundle (``Plotly.react``), so the same JSON feeds
the first render and every live refresh. Every trace carries ``meta.role`` so that tests and scripts can
find, for example, the front points (``role == "front"``) without relying on trace order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

import numpy as np

from dashboards.serialize import clean_dict, describe_candidate
from nas.dominance import default_reference, hypervolume_curve
from nas.noise import half_width
from nas.reference import TeacherReference
from storage import TrialView

__all__ = [
    "ATTENTION_COLOURS",
    "BIT_SYMBOLS",
    "front_figure",
    "teacher_trace",
    "hypervolume_figures",
    "cost_figure",
    "machines_figure",
]

#: Colour of each attention type (Tableau 10, colour-blind friendly).
ATTENTION_COLOURS: dict[str, str] = {
    "softmax": "#4C78A8",
    "local": "#F58518",
    "linear": "#54A24B",
    "lowrank": "#B279A2",
    "strided": "#E45756",
    "fixed": "#72B7B2",
    "hash": "#EECA3B",
}
_OTHER_COLOUR = "#9D755D"
#: Marker symbol of each weight bit-width (open variants mark estimated energy).
BIT_SYMBOLS: dict[int, str] = {32: "circle", 16: "square", 8: "diamond", 4: "triangle-up", 2: "x", 1: "cross"}
_OTHER_SYMBOL = "star"

_FONT = {"family": "Inter, system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12, "color": "#1f2937"}
_GRID = "#e5e7eb"


def _layout(**extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "font": _FONT,
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "margin": {"l": 64, "r": 16, "t": 36, "b": 52},
        "hoverlabel": {"bgcolor": "#111827", "font": {"color": "#f9fafb", "size": 12}},
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0, "font": {"size": 11}},
    }
    layout.update(extra)
    return layout


def _axis(title: str, **extra: Any) -> dict[str, Any]:
    axis = {"title": {"text": title}, "gridcolor": _GRID, "zeroline": False, "linecolor": "#9ca3af",
            "ticks": "outside", "tickcolor": "#9ca3af"}
    axis.update(extra)
    return axis


def _empty(message: str, **layout: Any) -> dict[str, Any]:
    return {"data": [], "layout": _layout(
        xaxis={"visible": False}, yaxis={"visible": False},
        annotations=[{"text": message, "showarrow": False, "font": {"size": 14, "color": "#6b7280"},
                      "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}], **layout)}


def _symbol(bits: Any, estimate: bool) -> str:
    base = BIT_SYMBOLS.get(int(bits), _OTHER_SYMBOL) if isinstance(bits, (int, float)) else _OTHER_SYMBOL
    return f"{base}-open" if estimate else base


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


_FRONT_HOVER = ("<b>trial %{customdata[0]}</b> · %{customdata[4]}<br>%{customdata[1]}<br>"
                "test accuracy %{customdata[5]} · dev accuracy %{y:.4f}<br>%{x:.3e} J/sample, %{customdata[2]}<br>"
                "%{customdata[3]}<extra></extra>")


@dataclass(frozen=True)
class _FrontPoints:
    """The drawable points of :func:`front_figure`, grouped for its traces.

    Attributes:
        groups: ``(attention, on_front)`` -> columns ``x``, ``y``, ``symbol``, ``customdata``, ``err`` (half
            the 95% interval of J/sample, :func:`nas.noise.half_width`; 0 without a CV).
        lines: Hardware fingerprint -> ``(J/sample, accuracy)`` of its front members.
        skipped: COMPLETE trials lacking accuracy or J/sample.
        any_estimate: Whether any drawn energy is an estimate.
        bits_seen: Weight bit-widths of the drawn trials.
    """

    groups: dict[tuple[str, bool], dict[str, list[Any]]]
    lines: dict[str, list[tuple[float, float]]]
    skipped: int
    any_estimate: bool
    bits_seen: set[Any]


def _half_width(t: TrialView, x: float) -> float:
    inf = t.result.inference if t.result is not None else None
    return half_width(x, inf.cv, inf.n_windows) if inf is not None else 0.0


def _front_points(trials: Sequence[TrialView], front_numbers: set[int], tied: Set[int] = frozenset()) -> _FrontPoints:
    """Group the COMPLETE trials that have accuracy and J/sample by attention type and front membership.

    Args:
        trials: The study's trials (any state).
        front_numbers: Trial numbers on the Pareto front.
        tied: The front members tied within noise (``front.noise: aware``).

    Returns:
        The points, the front lines per hardware, and what the notes under the figure need.
    """
    groups: dict[tuple[str, bool], dict[str, list[Any]]] = {}
    lines: dict[str, list[tuple[float, float]]] = {}
    skipped = 0
    any_estimate = False
    bits_seen: set[Any] = set()
    for t in trials:
        if t.state != "COMPLETE":
            continue
        v = t.values()
        x: Any = v.get("energy_per_sample_j")
        y: Any = v.get("accuracy")
        if not (_positive(x) and _finite(y)):
            skipped += 1
            continue
        on_front = t.number in front_numbers
        estimate = bool(t.is_estimate)
        any_estimate |= estimate
        bits_seen.add(v.get("weight_bits"))
        g = groups.setdefault((str(v.get("attention") or "?"), on_front),
                              {"x": [], "y": [], "symbol": [], "customdata": [], "err": []})
        g["x"].append(x)
        g["y"].append(y)
        g["symbol"].append(_symbol(v.get("weight_bits"), estimate))
        g["customdata"].append(_point_customdata(t, v, on_front, estimate, t.number in tied))
        g["err"].append(_half_width(t, float(x)))
        if on_front:
            lines.setdefault(t.hardware_fingerprint or "", []).append((float(x), float(y)))
    return _FrontPoints(groups=groups, lines=lines, skipped=skipped, any_estimate=any_estimate,
                        bits_seen=bits_seen)


def _point_customdata(t: TrialView, v: Mapping[str, Any], on_front: bool, estimate: bool,
                      tied: bool = False) -> list[Any]:
    """The hover fields of one point (see :func:`front_figure` for their order).

    Args:
        t: The trial.
        v: Its values (``t.values()``).
        on_front: Whether it is on the Pareto front.
        estimate: Whether its energy is an estimate.
        tied: Whether it is a front member tied within noise.

    Returns:
        ``[number, candidate, energy label, hardware, front text, test accuracy text]``.
    """
    label = f"ESTIMATE ({t.meter})" if estimate else f"measured ({t.meter or 'no meter'})"
    test = v.get("test_accuracy")
    return [t.number, describe_candidate(t.candidate), label, t.hardware_fingerprint or "",
            ("on the Pareto front, tied within noise" if tied else "on the Pareto front") if on_front
            else "off the front",
            f"{test:.4f}" if _finite(test) else "not measured"]


def _front_line_traces(lines: dict[str, list[tuple[float, float]]]) -> list[dict[str, Any]]:
    """One dotted step line through each hardware's front members (``meta.role == "front-line"``)."""
    data: list[dict[str, Any]] = []
    for hw, pts in sorted(lines.items()):
        pts.sort()
        data.append({
            "type": "scatter", "mode": "lines", "x": [p[0] for p in pts], "y": [p[1] for p in pts],
            "line": {"shape": "hv", "color": "#9ca3af", "width": 1.5, "dash": "dot"},
            "hoverinfo": "skip", "showlegend": False, "name": f"front {hw}".strip(),
            "meta": {"role": "front-line", "hardware": hw},
        })
    return data


def _marker_traces(groups: dict[tuple[str, bool], dict[str, list[Any]]], atts: list[str]) -> list[dict[str, Any]]:
    """The point traces: dominated ones (faded) first, then the front (solid), one per attention type."""
    data: list[dict[str, Any]] = []
    for on_front in (False, True):
        for att in atts:
            group = groups.get((att, on_front))
            if not group:
                continue
            colour = ATTENTION_COLOURS.get(att, _OTHER_COLOUR)
            data.append({
                "type": "scatter", "mode": "markers", "name": att, "legendgroup": att, "showlegend": False,
                "x": group["x"], "y": group["y"], "customdata": group["customdata"], "hovertemplate": _FRONT_HOVER,
                "opacity": 1.0 if on_front else 0.45,
                "error_x": {"type": "data", "array": group["err"], "visible": any(group["err"]), "thickness": 1,
                            "width": 3, "color": "#6b7280"},
                "marker": {"color": colour, "symbol": group["symbol"], "size": 13 if on_front else 10,
                           "line": {"color": "#111827" if on_front else colour, "width": 1.2 if on_front else 1.6}},
                "meta": {"role": "front" if on_front else "dominated", "attention": att},
            })
    return data


def _legend_traces(atts: list[str], bits_seen: set[Any]) -> list[dict[str, Any]]:
    """Legend-only traces: colour is the attention type, symbol the bit-width, kept apart."""
    data: list[dict[str, Any]] = []
    for att in atts:
        data.append({
            "type": "scatter", "mode": "markers", "x": [None], "y": [None], "name": att, "legendgroup": att,
            "marker": {"color": ATTENTION_COLOURS.get(att, _OTHER_COLOUR), "symbol": "square", "size": 11},
            "hoverinfo": "skip", "meta": {"role": "legend"},
        })
    for bits in sorted((b for b in bits_seen if isinstance(b, (int, float))), reverse=True):
        data.append({
            "type": "scatter", "mode": "markers", "x": [None], "y": [None], "name": f"{int(bits)}-bit",
            "marker": {"color": "#6b7280", "symbol": _symbol(bits, False), "size": 10},
            "hoverinfo": "skip", "legendgroup": f"bits-{bits}", "meta": {"role": "legend"},
        })
    return data


_TEACHER_COLOUR = "#DC2626"


def teacher_trace(teacher: TeacherReference | None) -> dict[str, Any] | None:
    """The teacher's point, a labelled star (``meta.role == "teacher"``); ``None`` without one to draw.

    Open when its energy is an estimate, like the trials' markers; the hover names its meter.
    """
    if teacher is None:
        return None
    x, y = teacher.energy_per_sample_j, teacher.accuracy
    if not (_positive(x) and _finite(y)):
        return None
    label = f"ESTIMATE ({teacher.meter})" if teacher.is_estimate else f"measured ({teacher.meter})"
    test = teacher.test_accuracy
    return {
        "type": "scatter", "mode": "markers+text", "name": "teacher", "x": [x], "y": [y],
        "text": ["teacher"], "textposition": "top center", "textfont": {"color": _TEACHER_COLOUR, "size": 12},
        "marker": {"color": _TEACHER_COLOUR, "symbol": "star-open" if teacher.is_estimate else "star", "size": 18,
                   "line": {"color": "#111827", "width": 1.2}},
        "customdata": [[None, teacher.name, label, teacher.hardware_fingerprint or "",
                        f"{test:.4f}" if _finite(test) else "not measured"]],
        "hovertemplate": ("<b>teacher</b> · %{customdata[1]}<br>test accuracy %{customdata[4]} · dev accuracy "
                          "%{y:.4f}<br>%{x:.3e} J/sample, %{customdata[2]}<br>%{customdata[3]}<extra></extra>"),
        "meta": {"role": "teacher"},
    }


def front_figure(trials: Sequence[TrialView], front_numbers: set[int],
                 teacher: TeacherReference | None = None, tied: Set[int] = frozenset()) -> dict[str, Any]:
    """Accuracy against inference J/sample (log x) for every COMPLETE trial, and the teacher's point.

    Front members are drawn solid (``meta.role == "front"``), dominated trials faded
    (``"dominated"``). Colour is the attention type, symbol the weight bit-width; open symbols mark
    energy that is an estimate. The y axis is the dev accuracy the front is selected on; hover shows
    the test accuracy beside it (``customdata[5]``) and the candidate; ``customdata[0]`` is the trial
    number. A study's teacher is a labelled star (``meta.role == "teacher"``, see :func:`teacher_trace`).
    Horizontal bars are each reading's 95% interval of J/sample; hover says which front members are tied
    within that noise (:mod:`nas.noise`).

    Args:
        trials: The study's trials (any state; only COMPLETE ones with both values are drawn).
        front_numbers: Trial numbers on the Pareto front (per hardware, as ``Store.front`` gives).
        teacher: The study's teacher reference, when it has one.
        tied: Front members tied within noise.
    """
    points = _front_points(trials, front_numbers, tied)
    star = teacher_trace(teacher)
    if not points.groups and star is None:
        return _empty("no complete trial with accuracy and J/sample yet")
    atts = sorted({a for a, _ in points.groups})
    data = (_front_line_traces(points.lines) + _marker_traces(points.groups, atts)
            + _legend_traces(atts, points.bits_seen) + ([star] if star is not None else []))
    notes = ["solid: Pareto front · faded: off the front"] + (["star: the teacher"] if star is not None else [])
    if any(any(g["err"]) for g in points.groups.values()):
        notes.append("bars: 95% interval of J/sample" + (f" ({len(tied)} member(s) tied within it)" if tied else ""))
    if points.any_estimate or (star is not None and teacher is not None and teacher.is_estimate):
        notes.append("open markers: ESTIMATED energy")
    if points.skipped:
        notes.append(f"{points.skipped} complete trial(s) lack accuracy or J/sample and are not drawn")
    return clean_dict({"data": data, "layout": _layout(
        xaxis=_axis("inference energy per sample (J, log scale)", type="log", exponentformat="power"),
        yaxis=_axis("dev accuracy (selected on)", tickformat=".3~p"),
        hovermode="closest",
        annotations=[{"text": " · ".join(notes), "showarrow": False, "xref": "paper", "yref": "paper",
                      "x": 1, "y": -0.16, "xanchor": "right", "font": {"size": 11, "color": "#6b7280"}}],
        margin={"l": 64, "r": 16, "t": 40, "b": 70},
    )})


def machines_figure(views: Sequence[TrialView], front: Sequence[TrialView]) -> dict[str, Any]:
    """Each machine's front side by side: one panel per hardware fingerprint, a shared accuracy axis.

    ``views`` are the study's trials as measured by the search and as re-measured on other machines
    (``nas remeasure``; :meth:`storage.Store.remeasured_trials`), ``front`` every machine's front
    (:meth:`storage.Store.front`). A study measured on one machine gets a note saying how to add one.
    """
    by_hw: dict[str, list[TrialView]] = {}
    for v in views:
        if v.state == "COMPLETE":
            by_hw.setdefault(v.hardware_fingerprint or "", []).append(v)
    if len(by_hw) < 2:
        return _empty("measured on one machine: `nas remeasure STUDY` on another adds its front here", height=260)
    n, gap = len(by_hw), 0.06
    data: list[dict[str, Any]] = []
    axes: dict[str, Any] = {}
    order = sorted(by_hw.items(), key=lambda kv: (all(t.remeasured for t in kv[1]), kv[0]))  # the search's first
    for k, (hw, group) in enumerate(order, 1):
        here = [t for t in front if (t.hardware_fingerprint or "") == hw]
        points = _front_points(group, {t.number for t in here}, {t.number for t in here if t.noise == "tied"})
        atts = sorted({a for a, _ in points.groups})
        suffix = "" if k == 1 else str(k)
        for trace in _front_line_traces(points.lines) + _marker_traces(points.groups, atts):
            data.append({**trace, "xaxis": f"x{suffix}", "yaxis": "y", "meta": {**trace["meta"], "hardware": hw}})
        lo, hi = (k - 1) / n, k / n - (gap if k < n else 0)
        estimate = " (ESTIMATE)" if points.any_estimate else ""
        axes[f"xaxis{suffix}"] = _axis(f"J/sample on {hw}{estimate}", type="log", exponentformat="power",
                                       domain=[lo, hi], anchor="y")
    return clean_dict({"data": data, "layout": _layout(
        yaxis=_axis("dev accuracy (selected on)", tickformat=".3~p"), hovermode="closest", showlegend=False,
        margin={"l": 64, "r": 16, "t": 24, "b": 70}, **axes)})


def _cumulative_energy(trials: Sequence[TrialView]) -> dict[int, float]:
    """Joules spent by the search up to and including each trial number (every state counts)."""
    spent = 0.0
    out: dict[int, float] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.cost is not None and t.cost.total_energy_j is not None and math.isfinite(t.cost.total_energy_j):
            spent += t.cost.total_energy_j
        out[t.number] = spent
    return out


def hypervolume_figures(
    trials: Sequence[TrialView], objectives: Sequence[tuple[str, str]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Hypervolume of the study's objectives after each COMPLETE trial, against trials and against joules.

    The hypervolume is normalised by the box between the ideal point and the reference point
    (:func:`nas.dominance.default_reference` over all complete trials), so 1.0 would be a single trial
    that is best in every objective. Trials are taken in number order.
    """
    complete = sorted((t for t in trials if t.state == "COMPLETE"), key=lambda t: t.number)
    directions = [d for _, d in objectives]
    names = [m for m, _ in objectives]
    pts = np.array([[_nan(t.values().get(m)) for m in names] for t in complete], dtype=np.float64)
    finite = pts[~np.isnan(pts).any(axis=1)] if len(complete) else pts
    if len(complete) == 0 or finite.shape[0] == 0:
        msg = "hypervolume appears after the first complete trial"
        return _empty(msg), _empty(msg)
    ref = default_reference(pts, directions)
    curve = hypervolume_curve(pts, directions, ref)
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    ideal = (finite * signs).min(axis=0) * signs
    box = float(np.prod(np.abs(ref - ideal)))
    hv = [c / box for c in curve] if box > 0 else curve
    numbers = [t.number for t in complete]
    spent = _cumulative_energy(trials)
    joules = [spent[n] for n in numbers]
    estimate = any(t.cost is not None and t.cost.is_estimate for t in trials)
    objective_text = " vs ".join(f"{m} ({'max' if d == 'maximize' else 'min'})" for m, d in objectives)
    hover = "trial %{customdata}<br>hypervolume %{y:.4f}<br>%{x:,.1f}<extra></extra>"
    by_trials = {"data": [{
        "type": "scatter", "mode": "lines+markers", "x": numbers, "y": hv, "customdata": numbers,
        "line": {"shape": "hv", "color": "#4C78A8", "width": 2}, "marker": {"size": 5},
        "hovertemplate": "trial %{x}<br>hypervolume %{y:.4f}<extra></extra>", "name": "hypervolume",
        "meta": {"role": "hypervolume"},
    }], "layout": _layout(xaxis=_axis("trial number"), yaxis=_axis("normalised hypervolume", rangemode="tozero"),
                          title={"text": objective_text, "font": {"size": 11, "color": "#6b7280"}, "x": 0.01},
                          showlegend=False)}
    x_title = "search energy spent (J" + (", includes ESTIMATES)" if estimate else ")")
    by_joules = {"data": [{
        "type": "scatter", "mode": "lines+markers", "x": joules, "y": hv, "customdata": numbers,
        "line": {"shape": "hv", "color": "#F58518", "width": 2}, "marker": {"size": 5},
        "hovertemplate": hover.replace("%{x:,.1f}", "%{x:,.1f} J spent"), "name": "hypervolume",
        "meta": {"role": "hypervolume"},
    }], "layout": _layout(xaxis=_axis(x_title), yaxis=_axis("normalised hypervolume", rangemode="tozero"),
                          title={"text": objective_text, "font": {"size": 11, "color": "#6b7280"}, "x": 0.01},
                          showlegend=False)}
    return clean_dict(by_trials), clean_dict(by_joules)


def cost_figure(trials: Sequence[TrialView]) -> dict[str, Any]:
    """Search-cost breakdown: joules spent training and measuring, stacked, per trial outcome."""
    states = [("COMPLETE", "complete"), ("PRUNED", "stopped early"), ("FAIL", "failed")]
    train = dict.fromkeys((s for s, _ in states), 0.0)
    measure = dict.fromkeys((s for s, _ in states), 0.0)
    estimate = False
    meters: set[str] = set()
    for t in trials:
        if t.cost is None or t.state not in train:
            continue
        estimate |= t.cost.is_estimate
        if t.cost.meter and t.cost.meter != "none":
            meters.add(t.cost.meter)
        if t.cost.train_energy_j is not None and math.isfinite(t.cost.train_energy_j):
            train[t.state] += t.cost.train_energy_j
        if t.cost.measure_energy_j is not None and math.isfinite(t.cost.measure_energy_j):
            measure[t.state] += t.cost.measure_energy_j
    if not any(train.values()) and not any(measure.values()):
        return _empty("no metered search cost yet")
    labels = [label for _, label in states]
    meter_text = ", ".join(sorted(meters)) or "no meter"
    suffix = f"ESTIMATE, {meter_text}" if estimate else f"measured, {meter_text}"
    hover = "%{x}: %{y:,.2f} J<extra>%{fullData.name}</extra>"
    data = [
        {"type": "bar", "name": "training + distillation", "x": labels, "y": [train[s] for s, _ in states],
         "marker": {"color": "#4C78A8"}, "hovertemplate": hover, "meta": {"role": "cost-train"}},
        {"type": "bar", "name": "energy measurement", "x": labels, "y": [measure[s] for s, _ in states],
         "marker": {"color": "#F58518"}, "hovertemplate": hover, "meta": {"role": "cost-measure"}},
    ]
    return clean_dict({"data": data, "layout": _layout(
        barmode="stack", xaxis=_axis("trial outcome"), yaxis=_axis("joules"),
        annotations=[{"text": suffix, "showarrow": False, "xref": "paper", "yref": "paper", "x": 1, "y": 1.02,
                      "xanchor": "right", "yanchor": "bottom", "font": {"size": 11, "color": "#b45309" if estimate
                                                                         else "#047857"}}])})


def _nan(v: Any) -> float:
    return float(v) if _finite(v) else math.nan


def figures_for(trials: Sequence[TrialView], front: Sequence[TrialView], objectives: Sequence[tuple[str, str]],
                teacher: TeacherReference | None = None,
                remeasured: Sequence[TrialView] = ()) -> Mapping[str, dict[str, Any]]:
    """Every figure of the study page, by element id (the front figure with the teacher's point).

    ``front`` is every machine's front (:meth:`storage.Store.front`); the main figure marks the members of
    the search's own, and ``machines`` puts each machine's front, ``remeasured`` ones included, side by side.
    """
    hv_trials, hv_joules = hypervolume_figures(trials, objectives)
    own_front = {t.number for t in front if not t.remeasured}
    tied = {t.number for t in front if not t.remeasured and t.noise == "tied"}
    return {"front": front_figure(trials, own_front, teacher, tied), "hv_trials": hv_trials, "hv_joules": hv_joules,
            "cost": cost_figure(trials), "machines": machines_figure([*trials, *remeasured], front)}
