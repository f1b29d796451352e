"""What does the reference response cache buy, and what does it cost?

Four figures, each measured side by side in one run:

1. Throughput of `GET /users/1` served from the reference cache (`solutions.app`, warm) versus
   the uncached starter (`starter_app`), at STORE_LATENCY_MS=0 and =20. Target: HIT vs
   uncached at 20 ms >= 20x.
2. The caching layer's cost on a MISS: the reference with every request a miss versus the
   reference with CACHE_ENABLED=false (same code minus the middleware), at 0 ms. Target:
   overhead <= 10 %.
3. Store reads caused by 100 concurrent cold GETs of one user (STORE_LATENCY_MS=50), counted
   in `store_operations_total`: the reference (single-flight stampede protection: 1), the
   reference with protection switched off if it has a switch, the starter and fastapi-cache2.
4. The same HIT load (1) and stampede (3) against fastapi-cache2 (`fastapi_cache2_app.py`:
   the starter with its GET endpoints under `@cache`), the library a learner would reach for.

Figures 1, 2 and 4 run real uvicorn servers (`python -m starter_app`, `python -m
solutions.app`, `python bench/fastapi_cache2_app.py`) on 127.0.0.1, one process each, all
started up front; an httpx.AsyncClient drives each with a fixed number of requests at a fixed
concurrency, bounded in time too. Figure 3 runs in-process (httpx.ASGITransport) because
counting a stampede needs no sockets, only the app.

The machine is shared and noisy with 2 cores (client and server share them), so the variants
run interleaved, in one order and then the reverse (A B C, C B A, ...), and are compared as
ratios of medians: a burst of load from elsewhere then slows both sides of a comparison alike.
Absolute requests/s are printed for context only. Every batch also reads `/metrics` before
and after, so a "HIT" batch that reached the store, or a "MISS" batch that did not, is caught
instead of being reported as a speed.

    .venv/bin/python bench/cache_bench.py [--quick] [--rounds N] [--requests M] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

ROOT = Path(__file__).resolve().parent.parent
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
STOP_TIMEOUT = 5.0
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


def _say(message: str) -> None:
    """Progress goes to stderr, so stdout holds the results only."""
    print(message, file=sys.stderr, flush=True)


def _load() -> list[float] | None:
    """The 1/5/15-minute load averages: a noisy run shows up here, worth keeping in notes."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def app_env(**settings: str) -> dict[str, str]:
    """The environment of an app: ours minus the contract variables, plus `settings`.

    Every app gets the same base: demo users seeded (so `/users/1` exists), no cache warming
    (a warmed entry would turn the first "cold" request into a hit), logging at WARNING (so
    uvicorn writes no access log line per request, which would cost more than a cache hit)
    and an admin token that is not the public default. The repo root goes on PYTHONPATH so the
    apps import from this checkout although they run in a temporary folder.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in CONTRACT_NAMES and not name.startswith(CONTRACT_PREFIXES)
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(
        LOG_LEVEL="WARNING",
        ADMIN_TOKEN=ADMIN_TOKEN,
        SEED_DEMO_USERS="true",
        CACHE_WARM_PATHS="",
    )
    env.update(settings)
    return env


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports, all held open while choosing so none repeats."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def store_reads_in(metrics_text: str) -> int:
    """Sum of `store_operations_total` over all operations, from a /metrics body."""
    return round(sum(float(value) for value in METRIC_LINE.findall(metrics_text)))


async def store_reads(client: httpx.AsyncClient) -> int:
    response = await client.get("/metrics")
    response.raise_for_status()
    return store_reads_in(response.text)


# --- servers ---------------------------------------------------------------------------------


@dataclass
class Server:
    """One uvicorn process on 127.0.0.1: started once, driven for every round, then stopped."""

    label: str
    command: list[str]
    settings: dict[str, str]
    port: int = 0
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, port: int, cwd: Path) -> None:
        """Start the process; output goes to a log file (no pipe to drain), shown on failure."""
        self.port = port
        self.log = cwd / f"{re.sub(r'[^a-z0-9]+', '-', self.label.lower())}.log"
        env = app_env(HOST="127.0.0.1", PORT=str(port), **self.settings)
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                self.command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
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

    def log_tail(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-2000:]

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server so far, from /proc (None where there is none).

        CPU per request is the server's own cost, which the client cannot cap: on 2 shared
        cores a Python client may saturate before the server does.
        """
        if self.process is None:
            return None
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)", comm may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def interrupt(self) -> None:
        """SIGINT by pid: uvicorn's graceful stop."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)

    def reap(self, deadline: float) -> None:
        """Wait for the process until `deadline` (time.monotonic()), then SIGKILL it by pid."""
        if self.process is None:
            return
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


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
        # All interrupted first, then reaped: they shut down in parallel.
        for server in servers:
            server.interrupt()
        deadline = time.monotonic() + STOP_TIMEOUT
        for server in servers:
            server.reap(deadline)


# --- load ------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One timed burst of GETs against one variant."""

    ok: int
    errors: int
    seconds: float
    client_cpu: float
    server_cpu: float | None
    store_reads: int
    x_cache: dict[str, int]

    @property
    def rps(self) -> float:
        return self.ok / self.seconds

    @property
    def server_us_per_request(self) -> float | None:
        return None if self.server_cpu is None else self.server_cpu / self.ok * 1e6

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": self.errors,
            "seconds": round(self.seconds, 4),
            "rps": round(self.rps, 1),
            "client_cpu_s": round(self.client_cpu, 3),
            "server_cpu_s": None if self.server_cpu is None else round(self.server_cpu, 3),
            "store_reads": self.store_reads,
            "x_cache": self.x_cache,
        }


@dataclass
class LoadVariant:
    """One side of a comparison: a server, a latency and the headers each request carries."""

    key: str
    label: str
    server: Server
    latency_ms: int
    # "store": every request must reach the store; "cache": none may (a warm HIT).
    expect: str
    headers: dict[str, str] = field(default_factory=dict)
    # One request at a time (a single client's view) instead of the run's concurrency, and a
    # tenth of the requests: at 20 ms an uncached request takes that long however idle the box.
    sequential: bool = False
    batches: list[Batch] = field(default_factory=list)

    def concurrency(self, default: int) -> int:
        return 1 if self.sequential else default

    def requests(self, default: int) -> int:
        return max(20, default // 10) if self.sequential else default

    @property
    def rps(self) -> list[float]:
        return [b.rps for b in self.batches]

    @property
    def median_rps(self) -> float:
        return statistics.median(self.rps)

    @property
    def best_rps(self) -> float:
        return max(self.rps)

    @property
    def median_server_us(self) -> float | None:
        values = [b.server_us_per_request for b in self.batches]
        clean = [v for v in values if v is not None]
        return statistics.median(clean) if clean else None

    @property
    def median_client_cpu_percent(self) -> float:
        return statistics.median(100 * b.client_cpu / b.seconds for b in self.batches)

    def anomalies(self) -> list[str]:
        """What makes a batch of this variant not measure what its label says."""
        found = []
        for n, batch in enumerate(self.batches, 1):
            if batch.errors:
                found.append(f"{self.label}, round {n}: {batch.errors} failed requests")
            if self.expect == "cache" and batch.store_reads:
                found.append(f"{self.label}, round {n}: {batch.store_reads} store reads on HITs")
            if self.expect == "store" and batch.store_reads < batch.ok:
                found.append(
                    f"{self.label}, round {n}: {batch.store_reads} store reads for"
                    f" {batch.ok} requests that should all reach the store"
                )
        return found

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "server": self.server.command[1:],
            "settings": self.server.settings,
            "latency_ms": self.latency_ms,
            "headers": self.headers,
            "sequential": self.sequential,
            "rps": [round(r, 1) for r in self.rps],
            "median_rps": round(self.median_rps, 1),
            "best_rps": round(self.best_rps, 1),
            "median_server_cpu_us_per_request": _round(self.median_server_us, 1),
            "median_client_cpu_percent": round(self.median_client_cpu_percent, 1),
            "batches": [b.summary() for b in self.batches],
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


async def run_batch(
    clients: Sequence[httpx.AsyncClient],
    variant: LoadVariant,
    *,
    requests: int,
    time_cap: float,
) -> Batch:
    """`requests` GETs of USER_PATH, one worker per client, stopping early at `time_cap`.

    The workers share one counter, so exactly `requests` are sent unless time runs out; the
    store counter is read before and after, outside the timed part.
    """
    before = await store_reads(clients[0])
    issued = ok = errors = 0
    x_cache: Counter[str] = Counter()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued, ok, errors
        while issued < requests and time.perf_counter() < deadline:
            issued += 1
            try:
                response = await client.get(USER_PATH, headers=variant.headers)
            except httpx.HTTPError:
                errors += 1
                continue
            if response.status_code == 200:
                ok += 1
            else:
                errors += 1
            x_cache[response.headers.get("x-cache", "-")] += 1

    server_cpu = variant.server.cpu_seconds()
    client_cpu = time.process_time()
    started = time.perf_counter()
    deadline = started + time_cap
    workers = asyncio.gather(*(worker(client) for client in clients))
    await asyncio.wait_for(workers, time_cap + REQUEST_TIMEOUT)
    seconds = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    server_after = variant.server.cpu_seconds()
    if ok == 0:
        sys.exit(
            f"bench: aborted, no request to {variant.label} succeeded.\n"
            f"--- its log (tail) ---\n{variant.server.log_tail()}"
        )
    return Batch(
        ok=ok,
        errors=errors,
        seconds=seconds,
        client_cpu=client_cpu,
        server_cpu=None
        if server_cpu is None or server_after is None
        else server_after - server_cpu,
        store_reads=await store_reads(clients[0]) - before,
        x_cache=dict(x_cache),
    )


async def interleave(
    variants: Sequence[LoadVariant],
    *,
    rounds: int,
    warmup: int,
    requests: int,
    concurrency: int,
    time_cap: float,
) -> None:
    """Run every variant once per round, in order and then reversed (A B C, C B A, ...).

    Reversing keeps each compared pair back to back while cancelling a steady drift in load
    between the first and the last of a round. The untimed warm-up rounds fill the caches
    (the first GET of a cached variant is its only miss), open the keep-alive connections and
    let the servers settle, so no one-off cost lands on whichever variant runs first.

    Each worker has an AsyncClient of its own with a single keep-alive connection. One client
    with a pool of `concurrency` connections would be the obvious choice, but httpcore scans
    the whole pool on every request (`_assign_requests_to_connections`), which here about
    doubled the client's CPU per request: the client, not the server, then set the pace.
    """
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        pools: dict[str, list[httpx.AsyncClient]] = {}
        for variant in variants:
            if variant.server.label not in pools:
                pools[variant.server.label] = [
                    await stack.enter_async_context(
                        httpx.AsyncClient(
                            base_url=variant.server.base_url,
                            limits=limits,
                            timeout=REQUEST_TIMEOUT,
                        )
                    )
                    for _ in range(concurrency)
                ]
        for n in range(warmup + rounds):
            timed = n >= warmup
            order = list(variants) if n % 2 == 0 else list(reversed(variants))
            for variant in order:
                count = variant.requests(requests)
                batch = await run_batch(
                    pools[variant.server.label][: variant.concurrency(concurrency)],
                    variant,
                    requests=count if timed else max(20, count // 4),
                    time_cap=time_cap,
                )
                if timed:
                    variant.batches.append(batch)
            tag = f"round {n - warmup + 1}/{rounds}" if timed else f"warm-up {n + 1}/{warmup}"
            cells = ", ".join(f"{v.key} {v.batches[-1].rps:.0f}/s" for v in variants if timed)
            _say(f"  {tag}" + (f": {cells}" if cells else ""))


def paired(a: LoadVariant, b: LoadVariant) -> list[float]:
    """Throughput a/b round by round: each pair ran back to back, so it saw about the same load."""
    return [x / y for x, y in zip(a.rps, b.rps, strict=True)]


def print_load_table(variants: Sequence[LoadVariant], *, rounds: int, concurrency: int) -> None:
    width = max(len(v.label) for v in variants)
    print(
        f"  {'latency':>7}  {'variant':{width}}  {'conc':>4}  {'median/s':>8}  {'best/s':>7}"
        f"  {'ms/req':>6}  {'srv µs/req':>10}  {'client CPU':>10}  {'store reads':>11}"
    )
    for v in variants:
        conc = v.concurrency(concurrency)
        server_us = v.median_server_us
        reads = statistics.median(b.store_reads for b in v.batches)
        print(
            f"  {v.latency_ms:>4} ms  {v.label:{width}}  {conc:>4}  {v.median_rps:8.0f}"
            f"  {v.best_rps:7.0f}  {conc * 1000 / v.median_rps:6.1f}"
            f"  {'-' if server_us is None else f'{server_us:.0f}':>10}"
            f"  {v.median_client_cpu_percent:9.0f}%  {reads:11.0f}"
        )
    print(
        f"  {rounds} rounds, medians over them. ms/req: mean time per request (concurrency /"
        " throughput). srv µs/req: server CPU per request. client CPU: the benchmark process,"
        " 100% = one core. store reads: per batch, from /metrics."
    )


# --- figures 1, 2, 4: real servers -------------------------------------------------------------


def build_load_variants(
    with_fc2: bool,
) -> tuple[list[Server], list[LoadVariant]]:
    """The servers and, in the order they run each round, the variants driven against them."""
    python = sys.executable
    servers: list[Server] = []
    by_latency: dict[int, dict[str, Server]] = {}
    for latency in LATENCIES_MS:
        store = {"STORE_LATENCY_MS": str(latency)}
        group = {
            "starter": Server(f"starter {latency}ms", [python, "-m", "starter_app"], store),
            "reference": Server(
                f"reference {latency}ms",
                [python, "-m", "solutions.app"],
                {**store, "CACHE_ENABLED": "true", "CACHE_BACKEND": "memory"},
            ),
        }
        if with_fc2:
            group["fc2"] = Server(
                f"fastapi-cache2 {latency}ms",
                [python, str(BENCH_DIR / "fastapi_cache2_app.py")],
                store,
            )
        by_latency[latency] = group
        servers.extend(group.values())
    disabled = Server(
        "reference cache off 0ms",
        [python, "-m", "solutions.app"],
        {"STORE_LATENCY_MS": "0", "CACHE_ENABLED": "false"},
    )
    servers.append(disabled)

    variants: list[LoadVariant] = []
    for latency in sorted(LATENCIES_MS, reverse=True):
        group = by_latency[latency]
        if with_fc2:
            variants.append(
                LoadVariant(f"fc2@{latency}", "fastapi-cache2 HIT", group["fc2"], latency, "cache")
            )
        variants.append(
            LoadVariant(f"ref@{latency}", "reference HIT", group["reference"], latency, "cache")
        )
        variants.append(
            LoadVariant(
                f"starter@{latency}", "starter (no cache)", group["starter"], latency, "store"
            )
        )
        if latency == max(LATENCIES_MS):
            # The same two, one request at a time: what a single client waits.
            variants.append(
                LoadVariant(
                    f"starter@{latency}/seq",
                    "starter, one at a time",
                    group["starter"],
                    latency,
                    "store",
                    sequential=True,
                )
            )
            variants.append(
                LoadVariant(
                    f"ref@{latency}/seq",
                    "reference HIT, one at a time",
                    group["reference"],
                    latency,
                    "cache",
                    sequential=True,
                )
            )
    variants.append(
        LoadVariant(
            "miss@0",
            "reference MISS (no-cache)",
            by_latency[0]["reference"],
            0,
            "store",
            headers={"Cache-Control": "no-cache"},
        )
    )
    variants.append(
        LoadVariant(
            "off@0",
            "reference CACHE_ENABLED=false",
            disabled,
            0,
            "store",
            # The same request as the MISS side: the header costs the same to send and parse.
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
        with environment(app_env(STORE_LATENCY_MS=str(latency_ms)), cwd):
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
    _say("app alone: GETs straight into the ASGI apps, one at a time")
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


def bench_load(
    *,
    rounds: int,
    warmup: int,
    requests: int,
    concurrency: int,
    time_cap: float,
    with_fc2: bool,
    cwd: Path,
) -> dict[str, Any]:
    """Figures 1, 2 and 4 (HIT side): one set of servers, every variant interleaved."""
    app_alone = bench_app_alone(rounds=rounds, cwd=cwd)
    servers, variants = build_load_variants(with_fc2)
    v = {variant.key: variant for variant in variants}
    _say(
        f"throughput: {len(servers)} uvicorn servers, GET {USER_PATH}, {concurrency} concurrent,"
        f" {requests} requests per batch, {rounds} rounds"
    )
    with running(servers, cwd):
        asyncio.run(
            interleave(
                variants,
                rounds=rounds,
                warmup=warmup,
                requests=requests,
                concurrency=concurrency,
                time_cap=time_cap,
            )
        )

    print(f"\nThroughput of GET {USER_PATH}, {concurrency} concurrent, {requests} per batch")
    print_load_table(variants, rounds=rounds, concurrency=concurrency)
    anomalies = [a for variant in variants for a in variant.anomalies()]
    for anomaly in anomalies:
        print(f"  ! {anomaly}")

    results: dict[str, Any] = {
        "settings": {
            "path": USER_PATH,
            "concurrency": concurrency,
            "requests_per_batch": requests,
            "rounds": rounds,
            "warmup_rounds": warmup,
            "time_cap_s": time_cap,
        },
        "variants": {variant.key: variant.summary() for variant in variants},
        "anomalies": anomalies,
    }

    # Figure 1: HIT vs uncached.
    hit: dict[str, Any] = {}
    print("\n1. Cached (reference HIT) vs uncached (starter)")
    for latency in LATENCIES_MS:
        cached, uncached = v[f"ref@{latency}"], v[f"starter@{latency}"]
        ratio = cached.median_rps / uncached.median_rps
        pairs = paired(cached, uncached)
        cached_us, uncached_us = cached.median_server_us, uncached.median_server_us
        cpu_ratio = uncached_us / cached_us if cached_us and uncached_us else None
        print(
            f"  {latency:>2} ms: {ratio:.1f}x (median {cached.median_rps:.0f}/s vs"
            f" {uncached.median_rps:.0f}/s; best {cached.best_rps / uncached.best_rps:.1f}x;"
            f" round by round {min(pairs):.1f}x .. {max(pairs):.1f}x)"
            + ("" if cpu_ratio is None else f"; server CPU per request {cpu_ratio:.1f}x less")
        )
        hit[f"{latency}ms"] = {
            "ratio_median": round(ratio, 3),
            "ratio_best": round(cached.best_rps / uncached.best_rps, 3),
            "paired_ratios": [round(r, 3) for r in pairs],
            "server_cpu_ratio": _round(cpu_ratio, 3),
        }
    slow = max(LATENCIES_MS)
    uncached_slow = v[f"starter@{slow}"]
    ceiling = concurrency / (slow / 1000)
    cpu_us = uncached_slow.median_server_us
    cpu_ceiling = f", {1e6 / cpu_us:.0f}/s by its CPU on one core" if cpu_us else ""
    print(
        f"  at {slow} ms the uncached server's ceiling is {concurrency} / {slow} ms ="
        f" {ceiling:.0f}/s by latency{cpu_ceiling}; {HIT_TARGET_RATIO:g}x its"
        f" {uncached_slow.median_rps:.0f}/s would be"
        f" {HIT_TARGET_RATIO * uncached_slow.median_rps:.0f}/s"
    )
    seq_cached, seq_uncached = v[f"ref@{slow}/seq"], v[f"starter@{slow}/seq"]
    seq_ratio = seq_cached.median_rps / seq_uncached.median_rps
    print(
        f"  one request at a time at {slow} ms: {seq_ratio:.1f}x"
        f" ({1000 / seq_cached.median_rps:.1f} ms vs {1000 / seq_uncached.median_rps:.1f} ms"
        " per request, client included)"
    )
    hit[f"{slow}ms_one_at_a_time"] = {
        "ratio_median": round(seq_ratio, 3),
        "paired_ratios": [round(r, 3) for r in paired(seq_cached, seq_uncached)],
        "ms_per_request": [
            round(1000 / seq_cached.median_rps, 2),
            round(1000 / seq_uncached.median_rps, 2),
        ],
    }
    for latency, figures in app_alone.items():
        pairs = figures["paired_ratios"]
        print(
            f"  the app alone (ASGI called in-process, one at a time) at {latency[:-2]} ms:"
            f" {figures['ratio_median']:.0f}x ({figures['hit_ms']:.3f} ms vs"
            f" {figures['uncached_ms']:.3f} ms;"
            f" round by round {min(pairs):.0f}x .. {max(pairs):.0f}x)"
        )
    hit["app_alone"] = app_alone
    hit_ratio = hit[f"{slow}ms"]["ratio_median"]
    hit_met = hit_ratio >= HIT_TARGET_RATIO
    print(f"  target HIT vs uncached at {slow} ms >= {HIT_TARGET_RATIO:g}x: {_verdict(hit_met)}")
    hit.update(
        target_ratio=HIT_TARGET_RATIO,
        target_met=hit_met,
        uncached_ceiling_rps=round(ceiling, 1),
        summary=(
            "1. reference HIT vs uncached starter, GET /users/{id}: "
            + ", ".join(
                f"{hit[f'{lat}ms']['ratio_median']:.1f}x at {lat} ms" for lat in LATENCIES_MS
            )
            + f" (target >= {HIT_TARGET_RATIO:g}x at {slow} ms: {_verdict(hit_met)});"
            f" at {slow} ms one at a time {seq_ratio:.1f}x,"
            f" app alone {app_alone[f'{slow}ms']['ratio_median']:.0f}x"
        ),
    )
    results["hit_vs_uncached"] = hit

    # Figure 2: MISS overhead.
    miss, off = v["miss@0"], v["off@0"]
    overhead = (off.median_rps / miss.median_rps - 1) * 100
    pairs = [(1 / r - 1) * 100 for r in paired(miss, off)]
    miss_us, off_us = miss.median_server_us, off.median_server_us
    cpu_overhead = None if not (miss_us and off_us) else (miss_us / off_us - 1) * 100
    miss_met = overhead <= MISS_TARGET_PERCENT
    print("\n2. Caching layer on a MISS (Cache-Control: no-cache) vs CACHE_ENABLED=false, 0 ms")
    print(
        f"  time per request {overhead:+.1f} % (median {miss.median_rps:.0f}/s vs"
        f" {off.median_rps:.0f}/s; round by round {min(pairs):+.1f} % .. {max(pairs):+.1f} %)"
    )
    if cpu_overhead is not None:
        print(
            f"  server CPU per request {cpu_overhead:+.1f} % ({miss_us:.0f} µs vs {off_us:.0f} µs):"
            " what the layer costs the server, whether or not the client is the bottleneck"
        )
    cpu_met = None if cpu_overhead is None else cpu_overhead <= MISS_TARGET_PERCENT
    print(
        f"  target overhead <= {MISS_TARGET_PERCENT:g} %: {_verdict(miss_met)}"
        + ("" if cpu_met is None else f" (in server CPU: {_verdict(cpu_met)})")
    )
    results["miss_overhead"] = {
        "overhead_percent": round(overhead, 2),
        "paired_overhead_percent": [round(p, 2) for p in pairs],
        "server_cpu_overhead_percent": _round(cpu_overhead, 2),
        "target_percent": MISS_TARGET_PERCENT,
        "target_met": miss_met,
        "target_met_in_server_cpu": cpu_met,
        "summary": (
            f"2. reference MISS vs CACHE_ENABLED=false at 0 ms: {overhead:+.1f} % time per request"
            + f" (target <= {MISS_TARGET_PERCENT:g} %: {_verdict(miss_met)})"
            + (
                ""
                if cpu_overhead is None or cpu_met is None
                else f"; {cpu_overhead:+.1f} % server CPU ({_verdict(cpu_met)})"
            )
        ),
    }

    # Figure 4, HIT side: ours vs fastapi-cache2's.
    if with_fc2:
        print("\n4. Reference HIT vs fastapi-cache2 HIT")
        versus: dict[str, Any] = {}
        for latency in LATENCIES_MS:
            ours, theirs = v[f"ref@{latency}"], v[f"fc2@{latency}"]
            ratio = ours.median_rps / theirs.median_rps
            pairs = paired(ours, theirs)
            ours_us, theirs_us = ours.median_server_us, theirs.median_server_us
            cpu = ""
            if ours_us and theirs_us:
                cpu = f"; server CPU per request {ours_us:.0f} µs vs {theirs_us:.0f} µs"
            print(
                f"  {latency:>2} ms: {ratio:.2f}x (median {ours.median_rps:.0f}/s vs"
                f" {theirs.median_rps:.0f}/s; round by round {min(pairs):.2f}x .. {max(pairs):.2f}x"
                f"{cpu})"
            )
            versus[f"{latency}ms"] = {
                "ratio_median": round(ratio, 3),
                "paired_ratios": [round(r, 3) for r in pairs],
                "server_cpu_us": [_round(ours_us, 1), _round(theirs_us, 1)],
            }
        results["hit_vs_fastapi_cache2"] = versus
    return results


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


# --- figure 3: stampede, in-process ----------------------------------------------------------


@contextlib.contextmanager
def environment(env: dict[str, str], cwd: Path) -> Iterator[None]:
    """Run `create_app()` with exactly `env` as os.environ, in `cwd` (no stray `.env`)."""
    saved, saved_cwd = dict(os.environ), Path.cwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved)


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
    env = app_env(STORE_LATENCY_MS=str(STAMPEDE_LATENCY_MS), **settings)
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

    _say(f"stampede: {STAMPEDE_REQUESTS} concurrent cold GETs, in-process, {len(cases)} apps")
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
    print(f"  target reference == {STAMPEDE_EXPECTED} store read: {_verdict(met)}")
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
            f" (target reference == {STAMPEDE_EXPECTED}: {_verdict(met)})"
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
        "--requests", type=int, help="requests per batch (default 1000, --quick 400)"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent requests (16)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds before the timed ones (1)"
    )
    parser.add_argument(
        "--time-cap", type=float, default=8.0, help="seconds one batch may take at most (8)"
    )
    parser.add_argument(
        "--only", choices=("load", "stampede"), help="run one part only (default: both)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.requests = args.requests or (400 if args.quick else 1000)
    if min(args.rounds, args.requests, args.concurrency) < 1 or args.warmup < 0:
        parser.error("--rounds, --requests and --concurrency must be >= 1, --warmup >= 0")
    if args.time_cap <= 0:
        parser.error("--time-cap must be positive")
    return args


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (`timeout`, a CI runner) would end Python without running `finally` blocks,
    leaving the servers behind: turn it into an exit that unwinds and stops them."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with_fc2 = importlib.util.find_spec("fastapi_cache") is not None
    if not with_fc2:
        _say("fastapi-cache2 is not installed (pip install -e '.[bench]'): its figures are skipped")
    load_before = _load()
    started = time.monotonic()
    results: dict[str, Any] = {}
    # A scratch working folder: the servers' logs go there, and no `.env` is read from the repo.
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as tmp:
        cwd = Path(tmp)
        if args.only in (None, "load"):
            results["load"] = bench_load(
                rounds=args.rounds,
                warmup=args.warmup,
                requests=args.requests,
                concurrency=args.concurrency,
                time_cap=args.time_cap,
                with_fc2=with_fc2,
                cwd=cwd,
            )
        if args.only in (None, "stampede"):
            results["stampede"] = bench_stampede(with_fc2=with_fc2, cwd=cwd)

    print()
    load = results.get("load", {})
    for name in ("hit_vs_uncached", "miss_overhead"):
        if name in load:
            print(load[name]["summary"])
    if "stampede" in results:
        print(results["stampede"]["summary"])
    if with_fc2:
        parts = []
        if "hit_vs_fastapi_cache2" in load:
            parts.append(
                "HIT throughput "
                + ", ".join(
                    f"{figures['ratio_median']:.2f}x at {latency.removesuffix('ms')} ms"
                    for latency, figures in load["hit_vs_fastapi_cache2"].items()
                )
            )
            cpu = [f["server_cpu_us"] for f in load["hit_vs_fastapi_cache2"].values()]
            if all(ours and theirs for ours, theirs in cpu):
                ratios = ", ".join(f"{theirs / ours:.1f}x" for ours, theirs in cpu)
                parts.append(f"server CPU per HIT {ratios} less")
        if "stampede" in results:
            apps = results["stampede"]["apps"]
            parts.append(
                f"stampede store reads {apps['reference']['store_reads']}"
                f" vs {apps['fastapi_cache2']['store_reads']}"
            )
        summary = "4. reference vs fastapi-cache2: " + "; ".join(parts)
        print(summary)
        results["fastapi_cache2_summary"] = summary
    _say(f"done in {time.monotonic() - started:.0f} s")
    if args.json:
        document = {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_before": load_before,
            "load_avg_after": _load(),
            "duration_s": round(time.monotonic() - started, 1),
            "fastapi_cache2": with_fc2,
            "benchmarks": results,
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
