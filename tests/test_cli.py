"""The `grade` command's surface: usage errors, listing, linting, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GRADE = str(Path(sys.executable).parent / "grade")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRADE, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_is_exit_0_and_names_the_commands() -> None:
    done = run("--help")
    assert done.returncode == 0
    for text in ("grade 10.1", "--solution", "--app", "grade list", "grade check"):
        assert text in done.stdout


def test_help_imports_neither_rich_nor_pytest() -> None:
    """`grade --help` stays instant because the heavy imports wait for a real command."""
    probe = (
        "import sys\nfrom grader.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('rich', 'pytest', 'httpx', 'fastapi') if m in sys.modules]\n"
        "sys.stderr.write(repr(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stderr.strip() == "[]"


def test_no_arguments_is_a_usage_error() -> None:
    done = run()
    assert done.returncode == 2
    assert "name an exercise" in done.stderr


def test_unknown_exercise_is_exit_2_with_the_known_ones() -> None:
    done = run("9.9")
    assert done.returncode == 2
    assert "No exercise '9.9'" in done.stderr and "known: 10.1" in done.stderr
    assert "Traceback" not in done.stderr


def test_app_and_solution_together_is_a_usage_error() -> None:
    done = run("10.1", "--app", "x", "--solution")
    assert done.returncode == 2
    assert "not allowed with argument" in done.stderr


def test_list_shows_every_criterion() -> None:
    done = run("list")
    assert done.returncode == 0
    for criterion in ("caching-middleware", "cache-control", "stampede"):
        assert criterion in done.stdout


def test_check_passes_on_the_shipped_course() -> None:
    done = run("check")
    assert done.returncode == 0, done.stdout
    assert "grade check: ok" in done.stdout


def test_check_fails_with_exit_1_on_a_broken_course(tmp_path: Path, root: Path) -> None:
    import shutil

    shutil.copytree(root / "exercises", tmp_path / "exercises")
    toml = tmp_path / "exercises" / "10.1-response-caching" / "exercise.toml"
    toml.write_text(toml.read_text() + '\n[[criteria]]\nid = "x"\nkind = "stretch"\n'
                    'title = "Untested"\nhint = "h"\n')  # fmt: skip
    done = run("check", "--course-dir", str(tmp_path))
    assert done.returncode == 1
    assert "criterion 'x' has no graded test" in done.stdout


def test_unknown_criterion_is_exit_2_with_the_known_ones() -> None:
    done = run("10.1", "--criterion", "nope")
    assert done.returncode == 2
    assert "no criterion 'nope'" in done.stderr and "caching-middleware" in done.stderr


@pytest.mark.parametrize("option", ["--timeout", "--request-timeout"])
def test_a_bound_that_is_not_positive_is_a_usage_error(option: str, tmp_path: Path) -> None:
    done = run("10.1", option, "0", cwd=tmp_path)
    assert done.returncode == 2
    assert f"{option} must be a number of seconds > 0" in done.stderr
    assert not (tmp_path / ".grade").exists()


def test_an_env_item_without_a_value_is_a_usage_error(tmp_path: Path) -> None:
    done = run("10.1", "--env", "DATABASE_URL", cwd=tmp_path)
    assert done.returncode == 2
    assert "--env 'DATABASE_URL': expected KEY=VALUE" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / ".grade").exists()


def test_env_settings_reach_the_app_in_every_check(tmp_path: Path, root: Path) -> None:
    """A setting the app rejects at startup, given with --env, fails every check with the
    app's own error: proof that it reached create_app()."""
    args = ["--solution", "--criterion", "ttl", "--no-report", "--app-path", str(root)]
    done = run("10.1", *args, "--env", "DATABASE_URL=mysql://elsewhere", cwd=tmp_path)
    assert done.returncode == 1
    assert "The app did not start" in done.stdout and "ValidationError" in done.stdout
