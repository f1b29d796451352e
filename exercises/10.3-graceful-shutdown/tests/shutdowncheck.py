"""Helpers shared by the 10.3 checks: the shutdown log lines, slow requests, welcome jobs.

Every check here drives a real server process (`launch_app`, from the grader's plugin) and
waits by polling with generous deadlines: a loaded 2-core machine may be slow, but a check
never passes or fails on a sleep that happened to be long enough.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from grader._process import AppProcess, Outcome, describe_exit
from grader.plugin import ADMIN_TOKEN
from grader.testing import eventually, fail, unique_email

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NO_STORE = {"Cache-Control": "no-store"}
SIGTERM = signal.SIGTERM

# The contract's shutdown lines, in the order they must come (README, "Log lines").
PHASES = (
    "shutdown started",
    "shutdown requests drained",
    "shutdown jobs stopped",
    "shutdown resources closed",
    "shutdown complete",
)
# Not uvicorn's own "Application shutdown complete.": the app's line is the contract's.
_PHASE_LINE = re.compile(
    r"(?<!Application )"
    r"(?P<phase>shutdown (?:started|requests drained|jobs stopped|resources closed|complete))"
    r"\b"
)
_ELAPSED = re.compile(r"\belapsed_ms=(\d+(?:\.\d+)?)")
# A request kept in the store long enough for a signal to arrive while it is in flight.
SLOW_MS = 3000
# How a server may end a graceful shutdown: code 0, or killed by the very signal it was
# sent, which uvicorn (since 0.29) raises again on itself once it has shut down, so that
# whoever started it sees the conventional "terminated by SIGTERM" (143 in a shell).
CLEAN_EXITS = (0, -signal.SIGTERM, -signal.SIGINT)


def clean_exit(code: int | None) -> bool:
    return code in CLEAN_EXITS


def exit_text(code: int | None, waited: float) -> str:
    """How the process ended, for a failure message."""
    return f"still running after {waited:g} s" if code is None else describe_exit(code)


@dataclass(frozen=True)
class PhaseLine:
    phase: str
    line: str
    position: int  # offset in the app's output
    elapsed_ms: float | None


def phase_lines(output: str) -> list[PhaseLine]:
    """The contract's shutdown lines the app printed, in the order it printed them."""
    found = []
    for line_match in re.finditer(r"[^\n]*", output):
        line = line_match.group()
        match = _PHASE_LINE.search(line)
        if match is None:
            continue
        elapsed = _ELAPSED.search(line)
        found.append(
            PhaseLine(
                match.group("phase"),
                line.strip(),
                line_match.start(),
                float(elapsed.group(1)) if elapsed else None,
            )
        )
    return found


def tail(output: str, lines: int = 12) -> str:
    """The last lines of the app's output, for a failure message."""
    kept = [line for line in output.strip().splitlines() if line.strip()][-lines:]
    return "\n  | ".join(["", *kept]) if kept else " (nothing)"


def check_phases_in_order(app: AppProcess, *, action: str, reason: str | None = None) -> None:
    """Fail unless the five shutdown lines came, each once at least, in the contract's order
    (and the first with `reason=<reason>`, if given)."""
    output = app.output()
    lines = phase_lines(output)
    firsts: dict[str, PhaseLine] = {}
    for line in lines:
        firsts.setdefault(line.phase, line)
    missing = [phase for phase in PHASES if phase not in firsts]
    if missing:
        fail(
            action,
            expected="the log lines " + ", ".join(f'"{p}"' for p in PHASES) + ", in this order",
            observed=f"no line with {', '.join(repr(m) for m in missing)}; the app printed:"
            + tail(output),
        )
    order = sorted(PHASES, key=lambda phase: firsts[phase].position)
    if order != list(PHASES):
        fail(
            action,
            expected="the log lines in the order " + " → ".join(PHASES),
            observed="they came as " + " → ".join(order),
        )
    started = firsts["shutdown started"].line
    if reason is not None and f"reason={reason}" not in started:
        fail(action, expected=f'"shutdown started reason={reason}"', observed=f'"{started}"')


def start_slow_get(app: AppProcess, *, seconds_in: float = 0.5) -> Future[Outcome]:
    """`GET /users` (one store call, STORE_LATENCY_MS long), sent now; returns once it has
    been in flight for `seconds_in`. `no-store`: a response cache (exercise 10.1) must let it
    through to the store."""
    slow = app.in_background("GET", "/users", timeout=60, headers=NO_STORE)
    # Sent whole, then read by the server: uvicorn closes a connection whose request it
    # has not read yet when the shutdown begins.
    slow.wait_sent(5)
    time.sleep(seconds_in)
    if slow.done():
        outcome = slow.result()
        fail(
            "GET /users (Cache-Control: no-store) with STORE_LATENCY_MS set, before any signal",
            expected="a request still in flight after 0.5 s (every store call is slow)",
            observed=f"it had already finished: {outcome.describe()}",
        )
    return slow


def signal_and_wait(app: AppProcess, sig: signal.Signals, *, timeout: float) -> int | None:
    """Send `sig`; the exit code, or None if the process still runs after `timeout` s."""
    app.send_signal(sig)
    return app.wait_exit(timeout)


def json_of(outcome: Outcome) -> Any:
    """The JSON body of `outcome`, or None if it has none."""
    try:
        return json.loads(outcome.body)
    except ValueError:
        return None


def create_user(app: AppProcess) -> dict[str, Any]:
    body = {"email": unique_email("shutdown"), "name": "Shut Down", "password": "correct-horse-1"}
    outcome = app.request("POST", "/users", json=body, timeout=30)
    if outcome.status != 201:
        fail("POST /users", expected="201 with the new user", observed=outcome.describe())
    return json_of(outcome)


def jobs_of(app: AppProcess) -> list[dict[str, Any]]:
    outcome = app.request("GET", "/jobs/api/jobs", headers=ADMIN, timeout=10)
    data = json_of(outcome) if outcome.status == 200 else None
    if not isinstance(data, list):
        fail(
            "GET /jobs/api/jobs (admin token), the job records of exercise 10.2",
            expected="200 with a JSON list of job records",
            observed=outcome.describe(),
        )
    return data


def welcome_job_of(app: AppProcess, user_id: int) -> dict[str, Any] | None:
    """The send_welcome_email job of `user_id`, or None if there is none (yet)."""
    for job in jobs_of(app):
        if (
            job.get("name") == "send_welcome_email"
            and (job.get("args") or {}).get("user_id") == user_id
        ):
            return job
    return None


def wait_for_welcome_job(
    app: AppProcess, user_id: int, *, statuses: Sequence[str], timeout: float
) -> dict[str, Any]:
    """The send_welcome_email job of `user_id`, once its status is one of `statuses`."""
    job = eventually(
        lambda: welcome_job_of(app, user_id),
        until=lambda job: job is not None and job.get("status") in statuses,
        timeout=timeout,
    )
    if job is None or job.get("status") not in statuses:
        fail(
            f"POST /users (user {user_id}), then GET /jobs/api/jobs",
            expected=f"its send_welcome_email job {' or '.join(statuses)} within {timeout:g} s",
            observed="no such job"
            if job is None
            else f"status {job.get('status')!r}, attempts {job.get('attempts')!r}",
        )
    return job
