"""What the benchmark scripts in bench/ share: their child processes, environment and output.

The scripts run as `.venv/bin/python bench/<script>.py`, so this folder is on sys.path and
`import _common` finds this module; it imports only the standard library, so any script can
use it before it has put the repo root on sys.path.

- Child processes (servers, workers) write to a log file rather than a pipe that would have
  to be drained, and are stopped by pid: SIGINT first (a graceful stop), SIGKILL after a grace
  period. `exit_on_sigterm()` makes SIGTERM unwind like Ctrl-C so that they are stopped then too.
- Figures: the machine is shared and noisy, so the two sides of a comparison run interleaved
  and are compared round by round (`paired_ratios`) and as ratios of medians; the load average
  before and after is kept with the figures.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Seconds the children of one run get, together, between SIGINT and SIGKILL.
STOP_TIMEOUT = 5.0
# The latency percentiles kept from wrk's --latency report.
WRK_PERCENTILES = ("p50", "p75", "p90", "p99")


def say(message: str) -> None:
    """Progress goes to stderr, so stdout holds the results only."""
    print(message, file=sys.stderr, flush=True)


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages: a noisy run shows up here, worth keeping in notes."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def verdict(met: bool) -> str:
    """How a target reads in the report."""
    return "met" if met else "NOT met"


def round_or_none(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with `fraction` of them at or below it."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a/b round by round: each pair ran back to back, so it saw about the same load."""
    return [x / y for x, y in zip(a, b, strict=True)]


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports, all held open while choosing so none repeats."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def checkout_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the repo root on PYTHONPATH and PYTHONUNBUFFERED=1, for a child process.

    The children run in a temporary folder (so nothing they write lands in the repo and no
    `.env` is read from it) but import `grader`, `solutions` and `starter_app` from this
    checkout; unbuffered, as grade runs its own child, their logs are complete when read.
    """
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def environment(env: dict[str, str], cwd: Path) -> Iterator[None]:
    """Run the block with exactly `env` as os.environ, in `cwd` (no stray `.env`).

    For what the scripts build in their own process (an app, the reference's `Settings()`),
    which reads its configuration from the environment as the servers do.
    """
    saved, saved_cwd = dict(os.environ), Path.cwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved)


def _raise_system_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """SIGTERM (`timeout`, a CI runner) would end Python without running `finally` blocks,
    leaving the processes this script started behind: turn it into an exit that unwinds and
    stops them."""
    signal.signal(signal.SIGTERM, _raise_system_exit)


def write_json(
    path: str,
    *,
    load_before: list[float] | None,
    load_after: list[float] | None,
    benchmarks: dict[str, Any],
    **details: Any,
) -> None:
    """The figures as JSON at `path`, with the machine and its load around the run."""
    document = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg_before": load_before,
        "load_avg_after": load_after,
        **details,
        "benchmarks": benchmarks,
    }
    Path(path).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


# --- child processes -------------------------------------------------------------------------


def interrupt(process: subprocess.Popen[bytes]) -> None:
    """SIGINT by pid, if it still runs: a graceful stop for uvicorn, huey's consumer and grade."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)


def reap(process: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait for `process` until `deadline` (time.monotonic()), then SIGKILL it by pid."""
    try:
        process.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process `pid` (all its threads) so far, from /proc.

    None where there is no /proc, or the process is gone.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)", comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Child:
    """A process a script starts and stops by pid: a server or a worker, with its log file."""

    label: str
    command: list[str]
    log: Path | None = field(default=None, kw_only=True)
    process: subprocess.Popen[bytes] | None = field(default=None, kw_only=True)

    def launch(self, *, log: Path, env: dict[str, str], cwd: Path) -> None:
        """Start the process; output goes to a log file (no pipe to drain), shown on failure."""
        self.log = log
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                self.command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
            )

    def log_text(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")

    def log_tail(self) -> str:
        return self.log_text()[-2000:]

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the process so far (None where it cannot be read)."""
        return None if self.process is None else cpu_seconds(self.process.pid)

    def interrupt(self) -> None:
        if self.process is not None:
            interrupt(self.process)

    def reap(self, deadline: float) -> None:
        if self.process is not None:
            reap(self.process, deadline)


def stop_all(children: Sequence[Child], timeout: float = STOP_TIMEOUT) -> None:
    """All interrupted first, then reaped: they shut down in parallel."""
    for child in children:
        child.interrupt()
    deadline = time.monotonic() + timeout
    for child in children:
        child.reap(deadline)


def print_load(load_before: list[float] | None, load_after: list[float] | None) -> None:
    """One line on the machine's load around a run, with a warning if other work was busy.

    Before is other work alone; after includes the run's own processes.
    """
    if not (load_before and load_after):
        return
    cpus = os.cpu_count() or 1
    busy = load_before[0] > cpus
    print(
        f"load average {load_before[0]:.1f} at the start (other work), {load_after[0]:.1f} at"
        f" the end, on {cpus} CPUs"
        + (": other work shared the CPUs, read the figures with care" if busy else "")
    )


# --- wrk --------------------------------------------------------------------------------------

# wrk's report, e.g. "  4304 requests in 3.01s, 1.35MB read", "Requests/sec:   1432.00",
# "     50%  516.00us" (under --latency), "Socket errors: connect 0, read 0, write 0, timeout 0".
WRK_RPS = re.compile(r"^Requests/sec:\s*([0-9.]+)\s*$", re.MULTILINE)
WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h),", re.MULTILINE)
WRK_PERCENTILE = re.compile(r"^\s*(\d+)(?:\.0+)?%\s+([0-9.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
WRK_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
WRK_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}


@dataclass
class WrkReport:
    requests: int
    seconds: float
    rps: float
    socket_errors: int  # connect, read, write, timeout
    non_2xx: int  # responses counted in `requests`, but not a success
    latency_ms: dict[str, float]


def parse_wrk(output: str) -> WrkReport:
    """Requests/sec, the request count and run time, errors and latency percentiles."""
    rps, total = WRK_RPS.search(output), WRK_TOTAL.search(output)
    if rps is None or total is None:
        raise ValueError("no 'Requests/sec' or 'N requests in T' line")
    sockets, non_2xx = WRK_SOCKET_ERRORS.search(output), WRK_NON_2XX.search(output)
    latency = {
        f"p{p}": round(float(value) * WRK_UNIT_MS[unit], 3)
        for p, value, unit in WRK_PERCENTILE.findall(output)
        if f"p{p}" in WRK_PERCENTILES
    }
    return WrkReport(
        requests=int(total.group(1)),
        seconds=float(total.group(2)) * WRK_UNIT_MS[total.group(3)] / 1e3,
        rps=float(rps.group(1)),
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        latency_ms=latency,
    )


def wrk_version(path: str) -> str:
    """E.g. "wrk debian/4.1.0-3+b2 [epoll]" (wrk -v prints it, then its usage, and exits 1)."""
    try:
        done = subprocess.run(
            [path, "-v"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return "wrk"
    first = (done.stdout or done.stderr).strip().splitlines()
    return re.sub(r"\s+Copyright.*$", "", first[0]) if first else "wrk"
