"""Configuration, read from environment variables and an optional ``.env`` file."""

import os
import socket
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_ADMIN_TOKEN = "change-me-admin-token"
# The levels that both logging and uvicorn understand.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# DATABASE_URL schemes (exercise 10.4) and the database each names. The plain forms pick
# the asyncio driver the app uses (aiosqlite, psycopg 3); the explicit forms say so.
Storage = Literal["memory", "sqlite", "postgresql"]
DATABASE_SCHEMES: dict[str, Storage] = {
    "sqlite": "sqlite",
    "sqlite+aiosqlite": "sqlite",
    "postgresql": "postgresql",
    "postgresql+psycopg": "postgresql",
}


class Settings(BaseSettings):
    """Every knob of the API in one place.

    Each field is read from the environment variable with the same name in upper case
    (``store_latency_ms`` <- ``STORE_LATENCY_MS``), so one build runs unchanged on a laptop,
    under the grader and in several containers. Tests pass values directly instead:
    ``Settings(store_latency_ms=50)``.
    """

    # hide_input_in_errors: a rejected value is not repeated in the error, because some
    # settings hold secrets (DATABASE_URL and REDIS_URL may carry a password, ADMIN_TOKEN
    # is one). Every validator below names what is wrong in its own message instead.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    host: str = Field(
        default="127.0.0.1",
        description="Interface uvicorn binds to (use 0.0.0.0 inside a container).",
    )
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port uvicorn listens on.")
    app_name: str = Field(default="Users API", description="Title shown in the OpenAPI docs.")
    log_level: str = Field(
        default="INFO", description="Level of the app's own loggers, e.g. DEBUG or WARNING."
    )
    store_latency_ms: float = Field(
        default=0,
        ge=0,
        description=(
            "Simulated latency added to every store operation, standing in for a database "
            "round trip so that the effect of caching is measurable."
        ),
    )
    admin_token: str = Field(
        default=DEFAULT_ADMIN_TOKEN,
        min_length=1,
        description="Bearer token that unlocks the /admin endpoints.",
    )
    session_ttl_seconds: int = Field(
        default=3600, gt=0, description="How long a login token stays valid, in seconds."
    )
    seed_demo_users: bool = Field(
        default=False, description="Create three demo users at startup if they do not exist."
    )

    # Exercise 10.1: response caching.
    cache_enabled: bool = Field(
        default=True, description="Serve repeated GETs of users from the response cache."
    )
    cache_list_ttl_seconds: float = Field(
        default=300, gt=0, description="How long a cached GET /users may be served."
    )
    cache_item_ttl_seconds: float = Field(
        default=900, gt=0, description="How long a cached GET /users/{user_id} may be served."
    )
    cache_max_entries: int = Field(
        default=10_000,
        gt=0,
        description=(
            "Most responses the memory backend keeps; the least recently used leave first."
        ),
    )
    # Exercise 10.1, stretch goals.
    cache_backend: Literal["memory", "redis"] = Field(
        default="memory",
        description=(
            "Where cached responses live: this process (memory) or Redis, shared by every "
            "instance of the API (redis)."
        ),
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="The Redis server of the redis backend."
    )
    cache_key_prefix: str = Field(
        default="users-api:",
        min_length=1,
        description=(
            "Start of every key the cache writes to Redis, so that several apps (or test "
            "runs) can share one server without seeing each other's entries."
        ),
    )
    redis_socket_timeout_seconds: float = Field(
        default=0.25,
        gt=0,
        description=(
            "How long one Redis call may take (connect, or wait for an answer) before the "
            "cache gives up and the request goes to the store: a cache that waits seconds "
            "for a dead server is slower than no cache. Redis sessions (SESSION_BACKEND=redis) "
            "give up as soon, and answer 503."
        ),
    )
    cache_compression_min_bytes: int = Field(
        default=1024,
        ge=0,
        description="Response bodies of at least this many bytes are stored zlib-compressed.",
    )
    cache_warm_paths: str = Field(
        default="/users",
        description="Comma-separated paths fetched into the cache at startup (empty: none).",
    )

    # Exercise 10.2: background jobs.
    jobs_db_path: str = Field(
        default="jobs.sqlite3",
        min_length=1,
        description=(
            "SQLite file of the job queue and of the job records; jobs queued in it survive "
            "a restart, and every process that opens it shares its queue."
        ),
    )
    jobs_worker: Literal["inprocess", "none"] = Field(
        default="inprocess",
        description=(
            "inprocess: the app runs jobs in worker threads started by its lifespan; none: "
            "it only enqueues them, for a worker process (python -m solutions.app worker)."
        ),
    )
    jobs_workers: int = Field(default=2, ge=1, le=64, description="Jobs run at once per worker.")
    jobs_shutdown_timeout_seconds: float = Field(
        default=3,
        ge=0,
        description=(
            "How long stopping the app waits for running jobs to finish. Bounded, so that a "
            "long job cannot hold up a shutdown past the orchestrator's patience."
        ),
    )
    job_max_retries: int = Field(
        default=3, ge=0, description="Retries of a failed job after its first attempt."
    )
    job_retry_delay_seconds: float = Field(
        default=2,
        ge=0,
        description="Wait before the first retry; each next retry waits twice as long.",
    )
    user_retention_days: float = Field(
        default=30,
        ge=0,
        description="purge_deleted_users hard-deletes users soft-deleted longer ago than this.",
    )
    cleanup_interval_seconds: float = Field(
        default=3600, gt=0, description="How often a worker enqueues purge_deleted_users."
    )
    email_latency_ms: float = Field(
        default=0, ge=0, description="How long the mock email service takes per email."
    )
    email_fail_first: int = Field(
        default=0,
        ge=0,
        description="Fault injection: the mock email service fails its first N sends.",
    )
    # Exercise 10.2, stretch goals.
    job_alert_threshold: int = Field(
        default=5,
        ge=1,
        description="Failed job attempts within the alert window that raise an alert.",
    )
    job_alert_window_seconds: float = Field(
        default=60, gt=0, description="The sliding window of the failure alert, in seconds."
    )

    # Exercise 10.3: graceful shutdown.
    shutdown_timeout_seconds: float = Field(
        default=30,
        ge=0,
        description=(
            "The most time a shutdown gives requests in flight and running jobs, counted from "
            "the signal (pre-shutdown hooks and the drain delay included); then they are cut "
            "off and the shutdown goes on. Keep it below the orchestrator's grace period "
            "(docker stop: 10 s, Kubernetes: 30 s), or the process is killed mid-way."
        ),
    )
    shutdown_drain_delay_seconds: float = Field(
        default=0,
        ge=0,
        description=(
            "How long the app goes on serving after the signal, answering readiness 503 and "
            "every response with Connection: close, before it closes its listening socket: "
            "the time a load balancer needs to stop sending it traffic."
        ),
    )
    pre_shutdown_hook_timeout_seconds: float = Field(
        default=5, gt=0, description="The most time each pre-shutdown hook may take."
    )
    shutdown_test_hook_seconds: float = Field(
        default=0,
        ge=0,
        description=(
            "Fault injection: above 0, a pre-shutdown hook named test-hook that takes this long."
        ),
    )
    shutdown_webhook_url: str = Field(
        default="",
        description="Where shutdown.started and shutdown.completed are POSTed (empty: nowhere).",
    )
    instance_id: str = Field(
        default="",
        description="This instance's name in the registry and notifications (empty: <host>-<pid>).",
    )
    instance_registry: Literal["none", "redis"] = Field(
        default="none",
        description=(
            "none: an instance knows only itself; redis: every instance registers in Redis at "
            "REDIS_URL with its state (serving, draining), so replicas see each other."
        ),
    )
    instance_registry_prefix: str = Field(
        default="users-api:",
        min_length=1,
        description="Start of the instance registry's Redis keys.",
    )

    # Exercise 10.4: horizontal scaling.
    database_url: str = Field(
        default="",
        description=(
            "Where the users live. Empty: in this process's memory, lost at exit and unseen "
            "by any other instance. sqlite:///path/users.sqlite3: a file that the processes "
            "of one host share. postgresql://user:password@host:5432/db: a server that "
            "instances on any host share."
        ),
    )
    session_backend: Literal["memory", "redis"] = Field(
        default="memory",
        description=(
            "Where login sessions live: this process (memory), or Redis at REDIS_URL, so that "
            "a token issued by one instance is honoured by all and a logout ends it everywhere."
        ),
    )
    redis_key_prefix: str = Field(
        default="users-api:",
        min_length=1,
        description=(
            "Start of the Redis keys of the 10.4 features: sessions, the cleanup lock, "
            "rate-limit counters."
        ),
    )
    # Exercise 10.4, stretch goals.
    rate_limit_backend: Literal["none", "memory", "redis"] = Field(
        default="none",
        description=(
            "none: no rate limit; memory: each instance counts its clients alone (right for "
            "one instance: N instances allow N times the limit); redis: every instance counts "
            "in Redis at REDIS_URL, so the limit holds for the whole service."
        ),
    )
    rate_limit_requests: int = Field(
        default=100,
        gt=0,
        description=(
            "Requests a client may make per window; the next ones get 429 with Retry-After. "
            "/health and /metrics are never limited."
        ),
    )
    rate_limit_window_seconds: float = Field(
        default=60,
        gt=0,
        description="The rate limit's window, counted from a client's first request in it.",
    )
    rate_limit_trust_forwarded_for: bool = Field(
        default=False,
        description=(
            "Count a client by the first address of X-Forwarded-For rather than by the address "
            "it connected from. Only behind a balancer that overwrites the header, with the "
            "instances reachable through it alone: anyone can write that header."
        ),
    )
    cleanup_lock: Literal["none", "redis"] = Field(
        default="none",
        description=(
            "none: every worker enqueues the recurring cleanup on its own schedule; redis: "
            "one instance per CLEANUP_INTERVAL_SECONDS runs it, the one that takes a lock in "
            "Redis at REDIS_URL (it expires by itself: a dead holder blocks nobody)."
        ),
    )

    @property
    def storage(self) -> Storage:
        """The kind of user storage DATABASE_URL names; for logs, which never show the URL."""
        if not self.database_url:
            return "memory"
        return DATABASE_SCHEMES[_scheme(self.database_url)]

    @property
    def instance_name(self) -> str:
        """``INSTANCE_ID``, or ``<hostname>-<pid>`` of the process that asks."""
        return self.instance_id or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def warm_paths(self) -> list[str]:
        """``CACHE_WARM_PATHS`` as a list (the environment holds it as one string)."""
        return _comma_separated(self.cache_warm_paths)

    @field_validator("cache_warm_paths")
    @classmethod
    def _paths_are_absolute(cls, value: str) -> str:
        # Fail at startup on "users" rather than warm nothing without a word.
        for path in _comma_separated(value):
            if not path.startswith("/"):
                raise ValueError(f"every cache warm path must start with '/', not {path!r}")
        return value

    @field_validator("shutdown_webhook_url")
    @classmethod
    def _webhook_is_http(cls, value: str) -> str:
        # Fail at startup rather than at the shutdown, when nobody is watching any more.
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"the shutdown webhook must be an http(s) URL, not {value!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        # Fail at startup rather than at the first request. The messages name the scheme
        # only: the rest of the URL may hold a password.
        if not value:
            return value
        scheme = _scheme(value)
        if scheme not in DATABASE_SCHEMES:
            known = ", ".join(f"{name}://" for name in DATABASE_SCHEMES)
            found = f"{scheme}://" if scheme else "a value without a scheme"
            raise ValueError(f"DATABASE_URL must start with one of {known}, not {found}")
        path = value.partition("://")[2].removeprefix("/")
        if DATABASE_SCHEMES[scheme] == "sqlite" and path in ("", ":memory:"):
            raise ValueError(
                "DATABASE_URL names an in-memory SQLite database, which no other process "
                "sees: give a file (sqlite:///path/users.sqlite3), or leave it empty"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        # Fail at startup on a typo rather than at the first log call.
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, not {value!r}")
        return level


def _scheme(url: str) -> str:
    """``postgresql+psycopg`` from ``postgresql+psycopg://...``; ``""`` without ``://``."""
    scheme, separator, _ = url.partition("://")
    return scheme.lower() if separator else ""


def _comma_separated(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]
