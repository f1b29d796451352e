"""The 10.3 checks' fixture: `launch_app` without a cache warm-up.

A response cache that warms itself at startup (exercise 10.1, stretch `warming`) would GET
/users before the server is ready; with the slow store of these checks that alone takes as
long as the slow request itself. Nothing here is about caching, so warming is off.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from grader._process import AppProcess


@pytest.fixture
def launch_app(launch_app: Callable[..., AppProcess]) -> Callable[..., AppProcess]:
    def launch(**settings: object) -> AppProcess:
        settings.setdefault("CACHE_WARM_PATHS", "")
        return launch_app(**settings)

    return launch
