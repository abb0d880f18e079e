"""The JSON API under ``/api`` (schema at ``/openapi.json``).

Every read goes through :class:`storage.Store` on its own short session, so reads never hold a lock
that the search driver waits for (SQLite runs in WAL mode). Every input is validated: study names by
:func:`nas.spec.study_name_problem` (the rule of ``StudySpec.name``), trial numbers as non-negative
integers, ``where`` expressions by the :mod:`nas.where` parser (never evaluated as Python), spec bodies by
pydantic, a size cap and the server's launch caps. Paths built from a request go through
:func:`dashboards.launch.path_under`.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import zipfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi import Path as PathParam

import nas.export
from dashboards.context import AppContext
from dashboards.launch import LaunchLimitError, check_http_spec, inside, path_under
from dashboards.plots import figures_for
from dashboards.serialize import (
    clean_dict,
    fidelity_json,
    study_summary,
    teacher_json,
    trial_detail,
    trial_row,
)
from nas.errors import ConfigError, NASError, StorageError
from nas.spec import StudySpec, study_name_problem
from nas.vocab import EXPORT_CHOICE
from nas.where import MAX_EXPR_CHARS, compile_where
from storage import FILTER_NAMES

__all__ = ["router", "MAX_BODY_BYTES", "check_study_name"]

log = logging.getLogger(__name__)

#: Largest request body accepted, in bytes (a study spec is a few hundred bytes).
MAX_BODY_BYTES = 64 * 1024
_TRIAL_STATES = ("COMPLETE", "FAIL", "PRUNED", "RUNNING")

router = APIRouter(prefix="/api", tags=["api"])


def check_study_name(study: str) -> str:
    """``study`` if it is a valid study name (:func:`nas.spec.study_name_problem`), else HTTP 422 why not."""
    problem = study_name_problem(study)
    if problem is not None:
        raise HTTPException(422, f"study: {problem} (got {study[:120]!r})")
    return study


StudyPath = Annotated[str, PathParam(description="Study name: 1-100 of A-Z a-z 0-9 _ . -, not starting with a dot",
                                     max_length=200)]
TrialPath = Annotated[int, PathParam(ge=0, le=2**31 - 1, description="Trial number")]
WhereQuery = Annotated[str | None, Query(max_length=MAX_EXPR_CHARS,
                                         description='Filter, e.g. "energy_per_sample_j < 0.002 and weight_bits <= 8"')]


def _ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def _predicate(where: str | None) -> Any:
    if not where:
        return None
    try:
        return compile_where(where, FILTER_NAMES)
    except ConfigError as e:
        raise HTTPException(400, f"where: {e}") from e


@router.get("/studies", summary="Every study with status, progress and search cost")
def list_studies(request: Request) -> list[dict[str, Any]]:
    """Studies, oldest first.

    Each with its status, trials done out of the budget, joules spent (with meter and ESTIMATE flag) and
    CO2eq.
    """
    ctx = _ctx(request)
    store = ctx.store()
    if store is None:
        return []
    out = []
    for info in store.list_studies():
        bundle = ctx.bundle(info.name)
        out.append(study_summary(bundle.info, bundle.trials, ctx.launcher.status(info.name)))
    return out


@router.get("/studies/{study}", summary="One study: summary, spec and fidelity")
def get_study(request: Request, study: StudyPath) -> dict[str, Any]:
    """The study's summary (as in ``GET /api/studies``) plus its spec, front and ``fidelity``.

    ``fidelity`` is Spearman's rank correlation of dev accuracy between consecutive rungs (as in
    ``nas show STUDY``), with a ``warning`` when one is below ``warn_below``.
    """
    ctx = _ctx(request)
    bundle = ctx.bundle(check_study_name(study))
    out = study_summary(bundle.info, bundle.trials, ctx.launcher.status(study))
    out["spec"] = bundle.info.spec
    out["front"] = sorted(bundle.front_numbers)
    out["fidelity"] = fidelity_json(bundle.fidelity)
    return out


@router.get("/studies/{study}/trials", summary="The trials of a study")
def list_trials(
    request: Request,
    study: StudyPath,
    where: WhereQuery = None,
    state: Annotated[Literal["COMPLETE", "FAIL", "PRUNED", "RUNNING"] | None, Query()] = None,
) -> list[dict[str, Any]]:
    """Trials in number order, each with its flat values, cost and whether it is on the Pareto front.

    ``where`` filters on the names of ``nas pareto --where`` (parsed, never evaluated).
    """
    ctx = _ctx(request)
    predicate = _predicate(where)
    bundle = ctx.bundle(check_study_name(study))
    marks = bundle.front_noise
    return [trial_row(t, on_front=t.number in marks, teacher=bundle.teacher, noise=marks.get(t.number))
            for t in bundle.trials if (state is None or t.state == state) and (predicate is None or predicate(t.values()))]


@router.get("/studies/{study}/pareto", summary="Pareto-optimal trials, per hardware fingerprint")
def pareto(
    request: Request,
    study: StudyPath,
    where: WhereQuery = None,
    hardware: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """The front among the COMPLETE trials that satisfy ``where``.

    These are the same trials as ``nas pareto STUDY --where ... --json``. With a measured teacher,
    ``teacher`` is its point and each trial's ``teacher_ratios`` its ratios to it (else both ``null``).
    """
    ctx = _ctx(request)
    check_study_name(study)
    info = ctx.info(study)
    _predicate(where)  # a clean 400 for a bad expression before touching the database
    store = ctx.require_store()
    try:
        front = store.front(study, where=where, hardware=hardware)
    except ConfigError as e:
        raise HTTPException(400, f"where: {e}") from e
    teacher = store.teacher_reference(study)
    return {
        "study": study,
        "objectives": [{"metric": m, "direction": d} for m, d in info.objectives],
        "where": where,
        "hardware": hardware,
        "count": len(front),
        "teacher": teacher_json(teacher),
        "trials": [trial_row(t, on_front=True, teacher=teacher, noise=t.noise) for t in front],
    }


@router.get("/studies/{study}/teacher", summary="The study's measured teacher: the reference point")
def get_teacher(request: Request, study: StudyPath) -> dict[str, Any]:
    """The teacher assessed like a trial (same protocol, meter, batch and sequence length), or ``null``.

    ``teacher`` is its point and cost (every energy with its meter and ``is_estimate``); ``record`` the
    full stored record; ``front`` each front member's dev-accuracy and J/sample ratios to it.
    """
    ctx = _ctx(request)
    bundle = ctx.bundle(check_study_name(study))
    ref = bundle.teacher
    return {
        "study": study,
        "teacher": teacher_json(ref),
        "record": clean_dict(ref.to_dict()) if ref is not None else None,
        "front": [{"number": t.number, **t.ratios_to(ref).to_dict()} for t in bundle.front] if ref is not None else [],
    }


@router.get("/studies/{study}/trials/{trial}", summary="One trial with every energy reading")
def get_trial(request: Request, study: StudyPath, trial: TrialPath) -> dict[str, Any]:
    """One trial: candidate, metrics, energy readings, cost and artefacts.

    Every energy reading comes with its meter, ESTIMATE flag and provenance.
    """
    ctx = _ctx(request)
    bundle = ctx.bundle(check_study_name(study))
    store = ctx.require_store()
    try:
        view = store.trial(study, trial)
        readings = store.readings(study, trial)
        artefacts = store.artefacts(study, trial)
    except StorageError as e:
        raise HTTPException(404, f"study {study!r} has no trial {trial}") from e
    marks = bundle.front_noise
    return trial_detail(view, readings, artefacts, on_front=trial in marks, teacher=bundle.teacher,
                        noise=marks.get(trial))


@router.get("/studies/{study}/dashboard", summary="Everything the study page draws (polled while a search runs)")
def study_dashboard(request: Request, study: StudyPath) -> dict[str, Any]:
    """Summary, Plotly figures and the trial table of one study.

    The figures are the front (with the teacher's point), hypervolume against trials and joules, and the
    cost breakdown. ``teacher`` is the study's measured teacher (``null`` without one); each trial row
    then has its ratios to it. ``fidelity`` is as in ``GET /api/studies/{study}``. ``version`` changes
    whenever any of it changes.
    """
    ctx = _ctx(request)
    bundle = ctx.bundle(check_study_name(study))
    marks = bundle.front_noise
    return {
        "version": bundle.version,
        "summary": study_summary(bundle.info, bundle.trials, ctx.launcher.status(study)),
        "figures": figures_for(bundle.trials, bundle.front, bundle.info.objectives, bundle.teacher,
                               bundle.remeasured),
        "front": sorted(marks),
        "teacher": teacher_json(bundle.teacher),
        "fidelity": fidelity_json(bundle.fidelity),
        "trials": [trial_row(t, on_front=t.number in marks, teacher=bundle.teacher, noise=marks.get(t.number))
                   for t in bundle.trials],
    }


_SPEC_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {
        "type": "object",
        "description": "A study spec (the JSON form of study.yaml; see examples/study.yaml). At most "
                       f"{MAX_BODY_BYTES} bytes. storage.url and storage.artefacts_dir are the server's.",
        "example": {"name": "my-study", "budget": {"trials": 8}},
    }}},
}


@router.post("/studies", status_code=202, summary="Launch a search in the background",
             openapi_extra={"requestBody": _SPEC_BODY})
async def launch_study(request: Request) -> dict[str, Any]:
    """Validate a study spec and start ``nas search`` on it as a separate process.

    Returns ``202`` with the study name, which is its id in every other endpoint. The search writes the
    database itself; poll ``GET /api/studies/{study}`` for progress.
    """
    ctx = _ctx(request)
    body = await request.body()  # the size cap is enforced while it streams in (server.BodyLimit)
    if len(body) > MAX_BODY_BYTES:
        raise HTTPException(413, f"the spec body is larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        raise HTTPException(422, "send a study spec as a JSON object, e.g. {\"name\": \"my-study\"}")
    try:
        spec = StudySpec.model_validate_json(body)
    except ValueError as e:  # pydantic.ValidationError is a ValueError
        errors = getattr(e, "errors", None)
        detail: Any = [{"loc": list(err.get("loc", ())), "msg": err.get("msg", "")} for err in errors()] \
            if callable(errors) else str(e)
        raise HTTPException(422, detail) from e
    try:
        spec = check_http_spec(spec, db=ctx.db, artefacts=ctx.artefacts, limits=ctx.limits)
    except ConfigError as e:
        raise HTTPException(422, str(e)) from e
    store = ctx.store()
    if store is not None and spec.name in {s.name for s in store.list_studies()}:
        raise HTTPException(409, f"study {spec.name!r} already exists; choose another name "
                                 f"(resume it with `nas search --resume {spec.name}`)")
    try:
        launch = ctx.launcher.launch(spec)
    except LaunchLimitError as e:
        raise HTTPException(429, str(e)) from e
    except ConfigError as e:
        raise HTTPException(409, str(e)) from e
    except OSError as e:
        raise HTTPException(500, f"could not start the search: {e}") from e
    return {"id": spec.name, "study": spec.name, "status": "launched", "launch": launch.status(),
            "links": {"study": f"/api/studies/{spec.name}", "page": f"/studies/{spec.name}"}}


def _zip_folder(folder: Path, top: str) -> bytes:
    """The files under ``folder`` as a zip whose entries sit under ``top/``; links are left out."""
    buf = io.BytesIO()
    root = folder.resolve()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                # Never let a link carry a file from outside the export into the archive.
                if path.is_symlink() or not inside(root, path):
                    log.warning("export: leaving out %s (a link or outside %s)", path, root)
                    continue
                zf.write(path, f"{top}/{path.relative_to(root).as_posix()}")
    return buf.getvalue()


@router.post("/studies/{study}/trials/{trial}/export", summary="Export a trial and download it as a zip",
             response_class=Response,
             responses={200: {"content": {"application/zip": {}}, "description": "A zip of the export folder"}})
def export(
    request: Request,
    study: StudyPath,
    trial: TrialPath,
    format: Annotated[str, EXPORT_CHOICE, Query(description="Export format")] = "all",
) -> Response:
    """Run ``nas export`` for a COMPLETE trial into the server's artefact folder and return it zipped."""
    ctx = _ctx(request)
    check_study_name(study)
    ctx.info(study)
    try:
        view = ctx.require_store().trial(study, trial)
    except StorageError as e:
        raise HTTPException(404, f"study {study!r} has no trial {trial}") from e
    if view.state != "COMPLETE":
        raise HTTPException(409, f"trial {trial} is {view.state}; only COMPLETE trials can be exported")
    exports = ctx.artefacts / "exports"
    try:
        out_dir = path_under(exports, study, f"trial_{trial:05d}_{format}", field="study")
    except ConfigError as e:
        raise HTTPException(400, str(e)) from e
    key = (study, trial, format)
    lock = ctx.export_locks.setdefault(key, threading.Lock())
    with lock:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            nas.export.export_trial(study, trial, out_dir, fmt=format, db=ctx.db, force=True)
        except NASError as e:
            raise HTTPException(422, f"export failed: {e}") from e
        if not out_dir.is_dir() or not inside(exports, out_dir):
            raise HTTPException(500, "the export produced no folder")
        top = f"{study}-trial{trial}-{format}"
        data = _zip_folder(out_dir, top)
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{top}.zip"'})
