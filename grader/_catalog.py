"""The course catalog: exercises and their criteria, loaded from `exercises/*/exercise.toml`."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ._errors import GraderError

Kind = Literal["required", "stretch"]
KINDS: tuple[Kind, ...] = ("required", "stretch")


@dataclass(frozen=True)
class Criterion:
    id: str
    title: str
    kind: Kind
    points: int
    hint: str
    # False for a stretch goal declared ahead of its checks: shown, but not graded yet.
    graded: bool = True
    # True where the untouched starter passes because its framework already provides the
    # behaviour (uvicorn drains requests on SIGTERM); the README says why the check stays.
    starter_passes: bool = False


@dataclass(frozen=True)
class Exercise:
    id: str
    slug: str
    title: str
    goal: str
    path: Path
    criteria: tuple[Criterion, ...]
    # How long one grading run may take: checks that start server processes need more.
    timeout_seconds: float = 180.0

    @property
    def tests_dir(self) -> Path:
        return self.path / "tests"

    @property
    def readme(self) -> Path:
        return self.path / "README.md"

    def criterion(self, criterion_id: str) -> Criterion:
        for criterion in self.criteria:
            if criterion.id == criterion_id:
                return criterion
        known = ", ".join(c.id for c in self.criteria)
        raise GraderError(f"Exercise {self.id} has no criterion {criterion_id!r} (known: {known})")


@dataclass(frozen=True)
class Course:
    root: Path
    exercises: tuple[Exercise, ...]

    def find(self, key: str) -> Exercise:
        """An exercise by id (`10.1`), slug (`response-caching`) or folder name."""
        for exercise in self.exercises:
            if key in (exercise.id, exercise.slug, exercise.path.name):
                return exercise
        known = ", ".join(e.id for e in self.exercises) or "none"
        raise GraderError(f"No exercise {key!r} in this course (known: {known})")


def default_course_root() -> Path:
    """The project folder that holds `exercises/`, next to the installed grader package."""
    return Path(__file__).resolve().parent.parent


def load_course(root: Path | None = None) -> Course:
    root = (root or default_course_root()).resolve()
    folder = root / "exercises"
    if not folder.is_dir():
        raise GraderError(
            f"No exercises folder at {folder}: install the workbook with `pip install -e .`"
            " from its clone, or pass --course-dir"
        )
    exercises = [_load_exercise(toml) for toml in sorted(folder.glob("*/exercise.toml"))]
    return Course(root, tuple(sorted(exercises, key=lambda e: _id_key(e.id))))


def _id_key(exercise_id: str) -> tuple[int | str, ...]:
    return tuple(int(p) if p.isdigit() else p for p in exercise_id.split("."))


def _load_exercise(toml: Path) -> Exercise:
    try:
        data = tomllib.loads(toml.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GraderError(f"{toml}: {exc}") from None
    where = str(toml)
    criteria = tuple(
        _criterion(raw, f"{where} criterion {n}")
        for n, raw in enumerate(data.get("criteria", []), 1)
    )
    return Exercise(
        id=_text(data, "id", where),
        slug=_text(data, "slug", where),
        title=_text(data, "title", where),
        goal=str(data.get("goal", "")),
        path=toml.parent,
        criteria=criteria,
        timeout_seconds=_positive(data, "timeout_seconds", 180.0, where),
    )


def _criterion(raw: dict[str, Any], where: str) -> Criterion:
    kind = _text(raw, "kind", where)
    if kind not in KINDS:
        raise GraderError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    points = raw.get("points", 1)
    if not isinstance(points, int) or points < 0:
        raise GraderError(f"{where}: points must be a whole number >= 0")
    return Criterion(
        id=_text(raw, "id", where),
        title=_text(raw, "title", where),
        kind=kind,  # type: ignore[arg-type]  # checked against KINDS above
        points=points,
        hint=" ".join(_text(raw, "hint", where).split()),
        graded=bool(raw.get("graded", True)),
        starter_passes=bool(raw.get("starter_passes", False)),
    )


def _positive(data: dict[str, Any], key: str, default: float, where: str) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise GraderError(f"{where}: {key} must be a number of seconds > 0")
    return float(value)


def _text(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise GraderError(f"{where}: missing or empty {key!r}")
    return value.strip()
