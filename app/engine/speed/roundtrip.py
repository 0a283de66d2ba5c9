"""One Redis round trip at a time from the worker's event loop, read when its answer arrives.

The worker's main process stores the results its children sent back and checks the jobs it is about to hand
over in one Redis round trip per turn of its event loop (app/engine/speed/pool.py). Made with a blocking call, the
loop waited for every answer: on a busy machine, where Redis and the main process wait for a core after each
wake-up, the loop spent about half its time in that wait, reading no message and no result. Here the round trip
is sent from the loop and its answer is read when the socket turns readable, on a connection of its own that the
loop polls like the broker's: meanwhile the loop goes on reading, and the next round trip carries everything that
arrived.

A round trip that fails (the connection dropped, an error reply, no answer within the timeout) is reported to its
sender with no replies; the sender then takes the blocking way, with the backend's retry policy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import ResponseError

logger = logging.getLogger(__name__)

#: What the sender is told: every reply in order (an error reply as its ResponseError), or None if it failed.
OnAnswer = Callable[[list[Any] | None], None]


class RoundTrip:
    """Pipelined commands on a connection of `client`'s pool settings, answered through the loop `hub`."""

    #: How often the loop checks that the answer in flight is not overdue.
    CHECK_S = 1.0

    def __init__(self, hub: Any, client: Redis, timeout_s: float) -> None:
        self._hub = hub
        self._client = client
        self._timeout_s = timeout_s
        #: redis-py's Connection (untyped): made from the client's pool settings, connected when first used.
        self._connection: Any = None
        self._fd: int | None = None
        #: The round trip in flight: (how many replies it waits for, who is told, monotonic time it was sent).
        self._waiting: tuple[int, OnAnswer, float] | None = None
        hub.call_repeatedly(self.CHECK_S, self._expire)

    @property
    def busy(self) -> bool:
        """Whether a round trip is in flight (one at a time: the next one carries what arrives meanwhile)."""
        return self._waiting is not None

    def send(self, commands: list[tuple[Any, ...]], on_answer: OnAnswer) -> bool:
        """Send `commands` as one pipeline; `on_answer` gets their replies from the loop once they are read.
        False when they could not be sent (nothing was: the sender goes the blocking way)."""
        assert self._waiting is None, "one round trip at a time"
        try:
            connection = self._connection or self._client.connection_pool.make_connection()
            self._connection = connection
            connection.send_packed_command(connection.pack_commands(commands))  # connects first when it must
            self._watch(connection)
        except Exception as exc:  # redis-py's ConnectionError/TimeoutError, or an OSError from the socket
            logger.debug("Sending a round trip failed: %r.", exc)
            self._drop()
            return False
        self._waiting = (len(commands), on_answer, time.monotonic())
        return True

    def finish(self) -> None:
        """Wait for the answer in flight here (a warm shutdown: the loop no longer polls)."""
        if self._waiting is not None:
            self._on_readable()

    def _watch(self, connection: Any) -> None:
        """Poll the connection's socket with the loop (again after a reconnect: a new socket)."""
        fd = connection._sock.fileno() if connection._sock is not None else None
        if fd == self._fd:
            return
        if self._fd is not None:
            self._hub.remove_reader(self._fd)
        self._fd = fd
        if fd is not None:
            self._hub.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is None or self._connection is None:  # nothing asked: the server closed the connection
            self._drop()
            return
        count, on_answer, _ = waiting
        replies: list[Any] = []
        try:
            for _ in range(count):
                try:
                    replies.append(self._connection.read_response())
                except ResponseError as exc:  # an error reply: the others still follow on the socket
                    replies.append(exc)
        except Exception as exc:
            logger.debug("Reading a round trip's answer failed: %r.", exc)
            self._drop()
            on_answer(None)
            return
        on_answer(replies)

    def _expire(self) -> None:
        """A timer of the loop: a round trip unanswered after the timeout has failed (its connection is dropped,
        so a late answer cannot be taken for the next one's)."""
        if self._waiting is not None and time.monotonic() - self._waiting[2] > self._timeout_s:
            _, on_answer, _ = self._waiting
            self._waiting = None
            self._drop()
            on_answer(None)

    def _drop(self) -> None:
        if self._fd is not None:
            self._hub.remove_reader(self._fd)
            self._fd = None
        if self._connection is not None:
            self._connection.disconnect()
