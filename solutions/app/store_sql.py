"""Users in a SQL database that every instance shares (exercise 10.4).

``DATABASE_URL`` names the database: ``sqlite:///path`` for the processes of one host,
``postgresql://user:password@host:port/db`` for instances on any host. Both go through
SQLAlchemy Core (no ORM: one table, written by hand, reads better than a mapping) on its
asyncio engine, with the aiosqlite and psycopg 3 drivers.

What the database does for us, so that no instance has to coordinate with another:

- ids come from it (SQLite's AUTOINCREMENT, PostgreSQL's SERIAL), unique across processes
  and never reused, even after a purge;
- it enforces "one email per user that is not deleted" with a partial unique index, so two
  instances racing to create one email get one row and one ``IntegrityError`` (a 409). The
  index is on ``email_key``, the email ``casefold()``-ed in Python: SQLite's ``lower()``
  folds ASCII only and PostgreSQL's depends on the database's locale, while Python's rule
  is the one the memory store uses, and the same everywhere;
- every change is one statement in one transaction: no read-then-write window between them.

The ``users`` table is created at startup if it is missing (``Database.open``), by every
instance, possibly at the same moment; see ``open`` for how that stays safe.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import (
    Column,
    ColumnElement,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.types import TypeDecorator

from .metrics import Metrics
from .models import UserRecord
from .store import CountedStore, EmailTakenError, UserNotFoundError

# The asyncio driver of each database; DATABASE_URL may name it or leave it out.
ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "psycopg"}
# How long a SQLite writer waits for another process's write to finish, instead of failing
# at once with "database is locked". Writes take milliseconds: seconds is ample.
SQLITE_BUSY_TIMEOUT_SECONDS = 10.0
# Between two tries to switch a SQLite file to WAL mode (see Database._use_wal).
WAL_RETRY_SECONDS = 0.02
# Any fixed 64-bit number, the same in every instance: the PostgreSQL advisory lock taken
# while the schema is created. (These are the bytes of "UsersAPI".)
SCHEMA_LOCK_KEY = 0x5573657273415049


class UtcDateTime(TypeDecorator[datetime]):
    """A moment that comes back timezone-aware and in UTC from both databases.

    PostgreSQL's ``timestamptz`` keeps the instant but hands it back in the session's time
    zone, the server's unless set. SQLite has no date type: SQLAlchemy stores text without
    a zone. So values go in as UTC (zone dropped for SQLite, where every stored value is
    UTC, which also keeps its text comparable in order), and come out as aware UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: store moments with their time zone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(254), nullable=False),
    # email.casefold(): what uniqueness and lookups by email compare (module docstring).
    Column("email_key", Text, nullable=False),
    Column("name", String(100), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("deleted_at", UtcDateTime, nullable=True),
    # AUTOINCREMENT: without it SQLite may hand a purged user's id to the next new user.
    sqlite_autoincrement=True,
)
ACTIVE = users.c.deleted_at.is_(None)
# Unique among the users that are not deleted: a deleted user's email is free again.
active_email_index = Index(
    "users_active_email_key",
    users.c.email_key,
    unique=True,
    sqlite_where=ACTIVE,
    postgresql_where=ACTIVE,
)


class Database:
    """The engine (a connection pool) of one process, and the schema it needs.

    Shared by the app's store and its jobs' store. Build it anywhere (nothing connects
    then); ``open`` it on the event loop that will use it, ``aclose`` it on the same one.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.kind: str = engine.dialect.name  # "sqlite" or "postgresql"

    @classmethod
    def from_url(cls, url: str) -> Database:
        """A database for a URL that ``Settings`` accepted; it connects on first use."""
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        parsed = parsed.set(drivername=f"{backend}+{ASYNC_DRIVERS[backend]}")
        connect_args: dict[str, Any] = {}
        if backend == "sqlite":
            # sqlite3's timeout is SQLite's busy timeout: concurrent writers from several
            # processes wait their turn instead of failing.
            connect_args["timeout"] = SQLITE_BUSY_TIMEOUT_SECONDS
        return cls(create_async_engine(parsed, connect_args=connect_args))

    async def open(self) -> None:
        """Create the table and its index if missing; safe when instances start together.

        ``IF NOT EXISTS`` alone is not enough. PostgreSQL checks for the table, then
        creates it and its row type; two sessions can both pass the check and one fails
        on a duplicate ``pg_type`` entry. So the creation runs under a transaction-scoped
        advisory lock: the instances take turns, and each after the first finds the
        table there. SQLite runs each statement under the database's write lock, and the
        busy timeout makes the others wait for it, so ``IF NOT EXISTS`` is enough there.
        SQLite also switches the file to WAL mode (kept in the file), in which readers
        never wait for a writer.
        """
        if self.kind == "sqlite":
            await self._use_wal()
        async with self.engine.begin() as connection:
            if self.kind == "postgresql":
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY}
                )
            await connection.execute(CreateTable(users, if_not_exists=True))
            await connection.execute(CreateIndex(active_email_index, if_not_exists=True))

    async def _use_wal(self) -> None:
        """Switch the SQLite file to WAL mode, waiting for instances that do it at once.

        Changing the journal mode needs the file to itself, and SQLite answers "database is
        locked" at once, without its busy timeout, when another connection holds it then
        (it does not wait where waiting could deadlock). Two instances starting on a new
        file together hit that: so retry, briefly, for as long as the busy timeout.
        """
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
        while True:
            try:
                async with self.engine.connect() as connection:
                    await connection.exec_driver_sql("PRAGMA journal_mode=WAL")
                return
            except OperationalError as exc:
                if "locked" not in str(exc.orig) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(WAL_RETRY_SECONDS)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


class SqlUserStore(CountedStore):
    """A ``UserRepository`` on a ``Database``: the same methods and answers as ``UserStore``.

    Each method is one statement, plus the simulated latency and the operation count that
    every store has (``CountedStore``).
    """

    def __init__(
        self,
        database: Database,
        *,
        metrics: Metrics,
        latency_ms: float = 0,
        counter: Counter | None = None,
    ) -> None:
        super().__init__(metrics=metrics, latency_ms=latency_ms, counter=counter)
        self._engine = database.engine

    async def list_users(self) -> list[UserRecord]:
        """Users that are not deleted, by id."""
        await self._round_trip("list")
        return await self._select(ACTIVE)

    async def get_user(self, user_id: int) -> UserRecord | None:
        """The user with this id, or ``None`` if missing or deleted."""
        await self._round_trip("get")
        found = await self._select(users.c.id == user_id, ACTIVE)
        return found[0] if found else None

    async def get_by_email(self, email: str) -> UserRecord | None:
        """The user with this email (case-insensitive), or ``None`` if missing or deleted."""
        await self._round_trip("get_by_email")
        found = await self._select(users.c.email_key == email.casefold(), ACTIVE)
        return found[0] if found else None

    async def create_user(self, *, email: str, name: str, password_hash: str) -> UserRecord:
        """Add a user with an id from the database; raises ``EmailTakenError``."""
        await self._round_trip("create")
        now = datetime.now(UTC)
        statement = (
            insert(users)
            .values(
                email=email,
                email_key=email.casefold(),
                name=name,
                password_hash=password_hash,
                created_at=now,
                updated_at=now,
            )
            .returning(*users.c)
        )
        try:
            async with self._engine.begin() as connection:
                row = (await connection.execute(statement)).one()
        except IntegrityError:
            # The id is the database's own, so the only constraint an insert can break is
            # the unique email of the users not deleted.
            raise EmailTakenError(email) from None
        return _record(row)

    async def update_user(
        self, user_id: int, *, email: str, name: str, password_hash: str | None = None
    ) -> UserRecord:
        """Replace email and name, and the password hash if given.

        Raises ``UserNotFoundError`` or ``EmailTakenError``.
        """
        await self._round_trip("update")
        values: dict[str, Any] = {
            "email": email,
            "email_key": email.casefold(),
            "name": name,
            "updated_at": datetime.now(UTC),
        }
        if password_hash is not None:
            values["password_hash"] = password_hash
        statement = (
            update(users).where(users.c.id == user_id, ACTIVE).values(values).returning(*users.c)
        )
        try:
            async with self._engine.begin() as connection:
                row = (await connection.execute(statement)).one_or_none()
        except IntegrityError:
            raise EmailTakenError(email) from None
        # No row: no such user. Checked after the update, which then changed nothing, so
        # a missing user is a 404 even with a taken email, as with the memory store.
        if row is None:
            raise UserNotFoundError(user_id)
        return _record(row)

    async def soft_delete_user(self, user_id: int) -> None:
        """Mark the user deleted; raises ``UserNotFoundError`` if missing or already deleted."""
        await self._round_trip("delete")
        statement = (
            update(users).where(users.c.id == user_id, ACTIVE).values(deleted_at=datetime.now(UTC))
        )
        async with self._engine.begin() as connection:
            result = await connection.execute(statement)
        if result.rowcount == 0:
            raise UserNotFoundError(user_id)

    async def list_all(self, *, include_deleted: bool) -> list[UserRecord]:
        """All users by id, soft-deleted ones too if ``include_deleted``."""
        await self._round_trip("list_all")
        return await self._select() if include_deleted else await self._select(ACTIVE)

    async def purge_deleted(self, *, deleted_before: datetime) -> int:
        """Remove for good the users soft-deleted before ``deleted_before``; return how many."""
        await self._round_trip("purge")
        statement = delete(users).where(
            users.c.deleted_at.is_not(None), users.c.deleted_at < deleted_before
        )
        async with self._engine.begin() as connection:
            result = await connection.execute(statement)
        return result.rowcount

    async def _select(self, *conditions: ColumnElement[bool]) -> list[UserRecord]:
        async with self._engine.connect() as connection:
            result = await connection.execute(select(users).where(*conditions).order_by(users.c.id))
            return [_record(row) for row in result]


def _record(row: Row[Any]) -> UserRecord:
    return UserRecord(
        id=row.id,
        email=row.email,
        name=row.name,
        password_hash=row.password_hash,
        created_at=row.created_at,
        updated_at=row.updated_at,
        deleted_at=row.deleted_at,
    )
