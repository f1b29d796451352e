"""Run the learner's app as several instances behind a load balancer (exercise 10.4).

Horizontal scaling only shows with more than one process: state kept in one instance's
memory is missing in the next, a cache warmed in one is cold in the other. `Cluster` runs
N `AppProcess`es, each with `INSTANCE_ID=instance-<i>` (the app answers with an
`X-Instance-Id` header, so a check sees who served), and a load balancer on a free
loopback port that sends each request to the next instance in turn.

The balancer is nginx where it is installed, because that is what such a deployment runs;
elsewhere it is `grader._proxy`, a small proxy of our own that behaves the same for what
the checks look at. Either runs as a `BalancerProcess`: an `AppProcess` that runs another
command, so it gets the same process group of its own, log file, readiness check
(`GET /health` answered 200, through the balancer, by an instance) and the same kill
guarantees (`kill()`, atexit, the watchdog) without a second copy of that logic.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from . import _proxy
from ._errors import AppProblem, GraderError
from ._process import HOST, AppProcess, BackgroundRequest, Outcome, describe_exit, free_port

__all__ = [
    "BALANCERS",
    "BalancerChoice",
    "BalancerError",
    "BalancerProcess",
    "Cluster",
    "choose_balancer",
]

BALANCERS = ("auto", "nginx", "builtin")
BUILTIN_LABEL = "built-in proxy"
# `nginx -e` (the error log used before the configuration is read) came in nginx 1.19.5.
NGINX_ERROR_LOG_FLAG = (1, 19, 5)
STOP_SECONDS = 2.0  # the balancer's own shutdown takes milliseconds; then SIGKILL

InstanceEnv = Callable[[int], Mapping[str, object]]


class BalancerError(GraderError):
    """The load balancer could not be found or started: a set-up problem, not the app's."""


@dataclass(frozen=True)
class BalancerChoice:
    """Which balancer a cluster runs, and why: `label` and `reason` are for people."""

    kind: Literal["nginx", "builtin"]
    label: str
    reason: str
    nginx: str | None = None
    version: tuple[int, ...] | None = None


def find_nginx() -> tuple[str | None, str]:
    """nginx from `GRADE_NGINX`, else from the PATH, and where it was found; or None and
    why there is none."""
    configured = os.environ.get("GRADE_NGINX")
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured, f"GRADE_NGINX={configured}"
        return None, f"GRADE_NGINX={configured} is not an executable file"
    found = shutil.which("nginx")
    if found:
        return found, f"found {found} on the PATH"
    return None, "nginx is not on the PATH (install it, or set GRADE_NGINX=/path/to/nginx)"


def nginx_version(path: str) -> tuple[int, ...] | None:
    """(1, 22, 1) from `nginx -v`, or None when it does not say."""
    try:
        done = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"nginx/(\d+(?:\.\d+)*)", done.stderr + done.stdout)
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def choose_balancer(balancer: str = "auto") -> BalancerChoice:
    """`auto`: nginx where it is found, else the built-in proxy; `nginx` or `builtin`: that
    one. Asking for nginx where there is none raises BalancerError rather than quietly
    measuring something else."""
    if balancer not in BALANCERS:
        raise ValueError(f"balancer must be one of {', '.join(BALANCERS)}, not {balancer!r}")
    if balancer == "builtin":
        return BalancerChoice("builtin", BUILTIN_LABEL, "asked for by name")
    path, where = find_nginx()
    if path is None:
        if balancer == "nginx":
            raise BalancerError(f"nginx was asked for as the load balancer, but {where}")
        return BalancerChoice("builtin", BUILTIN_LABEL, where)
    version = nginx_version(path)
    label = f"nginx {'.'.join(map(str, version))}" if version else "nginx"
    reason = where if balancer == "auto" else f"asked for by name; {where}"
    return BalancerChoice("nginx", label, reason, nginx=path, version=version)


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now (as nginx would: with
    SO_REUSEADDR, so that connections of an earlier server in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


NGINX_CONF = """\
# Written by the grader for one cluster; every path nginx writes is in this folder.
{user}worker_processes 1;
daemon off;
master_process on;
pid {folder}/nginx.pid;
lock_file {folder}/nginx.lock;
error_log stderr notice;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;

    upstream app {{
        # No balancing method named: round robin, one request to each instance in turn.
{servers}
        keepalive 16;
    }}

    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_connect_timeout 5s;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


def nginx_config(folder: Path, port: int, upstreams: list[int]) -> str:
    """The configuration of a round-robin balancer on 127.0.0.1:`port`.

    The error log goes to stderr, which the BalancerProcess writes into its log file, so
    that nginx's own words are in the message when it fails to start. Run as root, its
    workers would switch to `nobody` and could not write their temporary files in a
    folder only root may enter (pytest's tmp_path is one); so they keep our user.
    """
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
    servers = "\n".join(f"        server {HOST}:{p};" for p in upstreams)
    return NGINX_CONF.format(user=user, folder=folder, servers=servers, host=HOST, port=port)


class BalancerProcess(AppProcess):
    """The load balancer, run and guarded as an AppProcess; only its command differs."""

    def __init__(
        self, argv: list[str], *, name: str, cwd: Path, port: int, env: Mapping[str, str]
    ) -> None:
        super().__init__(name, cwd=cwd, env=env, port=port)
        self.log_prefix = name
        self._argv = argv

    def argv(self) -> list[str]:
        return list(self._argv)

    def kill(self) -> None:
        """SIGTERM first, then as `AppProcess.kill`. On SIGTERM nginx's master stops its
        worker and reaps it; killed in one go, the worker would be left a zombie wherever
        PID 1 does not reap orphans (many containers)."""
        if self.alive:
            with contextlib.suppress(Exception):  # kill() never raises
                self.send_signal(signal.SIGTERM)
                self.wait_exit(STOP_SECONDS)
        super().kill()

    def command(self) -> str:
        return shlex.join(self._argv)


class Cluster:
    """`n` instances of `python -m <package>` behind a round-robin load balancer.

    `env` holds the settings every instance gets; each also gets `INSTANCE_ID=instance-<i>`
    (i from 1) and then whatever `instance_env(i)` returns, which may override both. All
    share `cwd` as working folder (shared files, such as a SQLite database, are shared
    state, as on one host), where their logs are written too. `balancer` is `auto`,
    `nginx` or `builtin` (see `choose_balancer`); `port` fixes the balancer's port.

    Nothing runs until `start()` (or `with`); `kill()` ends it all, and so do the
    fallbacks of `AppProcess` when the caller never gets to call it.
    """

    def __init__(
        self,
        package: str,
        *,
        cwd: Path,
        n: int,
        env: Mapping[str, object],
        instance_env: InstanceEnv | None = None,
        balancer: str = "auto",
        port: int | None = None,
    ) -> None:
        if n < 1:
            raise ValueError(f"a cluster needs at least one instance, not n={n}")
        self.package = package
        self.cwd = Path(cwd)
        self.choice = choose_balancer(balancer)
        self.port = port if port is not None else free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self._port_given = port is not None
        self.instances: list[AppProcess] = []
        for i in range(1, n + 1):
            own = instance_env(i) if instance_env is not None else {}
            settings = {**env, "INSTANCE_ID": f"instance-{i}", **own}
            self.instances.append(
                AppProcess(package, cwd=self.cwd, env={k: str(v) for k, v in settings.items()})
            )
        self.balancer_process: BalancerProcess | None = None
        self._started = False
        self._exited: list[AppProcess] = []

    def __repr__(self) -> str:
        return f"<Cluster {self.package} n={len(self.instances)} {self.balancer} {self.base_url}>"

    @property
    def balancer(self) -> str:
        """`nginx 1.22.1` or `built-in proxy`."""
        return self.choice.label

    @property
    def balancer_reason(self) -> str:
        """Why that balancer: `found /usr/sbin/nginx on the PATH`, `nginx is not on ...`."""
        return self.choice.reason

    @property
    def instance_ids(self) -> list[str]:
        return [app.env["INSTANCE_ID"] for app in self.instances]

    @property
    def pgids(self) -> list[int]:
        """The process groups that `kill()` ends: the balancer's and each instance's."""
        processes = [self.balancer_process, *self.instances]
        return [p.pgid for p in processes if p is not None and p.pgid is not None]

    # --- lifecycle --------------------------------------------------------------------

    def start(self, *, ready_timeout: float = 30.0) -> Cluster:
        """Start every instance at once (threads: three take the time of one), then the
        balancer; return when `GET /health` through the balancer answers 200.

        Raises AppProblem when an instance does not start (its message says which, and
        what it printed), BalancerError when the balancer does not (with nginx's own
        words) or its port is taken. Whatever was started is killed before it raises.
        """
        if self._started:
            raise RuntimeError("a Cluster starts once: make a new one to start again")
        self._started = True
        if self._port_given and not port_is_free(self.port):
            raise BalancerError(f"port {self.port} on {HOST} is in use: choose another one")
        try:
            self._start_instances(ready_timeout)
            self._start_balancer(ready_timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _start_instances(self, ready_timeout: float) -> None:
        with ThreadPoolExecutor(len(self.instances), thread_name_prefix="cluster") as pool:
            futures = [
                pool.submit(app.start, ready_timeout=ready_timeout) for app in self.instances
            ]
        for app, future in zip(self.instances, futures, strict=True):
            exc = future.exception()
            if isinstance(exc, AppProblem):
                name = app.env["INSTANCE_ID"]
                raise AppProblem(f"Instance {name} of the cluster did not start.\n{exc}") from None
            if exc is not None:
                raise exc

    def _start_balancer(self, ready_timeout: float) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        ports = [app.port for app in self.instances]
        if self.choice.kind == "nginx":
            assert self.choice.nginx is not None
            folder = Path(tempfile.mkdtemp(prefix=f"nginx-{self.port}-", dir=self.cwd))
            conf = folder / "nginx.conf"
            conf.write_text(nginx_config(folder, self.port, ports), encoding="utf-8")
            argv = [self.choice.nginx, "-p", f"{folder}/", "-c", str(conf)]
            if self.choice.version is not None and self.choice.version >= NGINX_ERROR_LOG_FLAG:
                argv += ["-e", "stderr"]  # else it opens its built-in error log path first
            name, env = "nginx", {}
        else:
            upstreams = [f"--upstream={HOST}:{port}" for port in ports]
            argv = [sys.executable, "-m", _proxy.__name__, f"--port={self.port}", *upstreams]
            # Found even where the grader runs from a source tree rather than installed.
            source = str(Path(__file__).resolve().parent.parent)
            path = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
            name, env = "proxy", {"PYTHONPATH": path}
        self.balancer_process = BalancerProcess(
            argv, name=name, cwd=self.cwd, port=self.port, env=env
        )
        try:
            self.balancer_process.start(ready_timeout=ready_timeout)
        except AppProblem as exc:
            raise BalancerError(
                f"The load balancer ({self.balancer}; {self.balancer_reason}) did not start.\n{exc}"
            ) from None

    def kill(self) -> None:
        """Kill the balancer, then every instance, each with its whole process group, and
        wait until none of them runs. Idempotent; never raises."""
        for process in [self.balancer_process, *self.instances]:
            if process is not None:
                process.kill()

    def exits(self) -> list[str]:
        """A line for each process that has exited since the last call (none while all
        run): for a command that watches the cluster while people poke at it."""
        lines = []
        named = [("the balancer", self.balancer_process)]
        named += [(app.env["INSTANCE_ID"], app) for app in self.instances]
        for name, process in named:
            if process is None or process.returncode is None or process in self._exited:
                continue
            self._exited.append(process)
            lines.append(f"{name} {describe_exit(process.returncode)} (log: {process.log_path})")
        return lines

    def __enter__(self) -> Cluster:
        return self if self._started else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()

    # --- HTTP, through the balancer ----------------------------------------------------

    def request(self, method: str, path: str, **kw: Any) -> Outcome:
        """One request through the balancer, as `AppProcess.request` (never raises for HTTP
        or transport errors); `headers["x-instance-id"]` says who answered."""
        return self._front().request(method, path, **kw)

    def in_background(self, method: str, path: str, **kw: Any) -> BackgroundRequest:
        """The same request from a daemon thread, as `AppProcess.in_background`."""
        return self._front().in_background(method, path, **kw)

    def _front(self) -> BalancerProcess:
        if self.balancer_process is None:
            raise RuntimeError(f"{self!r} has not been started")
        return self.balancer_process

    # --- for people ---------------------------------------------------------------------

    def describe(self) -> str:
        """The balancer and each instance, one line each: url, pid, log file."""

        def line(name: str, process: AppProcess | None, url: str) -> str:
            pid = process.pid if process is not None else None
            log = process.log_path if process is not None else None
            return f"  {name:<12} {url:<24} pid {pid or '-':<8} log {log or '-'}"

        lines = [
            f"{self.package}: {len(self.instances)} instance(s) behind {self.balancer}"
            f" ({self.balancer_reason})",
            line("balancer", self.balancer_process, self.base_url),
        ]
        lines += [line(app.env["INSTANCE_ID"], app, app.base_url) for app in self.instances]
        return "\n".join(lines)
