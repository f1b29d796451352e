"""The 10.2 checks' fixture: an app with a job queue of its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from grader.testing import Api


@pytest.fixture
def jobs_app(make_api: Callable[..., Api], tmp_path: Path) -> Callable[..., Api]:
    """`jobs_app(EMAIL_FAIL_FIRST=2)`: an app whose job queue lives in this check's folder."""
    made = 0

    def factory(**env: object) -> Api:
        nonlocal made
        made += 1
        env.setdefault("JOBS_DB_PATH", str(tmp_path / f"jobs-{made}.sqlite3"))
        env.setdefault("CACHE_WARM_PATHS", "")
        return make_api(**env)

    return factory
