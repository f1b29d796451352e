"""Request and response bodies, plus the record the store keeps.

The API models and ``UserRecord`` are deliberately separate types: the record carries the
password hash and the soft-delete marker, and no response model has a field to put them in,
so they cannot leak to a client by accident.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"

# Deliberately loose: the only real proof that an address works is a mail that arrives.
Email = Annotated[str, StringConstraints(pattern=EMAIL_PATTERN, max_length=254)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
# The upper bound keeps a single request from buying seconds of scrypt CPU time.
Password = Annotated[str, StringConstraints(min_length=8, max_length=128)]


@dataclass(slots=True)
class UserRecord:
    """A user as the store keeps it; internal, never serialised directly."""

    id: int
    email: str
    name: str
    password_hash: str
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


class UserCreate(BaseModel):
    """Body of ``POST /users``."""

    email: Email
    name: Name
    password: Password


class UserUpdate(BaseModel):
    """Body of ``PUT /users/{user_id}``: replaces email and name, password only if given."""

    email: Email
    name: Name
    password: Password | None = None


class UserOut(BaseModel):
    """A user as clients see it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    name: str
    created_at: datetime
    updated_at: datetime


class AdminUserOut(UserOut):
    """A user as administrators see it, soft-deleted ones included."""

    deleted_at: datetime | None


class LoginRequest(BaseModel):
    """Body of ``POST /auth/login``.

    No format checks beyond length: a malformed email simply matches no user, and the
    client gets the same 401 as for any other wrong credentials.
    """

    email: Annotated[str, StringConstraints(max_length=254)]
    password: Annotated[str, StringConstraints(max_length=128)]


class TokenOut(BaseModel):
    """Response of ``POST /auth/login``; send it back as ``Authorization: Bearer <token>``."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
