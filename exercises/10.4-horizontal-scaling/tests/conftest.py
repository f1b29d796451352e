"""Fixtures of the 10.4 checks: the scaling document, and the settings of a cluster.

A cluster is several `python -m <package>` instances started with the same settings
(`launch_cluster`, from the grader's plugin), as a deploy would start them: one database,
one Redis, one key prefix, each instance with its own INSTANCE_ID and its own job queue
file (as if each ran on its own host).
"""

from __future__ import annotations

import importlib.util
import secrets
from pathlib import Path

import pytest
from doccheck import DOCUMENT, Section, sections

from grader._services import SharedRedis
from grader.testing import fail


@pytest.fixture
def scaling_doc(request: pytest.FixtureRequest) -> list[Section]:
    """The sections of SCALING.md in the app package (found without importing the app)."""
    package: str = request.config.getoption("grader_app")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        fail(
            f"find the package {package}",
            expected="your app package, with SCALING.md inside it",
            observed="no such package on the path",
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / DOCUMENT
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(
            f"read {package}/{DOCUMENT}",
            expected="the scaling analysis document, a Markdown file in your app package",
            observed=f"no readable {DOCUMENT} in {folder} ({type(exc).__name__})",
        )
    return sections(text)


@pytest.fixture
def cluster_settings(shared_redis: SharedRedis, tmp_path: Path) -> dict[str, str]:
    """The settings every instance of a check's cluster shares (README: "How your app is
    run"): one SQLite database (a check may swap in PostgreSQL), one Redis with a key
    prefix of the check's own, and the shared-state backends switched to Redis."""
    prefix = shared_redis.prefix
    return {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'users.sqlite3'}",
        "REDIS_URL": shared_redis.url,
        "REDIS_KEY_PREFIX": prefix,
        "CACHE_KEY_PREFIX": prefix,
        "INSTANCE_REGISTRY_PREFIX": prefix,
        "CACHE_BACKEND": "redis",
        "SESSION_BACKEND": "redis",
        "INSTANCE_REGISTRY": "redis",
        "SESSION_SECRET": secrets.token_hex(16),
        # A 10.1 warm-up would only slow every start; nothing here is about warming.
        "CACHE_WARM_PATHS": "",
    }


def own_job_queue(index: int) -> dict[str, str]:
    """Each instance its own queue file, as if each ran on a host of its own."""
    return {"JOBS_DB_PATH": f"jobs-{index}.sqlite3"}
