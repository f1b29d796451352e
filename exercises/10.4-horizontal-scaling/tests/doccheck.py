"""Structural checks of the scaling document (`SCALING.md` in the app package).

A document cannot be graded for insight, but it can be graded for shape: does it have a
section on each topic, does that section say something (enough words, not one word
repeated), and does it name what the topic must cover (the problem, and a fix)? Each
`Topic` says how to recognise its section (a heading pattern) and the terms its text must
contain; `problems()` returns what is missing in words a learner can act on. An empty
heading, or a heading over a sentence, never passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from grader.testing import fail

DOCUMENT = "SCALING.md"
MIN_WORDS = 40

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
# A list item ("- x", "* x", "1. x") or a table row that is not the |---| separator.
_ITEM = re.compile(r"^\s*(?:[-*+]\s+|\d+[.)]\s+|\|(?!\s*:?-{3,}))(?P<text>.+)$")


@dataclass(frozen=True)
class Section:
    """One heading and the text under it, its subsections included."""

    level: int
    title: str
    body: str

    @property
    def words(self) -> list[str]:
        return _WORD.findall(self.body)

    @property
    def items(self) -> list[str]:
        """The list items and table rows of the body (a table's header row included)."""
        return [m["text"] for line in self.body.splitlines() if (m := _ITEM.match(line))]


def sections(markdown: str) -> list[Section]:
    """Every heading of the document with its body; headings inside code fences ignored."""
    lines = markdown.splitlines()
    heads: list[tuple[int, int, str]] = []  # (line index, level, title)
    fenced = False
    for index, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := _HEADING.match(line)):
            heads.append((index, len(match[1]), match[2]))
    heading_lines = {index for index, _, _ in heads}
    found = []
    for position, (index, level, title) in enumerate(heads):
        end = next((i for i, lvl, _ in heads[position + 1 :] if lvl <= level), len(lines))
        body = "\n".join(lines[i] for i in range(index + 1, end) if i not in heading_lines)
        found.append(Section(level, title, body))
    return found


@dataclass(frozen=True)
class Terms:
    """What a section must mention: `what` in words, and the patterns that count."""

    what: str
    patterns: tuple[str, ...]

    def found_in(self, text: str) -> bool:
        return any(re.search(p, text, re.IGNORECASE) for p in self.patterns)


def terms(what: str, *patterns: str) -> Terms:
    return Terms(what, patterns)


@dataclass(frozen=True)
class Topic:
    """A section the document must have.

    `heading` recognises it (a regex, case-insensitive, searched in the heading's title);
    `example` is a heading to suggest when none matches; every `Terms` of `must_mention`
    must be found in its text; `min_items` asks for a list or table of that many entries.
    """

    name: str
    heading: str
    example: str
    must_mention: tuple[Terms, ...] = ()
    min_words: int = MIN_WORDS
    min_items: int = 0
    item_words: int = 5
    # At least this many of `among` must be mentioned (for "name several of these").
    among: tuple[Terms, ...] = field(default=())
    min_among: int = 0

    def find(self, document: list[Section]) -> Section | None:
        """The best matching section: one that does its job, else the longest."""
        matching = [s for s in document if re.search(self.heading, s.title, re.IGNORECASE)]
        good = [s for s in matching if not self.problems_of(s)]
        return max(good or matching, key=lambda s: len(s.words), default=None)

    def problems(self, document: list[Section]) -> list[str]:
        """What is missing for this topic, empty when a section on it does its job (two
        headings may match, "Session state" and "Sticky sessions": either may be it)."""
        section = self.find(document)
        if section is None:
            return [f'no section on {self.name} (a heading such as "{self.example}")']
        return self.problems_of(section)

    def problems_of(self, section: Section) -> list[str]:
        where = f'the section "{section.title}"'
        words = section.words
        if len(words) < self.min_words or len({w.lower() for w in words}) < self.min_words // 2:
            return [
                f"{where} has {len(words)} words; it needs at least {self.min_words} "
                f"that explain {self.name}"
            ]
        problems = [
            f"{where} does not mention {t.what}"
            for t in self.must_mention
            if not t.found_in(section.body)
        ]
        items = [i for i in section.items if len(_WORD.findall(i)) >= self.item_words]
        if len(items) < self.min_items:
            problems.append(
                f"{where} has {len(items)} list items or table rows of at least "
                f"{self.item_words} words; it needs {self.min_items}"
            )
        named = [t.what for t in self.among if t.found_in(section.body)]
        if len(named) < self.min_among:
            problems.append(
                f"{where} mentions {len(named)} of {', '.join(t.what for t in self.among)}"
                f" ({', '.join(named) or 'none'}); it needs at least {self.min_among}"
            )
        return problems


# --- the topics of exercise 10.4 ---------------------------------------------------------

FIX_STORES = (r"redis", r"postgres", r"\bdatabase", r"\bsql")

BOTTLENECKS = (
    Topic(
        "static list storage",
        r"stor|\blist\b|database|persist|user data",
        "## Static list storage",
        (
            terms(
                "where the users live now (in process memory)",
                r"memory",
                r"\bprocess",
                r"static",
                r"class attribute",
                r"\blist\b",
            ),
            terms(
                "a shared store that fixes it (a database, PostgreSQL, a repository)",
                r"postgres",
                r"database",
                r"\bsql",
                r"repositor",
            ),
        ),
    ),
    Topic(
        "the in-memory cache",
        r"cach",
        "## In-memory cache",
        (
            terms(
                "what goes wrong with one cache per instance (stale copies)",
                r"stale",
                r"each instance",
                r"per[- ]instance",
                r"own copy",
                r"invalidat",
                r"out of date",
                r"outdated",
            ),
            terms(
                "a shared or distributed cache that fixes it (Redis)",
                r"redis",
                r"distributed",
                r"shared",
                r"memcache",
            ),
        ),
    ),
    Topic(
        "background jobs",
        r"\bjob|background|worker|schedul|cleanup",
        "## Background jobs",
        (
            terms(
                "what goes wrong when every instance runs them (duplicates)",
                r"twice",
                r"duplicat",
                r"every instance",
                r"each instance",
                r"more than once",
                r"double",
                r"three times",
                r"\bN times",
            ),
            terms(
                "a way to coordinate them (a lock, a leader, a shared queue)",
                r"\block",
                r"leader",
                r"shared queue",
                r"redis",
                r"exactly once",
            ),
        ),
    ),
    Topic(
        "session state",
        r"session|login|auth",
        "## Session state",
        (
            terms(
                "why sessions in one instance's memory break (logged out, sticky)",
                r"memory",
                r"logged out",
                r"lost",
                r"sticky",
                r"another instance",
                r"other instance",
                r"unknown",
            ),
            terms(
                "a fix (Redis, a shared session store, signed stateless tokens, JWT)",
                r"redis",
                r"shared",
                r"stateless",
                r"\bjwt",
                r"signed",
            ),
        ),
    ),
)

SHARED_STATE = Topic(
    "the shared state (each piece of state and where it lives)",
    r"shared state|state inventory|\bstate\b.*\b(where|lives|kept)",
    "## Shared state",
    min_items=4,
    item_words=3,
    among=(
        terms("users", r"\buser"),
        terms("sessions", r"session"),
        terms("cached responses", r"cach"),
        terms("jobs or the job queue", r"\bjob", r"queue"),
        terms("locks or schedules", r"\block", r"schedul", r"cleanup"),
        terms("rate limits", r"rate[- ]limit"),
        terms("the instance registry", r"registry", r"instances"),
    ),
    min_among=4,
    must_mention=(terms("where the state lives (Redis, PostgreSQL, a database)", *FIX_STORES),),
)

RECOMMENDATIONS = Topic(
    "recommendations",
    r"recommend",
    "## Recommendations",
    min_items=3,
    among=(
        terms("the load balancer", r"load[- ]balanc"),
        terms("health or readiness checks", r"health", r"readiness"),
        terms("stateless instances", r"stateless"),
        terms("Redis", r"redis"),
        terms("the database", r"postgres", r"database"),
        terms("connection pools", r"\bpool"),
        terms("auto-scaling", r"auto-?scal", r"scale (?:out|in)"),
        terms("monitoring and metrics", r"monitor", r"metric", r"observab"),
        terms("graceful shutdown", r"graceful", r"drain"),
        terms("rate limiting", r"rate[- ]limit"),
    ),
    min_among=3,
)

STICKY_ALTERNATIVES = Topic(
    "alternatives to sticky sessions",
    r"sticky",
    "## Alternatives to sticky sessions",
    (
        terms(
            "what sticky sessions cost (uneven load, sessions lost when an instance goes)",
            r"uneven",
            r"imbalanc",
            r"\bfail",
            r"\blost",
            r"restart",
            r"hot ?spot",
            r"goes down",
            r"dies",
        ),
        terms("stateless tokens (signed, JWT)", r"stateless", r"\bjwt", r"signed"),
        terms(
            "a shared session store (Redis, a database)", r"redis", r"shared session", r"database"
        ),
    ),
)

# A figure with a unit: "410 requests/s", "12 ms", "1.8x", "85 %", "3 instances".
FIGURE = (
    r"\d[\d,.]*\s*(?:req(?:uest)?s?/s|rps\b|ms\b|%|x\b|×|MB\b|GB\b|cores?\b|instances?\b|"
    r"users?\b|connections?\b)"
)

CAPACITY_PLANNING = Topic(
    "capacity planning",
    r"capacity",
    "## Capacity planning",
    (
        terms(
            "that the figures are measured (a benchmark, a load test)",
            r"bench",
            r"measur",
            r"load test",
            r"\bwrk\b",
        ),
        terms("instances", r"instance"),
    ),
    min_words=60,
)

AUTOSCALING = Topic(
    "auto-scaling triggers",
    r"auto-?scal|scaling trigger",
    "## Auto-scaling triggers",
    (
        terms("the in-flight requests metric", r"in[_ -]flight"),
        terms("the job queue depth metric", r"queue[_ -]depth", r"queued"),
        terms("when to scale out", r"scale (?:out|up)", r"add(?:ing)? (?:an )?instance"),
        terms("when to scale in", r"scale (?:in|down)", r"remov(?:e|ing) (?:an )?instance"),
    ),
)


def check_topics(document: list[Section], *topics: Topic, expected: str) -> None:
    """Fail the check with every problem of every topic, or pass."""
    problems = [problem for topic in topics for problem in topic.problems(document)]
    if problems:
        fail(f"read {DOCUMENT} in your app package", expected=expected,
             observed="; ".join(problems))  # fmt: skip


def figures(section: Section) -> list[str]:
    """The figures with units in a section (for capacity planning)."""
    return re.findall(FIGURE, section.body, re.IGNORECASE)
