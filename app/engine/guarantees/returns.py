"""A mandatory message RabbitMQ could not route fails its publisher with `Unroutable`, instead of being confirmed.

With publisher confirms, RabbitMQ *acks* a mandatory message it could not route, after returning it
(`basic.return`). py-amqp raises the return out of the confirm's wait before that ack is read; it drains the ack
before the next publish only if the ack has already arrived, so a late one would confirm the channel's next
message instead of its own. Here every channel has a return handler, so a returned message never raises out of
an unrelated wait, and a confirmed publish collects the returns that arrive before its ack, waits for the ack as
usual, and then raises, leaving the channel in step (`Channel`).

`Transport` is kombu's `pyamqp` transport with these channels: the worker and every Celery publisher run on it,
or on its buffered subclass (app/engine/speed/amqp_transport.py); app/engine/install.py registers the one in use.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.exceptions import KombuError
from kombu.transport import pyamqp

logger = logging.getLogger(__name__)


class Unroutable(KombuError):
    """RabbitMQ returned a mandatory message: no queue is bound for its exchange and routing key (a queue deleted
    or unbound, or its node down). Nothing was delivered; the publisher must not count it as sent."""


class Channel(pyamqp.Channel):
    """kombu's py-amqp channel, whose confirmed publish raises `Unroutable` when its message was returned.

    A return handler (py-amqp's `events['basic_return']`) is on every channel; a confirmed publish also collects
    the returns that arrive before its ack (RabbitMQ sends `basic.return` first), waits for the ack, then raises.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._returned: list[str] | None = None
        self.events["basic_return"].add(self._on_returned)

    def _on_returned(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        what = f"exchange {exchange!r}, routing key {routing_key!r}: {exc}"
        if self._returned is not None:
            self._returned.append(what)
        else:  # a mandatory publish without confirms: nobody waits for it any more
            logger.error("RabbitMQ returned an unroutable message (%s).", what)

    def basic_publish_confirm(self, *args: Any, **kwargs: Any) -> Any:
        """py-amqp's confirmed publish; raises Unroutable, once the broker's ack is read, if it returned the message."""
        self._returned = []
        try:
            answer = super().basic_publish_confirm(*args, **kwargs)
            returned = self._returned
        finally:
            self._returned = None
        if returned:
            raise Unroutable(f"RabbitMQ could not route the message ({'; '.join(returned)}).")
        return answer


class Connection(pyamqp.Connection):
    """py-amqp's connection, with channels that fail a publish RabbitMQ returned."""

    Channel = Channel


class Transport(pyamqp.Transport):
    """kombu's `pyamqp` transport, with channels that fail a publish RabbitMQ returned."""

    Connection = Connection
