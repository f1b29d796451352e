"""Prometheus metrics: one registry per app, and the middleware that counts requests.

Each ``create_app()`` builds its own ``CollectorRegistry`` instead of using prometheus_client's
global default one. The global registry refuses a second metric with the same name, so a
process that builds several apps (every test suite does) would crash on the second one.

Two gauges are there for an autoscaler (exercise 10.4, stretch): ``http_requests_in_flight``,
the requests being served right now, and ``jobs_queue_depth``, the jobs waiting for a
worker. Both are read when /metrics is scraped (custom collectors), not kept in
prometheus_client objects that every request or job would have to update.
"""

import logging
from collections.abc import Callable, Iterator
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

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
        self.in_flight = InFlight()
        self.registry.register(InFlightCollector(self.in_flight))

    def watch_job_queue(self, depth: Callable[[], int]) -> None:
        """Export ``jobs_queue_depth``, read from ``depth()`` at every scrape.

        A callable rather than the queue itself: the job queue imports this module.
        """
        self.registry.register(QueueDepthCollector(depth))


class InFlight:
    """How many requests are being served now: a plain int, changed on the event loop only.

    No lock: every change is made by ``RequestMetricsMiddleware`` on the app's event loop,
    where nothing runs between the read and the write of ``+= 1``. A prometheus_client
    ``Gauge`` would take a lock twice per request for what a scrape can read off this.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class InFlightCollector(Collector):
    """``http_requests_in_flight`` on /metrics: the scale-out signal of a busy instance.

    The scrape that reads it is in flight too, so an idle instance shows 1.
    """

    def __init__(self, in_flight: InFlight) -> None:
        self.in_flight = in_flight

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "http_requests_in_flight",
            "HTTP requests being served now (this scrape included).",
            value=self.in_flight.value,
        )


class QueueDepthCollector(Collector):
    """``jobs_queue_depth`` on /metrics: jobs queued and not started (the backlog).

    Read from the job registry (its records with status ``queued``), not from huey's
    pending count: huey's queue still holds a cancelled job until a worker takes it and
    drops it, and with JOBS_WORKER=none nobody ever does. The registry's count is right
    whoever runs the jobs, this process or a worker process; it includes the delayed jobs
    and those waiting for a retry, which a worker will have to run.
    """

    def __init__(self, depth: Callable[[], int]) -> None:
        self.depth = depth

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            depth = self.depth()
        except Exception:
            # A scrape must not fail for one gauge: the others are still worth having,
            # and a missing series is what alerting rules notice ("absent").
            logger.exception("could not read the job queue's depth for /metrics")
            return
        yield GaugeMetricFamily("jobs_queue_depth", "Jobs queued and not started yet.", value=depth)


class RequestMetricsMiddleware:
    """Count every HTTP request in ``http_requests_total{method, route, status}``.

    A plain ASGI middleware rather than ``@app.middleware("http")``: it does not wrap the
    request and response in Starlette objects, so it adds next to nothing per request.

    The ``route`` label is the route template (``/users/{user_id}``), which the router
    stores in the scope once it has matched. Labelling by raw path would create one time
    series per user id and eventually exhaust Prometheus' memory.

    It also keeps ``in_flight`` (``http_requests_in_flight``): one more from the moment a
    request reaches it to the moment it is done, whatever became of it. Placed outside the
    rate limiter and the cache, so that their answers (429s, hits) count as well.
    """

    def __init__(
        self, app: ASGIApp, requests_total: Counter, in_flight: InFlight | None = None
    ) -> None:
        self.app = app
        self.requests_total = requests_total
        self.in_flight = in_flight if in_flight is not None else InFlight()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        in_flight = self.in_flight
        in_flight.value += 1

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
            in_flight.value -= 1
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            self.requests_total.labels(
                method=scope["method"], route=template, status=str(status)
            ).inc()
