"""Egress safety: outbound URLs are resolved, and refused when any address is loopback, private, link-local,
cloud metadata or otherwise not public, unless EGRESS_ALLOW_LIST permits it. Requests then go to the address
that was checked (the connection is pinned), so a DNS answer that changes between check and connect cannot
redirect them; the check runs again on every attempt."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from app.config import Settings
from app.integrations.exceptions import EgressRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Cloud metadata services, refused even if a network containing them is allow-listed by mistake.
METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})


def allow_list(settings: Settings) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """EGRESS_ALLOW_LIST as networks (a bare address is a /32 or /128)."""
    items = [item.strip() for item in settings.egress_allow_list.split(",") if item.strip()]
    return [ipaddress.ip_network(item, strict=False) for item in items]


#: IPv6 prefixes whose low 32 bits are an IPv4 address that a NAT64 gateway or a translator delivers to (the
#: well-known NAT64 prefix, IPv4-translated SIIT addresses, the deprecated IPv4-compatible form). Python counts them
#: global whatever IPv4 address they carry, so `[64:ff9b::a00:1]` reached 10.0.0.1 through a network's NAT64.
EMBEDS_IPV4 = tuple(ipaddress.ip_network(net) for net in ("64:ff9b::/96", "::ffff:0:0:0/96", "::/96"))
#: IPv6 ranges refused whatever they carry: local-use NAT64 (its IPv4 address sits at a site-chosen offset) and
#: deprecated site-local addresses (routed inside some networks, yet counted global by Python).
INTERNAL_V6 = tuple(ipaddress.ip_network(net) for net in ("64:ff9b:1::/48", "fec0::/10"))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to through a gateway or tunnel (mapped, NAT64, SIIT, compatible,
    6to4), else None. Beyond mapped addresses, only ones Python counts global: `::1` and `::` stay themselves."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if not address.is_global:
        return None
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in network for network in EMBEDS_IPV4):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_forbidden(address: IPAddress, settings: Settings) -> bool:
    """True when outbound HTTP must not reach `address`."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:  # judged by where it leads
            return is_forbidden(inner, settings)
        if any(address in network for network in INTERNAL_V6) and not _allowed(address, settings):
            return True
    if address in METADATA:
        return True
    if _allowed(address, settings):
        return False
    return not address.is_global or address.is_multicast


def _allowed(address: IPAddress, settings: Settings) -> bool:
    return any(address in network for network in allow_list(settings))


@dataclass(frozen=True)
class Target:
    """A checked URL: what to connect to (the address) and what to say (Host header, TLS server name)."""

    url: str
    host: str
    address: str
    pinned_url: str


def resolve(url: str, settings: Settings) -> Target:
    """Check `url` and pick the address to connect to; EgressRefused when it is not allowed."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise EgressRefused("The URL cannot be parsed.", details={"url": url}) from exc
    if parts.scheme not in ("http", "https"):
        raise EgressRefused("Only http and https URLs are allowed.", details={"url": url})
    host = parts.hostname
    if not host:
        raise EgressRefused("The URL has no host.", details={"url": url})
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise EgressRefused("The URL's port is invalid.", details={"url": url}) from exc
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise EgressRefused(f"The host {host!r} does not resolve.", details={"url": url}) from exc
    addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    refused = [str(a) for a in addresses if is_forbidden(a, settings)]
    if refused or not addresses:
        raise EgressRefused(
            f"The host {host!r} resolves to an address outbound requests may not reach "
            "(loopback, private, link-local or cloud metadata).",
            details={"url": url, "addresses": refused},
        )
    chosen = addresses[0]
    literal = f"[{chosen}]" if chosen.version == 6 else str(chosen)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return Target(url=url, host=parts.netloc.rsplit("@", 1)[-1], address=str(chosen), pinned_url=pinned)


@dataclass(frozen=True)
class Response:
    """A size-capped response: status, headers, the first bytes of the body, and the latency."""

    status_code: int
    headers: httpx.Headers
    body: bytes
    truncated: bool
    latency_ms: int


@contextmanager
def client(timeout_s: float) -> Iterator[httpx.Client]:
    """An HTTP client with timeouts on every phase, no redirects followed, no environment proxies."""
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as http:
        yield http


def request(
    http: httpx.Client,
    method: str,
    url: str,
    settings: Settings,
    *,
    max_bytes: int,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    params: dict[str, Any] | None = None,
) -> Response:
    """Check `url`, then send the request to the checked address; read at most `max_bytes` of the body.

    The client's read timeout is also the whole exchange's deadline: httpx times each read, so a server that drips
    a byte every few seconds (headers or body) held a worker until the task's time limit, and the attempt was never
    recorded. Past the deadline the connection is shut down and httpx.ReadTimeout raised.

    Raises EgressRefused before anything is sent, and httpx.HTTPError for transport failures and timeouts.
    """
    target = resolve(url, settings)
    # Identity encoding: the cap counts the bytes on the wire, and no decompression can inflate them.
    sent_headers = {**(headers or {}), "Host": target.host, "Accept-Encoding": "identity"}
    deadline_s = http.timeout.read or 60.0
    watchdog = _Deadline(deadline_s)
    extensions: dict[str, Any] = {"trace": watchdog.trace}
    if url.startswith("https"):
        extensions["sni_hostname"] = urlsplit(url).hostname
    started = time.monotonic()
    try:
        with (
            watchdog,
            http.stream(
                method, target.pinned_url, headers=sent_headers, content=content, params=params, extensions=extensions
            ) as response,
        ):
            watchdog.watch(response.extensions.get("network_stream"))
            body = bytearray()
            truncated = False
            for chunk in response.iter_raw():
                body.extend(chunk)
                if len(body) > max_bytes:
                    truncated = True
                    del body[max_bytes:]
                    break
    except httpx.HTTPError as exc:
        if watchdog.expired.is_set():
            raise httpx.ReadTimeout(f"no complete answer within {deadline_s:g} s") from exc
        raise
    if watchdog.expired.is_set():  # the shutdown ended a body read to the connection's close
        raise httpx.ReadTimeout(f"no complete answer within {deadline_s:g} s")
    latency_ms = round((time.monotonic() - started) * 1000)
    return Response(response.status_code, response.headers, bytes(body), truncated, latency_ms)


class _Deadline:
    """Shuts down the sockets of one exchange once `seconds` have passed (a timer thread; a socket shut down
    wakes the read blocked on it). httpcore's `trace` extension hands over each new connection's socket."""

    def __init__(self, seconds: float) -> None:
        self.expired = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace callback: keep the socket of a connection it opened."""
        if event == "connection.connect_tcp.complete":
            self.watch(info.get("return_value"))

    def watch(self, stream: Any) -> None:
        """Watch a network stream's socket (a pooled connection opened earlier is met only here)."""
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with self._lock:
                self._sockets.append(sock)
            if self.expired.is_set():
                self._expire()

    def _expire(self) -> None:
        self.expired.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
