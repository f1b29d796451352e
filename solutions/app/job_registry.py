"""The job registry: one row per job with its status, next to the queue in the same SQLite file.

huey keeps serialized tasks only until a worker takes them, and keeps no list of jobs with
their statuses. The registry is that list. ``JobQueue`` (``jobs.py``) writes a row when it
enqueues a job, and huey's hooks and signals update it as a worker runs the job. The JSON
API, the dashboard, batches, alerts and the dead-letter queue all read it.

Writers are many: worker threads, the API's thread pool, and other processes sharing the
file (a standalone worker). So:

- each method opens its own short-lived connection: an ``sqlite3.Connection`` must not be
  used by two threads at once, and a connection per call needs no lock and no cleanup;
- every status change is a single ``UPDATE`` whose ``WHERE`` names the status it expects
  (``queued`` -> ``running``, say). When a cancel and a worker race for the same queued
  job, SQLite runs the two updates one after the other and exactly one of them matches;
- the few read-then-write steps (the alert window) run in ``BEGIN IMMEDIATE``
  transactions, which take the write lock before reading.

A process that dies (``kill -9``, a crash, the OOM killer) leaves the jobs it was running
recorded as ``running`` forever, unless someone notices (exercise 10.3, chaos). So every
worker keeps a heartbeat in ``job_worker`` and stamps the jobs it starts with its id; a
running job whose worker has not beaten for a lease is failed by whichever worker notices
first (``fail_orphaned_jobs``). A heartbeat rather than "is that pid alive?": processes in
containers have pids of their own namespace (the app is pid 1 in every container), so a pid
says nothing about a process that ran in another container or before a restart.
"""

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
Priority = Literal["normal", "high"]

# How long a call waits for another connection's write lock before it fails. Writes take
# milliseconds; seconds of waiting means something is wrong.
BUSY_TIMEOUT_SECONDS = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_record (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: "newest first" sorts on it
    id TEXT NOT NULL UNIQUE,                -- also the huey task id
    name TEXT NOT NULL,
    args TEXT NOT NULL,                     -- JSON object
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    priority TEXT NOT NULL,
    created_at TEXT NOT NULL,               -- ISO 8601, UTC
    run_at TEXT,
    started_at TEXT,
    finished_at TEXT,
    error TEXT,
    batch_id TEXT,
    dead_letter INTEGER NOT NULL DEFAULT 0, -- 1: failed for good, waiting for a requeue
    worker TEXT                             -- the worker running (or that last ran) it
);
CREATE INDEX IF NOT EXISTS job_record_name ON job_record (name, seq);
CREATE INDEX IF NOT EXISTS job_record_batch ON job_record (batch_id)
    WHERE batch_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS job_record_dead_letter ON job_record (seq) WHERE dead_letter = 1;
CREATE TABLE IF NOT EXISTS job_failure (at REAL NOT NULL);  -- failed attempts, for alerts
CREATE TABLE IF NOT EXISTS job_worker (     -- live workers' heartbeats
    id TEXT PRIMARY KEY,
    last_seen REAL NOT NULL                 -- Unix time of the last heartbeat
);
CREATE TABLE IF NOT EXISTS job_alert (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    raised_at TEXT NOT NULL,
    raised_at_epoch REAL NOT NULL,
    failures INTEGER NOT NULL,
    window_seconds REAL NOT NULL,
    message TEXT NOT NULL
);
"""

# Created after the migration in JobRegistry.__init__: files made before exercise 10.3 have
# no worker column until then.
_RUNNING_INDEX = (
    "CREATE INDEX IF NOT EXISTS job_record_running ON job_record (worker) WHERE status = 'running'"
)

_COLUMNS = (
    "id, name, args, status, attempts, priority, created_at, run_at, started_at, "
    "finished_at, error, batch_id, dead_letter"
)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job as the registry knows it; ``routers/jobs.py`` turns it into JSON."""

    id: str
    name: str
    args: dict[str, Any]
    status: JobStatus
    attempts: int  # attempts started so far
    priority: Priority
    created_at: datetime
    run_at: datetime | None  # when a delayed job, or the next retry, may start
    started_at: datetime | None  # when the first attempt started
    finished_at: datetime | None
    error: str | None  # the last failure, kept after a successful retry
    batch_id: str | None
    dead_letter: bool = False


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """How far the jobs of one batch got; ``done`` once none is queued or running."""

    id: str
    total: int
    succeeded: int
    failed: int
    cancelled: int
    pending: int

    @property
    def done(self) -> bool:
        return self.pending == 0


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """Raised when too many job attempts failed within the alert window."""

    raised_at: datetime
    failures: int
    window_seconds: float
    message: str


def utcnow() -> datetime:
    return datetime.now(UTC)


def _text(moment: datetime | None) -> str | None:
    # A fixed format (always with microseconds, always UTC), so that the stored strings
    # sort like the moments they stand for.
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="microseconds")


def _moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        name=row["name"],
        args=json.loads(row["args"]),
        status=row["status"],
        attempts=row["attempts"],
        priority=row["priority"],
        created_at=datetime.fromisoformat(row["created_at"]),
        run_at=_moment(row["run_at"]),
        started_at=_moment(row["started_at"]),
        finished_at=_moment(row["finished_at"]),
        error=row["error"],
        batch_id=row["batch_id"],
        dead_letter=bool(row["dead_letter"]),
    )


class JobRegistry:
    """Job records, batches and alerts in the SQLite file at ``path``."""

    def __init__(self, path: str) -> None:
        self._path = path
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
            columns = {row["name"] for row in conn.execute("PRAGMA table_info(job_record)")}
            if "worker" not in columns:  # a queue file from before exercise 10.3
                conn.execute("ALTER TABLE job_record ADD COLUMN worker TEXT")
            conn.execute(_RUNNING_INDEX)

    # --- connections ------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: autocommit, so that each statement is its own transaction
        # unless a method opens one explicitly (see _transaction).
        connection = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        connection.row_factory = sqlite3.Row
        with closing(connection):
            yield connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # the write lock now, not at the first write
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # --- writing records ----------------------------------------------------------------

    def add(self, records: list[JobRecord]) -> None:
        """Insert new records in one transaction: a batch appears whole or not at all."""
        rows = [
            (
                r.id,
                r.name,
                json.dumps(r.args),
                r.status,
                r.attempts,
                r.priority,
                _text(r.created_at),
                _text(r.run_at),
                _text(r.started_at),
                _text(r.finished_at),
                r.error,
                r.batch_id,
                int(r.dead_letter),
            )
            for r in records
        ]
        with self._transaction() as conn:
            conn.executemany(
                f"INSERT INTO job_record ({_COLUMNS}) VALUES ({', '.join('?' * 13)})", rows
            )

    def delete(self, job_id: str) -> None:
        """Forget a record whose job never made it into the queue."""
        with self._connect() as conn:
            conn.execute("DELETE FROM job_record WHERE id = ?", (job_id,))

    def start_attempt(self, job_id: str, at: datetime, *, worker: str | None = None) -> bool:
        """``queued`` -> ``running``, one more attempt; ``False`` if the job is not queued.

        Called by the worker right before it runs the job. ``False`` means a cancel got
        there first (or the job is unknown): the worker must not run it. ``worker`` is the
        id under which that worker beats (``heartbeat``).
        """
        with self._connect() as conn:
            changed = conn.execute(
                "UPDATE job_record SET status = 'running', attempts = attempts + 1, "
                "started_at = COALESCE(started_at, ?), worker = ? "
                "WHERE id = ? AND status = 'queued'",
                (_text(at), worker, job_id),
            ).rowcount
        return changed == 1

    def attempt_failed(
        self, job_id: str, *, error: str, at: datetime, retry_at: datetime | None
    ) -> None:
        """Record a failed attempt: queued again until ``retry_at``, or failed for good.

        ``retry_at=None`` means no retry is left: the job becomes ``failed`` and enters the
        dead-letter queue.
        """
        with self._connect() as conn:
            if retry_at is not None:
                conn.execute(
                    "UPDATE job_record SET status = 'queued', error = ?, run_at = ? "
                    "WHERE id = ? AND status = 'running'",
                    (error, _text(retry_at), job_id),
                )
            else:
                conn.execute(
                    "UPDATE job_record SET status = 'failed', error = ?, finished_at = ?, "
                    "dead_letter = 1 WHERE id = ? AND status = 'running'",
                    (error, _text(at), job_id),
                )

    def succeeded(self, job_id: str, at: datetime) -> None:
        with self._connect() as conn:
            conn.execute(
                "UPDATE job_record SET status = 'succeeded', finished_at = ?, dead_letter = 0 "
                "WHERE id = ? AND status = 'running'",
                (_text(at), job_id),
            )

    def cancel(self, job_id: str, at: datetime) -> tuple[bool, JobRecord | None]:
        """``queued`` -> ``cancelled``. Returns whether it changed, and the record now."""
        with self._connect() as conn:
            changed = conn.execute(
                "UPDATE job_record SET status = 'cancelled', finished_at = ? "
                "WHERE id = ? AND status = 'queued'",
                (_text(at), job_id),
            ).rowcount
        return changed == 1, self.get(job_id)

    def take_from_dead_letter(self, job_id: str) -> JobRecord | None:
        """Remove a job from the dead-letter queue; ``None`` if it is not in it.

        Only one of two concurrent requeues of the same job gets the record.
        """
        with self._connect() as conn:
            changed = conn.execute(
                "UPDATE job_record SET dead_letter = 0 WHERE id = ? AND dead_letter = 1",
                (job_id,),
            ).rowcount
        return self.get(job_id) if changed == 1 else None

    def return_to_dead_letter(self, job_id: str) -> None:
        """Undo ``take_from_dead_letter`` when the requeue itself failed."""
        with self._connect() as conn:
            conn.execute("UPDATE job_record SET dead_letter = 1 WHERE id = ?", (job_id,))

    # --- workers' heartbeats, and the jobs of dead workers -------------------------------

    def heartbeat(self, worker: str, at: datetime) -> None:
        """Record that ``worker`` is alive now."""
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO job_worker (id, last_seen) VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
                (worker, at.timestamp()),
            )

    def forget_worker(self, worker: str) -> None:
        """A worker that stopped cleanly: no job of its can be running any more."""
        with self._connect() as conn:
            conn.execute("DELETE FROM job_worker WHERE id = ?", (worker,))

    def fail_orphaned_jobs(self, at: datetime, *, lease_seconds: float) -> list[JobRecord]:
        """Fail the running jobs whose worker has not beaten for ``lease_seconds``.

        Such a job's process died mid-job. Whether the job did its work is unknown, so, as
        for a job interrupted by a shutdown (``JobQueue._on_interrupted``), it is not rerun
        blindly: it fails into the dead-letter queue, where someone can requeue it. Returns
        the jobs failed here.
        """
        stale_before = at.timestamp() - lease_seconds
        orphaned = (
            "status = 'running' AND (worker IS NULL OR worker NOT IN "
            "(SELECT id FROM job_worker WHERE last_seen > ?))"
        )
        with self._transaction() as conn:  # the write lock first: nobody starts a job meanwhile
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM job_record WHERE {orphaned}", (stale_before,)
            ).fetchall()
            if rows:
                conn.execute(
                    "UPDATE job_record SET status = 'failed', dead_letter = 1, finished_at = ?, "
                    "error = 'interrupted: its worker ' || COALESCE(worker, '?') || "
                    f"' died while it ran (no heartbeat for {lease_seconds:g} s)' "
                    f"WHERE {orphaned}",
                    (_text(at), stale_before),
                )
            conn.execute("DELETE FROM job_worker WHERE last_seen <= ?", (stale_before,))
        return [_record(row) for row in rows]

    def queued_ids(self) -> set[str]:
        """The ids of every job recorded as queued (waiting, or delayed, or to retry)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT id FROM job_record WHERE status = 'queued'").fetchall()
        return {row[0] for row in rows}

    def fail_lost_jobs(self, at: datetime, job_ids: set[str]) -> list[JobRecord]:
        """Fail those of ``job_ids`` that are still queued: jobs that no queue holds any more.

        A worker took each from huey's queue and died before starting it (a kill between the
        two). It never ran, but its task is gone, so nothing would ever run it: it fails
        into the dead-letter queue, where someone can requeue it. Returns the jobs failed.
        """
        if not job_ids:
            return []
        ids = sorted(job_ids)
        lost = f"status = 'queued' AND id IN ({', '.join('?' * len(ids))})"
        with self._transaction() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM job_record WHERE {lost}", ids).fetchall()
            if rows:
                conn.execute(
                    "UPDATE job_record SET status = 'failed', dead_letter = 1, finished_at = ?, "
                    "error = 'lost: a worker took it from the queue and died before it "
                    f"started' WHERE {lost}",
                    (_text(at), *ids),
                )
        return [_record(row) for row in rows]

    # --- reading records ----------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM job_record WHERE id = ?", (job_id,)
            ).fetchone()
        return _record(row) if row else None

    def recent(
        self, *, name: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[JobRecord]:
        """Records, newest first, optionally only those with this name and/or status."""
        query = f"SELECT {_COLUMNS} FROM job_record WHERE 1 = 1"
        params: list[Any] = []
        if name is not None:
            query += " AND name = ?"
            params.append(name)
        if status is not None:
            query += " AND status = ?"
            params.append(status)
        query += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)
        with self._connect() as conn:
            return [_record(row) for row in conn.execute(query, params)]

    def dead_letter(self, *, limit: int = 100) -> list[JobRecord]:
        """Jobs that failed for good and were not requeued yet, newest first."""
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM job_record WHERE dead_letter = 1 "
                "ORDER BY seq DESC LIMIT ?",
                (limit,),
            )
            return [_record(row) for row in rows]

    def status_counts(self) -> dict[JobStatus, int]:
        """How many jobs are in each status, every status included (0 if none)."""
        counts: dict[JobStatus, int] = dict.fromkeys(JOB_STATUSES, 0)
        with self._connect() as conn:
            for status, count in conn.execute(
                "SELECT status, COUNT(*) FROM job_record GROUP BY status"
            ):
                counts[status] = count
        return counts

    def batch(self, batch_id: str) -> BatchSummary | None:
        """The progress of a batch; ``None`` if no job carries this batch id."""
        with self._connect() as conn:
            counts = dict(
                conn.execute(
                    "SELECT status, COUNT(*) FROM job_record WHERE batch_id = ? GROUP BY status",
                    (batch_id,),
                ).fetchall()
            )
        if not counts:
            return None
        return BatchSummary(
            id=batch_id,
            total=sum(counts.values()),
            succeeded=counts.get("succeeded", 0),
            failed=counts.get("failed", 0),
            cancelled=counts.get("cancelled", 0),
            pending=counts.get("queued", 0) + counts.get("running", 0),
        )

    def last_created_at(self, name: str) -> datetime | None:
        """When the newest job with this name was enqueued, by any process sharing the file."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT created_at FROM job_record WHERE name = ? ORDER BY seq DESC LIMIT 1",
                (name,),
            ).fetchone()
        return _moment(row["created_at"]) if row else None

    # --- alerts -------------------------------------------------------------------------

    def note_failed_attempt(
        self, at: datetime, *, threshold: int, window_seconds: float
    ) -> AlertRecord | None:
        """Count a failed attempt; raise an alert if it makes ``threshold`` in the window.

        The window slides: it always covers the last ``window_seconds``. Once an alert is
        raised, the next one waits until a full window has passed since it, so that a
        burst of failures raises one alert rather than one per failure. Returns the alert
        this failure raised, if any.
        """
        now = at.timestamp()
        since = now - window_seconds
        with self._transaction() as conn:
            conn.execute("INSERT INTO job_failure (at) VALUES (?)", (now,))
            # Older failures can never count again (the window only moves forward).
            conn.execute("DELETE FROM job_failure WHERE at <= ?", (since,))
            failures = conn.execute(
                "SELECT COUNT(*) FROM job_failure WHERE at > ?", (since,)
            ).fetchone()[0]
            last_alert = conn.execute("SELECT MAX(raised_at_epoch) FROM job_alert").fetchone()[0]
            if failures < threshold or (last_alert is not None and last_alert > since):
                return None
            alert = AlertRecord(
                raised_at=at,
                failures=failures,
                window_seconds=window_seconds,
                message=f"{failures} job attempts failed within {window_seconds:g} s",
            )
            conn.execute(
                "INSERT INTO job_alert "
                "(raised_at, raised_at_epoch, failures, window_seconds, message) "
                "VALUES (?, ?, ?, ?, ?)",
                (_text(at), now, failures, window_seconds, alert.message),
            )
        return alert

    def alerts(self, *, limit: int = 100) -> list[AlertRecord]:
        """Alerts raised, newest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT raised_at, failures, window_seconds, message FROM job_alert "
                "ORDER BY seq DESC LIMIT ?",
                (limit,),
            )
            return [
                AlertRecord(
                    raised_at=datetime.fromisoformat(row["raised_at"]),
                    failures=row["failures"],
                    window_seconds=row["window_seconds"],
                    message=row["message"],
                )
                for row in rows
            ]
