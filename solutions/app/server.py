"""Serving the app with uvicorn, which learns of a shutdown the moment it is asked for one.

What uvicorn does by itself on SIGTERM or SIGINT (``uvicorn.Server``, 0.54 here): its
handler, ``handle_exit``, sets ``should_exit``; within 0.1 s its main loop sees the flag and
``shutdown()`` closes the listening sockets, tells each connection to close once its
response is sent (idle keep-alive connections close at once), waits for the requests in
flight (for ever, unless ``timeout_graceful_shutdown`` is set, after which it cancels them),
and only then runs the lifespan's shutdown half. After ``serve()`` it raises the signal
again, so a SIGTERM'd uvicorn ends "killed by SIGTERM" rather than with code 0.

``GracefulServer`` changes four things:

- ``handle_exit`` starts the app's shutdown (``shutdown.py``) instead of setting
  ``should_exit`` straight away: phase 1 (log, readiness, hooks, notification, drain delay)
  runs first, while the server still serves; then it closes the listening sockets itself,
  gives the connections accepted a moment ago time to send their request, and only then
  sets ``should_exit``, with ``timeout_graceful_shutdown`` set to what is left of the budget;
- the admin endpoint can start the same shutdown (``ShutdownCoordinator.request``);
- it does not raise the signal again: a graceful shutdown exits with code 0, as ``docker
  stop`` and Kubernetes expect;
- after uvicorn's last line it completes the shutdown (phase 5), so that ``shutdown
  complete`` is the last line printed.
"""

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from .main import create_app
from .settings import Settings
from .shutdown import ShutdownCoordinator

logger = logging.getLogger(__name__)

# Between closing the listening socket and closing idle connections: a connection accepted
# just before the close has not sent its request yet, looks idle, and uvicorn would close it
# unanswered. Its client would see a failed request, during a graceful restart too.
ACCEPT_SETTLE_SECONDS = 0.1


class GracefulServer(uvicorn.Server):
    """uvicorn's server, with the app's shutdown in front of its own (see the module doc)."""

    def __init__(
        self,
        config: uvicorn.Config,
        coordinator: ShutdownCoordinator,
        *,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.coordinator = coordinator
        self._on_ready = on_ready
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signals = 0
        # A reference to the drain task: the event loop keeps only a weak one.
        self._draining: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self.coordinator.attach_server(self.request_shutdown)
        await super().serve(sockets)
        if not self.started:
            return  # the startup failed: there was nothing to shut down
        if self.force_exit:
            logger.warning("shutdown forced: requests, jobs and resources were abandoned")
            return
        await self.coordinator.complete()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_ready is not None:
            self._on_ready()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The signal handler (main thread, between two bytecodes of whatever ran).

        It only hands the signal to the event loop: logging or creating tasks from inside a
        signal handler could interleave with the very code it interrupted. Unlike uvicorn's
        own handler it does not record the signal, so that it is not raised again at exit.
        """
        self._signals += 1
        if self._signals > 1:
            # uvicorn's convention: a second Ctrl-C means "now". A second SIGTERM does not
            # hurry anything (orchestrators repeat theirs).
            if sig == signal.SIGINT:
                self.should_exit = self.force_exit = True
            return
        self.request_shutdown(signal.Signals(sig).name)

    def request_shutdown(self, reason: str) -> None:
        """Start the shutdown, from any thread: the signal handler, the admin endpoint."""
        # Set before uvicorn installs its signal handlers, in serve().
        assert self._loop is not None, "serve() has not started"
        self._loop.call_soon_threadsafe(self._begin_shutdown, reason)

    def _begin_shutdown(self, reason: str) -> None:
        if self.coordinator.begin(reason):
            self._draining = asyncio.create_task(self._drain_then_exit(), name="shutdown-drain")

    async def _drain_then_exit(self) -> None:
        try:
            await self.coordinator.run_pre_shutdown()
            for server in getattr(self, "servers", []):  # set by startup()
                server.close()  # stop accepting; uvicorn's shutdown() closes them again
            if self.server_state.connections:
                await asyncio.sleep(ACCEPT_SETTLE_SECONDS)
        finally:
            # Whatever happened above, the server stops, within what is left of the budget.
            # (uvicorn annotates the timeout as an int; asyncio.wait_for takes any number.)
            self.config.timeout_graceful_shutdown = self.coordinator.time_left()
            self.should_exit = True


def serve(
    settings: Settings,
    *,
    sock: socket.socket | None = None,
    on_ready: Callable[[], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> int:
    """Build the app and serve it until it has shut down; return the exit code.

    ``sock``: a listening socket to serve on (the supervisor's), else bind HOST:PORT.
    ``on_ready`` is called once the server accepts requests, ``on_shutdown`` the moment a
    shutdown starts (the supervisor listens to both).
    """
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        # The app writes its own access line, with the request id (tracing.py): uvicorn's
        # would be a second line per request without it.
        access_log=False,
        # What uvicorn waits when it stops without the app's shutdown (it is replaced by
        # the time left of the budget when the app's shutdown drives it).
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
    )
    coordinator: ShutdownCoordinator = app.state.shutdown
    if on_shutdown is not None:
        coordinator.on_begin(lambda reason: on_shutdown())
    server = GracefulServer(config, coordinator, on_ready=on_ready)
    if sock is not None:
        logger.info("serving on the inherited socket %s", _address(sock))
    server.run(sockets=[sock] if sock is not None else None)
    return 0 if server.started else STARTUP_FAILURE


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"
