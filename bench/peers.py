"""The peers Courier is measured against: raw AMQP (pika), stock Celery, Dramatiq."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pika

from bench.common import Process, amqp_url, cpu_of, pgrep, python, vhost, wait_drained

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


def stock_celery(messages: int, log_dir: Path) -> tuple[float, float, dict[str, float]]:
    """(enqueue rate with no worker, end-to-end rate with a worker running, CPU ms per task of each part end to
    end) of an out-of-the-box Celery."""
    from bench import stock_celery_app

    with vhost("celery") as name:
        app = stock_celery_app.make_app(amqp_url(name))
        noop = app.tasks["bench.noop"]
        started = time.monotonic()
        for _ in range(messages):
            noop.delay()
        enqueue = messages / (time.monotonic() - started)
        app.connection_for_write().default_channel.queue_purge("celery")
        worker = Process(
            "worker-stock-celery",
            [python(), "-m", "celery", "-A", "bench.stock_celery_app", "worker", "--loglevel", "INFO"],
            {"BENCH_BROKER_URL": amqp_url(name)},
            log_dir,
        )
        try:
            worker.wait_for_log("ready.")
            main = worker.popen.pid
            parts = {
                "worker_main": [main],
                "worker_children": pgrep("-P", str(main)),
                "rabbitmq": pgrep("-f", "beam.smp"),
                "publisher": [os.getpid()],
            }
            before = {part: cpu_of(pids) for part, pids in parts.items()}
            started = time.monotonic()
            for _ in range(messages):
                noop.delay()
            finished = wait_drained(name, "celery", timeout=600)
            cpu = {part: 1000 * (cpu_of(pids) - before[part]) / messages for part, pids in parts.items()}
        finally:
            worker.stop()
            app.close()
        return enqueue, messages / (finished - started), cpu


def dramatiq_e2e(messages: int, confirm: bool, log_dir: Path) -> float:
    """End-to-end no-op messages per second through Dramatiq on RabbitMQ, confirms on or off."""
    with vhost("dramatiq") as name:
        env = {"BENCH_BROKER_URL": amqp_url(name), "BENCH_CONFIRM": "1" if confirm else "0"}
        worker = Process(
            "worker-dramatiq",
            [python(), "-m", "dramatiq", "bench.dramatiq_app", "--processes", "2", "--threads", "8"],
            env,
            log_dir,
        )
        try:
            worker.wait_for_log("is ready for action")
            from bench import dramatiq_app

            broker, actor = dramatiq_app.make(amqp_url(name), confirm)
            started = time.monotonic()
            for _ in range(messages):
                actor.send()
            finished = wait_drained(name, "default", timeout=600)
            broker.close()
            return messages / (finished - started)
        finally:
            worker.stop()
