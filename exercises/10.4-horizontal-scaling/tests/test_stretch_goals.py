"""Graded checks for the stretch goals of exercise 10.4 (bonus points).

Like the required checks, they run real clusters of the app, or read SCALING.md.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import pytest
from conftest import own_job_queue
from doccheck import (
    AUTOSCALING,
    CAPACITY_PLANNING,
    DOCUMENT,
    STICKY_ALTERNATIVES,
    Section,
    check_topics,
    figures,
)
from scalecheck import INSTANCE_HEADER, create_user, json_of, shown, where

from grader.plugin import ADMIN_TOKEN
from grader.testing import PASSWORD, eventually, fail

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

# --- sticky-alternatives: documented, and sessions that need no stickiness ----------------


@pytest.mark.criterion("sticky-alternatives")
def test_sticky_session_alternatives_are_documented(scaling_doc: list[Section]) -> None:
    check_topics(
        scaling_doc,
        STICKY_ALTERNATIVES,
        expected="a section on sticky sessions: what they cost, and the alternatives "
        "(stateless signed tokens, a shared session store)",
    )


@pytest.mark.criterion("sticky-alternatives")
def test_a_session_works_through_a_balancer_without_stickiness(
    launch_cluster: Callable[..., Any], cluster_settings: dict[str, str]
) -> None:
    cluster = launch_cluster(n=3, instance_env=own_job_queue, **cluster_settings)
    user = create_user(cluster)
    answer = cluster.request(
        "POST", "/auth/login", json={"email": user["email"], "password": PASSWORD}
    )
    token = (json_of(answer) or {}).get("access_token")
    if answer.status != 200 or not isinstance(token, str):
        fail("POST /auth/login through the load balancer", expected="200 with a token",
             observed=shown(answer))  # fmt: skip
    session = {"Authorization": f"Bearer {token}"}
    served: collections.Counter[str] = collections.Counter()
    for _ in range(6):
        me = cluster.request("GET", "/auth/me", headers=session)
        served[me.headers.get(INSTANCE_HEADER, "(no header)")] += 1
        if me.status != 200:
            fail(
                f"POST /auth/login, then GET /auth/me 6 times, through a round-robin "
                f"balancer ({cluster.balancer}) with no sticky sessions",
                expected="200 every time, whichever instance answers",
                observed=f"{me.headers.get(INSTANCE_HEADER, 'an instance')} answered {shown(me)}",
            )
    if len(served) < 2:
        fail(
            "GET /auth/me 6 times through the round-robin balancer",
            expected="answers from several instances (no stickiness)",
            observed=f"every answer from {next(iter(served))}",
        )
    logout = cluster.request("POST", "/auth/logout", headers=session)
    rejected = [cluster.request("GET", "/auth/me", headers=session).status for _ in range(3)]
    if logout.status != 204 or rejected != [401] * 3:
        fail(
            "POST /auth/logout, then GET /auth/me 3 times, through the balancer",
            expected="204, then 401 from every instance",
            observed=f"{shown(logout)}, then {rejected}",
        )


# --- instance-coordination: live instances register and expire ----------------------------


@pytest.mark.criterion("instance-coordination")
def test_live_instances_are_listed_and_a_dead_one_drops_out(
    launch_cluster: Callable[..., Any], cluster_settings: dict[str, str]
) -> None:
    cluster = launch_cluster(n=3, instance_env=own_job_queue, **cluster_settings)
    first, _, third = cluster.instances
    names = sorted(where(app) for app in cluster.instances)

    def listed() -> list[str] | str:
        """The ids listed, or what came back instead of a JSON list."""
        outcome = first.request("GET", "/admin/instances", headers=ADMIN)
        body = json_of(outcome)
        if outcome.status != 200 or not isinstance(body, list):
            return shown(outcome)
        return sorted(str(i.get("id")) for i in body if isinstance(i, dict))

    seen = eventually(listed, until=lambda ids: ids == names, timeout=5)
    if seen != names:
        fail(
            f"GET /admin/instances on {where(first)} with INSTANCE_REGISTRY=redis, three "
            "instances running",
            expected=f"200 with the ids {names}",
            observed=str(seen),
        )
    # SIGKILL to its whole process group (a supervisor's server too): it dies without a
    # word, with no chance to unregister, as a lost machine would.
    third.kill()
    alive = sorted(set(names) - {where(third)})
    seen = eventually(listed, until=lambda ids: ids == alive, timeout=10)
    if seen != alive:
        fail(
            f"kill -9 {where(third)}, then GET /admin/instances on {where(first)} for 10 s",
            expected=f"{where(third)} drops out of the list (its registration expires): {alive}",
            observed=f"{seen}",
        )


# --- capacity-planning: a guide with measured figures -------------------------------------


@pytest.mark.criterion("capacity-planning")
def test_the_capacity_plan_gives_measured_figures(scaling_doc: list[Section]) -> None:
    check_topics(
        scaling_doc,
        CAPACITY_PLANNING,
        expected="a capacity planning section, built on figures you measured",
    )
    section = CAPACITY_PLANNING.find(scaling_doc)
    assert section is not None  # check_topics failed otherwise
    found = figures(section)
    if len(found) < 3:
        fail(
            f"read the capacity planning section of {DOCUMENT}",
            expected="at least three measured figures with units (requests/s, ms, %, "
            "instances), e.g. throughput for 1, 2 and 3 instances",
            observed=f"{len(found)}: {', '.join(found) or 'none'}",
        )


# --- autoscaling-triggers: the thresholds, documented (the metrics: test_stretch_distributed) --


@pytest.mark.criterion("autoscaling-triggers")
def test_the_scaling_triggers_are_documented(scaling_doc: list[Section]) -> None:
    check_topics(
        scaling_doc,
        AUTOSCALING,
        expected="an auto-scaling section naming the metrics (in-flight requests, job queue "
        "depth) and the thresholds that scale out and back in",
    )
