"""The one table that maps every task to its tier and policy, and the Celery routes derived from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.config import Settings
from app.constants import TASK_EXCHANGE, TIER_MAX_PRIORITY, Tier

#: Marks a policy field that falls back to the global default in Settings.
DEFAULT: Any = None


@dataclass(frozen=True)
class TaskPolicy:
    """How one task runs. `None` fields take the global default from Settings (resolved by `resolve`).

    Parameters:
        tier: the queue it is published to.
        priority: message priority within the tier's queue (0 .. the tier's max priority).
        max_retries: attempts after the first, for transient errors.
        retry_backoff_s / retry_backoff_max_s: exponential backoff base and cap; full jitter.
        soft_time_limit_s / time_limit_s: the soft limit raises inside the task; the hard one kills it.
        rate_limit: Celery rate limit per worker ("100/m"); "" means none.
    """

    tier: Tier
    priority: int | None = DEFAULT
    max_retries: int | None = DEFAULT
    retry_backoff_s: float | None = DEFAULT
    retry_backoff_max_s: float | None = DEFAULT
    soft_time_limit_s: float | None = DEFAULT
    time_limit_s: float | None = DEFAULT
    rate_limit: str | None = DEFAULT

    def resolve(self, settings: Settings) -> ResolvedPolicy:
        """Fill every default from Settings (task value first, then the global default)."""
        max_priority = TIER_MAX_PRIORITY[self.tier]
        priority = self.priority if self.priority is not None else default_priority(self.tier)
        if not 0 <= priority <= max_priority:
            raise ValueError(f"priority {priority} is outside 0..{max_priority} of tier {self.tier}")
        return ResolvedPolicy(
            tier=self.tier,
            priority=priority,
            max_retries=_pick(self.max_retries, settings.task_max_retries),
            retry_backoff_s=_pick(self.retry_backoff_s, settings.task_retry_backoff_s),
            retry_backoff_max_s=_pick(self.retry_backoff_max_s, settings.task_retry_backoff_max_s),
            soft_time_limit_s=_pick(self.soft_time_limit_s, settings.task_soft_time_limit_s),
            time_limit_s=_pick(self.time_limit_s, settings.task_time_limit_s),
            rate_limit=_pick(self.rate_limit, settings.task_rate_limit) or None,
        )


@dataclass(frozen=True)
class ResolvedPolicy:
    """A TaskPolicy with every default filled in."""

    tier: Tier
    priority: int
    max_retries: int
    retry_backoff_s: float
    retry_backoff_max_s: float
    soft_time_limit_s: float
    time_limit_s: float
    rate_limit: str | None


def default_priority(tier: Tier) -> int:
    """The priority a task gets on `tier` when neither its policy nor the call site names one: mid-range."""
    return (TIER_MAX_PRIORITY[tier] + 1) // 2


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


#: Every task Courier runs. A task not in this table cannot be declared (KeyError at import: loud, early).
POLICIES: dict[str, TaskPolicy] = {
    # A probe that runs the whole path (publish → queue → worker → result → history) on a chosen tier.
    "system.ping": TaskPolicy(tier=Tier.medium, rate_limit="", soft_time_limit_s=120, time_limit_s=150),
    # Replays dead letters chosen by an admin's filter, paced (rate_per_s) so it cannot flood the workers.
    "deadletters.replay_bulk": TaskPolicy(
        tier=Tier.low, max_retries=0, rate_limit="", soft_time_limit_s=3600, time_limit_s=3660
    ),
    # Deletes run history older than HISTORY_RETENTION_DAYS; hourly from beat.
    "runs.prune_history": TaskPolicy(tier=Tier.low, rate_limit=""),
    # --- Identity and notifications
    # User-facing and time-sensitive: the secret-bearing messages and alerts run on the high tier.
    "identity.send_password_reset_email": TaskPolicy(tier=Tier.high),
    "identity.send_account_verification_email": TaskPolicy(tier=Tier.high),
    "identity.send_mfa_code": TaskPolicy(tier=Tier.high),
    "identity.send_security_alert": TaskPolicy(tier=Tier.high, priority=8),
    # Hourly housekeeping.
    "identity.cleanup_expired_sessions": TaskPolicy(tier=Tier.low, rate_limit=""),
    "identity.cleanup_expired_tokens": TaskPolicy(tier=Tier.low, rate_limit=""),
    "notifications.send_email": TaskPolicy(tier=Tier.high),
    "notifications.send_sms": TaskPolicy(tier=Tier.high),
    "notifications.send_push_notification": TaskPolicy(tier=Tier.high),
    # Thousands of recipients in chunks, one task: its own pace, a long time limit.
    "notifications.send_bulk_notification": TaskPolicy(
        tier=Tier.medium, rate_limit="", soft_time_limit_s=3600, time_limit_s=3660
    ),
    # The scheduler must not wait behind a backlog of reports: it only publishes, so it is cheap on high.
    "notifications.process_scheduled_notifications": TaskPolicy(tier=Tier.high, priority=3, rate_limit=""),
    "notifications.retry_failed_notifications": TaskPolicy(tier=Tier.low, rate_limit=""),
    # --- Audit and integrations
    # Reports and archival read and write a lot at once: low tier, generous time limits.
    "audit.generate_daily_report": TaskPolicy(tier=Tier.low, rate_limit="", soft_time_limit_s=1800, time_limit_s=1860),
    "audit.generate_compliance_report": TaskPolicy(
        tier=Tier.low, rate_limit="", soft_time_limit_s=1800, time_limit_s=1860
    ),
    "audit.archive_old_logs": TaskPolicy(tier=Tier.low, rate_limit="", soft_time_limit_s=3600, time_limit_s=3660),
    # Every 5 minutes from beat; a scan is short.
    "audit.detect_anomalies": TaskPolicy(tier=Tier.medium, rate_limit="", soft_time_limit_s=240, time_limit_s=270),
    # One HTTP attempt each; retries are scheduled by the task itself (WEBHOOK_MAX_ATTEMPTS, Retry-After).
    "integrations.webhook_delivery": TaskPolicy(tier=Tier.medium, rate_limit="", soft_time_limit_s=60, time_limit_s=90),
    "integrations.dispatch_pending": TaskPolicy(tier=Tier.medium, rate_limit=""),
    "integrations.sync_external_system": TaskPolicy(
        tier=Tier.medium, rate_limit="", soft_time_limit_s=1800, time_limit_s=1860
    ),
    "integrations.sync_all_systems": TaskPolicy(tier=Tier.medium, rate_limit=""),
    "integrations.health_check_integrations": TaskPolicy(tier=Tier.medium, rate_limit=""),
    # --- Observability and operations
}


def routes(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery `task_routes`: each task to its tier's queue through the task exchange, with its priority."""
    table = {}
    for name, policy in POLICIES.items():
        resolved = policy.resolve(settings)
        table[name] = {
            "queue": resolved.tier.value,
            "exchange": TASK_EXCHANGE,
            "routing_key": resolved.tier.value,
            "priority": resolved.priority,
        }
    return table
