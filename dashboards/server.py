"""The FastAPI app behind ``nas serve``: :func:`create_app` builds it, :func:`run` serves it.

Security model:

* Bound to loopback, no token is needed (unless one is given). Bound to anything else, :func:`run`
  refuses to start without a token (``--token`` or ``NAS_TOKEN``).
* With a token, every request needs it: ``Authorization: Bearer TOKEN``, or ``?token=TOKEN`` on a page,
  which sets an HttpOnly, SameSite=Lax cookie and redirects to the same URL without the token.
* Request bodies are capped (:data:`dashboards.api.MAX_BODY_BYTES`) while they stream in.
* Pages load scripts from this server only (a strict Content-Security-Policy; Plotly is served from
  ``/static/plotly.min.js``, never a CDN).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboards import api, pages
from dashboards.context import AppContext
from nas.errors import ConfigError, NASError, StorageError

__all__ = ["create_app", "run", "is_loopback", "COOKIE_NAME", "DEFAULT_ARTEFACTS"]

log = logging.getLogger(__name__)

#: The cookie that carries the token for pages after ``?token=``.
COOKIE_NAME = "nas_token"
#: Where exports and launched specs go when no ``artefacts`` folder is given.
DEFAULT_ARTEFACTS = Path("nas_artefacts")
_STATIC = Path(__file__).parent / "static"
_FAVICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
            b'fill="#111827"/><path d="M9 1 3 9h4l-1 6 6-8H8z" fill="#fbbf24"/></svg>')
_SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                 b"img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
                                 b"base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


@lru_cache(maxsize=1)
def _plotly_js() -> bytes:
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs()).encode("utf-8")


async def _send_json(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + _SECURITY_HEADERS + (extra or [])})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Answers 413 once a request body grows past ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body is larger than {self.max_bytes} bytes"
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, "Content-Length is not a number")
                    return
                if declared > self.max_bytes:
                    await _send_json(send, 413, message)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, message)


class Guard:
    """Token check on every request (when a token is set) and security headers on every response."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    def _matches(self, candidate: str | None) -> bool:
        return candidate is not None and self.token is not None and hmac.compare_digest(
            candidate.encode("utf-8"), self.token.encode("utf-8"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                msg = dict(msg)
                msg["headers"] = list(msg.get("headers", [])) + _SECURITY_HEADERS
            await send(msg)

        if self.token is None:
            await self.app(scope, receive, with_headers)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        bearer = None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            bearer = auth[7:].strip()
        query_token = next((v for k, v in query if k == "token"), None)
        cookie_token = None
        if "cookie" in headers:
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(headers["cookie"])
            except Exception:  # a malformed cookie header is just no cookie
                jar = SimpleCookie()
            if COOKIE_NAME in jar:
                cookie_token = jar[COOKIE_NAME].value
        if self._matches(query_token) and scope["method"] == "GET" and not scope["path"].startswith("/api/") \
                and "text/html" in headers.get("accept", ""):
            # A page opened with ?token=: keep the token in a cookie and drop it from the address bar.
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = scope["path"] + (f"?{rest}" if rest else "")
            cookie = (f"{COOKIE_NAME}={self.token}; Path=/; HttpOnly; SameSite=Lax").encode("latin-1")
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", location.encode("latin-1")), (b"set-cookie", cookie),
                                    (b"content-length", b"0")] + _SECURITY_HEADERS})
            await send({"type": "http.response.body", "body": b""})
            return
        if self._matches(bearer) or self._matches(query_token) or self._matches(cookie_token):
            await self.app(scope, receive, with_headers)
            return
        if scope["method"] == "GET" and "text/html" in headers.get("accept", ""):
            body = pages.login_page(scope["path"]).encode("utf-8")
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"text/html; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode())] + _SECURITY_HEADERS})
            await send({"type": "http.response.body", "body": body})
            return
        await _send_json(send, 401, "missing or wrong token; send 'Authorization: Bearer TOKEN' "
                                    "(or ?token=TOKEN on a page)", [(b"www-authenticate", b"Bearer")])


def create_app(
    db: str,
    *,
    token: str | None = None,
    artefacts: Path | None = None,
    require_token: bool = False,
) -> FastAPI:
    """Build the dashboard and API app over the database ``db`` (opened read-only, lazily).

    Args:
        db: Database URL or SQLite path, as for ``nas --db``.
        token: When set, every request must carry it (see the module docstring).
        artefacts: Folder for exports and for the specs and logs of launched searches
            (default ``./nas_artefacts``). Export paths never leave it.
        require_token: Refuse to build the app without a token (non-loopback binds).

    Raises:
        ConfigError: ``require_token`` is set but no token was given.
    """
    if require_token and not token:
        raise ConfigError("a token is required to serve beyond loopback", field="--token",
                          fix="pass --token SECRET or set NAS_TOKEN")
    root = (artefacts or DEFAULT_ARTEFACTS).expanduser().resolve()
    ctx = AppContext(db, root)

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

    @app.exception_handler(StorageError)
    async def _storage_error(_request: Request, exc: StorageError) -> JSONResponse:
        log.warning("storage error: %s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(NASError)
    async def _nas_error(_request: Request, exc: NASError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

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

    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=_STATIC), name="static")
    app.add_middleware(BodyLimit, max_bytes=api.MAX_BODY_BYTES)
    app.add_middleware(Guard, token=token or None)
    return app


def run(
    db: str = "nas.db",
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    artefacts: Path | None = None,
) -> None:
    """Serve the app with uvicorn until interrupted (``nas serve``).

    Raises:
        ConfigError: ``host`` is not loopback and no token was given (``--token`` or ``NAS_TOKEN``).
    """
    token = token or os.environ.get("NAS_TOKEN") or None
    loopback = is_loopback(host)
    if not loopback and not token:
        raise ConfigError(f"refusing to serve on {host} without a token", field="--token",
                          fix="pass --token SECRET or set NAS_TOKEN, or bind to 127.0.0.1")
    app = create_app(db, token=token, artefacts=artefacts, require_token=not loopback)
    import uvicorn

    log.info("serving %s on http://%s:%d (%s)", db, host, port, "token required" if token else "no token")
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=False, server_header=False)
