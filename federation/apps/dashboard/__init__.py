"""``federation dashboard``: a read-only web view of the rollout, and Prometheus metrics.

One Starlette application, served by uvicorn (both come with the MCP SDK):

- ``/`` — one page (``static/index.html``) that fetches ``/api/dashboard``
  every few seconds and updates itself in place;
- ``/api/status`` — exactly the ``rollout status --json`` object;
- ``/api/dashboard?window=24h|7d`` — what the page shows: the status object
  plus hourly series, recent mismatches, the guards of the next step, row
  counts per table and the database's state;
- ``/metrics`` — the Prometheus text format, produced per scrape by a
  collector over the control plane's files (no global mutable metrics).

It reads; it never changes the flag.  The flag, the fleet and the counts live
in files under ``$FEDERATION_ROOT/control/`` (:mod:`federation.rollout`), so
they are shown while the database is down; what needs the database (row
counts, the guards) runs off the request path with a time budget, and a
failure or a timeout is shown as the database's state, never as a 500.

Its modules: :mod:`.data` (what is read and summed, for one federation's
settings), :mod:`.cache` (the database's reads off the request path, with a
time budget), :mod:`.metrics` (the ``/metrics`` collector), :mod:`.app` (the
routes, HTTP errors in one place, serving) and ``static/`` (the page, its
script and the chart library it ships).
"""

from __future__ import annotations

from .app import create_app, serve
from .data import WINDOWS, BadRequest, ControlPlane, DashboardData, HourlyCounts, parse_since, window_bounds
from .metrics import MetricsCollector

__all__ = ["WINDOWS", "BadRequest", "ControlPlane", "DashboardData", "HourlyCounts", "MetricsCollector",
           "create_app", "parse_since", "serve", "window_bounds"]
