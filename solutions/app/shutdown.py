"""The shutdown of one app (exercise 10.3): its state, its order, its time budget, its log.

A shutdown goes through five phases, each logged with the milliseconds since it started:

1. ``shutdown started reason=<SIGTERM|SIGINT|admin|lifespan>``: the moment the signal (or
   the admin request) arrives. Readiness turns to draining, every response gets
   ``Connection: close``, the job worker takes no new job, and the pre-shutdown hooks and
   the ``shutdown.started`` notification run. The app goes on serving for the drain delay.
2. ``shutdown requests drained cut_off=<n>``: the server stopped accepting and waited for
   the requests in flight, cutting off those that outlived the time budget;
3. ``shutdown jobs stopped``: the job worker finished (or abandoned) its running jobs;
4. ``shutdown resources closed``: queue, cache and instance registry are closed;
5. ``shutdown complete``: the ``shutdown.completed`` notification is sent and the logs are
   flushed. The last line the process prints.

``ShutdownCoordinator`` holds the state and runs phase 1; the server (``server.py``) drives
the drain between 1 and 2; the lifespan (``main.py``) runs 2 to 4; whoever runs last runs 5:
the server when there is one, the lifespan otherwise (a test client).

One budget, ``SHUTDOWN_TIMEOUT_SECONDS``, counted from the start, bounds everything that
waits: the hooks, the drain delay, the requests, the jobs. An orchestrator's grace period
is counted from its signal too, so this is the number to keep below it.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logs import flush_log_handlers
from .notifications import WebhookNotifier

logger = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]


class ShutdownCoordinator:
    """The shutdown state of one app, shared by its server, lifespan, routes and middleware.

    Everything here runs on the app's event loop (no locks needed): the server calls
    ``begin`` through ``loop.call_soon_threadsafe`` when a signal arrives.
    """

    def __init__(
        self,
        *,
        timeout_seconds: float,
        drain_delay_seconds: float = 0,
        hook_timeout_seconds: float = 5,
        notifier: WebhookNotifier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.drain_delay_seconds = drain_delay_seconds
        self.hook_timeout_seconds = hook_timeout_seconds
        self.notifier = notifier
        self._clock = clock
        self._hooks: list[tuple[str, Hook]] = []
        self._listeners: list[Callable[[str], None]] = []
        self._trigger: Callable[[str], None] | None = None
        self.reason: str | None = None
        self._started_at: float | None = None
        self._completed = False
        # Kept by ShutdownMiddleware.
        self.requests_in_flight = 0
        self.requests_cancelled = 0

    # --- wiring ----------------------------------------------------------------------

    def add_hook(self, name: str, hook: Hook) -> None:
        """Run ``await hook()`` when a shutdown starts, bounded by the hook timeout."""
        self._hooks.append((name, hook))

    def on_begin(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(reason)`` the moment a shutdown starts. It must return at once."""
        self._listeners.append(listener)

    def attach_server(self, trigger: Callable[[str], None]) -> None:
        """The server's ``trigger(reason)`` starts a shutdown exactly as a signal does; it
        may be called from any thread.

        The server that attaches also completes the shutdown (phase 5), after it has
        printed its own last lines.
        """
        self._trigger = trigger

    @property
    def has_server(self) -> bool:
        """Whether a server can be asked to shut down (not under a test client)."""
        return self._trigger is not None

    # --- state -----------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        """From the start of the shutdown on: not ready for new traffic."""
        return self._started_at is not None

    def elapsed_ms(self) -> int:
        """Milliseconds since the shutdown started (0 before)."""
        if self._started_at is None:
            return 0
        return round((self._clock() - self._started_at) * 1000)

    def time_left(self, cap: float | None = None) -> float:
        """Seconds left of the budget (all of it before the start), at most ``cap``."""
        left = self.timeout_seconds
        if self._started_at is not None:
            left = max(0.0, self._started_at + self.timeout_seconds - self._clock())
        return left if cap is None else min(left, cap)

    def cut_off(self) -> int:
        """Requests that the shutdown cut off: cancelled, or cancelled and not unwound yet."""
        return self.requests_cancelled + self.requests_in_flight

    # --- the phases ------------------------------------------------------------------

    def begin(self, reason: str) -> bool:
        """Phase 1, its instant part: start the clock, log, tell the listeners.

        Returns ``False`` (and does nothing) if a shutdown has already begun: a second
        SIGTERM, or SIGTERM after the admin request, does not start another.
        """
        if self._started_at is not None:
            return False
        self._started_at = self._clock()
        self.reason = reason
        logger.info("shutdown started reason=%s", reason)
        for listener in self._listeners:
            try:
                listener(reason)
            except Exception:
                logger.exception("shutdown listener %r failed", listener)
        return True

    def request(self, reason: str) -> bool:
        """Ask the server to shut down (the admin endpoint); ``False`` if there is none.

        From any thread: Starlette runs a plain function's background task in its pool.
        """
        if self._trigger is None:
            return False
        self._trigger(reason)
        return True

    async def run_pre_shutdown(self, *, drain: bool = True) -> None:
        """Phase 1, its waiting part: hooks and notification, then the rest of the drain.

        The hooks run concurrently, each bounded, so that together they take at most one
        hook timeout. The drain delay counts from the start, so hooks shorter than it cost
        nothing; both stay within the time budget.
        """
        steps = [self._run_hook(name, hook) for name, hook in self._hooks]
        if self.notifier is not None:
            steps.append(self.notifier.started(self.reason or "unknown"))
        await asyncio.gather(*steps)
        if drain and self._started_at is not None:
            until_drained = self._started_at + self.drain_delay_seconds - self._clock()
            await asyncio.sleep(min(max(0.0, until_drained), self.time_left()))

    async def _run_hook(self, name: str, hook: Hook) -> None:
        try:
            await asyncio.wait_for(hook(), self.time_left(cap=self.hook_timeout_seconds))
        except TimeoutError:
            outcome = "timed out"
        except Exception:
            logger.exception("pre-shutdown hook %s raised", name)
            outcome = "failed"
        else:
            outcome = "done"
        logger.info("pre-shutdown hook %s %s elapsed_ms=%d", name, outcome, self.elapsed_ms())

    def log_phase(self, phase: str, **fields: object) -> None:
        """``shutdown <phase> <key>=<value>... elapsed_ms=<n>``, for phases 2 to 5."""
        details = "".join(f" {key}={value}" for key, value in fields.items())
        logger.info("shutdown %s%s elapsed_ms=%d", phase, details, self.elapsed_ms())

    async def complete(self) -> None:
        """Phase 5: notify, flush the logs, say so. Once only."""
        if self._completed:
            return
        self._completed = True
        if self.notifier is not None:
            await self.notifier.completed(self.elapsed_ms())
        flush_log_handlers()
        self.log_phase("complete")
        flush_log_handlers()


class ShutdownMiddleware:
    """Closes keep-alive connections while draining, and counts the requests cut off.

    - While the app drains, every response says ``Connection: close``: a client on a
      keep-alive connection opens its next connection afresh, and the load balancer sends
      that one to another instance. uvicorn closes the connection after such a response.
    - It counts the requests in flight, and those cancelled during a shutdown: uvicorn
      cancels the requests that outlive ``timeout_graceful_shutdown``, and tells no one
      how many; the ``requests drained`` line reports them.

    The outermost middleware, so that it sees every response, cache hits included.
    """

    def __init__(self, app: ASGIApp, coordinator: ShutdownCoordinator) -> None:
        self.app = app
        self.coordinator = coordinator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        coordinator = self.coordinator

        async def send_closing_if_draining(message: Message) -> None:
            if message["type"] == "http.response.start" and coordinator.draining:
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        coordinator.requests_in_flight += 1
        try:
            await self.app(scope, receive, send_closing_if_draining)
        except asyncio.CancelledError:
            if coordinator.draining:
                coordinator.requests_cancelled += 1
            raise
        finally:
            coordinator.requests_in_flight -= 1
