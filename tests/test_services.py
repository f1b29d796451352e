"""Real servers for the checks: Redis that is missing is a skip with a how-to, or under
CI=true a failure; the grader's own redis-server really stops and starts; a check's
PostgreSQL database is its own, and gone after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from grader import grade
from grader._services import (
    RedisServer,
    free_port,
    fresh_postgres_database,
    ping,
    postgres_admin_url,
    postgres_problem,
    require,
    without_password,
)

pytestmark = pytest.mark.slow

REDIS_CRITERIA = ("redis", "redis-fallback", "redis-health")


def test_require_skips_with_the_reason_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="start it"):
        require(False, "no Redis: start it")
    require(True, "never raised")


def test_require_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require(False, "no Redis: start it")


def test_own_redis_server_stops_and_starts_on_the_same_port() -> None:
    server = RedisServer()
    try:
        server.start()
        assert ping(server.url)
        server.stop()
        assert not ping(server.url)
        server.start()
        assert ping(server.url)
    finally:
        server.stop()
    assert not ping(server.url)


@pytest.fixture
def no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a laptop without Redis: nothing at GRADE_REDIS_URL, no redis-server binary."""
    monkeypatch.setenv("GRADE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("GRADE_REDIS_SERVER", "/nonexistent/redis-server")


def test_without_redis_the_redis_goals_are_skipped_with_a_how_to(
    no_redis: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = grade("10.1", solution=True, criteria=REDIS_CRITERIA, app_path=tmp_path)
    for criterion in result.criteria:
        assert criterion.status == "skipped", criterion
        assert "redis" in (criterion.message or "").lower()
        assert "start" in (criterion.message or "") or "install" in (criterion.message or "")


def test_without_redis_under_ci_the_redis_goals_fail(
    no_redis: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CI", "true")
    result = grade("10.1", solution=True, criteria=REDIS_CRITERIA, app_path=tmp_path)
    for criterion in result.criteria:
        assert criterion.status == "failed", criterion
        assert "CI=true" in (criterion.message or "")


def test_a_fresh_postgres_database_is_dropped_even_while_in_use() -> None:
    import psycopg

    admin_url = postgres_admin_url()
    problem = postgres_problem(admin_url)
    require(problem is None, f"no PostgreSQL at {without_password(admin_url)}: {problem}")
    with fresh_postgres_database(admin_url) as url:
        name = url.rsplit("/", 1)[-1]
        assert name.startswith("grade_")
        # An app that never closed its connection: the drop must not wait for it.
        left_open = psycopg.connect(url, autocommit=True)
        assert left_open.execute("SELECT current_database()").fetchone() == (name,)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        found = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        assert found.fetchone() is None
    left_open.close()


def test_without_postgres_the_problem_is_said_and_the_password_is_not() -> None:
    url = f"postgresql://grader:s3cret@127.0.0.1:{free_port()}/postgres"
    assert "refused" in (postgres_problem(url) or "").lower()
    assert without_password(url) == url.replace("s3cret", "***")
