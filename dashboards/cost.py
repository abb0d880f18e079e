"""The cost model on the dashboard: each trial's J/sample and latency against a held-out prediction (layer L4).

``GET /api/studies/{study}/cost-model`` cross-validates the study's cost model (:mod:`nas.cost_model`, one per
hardware fingerprint and meter): every COMPLETE trial is predicted by a model fitted on the other folds. It
returns the errors (the median absolute percentage error first), each trial's measured and predicted values
with the prediction's interval, and a Plotly figure of predicted against measured. The study page fetches it
apart from the polled ``/dashboard`` payload: fitting takes seconds, so the answer is cached until the study
changes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request

from dashboards.api import StudyPath, check_study_name
from dashboards.context import AppContext
from dashboards.plots import _axis, _empty, _layout
from dashboards.serialize import clean_dict, energy_label
from nas.cost_model import MIN_TRIALS, TARGETS, CrossValidation, cross_validate
from nas.cost_study import group_observations

__all__ = ["router", "cost_model_figure", "FOLDS"]

#: Folds of the cross-validation the page shows.
FOLDS = 5
_UNITS = {"energy_per_sample_j": "J/sample", "latency_p50_ms": "p50 latency, ms/batch"}
_COLOURS = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2")

router = APIRouter(prefix="/api", tags=["api"])
_CACHED = 16  # answers kept, one per (database, study, version)
_cache: dict[tuple[str, str, str], dict[str, Any]] = {}
_lock = threading.Lock()


def cost_model_figure(reports: Sequence[CrossValidation]) -> dict[str, Any]:
    """Held-out predicted against measured, one panel per target, one colour per hardware, log axes.

    Each point is a trial (``meta.role == "held-out"``) with its prediction's interval as an error bar; the
    diagonal (``meta.role == "diagonal"``) is a perfect prediction.
    """
    if not reports:
        return _empty(f"the cost model needs at least {MIN_TRIALS} COMPLETE trials on one hardware", height=260)
    data: list[dict[str, Any]] = []
    axes: dict[str, Any] = {}
    for k, target in enumerate(TARGETS, 1):
        suffix = "" if k == 1 else str(k)
        values: list[float] = []
        for colour, r in zip(_COLOURS * 4, reports, strict=False):
            rows = [h for h in r.held_out if h.metric == target]
            values += [v for h in rows for v in (h.measured, h.predicted.median)]
            data.append({
                "type": "scatter", "mode": "markers", "xaxis": f"x{suffix}", "yaxis": f"y{suffix}",
                "name": f"{r.hardware} ({energy_label([r.meter], r.is_estimate)})",
                "legendgroup": r.hardware, "showlegend": k == 1, "marker": {"color": colour, "size": 8},
                "x": [h.measured for h in rows], "y": [h.predicted.median for h in rows],
                "error_y": {"type": "data", "symmetric": False, "color": colour, "thickness": 1,
                            "array": [h.predicted.high - h.predicted.median for h in rows],
                            "arrayminus": [h.predicted.median - h.predicted.low for h in rows]},
                "customdata": [[h.trial, h.abs_pct_error] for h in rows],
                "hovertemplate": "trial %{customdata[0]}<br>measured %{x:.4g}<br>predicted %{y:.4g}"
                                 "<br>error %{customdata[1]:.1%}<extra></extra>",
                "meta": {"role": "held-out", "target": target, "hardware": r.hardware},
            })
        if values:
            lo, hi = min(values) / 1.2, max(values) * 1.2
            data.append({"type": "scatter", "mode": "lines", "xaxis": f"x{suffix}", "yaxis": f"y{suffix}",
                         "x": [lo, hi], "y": [lo, hi], "line": {"color": "#9ca3af", "dash": "dot"},
                         "hoverinfo": "skip", "showlegend": False, "meta": {"role": "diagonal", "target": target}})
        domain = [0.0, 0.44] if k == 1 else [0.56, 1.0]
        axes[f"xaxis{suffix}"] = _axis(f"measured {_UNITS[target]}", type="log", domain=domain,
                                       anchor=f"y{suffix}", exponentformat="power")
        axes[f"yaxis{suffix}"] = _axis("predicted, held out", type="log",
                                       anchor=f"x{suffix}", exponentformat="power")
    return clean_dict({"data": data, "layout": _layout(hovermode="closest", **axes)})


def _report(r: CrossValidation) -> dict[str, Any]:
    return {**r.to_dict(), "energy_label": energy_label([r.meter], r.is_estimate)}


@router.get("/studies/{study}/cost-model", summary="The cost model: held-out predicted against measured cost")
def cost_model(request: Request, study: StudyPath) -> dict[str, Any]:
    """The study's cost model, cross-validated per hardware fingerprint and meter (``FOLDS``-fold).

    ``hardware``: one entry per hardware and meter with at least ``min_trials`` COMPLETE trials: ``summary``
    (per target: ``median_abs_pct_error``, ``mean_abs_pct_error``, ``p90_abs_pct_error``, ``interval_coverage``,
    ``baseline_median_abs_pct_error``) and ``held_out`` (each trial's measured and predicted value and
    interval). An energy from an estimate meter is labelled ``ESTIMATE``. ``figure``: predicted against
    measured. ``note`` says why a hardware is left out.
    """
    ctx: AppContext = request.app.state.ctx
    bundle = ctx.bundle(check_study_name(study))
    key = (ctx.db, study, bundle.version)
    with _lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    groups = group_observations(bundle.trials)
    reports = [cross_validate(rows, hardware=hw, meter=meter, is_estimate=est, folds=FOLDS)
               for (hw, meter, est), rows in sorted(groups.items()) if len(rows) >= MIN_TRIALS]
    short = [f"{hw} ({meter}): {len(rows)} trials" for (hw, meter, _), rows in sorted(groups.items())
             if len(rows) < MIN_TRIALS]
    answer = {"study": study, "min_trials": MIN_TRIALS, "folds": FOLDS,
              "hardware": [_report(r) for r in reports], "figure": cost_model_figure(reports),
              "note": f"left out, fewer than {MIN_TRIALS} COMPLETE trials: {'; '.join(short)}" if short else None}
    answer = clean_dict(answer)
    with _lock:
        if len(_cache) >= _CACHED:
            _cache.pop(next(iter(_cache)))  # the oldest
        _cache[key] = answer
    return answer
