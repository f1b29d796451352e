"""From a child run's raw reports to criteria: mapping, status rules, killed runs."""

from __future__ import annotations

from dataclasses import replace

from grader import load_course
from grader._runner import ChildRun, build_result

# The real exercise, with one stretch goal declared ahead of its checks.
_REAL = load_course().find("10.1")
EXERCISE = replace(
    _REAL,
    criteria=tuple(replace(c, graded=c.id != "redis") for c in _REAL.criteria),
)
A, B, C = "t.py::test_a", "t.py::test_b", "t.py::test_c"


def report_test(nodeid: str, outcome: str, message: str | None = None, **meta: object) -> dict:
    metadata = {"criteria": [], **meta}
    if message:
        metadata["message"] = message
    return {"nodeid": nodeid, "outcome": outcome, "call": {"duration": 0.5}, "metadata": metadata}


def run(report: dict | None, mapping: dict, *, timed_out: bool = False, progress=()) -> ChildRun:
    return ChildRun(
        returncode=None if timed_out else 1,
        timed_out=timed_out,
        duration=2.0,
        report=report,
        criteria_by_test=mapping,
        progress=list(progress),
    )


def result_of(child: ChildRun):
    result = build_result(EXERCISE, app="x", run=child, timeout=30, started_at="now")
    return {c.id: c for c in result.criteria}, result


def test_a_criterion_passes_only_when_all_its_tests_pass() -> None:
    mapping = {A: ["ttl"], B: ["ttl"], C: ["invalidation"]}
    report = {
        "tests": [
            report_test(A, "passed"),
            report_test(B, "failed", "B broke"),
            report_test(C, "passed"),
        ]
    }
    criteria, result = result_of(run(report, mapping))
    assert criteria["ttl"].status == "failed"
    assert criteria["ttl"].message == "B broke"
    assert criteria["invalidation"].status == "passed"
    assert criteria["caching-middleware"].status == "failed"  # no test ran for it
    assert "no graded test" in (criteria["caching-middleware"].message or "")
    assert criteria["redis"].status == "not graded"
    assert not result.passed


def test_skipped_tests_make_a_skipped_criterion_with_the_reason() -> None:
    report = {"tests": [report_test(A, "skipped", "Redis is not running")]}
    criteria, _ = result_of(run(report, {A: ["ttl"]}))
    assert (criteria["ttl"].status, criteria["ttl"].message) == ("skipped", "Redis is not running")


def test_a_shared_app_error_is_reported_once() -> None:
    mapping = {A: ["ttl"], B: ["invalidation"]}
    report = {"tests": [report_test(n, "error", "cannot import", app_error=True) for n in (A, B)]}
    _, result = result_of(run(report, mapping))
    assert result.app_error == "cannot import"


def test_a_killed_run_keeps_finished_results_and_explains_the_rest() -> None:
    mapping = {A: ["ttl"], B: ["invalidation"], C: ["cache-headers"]}
    progress = [
        {"nodeid": A, "when": "call", "outcome": "passed", "duration": 0.1, "message": None},
        {"nodeid": B, "when": "call", "outcome": "failed", "duration": 0.1, "message": "stale"},
    ]
    criteria, _ = result_of(run(None, mapping, timed_out=True, progress=progress))
    assert criteria["ttl"].status == "passed"
    assert criteria["invalidation"].message == "stale"
    assert criteria["cache-headers"].status == "failed"
    assert "stopped the checks after 30 s" in (criteria["cache-headers"].message or "")


def test_a_criteria_filter_keeps_only_those_criteria() -> None:
    mapping = {A: ["ttl"]}
    child = run({"tests": [report_test(A, "passed")]}, mapping)
    result = build_result(
        EXERCISE, app="x", run=child, timeout=30, started_at="now", criteria=("ttl",)
    )
    assert [(c.id, c.status) for c in result.criteria] == [("ttl", "passed")]
    assert result.passed


def test_a_filtered_run_passes_only_if_every_selected_criterion_passes() -> None:
    child = run({"tests": [report_test(A, "failed", "20 store operations")]}, {A: ["stampede"]})
    result = build_result(
        EXERCISE, app="x", run=child, timeout=30, started_at="now", criteria=("stampede",)
    )
    assert result.selected == ["stampede"]
    assert not result.passed  # a stretch goal decides a run that asked only about it
