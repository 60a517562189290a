"""The dashboard's Prometheus metrics, on an injected registry (never the client's global one).

``run.py dashboard --metrics-port PORT`` serves them on their own port (``serve``), apart
from the dashboard's: the metrics need no session, so they are not reachable where the
users are, and the port can be fenced off for the scraper alone (``--metrics-host``, by
default loopback). No label carries a user name, a customer, an alert or a prompt id, or a
client address: requests are labelled by their route template (``/api/alerts/{ref}``),
actions by their kind, failed sign-ins by their reason.

>>> from prometheus_client import CollectorRegistry
>>> registry = CollectorRegistry()
>>> metrics = DashboardMetrics(registry, process=False)
>>> metrics.action("close_fraud"); metrics.login_failed("throttled")
>>> registry.get_sample_value("crm_dashboard_actions_total", {"kind": "close_fraud"})
1.0
>>> registry.get_sample_value("crm_dashboard_login_failures_total", {"reason": "locked"})
0.0
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

NAMESPACE: Final = "crm_dashboard"
#: What analysts, RMs and administrators did (applied changes only: a repeat that changes
#: nothing is not counted).
ACTIONS: Final = ("acknowledge", "assign", "snooze", "close_fraud", "close_legit", "prompt_accepted",
                  "prompt_dismissed", "prompt_converted", "unlock", "case_assign", "case_note", "case_propose",
                  "case_approve", "case_reject", "report_export", "backtest")
#: Why a sign-in failed: wrong username or password (401), throttled (429), locked (423).
LOGIN_FAILURES: Final = ("wrong_credentials", "throttled", "locked")
METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
#: The route label of a request that matched no route (a 404, or a probe).
UNMATCHED: Final = "unmatched"
#: Request durations: 1 ms to 10 s (an event stream counts until its first byte).
REQUEST_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DashboardMetrics:
    """Requests by route template, method and status, their durations, the open event
    streams, users' actions by kind and failed sign-ins by reason; with ``process``, the
    process's own collectors too (``process_*``, ``python_*``)."""

    def __init__(self, registry: CollectorRegistry, process: bool = True) -> None:
        self.registry = registry
        ns = NAMESPACE
        disable_created_metrics()
        if process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.requests = Counter("requests", "HTTP requests answered, by route template, method and status.",
                                ["route", "method", "status"], namespace=ns, subsystem="http", registry=registry)
        self.duration = Histogram("request_duration", "Time to answer an HTTP request (to the first byte of "
                                  "an event stream), by route template and method.", ["route", "method"],
                                  namespace=ns, subsystem="http", unit="seconds", buckets=REQUEST_BUCKETS,
                                  registry=registry)
        self.sse_clients = Gauge("sse_clients", "Event streams (live updates) open now.", namespace=ns,
                                 registry=registry)
        self.actions = Counter("actions", "Actions users applied, by kind (an alert acknowledged, assigned, "
                               "snoozed or closed; a prompt answered; a lock lifted).", ["kind"], namespace=ns,
                               registry=registry)
        self.login_failures = Counter("login_failures", "Sign-ins refused, by reason: wrong_credentials, "
                                      "throttled (too many failures), locked.", ["reason"], namespace=ns,
                                      registry=registry)
        for kind in ACTIONS:
            self.actions.labels(kind)
        for reason in LOGIN_FAILURES:
            self.login_failures.labels(reason)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "OTHER"
        self.requests.labels(route, method, str(status)).inc()
        self.duration.labels(route, method).observe(seconds)

    def action(self, kind: str) -> None:
        self.actions.labels(kind).inc()

    def login_failed(self, reason: str) -> None:
        self.login_failures.labels(reason).inc()


def route_of(scope: Mapping[str, Any]) -> str:
    """The template of the route that answered a request (``/api/alerts/{ref}``, ``/static``),
    never its path (which holds ids), or ``UNMATCHED``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class MeasureRequests:
    """ASGI middleware: each HTTP request counted by route template, method and status, and
    timed to its response's start (its headers: for an event stream, its opening).

    Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``: it neither wraps the request's
    ``receive`` nor relays the response body through another task, so event streams pass
    through untouched."""

    def __init__(self, app: Any, metrics: DashboardMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered = False

        async def send_measured(message: Any) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                self.metrics.request(route_of(scope), scope["method"], message["status"],
                                     time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_measured)
        finally:
            if not answered:  # raised before answering: the server answers 500
                self.metrics.request(route_of(scope), scope["method"], 500, time.perf_counter() - started)


def serve(registry: CollectorRegistry, host: str, port: int) -> Any:
    """Serve ``/metrics`` of ``registry`` on ``host:port`` from a daemon thread; the server
    (``shutdown()`` stops it)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
