"""Real servers for the checks: Redis that is missing is a skip with a how-to, or under
CI=true a failure; the grader's own redis-server really stops and starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from grader import grade
from grader._services import RedisServer, free_port, ping, require

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
