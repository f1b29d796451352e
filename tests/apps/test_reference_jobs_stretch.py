"""The reference app's background jobs, stretch goals of exercise 10.2: priorities, delays,
status tracking, cancellation, batches, alerts (the dead-letter queue is tested with the
retries, in `test_reference_jobs.py`, whose fixtures and helpers this file imports)."""

# The imported fixtures reappear as test parameters, which ruff reads as redefinitions.
# ruff: noqa: F401, F811

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from solutions.app.job_registry import JobRecord, JobRegistry

from .helpers import create_user
from .test_reference_jobs import (
    ADMIN,
    AppFactory,
    db_path,  # a fixture, used by make_app
    enqueue,
    eventually,
    job,
    log_lines,
    make_app,
    wait_finished,
    welcome_job,
)


def moment(value: str | None) -> datetime:
    assert value is not None
    return datetime.fromisoformat(value)


def test_a_high_priority_job_starts_before_normal_jobs_queued_earlier(make_app: AppFactory) -> None:
    client = make_app(jobs_workers=1)
    busy = enqueue(client, name="sleep", args={"seconds": 0.5})
    eventually(lambda: job(client, busy["id"]), lambda r: r["status"] == "running")
    normal = [enqueue(client, name="sleep", args={"seconds": 0.01}) for _ in range(3)]
    high = enqueue(client, name="sleep", args={"seconds": 0.01}, priority="high")
    assert high["priority"] == "high"

    done = [wait_finished(client, j["id"]) for j in [high, *normal]]

    starts = [moment(record["started_at"]) for record in done]
    assert starts[0] < min(starts[1:])
    assert starts[1:] == sorted(starts[1:])  # equal priorities: first in, first out


def test_a_delayed_job_waits_for_its_run_at(make_app: AppFactory) -> None:
    client = make_app()
    queued = enqueue(client, name="sleep", args={"seconds": 0}, delay_seconds=1)
    run_at = moment(queued["run_at"])
    assert timedelta(seconds=0.9) < run_at - moment(queued["created_at"]) < timedelta(seconds=1.1)
    assert enqueue(client, name="sleep", args={"seconds": 0})["run_at"] is None

    eventually(lambda: datetime.now(UTC), lambda now: now > run_at - timedelta(seconds=0.2))
    waiting = job(client, queued["id"])
    assert (waiting["status"], waiting["attempts"], waiting["started_at"]) == ("queued", 0, None)

    done = wait_finished(client, queued["id"])
    assert done["status"] == "succeeded" and moment(done["started_at"]) >= run_at


def test_status_moves_from_queued_through_running_to_succeeded(make_app: AppFactory) -> None:
    client = make_app()
    queued = enqueue(client, name="sleep", args={"seconds": 0.5})
    assert (queued["status"], queued["attempts"], queued["started_at"]) == ("queued", 0, None)

    running = eventually(lambda: job(client, queued["id"]), lambda r: r["status"] == "running")
    assert running["attempts"] == 1 and running["started_at"] and not running["finished_at"]

    done = wait_finished(client, queued["id"])
    assert (done["status"], done["attempts"]) == ("succeeded", 1)
    assert moment(done["finished_at"]) - moment(done["started_at"]) >= timedelta(seconds=0.5)
    statuses = client.get("/jobs/api/jobs?status=succeeded", headers=ADMIN).json()
    assert [j["id"] for j in statuses] == [queued["id"]]


def test_a_cancelled_job_never_runs(make_app: AppFactory) -> None:
    client = make_app()
    queued = enqueue(client, name="sleep", args={"seconds": 0}, delay_seconds=0.5)

    response = client.post(f"/jobs/api/jobs/{queued['id']}/cancel", headers=ADMIN)

    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    again = client.post(f"/jobs/api/jobs/{queued['id']}/cancel", headers=ADMIN)
    assert again.status_code == 200  # idempotent
    # Past its run_at, and then a few scheduler and worker polls.
    time.sleep(0.5 + 0.6)
    record = job(client, queued["id"])
    assert (record["status"], record["attempts"], record["started_at"]) == ("cancelled", 0, None)


def test_only_a_queued_job_can_be_cancelled(make_app: AppFactory) -> None:
    client = make_app()
    running = enqueue(client, name="sleep", args={"seconds": 0.5})
    eventually(lambda: job(client, running["id"]), lambda r: r["status"] == "running")

    conflict = client.post(f"/jobs/api/jobs/{running['id']}/cancel", headers=ADMIN)

    assert conflict.status_code == 409 and "running" in conflict.json()["detail"]
    assert wait_finished(client, running["id"])["status"] == "succeeded"
    assert client.post("/jobs/api/jobs/nope/cancel", headers=ADMIN).status_code == 404


def test_a_cancel_that_loses_the_race_with_the_worker_is_refused_by_the_registry(
    tmp_path: Path,
) -> None:
    registry = JobRegistry(str(tmp_path / "jobs.sqlite3"))
    now = datetime.now(UTC)

    def queued(job_id: str) -> JobRecord:
        return JobRecord(job_id, "sleep", {}, "queued", 0, "normal", now, *[None] * 5)

    registry.add([queued("j1"), queued("j2")])
    assert registry.start_attempt("j1", now)  # the worker wins...
    assert registry.cancel("j1", now)[0] is False  # ...so the cancel changes nothing
    assert registry.cancel("j2", now)[0] is True  # the cancel wins...
    assert registry.start_attempt("j2", now) is False  # ...so the worker must not run it


def test_a_batch_reports_its_progress_until_done(make_app: AppFactory) -> None:
    client = make_app(email_fail_first=1000, job_max_retries=0)
    user = create_user(client)
    wait_finished(client, welcome_job(client, user["id"])["id"])  # fails: every send does
    jobs = [{"name": "sleep", "args": {"seconds": 0.2}} for _ in range(3)]
    jobs.append({"name": "send_welcome_email", "args": {"user_id": user["id"]}})

    created = client.post("/jobs/api/batches", json={"jobs": jobs}, headers=ADMIN)

    assert created.status_code == 201
    batch = created.json()
    assert batch["total"] == 4
    first = client.get(f"/jobs/api/batches/{batch['id']}", headers=ADMIN).json()
    assert first["total"] == 4 and first["pending"] >= 1 and first["done"] is False
    final = eventually(
        lambda: client.get(f"/jobs/api/batches/{batch['id']}", headers=ADMIN).json(),
        lambda summary: summary["done"],
    )
    assert final == {
        "id": batch["id"],
        "total": 4,
        "succeeded": 3,
        "failed": 1,
        "cancelled": 0,
        "pending": 0,
        "done": True,
    }
    members = client.get("/jobs/api/jobs", headers=ADMIN).json()
    assert sum(j["batch_id"] == batch["id"] for j in members) == 4


def test_a_batch_with_one_invalid_job_enqueues_nothing(make_app: AppFactory) -> None:
    client = make_app(jobs_worker="none")
    jobs = [{"name": "sleep", "args": {"seconds": 1}}, {"name": "sleep", "args": {}}]
    assert client.post("/jobs/api/batches", json={"jobs": jobs}, headers=ADMIN).status_code == 422
    assert client.post("/jobs/api/batches", json={"jobs": []}, headers=ADMIN).status_code == 422
    assert client.get("/jobs/api/jobs", headers=ADMIN).json() == []
    assert client.get("/jobs/api/batches/nope", headers=ADMIN).status_code == 404


def test_repeated_failures_raise_one_alert_per_window(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_app(
        email_fail_first=1000, job_max_retries=0, job_alert_threshold=3, job_alert_window_seconds=60
    )

    def alerts() -> list[dict[str, Any]]:
        return client.get("/jobs/api/alerts", headers=ADMIN).json()

    for _ in range(2):
        wait_finished(client, welcome_job(client, create_user(client)["id"])["id"])
    assert alerts() == []
    wait_finished(client, welcome_job(client, create_user(client)["id"])["id"])

    raised = eventually(alerts, lambda found: len(found) == 1)
    assert raised[0]["failures"] == 3 and raised[0]["window_seconds"] == 60
    assert "3 job attempts failed" in raised[0]["message"] and raised[0]["raised_at"]
    assert len(log_lines(caplog, "job alert")) == 1

    wait_finished(client, welcome_job(client, create_user(client)["id"])["id"])
    assert len(alerts()) == 1 and len(log_lines(caplog, "job alert")) == 1


def test_the_alert_window_slides(tmp_path: Path) -> None:
    registry = JobRegistry(str(tmp_path / "jobs.sqlite3"))
    start = datetime.now(UTC)

    def fail_at(seconds: float) -> bool:
        at = start + timedelta(seconds=seconds)
        return registry.note_failed_attempt(at, threshold=3, window_seconds=10) is not None

    assert [fail_at(t) for t in (0, 5, 10.5)] == [False, False, False]  # 0 left the window
    assert fail_at(11) is True  # 5, 10.5, 11
    assert fail_at(12) is False  # still within 10 s of that alert
    assert [fail_at(t) for t in (21.5, 22, 22.5)] == [False, False, True]
    assert [a.failures for a in registry.alerts()] == [3, 3]  # newest first
