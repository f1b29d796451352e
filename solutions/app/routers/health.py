"""Operational endpoints for load balancers and Prometheus.

Neither touches the user store: a health check that queried the database would turn a slow
database into "every instance is down", and a scrape every few seconds would distort the
very store metrics it reports. The health check does ask the response cache (exercise 10.1,
redis-health), which is cheap: one PING when the cache is in Redis.
"""

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import CacheDep, MetricsDep

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health(cache: CacheDep) -> dict[str, str]:
    """Liveness, and whether the response cache answers: ``"cache": "up"`` or ``"down"``.

    A cache that is down leaves the app working, only slower (every request goes to the
    store), so the answer stays 200 with ``"status": "degraded"``. A 503 would make a load
    balancer take every instance out of service at once because of one Redis server.
    """
    if cache is None or await cache.ping():  # no cache configured: nothing can be down
        return {"status": "ok", "cache": "up"}
    return {"status": "degraded", "cache": "down"}


@router.get("/metrics", response_class=Response)
async def metrics(app_metrics: MetricsDep) -> Response:
    """This app's Prometheus metrics in the text exposition format."""
    return Response(generate_latest(app_metrics.registry), media_type=CONTENT_TYPE_LATEST)
