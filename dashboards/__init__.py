"""HTTP API and dashboard over the study database (layer L4: may import anything; nothing imports it).

``nas serve`` calls :func:`dashboards.server.run`, which serves the FastAPI app built by
:func:`dashboards.server.create_app`:

* pages (``/``, ``/studies/{study}``, ``/studies/{study}/trials/{trial}``) rendered in the browser with
  a Plotly bundle served from this process (``/static/plotly.min.js``; no CDN);
* a JSON API under ``/api`` (OpenAPI schema at ``/openapi.json``; no Swagger UI, which needs a CDN).

Every request first passes :mod:`dashboards.security` (Host, same-origin and JSON-type checks, the
token, the body cap); launches over HTTP are capped by :class:`dashboards.limits.LaunchLimits`.

The server only reads the database; searches it launches run as separate ``nas search`` processes, so
the search driver stays the only writer (decision 1). See ``docs/dashboard.md``.
"""

from __future__ import annotations

__all__: list[str] = []
