"""Proof that the 10.1 suite grades right: the reference passes every required criterion,
the untouched starter fails every one with a message and a hint, and each mutant (a small
patch that breaks one behaviour of the reference) is failed on exactly the criteria that
behaviour serves."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from grader import grade
from grader._render import render_text

from ._support import copy_reference, patch_file

pytestmark = pytest.mark.slow

GRADE = str(Path(sys.executable).parent / "grade")
REQUIRED = {"caching-middleware", "ttl", "invalidation", "cache-headers", "cache-control",
            "configuration"}  # fmt: skip
STRETCH = {"redis", "redis-fallback", "redis-health", "cache-tags", "partition-by-user",
           "compression", "stats-endpoint", "dashboard", "warming", "stampede"}  # fmt: skip


def run_grade(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRADE, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_reference_passes_every_required_criterion(tmp_path: Path) -> None:
    done = run_grade("10.1", "--solution", "--format", "json", "--report-dir", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    statuses = {c["id"]: c["status"] for c in report["criteria"]}
    assert statuses == dict.fromkeys(REQUIRED | STRETCH, "passed")
    assert report["summary"]["required_passed"] == 6
    assert report["summary"]["stretch_passed"] == 10
    saved = json.loads((tmp_path / "out" / "10.1-solutions.app.json").read_text())
    assert saved["criteria"] == report["criteria"]


def test_starter_fails_every_criterion_with_a_message_and_a_hint(
    tmp_path: Path,
) -> None:
    done = run_grade("10.1", "--report-dir", "out", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "10.1-starter_app.json").read_text())
    assert {c["id"] for c in report["criteria"]} == REQUIRED | STRETCH
    for criterion in report["criteria"]:
        assert criterion["status"] == "failed", criterion
        assert "expected:" in criterion["message"] and "observed:" in criterion["message"]
        assert criterion["hint"]
    checklist = done.stdout
    assert checklist.count("✗") == 16 and checklist.count("hint:") == 16, checklist
    assert "0/6 required · 0/10 stretch" in checklist


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    fails: frozenset[str]  # exactly the required criteria the broken behaviour serves


def mutant(name: str, file: str, old: str, new: str, *fails: str) -> Mutant:
    return Mutant(name, file, old, new, frozenset(fails))


MUTANTS = [
    mutant(
        "list-never-cached", "cache.py",
        "if _LIST_PATH.match(path):", "if False:",
        "caching-middleware", "ttl", "invalidation", "cache-headers", "cache-control",
        "configuration",
    ),
    mutant(
        "hit-serves-another-body", "cache.py",
        '{"type": "http.response.body", "body": entry.body}',
        '{"type": "http.response.body", "body": entry.body.replace(b"Ada", b"Bob")}',
        "caching-middleware",
    ),
    mutant(
        "entries-never-expire", "cache_backends.py",
        "return self.age(now) < self.ttl", "return True",
        "ttl", "configuration",
    ),
    mutant(
        "default-list-ttl-one-minute", "settings.py",
        "default=300, gt=0", "default=60, gt=0",
        "ttl",
    ),
    mutant(
        "put-and-delete-keep-the-user-entry", "cache.py",
        'self._invalidate(LIST_TAG, *([item_tag(match["user_id"])] if match else []))',
        "self._invalidate(LIST_TAG)",
        "invalidation",
    ),
    mutant(
        "only-post-invalidates", "cache.py",
        '_MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})',
        '_MUTATIONS = frozenset({"POST"})',
        "invalidation",
    ),
    mutant(
        "hit-labelled-miss", "cache.py",
        '(b"x-cache", b"HIT")', '(b"x-cache", b"MISS")',
        "cache-headers",
    ),
    mutant(
        "request-max-age-ignored", "cache.py",
        "return self.max_age is None or entry.age(now) <= self.max_age", "return True",
        "cache-control",
    ),
    mutant(
        "request-no-cache-ignored", "cache.py",
        "if self.no_cache or self.no_store:", "if self.no_store:",
        "cache-control",
    ),
    mutant(
        "cache-enabled-ignored", "main.py",
        "if settings.cache_enabled:", "if True:",
        "configuration",
    ),
    mutant(
        "list-ttl-read-from-item-setting", "main.py",
        "list_ttl=settings.cache_list_ttl_seconds", "list_ttl=settings.cache_item_ttl_seconds",
        "ttl", "configuration",
    ),
]  # fmt: skip


# Stretch mutants: each breaks one stretch goal and must leave every required criterion
# passing (a stretch feature may not cost the learner the exercise).
STRETCH_MUTANTS = [
    mutant(
        "redis-setting-ignored", "main.py",
        'if settings.cache_backend == "redis":', "if False:",
        "redis",
    ),
    mutant(
        "redis-errors-propagate", "cache_redis.py",
        "            self._set_reachable(False, exc)\n            return default\n",
        "            raise\n",
        "redis-fallback",
    ),
    mutant(
        "health-never-asks-the-cache", "routers/health.py",
        "if cache is None or await cache.ping():", "if True:",
        "redis-health",
    ),
    mutant(
        "list-variants-tagged-apart", "cache.py",
        'return CachePolicy(self.list_ttl, (LIST_TAG,), "/users")',
        'return CachePolicy(self.list_ttl, (LIST_TAG + scope["query_string"].decode(),), "/users")',
        "cache-tags",
    ),
    mutant(
        "me-shared-by-all-users", "cache.py",
        'partition=f"user:{user_id}"', 'partition="user"',
        "partition-by-user",
    ),
    mutant(
        "never-compressed", "cache_backends.py",
        "if len(body) >= compression_min_bytes:", "if False:",
        "compression",
    ),
    mutant(
        "hit-ratio-always-zero", "cache.py",
        "return self.hits / lookups if lookups else 0.0", "return 0.0",
        "stats-endpoint",
    ),
    mutant(
        "dashboard-shows-no-hits", "routers/cache_admin.py",
        '("hits", str(stats.hits)),', '("hits", "none yet"),',
        "dashboard",
    ),
    mutant(
        "warming-skipped", "main.py",
        "if cache is not None and settings.warm_paths:", "if False:",
        "warming",
    ),
    mutant(
        "no-single-flight", "cache.py",
        "if flight is not None and not control.wants_the_store:", "if False:",
        "stampede",
    ),
]  # fmt: skip


def test_every_criterion_has_a_mutant() -> None:
    targeted = set().union(*(m.fails for m in MUTANTS))
    assert targeted == REQUIRED
    # ...and for each criterion, a mutant that breaks it alone or with few others
    assert {c for m in MUTANTS if len(m.fails) <= 2 for c in m.fails} == REQUIRED
    assert {c for m in STRETCH_MUTANTS for c in m.fails} == STRETCH


def grade_mutant(m: Mutant, tmp_path: Path, criteria: set[str]) -> None:
    """Grade a patched copy of the reference on `criteria`: exactly `m.fails` must fail."""
    package = copy_reference(tmp_path, f"mutant_{m.name.replace('-', '_')}")
    patch_file(package / m.file, m.old, m.new)
    result = grade("10.1", app=package.name, app_path=tmp_path, criteria=sorted(criteria))
    failing = {c.id for c in result.criteria if c.status != "passed"}
    assert failing == m.fails, render_text(result, width=160)
    for criterion in result.criteria:
        if criterion.id in m.fails:
            assert "expected:" in (criterion.message or ""), criterion


@pytest.mark.parametrize("m", MUTANTS, ids=lambda m: m.name)
def test_mutant_is_caught_on_its_criteria(m: Mutant, tmp_path: Path) -> None:
    grade_mutant(m, tmp_path, REQUIRED)


@pytest.mark.parametrize("m", STRETCH_MUTANTS, ids=lambda m: m.name)
def test_stretch_mutant_is_caught_and_costs_no_required_criterion(
    m: Mutant, tmp_path: Path
) -> None:
    grade_mutant(m, tmp_path, REQUIRED | m.fails)
