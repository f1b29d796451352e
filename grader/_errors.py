"""Exceptions that carry a message meant for the learner, not a traceback."""

from __future__ import annotations


class GraderError(Exception):
    """A usage or set-up problem of the grader itself (exit code 2)."""


class AppProblem(Exception):
    """The learner's app could not be loaded, started or reached; the text says why."""
