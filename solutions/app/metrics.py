"""Prometheus metrics: one registry per app, and the middleware that counts requests.

Each ``create_app()`` builds its own ``CollectorRegistry`` instead of using prometheus_client's
global default one. The global registry refuses a second metric with the same name, so a
process that builds several apps (every test suite does) would crash on the second one.
"""

from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

StoreOperation = Literal[
    "list", "get", "get_by_email", "create", "update", "delete", "list_all", "purge"
]


class Metrics:
    """The metrics of one app; ``registry`` is what ``GET /metrics`` exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.store_operations = Counter(
            "store_operations",
            "Calls to UserStore methods, by method.",
            ["operation"],
            registry=self.registry,
        )
        # Background jobs (exercise 10.2) reach the same store, but are counted apart: they
        # run at moments no request chose, and store_operations_total keeps meaning "the
        # requests that reached the store" (what 10.1's cache checks and dashboards read).
        self.job_store_operations = Counter(
            "job_store_operations",
            "Calls to UserStore methods made by background jobs, by method.",
            ["operation"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests handled, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        # Export every operation at 0 from the start, so the first scrape already shows all
        # series and "how many since the last scrape" is well defined for each of them.
        for operation in get_args(StoreOperation):
            self.store_operations.labels(operation=operation)
            self.job_store_operations.labels(operation=operation)


class RequestMetricsMiddleware:
    """Count every HTTP request in ``http_requests_total{method, route, status}``.

    A plain ASGI middleware rather than ``@app.middleware("http")``: it does not wrap the
    request and response in Starlette objects, so it adds next to nothing per request.

    The ``route`` label is the route template (``/users/{user_id}``), which the router
    stores in the scope once it has matched. Labelling by raw path would create one time
    series per user id and eventually exhaust Prometheus' memory.
    """

    def __init__(self, app: ASGIApp, requests_total: Counter) -> None:
        self.app = app
        self.requests_total = requests_total

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        # Stays 500 if the app raises before it starts a response.
        status = 500

        async def send_and_remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_remember_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            self.requests_total.labels(
                method=scope["method"], route=template, status=str(status)
            ).inc()
