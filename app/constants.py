"""Names Courier shares across the API, the workers and the recorder: tiers, states, Redis keys."""

from __future__ import annotations

from enum import StrEnum


class Tier(StrEnum):
    """A work queue. Each is a RabbitMQ queue of the same name with its own max priority."""

    high = "high"
    medium = "medium"
    low = "low"


#: `x-max-priority` of each tier's queue (classic queues only; quorum queues on 3.x have no priorities).
TIER_MAX_PRIORITY: dict[Tier, int] = {Tier.high: 10, Tier.medium: 5, Tier.low: 1}


class TaskState(StrEnum):
    """The state of a task run, as the API and the `task_runs` table report it."""

    #: Accepted and confirmed by the broker; no worker has taken it yet.
    PENDING = "PENDING"
    #: A worker holds the message (prefetched or waiting for a pool slot).
    RECEIVED = "RECEIVED"
    #: Executing now.
    STARTED = "STARTED"
    #: Failed with a transient error; a new attempt is scheduled.
    RETRY = "RETRY"
    #: Finished; the result is in Redis until it expires.
    SUCCESS = "SUCCESS"
    #: Failed for good; the message went to the dead-letter exchange.
    FAILURE = "FAILURE"
    #: Cancelled by an admin; it will never run (again).
    REVOKED = "REVOKED"
    #: Recorded in the dead-letter store, waiting for an admin to replay or discard it.
    DEAD_LETTERED = "DEAD_LETTERED"


#: States after which nothing more happens to a run unless an admin replays it.
TERMINAL_STATES = frozenset({TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED, TaskState.DEAD_LETTERED})

#: States a follower of one task (the live stream, the console's run page) stops at. FAILURE is not one: a failed
#: task's dead letter follows it, and the run reads DEAD_LETTERED once the recorder has stored it (a moment later).
SETTLED_STATES = TERMINAL_STATES - {TaskState.FAILURE}

#: Work exchange (direct): routing key = tier name.
TASK_EXCHANGE = "courier.tasks"
#: Dead-letter exchange (fanout) every work queue dead-letters into.
DEAD_LETTER_EXCHANGE = "courier.dlx"
#: The queue behind the dead-letter exchange that ops staff read (TTL + cap). No Celery worker consumes it.
DEAD_LETTER_QUEUE = "dead_letter"
#: Second queue on the dead-letter exchange, no TTL: the recorder copies every dead letter from it into SQL.
DEAD_LETTER_ARCHIVE_QUEUE = "dead_letter.archive"
#: Exchange (direct) of the retry delay queues; routing key `<tier>.<seconds>`.
DELAY_EXCHANGE = "courier.delay"
#: Delay queue of a tier and bucket; its TTL dead-letters the message back into the tier's queue.
DELAY_QUEUE = "delay.{tier}.{seconds}"
#: Retry delays a message can wait for, in seconds; a backoff is rounded down to one of these (min: the first).
DELAY_BUCKETS_S = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)

#: Redis key prefixes. Everything Courier writes to Redis itself starts with `courier:`.
REDIS_PREFIX = "courier:"
#: `courier:revoked:<task_id>` → "1" while a revocation is in force (TTL: REVOCATION_TTL_S).
REVOKED_KEY = REDIS_PREFIX + "revoked:{task_id}"
#: `courier:task:<task_id>` → hash {name, tier, triggered_by, dispatched_at} (TTL: RESULT_EXPIRES_S).
TASK_META_KEY = REDIS_PREFIX + "task:{task_id}"
#: `courier:idem:<api key name, percent-encoded>:<key>` → JSON {fingerprint, status, response} (TTL: IDEMPOTENCY_TTL_S).
IDEMPOTENCY_KEY = REDIS_PREFIX + "idem:{owner}:{key}"
#: `courier:starts:<task_id>:<retries>` → how many times this attempt started (bounds worker-killing messages).
STARTS_KEY = REDIS_PREFIX + "starts:{task_id}:{retries}"
#: `courier:worker:<hostname>` → JSON heartbeat {queues, concurrency, pid, ts} (TTL: 3 × heartbeat interval).
WORKER_HEARTBEAT_KEY = REDIS_PREFIX + "worker:{hostname}"
#: `courier:workers` → set of the hostnames writing a heartbeat (TTL: 3 × heartbeat interval, renewed by each beat).
#: Read to list the workers: a SCAN for their keys went through every key in Redis (each result, task meta, start
#: counter and idempotency key of the last RESULT_EXPIRES_S), on every health check, /metrics and console refresh.
WORKER_REGISTRY_KEY = REDIS_PREFIX + "workers"
#: Task message header with the HTTP request id that dispatched it (a worker reads it as `request.<header>`).
REQUEST_ID_HEADER = "courier_request_id"
#: Task message headers with the publisher's meta (who triggered it, when), journaled with the run's start so
#: the recorder needs no Redis lookup to attribute it.
TRIGGERED_BY_HEADER = "courier_triggered_by"
DISPATCHED_AT_HEADER = "courier_dispatched_at"
#: Task message header: how many times the worker has put this attempt back after an infrastructure outage
#: (Redis unreachable at the start check or the result store; app/engine/guarantees/outages.py). Not the task's
# `retries`.
OUTAGE_RETRIES_HEADER = "courier_outage_retries"
#: Headers a worker sets on a message it publishes to the dead-letter exchange itself (it cannot reject it with
#: a reason): why, the error's class and text, and the queue and exchange it was consumed from.
DEAD_REASON_HEADER = "courier_dead_reason"
DEAD_ERROR_CLASS_HEADER = "courier_dead_error_class"
DEAD_ERROR_HEADER = "courier_dead_error"
DEAD_QUEUE_HEADER = "courier_dead_queue"
DEAD_EXCHANGE_HEADER = "courier_dead_exchange"
#: `courier:history` → Redis stream of run-history entries written by workers, read by the recorder.
HISTORY_STREAM = REDIS_PREFIX + "history"
#: The recorder's consumer group on HISTORY_STREAM.
HISTORY_GROUP = "recorder"
#: `courier:recorder:heartbeat` → the time (epoch seconds) the recorder last went round its loop (TTL 60 s).
RECORDER_HEARTBEAT_KEY = REDIS_PREFIX + "recorder:heartbeat"
#: Entries kept for a recorder that is down (approximate cap; about 200 bytes each, so ~100 MB at most).
HISTORY_STREAM_MAX_LENGTH = 500_000
