"""The cluster runner of exercise 10.4, against real processes: N instances, a real nginx
(and the built-in proxy), signals, /proc.

The instances run `clusterapp`, a tiny FastAPI app written into tmp_path for these tests,
so that they do not depend on the reference app. It answers every request with
`X-Instance-Id: $INSTANCE_ID`, as exercise 10.4 asks of the learner's app.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from grader._cluster import BalancerError, Cluster, choose_balancer, find_nginx
from grader._errors import AppProblem
from grader._process import REFUSED, free_port, loopback_client
from grader._proxy import Proxy
from grader._services import require
from grader.plugin import ADMIN_TOKEN

from ._support import write_package

pytest_plugins = ["pytester"]

LINUX = sys.platform.startswith("linux")
GRADE = str(Path(sys.executable).parent / "grade")

CLUSTER_APP = """
import asyncio, hashlib, os
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

def create_app(settings=None):
    app = FastAPI()
    instance = os.environ.get("INSTANCE_ID", "unknown")

    @app.middleware("http")
    async def tag(request, call_next):
        response = await call_next(request)
        response.headers["X-Instance-Id"] = instance
        return response

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/whoami")
    async def whoami(request: Request):
        names = ("INSTANCE_ID", "COLOR", "ADMIN_TOKEN", "VERBOSE")
        return {
            "env": {name: os.environ.get(name) for name in names},
            "host": request.headers.get("host"),
            "x_forwarded_for": request.headers.get("x-forwarded-for"),
        }

    @app.get("/slow")
    async def slow(ms: int = 0):
        await asyncio.sleep(ms / 1000)
        return {"slept_ms": ms}

    @app.post("/echo")
    async def echo(request: Request):
        body = await request.body()
        return {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}

    @app.get("/big")
    async def big(kb: int):
        return Response(b"x" * (kb * 1024), media_type="application/octet-stream")

    @app.get("/stream")
    async def stream(chunks: int):
        async def parts():
            for i in range(chunks):
                yield f"part {i}\\n".encode()
                await asyncio.sleep(0.01)
        return StreamingResponse(parts(), media_type="text/plain")

    return app
"""

CLUSTER_MAIN = """
import os, time
import uvicorn

if os.environ.get("CRASH_ON_START") == "true":
    raise SystemExit("clusterapp: CRASH_ON_START=true, so it crashes")
print(f"clusterapp: started at {time.time()}", flush=True)
time.sleep(int(os.environ.get("STARTUP_DELAY_MS", "0")) / 1000)
from . import create_app
host, port = os.environ["HOST"], int(os.environ["PORT"])
uvicorn.run(create_app(), host=host, port=port, log_level="warning")
"""


@pytest.fixture
def packages(tmp_path: Path) -> Path:
    folder = tmp_path / "pkgs"
    folder.mkdir()
    write_package(folder, "clusterapp", {"__init__.py": CLUSTER_APP, "__main__.py": CLUSTER_MAIN})
    return folder


@pytest.fixture
def make_cluster(tmp_path: Path, packages: Path) -> Iterator[Callable[..., Cluster]]:
    """Clusters of clusterapp (found through PYTHONPATH), killed after the test."""
    made: list[Cluster] = []

    def make(
        n: int = 3,
        *,
        balancer: str = "builtin",
        env: Mapping[str, str] | None = None,
        instance_env: Callable[[int], Mapping[str, str]] | None = None,
        port: int | None = None,
    ) -> Cluster:
        cluster = Cluster(
            "clusterapp",
            cwd=tmp_path / "work",
            n=n,
            env={"PYTHONPATH": str(packages), **(env or {})},
            instance_env=instance_env,
            balancer=balancer,
            port=port,
        )
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.kill()


def nginx_or_skip() -> None:
    require(find_nginx()[0] is not None, f"no nginx for the cluster: {find_nginx()[1]}")


@pytest.fixture(params=["nginx", "builtin"])
def balancer(request: pytest.FixtureRequest) -> str:
    """Each balancer in turn; nginx is skipped where it is missing, except under CI=true."""
    if request.param == "nginx":
        nginx_or_skip()
    return str(request.param)


def running(pgids: list[int]) -> list[int]:
    """The pids of the processes of these groups that still run (zombies do not)."""
    wanted = {str(pgid) for pgid in pgids}
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if fields[2] in wanted and fields[0] not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def served_by(cluster: Cluster, count: int, path: str = "/health") -> Counter[str | None]:
    outcomes = [cluster.request("GET", path) for _ in range(count)]
    assert all(o.status == 200 for o in outcomes), [o.describe() for o in outcomes]
    return Counter(o.headers.get("x-instance-id") for o in outcomes)


# --- spreading the load ---------------------------------------------------------------------


def test_round_robin_spreads_requests_over_every_instance(
    make_cluster: Callable[..., Cluster], balancer: str
) -> None:
    cluster = make_cluster(3, balancer=balancer, instance_env=lambda i: {"COLOR": f"color-{i}"})
    assert cluster.start() is cluster
    if balancer == "nginx":
        assert re.fullmatch(r"nginx \d+\.\d+\.\d+", cluster.balancer), cluster.balancer
        assert "nginx" in cluster.balancer_reason
    else:
        assert (cluster.balancer, cluster.balancer_reason) == (
            "built-in proxy",
            "asked for by name",
        )
    assert cluster.instance_ids == ["instance-1", "instance-2", "instance-3"]

    assert served_by(cluster, 30) == {"instance-1": 10, "instance-2": 10, "instance-3": 10}

    seen = cluster.request("GET", "/whoami")
    whoami = httpx.Response(200, content=seen.body).json()
    instance = seen.headers["x-instance-id"]
    assert whoami["env"]["INSTANCE_ID"] == instance
    assert whoami["env"]["COLOR"] == f"color-{instance.rsplit('-', 1)[1]}"
    assert whoami["host"] == f"127.0.0.1:{cluster.port}"
    assert whoami["x_forwarded_for"] == "127.0.0.1"


def test_bodies_stream_through_in_both_directions(
    make_cluster: Callable[..., Cluster], balancer: str
) -> None:
    cluster = make_cluster(2, balancer=balancer).start()
    payload = os.urandom(1024 * 1024)
    digest = hashlib.sha256(payload).hexdigest()
    with loopback_client() as client:
        sized = client.post(f"{cluster.base_url}/echo", content=payload)
        assert sized.json() == {"length": len(payload), "sha256": digest}
        chunked = client.post(
            f"{cluster.base_url}/echo",
            content=(payload[i : i + 65536] for i in range(0, len(payload), 65536)),
        )
        assert chunked.json() == {"length": len(payload), "sha256": digest}
        streamed = client.get(f"{cluster.base_url}/stream", params={"chunks": 20})
        assert streamed.text == "".join(f"part {i}\n" for i in range(20))
        big = client.get(f"{cluster.base_url}/big", params={"kb": 2048})
        assert (big.status_code, len(big.content)) == (200, 2048 * 1024)


def test_one_keep_alive_connection_is_still_balanced_per_request(
    make_cluster: Callable[..., Cluster], balancer: str
) -> None:
    cluster = make_cluster(2, balancer=balancer).start()
    connection = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=10)
    try:
        served = []
        for _ in range(4):
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            served.append(response.getheader("x-instance-id"))
            assert connection.sock is not None, "the balancer closed the connection"
            if len(served) == 1:
                first_socket = connection.sock
            assert connection.sock is first_socket
    finally:
        connection.close()
    assert Counter(served) == {"instance-1": 2, "instance-2": 2}


def test_instances_start_at_the_same_time(make_cluster: Callable[..., Cluster]) -> None:
    """Instances that take 1.5 s to get ready all start within a second of each other:
    one after the other, each would wait for the one before to be ready."""
    cluster = make_cluster(3, env={"STARTUP_DELAY_MS": "1500"}).start()
    starts = []
    for app in cluster.instances:
        match = re.search(r"clusterapp: started at ([\d.]+)", app.output())
        assert match is not None, app.output()
        starts.append(float(match.group(1)))
    assert max(starts) - min(starts) < 1.0, starts


# --- failures -------------------------------------------------------------------------------


def test_dead_instances_are_skipped_until_none_is_left(
    make_cluster: Callable[..., Cluster], balancer: str
) -> None:
    cluster = make_cluster(3, balancer=balancer).start()
    cluster.instances[1].kill()
    served = served_by(cluster, 12)
    assert set(served) == {"instance-1", "instance-3"}, served

    for app in cluster.instances:
        app.kill()
    outcome = cluster.request("GET", "/health")
    assert outcome.status == 502, outcome
    if balancer == "builtin":
        detail = httpx.Response(502, content=outcome.body).json()["detail"]
        assert detail.startswith("no instance accepted the connection")
        assert detail.count("connection refused") == 3, detail


def test_an_instance_that_does_not_start_stops_the_cluster(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(
        3, instance_env=lambda i: {"CRASH_ON_START": "true" if i == 2 else "false"}
    )
    with pytest.raises(AppProblem) as raised:
        cluster.start()
    message = str(raised.value)
    assert message.startswith("Instance instance-2 of the cluster did not start.")
    assert "CRASH_ON_START=true, so it crashes" in message
    assert cluster.balancer_process is None
    assert running(cluster.pgids) == []


def test_a_balancer_port_in_use_is_refused_before_anything_starts(
    make_cluster: Callable[..., Cluster],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = make_cluster(2, port=port)
        with pytest.raises(BalancerError, match=f"port {port} on 127.0.0.1 is in use"):
            cluster.start()
    assert all(app.pid is None for app in cluster.instances)


def test_an_nginx_that_fails_to_start_is_an_error_in_its_own_words(
    make_cluster: Callable[..., Cluster], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nginx_or_skip()
    real, _ = find_nginx()
    broken = tmp_path / "nginx"
    broken.write_text(f'#!/bin/sh\nexec {real} "$@" -g "bogus_directive on;"\n')
    broken.chmod(0o755)
    monkeypatch.setenv("GRADE_NGINX", str(broken))

    cluster = make_cluster(1, balancer="auto")
    assert cluster.balancer.startswith("nginx")  # no quiet fallback to the built-in proxy
    with pytest.raises(BalancerError) as raised:
        cluster.start()
    message = str(raised.value)
    assert message.startswith(f"The load balancer ({cluster.balancer}; GRADE_NGINX={broken})")
    assert 'unknown directive "bogus_directive"' in message
    assert running(cluster.pgids) == []


def test_the_balancer_is_chosen_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRADE_NGINX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no nginx here
    auto = choose_balancer("auto")
    assert (auto.kind, auto.label) == ("builtin", "built-in proxy")
    assert auto.reason.startswith("nginx is not on the PATH")
    with pytest.raises(BalancerError, match=r"nginx was asked for .* but nginx is not on the PATH"):
        choose_balancer("nginx")
    with pytest.raises(ValueError, match="balancer must be one of auto, nginx, builtin"):
        choose_balancer("haproxy")

    monkeypatch.setenv("GRADE_NGINX", str(tmp_path / "missing"))
    auto = choose_balancer("auto")
    assert auto.kind == "builtin"
    assert auto.reason == f"GRADE_NGINX={tmp_path / 'missing'} is not an executable file"


def test_the_builtin_proxy_answers_what_it_cannot_pass_on() -> None:
    """A malformed request gets a 400, a request no instance takes a 502; both JSON, and
    both close the connection (the request's body, if any, was never read)."""

    async def exchange(raw: bytes) -> bytes:
        proxy = Proxy([("127.0.0.1", free_port())], timeout=5)  # nobody listens there
        server = await asyncio.start_server(proxy.serve_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            answer = await asyncio.wait_for(reader.read(), 5)  # all of it, until it closes
            writer.close()
        return answer

    bad = asyncio.run(exchange(b"NONSENSE\r\n\r\n"))
    assert bad.startswith(b"HTTP/1.1 400 Bad Request\r\n"), bad
    assert b"Connection: close\r\n" in bad
    assert b'{"detail": "not an HTTP/1.x request line: \'NONSENSE\'"}' in bad
    refused = asyncio.run(exchange(b"POST /users HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"))
    assert refused.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), refused
    assert b"(connection refused)" in refused and b"Connection: close\r\n" in refused


# --- leaving nothing behind -----------------------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_kill_leaves_no_process_of_the_cluster(
    make_cluster: Callable[..., Cluster], balancer: str
) -> None:
    cluster = make_cluster(3, balancer=balancer).start()
    assert cluster.balancer_process is not None
    groups = cluster.pgids
    assert len(groups) == 4
    before = running(groups)
    if balancer == "nginx":  # its master and its worker, in the balancer's group
        assert len(running([cluster.balancer_process.pid or 0])) >= 2

    cluster.kill()
    assert running(groups) == [], f"still running after kill(): {running(groups)} of {before}"
    assert cluster.request("GET", "/health").error == REFUSED
    cluster.kill()  # idempotent, and quiet


INNER_CHECKS = """
import json

def test_a_cluster_check(launch_cluster, tmp_path):
    cluster = launch_cluster(
        2, balancer="builtin", VERBOSE=True, instance_env=lambda i: {"COLOR": i}
    )
    with open(PGIDS_FILE, "a") as stream:
        stream.write(" ".join(map(str, cluster.pgids)) + "\\n")
    for _ in range(2):
        outcome = cluster.request("GET", "/whoami")
        env = json.loads(outcome.body)["env"]
        number = outcome.headers["x-instance-id"].rsplit("-", 1)[1]
        assert env == {
            "INSTANCE_ID": f"instance-{number}",
            "COLOR": number,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "VERBOSE": "true",
        }
    assert all(app.cwd == tmp_path for app in cluster.instances)
    assert False, "the check failed with its cluster running"
"""


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_launch_cluster_kills_everything_at_teardown(
    pytester: pytest.Pytester, packages: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pgids_file = pytester.path / "pgids.txt"
    monkeypatch.setenv("PYTHONPATH", str(packages))
    pytester.makepyfile(
        test_inner=f"ADMIN_TOKEN = {ADMIN_TOKEN!r}\nPGIDS_FILE = {str(pgids_file)!r}\n"
        + INNER_CHECKS
    )
    result = pytester.runpytest(
        "-p",
        "grader.plugin",
        "--grader-app=clusterapp",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: the check failed with its cluster running*"])
    groups = [int(pgid) for pgid in pgids_file.read_text().split()]
    assert len(groups) == 3
    assert running(groups) == []


# --- the `grade cluster` command ------------------------------------------------------------


class Output:
    """The lines a child process prints, read in a thread so that a wait can time out."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: any(text in line for line in self.lines), timeout)

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.mark.skipif(not LINUX, reason="reads /proc")
@pytest.mark.parametrize(
    ("stop", "ignored"),
    [
        (signal.SIGINT, False),
        (signal.SIGTERM, False),
        (signal.SIGHUP, False),
        (signal.SIGINT, True),
    ],
    ids=["SIGINT", "SIGTERM", "SIGHUP", "SIGINT-ignored-by-the-shell"],
)
def test_grade_cluster_serves_until_stopped(
    packages: Path, tmp_path: Path, stop: signal.Signals, ignored: bool
) -> None:
    """`ignored`: started as `grade cluster &` in a script is, with SIGINT ignored, which
    Python then never turns into KeyboardInterrupt unless the command handles it itself."""
    port = free_port()
    command = [GRADE, "cluster", "--app", "clusterapp", "-n", "2", f"--port={port}"]
    command += ["--env", "COLOR=blue", f"--workdir={tmp_path / 'work'}"]
    env = {**os.environ, "PYTHONPATH": str(packages)}
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignored else None,
    )
    output = Output(process)
    try:
        assert output.wait_for("Press Ctrl-C", timeout=30), output.text()
        text = output.text()
        assert f"Load balancer: http://127.0.0.1:{port}" in text
        assert re.search(r"clusterapp: 2 instance\(s\) behind (nginx \d|built-in proxy)", text), (
            text
        )
        pids = [int(pid) for pid in re.findall(r"pid (\d+)", text)]
        assert len(pids) == 3, text  # the balancer and two instances
        for name in ("balancer", "instance-1", "instance-2"):
            assert re.search(rf"^  {name} +http://127\.0\.0\.1:\d+ +pid \d+ +log /", text, re.M), (
                text
            )

        with loopback_client() as client:
            answers = [client.get(f"http://127.0.0.1:{port}/whoami") for _ in range(4)]
        assert Counter(a.headers["x-instance-id"] for a in answers) == {
            "instance-1": 2,
            "instance-2": 2,
        }
        assert {a.json()["env"]["COLOR"] for a in answers} == {"blue"}

        process.send_signal(stop)
        assert process.wait(15) == 0, output.text()
        output.wait_for("stopped", timeout=5)
        assert "grade cluster: stopped; the balancer and every instance are gone" in output.text()
        assert running(pids) == []
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_grade(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GRADE, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "NOEQUALS"], "--env 'NOEQUALS': expected KEY=VALUE"),
        (["-n", "0"], "-n/--instances must be between 1 and 64, not 0"),
        (["--port", "70000"], "--port must be between 1 and 65535, not 70000"),
        (["--balancer", "haproxy"], "invalid choice: 'haproxy'"),
        (["--app", "a", "--solution"], "not allowed with argument"),
    ],
    ids=["env-without-equals", "no-instances", "port-out-of-range", "unknown-balancer", "two-apps"],
)
def test_grade_cluster_usage_errors(args: list[str], message: str) -> None:
    done = run_grade("cluster", *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_grade_cluster_set_up_errors(tmp_path: Path) -> None:
    missing = run_grade("cluster", "--balancer", "nginx", GRADE_NGINX=str(tmp_path / "none"))
    assert missing.returncode == 2
    assert (
        "grade: error: nginx was asked for as the load balancer, but GRADE_NGINX=" in missing.stderr
    )

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = run_grade("cluster", f"--port={port}")
    assert in_use.returncode == 2
    assert f"grade: error: port {port} on 127.0.0.1 is in use" in in_use.stderr

    broken = run_grade("cluster", "--app", "no_such_package", "-n", "1", f"--workdir={tmp_path}")
    assert broken.returncode == 1
    assert "Instance instance-1 of the cluster did not start." in broken.stderr
    assert "No module named no_such_package" in broken.stderr
    for done in (missing, in_use, broken):
        assert "Traceback" not in done.stderr
