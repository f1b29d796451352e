"""The application factory: ``create_app()`` builds one fully wired FastAPI app."""

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from .cache import CacheStats, ResponseCacheMiddleware, warm_cache
from .cache_backends import CacheBackend, MemoryCache
from .cache_redis import RedisCache
from .job_worker import job_worker
from .jobs import JobQueue, build_job_queue
from .metrics import Metrics, RequestMetricsMiddleware
from .routers import admin, auth, cache_admin, health, jobs, users
from .seed import seed_demo_users
from .sessions import SessionStore
from .settings import DEFAULT_ADMIN_TOKEN, Settings
from .store import UserStore

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

logger = logging.getLogger(__name__)


def configure_logging(level: str) -> None:
    """Print log records to stdout, one line each, at ``level`` for this package.

    ``basicConfig`` does nothing once the root logger has a handler, so calling this for
    every app adds no duplicate handlers, and a host that configured logging itself
    (pytest, a log shipper) keeps its setup. Uvicorn configures only its own loggers.
    """
    logging.basicConfig(stream=sys.stdout, format=LOG_FORMAT)
    logging.getLogger(__package__).setLevel(level)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Work done once when the server starts (before ``yield``) and once when it stops."""
    settings: Settings = app.state.settings
    logger.info(
        "startup app_name=%r store_latency_ms=%s seed_demo_users=%s cache_enabled=%s "
        "cache_backend=%s jobs_worker=%s",
        settings.app_name,
        settings.store_latency_ms,
        settings.seed_demo_users,
        settings.cache_enabled,
        settings.cache_backend,  # not REDIS_URL: it may hold a password
        settings.jobs_worker,
    )
    if settings.admin_token == DEFAULT_ADMIN_TOKEN:
        logger.warning("ADMIN_TOKEN is the public default; set it before exposing this server")
    if settings.seed_demo_users:
        created = await seed_demo_users(app.state.store)
        logger.info("seeded %d demo users", created)
    cache: CacheBackend | None = app.state.cache
    if cache is not None and settings.warm_paths:
        # Last, so that the warm entries see the seeded users; before the yield, so that
        # the server takes no request until they are in.
        await warm_cache(app, cache, settings.warm_paths)
    job_queue: JobQueue = app.state.jobs
    # The worker (JOBS_WORKER=inprocess) starts last, once the app is ready, and stops
    # first, while everything its jobs use is still there.
    async with job_worker(job_queue):
        yield
    job_queue.close()
    if cache is not None:
        await cache.aclose()
    logger.info("shutdown")


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Answer an unhandled exception with a JSON 500 and no traceback.

    The exception is still re-raised afterwards, so the server logs its traceback.
    """
    return JSONResponse(
        {"detail": "Internal Server Error"}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build an app from ``settings`` (default: read from the environment).

    Safe to call many times in one process: each app gets its own metrics registry, store,
    session and job queue objects. The user and session DATA behind those objects is
    shared, though; see ``store.py``.
    """
    if settings is None:
        settings = Settings()
    configure_logging(settings.log_level)
    metrics = Metrics()

    app = FastAPI(title=settings.app_name, lifespan=lifespan)
    # Built here rather than in the lifespan so that they exist even for a client that
    # never runs the lifespan.
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = metrics.registry
    app.state.store = UserStore(metrics=metrics, latency_ms=settings.store_latency_ms)
    app.state.sessions = SessionStore(ttl_seconds=settings.session_ttl_seconds)
    # Its own huey instance per app: apps built in one process share no queue object
    # (they share the queue's file if they share JOBS_DB_PATH, as processes do).
    app.state.jobs = build_job_queue(settings, metrics)

    app.state.cache = None  # no backend at all with CACHE_ENABLED=false
    app.state.cache_stats = CacheStats()  # stays at zero then
    if settings.cache_enabled:
        app.state.cache = build_cache_backend(settings)
        # Added first, so it sits inside the metrics middleware: cache hits are counted too.
        app.add_middleware(
            ResponseCacheMiddleware,
            cache=app.state.cache,
            stats=app.state.cache_stats,
            sessions=app.state.sessions,
            list_ttl=settings.cache_list_ttl_seconds,
            item_ttl=settings.cache_item_ttl_seconds,
            registry=metrics.registry,
        )
    app.add_middleware(RequestMetricsMiddleware, requests_total=metrics.http_requests)
    app.add_exception_handler(Exception, internal_error)
    for module in (health, users, auth, admin, cache_admin, jobs):
        app.include_router(module.router)
    return app


def build_cache_backend(settings: Settings) -> CacheBackend:
    """The backend ``CACHE_BACKEND`` names. Neither connects to anything yet."""
    if settings.cache_backend == "redis":
        return RedisCache.from_url(
            settings.redis_url,
            prefix=settings.cache_key_prefix,
            compression_min_bytes=settings.cache_compression_min_bytes,
            timeout=settings.redis_socket_timeout_seconds,
        )
    return MemoryCache(
        max_entries=settings.cache_max_entries,
        compression_min_bytes=settings.cache_compression_min_bytes,
    )
