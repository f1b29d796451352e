"""``/users``: CRUD, validation, conflicts and soft delete."""

from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .helpers import PASSWORD, create_user, unique_email

PUBLIC_FIELDS = {"id", "email", "name", "created_at", "updated_at"}
MISSING_ID = 10**9


def timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_create_returns_201_location_and_public_fields(client: TestClient) -> None:
    email = unique_email()
    response = client.post("/users", json={"email": email, "name": "  Ada  ", "password": PASSWORD})

    assert response.status_code == 201, response.text
    user = response.json()
    assert set(user) == PUBLIC_FIELDS, f"unexpected fields in {user}"
    assert isinstance(user["id"], int) and user["id"] >= 1
    assert user["email"] == email
    assert user["name"] == "Ada", "name should be stripped of surrounding whitespace"
    assert response.headers.get("location") == f"/users/{user['id']}"


def test_get_returns_the_created_user(client: TestClient) -> None:
    created = create_user(client)

    response = client.get(f"/users/{created['id']}")

    assert response.status_code == 200, response.text
    assert response.json() == created


def test_list_contains_created_users_in_id_order(client: TestClient) -> None:
    first, second = create_user(client), create_user(client)

    response = client.get("/users")

    assert response.status_code == 200, response.text
    users = response.json()
    ids = [user["id"] for user in users]
    assert ids == sorted(ids), f"users are not ordered by id: {ids}"
    assert first in users and second in users, "created users missing from GET /users"


def test_get_missing_user_returns_404(client: TestClient) -> None:
    response = client.get(f"/users/{MISSING_ID}")

    assert response.status_code == 404
    assert response.json() == {"detail": f"User {MISSING_ID} not found"}


@pytest.mark.parametrize("transform", [str, str.upper], ids=["same-case", "upper-case"])
def test_duplicate_email_returns_409(client: TestClient, transform: Any) -> None:
    email = unique_email()
    create_user(client, email=email)

    response = client.post(
        "/users", json={"email": transform(email), "name": "Twin", "password": PASSWORD}
    )

    assert response.status_code == 409, f"duplicate email accepted: {response.text}"
    assert "detail" in response.json()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"email": "a b@example.com"}, "email"),
        ({"password": "short"}, "password"),
        ({"password": "x" * 129}, "password"),
        ({"name": "   "}, "name"),
        ({"name": "n" * 101}, "name"),
        ({"name": None}, "name"),
    ],
    ids=[
        "bad-email",
        "email-with-space",
        "short-password",
        "long-password",
        "blank-name",
        "long-name",
        "missing-name",
    ],
)
def test_invalid_create_body_returns_422(
    client: TestClient, change: dict[str, Any], field: str
) -> None:
    body = {"email": unique_email(), "name": "Valid Name", "password": PASSWORD} | change
    body = {key: value for key, value in body.items() if value is not None}

    response = client.post("/users", json=body)

    assert response.status_code == 422, f"invalid body accepted: {body}"
    error_fields = [error["loc"][-1] for error in response.json()["detail"]]
    assert field in error_fields, f"expected an error on {field!r}, got {error_fields}"


def test_update_replaces_email_and_name(client: TestClient) -> None:
    created = create_user(client)
    new_email = unique_email("renamed")

    response = client.put(f"/users/{created['id']}", json={"email": new_email, "name": "New Name"})

    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["email"] == new_email and updated["name"] == "New Name"
    assert updated["created_at"] == created["created_at"]
    assert timestamp(updated["updated_at"]) >= timestamp(created["updated_at"])
    assert client.get(f"/users/{created['id']}").json() == updated


def test_update_may_change_the_case_of_the_own_email(client: TestClient) -> None:
    created = create_user(client)

    response = client.put(
        f"/users/{created['id']}", json={"email": created["email"].upper(), "name": "Same"}
    )

    assert response.status_code == 200, f"own email treated as taken: {response.text}"


def test_update_missing_user_returns_404(client: TestClient) -> None:
    response = client.put(f"/users/{MISSING_ID}", json={"email": unique_email(), "name": "X"})

    assert response.status_code == 404
    assert response.json() == {"detail": f"User {MISSING_ID} not found"}


def test_update_to_another_users_email_returns_409(client: TestClient) -> None:
    owner, other = create_user(client), create_user(client)

    response = client.put(
        f"/users/{other['id']}", json={"email": owner["email"].upper(), "name": "Thief"}
    )

    assert response.status_code == 409, f"took another user's email: {response.text}"
    assert client.get(f"/users/{other['id']}").json() == other, "failed update changed data"


def test_invalid_update_body_returns_422(client: TestClient) -> None:
    created = create_user(client)

    response = client.put(f"/users/{created['id']}", json={"email": "nope", "name": "X"})

    assert response.status_code == 422


def test_delete_hides_the_user(client: TestClient) -> None:
    created = create_user(client)

    response = client.delete(f"/users/{created['id']}")

    assert response.status_code == 204
    assert response.content == b"", "204 must have an empty body"
    assert client.get(f"/users/{created['id']}").status_code == 404
    listed_ids = [user["id"] for user in client.get("/users").json()]
    assert created["id"] not in listed_ids, "deleted user still listed"
    again = client.delete(f"/users/{created['id']}")
    assert again.status_code == 404, "deleting twice should be a 404"
    assert again.json() == {"detail": f"User {created['id']} not found"}


def test_delete_missing_user_returns_404(client: TestClient) -> None:
    assert client.delete(f"/users/{MISSING_ID}").status_code == 404


def test_email_of_a_deleted_user_can_be_reused(client: TestClient) -> None:
    created = create_user(client)
    client.delete(f"/users/{created['id']}")

    reused = create_user(client, email=created["email"])

    assert reused["id"] != created["id"], "a new user must get a new id"
