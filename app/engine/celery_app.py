"""The Celery application, configured from Settings. `celery -A app.tasks ...` finds it through app/tasks."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals
from celery.beat import PersistentScheduler
from celery.schedules import crontab

from app import redis_store
from app.config import Settings, get_settings
from app.constants import TASK_EXCHANGE, Tier
from app.engine import bootsteps, install, policy, telemetry, topology
from app.engine.guarantees import builtins, compression
from app.memory import freeze_start_up_objects

#: Celery's logger of each task's outcome in the pool child ("succeeded in", "retry:").
TRACE_LOGGER = "celery.app.trace"

#: Modules whose tasks the worker registers.
TASK_MODULES = [
    "app.tasks.system",
    "app.tasks.deadletters",
    "app.tasks.identity",
    "app.tasks.notifications",
    "app.tasks.audit",
    "app.tasks.integrations",
]


def celery_config(settings: Settings, engine: install.Engine) -> dict[str, Any]:
    """Celery settings that carry Courier's guarantees (see README, "Delivery guarantees")."""
    return {
        "broker_url": settings.broker_url,
        # On a cluster broker_url lists every node (`;`): kombu tries them in this order when a connection fails.
        "broker_failover_strategy": settings.broker_failover_strategy.value,
        # The transport, pool, result backend and consumer of `engine` (app/engine/install.py): Celery's Redis
        # backend storing each result with its history entry in one atomic round trip, the consumer that
        # dead-letters malformed messages, and (speed patches on) the buffered transport and batching pool.
        **install.celery_options(engine, settings),
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
        "worker_hijack_root_logger": False,
        # The run history is journaled by the tasks themselves (app/runs/journal.py); events are for Flower.
        "worker_send_task_events": settings.task_events_enabled,
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
        # Celery retries a result store for up to 5 s (its retry_policy); reads get none. A pooled connection that
        # died with a Redis restart is PINGed and replaced after sitting idle, and any command that meets one is
        # retried once on a fresh connection (redis-py's Retry(NoBackoff(), 1), which retry_on_timeout selects;
        # without it every connection retries nothing): the result store's side of app/redis_store.py's policy.
        "result_backend_transport_options": result_transport_options(settings),
        "redis_socket_timeout": 5.0,
        "redis_socket_connect_timeout": 2.0,
        "redis_socket_keepalive": True,
        "redis_retry_on_timeout": True,
        "redis_backend_health_check_interval": redis_store.HEALTH_CHECK_INTERVAL_S,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": schedule(),
        "beat_scheduler": f"{__name__}:BeatScheduler",
    }


def result_transport_options(settings: Settings) -> dict[str, Any]:
    """The result backend's transport options: its retry policy, and through Sentinel the master's name and how to
    reach the Sentinels (Celery's SentinelBackend reads `master_name` and `sentinel_kwargs`)."""
    options: dict[str, Any] = {"retry_policy": {"timeout": 5.0}}
    if settings.redis_sentinels:
        sentinel_kwargs: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
        if settings.redis_sentinel_password:
            sentinel_kwargs["password"] = settings.redis_sentinel_password
        # A failover takes the Sentinels' down-after time plus an election: give the store time to follow it.
        options |= {
            "master_name": settings.redis_sentinel_master,
            "sentinel_kwargs": sentinel_kwargs,
            "retry_policy": {"timeout": 15.0},
        }
    return options


def schedule() -> dict[str, Any]:
    """Periodic tasks run by `celery -A app.tasks beat` (exactly one beat per deployment)."""
    return {
        "prune-run-history": {"task": "runs.prune_history", "schedule": 3600.0},
        "cleanup-expired-sessions": {"task": "identity.cleanup_expired_sessions", "schedule": 3600.0},
        "cleanup-expired-tokens": {"task": "identity.cleanup_expired_tokens", "schedule": 3600.0},
        "process-scheduled-notifications": {
            "task": "notifications.process_scheduled_notifications",
            "schedule": get_settings().notification_scheduler_interval_s,
        },
        "retry-failed-notifications": {
            "task": "notifications.retry_failed_notifications",
            "schedule": get_settings().notification_retry_interval_s,
        },
        "audit-daily-report": {"task": "audit.generate_daily_report", "schedule": crontab(minute=0, hour=1)},
        "audit-archive-old-logs": {
            "task": "audit.archive_old_logs",
            "schedule": crontab(minute=30, hour=2, day_of_week=0),
        },
        "audit-detect-anomalies": {"task": "audit.detect_anomalies", "schedule": 300.0},
        "integrations-health-check": {"task": "integrations.health_check_integrations", "schedule": 300.0},
        "integrations-sync-all": {"task": "integrations.sync_all_systems", "schedule": 3600.0},
        "integrations-dispatch-pending": {"task": "integrations.dispatch_pending", "schedule": 60.0},
    }


def _quiet_worker_logs(**_: Any) -> None:
    """Two log lines per task would drown the worker log, unless asked for (httpx is quieted by configure_logging)."""
    if not get_settings().worker_log_each_task:
        # "Task ... received" (the consumer loop) and "Task ... succeeded in ..." (the pool child). By level, not
        # by a filter: Celery builds each success line (a log record with the result's repr) only when its logger
        # takes INFO, and that was a tenth of a pool child's CPU per no-op task. The trace logger's retry lines go
        # with it; CourierTask.on_retry writes them instead.
        logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)
        logging.getLogger(TRACE_LOGGER).setLevel(logging.WARNING)


class BeatScheduler(PersistentScheduler):  # type: ignore[misc]
    """Celery's scheduler, run without a result backend: beat only sends tasks and reads no result.

    With the Redis backend, each send subscribed to the task's result channel, and after a Redis outage longer
    than the backend's retry policy beat logged CRITICAL "Retry limit exceeded ... must be restarted" (and went
    on). Without one, beat needs no Redis at all; the tasks it sends still store their results (the workers'
    backend decides that). Set before the scheduler's first look at `app.backend`, which builds the backend.
    """

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        os.environ["CELERY_RESULT_BACKEND"] = "disabled"  # (Celery reads the environment ahead of its config)
        app.conf.result_backend = "disabled"
        super().__init__(app, *args, **kwargs)

    def install_default_entries(self, data: Any) -> None:
        """No `celery.backend_cleanup` entry: results expire in Redis by their own TTL."""


def create_celery_app(settings: Settings | None = None) -> Celery:
    """Build the Celery app and its worker boot steps."""
    settings = settings or get_settings()
    engine = install.select(settings)
    install.register_transports()
    compression.install()  # (a compressed message is refused, never inflated: app/engine/guarantees/compression.py)
    # Celery reads CELERY_BROKER_URL / CELERY_RESULT_BACKEND from the environment ahead of its config; make the
    # environment say what Settings computed (e.g. REDIS_PASSWORD applied), so there is one answer.
    os.environ["CELERY_BROKER_URL"] = settings.broker_url
    os.environ["CELERY_RESULT_BACKEND"] = engine.result_backend(settings.result_backend_dsn)
    # Every task message mandatory, a returned one an error; publishers declare nothing
    # (app/engine/guarantees/sending.py).
    app = Celery("courier", include=TASK_MODULES, set_as_current=True, amqp=engine.amqp)
    app.conf.update(celery_config(settings, engine))
    install.install(app, engine)
    builtins.install(app)  # (Celery's canvas and cleanup tasks are unknown tasks here: guarantees/builtins.py)
    bootsteps.install(app)
    # Task metrics (multiprocess files) and JSON logs of the workers.
    telemetry.install(app)

    # Start-up objects out of full garbage collections (app/memory.py): before the pool forks, so the children
    # inherit the frozen set, and once more when the main process has built its consumer and pool.
    signals.worker_init.connect(lambda **_: freeze_start_up_objects(), weak=False)
    signals.worker_ready.connect(lambda **_: freeze_start_up_objects(), weak=False)
    # setup_logging (not after_setup_logger): with a setup_logging receiver (telemetry's) Celery sends no other.
    signals.setup_logging.connect(_quiet_worker_logs, weak=False)

    return app


celery_app = create_celery_app()
