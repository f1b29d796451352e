"""Graded checks for the stretch goals of exercise 10.3 (bonus points).

Like the required checks, each drives real server processes with real signals; the
webhook receiver and the keep-alive client are the grader's own, on loopback.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from shutdowncheck import (
    ADMIN,
    SIGTERM,
    clean_exit,
    create_user,
    exit_text,
    jobs_of,
    json_of,
    phase_lines,
    signal_and_wait,
    tail,
    wait_for_welcome_job,
)

from grader._process import loopback_client
from grader.testing import eventually, fail

# --- pre-shutdown-hooks: hooks run first, each within its bound -------------------------------


@pytest.mark.criterion("pre-shutdown-hooks")
def test_a_pre_shutdown_hook_runs_before_the_drain(launch_app) -> None:
    app = launch_app(SHUTDOWN_TEST_HOOK_SECONDS=0.5)
    code = signal_and_wait(app, SIGTERM, timeout=20)
    output = app.output()
    hook = output.find("pre-shutdown hook test-hook done")
    phases = {line.phase: line.position for line in reversed(phase_lines(output))}
    started, drained = phases.get("shutdown started", -1), phases.get("shutdown requests drained")
    if hook < 0 or not started < hook < (drained if drained is not None else -1):
        fail(
            "SIGTERM with SHUTDOWN_TEST_HOOK_SECONDS=0.5",
            expected='"pre-shutdown hook test-hook done" after "shutdown started" and before'
            ' "shutdown requests drained"',
            observed=("no such line" if hook < 0 else "it came out of that order")
            + "; the app printed:"
            + tail(output),
        )
    if not clean_exit(code):
        fail("SIGTERM", expected="a clean exit", observed=exit_text(code, 20))


@pytest.mark.criterion("pre-shutdown-hooks")
def test_a_hung_pre_shutdown_hook_is_cut_off(launch_app) -> None:
    app = launch_app(SHUTDOWN_TEST_HOOK_SECONDS=30, PRE_SHUTDOWN_HOOK_TIMEOUT_SECONDS=1)
    code = signal_and_wait(app, SIGTERM, timeout=6)
    timed_out = "pre-shutdown hook test-hook timed out" in app.output()
    if code is None or not timed_out:
        fail(
            "SIGTERM with a 30 s hook (SHUTDOWN_TEST_HOOK_SECONDS=30) bounded at 1 s"
            " (PRE_SHUTDOWN_HOOK_TIMEOUT_SECONDS=1)",
            expected='"pre-shutdown hook test-hook timed out", and an exit within 6 s',
            observed=exit_text(code, 6) + "; the app printed:" + tail(app.output()),
        )


# --- replica-coordination: a draining instance tells its peers --------------------------------


def _instances(app: Any) -> dict[str, str]:
    outcome = app.request("GET", "/admin/instances", headers=ADMIN)
    listed = json_of(outcome) if outcome.status == 200 else None
    if not isinstance(listed, list):
        fail(
            "GET /admin/instances (admin token)",
            expected="200 with a JSON list of {id, state, last_seen}",
            observed=outcome.describe(),
        )
    return {str(item.get("id")): str(item.get("state")) for item in listed}


def _wait_instances(app: Any, want: dict[str, str | None], timeout: float) -> dict[str, str]:
    """The registry as `app` lists it, once every instance in `want` has its state there
    (None: not listed), or as it stands when `timeout` runs out."""
    return eventually(
        lambda: _instances(app),
        until=lambda seen: all(seen.get(name) == state for name, state in want.items()),
        timeout=timeout,
    )


@pytest.mark.criterion("replica-coordination")
def test_a_draining_instance_is_seen_by_its_peer(launch_app, shared_redis) -> None:
    settings = {
        "INSTANCE_REGISTRY": "redis",
        "REDIS_URL": shared_redis.url,
        "INSTANCE_REGISTRY_PREFIX": shared_redis.prefix,
    }
    a = launch_app(INSTANCE_ID="a", SHUTDOWN_DRAIN_DELAY_SECONDS=2, **settings)
    b = launch_app(INSTANCE_ID="b", **settings)
    both = _wait_instances(b, {"a": "serving", "b": "serving"}, timeout=5)
    if both.get("a") != "serving" or both.get("b") != "serving":
        fail("GET /admin/instances on b, with a and b running", expected="a and b, both serving",
             observed=json.dumps(both))  # fmt: skip
    a.send_signal(SIGTERM)
    draining = _wait_instances(b, {"a": "draining"}, timeout=1.5)
    if draining.get("a") != "draining":
        fail(
            "SIGTERM to a (SHUTDOWN_DRAIN_DELAY_SECONDS=2), then GET /admin/instances on b",
            expected="a listed as draining within 1.5 s",
            observed=json.dumps(draining),
        )
    a.wait_exit(20)
    gone = _wait_instances(b, {"a": None}, timeout=3)
    if "a" in gone:
        fail("a has exited; GET /admin/instances on b", expected="a no longer listed",
             observed=json.dumps(gone))  # fmt: skip


# --- health-state: not ready while draining, still alive ---------------------------------------


@pytest.mark.criterion("health-state")
def test_readiness_fails_while_draining_but_liveness_holds(launch_app) -> None:
    app = launch_app(SHUTDOWN_DRAIN_DELAY_SECONDS=3)
    before = app.request("GET", "/health/ready")
    if before.status != 200:
        fail("GET /health/ready before any signal", expected="200", observed=before.describe())
    app.send_signal(SIGTERM)
    time.sleep(0.5)
    ready, live = app.request("GET", "/health/ready"), app.request("GET", "/health/live")
    body = json_of(ready)
    draining = isinstance(body, dict) and body.get("status") == "draining"
    if ready.status != 503 or not draining or live.status != 200:
        fail(
            "SIGTERM (SHUTDOWN_DRAIN_DELAY_SECONDS=3), then 0.5 s later GET /health/ready and"
            " GET /health/live",
            expected='ready: 503 {"status": "draining"}; live: 200',
            observed=f"ready: {ready.describe()} {ready.body[:80]}; live: {live.describe()}",
        )


# --- connection-draining: keep-alive clients are told to go -----------------------------------


@pytest.mark.criterion("connection-draining")
def test_keep_alive_clients_are_told_to_close(launch_app) -> None:
    app = launch_app(SHUTDOWN_DRAIN_DELAY_SECONDS=2)
    with loopback_client(timeout=5) as client:
        first = app.request("GET", "/health", client=client)
        app.send_signal(SIGTERM)
        time.sleep(0.3)
        second = app.request("GET", "/health", client=client)
    action = "GET /health twice on one keep-alive connection, SIGTERM in between"
    if first.status != 200 or second.status != 200:
        fail(action, expected="both answered 200 (the drain delay is 2 s)",
             observed=f"{first.describe()}, then {second.describe()}")  # fmt: skip
    if second.headers.get("connection", "").lower() != "close":
        fail(
            action,
            expected="the second answer carries Connection: close",
            observed=f"Connection: {second.headers.get('connection', '(missing)')}",
        )
    time.sleep(2.7)
    late = app.request("GET", "/health")
    if late.status not in (None, 503):
        fail(
            "3 s after SIGTERM (SHUTDOWN_DRAIN_DELAY_SECONDS=2), GET /health on a new connection",
            expected="refused (or 503): the drain is over",
            observed=late.describe(),
        )


# --- notifications: a webhook hears of the shutdown --------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    events: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        try:
            self.events.append(json.loads(self.rfile.read(length) or b"null"))
        except ValueError:
            self.events.append({"unreadable": True})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback HTTP server that keeps the JSON bodies POSTed to it."""
    events: list[dict[str, Any]] = []
    handler = type("Receiver", (_Receiver,), {"events": events})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/shutdown", events
    server.shutdown()
    server.server_close()


@pytest.mark.criterion("notifications")
def test_shutdown_is_announced_to_the_webhook(launch_app, webhook) -> None:
    url, events = webhook
    app = launch_app(SHUTDOWN_WEBHOOK_URL=url, INSTANCE_ID="notify-1")
    code = signal_and_wait(app, SIGTERM, timeout=20)
    names = [event.get("event") for event in events if isinstance(event, dict)]
    if names[:1] != ["shutdown.started"] or "shutdown.completed" not in names:
        fail(
            f"SIGTERM with SHUTDOWN_WEBHOOK_URL={url}",
            expected='POSTs with "event": "shutdown.started", then "shutdown.completed"',
            observed=f"{json.dumps(events)[:200] or 'nothing'}; exit code {code}",
        )
    started = events[names.index("shutdown.started")]
    if started.get("instance") != "notify-1" or started.get("reason") != "SIGTERM":
        fail("the shutdown.started notification", expected='"instance": "notify-1",'
             ' "reason": "SIGTERM"', observed=json.dumps(started))  # fmt: skip


# --- graceful-restart: a new process takes over without refusing anyone ----------------------


@pytest.mark.criterion("graceful-restart")
def test_sighup_swaps_the_server_process_without_refusing_requests(launch_app) -> None:
    app = launch_app()
    first = json_of(app.request("GET", "/health")) or {}
    if not isinstance(first.get("pid"), int):
        fail("GET /health", expected='a JSON body with "pid"', observed=json.dumps(first))
    failures: list[str] = []
    sent = 0

    def probe() -> object:
        """GET /health on a new connection; the pid that answered (None on a failure)."""
        nonlocal sent
        outcome = app.request("GET", "/health", timeout=5)
        sent += 1
        time.sleep(0.05)
        if outcome.status != 200:
            failures.append(outcome.describe())
            return None
        return (json_of(outcome) or {}).get("pid")

    app.send_signal(signal.SIGHUP)
    deadline, new_pid = time.monotonic() + 15, None
    while time.monotonic() < deadline and new_pid is None:
        pid = probe()
        new_pid = pid if pid not in (None, first["pid"]) else None
    for _ in range(20):  # the old process is going away: keep asking a little longer
        probe()
    action = "SIGHUP, with GET /health on a new connection every 50 ms"
    if new_pid is None or failures or not app.alive:
        fail(
            action,
            expected="within 15 s a new pid answers, no request fails, and the process the"
            " grader started still runs",
            observed=f"pid {first['pid']} → {new_pid}; {len(failures)} of {sent} failed"
            + (f" (first: {failures[0]})" if failures else "")
            + ("" if app.alive else "; the process exited"),
        )
    code = signal_and_wait(app, SIGTERM, timeout=20)
    if not clean_exit(code):
        fail(f"{action}, then SIGTERM", expected="a clean exit", observed=exit_text(code, 20))


# --- chaos: a SIGKILL loses no accepted job ----------------------------------------------------


FINAL = ("succeeded", "failed")


@pytest.mark.criterion("chaos")
def test_no_accepted_job_is_lost_to_a_sigkill(launch_app) -> None:
    app = launch_app(JOBS_WORKER="inprocess", EMAIL_LATENCY_MS=3000, JOBS_WORKERS=1)
    users = [create_user(app) for _ in range(3)]
    wait_for_welcome_job(app, users[0]["id"], statuses=("running",), timeout=10)
    app.kill()  # SIGKILL to the whole process group: no cleanup of any kind
    again = launch_app(JOBS_WORKER="inprocess", EMAIL_LATENCY_MS=100)  # same JOBS_DB_PATH
    ids = {user["id"] for user in users}
    deadline = time.monotonic() + 20
    while True:
        welcome = {
            (job.get("args") or {}).get("user_id"): job
            for job in jobs_of(again)
            if job.get("name") == "send_welcome_email"
        }
        report = {
            user_id: (welcome[user_id].get("status"), welcome[user_id].get("attempts"))
            if user_id in welcome
            else ("lost", 0)
            for user_id in sorted(ids)
        }
        if all(status in FINAL for status, _ in report.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not all(status in FINAL for status, _ in report.values()):
        fail(
            "3 welcome jobs accepted, SIGKILL while the first runs, then a restart on the same"
            " JOBS_DB_PATH",
            expected="every job succeeded or failed within 20 s of the restart: none lost,"
            " none left queued or running",
            observed="; ".join(
                f"user {user_id}: {status}, {attempts} attempts"
                for user_id, (status, attempts) in report.items()
            ),
        )
