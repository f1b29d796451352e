"""The results model: what a grading run found, independent of how it is shown.

Renderers (terminal, JSON, later HTML and exports) read these dataclasses; nothing here
knows about pytest or rich. `GradeResult.to_dict()` is the saved JSON report, versioned by
`SCHEMA_VERSION`: bump it when a field changes meaning or disappears.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 1

TestStatus = Literal["passed", "failed", "skipped", "not run"]
CriterionStatus = Literal["passed", "failed", "skipped", "not graded"]


@dataclass
class TestOutcome:
    __test__ = False  # a result, not a pytest test class
    nodeid: str
    name: str
    status: TestStatus
    duration: float = 0.0
    message: str | None = None


@dataclass
class CriterionResult:
    id: str
    title: str
    kind: Literal["required", "stretch"]
    points: int
    hint: str
    status: CriterionStatus
    message: str | None = None
    tests: list[TestOutcome] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return sum(t.duration for t in self.tests)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class Summary:
    required_passed: int
    required_total: int
    stretch_passed: int
    stretch_total: int
    points: int  # from required criteria
    max_points: int
    bonus_points: int  # from stretch goals
    max_bonus_points: int


@dataclass
class GradeResult:
    exercise: str
    exercise_title: str
    app: str
    started_at: str
    duration: float
    criteria: list[CriterionResult]
    # Set when the app could not be loaded or started at all: one cause for every failure.
    app_error: str | None = None
    # The criterion ids a run was limited to (`grade --criterion`); None: the whole exercise.
    selected: list[str] | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def summary(self) -> Summary:
        required = [c for c in self.criteria if c.kind == "required"]
        stretch = [c for c in self.criteria if c.kind == "stretch" and c.status != "not graded"]
        return Summary(
            required_passed=sum(c.passed for c in required),
            required_total=len(required),
            stretch_passed=sum(c.passed for c in stretch),
            stretch_total=len(stretch),
            points=sum(c.points for c in required if c.passed),
            max_points=sum(c.points for c in required),
            bonus_points=sum(c.points for c in stretch if c.passed),
            max_bonus_points=sum(c.points for c in stretch),
        )

    @property
    def passed(self) -> bool:
        """Every required criterion passes: the exercise is done (stretch goals are bonus).

        A run limited to some criteria passes when each of those passes, stretch or not.
        """
        if self.selected is not None:
            return all(c.passed for c in self.criteria)
        return all(c.passed for c in self.criteria if c.kind == "required")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for criterion, raw in zip(self.criteria, data["criteria"], strict=True):
            raw["duration"] = round(criterion.duration, 3)
        data["summary"] = asdict(self.summary)
        data["passed"] = self.passed
        return {"schema_version": data.pop("schema_version"), **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GradeResult:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"report schema version {version!r}; this grader reads {SCHEMA_VERSION}"
            )
        criteria = [
            CriterionResult(
                **{k: v for k, v in raw.items() if k not in ("tests", "duration")},
                tests=[TestOutcome(**t) for t in raw["tests"]],
            )
            for raw in data["criteria"]
        ]
        fields = {
            k: data[k] for k in ("exercise", "exercise_title", "app", "started_at", "duration")
        }
        return cls(
            **fields,
            criteria=criteria,
            app_error=data.get("app_error"),
            selected=data.get("selected"),
        )
