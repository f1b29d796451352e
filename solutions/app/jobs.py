"""The job queue of one app: which jobs exist, how they are enqueued, what they record.

The queue is huey with its SQLite storage (``SqliteHuey``): jobs are rows in a file, so a
job enqueued before a restart still runs after it, and every process that opens the file
(the API, a standalone worker) shares one queue. This module has three parts:

- the jobs: three small functions, and the arguments each accepts (``JOBS``);
- ``JobServices``: what the job functions need (the store, the email service, settings);
- ``JobQueue``, one per app: it owns the huey instance, registers the jobs on it, writes
  every job to the ``JobRegistry`` and keeps the record current through huey's
  pre-execute hook and signals (started, failed, succeeded, skipped).

Every job carries the request id of the request that enqueued it (exercise 10.4, tracing:
``tracing.py``), as a second argument of the huey task, and runs under it, so that its log
lines (the welcome email's, and started, failed, succeeded) carry that id too.

Running the jobs (worker threads, the scheduler, the recurring cleanup) is
``job_worker.py``'s part.
"""

import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from anyio.from_thread import BlockingPortal
from huey import CancelExecution, Huey, SqliteHuey
from huey import signals as huey_signals
from huey.api import Task, TaskWrapper
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .email_service import EmailService, build_email_service
from .job_registry import JobRecord, JobRegistry, Priority, utcnow
from .metrics import Metrics
from .settings import Settings
from .store import UserRepository, build_user_store
from .tracing import bound_request_id, current_request_id

if TYPE_CHECKING:
    from .store_sql import Database

logger = logging.getLogger(__name__)

# All apps and workers sharing a JOBS_DB_PATH share this queue (huey's "queue" column).
QUEUE_NAME = "users-api"
# huey runs higher numbers first; equal priorities run in the order they were enqueued.
PRIORITIES: dict[Priority, int] = {"normal": 0, "high": 10}
# Each retry waits this many times longer than the one before (exponential backoff).
RETRY_BACKOFF = 2
MAX_SLEEP_SECONDS = 60

T = TypeVar("T")


# --- what a job function gets ----------------------------------------------------------


@dataclass
class JobServices:
    """What the job functions need, shared by every worker thread of one app.

    ``portal`` is set while a worker runs. The store is an asyncio object: its data is
    only safe to touch from the event loop that owns it, so a worker thread hands each
    store call to that loop through the portal and waits for the answer, the way a
    thread would use an async database pool.
    """

    store: UserRepository
    email: EmailService
    settings: Settings
    portal: BlockingPortal | None = None

    def call_store(self, method: Callable[..., Awaitable[T]], /, **kwargs: Any) -> T:
        """Run ``await method(**kwargs)`` on the store's event loop; wait for the result."""
        if self.portal is None:
            raise RuntimeError("no worker is running, so no event loop to reach the store")
        return self.portal.call(functools.partial(method, **kwargs))


# --- the jobs ----------------------------------------------------------------------------


class NoArgs(BaseModel):
    """Arguments of a job that takes none; unknown arguments are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class WelcomeEmailArgs(NoArgs):
    user_id: int


class SleepArgs(NoArgs):
    seconds: float = Field(ge=0, le=MAX_SLEEP_SECONDS)


def send_welcome_email(services: JobServices, args: WelcomeEmailArgs) -> None:
    """Email a new user. Loads the user now: the name or email may have changed since."""
    user = services.call_store(services.store.get_user, user_id=args.user_id)
    if user is None:
        # Deleted in the meantime (or unknown to this process's store: see store.py).
        # Nothing to send, and retrying would not make the user come back: succeed.
        logger.info("welcome email skipped user_id=%d: no such user", args.user_id)
        return
    services.email.send_welcome_email(to=user.email, name=user.name)


def purge_deleted_users(services: JobServices, args: NoArgs) -> None:
    """Hard-delete users soft-deleted more than USER_RETENTION_DAYS ago."""
    retention = timedelta(days=services.settings.user_retention_days)
    cutoff = utcnow() - retention
    purged = services.call_store(services.store.purge_deleted, deleted_before=cutoff)
    logger.info("purged %d users soft-deleted before %s", purged, cutoff.isoformat())


def sleep(services: JobServices, args: SleepArgs) -> None:
    """Do nothing for a while: keeps a worker busy in demos and tests."""
    time.sleep(args.seconds)


@dataclass(frozen=True)
class JobDefinition:
    function: Callable[[JobServices, Any], None]
    args_model: type[BaseModel]


JobName = Literal["send_welcome_email", "purge_deleted_users", "sleep"]
JOBS: dict[str, JobDefinition] = {
    "send_welcome_email": JobDefinition(send_welcome_email, WelcomeEmailArgs),
    "purge_deleted_users": JobDefinition(purge_deleted_users, NoArgs),
    "sleep": JobDefinition(sleep, SleepArgs),
}
assert set(get_args(JobName)) == set(JOBS), "JobName and JOBS list different jobs"


def validate_args(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of job ``name``, checked; raises ``ValueError`` saying what is wrong."""
    if name not in JOBS:
        raise ValueError(f"unknown job {name!r}; known jobs: {', '.join(JOBS)}")
    try:
        checked = JOBS[name].args_model.model_validate(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'args'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ValueError(f"invalid args for {name}: {problems}") from None
    return checked.model_dump()


@dataclass(frozen=True)
class JobSpec:
    """A job to enqueue: what to run and when. Arguments are checked on enqueue."""

    name: str
    args: Mapping[str, Any]
    priority: Priority = "normal"
    delay_seconds: float = 0


class JobNotFoundError(LookupError):
    """No job with this id (or, for a requeue, not in the dead-letter queue)."""


class JobNotCancellableError(Exception):
    """The job already started (or finished): only a queued job can be cancelled."""

    def __init__(self, record: JobRecord) -> None:
        super().__init__(f"job {record.id} is {record.status}: only a queued job can be cancelled")
        self.record = record


# --- the queue ---------------------------------------------------------------------------


def build_huey(settings: Settings) -> Huey:
    """The huey instance of one app; the only place that knows where the queue lives.

    To move the queue to Redis (several machines, exercise 10.4), return
    ``PriorityRedisHuey(QUEUE_NAME, url=settings.redis_url, results=False)`` here; the
    plain ``RedisHuey`` refuses priorities. ``results=False``: job outcomes are in the
    registry, so huey need not keep return values (or errors) nobody reads.
    """
    return SqliteHuey(QUEUE_NAME, filename=settings.jobs_db_path, results=False)


class JobQueue:
    """Enqueue, cancel and requeue jobs, and keep their records current.

    One per app (``create_app``) or worker process: each builds its own huey instance and
    registers the jobs on it, so that apps built in one process never share state through
    a module-level global.
    """

    def __init__(self, settings: Settings, *, services: JobServices) -> None:
        self.settings = settings
        self.services = services
        self.huey = build_huey(settings)
        # After huey: its storage created the file and switched it to WAL, which lets
        # readers (the dashboard) read while a worker writes.
        self.registry = JobRegistry(settings.jobs_db_path)
        # The id under which this queue's worker beats (job_worker.WorkerLease); the jobs
        # it starts carry it, so that they can be failed if the process dies mid-job.
        self.worker_id: str | None = None
        self._tasks = {name: self._register(name, job) for name, job in JOBS.items()}
        self.huey.pre_execute(name="start_attempt")(self._start_attempt)
        self.huey.signal(huey_signals.SIGNAL_ERROR)(self._on_error)
        self.huey.signal(huey_signals.SIGNAL_COMPLETE)(self._on_complete)
        self.huey.signal(huey_signals.SIGNAL_REVOKED)(self._on_revoked)
        self.huey.signal(huey_signals.SIGNAL_CANCELED)(self._on_refused)
        self.huey.signal(huey_signals.SIGNAL_INTERRUPTED)(self._on_interrupted)

    def _register(self, name: str, job: JobDefinition) -> TaskWrapper:
        services = self.services

        def run(args: dict[str, Any], request_id: str | None = None) -> None:
            # request_id: None for a job no request enqueued (the recurring cleanup), and
            # for one enqueued before jobs carried it (a queue file from 10.2).
            with bound_request_id(request_id):
                job.function(services, job.args_model.model_validate(args))

        # Registered as "<this module>.<name>": a worker process finds the same task by
        # that name in its own huey instance.
        return self.huey.task(name=name)(run)

    # --- enqueueing ----------------------------------------------------------------------

    def enqueue(
        self,
        name: str,
        args: Mapping[str, Any] | None = None,
        *,
        priority: Priority = "normal",
        delay_seconds: float = 0,
    ) -> JobRecord:
        """Record a job as ``queued`` and put it in the queue; returns its record."""
        spec = JobSpec(name, args or {}, priority, delay_seconds)
        return self._submit([self._new_record(spec, batch_id=None)])[0]

    def enqueue_batch(self, specs: list[JobSpec]) -> tuple[str, list[JobRecord]]:
        """Enqueue jobs that share a batch id; returns it with their records."""
        batch_id = str(uuid.uuid4())
        return batch_id, self._submit([self._new_record(s, batch_id=batch_id) for s in specs])

    def _new_record(self, spec: JobSpec, *, batch_id: str | None) -> JobRecord:
        now = utcnow()
        return JobRecord(
            id=str(uuid.uuid4()),
            name=spec.name,
            args=validate_args(spec.name, spec.args),
            status="queued",
            attempts=0,
            priority=spec.priority,
            created_at=now,
            run_at=now + timedelta(seconds=spec.delay_seconds) if spec.delay_seconds else None,
            started_at=None,
            finished_at=None,
            error=None,
            batch_id=batch_id,
        )

    def _submit(self, records: list[JobRecord]) -> list[JobRecord]:
        # The records first: a worker may take the job the moment it is in the queue, and
        # its first step is to mark the record running.
        self.registry.add(records)
        # The id of the request enqueueing (a contextvar: Starlette copies it into the
        # thread that runs this), for the job's log lines; None outside a request.
        request_id = current_request_id()
        for index, record in enumerate(records):
            task = self._tasks[record.name].s(
                record.args,
                request_id,
                id=record.id,  # one id for the record and the huey task: revoke needs it
                eta=record.run_at,
                priority=PRIORITIES[record.priority],
                retries=self.settings.job_max_retries,
                retry_delay=self.settings.job_retry_delay_seconds,
                retry_backoff=RETRY_BACKOFF,
            )
            try:
                self.huey.enqueue(task)
            except Exception:
                for unsent in records[index:]:  # no record for a job that is not queued
                    self.registry.delete(unsent.id)
                raise
            logger.info(
                "job enqueued id=%s name=%s priority=%s run_at=%s",
                record.id,
                record.name,
                record.priority,
                record.run_at.isoformat() if record.run_at else "now",
            )
        return records

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job; raises ``JobNotFoundError`` or ``JobNotCancellableError``.

        The registry decides, in one conditional update that a worker starting the job
        cannot interleave with. Only then is the huey task revoked, so that the worker drops
        it unseen; a revoked task that had already started would lose its retries.
        """
        changed, record = self.registry.cancel(job_id, utcnow())
        if record is None:
            raise JobNotFoundError(job_id)
        if not changed:
            if record.status == "cancelled":
                return record  # cancelling twice is not an error
            raise JobNotCancellableError(record)
        self.huey.revoke_by_id(job_id, revoke_once=True)
        logger.info("job cancelled id=%s name=%s", record.id, record.name)
        return record

    def requeue(self, job_id: str) -> JobRecord:
        """Enqueue a dead-lettered job again, as a new job; the old one leaves the queue."""
        dead = self.registry.take_from_dead_letter(job_id)
        if dead is None:
            raise JobNotFoundError(job_id)
        try:
            record = self.enqueue(dead.name, dead.args, priority=dead.priority)
        except Exception:
            self.registry.return_to_dead_letter(job_id)
            raise
        logger.info("job requeued id=%s from_dead_letter=%s", record.id, job_id)
        return record

    def close(self) -> None:
        """Close huey's connection to the file (the registry keeps none open)."""
        self.huey.storage.close()

    # --- keeping records current (called by huey, in the worker threads) -----------------

    def _start_attempt(self, task: Task) -> None:
        # A pre-execute hook: runs right before the job, and may refuse it. This is where a
        # cancel that raced with the worker is caught (see JobRegistry.start_attempt).
        if not self.registry.start_attempt(task.id, utcnow(), worker=self.worker_id):
            raise CancelExecution(retry=False)
        with bound_request_id(request_id_of(task)):
            logger.info("job started id=%s name=%s", task.id, task.name)

    def _on_error(self, signal: str, task: Task, exc: BaseException) -> None:
        now = utcnow()
        # huey retries while task.retries > 0, after task.retry_delay seconds, and then
        # multiplies that delay by RETRY_BACKOFF for the next time.
        retry_at = now + timedelta(seconds=task.retry_delay) if task.retries else None
        error = f"{type(exc).__name__}: {exc}"
        self.registry.attempt_failed(task.id, error=error, at=now, retry_at=retry_at)
        record = self.registry.get(task.id)
        attempt = record.attempts if record else "?"
        if retry_at is not None:
            outcome = f"retry in {task.retry_delay:g} s ({task.retries} left)"
        else:
            outcome = "no retry left: failed, moved to the dead-letter queue"
        with bound_request_id(request_id_of(task)):
            logger.warning(
                "job failed id=%s name=%s attempt=%s error=%r; %s",
                task.id,
                task.name,
                attempt,
                error,
                outcome,
            )
        alert = self.registry.note_failed_attempt(
            now,
            threshold=self.settings.job_alert_threshold,
            window_seconds=self.settings.job_alert_window_seconds,
        )
        if alert is not None:
            logger.error(
                "job alert: %s (JOB_ALERT_THRESHOLD=%d)",
                alert.message,
                self.settings.job_alert_threshold,
            )

    def _on_complete(self, signal: str, task: Task) -> None:
        self.registry.succeeded(task.id, utcnow())
        with bound_request_id(request_id_of(task)):
            logger.info("job succeeded id=%s name=%s", task.id, task.name)

    def _on_revoked(self, signal: str, task: Task) -> None:
        # Cancelled while queued; the record already says so.
        logger.info("job skipped id=%s name=%s: cancelled", task.id, task.name)

    def _on_refused(self, signal: str, task: Task) -> None:
        # _start_attempt refused the job (a cancel won the race). The revocation that the
        # cancel wrote afterwards will never be consumed by a run now: drop it.
        self.huey.restore_by_id(task.id)
        logger.info("job skipped id=%s name=%s: not queued any more", task.id, task.name)

    def _on_interrupted(self, signal: str, task: Task) -> None:
        # The worker stopped while the job ran: whether it did its work is unknown, so it
        # is not retried blindly; it waits in the dead-letter queue for someone to decide.
        error = "interrupted: the worker stopped while the job ran"
        self.registry.attempt_failed(task.id, error=error, at=utcnow(), retry_at=None)
        with bound_request_id(request_id_of(task)):
            logger.warning("job failed id=%s name=%s error=%r", task.id, task.name, error)


def request_id_of(task: Task) -> str | None:
    """The request id a job carries (its task's second argument), or None."""
    args = task.args or ()
    value = args[1] if len(args) > 1 else None
    return value if isinstance(value, str) else None


def build_job_queue(
    settings: Settings, metrics: Metrics, *, database: "Database | None" = None
) -> JobQueue:
    """The queue of one app or worker process, with its own store view and email service.

    The jobs get their own store instance (same data: the process's memory, or
    ``database``, the app's own, whose connection pool they share) whose round trips count
    in ``job_store_operations_total``, apart from the requests'.
    """
    if database is None and settings.database_url:
        # Else the jobs would quietly look for the users in memory, and find none.
        raise ValueError("DATABASE_URL is set: pass the process's Database (build_database)")
    store = build_user_store(
        settings, metrics, database=database, counter=metrics.job_store_operations
    )
    services = JobServices(store=store, email=build_email_service(settings), settings=settings)
    return JobQueue(settings, services=services)
