"""Administration endpoints, all behind ``Authorization: Bearer <ADMIN_TOKEN>``."""

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Request, status
from redis.exceptions import RedisError

from ..deps import StoreDep, require_admin
from ..instances import Instance, InstanceRegistry
from ..models import AdminUserOut
from ..shutdown import ShutdownCoordinator

# Checked at router level so that no endpoint added here can forget it.
router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={status.HTTP_401_UNAUTHORIZED: {"description": "Missing or wrong admin token"}},
)


async def get_shutdown(request: Request) -> ShutdownCoordinator:
    return request.app.state.shutdown


async def get_instances(request: Request) -> InstanceRegistry:
    return request.app.state.instances


ShutdownDep = Annotated[ShutdownCoordinator, Depends(get_shutdown)]
InstancesDep = Annotated[InstanceRegistry, Depends(get_instances)]


@router.get("/users")
async def list_users(store: StoreDep, include_deleted: bool = False) -> list[AdminUserOut]:
    """All users by id, including soft-deleted ones if ``include_deleted`` is true."""
    users = await store.list_all(include_deleted=include_deleted)
    return [AdminUserOut.model_validate(user) for user in users]


@router.post(
    "/shutdown",
    status_code=status.HTTP_202_ACCEPTED,
    responses={status.HTTP_409_CONFLICT: {"description": "No server to stop (a test client)"}},
)
async def shutdown(coordinator: ShutdownDep, background: BackgroundTasks) -> dict[str, str]:
    """Shut the server down exactly as ``SIGTERM`` does (exercise 10.3).

    202: the shutdown starts once this answer is sent (a background task runs after the
    response), so the caller always gets it. Nothing here exits the process: the server
    drains and stops as on a signal, and exits with code 0.
    """
    if not coordinator.has_server:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "this app is not run by a server that can stop it (run it with python -m)",
        )
    background.add_task(coordinator.request, "admin")
    return {"status": "shutting down"}


@router.get(
    "/instances",
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"description": "Registry unreachable"}},
)
async def instances(registry: InstancesDep) -> list[Instance]:
    """The instances of the API and their state, ``serving`` or ``draining``."""
    try:
        return await registry.instances()
    except (RedisError, OSError):
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the instance registry cannot be reached"
        ) from None
