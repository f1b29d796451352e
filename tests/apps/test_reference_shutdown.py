"""The reference app's graceful shutdown (exercise 10.3), required criteria and stretch goals.

Most tests run the app as the grader does: ``python -m solutions.app`` (the supervisor and
its server child) on a free loopback port, in a process group of its own that the fixture
kills at the end whatever happened, with real signals. A few quick ones run in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from grader._services import DEFAULT_REDIS_URL, ping, require
from solutions.app import Settings, create_app
from solutions.app.job_registry import JobRecord, JobRegistry

from .helpers import ADMIN_TOKEN, bearer

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals and fork")

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN = bearer(ADMIN_TOKEN)
HOST = "127.0.0.1"
READY_TIMEOUT_S = 20
PHASES = ("started", "requests drained", "jobs stopped", "resources closed", "complete")
PHASE_LINE = re.compile(
    r"shutdown (started reason=(?P<reason>\S+)|(?P<phase>requests drained|jobs stopped|"
    r"resources closed|complete)\b.*elapsed_ms=(?P<ms>\d+))"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def client(timeout: float = 10) -> httpx.Client:
    """No proxy from the environment between the test and the loopback server."""
    return httpx.Client(trust_env=False, timeout=timeout)


def get(url: str, timeout: float = 10, **kw: Any) -> httpx.Response:
    with client(timeout) as http:
        return http.get(url, **kw)


# --- a server process ---------------------------------------------------------------------


class App:
    """``python -m solutions.app`` in ``cwd``, its output in a log file."""

    def __init__(self, cwd: Path, env: dict[str, str], port: int | None = None) -> None:
        self.cwd = cwd
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = cwd / f"app-{self.port}-{uuid.uuid4().hex[:6]}.log"
        python_path = [str(REPO_ROOT), os.environ.get("PYTHONPATH")]
        self.env = os.environ | {
            "PYTHONPATH": os.pathsep.join(filter(None, python_path)),
            "PYTHONUNBUFFERED": "1",
            "HOST": HOST,
            "PORT": str(self.port),
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "CACHE_WARM_PATHS": "",  # a slow store would make the warming slow too
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> App:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "solutions.app"],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"exited early:\n{self.output()}"
            try:
                if get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        pytest.fail(f"no 200 on /health within {READY_TIMEOUT_S} s:\n{self.output()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, sig: signal.Signals) -> float:
        """Send ``sig`` to the process started (the supervisor); returns when."""
        assert self.process is not None
        self.process.send_signal(sig)
        return time.monotonic()

    def wait(self, timeout: float) -> int | None:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_output(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.output())
            if match is not None:
                return match
            if time.monotonic() > deadline or (self.process and self.process.poll() is not None):
                pytest.fail(f"{pattern!r} not printed within {timeout} s:\n{self.output()}")
            time.sleep(0.05)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., App]]:
    """``launch(STORE_LATENCY_MS=3000)``: a started app; every one is killed at the end."""
    apps: list[App] = []

    def make(port: int | None = None, **env: object) -> App:
        app = App(tmp_path, {name: str(value) for name, value in env.items()}, port)
        apps.append(app)
        return app.start()

    yield make
    for app in apps:
        app.kill()


class Background:
    """A request sent from a thread; ``result()`` is its response or its transport error."""

    def __init__(self, method: str, url: str, timeout: float = 30, **kw: Any) -> None:
        self._outcome: httpx.Response | Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(method, url, timeout, kw))
        self._thread.daemon = True
        self._thread.start()

    def _run(self, method: str, url: str, timeout: float, kw: dict[str, Any]) -> None:
        try:
            with client(timeout) as http:
                self._outcome = http.request(method, url, **kw)
        except Exception as exc:
            self._outcome = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float) -> httpx.Response | Exception | None:
        self._thread.join(timeout)
        return self._outcome


@dataclass
class Phase:
    name: str
    position: int
    elapsed_ms: int | None
    reason: str | None


def phases(output: str) -> list[Phase]:
    found = []
    for match in PHASE_LINE.finditer(output):
        if match["reason"]:
            found.append(Phase("started", match.start(), None, match["reason"]))
        else:
            found.append(Phase(match["phase"], match.start(), int(match["ms"]), None))
    return found


def assert_five_phases(output: str, reason: str) -> list[Phase]:
    """The five lines, once each, in order, elapsed_ms not going down, complete last."""
    found = phases(output)
    assert [phase.name for phase in found] == list(PHASES), output
    assert found[0].reason == reason, output
    elapsed = [phase.elapsed_ms for phase in found[1:]]
    assert elapsed == sorted(elapsed), output  # type: ignore[type-var]
    last_line = output.strip().splitlines()[-1]
    assert "shutdown complete" in last_line, f"printed after it: {last_line}"
    return found


def enqueue(app: App, name: str, args: dict[str, Any]) -> dict[str, Any]:
    with client() as http:
        response = http.post(
            f"{app.url}/jobs/api/jobs", json={"name": name, "args": args}, headers=ADMIN
        )
    assert response.status_code == 201, response.text
    return response.json()


def create_user(app: App) -> dict[str, Any]:
    body = {"email": f"u-{uuid.uuid4().hex}@example.com", "name": "U", "password": "p" * 12}
    with client() as http:
        response = http.post(f"{app.url}/users", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def wait_until(
    probe: Callable[[], Any], timeout: float, what: str, *, seen: Callable[[], Any] | None = None
) -> Any:
    """`probe()` once it is truthy; fail after `timeout` s, showing `seen()` if given."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s" + (f"; seen: {seen()}" if seen else ""))
        time.sleep(0.05)


# --- required criteria -------------------------------------------------------------------


def test_sigterm_stops_accepting_drains_a_slow_request_and_logs_the_five_phases(
    launch: Callable[..., App],
) -> None:
    app = launch(STORE_LATENCY_MS=2000)
    slow = Background("GET", f"{app.url}/users")
    time.sleep(0.3)  # in flight
    sent = app.signal(signal.SIGTERM)

    # shutdown-events: logged at the signal, not when the requests are drained.
    app.wait_for_output(r"shutdown started reason=SIGTERM", timeout=1)
    assert not slow.done(), "the slow request ended before the shutdown started"
    # stop-accepting: a new connection is refused half a second later.
    time.sleep(max(0.0, sent + 0.5 - time.monotonic()))
    with pytest.raises(httpx.ConnectError):
        get(f"{app.url}/health", timeout=2)

    response = slow.result(timeout=10)
    assert isinstance(response, httpx.Response) and response.status_code == 200, response
    assert response.json() == []
    assert app.wait(10) == 0, app.output()
    found = assert_five_phases(app.output(), "SIGTERM")
    assert "cut_off=0" in app.output()
    # the request's access line comes before the drained phase
    assert app.output().index("request method=GET path=/users status=200") < found[1].position


def test_a_connection_accepted_before_the_signal_is_served_if_its_request_is_a_bit_late(
    launch: Callable[..., App],
) -> None:
    # uvicorn's shutdown closes every connection without a request in progress; the app
    # closes the listener first and gives such connections a moment (ACCEPT_SETTLE_SECONDS).
    app = launch()
    with socket.create_connection((HOST, app.port), timeout=5) as late_client:
        time.sleep(0.05)  # accepted, idle
        app.signal(signal.SIGTERM)
        time.sleep(0.05)
        late_client.sendall(b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n")
        answer = late_client.recv(100)

    assert answer.startswith(b"HTTP/1.1 200"), answer or "closed without an answer"
    assert app.wait(10) == 0, app.output()


def test_the_timeout_cuts_off_a_long_request_and_the_process_exits_in_time(
    launch: Callable[..., App],
) -> None:
    app = launch(STORE_LATENCY_MS=8000, SHUTDOWN_TIMEOUT_SECONDS=1)
    long = Background("GET", f"{app.url}/users")
    time.sleep(0.3)
    sent = app.signal(signal.SIGTERM)

    code = app.wait(4)
    took = time.monotonic() - sent

    assert code == 0, f"exit code {code} after {took:.1f} s:\n{app.output()}"
    outcome = long.result(timeout=2)
    assert not (isinstance(outcome, httpx.Response) and outcome.status_code == 200), outcome
    assert "shutdown requests drained cut_off=1" in app.output(), app.output()
    assert_five_phases(app.output(), "SIGTERM")


def test_admin_shutdown_needs_the_token_then_stops_like_sigterm(
    launch: Callable[..., App],
) -> None:
    app = launch()
    with client() as http:
        assert http.post(f"{app.url}/admin/shutdown").status_code == 401
        assert http.post(f"{app.url}/admin/shutdown", headers=bearer("wrong")).status_code == 401
        time.sleep(0.3)
        assert http.get(f"{app.url}/health").status_code == 200  # still serving

        response = http.post(f"{app.url}/admin/shutdown", headers=ADMIN)

    assert response.status_code == 202 and response.json() == {"status": "shutting down"}
    # The supervisor (the process started) exits too, with the server's code.
    assert app.wait(10) == 0, app.output()
    assert_five_phases(app.output(), "admin")


def test_a_running_job_finishes_before_the_exit_and_is_recorded_once(
    launch: Callable[..., App], tmp_path: Path
) -> None:
    app = launch(JOBS_WORKER="inprocess", EMAIL_LATENCY_MS=2000)
    user = create_user(app)
    app.wait_for_output(r"job started id=\S+ name=send_welcome_email", timeout=5)

    app.signal(signal.SIGTERM)

    assert app.wait(10) == 0, app.output()
    output = app.output()
    assert output.index(f"welcome email sent to={user['email']}") < output.index(
        "shutdown complete"
    )
    assert_five_phases(output, "SIGTERM")
    [record] = JobRegistry(str(tmp_path / "jobs.sqlite3")).recent(name="send_welcome_email")
    assert (record.status, record.attempts) == ("succeeded", 1)


def test_docker_stop_exits_with_0_before_the_kill_despite_a_stuck_request_and_job(
    launch: Callable[..., App], tmp_path: Path
) -> None:
    app = launch(
        STORE_LATENCY_MS=30000, SHUTDOWN_TIMEOUT_SECONDS=2, JOBS_WORKER="inprocess", JOBS_WORKERS=1
    )
    stuck_job = enqueue(app, "sleep", {"seconds": 30})  # the store is not involved
    app.wait_for_output(rf"job started id={stuck_job['id']}", timeout=5)
    waiting_job = enqueue(app, "sleep", {"seconds": 0})  # the only worker thread is busy
    stuck_request = Background("GET", f"{app.url}/users")
    time.sleep(0.3)

    sent = app.signal(signal.SIGTERM)
    code = app.wait(8)  # docker stop --time 8, before its SIGKILL
    took = time.monotonic() - sent

    assert code == 0, f"exit code {code}:\n{app.output()}"
    assert took < 4, f"took {took:.1f} s"
    outcome = stuck_request.result(2)
    assert not (isinstance(outcome, httpx.Response) and outcome.status_code == 200), outcome
    records = {r.id: r for r in JobRegistry(str(tmp_path / "jobs.sqlite3")).recent()}
    interrupted = records[stuck_job["id"]]
    assert interrupted.status == "failed" and "interrupted" in (interrupted.error or "")
    assert records[waiting_job["id"]].status == "queued"  # kept for the next start


def test_the_worker_takes_no_new_job_once_the_shutdown_started(
    launch: Callable[..., App], tmp_path: Path
) -> None:
    app = launch(JOBS_WORKER="inprocess", JOBS_WORKERS=1, SHUTDOWN_DRAIN_DELAY_SECONDS=1.5)
    running = enqueue(app, "sleep", {"seconds": 1})
    app.wait_for_output(rf"job started id={running['id']}", timeout=5)
    waiting = enqueue(app, "sleep", {"seconds": 0})

    app.signal(signal.SIGTERM)  # the running job ends during the drain delay

    assert app.wait(10) == 0, app.output()
    records = {r.id: r for r in JobRegistry(str(tmp_path / "jobs.sqlite3")).recent()}
    assert records[running["id"]].status == "succeeded"
    # Not started only to be cut off: queued, on disk, for the next start.
    assert records[waiting["id"]].status == "queued"


def test_a_port_in_use_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        app = App(tmp_path, {}, port=taken.getsockname()[1])
        with app.log.open("wb") as log:
            done = subprocess.run(
                [sys.executable, "-m", "solutions.app"],
                cwd=tmp_path,
                env=app.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=20,
            )
    assert done.returncode == 1, app.output()
    assert "cannot listen on" in app.output()


# --- stretch goals -----------------------------------------------------------------------


class Webhook:
    """A loopback HTTP server that records the JSON POSTed to it."""

    def __init__(self) -> None:
        events: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                events.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.events = events
        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def test_hooks_run_after_the_start_and_notifications_are_posted(
    launch: Callable[..., App], webhook: Webhook
) -> None:
    app = launch(
        SHUTDOWN_TEST_HOOK_SECONDS=0.5, SHUTDOWN_WEBHOOK_URL=webhook.url, INSTANCE_ID="i-1"
    )
    app.signal(signal.SIGTERM)

    assert app.wait(10) == 0, app.output()
    output = app.output()
    hook = re.search(r"pre-shutdown hook test-hook done elapsed_ms=(\d+)", output)
    assert hook is not None, output
    assert 450 <= int(hook[1]) < 1500
    assert output.index("shutdown started") < hook.start() < output.index("requests drained")
    assert_five_phases(output, "SIGTERM")
    started, completed = webhook.events
    assert started == {"event": "shutdown.started", "instance": "i-1", "reason": "SIGTERM"}
    assert completed["event"] == "shutdown.completed" and completed["instance"] == "i-1"
    assert completed["elapsed_ms"] >= int(hook[1])


def test_a_slow_hook_and_a_dead_webhook_do_not_hold_up_the_shutdown(
    launch: Callable[..., App],
) -> None:
    app = launch(
        SHUTDOWN_TEST_HOOK_SECONDS=30,
        PRE_SHUTDOWN_HOOK_TIMEOUT_SECONDS=1,
        SHUTDOWN_WEBHOOK_URL=f"http://{HOST}:{free_port()}/nobody",
    )
    sent = app.signal(signal.SIGTERM)

    assert app.wait(6) == 0, app.output()
    assert time.monotonic() - sent < 4
    output = app.output()
    assert "pre-shutdown hook test-hook timed out" in output
    assert "shutdown notification failed event=shutdown.started" in output
    assert_five_phases(output, "SIGTERM")


def test_readiness_turns_503_and_keep_alive_clients_are_told_to_close_while_draining(
    launch: Callable[..., App],
) -> None:
    app = launch(SHUTDOWN_DRAIN_DELAY_SECONDS=2)
    with client() as keep_alive:
        assert keep_alive.get(f"{app.url}/health/ready").json() == {"status": "ready"}
        before = keep_alive.get(f"{app.url}/health")
        assert before.headers.get("connection") != "close"

        sent = app.signal(signal.SIGTERM)
        time.sleep(0.5)
        ready = get(f"{app.url}/health/ready")
        live = get(f"{app.url}/health/live")
        during = keep_alive.get(f"{app.url}/health")  # the same connection as before

    assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
    assert live.status_code == 200
    assert during.status_code == 200 and during.headers["connection"] == "close"
    time.sleep(max(0.0, sent + 3 - time.monotonic()))
    with pytest.raises(httpx.ConnectError):
        get(f"{app.url}/health", timeout=2)
    assert app.wait(5) == 0, app.output()
    assert_five_phases(app.output(), "SIGTERM")


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("GRADE_REDIS_URL", DEFAULT_REDIS_URL)
    require(ping(url), f"no Redis answers at {url}: start one (`redis-server --daemonize yes`)")
    return url


def instances(app: App) -> dict[str, str]:
    response = get(f"{app.url}/admin/instances", headers=ADMIN)
    assert response.status_code == 200, response.text
    return {item["id"]: item["state"] for item in response.json()}


def test_replicas_see_each_other_and_an_instance_draining_then_gone(
    launch: Callable[..., App], redis_url: str
) -> None:
    shared = {
        "INSTANCE_REGISTRY": "redis",
        "REDIS_URL": redis_url,
        "INSTANCE_REGISTRY_PREFIX": f"test-{uuid.uuid4().hex[:8]}:",
    }
    a = launch(INSTANCE_ID="a", SHUTDOWN_DRAIN_DELAY_SECONDS=2, **shared)
    b = launch(INSTANCE_ID="b", **shared)
    assert instances(b) == {"a": "serving", "b": "serving"}
    listed = get(f"{b.url}/admin/instances", headers=ADMIN).json()
    assert {"id", "state", "last_seen"} == set(listed[0])

    a.signal(signal.SIGTERM)

    wait_until(lambda: instances(b).get("a") == "draining", 1.5, "a listed as draining")
    assert a.wait(10) == 0, a.output()
    assert instances(b) == {"b": "serving"}


def test_a_registry_that_cannot_be_reached_breaks_nothing(launch: Callable[..., App]) -> None:
    app = launch(INSTANCE_REGISTRY="redis", REDIS_URL=f"redis://{HOST}:{free_port()}/0")
    assert get(f"{app.url}/users").status_code == 200
    assert get(f"{app.url}/admin/instances", headers=ADMIN).status_code == 503

    app.signal(signal.SIGTERM)

    assert app.wait(10) == 0, app.output()
    assert "instance registry unreachable" in app.output()
    assert_five_phases(app.output(), "SIGTERM")


def test_sighup_restarts_the_server_without_failing_a_request(launch: Callable[..., App]) -> None:
    app = launch()
    old_pid = get(f"{app.url}/health").json()["pid"]
    assert old_pid != app.pid  # the server is the supervisor's child
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def hammer() -> None:  # a new connection every 50 ms, as the grader does
        nonlocal served
        while not stop.is_set():
            try:
                response = get(f"{app.url}/health", timeout=5)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                served += 1
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            stop.wait(0.05)

    hammering = threading.Thread(target=hammer, daemon=True)
    hammering.start()
    try:
        time.sleep(0.2)
        app.signal(signal.SIGHUP)
        new_pid = wait_until(
            lambda: (pid := get(f"{app.url}/health").json()["pid"]) != old_pid and pid,
            15,
            "a new server pid on /health",
        )
        # until the old server has gone for good
        wait_until(lambda: "Finished server process" in app.output(), 10, "old server exit")
        time.sleep(0.3)
    finally:
        stop.set()
        hammering.join(10)

    assert not failures, f"{len(failures)} of {served} failed: {failures[:3]}"
    assert new_pid != app.pid and app.wait(0.1) is None  # the process started still runs
    with pytest.raises(ProcessLookupError):
        os.kill(old_pid, 0)
    app.signal(signal.SIGTERM)
    assert app.wait(10) == 0, app.output()
    assert app.output().strip().splitlines()[-1].find("shutdown complete") >= 0


def test_the_server_does_not_outlive_a_killed_supervisor(launch: Callable[..., App]) -> None:
    app = launch()
    server_pid = get(f"{app.url}/health").json()["pid"]

    os.kill(app.pid, signal.SIGKILL)  # the supervisor only, not its group

    def gone() -> bool:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, 5, f"the server pid={server_pid} exiting")


def test_jobs_running_when_the_process_is_killed_end_failed_after_a_restart(
    launch: Callable[..., App], tmp_path: Path
) -> None:
    app = launch(JOBS_WORKER="inprocess", EMAIL_LATENCY_MS=3000)
    for _ in range(3):
        create_user(app)
    registry = JobRegistry(str(tmp_path / "jobs.sqlite3"))
    # Both worker threads (JOBS_WORKERS=2) in a 3 s email, the third job in huey's queue.
    # Not just the first "job started" line: the kill must not land between the second
    # thread's dequeue and its job's start (a job lost that way is not what this tests).
    wait_until(
        lambda: [r.status for r in registry.recent()].count("running") == 2,
        10,
        "two welcome jobs running",
        seen=lambda: [(r.id, r.status) for r in registry.recent()],
    )

    os.killpg(app.pid, signal.SIGKILL)  # chaos: no cleanup at all
    app.wait(5)
    assert "running" in {r.status for r in registry.recent()}

    launch(port=app.port, JOBS_WORKER="inprocess", EMAIL_LATENCY_MS=3000)

    def final() -> list[JobRecord] | None:
        records = registry.recent(name="send_welcome_email")
        return records if all(r.status in ("succeeded", "failed") for r in records) else None

    records = wait_until(
        final,
        20,
        "every welcome job succeeded or failed",
        seen=lambda: [(r.id, r.status, r.attempts) for r in registry.recent()],
    )
    assert len(records) == 3
    for record in records:
        if record.status == "failed":  # running when killed: its outcome is unknown
            assert record.dead_letter and "died" in (record.error or ""), record
        else:  # queued when killed: the user is gone with the memory store
            assert record.attempts == 1, record


# --- in-process: the lifespan without a server, the middleware, the Dockerfile -------------


def in_process_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "admin_token": ADMIN_TOKEN,
        "jobs_db_path": str(tmp_path / "jobs.sqlite3"),
        "cache_warm_paths": "",
    }
    return Settings(_env_file=None, **(values | overrides))


def test_without_a_signal_the_lifespan_still_logs_every_phase(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    with TestClient(create_app(in_process_settings(tmp_path))) as test_client:
        assert test_client.get("/health/ready").json() == {"status": "ready"}
        assert test_client.get("/health/live").status_code == 200
        assert test_client.get("/health").json()["pid"] == os.getpid()
        # No server to stop under a test client: refused, not pretended.
        assert test_client.post("/admin/shutdown").status_code == 401
        assert test_client.post("/admin/shutdown", headers=ADMIN).status_code == 409
        assert test_client.get("/admin/instances", headers=ADMIN).json()[0]["state"] == "serving"

    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shutdown ")]
    assert_five_phases("\n".join(lines), "lifespan")


def test_while_draining_every_response_says_connection_close(tmp_path: Path) -> None:
    app = create_app(in_process_settings(tmp_path, jobs_worker="none"))
    with TestClient(app) as test_client:
        assert "connection" not in test_client.get("/health").headers
        app.state.shutdown.begin("test")
        response = test_client.get("/users")
        ready = test_client.get("/health/ready")

    assert response.status_code == 200 and response.headers["connection"] == "close"
    assert (ready.status_code, ready.json()) == (503, {"status": "draining"})


def test_a_job_whose_worker_stopped_beating_is_failed_into_the_dead_letter_queue(
    tmp_path: Path,
) -> None:
    from solutions.app.job_registry import utcnow
    from solutions.app.jobs import JobQueue, build_job_queue
    from solutions.app.metrics import Metrics

    queue: JobQueue = build_job_queue(in_process_settings(tmp_path), Metrics())
    registry = queue.registry
    alive, dead = (queue.enqueue("sleep", {"seconds": 0}) for _ in range(2))
    now = utcnow()
    registry.heartbeat("alive-worker", now)
    registry.heartbeat("dead-worker", now - timedelta(seconds=30))
    assert registry.start_attempt(alive.id, now, worker="alive-worker")
    assert registry.start_attempt(dead.id, now, worker="dead-worker")

    failed = registry.fail_orphaned_jobs(now, lease_seconds=10)

    assert [job.id for job in failed] == [dead.id]
    record = registry.get(dead.id)
    assert record is not None and (record.status, record.dead_letter) == ("failed", True)
    assert "dead-worker died" in (record.error or "")
    still = registry.get(alive.id)
    assert still is not None and still.status == "running"
    assert registry.fail_orphaned_jobs(now, lease_seconds=10) == []  # once only
    queue.close()


def test_a_job_taken_from_the_queue_by_a_worker_that_died_is_failed_after_two_beats(
    tmp_path: Path,
) -> None:
    """A kill between huey's dequeue and the job's start leaves the record queued and the
    task nowhere: seen at two heartbeats in a row, it fails into the dead-letter queue."""
    from solutions.app.job_registry import utcnow
    from solutions.app.job_worker import WorkerLease
    from solutions.app.jobs import JobQueue, build_job_queue
    from solutions.app.metrics import Metrics

    queue: JobQueue = build_job_queue(in_process_settings(tmp_path), Metrics())
    held, taken = (queue.enqueue("sleep", {"seconds": 0}) for _ in range(2))
    delayed = queue.enqueue("sleep", {"seconds": 0}, delay_seconds=60)
    # A worker that died right after taking `taken` from huey's queue (and not `held`):
    huey = queue.huey
    waiting = [huey.dequeue() for _ in range(2)]
    huey.enqueue(next(task for task in waiting if task.id == held.id))
    lease = WorkerLease(queue)

    assert lease._recover_lost_jobs(utcnow()) == []  # one beat: maybe a live worker's moment
    lost = lease._recover_lost_jobs(utcnow())

    assert [job.id for job in lost] == [taken.id]
    record = queue.registry.get(taken.id)
    assert record is not None and (record.status, record.dead_letter) == ("failed", True)
    assert "died before it started" in (record.error or "")
    for kept in (held, delayed):
        record = queue.registry.get(kept.id)
        assert record is not None and record.status == "queued", record
    assert lease._recover_lost_jobs(utcnow()) == []  # once only
    queue.close()


def test_the_dockerfile_runs_the_app_in_exec_form_and_stops_it_with_sigterm() -> None:
    dockerfile = (REPO_ROOT / "solutions" / "Dockerfile").read_text()
    instructions = [
        line.strip() for line in dockerfile.splitlines() if line.strip() and line[0] != "#"
    ]
    assert instructions[0].startswith("FROM python:3.11-slim")
    assert 'CMD ["python", "-m", "solutions.app"]' in instructions  # exec form: no shell
    assert "STOPSIGNAL SIGTERM" in instructions
    assert any(re.match(r"ENV .*HOST=0\.0\.0\.0", line) for line in instructions)
    assert "SHUTDOWN_TIMEOUT_SECONDS" in dockerfile


def test_connections_to_the_supervisor_socket_have_nagle_off() -> None:
    """asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP; the
    supervisor's socket once had proto 0, and every response waited 40 ms for a delayed
    ACK (23 requests/s on one connection)."""
    from solutions.app.supervisor import bind

    listener = bind("127.0.0.1", 0)

    async def accept_one() -> list[int]:
        seen: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=listener)
        reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        await reader.read()  # until the server closes it
        writer.close()
        server.close()
        await server.wait_closed()
        return seen

    assert asyncio.run(accept_one()) == [1]
