"""The application factory: ``create_app()`` builds one fully wired FastAPI app."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Literal

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from .cache import CacheStats, ResponseCacheMiddleware, warm_cache
from .cache_backends import CacheBackend, MemoryCache
from .cache_redis import RedisCache
from .instances import (
    InstanceIdMiddleware,
    InstanceRegistry,
    LocalInstanceRegistry,
    RedisInstanceRegistry,
)
from .job_worker import job_worker
from .jobs import JobQueue, build_job_queue
from .logs import LOG_FORMAT, configure_logging
from .metrics import Metrics, RequestMetricsMiddleware
from .notifications import WebhookNotifier
from .ratelimit import MemoryRateLimiter, RateLimiter, RateLimitMiddleware, RedisRateLimiter
from .routers import admin, auth, cache_admin, health, jobs, users
from .seed import seed_demo_users
from .sessions import SessionBackend, SessionStore, SessionStoreUnavailableError
from .sessions_redis import RedisSessionStore
from .settings import DEFAULT_ADMIN_TOKEN, Settings
from .shutdown import ShutdownCoordinator, ShutdownMiddleware
from .store import build_database, build_user_store
from .tracing import RequestIdMiddleware

if TYPE_CHECKING:
    # Only for the annotation: SQLAlchemy loads only when DATABASE_URL is set (store.py).
    from .store_sql import Database

__all__ = ["LOG_FORMAT", "configure_logging", "create_app", "lifespan"]

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Work done once when the server starts (before ``yield``) and once when it stops.

    The shutdown half runs phases 2 to 4 of the shutdown (``shutdown.py``), in the order
    that lets each step use what a later one closes: the requests are drained (uvicorn did
    that before it got here), then the job worker stops, whose jobs use the store and the
    queue, then those close. Phase 1 ran when the signal arrived; with no signal (a test
    client closing) it runs here, and the clock starts now.
    """
    settings: Settings = app.state.settings
    shutdown: ShutdownCoordinator = app.state.shutdown
    logger.info(
        "startup app_name=%r store_latency_ms=%s seed_demo_users=%s cache_enabled=%s "
        "cache_backend=%s jobs_worker=%s storage=%s session_backend=%s instance=%s "
        "rate_limit_backend=%s cleanup_lock=%s",
        settings.app_name,
        settings.store_latency_ms,
        settings.seed_demo_users,
        settings.cache_enabled,
        settings.cache_backend,  # not REDIS_URL: it may hold a password
        settings.jobs_worker,
        settings.storage,  # not DATABASE_URL, for the same reason
        settings.session_backend,
        settings.instance_name,
        settings.rate_limit_backend,
        settings.cleanup_lock,
    )
    if settings.admin_token == DEFAULT_ADMIN_TOKEN:
        logger.warning("ADMIN_TOKEN is the public default; set it before exposing this server")
    database: Database | None = app.state.database
    if database is not None:
        # First: seeding, warming and every request read the users.
        await database.open()
    if settings.seed_demo_users:
        created = await seed_demo_users(app.state.store)
        logger.info("seeded %d demo users", created)
    cache: CacheBackend | None = app.state.cache
    if cache is not None and settings.warm_paths:
        # Last, so that the warm entries see the seeded users; before the yield, so that
        # the server takes no request until they are in.
        await warm_cache(app, cache, settings.warm_paths)
    instances: InstanceRegistry = app.state.instances
    await instances.start()
    job_queue: JobQueue = app.state.jobs
    # The worker (JOBS_WORKER=inprocess) starts last, once the app is ready, and stops
    # first, while everything its jobs use is still there.
    async with job_worker(job_queue) as worker:
        if worker is not None:
            shutdown.on_begin(lambda reason: worker.stop_taking_jobs())
        yield

        if shutdown.begin("lifespan"):
            await shutdown.run_pre_shutdown(drain=False)  # nothing left to drain
        shutdown.log_phase("requests drained", cut_off=shutdown.cut_off())
        if worker is not None:
            await worker.stop(shutdown.time_left(cap=settings.jobs_shutdown_timeout_seconds))
    shutdown.log_phase("jobs stopped")

    job_queue.close()
    if cache is not None:
        await cache.aclose()
    sessions: SessionBackend = app.state.sessions
    await sessions.aclose()
    limiter: RateLimiter | None = app.state.rate_limiter
    if limiter is not None:
        await limiter.aclose()
    if database is not None:
        await database.aclose()
    await instances.aclose()  # last: replicas see this instance draining until the end
    shutdown.log_phase("resources closed")
    if not shutdown.has_server:  # else the server completes, after its own last words
        await shutdown.complete()


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Answer an unhandled exception with a JSON 500 and no traceback.

    The exception is still re-raised afterwards, so the server logs its traceback. Starlette
    sends this answer from outside every middleware, so it adds the instance header itself,
    and the request id, which RequestIdMiddleware left in the request's state.
    """
    headers = {"X-Instance-Id": request.app.state.settings.instance_name}
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        headers["X-Request-Id"] = request_id
    return JSONResponse(
        {"detail": "Internal Server Error"},
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        headers=headers,
    )


async def session_store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Answer 503 when the shared session store (Redis) cannot be reached.

    Logged by the store, once per outage: a traceback per request would say nothing more.
    """
    return JSONResponse(
        {"detail": "session store unavailable"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build an app from ``settings`` (default: read from the environment).

    Safe to call many times in one process: each app gets its own metrics registry, store,
    session and job queue objects. With the default settings the user and session DATA
    behind those objects is shared, though (see ``store.py``); with DATABASE_URL and
    SESSION_BACKEND=redis it lives in the database and Redis, for every process.
    """
    if settings is None:
        settings = Settings()
    configure_logging(settings.log_level)
    metrics = Metrics()

    app = FastAPI(title=settings.app_name, lifespan=lifespan)
    # Built here rather than in the lifespan so that they exist even for a client that
    # never runs the lifespan.
    app.state.settings = settings
    app.state.shutdown = shutdown = build_shutdown(settings)
    app.state.instances = build_instance_registry(settings, shutdown)
    app.state.metrics = metrics
    app.state.registry = metrics.registry
    # None with memory storage; else one connection pool for the app and its jobs.
    app.state.database = database = build_database(settings)
    app.state.store = build_user_store(settings, metrics, database=database)
    app.state.sessions = build_session_store(settings)
    # Its own huey instance per app: apps built in one process share no queue object
    # (they share the queue's file if they share JOBS_DB_PATH, as processes do).
    app.state.jobs = job_queue = build_job_queue(settings, metrics, database=database)
    # Read at each scrape: the jobs waiting for a worker, an autoscaler's signal (10.4).
    metrics.watch_job_queue(lambda: job_queue.registry.status_counts()["queued"])
    app.state.rate_limiter = limiter = build_rate_limiter(settings)

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
    if limiter is not None:
        # Outside the cache (a hit costs a client its budget too), inside the metrics (429s
        # are counted) and the request id (429s carry one). /health and /metrics are never
        # limited: load balancers and Prometheus poll them.
        app.add_middleware(
            RateLimitMiddleware,
            limiter=limiter,
            trust_forwarded_for=settings.rate_limit_trust_forwarded_for,
        )
    app.add_middleware(
        RequestMetricsMiddleware,
        requests_total=metrics.http_requests,
        in_flight=metrics.in_flight,
    )
    # Outside every middleware that logs, so that their lines carry the request's id.
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(ShutdownMiddleware, coordinator=shutdown)
    # Outermost: every response names its instance, cache hits and errors included.
    app.add_middleware(InstanceIdMiddleware, instance_id=settings.instance_name)
    app.add_exception_handler(Exception, internal_error)
    app.add_exception_handler(SessionStoreUnavailableError, session_store_unavailable)
    for module in (health, users, auth, admin, cache_admin, jobs):
        app.include_router(module.router)
    return app


def build_shutdown(settings: Settings) -> ShutdownCoordinator:
    """The app's shutdown coordinator, with the test hook if SHUTDOWN_TEST_HOOK_SECONDS > 0."""
    notifier = None
    if settings.shutdown_webhook_url:
        notifier = WebhookNotifier(settings.shutdown_webhook_url, instance=settings.instance_name)
    shutdown = ShutdownCoordinator(
        timeout_seconds=settings.shutdown_timeout_seconds,
        drain_delay_seconds=settings.shutdown_drain_delay_seconds,
        hook_timeout_seconds=settings.pre_shutdown_hook_timeout_seconds,
        notifier=notifier,
    )
    if settings.shutdown_test_hook_seconds > 0:
        seconds = settings.shutdown_test_hook_seconds

        async def test_hook() -> None:
            # Fault injection: a hook as slow as a real one that waits for something.
            await asyncio.sleep(seconds)

        shutdown.add_hook("test-hook", test_hook)
    return shutdown


def build_instance_registry(settings: Settings, shutdown: ShutdownCoordinator) -> InstanceRegistry:
    """The registry ``INSTANCE_REGISTRY`` names; the Redis one connects lazily."""

    def state() -> Literal["serving", "draining"]:
        return "draining" if shutdown.draining else "serving"

    if settings.instance_registry == "redis":
        registry = RedisInstanceRegistry.from_url(
            settings.redis_url,
            prefix=settings.instance_registry_prefix,
            instance_id=settings.instance_name,
            state=state,
            timeout=settings.redis_socket_timeout_seconds,
        )
        # The replicas learn of the shutdown the moment it starts, not at the next beat.
        shutdown.add_hook("instance-registry", registry.publish)
        return registry
    return LocalInstanceRegistry(settings.instance_name, state)


def build_session_store(settings: Settings) -> SessionBackend:
    """The session store ``SESSION_BACKEND`` names; the Redis one connects lazily."""
    if settings.session_backend == "redis":
        return RedisSessionStore.from_url(
            settings.redis_url,
            prefix=settings.redis_key_prefix,
            ttl_seconds=settings.session_ttl_seconds,
            timeout=settings.redis_socket_timeout_seconds,
        )
    return SessionStore(ttl_seconds=settings.session_ttl_seconds)


def build_rate_limiter(settings: Settings) -> RateLimiter | None:
    """The limiter ``RATE_LIMIT_BACKEND`` names, or None; the Redis one connects lazily."""
    if settings.rate_limit_backend == "redis":
        return RedisRateLimiter.from_url(
            settings.redis_url,
            prefix=settings.redis_key_prefix,
            limit=settings.rate_limit_requests,
            window_seconds=settings.rate_limit_window_seconds,
            timeout=settings.redis_socket_timeout_seconds,
        )
    if settings.rate_limit_backend == "memory":
        return MemoryRateLimiter(settings.rate_limit_requests, settings.rate_limit_window_seconds)
    return None


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
