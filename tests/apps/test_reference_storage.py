"""The reference app's user storage and instance header (exercise 10.4).

The store contract runs against each storage DATABASE_URL can name: memory (empty), SQLite
(a file of the test's own) and PostgreSQL (a database of the test's own, from the grader's
`postgres_database` fixture, see conftest.py). Then several stores or real server
processes share one database, as instances of the API would. Without a PostgreSQL server
its tests are skipped with a reason that says how to start one; under `CI=true` they fail
instead.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client import Counter
from pydantic import ValidationError

from grader._process import AppProcess
from solutions.app import Settings, create_app
from solutions.app.deps import get_store
from solutions.app.metrics import Metrics
from solutions.app.models import UserRecord
from solutions.app.store import (
    EmailTakenError,
    UserNotFoundError,
    UserRepository,
    UserStore,
    build_database,
    build_user_store,
)
from solutions.app.store_sql import Database

from .helpers import ADMIN_TOKEN, PASSWORD, unique_email

REPO_ROOT = Path(__file__).resolve().parents[2]
STORAGES = ("memory", "sqlite", "postgresql")
SHARED_STORAGES = ("sqlite", "postgresql")
OPERATIONS = ("list", "get", "get_by_email", "create", "update", "delete", "list_all", "purge")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- the storages under test ----------------------------------------------------------------


def url_for(storage: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A DATABASE_URL of this test's own: empty (memory), a SQLite file, a PostgreSQL db."""
    if storage == "memory":
        # The memory store's users are class attributes, shared by the whole process: a
        # fresh list for this test, so that it starts as empty as the databases do.
        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setattr(UserStore, "_users", [])
        monkeypatch.setattr(UserStore, "_ids", itertools.count(1))
        return ""
    if storage == "sqlite":
        return f"sqlite:///{tmp_path / 'users.sqlite3'}"
    url: str = request.getfixturevalue("postgres_database")
    # Not UTC on purpose: PostgreSQL hands timestamps back in the session's time zone,
    # which the store must turn back into UTC.
    with psycopg.connect(url, autocommit=True) as connection:
        database = connection.info.dbname
        connection.execute(f"ALTER DATABASE \"{database}\" SET timezone TO 'America/New_York'")
    return url


@pytest.fixture(params=STORAGES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage in turn."""
    return url_for(request.param, request, tmp_path)


@pytest.fixture(params=SHARED_STORAGES)
def shared_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage that several processes can share in turn."""
    return url_for(request.param, request, tmp_path)


@asynccontextmanager
async def opened_store(
    url: str,
    *,
    metrics: Metrics | None = None,
    latency_ms: float = 0,
    counter: Counter | None = None,
) -> AsyncIterator[UserRepository]:
    """A store on ``url`` with its own database connection pool, as one process has it."""
    settings = Settings(_env_file=None, database_url=url, store_latency_ms=latency_ms)
    database = build_database(settings)
    if database is not None:
        await database.open()
    try:
        yield build_user_store(settings, metrics or Metrics(), database=database, counter=counter)
    finally:
        if database is not None:
            await database.aclose()


def is_utc(moment: datetime | None) -> bool:
    return moment is not None and moment.utcoffset() == timedelta(0)


# --- the contract, for every storage ------------------------------------------------------


@pytest.mark.anyio
async def test_create_then_read_by_id_and_by_email_in_any_case(database_url: str) -> None:
    async with opened_store(database_url) as store:
        created = await store.create_user(email="Ada@Example.com", name="Ada", password_hash="h1")

        assert isinstance(created.id, int)
        assert (created.email, created.name, created.password_hash) == (
            "Ada@Example.com",
            "Ada",
            "h1",
        )
        assert is_utc(created.created_at) and created.updated_at == created.created_at
        assert created.deleted_at is None
        assert abs(datetime.now(UTC) - created.created_at) < timedelta(seconds=10)
        assert await store.get_user(created.id) == created
        assert await store.get_by_email("ada@EXAMPLE.COM") == created
        assert await store.get_user(created.id + 1000) is None
        assert await store.get_by_email("nobody@example.com") is None


@pytest.mark.anyio
async def test_ids_are_new_and_lists_come_by_id(database_url: str) -> None:
    async with opened_store(database_url) as store:
        users = [
            await store.create_user(email=f"u{n}@example.com", name=f"U{n}", password_hash="h")
            for n in range(3)
        ]
        ids = [user.id for user in users]

        assert ids == sorted(set(ids))
        assert [user.id for user in await store.list_users()] == ids
        assert [user.id for user in await store.list_all(include_deleted=False)] == ids


@pytest.mark.anyio
async def test_an_email_is_taken_until_its_user_is_deleted(database_url: str) -> None:
    async with opened_store(database_url) as store:
        first = await store.create_user(email="grace@example.com", name="G", password_hash="h")

        with pytest.raises(EmailTakenError):
            await store.create_user(email="GRACE@example.com", name="Other", password_hash="h")
        await store.soft_delete_user(first.id)
        again = await store.create_user(email="Grace@Example.com", name="G2", password_hash="h")

        assert again.id != first.id
        assert await store.get_by_email("grace@example.com") == again


@pytest.mark.anyio
async def test_email_case_folding_is_python_casefold(database_url: str) -> None:
    # The memory store compares str.casefold(): "ß" folds to "ss", which neither SQLite's
    # lower() (ASCII only) nor a database locale would do.
    async with opened_store(database_url) as store:
        user = await store.create_user(email="straße@example.de", name="S", password_hash="h")

        assert await store.get_by_email("STRASSE@example.de") == user
        with pytest.raises(EmailTakenError):
            await store.create_user(email="STRASSE@EXAMPLE.DE", name="T", password_hash="h")


@pytest.mark.anyio
async def test_update_replaces_fields_and_keeps_the_password_unless_given(
    database_url: str,
) -> None:
    async with opened_store(database_url) as store:
        user = await store.create_user(email="a@example.com", name="A", password_hash="old")
        other = await store.create_user(email="b@example.com", name="B", password_hash="h")

        renamed = await store.update_user(user.id, email="A2@example.com", name="Ann")
        assert (renamed.email, renamed.name, renamed.password_hash) == (
            "A2@example.com",
            "Ann",
            "old",
        )
        assert renamed.created_at == user.created_at and renamed.updated_at >= user.updated_at
        assert is_utc(renamed.updated_at)
        assert await store.get_user(user.id) == renamed
        # Its own email in another case is no conflict; another user's is.
        same = await store.update_user(
            user.id, email="a2@EXAMPLE.com", name="Ann", password_hash="new"
        )
        assert (same.email, same.password_hash) == ("a2@EXAMPLE.com", "new")
        with pytest.raises(EmailTakenError):
            await store.update_user(user.id, email="B@example.com", name="Ann")
        assert await store.get_user(user.id) == same  # unchanged by the refused update

        await store.soft_delete_user(other.id)
        with pytest.raises(UserNotFoundError):
            await store.update_user(other.id, email="b@example.com", name="B")
        with pytest.raises(UserNotFoundError):
            await store.update_user(user.id + 1000, email="a2@example.com", name="Ann")


@pytest.mark.anyio
async def test_a_deleted_user_is_hidden_except_from_the_admin_list(database_url: str) -> None:
    async with opened_store(database_url) as store:
        kept = await store.create_user(email="kept@example.com", name="K", password_hash="h")
        gone = await store.create_user(email="gone@example.com", name="G", password_hash="h")

        await store.soft_delete_user(gone.id)

        assert await store.get_user(gone.id) is None
        assert await store.get_by_email("gone@example.com") is None
        assert [user.id for user in await store.list_users()] == [kept.id]
        everyone = await store.list_all(include_deleted=True)
        assert [user.id for user in everyone] == [kept.id, gone.id]
        assert is_utc(everyone[1].deleted_at)
        with pytest.raises(UserNotFoundError):
            await store.soft_delete_user(gone.id)
        with pytest.raises(UserNotFoundError):
            await store.soft_delete_user(gone.id + 1000)


@pytest.mark.anyio
async def test_purge_removes_only_users_deleted_before_the_cutoff(database_url: str) -> None:
    async with opened_store(database_url) as store:
        active = await store.create_user(email="on@example.com", name="On", password_hash="h")
        deleted = await store.create_user(email="off@example.com", name="Off", password_hash="h")
        before_the_delete = datetime.now(UTC) - timedelta(milliseconds=1)
        await store.soft_delete_user(deleted.id)

        assert await store.purge_deleted(deleted_before=before_the_delete) == 0
        assert len(await store.list_all(include_deleted=True)) == 2
        assert await store.purge_deleted(deleted_before=datetime.now(UTC) + timedelta(1)) == 1
        assert [user.id for user in await store.list_all(include_deleted=True)] == [active.id]


@pytest.mark.anyio
async def test_records_handed_out_are_copies(database_url: str) -> None:
    async with opened_store(database_url) as store:
        user = await store.create_user(email="copy@example.com", name="Copy", password_hash="h")
        user.name = "Changed by the caller"
        listed = await store.list_users()
        listed[0].email = "changed@example.com"

        fresh = await store.get_user(user.id)
        assert fresh is not None and (fresh.name, fresh.email) == ("Copy", "copy@example.com")


@pytest.mark.anyio
async def test_every_call_counts_one_operation_even_when_it_fails(database_url: str) -> None:
    metrics = Metrics()

    def counts() -> dict[str, float]:
        return {
            op: metrics.registry.get_sample_value("store_operations_total", {"operation": op})
            or 0.0
            for op in OPERATIONS
        }

    async with opened_store(database_url, metrics=metrics) as store:
        user = await store.create_user(email="count@example.com", name="C", password_hash="h")
        with pytest.raises(EmailTakenError):
            await store.create_user(email="count@example.com", name="C", password_hash="h")
        await store.get_user(user.id)
        await store.get_by_email("count@example.com")
        await store.list_users()
        await store.update_user(user.id, email="count@example.com", name="D")
        await store.soft_delete_user(user.id)
        with pytest.raises(UserNotFoundError):
            await store.soft_delete_user(user.id)
        await store.list_all(include_deleted=True)
        await store.purge_deleted(deleted_before=datetime.now(UTC))

    assert counts() == {
        "list": 1,
        "get": 1,
        "get_by_email": 1,
        "create": 2,
        "update": 1,
        "delete": 2,
        "list_all": 1,
        "purge": 1,
    }


@pytest.mark.anyio
async def test_the_jobs_store_counts_apart_and_waits_the_latency_once(database_url: str) -> None:
    metrics = Metrics()
    async with opened_store(
        database_url, metrics=metrics, latency_ms=60, counter=metrics.job_store_operations
    ) as store:
        started = time.perf_counter()
        await store.list_users()
        elapsed = time.perf_counter() - started

    registry = metrics.registry
    assert registry.get_sample_value("job_store_operations_total", {"operation": "list"}) == 1
    assert registry.get_sample_value("store_operations_total", {"operation": "list"}) == 0
    assert elapsed >= 0.06


# --- several stores on one database, as several processes --------------------------------


@pytest.mark.anyio
async def test_two_stores_racing_for_one_email_one_wins(database_url: str) -> None:
    # Two stores with a pool each: two processes, as far as the database can tell.
    async with opened_store(database_url) as first, opened_store(database_url) as second:
        for round_ in range(10):
            email = f"race-{round_}@example.com"
            outcomes = await asyncio.gather(
                first.create_user(email=email, name="First", password_hash="h"),
                second.create_user(email=email.upper(), name="Second", password_hash="h"),
                return_exceptions=True,
            )
            created = [o for o in outcomes if isinstance(o, UserRecord)]
            refused = [o for o in outcomes if isinstance(o, EmailTakenError)]
            assert (len(created), len(refused)) == (1, 1), outcomes
            assert await second.get_by_email(email) == created[0]


@pytest.mark.anyio
async def test_a_user_written_through_one_store_is_read_through_another(
    shared_database_url: str,
) -> None:
    async with opened_store(shared_database_url) as first:
        user = await first.create_user(email="shared@example.com", name="S", password_hash="h")
        async with opened_store(shared_database_url) as second:
            assert await second.get_user(user.id) == user
            other = await second.create_user(email="o@example.com", name="O", password_hash="h")
        assert other.id != user.id
        assert [u.id for u in await first.list_users()] == [user.id, other.id]


@pytest.mark.anyio
async def test_instances_starting_together_create_the_schema_once(
    shared_database_url: str,
) -> None:
    # Without the advisory lock, PostgreSQL fails this nearly every time: two sessions
    # both create the table's row type and one breaks pg_type's unique index.
    databases = [Database.from_url(shared_database_url) for _ in range(6)]
    try:
        await asyncio.gather(*(database.open() for database in databases))
        await databases[0].open()  # and again, on a database that has it all
    finally:
        for database in databases:
            await database.aclose()
    async with opened_store(shared_database_url) as store:
        await store.create_user(email="after@example.com", name="A", password_hash="h")
        assert len(await store.list_users()) == 1


@pytest.mark.anyio
async def test_sqlite_runs_in_wal_mode_and_waits_for_other_writers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wal.sqlite3'}"
    database = Database.from_url(url)
    await database.open()
    try:
        async with database.engine.connect() as connection:
            mode = (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar()
            busy_timeout = (await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar()
    finally:
        await database.aclose()
    assert mode == "wal"
    assert busy_timeout is not None and busy_timeout >= 1000


@pytest.mark.anyio
async def test_many_writers_on_one_sqlite_file_all_succeed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'busy.sqlite3'}"
    async with (
        opened_store(url) as first,
        opened_store(url) as second,
        opened_store(url) as third,
    ):
        stores = (first, second, third)
        await asyncio.gather(
            *(
                stores[n % 3].create_user(email=f"w{n}@example.com", name="W", password_hash="h")
                for n in range(60)
            )
        )
        assert len(await first.list_users()) == 60


# --- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "storage"),
    [
        ("", "memory"),
        ("sqlite:///users.sqlite3", "sqlite"),
        ("sqlite+aiosqlite:////var/lib/users.sqlite3", "sqlite"),
        ("postgresql://app:secret@db:5432/users", "postgresql"),
        ("postgresql+psycopg://app@db/users", "postgresql"),
    ],
)
def test_database_url_names_the_storage(url: str, storage: str) -> None:
    assert Settings(_env_file=None, database_url=url).storage == storage


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://app:s3cret-pw@db/users", "must start with one of sqlite://"),
        ("postgres://app:s3cret-pw@db/users", "not postgres://"),
        ("users.sqlite3", "without a scheme"),
        ("sqlite://", "in-memory SQLite"),
        ("sqlite:///:memory:", "in-memory SQLite"),
    ],
)
def test_a_database_url_of_no_known_kind_is_refused_without_echoing_it(
    url: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as refused:
        Settings(_env_file=None, database_url=url)
    assert "s3cret-pw" not in str(refused.value)


def test_the_jobs_queue_refuses_to_fall_back_to_memory(tmp_path: Path) -> None:
    from solutions.app.jobs import build_job_queue

    settings = Settings(
        _env_file=None,
        database_url=f"sqlite:///{tmp_path / 'u.sqlite3'}",
        jobs_db_path=str(tmp_path / "jobs.sqlite3"),
    )
    with pytest.raises(ValueError, match="DATABASE_URL is set"):
        build_job_queue(settings, Metrics())


# --- the app on a database -------------------------------------------------------------------


def app_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"admin_token": ADMIN_TOKEN, "cache_warm_paths": ""}
    return Settings(_env_file=None, **(values | overrides))


def test_apps_on_one_database_share_users_and_log_only_the_kind(
    shared_database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {
        "database_url": shared_database_url,
        "seed_demo_users": True,  # both seed: the second finds the demo users there
        "cache_enabled": False,
    }
    with (
        caplog.at_level(logging.INFO, logger="solutions.app"),
        TestClient(
            create_app(app_settings(jobs_db_path=str(tmp_path / "1.db"), **settings))
        ) as first,
        TestClient(
            create_app(app_settings(jobs_db_path=str(tmp_path / "2.db"), **settings))
        ) as second,
    ):
        email = unique_email("app")
        created = first.post("/users", json={"email": email, "name": "N", "password": PASSWORD})
        assert created.status_code == 201, created.text
        path = created.headers["location"]
        assert second.get(path).json()["email"] == email
        duplicate = {"email": email.upper(), "name": "M", "password": PASSWORD}
        assert second.post("/users", json=duplicate).status_code == 409
        emails = [user["email"] for user in second.get("/users").json()]
        assert emails[:3] == ["alice@example.com", "bob@example.com", "carol@example.com"]

    kind = "sqlite" if shared_database_url.startswith("sqlite") else "postgresql"
    startup = [r.getMessage() for r in caplog.records if r.getMessage().startswith("startup ")]
    assert len(startup) == 2 and all(f"storage={kind}" in line for line in startup), startup
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert shared_database_url not in logged
    assert "seeded 3 demo users" in logged and "seeded 0 demo users" in logged


def test_the_app_closes_its_database_when_it_stops(postgres_database: str) -> None:
    app = create_app(app_settings(database_url=postgres_database))
    with TestClient(app) as client:
        assert client.get("/users").status_code == 200
        pool = app.state.database.engine.pool
        assert pool.checkedin() >= 1
    assert pool.checkedin() == 0  # disposed in the "resources closed" phase


# --- X-Instance-Id ----------------------------------------------------------------------------


def test_every_response_names_its_instance(tmp_path: Path) -> None:
    settings = app_settings(instance_id="instance-7", jobs_db_path=str(tmp_path / "jobs.db"))
    app = create_app(settings)

    async def broken_store() -> None:
        raise RuntimeError("boom")

    with TestClient(app, raise_server_exceptions=False) as client:
        responses = {
            "ok": client.get("/health"),
            "not found": client.get("/users/999999999"),
            "no route": client.get("/no/such/path"),
            "unauthorized": client.get("/auth/me"),
            "invalid": client.post("/users", json={}),
            "miss": client.get("/users"),
            "hit": client.get("/users"),
        }
        app.dependency_overrides[get_store] = broken_store
        responses["error"] = client.get("/users/1", headers={"Cache-Control": "no-cache"})

    statuses = {name: response.status_code for name, response in responses.items()}
    assert statuses == {
        "ok": 200,
        "not found": 404,
        "no route": 404,
        "unauthorized": 401,
        "invalid": 422,
        "miss": 200,
        "hit": 200,
        "error": 500,
    }
    assert responses["hit"].headers["x-cache"] == "HIT"
    for name, response in responses.items():
        assert response.headers.get_list("x-instance-id") == ["instance-7"], name


def test_the_instance_id_defaults_to_host_and_pid(tmp_path: Path) -> None:
    app = create_app(app_settings(jobs_db_path=str(tmp_path / "jobs.db")))
    with TestClient(app) as client:
        response = client.get("/health/live")
    assert response.headers["x-instance-id"] == f"{socket.gethostname()}-{os.getpid()}"


# --- real server processes on one database ---------------------------------------------------


@pytest.fixture
def instances(tmp_path: Path) -> Iterator[Callable[..., list[AppProcess]]]:
    """Start `n` `python -m solutions.app` servers at the same moment; all killed after."""
    started: list[AppProcess] = []

    def start(n: int, **env: str) -> list[AppProcess]:
        apps = [
            AppProcess(
                "solutions.app",
                # A folder each: its own job queue file, as on hosts of their own.
                cwd=tmp_path / f"instance-{len(started) + i}",
                env={
                    "PYTHONPATH": os.pathsep.join(
                        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
                    ),
                    "ADMIN_TOKEN": ADMIN_TOKEN,
                    "CACHE_WARM_PATHS": "",
                    "INSTANCE_ID": f"instance-{len(started) + i}",
                    **env,
                },
            )
            for i in range(n)
        ]
        started.extend(apps)
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda app: app.start(ready_timeout=30), apps))
        return apps

    yield start
    for app in started:
        app.kill()


def post_user(app: AppProcess, email: str) -> Any:
    return app.request("POST", "/users", json={"email": email, "name": "P", "password": PASSWORD})


def body(outcome: Any) -> Any:
    return json.loads(outcome.body)


def test_server_processes_started_together_share_one_database(
    shared_database_url: str, instances: Callable[..., list[AppProcess]]
) -> None:
    first, second, third = instances(3, DATABASE_URL=shared_database_url, CACHE_ENABLED="false")

    email = unique_email("proc")
    created = post_user(first, email)
    assert created.status == 201, created.body
    user = body(created)
    path = f"/users/{user['id']}"
    read = second.request("GET", path)
    assert (read.status, body(read)["email"]) == (200, email), read.body
    assert read.headers["x-instance-id"] == "instance-1"
    put = third.request("PUT", path, json={"email": email, "name": "Renamed"})
    assert put.status == 200, put.body
    assert body(first.request("GET", path))["name"] == "Renamed"
    assert post_user(second, email.upper()).status == 409
    other = post_user(third, unique_email("proc"))
    assert other.status == 201 and body(other)["id"] != user["id"]
    assert first.request("DELETE", path).status == 204
    assert second.request("GET", path).status == 404

    # Two instances racing to create one email: one 201, one 409, every round.
    with ThreadPoolExecutor(2) as pool:
        for _ in range(5):
            contested = unique_email("race")
            outcomes = list(pool.map(post_user, (first, second), (contested, contested)))
            assert sorted(o.status for o in outcomes) == [201, 409], [o.body for o in outcomes]

    for app in (first, second, third):
        output = app.output()
        assert re.search(r"startup .* storage=(sqlite|postgresql)\b", output), output
        assert shared_database_url not in output


def test_a_worker_process_sees_the_users_of_the_api(
    tmp_path: Path, instances: Callable[..., list[AppProcess]]
) -> None:
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'users.sqlite3'}",
        "JOBS_DB_PATH": str(tmp_path / "jobs.sqlite3"),  # one queue for the API and worker
        "JOBS_WORKER": "none",
    }
    (api,) = instances(1, **env)
    log = tmp_path / "worker.log"
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "solutions.app", "worker"],
            cwd=tmp_path,
            env=os.environ | api.env | env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        email = unique_email("worker")
        assert post_user(api, email).status == 201
        deadline = time.monotonic() + 20
        while f"welcome email sent to={email}" not in log.read_text(errors="replace"):
            assert worker.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        text = log.read_text(errors="replace")
        assert "storage=sqlite" in text and "each process's memory" not in text
    finally:
        with suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(5)


@pytest.mark.anyio
async def test_sqlite_open_waits_for_another_instance_holding_the_file(tmp_path: Path) -> None:
    """Switching to WAL mode while another connection holds a write lock fails at once with
    "database is locked" (SQLite's busy timeout does not apply there): two instances
    starting together on a new file met this. `open` retries until the lock is gone."""
    path = tmp_path / "busy.sqlite3"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE unrelated (x)")
    other.execute("BEGIN IMMEDIATE")  # another instance, in the middle of its own start
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    database = Database.from_url(f"sqlite:///{path}")
    try:
        started = time.monotonic()
        await database.open()
        assert time.monotonic() - started >= 0.25  # it did wait for the other instance
        async with database.engine.connect() as connection:
            mode = (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar()
        assert mode == "wal"
    finally:
        release.join()
        other.close()
        await database.aclose()
