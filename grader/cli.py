"""The `grade` command: a thin layer over the `grader` API.

Exit codes: 0 every required criterion passes (or the command succeeded), 1 some required
criterion fails (or `grade check` found problems), 2 a usage or grader error.
Heavy imports (rich, the runner) wait until a command needs them, so `grade --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import GraderError

if TYPE_CHECKING:
    from ._catalog import Course

DESCRIPTION = """\
Grade a Module 10 exercise against your app, criterion by criterion.

  grade 10.1               grade exercise 10.1 against ./starter_app
  grade 10.1 --app myapp   grade another app package (found in the current folder)
  grade 10.1 --solution    grade the reference solution
  grade list               list the exercises and their criteria
  grade check              lint the course (for course authors)
"""


def _grade_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grade",
        usage="grade EXERCISE [options] | grade list | grade check",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("exercise", help="exercise id, e.g. 10.1")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--app", metavar="PKG", help="app package to grade (default: starter_app)")
    which.add_argument("--solution", action="store_true", help="grade the reference solution")
    parser.add_argument(
        "--app-path", metavar="DIR", help="folder the app package is imported from (default: .)"
    )
    parser.add_argument(
        "--criterion",
        metavar="ID",
        action="append",
        default=[],
        help="grade only this criterion (repeatable; see `grade list`)",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    parser.add_argument(
        "--report-dir",
        metavar="DIR",
        default=".grade/reports",
        help="where the JSON report is saved (default: .grade/reports)",
    )
    parser.add_argument("--no-report", action="store_true", help="do not save a JSON report")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="bound on the whole run (default: the exercise's, 180 s for most)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds a request may take before it counts as hung (5)",
    )
    _add_course_dir(parser)
    return parser


def _add_course_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--course-dir", metavar="DIR", help=argparse.SUPPRESS)


def _simple_parser(command: str, help_text: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"grade {command}", description=help_text)
    _add_course_dir(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args and args[0] == "list":
            return _list(
                _simple_parser("list", "List the exercises and their criteria.").parse_args(
                    args[1:]
                )
            )
        if args and args[0] == "check":
            return _check(_simple_parser("check", "Lint the course.").parse_args(args[1:]))
        if not args:
            _grade_parser().print_usage(sys.stderr)
            print(
                "grade: error: name an exercise, e.g. `grade 10.1` (see `grade list`)",
                file=sys.stderr,
            )
            return 2
        parser = _grade_parser()
        parsed = parser.parse_args(args)
        for name in ("timeout", "request_timeout"):
            value = getattr(parsed, name)
            if value is not None and value <= 0:
                parser.error(f"--{name.replace('_', '-')} must be a number of seconds > 0")
        return _grade(parsed)
    except GraderError as exc:
        print(f"grade: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("grade: interrupted", file=sys.stderr)
        return 130


def _course(args: argparse.Namespace) -> Course:
    from ._catalog import load_course

    return load_course(Path(args.course_dir) if args.course_dir else None)


def _grade(args: argparse.Namespace) -> int:
    from ._api import grade, save_report

    result = grade(
        args.exercise,
        app=args.app,
        solution=args.solution,
        app_path=args.app_path,
        criteria=args.criterion,
        course=_course(args),
        timeout=args.timeout,
        request_timeout=args.request_timeout,
    )
    report_path = None if args.no_report else save_report(result, args.report_dir)
    if args.format == "json":
        from ._render import to_json

        sys.stdout.write(to_json(result))
    else:
        from rich.console import Console

        from ._render import checklist

        Console(highlight=False).print(checklist(result, report_path=report_path))
    return 0 if result.passed else 1


def _list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    for exercise in _course(args).exercises:
        table = Table(title=f"{exercise.id} · {exercise.title}", title_justify="left", box=None)
        for column in ("criterion", "kind", "points", "title"):
            table.add_column(column, style="dim" if column == "kind" else None)
        for c in exercise.criteria:
            kind = c.kind if c.graded else f"{c.kind}, not graded yet"
            table.add_row(c.id, kind, str(c.points), c.title)
        console.print(table, "")
    return 0


def _check(args: argparse.Namespace) -> int:
    from ._lint import lint_course

    course = _course(args)
    problems = lint_course(course)
    for problem in problems:
        print(f"✗ {problem}")
    criteria = sum(len(e.criteria) for e in course.exercises)
    if problems:
        print(f"grade check: {len(problems)} problem(s) in {len(course.exercises)} exercise(s)")
        return 1
    print(f"grade check: ok ({len(course.exercises)} exercise(s), {criteria} criteria)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
