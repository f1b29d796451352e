"""Operational endpoints for load balancers and Prometheus.

Neither touches the user store: a health check that queried the database would turn a slow
database into "every instance is down", and a scrape every few seconds would distort the
very store metrics it reports.
"""

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import MetricsDep

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process is up and serving requests."""
    return {"status": "ok"}


@router.get("/metrics", response_class=Response)
async def metrics(app_metrics: MetricsDep) -> Response:
    """This app's Prometheus metrics in the text exposition format."""
    return Response(generate_latest(app_metrics.registry), media_type=CONTENT_TYPE_LATEST)
