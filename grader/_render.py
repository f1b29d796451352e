"""Renderers: the only part of the grader that knows about rich or output formats."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console, Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from ._results import CriterionResult, GradeResult

MARKS = {
    "passed": ("✓", "green"),
    "failed": ("✗", "red"),
    "skipped": ("–", "yellow"),
    "not graded": ("○", "dim"),
}


def checklist(result: GradeResult, *, report_path: Path | None = None) -> Group:
    """The learner's checklist: required criteria, stretch goals, then a summary."""
    parts: list[Table | Text | Padding] = [
        Text.assemble(
            (f"Exercise {result.exercise} · {result.exercise_title}", "bold"),
            ("   app: ", "dim"),
            (result.app, "cyan"),
        )
    ]
    if result.app_error:
        parts.append(
            Padding(
                Text.assemble(
                    ("The app did not start, so no check could run:\n", "bold red"),
                    result.app_error,
                ),
                (1, 0, 0, 2),
            )
        )
    id_width = max((len(c.id) for c in result.criteria), default=0)  # one column for both
    for kind, heading in (("required", "Required"), ("stretch", "Stretch goals (bonus)")):
        rows = [c for c in result.criteria if c.kind == kind]
        if rows:
            parts.append(Text(f"\n{heading}", style="bold underline"))
            parts.append(_criteria_table(rows, id_width, show_details=not result.app_error))
    parts.append(_summary(result, report_path))
    return Group(*parts)


def _criteria_table(rows: list[CriterionResult], id_width: int, *, show_details: bool) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(width=2)
    table.add_column(no_wrap=True, min_width=id_width)
    table.add_column(ratio=1)
    for criterion in rows:
        mark, style = MARKS[criterion.status]
        title = Text(criterion.title)
        if criterion.status in ("skipped", "not graded"):
            title.append(f"  ({criterion.status})", style="dim")
        table.add_row(Text(mark, style=style), Text(criterion.id, style=style), title)
        if criterion.status in ("failed", "skipped") and criterion.message and show_details:
            table.add_row("", "", Text(criterion.message, style="default"))
        if criterion.status == "failed":
            table.add_row("", "", Text.assemble(("hint: ", "bold yellow"), criterion.hint))
    return table


def _summary(result: GradeResult, report_path: Path | None) -> Text:
    s = result.summary
    text = Text("\n")
    text.append(f"{s.required_passed}/{s.required_total} required", style="bold")
    text.append(f" · {s.stretch_passed}/{s.stretch_total} stretch")
    text.append(f" · {s.points}/{s.max_points} points")
    if s.max_bonus_points:
        text.append(f" + {s.bonus_points}/{s.max_bonus_points} bonus")
    text.append(f" · {result.duration:.1f} s\n")
    if result.selected is not None:
        failing = sum(not c.passed for c in result.criteria)
        if failing:
            text.append(f"{failing} of the selected criteria to go.", style="bold red")
        else:
            text.append("Every selected criterion passes.", style="bold green")
    elif result.passed:
        text.append("Exercise complete: every required criterion passes.", style="bold green")
    else:
        failing = s.required_total - s.required_passed
        text.append(
            f"Not done yet: {failing} required criteri{'on' if failing == 1 else 'a'} to go.",
            style="bold red",
        )
    if report_path is not None:
        text.append(f"\nReport saved to {report_path}", style="dim")
    return text


def render_text(result: GradeResult, *, width: int = 100, report_path: Path | None = None) -> str:
    """The checklist as plain text (no colour): for golden files and non-terminals."""
    # force_jupyter=False: inside a notebook rich would display instead of writing to `file`.
    console = Console(
        file=io.StringIO(), width=width, color_system=None, highlight=False, force_jupyter=False
    )
    console.print(checklist(result, report_path=report_path))
    text: str = console.file.getvalue()  # type: ignore[attr-defined]
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def to_json(result: GradeResult) -> str:
    return json.dumps(result.to_dict(), indent=2) + "\n"
