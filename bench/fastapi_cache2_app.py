"""The starter app with its two GET endpoints cached by fastapi-cache2: a yardstick for the bench.

`cache_bench.py` compares the reference cache (`solutions/app/cache.py`, a hand-written ASGI
middleware) with the library a learner would most likely reach for instead. To make that a
comparison of the caching layers and nothing else, this app is `starter_app.create_app()`
unchanged (same store, same routers, same metrics middleware, same `/metrics`), except that
`GET /users` and `GET /users/{user_id}` are the starter's own endpoint functions wrapped in
fastapi-cache2's `@cache(expire=...)` with its `InMemoryBackend`.

It is bench-only and deliberately not a correct answer to exercise 10.1: nothing invalidates
the cache on POST/PUT/DELETE (the benchmark only sends GETs, and invalidation costs nothing on
the GET path), and fastapi-cache2 ignores a request's `max-age`. It needs the `bench` extra
(`pip install -e '.[bench]'`: fastapi-cache2, and jinja2, which fastapi-cache2 imports through
`starlette.templating` without declaring it).

Serve it like the starter (HOST, PORT, STORE_LATENCY_MS, ... from the environment):

    .venv/bin/python bench/fastapi_cache2_app.py

fastapi-cache2 keeps its configuration in class attributes (`FastAPICache`, and the store
of `InMemoryBackend`), so there is one such app per process at a time: `create_app()` resets
them, and a later call takes over from an earlier one.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from fastapi import APIRouter, FastAPI

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: `starter_app` imports from this checkout
    sys.path.insert(0, str(ROOT))

from fastapi_cache import FastAPICache  # noqa: E402  (after the sys.path fix above)
from fastapi_cache.backends.inmemory import InMemoryBackend  # noqa: E402
from fastapi_cache.decorator import cache  # noqa: E402

import starter_app  # noqa: E402
from starter_app.models import UserOut  # noqa: E402
from starter_app.routers import users  # noqa: E402

# The exercise's default TTLs (CACHE_LIST_TTL_SECONDS, CACHE_ITEM_TTL_SECONDS), read the same
# way; fastapi-cache2 wants whole seconds.
LIST_TTL_ENV, LIST_TTL_DEFAULT = "CACHE_LIST_TTL_SECONDS", 300
ITEM_TTL_ENV, ITEM_TTL_DEFAULT = "CACHE_ITEM_TTL_SECONDS", 900


def _ttl(name: str, default: int) -> int:
    return max(1, round(float(os.environ.get(name, default))))


def create_app() -> FastAPI:
    """`starter_app.create_app()` with its two GET routes cached by fastapi-cache2.

    The cached routes are the starter's own endpoint functions under the same paths and
    response models, in a router placed first in the app's route list (routes match in
    order), so they shadow the starter's uncached ones: routing, dependencies and
    serialisation stay the starter's and only the decorator differs. The starter's routers
    are module-level objects shared by every starter app in the process, so they are left
    untouched.
    """
    app = starter_app.create_app()
    backend = InMemoryBackend()
    # InMemoryBackend keeps its dict and lock on the class: give this app its own, so that an
    # app built earlier in the same process (the bench builds several) shares nothing with it.
    backend._store = {}
    backend._lock = asyncio.Lock()
    FastAPICache.reset()
    FastAPICache.init(backend, prefix="users-api", cache_status_header="X-Cache")

    cached = APIRouter(prefix="/users", tags=["users"])
    cached.add_api_route(
        "",
        cache(expire=_ttl(LIST_TTL_ENV, LIST_TTL_DEFAULT))(users.list_users),
        methods=["GET"],
        response_model=list[UserOut],
        include_in_schema=False,  # the starter's route already documents it
    )
    cached.add_api_route(
        "/{user_id}",
        cache(expire=_ttl(ITEM_TTL_ENV, ITEM_TTL_DEFAULT))(users.get_user),
        methods=["GET"],
        response_model=UserOut,
        responses=users.NOT_FOUND,
        include_in_schema=False,
    )
    app.include_router(cached)
    app.router.routes.insert(0, app.router.routes.pop())
    return app


def main() -> None:
    """Serve with uvicorn exactly as `python -m starter_app` does, so the servers compare."""
    import uvicorn

    from starter_app.settings import Settings

    settings = Settings()
    uvicorn.run(
        create_app(),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )


if __name__ == "__main__":
    main()
