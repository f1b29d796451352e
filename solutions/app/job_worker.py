"""Running the jobs: huey's consumer inside the app (``JOBS_WORKER=inprocess``) or alone.

huey's ``Consumer`` owns worker threads (they take jobs from the queue and run them) and a
scheduler thread (it moves delayed jobs and retries into the queue when they are due).
``Consumer.run()`` is meant to be a program's main loop: it installs handlers for
SIGINT, SIGTERM and SIGHUP and blocks. That is right for ``python -m solutions.app worker``
(``run_standalone_worker``) and wrong inside uvicorn, which must keep its own handlers to
shut down gracefully. So the in-process worker calls only ``start()`` (which starts the
threads) with the signal handler installation overridden to do nothing, and the lifespan
calls ``stop()``.

Two more adjustments to huey's defaults, both about time resolution:

- huey's scheduler wakes once a second at best, which would round a 0.2 s retry delay up
  to a second; ``JobScheduler`` polls four times a second.
- huey's periodic tasks are crontabs, checked once a minute: too coarse for "every
  CLEANUP_INTERVAL_SECONDS", which may be 1. ``RecurringJob`` enqueues a job every
  interval instead, from the same scheduler thread, so it runs wherever a worker runs.

And one addition for exercise 10.3 (chaos): every worker keeps a lease (``WorkerLease``), a
heartbeat in the job registry, and fails the running jobs of workers whose heartbeat
stopped, i.e. of processes that died mid-job.

Exercise 10.4 (distributed locking): with ``CLEANUP_LOCK=redis`` the recurring cleanup asks
a gate in Redis (``locks.SyncRecurringRunGate``) before each enqueue, so that one instance
of many runs it per interval, whoever's queue it is in.
"""

import logging
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import anyio.to_thread
from anyio.from_thread import BlockingPortal, start_blocking_portal
from huey.consumer import Consumer, Scheduler

from .job_registry import JobRecord, utcnow
from .jobs import JobQueue, build_job_queue
from .locks import SyncRecurringRunGate
from .metrics import Metrics
from .settings import Settings
from .store import build_database

logger = logging.getLogger(__name__)

# An idle worker polls the queue after 0.05 s, then waits a little longer each time, up to
# 0.25 s: a new job starts within a quarter of a second, and an idle worker costs a few
# cheap SQLite reads per second. (Redis storage blocks on the queue instead of polling.)
WORKER_FIRST_POLL_SECONDS = 0.05
WORKER_MAX_POLL_SECONDS = 0.25
SCHEDULER_POLL_SECONDS = 0.25
# A worker beats every second; one silent for ten is taken for dead. Ten, not two: a false
# "dead" fails a job that is in fact running, which is worse than noticing a crash late.
HEARTBEAT_SECONDS = 1.0
LEASE_SECONDS = 10.0


class WorkerLease:
    """This worker's heartbeat, and the recovery of the jobs of workers that have none.

    A thread of its own, not the scheduler's: the scheduler stops with the workers' stop
    flag, which is set as soon as a shutdown starts, while the jobs in hand run on for up
    to the shutdown timeout; their worker must go on beating until they are done.
    """

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self.registry = queue.registry
        # Queued jobs that no queue held at the last beat (see _recover_lost_jobs).
        self._unheld: set[str] = set()
        # Readable in the records (host and pid), unique even where pids repeat
        # (containers), thanks to the random part.
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-worker-lease", daemon=True)

    def start(self) -> None:
        """Beat once (before any job starts under this id), recover, then keep beating."""
        self._beat()
        self._thread.start()

    def _recover_lost_jobs(self, now: datetime) -> list[JobRecord]:
        """Fail the queued jobs that huey holds neither in its queue nor in its schedule,
        at two beats in a row.

        A job leaves the queue when a worker takes it, and is marked running a moment later;
        a process killed in between leaves it queued in the records and nowhere in huey.
        Two beats, a second apart: a live worker marks its job running within milliseconds,
        and the scheduler moves a due job from the schedule to the queue as fast.
        """
        huey = self.queue.huey
        held = {task.id for task in huey.pending()} | {task.id for task in huey.scheduled()}
        unheld = self.registry.queued_ids() - held
        lost = self.registry.fail_lost_jobs(now, unheld & self._unheld)
        self._unheld = unheld - {job.id for job in lost}
        return lost

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self.registry.forget_worker(self.worker_id)
        except Exception:
            logger.exception("could not remove the heartbeat of worker %s", self.worker_id)

    def _run(self) -> None:
        while not self._stopped.wait(HEARTBEAT_SECONDS):
            self._beat()

    def _beat(self) -> None:
        now = utcnow()
        try:
            self.registry.heartbeat(self.worker_id, now)
            orphans = self.registry.fail_orphaned_jobs(now, lease_seconds=LEASE_SECONDS)
            lost = self._recover_lost_jobs(now)
        except Exception:
            # Logged, not raised: the next beat tries again, and a lost beat or two is
            # what the lease is for.
            logger.exception("worker heartbeat failed")
            return
        failed = [(job, "interrupted: the process running it died") for job in orphans]
        failed += [(job, "lost: the process that took it died before it started") for job in lost]
        for job, error in failed:
            logger.warning("job failed id=%s name=%s error=%r", job.id, job.name, error)


class RecurringJob:
    """Enqueue job ``name`` every ``interval_seconds``, wherever a worker's scheduler runs.

    The cadence survives restarts: the first due time is the last enqueue that the
    registry recorded (by any process sharing the file) plus one interval, or one interval
    from now on a fresh file. Before each enqueue it checks the registry again and skips
    if another worker enqueued the job meanwhile. That narrows, but does not close, the
    race between workers sharing a file, and does nothing for instances that each have a
    queue of their own (on hosts of their own). ``gate``, a lock in Redis, closes both
    (exercise 10.4): when it says another instance runs the job this interval, this one
    skips the interval.
    """

    def __init__(
        self,
        queue: JobQueue,
        name: str,
        interval_seconds: float,
        *,
        gate: SyncRecurringRunGate | None = None,
    ) -> None:
        self.queue = queue
        self.name = name
        self.interval = timedelta(seconds=interval_seconds)
        self.gate = gate
        self._due: datetime | None = None

    def tick(self, now: datetime) -> None:
        """Called by the scheduler a few times a second: enqueue the job if it is due."""
        if self._due is None:
            last = self.queue.registry.last_created_at(self.name)
            self._due = (last or now) + self.interval
        if now < self._due:
            return
        last = self.queue.registry.last_created_at(self.name)
        if last is not None and now < last + self.interval:
            self._due = last + self.interval  # another worker enqueued it meanwhile
            return
        if self.gate is not None and not self.gate.should_run():
            self._due = now + self.interval  # another instance runs it this interval
            return
        record = self.queue.enqueue(self.name)
        self._due = record.created_at + self.interval


def build_cleanup_gate(settings: Settings) -> SyncRecurringRunGate | None:
    """The Redis gate of the recurring cleanup with CLEANUP_LOCK=redis; else None."""
    if settings.cleanup_lock != "redis":
        return None
    return SyncRecurringRunGate.from_url(
        settings.redis_url,
        prefix=settings.redis_key_prefix,
        name="purge_deleted_users",
        interval_seconds=settings.cleanup_interval_seconds,
        timeout=settings.redis_socket_timeout_seconds,
    )


class JobScheduler(Scheduler):
    """huey's scheduler, polling four times a second and driving the recurring jobs."""

    def __init__(self, huey: object, stop_flag: object, *, recurring: list[RecurringJob]) -> None:
        super().__init__(huey, stop_flag, interval=1, periodic=False)
        # huey clamps the interval to 1-60 s in __init__; its loop works with any interval.
        self.interval = SCHEDULER_POLL_SECONDS
        self._recurring = recurring

    def loop(self, now: datetime | None = None) -> None:
        moment = utcnow()
        for job in self._recurring:
            try:
                job.tick(moment)
            except Exception:
                # Logged, not raised: an exception would end the scheduler thread, and with
                # it delayed jobs and retries.
                logger.exception("could not enqueue the recurring job %s", job.name)
        super().loop(now)


class JobConsumer(Consumer):
    """huey's consumer with this app's scheduler and polling, configured from settings.

    As is, for a process of its own: ``run()`` installs signal handlers. SIGTERM (what
    ``docker stop`` and Kubernetes send) stops gracefully, waiting up to
    JOBS_SHUTDOWN_TIMEOUT_SECONDS for running jobs; SIGINT (Ctrl-C) stops at once.
    """

    def __init__(self, queue: JobQueue) -> None:
        settings = queue.settings
        self.gate = build_cleanup_gate(settings)
        # Before super().__init__(), which creates the scheduler (_create_scheduler).
        self._recurring = [
            RecurringJob(
                queue, "purge_deleted_users", settings.cleanup_interval_seconds, gate=self.gate
            )
        ]
        self.lease = WorkerLease(queue)
        queue.worker_id = self.lease.worker_id
        super().__init__(
            queue.huey,
            workers=settings.jobs_workers,
            worker_type="thread",
            periodic=False,  # no crontab tasks: the recurring job is ours
            initial_delay=WORKER_FIRST_POLL_SECONDS,
            max_delay=WORKER_MAX_POLL_SECONDS,
            graceful_signal="TERM",
            shutdown_timeout=settings.jobs_shutdown_timeout_seconds,
        )

    def _create_scheduler(self) -> Scheduler:
        # huey's documented extension point for a custom scheduler.
        return JobScheduler(self.huey, self.stop_flag, recurring=self._recurring)

    def start(self) -> None:
        self.lease.start()  # first: a job must never run under an id that has no heartbeat
        super().start()

    def stop(self, graceful: bool = False) -> None:
        """huey's stop, then: record the jobs still running as interrupted, end the lease."""
        super().stop(graceful=graceful)
        # Idempotent (huey's run() calls it again): each job is reported once.
        self.huey.notify_interrupted_tasks()
        self.lease.stop()
        if self.gate is not None:
            self.gate.close()  # the scheduler has stopped: nobody asks it any more


class EmbeddedJobConsumer(JobConsumer):
    """A consumer that runs inside another program: threads only, no signal handlers."""

    def _set_signal_handlers(self) -> None:
        # Called at the end of start(). Installing none leaves SIGTERM and SIGINT to
        # uvicorn, whose graceful shutdown runs the lifespan, which stops this consumer.
        # (signal.signal would also fail here: it works only in the main thread, and a
        # lifespan may run in another one, as under TestClient.)
        pass

    def stop_taking_jobs(self) -> None:
        """Let each worker thread finish the job in hand, and take no other.

        Called when a shutdown starts (exercise 10.3): the jobs still queued stay in the
        queue, on disk, for the next start, instead of being started now only to be cut
        off by the shutdown timeout. Returns at once; ``stop_gracefully`` waits.
        """
        self.stop_flag.set()

    def stop_gracefully(self, timeout: float) -> None:
        """Stop taking jobs; wait up to ``timeout`` seconds for the running ones.

        A job still running then is recorded as interrupted. Its thread is a daemon: it
        goes on until the process exits, which never waits for it.
        """
        self.shutdown_timeout = timeout  # read by huey's stop(), when it joins the workers
        self.stop(graceful=True)


class InProcessWorker:
    """The app's running worker (JOBS_WORKER=inprocess), as the lifespan drives it."""

    def __init__(self, consumer: EmbeddedJobConsumer) -> None:
        self._consumer = consumer
        self._stopped = False

    def stop_taking_jobs(self) -> None:
        self._consumer.stop_taking_jobs()

    async def stop(self, timeout: float) -> None:
        """Stop, waiting up to ``timeout`` seconds for running jobs; once only."""
        if self._stopped:
            return
        self._stopped = True
        # In a thread, so that this event loop stays free: a job finishing meanwhile may be
        # waiting for it, through the portal.
        await anyio.to_thread.run_sync(self._consumer.stop_gracefully, timeout)
        logger.info("jobs worker stopped")


@asynccontextmanager
async def job_worker(queue: JobQueue) -> AsyncIterator[InProcessWorker | None]:
    """Run the app's worker for the duration of the block, if JOBS_WORKER=inprocess.

    Yields the running worker (``None`` with JOBS_WORKER=none), which the lifespan stops
    itself within the shutdown's time budget; if it has not, leaving the block stops it,
    waiting up to JOBS_SHUTDOWN_TIMEOUT_SECONDS.
    """
    if queue.settings.jobs_worker != "inprocess":
        logger.info("jobs worker off (JOBS_WORKER=none): jobs wait for a worker process")
        yield None
        return
    # The portal lets the worker threads run store calls on this event loop.
    async with BlockingPortal() as portal:
        queue.services.portal = portal
        consumer = EmbeddedJobConsumer(queue)
        consumer.start()
        logger.info(
            "jobs worker started threads=%d db=%s",
            queue.settings.jobs_workers,
            queue.settings.jobs_db_path,
        )
        worker = InProcessWorker(consumer)
        try:
            yield worker
        finally:
            await worker.stop(queue.settings.jobs_shutdown_timeout_seconds)
            queue.services.portal = None
            # A job thread left running past the timeout may be waiting on a store call:
            # cancel it rather than wait for it, which would stretch the shutdown again.
            await portal.stop(cancel_remaining=True)


def run_standalone_worker(settings: Settings) -> None:
    """``python -m solutions.app worker``: run jobs from JOBS_DB_PATH until a signal.

    With DATABASE_URL it reads the users from the database the API writes them to; with
    memory storage it has users of its own (none), which the warning below says.
    """
    database = build_database(settings)
    # No /metrics here: nobody would scrape it.
    queue = build_job_queue(settings, Metrics(), database=database)
    if database is None:
        logger.warning(
            "the users live in each process's memory (store.py): welcome emails for users "
            "created by an API process find no user here until the store is shared (10.4)"
        )
    try:
        # A private event loop, in a thread, for the jobs' store calls; the database's
        # connections belong to that loop, so it is opened and closed there too.
        with start_blocking_portal() as portal:
            if database is not None:
                portal.call(database.open)
            queue.services.portal = portal
            try:
                consumer = JobConsumer(queue)
                logger.info(
                    "jobs worker process started pid=%d threads=%d db=%s storage=%s",
                    os.getpid(),
                    settings.jobs_workers,
                    settings.jobs_db_path,
                    settings.storage,  # not DATABASE_URL: it may hold a password
                )
                consumer.run()  # returns after SIGTERM or SIGINT
            finally:
                if database is not None:
                    portal.call(database.aclose)
    finally:
        queue.close()
    logger.info("jobs worker process stopped")
