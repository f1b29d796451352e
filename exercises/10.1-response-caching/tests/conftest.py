"""Settings every 10.1 check runs under."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def no_background_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exercise 10.2 adds jobs that read the store in the background (a welcome email, a
    cleanup); they would move `store_operations_total` while a 10.1 check counts the
    store operations of its own requests. JOBS_WORKER=none (10.2's contract) keeps the
    worker out of the app; an app without jobs ignores it."""
    monkeypatch.setenv("JOBS_WORKER", "none")
