"""A broken learner app never crashes the grader: each case ends in a clear checklist,
within a time bound, with no process left behind."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from grader import GradeResult, grade
from grader._render import render_text

from ._support import write_package

pytestmark = pytest.mark.slow


def required(result: GradeResult) -> list:
    return [c for c in result.criteria if c.kind == "required"]


def grade_package(tmp_path: Path, name: str, files: dict[str, str], **options) -> GradeResult:
    write_package(tmp_path, name, files)
    started = time.monotonic()
    result = grade("10.1", app=name, app_path=tmp_path, **options)
    assert time.monotonic() - started < 90, "grading a broken app must stay time-bounded"
    text = render_text(result)
    assert all(c.status == "failed" for c in required(result)), text
    assert not result.passed
    return result


def assert_app_error(result: GradeResult, *fragments: str) -> None:
    assert result.app_error is not None, render_text(result)
    assert "\n" not in result.app_error, "the cause must fit on one line"
    for fragment in fragments:
        assert fragment in result.app_error
    for criterion in required(result):
        assert criterion.message == result.app_error
    assert result.app_error in render_text(result, width=300)


def test_syntax_error(tmp_path: Path) -> None:
    result = grade_package(tmp_path, "syntaxapp", {"__init__.py": "def create_app(:\n    pass\n"})
    assert_app_error(result, "syntaxapp has a syntax error", "syntaxapp/__init__.py, line 1")


def test_import_error(tmp_path: Path) -> None:
    files = {"__init__.py": "from .main import create_app\n", "main.py": "import no_such_lib_xyz\n"}
    result = grade_package(tmp_path, "importapp", files)
    assert_app_error(result, "Importing importapp failed", "No module named 'no_such_lib_xyz'")


def test_missing_package(tmp_path: Path) -> None:
    result = grade("10.1", app="not_here_app", app_path=tmp_path)
    assert_app_error(result, "No app package named 'not_here_app'")


def test_missing_create_app(tmp_path: Path) -> None:
    result = grade_package(tmp_path, "nofactory", {"__init__.py": "app = None\n"})
    assert_app_error(result, "nofactory has no create_app(settings=None) function")


def test_app_that_fails_at_startup(tmp_path: Path) -> None:
    source = """
        from contextlib import asynccontextmanager
        from fastapi import FastAPI

        @asynccontextmanager
        async def lifespan(app):
            raise RuntimeError("database unreachable")
            yield

        def create_app(settings=None):
            return FastAPI(lifespan=lifespan)
    """
    result = grade_package(tmp_path, "startupapp", {"__init__.py": source})
    assert_app_error(result, "startup", "RuntimeError: database unreachable")


def test_endpoint_that_hangs(tmp_path: Path) -> None:
    source = """
        import asyncio
        from fastapi import FastAPI

        def create_app(settings=None):
            app = FastAPI()

            @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
            async def hang(path: str):
                await asyncio.sleep(3600)

            return app
    """
    result = grade_package(tmp_path, "hangapp", {"__init__.py": source}, request_timeout=0.5)
    for criterion in required(result):
        assert "expected: to finish within 0.5 s" in (criterion.message or ""), criterion


def process_alive(marker: str) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


def test_app_that_blocks_its_event_loop_and_spawns_a_process(tmp_path: Path) -> None:
    """The worst case: the loop is blocked (no timeout inside the app can fire), the run
    outlives its time bound, and the app started a process of its own."""
    marker = f"grader-orphan-check-{uuid.uuid4().hex}"
    source = f"""
        import subprocess, sys, time
        from fastapi import FastAPI

        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "{marker}"])

        def create_app(settings=None):
            app = FastAPI()

            @app.api_route("/{{path:path}}", methods=["GET", "POST", "PUT", "DELETE"])
            async def block(path: str):
                time.sleep(3600)

            return app
    """
    result = grade_package(
        tmp_path, "blockapp", {"__init__.py": source}, request_timeout=0.5, timeout=4
    )
    messages = [c.message or "" for c in required(result)]
    assert any("expected: to finish within 0.5 s" in m for m in messages), messages
    assert any("stopped the checks after 4 s" in m for m in messages), messages
    assert not process_alive(marker), "a process started by the app outlived the grading run"
