"""Graded checks for the acceptance criteria of exercise 10.4.

Three criteria are the scaling document (SCALING.md in the app package), checked for its
sections and what each covers. The other three run the app as a real cluster: several
`python -m <package>` instances sharing one database and one Redis, reached one by one or
through a round-robin load balancer, as a deploy would run them.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import pytest
from conftest import own_job_queue
from doccheck import BOTTLENECKS, RECOMMENDATIONS, SHARED_STATE, Section, check_topics
from scalecheck import INSTANCE_HEADER, create_user, json_of, login, shown, where

from grader._process import AppProcess
from grader.testing import fail

# Each read through the balancer is repeated this often: with three instances in round
# robin, every instance answers twice.
READS = 6


# --- analysis-document, shared-state, recommendations: the document ---------------------


@pytest.mark.criterion("analysis-document")
def test_the_analysis_covers_the_four_bottlenecks(scaling_doc: list[Section]) -> None:
    check_topics(
        scaling_doc,
        *BOTTLENECKS,
        expected="a section on each bottleneck (static list storage, in-memory cache, "
        "background jobs, session state), each naming the problem and a fix",
    )


@pytest.mark.criterion("shared-state")
def test_the_shared_state_is_listed_with_where_it_lives(scaling_doc: list[Section]) -> None:
    check_topics(
        scaling_doc,
        SHARED_STATE,
        expected="a shared-state section listing at least four pieces of state the "
        "instances share and where each lives (Redis, PostgreSQL)",
    )


@pytest.mark.criterion("recommendations")
def test_recommendations_are_documented(scaling_doc: list[Section]) -> None:
    check_topics(
        scaling_doc,
        RECOMMENDATIONS,
        expected="a recommendations section with at least three concrete recommendations",
    )


# --- shared-storage: a user written through one instance is read through another --------


def check_users_are_shared(first: AppProcess, second: AppProcess, database: str) -> None:
    """Create, read, update, delete and re-create across two instances of one database."""
    context = f"(two instances, one {database} DATABASE_URL)"
    user = create_user(first)
    path = f"/users/{user['id']}"
    read = second.request("GET", path)
    if read.status != 200 or (json_of(read) or {}).get("email") != user["email"]:
        fail(
            f"POST /users to {where(first)}, then GET {path} from {where(second)} {context}",
            expected=f"200 with the user created through {where(first)}",
            observed=shown(read)
            + " (each instance still keeps its own users: read them from DATABASE_URL)",
        )
    update = {"email": user["email"], "name": "Grace Hopper"}
    put = second.request("PUT", path, json=update)
    if put.status != 200:
        fail(f"PUT {path} on {where(second)} {context}", expected="200",
             observed=shown(put))  # fmt: skip
    read = first.request("GET", path)
    if (json_of(read) or {}).get("name") != "Grace Hopper":
        fail(
            f"PUT {path} with name Grace Hopper on {where(second)}, then GET {path} from "
            f"{where(first)} {context}",
            expected="the new name",
            observed=shown(read),
        )
    again = second.request("POST", "/users", json={**update, "password": user["password"]})
    if again.status != 409:
        fail(
            f"POST /users on {where(second)} with the email of a user created through "
            f"{where(first)} {context}",
            expected="409: emails are unique across every instance",
            observed=shown(again),
        )
    other = create_user(second)
    if other["id"] == user["id"]:
        fail(
            f"POST /users on {where(first)}, then another on {where(second)} {context}",
            expected="two different ids",
            observed=f"both got id {user['id']}: ids must come from the shared database",
        )
    delete = first.request("DELETE", path)
    read = second.request("GET", path)
    if delete.status != 204 or read.status != 404:
        fail(
            f"DELETE {path} on {where(first)}, then GET {path} from {where(second)} {context}",
            expected="204, then 404",
            observed=f"{shown(delete)}, then {shown(read)}",
        )


@pytest.mark.criterion("shared-storage")
def test_users_are_shared_through_sqlite_and_survive_a_restart(
    launch_cluster: Callable[..., Any], cluster_settings: dict[str, str]
) -> None:
    settings = {**cluster_settings, "CACHE_ENABLED": False}
    cluster = launch_cluster(n=2, instance_env=own_job_queue, **settings)
    first, second = cluster.instances
    check_users_are_shared(first, second, "SQLite")
    kept = create_user(first)
    cluster.kill()
    restarted = launch_cluster(n=1, instance_env=own_job_queue, **settings)
    read = restarted.instances[0].request("GET", f"/users/{kept['id']}")
    if read.status != 200:
        fail(
            f"POST /users, stop every instance, start a new one on the same DATABASE_URL, "
            f"then GET /users/{kept['id']}",
            expected="200: the users live in the database, not in a process",
            observed=shown(read),
        )


@pytest.mark.criterion("shared-storage")
def test_users_are_shared_through_postgresql(
    launch_cluster: Callable[..., Any],
    cluster_settings: dict[str, str],
    postgres_database: str,
) -> None:
    settings = {**cluster_settings, "CACHE_ENABLED": False, "DATABASE_URL": postgres_database}
    cluster = launch_cluster(n=2, instance_env=own_job_queue, **settings)
    check_users_are_shared(*cluster.instances, "PostgreSQL")


# --- multiple-instances: the cluster, behind a load balancer -----------------------------


@pytest.mark.criterion("multiple-instances")
def test_a_cluster_of_three_answers_consistently_through_the_balancer(
    launch_cluster: Callable[..., Any], cluster_settings: dict[str, str]
) -> None:
    cluster = launch_cluster(n=3, instance_env=own_job_queue, **cluster_settings)
    names = [where(app) for app in cluster.instances]
    served = collections.Counter(
        cluster.request("GET", "/health").headers.get(INSTANCE_HEADER) for _ in range(6 * 3)
    )
    if set(served) != set(names):
        fail(
            f"18 x GET /health through the load balancer ({cluster.balancer}) in front of "
            f"{', '.join(names)}",
            expected=f"every response with an {INSTANCE_HEADER} header naming its instance "
            "(its INSTANCE_ID), all three instances among them",
            observed=", ".join(f"{n or '(no header)'}: {c}" for n, c in served.most_common()),
        )
    user = create_user(cluster)
    path = f"/users/{user['id']}"
    expect_everywhere(cluster, path, "the created user", lambda o: o.status == 200)
    put = cluster.request("PUT", path, json={"email": user["email"], "name": "Grace Hopper"})
    if put.status != 200:
        fail(f"PUT {path} through the load balancer", expected="200", observed=shown(put))
    expect_everywhere(
        cluster, path, "the new name, Grace Hopper, from every instance (a cached copy on "
        "one instance must not outlive an update made through another)",
        lambda o: o.status == 200 and (json_of(o) or {}).get("name") == "Grace Hopper",
    )  # fmt: skip
    delete = cluster.request("DELETE", path)
    if delete.status != 204:
        fail(f"DELETE {path} through the load balancer", expected="204", observed=shown(delete))
    expect_everywhere(cluster, path, "404 from every instance", lambda o: o.status == 404)


def expect_everywhere(cluster: Any, path: str, expected: str, good: Callable[..., bool]) -> None:
    """READS x GET `path` through the balancer; fail on the first bad answer, naming the
    instance that gave it and whether it came from a cache."""
    for _ in range(READS):
        outcome = cluster.request("GET", path)
        if not good(outcome):
            instance = outcome.headers.get(INSTANCE_HEADER, "an instance")
            cache = outcome.headers.get("x-cache")
            fail(
                f"GET {path} through the load balancer, {READS} times",
                expected=expected,
                observed=f"{instance} answered {shown(outcome)}"
                + (f" (X-Cache: {cache})" if cache else ""),
            )


# --- sessions: a login on one instance is honoured by every other ------------------------


@pytest.mark.criterion("sessions")
def test_a_login_on_one_instance_is_honoured_by_every_other(
    launch_cluster: Callable[..., Any], cluster_settings: dict[str, str]
) -> None:
    cluster = launch_cluster(n=3, instance_env=own_job_queue, **cluster_settings)
    first, second, third = cluster.instances
    user = create_user(first)
    if second.request("GET", f"/users/{user['id']}").status != 200:
        fail(
            f"POST /users to {where(first)}, then GET /users/{user['id']} from {where(second)}",
            expected="200: a login elsewhere needs the user everywhere",
            observed="404: the users are not shared yet (criterion shared-storage comes first)",
        )
    session = login(first, user["email"])
    for app in (second, third):
        me = app.request("GET", "/auth/me", headers=session)
        if me.status != 200 or (json_of(me) or {}).get("id") != user["id"]:
            fail(
                f"POST /auth/login on {where(first)}, then GET /auth/me with that token on "
                f"{where(app)}",
                expected="200 with the user: every instance honours the token",
                observed=shown(me),
            )
    logout = second.request("POST", "/auth/logout", headers=session)
    if logout.status != 204:
        fail(f"POST /auth/logout on {where(second)}", expected="204", observed=shown(logout))
    for app in (first, third, second):
        me = app.request("GET", "/auth/me", headers=session)
        if me.status != 401:
            fail(
                f"POST /auth/logout on {where(second)}, then GET /auth/me with the same token "
                f"on {where(app)}",
                expected="401: a logout ends the session on every instance",
                observed=shown(me),
            )
