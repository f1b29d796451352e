"""Run an exercise's graded suite in a child pytest and turn what it reports into results.

The child process keeps the learner's code away from the grader: whatever the app does
(crash, hang, print, spawn), the parent survives, kills the child's whole process group
when the time bound runs out or the run ends, and writes the reports itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._catalog import Course, Criterion, Exercise
from ._errors import GraderError
from ._results import CriterionResult, GradeResult, TestOutcome, TestStatus

# Variables of the learner-app contract: the child starts without them, so a value left in
# the learner's shell cannot change a verdict; each check sets the ones it needs.
CONTRACT_ENV = (
    "HOST",
    "PORT",
    "STORE_LATENCY_MS",
    "ADMIN_TOKEN",
    "SEED_DEMO_USERS",
    "SESSION_TTL_SECONDS",
    "CACHE_ENABLED",
    "CACHE_LIST_TTL_SECONDS",
    "CACHE_ITEM_TTL_SECONDS",
    "CACHE_BACKEND",
    "REDIS_URL",
    "CACHE_KEY_PREFIX",
    "CACHE_COMPRESSION_MIN_BYTES",
    "CACHE_WARM_PATHS",
    "DATABASE_URL",
    "JOBS_DB_PATH",
    "JOBS_WORKER",
    "JOBS_WORKERS",
    "JOB_MAX_RETRIES",
    "JOB_RETRY_DELAY_SECONDS",
    "USER_RETENTION_DAYS",
    "CLEANUP_INTERVAL_SECONDS",
    "EMAIL_LATENCY_MS",
    "EMAIL_FAIL_FIRST",
    "JOB_ALERT_THRESHOLD",
    "JOB_ALERT_WINDOW_SECONDS",
    "LOG_LEVEL",
    # 10.3
    "SHUTDOWN_TIMEOUT_SECONDS",
    "SHUTDOWN_DRAIN_DELAY_SECONDS",
    "PRE_SHUTDOWN_HOOK_TIMEOUT_SECONDS",
    "SHUTDOWN_TEST_HOOK_SECONDS",
    "SHUTDOWN_WEBHOOK_URL",
    "INSTANCE_ID",
    "INSTANCE_REGISTRY",
    "INSTANCE_REGISTRY_PREFIX",
    # 10.4
    "REDIS_KEY_PREFIX",
    "SESSION_BACKEND",
    "SESSION_SECRET",
    "CLEANUP_LOCK",
    "RATE_LIMIT_BACKEND",
    "RATE_LIMIT_REQUESTS",
    "RATE_LIMIT_WINDOW_SECONDS",
)


@dataclass
class ChildRun:
    """The raw material of one child pytest run."""

    returncode: int | None
    timed_out: bool
    duration: float
    report: dict[str, Any] | None
    criteria_by_test: dict[str, list[str]]
    progress: list[dict[str, Any]] = field(default_factory=list)
    output_tail: str = ""


def pytest_base_command(exercise: Exercise, *, criteria_out: Path) -> list[str]:
    """pytest on the exercise's suite with the grader's plugin and only our configuration:
    the project's (or the learner's) pytest settings must not change how the suite runs."""
    return [
        sys.executable,
        "-m",
        "pytest",
        str(exercise.tests_dir),
        "-c",
        os.devnull,
        "--rootdir",
        str(exercise.path),
        "-p",
        "no:cacheprovider",
        "-p",
        "grader.plugin",
        "-q",
        "--no-header",
        "--tb=no",  # the JSON report carries the learner messages; tracebacks cost seconds
        f"--grader-criteria-out={criteria_out}",
    ]


def child_command(
    exercise: Exercise,
    *,
    app: str,
    workdir: Path,
    request_timeout: float,
    criteria: tuple[str, ...] = (),
) -> list[str]:
    """The pytest command line that grades `app` on `exercise` (all criteria, or those)."""
    return [
        *pytest_base_command(exercise, criteria_out=workdir / "criteria.json"),
        *([f"--grader-criteria={','.join(criteria)}"] if criteria else []),
        f"--grader-app={app}",
        f"--grader-request-timeout={request_timeout}",
        f"--grader-progress={workdir / 'progress.jsonl'}",
        "--json-report",
        f"--json-report-file={workdir / 'report.json'}",
        "--json-report-omit",
        "collectors",
        "log",
        "streams",
        "traceback",
        "warnings",
    ]


def child_env(app_path: Path, app_env: dict[str, str] | None = None) -> dict[str, str]:
    """The grader's environment without the contract's variables, plus `app_env`: settings
    asked for explicitly (`grade --env`), which every check's app inherits."""
    env = {k: v for k, v in os.environ.items() if k not in CONTRACT_ENV}
    env.update(app_env or {})
    # The learner's app package is found from the folder grade was run in (or --app-path).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(app_path), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_child(
    exercise: Exercise,
    *,
    app: str,
    app_path: Path,
    timeout: float,
    request_timeout: float,
    criteria: tuple[str, ...] = (),
    app_env: dict[str, str] | None = None,
) -> ChildRun:
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        workdir = Path(tmp)
        command = child_command(
            exercise, app=app, workdir=workdir, request_timeout=request_timeout, criteria=criteria
        )
        output = workdir / "output.txt"
        started = time.perf_counter()
        with output.open("wb") as sink:
            # Its own session, so that the whole process group (the app's children too)
            # can be stopped at once; its own working folder, so files the app writes
            # (a SQLite database, say) land in the temporary folder.
            process = subprocess.Popen(
                command,
                cwd=workdir,
                env=child_env(app_path, app_env),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            timed_out = False
            try:
                returncode: int | None = process.wait(timeout)
            except subprocess.TimeoutExpired:
                timed_out, returncode = True, None
            finally:
                _kill_group(process)
        duration = time.perf_counter() - started
        return ChildRun(
            returncode=returncode,
            timed_out=timed_out,
            duration=duration,
            report=_read_json(workdir / "report.json"),
            criteria_by_test=_read_json(workdir / "criteria.json") or {},
            progress=_read_progress(workdir / "progress.jsonl"),
            output_tail=output.read_text(errors="replace")[-3000:],
        )


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Stop the child and anything it started; it is ours, so its group id is its pid."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_progress(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


# --- from the child's reports to results ----------------------------------------------


def collect_outcomes(run: ChildRun, *, timeout: float) -> dict[str, TestOutcome]:
    """Every collected test's outcome, from the JSON report or, if the child was killed,
    from the progress lines it wrote before."""
    outcomes: dict[str, TestOutcome] = {}
    if run.report is not None:
        for test in run.report.get("tests", []):
            outcomes[test["nodeid"]] = _outcome_from_report(test)
    else:
        for line in run.progress:
            nodeid = line["nodeid"]
            if line["outcome"] == "passed" and nodeid not in outcomes:
                outcomes[nodeid] = TestOutcome(nodeid, _name(nodeid), "passed", line["duration"])
            elif line["outcome"] != "passed":
                status: TestStatus = "skipped" if line["outcome"] == "skipped" else "failed"
                outcomes[nodeid] = TestOutcome(
                    nodeid, _name(nodeid), status, line["duration"], line["message"]
                )
    why = (
        f"not run: the grader stopped the checks after {timeout:g} s (does an endpoint hang?)"
        if run.timed_out
        else "not run: the test run ended early"
    )
    for nodeid in run.criteria_by_test:
        outcomes.setdefault(nodeid, TestOutcome(nodeid, _name(nodeid), "not run", 0.0, why))
    return outcomes


def _name(nodeid: str) -> str:
    return nodeid.rsplit("::", 1)[-1]


def _outcome_from_report(test: dict[str, Any]) -> TestOutcome:
    outcome = test.get("outcome")
    status: TestStatus = {"passed": "passed", "skipped": "skipped"}.get(outcome, "failed")  # type: ignore[assignment]
    duration = sum(
        test.get(stage, {}).get("duration", 0.0) for stage in ("setup", "call", "teardown")
    )
    message = test.get("metadata", {}).get("message")
    if status == "skipped" and not message:
        message = _skip_reason(test)
    return TestOutcome(test["nodeid"], _name(test["nodeid"]), status, round(duration, 3), message)


def _skip_reason(test: dict[str, Any]) -> str | None:
    longrepr = test.get("setup", {}).get("longrepr") or test.get("call", {}).get("longrepr")
    if isinstance(longrepr, str) and longrepr.startswith("("):
        return longrepr.rsplit(", ", 1)[-1].strip("')\"")
    return longrepr


def build_result(
    exercise: Exercise,
    *,
    app: str,
    run: ChildRun,
    timeout: float,
    started_at: str,
    criteria: tuple[str, ...] = (),
) -> GradeResult:
    """Results for every criterion of `exercise`, or only for `criteria` when given."""
    if run.report is None and not run.timed_out and not run.criteria_by_test:
        raise GraderError(
            f"The graded suite of {exercise.id} did not run (exit code {run.returncode}):\n"
            + run.output_tail
        )
    outcomes = collect_outcomes(run, timeout=timeout)
    by_criterion: dict[str, list[TestOutcome]] = {c.id: [] for c in exercise.criteria}
    for nodeid, test_criteria in run.criteria_by_test.items():
        for criterion_id in test_criteria:
            if criterion_id in by_criterion:
                by_criterion[criterion_id].append(outcomes[nodeid])
    results = [
        _criterion_result(c, by_criterion[c.id])
        for c in exercise.criteria
        if not criteria or c.id in criteria
    ]
    app_error = _common_app_error(run)
    return GradeResult(
        exercise=exercise.id,
        exercise_title=exercise.title,
        app=app,
        started_at=started_at,
        duration=round(run.duration, 3),
        criteria=results,
        app_error=app_error,
        selected=list(criteria) if criteria else None,
    )


def _criterion_result(criterion: Criterion, tests: list[TestOutcome]) -> CriterionResult:
    failing = [t for t in tests if t.status in ("failed", "not run")]
    skipped = [t for t in tests if t.status == "skipped"]
    if not criterion.graded:
        status = "not graded"
        message = "checks for this stretch goal come in a later release of the workbook"
    elif not tests:
        status, message = "failed", "no graded test checks this criterion (a course defect)"
    elif failing:
        status, message = "failed", failing[0].message or f"{failing[0].name} failed"
    elif skipped:
        status, message = "skipped", skipped[0].message
    else:
        status, message = "passed", None
    return CriterionResult(
        id=criterion.id,
        title=criterion.title,
        kind=criterion.kind,
        points=criterion.points,
        hint=criterion.hint,
        status=status,  # type: ignore[arg-type]
        message=message,
        tests=tests,
    )


def _common_app_error(run: ChildRun) -> str | None:
    """The load or start-up error shared by every failure, if the app never came up."""
    if run.report is None:
        return None
    tests = run.report.get("tests", [])
    errors = {
        t.get("metadata", {}).get("message")
        for t in tests
        if t.get("metadata", {}).get("app_error")
    }
    if len(errors) == 1 and all(t.get("outcome") != "passed" for t in tests):
        return errors.pop()
    return None


def grade_exercise(
    course: Course,
    exercise_key: str,
    *,
    app: str,
    app_path: Path,
    timeout: float | None,
    request_timeout: float,
    criteria: tuple[str, ...] = (),
    app_env: dict[str, str] | None = None,
) -> GradeResult:
    """Grade `exercise_key`; `timeout=None` takes the exercise's own bound."""
    exercise = course.find(exercise_key)
    if timeout is None:
        timeout = exercise.timeout_seconds
    if not exercise.tests_dir.is_dir():
        raise GraderError(f"Exercise {exercise.id} has no graded suite at {exercise.tests_dir}")
    for criterion_id in criteria:
        exercise.criterion(criterion_id)  # an unknown id is a clear error, not an empty run
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    run = run_child(
        exercise,
        app=app,
        app_path=app_path,
        timeout=timeout,
        request_timeout=request_timeout,
        criteria=criteria,
        app_env=app_env,
    )
    return build_result(
        exercise, app=app, run=run, timeout=timeout, started_at=started_at, criteria=criteria
    )
