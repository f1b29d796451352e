"""``/auth``: login, the current user, logout, and that passwords never leak."""

import httpx
import pytest
from fastapi.testclient import TestClient

from .helpers import ADMIN_TOKEN, PASSWORD, bearer, create_user, login, unique_email

INVALID_LOGIN = {"detail": "Invalid email or password"}


def assert_401_bearer(response: httpx.Response) -> None:
    assert response.status_code == 401, f"expected 401, got {response.status_code}"
    assert response.headers.get("www-authenticate") == "Bearer"
    assert "detail" in response.json()


def test_login_me_logout(client: TestClient) -> None:
    user = create_user(client)

    login_response = client.post("/auth/login", json={"email": user["email"], "password": PASSWORD})
    assert login_response.status_code == 200, login_response.text
    body = login_response.json()
    assert body["token_type"] == "bearer"
    token = body["access_token"]

    me = client.get("/auth/me", headers=bearer(token))
    assert me.status_code == 200, me.text
    assert me.json() == user

    logout = client.post("/auth/logout", headers=bearer(token))
    assert logout.status_code == 204, logout.text
    assert_401_bearer(client.get("/auth/me", headers=bearer(token)))


def test_login_email_is_case_insensitive(client: TestClient) -> None:
    user = create_user(client)

    assert login(client, user["email"].upper())


def test_wrong_password_returns_401(client: TestClient) -> None:
    user = create_user(client)

    response = client.post(
        "/auth/login", json={"email": user["email"], "password": "wrong-password"}
    )

    assert response.status_code == 401
    assert response.json() == INVALID_LOGIN


def test_unknown_email_returns_the_same_401(client: TestClient) -> None:
    response = client.post("/auth/login", json={"email": unique_email(), "password": PASSWORD})

    assert response.status_code == 401
    assert response.json() == INVALID_LOGIN, "unknown email must look like a wrong password"


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("not-a-real-token"), {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["no-header", "unknown-token", "basic-scheme"],
)
def test_me_without_a_valid_token_returns_401(client: TestClient, headers: dict[str, str]) -> None:
    assert_401_bearer(client.get("/auth/me", headers=headers))


def test_logout_without_a_valid_token_returns_401(client: TestClient) -> None:
    assert_401_bearer(client.post("/auth/logout"))
    assert_401_bearer(client.post("/auth/logout", headers=bearer("not-a-real-token")))


def test_token_of_a_deleted_user_stops_working(client: TestClient) -> None:
    user = create_user(client)
    token = login(client, user["email"])

    client.delete(f"/users/{user['id']}")

    assert_401_bearer(client.get("/auth/me", headers=bearer(token)))


def test_password_change_takes_effect(client: TestClient) -> None:
    user = create_user(client)
    new_password = "a-brand-new-password"

    response = client.put(
        f"/users/{user['id']}",
        json={"email": user["email"], "name": user["name"], "password": new_password},
    )

    assert response.status_code == 200, response.text
    assert login(client, user["email"], new_password)
    old = client.post("/auth/login", json={"email": user["email"], "password": PASSWORD})
    assert old.status_code == 401, "the old password still works"


def test_password_never_appears_in_responses(client: TestClient) -> None:
    created = client.post(
        "/users", json={"email": unique_email(), "name": "Secretive", "password": PASSWORD}
    )
    user = created.json()
    token = login(client, user["email"])
    responses = {
        "POST /users": created,
        "GET /users": client.get("/users"),
        "GET /users/{id}": client.get(f"/users/{user['id']}"),
        "PUT /users/{id}": client.put(
            f"/users/{user['id']}", json={"email": user["email"], "name": "Still Secretive"}
        ),
        "GET /auth/me": client.get("/auth/me", headers=bearer(token)),
        "GET /admin/users": client.get(
            "/admin/users", params={"include_deleted": True}, headers=bearer(ADMIN_TOKEN)
        ),
    }

    for label, response in responses.items():
        assert response.status_code < 300, f"{label} failed: {response.text}"
        text = response.text.lower()
        assert "password" not in text, f"{label} mentions a password: {response.text[:200]}"
        assert PASSWORD not in text, f"{label} leaks the password"
        assert "scrypt$" not in text, f"{label} leaks a password hash"
