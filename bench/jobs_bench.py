"""What does sending the welcome email as a background job buy, and how fast does the queue go?

Two figures, each measured side by side in one run:

1. `POST /users` latency with the welcome email sent inline versus enqueued, against a mock
   mail server that takes 200 ms (EMAIL_LATENCY_MS=200). "enqueued" is the reference
   (`python -m solutions.app`). "inline" is the same app with one change, made here
   (`--serve-inline`): its `JobsDep` dependency is overridden by an object whose `enqueue()`
   runs the job's own function (load the user, send the email through the app's email
   service) right there, in the thread-pool call where the route enqueues, instead of putting
   it in the queue. Everything else in the request (validation, scrypt, the store, the
   response) is the same code. One client, sequential requests, unique emails.
2. Jobs per second through the queue, with one and with two worker processes:
   - the reference: `python -m solutions.app worker` (JOBS_WORKERS=1 each), its SqliteHuey
     queue plus its job registry, `sleep` jobs with seconds=0, enqueued through the
     reference's own `JobQueue` in this process (the registry record the worker expects
     comes with each job);
   - the queue alone: plain huey, SqliteHuey versus PriorityRedisHuey, one no-op task, worker
     processes of this script (`--plain-worker`) with the reference's consumer settings. The
     reference has no switch for Redis (`build_huey` always returns a SqliteHuey), so the
     storage backends are compared on plain huey: that measures the queue, not the app.

   Each round fills a queue with N jobs under a holding name, then hands all N to the idle
   workers in one atomic step (an UPDATE of huey's task table in SQLite, a RENAME of the
   sorted set in Redis). The fill is not timed, so the producer's speed is no part of the
   figure. Timed: jobs/s with every worker awake (the jobs left 0.3 s after the hand-over,
   by when every idle worker has looked at the queue, over the time until the last one is
   finished), and the wake-up, from the hand-over to the first job taken (an idle SQLite
   worker polls every 0.25 s at most, a Redis worker blocks on the queue).

The machine is shared and noisy with 2 cores, so both figures run interleaved (A B, B A, ...)
and are compared as ratios of medians. Every process this script starts (servers, workers)
runs on 127.0.0.1 in a temporary folder and is stopped by pid (SIGINT, then SIGKILL after 5 s)
when the run ends, fails, or gets Ctrl-C or SIGTERM; the Redis keys it made are deleted.

    .venv/bin/python bench/jobs_bench.py [--quick] [--rounds N] [--only latency|throughput]
                                         [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import math
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from _common import (
    ROOT,
    Child,
    checkout_env,
    environment,
    exit_on_sigterm,
    free_ports,
    load_average,
    paired_ratios,
    percentile,
    print_load,
    round_or_none,
    say,
    stop_all,
    write_json,
)
from fastapi import Request

THIS = Path(__file__).resolve()
if str(ROOT) not in sys.path:  # run as a script: `solutions` and `grader` import from here
    sys.path.insert(0, str(ROOT))

EMAIL_LATENCY_MS = 200  # the mock mail server's round trip
POST_BATCH = 10  # POSTs per side in a row before the other side's turn
WARMUP_POSTS = 3  # untimed POSTs per side per --warmup round
PASSWORD = "bench-password-1"  # every test user's (8 characters at least)
ADMIN_TOKEN = "jobs-bench-admin-token"  # not the public default, which logs a warning
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
HOLD_SUFFIX = "_hold"  # the queue name a round is filled under, before the hand-over
# Per request: only catches a server that hangs; a healthy one answers in well under 1 s.
REQUEST_TIMEOUT = 10.0
STARTUP_TIMEOUT = 30.0
DRAIN_TIMEOUT = 60.0  # seconds a round may take to finish its jobs before the run aborts
EMAILS_TIMEOUT = 30.0  # seconds the enqueued welcome emails may take after the last POST
WAKE_POLL = 0.001  # polling for the first job taken (a cheap count; workers are idle then)
# Every idle worker has looked at the queue this long after the hand-over: the longest
# an idle one sleeps is the reference's WORKER_MAX_POLL_SECONDS (0.25 s; plain workers
# use the same), and a Redis worker blocks on the queue between such sleeps.
ALL_AWAKE_AFTER = 0.3
DONE_POLL = 0.01  # the shortest wait between polls for the last job finished
# `python -m solutions.app worker` logs this (WARNING) right before its consumer runs.
REF_READY = "the users live in each process's memory"
PLAIN_READY = "jobs-bench plain worker ready"
EMAIL_SENT = "welcome email sent to="
# What no log of a healthy run contains: an exception, a failed job, a lost welcome email.
LOG_PROBLEM = re.compile(r"Traceback|\bERROR\b|job failed|could not enqueue")


class BenchError(RuntimeError):
    """Something that makes the figures meaningless: the run stops and says what."""


def base_env(**settings: str) -> dict[str, str]:
    """Our environment minus the learner-app contract variables, plus `settings`.

    grade strips the same variables (`grader._runner.CONTRACT_ENV`) from its child, so a stray
    JOBS_WORKERS or EMAIL_LATENCY_MS in the shell cannot change what is measured. The repo
    root goes on PYTHONPATH: the processes run in a temporary folder (so no `.env` is read
    and no jobs.sqlite3 lands in the repo) and import from this checkout.
    """
    from grader._runner import CONTRACT_ENV

    env = checkout_env(
        {name: value for name, value in os.environ.items() if name not in CONTRACT_ENV}
    )
    env.update(settings)
    return env


# --- processes ------------------------------------------------------------------------------


@dataclass
class Proc(Child):
    """One process this script starts: a server or a worker, stopped by pid at the end."""

    env: dict[str, str]
    ready_line: str | None = None  # a worker is ready once its log shows this
    port: int = 0  # a server's; 0 for a worker

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, cwd: Path) -> None:
        """Start the process (a server on its port), logging to a file in `cwd`."""
        env = dict(self.env)
        if self.port:
            env.update(HOST="127.0.0.1", PORT=str(self.port))
        log = cwd / f"{re.sub(r'[^a-z0-9]+', '-', self.label.lower()).strip('-')}.log"
        self.launch(log=log, env=env, cwd=cwd)

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise BenchError(
                f"{self.label} exited with {self.process.returncode}\n"
                f"--- its log (tail) ---\n{self.log_tail()}"
            )

    def wait_ready(self) -> None:
        """A server: poll `/health`. A worker: wait for its ready line. Bounded either way."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            self.check_alive()
            if self.port:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200:
                        return
            elif self.ready_line and self.ready_line in self.log_text():
                return
            time.sleep(0.05)
        raise BenchError(
            f"{self.label} was not ready within {STARTUP_TIMEOUT:g} s\n"
            f"--- its log (tail) ---\n{self.log_tail()}"
        )

    def log_problems(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if LOG_PROBLEM.search(line)]


@contextlib.contextmanager
def running(procs: Sequence[Proc], cwd: Path) -> Iterator[None]:
    """Start every process (they boot in parallel), wait until all are ready, stop all."""
    try:
        for proc in procs:
            proc.start(cwd)
        for proc in procs:
            proc.wait_ready()
        yield
    finally:
        stop_all(procs)


# --- figure 1: the inline app ----------------------------------------------------------------


class InlineJobs:
    """Stands in for the app's `JobQueue` in the inline app: `enqueue` runs the job now.

    It runs the reference's own job function with the app's own `JobServices` (the store
    through the lifespan's portal, the mock email service with EMAIL_LATENCY_MS), in the
    thread the route already calls `enqueue` in (`run_in_threadpool`). So the request does
    exactly the work the worker would do, where the reference only writes two SQLite rows.
    Anything else (the `/jobs` routes) goes to the real queue.
    """

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def enqueue(self, name: str, args: dict[str, Any] | None = None, **options: Any) -> None:
        from solutions.app.jobs import JOBS

        job = JOBS[name]
        job.function(self._queue.services, job.args_model.model_validate(args or {}))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


def inline_jobs(request: Request) -> InlineJobs:
    """The inline app's override of `get_jobs`: the real queue, wrapped."""
    return InlineJobs(request.app.state.jobs)


def create_inline_app() -> Any:
    """`solutions.app.create_app()` with the welcome email sent inside `POST /users`."""
    from solutions.app.deps import get_jobs
    from solutions.app.main import create_app

    app = create_app()
    app.dependency_overrides[get_jobs] = inline_jobs
    return app


def serve_inline() -> None:
    """`--serve-inline`: serve the inline app like `python -m solutions.app` serves its own."""
    import uvicorn

    from solutions.app.settings import Settings

    settings = Settings()
    uvicorn.run(
        create_inline_app(),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )


# --- figure 1: POST /users latency -----------------------------------------------------------


@dataclass
class Side:
    """One side of figure 1: a server and the response times of its timed POSTs (ms)."""

    key: str
    label: str
    proc: Proc
    db: Path
    times_ms: list[float] = field(default_factory=list)
    posts: int = 0  # timed and untimed
    last_response: float = 0.0  # time.monotonic() of the last answer

    def post(self, client: httpx.Client, serial: Iterator[int], count: int) -> list[float]:
        """`count` sequential `POST /users`, each a new email; the response times in ms."""
        times = []
        for _ in range(count):
            n = next(serial)
            body = {
                "email": f"jobs-bench-{self.key}-{n}@example.com",
                "name": f"Bench User {n}",
                "password": PASSWORD,
            }
            started = time.perf_counter()
            response = client.post("/users", json=body)
            elapsed = time.perf_counter() - started
            self.last_response = time.monotonic()
            self.posts += 1
            if response.status_code != 201:
                raise BenchError(
                    f"{self.label}: POST /users answered {response.status_code}:"
                    f" {response.text[:300]}"
                )
            times.append(elapsed * 1000)
        return times

    def emails_sent(self) -> int:
        return self.proc.log_text().count(EMAIL_SENT)


def job_counts(db: Path) -> Counter[str]:
    """Jobs in a reference's registry, by status (only welcome emails run in figure 1)."""
    from solutions.app.job_registry import JobRegistry

    if not db.exists():
        return Counter()
    return Counter(JobRegistry(str(db)).status_counts())


def bench_latency(*, posts: int, warmup: int, cwd: Path) -> dict[str, Any]:
    """Figure 1: POST /users with the email inline vs enqueued, one client, interleaved."""
    settings = {
        "EMAIL_LATENCY_MS": str(EMAIL_LATENCY_MS),
        "JOBS_WORKER": "inprocess",
        "JOBS_WORKERS": "2",
        "LOG_LEVEL": "INFO",  # for the `welcome email sent` lines, counted at the end
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "SEED_DEMO_USERS": "false",
        "CLEANUP_INTERVAL_SECONDS": "3600",  # no purge job during the run
    }
    inline_db, enqueued_db = cwd / "inline.sqlite3", cwd / "enqueued.sqlite3"
    ports = free_ports(2)
    sides = [
        Side(
            "enqueued",
            "enqueued (reference)",
            Proc(
                "latency-enqueued",
                [sys.executable, "-m", "solutions.app", "serve", "--single-process"],
                base_env(**settings, JOBS_DB_PATH=str(enqueued_db)),
                port=ports[0],
            ),
            enqueued_db,
        ),
        Side(
            "inline",
            "inline (email in the request)",
            Proc(
                "latency-inline",
                [sys.executable, str(THIS), "--serve-inline"],
                base_env(**settings, JOBS_DB_PATH=str(inline_db)),
                port=ports[1],
            ),
            inline_db,
        ),
    ]
    enqueued, inline = sides
    serial = itertools.count(1)
    batches = math.ceil(posts / POST_BATCH)
    say(
        f"latency: {posts} POST /users per side in batches of {POST_BATCH}, interleaved,"
        f" EMAIL_LATENCY_MS={EMAIL_LATENCY_MS}"
    )
    with running([side.proc for side in sides], cwd), contextlib.ExitStack() as stack:
        clients = {
            side.key: stack.enter_context(
                httpx.Client(base_url=side.proc.base_url, timeout=REQUEST_TIMEOUT)
            )
            for side in sides
        }
        for _ in range(warmup):
            for side in sides:
                side.post(clients[side.key], serial, WARMUP_POSTS)
        left = posts
        for batch in range(batches):
            count = min(POST_BATCH, left)
            left -= count
            for side in sides if batch % 2 == 0 else sides[::-1]:
                side.times_ms.extend(side.post(clients[side.key], serial, count))
                side.proc.check_alive()
        # The reference's in-process worker sends its emails after the responses: wait for
        # them (bounded), so the figure is not of a queue that drops its work.
        deadline = enqueued.last_response + EMAILS_TIMEOUT
        while True:
            counts = job_counts(enqueued.db)
            if counts["succeeded"] >= enqueued.posts or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        emails_after = time.monotonic() - enqueued.last_response
        time.sleep(0.2)  # the last log lines
        problems = {side.key: side.proc.log_problems() for side in sides}
        sent = {side.key: side.emails_sent() for side in sides}
        inline_jobs = sum(job_counts(inline.db).values())

    anomalies = []
    if counts["succeeded"] != enqueued.posts:
        anomalies.append(
            f"enqueued: {counts['succeeded']} of {enqueued.posts} welcome jobs succeeded"
            f" within {EMAILS_TIMEOUT:g} s ({dict(counts)})"
        )
    for side in sides:
        if sent[side.key] != side.posts:
            anomalies.append(f"{side.key}: {sent[side.key]} emails logged for {side.posts} users")
        anomalies.extend(f"{side.key} log: {line}" for line in problems[side.key][:5])
    if inline_jobs:
        anomalies.append(f"inline: {inline_jobs} jobs in its queue, expected none")
    if statistics.median(inline.times_ms) < EMAIL_LATENCY_MS:
        anomalies.append("inline: median below the mail server's latency, so no email inline")
    if anomalies:
        raise BenchError("figure 1 did not measure what it says:\n  " + "\n  ".join(anomalies))

    figures: dict[str, Any] = {}
    for side in sides:
        figures[side.key] = {
            "label": side.label,
            "posts_timed": len(side.times_ms),
            "posts_total": side.posts,
            "median_ms": round(statistics.median(side.times_ms), 2),
            "p95_ms": round(percentile(side.times_ms, 0.95), 2),
            "min_ms": round(min(side.times_ms), 2),
            "max_ms": round(max(side.times_ms), 2),
            "emails_logged": sent[side.key],
            "times_ms": [round(t, 2) for t in side.times_ms],
        }
    med_in, med_q = figures["inline"]["median_ms"], figures["enqueued"]["median_ms"]
    p95_in, p95_q = figures["inline"]["p95_ms"], figures["enqueued"]["p95_ms"]
    ratio, ratio_p95 = med_in / med_q, p95_in / p95_q

    print(
        f"\n1. POST /users, welcome email inline vs enqueued, mail server {EMAIL_LATENCY_MS} ms,"
        f" one client, {posts} sequential POSTs each"
    )
    print(f"  {'side':31}  {'median':>8}  {'p95':>8}  {'min':>8}  {'max':>8}")
    for side in (inline, enqueued):
        f = figures[side.key]
        print(
            f"  {side.label:31}  {f['median_ms']:6.1f} ms  {f['p95_ms']:6.1f} ms"
            f"  {f['min_ms']:6.1f} ms  {f['max_ms']:6.1f} ms"
        )
    print(
        f"  inline / enqueued: {ratio:.2f}x median, {ratio_p95:.2f}x p95;"
        f" enqueueing saves {med_in - med_q:.0f} ms a request (median)"
    )
    print(
        f"  every email was sent: {sent['inline']} inline, {sent['enqueued']} by the reference's"
        f" in-process worker, the last {emails_after:.1f} s after the last response"
    )
    summary = (
        f"1. POST /users, {EMAIL_LATENCY_MS} ms mail server: inline {med_in:.0f} ms vs enqueued"
        f" {med_q:.0f} ms median, {ratio:.2f}x (p95 {p95_in:.0f} vs {p95_q:.0f} ms,"
        f" {ratio_p95:.2f}x; {posts} POSTs each)"
    )
    return {
        "email_latency_ms": EMAIL_LATENCY_MS,
        "posts_per_side": posts,
        "sides": figures,
        "ratio_median": round(ratio, 3),
        "ratio_p95": round(ratio_p95, 3),
        "saved_ms_median": round(med_in - med_q, 2),
        "emails_done_after_last_response_s": round(emails_after, 2),
        "summary": summary,
    }


# --- figure 2: the queues --------------------------------------------------------------------


def _noop() -> None:
    """The plain queue's task: nothing, so what is timed is the queue and the consumer."""


def build_plain_huey(
    backend: str, name: str, target: str, *, fsync: bool | None = None
) -> tuple[Any, Any]:
    """A plain huey on SQLite (`target`: the file) or Redis (`target`: the URL), and its task.

    `results=False` as in the reference. The task is registered under the same name in this
    process and in the workers, which run this same script. `fsync` (SQLite only) is huey's
    switch for `PRAGMA synchronous` on this process's connection; None keeps SQLite's default.
    """
    from huey import PriorityRedisHuey, SqliteHuey

    if backend == "sqlite":
        huey = SqliteHuey(name, filename=target, results=False, fsync=fsync)
    else:
        huey = PriorityRedisHuey(name, url=target, results=False)
    return huey, huey.task(name="noop")(_noop)


def run_plain_worker(backend: str, name: str, target: str) -> None:
    """`--plain-worker`: one consumer thread, polling like the reference's worker."""
    from huey.consumer import Consumer

    from solutions.app.job_worker import WORKER_FIRST_POLL_SECONDS, WORKER_MAX_POLL_SECONDS

    logging.basicConfig(stream=sys.stdout, level=logging.WARNING)
    huey, _ = build_plain_huey(backend, name, target)
    consumer = Consumer(
        huey,
        workers=1,
        worker_type="thread",
        periodic=False,
        initial_delay=WORKER_FIRST_POLL_SECONDS,
        max_delay=WORKER_MAX_POLL_SECONDS,
    )
    print(PLAIN_READY, flush=True)
    consumer.run()  # until SIGINT (graceful) or SIGTERM


def sqlite_release(db: Path, hold: str, live: str) -> int:
    """Move every task of queue `hold` to queue `live` in one transaction; how many moved."""
    conn = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        moved = conn.execute("UPDATE task SET queue = ? WHERE queue = ?", (live, hold)).rowcount
        conn.execute("COMMIT")
        return moved
    finally:
        conn.close()


def sqlite_queued(db: Path, queue: str) -> int:
    """Tasks waiting in huey queue `queue` of SQLite file `db` (a read: it blocks no writer)."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute("SELECT count(*) FROM task WHERE queue = ?", (queue,)).fetchone()[0]
    finally:
        conn.close()


@dataclass
class Drain:
    """One round of one queue variant: how its N jobs went through the queue."""

    wake_s: float  # hand-over -> first job taken
    whole_s: float  # first job taken -> last job finished
    steady_jobs: int  # jobs unfinished ALL_AWAKE_AFTER after the hand-over ...
    steady_s: float  # ... and how long they took from then on, every worker awake
    worker_cpu_s: float | None  # the worker processes' CPU time over the round

    @property
    def rate(self) -> float:
        """Jobs/s with every worker awake: the figure the variants are compared by."""
        return self.steady_jobs / self.steady_s


@dataclass
class QueueVariant:
    """One queue with its worker processes: filled, handed over and drained every round."""

    key: str
    label: str
    group: str  # "reference", "sqlite" or "redis"
    workers: int
    jobs: int
    procs: list[Proc] = field(default_factory=list)
    drains: list[Drain] = field(default_factory=list)

    # -- what differs between the reference and the plain queues ----------------------------

    def fill(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def queued(self) -> int:
        """Jobs not yet taken by a worker."""
        raise NotImplementedError

    def unfinished(self) -> int:
        """Jobs not yet finished (taken or not)."""
        return self.queued()

    def check_round(self) -> None:
        """Raise BenchError if the round did not run its jobs as it should."""

    def close(self) -> None:
        """Release this process's connections and delete what the variant left behind."""

    # -- the same for all ---------------------------------------------------------------------

    def run_round(self) -> Drain:
        """Fill, hand over, and time the drain; the fill is not timed.

        An idle worker may sleep up to WORKER_MAX_POLL_SECONDS (0.25 s) before it looks at
        the queue again, so right after the hand-over one of two workers may be running
        alone. The rate is therefore taken from ALL_AWAKE_AFTER on, when every worker has
        looked, over the jobs left then; the wake-up is reported on its own.
        """
        for proc in self.procs:
            proc.check_alive()
        if self.queued():
            raise BenchError(f"{self.label}: jobs left in the queue before the round")
        self.fill()
        cpu_before = self._cpu()
        released = time.perf_counter()
        self.release()
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.queued() >= self.jobs:
            self._check_deadline(deadline)
            time.sleep(WAKE_POLL)
        first = time.perf_counter()
        time.sleep(max(0.0, released + ALL_AWAKE_AFTER - time.perf_counter()))
        before = time.perf_counter()
        steady_jobs = self.unfinished()
        steady_from = (before + time.perf_counter()) / 2
        if steady_jobs < self.jobs / 5:
            raise BenchError(
                f"{self.label}: only {steady_jobs} of {self.jobs} jobs left"
                f" {ALL_AWAKE_AFTER:g} s after the hand-over, too few to time: use more jobs"
                " (--ref-jobs, --plain-jobs)"
            )
        # Polling costs CPU the workers could use, so sleep about half the time the jobs
        # left should take at the rate so far, down to DONE_POLL (the end's resolution).
        while left := self.unfinished():
            self._check_deadline(deadline)
            elapsed = time.perf_counter() - steady_from
            done_since = steady_jobs - left
            estimate = left * elapsed / done_since if done_since > 0 else 0.0
            time.sleep(min(max(DONE_POLL, estimate / 2), 1.0))
        done = time.perf_counter()
        cpu_after = self._cpu()
        self.check_round()
        cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        return Drain(
            wake_s=first - released,
            whole_s=done - first,
            steady_jobs=steady_jobs,
            steady_s=done - steady_from,
            worker_cpu_s=cpu,
        )

    def _check_deadline(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            for proc in self.procs:
                proc.check_alive()
            raise BenchError(f"{self.label}: {self.jobs} jobs not done in {DRAIN_TIMEOUT:g} s")

    def _cpu(self) -> float | None:
        values = [proc.cpu_seconds() for proc in self.procs]
        return None if None in values else sum(v for v in values if v is not None)

    # -- figures ----------------------------------------------------------------------------

    @property
    def rates(self) -> list[float]:
        return [d.rate for d in self.drains]

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def median_wake_ms(self) -> float:
        return statistics.median(d.wake_s for d in self.drains) * 1000

    @property
    def median_cpu_ms_per_job(self) -> float | None:
        values = [d.worker_cpu_s for d in self.drains]
        clean = [v for v in values if v is not None]
        return statistics.median(clean) / self.jobs * 1000 if clean else None

    def summary(self) -> dict[str, Any]:
        cpu = self.median_cpu_ms_per_job
        return {
            "label": self.label,
            "backend": self.group,
            "worker_processes": self.workers,
            "jobs_per_round": self.jobs,
            "jobs_per_s": [round(r, 1) for r in self.rates],
            "median_jobs_per_s": round(self.median_rate, 1),
            "best_jobs_per_s": round(max(self.rates), 1),
            "wake_ms": [round(d.wake_s * 1000, 1) for d in self.drains],
            "steady_jobs": [d.steady_jobs for d in self.drains],
            "steady_s": [round(d.steady_s, 4) for d in self.drains],
            # all N jobs, from the first one taken (includes a late worker's wake-up)
            "whole_drain_jobs_per_s": [round(self.jobs / d.whole_s, 1) for d in self.drains],
            "median_worker_cpu_ms_per_job": round_or_none(cpu, 3),
        }


class ReferenceQueue(QueueVariant):
    """The reference's queue and registry, drained by `python -m solutions.app worker`s."""

    def __init__(self, key: str, *, workers: int, jobs: int, cwd: Path) -> None:
        super().__init__(key, f"reference, {workers} worker", "reference", workers, jobs)
        from solutions.app.jobs import QUEUE_NAME, build_job_queue
        from solutions.app.metrics import Metrics
        from solutions.app.settings import Settings

        self.db = cwd / f"{key}.sqlite3"
        self.live, self.hold = QUEUE_NAME, QUEUE_NAME + HOLD_SUFFIX
        settings = {
            "JOBS_DB_PATH": str(self.db),
            "JOBS_WORKERS": "1",
            "LOG_LEVEL": "WARNING",  # as in cache_bench: no log line per job
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "CLEANUP_INTERVAL_SECONDS": "3600",  # no purge job during the run
        }
        env = base_env(**settings)
        # This process enqueues through the reference's own JobQueue, so each job gets the
        # registry record its worker's pre-execute hook requires; only the huey queue it
        # writes to is renamed, to fill the round before handing it over.
        with environment(env, cwd):
            self.queue = build_job_queue(Settings(), Metrics())
        self.queue.huey.storage.name = self.hold
        self.batch_id = ""
        self.procs = [
            Proc(
                f"{key}-{n}",
                [sys.executable, "-m", "solutions.app", "worker"],
                env,
                ready_line=REF_READY,
            )
            for n in range(1, workers + 1)
        ]

    def fill(self) -> None:
        from solutions.app.jobs import JobSpec

        specs = [JobSpec("sleep", {"seconds": 0}) for _ in range(self.jobs)]
        self.batch_id, _ = self.queue.enqueue_batch(specs)

    def release(self) -> None:
        moved = sqlite_release(self.db, self.hold, self.live)
        if moved != self.jobs:
            raise BenchError(f"{self.label}: {moved} jobs handed over, expected {self.jobs}")

    def queued(self) -> int:
        return sqlite_queued(self.db, self.live)

    def unfinished(self) -> int:
        batch = self.queue.registry.batch(self.batch_id)
        return 0 if batch is None else batch.pending

    def check_round(self) -> None:
        batch = self.queue.registry.batch(self.batch_id)
        if batch is None or batch.succeeded != self.jobs:
            raise BenchError(f"{self.label}: not every job succeeded: {batch}")

    def close(self) -> None:
        self.queue.close()


class PlainQueue(QueueVariant):
    """Plain huey (SQLite or Redis), drained by `--plain-worker` processes of this script."""

    def __init__(
        self, key: str, backend: str, *, workers: int, jobs: int, cwd: Path, run_id: str, url: str
    ) -> None:
        kind = "SqliteHuey" if backend == "sqlite" else "PriorityRedisHuey"
        super().__init__(key, f"plain {kind}, {workers} worker", backend, workers, jobs)
        self.db = cwd / f"{key}.sqlite3"
        self.target = str(self.db) if backend == "sqlite" else url
        # Unique per run, so no other queue is touched; only [A-Za-z0-9_], which huey's Redis
        # storage keeps as is (it drops other characters from a name).
        name = f"jobs_bench_{run_id}_{key}"
        self.live_huey, _ = build_plain_huey(backend, name, self.target)
        # The fill is not timed: the producer's SQLite connection skips fsync to make it
        # quicker (a per-connection setting; the workers keep SQLite's default).
        self.hold_huey, self.task = build_plain_huey(
            backend, name + HOLD_SUFFIX, self.target, fsync=False if backend == "sqlite" else None
        )
        self.procs = [
            Proc(
                f"{key}-{n}",
                [sys.executable, str(THIS), "--plain-worker", backend, name, self.target],
                base_env(),
                ready_line=PLAIN_READY,
            )
            for n in range(1, workers + 1)
        ]

    def fill(self) -> None:
        for _ in range(self.jobs):
            self.hold_huey.enqueue(self.task.s())

    def release(self) -> None:
        if self.group == "sqlite":
            moved = sqlite_release(self.db, self.hold_huey.storage.name, self.live_huey.name)
        else:
            # RENAME and ZCARD in one MULTI/EXEC: no worker can take a job in between.
            live_key = self.live_huey.storage.queue_key
            with self.hold_huey.storage.conn.pipeline(transaction=True) as pipe:
                _, moved = (
                    pipe.rename(self.hold_huey.storage.queue_key, live_key)
                    .zcard(live_key)
                    .execute()
                )
        if moved != self.jobs:
            raise BenchError(f"{self.label}: {moved} jobs handed over, expected {self.jobs}")

    def queued(self) -> int:
        # Taken = finished, but for the no-op the last one or two workers are running (µs).
        return self.live_huey.pending_count()

    def close(self) -> None:
        for huey in (self.live_huey, self.hold_huey):
            storage = huey.storage
            if self.group == "redis":
                with contextlib.suppress(Exception):
                    storage.conn.delete(
                        storage.queue_key,
                        storage.schedule_key,
                        storage.result_key,
                        storage.counter_key,
                    )
                    storage.conn.close()
            else:
                storage.close()


def redis_problem(url: str) -> str | None:
    """Why the Redis figures cannot run (None if they can)."""
    host = urlsplit(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return f"--redis-url must be on the loopback interface, not {host!r}"
    import redis

    try:
        with redis.Redis.from_url(url, socket_timeout=2) as client:
            client.ping()
    except redis.RedisError as error:
        return f"Redis at {url} does not answer ({error})"
    return None


def redis_persistence(url: str) -> dict[str, str] | None:
    """The server's persistence settings: whether Redis writes anything to disk per job."""
    import redis

    try:
        with redis.Redis.from_url(url, socket_timeout=2, decode_responses=True) as client:
            found: dict[str, str] = {}
            for name in ("appendonly", "appendfsync", "save"):
                found.update(client.config_get(name))
            return found
    except redis.RedisError:
        return None


def delete_redis_keys(url: str, run_id: str) -> int:
    """Delete what is left of this run's queues in Redis (unique names, bounded scan)."""
    import redis

    deleted = 0
    with contextlib.suppress(redis.RedisError), redis.Redis.from_url(url) as client:
        keys = list(itertools.islice(client.scan_iter(f"huey.*jobs_bench_{run_id}_*"), 1000))
        if keys:
            deleted = client.delete(*keys)
    return deleted


def bench_throughput(
    *, rounds: int, warmup: int, ref_jobs: int, plain_jobs: int, redis_url: str | None, cwd: Path
) -> dict[str, Any]:
    """Figure 2: jobs/s with one and two worker processes, the reference and plain huey."""
    from solutions.app.job_worker import WORKER_MAX_POLL_SECONDS

    if WORKER_MAX_POLL_SECONDS >= ALL_AWAKE_AFTER:
        raise BenchError(
            f"the reference's workers now sleep up to {WORKER_MAX_POLL_SECONDS:g} s when idle:"
            f" raise ALL_AWAKE_AFTER ({ALL_AWAKE_AFTER:g} s) above that"
        )
    run_id = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
    variants: dict[str, QueueVariant] = {}
    try:
        # The producers first (they create the files and tables), then the workers.
        for workers in (1, 2):
            key = f"ref{workers}"
            variants[key] = ReferenceQueue(key, workers=workers, jobs=ref_jobs, cwd=cwd)
        for backend in ("sqlite", "redis"):
            if backend == "redis" and redis_url is None:
                continue
            for workers in (1, 2):
                key = f"{backend}{workers}"
                variants[key] = PlainQueue(
                    key,
                    backend,
                    workers=workers,
                    jobs=plain_jobs,
                    cwd=cwd,
                    run_id=run_id,
                    url=redis_url or "",
                )
        # One order, compared pairs mostly next to each other; reversed every other round.
        order = [
            k for k in ("ref2", "ref1", "sqlite1", "redis1", "redis2", "sqlite2") if k in variants
        ]
        say(
            f"throughput: {len(order)} queues, {rounds} rounds (+{warmup} warm-up),"
            f" {ref_jobs} jobs a round for the reference, {plain_jobs} for plain huey"
        )
        procs = [proc for key in order for proc in variants[key].procs]
        with running(procs, cwd):
            for n in range(warmup + rounds):
                timed = n >= warmup
                say(f"  round {n + 1 - warmup}/{rounds}" if timed else "  warm-up round")
                for key in order if n % 2 == 0 else order[::-1]:
                    drain = variants[key].run_round()
                    if timed:
                        variants[key].drains.append(drain)
            time.sleep(0.2)  # the last log lines
            problems = [
                f"{proc.label}: {line}" for proc in procs for line in proc.log_problems()[:3]
            ]
        if problems:
            raise BenchError("worker logs show failures:\n  " + "\n  ".join(problems))
    finally:
        for variant in variants.values():
            variant.close()
        if redis_url is not None:
            delete_redis_keys(redis_url, run_id)
    return report_throughput(variants, redis_url=redis_url)


def report_throughput(
    variants: dict[str, QueueVariant], *, redis_url: str | None
) -> dict[str, Any]:
    v = variants

    def versus(a: str, b: str) -> dict[str, Any]:
        """Variant a against b: ratio of median jobs/s, and the per-round range."""
        ratios = paired_ratios(v[a].rates, v[b].rates)
        low, high = min(ratios), max(ratios)
        return {
            "ratio_median": round(v[a].median_rate / v[b].median_rate, 3),
            "round_by_round": [round(low, 3), round(high, 3)],
            # whole jobs/s, as printed in the table (one decimal would round differently)
            "jobs_per_s": [round(v[a].median_rate), round(v[b].median_rate)],
        }

    def text(figures: dict[str, Any]) -> str:
        low, high = figures["round_by_round"]
        a, b = figures["jobs_per_s"]
        ratio = figures["ratio_median"]
        return f"{ratio:.2f}x ({a:.0f} vs {b:.0f} jobs/s; rounds {low:.2f}x .. {high:.2f}x)"

    print("\n2. Jobs per second through the queue: N jobs handed to idle workers at once")
    print(
        f"  {'queue':34}  {'N':>5}  {'jobs/s':>7}  {'best':>7}  {'ms/job':>7}"
        f"  {'CPU/job':>8}  {'wake-up':>8}"
    )
    for key in ("ref1", "ref2", "sqlite1", "sqlite2", "redis1", "redis2"):
        if key not in v:
            continue
        q = v[key]
        cpu = q.median_cpu_ms_per_job
        cpu_text = "-" if cpu is None else f"{cpu:.2f} ms"
        label = q.label + ("s" if q.workers > 1 else "")
        print(
            f"  {label:34}  {q.jobs:5d}  {q.median_rate:7.0f}  {max(q.rates):7.0f}"
            f"  {1000 / q.median_rate:7.2f}  {cpu_text:>8}  {q.median_wake_ms:5.0f} ms"
        )
    print(
        f"  (jobs/s: every worker awake, from {ALL_AWAKE_AFTER:g} s after the hand-over to the"
        " last job finished;\n   ms/job: 1 / jobs/s; CPU/job: the worker processes' CPU, all"
        " threads;\n   wake-up: hand-over to the first job taken; medians of the rounds)"
    )
    comparisons: dict[str, Any] = {"ref_2_vs_1": versus("ref2", "ref1")}
    print(f"  reference, 2 vs 1 worker processes: {text(comparisons['ref_2_vs_1'])}")
    comparisons["sqlite_2_vs_1"] = versus("sqlite2", "sqlite1")
    print(f"  plain SqliteHuey, 2 vs 1: {text(comparisons['sqlite_2_vs_1'])}")
    comparisons["plain_sqlite_vs_ref_1"] = versus("sqlite1", "ref1")
    per_job = 1000 / v["ref1"].median_rate - 1000 / v["sqlite1"].median_rate
    print(
        "  plain SqliteHuey vs the reference, 1 worker:"
        f" {text(comparisons['plain_sqlite_vs_ref_1'])}; the reference adds {per_job:.1f} ms a"
        " job (its registry rows, pre-execute hook, signals, argument checks)"
    )
    if "redis1" in v:
        comparisons["redis_2_vs_1"] = versus("redis2", "redis1")
        print(f"  plain PriorityRedisHuey, 2 vs 1: {text(comparisons['redis_2_vs_1'])}")
        for workers in (1, 2):
            name = f"redis_vs_sqlite_{workers}"
            comparisons[name] = versus(f"redis{workers}", f"sqlite{workers}")
            each = "1 worker" if workers == 1 else f"{workers} workers"
            print(f"  PriorityRedisHuey vs SqliteHuey, {each}: {text(comparisons[name])}")
    else:
        print("  (Redis figures skipped: see above)")

    parts = [
        "reference {:.0f} vs {:.0f} ({:.2f}x)".format(
            *comparisons["ref_2_vs_1"]["jobs_per_s"], comparisons["ref_2_vs_1"]["ratio_median"]
        ),
        "SqliteHuey {:.0f} vs {:.0f} ({:.2f}x)".format(
            *comparisons["sqlite_2_vs_1"]["jobs_per_s"],
            comparisons["sqlite_2_vs_1"]["ratio_median"],
        ),
    ]
    if "redis1" in v:
        parts.append(
            "PriorityRedisHuey {:.0f} vs {:.0f} ({:.2f}x)".format(
                *comparisons["redis_2_vs_1"]["jobs_per_s"],
                comparisons["redis_2_vs_1"]["ratio_median"],
            )
        )
    summary = "2. jobs/s, 2 vs 1 worker processes: " + "; ".join(parts)
    if "redis1" in v:
        summary += "; Redis vs SQLite (plain huey) {:.2f}x with 1 worker, {:.2f}x with 2".format(
            comparisons["redis_vs_sqlite_1"]["ratio_median"],
            comparisons["redis_vs_sqlite_2"]["ratio_median"],
        )
    return {
        "queues": {key: q.summary() for key, q in v.items()},
        "comparisons": comparisons,
        "redis_url": redis_url,
        "redis_persistence": redis_persistence(redis_url) if redis_url else None,
        "summary": summary,
    }


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure background jobs: POST /users with the email inline vs enqueued,"
        " and jobs/s through the queue (reference; plain SqliteHuey vs PriorityRedisHuey)."
    )
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    parser.add_argument(
        "--posts", type=int, help="figure 1: timed POST /users per side (default 60, --quick 20)"
    )
    parser.add_argument("--rounds", type=int, help="figure 2: timed rounds (default 7, --quick 2)")
    parser.add_argument(
        "--ref-jobs", type=int, help="figure 2: jobs a round, reference (default 400, --quick 200)"
    )
    parser.add_argument(
        "--plain-jobs",
        type=int,
        help="figure 2: jobs a round, plain huey (default 3000, --quick 1500)",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds before the timed ones (1)"
    )
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help=f"loopback Redis for the plain PriorityRedisHuey ({DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--only", choices=("latency", "throughput"), help="run one figure only (default: both)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    # The script's own child processes.
    parser.add_argument("--serve-inline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plain-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.posts = args.posts or (20 if args.quick else 60)
    args.rounds = args.rounds or (2 if args.quick else 7)
    args.ref_jobs = args.ref_jobs or (200 if args.quick else 400)
    args.plain_jobs = args.plain_jobs or (1500 if args.quick else 3000)
    if min(args.posts, args.rounds, args.ref_jobs, args.plain_jobs) < 1 or args.warmup < 0:
        parser.error("--posts, --rounds, --ref-jobs and --plain-jobs must be >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_inline:
        serve_inline()
        return 0
    if args.plain_worker:
        run_plain_worker(*args.plain_worker)
        return 0
    exit_on_sigterm()
    redis_url: str | None = args.redis_url
    if args.only != "latency":
        problem = redis_problem(args.redis_url)
        if problem:
            say(f"{problem}: the Redis figures are skipped")
            redis_url = None
    load_before = load_average()
    started = time.monotonic()
    results: dict[str, Any] = {}
    # A scratch folder: logs and SQLite files go there, and no `.env` is read from the repo.
    try:
        with tempfile.TemporaryDirectory(prefix="jobs-bench-") as tmp:
            cwd = Path(tmp)
            if args.only in (None, "latency"):
                results["latency"] = bench_latency(posts=args.posts, warmup=args.warmup, cwd=cwd)
            if args.only in (None, "throughput"):
                results["throughput"] = bench_throughput(
                    rounds=args.rounds,
                    warmup=args.warmup,
                    ref_jobs=args.ref_jobs,
                    plain_jobs=args.plain_jobs,
                    redis_url=redis_url,
                    cwd=cwd,
                )
    except BenchError as error:
        sys.exit(f"bench: aborted, {error}")

    print()
    for name in ("latency", "throughput"):
        if name in results:
            print(results[name]["summary"])
    duration = time.monotonic() - started
    load_after = load_average()
    print_load(load_before, load_after)
    say(f"done in {duration:.0f} s")
    if args.json:
        write_json(
            args.json,
            load_before=load_before,
            load_after=load_after,
            benchmarks=results,
            duration_s=round(duration, 1),
            settings={
                "posts": args.posts,
                "rounds": args.rounds,
                "warmup": args.warmup,
                "ref_jobs": args.ref_jobs,
                "plain_jobs": args.plain_jobs,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
