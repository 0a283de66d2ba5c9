"""The shared RabbitMQ, Redis and PostgreSQL as this test session uses them: a vhost, a Redis db and a database of
its own, and the environment that points Courier (and every process a test starts) at them.

Importing this module touches no service. tests/conftest.py calls, in order:

- `session_env()` before collection (`pytest_configure`): the environment, with a Redis db claimed for the session
  (`redis_db()`), set before any test module imports an `app` module that reads Settings;
- `create_isolated()` / `remove_isolated()` around the session (the `isolated_services` fixture): the vhost and the
  database created, migrated and the topology declared; everything removed afterwards.

Tests read the session's services through `queue_depth()`, `redis_client()`, `heartbeat()`, `mgmt()` and
`purge_queues()`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
from typing import Any

import httpx
import psycopg
import redis

from app.constants import DELAY_BUCKETS_S, DELAY_QUEUE
from tests.support.session import ROOT, SESSION, VAR_DIR

AMQP_HOST = os.environ.get("TEST_RABBITMQ_HOST", "127.0.0.1")
MGMT_URL = os.environ.get("TEST_RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
MGMT_AUTH = (os.environ.get("TEST_RABBITMQ_USER", "guest"), os.environ.get("TEST_RABBITMQ_PASSWORD", "guest"))
PG_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = os.environ.get("TEST_REDIS_HOST", "127.0.0.1")
VHOST = f"courier_test_{SESSION}"
DATABASE = f"courier_test_{SESSION}"
DATABASE_URL = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{DATABASE}"
BROKER_URL = f"amqp://{MGMT_AUTH[0]}:{MGMT_AUTH[1]}@{AMQP_HOST}:5672/{VHOST}"
#: Marks a Redis db as taken by a live test session: `<session> <host> <pid>`, 2 h TTL.
CLAIM_KEY = "courier-test:claim"
#: The work queues, and the dead-letter queue beside them.
WORK_QUEUES = ("high", "medium", "low")
DEAD_LETTER_QUEUE = "dead_letter"
#: The retry queues (`delay.<tier>.<seconds>`): a task whose pool process an earlier test's worker stop killed is
#: retried through them, and reaches its tier a bucket later, in the middle of the next test.
DELAY_QUEUES = tuple(DELAY_QUEUE.format(tier=tier, seconds=s) for tier in WORK_QUEUES for s in DELAY_BUCKETS_S)

#: Replaces a claim only while it still holds the value that was read (two sessions may find it stale at once).
_STEAL_CLAIM = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('set', KEYS[1], ARGV[2], 'EX', 7200) end"
)


def _claim_is_stale(value: bytes | None) -> bool:
    """A claim left by a session on this host whose process is gone (killed before its teardown ran)."""
    parts = (value or b"").decode(errors="replace").split()
    if len(parts) != 3 or parts[1] != socket.gethostname():
        return False  # another host's, or an old-format claim: only its 2 h TTL ends it
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def claim_redis_db() -> int:
    """Claim a Redis db no other test session is using: a claim key (`<session> <host> <pid>`, 2 h TTL) marks
    it, and a claim whose process on this host has died is taken over rather than waited out."""
    mine = f"{SESSION} {socket.gethostname()} {os.getpid()}"
    for db in range(1, 16):
        with redis.Redis(host=REDIS_HOST, db=db) as client:
            if client.set(CLAIM_KEY, mine, nx=True, ex=7200):
                return db
            held = client.get(CLAIM_KEY)
            if _claim_is_stale(held) and client.eval(_STEAL_CLAIM, 1, CLAIM_KEY, held, mine):
                client.flushdb()
                client.set(CLAIM_KEY, mine, ex=7200)
                return db
    raise RuntimeError("Every Redis db 1-15 is claimed by another live test session.")


@functools.cache
def redis_db() -> int:
    """This session's Redis db, claimed on first use (from `session_env()`, before collection)."""
    return claim_redis_db()


def session_env() -> dict[str, str]:
    """The environment of the session: Courier's settings pointed at this session's vhost, Redis db and database.

    Subprocesses (workers, the recorder, a second API) inherit it once tests/conftest.py has set it.
    """
    return {
        "ENVIRONMENT": "test",
        "CELERY_BROKER_URL": BROKER_URL,
        "CELERY_RESULT_BACKEND": f"redis://{REDIS_HOST}:6379/{redis_db()}",
        "REDIS_URL": "",
        "RABBITMQ_MANAGEMENT_URL": MGMT_URL,
        # One node, classic queues, no Sentinel, whatever a developer's .env says (it may point at a cluster of
        # scripts/cluster.sh, whose settings would otherwise send the session's policies and keys there).
        "RABBITMQ_HOSTS": "",
        "RABBITMQ_MANAGEMENT_URLS": "",
        "REDIS_SENTINELS": "",
        "QUEUE_TYPE": "classic",
        "DATABASE_URL": DATABASE_URL,
        "VAR_DIR": str(VAR_DIR),
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "WORKER_HEARTBEAT_INTERVAL_S": "1",
        "HISTORY_FLUSH_INTERVAL_S": "0.2",
        "API_KEY_CACHE_S": "0",
        "PUBLISH_TIMEOUT_S": "3",
        # Retries fast enough to watch: 2 retries, 1 s backoff base, 2 s cap (delay queues of 1 and 2 s).
        "TASK_MAX_RETRIES": "2",
        "TASK_RETRY_BACKOFF_S": "1",
        "TASK_RETRY_BACKOFF_MAX_S": "2",
        "LOG_LEVEL": "INFO",
        # Audit and integrations: local receivers are on loopback; webhook retries fast enough to watch.
        "EGRESS_ALLOW_LIST": "127.0.0.1",
        "WEBHOOK_RETRY_BASE_S": "1",
        "WEBHOOK_RETRY_MAX_S": "2",
    }


def mgmt(method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A request to RabbitMQ's management API (`path` after /api) as the test user."""
    return httpx.request(method, f"{MGMT_URL}/api{path}", auth=MGMT_AUTH, timeout=10, **kwargs)


def create_isolated() -> None:
    """Create the vhost and the database, migrate, declare the topology."""
    assert mgmt("PUT", f"/vhosts/{VHOST}").status_code in (201, 204)
    mgmt("PUT", f"/permissions/{VHOST}/{MGMT_AUTH[0]}", json={"configure": ".*", "write": ".*", "read": ".*"})
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, check=True, capture_output=True)
    from app.config import get_settings
    from app.engine import topology

    topology.declare(get_settings())


def remove_isolated() -> None:
    """Remove what `create_isolated()` made, empty the session's Redis db (its claim too) and the scratch dir."""
    from app.db import reset_engine

    reset_engine()
    mgmt("DELETE", f"/vhosts/{VHOST}")
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    redis.Redis(host=REDIS_HOST, db=redis_db()).flushdb()
    shutil.rmtree(VAR_DIR, ignore_errors=True)


def queue_depth(name: str) -> dict[str, int]:
    """Ready and unacked counts of a queue, read over AMQP (exact, unlike the management stats)."""
    from kombu import Connection

    from app.config import get_settings

    with Connection(get_settings().broker_url) as conn:
        _, ready, consumers = conn.default_channel.queue_declare(name, passive=True)
    return {"ready": ready, "consumers": consumers}


def purge_queues(*names: str) -> None:
    """Empty the named queues of the session's vhost (messages earlier tests left behind)."""
    from app.config import get_settings
    from app.rabbitmq import ManagementClient

    settings = get_settings()
    with ManagementClient.for_broker_user(settings) as client:
        for name in names:
            client.purge(settings.broker_vhost, name)


def purge_work_queues() -> None:
    """Empty the high, medium and low queues (messages earlier test modules left behind)."""
    purge_queues(*WORK_QUEUES)


def redis_client() -> redis.Redis:
    """A client on the session's Redis db."""
    return redis.Redis(host=REDIS_HOST, db=redis_db(), decode_responses=True)


def heartbeat(hostname: str) -> dict[str, Any] | None:
    """A worker's heartbeat record, if fresh."""
    raw = redis_client().get(f"courier:worker:{hostname}")
    return json.loads(raw) if raw else None
