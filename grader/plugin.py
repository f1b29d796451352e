"""The grader's pytest plugin, loaded into the child pytest with `-p grader.plugin`.

It gives the graded suites their vocabulary and keeps the learner's app at arm's length:
- the `criterion("<id>")` marker that ties a test to an acceptance criterion;
- the `make_api` / `api` fixtures, which import the app package named by `--grader-app`,
  build an app with `create_app()` under the environment a check asks for, and drive it
  through an `AppClient` that never hangs;
- the `launch_app` fixture, which runs the app as a real server process instead
  (`python -m <package>`, for checks that need signals and exit codes) and kills its whole
  process group when the check ends;
- the `launch_cluster` fixture, which runs it as several such processes behind a load
  balancer (exercise 10.4) and kills them all, and the balancer, when the check ends;
- a learner-facing message for every failed or skipped test, attached to the JSON report
  (pytest-json-report metadata) and streamed to a progress file, so that a run the
  parent had to kill still tells which checks finished.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from ._client import AppClient
from ._cluster import Cluster
from ._errors import AppProblem, GraderError
from ._process import AppProcess
from ._services import postgres_database, redis_server, shared_redis
from .testing import Api

# Fixtures, registered by being here.
__all__ = ["postgres_database", "redis_server", "shared_redis"]

# Checks of admin endpoints need the token; the grader chooses it (contract: ADMIN_TOKEN).
ADMIN_TOKEN = "grader-admin-token"

CRITERION_MARKER = "criterion"
_CLIENTS = pytest.StashKey[list[AppClient]]()
_APP_ROOTS: set[str] = set()  # top-level package names of the apps graded in this process


class AppLoadError(AppProblem):
    """The app package could not be imported or has no usable `create_app`."""


class _GraderState:
    """Per-session state: the app package, its factory (loaded once) and the progress file."""

    def __init__(self, config: pytest.Config) -> None:
        self.app_package: str = config.getoption("grader_app")
        self.timeout: float = config.getoption("grader_request_timeout")
        progress = config.getoption("grader_progress")
        self.progress_path = Path(progress) if progress else None
        criteria_out = config.getoption("grader_criteria_out")
        self.criteria_out = Path(criteria_out) if criteria_out else None
        self._factory: Callable[..., Any] | None = None
        self._load_error: AppLoadError | None = None
        self.abandoned_app = False
        self.exitstatus = 0

    def app_factory(self) -> Callable[..., Any]:
        if self._factory is None and self._load_error is None:
            try:
                self._factory = _load_create_app(self.app_package)
            except AppLoadError as exc:
                self._load_error = exc
        if self._load_error is not None:
            raise self._load_error
        assert self._factory is not None
        return self._factory


_STATE = pytest.StashKey[_GraderState]()


def _load_create_app(package: str) -> Callable[..., Any]:
    """Import `package` and return its `create_app`, turning every failure into one line."""
    _APP_ROOTS.add(package.split(".")[0])
    try:
        module = importlib.import_module(package)
    except SyntaxError as exc:
        where = f"{_short_path(exc.filename)}, line {exc.lineno}" if exc.filename else "?"
        raise AppLoadError(f"{package} has a syntax error: {exc.msg} ({where})") from None
    except ModuleNotFoundError as exc:
        if exc.name == package or package.startswith(f"{exc.name}."):
            raise AppLoadError(
                f"No app package named {package!r}: run grade from the folder that contains it,"
                " or name it with --app"
            ) from None
        raise AppLoadError(f"Importing {package} failed: {_one_line(exc)}") from None
    except BaseException as exc:  # learner code may raise anything, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AppLoadError(f"Importing {package} failed: {_one_line(exc)}") from None
    create_app = getattr(module, "create_app", None)
    if not callable(create_app):
        raise AppLoadError(
            f"{package} has no create_app(settings=None) function: define it in"
            f" {package}/__init__.py (or import it there) and return the FastAPI app"
        )
    return create_app


def _one_line(exc: BaseException) -> str:
    """`ValueError: boom (starter_app/cache.py:12)`: the innermost frame in learner code."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if "site-packages" not in f.filename and "/grader/" not in f.filename]
    where = f" ({_short_path(own[-1].filename)}:{own[-1].lineno})" if own else ""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}{where}" if text else f"{type(exc).__name__}{where}"


def _short_path(filename: str) -> str:
    """`starter_app/cache.py` rather than the absolute path of wherever the copy lives."""
    parts = Path(filename).parts
    roots = {name.split(".")[0] for name in ("starter_app", "solutions", *_APP_ROOTS)}
    for index, part in enumerate(parts):
        if part in roots:
            return "/".join(parts[index:])
    return Path(filename).name


def learner_message(excinfo: pytest.ExceptionInfo[BaseException] | None) -> str | None:
    """The text a learner reads for a failed or skipped test."""
    if excinfo is None:
        return None
    exc = excinfo.value
    if isinstance(exc, AppProblem | GraderError):  # the balancer of a cluster, say
        return str(exc)
    if isinstance(exc, pytest.fail.Exception | pytest.skip.Exception):
        return str(exc.msg)
    if isinstance(exc, AssertionError) and str(exc):
        return str(exc)
    return f"The check stopped on an unexpected {_one_line(exc)}"


# --- hooks ---------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("grader", "Module 10 grader")
    group.addoption(
        "--grader-app",
        default=os.environ.get("GRADER_APP", "starter_app"),
        help="the app package to grade (default: $GRADER_APP or starter_app)",
    )
    group.addoption(
        "--grader-request-timeout",
        type=float,
        default=5.0,
        help="seconds a request (or the app's startup) may take before it counts as hung",
    )
    group.addoption(
        "--grader-criteria",
        default=None,
        help="comma-separated criterion ids: run only the tests of these criteria",
    )
    group.addoption("--grader-progress", default=None, help="append one JSON line per result")
    group.addoption(
        "--grader-criteria-out", default=None, help="write {nodeid: [criteria]} after collection"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{CRITERION_MARKER}(id): the acceptance criterion this test grades"
    )
    config.stash[_STATE] = _GraderState(config)


def criteria_of(item: pytest.Item) -> list[str]:
    return [str(m.args[0]) for m in item.iter_markers(CRITERION_MARKER) if m.args]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = config.getoption("grader_criteria")
    if not wanted:
        return
    selected = set(wanted.split(","))
    keep = [item for item in items if selected & set(criteria_of(item))]
    deselected = [item for item in items if item not in keep]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = keep


def pytest_collection_finish(session: pytest.Session) -> None:
    state = session.config.stash[_STATE]
    if state.criteria_out is not None:
        mapping = {item.nodeid: criteria_of(item) for item in session.items}
        state.criteria_out.write_text(json.dumps(mapping, indent=1))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[None] | Any:
    report = yield
    if report.failed or report.skipped:
        report.grader_message = learner_message(call.excinfo)
        report.grader_app_error = call.excinfo is not None and isinstance(
            call.excinfo.value, AppLoadError
        )
    state = item.config.stash[_STATE]
    if state.progress_path is not None and (report.when == "call" or not report.passed):
        line = {
            "nodeid": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "duration": report.duration,
            "message": getattr(report, "grader_message", None),
            "app_error": getattr(report, "grader_app_error", False),
        }
        with state.progress_path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(line) + "\n")
    return report


@pytest.hookimpl(optionalhook=True)
def pytest_json_runtest_metadata(item: pytest.Item, call: pytest.CallInfo[None]) -> dict[str, Any]:
    """Criteria ids always; for a failure, its message and the last HTTP exchanges."""
    metadata: dict[str, Any] = {"criteria": criteria_of(item)}
    if call.excinfo is not None:
        metadata["message"] = learner_message(call.excinfo)
        metadata["app_error"] = isinstance(call.excinfo.value, AppLoadError)
        clients = item.stash.get(_CLIENTS, [])
        metadata["exchanges"] = [vars(e) for c in clients for e in c.exchanges][-5:]
    return metadata


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_STATE].exitstatus = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # An app that blocked its own threads would keep the interpreter from exiting; every
    # report is written by now, so leave at once rather than wait for it.
    state = config.stash.get(_STATE, None)
    if state is not None and state.abandoned_app:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(state.exitstatus)


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture
def make_api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`make_api(CACHE_ENABLED="false")`: a fresh app built under those settings.

    Settings reach the app the way the contract says they do: as environment variables
    read by `create_app()`. Every app made here is shut down after the test.
    """
    state = request.config.stash[_STATE]
    clients: list[AppClient] = []
    request.node.stash[_CLIENTS] = clients

    def factory(**env: object) -> Api:
        create_app = state.app_factory()
        env.setdefault("ADMIN_TOKEN", ADMIN_TOKEN)
        for name, value in env.items():
            monkeypatch.setenv(name, str(value))
        try:
            app = create_app()
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise AppLoadError(f"create_app() raised {_one_line(exc)}") from None
        try:
            client = AppClient(app, timeout=state.timeout)
        except AppProblem as exc:
            state.abandoned_app = True  # its event loop may still be stuck in the startup
            raise AppLoadError(str(exc)) from None
        clients.append(client)
        return Api(client, admin_token=str(env["ADMIN_TOKEN"]))

    yield factory
    for client in clients:
        client.close()
        state.abandoned_app |= client.abandoned


class AppOutput:
    """Everything the app printed or logged during the check, for log-line checks."""

    def __init__(self, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture):
        self._capfd, self._caplog = capfd, caplog
        self._printed = ""

    def text(self) -> str:
        out, err = self._capfd.readouterr()
        self._printed += out + err
        # Under pytest, records logged through `logging` reach caplog rather than stdout.
        return self._caplog.text + self._printed


@pytest.fixture
def app_output(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> AppOutput:
    """What the app prints (stdout, stderr) and logs (INFO and above) during the check."""
    caplog.set_level(logging.INFO)
    return AppOutput(capfd, caplog)


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    """An app built with the default settings."""
    return make_api()


def _env(settings: Mapping[str, object]) -> dict[str, str]:
    """Settings as environment variables: values through str(), booleans as true/false."""
    return {
        name: ("true" if value else "false") if isinstance(value, bool) else str(value)
        for name, value in settings.items()
    }


@pytest.fixture
def launch_app(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., AppProcess]]:
    """`launch_app(STORE_LATENCY_MS=3000)`: the app under test as a server process
    (`python -m <package>` on a free loopback port), started with those settings as
    environment variables and ready (`GET /health` answered 200).

    ADMIN_TOKEN defaults to the grader's; values go through str(), booleans as
    "true"/"false". `port=` reuses a port (a restart), `start=False` returns the process
    unstarted, `ready_timeout=` bounds the wait for /health. All processes of a check share
    its tmp_path as working folder, so a restart finds the same files (jobs.sqlite3).
    Every process started here is killed, with its whole process group, at teardown,
    whether the check passed or not.
    """
    package = request.config.stash[_STATE].app_package
    launched: list[AppProcess] = []

    def launch(
        *,
        port: int | None = None,
        start: bool = True,
        ready_timeout: float = 30.0,
        **settings: object,
    ) -> AppProcess:
        settings.setdefault("ADMIN_TOKEN", ADMIN_TOKEN)
        app = AppProcess(package, cwd=tmp_path, env=_env(settings), port=port)
        launched.append(app)
        return app.start(ready_timeout=ready_timeout) if start else app

    try:
        yield launch
    finally:
        for app in launched:
            app.kill()  # never raises, so every one is reached


@pytest.fixture
def launch_cluster(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., Cluster]]:
    """`launch_cluster(3, STORE_LATENCY_MS=20)`: the app under test as `n` server
    processes behind a round-robin load balancer (exercise 10.4), started and ready
    (`GET /health` through the balancer answered 200). Each instance answers as
    `INSTANCE_ID=instance-<i>`; `cluster.request(...)` goes through the balancer.

    Settings as for `launch_app` (ADMIN_TOKEN defaults to the grader's, booleans as
    "true"/"false"), shared by every instance; `instance_env=lambda i: {...}` adds
    settings of one instance. `balancer=` is "auto" (nginx where installed, else the
    built-in proxy), "nginx" or "builtin"; `start=False` returns it unstarted;
    `ready_timeout=` bounds each start. The instances share tmp_path as working folder.
    Every cluster started here is killed, balancer and instances with their whole process
    groups, at teardown, whether the check passed or not.
    """
    package = request.config.stash[_STATE].app_package
    launched: list[Cluster] = []

    def launch(
        n: int = 3,
        *,
        balancer: str = "auto",
        instance_env: Callable[[int], Mapping[str, object]] | None = None,
        start: bool = True,
        ready_timeout: float = 30.0,
        **settings: object,
    ) -> Cluster:
        settings.setdefault("ADMIN_TOKEN", ADMIN_TOKEN)
        per_instance = None if instance_env is None else (lambda i: _env(instance_env(i)))
        cluster = Cluster(
            package,
            cwd=tmp_path,
            n=n,
            env=_env(settings),
            instance_env=per_instance,
            balancer=balancer,
        )
        launched.append(cluster)
        return cluster.start(ready_timeout=ready_timeout) if start else cluster

    try:
        yield launch
    finally:
        for cluster in launched:
            cluster.kill()  # never raises, so every one is reached
