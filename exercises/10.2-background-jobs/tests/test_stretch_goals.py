"""Graded checks for the stretch goals of exercise 10.2 (bonus points)."""

from __future__ import annotations

import time

import pytest
from jobcheck import enqueue, get_job, parse_time, wait_finished, wait_status, welcome_job

from grader.testing import eventually, fail

# --- priorities -------------------------------------------------------------------------


@pytest.mark.criterion("priorities")
def test_a_high_priority_job_starts_before_normal_ones_queued_earlier(jobs_app) -> None:
    api = jobs_app(JOBS_WORKERS=1)
    blocker = enqueue(api, "sleep", {"seconds": 1.0})
    if wait_status(api, blocker, ("running",), timeout=5).get("status") != "running":
        fail(
            "POST /jobs/api/jobs (sleep 1 s), with JOBS_WORKERS=1",
            expected="the job running within 5 s, keeping the only worker busy",
            observed=f"status {get_job(api, blocker['id']).get('status')}",
        )
    normal = [enqueue(api, "sleep", {"seconds": 0.05}) for _ in range(3)]
    high = enqueue(api, "sleep", {"seconds": 0.05}, priority="high")
    done = [wait_finished(api, job, timeout=10) for job in (*normal, high)]
    starts = [parse_time(job.get("started_at")) for job in done]
    if None in starts or starts[-1] > min(starts[:-1]):  # type: ignore[operator, type-var]
        fail(
            "three normal sleep jobs, then one with priority high, while the worker was busy",
            expected="the high-priority job started first",
            observed="started_at: " + ", ".join(str(j.get("started_at")) for j in done),
        )


# --- delayed ----------------------------------------------------------------------------


@pytest.mark.criterion("delayed")
def test_a_delayed_job_waits_for_its_time(jobs_app) -> None:
    api = jobs_app()
    job = enqueue(api, "sleep", {"seconds": 0.01}, delay_seconds=2)
    if not job.get("run_at"):
        fail("POST /jobs/api/jobs with delay_seconds 2", expected="a run_at", observed="none")
    time.sleep(1.5)
    early = get_job(api, job["id"])
    if early.get("status") != "queued" or early.get("started_at"):
        fail(
            "a job delayed by 2 s, 1.5 s after it was enqueued",
            expected="still queued, not started",
            observed=f"status {early.get('status')}, started_at {early.get('started_at')}",
        )
    later = wait_finished(api, job, timeout=6)
    if later.get("status") != "succeeded":
        fail(
            "a job delayed by 2 s, up to 6 s later",
            expected="succeeded",
            observed=f"status {later.get('status')}",
        )


# --- status-tracking --------------------------------------------------------------------


@pytest.mark.criterion("status-tracking")
def test_statuses_follow_the_job_through_its_life(jobs_app) -> None:
    api = jobs_app()
    job = enqueue(api, "sleep", {"seconds": 1.5})
    if job.get("status") not in ("queued", "running"):
        fail("POST /jobs/api/jobs (sleep)", expected="queued", observed=str(job.get("status")))
    running = wait_status(api, job, ("running",), timeout=5)
    if running.get("status") != "running" or not running.get("started_at"):
        fail(
            f"GET /jobs/api/jobs/{job['id']} while the 1.5 s job runs",
            expected="status running, with started_at",
            observed=f"status {running.get('status')}, started_at {running.get('started_at')}",
        )
    done = wait_finished(api, job, timeout=8)
    if (done.get("status"), done.get("attempts")) != ("succeeded", 1) or not done.get(
        "finished_at"
    ):
        fail(
            f"GET /jobs/api/jobs/{job['id']} after the job ended",
            expected="status succeeded, attempts 1, with finished_at",
            observed=f"status {done.get('status')}, attempts {done.get('attempts')},"
            f" finished_at {done.get('finished_at')}",
        )


# --- cancellation -----------------------------------------------------------------------


@pytest.mark.criterion("cancellation")
def test_a_cancelled_job_never_runs(jobs_app) -> None:
    api = jobs_app()
    job = enqueue(api, "sleep", {"seconds": 0.01}, delay_seconds=2)
    response = api.post(f"/jobs/api/jobs/{job['id']}/cancel", headers=api.admin, expect=None)
    if response.status_code != 200 or response.json().get("status") != "cancelled":
        fail(
            f"POST /jobs/api/jobs/{job['id']}/cancel (a job delayed by 2 s)",
            expected="200 with status cancelled",
            observed=f"{response.status_code} {response.text[:120]}",
        )
    time.sleep(3.5)
    later = get_job(api, job["id"])
    if later.get("status") != "cancelled" or later.get("started_at"):
        fail(
            "a cancelled job, 3.5 s later (it was due after 2 s)",
            expected="still cancelled, never started",
            observed=f"status {later.get('status')}, started_at {later.get('started_at')}",
        )


# --- batches ----------------------------------------------------------------------------


@pytest.mark.criterion("batches")
def test_a_batch_is_tracked_as_one(jobs_app) -> None:
    api = jobs_app(EMAIL_FAIL_FIRST=1000, JOB_MAX_RETRIES=0)
    user = api.create_user()
    jobs = [{"name": "sleep", "args": {"seconds": 0.05}} for _ in range(3)]
    jobs.append({"name": "send_welcome_email", "args": {"user_id": user["id"]}})
    created = api.post("/jobs/api/batches", {"jobs": jobs}, headers=api.admin, expect=None)
    if created.status_code != 201 or created.json().get("total") != 4:
        fail(
            "POST /jobs/api/batches with 4 jobs",
            expected='201 with "total": 4 and an id',
            observed=f"{created.status_code} {created.text[:120]}",
        )
    path = f"/jobs/api/batches/{created.json().get('id')}"
    batch = eventually(
        lambda: api.get(path, headers=api.admin).json(),
        until=lambda b: b.get("done") is True,
        timeout=10,
    )
    if (batch.get("done"), batch.get("succeeded"), batch.get("failed")) != (True, 3, 1):
        fail(
            f"GET {path}, up to 10 s (3 sleep jobs and a welcome email that fails)",
            expected="done, 3 succeeded, 1 failed",
            observed=str(batch),
        )


# --- alerts -----------------------------------------------------------------------------


@pytest.mark.criterion("alerts")
def test_repeated_failures_raise_one_alert(jobs_app, app_output) -> None:
    api = jobs_app(
        EMAIL_FAIL_FIRST=1000, JOB_MAX_RETRIES=0, JOB_ALERT_THRESHOLD=3,
        JOB_ALERT_WINDOW_SECONDS=60,
    )  # fmt: skip

    def alerts() -> list:
        return api.get("/jobs/api/alerts", headers=api.admin).json()

    for _ in range(3):
        wait_finished(api, welcome_job(api, api.create_user()), timeout=10)
    # An alert may be raised a moment after the failure that triggers it is recorded.
    raised = eventually(alerts, until=lambda a: len(a) >= 1, timeout=3)
    logged = eventually(lambda: "job alert" in app_output.text(), until=bool, timeout=3)
    if len(raised) != 1 or not logged:
        fail(
            "3 failed jobs with JOB_ALERT_THRESHOLD=3, then GET /jobs/api/alerts",
            expected="one alert listed and a 'job alert' log line",
            observed=f"{len(raised)} alerts; log line {'present' if logged else 'missing'}",
        )
    wait_finished(api, welcome_job(api, api.create_user()), timeout=10)
    # Give a wrongly raised second alert the same moment to appear.
    eventually(alerts, until=lambda a: len(a) > 1, timeout=1)
    if len(alerts()) != 1:
        fail(
            "a 4th failure within the same 60 s window",
            expected="still one alert: no alert storm",
            observed=f"{len(alerts())} alerts",
        )


# --- dead-letter ------------------------------------------------------------------------


@pytest.mark.criterion("dead-letter")
def test_jobs_out_of_retries_are_dead_lettered_and_can_be_requeued(jobs_app) -> None:
    api = jobs_app(EMAIL_FAIL_FIRST=2, JOB_MAX_RETRIES=1, JOB_RETRY_DELAY_SECONDS=0.1)
    job = wait_finished(api, welcome_job(api, api.create_user()), timeout=10)
    dead = api.get("/jobs/api/dead-letter", headers=api.admin).json()
    if job.get("status") != "failed" or job["id"] not in [d.get("id") for d in dead]:
        fail(
            "a welcome job failing twice with JOB_MAX_RETRIES=1, then GET /jobs/api/dead-letter",
            expected=f"job {job['id']} failed and listed",
            observed=f"status {job.get('status')}, {len(dead)} dead-lettered jobs",
        )
    requeued = api.post(
        f"/jobs/api/dead-letter/{job['id']}/requeue", headers=api.admin, expect=None
    )
    if requeued.status_code != 201:
        fail(
            f"POST /jobs/api/dead-letter/{job['id']}/requeue",
            expected="201 with the new job record",
            observed=f"{requeued.status_code} {requeued.text[:120]}",
        )
    again = wait_finished(api, requeued.json(), timeout=10)
    if again.get("status") != "succeeded":
        fail(
            "the requeued job (the email service works again)",
            expected="succeeded",
            observed=f"status {again.get('status')}",
        )
