"""The users resource: ``/users`` CRUD with soft delete."""

import logging

from fastapi import APIRouter, HTTPException, Response, status
from starlette.concurrency import run_in_threadpool

from ..deps import JobsDep, StoreDep
from ..models import UserCreate, UserOut, UserUpdate
from ..security import hash_password
from ..store import EmailTakenError, UserNotFoundError

router = APIRouter(prefix="/users", tags=["users"])

logger = logging.getLogger(__name__)

NOT_FOUND = {status.HTTP_404_NOT_FOUND: {"description": "No such user, or it was deleted"}}
CONFLICT = {status.HTTP_409_CONFLICT: {"description": "Another user has this email"}}


def user_not_found(user_id: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"User {user_id} not found")


def email_taken() -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail="A user with this email already exists")


@router.get("")
async def list_users(store: StoreDep) -> list[UserOut]:
    """All users that are not deleted, by id."""
    return [UserOut.model_validate(user) for user in await store.list_users()]


@router.get("/{user_id}", responses=NOT_FOUND)
async def get_user(user_id: int, store: StoreDep) -> UserOut:
    """One user."""
    user = await store.get_user(user_id)
    if user is None:
        raise user_not_found(user_id)
    return UserOut.model_validate(user)


@router.post("", status_code=status.HTTP_201_CREATED, responses=CONFLICT)
async def create_user(
    body: UserCreate, store: StoreDep, jobs: JobsDep, response: Response
) -> UserOut:
    """Register a user; the ``Location`` header points at the new resource.

    The welcome email is only enqueued here (exercise 10.2): a worker sends it, so the
    client never waits for the mail server, nor fails because of it.
    """
    password_hash = await hash_password(body.password)
    try:
        user = await store.create_user(
            email=body.email, name=body.name, password_hash=password_hash
        )
    except EmailTakenError:
        raise email_taken() from None
    try:
        # In a thread: enqueueing writes to SQLite, which must not block the event loop.
        await run_in_threadpool(jobs.enqueue, "send_welcome_email", {"user_id": user.id})
    except Exception:
        # The user exists whatever happens to the email: answer 201 and log the loss.
        logger.exception("could not enqueue the welcome email of user %d", user.id)
    response.headers["Location"] = f"{router.prefix}/{user.id}"
    return UserOut.model_validate(user)


@router.put("/{user_id}", responses=NOT_FOUND | CONFLICT)
async def update_user(user_id: int, body: UserUpdate, store: StoreDep) -> UserOut:
    """Replace a user's email and name, and the password if one is given."""
    password_hash = await hash_password(body.password) if body.password is not None else None
    try:
        user = await store.update_user(
            user_id, email=body.email, name=body.name, password_hash=password_hash
        )
    except UserNotFoundError:
        raise user_not_found(user_id) from None
    except EmailTakenError:
        raise email_taken() from None
    return UserOut.model_validate(user)


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_user(user_id: int, store: StoreDep) -> None:
    """Soft-delete a user: hidden from now on, but kept for the admin view."""
    try:
        await store.soft_delete_user(user_id)
    except UserNotFoundError:
        raise user_not_found(user_id) from None
