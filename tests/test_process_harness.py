"""The process harness of the process-level checks, against real processes (no mocks).

The starter app shows what uvicorn does; small http.server apps written on the fly play
the misbehaving learner: one that crashes, one that never gets ready, one that ignores
SIGTERM, one that forks a grandchild.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from grader._errors import AppProblem
from grader._process import REFUSED, AppProcess, describe_exit
from grader.plugin import ADMIN_TOKEN

from ._support import ROOT, write_package

pytest_plugins = ["pytester"]

LINUX = sys.platform.startswith("linux")
PR_SET_CHILD_SUBREAPER = 36

# A stand-in for a learner's app: GET /health (HEALTH_STATUS), /env (its environment),
# /slow (never answers in time); IGNORE_SIGTERM and SPAWN_GRANDCHILD misbehave on demand.
TINY_SERVER = """
import http.server, json, os, signal, subprocess, sys, time

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(60)
        status = int(os.environ.get("HEALTH_STATUS", "200"))
        payload = {"status": "ok", "env": dict(os.environ), "cwd": os.getcwd()}
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        print("request", format % args, flush=True)

if os.environ.get("IGNORE_SIGTERM") == "true":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.environ.get("SPAWN_GRANDCHILD") == "true":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    print(f"grandchild pid={child.pid}", flush=True)
server = http.server.ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler)
print("tiny server ready", flush=True)
server.serve_forever()
"""

BROKEN = """
import os
raise RuntimeError("DATABASE_URL is not set")
"""


@pytest.fixture
def packages(tmp_path: Path) -> Path:
    """A folder of throwaway app packages, reached through PYTHONPATH, not the cwd."""
    folder = tmp_path / "pkgs"
    folder.mkdir()
    write_package(folder, "tiny_server", {"__init__.py": "", "__main__.py": TINY_SERVER})
    write_package(folder, "broken_app", {"__init__.py": "", "__main__.py": BROKEN})
    return folder


@pytest.fixture
def apps(tmp_path: Path, packages: Path) -> Iterator[list[AppProcess]]:
    """The processes a test makes, killed afterwards whatever happened."""
    made: list[AppProcess] = []
    yield made
    for app in made:
        app.kill()


def make(apps: list[AppProcess], tmp_path: Path, package: str, **env: str) -> AppProcess:
    extra = {"PYTHONPATH": str(tmp_path / "pkgs")} if package != "starter_app" else {}
    app = AppProcess(package, cwd=tmp_path / "work", env={**extra, **env})
    apps.append(app)
    return app


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Orphans of this test's processes become children of this process, not of PID 1.

    Once the app's server is killed, the grandchild it forked is an orphan, and a
    container's PID 1 may never reap it: a zombie, still a member of the group, would keep
    `os.killpg(pgid, 0)` succeeding. As its new parent, the test reaps it, sees that
    SIGKILL ended it, and can then ask the kernel whether the group is gone.
    """
    if not LINUX:
        pytest.skip("PR_SET_CHILD_SUBREAPER is Linux only")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def reap(pid: int, timeout: float = 5.0) -> int:
    """Wait for `pid`, an orphan that has become our child (see `subreaper`): its status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not reparented to us yet
            done, status = 0, 0
        if done == pid:
            return status
        time.sleep(0.01)
    raise AssertionError(f"process {pid} was not reaped within {timeout} s")


def assert_group_gone(pgid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def grandchild_of(app: AppProcess) -> int:
    match = app.wait_for_output(r"grandchild pid=(\d+)", timeout=5)
    assert match is not None, app.output()
    return int(match.group(1))


# --- the starter, under uvicorn ---------------------------------------------------------


def test_starts_the_starter_and_reads_its_output(tmp_path: Path, apps: list[AppProcess]) -> None:
    app = make(apps, tmp_path, "starter_app", ADMIN_TOKEN="t")
    assert app.pid is None and not app.alive and app.returncode is None
    assert app.start() is app
    assert app.alive and app.pid == app.pgid and app.base_url.startswith("http://127.0.0.1:")

    health = app.request("GET", "/health")
    assert (health.status, health.error) == (200, None)
    assert health.headers["content-type"] == "application/json"
    assert health.describe() == f"200, {len(health.body)} bytes"
    assert health.started <= health.finished

    running = app.wait_for_output(rf"Uvicorn running on http://127\.0\.0\.1:{app.port}", timeout=5)
    assert running is not None, app.output()
    assert app.output()[running.start() : running.end()] == running.group(0)
    assert app.wait_for_output("Uvicorn running", timeout=0.2, after=running.end()) is None
    assert app.log_path is not None and app.log_path.parent == tmp_path / "work"


def test_sigterm_drains_a_slow_request(tmp_path: Path, apps: list[AppProcess]) -> None:
    app = make(apps, tmp_path, "starter_app", STORE_LATENCY_MS="1500").start()
    slow = app.in_background("GET", "/users")
    assert slow.wait_sent(5), "the slow request was not sent"
    time.sleep(0.2)  # written is not yet read: let uvicorn take it up
    app.send_signal(signal.SIGTERM)
    time.sleep(0.3)

    refused = app.request("GET", "/health", timeout=2)
    assert (refused.status, refused.error) == (None, REFUSED), refused
    assert refused.describe() == "no response (connection refused)"
    outcome = slow.result(timeout=10)
    assert (outcome.status, outcome.body) == (200, "[]"), outcome
    assert outcome.finished - outcome.started >= 1.4
    # Since uvicorn 0.29, uvicorn.run() ends a SIGTERM shutdown by raising SIGTERM again
    # once its handler is restored (Kludex/uvicorn#1600): exit status -15, not 0.
    code = app.wait_exit(5)
    assert code == -signal.SIGTERM, describe_exit(code)
    assert describe_exit(code) == "was killed by SIGTERM"
    assert app.returncode == code and not app.alive
    app.send_signal(signal.SIGTERM)  # a no-op now


# --- apps that fail to start ------------------------------------------------------------


def test_start_reports_an_app_that_crashes(tmp_path: Path, apps: list[AppProcess]) -> None:
    app = make(apps, tmp_path, "broken_app", STORE_LATENCY_MS="5")
    with pytest.raises(AppProblem) as raised:
        app.start(ready_timeout=30)
    message = str(raised.value)
    assert "STORE_LATENCY_MS=5 HOST=127.0.0.1 PORT=" in message
    assert "python -m broken_app" in message
    assert "expected: GET /health answers 200 within 30 s" in message
    assert "observed: it exited with code 1 before answering" in message
    assert message.rstrip().endswith("RuntimeError: DATABASE_URL is not set")
    assert len(message.split("last lines of its output:\n", 1)[1].splitlines()) <= 15
    assert not app.alive and app.returncode == 1


def test_start_reports_an_app_that_never_gets_ready(tmp_path: Path, apps: list[AppProcess]) -> None:
    app = make(apps, tmp_path, "tiny_server", HEALTH_STATUS="503")
    started = time.monotonic()
    with pytest.raises(AppProblem) as raised:
        app.start(ready_timeout=1)
    assert time.monotonic() - started < 3
    message = str(raised.value)
    assert "expected: GET /health answers 200 within 1 s" in message
    assert "observed: no 200 within 1 s (the last try got 503, " in message
    assert "tiny server ready" in message
    assert app.returncode == -signal.SIGKILL


# --- requests ---------------------------------------------------------------------------


def test_requests_never_raise(tmp_path: Path, apps: list[AppProcess]) -> None:
    nobody = make(apps, tmp_path, "tiny_server")  # not started: nothing listens on its port
    refused = nobody.request("GET", "/health")
    assert (refused.status, refused.body, refused.error) == (None, "", REFUSED)
    assert not nobody.in_background("GET", "/health").wait_sent(5)

    app = make(apps, tmp_path, "tiny_server").start(ready_timeout=10)
    hung = app.request("GET", "/slow", timeout=0.3)
    assert (hung.status, hung.error) == (None, "timed out after 0.3 s"), hung
    assert hung.describe() == "no response (timed out after 0.3 s)"
    with pytest.raises(TypeError):
        app.in_background("GET", "/health", params={"a": "b"})


def test_a_background_request_does_not_hold_up_exit(tmp_path: Path, apps: list[AppProcess]) -> None:
    app = make(apps, tmp_path, "tiny_server").start(ready_timeout=10)
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from grader._process import AppProcess
        app = AppProcess("tiny_server", cwd=Path("."), env={{}}, port={app.port})
        assert app.in_background("GET", "/slow", timeout=60).wait_sent(5)
        print("sent")
        """
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "sent"), done.stderr
    assert time.monotonic() - started < 5


# --- stopping -----------------------------------------------------------------------------


def test_docker_stop_kills_an_app_that_ignores_sigterm(
    tmp_path: Path, apps: list[AppProcess]
) -> None:
    app = make(apps, tmp_path, "tiny_server", IGNORE_SIGTERM="true").start(ready_timeout=10)
    stop = app.docker_stop(grace=1)
    assert stop.killed and stop.exit_code == -signal.SIGKILL
    assert 1 <= stop.seconds < 3
    assert not app.alive


def test_docker_stop_of_an_app_that_stops_by_itself(tmp_path: Path, apps: list[AppProcess]) -> None:
    app = make(apps, tmp_path, "tiny_server").start(ready_timeout=10)
    stop = app.docker_stop(grace=5)
    assert (stop.killed, stop.exit_code) == (False, -signal.SIGTERM)
    assert stop.seconds < 1


@pytest.mark.skipif(not LINUX, reason="reaping orphans needs Linux")
def test_kill_ends_the_whole_group(tmp_path: Path, apps: list[AppProcess], subreaper: None) -> None:
    app = make(apps, tmp_path, "tiny_server", SPAWN_GRANDCHILD="true").start(ready_timeout=10)
    grandchild = grandchild_of(app)
    os.kill(grandchild, 0)  # it runs

    app.kill()
    status = reap(grandchild)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert app.returncode == -signal.SIGKILL
    assert app.pgid is not None
    assert_group_gone(app.pgid)
    app.kill()  # idempotent, and quiet


@pytest.mark.skipif(not LINUX, reason="reaping orphans needs Linux")
def test_the_watchdog_kills_the_group_when_pytest_is_killed(
    tmp_path: Path, packages: Path, subreaper: None
) -> None:
    """The grader's runner SIGKILLs a run that overstays (its whole group): no atexit, no
    teardown. The app's group, a session of its own, must still go."""
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from grader._process import _GUARD, AppProcess
        app = AppProcess(
            "tiny_server",
            cwd=Path({str(tmp_path / "work")!r}),
            env={{"PYTHONPATH": {str(packages)!r}, "SPAWN_GRANDCHILD": "true"}},
        ).start(ready_timeout=10)
        grandchild = app.wait_for_output(r"grandchild pid=(\\d+)", timeout=5).group(1)
        print(app.pid, grandchild, _GUARD._watchdog.pid, flush=True)
        time.sleep(60)
        """
    )
    pytest_child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert pytest_child.stdout is not None
        line = pytest_child.stdout.readline()
        server, grandchild, watchdog = (int(pid) for pid in line.split())
        os.killpg(pytest_child.pid, signal.SIGKILL)  # as grader._runner does
        pytest_child.wait(5)
        for pid in (server, grandchild):
            status = reap(pid)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert reap(watchdog) == 0
        assert_group_gone(server)
    finally:
        if pytest_child.poll() is None:
            os.killpg(pytest_child.pid, signal.SIGKILL)
            pytest_child.wait()


# --- the launch_app fixture ---------------------------------------------------------------

INNER_CHECKS = """
import json, os
from pathlib import Path

def record(what, pid):
    with open(os.environ["PIDS_FILE"], "a") as stream:
        stream.write(f"{what} {pid}\\n")

def test_settings_and_restart(launch_app, tmp_path):
    first = launch_app(LATENCY_MS=1500, VERBOSE=True, QUIET=False, ready_timeout=10)
    record("group", first.pgid)
    seen = json.loads(first.request("GET", "/env").body)
    env = seen["env"]
    assert (env["LATENCY_MS"], env["VERBOSE"], env["QUIET"]) == ("1500", "true", "false")
    assert env["ADMIN_TOKEN"] == ADMIN_TOKEN
    assert (env["HOST"], env["PORT"]) == ("127.0.0.1", str(first.port))
    assert Path(seen["cwd"]) == tmp_path
    first.kill()
    second = launch_app(port=first.port, ADMIN_TOKEN="other", ready_timeout=10)
    record("group", second.pgid)
    assert json.loads(second.request("GET", "/env").body)["env"]["ADMIN_TOKEN"] == "other"
    assert second.cwd == first.cwd and second.log_path != first.log_path
    unstarted = launch_app(start=False)
    assert unstarted.pid is None

def test_a_failing_check(launch_app):
    app = launch_app(SPAWN_GRANDCHILD=True, ready_timeout=10)
    record("group", app.pgid)
    spawned = app.wait_for_output(r"grandchild pid=(\\d+)", timeout=5)
    record("grandchild", spawned.group(1))
    assert False, "the check failed with its server running"
"""


@pytest.mark.skipif(not LINUX, reason="reaping orphans needs Linux")
def test_launch_app_kills_every_process_at_teardown(
    pytester: pytest.Pytester,
    packages: Path,
    monkeypatch: pytest.MonkeyPatch,
    subreaper: None,
) -> None:
    pids_file = pytester.path / "pids.txt"
    monkeypatch.setenv("PYTHONPATH", str(packages))
    monkeypatch.setenv("PIDS_FILE", str(pids_file))
    pytester.makepyfile(test_inner=f"ADMIN_TOKEN = {ADMIN_TOKEN!r}\n{INNER_CHECKS}")

    result = pytester.runpytest(
        "-p",
        "grader.plugin",
        "--grader-app=tiny_server",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
    )

    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: the check failed with its server running*"])
    pids = [line.split() for line in pids_file.read_text().splitlines()]
    groups = [int(pid) for what, pid in pids if what == "group"]
    (grandchild,) = (int(pid) for what, pid in pids if what == "grandchild")
    assert len(groups) == 3
    # The failing check's grandchild was killed with its group at teardown.
    status = reap(grandchild)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    for pgid in groups:
        assert_group_gone(pgid)
