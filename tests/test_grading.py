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

import pytest

from grader import grade, load_course
from grader._render import render_text

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
}  # fmt: skip
EXERCISES = sorted(CRITERIA)


def run_grade(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GRADE, *args], capture_output=True, text=True, cwd=cwd, timeout=600, env=env
    )


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
    done = run_grade(*args, cwd=tmp_path, env={**os.environ, name: value})
    assert done.returncode == 0, done.stdout + done.stderr
    if Path("/proc/self/environ").exists():  # Linux: nothing the run started outlives it
        # (the harness's watchdog may take a moment to see its pytest gone and exit)
        deadline = time.monotonic() + 5
        while (left := processes_with(marker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == []
    report = json.loads(done.stdout)
    statuses = {c["id"]: c["status"] for c in report["criteria"]}
    assert statuses == dict.fromkeys(required | stretch, "passed")
    assert report["summary"]["required_passed"] == len(required)
    assert report["summary"]["stretch_passed"] == len(stretch)
    saved = json.loads((tmp_path / "out" / f"{exercise}-solutions.app.json").read_text())
    assert saved["criteria"] == report["criteria"]


@pytest.mark.parametrize("exercise", EXERCISES)
def test_starter_fails_every_criterion_with_a_message_and_a_hint(
    exercise: str, tmp_path: Path
) -> None:
    """...but those the catalog marks `starter_passes` (uvicorn drains requests on SIGTERM)."""
    required, stretch = CRITERIA[exercise]
    passes = {c.id for c in load_course().find(exercise).criteria if c.starter_passes}
    done = run_grade(exercise, "--report-dir", "out", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / f"{exercise}-starter_app.json").read_text())
    assert {c["id"] for c in report["criteria"]} == required | stretch
    for criterion in report["criteria"]:
        if criterion["id"] in passes:
            assert criterion["status"] == "passed", criterion
            continue
        assert criterion["status"] == "failed", criterion
        assert "expected:" in criterion["message"] and "observed:" in criterion["message"]
        assert criterion["hint"]
    checklist, failing = done.stdout, len(required | stretch) - len(passes)
    assert checklist.count("✗") == failing and checklist.count("hint:") == failing, checklist
    summary = f"{len(passes & required)}/{len(required)} required · 0/{len(stretch)} stretch"
    assert summary in checklist


@pytest.mark.parametrize("exercise", EXERCISES)
def test_every_criterion_has_a_mutant(exercise: str) -> None:
    required, stretch = CRITERIA[exercise]
    mutants = [m for m in MUTANTS if m.exercise == exercise]
    assert set().union(*(m.fails for m in mutants)) == required | stretch
    # ...and for each required criterion, a mutant that breaks it alone or with one other
    assert {c for m in mutants if len(m.fails) <= 2 for c in m.fails} >= required
    for m in mutants:  # a stretch mutant targets one stretch goal
        assert m.fails <= required or (len(m.fails) == 1 and m.fails <= stretch), m


@pytest.mark.parametrize("m", MUTANTS, ids=str)
def test_mutant_is_caught_on_exactly_its_criteria(m: Mutant, tmp_path: Path) -> None:
    """Graded on every required criterion (and its stretch goal, for a stretch mutant)."""
    required, _ = CRITERIA[m.exercise]
    package = copy_reference(tmp_path, f"mutant_{m.exercise.replace('.', '_')}_{m.name}"
                             .replace("-", "_"))  # fmt: skip
    patch_file(package / m.file, m.old, m.new)
    criteria = sorted(required | m.fails)
    result = grade(m.exercise, app=package.name, app_path=tmp_path, criteria=criteria)
    failing = {c.id for c in result.criteria if c.status != "passed"}
    assert failing == m.fails, render_text(result, width=160)
    for criterion in result.criteria:
        if criterion.id in m.fails:
            assert "expected:" in (criterion.message or ""), criterion
