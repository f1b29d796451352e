"""The 10.4 document checks: the reference's SCALING.md passes each topic, and a document
that only looks the part (empty headings, a heading over one sentence, one word repeated,
missing terms) fails with a message that says what is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "exercises" / "10.4-horizontal-scaling" / "tests"))
import doccheck  # noqa: E402  (the graded suite's own module, not a package)

# Forty-odd different words, for a section long enough that only its terms are judged.
PROSE = (
    "Every instance of the service answers requests on its own port while the balancer "
    "in front spreads them evenly; each one must find the same data whichever process "
    "handles a given call, otherwise clients notice gaps, errors and odd behaviour during "
    "ordinary deploys, restarts or sudden bursts of traffic from many different places."
)
REFERENCE = (ROOT / "solutions" / "app" / doccheck.DOCUMENT).read_text(encoding="utf-8")
TOPICS = [
    *doccheck.BOTTLENECKS,
    doccheck.SHARED_STATE,
    doccheck.RECOMMENDATIONS,
    doccheck.STICKY_ALTERNATIVES,
    doccheck.CAPACITY_PLANNING,
    doccheck.AUTOSCALING,
]


@pytest.mark.parametrize("topic", TOPICS, ids=lambda t: t.name)
def test_the_reference_document_covers_the_topic(topic: doccheck.Topic) -> None:
    assert topic.problems(doccheck.sections(REFERENCE)) == []


def test_sections_nest_and_skip_headings_in_code() -> None:
    found = doccheck.sections(
        "# Top\nintro\n## A\nalpha\n```\n# not a heading\n```\n### A.1\ndeep\n## B\nbeta\n"
    )
    assert [(s.level, s.title) for s in found] == [(1, "Top"), (2, "A"), (3, "A.1"), (2, "B")]
    a = found[1]
    assert "alpha" in a.body and "deep" in a.body and "beta" not in a.body
    assert "# not a heading" in a.body


@pytest.mark.parametrize("topic", TOPICS, ids=lambda t: t.name)
def test_an_empty_heading_fails(topic: doccheck.Topic) -> None:
    document = doccheck.sections(f"{topic.example}\n\n## Next\nmore text here\n")
    [problem] = topic.problems(document)
    assert "has 0 words" in problem and topic.example.lstrip("# ") in problem


def test_a_missing_section_is_named_with_an_example_heading() -> None:
    [problem] = doccheck.SHARED_STATE.problems(doccheck.sections("# Scaling\nnothing\n"))
    assert problem == (
        "no section on the shared state (each piece of state and where it lives)"
        ' (a heading such as "## Shared state")'
    )


def test_one_word_repeated_is_not_an_explanation() -> None:
    text = "## Session state\n" + "redis memory " * 40
    [problem] = doccheck.BOTTLENECKS[3].problems(doccheck.sections(text))
    assert "it needs at least 40" in problem


def test_a_section_without_a_fix_says_so() -> None:
    text = f"## Session state\nThe sessions are lost when the process restarts. {PROSE}\n"
    problems = doccheck.BOTTLENECKS[3].problems(doccheck.sections(text))
    assert problems == [
        'the section "Session state" does not mention a fix (Redis, a shared session store,'
        " signed stateless tokens, JWT)"
    ]


def test_recommendations_need_three_substantial_items_on_three_topics() -> None:
    text = (
        f"## Recommendations\n{PROSE}\n- use a load balancer with health checks\n"
        "- short\n- keep instances stateless and simple\n"
    )
    problems = doccheck.RECOMMENDATIONS.problems(doccheck.sections(text))
    assert problems == [
        'the section "Recommendations" has 2 list items or table rows of at least 5 words;'
        " it needs 3",
    ]


def test_figures_with_units_are_found() -> None:
    section = doccheck.sections(
        "## Capacity\n1 instance: 410 requests/s at 12 ms; 3 instances: 1.8x, 95 % CPU.\n"
    )[0]
    assert doccheck.figures(section) == ["1 instance", "410 requests/s", "12 ms",
                                         "3 instances", "1.8x", "95 %"]  # fmt: skip
