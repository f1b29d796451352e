"""``/admin/users``: the admin token, and the view that includes soft-deleted users."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from .helpers import ADMIN_TOKEN, bearer, create_user


def admin_users(client: TestClient, **params: Any) -> dict[int, dict[str, Any]]:
    response = client.get("/admin/users", params=params, headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 200, response.text
    return {user["id"]: user for user in response.json()}


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong-token"), {"Authorization": f"Basic {ADMIN_TOKEN}"}],
    ids=["no-header", "wrong-token", "basic-scheme"],
)
def test_admin_without_the_admin_token_returns_401(
    client: TestClient, headers: dict[str, str]
) -> None:
    response = client.get("/admin/users", headers=headers)

    assert response.status_code == 401, f"admin endpoint open with headers {headers}"
    assert response.headers.get("www-authenticate") == "Bearer"
    assert "detail" in response.json()


def test_admin_lists_deleted_users_only_when_asked(client: TestClient) -> None:
    kept, deleted = create_user(client), create_user(client)
    client.delete(f"/users/{deleted['id']}")

    everyone = admin_users(client, include_deleted="true")
    active = admin_users(client, include_deleted="false")
    default = admin_users(client)

    assert everyone[kept["id"]] == kept | {"deleted_at": None}
    assert everyone[deleted["id"]]["deleted_at"] is not None, "deleted_at not set"
    assert kept["id"] in active and deleted["id"] not in active
    assert default == active, "include_deleted should default to false"
    ids = list(everyone)
    assert ids == sorted(ids), f"admin users are not ordered by id: {ids}"
