"""HTTP load generator for the API, run as its own process: `python -m bench.loadgen --help`.

Closed loop (`--concurrency C --requests N`): C clients send N POSTs back to back.
Open loop (`--rate R --duration D`): one POST every 1/R s for D s, whatever the answers.
Prints JSON: per-request latency, status, task id and wall-clock send time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import httpx


async def _post(client: httpx.AsyncClient, url: str, out: list[dict[str, object]]) -> None:
    sent_wall, started = time.time(), time.perf_counter()
    try:
        response = await client.post(url, json={"tier": "medium"})
        status, task_id = response.status_code, response.json().get("task_id")
    except httpx.HTTPError as exc:
        status, task_id = 0, repr(exc)
    out.append({"latency_s": time.perf_counter() - started, "status": status, "task_id": task_id, "sent_at": sent_wall})


async def closed_loop(url: str, key: str, concurrency: int, requests: int) -> tuple[list[dict[str, object]], float]:
    out: list[dict[str, object]] = []
    remaining = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=30) as client:

        async def worker() -> None:
            for _ in remaining:
                await _post(client, url, out)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return out, time.perf_counter() - started


async def open_loop(url: str, key: str, rate: float, duration: float) -> tuple[list[dict[str, object]], float]:
    out: list[dict[str, object]] = []
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        started = time.perf_counter()
        pending = []
        for i in range(int(rate * duration)):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            pending.append(asyncio.create_task(_post(client, url, out)))
        await asyncio.gather(*pending)
        return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    if args.rate:
        results, elapsed = asyncio.run(open_loop(args.url, args.key, args.rate, args.duration))
    else:
        results, elapsed = asyncio.run(closed_loop(args.url, args.key, args.concurrency, args.requests))
    json.dump({"elapsed_s": elapsed, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
