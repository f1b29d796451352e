"""What does the reference response cache buy, and what does it cost?

Four figures, each measured side by side in one run:

1. Throughput of `GET /users/1` served from the reference cache (`solutions.app`, warm) versus
   the uncached starter (`starter_app`), at STORE_LATENCY_MS=0 and =20, with one client (c1,
   closed loop: throughput = 1 / response time) and with the server saturated (c16). Target:
   HIT vs uncached at 20 ms >= 20x, for one client: what the cache buys each client. The
   saturated figure is CPU-bound and printed as context, with the reason it stays far lower.
2. The caching layer's cost on a MISS: the reference with every request a miss versus the
   reference with CACHE_ENABLED=false (same code minus the middleware), at 0 ms, saturated.
   Target: overhead <= 10 %.
3. Store reads caused by 100 concurrent cold GETs of one user (STORE_LATENCY_MS=50), counted
   in `store_operations_total`: the reference (single-flight stampede protection: 1), the
   reference with protection switched off if it has a switch, the starter and fastapi-cache2.
4. The same HIT load (1) at 20 ms and the stampede (3) against fastapi-cache2
   (`fastapi_cache2_app.py`: the starter with its GET endpoints under `@cache`), the library a
   learner would reach for.

Figures 1, 2 and 4 run real uvicorn servers (`python -m starter_app`, `python -m
solutions.app`, `python bench/fastapi_cache2_app.py`) on 127.0.0.1, one process each, all
started up front. wrk (a C load generator: `apt-get install wrk`) drives them when it is on
the PATH, one `wrk -t1 -c<N> -d<S>s --latency` per batch; without it, httpx.AsyncClients in
this process do, which cost more CPU per request than a cache HIT and so set the pace
themselves. Figure 3 runs in-process (httpx.ASGITransport) because counting a stampede needs
no sockets, only the app.

The machine is shared and noisy with 2 cores (client and server share them), so the variants
run interleaved, in one order and then the reverse (A B C, C B A, ...), and are compared as
ratios of medians: a burst of load from elsewhere then slows both sides of a comparison alike.
Absolute requests/s are printed for context only. Every batch also reads `/metrics` before
and after, so a "HIT" batch that reached the store, or a "MISS" batch that did not, is caught
instead of being reported as a speed.

    .venv/bin/python bench/cache_bench.py [--quick] [--rounds N] [--duration S] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import (
    ROOT,
    WRK_PERCENTILES,
    Child,
    checkout_env,
    environment,
    exit_on_sigterm,
    free_ports,
    load_average,
    paired_ratios,
    parse_wrk,
    percentile,
    round_or_none,
    say,
    stop_all,
    verdict,
    write_json,
    wrk_version,
)
from asgi_lifespan import LifespanManager

BENCH_DIR = ROOT / "bench"
USER_PATH = "/users/1"  # alice, the first demo user: SEED_DEMO_USERS=true creates her
HIT_TARGET_RATIO = 20.0  # cached vs uncached at 20 ms
MISS_TARGET_PERCENT = 10.0  # caching layer on a miss vs no caching
STAMPEDE_EXPECTED = 1
LATENCIES_MS = (0, 20)
STAMPEDE_LATENCY_MS = 50
STAMPEDE_REQUESTS = 100
# Per request: only catches a server that hangs; a healthy one answers in milliseconds.
REQUEST_TIMEOUT = 10.0
STARTUP_TIMEOUT = 30.0
PERCENTILES = WRK_PERCENTILES
WRK_GRACE = 15.0  # seconds a wrk run may take beyond its -d before it is killed
WRK_SETTLE = 0.1  # seconds after wrk stops, for the requests it left in flight to finish
WRK_ADVICE = (
    "wrk is not on the PATH, so the Python httpx client drives the servers and its CPU per"
    " request sets the pace: apt-get install wrk gives better figures"
)
ADMIN_TOKEN = "cache-bench-admin-token"  # not the public default, which logs a warning
# Settings of the learner-app contract (see exercises/10.1-response-caching/README.md): a
# stray value in the shell must not change what is measured, so none is inherited.
CONTRACT_NAMES = frozenset(
    {
        "HOST",
        "PORT",
        "APP_NAME",
        "LOG_LEVEL",
        "STORE_LATENCY_MS",
        "ADMIN_TOKEN",
        "SESSION_TTL_SECONDS",
        "SEED_DEMO_USERS",
        "REDIS_URL",
    }
)
CONTRACT_PREFIXES = ("CACHE_",)
METRIC_LINE = re.compile(r"^store_operations_total(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.MULTILINE)
# A boolean setting of the reference whose name says it switches stampede protection.
SWITCH_NAME = re.compile(r"stampede|single_?flight|coalesc", re.IGNORECASE)


def app_env(**settings: str) -> dict[str, str]:
    """The environment of an app: ours minus the contract variables, plus `settings`.

    Every app gets the same base: demo users seeded (so `/users/1` exists), no cache warming
    (a warmed entry would turn the first "cold" request into a hit), logging at WARNING (so
    uvicorn writes no access log line per request, which would cost more than a cache hit)
    and an admin token that is not the public default. The repo root goes on PYTHONPATH so the
    apps import from this checkout although they run in a temporary folder.
    """
    env = checkout_env(
        {
            name: value
            for name, value in os.environ.items()
            if name not in CONTRACT_NAMES and not name.startswith(CONTRACT_PREFIXES)
        }
    )
    env.update(
        LOG_LEVEL="WARNING",
        ADMIN_TOKEN=ADMIN_TOKEN,
        SEED_DEMO_USERS="true",
        CACHE_WARM_PATHS="",
    )
    env.update(settings)
    return env


def in_process_env(cwd: Path, **settings: str) -> dict[str, str]:
    """`app_env(**settings)` for an app this process builds and runs itself.

    Only `create_app()` runs inside `environment(env, cwd)`; its lifespan runs later, back in
    the folder the bench was started from. The reference's job queue (exercise 10.2) opens
    JOBS_DB_PATH then, so a relative path would put a `jobs.sqlite3` there, in the repo, and
    its worker threads would find no tables in it: the path is made absolute, in `cwd`.
    """
    return app_env(JOBS_DB_PATH=str(cwd / "jobs.sqlite3"), **settings)


def store_reads_in(metrics_text: str) -> int:
    """Sum of `store_operations_total` over all operations, from a /metrics body."""
    return round(sum(float(value) for value in METRIC_LINE.findall(metrics_text)))


async def store_reads(client: httpx.AsyncClient) -> int:
    response = await client.get("/metrics")
    response.raise_for_status()
    return store_reads_in(response.text)


# --- servers ---------------------------------------------------------------------------------


@dataclass
class Server(Child):
    """One uvicorn process on 127.0.0.1: started once, driven for every round, then stopped.

    Its CPU time (`cpu_seconds()`) gives CPU per request, the server's own cost, which the
    client cannot cap: on 2 shared cores a Python client may saturate before the server does.
    """

    settings: dict[str, str]
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, port: int, cwd: Path) -> None:
        """Start the server on `port`, logging to a file in `cwd`."""
        self.port = port
        self.launch(
            log=cwd / f"{re.sub(r'[^a-z0-9]+', '-', self.label.lower())}.log",
            env=app_env(HOST="127.0.0.1", PORT=str(port), **self.settings),
            cwd=cwd,
        )

    def wait_ready(self) -> None:
        """Poll `/health` until it answers; fail with the log's tail if the process dies."""
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with httpx.Client(base_url=self.base_url, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.label} exited with {self.process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/health").status_code == 200:
                        return
                time.sleep(0.1)
        raise RuntimeError(f"{self.label} did not answer /health within {STARTUP_TIMEOUT:g} s")


@contextlib.contextmanager
def running(servers: Sequence[Server], cwd: Path) -> Iterator[None]:
    """Start every server (in parallel: they boot while the others do), stop all of them."""
    try:
        for server, port in zip(servers, free_ports(len(servers)), strict=True):
            server.start(port=port, cwd=cwd)
        for server in servers:
            try:
                server.wait_ready()
            except RuntimeError as error:
                sys.exit(f"bench: aborted, {error}.\n--- its log (tail) ---\n{server.log_tail()}")
        yield
    finally:
        stop_all(servers)


# --- load ------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One timed burst of GETs against one variant."""

    ok: int
    errors: int
    seconds: float
    rps: float
    client_cpu: float
    server_cpu: float | None
    store_reads: int
    # Response times in ms: "p50", "p75", "p90", "p99" (wrk's --latency, or timed per request).
    latency_ms: dict[str, float]
    x_cache: dict[str, int] = field(default_factory=dict)  # httpx only: wrk keeps no headers

    @property
    def server_us_per_request(self) -> float | None:
        return None if self.server_cpu is None else self.server_cpu / self.ok * 1e6

    @property
    def client_us_per_request(self) -> float:
        return self.client_cpu / self.ok * 1e6

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": self.errors,
            "seconds": round(self.seconds, 4),
            "rps": round(self.rps, 1),
            "latency_ms": self.latency_ms,
            "client_cpu_s": round(self.client_cpu, 3),
            "server_cpu_s": round_or_none(self.server_cpu, 3),
            "store_reads": self.store_reads,
            "x_cache": self.x_cache,
        }


@dataclass
class LoadVariant:
    """One side of a comparison: a server, a latency, a connection count and request headers."""

    key: str
    label: str
    server: Server
    latency_ms: int
    # "store": every request must reach the store; "cache": none may (a warm HIT).
    expect: str
    # Connections, each sending its next request as soon as the last is answered (closed loop):
    # 1 is one client, whose throughput is 1 / latency; `--concurrency` saturates the server.
    connections: int
    headers: dict[str, str] = field(default_factory=dict)
    batches: list[Batch] = field(default_factory=list)

    @property
    def warm_key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Variants that differ only in connections share one warm-up batch."""
        return self.server.label, tuple(sorted(self.headers.items()))

    @property
    def rps(self) -> list[float]:
        return [b.rps for b in self.batches]

    @property
    def median_rps(self) -> float:
        return statistics.median(self.rps)

    @property
    def best_rps(self) -> float:
        return max(self.rps)

    def median_latency(self, percentile: str) -> float | None:
        values = [b.latency_ms[percentile] for b in self.batches if percentile in b.latency_ms]
        return statistics.median(values) if values else None

    @property
    def median_server_us(self) -> float | None:
        values = [b.server_us_per_request for b in self.batches]
        clean = [v for v in values if v is not None]
        return statistics.median(clean) if clean else None

    @property
    def median_client_cpu_percent(self) -> float:
        return statistics.median(100 * b.client_cpu / b.seconds for b in self.batches)

    @property
    def median_client_us(self) -> float:
        return statistics.median(b.client_us_per_request for b in self.batches)

    def anomalies(self) -> list[str]:
        """What makes a batch of this variant not measure what its label says."""
        found = []
        name = f"{self.label} at {self.latency_ms} ms, c{self.connections}"
        for n, batch in enumerate(self.batches, 1):
            if batch.errors:
                found.append(f"{name}, round {n}: {batch.errors} failed requests")
            if self.expect == "cache" and batch.store_reads:
                found.append(f"{name}, round {n}: {batch.store_reads} store reads on HITs")
            if self.expect == "store" and batch.store_reads < batch.ok:
                found.append(
                    f"{name}, round {n}: {batch.store_reads} store reads for"
                    f" {batch.ok} requests that should all reach the store"
                )
        return found

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "server": self.server.command[1:],
            "settings": self.server.settings,
            "latency_ms": self.latency_ms,
            "connections": self.connections,
            "headers": self.headers,
            "rps": [round(r, 1) for r in self.rps],
            "median_rps": round(self.median_rps, 1),
            "best_rps": round(self.best_rps, 1),
            "median_latency_ms": {p: round_or_none(self.median_latency(p), 3) for p in PERCENTILES},
            "median_server_cpu_us_per_request": round_or_none(self.median_server_us, 1),
            "median_client_cpu_percent": round(self.median_client_cpu_percent, 1),
            "batches": [b.summary() for b in self.batches],
        }


def percentiles_ms(durations: Sequence[float]) -> dict[str, float]:
    """The PERCENTILES of `durations` (seconds), in ms, nearest rank."""
    if not durations:
        return {}
    return {p: round(percentile(durations, int(p[1:]) / 100) * 1e3, 3) for p in PERCENTILES}


def store_reads_now(client: httpx.Client) -> int:
    response = client.get("/metrics")
    response.raise_for_status()
    return store_reads_in(response.text)


def _abort_no_success(variant: LoadVariant, detail: str = "") -> None:
    sys.exit(
        f"bench: aborted, no request to {variant.label} ({variant.server.label}) succeeded."
        f"{detail}\n--- its log (tail) ---\n{variant.server.log_tail()}"
    )


def _children_cpu() -> float:
    """User + system CPU of the waited-for children: wrk's (the servers are reaped at the end)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class WrkLoad:
    """Batches driven by wrk, a C load generator: a few µs of CPU per request, where a Python
    client needs more than the server's whole HIT path and then sets the pace itself.

    Each batch is one `wrk -t1 -c<connections> -d<seconds>s --latency <url>` (plus `-H` for the
    variant's headers), a process of its own, killed by pid if it outlives its duration.
    """

    name = "wrk"

    def __init__(self, path: str, *, duration: int, warmup_duration: int = 1) -> None:
        self.path = path
        self.duration = duration
        self.warmup_duration = warmup_duration
        self.version = wrk_version(path)
        self._stack = contextlib.ExitStack()
        self._clients: dict[str, httpx.Client] = {}

    def describe(self) -> str:
        return f"{self.version}, one thread, {self.duration} s per batch"

    def __enter__(self) -> WrkLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _metrics_client(self, server: Server) -> httpx.Client:
        if server.label not in self._clients:
            self._clients[server.label] = self._stack.enter_context(
                httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT)
            )
        return self._clients[server.label]

    def command(self, variant: LoadVariant, seconds: int) -> list[str]:
        command = [self.path, "-t1", f"-c{variant.connections}", f"-d{seconds}s", "--latency"]
        for name, value in variant.headers.items():
            command += ["-H", f"{name}: {value}"]
        return [*command, variant.server.base_url + USER_PATH]

    def run(self, command: list[str], seconds: int) -> str:
        """Run wrk to the end and return its report; kill it by pid if it hangs or we stop."""
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            output, _ = process.communicate(timeout=seconds + WRK_GRACE)
        except subprocess.TimeoutExpired:
            sys.exit(f"bench: aborted, {' '.join(command)} ran over {seconds + WRK_GRACE:g} s")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        if process.returncode != 0:
            sys.exit(f"bench: aborted, {' '.join(command)} exited {process.returncode}:\n{output}")
        return output

    def batch(self, variant: LoadVariant, *, timed: bool) -> Batch:
        seconds = self.duration if timed else self.warmup_duration
        command = self.command(variant, seconds)
        client = self._metrics_client(variant.server)
        before = store_reads_now(client)
        server_cpu = variant.server.cpu_seconds()
        client_cpu = _children_cpu()
        started = time.perf_counter()
        output = self.run(command, seconds)
        wall = time.perf_counter() - started
        client_cpu = _children_cpu() - client_cpu
        # wrk stops with requests in flight: let them finish, so their store reads and CPU land
        # in this batch, not in the next one on this server (a HIT batch would seem to miss).
        time.sleep(WRK_SETTLE)
        server_after = variant.server.cpu_seconds()
        reads = store_reads_now(client) - before
        try:
            report = parse_wrk(output)
        except ValueError as error:
            sys.exit(f"bench: aborted, cannot read wrk's report ({error}):\n{output}")
        ok = report.requests - report.non_2xx
        if ok <= 0:
            _abort_no_success(variant, f"\n--- wrk ---\n{output}")
        return Batch(
            ok=ok,
            errors=report.non_2xx + report.socket_errors,
            seconds=report.seconds or wall,
            rps=report.rps,
            client_cpu=client_cpu,
            server_cpu=None
            if server_cpu is None or server_after is None
            else server_after - server_cpu,
            store_reads=reads,
            latency_ms=report.latency_ms,
        )


class HttpxLoad:
    """The fallback without wrk: httpx.AsyncClients in this process, one per connection.

    Each connection is an AsyncClient of its own holding one keep-alive connection. One client
    with a pool of connections would be the obvious choice, but httpcore scans the whole pool on
    every request (`_assign_requests_to_connections`), which here about doubled the client's
    CPU per request. Even so the client needs more CPU per request than the server's HIT path
    and shares the 2 cores with it, so it sets the pace of every fast variant.
    """

    name = "httpx"

    def __init__(self, *, requests: int, time_cap: float) -> None:
        self.requests = requests
        self.time_cap = time_cap
        self._runner = asyncio.Runner()
        self._stack = contextlib.AsyncExitStack()
        self._pools: dict[str, list[httpx.AsyncClient]] = {}

    def describe(self) -> str:
        return (
            f"httpx {httpx.__version__} in this process, {self.requests} requests per batch"
            f" ({max(20, self.requests // 10)} on one connection)"
        )

    def __enter__(self) -> HttpxLoad:
        self._runner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._runner.run(self._stack.aclose())
        finally:
            self._runner.close()

    def batch(self, variant: LoadVariant, *, timed: bool) -> Batch:
        # One connection at 20 ms takes that long per request however idle the box: a tenth.
        count = self.requests if variant.connections > 1 else max(20, self.requests // 10)
        if not timed:
            count = max(20, count // 4)
        return self._runner.run(self._batch(variant, count))

    async def _clients(self, variant: LoadVariant) -> list[httpx.AsyncClient]:
        pool = self._pools.setdefault(variant.server.label, [])
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        while len(pool) < variant.connections:
            client = httpx.AsyncClient(
                base_url=variant.server.base_url, limits=limits, timeout=REQUEST_TIMEOUT
            )
            pool.append(await self._stack.enter_async_context(client))
        return pool[: variant.connections]

    async def _batch(self, variant: LoadVariant, requests: int) -> Batch:
        """`requests` GETs of USER_PATH, one worker per connection, stopping at the time cap.

        The workers share one counter, so exactly `requests` are sent unless time runs out; the
        store counter is read before and after, outside the timed part.
        """
        clients = await self._clients(variant)
        before = await store_reads(clients[0])
        issued = ok = errors = 0
        durations: list[float] = []
        x_cache: Counter[str] = Counter()

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal issued, ok, errors
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                sent = time.perf_counter()
                try:
                    response = await client.get(USER_PATH, headers=variant.headers)
                except httpx.HTTPError:
                    errors += 1
                    continue
                if response.status_code == 200:
                    ok += 1
                    durations.append(time.perf_counter() - sent)
                else:
                    errors += 1
                x_cache[response.headers.get("x-cache", "-")] += 1

        server_cpu = variant.server.cpu_seconds()
        client_cpu = time.process_time()
        started = time.perf_counter()
        deadline = started + self.time_cap
        workers = asyncio.gather(*(worker(client) for client in clients))
        await asyncio.wait_for(workers, self.time_cap + REQUEST_TIMEOUT)
        seconds = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        server_after = variant.server.cpu_seconds()
        if ok == 0:
            _abort_no_success(variant)
        return Batch(
            ok=ok,
            errors=errors,
            seconds=seconds,
            rps=ok / seconds,
            client_cpu=client_cpu,
            server_cpu=None
            if server_cpu is None or server_after is None
            else server_after - server_cpu,
            store_reads=await store_reads(clients[0]) - before,
            latency_ms=percentiles_ms(durations),
            x_cache=dict(x_cache),
        )


LoadGenerator = WrkLoad | HttpxLoad


def interleave(
    variants: Sequence[LoadVariant], load: LoadGenerator, *, rounds: int, warmup: int
) -> None:
    """Run every variant once per round, in order and then reversed (A B C, C B A, ...).

    Reversing keeps each compared pair back to back while cancelling a steady drift in load
    between the first and the last of a round. The untimed warm-up rounds fill the caches (the
    first GET of a cached variant is its only miss) and let the servers settle, so no one-off
    cost lands on whichever variant runs first; variants that differ only in their connection
    count share one warm-up batch, at the larger count.
    """
    warm: dict[tuple[str, tuple[tuple[str, str], ...]], LoadVariant] = {}
    for variant in variants:
        known = warm.get(variant.warm_key)
        if known is None or variant.connections > known.connections:
            warm[variant.warm_key] = variant
    for n in range(warmup + rounds):
        timed = n >= warmup
        order = list(variants) if timed else list(warm.values())
        if n % 2:
            order.reverse()
        for variant in order:
            batch = load.batch(variant, timed=timed)
            if timed:
                variant.batches.append(batch)
        tag = f"round {n - warmup + 1}/{rounds}" if timed else f"warm-up {n + 1}/{warmup}"
        cells = ", ".join(f"{v.key} {v.batches[-1].rps:.0f}/s" for v in variants if timed)
        say(f"  {tag}" + (f": {cells}" if cells else ""))


def paired(a: LoadVariant, b: LoadVariant) -> list[float]:
    """Throughput a/b round by round."""
    return paired_ratios(a.rps, b.rps)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def print_load_table(variants: Sequence[LoadVariant], *, rounds: int) -> None:
    width = max(len(v.label) for v in variants)
    print(
        f"  {'latency':>7}  {'variant':{width}}  {'conns':>5}  {'median/s':>8}  {'best/s':>7}"
        f"  {'p50 ms':>6}  {'p99 ms':>6}  {'srv µs/req':>10}  {'client CPU':>10}"
        f"  {'store reads':>11}"
    )
    for v in variants:
        server_us = v.median_server_us
        reads = statistics.median(b.store_reads for b in v.batches)
        print(
            f"  {v.latency_ms:>4} ms  {v.label:{width}}  {v.connections:>5}  {v.median_rps:8.0f}"
            f"  {v.best_rps:7.0f}  {_ms(v.median_latency('p50')):>6}"
            f"  {_ms(v.median_latency('p99')):>6}"
            f"  {'-' if server_us is None else f'{server_us:.0f}':>10}"
            f"  {v.median_client_cpu_percent:9.0f}%  {reads:11.0f}"
        )
    print(
        f"  {rounds} rounds, medians over them. conns: connections, each sending its next request"
        " when the last is answered. p50/p99: response time. srv µs/req: server CPU per request."
        " client CPU: the load generator, 100% = one core. store reads: per batch, from /metrics."
    )


# --- figures 1, 2, 4: real servers -------------------------------------------------------------

# Without its graceful-restart supervisor (exercise 10.3): the process the bench starts is
# then the one that serves, so its CPU time is the server's.
REFERENCE_SERVER = [sys.executable, "-m", "solutions.app", "serve", "--single-process"]


def variant_key(name: str, latency: int, connections: int) -> str:
    return f"{name}@{latency}/c{connections}"


def build_load_variants(
    with_fc2: bool, counts: Sequence[int]
) -> tuple[list[Server], list[LoadVariant]]:
    """The servers and, in the order they run each round, the variants driven against them.

    `counts` are the connection counts, the saturating one first. Within a round each compared
    pair runs back to back: at one latency, the larger count A B C, then the smaller C B A.
    """
    python = sys.executable
    slow = max(LATENCIES_MS)
    servers: list[Server] = []
    by_latency: dict[int, dict[str, Server]] = {}
    for latency in LATENCIES_MS:
        store = {"STORE_LATENCY_MS": str(latency)}
        group = {
            "starter": Server(f"starter {latency}ms", [python, "-m", "starter_app"], store),
            "ref": Server(
                f"reference {latency}ms",
                REFERENCE_SERVER,
                {**store, "CACHE_ENABLED": "true", "CACHE_BACKEND": "memory"},
            ),
        }
        # A HIT never reaches the store, so fastapi-cache2 runs at one latency, the target's.
        if with_fc2 and latency == slow:
            group["fc2"] = Server(
                f"fastapi-cache2 {latency}ms",
                [python, str(BENCH_DIR / "fastapi_cache2_app.py")],
                store,
            )
        by_latency[latency] = group
        servers.extend(group.values())
    disabled = Server(
        "reference cache off 0ms",
        REFERENCE_SERVER,
        {"STORE_LATENCY_MS": "0", "CACHE_ENABLED": "false"},
    )
    servers.append(disabled)

    labels = {
        "fc2": ("fastapi-cache2 HIT", "cache"),
        "ref": ("reference HIT", "cache"),
        "starter": ("starter (no cache)", "store"),
    }
    variants: list[LoadVariant] = []
    for latency in sorted(LATENCIES_MS, reverse=True):
        group = by_latency[latency]
        for n, connections in enumerate(counts):
            names = [name for name in ("fc2", "ref", "starter") if name in group]
            for name in names if n % 2 == 0 else reversed(names):
                label, expect = labels[name]
                variants.append(
                    LoadVariant(
                        variant_key(name, latency, connections),
                        label,
                        group[name],
                        latency,
                        expect,
                        connections,
                    )
                )
    # Figure 2 at the saturating count only: there throughput is 1 / the server's time per
    # request, so the layer's cost shows whole; with one client the fixed client and loopback
    # time per request dilutes it.
    miss_pair = [
        ("miss", "reference MISS (no-cache)", by_latency[0]["ref"]),
        # The same request as the MISS side: the header costs the same to send and parse.
        ("off", "reference CACHE_ENABLED=false", disabled),
    ]
    for name, label, server in miss_pair:
        variants.append(
            LoadVariant(
                variant_key(name, 0, counts[0]),
                label,
                server,
                0,
                "store",
                counts[0],
                headers={"Cache-Control": "no-cache"},
            )
        )
    return servers, variants


async def asgi_get(app: Any, path: str) -> int:
    """One GET straight into an ASGI app (no server, no client, no socket); its status.

    This is what the app itself spends on a request: on this box uvicorn's pure-Python HTTP
    parsing and the httpx client cost more than a cache hit, and hide what the cache saves.
    """
    status = 0
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"user-agent", b"cache-bench")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    return status


async def _app_alone(rounds: int, latency_ms: int, hits: int, misses: int, cwd: Path) -> Any:
    """Per round, `hits` warm GETs into the reference and `misses` into the starter, timed."""
    _prepare_imports()
    apps = {}
    for name, module in (("reference", "solutions.app"), ("starter", "starter_app")):
        with environment(in_process_env(cwd, STORE_LATENCY_MS=str(latency_ms)), cwd):
            apps[name] = importlib.import_module(module).create_app()
    times: dict[str, list[float]] = {"reference": [], "starter": []}
    async with contextlib.AsyncExitStack() as stack:
        running_apps = {
            name: (await stack.enter_async_context(LifespanManager(app))).app
            for name, app in apps.items()
        }
        if await asgi_get(running_apps["reference"], USER_PATH) != 200:  # fills the cache
            sys.exit(f"bench: aborted, GET {USER_PATH} of the reference is not 200")
        for n in range(rounds):
            order = ["reference", "starter"] if n % 2 == 0 else ["starter", "reference"]
            for name in order:
                count = hits if name == "reference" else misses
                started = time.perf_counter()
                for _ in range(count):
                    await asgi_get(running_apps[name], USER_PATH)
                times[name].append((time.perf_counter() - started) / count)
    return times


def bench_app_alone(*, rounds: int, cwd: Path) -> dict[str, Any]:
    """Figure 1b: the time the app itself spends on a HIT vs on an uncached request."""
    say("app alone: GETs straight into the ASGI apps, one at a time")
    results: dict[str, Any] = {}
    for latency in LATENCIES_MS:
        misses = 300 if latency == 0 else 30  # at 20 ms, 30 take ~0.7 s
        times = asyncio.run(_app_alone(rounds, latency, 500, misses, cwd))
        hit, uncached = statistics.median(times["reference"]), statistics.median(times["starter"])
        results[f"{latency}ms"] = {
            "hit_ms": round(hit * 1000, 4),
            "uncached_ms": round(uncached * 1000, 4),
            "ratio_median": round(uncached / hit, 2),
            "paired_ratios": [
                round(u / h, 2) for h, u in zip(times["reference"], times["starter"], strict=True)
            ],
        }
    return results


def compare(a: LoadVariant, b: LoadVariant) -> dict[str, Any]:
    """a versus b: throughput ratio of medians (and of bests, and round by round), p50, CPU."""
    return {
        "ratio_median": a.median_rps / b.median_rps,
        "ratio_best": a.best_rps / b.best_rps,
        "paired_ratios": paired(a, b),
        "median_rps": [a.median_rps, b.median_rps],
        "p50_ms": [a.median_latency("p50"), b.median_latency("p50")],
        "server_cpu_us": [a.median_server_us, b.median_server_us],
    }


def _rounded(value: Any, digits: int = 3) -> Any:
    """`value` for JSON, floats rounded, lists and dicts walked."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, list):
        return [_rounded(item, digits) for item in value]
    if isinstance(value, dict):
        return {key: _rounded(item, digits) for key, item in value.items()}
    return value


def compare_text(figures: dict[str, Any], fmt: str = ".1f") -> str:
    """E.g. "34.1x (median 1432/s vs 41/s; p50 0.52 ms vs 23.8 ms; round by round 30x .. 36x)"."""
    pairs = figures["paired_ratios"]
    rps_a, rps_b = figures["median_rps"]
    p50_a, p50_b = figures["p50_ms"]
    p50 = f"; p50 {_ms(p50_a)} ms vs {_ms(p50_b)} ms" if p50_a and p50_b else ""
    return (
        f"{figures['ratio_median']:{fmt}}x (median {rps_a:.0f}/s vs {rps_b:.0f}/s{p50};"
        f" round by round {min(pairs):{fmt}}x .. {max(pairs):{fmt}}x)"
    )


def _print_wrapped(text: str) -> None:
    """One indented paragraph of the report, continuation lines indented further."""
    print(textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="    "))


def explain_saturated(
    v: dict[str, LoadVariant], connections: int, app_alone: dict[str, Any], load: LoadGenerator
) -> dict[str, Any] | None:
    """Why the saturated ratio at the target's latency stays far below the target.

    Saturated, the HIT server answers 1 / S_hit requests a second (S: server CPU per request).
    The uncached server's `connections` requests each wait Z (the store latency) but wait at
    the same time, so one request's turn takes at most about Z + connections * S_uncached (all
    the others' CPU queued before its own): it serves at least connections / that. The ratio is
    then at most (Z / connections + S_uncached) / S_hit, whatever the cache does.
    """
    slow = max(LATENCIES_MS)
    cached = v[variant_key("ref", slow, connections)]
    uncached = v[variant_key("starter", slow, connections)]
    hit_us, uncached_us = cached.median_server_us, uncached.median_server_us
    if not (hit_us and uncached_us):
        return None
    shared_wait_us = slow * 1000 / connections
    turn_ms = slow + connections * uncached_us / 1000
    turn_rps = connections / turn_ms * 1000
    bound = (shared_wait_us + uncached_us) / hit_us
    needed_us = (shared_wait_us + uncached_us) / HIT_TARGET_RATIO
    app_hit_us = app_alone[f"{slow}ms"]["hit_ms"] * 1000
    p50 = uncached.median_latency("p50")
    other = "wrk" if load.name == "wrk" else "the Python client"
    measured = f"; measured p50 {_ms(p50)} ms" if p50 else ""
    _print_wrapped(
        f"why c{connections} cannot approach {HIT_TARGET_RATIO:g}x: a saturated HIT server answers"
        f" 1 / its {hit_us:.0f} µs of CPU per HIT = {1e6 / hit_us:.0f}/s. The uncached server's"
        f" {connections} connections wait {slow} ms each, but at the same time: a request's turn"
        f" takes at most about {slow} ms + {connections} x its {uncached_us:.0f} µs of CPU ="
        f" {turn_ms:.1f} ms (the others' CPU queued before its own{measured}), so it serves"
        f" about {connections} / {turn_ms:.1f} ms = {turn_rps:.0f}/s or more (measured"
        f" {uncached.median_rps:.0f}/s), and the ratio is at most about ({slow} ms /"
        f" {connections} + {uncached_us:.0f} µs) / {hit_us:.0f} µs = {bound:.1f}x however good"
        f" the cache. {HIT_TARGET_RATIO:g}x would need a HIT costing at most {needed_us:.0f} µs"
        f" of server CPU: the app's own HIT (app alone, below) is {app_hit_us:.0f} µs, and the"
        f" rest of the {hit_us:.0f} µs is uvicorn's pure-Python HTTP handling and the event"
        f" loop, which no response cache removes. One uvicorn process runs on one core ({other}"
        " and all else share the other of the 2); more cores, with more workers, would scale"
        " both sides alike. With one client nothing shares the wait: hence the target is"
        " judged at c1."
    )
    return {
        "connections": connections,
        "hit_server_cpu_us": round(hit_us, 1),
        "uncached_server_cpu_us": round(uncached_us, 1),
        "ratio_bound": round(bound, 2),
        "hit_server_cpu_us_needed": round(needed_us, 1),
    }


def bench_load(
    *,
    rounds: int,
    warmup: int,
    counts: Sequence[int],
    load: LoadGenerator,
    with_fc2: bool,
    cwd: Path,
) -> dict[str, Any]:
    """Figures 1, 2 and 4 (HIT side): one set of servers, every variant interleaved."""
    app_alone = bench_app_alone(rounds=rounds, cwd=cwd)
    servers, variants = build_load_variants(with_fc2, counts)
    v = {variant.key: variant for variant in variants}
    conns = " and ".join(f"c{c}" for c in counts)
    say(
        f"throughput: {len(servers)} uvicorn servers, GET {USER_PATH}, {conns},"
        f" {load.describe()}, {rounds} rounds"
    )
    with running(servers, cwd), load:
        interleave(variants, load, rounds=rounds, warmup=warmup)

    print(f"\nThroughput of GET {USER_PATH}, load generator: {load.describe()}")
    if load.name != "wrk":
        print(f"  ! {WRK_ADVICE}")
    print_load_table(variants, rounds=rounds)
    anomalies = [a for variant in variants for a in variant.anomalies()]
    for anomaly in anomalies:
        print(f"  ! {anomaly}")

    results: dict[str, Any] = {
        "settings": {
            "path": USER_PATH,
            "load_generator": load.name,
            "load_generator_detail": load.describe(),
            "connections": list(counts),
            "rounds": rounds,
            "warmup_rounds": warmup,
        },
        "variants": {variant.key: variant.summary() for variant in variants},
        "anomalies": anomalies,
    }
    slow = max(LATENCIES_MS)
    saturated = max(counts)

    # Figure 1: HIT vs uncached, one client (the target) and saturated (context).
    hit: dict[str, Any] = {"load_generator": load.name, "target_connections": 1}
    print(f"\n1. Cached (reference HIT) vs uncached (starter), load generator {load.name}")
    for connections in sorted(counts):
        if connections == 1:
            print(
                "  c1, one client (closed loop: throughput = 1 / response time): what the cache"
                " buys each client; the figure held against the target"
            )
        elif load.name == "wrk":
            print(
                f"  c{connections}, server saturated: what one uvicorn process serves, bounded by"
                " its CPU per request (context, not the target)"
            )
        else:
            print(
                f"  c{connections}, meant to saturate the server, but the httpx client saturates"
                " first (context, not the target)"
            )
        figures: dict[str, Any] = {}
        for latency in LATENCIES_MS:
            cached = v[variant_key("ref", latency, connections)]
            uncached = v[variant_key("starter", latency, connections)]
            figures[f"{latency}ms"] = compare(cached, uncached)
            hit_us, uncached_us = figures[f"{latency}ms"]["server_cpu_us"]
            cpu = ""
            if connections > 1 and hit_us and uncached_us:
                cpu = f"; server CPU per request {uncached_us / hit_us:.1f}x less"
            print(f"    {latency:>2} ms: {compare_text(figures[f'{latency}ms'])}{cpu}")
        hit[f"c{connections}"] = _rounded(figures)
    if saturated > 1:
        hit["saturated_bound"] = explain_saturated(v, saturated, app_alone, load)
    if load.name != "wrk":
        client_us = v[variant_key("ref", slow, saturated)].median_client_us
        hit_us = v[variant_key("ref", slow, saturated)].median_server_us
        _print_wrapped(
            f"the httpx client spends {client_us:.0f} µs of CPU per request"
            + (f", the server {hit_us:.0f} µs per HIT" if hit_us else "")
            + ": the client sets the pace of the fast variants (at c16 it saturates before the"
            " server does), and its time per request is added to both sides at c1, which"
            f" shrinks the ratio. {WRK_ADVICE}."
        )
    for latency, alone in app_alone.items():
        pairs = alone["paired_ratios"]
        print(
            f"  the app alone (ASGI called in-process, one at a time) at {latency[:-2]} ms:"
            f" {alone['ratio_median']:.0f}x ({alone['hit_ms']:.3f} ms vs"
            f" {alone['uncached_ms']:.3f} ms;"
            f" round by round {min(pairs):.0f}x .. {max(pairs):.0f}x)"
        )
    hit["app_alone"] = app_alone
    hit_ratio = hit["c1"][f"{slow}ms"]["ratio_median"]
    hit_met = hit_ratio >= HIT_TARGET_RATIO
    print(
        f"  target HIT vs uncached at {slow} ms >= {HIT_TARGET_RATIO:g}x, one client (c1):"
        f" {verdict(hit_met)}"
    )
    saturated_text = ""
    if saturated > 1:
        saturated_text = f"; saturated (c{saturated}, CPU-bound, context): " + ", ".join(
            f"{hit[f'c{saturated}'][f'{lat}ms']['ratio_median']:.1f}x at {lat} ms"
            for lat in LATENCIES_MS
        )
    hit.update(
        target_ratio=HIT_TARGET_RATIO,
        target_met=hit_met,
        summary=(
            "1. reference HIT vs uncached starter, GET /users/{id},"
            f" one client (c1, {load.name}): "
            + ", ".join(
                f"{hit['c1'][f'{lat}ms']['ratio_median']:.1f}x at {lat} ms" for lat in LATENCIES_MS
            )
            + f" (target >= {HIT_TARGET_RATIO:g}x at {slow} ms: {verdict(hit_met)})"
            + saturated_text
            + f"; app alone {app_alone[f'{slow}ms']['ratio_median']:.0f}x at {slow} ms"
        ),
    )
    results["hit_vs_uncached"] = hit

    # Figure 2: MISS overhead, at the saturating connection count.
    miss, off = v[variant_key("miss", 0, saturated)], v[variant_key("off", 0, saturated)]
    overhead = (off.median_rps / miss.median_rps - 1) * 100
    pairs = [(1 / r - 1) * 100 for r in paired(miss, off)]
    miss_us, off_us = miss.median_server_us, off.median_server_us
    cpu_overhead = None if not (miss_us and off_us) else (miss_us / off_us - 1) * 100
    miss_met = overhead <= MISS_TARGET_PERCENT
    print(
        "\n2. Caching layer on a MISS (Cache-Control: no-cache) vs CACHE_ENABLED=false, 0 ms,"
        f" c{saturated}"
    )
    p50_miss, p50_off = miss.median_latency("p50"), off.median_latency("p50")
    p50 = f"; p50 {_ms(p50_miss)} ms vs {_ms(p50_off)} ms" if p50_miss and p50_off else ""
    print(
        f"  time per request {overhead:+.1f} % (median {miss.median_rps:.0f}/s vs"
        f" {off.median_rps:.0f}/s{p50}; round by round {min(pairs):+.1f} % .. {max(pairs):+.1f} %)"
    )
    if saturated > 1 and load.name == "wrk":
        print(
            "  (the server saturated, throughput is 1 / its time per request: the layer's cost"
            " shows whole, where one client's fixed share would dilute it)"
        )
    if cpu_overhead is not None:
        print(
            f"  server CPU per request {cpu_overhead:+.1f} % ({miss_us:.0f} µs vs {off_us:.0f} µs):"
            " what the layer costs the server, whether or not the client is the bottleneck"
        )
    cpu_met = None if cpu_overhead is None else cpu_overhead <= MISS_TARGET_PERCENT
    print(
        f"  target overhead <= {MISS_TARGET_PERCENT:g} %: {verdict(miss_met)}"
        + ("" if cpu_met is None else f" (in server CPU: {verdict(cpu_met)})")
    )
    results["miss_overhead"] = {
        "connections": saturated,
        "overhead_percent": round(overhead, 2),
        "paired_overhead_percent": [round(p, 2) for p in pairs],
        "server_cpu_overhead_percent": round_or_none(cpu_overhead, 2),
        "target_percent": MISS_TARGET_PERCENT,
        "target_met": miss_met,
        "target_met_in_server_cpu": cpu_met,
        "summary": (
            f"2. reference MISS vs CACHE_ENABLED=false at 0 ms, c{saturated}: {overhead:+.1f} %"
            f" time per request (target <= {MISS_TARGET_PERCENT:g} %: {verdict(miss_met)})"
            + (
                ""
                if cpu_overhead is None or cpu_met is None
                else f"; {cpu_overhead:+.1f} % server CPU ({verdict(cpu_met)})"
            )
        ),
    }

    # Figure 4, HIT side: ours vs fastapi-cache2's, at the target's latency.
    if with_fc2:
        print(
            f"\n4. Reference HIT vs fastapi-cache2 HIT at {slow} ms (a HIT never reaches the"
            " store, so one latency is enough)"
        )
        versus: dict[str, Any] = {}
        for connections in sorted(counts):
            ours = v[variant_key("ref", slow, connections)]
            theirs = v[variant_key("fc2", slow, connections)]
            figures = compare(ours, theirs)
            ours_us, theirs_us = figures["server_cpu_us"]
            cpu = ""
            if ours_us and theirs_us:
                cpu = f"; server CPU per HIT {ours_us:.0f} µs vs {theirs_us:.0f} µs"
            kind = "one client" if connections == 1 else "saturated"
            print(f"  c{connections}, {kind}: {compare_text(figures, '.2f')}{cpu}")
            versus[f"c{connections}"] = _rounded(figures)
        results["hit_vs_fastapi_cache2"] = versus
    return results


# --- figure 3: stampede, in-process ----------------------------------------------------------


def _prepare_imports() -> None:
    """The apps import from this checkout, and `fastapi_cache2_app` from bench/."""
    for folder in (ROOT, BENCH_DIR):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def stampede_switch() -> str | None:
    """The env variable that turns the reference's stampede protection off, if it has one."""
    _prepare_imports()
    from solutions.app.settings import Settings

    for name, info in Settings.model_fields.items():
        if SWITCH_NAME.search(name) and info.annotation is bool:
            return name.upper()
    return None


async def stampede_once(
    factory: Callable[[], Any], settings: dict[str, str], *, requests: int, cwd: Path
) -> dict[str, Any]:
    """`requests` concurrent GETs of one user nobody asked for yet, against a fresh app."""
    env = in_process_env(cwd, STORE_LATENCY_MS=str(STAMPEDE_LATENCY_MS), **settings)
    with environment(env, cwd):
        app = factory()
    async with LifespanManager(app, startup_timeout=STARTUP_TIMEOUT) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", timeout=REQUEST_TIMEOUT
        ) as client:
            before = await store_reads(client)
            started = time.perf_counter()
            responses = await asyncio.wait_for(
                asyncio.gather(*(client.get(USER_PATH) for _ in range(requests))),
                REQUEST_TIMEOUT * 2,
            )
            seconds = time.perf_counter() - started
            reads = await store_reads(client) - before
    statuses = Counter(r.status_code for r in responses)
    return {
        "store_reads": reads,
        "statuses": {str(code): count for code, count in statuses.items()},
        "distinct_bodies": len({r.content for r in responses}),
        "x_cache": dict(Counter(r.headers.get("x-cache", "-") for r in responses)),
        "seconds": round(seconds, 3),
    }


def bench_stampede(*, with_fc2: bool, cwd: Path) -> dict[str, Any]:
    """Figure 3 (and 4's stampede side): store reads for a burst of cold requests."""
    _prepare_imports()

    def factory(module: str) -> Callable[[], Any]:
        return lambda: importlib.import_module(module).create_app()

    switch = stampede_switch()
    cases: list[tuple[str, str, Callable[[], Any], dict[str, str]]] = [
        ("reference", "reference", factory("solutions.app"), {"CACHE_BACKEND": "memory"}),
    ]
    if switch:
        cases.append(
            (
                "reference_unprotected",
                f"reference, {switch}=false",
                factory("solutions.app"),
                {"CACHE_BACKEND": "memory", switch: "false"},
            )
        )
    cases.append(("starter", "starter (no cache)", factory("starter_app"), {}))
    if with_fc2:
        cases.append(("fastapi_cache2", "fastapi-cache2", factory("fastapi_cache2_app"), {}))

    say(f"stampede: {STAMPEDE_REQUESTS} concurrent cold GETs, in-process, {len(cases)} apps")
    results: dict[str, Any] = {}
    for key, label, make, settings in cases:
        outcome = asyncio.run(stampede_once(make, settings, requests=STAMPEDE_REQUESTS, cwd=cwd))
        results[key] = {"label": label, "settings": settings, **outcome}

    width = max(len(r["label"]) for r in results.values())
    print(
        f"\n3. Store reads for {STAMPEDE_REQUESTS} concurrent cold GET {USER_PATH},"
        f" STORE_LATENCY_MS={STAMPEDE_LATENCY_MS}, in-process"
    )
    print(f"  {'app':{width}}  {'store reads':>11}  {'statuses':>9}  {'X-Cache':<20}  wall")
    for r in results.values():
        statuses = " ".join(f"{code}x{count}" for code, count in r["statuses"].items())
        x_cache = " ".join(f"{k}x{n}" for k, n in sorted(r["x_cache"].items()))
        print(
            f"  {r['label']:{width}}  {r['store_reads']:11d}  {statuses:>9}  {x_cache:<20}"
            f"  {r['seconds'] * 1000:.0f} ms"
        )
        if r["distinct_bodies"] != 1:
            print(f"  ! {r['label']}: {r['distinct_bodies']} different bodies for one user")
    if not switch:
        print("  (the reference has no setting that switches stampede protection off)")
    met = results["reference"]["store_reads"] == STAMPEDE_EXPECTED
    print(f"  target reference == {STAMPEDE_EXPECTED} store read: {verdict(met)}")
    others = ", ".join(
        f"{r['label']} {r['store_reads']}" for k, r in results.items() if k != "reference"
    )
    return {
        "requests": STAMPEDE_REQUESTS,
        "latency_ms": STAMPEDE_LATENCY_MS,
        "switch": switch,
        "apps": results,
        "target_reads": STAMPEDE_EXPECTED,
        "target_met": met,
        "summary": (
            f"3. store reads for {STAMPEDE_REQUESTS} concurrent cold GETs:"
            f" reference {results['reference']['store_reads']}, {others}"
            f" (target reference == {STAMPEDE_EXPECTED}: {verdict(met)})"
        ),
    }


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure the reference response cache: HIT speed-up, MISS overhead,"
        " stampede protection, and fastapi-cache2 for comparison."
    )
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    parser.add_argument("--rounds", type=int, help="timed rounds (default 5, --quick 2)")
    parser.add_argument(
        "--duration", type=int, help="wrk: whole seconds per batch (default 3, --quick 1)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="connections that saturate the server, measured beside one connection (16)",
    )
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "httpx"),
        default="auto",
        help="load generator: wrk if it is on the PATH, else httpx (auto)",
    )
    parser.add_argument(
        "--requests", type=int, help="httpx: requests per batch (default 1000, --quick 400)"
    )
    parser.add_argument(
        "--time-cap", type=float, default=8.0, help="httpx: seconds one batch may take (8)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds before the timed ones (1)"
    )
    parser.add_argument(
        "--only", choices=("load", "stampede"), help="run one part only (default: both)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.duration = args.duration or (1 if args.quick else 3)
    args.requests = args.requests or (400 if args.quick else 1000)
    if min(args.rounds, args.duration, args.requests, args.concurrency) < 1 or args.warmup < 0:
        parser.error(
            "--rounds, --duration, --requests and --concurrency must be >= 1, --warmup >= 0"
        )
    if args.time_cap <= 0:
        parser.error("--time-cap must be positive")
    args.wrk = None if args.client == "httpx" else shutil.which("wrk")
    if args.client == "wrk" and args.wrk is None:
        parser.error("--client wrk: wrk is not on the PATH (apt-get install wrk)")
    return args


def load_generator(args: argparse.Namespace) -> LoadGenerator:
    """wrk when it is on the PATH (unless --client httpx), the httpx client otherwise."""
    if args.wrk:
        return WrkLoad(args.wrk, duration=args.duration)
    if args.client == "auto":
        say(WRK_ADVICE)
    return HttpxLoad(requests=args.requests, time_cap=args.time_cap)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    with_fc2 = importlib.util.find_spec("fastapi_cache") is not None
    if not with_fc2:
        say("fastapi-cache2 is not installed (pip install -e '.[bench]'): its figures are skipped")
    load_before = load_average()
    started = time.monotonic()
    results: dict[str, Any] = {}
    # A scratch working folder: the servers' logs go there, and no `.env` is read from the repo.
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as tmp:
        cwd = Path(tmp)
        if args.only in (None, "load"):
            results["load"] = bench_load(
                rounds=args.rounds,
                warmup=args.warmup,
                counts=sorted({args.concurrency, 1}, reverse=True),
                load=load_generator(args),
                with_fc2=with_fc2,
                cwd=cwd,
            )
        if args.only in (None, "stampede"):
            results["stampede"] = bench_stampede(with_fc2=with_fc2, cwd=cwd)

    print()
    load = results.get("load", {})
    if load:
        settings = load["settings"]
        print(f"load generator: {settings['load_generator_detail']}")
        if settings["load_generator"] != "wrk":
            print(f"  ({WRK_ADVICE})")
    for name in ("hit_vs_uncached", "miss_overhead"):
        if name in load:
            print(load[name]["summary"])
    if "stampede" in results:
        print(results["stampede"]["summary"])
    if with_fc2:
        parts = []
        if "hit_vs_fastapi_cache2" in load:
            versus = load["hit_vs_fastapi_cache2"]
            kinds = {"c1": "one client"}
            parts.append(
                "HIT throughput "
                + ", ".join(
                    f"{figures['ratio_median']:.2f}x {kinds.get(tag, 'saturated')} ({tag})"
                    for tag, figures in versus.items()
                )
            )
            saturated = max(versus, key=lambda tag: int(tag[1:]))
            ours, theirs = versus[saturated]["server_cpu_us"]
            if ours and theirs:
                parts.append(f"server CPU per HIT {theirs / ours:.1f}x less ({saturated})")
        if "stampede" in results:
            apps = results["stampede"]["apps"]
            parts.append(
                f"stampede store reads {apps['reference']['store_reads']}"
                f" vs {apps['fastapi_cache2']['store_reads']}"
            )
        where = f" at {max(LATENCIES_MS)} ms" if "hit_vs_fastapi_cache2" in load else ""
        summary = f"4. reference vs fastapi-cache2{where}: " + "; ".join(parts)
        print(summary)
        results["fastapi_cache2_summary"] = summary
    say(f"done in {time.monotonic() - started:.0f} s")
    if args.json:
        write_json(
            args.json,
            load_before=load_before,
            load_after=load_average(),
            benchmarks=results,
            duration_s=round(time.monotonic() - started, 1),
            fastapi_cache2=with_fc2,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
