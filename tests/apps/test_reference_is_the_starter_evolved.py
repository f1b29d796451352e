"""The reference app is a copy of the starter evolved by the exercises, file by file.

The two packages share most of their code on purpose: learners edit `starter_app`, so the
reference cannot import from it. This test keeps the copy honest: a fix to a shared file
must land in both, and every file the reference changes is one an exercise explains.
"""

import filecmp
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# file -> the exercise whose solution changes or adds it
EVOLVED = {
    "__init__.py": "names the package as the reference solution; 10.3: imports lazily",
    "__main__.py": "10.2: `python -m solutions.app worker`; 10.3: serving under the supervisor",
    "cache.py": (
        "10.1, new: the response cache middleware, single flight, warming; "
        "10.4: leaves a session store outage to the route's 503"
    ),
    "cache_backends.py": "10.1, new: the backend interface, entry codec and memory backend",
    "cache_redis.py": "10.1 stretch, new: the Redis backend",
    "deps.py": (
        "10.1 stretch: cache backend and statistics as dependencies; 10.2: the job queue; "
        "10.4: typed by the store and session interfaces"
    ),
    "email_service.py": "10.2, new: the EmailService protocol and its logging mock",
    "instances.py": (
        "10.3 stretch, new: the instance registry (replica coordination); "
        "10.4: the X-Instance-Id middleware"
    ),
    "job_registry.py": "10.2, new: job records, batches and alerts; 10.3: worker heartbeats",
    "job_worker.py": (
        "10.2, new: huey's consumer, the recurring cleanup; 10.3: lease, stop; "
        "10.4: the worker process opens DATABASE_URL; stretch: the cleanup gate in Redis"
    ),
    "jobs.py": (
        "10.2, new: the jobs, and the per-app huey queue; 10.4: the jobs' store; "
        "stretch: jobs carry the request id"
    ),
    "locks.py": "10.4 stretch, new: a Redis lock and the recurring-job gate (one run per interval)",
    "logs.py": (
        "10.3, new: logging set-up out of main.py (the supervisor loads no FastAPI); "
        "10.4 stretch: the request id on every line"
    ),
    "main.py": (
        "10.1: cache middleware and warming; 10.2: jobs; 10.3: the shutdown phases; "
        "10.4: storage, sessions and instance header chosen by settings; stretch: rate "
        "limiter, request ids, queue depth gauge"
    ),
    "metrics.py": (
        "10.2: the purge operation, and job_store_operations_total for jobs; "
        "10.4 stretch: the in-flight and queue depth gauges"
    ),
    "notifications.py": "10.3 stretch, new: the shutdown webhook",
    "ratelimit.py": "10.4 stretch, new: rate limiting shared by every instance (memory or Redis)",
    "redis_clients.py": "10.4, new: the one way every Redis feature connects (timeouts, retry)",
    "routers/admin.py": "10.3: POST /admin/shutdown; stretch: GET /admin/instances",
    "routers/cache_admin.py": "10.1 stretch, new: cache statistics and dashboard",
    "routers/health.py": (
        "10.1 stretch: /health reports the cache; 10.3: pid, live, ready; "
        "10.4 stretch: /metrics off the event loop"
    ),
    "routers/jobs.py": "10.2, new: the jobs JSON API and dashboard",
    "routers/users.py": "10.2: POST /users enqueues the welcome email",
    "seed.py": "10.4: instances seeding one database together",
    "server.py": "10.3, new: uvicorn's Server told of the shutdown when the signal arrives",
    "sessions.py": "10.4: the SessionBackend interface and the 503 error of a shared store",
    "sessions_redis.py": "10.4, new: sessions in Redis (SESSION_BACKEND=redis)",
    "settings.py": (
        "10.1: CACHE_* and REDIS_URL; 10.2: jobs and email; 10.3: SHUTDOWN_* etc.; "
        "10.4: DATABASE_URL, SESSION_BACKEND, REDIS_KEY_PREFIX; stretch: RATE_LIMIT_*, "
        "CLEANUP_LOCK"
    ),
    "shutdown.py": "10.3, new: the shutdown coordinator (phases, budget, log) and middleware",
    "store.py": (
        "10.2: purge_deleted for the cleanup job; the counter of the jobs' store; "
        "10.4: the UserRepository interface and the store chosen by DATABASE_URL"
    ),
    "store_sql.py": "10.4, new: the users in SQLite or PostgreSQL (DATABASE_URL)",
    "supervisor.py": "10.3 stretch, new: the supervisor process for graceful restarts",
    "tracing.py": "10.4 stretch, new: request ids and traceparent in responses, logs and jobs",
}


def python_files(package: Path) -> set[str]:
    return {
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "__pycache__" not in path.parts
    }


def test_reference_differs_from_the_starter_only_where_an_exercise_says() -> None:
    starter, reference = ROOT / "starter_app", ROOT / "solutions" / "app"
    differing = {
        name
        for name in python_files(starter) | python_files(reference)
        if not (starter / name).is_file()
        or not (reference / name).is_file()
        or not filecmp.cmp(starter / name, reference / name, shallow=False)
    }
    assert differing == set(EVOLVED), (
        f"unexpected differences: {sorted(differing - set(EVOLVED))}; "
        f"listed but identical: {sorted(set(EVOLVED) - differing)}"
    )
