"""The reference app's background jobs (exercise 10.2): the required criteria, restarts,
the standalone worker process, and the design points the guide makes.

Every app here gets its own JOBS_DB_PATH under tmp_path; apps that share one share a queue,
as processes would. The stretch goals are in `test_reference_jobs_stretch.py`.
"""

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from asgi_lifespan import LifespanManager
from fastapi.testclient import TestClient

from solutions.app import Settings, create_app
from solutions.app.job_registry import JobRegistry
from solutions.app.job_worker import RecurringJob
from solutions.app.jobs import JobQueue

from .helpers import ADMIN_TOKEN, bearer, create_user, metric_samples

ADMIN = bearer(ADMIN_TOKEN)
REPO_ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# make_app(**settings_overrides) -> an entered TestClient of a fresh app
AppFactory = Callable[..., TestClient]


def job_settings(db_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "admin_token": ADMIN_TOKEN,
        "store_latency_ms": 0,
        "jobs_db_path": str(db_path),
        "job_retry_delay_seconds": 0.1,
        "jobs_shutdown_timeout_seconds": 1,
    }
    return Settings(_env_file=None, **(values | overrides))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite3"


@pytest.fixture
def make_app(db_path: Path) -> Iterator[AppFactory]:
    """Build apps on this test's JOBS_DB_PATH; every one still open is shut down at the end."""
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(job_settings(db_path, **overrides)))
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def eventually(probe: Callable[[], T], until: Callable[[T], bool], timeout: float = 5) -> T:
    """Call ``probe`` every 50 ms until ``until(value)``; fail with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"still not there after {timeout} s: {value!r}")
        time.sleep(0.05)


def job(client: TestClient, job_id: str) -> dict[str, Any]:
    response = client.get(f"/jobs/api/jobs/{job_id}", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


def jobs_named(client: TestClient, name: str) -> list[dict[str, Any]]:
    response = client.get("/jobs/api/jobs", params={"name": name}, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


def welcome_job(client: TestClient, user_id: int) -> dict[str, Any]:
    """The one welcome email job of this user (waits for it to be listed)."""
    found = eventually(
        lambda: [
            j for j in jobs_named(client, "send_welcome_email") if j["args"] == {"user_id": user_id}
        ],
        lambda jobs: len(jobs) > 0,
    )
    assert len(found) == 1, found
    return found[0]


def finished(record: dict[str, Any]) -> bool:
    return record["status"] in ("succeeded", "failed", "cancelled")


def wait_finished(client: TestClient, job_id: str, timeout: float = 5) -> dict[str, Any]:
    return eventually(lambda: job(client, job_id), finished, timeout)


def enqueue(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/jobs/api/jobs", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()


def log_lines(caplog: pytest.LogCaptureFixture, *needles: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if all(n in r.getMessage() for n in needles)]


# --- job-framework, enqueue-on-create, job-processing -----------------------------------


def test_a_new_user_gets_one_welcome_email_job_that_sends_it(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_app()
    user = create_user(client)
    record = welcome_job(client, user["id"])
    assert record["priority"] == "normal" and record["batch_id"] is None

    done = wait_finished(client, record["id"])

    assert (done["status"], done["attempts"], done["error"]) == ("succeeded", 1, None)
    created, started, ended = (
        datetime.fromisoformat(done[key]) for key in ("created_at", "started_at", "finished_at")
    )
    assert created <= started <= ended
    assert log_lines(caplog, f"welcome email sent to={user['email']}")


def test_post_users_only_enqueues_so_a_slow_failing_mail_server_costs_it_nothing(
    make_app: AppFactory,
) -> None:
    client = make_app(email_latency_ms=2000, email_fail_first=1000, jobs_shutdown_timeout_seconds=0)
    started = time.monotonic()
    user = create_user(client)
    assert time.monotonic() - started < 1.0
    assert welcome_job(client, user["id"])["status"] in ("queued", "running")


def test_job_store_calls_are_counted_apart_from_the_requests(make_app: AppFactory) -> None:
    # store_operations_total keeps counting requests only, which 10.1's checks rely on.
    client = make_app()
    user = create_user(client)
    wait_finished(client, welcome_job(client, user["id"])["id"])
    job_samples = metric_samples(client, "job_store_operations_total")
    request_samples = metric_samples(client, "store_operations_total")
    assert job_samples[(("operation", "get"),)] == 1
    assert request_samples[(("operation", "get"),)] == 0


def test_a_user_deleted_before_the_job_runs_gets_no_email_and_the_job_succeeds(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    producer = make_app(jobs_worker="none")
    user = create_user(producer)
    assert producer.delete(f"/users/{user['id']}").status_code == 204
    worker = make_app()

    done = wait_finished(worker, welcome_job(worker, user["id"])["id"])

    assert (done["status"], done["attempts"]) == ("succeeded", 1)
    assert not log_lines(caplog, f"welcome email sent to={user['email']}")
    assert log_lines(caplog, "welcome email skipped", f"user_id={user['id']}")


# --- JOBS_WORKER=none, restarts, the worker process ---------------------------------------


def test_a_job_enqueued_before_a_restart_runs_after_it(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    before = make_app(jobs_worker="none")
    user = create_user(before)
    queued = welcome_job(before, user["id"])
    time.sleep(0.5)  # a worker would have taken it by now
    assert job(before, queued["id"])["status"] == "queued"
    before.__exit__(None, None, None)  # the first app stops: only the SQLite file remains

    after = make_app()  # same JOBS_DB_PATH, with a worker

    done = wait_finished(after, queued["id"])
    assert (done["status"], done["attempts"]) == ("succeeded", 1)
    assert log_lines(caplog, f"welcome email sent to={user['email']}")


@pytest.mark.skipif(sys.platform == "win32", reason="stops the worker with SIGTERM")
def test_python_m_worker_runs_jobs_from_the_shared_file(
    make_app: AppFactory, db_path: Path, tmp_path: Path
) -> None:
    api = make_app(jobs_worker="none")
    queued = enqueue(api, name="sleep", args={"seconds": 0.1})
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "JOBS_DB_PATH": str(db_path),
        "PYTHONUNBUFFERED": "1",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "solutions.app", "worker"],
        cwd=tmp_path,  # no .env file of the developer applies
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        done = wait_finished(api, queued["id"], timeout=15)
        assert (done["status"], done["attempts"]) == ("succeeded", 1)
        worker.send_signal(signal.SIGTERM)  # graceful: nothing is running, it exits at once
        output, _ = worker.communicate(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, output
    assert f"job succeeded id={queued['id']}" in output


def test_apps_built_in_one_process_each_have_their_own_queue(db_path: Path) -> None:
    first, second = (create_app(job_settings(db_path)) for _ in range(2))
    assert first.state.jobs.huey is not second.state.jobs.huey
    assert first.state.jobs.services.email is not second.state.jobs.services.email


def test_the_in_process_worker_leaves_the_signal_handlers_to_the_server(db_path: Path) -> None:
    def handlers() -> tuple[Any, Any]:
        return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    async def handlers_before_and_while_running() -> tuple[Any, Any]:
        before = handlers()  # asyncio.run's own SIGINT handler included
        # Lifespan on this (main) thread, where huey's Consumer.run() would install its own.
        async with LifespanManager(create_app(job_settings(db_path))):
            return before, handlers()

    before, running = asyncio.run(handlers_before_and_while_running())
    assert running == before


def test_shutdown_waits_for_a_running_job_only_so_long_and_records_it_interrupted(
    make_app: AppFactory,
) -> None:
    client = make_app(jobs_shutdown_timeout_seconds=0.3)
    running = enqueue(client, name="sleep", args={"seconds": 3})
    eventually(lambda: job(client, running["id"]), lambda r: r["status"] == "running")

    started = time.monotonic()
    client.__exit__(None, None, None)
    assert time.monotonic() - started < 2

    record = JobRegistry(str(client.app.state.settings.jobs_db_path)).get(running["id"])
    assert record is not None and record.status == "failed" and record.dead_letter
    assert record.error is not None and "interrupted" in record.error


# --- dashboard ------------------------------------------------------------------------------


def test_dashboard_needs_the_admin_token_and_lists_recent_jobs(make_app: AppFactory) -> None:
    client = make_app(jobs_worker="none")
    for headers in ({}, bearer("wrong-token")):
        response = client.get("/jobs", headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["detail"]
    assert client.get("/jobs/api/jobs").status_code == 401
    queued = enqueue(client, name="sleep", args={"seconds": 0.1})

    page = client.get("/jobs", headers=ADMIN)

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["Cache-Control"] == "no-store"
    assert queued["id"] in page.text and "queued: 1" in page.text


def test_dashboard_escapes_what_it_shows() -> None:
    from solutions.app.job_registry import JobRecord
    from solutions.app.routers.jobs import _job_row

    record = JobRecord(
        id="x",
        name="sleep",
        args={},
        status="failed",
        attempts=1,
        priority="normal",
        created_at=datetime.now(),
        run_at=None,
        started_at=None,
        finished_at=None,
        error="<script>alert(1)</script>",
        batch_id=None,
    )
    assert "<script>" not in _job_row(record) and "&lt;script&gt;" in _job_row(record)


def test_job_api_validates_names_and_args(make_app: AppFactory) -> None:
    client = make_app(jobs_worker="none")
    bad_bodies = [
        {"name": "no_such_job"},
        {"name": "sleep", "args": {"seconds": 61}},
        {"name": "sleep", "args": {"seconds": 1, "extra": True}},
        {"name": "send_welcome_email", "args": {}},
        {"name": "purge_deleted_users", "args": {"days": 3}},
        {"name": "sleep", "args": {"seconds": 1}, "priority": "urgent"},
        {"name": "sleep", "args": {"seconds": 1}, "delay_seconds": -1},
    ]
    for body in bad_bodies:
        response = client.post("/jobs/api/jobs", json=body, headers=ADMIN)
        assert response.status_code == 422, body
        assert response.json()["detail"], body
    assert client.get("/jobs/api/jobs", headers=ADMIN).json() == []
    assert client.get("/jobs/api/jobs/nope", headers=ADMIN).status_code == 404
    assert client.get("/jobs/api/jobs?status=lost", headers=ADMIN).status_code == 422


# --- retries ---------------------------------------------------------------------------------


def test_failed_attempts_are_retried_with_doubling_delays(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_app(email_fail_first=2, job_max_retries=3, job_retry_delay_seconds=0.5)
    user = create_user(client)
    job_id = welcome_job(client, user["id"])["id"]

    done = wait_finished(client, job_id)

    assert (done["status"], done["attempts"]) == ("succeeded", 3)
    assert "EMAIL_FAIL_FIRST" in done["error"]  # the last failure stays on record
    assert len(log_lines(caplog, "job failed", job_id)) == 2
    starts = [r.created for r in log_lines(caplog, "job started", job_id)]
    assert len(starts) == 3
    first_wait, second_wait = starts[1] - starts[0], starts[2] - starts[1]
    # 0.5 s, then 1 s; a fixed delay would give at most 0.5 s plus two polls (0.25 s each).
    assert first_wait >= 0.5 and second_wait >= 1.0, (first_wait, second_wait)


def test_a_job_out_of_retries_fails_into_the_dead_letter_queue_and_requeue_runs_it(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_app(email_fail_first=2, job_max_retries=1)
    user = create_user(client)
    job_id = welcome_job(client, user["id"])["id"]

    failed = wait_finished(client, job_id)

    assert (failed["status"], failed["attempts"]) == ("failed", 2)
    assert failed["error"].startswith("EmailDeliveryError")
    assert log_lines(caplog, "job failed", job_id, "dead-letter")
    dead = client.get("/jobs/api/dead-letter", headers=ADMIN).json()
    assert [j["id"] for j in dead] == [job_id]

    requeued = client.post(f"/jobs/api/dead-letter/{job_id}/requeue", headers=ADMIN)

    assert requeued.status_code == 201
    new = requeued.json()
    assert new["id"] != job_id
    assert (new["name"], new["args"], new["status"]) == (
        "send_welcome_email",
        failed["args"],
        "queued",
    )
    assert client.get("/jobs/api/dead-letter", headers=ADMIN).json() == []
    assert client.post(f"/jobs/api/dead-letter/{job_id}/requeue", headers=ADMIN).status_code == 404
    assert wait_finished(client, new["id"])["status"] == "succeeded"  # the 3rd send works
    assert log_lines(caplog, f"welcome email sent to={user['email']}")


def test_with_every_send_failing_the_job_fails_after_all_retries(make_app: AppFactory) -> None:
    client = make_app(email_fail_first=1000, job_max_retries=2, job_retry_delay_seconds=0.05)
    user = create_user(client)
    done = wait_finished(client, welcome_job(client, user["id"])["id"])
    assert (done["status"], done["attempts"]) == ("failed", 3)
    assert done["error"] and done["finished_at"]


# --- recurring cleanup ------------------------------------------------------------------------


def admin_user_ids(client: TestClient) -> set[int]:
    users = client.get("/admin/users?include_deleted=true", headers=ADMIN).json()
    return {user["id"] for user in users}


def test_cleanup_purges_soft_deleted_users_every_interval(make_app: AppFactory) -> None:
    client = make_app(user_retention_days=0, cleanup_interval_seconds=0.5)
    live, deleted = create_user(client), create_user(client)
    assert client.delete(f"/users/{deleted['id']}").status_code == 204

    ids = eventually(lambda: admin_user_ids(client), lambda ids: deleted["id"] not in ids)

    assert live["id"] in ids
    purges = eventually(
        lambda: jobs_named(client, "purge_deleted_users"),
        lambda jobs: sum(j["status"] == "succeeded" for j in jobs) >= 2,  # it recurs
    )
    assert all(j["args"] == {} for j in purges)
    assert metric_samples(client, "job_store_operations_total")[(("operation", "purge"),)] >= 2


def test_cleanup_keeps_users_deleted_within_the_retention_period(make_app: AppFactory) -> None:
    client = make_app(cleanup_interval_seconds=0.3)  # retention: the default 30 days
    user = create_user(client)
    assert client.delete(f"/users/{user['id']}").status_code == 204
    deleted_at = datetime.now(UTC)

    eventually(
        lambda: jobs_named(client, "purge_deleted_users"),
        lambda jobs: any(
            j["status"] == "succeeded" and datetime.fromisoformat(j["started_at"]) > deleted_at
            for j in jobs
        ),
    )

    assert user["id"] in admin_user_ids(client)


def test_the_cleanup_cadence_resumes_from_the_last_run_on_record(db_path: Path) -> None:
    queue = create_app(job_settings(db_path, jobs_worker="none")).state.jobs
    cleanup = RecurringJob(queue, "purge_deleted_users", interval_seconds=60)
    now = datetime.now(UTC)

    cleanup.tick(now)  # a fresh file: the first run is one interval away
    cleanup.tick(now + timedelta(seconds=59))
    assert jobs_of(queue) == 0
    cleanup.tick(now + timedelta(seconds=60))
    assert jobs_of(queue) == 1

    restarted = RecurringJob(queue, "purge_deleted_users", interval_seconds=60)
    restarted.tick(datetime.now(UTC) + timedelta(seconds=30))  # due 60 s after that run
    assert jobs_of(queue) == 1
    restarted.tick(datetime.now(UTC) + timedelta(seconds=61))
    assert jobs_of(queue) == 2


def jobs_of(queue: JobQueue) -> int:
    return len(queue.registry.recent(name="purge_deleted_users"))
