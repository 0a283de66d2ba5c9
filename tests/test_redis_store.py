"""Courier's Redis clients (app/redis_store.py) against servers of the test's own."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable

import redis

from app.redis_store import async_client
from tests.support.processes import OwnRedis, free_port
from tests.support.session import join


def test_a_burst_through_sentinel_waits_for_redis_never_for_a_pool_of_a_hundred(
    own_redis: Callable[..., OwnRedis],
) -> None:
    # Given a Redis of the test's own, watched by a Sentinel of the test's own under the master name Courier asks for
    primary = own_redis()
    port = free_port()
    config = primary.dir / "sentinel.conf"
    config.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor courier 127.0.0.1 {primary.port} 1\n")
    sentinel = subprocess.Popen(
        ["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        probe = redis.Redis(port=port, socket_timeout=2)
        join(lambda: _names_the_primary(probe), timeout=20, what="the Sentinel to know the primary")

        # When 150 commands are in flight at once through Courier's asyncio client (a burst of dispatches: each
        # holds a connection while Redis answers)
        async def burst() -> list[object]:
            client = async_client(f"sentinel://127.0.0.1:{port}/0", max_connections=8)
            try:
                return await asyncio.gather(*(client.blpop([f"nothing-{i}"], timeout=1) for i in range(150)))
            finally:
                await client.aclose()

        # Then every one is answered (nothing arrived in a second), none refused for want of a pooled connection
        assert asyncio.run(burst()) == [None] * 150
        probe.close()
    finally:
        sentinel.kill()
        sentinel.wait(10)


def _names_the_primary(client: redis.Redis) -> bool:
    try:
        return client.sentinel_get_master_addr_by_name("courier") is not None
    except redis.RedisError:
        return False
