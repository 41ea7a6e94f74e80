"""The dashboard's web application: the routes, HTTP errors answered in one place, and serving.

One Starlette application, served by uvicorn (both come with the MCP SDK), over
the :class:`~federation.apps.dashboard.data.DashboardData` of one federation,
whose settings are read once when it starts serving and handed down from here.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from importlib import resources
from typing import Any, Callable

from ...config import Settings
from ..._logging import library_logger
from .data import WINDOWS, BadRequest, DashboardData, parse_since, window_bounds
from .metrics import MetricsCollector

__all__ = ["create_app", "exception_handlers", "serve"]

log = library_logger("federation.dashboard")

_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(data: DashboardData | None = None, refresh_s: float = 5.0,
               allowed_hosts: list[str] | None = None, *, settings: Settings | None = None) -> Any:
    """The Starlette application over *data* (by default, of the federation of *settings*: one of the two is
    handed down); *allowed_hosts* limits the ``Host`` header (DNS rebinding)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    if data is None:
        if settings is None:
            raise TypeError("create_app needs the federation it shows: data= or settings=")
        data = DashboardData(settings)
    collector = MetricsCollector(data)
    static = {name: resources.files(__package__).joinpath("static", name).read_bytes() for name in _STATIC}
    static["index.html"] = static["index.html"].replace(b"{{refresh_ms}}", str(int(refresh_s * 1000)).encode())

    def window_of(request: Request) -> str:
        unknown = set(request.query_params) - {"window"}
        if unknown:
            raise BadRequest(f"unknown query parameter {sorted(unknown)[0]!r}: only window= is accepted")
        name = request.query_params.get("window", "24h")
        window_bounds(name)  # validates
        return name

    def page(request: Request) -> Response:
        window_of(request)
        return Response(static["index.html"], media_type=_STATIC["index.html"],
                        headers={"Cache-Control": "no-store"})

    def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            raise HTTPException(404, f"no such file: /static/{name}")
        return Response(static[name], media_type=_STATIC[name], headers={"Cache-Control": "max-age=3600"})

    def api_status(request: Request) -> Response:
        # like `rollout status --json [--since WHEN]`, or the page's ?window=
        params = request.query_params
        unknown = set(params) - {"window", "since"}
        if unknown or ("window" in params and "since" in params):
            raise BadRequest("/api/status takes either window= (24h or 7d) or since= (an ISO 8601 time or a "
                             "duration like 30m, 12h, 7d)")
        if "since" in params:
            return JSONResponse(data.status(parse_since(params["since"])))
        return JSONResponse(data.status(*window_bounds(window_of(request))))

    def api_dashboard(request: Request) -> Response:
        return JSONResponse(data.page(window_of(request)), headers={"Cache-Control": "no-store"})

    def metrics(request: Request) -> Response:
        if request.query_params:
            raise BadRequest("/metrics takes no query parameters")
        body, content_type = collector.exposition()
        return Response(body, media_type=content_type)

    middleware = []
    if allowed_hosts:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    app = Starlette(
        routes=[
            Route("/", page, methods=["GET", "HEAD"]),
            Route("/static/{name}", asset, methods=["GET", "HEAD"]),
            Route("/api/status", api_status, methods=["GET"]),
            Route("/api/dashboard", api_dashboard, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        middleware=middleware,
        exception_handlers=exception_handlers(),
    )
    app.state.data = data
    app.state.collector = collector
    return app


# -- HTTP errors, all answered here ----------------------------------------------------------


def exception_handlers() -> dict[Any, Callable[[Any, Exception], Any]]:
    """What every route's failure becomes: a bad query value 400, an unknown path 404 (or the status the
    routing chose, as 405), anything else 503 (the rollout state could not be read); JSON under
    ``/api/``, one line of text elsewhere, never a traceback."""
    from starlette.exceptions import HTTPException

    return {BadRequest: _bad_request, HTTPException: _not_found, Exception: _crashed}


def _bad_request(request: Any, exc: Exception) -> Any:
    return _error(request, 400, str(exc))


def _not_found(request: Any, exc: Exception) -> Any:
    detail = getattr(exc, "detail", None) or f"no such page: {request.url.path}"
    if detail == "Not Found":
        detail = f"no such page: {request.url.path}"
    return _error(request, getattr(exc, "status_code", 404), detail)


def _crashed(request: Any, exc: Exception) -> Any:
    # never a traceback to the browser; it goes to the log
    log.error("dashboard_request_failed", path=request.url.path, error=str(exc), exc_info=exc)
    return _error(request, 503, f"could not read the rollout state: {type(exc).__name__}: {exc}")


def _error(request: Any, status: int, message: str) -> Any:
    from starlette.responses import JSONResponse, PlainTextResponse

    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    return PlainTextResponse(message + "\n", status_code=status)


# -- serving -----------------------------------------------------------------------------------


def _warm(app: Any) -> None:
    """Read the hours the page and the metrics need once, before the first request asks for them."""
    try:
        for window in WINDOWS:  # the default window first: the page asks for it first
            app.state.data.hourly.by_hour(*window_bounds(window))
        app.state.collector.totals()
    except Exception as exc:  # noqa: BLE001 - only a head start; the requests report their own errors
        log.warning("dashboard_warm_up_failed", error=str(exc))


def listen(host: str, port: int, *, reserve_only: bool = False) -> socket.socket:
    """A listening socket on (host, port), or an OSError saying why not (before anything is served).

    *reserve_only*: bound with ``SO_REUSEPORT`` and not listening (a socket that does not listen is
    handed no connection): the port held for processes that each listen on it themselves."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reserve_only:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if not reserve_only:
            sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(host: str = "127.0.0.1", port: int = 8321, refresh_s: float = 5.0,
          on_listening: Callable[[str], None] | None = None, *, settings: Settings) -> None:
    """Serve the dashboard of the federation of *settings* (handed down by the CLI) until interrupted; binds
    to loopback unless told otherwise.

    *on_listening* is called with the page's URL once the socket is bound (port 0: a free one).
    A port in use or an unknown host raises :class:`OSError` before anything is served.
    """
    import uvicorn

    loopback = _is_loopback(host)
    # Behind loopback, refuse other Host names: a web page elsewhere cannot read it through DNS rebinding.
    allowed = ["127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host] if loopback else None
    app = create_app(refresh_s=refresh_s, allowed_hosts=allowed, settings=settings)
    sock = listen(host, port)
    port = sock.getsockname()[1]
    if not loopback:
        log.warning("dashboard_exposed", host=host, port=port,
                    detail="the dashboard has no authentication; anyone who can reach this address can read it")
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    log.info("dashboard_started", url=url)
    if on_listening is not None:
        on_listening(url)
    threading.Thread(target=_warm, args=(app,), name="dashboard-warm-up", daemon=True).start()
    server = uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="warning", log_config=None))
    with sock:
        server.run(sockets=[sock])
