"""A small client for the RabbitMQ management HTTP API: vhosts, users, policies and queue statistics.

No credential leaves through an error: a `ManagementError`'s message is redacted where it is built (a path can
carry a URL, percent-encoded, and httpx's errors can quote the request URL), and a management URL's own
`user:password@` is taken off the base URL (the explicit login is the one httpx used anyway).

On a cluster the client is given every node's management URL (RABBITMQ_MANAGEMENT_URLS): a call a node cannot
answer (connection refused, a timeout, a 5xx while it starts or stops) goes to the next node, and the node that
answered is asked first next time. Any node answers for the whole cluster.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from kombu.connection import Connection
from kombu.exceptions import OperationalError

from app.config import FailoverStrategy, Settings, redact_url

logger = logging.getLogger(__name__)


class ManagementError(RuntimeError):
    """The management API could not be reached or refused a call; the message never carries a credential."""

    def __init__(self, message: str) -> None:
        super().__init__(redact_url(message))


#: Per list of management URLs, the node that answered last in this process: asked first by every client of
#: that list, so a node that is down costs one failed attempt (and one log line) per process, not one per call.
_ANSWERED_LAST: dict[tuple[str, ...], int] = {}


def broker_connection(settings: Settings, **options: Any) -> Connection:
    """A kombu connection to the broker that fails over across every node (Settings.broker_url lists them with
    `;`), in BROKER_FAILOVER_STRATEGY's order. Open it with `connect_any`: kombu's own first connect tries only
    two nodes."""
    return Connection(settings.broker_url, failover_strategy=settings.broker_failover_strategy.value, **options)


def connect_any(connection: Connection, settings: Settings) -> Connection:
    """Connect `connection` to the first node that accepts, trying each node exactly once, without pauses: in
    BROKER_FAILOVER_STRATEGY's order (a fresh permutation for `shuffle`, the list's order for `round-robin`).

    kombu's own failover cycle cannot bound this: its `shuffle` strategy draws the next node at random *with
    replacement*, so `len(nodes)` tries could miss every live node (with the first of three nodes down, one call
    in nine failed: a health check flapping to 503, a purge or a topology verify refused).

    Raises:
        OSError, kombu's connection errors: no node accepted (the last node's error).
    """
    urls = list(settings.broker_urls)
    if connection.connected or len(urls) < 2:
        connection.ensure_connection(max_retries=0)
        return connection
    if settings.broker_failover_strategy is FailoverStrategy.shuffle:
        random.shuffle(urls)
    for attempt, url in enumerate(urls):
        connection.switch(url)
        try:
            connection.ensure_connection(max_retries=0)  # one try, no switch to kombu's next node
        except connection.recoverable_connection_errors + (OperationalError, OSError):
            if attempt == len(urls) - 1:
                raise
            continue
        return connection
    raise AssertionError("unreachable")  # pragma: no cover


def _q(value: str) -> str:
    return quote(value, safe="")


def _without_login(url: str) -> str:
    """A management URL without its `user:password@`, so no URL httpx quotes carries it (`auth` logs in)."""
    parts = urlsplit(url.rstrip("/"))
    if "@" in parts.netloc:
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return parts.geturl()


class ManagementClient:
    """Calls the management API as one user.

    Parameters:
        base_urls: one URL, e.g. ``http://127.0.0.1:15672``, or every node's (tried in turn).
        user, password: basic-auth credentials; queue reads need the ``monitoring`` tag,
            policies need ``policymaker``, vhosts and users need ``administrator``.

    Raises:
        ManagementError: on connection failure or any non-2xx answer (404 is returned as ``None`` by getters).

    Examples:
        >>> client = ManagementClient.for_broker_user(get_settings())
        >>> client.queue("courier", "high")["effective_policy_definition"]
    """

    def __init__(self, base_urls: str | Sequence[str], user: str, password: str, timeout: float = 5.0) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("ManagementClient needs at least one management URL")
        self._https = [
            httpx.Client(base_url=f"{_without_login(url)}/api", auth=(user, password), timeout=timeout) for url in urls
        ]
        self._nodes = tuple(str(http.base_url) for http in self._https)

    @classmethod
    def for_broker_user(cls, settings: Settings) -> ManagementClient:
        """A client authenticated as the user of the broker URL (reads queues, applies vhost policies)."""
        user, password = settings.broker_credentials
        return cls(settings.management_urls, user, password)

    @classmethod
    def for_admin(cls, settings: Settings) -> ManagementClient:
        """A client authenticated as the provisioning administrator."""
        return cls(settings.management_urls, settings.rabbitmq_admin_user, settings.rabbitmq_admin_password)

    def close(self) -> None:
        """Release the HTTP connection pools."""
        for http in self._https:
            http.close()

    def __enter__(self) -> ManagementClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, json: Any) -> httpx.Response:
        """The first answer of a node that is up, trying each node once from the one that answered last."""
        failures = []
        count = len(self._https)
        first = _ANSWERED_LAST.get(self._nodes, 0)
        for step in range(count):
            index = (first + step) % count
            http = self._https[index]
            try:
                response = http.request(method, path, json=json)
            except httpx.HTTPError as exc:
                failures.append(f"{http.base_url.host}:{http.base_url.port}: {exc}")
                continue
            if response.status_code >= 500 and step < count - 1:
                failures.append(f"{http.base_url.host}:{http.base_url.port}: {response.status_code}")
                continue
            if step:
                logger.warning(
                    "RabbitMQ management API: %s failed, %s:%s answered.",
                    "; ".join(redact_url(failure) for failure in failures),
                    http.base_url.host,
                    http.base_url.port,
                )
            _ANSWERED_LAST[self._nodes] = index
            return response
        raise ManagementError(f"RabbitMQ management API unreachable ({method} {path}): {'; '.join(failures)}")

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        response = self._request(method, path, json)
        if method == "GET" and response.status_code == 404:
            return None
        if response.status_code >= 300:
            raise ManagementError(
                f"RabbitMQ management API refused {method} {path}: {response.status_code} {response.text[:200]}"
            )
        return response.json() if response.content else None

    # --- reads --------------------------------------------------------------------------------------------
    def overview(self) -> dict[str, Any]:
        """Cluster name, versions and totals."""
        return dict(self._call("GET", "/overview") or {})

    def queue(self, vhost: str, name: str) -> dict[str, Any] | None:
        """One queue with its arguments, effective policy and message counts; None if it does not exist."""
        result = self._call("GET", f"/queues/{_q(vhost)}/{_q(name)}")
        return dict(result) if result is not None else None

    def user(self, name: str) -> dict[str, Any] | None:
        """One user (name, tags); None if it does not exist."""
        result = self._call("GET", f"/users/{_q(name)}")
        return dict(result) if result is not None else None

    def password_accepted(self) -> bool:
        """Whether RabbitMQ accepts this client's user and password. A user without a management tag is refused
        the API after its password was accepted ("Not management user"): that counts as accepted."""
        response = self._request("GET", "/whoami", None)
        if response.status_code == 401:
            return "login failed" not in response.text.lower()
        return response.status_code < 300

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes, with `running` for each."""
        return list(self._call("GET", "/nodes") or [])

    def queues(self, vhost: str) -> list[dict[str, Any]]:
        """Every queue of a vhost."""
        return list(self._call("GET", f"/queues/{_q(vhost)}") or [])

    def bindings_of_exchange(self, vhost: str, exchange: str) -> list[dict[str, Any]]:
        """Bindings whose source is `exchange`."""
        return list(self._call("GET", f"/exchanges/{_q(vhost)}/{_q(exchange)}/bindings/source") or [])

    def exchange(self, vhost: str, name: str) -> dict[str, Any] | None:
        """One exchange; None if it does not exist."""
        result = self._call("GET", f"/exchanges/{_q(vhost)}/{_q(name)}")
        return dict(result) if result is not None else None

    def policies(self, vhost: str) -> list[dict[str, Any]]:
        """The policies of a vhost."""
        return list(self._call("GET", f"/policies/{_q(vhost)}") or [])

    # --- writes -------------------------------------------------------------------------------------------
    def put_policy(self, vhost: str, name: str, *, pattern: str, definition: dict[str, Any], priority: int) -> None:
        """Create or replace a queue policy; RabbitMQ applies it to existing queues at once."""
        body = {"pattern": pattern, "definition": definition, "priority": priority, "apply-to": "queues"}
        self._call("PUT", f"/policies/{_q(vhost)}/{_q(name)}", json=body)

    def delete_policy(self, vhost: str, name: str) -> None:
        """Remove a policy (used by tests that prove a worker refuses to start without one)."""
        self._call("DELETE", f"/policies/{_q(vhost)}/{_q(name)}")

    def put_vhost(self, vhost: str) -> None:
        """Create a vhost if missing."""
        self._call("PUT", f"/vhosts/{_q(vhost)}")

    def delete_vhost(self, vhost: str) -> None:
        """Delete a vhost and everything in it."""
        self._call("DELETE", f"/vhosts/{_q(vhost)}")

    def put_user(self, user: str, password: str, tags: str) -> None:
        """Create or update a user with a password and tags."""
        self._call("PUT", f"/users/{_q(user)}", json={"password": password, "tags": tags})

    def put_permissions(self, vhost: str, user: str) -> None:
        """Give `user` configure, write and read rights on every resource of `vhost`."""
        body = {"configure": ".*", "write": ".*", "read": ".*"}
        self._call("PUT", f"/permissions/{_q(vhost)}/{_q(user)}", json=body)

    def purge(self, vhost: str, name: str) -> None:
        """Drop every ready message of a queue."""
        self._call("DELETE", f"/queues/{_q(vhost)}/{_q(name)}/contents")
