"""Graded checks for exercise 10.2, background jobs: one section per acceptance criterion.

Jobs are seen through the contract's JSON view (GET /jobs/api/jobs) and the app's output;
every wait is a poll with a generous deadline, never a fixed sleep that a busy machine
could overrun.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from jobcheck import list_jobs, parse_time, wait_finished, welcome_job, welcome_jobs

from grader.testing import eventually, fail, observed

# --- job-framework: a real queue, decoupled from the request ----------------------------------


@pytest.mark.criterion("job-framework")
def test_jobs_are_listed_as_json(jobs_app) -> None:
    list_jobs(jobs_app())


@pytest.mark.criterion("job-framework")
def test_creating_a_user_neither_waits_for_nor_fails_with_the_email(jobs_app) -> None:
    api = jobs_app(EMAIL_FAIL_FIRST=1000, EMAIL_LATENCY_MS=3000)
    started = time.monotonic()
    response = api.post(
        "/users", {"email": f"slow-{time.time_ns()}@example.com", "name": "No Wait",
                   "password": "correct-horse-1"},
    )  # fmt: skip
    took = time.monotonic() - started
    if response.status_code != 201 or took > 1.5:
        fail(
            "POST /users while every email fails after 3 s (EMAIL_FAIL_FIRST=1000,"
            " EMAIL_LATENCY_MS=3000)",
            expected="201 within 1.5 s: the request only enqueues the email",
            observed=f"{response.status_code} after {took:.1f} s",
        )
    welcome_job(api, response.json())


# --- enqueue-on-create: one welcome job per new user ------------------------------------------


@pytest.mark.criterion("enqueue-on-create")
def test_each_new_user_gets_one_welcome_job(jobs_app) -> None:
    api = jobs_app()
    for user in (api.create_user(), api.create_user()):
        welcome_job(api, user)
        found = welcome_jobs(api, user["id"])
        if len(found) != 1:
            fail(
                f"POST /users (user {user['id']}), then GET /jobs/api/jobs",
                expected="exactly one send_welcome_email job for that user",
                observed=f"{len(found)} of them",
            )


# --- job-processing: a worker runs the job and the email is "sent" ---------------------------


@pytest.mark.criterion("job-processing")
def test_the_welcome_job_runs_and_sends_the_email(jobs_app, app_output) -> None:
    api = jobs_app()
    user = api.create_user()
    job = wait_finished(api, welcome_job(api, user), timeout=10)
    if job.get("status") != "succeeded" or job.get("attempts") != 1:
        fail(
            f"the send_welcome_email job of user {user['id']}, 10 s after POST /users",
            expected="status succeeded after 1 attempt (is a worker running in the lifespan?)",
            observed=f"status {job.get('status')}, attempts {job.get('attempts')}",
        )
    line = f"welcome email sent to={user['email']}"
    if line not in app_output.text():
        fail(
            f"the send_welcome_email job of user {user['id']}",
            expected=f"the mock email service to print {line!r}",
            observed="no such line in the app's output",
        )


# --- dashboard: HTML, admin only ---------------------------------------------------------------


@pytest.mark.criterion("dashboard")
def test_dashboard_is_secured_and_lists_jobs(jobs_app) -> None:
    api = jobs_app()
    denied = api.get("/jobs", expect=None)
    if denied.status_code != 401:
        fail("GET /jobs without a token", expected="401", observed=observed(denied))
    job = welcome_job(api, api.create_user())
    page = api.get("/jobs", headers=api.admin, expect=None)
    if "text/html" not in page.headers.get("content-type", "") or str(job["id"]) not in page.text:
        fail(
            "GET /jobs (admin token), after POST /users",
            expected=f"an HTML page listing the welcome job {job['id']}",
            observed=f"{observed(page, 'Content-Type')}, job id "
            + ("shown" if str(job["id"]) in page.text else "not shown"),
        )


# --- recurring-cleanup: soft-deleted users purged after the retention ----------------------------


def admin_user_ids(api) -> set[int]:
    users = api.get("/admin/users?include_deleted=true", headers=api.admin).json()
    return {u.get("id") for u in users}


def purge_jobs(api) -> list[dict]:
    return [j for j in list_jobs(api) if j.get("name") == "purge_deleted_users"]


@pytest.mark.criterion("recurring-cleanup")
def test_soft_deleted_users_are_purged_on_schedule(jobs_app) -> None:
    api = jobs_app(USER_RETENTION_DAYS=0, CLEANUP_INTERVAL_SECONDS=1)
    list_jobs(api)  # the job view first: without it, waiting for a purge would be in vain
    live, gone = api.create_user(name="Stays"), api.create_user(name="Goes")
    api.delete(f"/users/{gone['id']}", expect=204)
    ids = eventually(lambda: admin_user_ids(api), until=lambda s: gone["id"] not in s, timeout=10)
    if gone["id"] in ids:
        fail(
            f"DELETE /users/{gone['id']}, then GET /admin/users?include_deleted=true for 10 s,"
            " with USER_RETENTION_DAYS=0 and CLEANUP_INTERVAL_SECONDS=1",
            expected="the soft-deleted user purged by the recurring job",
            observed="still there: does purge_deleted_users run every interval?",
        )
    if live["id"] not in ids:
        fail(
            "the recurring purge_deleted_users job",
            expected=f"live user {live['id']} kept",
            observed="it was purged too",
        )
    # The user can be gone a moment before the job that removed it is recorded as done.
    succeeded = eventually(
        lambda: [j for j in purge_jobs(api) if j.get("status") == "succeeded"],
        until=bool,
        timeout=5,
    )
    if not succeeded:
        fail(
            "GET /jobs/api/jobs after the purge",
            expected="succeeded purge_deleted_users jobs",
            observed="none listed: is the cleanup a job of the queue?",
        )


@pytest.mark.criterion("recurring-cleanup")
def test_users_deleted_within_the_retention_are_kept(jobs_app) -> None:
    api = jobs_app(CLEANUP_INTERVAL_SECONDS=1)
    user = api.create_user(name="Recently Deleted")
    api.delete(f"/users/{user['id']}", expect=204)
    deleted_at = datetime.now(UTC)

    def purged_after_deletion() -> list[dict]:
        return [
            j
            for j in purge_jobs(api)
            if j.get("status") == "succeeded"
            and (started := parse_time(j.get("started_at"))) is not None
            and started > deleted_at
        ]

    if not eventually(purged_after_deletion, until=bool, timeout=10):
        fail(
            "GET /jobs/api/jobs for 10 s with CLEANUP_INTERVAL_SECONDS=1",
            expected="a purge_deleted_users job that ran after the deletion",
            observed="none: does the cleanup run every interval, and record started_at?",
        )
    if user["id"] not in admin_user_ids(api):
        fail(
            f"a purge after DELETE /users/{user['id']}, with the default USER_RETENTION_DAYS=30",
            expected="the user kept: deleted a moment ago, well within 30 days",
            observed="the user was purged",
        )


# --- retries: failures retried with backoff, then given up ----------------------------------------


@pytest.mark.criterion("retries")
def test_a_failing_job_is_retried_until_it_succeeds(jobs_app, app_output) -> None:
    api = jobs_app(EMAIL_FAIL_FIRST=2, JOB_MAX_RETRIES=3, JOB_RETRY_DELAY_SECONDS=0.2)
    user = api.create_user()
    job = wait_finished(api, welcome_job(api, user), timeout=10)
    if (job.get("status"), job.get("attempts")) != ("succeeded", 3):
        fail(
            "the welcome job, with EMAIL_FAIL_FIRST=2 and JOB_MAX_RETRIES=3",
            expected="succeeded on attempt 3 (two failures, two retries)",
            observed=f"status {job.get('status')}, attempts {job.get('attempts')}",
        )
    failures = [
        line
        for line in app_output.text().splitlines()
        if "job failed" in line and str(job["id"]) in line
    ]
    if len(failures) < 2:
        fail(
            f"the welcome job {job['id']}, which failed twice",
            expected=f"two lines containing 'job failed' and {job['id']}",
            observed=f"{len(failures)} such lines",
        )


@pytest.mark.criterion("retries")
def test_a_job_out_of_retries_is_marked_failed(jobs_app) -> None:
    api = jobs_app(EMAIL_FAIL_FIRST=1000, JOB_MAX_RETRIES=2, JOB_RETRY_DELAY_SECONDS=0.1)
    job = wait_finished(api, welcome_job(api, api.create_user()), timeout=10)
    if (job.get("status"), job.get("attempts")) != ("failed", 3) or not job.get("error"):
        fail(
            "the welcome job, with every email failing and JOB_MAX_RETRIES=2",
            expected="status failed after 3 attempts, with the error recorded",
            observed=f"status {job.get('status')}, attempts {job.get('attempts')},"
            f" error {job.get('error')!r}",
        )
