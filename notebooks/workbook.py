"""Small helpers shared by the walkthrough notebooks of Module 10.

The notebooks treat an app the way the grader does: as a package with a ``create_app()``
factory that reads its settings from environment variables, driven over HTTP in-process
(lifespan included). Nothing here is specific to one exercise:

- ``app_under_study()``: the app package a notebook explores (``WORKBOOK_APP``);
- ``running_app(package, **env)``: a started app and an ``httpx.AsyncClient`` for it;
- ``store_operations(client)``: the ``store_operations_total`` counter from ``/metrics``;
- ``counted_get(client, path)``: one GET and the number of store calls it caused;
- ``timed_gets(client, path, n)``: ``n`` sequential GETs, timed, with their ``X-Cache``;
- ``redis_available(url)``, ``redis_keys(url, prefix)``, ``delete_redis_keys(url, prefix)``;
- ``admin_headers(token)``: the ``Authorization`` header of an admin request;
- ``wait_for(probe, timeout=...)``: poll an async probe until it reports success or time is up;
- ``captured_output()``: the app's log records and printed lines during a block, timestamped;
- ``show_checklist(result)``: a grading result as the ``grade`` command prints it.

For exercise 10.3, which needs a real server process (signals, exit codes, refused
connections exist only there):

- ``server_process(package, **env)``: ``python -m <package>`` on a free loopback port, killed
  (its whole process group) when the block ends; ``started_servers()`` lists them all;
- ``SteadyLoad(app, clients=...)``: client threads that each send one request after another,
  a new connection every time, and record what each got (``Outcome`` of the grader);
- ``outcome_kind(outcome)``, ``count_kinds(requests)``: completed, refused or failed;
- ``shutdown_lines(output)``: the contract's shutdown log lines found in a server's output;
- ``process_group_runs(pgid)``: whether a server (or anything it started) still runs.

For exercise 10.4, several such servers behind a load balancer:

- ``cluster(package, n, **env)``: the grader's ``Cluster`` of ``n`` instances, killed with
  its balancer when the block ends, its Redis keys deleted; ``started_clusters()``;
- ``shared_settings()``: the settings that share state between instances (a database, Redis
  with a prefix of its own), as the grader sets them; ``kernel_redis_prefix()``;
- ``Transcript``: requests to named instances and their answers, shown as a table;
  ``print_table(header, rows)``, ``short_answer(outcome)``, ``instance_name(app)``;
- ``measure_throughput(url, seconds=...)``: requests per second under a short load (wrk,
  else httpx), as ``Throughput``; ``load_tool()`` says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import io
import itertools
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from asgi_lifespan import LifespanManager

if TYPE_CHECKING:
    import redis

    from grader import GradeResult
    from grader._cluster import Cluster
    from grader._process import AppProcess, Outcome

T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BASE_URL = "http://testserver"
DEFAULT_APP = "starter_app"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# The app packages (starter_app, solutions.app, your own) live at the project root. An
# editable install already puts it on sys.path; this covers a plain `jupyter lab` run too.
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))


def app_under_study(default: str = DEFAULT_APP) -> str:
    """The app package to explore: ``WORKBOOK_APP`` from the environment, else ``default``."""
    return os.environ.get("WORKBOOK_APP", "").strip() or default


def _env_value(value: object) -> str:
    if isinstance(value, bool):  # pydantic-settings reads "true"/"false"
        return "true" if value else "false"
    return str(value)


@contextlib.contextmanager
def environment(**env: object) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them.

    A value of ``None`` removes the variable for the duration.
    """
    saved = {name: os.environ.get(name) for name in env}
    try:
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = _env_value(value)
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


@contextlib.asynccontextmanager
async def running_app(package: str, **env: object) -> AsyncIterator[httpx.AsyncClient]:
    """Start a fresh app from ``package`` with ``env`` set, and yield a client for it.

    The variables are set before ``create_app()`` runs and restored when the block ends.
    The app's lifespan runs (startup on entry, shutdown on exit), exactly as under a
    server, but requests go straight to the app in this process: no port, no network.
    ``LOG_LEVEL`` defaults to ``ERROR`` so that startup log lines do not clutter the
    notebook; pass ``LOG_LEVEL="INFO"`` to see them.

    Each call builds a new app object, so each has its own cache and metrics. Apps built
    from the same package in one process share their users, though: the store keeps
    them in class attributes (see ``store.py``), standing in for a shared database.
    """
    # A job queue of the app's own (exercise 10.2), not a jobs.sqlite3 next to the notebook.
    with (
        tempfile.TemporaryDirectory(prefix="workbook-jobs-") as queue,
        environment(
            **{"LOG_LEVEL": "ERROR", "JOBS_DB_PATH": str(Path(queue) / "jobs.sqlite3"), **env}
        ),
    ):
        module = importlib.import_module(package)
        app = module.create_app()
        async with LifespanManager(app) as manager:
            # An exception in an endpoint becomes the 500 a real server would send.
            transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
                yield client


def _parse_counter(text: str, name: str) -> float | None:
    """The sum of every sample of counter ``name`` (all label sets); None if absent."""
    from prometheus_client.parser import text_string_to_metric_families

    total = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_total":
                total = (total or 0.0) + sample.value
    return total


async def store_operations(client: httpx.AsyncClient) -> int:
    """How many times the app has called its store so far (``store_operations_total``).

    ``GET /metrics`` itself never touches the store, so the difference between two
    readings is exactly the number of store calls made by the requests in between.
    """
    response = await client.get("/metrics")
    total = _parse_counter(response.text, "store_operations") if response.is_success else None
    if total is None:
        raise LookupError(
            f"GET /metrics answered {response.status_code} without a store_operations_total "
            "counter; the starter has one, and the notebooks (like the grader) need it to "
            "tell a cache hit from a store read"
        )
    return int(total)


async def counted_get(
    client: httpx.AsyncClient, path: str, headers: Mapping[str, str] | None = None
) -> tuple[httpx.Response, int]:
    """One GET of ``path``: the response, and how many store calls it caused (0: a hit)."""
    before = await store_operations(client)
    response = await client.get(path, headers=dict(headers or {}))
    return response, await store_operations(client) - before


async def timed_gets(
    client: httpx.AsyncClient,
    path: str,
    n: int,
    headers: Mapping[str, str] | None = None,
) -> list[tuple[float, str | None]]:
    """Send ``n`` GETs of ``path`` one after the other.

    Returns one ``(seconds, X-Cache)`` pair per request, in order; ``X-Cache`` is ``None``
    when the response has no such header.
    """
    timings = []
    for _ in range(n):
        started = time.perf_counter()
        response = await client.get(path, headers=dict(headers or {}))
        elapsed = time.perf_counter() - started
        timings.append((elapsed, response.headers.get("x-cache")))
    return timings


def _redis_client(url: str, timeout: float) -> redis.Redis:
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)


def redis_available(url: str = DEFAULT_REDIS_URL, *, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING at ``url`` within ``timeout`` seconds."""
    try:
        import redis
    except ImportError:
        return False
    try:
        client = _redis_client(url, timeout)
    except ValueError:  # not a redis:// URL
        return False
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def redis_keys(url: str, prefix: str) -> list[str]:
    """The keys in Redis at ``url`` that start with ``prefix``, sorted."""
    client = _redis_client(url, 1.0)
    try:
        pattern = _glob_escape(prefix) + "*"
        return sorted(key.decode("utf-8", "replace") for key in client.scan_iter(match=pattern))
    finally:
        client.close()


def delete_redis_keys(url: str, prefix: str) -> int:
    """Delete every key that starts with ``prefix``; returns how many were deleted."""
    client = _redis_client(url, 1.0)
    try:
        keys = list(client.scan_iter(match=_glob_escape(prefix) + "*"))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


def admin_headers(token: str) -> dict[str, str]:
    """The headers of an admin request: ``Authorization: Bearer <token>``."""
    return {"Authorization": f"Bearer {token}"}


async def wait_for(
    probe: Callable[[], Awaitable[T]], *, timeout: float = 5.0, interval: float = 0.05
) -> T:
    """Await ``probe()`` every ``interval`` seconds until it returns something truthy.

    Returns that value, or the last (falsy) one once ``timeout`` seconds have passed. It never
    raises on a timeout: the caller decides what "it did not happen" means, so that a missing
    feature becomes an explanation rather than an error.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval)


@dataclass(frozen=True)
class CapturedLine:
    """One line the app logged or printed: when (``time.time()``), where from, and the text.

    ``source`` is the logger's name for a log record, ``stdout`` or ``stderr`` for a print.
    """

    at: float
    source: str
    level: str
    text: str


@dataclass
class OutputCapture:
    """What ``captured_output()`` collected, in the order it arrived (threads included)."""

    lines: list[CapturedLine] = field(default_factory=list)

    def matching(self, text: str) -> list[CapturedLine]:
        """The lines that contain ``text``."""
        return [line for line in list(self.lines) if text in line.text]


class _CaptureHandler(logging.Handler):
    def __init__(self, capture: OutputCapture) -> None:
        super().__init__(level=logging.NOTSET)
        self._capture = capture

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a bad format string in the app: keep the raw message
            text = str(record.msg)
        line = CapturedLine(record.created, record.name, record.levelname, text)
        self._capture.lines.append(line)


class _CaptureStream(io.TextIOBase):
    """A text stream that turns what is written to it into timestamped lines."""

    def __init__(self, capture: OutputCapture, source: str) -> None:
        self._capture = capture
        self._source = source
        self._pending = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            *complete, self._pending = (self._pending + text).split("\n")
        for line in complete:
            self._capture.lines.append(CapturedLine(time.time(), self._source, "", line))
        return len(text)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, ""
        if pending:
            self._capture.lines.append(CapturedLine(time.time(), self._source, "", pending))


@contextlib.contextmanager
def captured_output() -> Iterator[OutputCapture]:
    """Collect what the app logs and prints during the block, instead of showing it.

    Every log record that reaches the root logger is kept (the app's own loggers only pass
    on records at their level or above: start the app with ``LOG_LEVEL="INFO"`` to see its
    INFO lines), and so is every line written to ``sys.stdout`` or ``sys.stderr``, from
    any thread. Nothing of it appears in the notebook while the block runs, so print your
    findings after the block. The root logger's own handlers are put back at the end.
    """
    capture = OutputCapture()
    handler = _CaptureHandler(capture)
    root = logging.getLogger()
    saved = list(root.handlers)
    for old in saved:
        root.removeHandler(old)
    root.addHandler(handler)  # an app's logging.basicConfig() now leaves the root alone
    out, err = _CaptureStream(capture, "stdout"), _CaptureStream(capture, "stderr")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield capture
    finally:
        out.flush()
        err.flush()
        root.removeHandler(handler)
        for old in saved:
            root.addHandler(old)


def show_checklist(result: GradeResult, *, width: int = 100) -> None:
    """Print a ``GradeResult`` as the plain-text checklist of the ``grade`` command.

    This is ``grader._render.render_text`` with one change: ``force_jupyter=False``.
    Inside a notebook, rich otherwise sends a console's output to the notebook display
    instead of the console's file, and ``render_text`` comes back empty.
    """
    from rich.console import Console

    from grader._render import checklist

    buffer = io.StringIO()
    console = Console(
        file=buffer, width=width, color_system=None, highlight=False, force_jupyter=False
    )
    console.print(checklist(result))
    print("\n".join(line.rstrip() for line in buffer.getvalue().splitlines()))


# --- real server processes (exercise 10.3) ------------------------------------------------

# What a request can end as, seen from the client during a shutdown.
COMPLETED, REFUSED, FAILED = "completed", "refused", "failed"
OUTCOME_KINDS = (COMPLETED, REFUSED, FAILED)

_SERVERS: list[AppProcess] = []
_SCRATCH: tempfile.TemporaryDirectory[str] | None = None


def _scratch_folder() -> Path:
    """One temporary folder for this kernel's servers, removed when the kernel exits.

    Not one per block: a server's log file must stay readable after the server is gone,
    since the interesting lines are the ones it printed while it stopped.
    """
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = tempfile.TemporaryDirectory(prefix="workbook-servers-")
    return Path(_SCRATCH.name)


def _server_folder(package: str) -> Path:
    """A new folder in the scratch folder, for one server's (or cluster's) files."""
    prefix = f"{package.replace('.', '-')}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_scratch_folder()))


def _server_env(settings: Mapping[str, object]) -> dict[str, str]:
    """A server's environment: ``settings`` (``LOG_LEVEL`` ``INFO`` unless given) as strings,
    and a ``PYTHONPATH`` that finds the app packages at the project root (yours too)."""
    python_path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    merged = {"LOG_LEVEL": "INFO", **settings}
    return {"PYTHONPATH": python_path, **{k: _env_value(v) for k, v in merged.items()}}


@contextlib.contextmanager
def server_process(
    package: str, *, ready_timeout: float = 30.0, **env: object
) -> Iterator[AppProcess]:
    """Run ``python -m <package>`` as a real server on a free loopback port, as the grader
    does, with ``env`` as its settings; yield it once ``GET /health`` answers 200.

    It is the grader's own ``AppProcess`` (``grader/_process.py``): requests that never
    raise (a refused or cut connection is in the ``Outcome``), ``send_signal``,
    ``wait_exit``, ``output()``. Whatever happens in the block, the server's whole process
    group is killed at the end (a graceful restart's new server too), so no server outlives
    the cell. ``LOG_LEVEL`` defaults to ``INFO``, which the shutdown log lines need; each
    server runs in a folder of its own (its ``jobs.sqlite3``, its log file), and its output
    stays readable after the block.
    """
    from grader._process import AppProcess

    app = AppProcess(package, cwd=_server_folder(package), env=_server_env(env))
    _SERVERS.append(app)
    try:
        app.start(ready_timeout=ready_timeout)
        yield app
    finally:
        app.kill()


def started_servers() -> list[AppProcess]:
    """Every server ``server_process()`` started in this kernel, in order."""
    return list(_SERVERS)


def outcome_kind(outcome: Outcome) -> str:
    """What a request got, in three words:

    - ``completed``: the server answered, a whole response (any status but 503);
    - ``refused``: nobody accepted the connection (nothing listens on the port), or the
      server said 503: either way the client knows at once that it was not served and can
      try elsewhere;
    - ``failed``: anything else: the connection was reset or closed before a whole answer
      came (the request was cut), or it timed out. The client cannot tell whether the
      request was done, which is the case that hurts.
    """
    from grader._process import REFUSED as CONNECTION_REFUSED

    if outcome.status is not None:
        return REFUSED if outcome.status == 503 else COMPLETED
    return REFUSED if outcome.error == CONNECTION_REFUSED else FAILED


@dataclass(frozen=True)
class LoadRequest:
    """One request of a ``SteadyLoad``: which client sent it and what it got.

    ``started`` and ``finished`` are ``time.monotonic()`` seconds, like the time you take
    with ``time.monotonic()`` when you send a signal.
    """

    client: int
    outcome: Outcome

    @property
    def started(self) -> float:
        return self.outcome.started

    @property
    def finished(self) -> float:
        return self.outcome.finished

    @property
    def kind(self) -> str:
        return outcome_kind(self.outcome)

    def in_flight_at(self, moment: float) -> bool:
        """Sent before ``moment`` and not finished then."""
        return self.started <= moment < self.finished


def count_kinds(requests: list[LoadRequest]) -> Counter[str]:
    """How many requests completed, were refused, failed (every kind present, maybe 0)."""
    counts = Counter({kind: 0 for kind in OUTCOME_KINDS})
    counts.update(request.kind for request in requests)
    return counts


class SteadyLoad:
    """``clients`` threads, each sending ``GET <path>`` after ``GET <path>`` to ``app``.

    Every request opens a new connection, as requests from many different clients would,
    so that "the server stopped accepting" shows up as refused connections rather than
    hiding behind a kept-alive one. A client sends its next request when the last one has
    ended, but at most one every ``interval`` seconds: a refused connection ends in
    microseconds, and without that pause the counts would say more about the loop than
    about the server. Client ``i`` sends its first request ``i * stagger`` seconds after
    the start, so that the requests in flight do not all start and end together. Use it as
    a context manager: the load runs for the block.
    """

    def __init__(
        self,
        app: AppProcess,
        *,
        clients: int = 4,
        path: str = "/users",
        interval: float = 0.05,
        stagger: float = 0.0,
        timeout: float = 10.0,
    ) -> None:
        self.app = app
        self.clients = clients
        self.path = path
        self.interval = interval
        self.stagger = stagger
        self.timeout = timeout
        self._requests: list[LoadRequest] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _run(self, client: int) -> None:
        self._stop.wait(client * self.stagger)
        while not self._stop.is_set():
            began = time.monotonic()
            outcome = self.app.request("GET", self.path, timeout=self.timeout)
            self._requests.append(LoadRequest(client, outcome))
            self._stop.wait(max(0.0, began + self.interval - time.monotonic()))

    def start(self) -> SteadyLoad:
        for client in range(self.clients):
            thread = threading.Thread(target=self._run, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> list[LoadRequest]:
        """Stop sending; wait for the requests still out (bounded by their timeout)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 1)
        return self.requests

    @property
    def requests(self) -> list[LoadRequest]:
        """What every client got so far, by the time each request was sent."""
        return sorted(self._requests, key=lambda request: request.started)

    def __enter__(self) -> SteadyLoad:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# The contract's shutdown lines (exercise 10.3, "Log lines"), in their order.
SHUTDOWN_PHASES = (
    "shutdown started",
    "shutdown requests drained",
    "shutdown jobs stopped",
    "shutdown resources closed",
    "shutdown complete",
)
# The app's "shutdown complete elapsed_ms=...", not uvicorn's "Application shutdown complete."
_SHUTDOWN_LINE = re.compile(
    r"(?<![A-Za-z])(shutdown (?:started|requests drained|jobs stopped|resources closed|complete))"
    r"((?: [a-z_]+=\S*)+)"
)


@dataclass(frozen=True)
class ShutdownLine:
    """One of the contract's shutdown lines: its phase, its ``key=value`` fields, the
    message (from the phase on: ``shutdown started reason=SIGTERM``) and the whole line."""

    phase: str
    fields: dict[str, str]
    message: str
    text: str

    @property
    def elapsed_ms(self) -> float | None:
        value = self.fields.get("elapsed_ms")
        try:
            return None if value is None else float(value)
        except ValueError:
            return None


def shutdown_lines(output: str) -> list[ShutdownLine]:
    """The contract's shutdown lines in a server's output, in the order they came.

    A phase counts only with at least one ``key=value`` field after it, as the contract
    writes them: uvicorn's own "Application shutdown complete." is not the app's line.
    """
    found = []
    for text in output.splitlines():
        match = _SHUTDOWN_LINE.search(text)
        if match is not None:
            fields = dict(item.split("=", 1) for item in match.group(2).split())
            found.append(ShutdownLine(match.group(1), fields, match.group(0), text.strip()))
    return found


def process_group_runs(pgid: int | None) -> bool:
    """Whether any process of group ``pgid`` still runs (zombies aside).

    ``server_process()`` gives each server a process group of its own, so this also sees
    the processes a server started (the new server of a graceful restart, say).
    """
    from grader._process import group_runs

    return pgid is not None and group_runs(pgid)


# --- clusters of real servers (exercise 10.4) ---------------------------------------------

# Settings that name the start of a Redis key; `cluster()` deletes the keys under each.
REDIS_PREFIX_SETTINGS = ("REDIS_KEY_PREFIX", "CACHE_KEY_PREFIX", "INSTANCE_REGISTRY_PREFIX")

_CLUSTERS: list[Cluster] = []
# Every Redis key that this kernel's shared_settings() name starts with this.
_KERNEL_PREFIX = f"workbook-{uuid.uuid4().hex[:8]}-"
_SETTINGS_NUMBERS = itertools.count(1)


def shared_redis_url() -> str:
    """The Redis the clusters share: ``GRADE_REDIS_URL`` (as for the grader), else the default."""
    return os.environ.get("GRADE_REDIS_URL", "").strip() or DEFAULT_REDIS_URL


def kernel_redis_prefix() -> str:
    """The start of every Redis key that ``shared_settings()`` hands out in this kernel."""
    return _KERNEL_PREFIX


def shared_settings() -> dict[str, object]:
    """The settings of a cluster whose instances share their state, as the 10.4 checks set
    them (exercise README, "How your app is run"): a new SQLite database in the scratch
    folder, the Redis at ``shared_redis_url()`` with a key prefix of its own, and the
    cache and the sessions in Redis. Each call gives a new database and a new prefix, so
    that one experiment does not see the users or keys of another.
    """
    folder = _server_folder("shared")
    prefix = f"{_KERNEL_PREFIX}{next(_SETTINGS_NUMBERS)}:"
    return {
        "DATABASE_URL": f"sqlite:///{folder / 'users.sqlite3'}",
        "REDIS_URL": shared_redis_url(),
        **dict.fromkeys(REDIS_PREFIX_SETTINGS, prefix),
        "CACHE_BACKEND": "redis",
        "SESSION_BACKEND": "redis",
        "SESSION_SECRET": secrets.token_hex(16),
        "CACHE_WARM_PATHS": "",  # no 10.1 warm-up: it only slows every start
    }


def own_job_queue(index: int) -> dict[str, str]:
    """Instance ``index``'s own job queue file, as if each instance ran on a host of its own."""
    return {"JOBS_DB_PATH": f"jobs-{index}.sqlite3"}


def _delete_prefixed_keys(settings: Mapping[str, object]) -> None:
    """Delete the Redis keys under each prefix that ``settings`` name (the default prefix,
    which other apps may use, is never named here, so never touched)."""
    prefixes = {str(settings[name]) for name in REDIS_PREFIX_SETTINGS if settings.get(name)}
    url = str(settings.get("REDIS_URL") or shared_redis_url())
    if not prefixes or not redis_available(url):
        return
    for prefix in prefixes:
        delete_redis_keys(url, prefix)


@contextlib.contextmanager
def cluster(
    package: str,
    n: int = 2,
    *,
    balancer: str = "auto",
    ready_timeout: float = 30.0,
    **settings: object,
) -> Iterator[Cluster]:
    """Run ``n`` instances of ``python -m <package>`` behind a round-robin load balancer,
    as the grader's 10.4 checks (and ``grade cluster``) do; yield the ``Cluster`` once
    ``GET /health`` answers 200 through the balancer.

    It is the grader's own ``Cluster`` (``grader/_cluster.py``): ``cluster.instances`` are
    ``AppProcess``es (``instances[0].request(...)`` goes straight to ``instance-1``),
    ``cluster.request(...)`` goes through the balancer, ``cluster.balancer`` says which
    one runs (nginx where installed, else the grader's proxy). Every instance gets
    ``settings`` (``LOG_LEVEL`` ``INFO`` unless given), ``INSTANCE_ID=instance-<i>`` and a
    job queue file of its own; they share a folder in the scratch folder (so a relative
    SQLite path is shared, as on one host). When the block ends, whatever happened, the
    balancer and every instance are killed with their whole process groups, and the
    Redis keys under the prefixes the settings name are deleted.
    """
    from grader._cluster import Cluster

    group = Cluster(
        package,
        cwd=_server_folder(f"{package}-x{n}"),
        n=n,
        env=_server_env(settings),
        instance_env=own_job_queue,
        balancer=balancer,
    )
    _CLUSTERS.append(group)
    try:
        group.start(ready_timeout=ready_timeout)
        yield group
    finally:
        group.kill()
        _delete_prefixed_keys(settings)


def started_clusters() -> list[Cluster]:
    """Every cluster ``cluster()`` started in this kernel, in order."""
    return list(_CLUSTERS)


def instance_name(app: AppProcess) -> str:
    """``instance-2``: the ``INSTANCE_ID`` a cluster gave the instance."""
    return app.env.get("INSTANCE_ID", f"port {app.port}")


def json_body(outcome: Outcome) -> object:
    """The parsed JSON body of a response, or None."""
    try:
        return json.loads(outcome.body)
    except ValueError:
        return None


def short_answer(outcome: Outcome) -> str:
    """A response in a few words: ``200 id=3 name='Ada'``, ``404 User not found``, ``204``."""
    if outcome.status is None:
        return outcome.describe()
    body = json_body(outcome)
    if isinstance(body, dict) and "name" in body:
        return f"{outcome.status} id={body.get('id')} name={body['name']!r}"
    if isinstance(body, dict) and "access_token" in body:
        return f"{outcome.status} a token"
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return f"{outcome.status} {body['detail']}"
    text = outcome.body.strip()
    return f"{outcome.status} {text[:40]}{'…' if len(text) > 40 else ''}".strip()


def print_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print ``rows`` as a plain-text table with a header line, each column as wide as it
    needs (numbers right-aligned)."""
    table = [list(row) for row in rows]

    def is_number(cell: object) -> bool:
        return isinstance(cell, int | float) and not isinstance(cell, bool)

    numeric = [bool(table) and all(is_number(row[i]) for row in table) for i in range(len(header))]
    lines = [[str(cell) for cell in header], *([str(cell) for cell in row] for row in table)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def show(line: list[str]) -> str:
        cells = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(line, widths, numeric, strict=True)
        ]
        return "  ".join(cells).rstrip()

    print(show(lines[0]))
    print("  ".join("-" * width for width in widths))
    for line in lines[1:]:
        print(show(line))


class Transcript:
    """Requests sent to named instances of a cluster, and what each answered.

    ``send(app, method, path, ...)`` is ``app.request(...)`` (it never raises), recorded
    with a label; ``show()`` prints them as a table: the step, the instance it was sent
    to, the answer in a few words and the ``headers`` named when it was made.
    """

    def __init__(self, *headers: str) -> None:
        self.headers = headers
        self.steps: list[tuple[str, str, Outcome]] = []

    def send(
        self, app: AppProcess, method: str, path: str, *, step: str = "", **kw: Any
    ) -> Outcome:
        outcome = app.request(method, path, **kw)
        self.steps.append((step or f"{method} {path}", instance_name(app), outcome))
        return outcome

    def show(self) -> None:
        rows = []
        for step, where, outcome in self.steps:
            shown = [outcome.headers.get(name.lower(), "-") for name in self.headers]
            rows.append([step, where, short_answer(outcome), *shown])
        print_table(["step", "sent to", "answer", *self.headers], rows)


@dataclass(frozen=True)
class Throughput:
    """What a short load test measured: requests per second, how many requests were not
    a success (non-2xx answers and socket errors), the median latency, and the tool."""

    rps: float
    requests: int
    failed: int
    p50_ms: float | None
    tool: str


def load_tool() -> str:
    """``wrk`` when it is on the PATH, else ``httpx`` (a small load from this process)."""
    return "wrk" if shutil.which("wrk") else "httpx"


def _parse_wrk() -> Callable[[str], Any]:
    """``parse_wrk`` of ``bench/_common.py`` (standard library only), the parser of wrk's
    report that the benchmarks use; loaded from its file, since bench/ is no package."""
    name = "workbook_bench_common"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "bench" / "_common.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look themselves up there
        spec.loader.exec_module(module)
    return module.parse_wrk


def measure_throughput(
    url: str,
    *,
    seconds: float = 1.0,
    headers: Mapping[str, str] | None = None,
    connections: int = 16,
) -> Throughput:
    """Send GET ``url`` as fast as ``connections`` keep-alive connections allow, for about
    ``seconds``, and say how many requests per second were answered.

    With wrk on the PATH it is ``wrk -t1 -c<connections> --latency``. wrk counts its
    duration in whole seconds; for a fraction it is stopped with SIGINT, on which it
    reports what it measured until then. Without wrk, ``connections`` threads of this
    process send the requests, each with an httpx client: they measure the client's limits
    as much as the server's, so the figures are lower, and the ratios are what to read.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        return _client_load(url, seconds, dict(headers or {}), connections)
    command = [wrk, "-t1", f"-c{connections}", f"-d{math.ceil(seconds)}s", "--latency"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    with subprocess.Popen(
        [*command, url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as process:
        try:
            output, _ = process.communicate(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            output, _ = process.communicate(timeout=10)
        finally:
            if process.poll() is None:  # only on an error: never leave a wrk behind
                process.kill()
    report = _parse_wrk()(output)
    return Throughput(
        rps=report.rps,
        requests=report.requests,
        failed=report.non_2xx + report.socket_errors,
        p50_ms=report.latency_ms.get("p50"),
        tool="wrk",
    )


def _client_load(url: str, seconds: float, headers: dict[str, str], connections: int) -> Throughput:
    from grader._process import loopback_client

    results: list[tuple[float, bool]] = []  # (seconds, success), from every thread
    began = time.monotonic()
    deadline = began + seconds

    def client() -> None:
        mine = []
        with loopback_client() as http:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    ok = http.get(url, headers=headers).is_success
                except httpx.HTTPError:
                    ok = False
                mine.append((time.perf_counter() - started, ok))
        results.extend(mine)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 15)
    elapsed = time.monotonic() - began
    latencies = sorted(took for took, _ in results)
    return Throughput(
        rps=len(results) / elapsed,
        requests=len(results),
        failed=sum(1 for _, ok in results if not ok),
        p50_ms=latencies[len(latencies) // 2] * 1000 if latencies else None,
        tool="httpx",
    )
