"""Helpers shared by the 10.4 checks: users and sessions through one instance or another.

Each request goes to one named instance (`AppProcess.request`) or through the balancer
(`Cluster.request`); neither raises, so a check can say what came back from where.
"""

from __future__ import annotations

import json
from typing import Any

from grader._process import AppProcess, Outcome
from grader.testing import PASSWORD, fail, unique_email

INSTANCE_HEADER = "x-instance-id"


def json_of(outcome: Outcome) -> Any:
    try:
        return json.loads(outcome.body)
    except ValueError:
        return None


def where(app: AppProcess) -> str:
    """`instance-2`: the instance's name in messages."""
    return app.env.get("INSTANCE_ID", f"the instance on port {app.port}")


def shown(outcome: Outcome) -> str:
    """`404 {"detail": "User not found"}` or `no response (...)`, for messages."""
    if outcome.status is None:
        return outcome.describe()
    body = outcome.body if len(outcome.body) <= 200 else outcome.body[:200] + "..."
    return f"{outcome.status} {body}".strip()


def create_user(app: AppProcess | Any, *, name: str = "Ada Lovelace") -> dict[str, Any]:
    """POST /users through `app` (an instance or the cluster); the created user."""
    body = {"email": unique_email("scale"), "name": name, "password": PASSWORD}
    outcome = app.request("POST", "/users", json=body)
    user = json_of(outcome)
    if outcome.status != 201 or not isinstance(user, dict) or "id" not in user:
        fail(
            f"POST /users {json.dumps(body)} to {describe(app)}",
            expected="201 with the created user",
            observed=shown(outcome),
        )
    return {**user, "password": PASSWORD}


def login(app: AppProcess, email: str) -> dict[str, str]:
    """POST /auth/login on `app`; the Authorization header of the new session."""
    outcome = app.request("POST", "/auth/login", json={"email": email, "password": PASSWORD})
    token = (json_of(outcome) or {}).get("access_token") if outcome.status == 200 else None
    if not isinstance(token, str):
        fail(
            f"POST /auth/login as {email} to {where(app)}",
            expected='200 {"access_token": ...}',
            observed=shown(outcome),
        )
    return {"Authorization": f"Bearer {token}"}


def describe(app: AppProcess | Any) -> str:
    return where(app) if isinstance(app, AppProcess) else "the load balancer"
