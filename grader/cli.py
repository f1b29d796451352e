"""The `grade` command: a thin layer over the `grader` API.

Exit codes: 0 every required criterion passes (or the command succeeded), 1 some required
criterion fails (or `grade check` found problems, or `grade cluster` could not start the
app), 2 a usage or grader error (a balancer port in use, say).
Heavy imports (rich, the runner) wait until a command needs them, so `grade --help` is instant.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
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
  grade cluster            run the app as 3 instances behind a load balancer (10.4)
"""

CLUSTER_DESCRIPTION = """\
Run the app as N instances behind a round-robin load balancer, until Ctrl-C.

Each instance is `python -m PKG` on a free loopback port with INSTANCE_ID=instance-<i>;
the balancer is nginx where it is installed (or at GRADE_NGINX), else the grader's
built-in proxy. Every process is stopped when you press Ctrl-C (or send SIGTERM).

  grade cluster                          ./starter_app, 3 instances, balancer on :8080
  grade cluster --solution -n 2 --port 9000
  grade cluster --env STORE_LATENCY_MS=20 --env REDIS_URL=redis://127.0.0.1:6379/0
"""
ENV_ITEM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def _grade_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grade",
        usage="grade EXERCISE [options] | grade list | grade check | grade cluster [options]",
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
    parser.add_argument(
        "--env",
        metavar="KEY=VALUE",
        action="extend",
        nargs="+",
        default=[],
        help="a setting for the app in every check, unless the check sets it itself "
        "(repeatable), e.g. --env DATABASE_URL=postgresql://...",
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


def _cluster_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grade cluster",
        description=CLUSTER_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--app", metavar="PKG", help="app package to run (default: starter_app)")
    which.add_argument("--solution", action="store_true", help="run the reference solution")
    parser.add_argument(
        "--app-path", metavar="DIR", help="folder the app package is imported from (default: .)"
    )
    parser.add_argument(
        "-n", "--instances", type=int, default=3, metavar="N", help="how many instances (3)"
    )
    parser.add_argument("--port", type=int, default=8080, help="the balancer's port (8080)")
    parser.add_argument(
        "--balancer",
        choices=("auto", "nginx", "builtin"),
        default="auto",
        help="auto (default): nginx where installed, else the built-in proxy",
    )
    parser.add_argument(
        "--env",
        metavar="KEY=VALUE",
        action="extend",
        nargs="+",
        default=[],
        help="a setting for every instance (repeatable)",
    )
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="the instances' working folder, where the logs go (default: a new temporary one)",
    )
    return parser


def _parse_cluster(args: list[str]) -> argparse.Namespace:
    parser = _cluster_parser()
    parsed = parser.parse_args(args)
    if not 1 <= parsed.instances <= 64:
        parser.error(f"-n/--instances must be between 1 and 64, not {parsed.instances}")
    if not 1 <= parsed.port <= 65535:
        parser.error(f"--port must be between 1 and 65535, not {parsed.port}")
    _check_env_items(parser, parsed.env)
    return parsed


def _check_env_items(parser: argparse.ArgumentParser, items: list[str]) -> None:
    for item in items:
        if not ENV_ITEM.match(item):
            parser.error(f"--env {item!r}: expected KEY=VALUE, e.g. --env STORE_LATENCY_MS=20")


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
        if args and args[0] == "cluster":
            return _cluster(_parse_cluster(args[1:]))
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
        _check_env_items(parser, parsed.env)
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
        app_env=dict(item.split("=", 1) for item in args.env),
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


def _cluster(args: argparse.Namespace) -> int:
    """Start the cluster, say where everything is, and keep it up until interrupted."""
    import signal

    from ._api import DEFAULT_APP, SOLUTION_APP
    from ._cluster import Cluster
    from ._errors import AppProblem

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops it as Ctrl-C does: through the cleanup

    package = SOLUTION_APP if args.solution else (args.app or DEFAULT_APP)
    app_path = Path(args.app_path or ".").resolve()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="grade-cluster-")).resolve()
    settings = dict(item.split("=", 1) for item in args.env)
    # The instances run in `workdir`, so the package is found through PYTHONPATH.
    path = os.pathsep.join(filter(None, [str(app_path), os.environ.get("PYTHONPATH")]))
    cluster = Cluster(
        package,
        cwd=workdir,
        n=args.instances,
        env={"PYTHONPATH": path, **settings},
        balancer=args.balancer,
        port=args.port,
    )
    # SIGINT too, explicitly: a shell starts a background job with SIGINT ignored, and
    # Python then never raises KeyboardInterrupt. SIGHUP: the terminal went away.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    try:
        print(f"grade cluster: starting {args.instances} instance(s) of {package}...", flush=True)
        cluster.start()
        print(cluster.describe())
        print(f"Load balancer: {cluster.base_url} (responses say who served in X-Instance-Id)")
        print(f"Working folder: {workdir}")
        print("Press Ctrl-C to stop everything.", flush=True)
        while True:
            time.sleep(0.5)
            for line in cluster.exits():
                print(f"grade cluster: {line}", flush=True)
            front = cluster.balancer_process
            if front is not None and not front.alive:
                print("grade cluster: the balancer is gone; stopping", file=sys.stderr)
                return 1
    except AppProblem as exc:
        print(f"grade cluster: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        cluster.kill()
    print("grade cluster: stopped; the balancer and every instance are gone", flush=True)
    return 0


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
