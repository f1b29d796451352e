"""Administration endpoints, all behind ``Authorization: Bearer <ADMIN_TOKEN>``."""

from fastapi import APIRouter, Depends, status

from ..deps import StoreDep, require_admin
from ..models import AdminUserOut

# Checked at router level so that no endpoint added here can forget it.
router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={status.HTTP_401_UNAUTHORIZED: {"description": "Missing or wrong admin token"}},
)


@router.get("/users")
async def list_users(store: StoreDep, include_deleted: bool = False) -> list[AdminUserOut]:
    """All users by id, including soft-deleted ones if ``include_deleted`` is true."""
    users = await store.list_all(include_deleted=include_deleted)
    return [AdminUserOut.model_validate(user) for user in users]
