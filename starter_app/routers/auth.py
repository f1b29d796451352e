"""Login sessions: ``/auth/login``, ``/auth/me`` and ``/auth/logout``."""

from fastapi import APIRouter, status

from ..deps import BearerTokenDep, CurrentUserDep, SessionsDep, StoreDep, unauthorized
from ..models import LoginRequest, TokenOut, UserOut
from ..security import verify_password

router = APIRouter(prefix="/auth", tags=["auth"])

UNAUTHORIZED = {status.HTTP_401_UNAUTHORIZED: {"description": "Missing or invalid token"}}


@router.post("/login", responses=UNAUTHORIZED)
async def login(body: LoginRequest, store: StoreDep, sessions: SessionsDep) -> TokenOut:
    """Exchange email and password for a bearer token."""
    user = await store.get_by_email(body.email)
    password_ok = await verify_password(body.password, user.password_hash if user else None)
    if user is None or not password_ok:
        # One message for both cases, so the response does not reveal registered emails.
        raise unauthorized("Invalid email or password")
    return TokenOut(access_token=await sessions.create(user.id))


@router.get("/me", responses=UNAUTHORIZED)
async def me(user: CurrentUserDep) -> UserOut:
    """The user the token belongs to."""
    return UserOut.model_validate(user)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=UNAUTHORIZED)
async def logout(token: BearerTokenDep, sessions: SessionsDep) -> None:
    """End the session; the token is rejected from now on."""
    if not await sessions.revoke(token):
        raise unauthorized("Invalid or expired token")
