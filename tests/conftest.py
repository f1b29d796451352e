"""Fixtures shared by the project's own tests."""

from __future__ import annotations

from pathlib import Path

import pytest

# The grader's fixtures of real servers (a fresh PostgreSQL database, the shared Redis, a
# redis-server to stop and start), for the app tests and the grading proofs alike.
from grader._services import postgres_database, redis_server, shared_redis  # noqa: F401

from ._support import ROOT


@pytest.fixture
def root() -> Path:
    return ROOT
