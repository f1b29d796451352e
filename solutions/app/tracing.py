"""Request ids: one id per request, in its response, its log lines and its jobs' (10.4, stretch).

Behind a load balancer, one user action touches several instances and a worker; its log
lines are spread over all their outputs. An id that each of those lines carries is what
lets you put the story back together (``grep request_id=4bf92f35...``).

- ``RequestIdMiddleware`` gives each request its id: the caller's ``X-Request-Id`` if it
  is a sane one, else the trace id of a W3C ``traceparent`` header (so the id is the one
  the caller's tracing system already uses), else a new random one. The response carries
  it back in ``X-Request-Id``, and, when a valid traceparent came in, a ``traceparent`` of
  the same trace with this service's own span id. It also writes one access line per
  request on the logger ``<package>.access``.
- The id lives in a contextvar, ``request_id``, for the duration of the request. asyncio
  copies contextvars into the tasks a request starts and Starlette into the threads that
  run plain ``def`` endpoints, so everything the request does sees it, and concurrent
  requests never see each other's.
- ``RequestIdFilter``, on the log handler, copies it into every record, and
  ``LOG_FORMAT_WITH_ID`` prints it at the end of the line: ``... request_id=<id>``, or
  ``request_id=-`` outside any request.
- A job runs later, in another thread or process, where the contextvar is empty: the job
  carries the id of the request that enqueued it (``current_request_id()`` at enqueue time),
  and the worker runs it inside ``bound_request_id(that id)``.
"""

from __future__ import annotations

import contextvars
import logging
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# logs.py's LOG_FORMAT with the request id appended (see RequestIdFilter). Spelled out, not
# built from LOG_FORMAT, so that logs.py can import this module without an import cycle; a
# test keeps the two in step.
LOG_FORMAT_WITH_ID = "%(asctime)s %(levelname)s %(name)s %(message)s request_id=%(request_id)s"
NO_REQUEST_ID = "-"

REQUEST_ID_HEADER = b"x-request-id"
TRACEPARENT_HEADER = b"traceparent"

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

access_logger = logging.getLogger(f"{__package__}.access")

# An id from the caller goes into log lines and headers: a bounded length and a plain
# alphabet keep it from forging log lines (a newline), breaking a log parser (a space or a
# quote) or filling the logs. Anything else is replaced, not rejected: the id is a help for
# debugging, never a reason to refuse a request.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# W3C Trace Context, version 00: version-traceid-parentid-flags, lowercase hex only.
_TRACEPARENT = re.compile(
    r"00-(?P<trace_id>[0-9a-f]{32})-(?P<parent_id>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})"
)
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16


def current_request_id() -> str | None:
    """The id of the request being handled, or of the job being run; ``None`` outside both."""
    return request_id.get()


@contextmanager
def bound_request_id(value: str | None) -> Iterator[None]:
    """Make ``value`` the current request id for the block, then restore the previous one.

    For a job worker: ``with bound_request_id(job_request_id): run(job)`` makes the job's
    log lines carry the id of the request that enqueued it. ``None`` (a job nobody's
    request enqueued, such as a recurring cleanup) leaves the lines at ``request_id=-``.
    """
    token = request_id.set(value)
    try:
        yield
    finally:
        request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Set ``record.request_id`` to the current request id, or ``-``.

    Add it to the handler, not to a logger: a logger's filters see only the records
    logged on that very logger, a handler's see every record it prints, whatever logger
    it came from. It never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        # A record may carry an id of its own already (logger.info(..., extra={...})).
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get() or NO_REQUEST_ID
        return True


class RequestIdMiddleware:
    """Give each request an id, echo it in the response, and log one access line.

    Place it outside every middleware that logs (the rate limiter, the cache, the
    metrics), so that their lines carry the id too, and 429s and cache hits get the header.
    The id is also put in ``scope["state"]`` (``request.state.request_id``) for the code
    that runs after this middleware has finished: the app's 500 handler, which Starlette
    calls from outside every middleware.
    """

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace = _parse_traceparent(_header(scope, TRACEPARENT_HEADER))
        given = _header(scope, REQUEST_ID_HEADER)
        if _VALID_REQUEST_ID.fullmatch(given):
            value = given
        elif trace is not None:
            value = trace[0]
        else:
            # 32 hex digits, as a uuid4's: a third of uuid4()'s cost, on every request.
            value = secrets.token_hex(16)
        extra = [(REQUEST_ID_HEADER, value.encode())]
        if trace is not None:
            trace_id, flags = trace
            # This service's span in the caller's trace: same trace and flags, own span id.
            extra.append((TRACEPARENT_HEADER, f"00-{trace_id}-{_new_span_id()}-{flags}".encode()))
        scope.setdefault("state", {})["request_id"] = value
        status: int | str = "cancelled"  # if nothing else is known when the line is written

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # A new message and list: the ones received may be shared (a cache hit's).
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        token = request_id.set(value)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if status == "cancelled":
                status = 500  # what the server answers for the exception
            raise
        finally:
            if self.access_log:
                access_logger.info(
                    "request method=%s path=%s status=%s duration_ms=%.1f",
                    scope["method"],
                    scope["path"],  # not the query string: it may hold a secret
                    status,
                    (time.perf_counter() - started) * 1000,
                )
            request_id.reset(token)


def _parse_traceparent(header: str) -> tuple[str, str] | None:
    """``(trace id, flags)`` of a valid version-00 traceparent, else ``None``."""
    match = _TRACEPARENT.fullmatch(header.strip())
    if match is None:
        return None
    # All-zero ids are invalid by the spec: a caller that sends one has no trace to join.
    if match["trace_id"] == _ZERO_TRACE_ID or match["parent_id"] == _ZERO_SPAN_ID:
        return None
    return match["trace_id"], match["flags"]


def _new_span_id() -> str:
    while (span_id := secrets.token_hex(8)) == _ZERO_SPAN_ID:
        pass  # 1 chance in 2**64, and all zeros is invalid
    return span_id


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""
