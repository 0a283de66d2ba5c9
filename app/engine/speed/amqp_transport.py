"""Celery's AMQP transport (kombu's `pyamqp` over py-amqp) with buffered frame reads and batched writes.

py-amqp reads every frame with two or three `recv`s of exact sizes (header, payload, frame end), and switches
the socket to non-blocking and back around every read the event loop makes (two `ioctl`s). kombu's reader
takes one message per turn of the event loop, so each message also costs a tick of every pool callback and an
`epoll_wait`: most of the system calls a worker's main process makes per task are these. Here:

- the socket is read in large chunks, and frames are cut from the buffer;
- a non-blocking read passes `MSG_DONTWAIT` instead of switching the socket's mode;
- the event loop's reader takes every message it can in one turn, reading the socket at most `RECV_PER_TURN`
  times (the rest of what the socket holds keeps it readable, so the loop's next poll returns at once: a turn
  never ends with a whole frame waiting in the buffer);
- inside `batched_writes()` (the worker's acks of one batch) frames are written with one `send` per connection.

Nothing changes on the wire. TLS connections keep py-amqp's own transport and kombu's reader. The channels are
the ones that fail a returned mandatory publish (app/engine/guarantees/returns.py); app/engine/install.py
registers this transport under `ALIAS` when the speed patches are on.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from struct import unpack_from
from typing import Any

import amqp.transport
from amqp.exceptions import RecoverableConnectionError, UnexpectedFrame

from app.engine.guarantees import returns
from app.engine.guarantees.returns import Unroutable

logger = logging.getLogger(__name__)

#: The name `broker_transport` gives this transport. kombu shows its connections' URLs as amqp:// (the worker's
#: banner, Flower's broker page, which parses the scheme), as it does for its own `pyamqp`.
ALIAS = "courier-amqp"

#: Bytes asked of the socket per read: a few hundred small task messages.
READ_SIZE = 256 * 1024
#: Reads from the socket per turn of the event loop, after which only what is already buffered is taken.
RECV_PER_TURN = 8
#: The end octet of every AMQP frame.
FRAME_END = 0xCE
_UNAVAILABLE = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)

#: Transports holding frames to write when `batched_writes` ends, while it is active; None outside it.
_batching: list[BufferedTransport] | None = None
#: The thread that entered `batched_writes` (writes from other threads go out at once).
_batching_thread: int | None = None


@contextmanager
def batched_writes() -> Iterator[None]:
    """Hold the frames this thread writes until the block ends, then send each connection's in one `send`.

    A blocking read on a connection sends what it holds first, so a synchronous call (one that waits for the
    broker's answer) inside the block cannot wait for a request still held here. A failed send is logged and
    dropped like a failed ack is (Celery's `ack_log_error`): the connection is lost, and the broker redelivers.
    """
    global _batching, _batching_thread
    if _batching is not None:  # nested: the outer block sends
        yield
        return
    _batching, _batching_thread = [], threading.get_ident()
    try:
        yield
    finally:
        transports, _batching, _batching_thread = _batching, None, None
        for transport in transports:
            try:
                transport.send_held()
            except OSError as exc:
                logger.warning("Could not send the frames held for a connection: %r.", exc)


class BufferedTransport(amqp.transport.TCPTransport):  # type: ignore[misc]
    """py-amqp's TCP transport, reading the socket in large chunks and cutting frames from the buffer."""

    _buffer: bytes
    _position: int
    _non_blocking: bool
    _held: list[bytes] | None
    #: Reads of the socket left in this turn of the event loop (None: no limit); at 0, a read that the buffer
    #: cannot serve times out.
    receives_left: int | None

    def _setup_transport(self) -> None:
        super()._setup_transport()
        self._buffer, self._position = b"", 0
        self._non_blocking = False
        self._held = None
        self.receives_left = None

    @contextmanager
    def having_timeout(self, timeout: float | None) -> Iterator[socket.socket]:
        """Reads in the block wait at most `timeout` seconds (None: block). A zero timeout, the event loop's,
        reads with MSG_DONTWAIT instead of switching the socket to non-blocking and back."""
        was_non_blocking = self._non_blocking
        if timeout == 0 and self.sock.gettimeout() is None:
            self._non_blocking = True
            try:
                yield self.sock
            finally:
                self._non_blocking = was_non_blocking
            return
        self._non_blocking = False
        try:
            with super().having_timeout(timeout) as sock:
                yield sock
        finally:
            self._non_blocking = was_non_blocking

    def read_frame(self, unpack: Any = None) -> tuple[int, int, bytes]:
        """The next frame: (type, channel, payload). Raises socket.timeout when a non-blocking read finds none."""
        while True:
            buffer, start = self._buffer, self._position
            available = len(buffer) - start
            if available < 7:
                self._receive(7 - available)
                continue
            frame_type, channel, size = unpack_from(">BHI", buffer, start)
            end = start + 7 + size
            if len(buffer) <= end:
                self._receive(end + 1 - len(buffer))
                continue
            if buffer[end] != FRAME_END:
                self.connected = False
                raise UnexpectedFrame(f"Received frame_end {buffer[end]:#04x} while expecting 0xce")
            self._position = end + 1
            return frame_type, channel, buffer[start + 7 : end]

    def _receive(self, missing: int) -> None:
        """Append to the buffer what the socket holds, when reading for the event loop (at most READ_SIZE bytes;
        socket.timeout when it holds nothing), else the `missing` bytes of the frame being read, waiting for
        them: a synchronous call reads no further than its answer, so no whole frame is left in the buffer for
        a loop that only looks at the socket."""
        flags: int
        if self._non_blocking:
            if self.receives_left is not None:
                if self.receives_left <= 0:
                    raise TimeoutError()
                self.receives_left -= 1
            size, flags = READ_SIZE, socket.MSG_DONTWAIT
        else:
            if self._held:
                self.send_held()  # the answer waited for may be to a held frame
            size, flags = missing, 0
        try:
            data = self.sock.recv(size, flags)
        except TimeoutError:
            raise
        except OSError as exc:
            if exc.errno in _UNAVAILABLE:
                raise TimeoutError() from None
            self.connected = False
            raise
        if not data:
            self.connected = False
            raise OSError("Server unexpectedly closed connection")
        self._buffer = self._buffer[self._position :] + data
        self._position = 0

    def _read(self, n: int, initial: bool = False) -> bytes:
        """Exactly `n` bytes (py-amqp's contract; the frames themselves come from `read_frame`)."""
        while len(self._buffer) - self._position < n:
            self._receive(n - (len(self._buffer) - self._position))
        start = self._position
        self._position += n
        return self._buffer[start : start + n]

    def write(self, s: bytes) -> None:
        if _batching is not None and _batching_thread == threading.get_ident():
            if self._held is None:
                self._held = []
                _batching.append(self)
            self._held.append(bytes(s))  # py-amqp hands over a view of a buffer it reuses for the next frame
            return
        super().write(s)

    def send_held(self) -> None:
        """Send the frames held by `batched_writes`, in one `send`."""
        held, self._held = self._held, None
        if held:
            super().write(b"".join(held))


class Connection(returns.Connection):
    """py-amqp's connection over a BufferedTransport (py-amqp's own for TLS), with channels that fail a publish
    RabbitMQ returned."""

    def Transport(  # noqa: N802 (py-amqp's name)
        self,
        host: str,
        connect_timeout: float | None,
        ssl: Any = False,
        read_timeout: float | None = None,
        write_timeout: float | None = None,
        socket_settings: dict[int, int] | None = None,
        **kwargs: Any,
    ) -> Any:
        options = {"read_timeout": read_timeout, "write_timeout": write_timeout, "socket_settings": socket_settings}
        if ssl:
            return super().Transport(host, connect_timeout, ssl=ssl, **options, **kwargs)
        return BufferedTransport(host, connect_timeout=connect_timeout, **options, **kwargs)


class Transport(returns.Transport):
    """kombu's `pyamqp` transport with the buffered connection; `broker_transport` names it."""

    Connection = Connection

    def _make_reader(self, connection: Any, *args: Any, **kwargs: Any) -> Callable[..., None]:
        if not isinstance(connection.transport, BufferedTransport):
            return super()._make_reader(connection, *args, **kwargs)  # type: ignore[no-untyped-call,no-any-return]
        drain_events = connection.drain_events

        def read(loop: Any) -> None:
            """Take every message the socket holds, reading it at most RECV_PER_TURN times, before polling."""
            if not connection.connected:
                raise RecoverableConnectionError("Socket was disconnected")
            transport = connection.transport
            transport.receives_left = RECV_PER_TURN
            try:
                while True:
                    drain_events(timeout=0)
            except TimeoutError:
                return
            finally:
                transport.receives_left = None

        return read


__all__ = ["ALIAS", "BufferedTransport", "Connection", "Transport", "Unroutable", "batched_writes"]
