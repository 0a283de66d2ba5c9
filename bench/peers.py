"""The peers Courier is measured against: raw AMQP (pika), Celery in three flavours (bench/celery_peers.py), and
Dramatiq with confirms and results (bench/dramatiq_app.py). Each peer gets its own vhost and Redis db."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pika

from bench.common import (
    Process,
    amqp_url,
    cpu_of,
    cpu_spent,
    pgrep,
    python,
    redis_db,
    redis_url,
    stored_answers,
    vhost,
    wait_drained,
    wait_results,
)

QUEUE = "bench"


def _declare(vhost_name: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost_name)))
    connection.channel().queue_declare(QUEUE, durable=True)
    connection.close()


def _publish(vhost_name: str, count: int, *, confirm: bool) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost_name)))
    channel = connection.channel()
    if confirm:
        channel.confirm_delivery()
    properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    for _ in range(count):
        channel.basic_publish("", QUEUE, b"{}", properties)
    connection.close()


def pika_publish(messages: int, publishers: int) -> float:
    """Persistent, confirmed publishes per second, with `publishers` connections in flight at once."""
    with vhost("pika") as name:
        _declare(name)
        share = messages // publishers
        threads = [
            threading.Thread(target=_publish, args=(name, share), kwargs={"confirm": True}) for _ in range(publishers)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return share * publishers / (time.monotonic() - started)


def ceiling(messages: int, publishers: int) -> dict[str, float]:
    """One repetition of the raw-AMQP ceiling: confirmed publishes with 1 and `publishers` publishers, acked
    consumption at prefetch 1 and 50."""
    return {
        "ceiling.publish_1": pika_publish(messages, 1),
        f"ceiling.publish_{publishers}": pika_publish(messages, publishers),
        "ceiling.consume_prefetch_1": pika_consume(messages, 1),
        "ceiling.consume_prefetch_50": pika_consume(messages, 50),
    }


def pika_consume(messages: int, prefetch: int) -> float:
    """Messages per second consumed and acked one by one after (no-op) processing, at a given prefetch."""
    with vhost("pika") as name:
        _declare(name)
        _publish(name, messages, confirm=False)
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url(name)))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)
        done = 0
        started = time.monotonic()
        for method, _properties, _body in channel.consume(QUEUE):
            channel.basic_ack(method.delivery_tag)
            done += 1
            if done == messages:
                break
        elapsed = time.monotonic() - started
        channel.cancel()
        connection.close()
        return messages / elapsed


def _cpu_parts(worker: Process) -> dict[str, list[int]]:
    main = worker.popen.pid
    return {
        "worker_main": [main],
        "worker_children": pgrep("-P", str(main)),
        "rabbitmq": pgrep("-f", "beam.smp"),
        "redis": pgrep("-x", "redis-server"),
        "publisher": [os.getpid()],
    }


def stock_celery_enqueue(messages: int) -> float:
    """Messages per second `delay()` publishes with no worker running, out-of-the-box Celery (no results)."""
    from bench import celery_peers

    with vhost("celery") as name:
        app = celery_peers.make_app("stock", amqp_url(name))
        noop = app.tasks["bench.noop"]
        try:
            started = time.monotonic()
            for _ in range(messages):
                noop.delay()
            return messages / (time.monotonic() - started)
        finally:
            app.close()


def celery_e2e(flavour: str, messages: int, log_dir: Path) -> tuple[float, int, dict[str, float]]:
    """(End-to-end rate, results stored, CPU ms per task of each part) of a Celery peer (bench/celery_peers.py):
    from the first `delay()` until its queue is drained and, with a result backend, every result is stored."""
    from bench import celery_peers

    with vhost(f"celery_{flavour}") as name, redis_db() as db:
        app = celery_peers.make_app(flavour, amqp_url(name), redis_url(db))
        noop = app.tasks["bench.noop"]
        queue = celery_peers.QUEUE[flavour]
        worker = Process(
            f"worker-celery-{flavour}",
            [python(), "-m", "celery", "-A", "bench.celery_peers", "worker", "-Q", queue, "--loglevel", "INFO"],
            {"BENCH_CELERY_FLAVOUR": flavour, "BENCH_BROKER_URL": amqp_url(name), "BENCH_RESULT_URL": redis_url(db)},
            log_dir,
        )
        try:
            worker.wait_for_log("ready.")
            before = {part: cpu_of(pids) for part, pids in _cpu_parts(worker).items()}
            started = time.monotonic()
            for _ in range(messages):
                noop.delay()
            finished = wait_drained(name, queue, timeout=600)
            if flavour != "stock":
                finished = wait_results(db, messages)
            after = {part: cpu_of(pids) for part, pids in _cpu_parts(worker).items()}
            cpu = {part: 1000 * cpu_spent(before[part], after[part]) / messages for part in after}
        finally:
            worker.stop()
            app.close()
        return messages / (finished - started), stored_answers(db, "celery"), cpu


def dramatiq_e2e(messages: int, log_dir: Path) -> tuple[float, int, dict[str, float]]:
    """(End-to-end no-op messages per second, results stored, CPU ms per task of each part) through Dramatiq on
    RabbitMQ with confirms and Redis results: from the first `send()` until the queue is drained and every result
    is stored. Dramatiq's main process only supervises: its worker processes count as its "children"."""
    with vhost("dramatiq") as name, redis_db() as db:
        env = {"BENCH_BROKER_URL": amqp_url(name), "BENCH_RESULT_URL": redis_url(db)}
        worker = Process(
            "worker-dramatiq",
            [python(), "-m", "dramatiq", "bench.dramatiq_app", "--processes", "2", "--threads", "8"],
            env,
            log_dir,
        )
        try:
            worker.wait_for_log("is ready for action")
            from bench import dramatiq_app

            broker, actor = dramatiq_app.make(amqp_url(name), redis_url(db))
            before = {part: cpu_of(pids) for part, pids in _cpu_parts(worker).items()}
            started = time.monotonic()
            for _ in range(messages):
                actor.send()
            wait_drained(name, "default", timeout=600)
            finished = wait_results(db, messages)
            after = {part: cpu_of(pids) for part, pids in _cpu_parts(worker).items()}
            cpu = {part: 1000 * cpu_spent(before[part], after[part]) / messages for part in after}
            broker.close()
            return messages / (finished - started), stored_answers(db, "dramatiq"), cpu
        finally:
            worker.stop()
