"""Proof that each graded suite grades right: the reference passes every criterion,
the untouched starter fails every one with a message and a hint, and each mutant (a small
patch that breaks one behaviour of the reference) fails exactly the criteria that behaviour
serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from grader import grade, load_course
from grader._render import render_text
from grader._services import SharedRedis, postgres_admin_url

from ._support import copy_reference, patch_file
from .mutants import MUTANTS, Mutant

pytestmark = pytest.mark.slow

GRADE = str(Path(sys.executable).parent / "grade")

# The criteria each exercise must grade, written out: a criterion dropped from a catalog
# by mistake fails here rather than silently leaving the proof.
CRITERIA = {
    "10.1": (
        {"caching-middleware", "ttl", "invalidation", "cache-headers", "cache-control",
         "configuration"},
        {"redis", "redis-fallback", "redis-health", "cache-tags", "partition-by-user",
         "compression", "stats-endpoint", "dashboard", "warming", "stampede"},
    ),
    "10.2": (
        {"job-framework", "enqueue-on-create", "job-processing", "dashboard",
         "recurring-cleanup", "retries"},
        {"priorities", "delayed", "status-tracking", "cancellation", "batches", "alerts",
         "dead-letter"},
    ),
    "10.3": (
        {"shutdown-events", "stop-accepting", "in-flight", "resources", "timeout", "logged",
         "admin-shutdown", "container-stop"},
        {"pre-shutdown-hooks", "replica-coordination", "health-state", "connection-draining",
         "notifications", "graceful-restart", "chaos"},
    ),
    "10.4": (
        {"analysis-document", "shared-state", "shared-storage", "multiple-instances",
         "sessions", "recommendations"},
        {"distributed-locking", "sticky-alternatives", "instance-coordination",
         "rate-limiting", "tracing", "capacity-planning", "autoscaling-triggers"},
    ),
}  # fmt: skip
EXERCISES = sorted(CRITERIA)


def not_graded_yet(exercise: str) -> set[str]:
    """Stretch goals the catalog declares ahead of their checks (`graded = false`)."""
    return {c.id for c in load_course().find(exercise).criteria if not c.graded}


def run_grade(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GRADE, *args], capture_output=True, text=True, cwd=cwd, timeout=600, env=env
    )


def databases_named(prefix: str) -> list[str]:
    """The PostgreSQL databases whose name starts with `prefix` (none if no server runs:
    then no check could create one)."""
    try:
        with psycopg.connect(postgres_admin_url(), connect_timeout=2) as connection:
            rows = connection.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)
            ).fetchall()
    except psycopg.OperationalError:
        return []
    return [row[0] for row in rows]


def processes_with(marker: str) -> list[str]:
    """The live processes (zombies aside) whose environment holds `marker`: every process a
    grading run starts (its pytest, the app servers its checks launch) inherits it."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            if state not in ("Z", "X") and marker.encode() in (entry / "environ").read_bytes():
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError):
            continue  # not a process, gone meanwhile, or not ours to read
    return found


@pytest.mark.parametrize("exercise", EXERCISES)
def test_the_catalog_declares_exactly_these_criteria(exercise: str) -> None:
    required, stretch = CRITERIA[exercise]
    declared = load_course().find(exercise).criteria
    assert {c.id for c in declared if c.kind == "required"} == required
    assert {c.id for c in declared if c.kind == "stretch"} == stretch


@pytest.mark.parametrize("exercise", EXERCISES)
def test_reference_passes_every_criterion(exercise: str, tmp_path: Path) -> None:
    required, stretch = CRITERIA[exercise]
    args = (exercise, "--solution", "--format", "json", "--report-dir", "out")
    marker = f"GRADING_TEST_RUN={uuid.uuid4().hex}"
    name, _, value = marker.partition("=")
    databases = f"grade_{value[:12]}_"  # the prefix of every database the run creates
    env = {**os.environ, name: value, "GRADE_DATABASE_PREFIX": databases}
    done = run_grade(*args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert databases_named(databases) == []
    if Path("/proc/self/environ").exists():  # Linux: nothing the run started outlives it
        # (the harness's watchdog may take a moment to see its pytest gone and exit)
        deadline = time.monotonic() + 5
        while (left := processes_with(marker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == []
    report = json.loads(done.stdout)
    statuses = {c["id"]: c["status"] for c in report["criteria"]}
    ahead = not_graded_yet(exercise)
    assert statuses == {c: "not graded" if c in ahead else "passed" for c in required | stretch}
    assert report["summary"]["required_passed"] == len(required)
    assert report["summary"]["stretch_passed"] == len(stretch - ahead)
    saved = json.loads((tmp_path / "out" / f"{exercise}-solutions.app.json").read_text())
    assert saved["criteria"] == report["criteria"]


@pytest.mark.parametrize("exercise", ["10.1", "10.2", "10.3"])
def test_the_reference_passes_the_earlier_suites_on_postgresql_and_redis(
    exercise: str, tmp_path: Path, postgres_database: str, shared_redis: SharedRedis
) -> None:
    """Scaled out (10.4), the reference still does everything 10.1-10.3 ask: its users in
    PostgreSQL, its cache and sessions in Redis, in every check that does not choose
    otherwise (`grade --env`)."""
    settings = {
        "DATABASE_URL": postgres_database,
        "CACHE_BACKEND": "redis",
        "SESSION_BACKEND": "redis",
        "REDIS_URL": shared_redis.url,
        "CACHE_KEY_PREFIX": shared_redis.prefix,
        "REDIS_KEY_PREFIX": shared_redis.prefix,
    }
    env = [f"{name}={value}" for name, value in settings.items()]
    done = run_grade(exercise, "--solution", "--format", "json", "--no-report", "--env", *env,
                     cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert {c["status"] for c in report["criteria"]} == {"passed"}, report["criteria"]
    # --env reached the apps: their users are in this database (and 10.1's cache in Redis)
    with psycopg.connect(postgres_database) as connection:
        (users,) = connection.execute("SELECT count(*) FROM users").fetchone() or (0,)
    assert users > 0
    assert exercise != "10.1" or shared_redis.keys()


@pytest.mark.parametrize("exercise", EXERCISES)
def test_starter_fails_every_criterion_with_a_message_and_a_hint(
    exercise: str, tmp_path: Path
) -> None:
    """...but those the catalog marks `starter_passes` (uvicorn drains requests on SIGTERM)."""
    required, stretch = CRITERIA[exercise]
    passes = {c.id for c in load_course().find(exercise).criteria if c.starter_passes}
    ahead = not_graded_yet(exercise)
    done = run_grade(exercise, "--report-dir", "out", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / f"{exercise}-starter_app.json").read_text())
    assert {c["id"] for c in report["criteria"]} == required | stretch
    for criterion in report["criteria"]:
        if criterion["id"] in passes:
            assert criterion["status"] == "passed", criterion
            continue
        if criterion["id"] in ahead:
            assert criterion["status"] == "not graded", criterion
            continue
        assert criterion["status"] == "failed", criterion
        assert "expected:" in criterion["message"] and "observed:" in criterion["message"]
        assert criterion["hint"]
    checklist, failing = done.stdout, len(required | stretch) - len(passes) - len(ahead)
    assert checklist.count("✗") == failing and checklist.count("hint:") == failing, checklist
    graded_stretch = len(stretch - ahead)
    summary = f"{len(passes & required)}/{len(required)} required · 0/{graded_stretch} stretch"
    assert summary in checklist


@pytest.mark.parametrize("exercise", EXERCISES)
def test_every_criterion_has_a_mutant(exercise: str) -> None:
    required, stretch = CRITERIA[exercise]
    mutants = [m for m in MUTANTS if m.exercise == exercise]
    assert set().union(*(m.fails for m in mutants)) == required | stretch - not_graded_yet(exercise)
    # ...and for each required criterion, a mutant that breaks it alone or with one other
    assert {c for m in mutants if len(m.fails) <= 2 for c in m.fails} >= required
    for m in mutants:  # a stretch mutant targets one stretch goal
        assert m.fails & required or len(m.fails) == 1, m
        # a required behaviour may carry a stretch goal built on it (10.4: sessions through
        # the balancer), but a stretch mutant may not cost a required criterion
        assert m.fails <= required | stretch, m


# Exercises whose every check starts real servers (seconds each, not milliseconds). Their
# mutants are graded on their own criteria only: a whole suite per mutant would cost 30 s
# to 60 s each, and CI has 15 minutes. The reference run shows that those criteria pass.
PROCESS_EXERCISES = {"10.3", "10.4"}


@pytest.mark.parametrize("m", MUTANTS, ids=str)
def test_mutant_is_caught_on_exactly_its_criteria(m: Mutant, tmp_path: Path) -> None:
    """Graded on every required criterion (and its stretch goal, for a stretch mutant),
    which shows that it breaks nothing else; for PROCESS_EXERCISES, on its criteria only."""
    required, _ = CRITERIA[m.exercise]
    package = copy_reference(tmp_path, f"mutant_{m.exercise.replace('.', '_')}_{m.name}"
                             .replace("-", "_"))  # fmt: skip
    patch_file(package / m.file, m.old, m.new)
    graded = m.fails if m.exercise in PROCESS_EXERCISES else required | m.fails
    criteria = sorted(graded)
    result = grade(m.exercise, app=package.name, app_path=tmp_path, criteria=criteria)
    failing = {c.id for c in result.criteria if c.status != "passed"}
    assert failing == m.fails, render_text(result, width=160)
    for criterion in result.criteria:
        if criterion.id in m.fails:
            assert "expected:" in (criterion.message or ""), criterion
