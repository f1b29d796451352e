"""Golden-file tests of the renderers: the checklist a learner reads and the JSON report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from grader import SCHEMA_VERSION, CriterionResult, GradeResult, TestOutcome
from grader._render import render_text, to_json

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"  # UPDATE_GOLDEN=1 pytest tests/test_render.py


def sample_result(*, app_error: str | None = None) -> GradeResult:
    failure = (
        "GET /users/3, twice\n"
        "expected: the second response from the cache: no store operation\n"
        "observed: 1 store operation for the second request"
    )
    return GradeResult(
        exercise="10.1",
        exercise_title="Response caching",
        app="starter_app",
        started_at="2026-11-29T09:00:00+00:00",
        duration=4.25,
        app_error=app_error,
        criteria=[
            CriterionResult(
                "caching-middleware",
                "Response caching middleware configured",
                "required",
                2,
                "Put the cache in front of the store.",
                "failed",
                failure,
                [TestOutcome("t.py::test_a", "test_a", "failed", 0.12, failure)],
            ),
            CriterionResult(
                "ttl",
                "GET endpoints cached with appropriate TTL",
                "required",
                2,
                "Give each endpoint its own TTL.",
                "passed",
                None,
                [TestOutcome("t.py::test_b", "test_b", "passed", 1.5)],
            ),
            CriterionResult(
                "redis",
                "Implement distributed caching with Redis",
                "stretch",
                1,
                "Keep entries in Redis.",
                "skipped",
                "Redis is not running at 127.0.0.1:6379",
                [TestOutcome("t.py::test_c", "test_c", "skipped", 0.0, "Redis is not running")],
            ),
            CriterionResult(
                "warming",
                "Implement cache warming on startup",
                "stretch",
                1,
                "Warm it.",
                "not graded",
                "checks come later",
            ),
        ],
    )


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"missing golden file {path}; run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


def test_checklist_golden() -> None:
    text = render_text(sample_result(), width=100, report_path=Path(".grade/reports/x.json"))
    check_golden("checklist.txt", text)


def test_checklist_for_an_app_that_did_not_start_golden() -> None:
    result = sample_result(
        app_error="starter_app has a syntax error: invalid syntax (x.py, line 3)"
    )
    check_golden("checklist_app_error.txt", render_text(result, width=100))


def test_json_report_golden_and_round_trip() -> None:
    result = sample_result()
    text = to_json(result)
    check_golden("report.json", text)
    data = json.loads(text)
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["summary"] == {
        "required_passed": 1,
        "required_total": 2,
        "stretch_passed": 0,
        "stretch_total": 1,
        "points": 2,
        "max_points": 4,
        "bonus_points": 0,
        "max_bonus_points": 1,
    }
    assert data["passed"] is False
    assert GradeResult.from_dict(data) == result


def test_report_of_another_schema_version_is_refused() -> None:
    data = json.loads(to_json(sample_result()))
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="schema version"):
        GradeResult.from_dict(data)
