"""How much does `grade` cost on top of the pytest run it wraps?

Two benchmarks, each measured side by side in one run:

1. `grade 10.1 --solution --no-report` versus bare pytest on the same graded suite, with the
   same plugin, against the same reference app. The difference is what the grader adds: its
   own interpreter and imports, the JSON report and progress files of the child pytest,
   reading them back, and rendering the checklist. Target: ratio <= 1.3.
2. `grade --help` versus `python -c pass`: the CLI's cold start, which a learner pays on
   every typo. Target: well under a second.

The machine this runs on is shared and noisy, so the two sides of each benchmark are run
interleaved (A, B, A, B, ...) and compared as a ratio: a burst of load then slows both sides
alike instead of whichever happened to run at that moment. Absolute times are printed for
context only.

    .venv/bin/python bench/grade_overhead.py [--rounds N] [--cli-rounds M] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    checkout_env,
    interrupt,
    load_average,
    paired_ratios,
    reap,
    say,
    verdict,
    write_json,
)

EXERCISE_ID = "10.1"
EXERCISE_DIR = ROOT / "exercises" / "10.1-response-caching"
SOLUTION_APP = "solutions.app"
GRADE_TARGET_RATIO = 1.3
CLI_TARGET_SECONDS = 1.0
# A grade run takes ~10 s; this only has to catch a hung run, not bound a slow one.
RUN_TIMEOUT = 300.0
# What the checklist's last summary line says the child pytest took, e.g. "... points · 9.8 s".
CHILD_DURATION = re.compile(r"points · (\d+(?:\.\d+)?) s")


@dataclass
class Variant:
    """One side of a comparison: a command line and the times it took."""

    label: str
    command: list[str]
    times: list[float] = field(default_factory=list)
    # Per run, what grade itself says its child pytest took (grade variants only).
    child_times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "command": self.command,
            "times_s": [round(t, 4) for t in self.times],
            "median_s": round(self.median, 4),
            "min_s": round(self.best, 4),
            "max_s": round(max(self.times), 4),
        }
        if self.child_times:
            data["child_pytest_times_s"] = self.child_times
        return data


def clean_env() -> dict[str, str]:
    """The environment both sides run in.

    grade starts its child pytest without the learner-app contract variables (HOST, PORT,
    CACHE_ENABLED, ...) so a stray value in the shell cannot change a verdict; bare pytest
    must not see them either, or the two would not run the same suite the same way. The
    repo root goes on PYTHONPATH so `grader` and `solutions` import from this checkout even
    though the processes run in a temporary folder, and PYTHONUNBUFFERED matches what grade
    gives its child.
    """
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from grader._runner import CONTRACT_ENV

    return checkout_env({k: v for k, v in os.environ.items() if k not in CONTRACT_ENV})


def run_once(command: Sequence[str], *, cwd: Path, env: dict[str, str], log: Path) -> float:
    """Run `command` to completion and return its wall time; abort the benchmark if it fails.

    Output goes to a log file (rather than a pipe we would have to drain) so that a failure
    can be shown. On a timeout or Ctrl-C the child gets SIGINT first: grade then stops its
    own child pytest, which runs in a session of its own and would outlive a SIGKILL of grade.
    """
    with log.open("wb") as sink:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
        )
        try:
            returncode = process.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            _stop(process)
            sys.exit(f"bench: aborted, {_show(command)} ran longer than {RUN_TIMEOUT:g} s")
        except KeyboardInterrupt:
            _stop(process)
            raise
        elapsed = time.perf_counter() - started
    if returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        sys.exit(
            f"bench: aborted, {_show(command)} exited with {returncode} (expected 0: the"
            f" reference app should pass every check).\n--- its output (tail) ---\n{tail}"
        )
    return elapsed


def _stop(process: subprocess.Popen[bytes]) -> None:
    interrupt(process)
    reap(process, time.monotonic() + 15)


def _show(command: Sequence[str]) -> str:
    return " ".join(command[2:] if command[1] == "-m" else command[1:])


def interleave(
    variants: Sequence[Variant], *, rounds: int, warmup: int, cwd: Path, env: dict[str, str]
) -> None:
    """Run A, B, A, B, ... for `rounds` rounds, after `warmup` untimed rounds.

    The warm-up rounds pay for the one-off costs (bytecode compilation, a cold disk cache)
    that would otherwise land on whichever side happens to run first.
    """
    for n in range(warmup + rounds):
        timed = n >= warmup
        for variant in variants:
            log = cwd / f"{variant.label.replace(' ', '_')}.log"
            elapsed = run_once(variant.command, cwd=cwd, env=env, log=log)
            if timed:
                variant.times.append(elapsed)
                if match := CHILD_DURATION.search(log.read_text(errors="replace")):
                    variant.child_times.append(float(match.group(1)))
        tag = f"round {n - warmup + 1}/{rounds}" if timed else f"warm-up {n + 1}/{warmup}"
        cells = ", ".join(f"{v.label} {v.times[-1]:.2f} s" for v in variants if timed)
        say(f"  {tag}" + (f": {cells}" if cells else ""))


def print_table(variants: Sequence[Variant], *, unit: str) -> None:
    scale, fmt = (1000.0, "{:9.1f}") if unit == "ms" else (1.0, "{:9.2f}")
    width = max(len(v.label) for v in variants)
    runs = len(variants[0].times)
    header = "  ".join(f"{name:>9}" for name in ("median", "min", "max"))
    print(f"  {'':{width}}  {header}  ({unit}, {runs} runs)")
    for v in variants:
        cells = [fmt.format(x * scale) for x in (v.median, v.best, max(v.times))]
        print(f"  {v.label:{width}}  " + "  ".join(cells))


def bench_grade(*, rounds: int, warmup: int, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """grade 10.1 --solution versus the bare pytest run it wraps."""
    grade = Variant(
        "grade",
        [sys.executable, "-m", "grader.cli", EXERCISE_ID, "--solution", "--no-report"],
    )
    pytest = Variant(
        "bare pytest",
        [
            sys.executable,
            "-m",
            "pytest",
            str(EXERCISE_DIR / "tests"),
            "-c",
            os.devnull,
            "--rootdir",
            str(EXERCISE_DIR),
            "-p",
            "no:cacheprovider",
            "-p",
            "grader.plugin",
            f"--grader-app={SOLUTION_APP}",
            "-q",
            "--tb=no",
        ],
    )
    say(f"grade {EXERCISE_ID} --solution vs bare pytest")
    interleave([grade, pytest], rounds=rounds, warmup=warmup, cwd=cwd, env=env)
    ratio = grade.median / pytest.median
    paired = paired_ratios(grade.times, pytest.times)
    print(f"\ngrade {EXERCISE_ID} --solution --no-report vs bare pytest (same suite, plugin, app)")
    print_table([grade, pytest], unit="s")
    print(f"  ratio of medians {ratio:.3f}, of mins {grade.best / pytest.best:.3f},")
    print(f"  round by round {min(paired):.3f} .. {max(paired):.3f}")
    result: dict[str, Any] = {
        "rounds": rounds,
        "grade": grade.summary(),
        "pytest": pytest.summary(),
        "ratio_median": round(ratio, 4),
        "ratio_min": round(grade.best / pytest.best, 4),
        "paired_ratios": [round(r, 4) for r in paired],
        "target_ratio": GRADE_TARGET_RATIO,
        "target_met": ratio <= GRADE_TARGET_RATIO,
    }
    if len(grade.child_times) == len(grade.times):
        # grade's checklist says how long its child pytest took; the rest is grade itself.
        child = statistics.median(grade.child_times)
        own = statistics.median(t - c for t, c in zip(grade.times, grade.child_times, strict=True))
        print(
            f"  of grade's median, its child pytest (with the JSON report) {child:.1f} s,"
            f" grade itself {own:.1f} s"
        )
        result["grade_child_median_s"] = child
        result["grade_own_median_s"] = round(own, 3)
    print(f"  target ratio <= {GRADE_TARGET_RATIO}: {verdict(ratio <= GRADE_TARGET_RATIO)}")
    result["summary"] = (
        f"grade {EXERCISE_ID} --solution vs bare pytest: {ratio:.2f}x"
        f" (median {grade.median:.2f} s vs {pytest.median:.2f} s, {rounds} rounds)"
    )
    return result


def bench_cli(*, rounds: int, warmup: int, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """grade --help versus an interpreter that does nothing: the CLI's own start-up cost."""
    grade = Variant("grade --help", [sys.executable, "-m", "grader.cli", "--help"])
    python = Variant("python -c pass", [sys.executable, "-c", "pass"])
    say("grade --help vs python -c pass")
    interleave([grade, python], rounds=rounds, warmup=warmup, cwd=cwd, env=env)
    ratio = grade.median / python.median
    extra_ms = (grade.median - python.median) * 1000
    print("\ngrade --help vs python -c pass (CLI cold start)")
    print_table([grade, python], unit="ms")
    print(f"  grade --help costs {extra_ms:.0f} ms more than a bare interpreter ({ratio:.2f}x)")
    met = grade.median < CLI_TARGET_SECONDS
    print(f"  target grade --help < {CLI_TARGET_SECONDS:g} s: {verdict(met)}")
    return {
        "rounds": rounds,
        "grade_help": grade.summary(),
        "python_pass": python.summary(),
        "ratio_median": round(ratio, 4),
        "extra_ms_median": round(extra_ms, 1),
        "target_s": CLI_TARGET_SECONDS,
        "target_met": met,
        "summary": (
            f"grade --help vs python -c pass: {ratio:.2f}x, +{extra_ms:.0f} ms"
            f" (median {grade.median * 1000:.0f} ms vs {python.median * 1000:.0f} ms,"
            f" {rounds} rounds)"
        ),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure grade's overhead over bare pytest, and its CLI cold start."
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of grade vs pytest (5)")
    parser.add_argument(
        "--cli-rounds", type=int, default=20, help="timed rounds of grade --help vs python (20)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds before each benchmark (1)"
    )
    parser.add_argument(
        "--only", choices=("grade", "cli"), help="run one benchmark only (default: both)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.cli_rounds < 1 or args.warmup < 0:
        parser.error("rounds must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    env = clean_env()
    load_before = load_average()
    results: dict[str, Any] = {}
    # A scratch working folder: nothing the runs write (a `.grade/` folder, an app's files)
    # lands in the repo.
    with tempfile.TemporaryDirectory(prefix="grade-bench-") as tmp:
        cwd = Path(tmp)
        if args.only in (None, "grade"):
            results["grade_vs_pytest"] = bench_grade(
                rounds=args.rounds, warmup=args.warmup, cwd=cwd, env=env
            )
        if args.only in (None, "cli"):
            results["cli_cold_start"] = bench_cli(
                rounds=args.cli_rounds, warmup=args.warmup, cwd=cwd, env=env
            )
    print()
    for figures in results.values():
        print(figures["summary"])
    if args.json:
        write_json(
            args.json, load_before=load_before, load_after=load_average(), benchmarks=results
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
