"""What stands in front of every route of ``nas serve``: ASGI middleware and the rules it applies.

In the order a request meets them (:class:`Guard`, then :class:`BodyLimit`):

1. **Host.** Bound to loopback (or given ``allowed_hosts``), the ``Host`` header must be a loopback name
   (``localhost``, ``127.x.y.z``, ``[::1]``, any port) or an allowed host, else 421. A page on another
   site cannot read the API by re-pointing its own domain at 127.0.0.1 (DNS rebinding).
2. **Same origin and JSON** for every state-changing method (anything but GET, HEAD and OPTIONS): an
   ``Origin`` header (or, without one, a ``Referer``) must name the host and port of the ``Host`` header,
   else 403; and the request must declare ``Content-Type: application/json``, with or without a body,
   else 415. Another site can neither post a form nor send a "simple" ``text/plain`` request, and a
   cross-site ``fetch`` with a JSON type needs a CORS preflight that this server never grants.
3. **Token**, when one is set: ``Authorization: Bearer``, ``?token=`` or the page cookie, else 401.
4. **Body size** (:class:`BodyLimit`), declared or streamed, else 413.

Every response carries the headers of :data:`SECURITY_HEADERS`. :class:`RedactTokens` keeps ``?token=``
values out of uvicorn's access log.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Iterable
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboards import pages
from nas.errors import ConfigError

__all__ = [
    "Guard", "BodyLimit", "RedactTokens", "SECURITY_HEADERS", "COOKIE_NAME", "MIN_TOKEN_CHARS",
    "check_token", "host_policy", "is_loopback",
]

#: The cookie that carries the token for pages after ``?token=``.
COOKIE_NAME = "nas_token"
#: The shortest token accepted.
MIN_TOKEN_CHARS = 16
#: Methods that change nothing; every other method must be same-origin and JSON-typed.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                 b"img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
                                 b"base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or a host name, without a port) only reaches this machine."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def check_token(token: str) -> str:
    """``token`` if it is strong enough to guard the server, else :class:`ConfigError`.

    At least :data:`MIN_TOKEN_CHARS` printable ASCII characters and no whitespace. The message never
    repeats the token.
    """
    if len(token) < MIN_TOKEN_CHARS or not all(33 <= ord(c) <= 126 for c in token):
        raise ConfigError(
            f"the token must be at least {MIN_TOKEN_CHARS} printable ASCII characters without whitespace "
            f"(the one given has {len(token)} characters)", field="--token/NAS_TOKEN",
            fix='generate one with python -c "import secrets; print(secrets.token_urlsafe(24))"')
    return token


def host_policy(bind_host: str, allowed_hosts: Iterable[str] = ()) -> frozenset[str] | None:
    """The host names (beside loopback names) that requests may name in ``Host``; ``None``: any.

    Bound to loopback, only loopback names and ``allowed_hosts`` are served. Bound elsewhere, any Host
    is served unless ``allowed_hosts`` lists some.
    """
    allowed = frozenset(h.strip().rstrip(".").lower() for h in allowed_hosts if h.strip())
    if is_loopback(bind_host) or allowed:
        return allowed
    return None


def _split_authority(authority: str, default_port: int | None) -> tuple[str, int | None] | None:
    """``(host, port)`` of ``host[:port]``, or ``None`` when it is not a valid authority."""
    if not authority or any(c.isspace() or c in "/?#@\\" for c in authority):
        return None
    try:
        parts = urlsplit(f"//{authority}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname.rstrip(".").lower(), port if port is not None else default_port


def _same_origin(origin: str, host_header: str) -> bool:
    """Whether the URL ``origin`` names the same host and port as ``host_header``."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        return False  # "null" (sandboxed or privacy-stripped origins) and other schemes
    default = _DEFAULT_PORTS[scheme]
    theirs = _split_authority(parts.netloc, default)
    ours = _split_authority(host_header, default)
    return theirs is not None and theirs == ours


def _is_json(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def _redact_query(text: str) -> str:
    """``text`` with the value of every ``token`` query parameter replaced by ``***``."""
    if "?" not in text:
        return text
    head, _, rest = text.partition("?")
    query, space, tail = rest.partition(" ")
    pairs = []
    for pair in query.split("&"):
        key, eq, _value = pair.partition("=")
        pairs.append(f"{key}=***" if eq and unquote_plus(key).strip().lower() == "token" else pair)
    return f"{head}?{'&'.join(pairs)}{space}{tail}"


class RedactTokens(logging.Filter):
    """Replaces ``token=VALUE`` in logged request lines (uvicorn's access log) with ``token=***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_query(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _redact_query(record.msg)
        return True


async def _send_json(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + SECURITY_HEADERS + (extra or [])})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def _declared_length_problem(headers: Iterable[tuple[bytes, bytes]], max_bytes: int) -> tuple[int, str] | None:
    """Check the declared ``Content-Length`` before any of the body is read.

    Args:
        headers: The request's raw ASGI headers.
        max_bytes: The largest body accepted.

    Returns:
        ``(status, detail)`` to answer with (400 for a non-number, 413 for too large), or None when fine.
    """
    for name, value in headers:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                return 400, "Content-Length is not a number"
            if declared > max_bytes:
                return 413, f"the request body is larger than {max_bytes} bytes"
    return None


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
        problem = _declared_length_problem(scope["headers"], self.max_bytes)
        if problem is not None:
            await _send_json(send, *problem)
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
    """Host, same-origin, JSON-type and token checks on every request; security headers on every response.

    Args:
        app: The app behind the guard.
        token: When set, every request must carry it (checked with :func:`check_token` first).
        allowed_hosts: From :func:`host_policy`: host names served beside loopback names, or ``None``
            to serve any ``Host``.
    """

    def __init__(self, app: ASGIApp, token: str | None, allowed_hosts: frozenset[str] | None) -> None:
        self.app = app
        self.token = token.encode("ascii") if token else None
        self.allowed_hosts = allowed_hosts
        self._cookie = b"%s=%s; Path=/; HttpOnly; SameSite=Lax" % (COOKIE_NAME.encode(), self.token or b"")

    def _matches(self, candidate: str | None) -> bool:
        if candidate is None or self.token is None:
            return False
        try:
            given = candidate.encode("ascii")
        except UnicodeEncodeError:
            return False  # the token is ASCII, so this is simply a wrong token
        return hmac.compare_digest(given, self.token)

    def _host_problem(self, host: str | None) -> str | None:
        if self.allowed_hosts is None:
            return None
        name = _split_authority(host or "", None)
        if name is not None and (is_loopback(name[0]) or name[0] in self.allowed_hosts):
            return None
        shown = "no Host header" if host is None else f"Host {host[:100]!r}"
        extra = f" or {', '.join(sorted(self.allowed_hosts))}" if self.allowed_hosts else ""
        return (f"{shown} is not served here: this server answers only to localhost, 127.0.0.1 or "
                f"[::1]{extra} (a guard against DNS rebinding). Fix: open it by one of those names, or "
                f"start nas serve with --allowed-host NAME")

    @staticmethod
    def _cross_site_problem(headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "")
        for name in ("origin", "referer"):
            if name in headers:  # Origin when the browser sent one, else Referer
                if _same_origin(headers[name], host):
                    break
                return 403, (f"cross-site request refused: {name.title()} {headers[name][:100]!r} is not the "
                             f"same host and port as Host {host[:100]!r}. Fix: send it from this server's "
                             f"own pages, or from a client (curl, a script) that sends no foreign Origin")
        if not _is_json(headers.get("content-type", "")):
            return 415, ("state-changing requests need 'Content-Type: application/json' (with a JSON body, "
                         "or none where the route takes none); forms and text/plain are refused so that "
                         "other sites cannot post here. Fix: add -H 'Content-Type: application/json'")
        return None

    def _credentials(self, scope: Scope, headers: dict[str, str]) -> tuple[str | None, str | None, str | None]:
        bearer = None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            bearer = auth[7:].strip()
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
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
        return bearer, query_token, cookie_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                msg = dict(msg)
                msg["headers"] = list(msg.get("headers", [])) + SECURITY_HEADERS
            await send(msg)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host_problem = self._host_problem(headers.get("host"))
        if host_problem is not None:
            await _send_json(send, 421, host_problem)
            return
        if scope["method"] not in SAFE_METHODS:
            refused = self._cross_site_problem(headers)
            if refused is not None:
                await _send_json(send, *refused)
                return
        if self.token is None:
            await self.app(scope, receive, with_headers)
            return
        await self._authenticated(scope, receive, send, headers, with_headers)

    async def _authenticated(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str],
                             with_headers: Send) -> None:
        bearer, query_token, cookie_token = self._credentials(scope, headers)
        is_page = scope["method"] == "GET" and "text/html" in headers.get("accept", "")
        if self._matches(query_token) and is_page and not scope["path"].startswith("/api/"):
            # A page opened with ?token=: keep the token in a cookie and drop it from the address bar.
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = quote(scope["path"]) + (f"?{rest}" if rest else "")
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", location.encode("ascii")), (b"set-cookie", self._cookie),
                                    (b"content-length", b"0")] + SECURITY_HEADERS})
            await send({"type": "http.response.body", "body": b""})
            return
        if self._matches(bearer) or self._matches(query_token) or self._matches(cookie_token):
            await self.app(scope, receive, with_headers)
            return
        if is_page:
            body = pages.login_page(scope["path"]).encode("utf-8")
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"text/html; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode())] + SECURITY_HEADERS})
            await send({"type": "http.response.body", "body": body})
            return
        await _send_json(send, 401, "missing or wrong token; send 'Authorization: Bearer TOKEN' "
                                    "(or ?token=TOKEN on a page)", [(b"www-authenticate", b"Bearer")])
