"""The job queue's API and dashboard (exercise 10.2), all behind the admin token.

The endpoints are plain ``def`` functions on purpose: each reads or writes the SQLite
registry, which blocks, and FastAPI runs ``def`` endpoints in its thread pool rather than
on the event loop.
"""

from datetime import datetime
from html import escape
from typing import Annotated, Any, Self

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..deps import JobsDep, require_admin
from ..job_registry import JOB_STATUSES, AlertRecord, JobRecord, JobStatus, Priority
from ..jobs import (
    JobName,
    JobNotCancellableError,
    JobNotFoundError,
    JobQueue,
    JobSpec,
    validate_args,
)

router = APIRouter(
    prefix="/jobs",
    tags=["jobs"],
    dependencies=[Depends(require_admin)],
    responses={status.HTTP_401_UNAUTHORIZED: {"description": "Missing or wrong admin token"}},
)

NOT_FOUND = {status.HTTP_404_NOT_FOUND: {"description": "No such job"}}
# A day: a "delay" longer than that is a scheduled job, which deserves its own design.
MAX_DELAY_SECONDS = 86_400
MAX_BATCH_SIZE = 100
# Live data: no browser or proxy should keep a copy.
NO_STORE = {"Cache-Control": "no-store"}


# --- bodies ------------------------------------------------------------------------------


class JobIn(BaseModel):
    """Body of ``POST /jobs/api/jobs``, and one job of a batch."""

    model_config = ConfigDict(extra="forbid")

    name: JobName
    args: dict[str, Any] = Field(default_factory=dict)
    # None is accepted as "the default", as clients often send every field.
    priority: Priority | None = "normal"
    delay_seconds: float | None = Field(default=0, ge=0, le=MAX_DELAY_SECONDS)

    @model_validator(mode="after")
    def _args_fit_the_job(self) -> Self:
        # A ValueError here becomes a 422 whose detail says which argument is wrong.
        self.args = validate_args(self.name, self.args)
        return self

    def spec(self) -> JobSpec:
        return JobSpec(self.name, self.args, self.priority or "normal", self.delay_seconds or 0)


class BatchIn(BaseModel):
    """Body of ``POST /jobs/api/batches``."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[JobIn] = Field(min_length=1, max_length=MAX_BATCH_SIZE)


class JobOut(BaseModel):
    """A job record as JSON."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    args: dict[str, Any]
    status: JobStatus
    attempts: int = Field(description="Attempts started so far.")
    priority: Priority
    created_at: datetime
    run_at: datetime | None = Field(description="When a delayed job or its next retry may start.")
    started_at: datetime | None = Field(description="When the first attempt started.")
    finished_at: datetime | None
    error: str | None = Field(description="The last failure, if any.")
    batch_id: str | None


class BatchCreated(BaseModel):
    id: str
    total: int


class BatchOut(BaseModel):
    id: str
    total: int
    succeeded: int
    failed: int
    cancelled: int
    pending: int = Field(description="Queued or running.")
    done: bool = Field(description="True once no job of the batch is pending.")


class AlertOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    raised_at: datetime
    failures: int
    window_seconds: float
    message: str


def job_not_found(job_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"Job {job_id} not found")


# --- JSON API ----------------------------------------------------------------------------


@router.get("/api/jobs")
def list_jobs(
    jobs: JobsDep,
    name: str | None = None,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobOut]:
    """Job records, newest first; ``?name=`` and ``?status=`` filter them."""
    records = jobs.registry.recent(name=name, status=status_filter, limit=limit)
    return [JobOut.model_validate(record) for record in records]


@router.get("/api/jobs/{job_id}", responses=NOT_FOUND)
def get_job(job_id: str, jobs: JobsDep) -> JobOut:
    """One job record, current as of now."""
    record = jobs.registry.get(job_id)
    if record is None:
        raise job_not_found(job_id)
    return JobOut.model_validate(record)


@router.post("/api/jobs", status_code=status.HTTP_201_CREATED)
def enqueue_job(body: JobIn, jobs: JobsDep) -> JobOut:
    """Enqueue a job, with ``"priority": "high"`` or after ``delay_seconds`` if given."""
    spec = body.spec()
    record = jobs.enqueue(
        spec.name, spec.args, priority=spec.priority, delay_seconds=spec.delay_seconds
    )
    return JobOut.model_validate(record)


@router.post(
    "/api/jobs/{job_id}/cancel",
    responses=NOT_FOUND | {status.HTTP_409_CONFLICT: {"description": "The job already started"}},
)
def cancel_job(job_id: str, jobs: JobsDep) -> JobOut:
    """Cancel a job that has not started: the worker will skip it."""
    try:
        return JobOut.model_validate(jobs.cancel(job_id))
    except JobNotFoundError:
        raise job_not_found(job_id) from None
    except JobNotCancellableError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None


@router.post("/api/batches", status_code=status.HTTP_201_CREATED)
def enqueue_batch(body: BatchIn, jobs: JobsDep) -> BatchCreated:
    """Enqueue several jobs as one batch; follow it at ``GET /jobs/api/batches/{id}``."""
    batch_id, records = jobs.enqueue_batch([job.spec() for job in body.jobs])
    return BatchCreated(id=batch_id, total=len(records))


@router.get(
    "/api/batches/{batch_id}",
    responses={status.HTTP_404_NOT_FOUND: {"description": "No such batch"}},
)
def get_batch(batch_id: str, jobs: JobsDep) -> BatchOut:
    """How many jobs of the batch succeeded, failed or are still pending."""
    summary = jobs.registry.batch(batch_id)
    if summary is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"Batch {batch_id} not found")
    return BatchOut(
        id=summary.id,
        total=summary.total,
        succeeded=summary.succeeded,
        failed=summary.failed,
        cancelled=summary.cancelled,
        pending=summary.pending,
        done=summary.done,
    )


@router.get("/api/alerts")
def list_alerts(jobs: JobsDep) -> list[AlertOut]:
    """Alerts raised because too many attempts failed in a short time, newest first."""
    return [AlertOut.model_validate(alert) for alert in jobs.registry.alerts()]


@router.get("/api/dead-letter")
def list_dead_letter(jobs: JobsDep) -> list[JobOut]:
    """Jobs that failed for good (out of retries, or interrupted), newest first."""
    return [JobOut.model_validate(record) for record in jobs.registry.dead_letter()]


@router.post(
    "/api/dead-letter/{job_id}/requeue",
    status_code=status.HTTP_201_CREATED,
    responses={status.HTTP_404_NOT_FOUND: {"description": "Not in the dead-letter queue"}},
)
def requeue_dead_letter(job_id: str, jobs: JobsDep) -> JobOut:
    """Enqueue a dead-lettered job again as a new job; the old one leaves the queue."""
    try:
        return JobOut.model_validate(jobs.requeue(job_id))
    except JobNotFoundError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"Job {job_id} is not in the dead-letter queue"
        ) from None


# --- dashboard ---------------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
def dashboard(jobs: JobsDep) -> HTMLResponse:
    """Recent jobs, counts per status and recent alerts, on a page that reloads itself.

    A browser sends no bearer token on its own: open it through something that adds the
    header (a header-setting browser extension, or a proxy in front of the admin routes).
    """
    return HTMLResponse(render_dashboard(jobs), headers=NO_STORE)


def render_dashboard(jobs: JobQueue) -> str:
    """A self-contained page (no external assets); every value goes through escape()."""
    counts = jobs.registry.status_counts()
    dead = len(jobs.registry.dead_letter())
    summary = " · ".join(f"{escape(s)}: {counts[s]}" for s in JOB_STATUSES)
    rows = "\n".join(_job_row(record) for record in jobs.registry.recent(limit=50))
    alerts = "\n".join(_alert_item(alert) for alert in jobs.registry.alerts(limit=5))
    return f"""<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta http-equiv="refresh" content="5">
    <title>Jobs</title>
    <style>
      body {{ font-family: system-ui, sans-serif; margin: 2rem; }}
      table {{ border-collapse: collapse; }}
      th, td {{ padding: 0.3rem 0.8rem; border-bottom: 1px solid #ddd; text-align: left; }}
      code {{ font-size: 0.85em; }}
      .failed {{ color: #b00020; }} .succeeded {{ color: #1b5e20; }}
    </style>
  </head>
  <body>
    <h1>Jobs</h1>
    <p>{summary} · dead-letter: {dead}</p>
    <h2>Recent alerts</h2>
    <ul>
{alerts or "      <li>none</li>"}
    </ul>
    <h2>Recent jobs</h2>
    <table>
      <tr><th>id</th><th>name</th><th>status</th><th>attempts</th><th>priority</th>
        <th>created</th><th>run at</th><th>started</th><th>finished</th><th>error</th></tr>
{rows}
    </table>
    <p>JSON: <code>GET /jobs/api/jobs?status=failed</code>, <code>GET /jobs/api/jobs/{{id}}</code>,
      <code>GET /jobs/api/dead-letter</code>, <code>GET /jobs/api/alerts</code>;
      enqueue with <code>POST /jobs/api/jobs</code>.</p>
  </body>
</html>
"""


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def _job_row(record: JobRecord) -> str:
    cells = [
        f"<code>{escape(record.id)}</code>",
        escape(record.name),
        f'<span class="{escape(record.status)}">{escape(record.status)}</span>',
        str(record.attempts),
        escape(record.priority),
        _when(record.created_at),
        _when(record.run_at),
        _when(record.started_at),
        _when(record.finished_at),
        escape(record.error or ""),
    ]
    return "      <tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _alert_item(alert: AlertRecord) -> str:
    return f"      <li>{_when(alert.raised_at)} UTC: {escape(alert.message)}</li>"
