"""Mutants: small patches to the reference app, each breaking one behaviour.

A mutant names the exercise, the file of `solutions/app` it patches, the text it replaces
(found exactly once, or the test fails: a mutant whose anchor vanished must not pass as
"caught") and exactly the criteria that behaviour serves. A mutant of a stretch goal must
leave every required criterion passing: a bonus feature may not cost the exercise.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    exercise: str
    name: str
    file: str
    old: str
    new: str
    fails: frozenset[str]

    def __str__(self) -> str:
        return f"{self.exercise}-{self.name}"


def mutant(exercise: str, name: str, file: str, old: str, new: str, *fails: str) -> Mutant:
    return Mutant(exercise, name, file, old, new, frozenset(fails))


MUTANTS_10_1 = [
    mutant(
        "10.1", "list-never-cached", "cache.py",
        "if _LIST_PATH.match(path):", "if False:",
        "caching-middleware", "ttl", "invalidation", "cache-headers", "cache-control",
        "configuration",
    ),
    mutant(
        "10.1", "hit-serves-another-body", "cache.py",
        '{"type": "http.response.body", "body": entry.body}',
        '{"type": "http.response.body", "body": entry.body.replace(b"Ada", b"Bob")}',
        "caching-middleware",
    ),
    mutant(
        "10.1", "entries-never-expire", "cache_backends.py",
        "return self.age(now) < self.ttl", "return True",
        "ttl", "configuration",
    ),
    mutant(
        "10.1", "default-list-ttl-one-minute", "settings.py",
        "default=300, gt=0", "default=60, gt=0",
        "ttl",
    ),
    mutant(
        "10.1", "put-and-delete-keep-the-user-entry", "cache.py",
        'self._invalidate(LIST_TAG, *([item_tag(match["user_id"])] if match else []))',
        "self._invalidate(LIST_TAG)",
        "invalidation",
    ),
    mutant(
        "10.1", "only-post-invalidates", "cache.py",
        '_MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})',
        '_MUTATIONS = frozenset({"POST"})',
        "invalidation",
    ),
    mutant(
        "10.1", "hit-labelled-miss", "cache.py",
        '(b"x-cache", b"HIT")', '(b"x-cache", b"MISS")',
        "cache-headers",
    ),
    mutant(
        "10.1", "request-max-age-ignored", "cache.py",
        "return self.max_age is None or entry.age(now) <= self.max_age", "return True",
        "cache-control",
    ),
    mutant(
        "10.1", "request-no-cache-ignored", "cache.py",
        "if self.no_cache or self.no_store:", "if self.no_store:",
        "cache-control",
    ),
    mutant(
        "10.1", "cache-enabled-ignored", "main.py",
        "if settings.cache_enabled:", "if True:",
        "configuration",
    ),
    mutant(
        "10.1", "list-ttl-read-from-item-setting", "main.py",
        "list_ttl=settings.cache_list_ttl_seconds", "list_ttl=settings.cache_item_ttl_seconds",
        "ttl", "configuration",
    ),
]  # fmt: skip

STRETCH_MUTANTS_10_1 = [
    mutant(
        "10.1", "redis-setting-ignored", "main.py",
        'if settings.cache_backend == "redis":', "if False:",
        "redis",
    ),
    mutant(
        "10.1", "redis-errors-propagate", "cache_redis.py",
        "            self._set_reachable(False, exc)\n            return default\n",
        "            raise\n",
        "redis-fallback",
    ),
    mutant(
        "10.1", "health-never-asks-the-cache", "routers/health.py",
        "if cache is None or await cache.ping():", "if True:",
        "redis-health",
    ),
    mutant(
        "10.1", "list-variants-tagged-apart", "cache.py",
        'return CachePolicy(self.list_ttl, (LIST_TAG,), "/users")',
        'return CachePolicy(self.list_ttl, (LIST_TAG + scope["query_string"].decode(),), "/users")',
        "cache-tags",
    ),
    mutant(
        "10.1", "me-shared-by-all-users", "cache.py",
        'partition=f"user:{user_id}"', 'partition="user"',
        "partition-by-user",
    ),
    mutant(
        "10.1", "never-compressed", "cache_backends.py",
        "if len(body) >= compression_min_bytes:", "if False:",
        "compression",
    ),
    mutant(
        "10.1", "hit-ratio-always-zero", "cache.py",
        "return self.hits / lookups if lookups else 0.0", "return 0.0",
        "stats-endpoint",
    ),
    mutant(
        "10.1", "dashboard-shows-no-hits", "routers/cache_admin.py",
        '("hits", str(stats.hits)),', '("hits", "none yet"),',
        "dashboard",
    ),
    mutant(
        "10.1", "warming-skipped", "main.py",
        "if cache is not None and settings.warm_paths:", "if False:",
        "warming",
    ),
    mutant(
        "10.1", "no-single-flight", "cache.py",
        "if flight is not None and not control.wants_the_store:", "if False:",
        "stampede",
    ),
]  # fmt: skip

MUTANTS = [*MUTANTS_10_1, *STRETCH_MUTANTS_10_1]
