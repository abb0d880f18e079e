"""HTML pages: thin shells that ``static/app.js`` fills from the JSON API and refreshes while a search runs.

Templates are plain :class:`string.Template` files under ``templates/``; every value put into them is
HTML-escaped here. No inline script: the Content-Security-Policy allows scripts from this server only.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path
from string import Template

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from dashboards.context import AppContext
from nas.errors import StorageError
from nas.spec import study_name_problem
from storage import normalize_url

__all__ = ["router", "render", "login_page"]

_TEMPLATES = Path(__file__).parent / "templates"

router = APIRouter(include_in_schema=False)


@cache
def _template(name: str) -> Template:
    return Template((_TEMPLATES / name).read_text(encoding="utf-8"))


def render(body_template: str, *, title: str, page: str, crumbs: list[tuple[str, str | None]],
           study: str = "", trial: str = "", **values: str) -> str:
    """A full page: ``body_template`` filled with escaped ``values`` inside ``base.html``."""
    esc = {k: html.escape(v) for k, v in values.items()}
    body = _template(body_template).safe_substitute(study=html.escape(study), trial=html.escape(trial), **esc)
    crumb_html = " <span class=\"sep\">/</span> ".join(
        f'<a href="{html.escape(href)}">{html.escape(text)}</a>' if href else f"<span>{html.escape(text)}</span>"
        for text, href in crumbs)
    return _template("base.html").substitute(
        title=html.escape(title), page=page, study=html.escape(study), trial=html.escape(trial),
        crumbs=crumb_html, body=body)


def login_page(path: str) -> str:
    """The page that asks for the token (served with status 401)."""
    return render("login.html", title="Token required", page="login", crumbs=[("login", None)], path=path)


def _error_page(status: int, message: str) -> HTMLResponse:
    body = (f'<section class="card narrow"><h1>{status}</h1><p class="sub">{html.escape(message)}</p>'
            '<p><a href="/">Back to the studies</a></p></section>')
    page = _template("base.html").substitute(title=str(status), page="error", study="", trial="",
                                             crumbs="", body=body)
    return HTMLResponse(page, status_code=status)


def _check_study(request: Request, study: str) -> HTMLResponse | None:
    problem = study_name_problem(study)
    if problem is not None:
        return _error_page(422, f"{study[:100]!r} is not a valid study name: {problem}")
    ctx: AppContext = request.app.state.ctx
    try:
        ctx.info(study)
    except HTTPException as e:
        return _error_page(404, str(e.detail))
    except StorageError as e:
        return _error_page(503, str(e))
    return None


@router.get("/", response_class=HTMLResponse)
def studies_page(request: Request) -> HTMLResponse:
    """Studies: status, trials done out of the budget, joules spent, CO2eq (refreshes every few seconds)."""
    ctx: AppContext = request.app.state.ctx
    return HTMLResponse(render("studies.html", title="Studies", page="studies", crumbs=[("studies", None)],
                               db=normalize_url(ctx.db).render_as_string(hide_password=True)))


@router.get("/studies/{study}", response_class=HTMLResponse)
def study_page(request: Request, study: str) -> HTMLResponse:
    """One study: front, hypervolume curves, search cost and the trial table."""
    error = _check_study(request, study)
    if error is not None:
        return error
    return HTMLResponse(render("study.html", title=study, page="study", study=study,
                               crumbs=[("studies", "/"), (study, None)]))


@router.get("/studies/{study}/trials/{trial}", response_class=HTMLResponse)
def trial_page(request: Request, study: str, trial: int) -> HTMLResponse:
    """One trial: candidate, metrics, energy readings with provenance, and the export button."""
    error = _check_study(request, study)
    if error is not None:
        return error
    if trial < 0:
        return _error_page(404, f"study {study!r} has no trial {trial}")
    ctx: AppContext = request.app.state.ctx
    try:
        ctx.require_store().trial(study, trial)
    except StorageError:
        return _error_page(404, f"study {study!r} has no trial {trial}")
    return HTMLResponse(render("trial.html", title=f"{study} · trial {trial}", page="trial", study=study,
                               trial=str(trial), crumbs=[("studies", "/"), (study, f"/studies/{study}"),
                                                         (f"trial {trial}", None)]))
