"""The catalog loads the course, finds exercises, and `grade check` finds each defect."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from grader import GraderError, load_course
from grader._lint import lint_course


def test_the_course_loads_with_exercise_10_1() -> None:
    course = load_course()
    exercise = course.find("10.1")
    assert exercise is course.find("response-caching") is course.find("10.1-response-caching")
    required = [c.id for c in exercise.criteria if c.kind == "required"]
    assert required == [
        "caching-middleware",
        "ttl",
        "invalidation",
        "cache-headers",
        "cache-control",
        "configuration",
    ]
    assert all(c.hint and c.title for c in exercise.criteria)


def test_the_shipped_course_is_lint_clean() -> None:
    assert lint_course(load_course()) == []


def test_unknown_exercise_is_a_clear_error() -> None:
    with pytest.raises(GraderError, match=r"No exercise '9\.9'.*known: 10\.1"):
        load_course().find("9.9")


@pytest.fixture
def course_copy(tmp_path: Path, root: Path) -> Path:
    """A private copy of the course to break on purpose."""
    shutil.copytree(root / "exercises", tmp_path / "exercises")
    return tmp_path


def exercise_dir(course: Path) -> Path:
    return course / "exercises" / "10.1-response-caching"


def test_lint_reports_each_kind_of_defect(course_copy: Path) -> None:
    folder = exercise_dir(course_copy)
    toml = folder / "exercise.toml"
    text = toml.read_text()
    # a duplicate id, and a graded criterion that no test checks
    text += '\n[[criteria]]\nid = "ttl"\nkind = "stretch"\ntitle = "Twice"\nhint = "h"\n'
    text += '\n[[criteria]]\nid = "orphan"\nkind = "stretch"\ntitle = "No test"\nhint = "h"\n'
    toml.write_text(text)
    (folder / "tests" / "test_extra.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.criterion('no-such-criterion')\n"
        "def test_unknown():\n    pass\n\n"
        "def test_unmarked():\n    pass\n"
    )
    readme = folder / "README.md"
    readme.write_text(readme.read_text().replace("`cache-headers`", "cache headers"))

    problems = "\n".join(lint_course(load_course(course_copy)))

    assert "criterion id 'ttl' is declared 2 times" in problems
    assert "criterion 'orphan' has no graded test" in problems
    assert "names unknown criterion 'no-such-criterion'" in problems
    assert "test_unmarked has no @pytest.mark.criterion" in problems
    assert "criterion 'cache-headers' is not mentioned in README.md" in problems
    assert "criterion 'orphan' is not mentioned in README.md" in problems


def test_lint_reports_an_ungraded_criterion_that_has_tests(course_copy: Path) -> None:
    toml = exercise_dir(course_copy) / "exercise.toml"
    text = toml.read_text().replace('id = "ttl"\n', 'id = "ttl"\ngraded = false\n')
    toml.write_text(text)
    assert lint_course(load_course(course_copy)) == [
        "10.1: criterion 'ttl' has tests but is marked graded = false"
    ]


def test_a_broken_exercise_toml_is_a_clear_error(course_copy: Path) -> None:
    toml = exercise_dir(course_copy) / "exercise.toml"
    toml.write_text(toml.read_text().replace('kind = "required"', 'kind = "mandatory"', 1))
    with pytest.raises(GraderError, match="kind must be one of required, stretch"):
        load_course(course_copy)
    toml.write_text("id = [unclosed")
    with pytest.raises(GraderError, match=r"exercise\.toml"):
        load_course(course_copy)


def test_a_missing_exercises_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GraderError, match="No exercises folder"):
        load_course(tmp_path)


def test_an_exercise_may_bound_its_own_run_and_name_what_the_starter_passes() -> None:
    shutdown = load_course().find("10.3")
    assert shutdown.timeout_seconds > load_course().find("10.1").timeout_seconds == 180
    assert {c.id for c in shutdown.criteria if c.starter_passes} == {"stop-accepting", "in-flight"}


@pytest.mark.parametrize("value", ["0", "-5", '"soon"', "true"])
def test_a_timeout_that_is_not_a_positive_number_is_a_clear_error(
    course_copy: Path, value: str
) -> None:
    toml = exercise_dir(course_copy) / "exercise.toml"
    toml.write_text(f"timeout_seconds = {value}\n" + toml.read_text())
    with pytest.raises(GraderError, match="timeout_seconds must be a number of seconds > 0"):
        load_course(course_copy)
