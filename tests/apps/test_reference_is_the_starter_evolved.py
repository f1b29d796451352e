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
    "__init__.py": "docstring only: names the package as the reference solution",
    "__main__.py": "10.2: `python -m solutions.app worker` runs the job worker",
    "cache.py": "10.1, new: the response cache middleware, single flight, warming",
    "cache_backends.py": "10.1, new: the backend interface, entry codec and memory backend",
    "cache_redis.py": "10.1 stretch, new: the Redis backend",
    "deps.py": "10.1 stretch: cache backend and statistics as dependencies; 10.2: the job queue",
    "email_service.py": "10.2, new: the EmailService protocol and its logging mock",
    "job_registry.py": "10.2, new: job records, batches and alerts in SQLite",
    "job_worker.py": "10.2, new: huey's consumer in-process or alone, the recurring cleanup",
    "jobs.py": "10.2, new: the jobs, and the per-app huey queue that records them",
    "main.py": "10.1: the cache middleware, backend and warming; 10.2: the job queue and worker",
    "metrics.py": "10.2: the purge operation, and job_store_operations_total for jobs",
    "routers/cache_admin.py": "10.1 stretch, new: cache statistics and dashboard",
    "routers/health.py": "10.1 stretch: /health reports the cache backend",
    "routers/jobs.py": "10.2, new: the jobs JSON API and dashboard",
    "routers/users.py": "10.2: POST /users enqueues the welcome email",
    "settings.py": "10.1: the CACHE_* settings and REDIS_URL; 10.2: the job and email settings",
    "store.py": "10.2: purge_deleted for the cleanup job; the counter of the jobs' store",
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
