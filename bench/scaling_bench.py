"""Throughput of the reference app as 1, 2 and 3 instances behind a load balancer (10.4).

Each cluster is what `grade cluster` runs: N `python -m solutions.app` instances sharing
one database and one Redis (sessions, response cache, instance registry), behind nginx
where it is installed and the grader's own proxy elsewhere. wrk drives each cluster
through its balancer; the three clusters run side by side and are measured in interleaved
rounds (1, 2, 3, 1, 2, 3, ...), so the ratios compare figures taken under the same load.

Two workloads:
- `cached read`: `GET /users/1`, answered from the shared Redis cache (CPU-bound: HTTP
  parsing, routing, one Redis round trip);
- `store read`: the same with `Cache-Control: no-cache`, so every request reads the
  database as well.

Read the figures with the machine in mind: on 2 cores, wrk, the balancer, Redis, the
database and every instance share the same two cores, so a third instance can only add
what the second left idle. The ratio says how much of the work was waiting on one
process's event loop, not how a cluster of real machines would scale.

    .venv/bin/python bench/scaling_bench.py                    # 3 rounds x 4 s per point
    .venv/bin/python bench/scaling_bench.py --rounds 5 --seconds 5 --json notes/scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from _common import (
    ROOT,
    WrkReport,
    load_average,
    paired_ratios,
    parse_wrk,
    print_load,
    say,
    write_json,
    wrk_version,
)

sys.path.insert(0, str(ROOT))

from grader._cluster import Cluster
from grader._services import DEFAULT_REDIS_URL, ping

SIZES = (1, 2, 3)
WORKLOADS = {
    "cached read": {},
    "store read": {"Cache-Control": "no-cache"},
}
POSTGRES_URL = os.environ.get("GRADE_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=4, help="wrk duration per point")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the shared database (postgresql: a fresh database at GRADE_POSTGRES_URL)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    return parser.parse_args()


def create_database() -> tuple[str, str]:
    """A fresh PostgreSQL database; (its URL, its name), dropped by drop_database."""
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_URL.rsplit("/", 1)[0]
    return f"{base}/{name}", name


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_wrk(
    wrk: str, url: str, headers: dict[str, str], seconds: float, connections: int
) -> WrkReport:
    command = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    for name, value in headers.items():
        command[1:1] = ["-H", f"{name}: {value}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    return parse_wrk(done.stdout)


def main() -> None:
    args = parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("bench: wrk is not on the PATH (apt-get install wrk)")
    redis_url = os.environ.get("GRADE_REDIS_URL", DEFAULT_REDIS_URL)
    if not ping(redis_url):
        sys.exit(f"bench: no Redis answers at {redis_url}")
    load_before = load_average()
    database_name = None
    with tempfile.TemporaryDirectory(prefix="scaling-bench-") as tmp:
        folder = Path(tmp)
        if args.database == "postgresql":
            database_url, database_name = create_database()
        else:
            database_url = f"sqlite:///{folder / 'users.sqlite3'}"
        prefix = f"bench-{uuid.uuid4().hex[:8]}:"
        env = {
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": prefix,
            "CACHE_KEY_PREFIX": prefix,
            "INSTANCE_REGISTRY_PREFIX": prefix,
            "CACHE_BACKEND": "redis",
            "SESSION_BACKEND": "redis",
            "CACHE_WARM_PATHS": "",
            "JOBS_WORKER": "none",
            "LOG_LEVEL": "WARNING",
        }
        clusters: dict[int, Cluster] = {}
        try:
            for size in SIZES:
                say(f"starting {size} instance(s)")
                clusters[size] = Cluster(
                    "solutions.app", cwd=folder / f"n{size}", n=size, env=env
                ).start()
            balancer = clusters[1].balancer
            created = clusters[1].request(
                "POST",
                "/users",
                json={"email": "bench@example.com", "name": "Bench", "password": "bench-pass-1"},
            )
            if created.status != 201:
                sys.exit(f"bench: POST /users answered {created.describe()}")
            path = f"/users/{json.loads(created.body)['id']}"
            rps: dict[str, dict[int, list[float]]] = {w: {n: [] for n in SIZES} for w in WORKLOADS}
            p50: dict[str, dict[int, list[float]]] = {w: {n: [] for n in SIZES} for w in WORKLOADS}
            for round_number in range(1, args.rounds + 1):
                for workload, headers in WORKLOADS.items():
                    for size in SIZES:
                        url = f"{clusters[size].base_url}{path}"
                        report = run_wrk(wrk, url, headers, args.seconds, args.connections)
                        if report.socket_errors or report.non_2xx:
                            say(f"  warning: {report.socket_errors} socket errors, "
                                f"{report.non_2xx} non-2xx")  # fmt: skip
                        rps[workload][size].append(report.rps)
                        p50[workload][size].append(report.latency_ms.get("p50", 0.0))
                        say(f"round {round_number} {workload:<12} n={size}: "
                            f"{report.rps:8.0f} requests/s")  # fmt: skip
        finally:
            for cluster in clusters.values():
                cluster.kill()
            if database_name is not None:
                drop_database(database_name)
    load_after = load_average()

    print(
        f"\nscaling: {os.cpu_count()} cores, {wrk_version(wrk)}, -c{args.connections}, "
        f"{args.seconds:g} s x {args.rounds} rounds; balancer {balancer}; {args.database}"
    )
    print(f"{'workload':<13} {'instances':>9} {'requests/s':>11} {'vs 1':>6} {'p50 ms':>7}")
    figures: dict[str, dict[str, float]] = {}
    for workload in WORKLOADS:
        for size in SIZES:
            median = statistics.median(rps[workload][size])
            ratio = statistics.median(paired_ratios(rps[workload][size], rps[workload][1]))
            latency = statistics.median(p50[workload][size])
            figures[f"{workload}, {size} instance(s)"] = {
                "requests_per_second": round(median, 1),
                "vs_one_instance": round(ratio, 2),
                "p50_ms": round(latency, 2),
            }
            print(f"{workload:<13} {size:>9} {median:>11.0f} {ratio:>5.2f}x {latency:>7.2f}")
    print_load(load_before, load_after)
    if args.json:
        write_json(
            args.json,
            load_before=load_before,
            load_after=load_after,
            benchmarks=figures,
            balancer=balancer,
            database=args.database,
            connections=args.connections,
            seconds=args.seconds,
            rounds=args.rounds,
        )


if __name__ == "__main__":
    main()
