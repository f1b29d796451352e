"""Shutdown notifications: a JSON POST to ``SHUTDOWN_WEBHOOK_URL`` when a shutdown starts and
when it completes, so that a chat channel, a dashboard or a deploy tool hears of it.

A notification is a courtesy, never a reason to stay up: each one has a short timeout, its
failure is logged and forgotten, and nothing retries it.
"""

import asyncio
import logging
from typing import Any

import httpx

logger = logging.getLogger(__name__)

# Each step (connecting, waiting for the answer) gets a second, and the whole POST two: a
# webhook that is down or slow costs the shutdown at most that.
STEP_TIMEOUT_SECONDS = 1.0
TOTAL_TIMEOUT_SECONDS = 2.0


class WebhookNotifier:
    """POSTs shutdown events to one URL."""

    def __init__(self, url: str, *, instance: str) -> None:
        self.url = url
        self.instance = instance

    async def started(self, reason: str) -> None:
        await self._post({"event": "shutdown.started", "instance": self.instance, "reason": reason})

    async def completed(self, elapsed_ms: int) -> None:
        await self._post(
            {"event": "shutdown.completed", "instance": self.instance, "elapsed_ms": elapsed_ms}
        )

    async def _post(self, event: dict[str, Any]) -> None:
        try:
            # A client per event: two requests per process lifetime do not justify keeping a
            # connection pool open all along.
            async with httpx.AsyncClient(timeout=STEP_TIMEOUT_SECONDS) as client:
                response = await asyncio.wait_for(
                    client.post(self.url, json=event), TOTAL_TIMEOUT_SECONDS
                )
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            logger.warning(
                "shutdown notification failed event=%s error=%s: %s",
                event["event"],
                type(exc).__name__,
                exc,
            )
            return
        if response.is_error:
            logger.warning(
                "shutdown notification refused event=%s status=%d",
                event["event"],
                response.status_code,
            )
        else:
            logger.info("shutdown notification sent event=%s", event["event"])
