"""Real servers for the checks: the shared Redis, Redis servers a check starts itself, and
a fresh database on the shared PostgreSQL.

No mocks: a check of "falls back when Redis is down" stops a real redis-server. A server
started here stays in the child pytest's process group, so even a run the grader has to
kill takes it down with it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def require(condition: bool, reason: str) -> None:
    """Skip a check whose server is missing, with a how-to; under CI, fail instead."""
    if condition:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing server is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ping(url: str, timeout: float = 0.5) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class SharedRedis:
    """The instructor's or learner's running Redis, with a key prefix of this check's own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"grade-{uuid.uuid4().hex[:10]}:"
        self.client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)

    def keys(self) -> list[bytes]:
        return list(self.client.scan_iter(match=f"{self.prefix}*", count=500))

    def cleanup(self) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for key in self.keys():
                pipe.delete(key)
            pipe.execute()
        self.client.close()


def redis_server_binary() -> str | None:
    """redis-server from GRADE_REDIS_SERVER, else from the PATH."""
    configured = os.environ.get("GRADE_REDIS_SERVER")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("redis-server")


class RedisServer:
    """A redis-server of the check's own on a free loopback port, to stop and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        self._process = subprocess.Popen(
            [
                redis_server_binary() or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not ping(self.url, timeout=0.2):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"could not start redis-server on port {self.port}", pytrace=False)
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server for real (its clients then get 'connection refused')."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


@pytest.fixture
def shared_redis() -> Iterator[SharedRedis]:
    """The Redis at GRADE_REDIS_URL (default 127.0.0.1:6379), its keys cleaned up after."""
    url = os.environ.get("GRADE_REDIS_URL", DEFAULT_REDIS_URL)
    require(
        ping(url),
        f"no Redis answers at {url}: start one (`redis-server --daemonize yes`) or point"
        " GRADE_REDIS_URL at yours",
    )
    service = SharedRedis(url)
    yield service
    service.cleanup()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A running redis-server that the check may stop and start again; always stopped after."""
    require(
        redis_server_binary() is not None,
        "redis-server is not on the PATH (nor at GRADE_REDIS_SERVER): install Redis to run"
        " the Redis outage checks",
    )
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- PostgreSQL ------------------------------------------------------------------------


def postgres_admin_url() -> str:
    """The PostgreSQL server the checks use (GRADE_POSTGRES_URL), as a URL of a database
    there whose user may create and drop databases."""
    url = os.environ.get("GRADE_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    # psycopg wants the plain scheme; the SQLAlchemy form is accepted for convenience.
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def without_password(url: str) -> str:
    """The URL with its password masked: for messages, which end up in reports."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def postgres_problem(url: str, timeout_seconds: int = 2) -> str | None:
    """Why no usable PostgreSQL answers at `url` (refused, no such user...), or None."""
    import psycopg  # here, not at the top: see fresh_postgres_database

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=timeout_seconds):
            return None
    except psycopg.Error as exc:
        message = str(exc).strip()
        return message.splitlines()[0] if message else type(exc).__name__


@contextmanager
def fresh_postgres_database(admin_url: str) -> Iterator[str]:
    """Create an empty database `grade_<random hex>` (the prefix: GRADE_DATABASE_PREFIX) on
    the server of `admin_url` (whose user may create databases); yield its URL; drop it at
    the end.

    The drop uses `WITH (FORCE)` (PostgreSQL 13+): it ends the sessions still connected,
    so that no `grade_...` database outlives its check, even when an app still runs.
    """
    # Imported here: only the checks that need PostgreSQL pay for loading the driver.
    import psycopg
    from psycopg import sql

    # GRADE_DATABASE_PREFIX: lets a caller find every database of its own run afterwards.
    name = f"{os.environ.get('GRADE_DATABASE_PREFIX', 'grade_')}{uuid.uuid4().hex[:16]}"
    database = sql.Identifier(name)
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(database))
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """The URL of a new, empty database on the PostgreSQL at GRADE_POSTGRES_URL (default
    127.0.0.1:5432, user postgres), dropped after the check whatever still uses it."""
    admin_url = postgres_admin_url()
    problem = postgres_problem(admin_url)
    require(
        problem is None,
        f"no PostgreSQL answers at {without_password(admin_url)} ({problem}): start one"
        " (`docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16`)"
        " or point GRADE_POSTGRES_URL at yours",
    )
    with fresh_postgres_database(admin_url) as url:
        yield url
