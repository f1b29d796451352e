"""The keyword-only Python API behind the `grade` command (and notebooks)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from ._catalog import Course, load_course
from ._results import GradeResult

SOLUTION_APP = "solutions.app"
DEFAULT_APP = "starter_app"
DEFAULT_REQUEST_TIMEOUT = 5.0


def grade(
    exercise: str,
    *,
    app: str | None = None,
    solution: bool = False,
    app_path: str | Path | None = None,
    criteria: Iterable[str] = (),
    course: Course | None = None,
    timeout: float | None = None,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    app_env: Mapping[str, str] | None = None,
) -> GradeResult:
    """Grade one exercise against an app package and return the results.

    `app` names the package to grade (default `starter_app`); `solution=True` grades the
    reference app instead. The package is imported from `app_path` (default: the current
    folder) in a child process, so nothing the app does can break the caller.
    `criteria` limits the run to those criterion ids (default: all of the exercise's).
    `timeout` bounds the whole run (default: the exercise's `timeout_seconds`, 180 unless
    its checks start servers), `request_timeout` each request to the app. `app_env` holds
    settings for the app in every check (`{"DATABASE_URL": ...}`: grade the app as it
    runs on PostgreSQL); a check that sets one of them itself wins.
    """
    from ._runner import grade_exercise

    if app is not None and solution:
        raise ValueError("give either app= or solution=True, not both")
    return grade_exercise(
        course or load_course(),
        exercise,
        app=SOLUTION_APP if solution else (app or DEFAULT_APP),
        app_path=Path(app_path or Path.cwd()).resolve(),
        timeout=timeout,
        request_timeout=request_timeout,
        criteria=tuple(criteria),
        app_env=dict(app_env or {}),
    )


def save_report(result: GradeResult, folder: str | Path) -> Path:
    """Write the JSON report as `<folder>/<exercise>-<app>.json` and return its path."""
    from ._render import to_json

    path = Path(folder) / f"{result.exercise}-{result.app}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(result), encoding="utf-8")
    return path
