"""The Celery application, configured from Settings. `celery -A app.tasks ...` finds it through app/tasks."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals

from app.config import Settings, get_settings
from app.constants import TASK_EXCHANGE, Tier
from app.tasks import policy, topology

#: Modules whose tasks the worker registers.
TASK_MODULES = ["app.tasks.system", "app.tasks.deadletters"]


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings that carry Courier's guarantees (see README, "Delivery guarantees")."""
    return {
        "broker_url": settings.broker_url,
        # Celery's Redis backend, storing each result in one atomic round trip (app/tasks/results.py).
        "result_backend": _one_trip_backend(settings.result_backend_dsn),
        # JSON only: nothing that can execute code on decode.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Durable publish: persistent messages, publisher confirms, bounded time to a 503.
        "task_default_delivery_mode": "persistent",
        "broker_transport_options": {"confirm_publish": True},
        "broker_connection_timeout": min(2.0, settings.publish_timeout_s),
        "broker_pool_limit": settings.publish_pool_size,
        "broker_pool_acquire_timeout": settings.publish_timeout_s,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 1,
            "interval_start": 0.1,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "broker_connection_retry_on_startup": True,
        "broker_channel_error_retry": True,
        # Late ack; a terminal failure is rejected without requeue, i.e. dead-lettered by RabbitMQ.
        "task_acks_late": True,
        "task_acks_on_failure": False,
        "task_acks_on_timeout": True,
        "task_reject_on_worker_lost": False,
        "task_retry_on_worker_lost": True,
        "worker_deduplicate_successful_tasks": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_prefetch_multiplier": settings.worker_prefetch_multiplier,
        "worker_eta_task_limit": 1000,
        "worker_concurrency": settings.celery_worker_concurrency,
        "worker_pool": settings.celery_worker_pool,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": settings.history_enabled,
        # Malformed messages are dead-lettered, never dropped or fatal (app/tasks/consumer.py).
        "worker_consumer": "app.tasks.consumer:CourierConsumer",
        "task_send_sent_event": False,
        # Topology and routing: a typo in a queue name fails loudly instead of creating a queue.
        "task_queues": topology.work_queues(settings),
        "task_create_missing_queues": False,
        "task_default_queue": Tier.medium.value,
        "task_default_exchange": TASK_EXCHANGE,
        "task_default_exchange_type": "direct",
        "task_default_routing_key": Tier.medium.value,
        "task_routes": policy.routes(settings),
        "task_always_eager": settings.celery_task_always_eager,
        "task_eager_propagates": settings.celery_task_always_eager,
        "task_store_eager_result": settings.celery_task_always_eager,
        # Results: extended (name, args, worker, retries) and expiring; history in SQL outlives them.
        "result_extended": True,
        "result_expires": settings.result_expires_s,
        "result_backend_transport_options": {"retry_policy": {"timeout": 5.0}},
        "redis_socket_timeout": 5.0,
        "redis_socket_connect_timeout": 2.0,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": schedule(),
    }


def _one_trip_backend(url: str) -> str:
    """Route redis:// and rediss:// result URLs to CourierRedisBackend (Celery's `module:Class+url` form)."""
    if url.startswith(("redis://", "rediss://")):
        return f"app.tasks.results:CourierRedisBackend+{url}"
    return url


def schedule() -> dict[str, Any]:
    """Periodic tasks run by `celery -A app.tasks beat` (exactly one beat per deployment)."""
    return {
        "prune-run-history": {"task": "runs.prune_history", "schedule": 3600.0},
    }


def _quiet_http_client(**_: Any) -> None:
    """One log line per management-API call would drown the worker log."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


def create_celery_app(settings: Settings | None = None) -> Celery:
    """Build the Celery app and its worker boot steps."""
    settings = settings or get_settings()
    # Celery reads CELERY_BROKER_URL / CELERY_RESULT_BACKEND from the environment ahead of its config; make the
    # environment say what Settings computed (e.g. REDIS_PASSWORD applied), so there is one answer.
    os.environ["CELERY_BROKER_URL"] = settings.broker_url
    os.environ["CELERY_RESULT_BACKEND"] = _one_trip_backend(settings.result_backend_dsn)
    app = Celery("courier", include=TASK_MODULES, set_as_current=True)
    app.conf.update(celery_config(settings))
    from app.tasks import bootsteps

    bootsteps.install(app)

    signals.after_setup_logger.connect(_quiet_http_client, weak=False)

    return app


celery_app = create_celery_app()
