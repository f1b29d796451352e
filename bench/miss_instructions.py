"""The caching layer's cost on a MISS, in CPU instructions per request: a figure noise cannot move.

`cache_bench.py` measures the MISS overhead in time (requests/s with wrk), but on a shared
2-core machine two runs of the same server differ by 10-20 %, as much as the cost being
measured. valgrind's callgrind counts the instructions a process executes instead: for the
same program and inputs the count repeats, whatever else the machine is doing.

Each variant is a real uvicorn server (`python -m solutions.app`) under callgrind, sent N
requests over one keep-alive connection by this process (which is not under valgrind), then
stopped with SIGINT. Two runs per variant, with N1 and N2 requests, and the difference of
their totals divided by N2 - N1 is the cost of one request: start-up, imports and seeding
cancel out. The variants:

- `miss`: CACHE_ENABLED=true, every request a cold key (`GET /users/1?n=<i>`): the cache
  looks the key up, finds nothing, asks the store and keeps the answer (and, once full,
  evicts the oldest entry);
- `refresh`: CACHE_ENABLED=true, `Cache-Control: no-cache` on `GET /users/1`: no lookup, the
  store is asked and the entry replaced;
- `off`: CACHE_ENABLED=false (the same app minus the middleware), the same two request shapes.

Target: a MISS costs at most 10 % more than no caching at all. The four runs of a pair go
two at a time (the machine has 2 cores); under valgrind a run takes 1-3 minutes.

    .venv/bin/python bench/miss_instructions.py [--requests 100,600] [--json PATH]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from _common import free_ports, load_average, say, verdict, write_json
from cache_bench import MISS_TARGET_PERCENT, app_env

STARTUP_TIMEOUT = 600.0  # imports under valgrind are some 50 times slower
COLLECTED = re.compile(r"Collected : (\d+)")


def run_once(variant: str, shape: str, requests: int, cwd: Path) -> int:
    """Total instructions of one server run that answered `requests` GETs of `shape`."""
    port = free_ports(1)[0]
    folder = Path(tempfile.mkdtemp(prefix=f"{variant}-{shape}-{requests}-", dir=cwd))
    env = app_env(
        HOST="127.0.0.1",
        PORT=str(port),
        CACHE_ENABLED="false" if variant == "off" else "true",
        CACHE_BACKEND="memory",
        STORE_LATENCY_MS="0",
        JOBS_WORKER="none",
        JOBS_DB_PATH=str(folder / "jobs.sqlite3"),
        PYTHONHASHSEED="0",  # the same hashes, so the same dict probes, in every run
    )
    log = folder / "callgrind.log"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={folder / 'callgrind.out'}",
        sys.executable,
        "-m",
        "solutions.app",
        "serve",
        "--single-process",  # no supervisor: the one process counted is the one serving
    ]
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{variant} exited early:\n{log.read_text()[-2000:]}")
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{variant} did not start within {STARTUP_TIMEOUT:g} s")
                time.sleep(1)
            for i in range(requests):
                if shape == "cold":
                    response = client.get(f"/users/1?n={i}")
                else:
                    response = client.get("/users/1", headers={"Cache-Control": "no-cache"})
                response.raise_for_status()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    found = COLLECTED.search(log.read_text())
    if found is None:
        raise RuntimeError(f"no instruction count in {log}:\n{log.read_text()[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", default="100,600", help="N1,N2 requests per run")
    parser.add_argument(
        "--shapes", default="cold,refresh", help="request shapes to measure (cold,refresh)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    shapes = args.shapes.split(",")
    if not shapes or not set(shapes) <= {"cold", "refresh"}:
        parser.error("--shapes takes cold, refresh or both, comma-separated")
    n1, n2 = (int(n) for n in args.requests.split(","))
    if not 0 <= n1 < n2:
        parser.error("--requests N1,N2 needs 0 <= N1 < N2")
    if shutil.which("valgrind") is None:
        sys.exit("bench: valgrind is not on the PATH (apt-get install valgrind)")
    cached = {"cold": "miss", "refresh": "refresh"}
    pairs = [(variant, shape) for shape in shapes for variant in (cached[shape], "off")]
    runs = [(variant, shape, n) for variant, shape in pairs for n in (n1, n2)]
    say(f"{len(runs)} server runs under callgrind, two at a time; this takes several minutes")
    load_before = load_average()
    with (
        tempfile.TemporaryDirectory(prefix="miss-instructions-") as tmp,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        counts = pool.map(lambda run: run_once(*run, cwd=Path(tmp)), runs)
        totals = dict(zip(runs, counts, strict=True))
    per_request = {
        (variant, shape): (totals[(variant, shape, n2)] - totals[(variant, shape, n1)]) / (n2 - n1)
        for variant, shape, _ in runs
    }
    results: dict[str, Any] = {"requests": [n1, n2], "totals": {}, "per_request": {}}
    for (variant, shape, n), total in totals.items():
        results["totals"][f"{variant}/{shape}/{n}"] = total
    print(f"\nInstructions per GET /users/1 through uvicorn (callgrind, {n2 - n1} requests):")
    for shape in shapes:
        ours, off = per_request[(cached[shape], shape)], per_request[("off", shape)]
        overhead = (ours / off - 1) * 100
        met = overhead <= MISS_TARGET_PERCENT
        label = "MISS (cold key)" if shape == "cold" else "refresh (Cache-Control: no-cache)"
        print(
            f"  {label:36} {ours / 1e3:8.1f} k vs {off / 1e3:8.1f} k with CACHE_ENABLED=false:"
            f" {overhead:+.1f} % (target <= {MISS_TARGET_PERCENT:g} %: {verdict(met)})"
        )
        results["per_request"][shape] = {
            "cached": round(ours),
            "off": round(off),
            "overhead_percent": round(overhead, 2),
            "target_met": met,
        }
    if args.json:
        write_json(
            args.json,
            load_before=load_before,
            load_after=load_average(),
            benchmarks={"miss_instructions": results},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
