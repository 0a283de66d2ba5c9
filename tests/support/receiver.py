"""A local HTTP server for the webhook and sync tests: scripted answers, every request kept for assertions."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


#: An answer: (status, headers, body).
Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Receiver:
    """Answers with `script` in order (the last answer repeats), or with `handler` when it is set."""

    script: list[Answer] = field(default_factory=lambda: [(200, {}, b"ok")])
    handler: Callable[[Received], Answer] | None = None
    received: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, request: Received) -> Answer:
        with self.lock:
            self.received.append(request)
            if self.handler is not None:
                return self.handler(request)
            index = min(len(self.received) - 1, len(self.script) - 1)
            return self.script[index]

    def start(self) -> Receiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Received(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                status, headers, payload = owner.answer(request)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()
