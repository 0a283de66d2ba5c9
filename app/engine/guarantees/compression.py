"""Compressed messages are refused, never inflated.

kombu inflates a message whose `compression` header names a codec (gzip, bzip2, ...) as it builds the message,
before Celery or Courier see it. Courier publishes nothing compressed, so such a message comes from outside, and
inflating it is unbounded: a 200 KB message that inflates to 200 MB took a worker's main process to 547 MB and a
pool child to 524 MB, and ran (the attacker's outside test); a few megabytes would take the worker down for its
memory, and the redelivered message would take it down again. With `refuse` in kombu's place the message is built
with an error instead, which the worker's consumer rejects to the dead-letter queue as `malformed` and the recorder
stores as it arrived (its raw body), both without inflating a byte.
"""

from __future__ import annotations

import kombu.message
from kombu.exceptions import ContentDisallowed


def refuse(body: bytes, content_type: str) -> bytes:
    """kombu's `decompress`, in Courier: every compressed message is refused."""
    raise ContentDisallowed(f"Refusing a compressed message ({content_type!r}): Courier publishes none, inflates none")


def install() -> None:
    """Put `refuse` where kombu's Message looks up its decompressor (every process that consumes messages)."""
    kombu.message.decompress = refuse  # type: ignore[attr-defined]
