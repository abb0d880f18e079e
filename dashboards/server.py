"""The FastAPI app behind ``nas serve``: :func:`create_app` builds it, :func:`run` serves it.

Security model (the checks themselves live in :mod:`dashboards.security` and :mod:`dashboards.launch`):

* **Binding.** Bound to loopback, no token is needed (unless one is given). Bound to anything else,
  :func:`run` refuses to start without a token (``--token`` or ``NAS_TOKEN``). A token must be at least
  16 printable ASCII characters without whitespace.
* **Host header.** Bound to loopback, only requests whose ``Host`` is a loopback name (``localhost``,
  ``127.x.y.z``, ``[::1]``, any port) or an ``--allowed-host`` are served; others get 421, so a
  DNS-rebinding page cannot read the API. Bound elsewhere, ``--allowed-host`` (when given) limits it too.
* **Cross-site requests.** Every state-changing request (any method but GET, HEAD, OPTIONS) must
  declare ``Content-Type: application/json`` (415 otherwise; a route without a body takes an empty
  one), and an ``Origin`` (or else ``Referer``) it carries must name the same host and port as ``Host``
  (403 otherwise). Forms and ``text/plain`` posts from other sites are refused before any route runs.
* **Token.** With a token, every request needs it: ``Authorization: Bearer TOKEN``, or ``?token=TOKEN``
  on a page, which sets an HttpOnly, SameSite=Lax cookie and redirects to the same URL without the
  token. A wrong or malformed token (non-ASCII included) is always 401. The access log shows
  ``token=***`` instead of the value.
* **Paths.** Study names follow :func:`nas.spec.study_name_problem` (no leading dot), and every path
  built from a request is checked by :func:`dashboards.launch.path_under` to stay in its folder.
* **Launches.** ``POST /api/studies`` is capped by :class:`dashboards.limits.LaunchLimits`: searches
  running at once (429 beyond) and each spec's resources and trial budget (422 beyond).
* Request bodies are capped (:data:`dashboards.api.MAX_BODY_BYTES`) while they stream in.
* Pages load scripts from this server only (a strict Content-Security-Policy; Plotly is served from
  ``/static/plotly.min.js``, never a CDN).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from dashboards import api, cost, pages
from dashboards.context import AppContext
from dashboards.limits import LaunchLimits
from dashboards.security import COOKIE_NAME, BodyLimit, Guard, check_token, host_policy, is_loopback
from nas.errors import ConfigError, NASError, StorageError

__all__ = ["create_app", "run", "is_loopback", "uvicorn_log_config", "COOKIE_NAME", "DEFAULT_ARTEFACTS"]

log = logging.getLogger(__name__)

#: Where exports and launched specs go when no ``artefacts`` folder is given.
DEFAULT_ARTEFACTS = Path("nas_artefacts")
_STATIC = Path(__file__).parent / "static"
_FAVICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
            b'fill="#111827"/><path d="M9 1 3 9h4l-1 6 6-8H8z" fill="#fbbf24"/></svg>')


@lru_cache(maxsize=1)
def _plotly_js() -> bytes:
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs()).encode("utf-8")


def create_app(
    db: str,
    *,
    token: str | None = None,
    artefacts: Path | None = None,
    require_token: bool = False,
    host: str = "127.0.0.1",
    allowed_hosts: Sequence[str] = (),
    limits: LaunchLimits | None = None,
) -> FastAPI:
    """Build the dashboard and API app over the database ``db`` (opened read-only, lazily).

    Args:
        db: Database URL or SQLite path, as for ``nas --db``.
        token: When set, every request must carry it (see the module docstring). An empty string is
            no token.
        artefacts: Folder for exports and for the specs and logs of launched searches
            (default ``./nas_artefacts``). Export paths never leave it.
        require_token: Refuse to build the app without a token (non-loopback binds).
        host: The address the app is served on. Bound to loopback, requests must name a loopback host
            (or one of ``allowed_hosts``) in their ``Host`` header.
        allowed_hosts: Host names served beside loopback names; off loopback, when empty, any.
        limits: Caps on searches launched over HTTP (default :class:`LaunchLimits`).

    Raises:
        ConfigError: ``require_token`` is set but no token was given, or the token is too weak.
    """
    if require_token and not token:
        raise ConfigError("a token is required to serve beyond loopback", field="--token",
                          fix="pass --token SECRET or set NAS_TOKEN")
    if token:
        check_token(token)
    limits = limits or LaunchLimits()
    root = (artefacts or DEFAULT_ARTEFACTS).expanduser().resolve()
    ctx = AppContext(db, root, limits)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        ctx.close()

    app = FastAPI(
        lifespan=lifespan,
        title="energy-nas",
        summary="Energy-aware Transformer NAS: studies, Pareto fronts of accuracy against joules, exports.",
        version="1",
        docs_url=None,  # the Swagger UI loads from a CDN; the schema itself is at /openapi.json
        redoc_url=None,
    )
    app.state.ctx = ctx

    _add_error_handlers(app)
    _add_small_routes(app, ctx)
    app.include_router(api.router)
    app.include_router(cost.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=_STATIC), name="static")
    app.add_middleware(BodyLimit, max_bytes=api.MAX_BODY_BYTES)
    app.add_middleware(Guard, token=token or None, allowed_hosts=host_policy(host, allowed_hosts))
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Turn the package's errors into JSON responses: storage errors 503, other ``NASError`` 400.

    Args:
        app: The app to add the handlers to.
    """

    @app.exception_handler(StorageError)
    async def _storage_error(_request: Request, exc: StorageError) -> JSONResponse:
        log.warning("storage error: %s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(NASError)
    async def _nas_error(_request: Request, exc: NASError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)


def _add_small_routes(app: FastAPI, ctx: AppContext) -> None:
    """Add the routes outside the API and the pages: the Plotly bundle, the favicon and ``/healthz``.

    Args:
        app: The app to add the routes to.
        ctx: The app's context (``/healthz`` opens its store).
    """

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_js() -> Response:
        return Response(_plotly_js(), media_type="application/javascript",
                        headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(_FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        try:
            store = ctx.store()
        except StorageError as e:
            raise HTTPException(503, str(e)) from e
        return {"ok": True, "database": store.display_url if store else None}


def uvicorn_log_config() -> dict[str, Any]:
    """Uvicorn's logging setup, with :class:`dashboards.security.RedactTokens` on its access log."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": "dashboards.security.RedactTokens"}
    access = config["loggers"].setdefault("uvicorn.access", {})
    access["filters"] = [*access.get("filters", []), "redact_tokens"]
    return config


def run(
    db: str = "nas.db",
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    artefacts: Path | None = None,
    allowed_hosts: Sequence[str] = (),
    limits: LaunchLimits | None = None,
) -> None:
    """Serve the app with uvicorn until interrupted (``nas serve``); see :func:`create_app` for the options.

    Raises:
        ConfigError: ``host`` is not loopback and no token was given (``--token`` or ``NAS_TOKEN``), or
            the token is too weak.
    """
    token = token or os.environ.get("NAS_TOKEN") or None
    loopback = is_loopback(host)
    if not loopback and not token:
        raise ConfigError(f"refusing to serve on {host} without a token", field="--token",
                          fix="pass --token SECRET or set NAS_TOKEN, or bind to 127.0.0.1")
    app = create_app(db, token=token, artefacts=artefacts, require_token=not loopback, host=host,
                     allowed_hosts=allowed_hosts, limits=limits)
    import uvicorn

    log.info("serving %s on http://%s:%d (%s)", db, host, port, "token required" if token else "no token")
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=False, server_header=False,
                log_config=uvicorn_log_config())
