"""Login sessions, kept in process memory.

Deliberate flaw, kept for exercise 10.4: the sessions live in a CLASS attribute, i.e. in the
memory of one Python process. Behind a load balancer, a token issued by one instance is
unknown to the others, so a logged-in user is randomly logged out; and a restart logs
everyone out. Scaling out means moving sessions to a shared store (Redis, a database) or to
self-contained signed tokens.
"""

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar


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

    def _drop_expired(self, now: datetime) -> None:
        # Tokens that are never used again would otherwise pile up forever.
        expired = [token for token, s in self._sessions.items() if s.expires_at <= now]
        for token in expired:
            del self._sessions[token]
