"""Courier's publisher for the end-to-end figures, as its own process: `python -m bench.courier_publisher`.

Its own process, so Courier's settings (ENGINE_SPEED_PATCHES among them) hold from its first import, as in an
API process. It imports the publish path and freezes what it holds (as the API does at start-up), prints
`ready`, waits for a line on stdin, then publishes `--messages` no-op probes through the API's publish path
(`dispatch_async`, pipelined confirms, IN_FLIGHT at a time) and prints JSON: the monotonic time it started
(the clock is the machine's, shared with the benchmark), the CPU seconds it spent publishing, and the task ids.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

#: Dispatches in flight at once (like an API under load).
IN_FLIGHT = 64


async def publish(messages: int, tier: str) -> list[str]:
    """Publish `messages` probes on `tier`, IN_FLIGHT at a time; returns their task ids."""
    from app.constants import Tier
    from app.engine import publish

    limit = asyncio.Semaphore(IN_FLIGHT)

    async def one() -> str:
        async with limit:
            dispatched = await publish.dispatch_async("system.ping", kwargs={}, triggered_by="bench", tier=Tier(tier))
            return dispatched.task_id

    task_ids = await asyncio.gather(*(one() for _ in range(messages)))
    await publish.close()
    return list(task_ids)


def main() -> None:
    """Entry point: wait for the go, publish, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--tier", default="medium")
    args = parser.parse_args()
    from app.engine import publish as _publish  # noqa: F401  (imported before the freeze, as the API does)
    from app.memory import freeze_start_up_objects

    freeze_start_up_objects()
    print("ready", flush=True)  # noqa: T201
    sys.stdin.readline()
    started, cpu_before = time.monotonic(), time.process_time()
    task_ids = asyncio.run(publish(args.messages, args.tier))
    json.dump({"started": started, "cpu_s": time.process_time() - cpu_before, "task_ids": task_ids}, sys.stdout)


if __name__ == "__main__":
    main()
