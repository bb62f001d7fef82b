"""The web service: the API, the console pages, /health and /metrics, in one FastAPI application."""
from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import DBAPIError, IntegrityError, TimeoutError as SQLAlchemyTimeout

from coordinator.accounts import AuthError
from custody.chain.node_client import NodeClient, NodeError, RPCError
from custody.errors import CustodyError, NotFound
from custody.store.db import probe_write

from coordinator.auth import LoginRequired, route
from coordinator.body_limit import RequestGate
from coordinator.cpu_pool import CpuPool, HeavySlots
from coordinator.metrics import make_registry
from coordinator.node_gate import NodeGate
from coordinator.watcher import Watcher

log = logging.getLogger("coordinator.http")
STATIC = Path(__file__).parent / "console" / "static"
THREADS_PER_PROCESS = 4
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class Observe:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): latency histogram per route, one JSON
    log line per request, and the security headers on every response."""

    def __init__(self, app, latency):
        self.app, self.latency = app, latency
        self.headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_with_headers(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in self.headers if k not in present]
            await send(message)
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            elapsed = time.perf_counter() - start
            template = getattr(scope.get("route"), "path", "unmatched")
            self.latency.labels(scope["method"], template, str(status)).observe(elapsed)
            principal = getattr(scope.get("state", {}).get("principal"), "username", None) \
                if isinstance(scope.get("state"), dict) else None
            log.info("request", extra={"fields": {
                # an enrollment link's token is a credential: its route template is logged instead
                "method": scope["method"], "route": template, "status": status,
                "path": "/enroll/{token}" if scope["path"].startswith("/enroll/") else scope["path"],
                "duration_ms": round(elapsed * 1000, 2), "user": principal}})


def _first_line(error: Exception) -> str:
    """The driver's own reason (`orig`), without SQLAlchemy's SQL echo and background link."""
    reason = getattr(error, "orig", None) or error
    return (str(reason).strip().splitlines() or [type(reason).__name__])[0]


def node_factory(url: str, **options):
    """One NodeClient per thread: a client keeps a connection open and is not shared. The clients share
    one gate, so a hung node cannot take every request thread (coordinator/node_gate.py)."""
    local = threading.local()
    gate = NodeGate(slots=THREADS_PER_PROCESS - 1)

    def factory() -> NodeClient:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = NodeClient(url, gate=gate, **{k: v for k, v in options.items() if v is not None})
        return client
    return factory


def create_app(sessions, node, *, network: str = "regtest", sync_interval: float = 2.0) -> FastAPI:
    """`sessions` is a sessionmaker on a migrated database; `node` makes a NodeClient."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Few requests at a time per process: under the GIL, forty interleaved requests each take forty
        # times longer; a short FIFO queue serves them in order and keeps the slowest close to the median.
        import anyio.to_thread
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS_PER_PROCESS
        from custody.store.db import refresh_statistics
        try:
            refresh_statistics(sessions.kw["bind"])
        except DBAPIError as e:         # start anyway: /health and every write say what is wrong
            log.warning("database statistics not refreshed", extra={"fields": {"error": _first_line(e)}})
        watcher = Watcher(sessions, node, sync_interval) if sync_interval > 0 else None
        if watcher:
            watcher.start()
        app.state.watcher = watcher
        yield
        if watcher:
            watcher.stop()
        app.state.cpu_pool.shutdown()

    # /docs is served from this package's files (docs_page): FastAPI's own pages load Swagger UI and
    # ReDoc from a CDN and start them with inline scripts, which the CSP (script-src 'self') refuses.
    app = FastAPI(title="Custody coordinator", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  swagger_ui_oauth2_redirect_url=None,
                  description="Multisig custody: policies, ledger, spend requests, approvals, signatures, "
                              "broadcast and the tamper-evident log. Authenticate with a session cookie "
                              "(console) or `Authorization: Bearer <API token>`.")
    app.state.sessions, app.state.node, app.state.network = sessions, node, network
    registry, latency = make_registry(sessions, node)
    app.state.metrics_registry = registry
    app.state.cpu_pool, app.state.heavy_slots = CpuPool(), HeavySlots()

    app.add_middleware(RequestGate, slots=app.state.heavy_slots)   # inside Observe: its refusals are logged
    app.add_middleware(Observe, latency=latency)

    def wants_html(request: Request) -> bool:
        return not request.url.path.startswith(("/api/", "/health", "/metrics"))

    def refusal(request: Request, status: int, message: str):
        if wants_html(request):
            from coordinator.console.pages import error_page
            return error_page(request, status, message)
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired):
        from urllib.parse import quote
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)

    @app.exception_handler(AuthError)
    async def auth_refused(request: Request, exc: AuthError):
        return refusal(request, 401, str(exc))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound):
        return refusal(request, 404, str(exc))

    @app.exception_handler(CustodyError)
    async def refused(request: Request, exc: CustodyError):
        return refusal(request, 400, str(exc))

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError):    # core parsers' own errors (formats, PSBTs)
        return refusal(request, 400, str(exc) or type(exc).__name__)

    @app.exception_handler(RPCError)
    async def node_refused(request: Request, exc: RPCError):
        return refusal(request, 502, f"the node refused: {exc.message} (code {exc.code})")

    @app.exception_handler(NodeError)
    async def node_down(request: Request, exc: NodeError):
        return refusal(request, 503, f"the Bitcoin node is not available: {exc}")

    @app.exception_handler(DBAPIError)
    async def database_refused(request: Request, exc: DBAPIError):
        if isinstance(exc, IntegrityError):
            return refusal(request, 409, f"the database refused a conflicting change: {_first_line(exc)}; "
                                         "nothing was changed")
        return refusal(request, 503, f"the database is not available: {_first_line(exc)}; nothing was changed")

    @app.exception_handler(SQLAlchemyTimeout)
    async def database_busy(request: Request, exc: SQLAlchemyTimeout):
        return refusal(request, 503, "the database is busy: no connection was free in time; nothing was changed")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if wants_html(request):
            return refusal(request, exc.status_code, str(exc.detail))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        if wants_html(request):
            return refusal(request, 422, "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in errors))
        return JSONResponse({"detail": errors}, status_code=422)

    @route(app, "GET", "/health", "public", tags=["operations"], include_in_schema=True)
    def health() -> JSONResponse:
        """Reachability of the database and the node; 503 when either is down."""
        report = {"database": {"ok": True}, "node": {"ok": True}}
        try:
            with sessions() as s:
                from custody.ledger.coins import tip_height
                report["database"]["ledger_height"] = tip_height(s)
            probe_write(sessions.kw["bind"])          # reads alone pass on a full disk
        except Exception as e:
            report["database"] = {"ok": False, "error": _first_line(e)}
        try:
            info = node().getblockchaininfo()
            report["node"].update(chain=info["chain"], height=info["blocks"])
        except Exception as e:
            report["node"] = {"ok": False, "error": str(e)}
        ok = report["database"]["ok"] and report["node"]["ok"]
        return JSONResponse({"status": "ok" if ok else "unavailable", **report}, status_code=200 if ok else 503)

    @route(app, "GET", "/metrics", "metrics", tags=["operations"], response_class=PlainTextResponse)
    def metrics():
        """Prometheus text format (scrape with an API token)."""
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # the API's and the console's modules, one per capability, in this order (a route listed first wins)
    from coordinator.api import (accounts, approvers, devices, eventlog, governance, ledger, mining, reserves,
                                 spending)
    from coordinator.console import (accounts as account_pages, approvers as approver_pages, devices as device_pages,
                                     eventlog as log_pages, governance as governance_pages, ledger as ledger_pages,
                                     mining as mining_pages, pages, reserves as reserve_pages,
                                     spending as spend_pages)
    for module in (accounts, ledger, spending, eventlog, approvers, devices, reserves, mining,
                   pages, account_pages, ledger_pages, spend_pages, log_pages, approver_pages, device_pages,
                   reserve_pages, mining_pages, governance, governance_pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-assets", StaticFiles(directory=SWAGGER_UI), name="docs-assets")
    app.add_route("/docs", docs_page, include_in_schema=False)
    return app


# Swagger UI's files, from the fastapi-offline package (no CDN: the console works offline, and every
# script is 'self'). It is started by static/docs.js, not an inline script, for the same CSP.
SWAGGER_UI = Path(fastapi_offline.__file__).with_name("static")
DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Custody coordinator: API</title>
<link rel="stylesheet" href="/docs-assets/swagger-ui.css"><link rel="icon" href="/docs-assets/favicon.png"></head>
<body><div id="swagger-ui" data-openapi-url="/openapi.json"></div>
<script src="/docs-assets/swagger-ui-bundle.js"></script><script src="/static/docs.js"></script></body></html>
"""


async def docs_page(request: Request) -> HTMLResponse:
    """The API's interactive documentation (Swagger UI), public like /openapi.json."""
    return HTMLResponse(DOCS_PAGE)
