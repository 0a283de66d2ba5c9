"""Real delivery endpoints for tests: an SMTP server (aiosmtpd) and a local HTTP server playing the SMS and
push providers, plus a worker wired to them and the searches that prove a secret went nowhere."""

from __future__ import annotations

import email
import json
import logging
import re
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.processes import free_port
from tests.support.services import redis_client
from tests.support.session import VAR_DIR
from tests.support.workers import WorkerProcess, spawn_worker

logging.getLogger("mail.log").setLevel(logging.WARNING)

LINK_TOKEN = re.compile(r"token=([A-Za-z0-9_\-]+)")


@dataclass
class SmtpInbox:
    """Messages the test SMTP server accepted; `reject` maps an address to an SMTP reply for its RCPT."""

    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    reject: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:  # noqa: N802
        if address in self.reject:
            return self.reject[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=default_policy)
        with self.lock:
            self.messages.append(message)  # type: ignore[arg-type]
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if m["To"] == address]

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(str(m["To"]) for m in self.messages)

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()
        self.reject.clear()


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def token_in(message: EmailMessage) -> str:
    found = LINK_TOKEN.search(text_of(message))
    assert found, text_of(message)
    return found.group(1)


def start_smtp() -> tuple[SmtpInbox, Controller]:
    inbox = SmtpInbox(port=free_port())
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    return inbox, controller


@dataclass
class ProviderCall:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


class FakeProvider(ThreadingHTTPServer):
    """A local HTTP server playing the SMS (/sms) and push (/push) providers.

    `script[path]` is a list of (status, body[, headers]) answers used one per request, then 200 with a fresh id.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProviderHandler)
        self.calls: list[ProviderCall] = []
        self.script: dict[str, list[tuple[Any, ...]]] = {}
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, path: str) -> tuple[Any, ...]:
        with self.lock:
            queue = self.script.get(path) or []
            if queue:
                return queue.pop(0)
        return 200, {"id": f"prov-{uuid.uuid4().hex[:8]}"}

    def to(self, path: str, recipient: str) -> list[ProviderCall]:
        with self.lock:
            return [c for c in self.calls if c.path == path and c.body.get("to") == recipient]

    def clear(self) -> None:
        with self.lock:
            self.calls.clear()
            self.script.clear()


class _ProviderHandler(BaseHTTPRequestHandler):
    server: FakeProvider

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        status, answer, *extra = self.server.answer(self.path)
        with self.server.lock:
            self.server.calls.append(ProviderCall(self.path, body, dict(self.headers.items())))
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        for name, value in (extra[0] if extra else {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return


def start_provider() -> FakeProvider:
    server = FakeProvider()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


ALERT_ADMIN = "security-team@example.com"


def delivery_env(inbox: SmtpInbox, provider: FakeProvider) -> dict[str, str]:
    """Worker settings that send through the test SMTP server and the fake providers."""
    return {
        "EMAIL_BACKEND": "smtp",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(inbox.port),
        "SMS_BACKEND": "http",
        "SMS_PROVIDER_URL": f"{provider.url}/sms",
        "PUSH_BACKEND": "http",
        "PUSH_PROVIDER_URL": f"{provider.url}/push",
        "SECURITY_ALERT_EMAILS": ALERT_ADMIN,
    }


@dataclass
class Delivery:
    """Everything a delivery test needs: the inbox, the providers and a worker sending to them."""

    inbox: SmtpInbox
    provider: FakeProvider
    worker: WorkerProcess


def delivery_stack(name: str) -> Iterator[Delivery]:
    """Start the SMTP server, the fake providers and a worker on every tier; stop them afterwards."""
    inbox, controller = start_smtp()
    provider = start_provider()
    worker = spawn_worker(f"{name}-{uuid.uuid4().hex[:6]}", "high,medium,low", 2, delivery_env(inbox, provider))
    worker.wait_ready()
    try:
        yield Delivery(inbox, provider, worker)
    finally:
        worker.stop()
        controller.stop()
        provider.shutdown()
        provider.server_close()


def redis_dump() -> str:
    """Every key and value in the session's Redis db, as one string to search."""
    client = redis_client()
    parts: list[str] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = ""
        parts.append(f"{key}={value}")
    return "\n".join(parts)


def database_dump() -> str:
    """Every row of every table, as one string to search."""
    from sqlalchemy import text

    from app.db import Base, get_engine

    parts: list[str] = []
    with get_engine().connect() as conn:
        for table in Base.metadata.sorted_tables:
            parts += [f"{table.name}: {tuple(row)}" for row in conn.execute(text(f'SELECT * FROM "{table.name}"'))]
    return "\n".join(parts)


def log_dump(*workers: WorkerProcess) -> str:
    """The workers' and the recorder's logs."""
    recorder = VAR_DIR / "recorder.log"
    return "\n".join([w.log() for w in workers] + [recorder.read_text(errors="replace") if recorder.exists() else ""])


class MessageTap:
    """A queue bound to the task, delay and dead-letter exchanges: a copy of every task message published."""

    def __init__(self) -> None:
        from kombu import Connection

        from app.config import get_settings

        self.name = f"tap-{uuid.uuid4().hex[:8]}"
        self.conn = Connection(get_settings().broker_url)
        channel = self.conn.default_channel
        channel.queue_declare(self.name, durable=False, auto_delete=False)
        for tier in ("high", "medium", "low"):
            channel.queue_bind(self.name, "courier.tasks", routing_key=tier)
        channel.queue_bind(self.name, "courier.dlx", routing_key="")

    def drain(self) -> list[str]:
        """Every captured message: headers, properties and body, as text."""
        channel, found = self.conn.default_channel, []
        while (message := channel.basic_get(self.name, no_ack=True)) is not None:
            found.append(f"{message.headers} {message.properties} {message.body!r}")
        return found

    def close(self) -> None:
        self.conn.default_channel.queue_delete(self.name)
        self.conn.close()
