"""The worker's store-and-check round trip, sent from its event loop and read when Redis answers: the loop goes
on meanwhile; a dead, hung or restarted Redis is reported to the sender, and the next round trip reconnects."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu.asynchronous import Hub

from app.engine.speed.roundtrip import RoundTrip
from tests.support.processes import OwnRedis


@pytest.fixture
def loop() -> Iterator[Hub]:
    hub = Hub()
    try:
        yield hub
    finally:
        hub.close()


class Answers:
    """What a sender is told, and how many turns the loop took meanwhile."""

    def __init__(self) -> None:
        self.told: list[list[Any] | None] = []

    def __call__(self, replies: list[Any] | None) -> None:
        self.told.append(replies)


def run_loop(hub: Hub, until: Any, seconds: float) -> int:
    """Turn the loop until `until()` or `seconds` pass; how many turns it took."""
    turns = 0
    loop = hub.create_loop()
    deadline = time.monotonic() + seconds
    while not until() and time.monotonic() < deadline:
        next(loop)
        turns += 1
    return turns


def trip_on(hub: Hub, own: OwnRedis, timeout_s: float = 5.0) -> RoundTrip:
    return RoundTrip(hub, redis.Redis(port=own.port, socket_timeout=2, socket_connect_timeout=2), timeout_s)


def test_the_answer_of_a_pipeline_is_read_when_it_arrives_with_every_reply_in_order(loop):
    answers = Answers()
    with OwnRedis() as own:
        trip = trip_on(loop, own)
        # When one round trip carries a write, a script and an error reply
        sent = trip.send([("SET", "k", "v"), ("EVAL", "return {1, 2}", 0), ("INCR", "k"), ("GET", "k")], answers)
        assert sent and trip.busy
        run_loop(loop, lambda: answers.told, 5)
        # Then the sender is told every reply, the error reply as an error, and the trip is free again
        [replies] = answers.told
        assert replies is not None
        assert replies[0] == b"OK" and replies[1] == [1, 2] and replies[3] == b"v"
        assert isinstance(replies[2], redis.ResponseError)
        assert not trip.busy and own.client().get("k") == "v"


def test_the_loop_goes_on_while_redis_has_not_answered(loop):
    answers = Answers()
    ticks: list[float] = []
    loop.call_repeatedly(0.05, lambda: ticks.append(time.monotonic()))
    with OwnRedis() as own:
        trip = trip_on(loop, own)
        assert trip.send([("PING",)], answers)  # (connected, then answered: the socket is known)
        run_loop(loop, lambda: answers.told, 5)
        # Given a hung Redis (it accepts, but answers nothing)
        own.pause()
        try:
            assert trip.send([("SET", "late", "1")], answers)
            # Then the loop keeps turning (its timers fire) while the answer is awaited
            run_loop(loop, lambda: False, 0.6)
            assert len(ticks) >= 5 and trip.busy and len(answers.told) == 1
        finally:
            own.resume()
        # And once Redis answers, the sender is told
        run_loop(loop, lambda: len(answers.told) == 2, 5)
        assert answers.told[1] == [b"OK"] and own.client().get("late") == "1"


def test_an_answer_overdue_past_the_timeout_is_reported_as_failed_and_the_next_trip_reconnects(loop):
    answers = Answers()
    with OwnRedis() as own:
        trip = trip_on(loop, own, timeout_s=0.5)
        assert trip.send([("PING",)], answers)  # (connected while Redis answers)
        run_loop(loop, lambda: answers.told, 5)
        own.pause()
        try:
            assert trip.send([("ECHO", "late")], answers)
            # Then after the timeout (checked every CHECK_S) the sender is told it failed, and may go another way
            run_loop(loop, lambda: len(answers.told) == 2, RoundTrip.CHECK_S + 3)
            assert answers.told[1] is None and not trip.busy
        finally:
            own.resume()
        # And the late answer of the dropped connection is never taken for the next round trip's
        assert trip.send([("ECHO", "mine")], answers)
        run_loop(loop, lambda: len(answers.told) == 3, 5)
        assert answers.told[2] == [b"mine"]


def test_a_redis_killed_or_restarted_is_reported_and_the_next_trip_reconnects(loop):
    answers = Answers()
    with OwnRedis() as own:
        trip = trip_on(loop, own)
        assert trip.send([("PING",)], answers)
        run_loop(loop, lambda: answers.told, 5)
        # When Redis dies with the connection open: a send fails at once (nothing sent) or is told it failed
        own.kill()
        if trip.send([("SET", "b", "1")], answers):
            run_loop(loop, lambda: len(answers.told) == 2, 5)
            assert answers.told[1] is None
        assert not trip.busy
        # While it is down, nothing can be sent; once it is back, the next trip reconnects
        assert not trip.send([("PING",)], answers)
        own.start()
        assert trip.send([("SET", "c", "1")], answers)
        run_loop(loop, lambda: answers.told[-1] == [b"OK"], 5)
        assert own.client().get("c") == "1"


def test_a_warm_shutdown_waits_for_the_answer_in_flight(loop):
    answers = Answers()
    with OwnRedis() as own:
        trip = trip_on(loop, own)
        assert trip.send([("SET", "d", "1"), ("GET", "d")], answers)
        # When the loop no longer turns, finish() reads the answer itself
        trip.finish()
        assert answers.told == [[b"OK", b"1"]] and not trip.busy
