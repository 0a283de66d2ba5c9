"""The worker's AMQP transport against the session's RabbitMQ: frames cut from large reads, every message the
socket holds taken in one turn of the event loop, synchronous calls reading no further than their answer,
and a batch of acks sent at once."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Consumer, Producer, Queue
from kombu.asynchronous import Hub

from app.config import get_settings
from app.engine.celery_app import celery_app
from app.engine.guarantees import returns
from app.engine.speed import amqp_transport, pool
from app.engine.speed.consumer import FastConsumer


@pytest.fixture
def conn() -> Iterator[Connection]:
    with Connection(get_settings().broker_url, transport=amqp_transport.Transport) as connection:
        connection.connect()
        assert isinstance(connection.connection.transport, amqp_transport.BufferedTransport)
        yield connection


@pytest.fixture
def queue(conn: Connection) -> Iterator[Queue]:
    q = Queue(f"transport-test-{uuid.uuid4().hex[:8]}", auto_delete=False)
    q(conn.default_channel).declare()
    yield q
    q(conn.default_channel).delete()


def _publish(bodies: list[bytes], queue: Queue) -> None:
    """Publish with py-amqp's own transport, so the bytes on the wire come from a reference writer."""
    with Connection(get_settings().broker_url) as publisher:
        producer = Producer(publisher.default_channel, routing_key=queue.name)
        for body in bodies:
            producer.publish(body, content_type="application/octet-stream", content_encoding="binary")


def _count_calls(obj: Any, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(obj, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    setattr(obj, name, counted)
    return calls


def test_messages_cut_from_large_reads_arrive_whole_and_in_order(conn, queue):
    # Given small messages, one of several frames (above frame_max) and one above a whole read (READ_SIZE)
    sizes = [1, 100, 4096, 200_000, amqp_transport.READ_SIZE + 12_345, 10, *range(50, 90)]
    bodies = [os.urandom(size) for size in sizes]
    _publish(bodies, queue)
    received: list[bytes] = []
    with Consumer(
        conn,
        [queue],
        callbacks=[lambda body, message: (received.append(body), message.ack())],
        accept=["application/octet-stream"],
    ):
        # When they are read the way the event loop reads (non-blocking drains) until every one has come
        transport = conn.connection.transport
        receives = _count_calls(transport, "_receive")
        while len(received) < len(bodies):
            try:
                conn.drain_events(timeout=0)
            except TimeoutError:
                conn.drain_events(timeout=5)  # (nothing buffered yet: wait for the broker)
    # Then each arrives whole and in order, from far fewer socket reads than py-amqp's two to three per frame
    assert received == bodies
    assert len(receives) < len(bodies)


def test_the_loop_takes_every_message_the_socket_holds_in_one_turn_and_leaves_none_buffered(conn, queue):
    _publish([b"m%d" % i for i in range(40)], queue)
    received: list[bytes] = []
    channel = conn.default_channel
    channel.basic_qos(0, 100, False)
    consumer = Consumer(
        channel,
        [queue],
        callbacks=[lambda body, message: received.append(body)],
        accept=["application/octet-stream"],
        no_ack=True,
    )
    # When the consumer starts (a synchronous call: its answer comes with deliveries right behind it)
    consumer.consume()
    transport = conn.connection.transport
    # Then the synchronous read stopped at its answer: no whole frame waits where the loop's poll cannot see it
    assert len(transport._buffer) - transport._position < 8
    # And one turn of the event loop's reader takes every message the broker has sent
    conn.drain_events(timeout=5)  # (the first has arrived: the rest follow it in the same flight)
    hub = Hub()
    try:
        conn.transport.on_readable(conn.connection, hub)
        while len(received) < 40:  # (the broker may still be sending: one more turn per socket wake-up)
            conn.drain_events(timeout=5)
            conn.transport.on_readable(conn.connection, hub)
    finally:
        hub.close()
    assert received == [b"m%d" % i for i in range(40)]
    assert len(transport._buffer) - transport._position < 8


def test_acks_written_in_a_batch_go_out_in_one_send_and_reach_the_broker(conn, queue):
    _publish([b"x"] * 10, queue)
    messages: list[Any] = []
    with Consumer(
        conn, [queue], callbacks=[lambda body, message: messages.append(message)], accept=["application/octet-stream"]
    ):
        while len(messages) < 10:
            conn.drain_events(timeout=5)
        sends = _count_calls(conn.connection.transport, "_write")
        # When ten messages are acked in a batch
        with amqp_transport.batched_writes():
            for message in messages:
                message.ack()
            assert sends == []  # (held until the block ends)
        # Then one send carries them all
        assert len(sends) == 1
    # And the broker has them: nothing is left to redeliver
    with Connection(get_settings().broker_url) as other:
        _, ready, _ = other.default_channel.queue_declare(queue.name, passive=True)
        assert ready == 0


def test_a_synchronous_call_inside_a_batch_sends_what_is_held_instead_of_waiting_for_it(conn):
    channel = conn.channel()
    with amqp_transport.batched_writes():
        channel.basic_qos(0, 7, False)  # waits for qos-ok: its request must not be held (pytest-timeout otherwise)
    channel.close()


def test_frames_written_from_another_thread_during_a_batch_are_sent_at_once(conn):
    sent: list[int] = []
    with amqp_transport.batched_writes():
        worker = threading.Thread(target=lambda: (conn.channel().close(), sent.append(1)))
        worker.start()
        worker.join(30)
    assert sent == [1]


def test_the_worker_acks_at_once_from_its_loop_thread_and_defers_from_any_other():
    ran: list[str] = []
    consumer = FastConsumer.__new__(FastConsumer)
    consumer.hub = Hub()
    consumer._loop_thread = threading.get_ident()
    try:
        consumer.call_soon_ack(ran.append, "now")
        assert ran == ["now"]
        other = threading.Thread(target=consumer.call_soon_ack, args=(ran.append, "later"))
        other.start()
        other.join(10)
        assert ran == ["now"]  # deferred to the loop's next turn
    finally:
        consumer.hub.close()


class _RecordingPool:
    """Stands in for Celery's pool under the batching mixin: records the jobs handed to the children."""

    def __init__(self) -> None:
        self.handed: list[str] = []

    def apply_async(self, target: Any, args: Any = None, kwargs: Any = None, **options: Any) -> None:
        self.handed.append(str(args[3]))  # run_deferring's (target, answer, type, task id, ...)


class _Pool(pool._BatchingPool, _RecordingPool):
    app = celery_app


def test_jobs_freed_by_a_batch_s_acks_are_handed_over_in_the_same_tick():
    """Acking a batch frees Celery's semaphore, which hands over the next jobs at once; nothing would wake the
    loop for them if they waited for the next tick (the broker sends nothing until it has the acks)."""
    the_pool = _Pool()
    the_pool._batch = pool.ResultBatch(celery_app.backend.store_many)
    first, freed = str(uuid.uuid4()), str(uuid.uuid4())

    def job(task_id: str) -> pool.Held:
        return (None, ("celery", task_id, {"retries": 0}), {}, {"callback": lambda outcome: None})

    def on_acked(outcome: Any) -> None:  # Celery's on_success, releasing its semaphore
        the_pool._held.append(job(freed))

    the_pool._held = [job(first)]
    the_pool._batch.add(on_acked, (0, None, 0.0, [(f"celery-task-meta-{uuid.uuid4()}".encode(), "{}", 60, None)]))
    # When the loop ticks once
    the_pool._tick()
    # Then the job the acks freed went to a child too, checked like the first
    assert the_pool.handed == [first, freed]
    assert the_pool._held == []


def test_the_worker_s_broker_url_still_reads_amqp_for_tools_that_parse_it():
    """Flower's broker page (and the worker's banner) parse the connection's URL: it must not show the
    transport's import path as a scheme."""
    with Connection(get_settings().broker_url, transport=celery_app.conf.broker_transport) as connection:
        assert connection.as_uri().startswith("amqp://")
        assert isinstance(connection.transport, returns.Transport)  # either engine's: both are Courier's


def test_a_worker_whose_broker_connection_is_closed_reconnects_and_runs_the_next_task(start_worker, empty_queues):
    """The broker closing the worker's connection (a RabbitMQ restart, a failover, an operator) reaches the
    consumer through the buffered transport as a lost connection: the worker reconnects and goes on."""
    from urllib.parse import quote

    from app.constants import Tier
    from app.engine import publish
    from tests.support.services import VHOST, mgmt
    from tests.support.session import join

    def consuming_connections() -> set[str]:
        """The connections of the `low` queue's consumers (the worker's consumer connection, by name): listing
        the connections that appeared once the worker started could catch another of its connections first."""
        queue = mgmt("GET", f"/queues/{quote(VHOST)}/low").json()
        # (the management API lists a consumer whose channel is closing with `channel_details: []`)
        details = [c.get("channel_details") for c in queue.get("consumer_details") or []]
        return {d["connection_name"] for d in details if isinstance(d, dict)}

    worker = start_worker("low", concurrency=1)
    names = join(consuming_connections, what="the worker's consumer in the management API")
    # When the broker closes the worker's consumer connection
    for name in names:
        mgmt("DELETE", f"/connections/{quote(name)}")
    join(lambda: "Connection to broker lost" in worker.log(), what="the worker to see its connection closed")
    # Then a task published afterwards still runs
    task_id = publish.dispatch("system.ping", kwargs={}, triggered_by="test", tier=Tier.low).task_id
    join(
        lambda: celery_app.backend.get_task_meta(task_id)["status"] == "SUCCESS",
        timeout=60,
        what="the task published after the reconnect",
    )


def _transport_over(sock: Any) -> amqp_transport.BufferedTransport:
    """A BufferedTransport on one end of a socket pair (the other end plays the broker)."""
    transport = amqp_transport.BufferedTransport.__new__(amqp_transport.BufferedTransport)
    transport.sock, transport.connected = sock, True
    transport._setup_transport()
    return transport


def test_a_frame_with_a_corrupt_end_octet_is_refused_and_the_connection_marked_lost():
    import socket
    import struct

    from amqp.exceptions import UnexpectedFrame

    ours, broker = socket.socketpair()
    with ours, broker:
        transport = _transport_over(ours)
        good = struct.pack(">BHI", 1, 1, 3) + b"abc" + bytes([amqp_transport.FRAME_END])
        corrupt = struct.pack(">BHI", 1, 1, 3) + b"xyz" + b"\x00"
        broker.sendall(good + corrupt)
        assert transport.read_frame() == (1, 1, b"abc")
        with pytest.raises(UnexpectedFrame):
            transport.read_frame()
        assert transport.connected is False


def test_a_held_send_that_fails_is_logged_and_the_other_connections_still_get_theirs(caplog):
    """A batch's acks on a lost connection are dropped like Celery's failed acks (the broker redelivers), and
    must not keep the acks of another connection in the same batch from going out."""
    import socket

    lost_ours, lost_broker = socket.socketpair()
    live_ours, live_broker = socket.socketpair()
    with lost_broker, live_ours, live_broker:
        lost, live = _transport_over(lost_ours), _transport_over(live_ours)
        with amqp_transport.batched_writes():
            lost.write(b"ack-1")
            live.write(b"ack-2")
            live.write(b"ack-3")
            lost_ours.close()  # the connection dies before the batch is sent
        assert lost.connected is False
        assert "Could not send the frames held" in caplog.text
        live_broker.settimeout(5)
        assert live_broker.recv(100) == b"ack-2ack-3"
