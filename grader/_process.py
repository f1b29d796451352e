"""Run the learner's app as a real server process, for the checks that need one.

Some behaviour only exists in a real process: what a server does on `SIGTERM`, whether it
exits by itself before `docker stop` kills it, what it prints while it stops, whether a
restart finds its jobs. `AppProcess` runs `python -m <package>` on a free loopback port,
talks HTTP to it, sends it signals and reads its output and exit code.

Whatever happens, nothing is left running. Each server gets a process group of its own
(so a check's signals and the grader's Ctrl+C do not reach pytest, and pytest's do not
reach the server), and that whole group is killed at the end: grandchildren too, such as
the new server a graceful restart forks. Three layers make sure of it:
- `kill()`, which the `launch_app` fixture calls for every process at teardown;
- an `atexit` hook that kills every group still registered when pytest exits normally;
- a watchdog process in a session of its own, which kills every group still registered
  when pytest goes away without running `atexit`: the grader's runner SIGKILLs a run that
  takes too long, and the plugin leaves with `os._exit` when an app hung its threads.

This module runs in the child pytest: it must not import the app's framework (uvicorn,
FastAPI), only talk to the app from outside.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx

from ._errors import AppProblem

__all__ = [
    "AppProcess",
    "BackgroundRequest",
    "Outcome",
    "StopResult",
    "describe_exit",
    "free_port",
    "loopback_client",
]

HOST = "127.0.0.1"
HEALTH_PATH = "/health"
READY_POLL_SECONDS = 0.1
OUTPUT_POLL_SECONDS = 0.05
TAIL_LINES = 15
# After SIGKILL the kernel tears a process down in milliseconds; these bound the wait.
REAP_SECONDS = 5.0
GROUP_GONE_SECONDS = 2.0

# The `error` of an Outcome: stable words, so that checks can compare them.
REFUSED = "connection refused"
RESET = "connection reset"
CLOSED = "connection closed without a response"

_LOG_NUMBERS = itertools.count(1)


def free_port() -> int:
    """A loopback port nobody listens on now (another process may take it before us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def loopback_client(timeout: float = 10.0) -> httpx.Client:
    """An httpx client for the app on loopback: no proxy from the environment, no TLS set-up.

    `trust_env=False` because an `HTTP_PROXY` in the learner's environment must not sit
    between the grader and the app; `verify=False` because it is plain HTTP anyway and
    loading the CA bundle costs 20 ms a client (one client per request by default).
    Checks that need a keep-alive connection use one of these with `request(client=...)`.
    """
    return httpx.Client(trust_env=False, verify=False, timeout=timeout)


def describe_exit(code: int | None) -> str:
    """`exited with code 1`, `was killed by SIGKILL`, `is still running`: for messages."""
    if code is None:
        return "is still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


@dataclass
class Outcome:
    """What one HTTP request got, or why it got nothing.

    `status` is None unless a complete response arrived: a connection refused, reset or
    closed (also in the middle of the body) and a timeout all leave it None and say which
    in `error`. `body` and `headers` hold whatever did arrive.
    """

    status: int | None
    body: str
    headers: dict[str, str]
    error: str | None
    started: float
    finished: float

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def describe(self) -> str:
        """`200, 145 bytes` or `no response (connection refused)`: for learner messages."""
        if self.status is None:
            return f"no response ({self.error or 'unknown error'})"
        return f"{self.status}, {len(self.body.encode('utf-8'))} bytes"


@dataclass(frozen=True)
class StopResult:
    """How a `docker stop` went: the exit code (negative: killed by that signal), how long
    it took from the SIGTERM, and whether the SIGKILL was needed."""

    exit_code: int | None
    seconds: float
    killed: bool


class BackgroundRequest(Future[Outcome]):
    """A request running in a background thread; its result is the Outcome.

    `wait_sent()` tells when the request has left: a check that means "a request in
    flight when SIGTERM arrives" waits for it rather than guessing with a sleep.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sent = threading.Event()
        self._sent_or_done = threading.Event()
        self.add_done_callback(lambda _: self._sent_or_done.set())

    def _mark_sent(self) -> None:
        self.sent.set()
        self._sent_or_done.set()

    def wait_sent(self, timeout: float) -> bool:
        """True once the whole request is written to the socket; False if it failed first
        (connection refused, say) or `timeout` passed."""
        self._sent_or_done.wait(timeout)
        return self.sent.is_set()


class AppProcess:
    """One `python -m <package>` server on 127.0.0.1:<port>.

    `env` holds the check's settings: they come on top of the grader's own environment
    (which carries the PYTHONPATH that finds the learner's package), and HOST, PORT and
    PYTHONUNBUFFERED come on top of them. Its output (stdout and stderr together) goes to
    a log file in `cwd`, so that nothing blocks on a full pipe and the log survives it.
    """

    #: The first word of its log file's name (`app-<port>-<n>.log`).
    log_prefix = "app"

    def __init__(
        self,
        package: str,
        *,
        cwd: Path,
        env: Mapping[str, str],
        port: int | None = None,
    ) -> None:
        self.package = package
        self.cwd = Path(cwd)
        self.env = {name: str(value) for name, value in env.items()}
        self.port = port if port is not None else free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.log_path: Path | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None
        self._done = False  # kill() has finished: the group is gone

    def __repr__(self) -> str:
        return f"<AppProcess {self.package} port={self.port} pid={self.pid} {self._state()}>"

    def _state(self) -> str:
        if self._popen is None:
            return "unstarted"
        return describe_exit(self._popen.poll())

    # --- process ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    @property
    def pgid(self) -> int | None:
        """The process group (its own, so equal to `pid`) that `kill()` ends."""
        return self._pgid

    @property
    def returncode(self) -> int | None:
        """The exit code once it has exited (negative: killed by that signal), else None."""
        return None if self._popen is None else self._popen.poll()

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def command(self) -> str:
        """The command line as a learner would type it, settings included, for messages."""
        settings = " ".join(f"{name}={value}" for name, value in sorted(self.env.items()))
        contract = f"HOST={HOST} PORT={self.port}"
        return f"{settings} {contract} python -m {self.package}".strip()

    def argv(self) -> list[str]:
        """What `start()` runs. A subclass runs another server this way (the load balancer
        of `grader._cluster`), so that it gets the same readiness check, log file and
        kill guarantees without a second copy of them."""
        return [sys.executable, "-m", self.package]

    def start(self, *, ready_timeout: float = 30.0) -> AppProcess:
        """Spawn the server and wait until `GET /health` answers 200.

        Raises AppProblem, with what was run, what was expected and the last lines the app
        printed, when it exits first or does not get ready in time; it is killed then.
        """
        if self._popen is not None:
            raise RuntimeError("an AppProcess starts once: make a new one (port=...) to restart")
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.log_path = self.cwd / f"{self.log_prefix}-{self.port}-{next(_LOG_NUMBERS)}.log"
        env = {
            **os.environ,
            **self.env,
            "HOST": HOST,
            "PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
        }
        # The child keeps its own copy of the log's descriptor; ours can close at once.
        with self.log_path.open("wb") as log:
            self._popen = subprocess.Popen(
                self.argv(),
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a group of its own, ended as a whole by kill()
            )
        self._pgid = self._popen.pid
        _GUARD.add(self)
        self._wait_ready(ready_timeout)
        return self

    def _wait_ready(self, ready_timeout: float) -> None:
        """Poll /health on a new connection each time, until 200, an exit, or the deadline."""
        assert self._popen is not None
        deadline = time.monotonic() + ready_timeout
        last: Outcome | None = None
        while True:
            code = self._popen.poll()
            if code is not None:
                self._fail_start(ready_timeout, f"it {describe_exit(code)} before answering")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got = last.describe() if last is not None else "nothing"
                self._fail_start(
                    ready_timeout, f"no 200 within {ready_timeout:g} s (the last try got {got})"
                )
            last = self.request("GET", HEALTH_PATH, timeout=max(0.1, min(2.0, remaining)))
            if last.status == 200:
                return
            time.sleep(max(0.0, min(READY_POLL_SECONDS, deadline - time.monotonic())))

    def _fail_start(self, ready_timeout: float, observed: str) -> NoReturn:
        self.kill()
        tail = self.output_tail()
        printed = f"; last lines of its output:\n{tail}" if tail else "; it printed nothing"
        raise AppProblem(
            f"The grader ran `{self.command()}` (in a scratch folder).\n"
            f"expected: GET {HEALTH_PATH} answers 200 within {ready_timeout:g} s\n"
            f"observed: {observed}{printed}"
        )

    def send_signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the server's own pid (not its group: an app that forwards signals
        to its children is part of what a check may test). Nothing if it already exited."""
        popen = self._started()
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code (negative: killed by that signal), or None if still running."""
        popen = self._started()
        try:
            return popen.wait(max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None

    def docker_stop(self, grace: float) -> StopResult:
        """What `docker stop --time <grace>` does: SIGTERM to the main process, SIGKILL to
        everything if it still runs `grace` seconds later.

        As in a container, whatever the main process leaves behind is killed once it has
        exited (the rest of the group), so a check can start the next process at once.
        """
        popen = self._started()
        began = time.monotonic()
        self.send_signal(signal.SIGTERM)
        code = self.wait_exit(grace)
        killed = code is None
        if killed:
            self._kill_group()
            code = self.wait_exit(REAP_SECONDS)
        seconds = time.monotonic() - began
        self.kill()
        if code is None:
            code = popen.poll()
        return StopResult(exit_code=code, seconds=seconds, killed=killed)

    def kill(self) -> None:
        """SIGKILL the whole process group, reap the server and wait until no process of
        the group runs any more. Idempotent; never raises."""
        if self._done or self._popen is None:
            return
        try:
            self._kill_group()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(REAP_SECONDS)
            _wait_group_gone(self._pgid, GROUP_GONE_SECONDS)
            self._done = True
        except Exception:  # a teardown must go on to the next process whatever happens
            pass
        finally:
            _GUARD.remove(self)

    def _kill_group(self) -> None:
        if self._pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pgid, signal.SIGKILL)

    def _started(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError(f"{self!r} has not been started")
        return self._popen

    # --- output -----------------------------------------------------------------------

    def output(self) -> str:
        """Everything it printed so far, stdout and stderr together, in order."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def output_tail(self, lines: int = TAIL_LINES, width: int = 300) -> str:
        """Its last `lines` non-empty lines, indented, each cut at `width`: for messages."""
        tail = [line for line in self.output().splitlines() if line.strip()][-lines:]
        return "\n".join(
            "  " + (line if len(line) <= width else line[: width - 1] + "…") for line in tail
        )

    def wait_for_output(
        self, pattern: str, *, timeout: float, after: int = 0
    ) -> re.Match[str] | None:
        """Search `pattern` in what it printed from position `after` on, until `timeout`.

        The match's positions are positions in `output()`, so `after=match.end()` goes on
        past it. Returns None on timeout, or as soon as the process has exited without
        printing it (its output cannot change any more).
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            exited = self._popen is not None and self._popen.poll() is not None
            match = regex.search(self.output(), after)
            if match is not None or exited or time.monotonic() >= deadline:
                return match
            time.sleep(max(0.0, min(OUTPUT_POLL_SECONDS, deadline - time.monotonic())))

    # --- HTTP -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        client: httpx.Client | None = None,
    ) -> Outcome:
        """Send one request, by default on a new connection; never raises for HTTP or
        transport errors: they are in the Outcome.

        `timeout` bounds each step (connecting, and each wait for more of the answer).
        """
        return self._exchange(method, path, timeout, headers, json, client, None)

    def in_background(self, method: str, path: str, **kw: Any) -> BackgroundRequest:
        """The same request, sent from a daemon thread; returns at once.

        Daemon threads, not an executor: a request still waiting when pytest ends must not
        keep the interpreter alive.
        """
        timeout = float(kw.pop("timeout", 10.0))
        headers = kw.pop("headers", None)
        json = kw.pop("json", None)
        client = kw.pop("client", None)
        if kw:
            raise TypeError(f"in_background() got unexpected arguments {sorted(kw)}")
        future = BackgroundRequest()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                outcome = self._exchange(
                    method, path, timeout, headers, json, client, future._mark_sent
                )
            except BaseException as exc:  # request() never raises; this is a bug's trace
                future.set_exception(exc)
            else:
                future.set_result(outcome)

        thread = threading.Thread(target=run, name=f"request {method} {path}", daemon=True)
        thread.start()
        return future

    def _exchange(
        self,
        method: str,
        path: str,
        timeout: float,
        headers: Mapping[str, str] | None,
        json: Any,
        client: httpx.Client | None,
        on_sent: Callable[[], None] | None,
    ) -> Outcome:
        def trace(event: str, info: Mapping[str, Any]) -> None:
            if on_sent is not None and event.endswith("send_request_body.complete"):
                on_sent()

        own = client is None
        http = loopback_client(timeout) if client is None else client
        started = time.monotonic()
        received: int | None = None  # the status line arrived (the body may not)
        got_headers: dict[str, str] = {}
        chunks: list[bytes] = []
        encoding = "utf-8"
        error: str | None = None
        try:
            with http.stream(
                method,
                f"{self.base_url}{path}",
                headers=dict(headers) if headers else None,
                json=json,
                timeout=timeout,
                extensions={"trace": trace},
            ) as response:
                received = response.status_code
                got_headers = {k.lower(): v for k, v in response.headers.items()}
                encoding = response.encoding or "utf-8"
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
        except httpx.TimeoutException:
            error = f"timed out after {timeout:g} s"
        except (httpx.HTTPError, httpx.StreamError, OSError) as exc:
            error = _transport_error(exc, received)
        finally:
            if own:
                http.close()
        finished = time.monotonic()
        body = b"".join(chunks).decode(encoding, errors="replace")
        status = received if error is None else None
        if error is not None and received is not None:
            error = f"{error}, after status {received} and {len(body.encode())} bytes of its body"
        return Outcome(status, body, got_headers, error, started, finished)


def _transport_error(exc: BaseException, received: int | None) -> str:
    """The stable words for what went wrong on the connection."""
    causes: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(causes) < 10:
        causes.append(current)
        current = current.__cause__ or current.__context__
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return REFUSED
    if any(isinstance(c, ConnectionResetError | BrokenPipeError) for c in causes):
        return RESET
    if isinstance(exc, httpx.RemoteProtocolError) and received is not None:
        return "connection closed"
    if isinstance(exc, httpx.RemoteProtocolError) and "without sending" in str(exc):
        return CLOSED
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --- leaving nothing behind -------------------------------------------------------------


def group_runs(pgid: int) -> bool:
    """Whether some process of group `pgid` still runs.

    Zombies do not count: an orphan the app forked is reparented to init, and an init that
    does not reap (some containers' PID 1) leaves it a zombie for good; it runs nothing and
    holds no port. Where there is no /proc, `killpg(pgid, 0)` answers (zombies included).
    """
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)": comm may hold spaces
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _wait_group_gone(pgid: int | None, timeout: float) -> None:
    if pgid is None:
        return
    deadline = time.monotonic() + timeout
    while group_runs(pgid) and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)  # a member forked after the first kill
        time.sleep(0.01)


# Reads "+<pgid>" and "-<pgid>" lines; when its stdin closes (pytest is gone, however it
# went), it SIGKILLs the groups still registered.
_WATCHDOG_SOURCE = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
groups = set()
for line in sys.stdin.buffer:
    line = line.strip()
    if line[:1] == b"+":
        groups.add(int(line[1:]))
    elif line[:1] == b"-":
        groups.discard(int(line[1:]))
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class _Guard:
    """The registry of process groups that still need killing, and its two fallbacks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, AppProcess] = {}
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._pid = os.getpid()  # a forked copy of pytest must not talk to our watchdog

    def add(self, app: AppProcess) -> None:
        assert app.pgid is not None
        with self._lock:
            self._live[app.pgid] = app
            self._tell(f"+{app.pgid}")

    def remove(self, app: AppProcess) -> None:
        with self._lock:
            if app.pgid is not None and self._live.get(app.pgid) is app:
                del self._live[app.pgid]
                self._tell(f"-{app.pgid}")

    def kill_all(self) -> None:
        """At interpreter exit: kill what a teardown did not (normally nothing), then let
        the watchdog go (its stdin closes) and reap it."""
        with self._lock:
            apps = list(self._live.values())
        for app in apps:
            app.kill()
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and os.getpid() == self._pid:
            with contextlib.suppress(OSError, ValueError, subprocess.TimeoutExpired):
                assert watchdog.stdin is not None
                watchdog.stdin.close()
                watchdog.wait(1.0)

    def _tell(self, line: str) -> None:
        if os.getpid() != self._pid:
            return
        try:
            if self._watchdog is None:
                self._watchdog = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _WATCHDOG_SOURCE],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # outlives a SIGKILL to pytest's own group
                )
            assert self._watchdog.stdin is not None
            self._watchdog.stdin.write(f"{line}\n".encode())
            self._watchdog.stdin.flush()
        except (OSError, ValueError):
            pass  # no watchdog: teardown and atexit still kill the processes


_GUARD = _Guard()
atexit.register(_GUARD.kill_all)
