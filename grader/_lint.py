"""`grade check`: lint the course the way rustlings' `dev check` does."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from ._catalog import Course, Exercise
from ._runner import pytest_base_command


def collect_criteria(exercise: Exercise) -> tuple[dict[str, list[str]], str]:
    """{test nodeid: [criterion ids]} as pytest collects the suite, and pytest's output."""
    with tempfile.TemporaryDirectory(prefix="grade-check-") as tmp:
        out = Path(tmp) / "criteria.json"
        command = [*pytest_base_command(exercise, criteria_out=out), "--collect-only"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp)
        try:
            return json.loads(out.read_text()), done.stdout + done.stderr
        except (OSError, ValueError):
            return {}, done.stdout + done.stderr


def lint_course(course: Course) -> list[str]:
    """Every problem found, as `<where>: <what>`; an empty list means the course is sound."""
    problems: list[str] = []
    for field in ("id", "slug"):
        counts = Counter(getattr(e, field) for e in course.exercises)
        problems += [
            f"course: exercise {field} {v!r} is used {n} times" for v, n in counts.items() if n > 1
        ]
    if not course.exercises:
        problems.append(f"course: no exercises under {course.root / 'exercises'}")
    for exercise in course.exercises:
        problems += [f"{exercise.id}: {p}" for p in lint_exercise(exercise)]
    return problems


def lint_exercise(exercise: Exercise) -> list[str]:
    problems: list[str] = []
    ids = [c.id for c in exercise.criteria]
    problems += [
        f"criterion id {i!r} is declared {n} times" for i, n in Counter(ids).items() if n > 1
    ]
    if not any(c.kind == "required" for c in exercise.criteria):
        problems.append("no required criterion")
    readme = exercise.readme.read_text(encoding="utf-8") if exercise.readme.is_file() else None
    if readme is None:
        problems.append(f"no README.md in {exercise.path.name}")
    else:
        problems += [
            f"criterion {i!r} is not mentioned in README.md" for i in ids if f"`{i}`" not in readme
        ]
    if not exercise.tests_dir.is_dir():
        return [*problems, f"no graded suite in {exercise.path.name}/tests"]
    mapping, output = collect_criteria(exercise)
    if not mapping:
        return [*problems, f"pytest collected no graded test:\n{output[-2000:]}"]
    tested = Counter(c for criteria in mapping.values() for c in criteria)
    for nodeid, criteria in mapping.items():
        if not criteria:
            problems.append(f"{nodeid} has no @pytest.mark.criterion(...) marker")
        problems += [f"{nodeid} names unknown criterion {c!r}" for c in criteria if c not in ids]
    for criterion in exercise.criteria:
        if criterion.graded and not tested[criterion.id]:
            problems.append(f"criterion {criterion.id!r} has no graded test")
        if not criterion.graded and tested[criterion.id]:
            problems.append(f"criterion {criterion.id!r} has tests but is marked graded = false")
    return problems
