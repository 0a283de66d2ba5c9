"""Egress safety: loopback, private, link-local and metadata addresses are refused, after DNS resolution too,
unless EGRESS_ALLOW_LIST permits them (the test session allows 127.0.0.1 only)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from app.config import get_settings
from app.integrations import egress
from app.integrations.exceptions import EgressRefused
from tests.support.api import auth


def _resolving(monkeypatch: pytest.MonkeyPatch, answers: dict[str, str]) -> None:
    """Make some host names resolve to chosen addresses (DNS is the external party faked here)."""
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://192.168.1.20/hook",
        "http://127.0.0.2/hook",
        "http://[::1]/hook",
        "http://0.0.0.0/hook",
        "ftp://example.com/hook",
        "http://[::1/hook",
        "http://example.com:99999/hook",
    ],
)
def test_urls_pointing_inside_are_refused(url: str):
    with pytest.raises(EgressRefused):
        egress.resolve(url, get_settings())


@pytest.mark.parametrize(
    "url",
    [
        "http://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 of 169.254.169.254
        "http://[64:ff9b::a00:1]/hook",  # NAT64 of 10.0.0.1
        "http://[64:ff9b:1::a00:1]/hook",  # local-use NAT64
        "http://[2002:a9fe:a9fe::]/hook",  # 6to4 of 169.254.169.254
        "http://[::a00:1]/hook",  # IPv4-compatible 10.0.0.1
        "http://[::ffff:0:a00:1]/hook",  # IPv4-translated (SIIT) 10.0.0.1
        "http://[fec0::1]/hook",  # site-local
    ],
)
def test_ipv6_addresses_that_lead_to_an_internal_ipv4_address_are_refused(url: str):
    # Given an IPv6 literal that Python counts global but a gateway or tunnel delivers to an internal IPv4 address
    # When it is checked, Then it is refused like that IPv4 address
    with pytest.raises(EgressRefused):
        egress.resolve(url, get_settings())


def test_ipv6_addresses_that_lead_to_a_public_ipv4_address_are_allowed():
    for url in ("http://[64:ff9b::808:808]/hook", "http://[2002:808:808::1]/hook"):
        assert egress.resolve(url, get_settings()).pinned_url == url


def test_the_allow_list_permits_exactly_what_it_names():
    assert egress.resolve("http://127.0.0.1:9/x", get_settings()).address == "127.0.0.1"


def test_a_name_that_resolves_to_a_private_address_is_refused(monkeypatch: pytest.MonkeyPatch):
    _resolving(monkeypatch, {"hooks.example.com": "10.20.30.40"})
    with pytest.raises(EgressRefused) as refused:
        egress.resolve("https://hooks.example.com/in", get_settings())
    assert refused.value.details["addresses"] == ["10.20.30.40"]


def test_a_checked_request_goes_to_the_address_that_was_checked(monkeypatch: pytest.MonkeyPatch, receiver):
    # Given a name that resolves to the (allowed) local receiver
    server = receiver()
    port = server.url.rsplit(":", 1)[1]
    _resolving(monkeypatch, {"hooks.example.com": "127.0.0.1"})
    with egress.client(5) as http:
        response = egress.request(http, "GET", f"http://hooks.example.com:{port}/x", get_settings(), max_bytes=2)
    # Then the request reached it with the original Host header, and the body was capped
    assert response.status_code == 200
    assert server.received[0].headers["host"] == f"hooks.example.com:{port}"
    assert response.body == b"ok" and not response.truncated


def test_a_response_larger_than_the_cap_is_cut(receiver):
    server = receiver(script=[(200, {}, b"x" * 100_000)])
    with egress.client(5) as http:
        response = egress.request(http, "GET", server.url, get_settings(), max_bytes=1000)
    assert response.truncated and len(response.body) == 1000


@pytest.mark.parametrize("url", ["http://169.254.169.254/hook", "http://10.0.0.1/hook"])
def test_the_api_refuses_to_register_a_webhook_pointing_inside(api, admin_key, url):
    response = api.post(
        "/api/v1/integrations/webhooks", json={"url": url, "event_types": ["*"]}, headers=auth(admin_key)
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "egress_refused"


def test_the_api_refuses_an_external_system_pointing_at_metadata(api, admin_key):
    response = api.post(
        "/api/v1/integrations/systems",
        json={"name": "meta", "base_url": "http://169.254.169.254/latest"},
        headers=auth(admin_key),
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "egress_refused"


@contextmanager
def _dripping_server(first: bytes, drip: bytes) -> Iterator[str]:
    """A server that reads a request, sends `first`, then `drip` every 0.2 s for as long as the client listens."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(first)
                while not stop.is_set():
                    conn.sendall(drip)
                    time.sleep(0.2)
            except OSError:
                return

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    finally:
        stop.set()
        listener.close()


@pytest.mark.parametrize(
    ("first", "drip"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"x"),  # a body that never ends
        (b"HTTP/1.1 200 OK\r\n", b"X-Slow: 1\r\n"),  # headers that never end
    ],
    ids=["body", "headers"],
)
def test_an_answer_dripped_slower_than_the_timeout_ends_at_the_timeout(first: bytes, drip: bytes):
    # Given a server that sends a byte or a header line every 0.2 s, each within the per-read timeout, for ever
    with _dripping_server(first, drip) as url:
        # When a request with a 1 s timeout goes to it
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout) as timed_out, egress.client(1) as http:
            egress.request(http, "POST", url, get_settings(), max_bytes=65536, content=b"{}")
        # Then it ends as a timeout after about that second, not when the server or the task's time limit stops it
        assert time.monotonic() - started < 5
        assert "within 1 s" in str(timed_out.value)
