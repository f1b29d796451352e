"""Job-record helpers shared by the 10.2 checks (imported by the test modules)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from grader.testing import Api, eventually, fail

Job = dict[str, Any]
FINISHED = ("succeeded", "failed", "cancelled")


def list_jobs(api: Api, **filters: str) -> list[Job]:
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    path = f"/jobs/api/jobs{'?' + query if query else ''}"
    response = api.get(path, headers=api.admin, expect=None)
    body = response.json() if "json" in response.headers.get("content-type", "") else None
    if response.status_code != 200 or not isinstance(body, list):
        fail(
            f"GET {path} (admin token)",
            expected="200 with a JSON list of job records",
            observed=f"{response.status_code} {response.text[:120]}",
        )
    return body


def get_job(api: Api, job_id: str) -> Job:
    return api.get(f"/jobs/api/jobs/{job_id}", headers=api.admin).json()


def welcome_jobs(api: Api, user_id: int) -> list[Job]:
    return [
        job
        for job in list_jobs(api)
        if job.get("name") == "send_welcome_email"
        and (job.get("args") or {}).get("user_id") == user_id
    ]


def welcome_job(api: Api, user: dict[str, Any], timeout: float = 3) -> Job:
    """The send_welcome_email job of `user`, waiting up to `timeout` for it to appear."""
    found = eventually(lambda: welcome_jobs(api, user["id"]), until=bool, timeout=timeout)
    if not found:
        fail(
            f"POST /users (user {user['id']}), then GET /jobs/api/jobs",
            expected=f'a send_welcome_email job with args {{"user_id": {user["id"]}}}',
            observed=f"none within {timeout:g} s",
        )
    return found[0]


def wait_status(api: Api, job: Job, statuses: tuple[str, ...], timeout: float) -> Job:
    """The job's record once its status is one of `statuses` (or as it stands when
    `timeout` runs out)."""
    return eventually(
        lambda: get_job(api, job["id"]),
        until=lambda j: j.get("status") in statuses,
        timeout=timeout,
    )


def wait_finished(api: Api, job: Job, timeout: float) -> Job:
    """The job's record once it is finished (or as it stands when `timeout` runs out)."""
    return wait_status(api, job, FINISHED, timeout)


def enqueue(api: Api, name: str, args: dict[str, Any], **options: Any) -> Job:
    body = {"name": name, "args": args, **options}
    response = api.post("/jobs/api/jobs", body, headers=api.admin, expect=None)
    if response.status_code != 201:
        fail(
            f"POST /jobs/api/jobs {json.dumps(body)}",
            expected="201 with the new job record",
            observed=f"{response.status_code} {response.text[:120]}",
        )
    return response.json()


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 time from a job record; one without a zone is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
