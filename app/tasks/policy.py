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
