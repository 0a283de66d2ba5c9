"""Prometheus metrics reflect real work: run tasks on a real worker, scrape /metrics, compare the deltas."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import auth, dispatch, finished, value
from tests.support.session import join


def scrape(api: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, keyed by (sample name, sorted labels)."""
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_task_counters_durations_and_errors_move_by_exactly_the_work_done(api, worker, admin_key):
    # Given a scrape before any work
    before = scrape(api)
    # When three probes succeed and one fails permanently on the medium tier
    ok = [dispatch(api, admin_key, tier="medium") for _ in range(3)]
    bad = dispatch(api, admin_key, tier="medium", fail="permanent")
    for task_id in [*ok, bad]:
        join(lambda t=task_id: finished(api, admin_key, t), what=f"task {task_id} to finish")

    # Then (the counters are written as each attempt ends, so wait for the last one to show)
    def moved() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        after = scrape(api)
        labels = {"name": "system.ping", "queue": "medium"}
        done = value(after, "celery_tasks_total", state="SUCCESS", **labels) - value(
            before, "celery_tasks_total", state="SUCCESS", **labels
        )
        failed = value(after, "celery_tasks_total", state="FAILURE", **labels) - value(
            before, "celery_tasks_total", state="FAILURE", **labels
        )
        return after if (done, failed) == (3, 1) else None

    after = join(moved, timeout=20, what="the task counters to move")
    labels = {"name": "system.ping", "queue": "medium"}
    assert (
        value(after, "celery_task_duration_seconds_count", **labels)
        - value(before, "celery_task_duration_seconds_count", **labels)
        == 4
    )
    assert (
        value(after, "celery_task_errors_total", error="PermanentError", **labels)
        - value(before, "celery_task_errors_total", error="PermanentError", **labels)
        == 1
    )
    # And the scrape-time gauges see the worker, the broker and the dead letter it made
    assert value(after, "celery_workers_count") >= 1
    assert value(after, "courier_broker_up") == 1
    assert value(after, "courier_tier_workers", queue="medium") >= 1
    assert ("celery_queues_backlog", (("queue", "dead_letter"),)) in after
    # And the dead letter, once the recorder stored it, is counted by task and reason
    failed = {"task": "system.ping", "reason": "failed"}
    join(
        lambda: (
            value(scrape(api), "courier_dead_letters_total", **failed)
            > value(before, "courier_dead_letters_total", **failed)
        ),
        what="the dead letter to be counted",
    )


def test_api_requests_are_counted_by_route_template_and_status(api, admin_key):
    # Given a scrape
    before = scrape(api)
    # When a known route answers 200 twice and an unknown task id 404 once
    api.get("/api/v1/tasks/health/live")
    api.get("/api/v1/tasks/health/live")
    api.get("/api/v1/tasks/task/00000000-0000-0000-0000-000000000000", headers=auth(admin_key))
    after = scrape(api)
    # Then the counters moved by exactly that, labelled by template (not by raw path)
    live = {"method": "GET", "route": "/api/v1/tasks/health/live", "status": "200"}
    missing = {"method": "GET", "route": "/api/v1/tasks/task/{task_id}", "status": "404"}
    assert value(after, "courier_api_requests_total", **live) - value(before, "courier_api_requests_total", **live) == 2
    assert (
        value(after, "courier_api_requests_total", **missing) - value(before, "courier_api_requests_total", **missing)
        == 1
    )
    duration = {"method": "GET", "route": "/api/v1/tasks/health/live"}
    assert (
        value(after, "courier_api_request_duration_seconds_count", **duration)
        - value(before, "courier_api_request_duration_seconds_count", **duration)
        == 2
    )


def test_each_confirmed_publish_is_timed_by_tier(api, admin_key):
    before = scrape(api)
    for _ in range(3):
        assert api.post("/api/v1/tasks/ping", json={"tier": "low"}, headers=auth(admin_key)).status_code == 202
    after = scrape(api)
    moved = value(after, "courier_publish_confirm_seconds_count", tier="low") - value(
        before, "courier_publish_confirm_seconds_count", tier="low"
    )
    assert moved == 3


def test_liveness_answers_without_touching_any_dependency(api):
    response = api.get("/api/v1/tasks/health/live")
    assert response.status_code == 200 and response.json() == {"status": "up"}
