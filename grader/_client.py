"""A synchronous HTTP client for an ASGI app that can never hang the grader.

Each `AppClient` runs the learner's app (lifespan included) on an event loop in a daemon
thread of its own and waits for every call with a timeout. An endpoint that never answers,
or even one that blocks its event loop, costs one timed-out request: the checks go on with
a fresh app, and the abandoned thread dies with the process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from ._errors import AppProblem

BASE_URL = "http://testserver"


@dataclass
class Exchange:
    """One request and what came back: the raw material of a learner-facing message."""

    method: str
    path: str
    request_headers: dict[str, str]
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    error: str | None = None

    def describe(self) -> str:
        """`GET /users/3`, with the request headers a check set on purpose."""
        shown = {k: v for k, v in self.request_headers.items() if k.lower() != "content-type"}
        extra = "".join(f" [{k}: {v}]" for k, v in shown.items())
        return f"{self.method} {self.path}{extra}"


class AppClient:
    """Drives one app instance in-process: lifespan startup on open, shutdown on close."""

    def __init__(self, app: Any, *, timeout: float) -> None:
        self.timeout = timeout
        self.exchanges: list[Exchange] = []
        self.abandoned = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="grader-app-loop", daemon=True
        )
        self._thread.start()
        self._manager: LifespanManager | None = None
        self._http: httpx.AsyncClient | None = None
        try:
            self._run(self._start(app), what="the app's startup (its lifespan handler)")
        except AppProblem:
            self.abandoned = True
            raise

    async def _start(self, app: Any) -> None:
        # Built inside the loop: it detects the async library it runs under.
        self._manager = LifespanManager(app, startup_timeout=None, shutdown_timeout=None)
        await self._manager.__aenter__()
        # An exception in an endpoint becomes the 500 a real server would send.
        transport = httpx.ASGITransport(app=self._manager.app, raise_app_exceptions=False)
        self._http = httpx.AsyncClient(transport=transport, base_url=BASE_URL)

    async def _stop(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._manager is not None:
            await self._manager.__aexit__(None, None, None)

    def _run(self, coro: Coroutine[Any, Any, Any], *, what: str) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            self.abandoned = True
            raise AppProblem(
                f"{what}\nexpected: to finish within {self.timeout:g} s\n"
                "observed: still running when the grader stopped waiting"
                " (does it hang, or wait for slow work?)"
            ) from None
        except AppProblem:
            raise
        except Exception as exc:  # the learner's code raised: report it, do not crash
            raise AppProblem(f"{what} raised {type(exc).__name__}: {exc}") from None

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request; an app error or a hang becomes an `AppProblem` naming the request."""
        exchange = Exchange(method, path, dict(headers or {}))
        self.exchanges.append(exchange)
        if self.abandoned:
            raise AppProblem(
                f"{exchange.describe()}\nexpected: an answer\n"
                "observed: not sent: the app stopped answering earlier in this check"
            )
        assert self._http is not None
        http = self._http
        try:
            response = self._run(
                http.request(method, path, json=json_body, headers=headers),
                what=exchange.describe(),
            )
        except AppProblem as exc:
            exchange.error = str(exc)
            raise
        exchange.status = response.status_code
        exchange.response_headers = dict(response.headers)
        exchange.body = response.text[:500]
        return response

    def gather(self, calls: list[tuple[str, str, dict[str, str] | None]]) -> list[httpx.Response]:
        """Send several GET-like requests at once (for concurrency checks)."""
        assert self._http is not None
        http = self._http

        async def all_at_once() -> list[httpx.Response]:
            return list(await asyncio.gather(*(http.request(m, p, headers=h) for m, p, h in calls)))

        return self._run(all_at_once(), what=f"{len(calls)} concurrent requests")

    def close(self) -> None:
        """Run the app's shutdown, unless it already hung (then leave the daemon thread)."""
        if not self.abandoned:
            try:
                self._run(self._stop(), what="the app's shutdown (its lifespan handler)")
            except AppProblem:
                self.abandoned = True
        if not self.abandoned:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self.timeout)
            self._loop.close()


def short_body(response: httpx.Response, limit: int = 160) -> str:
    """A response body trimmed for a one-line message."""
    text = response.text.strip()
    with contextlib.suppress(ValueError):
        text = json.dumps(response.json(), separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"
