"""Small helpers shared by the app tests."""

import uuid
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

ADMIN_TOKEN = "test-admin-token"
PASSWORD = "correct-horse-battery"

# make_client(**settings_overrides) -> an entered TestClient of a fresh app
ClientFactory = Callable[..., TestClient]


def unique_email(label: str = "user") -> str:
    """An email no other test uses: the store is shared by every app in the process."""
    return f"{label}-{uuid.uuid4().hex}@example.com"


def create_user(
    client: TestClient,
    *,
    email: str | None = None,
    name: str = "Test User",
    password: str = PASSWORD,
) -> dict[str, Any]:
    """Create a user through the API and return the response body."""
    body = {"email": email or unique_email(), "name": name, "password": password}
    response = client.post("/users", json=body)
    assert response.status_code == 201, (
        f"POST /users failed: {response.status_code} {response.text}"
    )
    return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login(client: TestClient, email: str, password: str = PASSWORD) -> str:
    """Log in and return the access token."""
    response = client.post("/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, f"login failed: {response.status_code} {response.text}"
    return response.json()["access_token"]


def metric_samples(
    client: TestClient, sample_name: str
) -> dict[tuple[tuple[str, str], ...], float]:
    """All samples called ``sample_name`` from ``GET /metrics``, keyed by sorted labels."""
    response = client.get("/metrics")
    assert response.status_code == 200, f"GET /metrics failed: {response.status_code}"
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == sample_name
    }


def store_operations(client: TestClient) -> dict[str, float]:
    """``store_operations_total`` by operation, as the app exposes it."""
    samples = metric_samples(client, "store_operations_total")
    return {dict(labels)["operation"]: value for labels, value in samples.items()}


def http_requests(client: TestClient, *, method: str, route: str, status: int) -> float:
    """The value of one ``http_requests_total`` series, 0 if it does not exist yet."""
    samples = metric_samples(client, "http_requests_total")
    labels = tuple(sorted({"method": method, "route": route, "status": str(status)}.items()))
    return samples.get(labels, 0.0)
