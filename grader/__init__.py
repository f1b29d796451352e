"""The Module 10 grader: grade an exercise against an app, criterion by criterion.

    from grader import grade
    result = grade("10.1")                  # the starter app in the current folder
    result = grade("10.1", solution=True)   # the reference app
    result.passed, result.summary

The `grade` command is a thin layer over this API.
"""

from ._api import grade, save_report
from ._catalog import Course, Criterion, Exercise, load_course
from ._errors import GraderError
from ._results import SCHEMA_VERSION, CriterionResult, GradeResult, TestOutcome

__all__ = [
    "SCHEMA_VERSION",
    "Course",
    "Criterion",
    "CriterionResult",
    "Exercise",
    "GradeResult",
    "GraderError",
    "TestOutcome",
    "grade",
    "load_course",
    "save_report",
]
