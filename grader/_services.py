"""Real servers for the checks: the shared Redis, and Redis servers a check starts itself.

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
from contextlib import closing

import pytest
import redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


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
