"""Fixtures: every test runs once against ``starter_app`` and once against ``solutions.app``."""

import importlib
import io
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .helpers import ADMIN_TOKEN, ClientFactory

APP_PACKAGES = ("starter_app", "solutions.app")


@pytest.fixture(params=APP_PACKAGES)
def app_package(request: pytest.FixtureRequest) -> ModuleType:
    """The package under test; it exports ``create_app`` and ``Settings``."""
    return importlib.import_module(request.param)


@pytest.fixture
def make_settings(app_package: ModuleType, tmp_path: Path) -> Callable[..., Any]:
    """Build ``Settings`` that ignore any ``.env`` file, with test defaults and overrides."""

    def make(**overrides: Any) -> Any:
        values: dict[str, Any] = {
            # Each test's own job queue (10.2); the starter ignores the setting.
            "jobs_db_path": str(tmp_path / "jobs.sqlite3"),
            "admin_token": ADMIN_TOKEN,
            "store_latency_ms": 0,
            "seed_demo_users": False,
            "log_level": "INFO",
        }
        return app_package.Settings(_env_file=None, **(values | overrides))

    return make


@pytest.fixture
def make_client(
    app_package: ModuleType, make_settings: Callable[..., Any]
) -> Iterator[ClientFactory]:
    """Build a fresh app and enter its ``TestClient`` (running the lifespan) per call.

    Every client is closed, and its lifespan shut down, at the end of the test.
    """
    with ExitStack() as stack:

        def make(**settings_overrides: Any) -> TestClient:
            app = app_package.create_app(make_settings(**settings_overrides))
            return stack.enter_context(TestClient(app))

        yield make


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


@pytest.fixture(autouse=True)
def in_a_scratch_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each app test in its own folder: files an app writes by default (the 10.2 job
    queue's jobs.sqlite3, say) land there, not in the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """What the app's loggers print at INFO, formatted as the app does (request ids on)."""
    from solutions.app.tracing import LOG_FORMAT_WITH_ID, RequestIdFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT_WITH_ID))
    handler.addFilter(RequestIdFilter())
    package = logging.getLogger("solutions.app")
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    yield stream
    package.removeHandler(handler)
    package.setLevel(level)
