"""The application factory: ``create_app()`` builds one fully wired FastAPI app."""

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from .metrics import Metrics, RequestMetricsMiddleware
from .routers import admin, auth, health, users
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
        "startup app_name=%r store_latency_ms=%s seed_demo_users=%s",
        settings.app_name,
        settings.store_latency_ms,
        settings.seed_demo_users,
    )
    if settings.admin_token == DEFAULT_ADMIN_TOKEN:
        logger.warning("ADMIN_TOKEN is the public default; set it before exposing this server")
    if settings.seed_demo_users:
        created = await seed_demo_users(app.state.store)
        logger.info("seeded %d demo users", created)
    yield
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

    Safe to call many times in one process: each app gets its own metrics registry, store
    and session objects. The user and session DATA behind those objects is shared, though;
    see ``store.py``.
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

    app.add_middleware(RequestMetricsMiddleware, requests_total=metrics.http_requests)
    app.add_exception_handler(Exception, internal_error)
    for module in (health, users, auth, admin):
        app.include_router(module.router)
    return app
