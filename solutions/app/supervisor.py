"""The process ``python -m solutions.app`` starts: a small supervisor for graceful restarts.

A graceful restart (exercise 10.3, stretch) replaces the server process with a new one
(new code, new settings) without refusing a single connection. The trick is to keep the
listening socket open all along, in a process that outlives the servers:

- the supervisor binds HOST:PORT once, then forks a child that imports the app and serves
  on that socket (``server.serve(sock=...)``). Forked, not started afresh: the child skips
  the interpreter's start-up and the settings import, so the supervisor costs next to
  nothing at start. It imports only the settings and the standard library, never the app,
  so each new child imports the app's code as it is on disk at that moment;
- on SIGHUP it forks a new child on the same socket and waits until the child reports that
  it serves; then it SIGTERMs the old one, which drains as on any SIGTERM. While both run,
  the kernel hands each new connection to one of them; at no moment does nobody listen, so
  no connection is refused;
- on SIGTERM or SIGINT it closes its own copy of the socket (so that once the child closes
  its copy, new connections are refused, as they would be without a supervisor), forwards
  SIGTERM to its children, waits for them and exits with the serving child's exit code. It
  forwards SIGTERM for SIGINT too: a Ctrl-C in a terminal reaches the child directly (same
  process group), and a second SIGINT would mean "force quit" to it;
- when the serving child stops by itself (``POST /admin/shutdown``, a crash) the supervisor
  stops too, with its exit code: restarting a crashed server is the orchestrator's call;
- every child gets SIGTERM if the supervisor dies (``PR_SET_PDEATHSIG`` on Linux), so that
  no server outlives it unseen, holding the port.

The children tell the supervisor two things through a pipe each, one word a line: ``ready``
(it serves) and ``stopping`` (its shutdown started).

Logging happens at start and on restarts only, never after the last child exits: the
child's ``shutdown complete`` stays the last line printed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from .logs import flush_log_handlers
from .settings import Settings

logger = logging.getLogger(__name__)

# A new child that does not serve within this long is given up, and the old one serves on.
READY_TIMEOUT_SECONDS = 60.0
# A child still running this long after its SIGTERM beyond its own shutdown budget is
# SIGKILLed: a bug must not keep the supervisor (the container) up for ever.
KILL_MARGIN_SECONDS = 10.0
BACKLOG = 2048  # uvicorn's default
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

READY = b"ready"
STOPPING = b"stopping"

# serve(settings, sock, tell) -> exit code: what a child runs (``server.serve``, by default).
ChildMain = Callable[[Settings, socket.socket, Callable[[bytes], None]], int]


@dataclass
class Child:
    """One server process, as the supervisor knows it."""

    pid: int
    pipe: int  # read end of the child's status pipe
    started_at: float
    terminated_at: float | None = None  # when we sent SIGTERM
    killed: bool = False  # SIGKILLed by a deadline
    exit_code: int | None = None
    buffer: bytes = field(default=b"", repr=False)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket all children share, bound the way uvicorn would bind it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not the default 0: asyncio turns Nagle's algorithm off (TCP_NODELAY)
    # only on accepted sockets whose proto says TCP. With Nagle on, a response written in
    # two parts (head, then body) waits for the client's delayed ACK: 40 ms per request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    return sock


def die_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when ``parent`` dies (Linux only).

    SIGTERM rather than SIGKILL: an orphaned server still drains and records its jobs.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def exit_code_of(status: int) -> int:
    """A child's wait status as a shell would report it: its code, or 128 + its signal."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


class Supervisor:
    """Owns the listening socket; runs, replaces and stops the server children."""

    def __init__(self, settings: Settings, child_main: ChildMain) -> None:
        self.settings = settings
        self.child_main = child_main
        self.listener: socket.socket | None = None
        self.current: Child | None = None  # the child that serves
        self.next: Child | None = None  # a replacement, until it is ready
        self.retiring: list[Child] = []  # old children, draining
        self.stopping = False
        self.exit_code = 0
        self._selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = socket.socketpair()

    # --- the main loop -----------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; return the exit code for the process."""
        self.listener = bind(self.settings.host, self.settings.port)
        self._install_signal_handlers()
        host, port = self.listener.getsockname()[:2]
        logger.info(
            "supervisor pid=%d listening on http://%s:%d (SIGHUP: graceful restart)",
            os.getpid(),
            f"[{host}]" if ":" in host else host,
            port,
        )
        self.current = self._spawn()
        while self._children():
            timeout = self._next_deadline()
            for key, _ in self._selector.select(timeout):
                if key.fileobj is self._wakeup_r:
                    self._on_signals()
                else:
                    self._on_message(key.data)
            self._reap()
            self._enforce_deadlines()
        return self.exit_code

    def _children(self) -> list[Child]:
        children = [self.current, self.next, *self.retiring]
        return [child for child in children if child is not None]

    # --- signals -----------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        # The C-level handler writes each signal's number to the wakeup socket, which wakes
        # select(); the Python-level handler itself does nothing. SIGCHLD too, so that a
        # child's exit wakes the loop.
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, lambda signum, frame: None)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ)

    def _on_signals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            for signum in self._wakeup_r.recv(64):
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self._stop(f"{signal.Signals(signum).name} received")
                elif signum == signal.SIGHUP:
                    self._restart()
                # SIGCHLD: _reap() runs after every wake-up anyway.

    def _stop(self, why: str) -> None:
        """Stop serving: close our copy of the socket, SIGTERM every child."""
        if self.stopping:
            return
        self.stopping = True
        logger.info("supervisor stopping (%s)", why)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for child in self._children():
            self._terminate(child)

    def _restart(self) -> None:
        if self.stopping:
            logger.info("SIGHUP ignored: the supervisor is stopping")
        elif self.next is not None:
            logger.info("SIGHUP ignored: a restart is already under way (pid=%d)", self.next.pid)
        else:
            self.next = self._spawn()
            logger.info("graceful restart: new server pid=%d starting", self.next.pid)

    # --- children ----------------------------------------------------------------------

    def _spawn(self) -> Child:
        assert self.listener is not None
        read_end, write_end = os.pipe()
        flush_log_handlers()  # or the child would print our buffered output a second time
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_end)
            self._run_child(write_end, supervisor)
        os.close(write_end)
        child = Child(pid=pid, pipe=read_end, started_at=time.monotonic())
        os.set_blocking(read_end, False)
        self._selector.register(read_end, selectors.EVENT_READ, child)
        return child

    def _run_child(self, status_pipe: int, supervisor: int) -> None:
        """In the forked child: shed the supervisor's state, serve, exit."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            # SIGHUP is the supervisor's business; one sent to the whole process group
            # (a closed terminal) must not kill the server.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            die_with_parent(supervisor)
            self._selector.close()
            self._wakeup_r.close()
            self._wakeup_w.close()
            for other in self._children():
                os.close(other.pipe)
            assert self.listener is not None

            def tell(word: bytes) -> None:
                with contextlib.suppress(OSError):  # the supervisor is gone: nobody to tell
                    os.write(status_pipe, word + b"\n")

            # Settings afresh: a restart picks up a changed environment or .env file.
            code = self.child_main(Settings(), self.listener, tell)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            flush_log_handlers()
            # Not sys.exit(): the child must not unwind into the supervisor's loop. And
            # not waiting for threads at exit is right here: a job thread still running
            # past the shutdown timeout is abandoned by design.
            os._exit(code)

    def _on_message(self, child: Child) -> None:
        try:
            data = os.read(child.pipe, 512)
        except BlockingIOError:
            return
        if not data:  # the child closed the pipe: it is exiting; _reap() collects it
            self._selector.unregister(child.pipe)
            return
        child.buffer += data
        *lines, child.buffer = child.buffer.split(b"\n")
        for word in lines:
            if word == READY:
                self._on_ready(child)
            elif word == STOPPING and child is self.current and child.terminated_at is None:
                # It stops by itself (the admin endpoint): so does the supervisor.
                self._stop(f"server pid={child.pid} is shutting down")

    def _on_ready(self, child: Child) -> None:
        if child is not self.next or self.stopping:
            return
        old, self.current, self.next = self.current, child, None
        if old is not None:
            logger.info(
                "graceful restart: server pid=%d ready, stopping pid=%d", child.pid, old.pid
            )
            self.retiring.append(old)
            self._terminate(old)

    def _terminate(self, child: Child) -> None:
        if child.terminated_at is None and child.exit_code is None:
            child.terminated_at = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)

    def _reap(self) -> None:
        # Any child, not only ours: in a container the supervisor is pid 1, which inherits
        # every orphaned process and must reap it, or it stays a zombie.
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # no child left at all
                return
            if pid == 0:  # none has exited (any more)
                return
            child = next((c for c in self._children() if c.pid == pid), None)
            if child is None:
                continue
            child.exit_code = exit_code_of(status)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(child.pipe)
            os.close(child.pipe)
            self._on_exit(child)

    def _on_exit(self, child: Child) -> None:
        if child in self.retiring:
            self.retiring.remove(child)
        elif child is self.next:
            self.next = None
            if not self.stopping:
                logger.error(
                    "graceful restart failed: new server pid=%d exited with code %d before "
                    "it served; pid=%s serves on",
                    child.pid,
                    child.exit_code,
                    self.current.pid if self.current else "?",
                )
        elif child is self.current:
            self.current = None
            self.exit_code = child.exit_code or 0
            self._stop(f"server pid={child.pid} exited with code {child.exit_code}")

    # --- time limits -------------------------------------------------------------------

    def _deadlines(self) -> list[tuple[float, Child, str]]:
        grace = self.settings.shutdown_timeout_seconds + KILL_MARGIN_SECONDS
        deadlines = [
            (child.terminated_at + grace, child, "did not stop in time")
            for child in self._children()
            if child.terminated_at is not None and not child.killed and child.exit_code is None
        ]
        if self.next is not None and self.next.terminated_at is None and not self.next.killed:
            deadlines.append((self.next.started_at + READY_TIMEOUT_SECONDS, self.next, "slow"))
        return deadlines

    def _next_deadline(self) -> float | None:
        deadlines = self._deadlines()
        if not deadlines:
            return None
        return max(0.0, min(at for at, _, _ in deadlines) - time.monotonic())

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for at, child, why in self._deadlines():
            if now < at:
                continue
            if why == "slow":
                logger.error(
                    "graceful restart failed: new server pid=%d not ready after %g s",
                    child.pid,
                    READY_TIMEOUT_SECONDS,
                )
            else:
                logger.error("server pid=%d %s: killing it", child.pid, why)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            child.killed = True


def supervise(settings: Settings, child_main: ChildMain) -> int:
    """Run the supervisor; its exit code is the serving child's."""
    try:
        return Supervisor(settings, child_main).run()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            logger.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
            return 1
        raise
