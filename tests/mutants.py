"""Mutants: small patches to the reference app, each breaking one behaviour.

A mutant names the exercise, the file of `solutions/app` it patches, the text it replaces
(found exactly once, or the test fails: a mutant whose anchor vanished must not pass as
"caught") and exactly the criteria that behaviour serves. A mutant of a stretch goal must
leave every required criterion passing: a bonus feature may not cost the exercise.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    exercise: str
    name: str
    file: str
    old: str
    new: str
    fails: frozenset[str]

    def __str__(self) -> str:
        return f"{self.exercise}-{self.name}"


def mutant(exercise: str, name: str, file: str, old: str, new: str, *fails: str) -> Mutant:
    return Mutant(exercise, name, file, old, new, frozenset(fails))


MUTANTS_10_1 = [
    mutant(
        "10.1", "list-never-cached", "cache.py",
        "if _LIST_PATH.match(path):", "if False:",
        "caching-middleware", "ttl", "invalidation", "cache-headers", "cache-control",
        "configuration",
    ),
    mutant(
        "10.1", "hit-serves-another-body", "cache.py",
        '{"type": "http.response.body", "body": entry.body}',
        '{"type": "http.response.body", "body": entry.body.replace(b"Ada", b"Bob")}',
        "caching-middleware",
    ),
    mutant(
        "10.1", "entries-never-expire", "cache_backends.py",
        "return self.age(now) < self.ttl", "return True",
        "ttl", "configuration",
    ),
    mutant(
        "10.1", "default-list-ttl-one-minute", "settings.py",
        "default=300, gt=0", "default=60, gt=0",
        "ttl",
    ),
    mutant(
        "10.1", "put-and-delete-keep-the-user-entry", "cache.py",
        'self._invalidate(LIST_TAG, *([item_tag(match["user_id"])] if match else []))',
        "self._invalidate(LIST_TAG)",
        "invalidation",
    ),
    mutant(
        "10.1", "only-post-invalidates", "cache.py",
        '_MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})',
        '_MUTATIONS = frozenset({"POST"})',
        "invalidation",
    ),
    mutant(
        "10.1", "hit-labelled-miss", "cache.py",
        '(b"x-cache", b"HIT")', '(b"x-cache", b"MISS")',
        "cache-headers",
    ),
    mutant(
        "10.1", "request-max-age-ignored", "cache.py",
        "return self.max_age is None or entry.age(now) <= self.max_age", "return True",
        "cache-control",
    ),
    mutant(
        "10.1", "request-no-cache-ignored", "cache.py",
        "return self.no_cache or self.no_store", "return self.no_store",
        "cache-control",
    ),
    mutant(
        "10.1", "cache-enabled-ignored", "main.py",
        "if settings.cache_enabled:", "if True:",
        "configuration",
    ),
    mutant(
        "10.1", "list-ttl-read-from-item-setting", "main.py",
        "list_ttl=settings.cache_list_ttl_seconds", "list_ttl=settings.cache_item_ttl_seconds",
        "ttl", "configuration",
    ),
]  # fmt: skip

STRETCH_MUTANTS_10_1 = [
    mutant(
        "10.1", "redis-setting-ignored", "main.py",
        'if settings.cache_backend == "redis":', "if False:",
        "redis",
    ),
    mutant(
        "10.1", "redis-errors-propagate", "cache_redis.py",
        "            self._set_reachable(False, exc)\n            return default\n",
        "            raise\n",
        "redis-fallback",
    ),
    mutant(
        "10.1", "health-never-asks-the-cache", "routers/health.py",
        "if cache is None or await cache.ping():", "if True:",
        "redis-health",
    ),
    mutant(
        "10.1", "list-variants-tagged-apart", "cache.py",
        'return CachePolicy(self.list_ttl, (LIST_TAG,), "/users")',
        'return CachePolicy(self.list_ttl, (LIST_TAG + scope["query_string"].decode(),), "/users")',
        "cache-tags",
    ),
    mutant(
        "10.1", "me-shared-by-all-users", "cache.py",
        'partition=f"user:{user_id}"', 'partition="user"',
        "partition-by-user",
    ),
    mutant(
        "10.1", "never-compressed", "cache_backends.py",
        "if len(body) >= compression_min_bytes:", "if False:",
        "compression",
    ),
    mutant(
        "10.1", "hit-ratio-always-zero", "cache.py",
        "return self.hits / lookups if lookups else 0.0", "return 0.0",
        "stats-endpoint",
    ),
    mutant(
        "10.1", "dashboard-shows-no-hits", "routers/cache_admin.py",
        '("hits", str(stats.hits)),', '("hits", "none yet"),',
        "dashboard",
    ),
    mutant(
        "10.1", "warming-skipped", "main.py",
        "if cache is not None and settings.warm_paths:", "if False:",
        "warming",
    ),
    mutant(
        "10.1", "no-single-flight", "cache.py",
        "if (flight := self._joinable_flight(key, policy)) is not None:", "if False:",
        "stampede",
    ),
]  # fmt: skip

ENQUEUE_WELCOME = (
    '        await run_in_threadpool(jobs.enqueue, "send_welcome_email", {"user_id": user.id})\n'
)
FINISHED_SQL = "UPDATE job_record SET status = 'succeeded', finished_at = {}, dead_letter = 0 "

MUTANTS_10_2 = [
    mutant(
        # The request waits until the welcome email job has finished: "sent inline".
        "10.2", "request-waits-for-the-email", "routers/users.py",
        ENQUEUE_WELCOME,
        "        record = " + ENQUEUE_WELCOME.lstrip()
        + "        while jobs.registry.get(record.id).status in ('queued', 'running'):\n"
        + "            await __import__('asyncio').sleep(0.05)\n",
        "job-framework",
    ),
    mutant(
        "10.2", "welcome-enqueued-twice", "routers/users.py",
        ENQUEUE_WELCOME, ENQUEUE_WELCOME * 2,
        "enqueue-on-create", "retries",
    ),
    mutant(
        "10.2", "email-not-logged", "email_service.py",
        'logger.info("welcome email sent to=%s name=%r", to, name)',
        'logger.debug("welcome email sent to=%s name=%r", to, name)',
        "job-processing",
    ),
    mutant(
        "10.2", "dashboard-hides-job-ids", "routers/jobs.py",
        'f"<code>{escape(record.id)}</code>",', '"<code>a job</code>",',
        "dashboard",
    ),
    mutant(
        "10.2", "retention-ignored", "jobs.py",
        "retention = timedelta(days=services.settings.user_retention_days)",
        "retention = timedelta(days=0)",
        "recurring-cleanup",
    ),
    mutant(
        "10.2", "no-retries", "jobs.py",
        "retries=self.settings.job_max_retries,", "retries=0,",
        "retries",
    ),
    mutant(
        "10.2", "priority-ignored", "jobs.py",
        "priority=PRIORITIES[record.priority],", "priority=0,",
        "priorities",
    ),
    mutant(
        "10.2", "delay-ignored", "jobs.py",
        "eta=record.run_at,", "eta=None,",
        "delayed",
    ),
    mutant(
        "10.2", "finish-time-not-recorded", "job_registry.py",
        FINISHED_SQL.format("?"), FINISHED_SQL.format("NULL AND ?"),
        "status-tracking",
    ),
    mutant(
        "10.2", "cancel-does-nothing", "jobs.py",
        "changed, record = self.registry.cancel(job_id, utcnow())",
        "changed, record = False, self.registry.get(job_id)",
        "cancellation",
    ),
    mutant(
        "10.2", "batch-failures-uncounted", "job_registry.py",
        'failed=counts.get("failed", 0),', "failed=0,",
        "batches",
    ),
    mutant(
        "10.2", "alert-storm", "job_registry.py",
        "if failures < threshold or (last_alert is not None and last_alert > since):",
        "if failures < threshold:",
        "alerts",
    ),
    mutant(
        "10.2", "failed-jobs-not-dead-lettered", "job_registry.py",
        "\"dead_letter = 1 WHERE id = ? AND status = 'running'\"",
        "\"dead_letter = 0 WHERE id = ? AND status = 'running'\"",
        "dead-letter",
    ),
]  # fmt: skip

JOBS_STOP = "await worker.stop(shutdown.time_left(cap=settings.jobs_shutdown_timeout_seconds))"
REQUEST_BUDGET = "self.config.timeout_graceful_shutdown = self.coordinator.time_left()"
PHASE_LOG = 'logger.info("shutdown %s%s elapsed_ms=%d", phase, details, self.elapsed_ms())'

MUTANTS_10_3 = [
    mutant(
        # uvicorn's own reaction, nothing more: the app hears of it in the lifespan's end.
        "10.3", "signal-left-to-uvicorn", "server.py",
        "self.request_shutdown(signal.Signals(sig).name)", "self.should_exit = True",
        "shutdown-events",
    ),
    mutant(
        "10.3", "drains-for-5-s-by-default", "settings.py",
        "shutdown_drain_delay_seconds: float = Field(\n        default=0,",
        "shutdown_drain_delay_seconds: float = Field(\n        default=5,",
        "stop-accepting",
    ),
    mutant(
        "10.3", "requests-cut-at-once", "server.py",
        REQUEST_BUDGET, REQUEST_BUDGET.replace("self.coordinator.time_left()", "0"),
        "in-flight",
    ),
    mutant(
        "10.3", "running-jobs-abandoned", "main.py",
        JOBS_STOP, "await worker.stop(0)",
        "resources",
    ),
    mutant(
        "10.3", "requests-waited-for-forever", "server.py",
        REQUEST_BUDGET, REQUEST_BUDGET.replace("self.coordinator.time_left()", "None"),
        "timeout",
    ),
    mutant(
        "10.3", "phases-untimed", "shutdown.py",
        PHASE_LOG, 'logger.info("shutdown %s%s", phase, details)',
        "logged",
    ),
    mutant(
        "10.3", "admin-routes-open", "routers/admin.py",
        "dependencies=[Depends(require_admin)],", "dependencies=[],",
        "admin-shutdown",
    ),
    mutant(
        "10.3", "waits-for-every-job", "main.py",
        JOBS_STOP, "await worker.stop(60)",
        "container-stop",
    ),
    mutant(
        "10.3", "hooks-unbounded", "shutdown.py",
        "await asyncio.wait_for(hook(), self.time_left(cap=self.hook_timeout_seconds))",
        "await hook()",
        "pre-shutdown-hooks",
    ),
    mutant(
        "10.3", "never-draining-in-the-registry", "main.py",
        'return "draining" if shutdown.draining else "serving"', 'return "serving"',
        "replica-coordination",
    ),
    mutant(
        "10.3", "ready-while-draining", "routers/health.py",
        "    if shutdown.draining:\n", "    if False:\n",
        "health-state",
    ),
    mutant(
        "10.3", "keep-alive-while-draining", "shutdown.py",
        'if message["type"] == "http.response.start" and coordinator.draining:',
        'if message["type"] == "http.response.start" and False:',
        "connection-draining",
    ),
    mutant(
        "10.3", "no-started-notification", "shutdown.py",
        'steps.append(self.notifier.started(self.reason or "unknown"))', "pass",
        "notifications",
    ),
    mutant(
        "10.3", "sighup-stops", "supervisor.py",
        "elif signum == signal.SIGHUP:\n                    self._restart()",
        'elif signum == signal.SIGHUP:\n                    self._stop("SIGHUP received")',
        "graceful-restart",
    ),
    mutant(
        "10.3", "orphans-left-running", "job_worker.py",
        "orphans = self.registry.fail_orphaned_jobs(now, lease_seconds=LEASE_SECONDS)",
        "orphans = []",
        "chaos",
    ),
]  # fmt: skip

MUTANTS_10_4 = [
    mutant(
        # No heading names the jobs any more: their analysis is gone from the document.
        "10.4", "jobs-bottleneck-unnamed", "SCALING.md",
        "### 3. Background jobs", "### 3. The queue",
        "analysis-document",
    ),
    mutant(
        "10.4", "shared-state-unlisted", "SCALING.md",
        "## Shared state", "## Where things are",
        "shared-state",
    ),
    mutant(
        "10.4", "recommendations-unheaded", "SCALING.md",
        "## Recommendations", "## Closing words",
        "recommendations",
    ),
    mutant(
        "10.4", "sticky-sessions-unexplained", "SCALING.md",
        "## Alternatives to sticky sessions", "## Alternatives",
        "sticky-alternatives",
    ),
    mutant(
        "10.4", "capacity-unplanned", "SCALING.md",
        "## Capacity planning", "## Sizing",
        "capacity-planning",
    ),
    mutant(
        "10.4", "autoscaling-unheaded", "SCALING.md",
        "## Auto-scaling triggers", "## Scaling signals",
        "autoscaling-triggers",
    ),
    mutant(
        # DATABASE_URL read, then ignored: every instance keeps its own list again.
        "10.4", "database-url-ignored", "store.py",
        "    if database is None:\n        return UserStore(",
        "    if True:\n        return UserStore(",
        "shared-storage", "multiple-instances", "sessions", "sticky-alternatives",
    ),
    mutant(
        "10.4", "emails-unique-per-instance", "store_sql.py",
        "    unique=True,\n", "    unique=False,\n",
        "shared-storage",
    ),
    mutant(
        "10.4", "no-instance-header", "main.py",
        "app.add_middleware(InstanceIdMiddleware, instance_id=settings.instance_name)", "pass",
        "multiple-instances", "sticky-alternatives",
    ),
    mutant(
        # CACHE_BACKEND=redis ignored: each instance caches in its own memory.
        "10.4", "cache-per-instance", "main.py",
        'if settings.cache_backend == "redis":', "if False:",
        "multiple-instances",
    ),
    mutant(
        "10.4", "sessions-per-instance", "main.py",
        'if settings.session_backend == "redis":', "if False:",
        "sessions", "sticky-alternatives",
    ),
    mutant(
        # Registrations outlive a dead instance by a minute: it stays listed.
        "10.4", "registrations-outlive-instances", "instances.py",
        "TTL_SECONDS = 5.0", "TTL_SECONDS = 60.0",
        "instance-coordination",
    ),
    mutant(
        # Every instance enqueues the cleanup on its own schedule, as without a lock.
        "10.4", "cleanup-gate-never-asked", "job_worker.py",
        "if self.gate is not None and not self.gate.should_run():", "if False:",
        "distributed-locking",
    ),
    mutant(
        # A fixed leader instead of a lock: once it dies, nobody cleans up.
        "10.4", "cleanup-pinned-to-one-instance", "job_worker.py",
        "if self.gate is not None and not self.gate.should_run():",
        'if self.queue.settings.instance_id != "instance-1":',
        "distributed-locking",
    ),
    mutant(
        # Each instance counts alone: three instances allow three times the limit.
        "10.4", "rate-limit-counted-per-instance", "main.py",
        """return RedisRateLimiter.from_url(
            settings.redis_url,
            prefix=settings.redis_key_prefix,
            limit=settings.rate_limit_requests,
            window_seconds=settings.rate_limit_window_seconds,
            timeout=settings.redis_socket_timeout_seconds,
        )""",
        "return MemoryRateLimiter(settings.rate_limit_requests, "
        "settings.rate_limit_window_seconds)",
        "rate-limiting",
    ),
    mutant(
        # The job carries the id but runs outside it: its lines say request_id=-.
        "10.4", "job-runs-without-the-request-id", "jobs.py",
        "with bound_request_id(request_id):", "with bound_request_id(None):",
        "tracing",
    ),
    mutant(
        "10.4", "in-flight-never-counted-in", "metrics.py",
        "in_flight.value += 1", "pass",
        "autoscaling-triggers",
    ),
    mutant(
        # The gauge reads the running jobs: with no worker, always 0.
        "10.4", "queue-depth-counts-running-jobs", "main.py",
        'status_counts()["queued"]', 'status_counts()["running"]',
        "autoscaling-triggers",
    ),
]  # fmt: skip

MUTANTS = [
    *MUTANTS_10_1,
    *STRETCH_MUTANTS_10_1,
    *MUTANTS_10_2,
    *MUTANTS_10_3,
    *MUTANTS_10_4,
]
