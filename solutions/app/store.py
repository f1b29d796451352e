"""User storage: the interface every store offers, and the in-memory store.

Deliberate flaw, kept for exercise 10.4: the users and the id counter of ``UserStore`` live
in CLASS attributes, i.e. in the memory of one Python process. Every app object in that
process shares them, which feels like a database, but a second instance of the API (another
uvicorn worker, container or machine) has its own empty copy: a user created through one
instance is a 404 on the next. The same goes for a job worker running as its own process
(``python -m solutions.app worker``, exercise 10.2): it cannot see the users of the API.

The fix of exercise 10.4 is the repository pattern: routes, jobs and the seeding code use
the ``UserRepository`` interface, and ``DATABASE_URL`` picks what stands behind it. Empty
(the default, which the 10.1-10.3 checks rely on): ``UserStore``, in memory. A SQLite or
PostgreSQL URL: ``SqlUserStore`` (``store_sql.py``), which every instance shares.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar, Protocol

from prometheus_client import Counter

from .metrics import Metrics, StoreOperation
from .models import UserRecord
from .settings import Settings

if TYPE_CHECKING:
    from .store_sql import Database


class EmailTakenError(Exception):
    """Another user that is not deleted already has this email."""


class UserNotFoundError(Exception):
    """No user with this id, or the user is soft-deleted."""


class UserRepository(Protocol):
    """What every user store offers; routes, jobs and the seeding code know only this.

    Each method is one round trip to the storage, and counts one store operation. Records
    come back as copies: a caller that changes one changes nothing stored. Deleted users are
    invisible to every method but ``list_all(include_deleted=True)`` and ``purge_deleted``.
    """

    async def list_users(self) -> list[UserRecord]:
        """Users that are not deleted, by id."""
        ...

    async def get_user(self, user_id: int) -> UserRecord | None:
        """The user with this id, or ``None`` if missing or deleted."""
        ...

    async def get_by_email(self, email: str) -> UserRecord | None:
        """The user with this email (case-insensitive), or ``None`` if missing or deleted."""
        ...

    async def create_user(self, *, email: str, name: str, password_hash: str) -> UserRecord:
        """Add a user with a new id; raises ``EmailTakenError``."""
        ...

    async def update_user(
        self, user_id: int, *, email: str, name: str, password_hash: str | None = None
    ) -> UserRecord:
        """Replace email and name, and the password hash if given.

        Raises ``UserNotFoundError`` or ``EmailTakenError``.
        """
        ...

    async def soft_delete_user(self, user_id: int) -> None:
        """Mark the user deleted; raises ``UserNotFoundError`` if missing or already deleted."""
        ...

    async def list_all(self, *, include_deleted: bool) -> list[UserRecord]:
        """All users by id, soft-deleted ones too if ``include_deleted``."""
        ...

    async def purge_deleted(self, *, deleted_before: datetime) -> int:
        """Remove for good the users soft-deleted before ``deleted_before``; return how many."""
        ...


class CountedStore:
    """What every store does on each call: count one operation, and wait the simulated
    latency once, like one round trip to a database server. No route calls more than one
    store method, so the metric counts exactly the requests that reach the store."""

    def __init__(
        self, *, metrics: Metrics, latency_ms: float = 0, counter: Counter | None = None
    ) -> None:
        # The counter of this instance's round trips: store_operations_total by default;
        # the background jobs' instance passes metrics.job_store_operations (exercise 10.2).
        self._operations = counter if counter is not None else metrics.store_operations
        self._latency_seconds = latency_ms / 1000

    async def _round_trip(self, operation: StoreOperation) -> None:
        self._operations.labels(operation=operation).inc()
        await asyncio.sleep(self._latency_seconds)


class UserStore(CountedStore):
    """Async CRUD over the process-wide list of users (a ``UserRepository``).

    An instance only holds what differs between apps (its metrics and simulated latency);
    the data is shared.

    Methods hand out copies of the records, as a database driver would: a caller that
    mutates or caches a record cannot change what the store holds.
    """

    _users: ClassVar[list[UserRecord]] = []
    # itertools.count is read via the class, so ids stay unique across all instances.
    _ids: ClassVar[Iterator[int]] = itertools.count(1)

    async def list_users(self) -> list[UserRecord]:
        """Users that are not deleted, by id."""
        await self._round_trip("list")
        return [replace(user) for user in self._users if user.deleted_at is None]

    async def get_user(self, user_id: int) -> UserRecord | None:
        """The user with this id, or ``None`` if missing or deleted."""
        await self._round_trip("get")
        user = self._find_active(user_id)
        return replace(user) if user else None

    async def get_by_email(self, email: str) -> UserRecord | None:
        """The user with this email (case-insensitive), or ``None`` if missing or deleted."""
        await self._round_trip("get_by_email")
        user = self._find_active_by_email(email)
        return replace(user) if user else None

    async def create_user(self, *, email: str, name: str, password_hash: str) -> UserRecord:
        """Add a user with the next id; raises ``EmailTakenError``."""
        await self._round_trip("create")
        # No await between the check and the append: on one event loop nothing else can
        # claim the email in between.
        if self._find_active_by_email(email):
            raise EmailTakenError(email)
        now = datetime.now(UTC)
        user = UserRecord(
            id=next(self._ids),
            email=email,
            name=name,
            password_hash=password_hash,
            created_at=now,
            updated_at=now,
        )
        self._users.append(user)
        return replace(user)

    async def update_user(
        self, user_id: int, *, email: str, name: str, password_hash: str | None = None
    ) -> UserRecord:
        """Replace email and name, and the password hash if given.

        Raises ``UserNotFoundError`` or ``EmailTakenError``.
        """
        await self._round_trip("update")
        user = self._find_active(user_id)
        if user is None:
            raise UserNotFoundError(user_id)
        owner = self._find_active_by_email(email)
        if owner is not None and owner.id != user_id:
            raise EmailTakenError(email)
        user.email = email
        user.name = name
        if password_hash is not None:
            user.password_hash = password_hash
        user.updated_at = datetime.now(UTC)
        return replace(user)

    async def soft_delete_user(self, user_id: int) -> None:
        """Mark the user deleted; raises ``UserNotFoundError`` if missing or already deleted.

        The record stays (administrators still see it) but every other method ignores it,
        and its email becomes free again.
        """
        await self._round_trip("delete")
        user = self._find_active(user_id)
        if user is None:
            raise UserNotFoundError(user_id)
        user.deleted_at = datetime.now(UTC)

    async def list_all(self, *, include_deleted: bool) -> list[UserRecord]:
        """All users by id, soft-deleted ones too if ``include_deleted``."""
        await self._round_trip("list_all")
        return [replace(user) for user in self._users if include_deleted or user.deleted_at is None]

    async def purge_deleted(self, *, deleted_before: datetime) -> int:
        """Remove for good the users soft-deleted before ``deleted_before``; return how many.

        For the recurring cleanup job (exercise 10.2). The list is rebuilt in place with no
        await in between, so no other call on the event loop sees it half purged.
        """
        await self._round_trip("purge")
        kept = [
            user
            for user in self._users
            if user.deleted_at is None or user.deleted_at >= deleted_before
        ]
        purged = len(self._users) - len(kept)
        # Slice assignment: the list stays the class attribute every instance shares.
        self._users[:] = kept
        return purged

    def _find_active(self, user_id: int) -> UserRecord | None:
        return next(
            (u for u in self._users if u.id == user_id and u.deleted_at is None),
            None,
        )

    def _find_active_by_email(self, email: str) -> UserRecord | None:
        wanted = email.casefold()
        return next(
            (u for u in self._users if u.email.casefold() == wanted and u.deleted_at is None),
            None,
        )


def build_database(settings: Settings) -> Database | None:
    """The database DATABASE_URL names, not connected yet; ``None`` for memory storage.

    One per app or worker process: the store of its requests and that of its jobs share it
    (and its connection pool). Whoever builds it opens it (``await database.open()``) first,
    and closes it (``await database.aclose()``) at the end.
    """
    if not settings.database_url:
        return None
    # Imported here, not at the top: SQLAlchemy takes a fifth of a second to import, which
    # memory storage (the default, and every app the 10.1-10.3 checks start) need not pay.
    from .store_sql import Database

    return Database.from_url(settings.database_url)


def build_user_store(
    settings: Settings,
    metrics: Metrics,
    *,
    database: Database | None,
    counter: Counter | None = None,
) -> UserRepository:
    """A store on ``database``, or in memory if it is ``None``; see ``CountedStore``."""
    if database is None:
        return UserStore(metrics=metrics, latency_ms=settings.store_latency_ms, counter=counter)
    from .store_sql import SqlUserStore

    return SqlUserStore(
        database, metrics=metrics, latency_ms=settings.store_latency_ms, counter=counter
    )
