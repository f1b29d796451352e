"""How many requests does stopping or restarting the users API cost its clients?

One figure, measured side by side in one run: the requests that fail, and those refused,
while a server is replaced under steady load, in three ways:

(a) abrupt: SIGKILL to the server's whole process group (what `docker stop` does once its
    grace period has run out), then a new process on the same port;
(b) graceful: SIGTERM, wait until the process has exited by itself, then a new process on
    the same port. The requests in flight are drained, but between the old process closing
    its socket and the new one listening, connections are refused;
(c) graceful restart: SIGHUP to the reference (`python -m solutions.app`), whose supervisor
    keeps the listening socket and swaps the server process behind it. Goal: 0 failed and
    0 refused requests.

(a) and (b) run for the starter (a plain `uvicorn.run()`) and for the reference; (c) only for
the reference: the starter has nothing that handles SIGHUP, whose default action ends the
process, which is (a) without the new process.

Steady load: K client threads on 127.0.0.1, each sending `GET /users` after `GET /users`,
a new connection every time, at most one every `--interval-ms` per client (a refused
connection ends in microseconds: without the pause the refused count would measure the
loop). `STORE_LATENCY_MS=50` keeps each request in flight for 50 ms, so a few always are.
The load runs for a fixed window, from 1 s before the event to 3 s after it (longer if the
new server is not serving 0.5 s before the window ends, so that it always ends with the new
server serving). Counted, per round: completed, refused (connection refused, or 503),
failed (reset, closed before a whole response, timed out), the requests in flight at the
event and how many of those were cut, and the gap: the longest time with no successful
response, next to the longest one in the second before the event (the normal spacing of
responses at this load).

The machine is shared and noisy with 2 cores, so the five variants run interleaved in every
round (A B C D E, then E D C B A). Every process runs in a temporary folder through the
grader's own `AppProcess` (its own process group, killed as a whole at the end of its turn,
and by the harness's atexit hook and watchdog if this script dies).

    .venv/bin/python bench/shutdown_bench.py [--quick] [--rounds N] [--clients K]
                                             [--interval-ms MS] [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import (
    ROOT,
    checkout_env,
    exit_on_sigterm,
    load_average,
    print_load,
    say,
    verdict,
    write_json,
)

if TYPE_CHECKING:
    from grader._process import AppProcess

if str(ROOT) not in sys.path:  # run as a script: `grader` imports from this checkout
    sys.path.insert(0, str(ROOT))
# The notebooks' steady load and its completed / refused / failed, shared rather than copied.
sys.path.insert(0, str(ROOT / "notebooks"))
from workbook import COMPLETED, FAILED, REFUSED, SteadyLoad, outcome_kind

PACKAGES = {"starter": "starter_app", "reference": "solutions.app"}
LATENCY_MS = 50  # STORE_LATENCY_MS: every GET /users stays in flight this long
PATH = "/users"
LEAD_SECONDS = 1.0  # load before the event
AFTER_SECONDS = 3.0  # load after the event, at least
SETTLE_SECONDS = 0.5  # the new server serves at least this long before the window ends
REQUEST_TIMEOUT = 10.0  # per request: only catches a server that hangs
READY_TIMEOUT = 30.0  # a new process must answer GET /health within this
EXIT_TIMEOUT = 30.0  # a SIGTERM'd process must exit within this (the default shutdown budget)
NEW_PID_TIMEOUT = 15.0  # the graceful restart's new server must answer within this
PID_POLL = 0.02
# The settings of every server. LOG_LEVEL=WARNING: no access-log line per request. The cache
# is off, so that the reference's GET /users reaches the slow store every time.
SETTINGS = {
    "STORE_LATENCY_MS": str(LATENCY_MS),
    "CACHE_ENABLED": "false",
    "LOG_LEVEL": "WARNING",
    "ADMIN_TOKEN": "shutdown-bench-admin-token",
}


class BenchError(RuntimeError):
    """Something that makes the figures meaningless: the run stops and says what."""


@dataclass(frozen=True)
class Variant:
    """One way to replace a server (`how`) for one app: a row of the table."""

    key: str
    app: str  # a key of PACKAGES
    how: str  # abrupt, graceful, restart

    @property
    def label(self) -> str:
        return f"{self.app} {self.how}"


VARIANTS = (
    Variant("starter-abrupt", "starter", "abrupt"),
    Variant("reference-abrupt", "reference", "abrupt"),
    Variant("starter-graceful", "starter", "graceful"),
    Variant("reference-graceful", "reference", "graceful"),
    Variant("reference-restart", "reference", "restart"),
)
HOW = {
    "abrupt": "SIGKILL to the process group, then a new process",
    "graceful": "SIGTERM, wait for the exit, then a new process",
    "restart": "SIGHUP: the supervisor swaps the server process on its socket",
}


@dataclass
class RoundResult:
    """What one variant's round measured."""

    completed: int
    refused: int
    failed: int
    in_flight: int  # requests sent before the event and not finished then
    cut: int  # of those, how many did not complete
    gap_ms: float  # the longest time without a successful response, in the window
    normal_gap_ms: float  # the same, in the LEAD_SECONDS before the event
    new_server_s: float | None  # event -> the new server answers (None: it never did)
    old_exit_s: float | None  # event -> the old process is gone (restart: not measured)
    old_exit: str  # how the old process ended, as describe_exit() says it
    window_s: float
    errors: list[str] = field(default_factory=list)  # the first few failures, as text


def health_pid(app: AppProcess) -> Any:
    """The `pid` in `GET /health` (the reference's, stretch `graceful-restart`): how the
    script sees that the restart's new server answers, since `GET /users` does not say."""
    outcome = app.request("GET", "/health", timeout=5)
    try:
        body = json.loads(outcome.body) if outcome.status == 200 else None
    except ValueError:
        return None
    return body.get("pid") if isinstance(body, dict) else None


def longest_gap(moments: Sequence[float], start: float, end: float) -> float:
    """The longest interval in [start, end] with none of `moments` in it."""
    points = [start, *sorted(m for m in moments if start <= m <= end), end]
    return max(b - a for a, b in itertools.pairwise(points))


def run_round(
    variant: Variant, *, clients: int, interval: float, cwd: Path, env: dict[str, str]
) -> RoundResult:
    """Start the variant's server, load it, make the event, measure; kill everything."""
    from grader._process import AppProcess, describe_exit

    package = PACKAGES[variant.app]
    folder = Path(tempfile.mkdtemp(prefix=f"{variant.key}-", dir=cwd))
    old = AppProcess(package, cwd=folder, env=env)
    new: AppProcess | None = None
    load: SteadyLoad | None = None
    try:
        old.start(ready_timeout=READY_TIMEOUT)
        first_pid = health_pid(old) if variant.how == "restart" else None
        if variant.how == "restart" and not isinstance(first_pid, int):
            raise BenchError(f"{package}: GET /health has no pid, so no restart can be seen")
        load = SteadyLoad(
            old,
            clients=clients,
            path=PATH,
            interval=interval,
            # first requests spread over one request's time, so they do not start together
            stagger=LATENCY_MS / 1000 / clients,
            timeout=REQUEST_TIMEOUT,
        ).start()
        time.sleep(LEAD_SECONDS)
        event = time.monotonic()
        new_server: float | None = None
        old_exit: float | None = None
        if variant.how == "abrupt":
            old.kill()
            old_exit = time.monotonic()
        elif variant.how == "graceful":
            old.send_signal(signal.SIGTERM)
            if old.wait_exit(EXIT_TIMEOUT) is None:
                raise BenchError(f"{package} still ran {EXIT_TIMEOUT:g} s after SIGTERM")
            old_exit = time.monotonic()
        else:
            old.send_signal(signal.SIGHUP)
            deadline = event + NEW_PID_TIMEOUT
            while new_server is None and time.monotonic() < deadline and old.alive:
                pid = health_pid(old)
                if isinstance(pid, int) and pid != first_pid:
                    new_server = time.monotonic()
                else:
                    time.sleep(PID_POLL)
            if new_server is None:
                raise BenchError(f"{package}: no new pid answered within {NEW_PID_TIMEOUT:g} s")
        if variant.how != "restart":
            new = AppProcess(package, cwd=folder, env=env, port=old.port)
            new.start(ready_timeout=READY_TIMEOUT)
            new_server = time.monotonic()
        assert new_server is not None
        end = max(event + AFTER_SECONDS, new_server + SETTLE_SECONDS)
        time.sleep(max(0.0, end - time.monotonic()))
        outcomes = [request.outcome for request in load.stop()]
        load = None
        if variant.how == "restart" and not old.alive:
            raise BenchError(f"{package} exited during its graceful restart")
        exit_text = (
            "kept running (the supervisor: its old server child drained and exited)"
            if variant.how == "restart"
            else describe_exit(old.returncode)
        )
    finally:
        if load is not None:
            load.stop()
        for app in (old, new):
            if app is not None:
                app.kill()
    start = event - LEAD_SECONDS
    kinds = [outcome_kind(outcome) for outcome in outcomes]
    successes = [o.finished for o, k in zip(outcomes, kinds, strict=True) if k == COMPLETED]
    flying = [
        (o, k) for o, k in zip(outcomes, kinds, strict=True) if o.started <= event < o.finished
    ]
    errors = [o.describe() for o, k in zip(outcomes, kinds, strict=True) if k == FAILED]
    return RoundResult(
        completed=kinds.count(COMPLETED),
        refused=kinds.count(REFUSED),
        failed=kinds.count(FAILED),
        in_flight=len(flying),
        cut=sum(1 for _, k in flying if k != COMPLETED),
        gap_ms=round(longest_gap(successes, start, end) * 1000, 1),
        normal_gap_ms=round(longest_gap(successes, start, event) * 1000, 1),
        new_server_s=round(new_server - event, 3),
        old_exit_s=None if old_exit is None else round(old_exit - event, 3),
        old_exit=exit_text,
        window_s=round(end - start, 2),
        errors=errors[:3],
    )


def warm_up(env: dict[str, str], cwd: Path) -> None:
    """Start and stop each package once: the first timed start must not pay for a cold
    page cache (the interpreter, FastAPI and the app read from disk)."""
    from grader._process import AppProcess

    for package in PACKAGES.values():
        app = AppProcess(package, cwd=Path(tempfile.mkdtemp(prefix="warm-up-", dir=cwd)), env=env)
        try:
            app.start(ready_timeout=READY_TIMEOUT)
        finally:
            app.kill()


def bench_env() -> dict[str, str]:
    """The servers' settings. `AppProcess` puts them on top of this process's environment,
    so the contract variables are removed from that first: a STORE_LATENCY_MS or a
    SHUTDOWN_DRAIN_DELAY_SECONDS left in the shell must not change what is measured."""
    from grader._runner import CONTRACT_ENV

    for name in CONTRACT_ENV:  # the grader's list, 10.3's variables included
        os.environ.pop(name, None)
    env = checkout_env({"PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    return {**env, **SETTINGS}


# --- report ---------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def values(rounds: list[RoundResult], name: str) -> list[float]:
    return [float(getattr(result, name)) for result in rounds]


def cell(figures: Sequence[float]) -> str:
    """`12`, or `12 [9..15]` when the rounds differ: the median and the range."""
    low, high = min(figures), max(figures)
    text = f"{median(figures):.0f}"
    return text if low == high else f"{text} [{low:.0f}..{high:.0f}]"


COLUMNS = (  # (heading, width)
    ("variant", 19),
    ("completed", 15),
    ("refused", 13),
    ("failed", 9),
    ("cut/in flight", 13),
    ("gap ms", 16),
    ("normal", 6),
    ("new server", 10),
    ("old gone", 8),
)


def row(texts: Sequence[str]) -> str:
    first, *rest = zip(texts, COLUMNS, strict=True)
    return "  " + first[0].ljust(first[1][1]) + "".join(f"  {t:>{c[1]}}" for t, c in rest)


def report(
    results: dict[str, list[RoundResult]], *, clients: int, interval: float
) -> dict[str, Any]:
    """Print the table and the summary lines; return the figures for --json."""
    rounds = len(next(iter(results.values())))
    of_rounds = f"{rounds} round{'s' if rounds > 1 else ''}"
    print(
        f"\nRequests around a server stop or restart: {clients} clients on 127.0.0.1, a new"
        f" connection per request (at most one per client every {interval * 1000:g} ms),\n"
        f"GET {PATH} at STORE_LATENCY_MS={LATENCY_MS}; a window from {LEAD_SECONDS:g} s before"
        f" the event to {AFTER_SECONDS:g} s after it; median [range] of {of_rounds}"
    )
    print(row([heading for heading, _ in COLUMNS]))
    figures: dict[str, Any] = {}
    for variant in VARIANTS:
        rs = results[variant.key]
        exits = [r.old_exit_s for r in rs if r.old_exit_s is not None]
        new_servers = [r.new_server_s for r in rs if r.new_server_s is not None]
        medians = {
            name: median(values(rs, name))
            for name in ("completed", "refused", "failed", "cut", "in_flight", "gap_ms")
        }
        medians["normal_gap_ms"] = median(values(rs, "normal_gap_ms"))
        medians["new_server_s"] = median(new_servers)
        print(
            row(
                [
                    variant.label,
                    cell(values(rs, "completed")),
                    cell(values(rs, "refused")),
                    cell(values(rs, "failed")),
                    f"{sum(r.cut for r in rs)}/{sum(r.in_flight for r in rs)}",
                    cell(values(rs, "gap_ms")),
                    f"{medians['normal_gap_ms']:.0f}",
                    f"{medians['new_server_s']:.2f} s",
                    f"{median(exits):.2f} s" if exits else "-",
                ]
            )
        )
        figures[variant.key] = {
            "how": HOW[variant.how],
            "package": PACKAGES[variant.app],
            "median": medians,
            "rounds": [asdict(r) for r in rs],
        }
    print(
        "  (failed: reset, or closed before a whole response; cut/in flight: of the requests in"
        " flight at the event,\n   how many did not complete, all rounds together; gap: the"
        " longest time without a successful\n   response; normal: the same in the second before"
        " the event; new server: event -> a new process\n   answers; old gone: event -> the old"
        " process exited)"
    )
    for variant in VARIANTS:
        exits = sorted({r.old_exit for r in results[variant.key]})
        errors = [e for r in results[variant.key] for e in r.errors][:2]
        notes = [f"old process {' / '.join(exits)}"]
        if errors:
            notes.append("failures: " + "; ".join(errors))
        print(f"  {variant.label}: " + ", ".join(notes))

    def med(key: str, name: str) -> float:
        return float(figures[key]["median"][name])

    def each(name: str, unit: str = "") -> str:
        parts = []
        for app in ("starter", "reference"):
            hows = [v for v in VARIANTS if v.app == app]
            parts.append(
                f"{app} " + ", ".join(f"{v.how} {med(v.key, name):.0f}{unit}" for v in hows)
            )
        return "; ".join(parts)

    restart = results["reference-restart"]
    clean = sum(1 for r in restart if r.failed == 0 and r.refused == 0)
    graceful_cut = sum(r.cut for v in VARIANTS if v.how == "graceful" for r in results[v.key])
    restart_gap, stop_gap = med("reference-restart", "gap_ms"), med("reference-graceful", "gap_ms")
    normal = med("reference-restart", "normal_gap_ms")
    summary = [
        f"1. failed requests per event (median of {of_rounds}): {each('failed')}",
        f"2. refused requests per event: {each('refused')}"
        f" (one attempt per client every {interval * 1000:g} ms while nobody listens)",
        f"3. longest time without a successful response: {each('gap_ms', ' ms')};"
        f" restart vs graceful stop+start {restart_gap / stop_gap:.2f}x,"
        f" restart vs the normal {normal:.0f} ms {restart_gap / normal:.1f}x",
        f"goal, graceful restart with 0 failed and 0 refused: {verdict(clean == rounds)}"
        f" ({clean} of {rounds} rounds); graceful stops cut {graceful_cut} requests in flight"
        f" in {2 * rounds} rounds",
    ]
    print()
    for line in summary:
        print(line)
    return {
        "variants": figures,
        "goal_met": clean == rounds,
        "restart_clean_rounds": clean,
        "summary": summary,
    }


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Requests failed and refused while the users API is stopped and restarted"
        " under load: SIGKILL + start, SIGTERM + start, and the reference's SIGHUP restart."
    )
    parser.add_argument("--quick", action="store_true", help="one round (~30 s)")
    parser.add_argument("--rounds", type=int, help="rounds of all five variants (default 5)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    parser.add_argument(
        "--interval-ms",
        type=float,
        default=20,
        help="the shortest time between two requests of one client (default 20)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 5)
    if args.rounds < 1 or args.clients < 1 or args.interval_ms < 0:
        parser.error("--rounds and --clients must be >= 1, --interval-ms >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    interval = args.interval_ms / 1000
    env = bench_env()
    load_before = load_average()
    started = time.monotonic()
    results: dict[str, list[RoundResult]] = {variant.key: [] for variant in VARIANTS}
    try:
        with tempfile.TemporaryDirectory(prefix="shutdown-bench-") as tmp:
            cwd = Path(tmp)
            say("warm-up: each app started and stopped once")
            warm_up(env, cwd)
            for n in range(args.rounds):
                order = VARIANTS if n % 2 == 0 else VARIANTS[::-1]
                say(f"round {n + 1}/{args.rounds}: " + ", ".join(v.key for v in order))
                for variant in order:
                    result = run_round(
                        variant, clients=args.clients, interval=interval, cwd=cwd, env=env
                    )
                    results[variant.key].append(result)
                    say(
                        f"  {variant.key}: {result.completed} completed, {result.refused}"
                        f" refused, {result.failed} failed, gap {result.gap_ms:.0f} ms"
                    )
    except BenchError as error:
        sys.exit(f"bench: aborted, {error}")
    figures = report(results, clients=args.clients, interval=interval)
    duration = time.monotonic() - started
    load_after = load_average()
    print_load(load_before, load_after)
    say(f"done in {duration:.0f} s")
    if args.json:
        write_json(
            args.json,
            load_before=load_before,
            load_after=load_after,
            benchmarks={"shutdown": figures},
            duration_s=round(duration, 1),
            settings={
                "rounds": args.rounds,
                "clients": args.clients,
                "interval_ms": args.interval_ms,
                "store_latency_ms": LATENCY_MS,
                "lead_s": LEAD_SECONDS,
                "after_s": AFTER_SECONDS,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
