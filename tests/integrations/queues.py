"""Queue helpers shared by the audit and integration tests."""

from __future__ import annotations


def purge_work_queues() -> None:
    """Empty the high, medium and low queues (messages earlier test modules left behind)."""
    from app.config import get_settings
    from app.rabbitmq import ManagementClient

    settings = get_settings()
    with ManagementClient.for_broker_user(settings) as client:
        for name in ("high", "medium", "low"):
            client.purge(settings.broker_vhost, name)
