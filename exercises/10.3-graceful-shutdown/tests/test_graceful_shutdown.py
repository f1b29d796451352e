"""Graded checks for exercise 10.3, graceful shutdown: one section per acceptance criterion.

Each check starts the app as a real server (`python -m <package>`) through `launch_app`,
which kills the whole process group when the check ends, whatever happened. Slow requests
come from the starter's simulated store latency: `GET /users` makes one store call, so with
STORE_LATENCY_MS=3000 it is in flight for 3 s.
"""

from __future__ import annotations

import time

import pytest
from shutdowncheck import (
    ADMIN,
    SIGTERM,
    SLOW_MS,
    check_phases_in_order,
    clean_exit,
    create_user,
    exit_text,
    json_of,
    phase_lines,
    signal_and_wait,
    start_slow_get,
    tail,
    wait_for_welcome_job,
)

from grader._process import describe_exit
from grader.testing import fail

# --- shutdown-events: the app hears of the shutdown when it is asked to stop -----------------


@pytest.mark.criterion("shutdown-events")
def test_shutdown_starts_when_the_signal_arrives_not_after_the_drain(launch_app) -> None:
    app = launch_app(STORE_LATENCY_MS=SLOW_MS)
    slow = start_slow_get(app)
    mark = len(app.output())
    app.send_signal(SIGTERM)
    # The request has 2.5 s to go: an app that only hears of the shutdown when uvicorn has
    # drained the requests (the lifespan's end) logs it 2.5 s from now at the earliest.
    heard = app.wait_for_output(r"shutdown started reason=SIGTERM", timeout=1.5, after=mark)
    action = f"GET /users in flight (STORE_LATENCY_MS={SLOW_MS}), then SIGTERM"
    if heard is None:
        slow.result(timeout=30)
        fail(
            action,
            expected='"shutdown started reason=SIGTERM" logged at once, while the request is'
            " still in flight (register for the signal, not only the lifespan's end)",
            observed="no such line within 1.5 s of the signal; the app printed:"
            + tail(app.output()),
        )
    slow.result(timeout=30)
    app.wait_exit(15)
    complete = [line for line in phase_lines(app.output()) if line.phase == "shutdown complete"]
    if not complete or complete[-1].position < heard.start():
        fail(
            action,
            expected='"shutdown complete elapsed_ms=..." logged at the end of the shutdown',
            observed="no such line after it; the app printed:" + tail(app.output()),
        )


# --- stop-accepting: no new work once the shutdown has begun ---------------------------------


@pytest.mark.criterion("stop-accepting")
def test_new_connections_are_refused_during_the_drain(launch_app) -> None:
    app = launch_app(STORE_LATENCY_MS=SLOW_MS)
    slow = start_slow_get(app)
    app.send_signal(SIGTERM)
    time.sleep(0.5)
    late = app.request("GET", "/health", timeout=3)
    # A connection left hanging is no better than a served one: its client waits for its
    # own timeout instead of trying another instance at once.
    hung = late.status is None and (late.error or "").startswith("timed out")
    if late.status not in (None, 503) or hung:
        fail(
            f"GET /users in flight (STORE_LATENCY_MS={SLOW_MS}), SIGTERM, then 0.5 s later"
            " GET /health on a new connection",
            expected="the connection refused (or a 503) at once: the server takes no new work",
            observed=late.describe(),
        )
    slow.result(timeout=30)


# --- in-flight: requests that started before the signal get their answer --------------------


@pytest.mark.criterion("in-flight")
def test_a_request_in_flight_completes_after_sigterm(launch_app) -> None:
    app = launch_app(STORE_LATENCY_MS=SLOW_MS)
    slow = start_slow_get(app)
    code = signal_and_wait(app, SIGTERM, timeout=20)
    outcome = slow.result(timeout=10)
    action = f"GET /users in flight (STORE_LATENCY_MS={SLOW_MS}), then SIGTERM"
    if outcome.status != 200 or not isinstance(json_of(outcome), list):
        fail(
            action,
            expected="the request still gets its 200 with the JSON list of users",
            observed=outcome.describe() + "; the app printed:" + tail(app.output()),
        )
    if not clean_exit(code):
        fail(
            action,
            expected="the process exits by itself once the request is answered (code 0, or"
            " by the SIGTERM that uvicorn raises again once it has shut down)",
            observed=exit_text(code, 20),
        )


# --- resources: the job worker stops without losing work, then the rest closes ---------------


@pytest.mark.criterion("resources")
def test_a_running_job_finishes_before_the_app_closes(launch_app) -> None:
    app = launch_app(JOBS_WORKER="inprocess", EMAIL_LATENCY_MS=2000)
    user = create_user(app)
    job = wait_for_welcome_job(app, user["id"], statuses=("running",), timeout=10)
    action = "SIGTERM while a welcome email job runs (JOBS_WORKER=inprocess, EMAIL_LATENCY_MS=2000)"
    code = signal_and_wait(app, SIGTERM, timeout=20)
    output = app.output()
    sent = output.find("welcome email sent")
    complete = [line for line in phase_lines(output) if line.phase == "shutdown complete"]
    if not clean_exit(code) or sent < 0 or not complete or sent > complete[-1].position:
        fail(
            action,
            expected='the job finishes ("welcome email sent") before "shutdown complete",'
            " then the process exits by itself",
            observed=exit_text(code, 20) + "; the app printed:" + tail(output),
        )
    check_phases_in_order(app, action=action)
    again = launch_app(JOBS_WORKER="none")  # the same folder: the same JOBS_DB_PATH
    record = wait_for_welcome_job(
        again, user["id"], statuses=("succeeded", "failed", "queued", "running"), timeout=5
    )
    if (record.get("status"), record.get("attempts")) != ("succeeded", 1):
        fail(
            f"{action}, then a restart on the same JOBS_DB_PATH and GET /jobs/api/jobs",
            expected=f"job {job.get('id')} succeeded with 1 attempt: finished, not cut off"
            " or run twice",
            observed=f"status {record.get('status')!r}, attempts {record.get('attempts')!r}",
        )


# --- timeout: a request slower than SHUTDOWN_TIMEOUT_SECONDS does not hold the process -------


@pytest.mark.criterion("timeout")
def test_a_request_longer_than_the_timeout_is_cut_off(launch_app) -> None:
    app = launch_app(STORE_LATENCY_MS=8000, SHUTDOWN_TIMEOUT_SECONDS=1)
    slow = start_slow_get(app)
    signalled = time.monotonic()
    code = signal_and_wait(app, SIGTERM, timeout=4)
    took = time.monotonic() - signalled
    action = "GET /users that takes 8 s in flight, SHUTDOWN_TIMEOUT_SECONDS=1, then SIGTERM"
    if code is None:
        fail(
            action,
            expected="the process exits within 4 s of the signal: the request is cut off after 1 s",
            observed="still running 4 s after the signal (waiting for the request?)",
        )
    outcome = slow.result(timeout=10)
    if outcome.status == 200:
        fail(
            action,
            expected="the request cut off (no 200): it outlived the shutdown timeout",
            observed=f"{outcome.describe()}, the process exited {took:.1f} s after the signal",
        )


# --- logged: each phase logged, with how long the shutdown had taken -------------------------


@pytest.mark.criterion("logged")
def test_each_shutdown_phase_is_logged_with_its_elapsed_time(launch_app) -> None:
    app = launch_app()
    code = signal_and_wait(app, SIGTERM, timeout=20)
    action = "SIGTERM to an idle server"
    check_phases_in_order(app, action=action)
    lines = [line for line in phase_lines(app.output()) if line.phase != "shutdown started"]
    untimed = [line.line for line in lines if line.elapsed_ms is None]
    if untimed:
        fail(action, expected="elapsed_ms=<n> on every shutdown line but the first",
             observed=f'none on "{untimed[0]}"')  # fmt: skip
    times = [line.elapsed_ms for line in lines]
    if times != sorted(times):
        fail(
            action,
            expected="elapsed_ms that never goes down from one phase to the next",
            observed=", ".join(f"{line.phase}: {line.elapsed_ms:g}" for line in lines),
        )
    if not clean_exit(code):
        fail(action, expected="a clean exit", observed=exit_text(code, 20))


# --- admin-shutdown: the same shutdown, asked for over HTTP by an admin ----------------------


@pytest.mark.criterion("admin-shutdown")
def test_admin_shutdown_needs_the_token(launch_app) -> None:
    app = launch_app()
    refused = app.request("POST", "/admin/shutdown")
    time.sleep(0.5)
    if refused.status != 401 or not app.alive:
        fail(
            "POST /admin/shutdown without Authorization",
            expected="401, and the server keeps running",
            observed=f"{refused.describe()}, server {'running' if app.alive else 'gone'}",
        )


@pytest.mark.criterion("admin-shutdown")
def test_admin_shutdown_takes_the_sigterm_path(launch_app) -> None:
    app = launch_app()
    accepted = app.request("POST", "/admin/shutdown", headers=ADMIN)
    action = "POST /admin/shutdown with the admin token"
    if accepted.status != 202:
        fail(action, expected="202, then a graceful shutdown", observed=accepted.describe())
    code = app.wait_exit(20)
    if not clean_exit(code):
        fail(
            action,
            expected="the process shuts down and exits by itself",
            observed=exit_text(code, 20) + "; the app printed:" + tail(app.output()),
        )
    check_phases_in_order(app, action=action, reason="admin")


# --- container-stop: `docker stop` never has to SIGKILL ---------------------------------------


@pytest.mark.criterion("container-stop")
def test_docker_stop_ends_in_a_clean_exit_within_the_grace_period(launch_app) -> None:
    app = launch_app(JOBS_WORKER="inprocess", EMAIL_LATENCY_MS=30000, SHUTDOWN_TIMEOUT_SECONDS=2)
    user = create_user(app)
    wait_for_welcome_job(app, user["id"], statuses=("running",), timeout=10)
    stop = app.docker_stop(grace=8)
    if stop.killed or not clean_exit(stop.exit_code):
        fail(
            "docker stop --time 8 (SIGTERM, SIGKILL 8 s later) while a 30 s welcome email job"
            " runs, SHUTDOWN_TIMEOUT_SECONDS=2",
            expected="a clean exit within the 8 s grace, without the SIGKILL",
            observed=(
                "still running after 8 s: killed"
                if stop.killed
                else f"{describe_exit(stop.exit_code)} after {stop.seconds:.1f} s"
            )
            + "; the app printed:"
            + tail(app.output()),
        )
