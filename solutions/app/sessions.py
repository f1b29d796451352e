"""Login sessions: the interface every session store offers, and the in-memory store.

Deliberate flaw, kept for exercise 10.4: the sessions of ``SessionStore`` live in a CLASS
attribute, i.e. in the memory of one Python process. Behind a load balancer, a token issued
by one instance is unknown to the others, so a logged-in user is randomly logged out; and a
restart logs everyone out. Scaling out means moving sessions to a shared store (Redis, a
database) or to self-contained signed tokens. The fix of exercise 10.4 is the first:
``SESSION_BACKEND=redis`` puts them in Redis (``sessions_redis.py``) behind the same
interface, ``SessionBackend``; memory stays the default.
"""

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Protocol


class SessionStoreUnavailableError(Exception):
    """The shared session store cannot be reached; the app answers 503, not 500.

    A 503 says "try again soon", which is true: the sessions are still there, only out of
    reach, so nobody is told that their token is wrong.
    """


class SessionBackend(Protocol):
    """What every session store offers. Any method may raise ``SessionStoreUnavailableError``."""

    async def create(self, user_id: int) -> str:
        """Start a session for ``user_id`` and return its token."""
        ...

    async def get_user_id(self, token: str) -> int | None:
        """The user id behind ``token``, or ``None`` if unknown or expired."""
        ...

    async def revoke(self, token: str) -> bool:
        """End the session; ``False`` if the token was unknown or already expired."""
        ...

    async def aclose(self) -> None:
        """Release connections; called once, when the app stops."""
        ...


@dataclass(frozen=True, slots=True)
class Session:
    user_id: int
    expires_at: datetime


class SessionStore:
    """Opaque bearer tokens mapped to user ids, each valid for ``ttl_seconds``.

    The methods are async although nothing here waits: a shared store that replaces this
    class will do network I/O, and then no caller has to change.
    """

    _sessions: ClassVar[dict[str, Session]] = {}

    def __init__(self, *, ttl_seconds: int) -> None:
        self._ttl = timedelta(seconds=ttl_seconds)

    async def create(self, user_id: int) -> str:
        """Start a session for ``user_id`` and return its token."""
        now = datetime.now(UTC)
        self._drop_expired(now)
        token = secrets.token_urlsafe(32)
        self._sessions[token] = Session(user_id=user_id, expires_at=now + self._ttl)
        return token

    async def get_user_id(self, token: str) -> int | None:
        """The user id behind ``token``, or ``None`` if unknown or expired."""
        session = self._sessions.get(token)
        if session is None or session.expires_at <= datetime.now(UTC):
            return None
        return session.user_id

    async def revoke(self, token: str) -> bool:
        """End the session; ``False`` if the token was unknown or already expired."""
        user_id = await self.get_user_id(token)
        self._sessions.pop(token, None)
        return user_id is not None

    async def aclose(self) -> None:
        """Nothing to release: the sessions live on in the process, for its other apps."""

    def _drop_expired(self, now: datetime) -> None:
        # Tokens that are never used again would otherwise pile up forever.
        expired = [token for token, s in self._sessions.items() if s.expires_at <= now]
        for token in expired:
            del self._sessions[token]
