"""The response cache's statistics: JSON for tools, an HTML page for people (exercise 10.1).

Both sit behind ``Authorization: Bearer <ADMIN_TOKEN>`` like every ``/admin`` endpoint: the
numbers reveal how the API is used. Neither touches the user store, and neither fails when
the cache backend is down: statistics are most wanted exactly then.
"""

from html import escape
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Response, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from ..cache_backends import CacheUsage
from ..deps import CacheDep, CacheStatsDep, SettingsDep, require_admin

router = APIRouter(
    prefix="/admin/cache",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={status.HTTP_401_UNAUTHORIZED: {"description": "Missing or wrong admin token"}},
)

# Live numbers: no browser or proxy should keep a copy.
NO_STORE = {"Cache-Control": "no-store"}


class CacheStatsOut(BaseModel):
    """Body of ``GET /admin/cache/stats``."""

    backend: Literal["memory", "redis"]
    enabled: bool = Field(description="False with CACHE_ENABLED=false: everything stays 0.")
    backend_up: bool = Field(description="Whether the backend answered this request.")
    hits: int = Field(description="Requests served from the cache by this instance.")
    misses: int = Field(description="Requests this instance looked up and had to build.")
    bypasses: int = Field(description="Cached copies refused by the request's Cache-Control.")
    hit_ratio: float = Field(description="hits / (hits + misses); 0 before any lookup.")
    # None: unknown, because the backend could not be reached. With Redis they count the
    # entries of every instance sharing the key prefix.
    entries: int | None = Field(description="Entries held, expired ones not yet dropped too.")
    bytes: int | None = Field(description="Size of those entries as stored (compressed).")
    compressed_entries: int | None = Field(description="Entries stored compressed.")


async def read_stats(cache: CacheDep, stats: CacheStatsDep, settings: SettingsDep) -> CacheStatsOut:
    """The hit counts of this instance, and what the backend holds now."""
    # CACHE_ENABLED=false: no backend, nothing held. Otherwise None means unreachable.
    usage = CacheUsage(0, 0, 0) if cache is None else await cache.usage()
    return CacheStatsOut(
        backend=settings.cache_backend,
        enabled=cache is not None,
        backend_up=usage is not None,
        hits=stats.hits,
        misses=stats.misses,
        bypasses=stats.bypasses,
        hit_ratio=stats.hit_ratio,
        entries=usage.entries if usage else None,
        bytes=usage.bytes if usage else None,
        compressed_entries=usage.compressed_entries if usage else None,
    )


StatsDep = Annotated[CacheStatsOut, Depends(read_stats)]


@router.get("/stats")
async def cache_stats(stats: StatsDep, response: Response) -> CacheStatsOut:
    """Hits, misses and hit ratio of this instance since it started; entries and sizes."""
    response.headers.update(NO_STORE)
    return stats


@router.get("", response_class=HTMLResponse)
async def cache_dashboard(stats: StatsDep) -> HTMLResponse:
    """The same statistics as a page that reloads itself every 5 seconds.

    A browser sends no bearer token on its own: open it through something that adds the
    header (a header-setting browser extension, or a proxy in front of the admin routes).
    """
    return HTMLResponse(render_dashboard(stats), headers=NO_STORE)


def render_dashboard(stats: CacheStatsOut) -> str:
    """A self-contained page (no external assets) with one table row per figure."""

    def shown(value: int | None) -> str:
        return "unknown" if value is None else str(value)

    rows = [
        ("hits", str(stats.hits)),
        ("misses", str(stats.misses)),
        ("bypasses", str(stats.bypasses)),
        ("hit ratio", f"{stats.hit_ratio:.1%}"),
        ("entries", shown(stats.entries)),
        ("bytes", shown(stats.bytes)),
        ("compressed entries", shown(stats.compressed_entries)),
        ("backend", stats.backend if stats.enabled else f"{stats.backend} (caching disabled)"),
        ("backend up", "yes" if stats.backend_up else "no: serving from the store"),
    ]
    # Every value goes through escape(): none comes from a client today, but a page that
    # escapes everything stays safe when someone adds one that does.
    table = "\n".join(
        f"      <tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>" for name, value in rows
    )
    return f"""<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta http-equiv="refresh" content="5">
    <title>Response cache</title>
    <style>
      body {{ font-family: system-ui, sans-serif; margin: 2rem; }}
      table {{ border-collapse: collapse; }}
      th, td {{ padding: 0.3rem 1rem; border-bottom: 1px solid #ddd; }}
      th {{ text-align: left; font-weight: normal; color: #555; }}
      td {{ text-align: right; font-variant-numeric: tabular-nums; }}
    </style>
  </head>
  <body>
    <h1>Response cache</h1>
    <p>Hits and misses of this instance since it started; entries and bytes as stored.</p>
    <table>
{table}
    </table>
  </body>
</html>
"""
