"""Courier's one source of configuration: a typed Settings class read from the environment and `.env`."""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, unquote, urlsplit

from cryptography.fernet import Fernet
from pydantic import Field, computed_field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT_DIR = Path(__file__).resolve().parent.parent

#: Secrets that ship in `.env.example`; refused outside development.
DEV_PLACEHOLDERS = frozenset({"courier_dev_pass", "flower_dev_pass", "guest", "console_dev_secret"})
#: DATA_ENCRYPTION_KEYS' development default: published here, so production refuses it.
DEV_DATA_ENCRYPTION_KEY = "Y291cmllci1kZXZlbG9wbWVudC1vbmx5LWtleS0wMDA="

Seconds = Annotated[float, Field(gt=0)]

#: The password of a URL's userinfo (`scheme://user:password@host`), as typed or percent-encoded once (a URL
#: inside another URL's path or query, such as a management API path). As typed, up to the last `@` before the
#: next URL, a space or a quote: a password decoded back into text may hold `/` or `@` (masking a little more
#: than the password is the safe side); a `;`-separated failover list (kombu) has each URL matched on its own.
_URL_PASSWORDS = (
    re.compile(r"(?P<keep>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?:(?!://)[^\s'\"<>])+(?=@)", re.I),
    re.compile(r"(?P<keep>[a-z][a-z0-9+.-]*%3A%2F%2F(?:(?!%3A|%40)[^\s/?#&])*%3A)(?:(?!%40)[^\s/?#&])+(?=%40)", re.I),
)
#: What a redacted password reads as.
MASK = "***"


def redact_url(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`: one URL, a `;`-separated failover list, a
    URL percent-encoded inside another, or a sentence quoting any of them. The user and host stay readable.

    Examples:
        >>> redact_url("amqp://courier:s%40cret@rabbit-1:5672/courier;amqp://courier:s%40cret@rabbit-2:5672/courier")
        'amqp://courier:***@rabbit-1:5672/courier;amqp://courier:***@rabbit-2:5672/courier'
    """
    for pattern in _URL_PASSWORDS:
        text = pattern.sub(rf"\g<keep>{MASK}", text)
    return text


class Environment(StrEnum):
    """Where this process runs; production refuses development shortcuts."""

    development = "development"
    test = "test"
    production = "production"


class FailoverStrategy(StrEnum):
    """The order in which a client tries the broker hosts: shuffled per connection (spreads clients over the
    nodes) or round-robin from the first (every client on node 1 while it is up)."""

    shuffle = "shuffle"
    round_robin = "round-robin"


def split_list(value: str) -> list[str]:
    """A comma-separated setting as a list, blanks dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def host_port(item: str, default_port: int) -> tuple[str, int]:
    """`host:port` (or `host`, or `[v6]:port`) as a pair.

    Raises:
        ValueError: the port is not a number.
    """
    host, sep, port = item.rpartition(":") if not item.endswith("]") else (item, "", "")
    if not sep:
        host, port = item, str(default_port)
    if not port.isdigit():
        raise ValueError(f"{item!r} is not host:port")
    return host.strip("[]"), int(port)


class QueueType(StrEnum):
    """RabbitMQ queue type for the work queues: classic (with priorities) or quorum (replicated)."""

    classic = "classic"
    quorum = "quorum"


def parse_keys(keys: str) -> list[Fernet]:
    """The Fernet keys of a DATA_ENCRYPTION_KEYS value, first one first (app/crypto.py encrypts with them).

    Raises:
        ValueError: when the value holds no key, or a key that is not 32 url-safe base64-encoded bytes.
    """
    names = [k.strip() for k in keys.split(",") if k.strip()]
    if not names:
        raise ValueError("DATA_ENCRYPTION_KEYS holds no key")
    try:
        return [Fernet(name) for name in names]
    except ValueError as exc:
        raise ValueError(
            "each DATA_ENCRYPTION_KEYS key must be 32 url-safe base64-encoded bytes "
            '(python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())")'
        ) from exc


class Settings(BaseSettings):
    """Every setting Courier reads. `.env.example` documents each field with a safe development default."""

    # hide_input_in_errors: a refused setting's error names the rule, never the values (URLs carry passwords).
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    # --- Service ---------------------------------------------------------------------------------------------
    environment: Environment = Environment.development
    log_level: str = "INFO"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    #: uvicorn worker processes for the API (the publish path is async; one process per core is the usual fit).
    api_workers: int = Field(default=2, ge=1)
    #: Public base URL used to build `status_url` links; empty means relative links.
    public_base_url: str = ""
    var_dir: Path = ROOT_DIR / "var"
    #: Where `npm ci` installed package.json's front-end packages (Swagger UI and ReDoc for /docs and /redoc),
    #: which the API serves itself under /static/vendor; relative paths are anchored at the repository root.
    web_assets_dir: Path = ROOT_DIR / "node_modules"

    # --- SQL ---------------------------------------------------------------------------------------------------
    database_url: str = ""
    #: PostgreSQL's lock_timeout for every Courier connection (0 = none): a statement waiting longer for a lock
    #: fails as a database outage (503 in the API, a retry elsewhere) instead of hanging with the lock's holder.
    database_lock_timeout_s: float = Field(default=10.0, ge=0, le=3600)

    # --- Celery / RabbitMQ ------------------------------------------------------------------------------------
    #: Full broker URL; empty means it is built from the RABBITMQ_* parts below.
    celery_broker_url: str = ""
    celery_result_backend: str = "redis://127.0.0.1:6379/0"
    celery_task_always_eager: bool = False
    celery_worker_name: str = ""
    celery_worker_concurrency: int = Field(default=4, ge=1)
    celery_log_level: str = "INFO"
    worker_log_each_task: bool = False
    worker_prefetch_multiplier: int = Field(default=4, ge=1)
    #: Celery pool: prefork, or solo (one task at a time, for debugging). The threads pool is not offered: it
    #: stopped consuming under sustained load (see the README, "Performance").
    celery_worker_pool: str = Field(default="prefork", pattern="^(prefork|solo)$")
    #: Run one worker per tier (true) or one worker consuming every tier (false).
    worker_per_tier: bool = True
    #: The engine's speed layer (app/engine/speed/) on, or off: workers and publishers on stock Celery/kombu/py-amqp
    #: machinery, every correctness guarantee kept (app/engine/README.md). Accepts on/off (or true/false).
    engine_speed_patches: bool = True
    worker_heartbeat_interval_s: Seconds = 5.0

    rabbitmq_host: str = "127.0.0.1"
    rabbitmq_port: int = 5672
    #: Every node of a RabbitMQ cluster as comma-separated host[:port] (port default RABBITMQ_PORT); empty means
    #: the one RABBITMQ_HOST. Each client fails over across them (kombu, the API's publisher, the recorder).
    rabbitmq_hosts: str = ""
    #: The order clients try the hosts in: shuffle (spread over the nodes) or round-robin (first one first).
    broker_failover_strategy: FailoverStrategy = FailoverStrategy.shuffle
    rabbitmq_user: str = "courier"
    rabbitmq_password: str = "courier_dev_pass"
    rabbitmq_vhost: str = "courier"
    rabbitmq_management_url: str = "http://127.0.0.1:15672"
    #: Management API of every cluster node (comma-separated URLs), tried in turn; empty means the one above.
    rabbitmq_management_urls: str = ""
    #: Administrator used only to provision the vhost, user and policies (`python -m app.cli provision`).
    rabbitmq_admin_user: str = "guest"
    rabbitmq_admin_password: str = "guest"

    queue_type: QueueType = QueueType.classic
    dead_letter_ttl_s: int = Field(default=86_400, gt=0)
    dead_letter_max_length: int = Field(default=10_000, gt=0)
    #: Cap on ready messages per work queue; 0 means unbounded. Over the cap a publish is refused (HTTP 503).
    work_queue_max_length: int = Field(default=0, ge=0)
    #: Quorum queues only: deliveries before the broker dead-letters a message. A backstop: Courier's own start
    #: count (MAX_STARTS_PER_ATTEMPT) dead-letters a task that keeps killing its worker first, and every
    #: message a dying worker had prefetched is redelivered too and uses up an attempt (README, "Running on a
    #: cluster"); it must exceed MAX_STARTS_PER_ATTEMPT.
    delivery_limit: int = Field(default=20, ge=1)
    #: Quorum queues only: replicas of each queue (x-quorum-initial-group-size), at most the cluster's nodes.
    queue_replicas: int = Field(default=3, ge=1)

    publish_timeout_s: Seconds = 5.0
    publish_pool_size: int = Field(default=64, ge=1)
    result_expires_s: int = Field(default=86_400, gt=0)

    # --- Task policy defaults (seed 004: 3 retries, 60 s exponential backoff, 100 tasks/minute) --------------
    task_max_retries: int = Field(default=3, ge=0)
    task_retry_backoff_s: Seconds = 60.0
    task_retry_backoff_max_s: Seconds = 600.0
    task_rate_limit: str = "100/m"
    #: Starts of one attempt without finishing (its worker died each time) before it is dead-lettered.
    max_starts_per_attempt: int = Field(default=3, ge=1)
    #: Redis unreachable at an attempt's start check or result store (an outage, not the task's failure): the
    #: attempt is put back in a delay queue this many times, backoff doubling from the base up to the cap (equal
    #: jitter), before it is dead-lettered as `infra_unavailable`. Separate from TASK_MAX_RETRIES.
    outage_retry_max: int = Field(default=10, ge=0)
    outage_retry_backoff_s: Seconds = 2.0
    outage_retry_backoff_max_s: Seconds = 60.0
    task_soft_time_limit_s: Seconds = 300.0
    task_time_limit_s: Seconds = 330.0

    # --- Run history -------------------------------------------------------------------------------------------
    #: Workers journal each run's start and outcome to a Redis stream the recorder writes to SQL.
    history_enabled: bool = True
    #: Celery task events, for Flower's task views only (the history does not use them).
    task_events_enabled: bool = False
    history_flush_interval_s: Seconds = 0.5
    history_batch_size: int = Field(default=500, ge=1)
    history_recorder_nice: int = Field(default=10, ge=0, le=19)
    history_retention_days: int = Field(default=30, ge=1)

    # --- Redis (idempotency, revocations, heartbeats) ----------------------------------------------------------
    redis_url: str = ""
    redis_password: str = ""
    #: Redis Sentinel: comma-separated host[:port] (port default 26379) of the Sentinels; when set, Courier's Redis
    #: and the result backend are the primary the Sentinels name REDIS_SENTINEL_MASTER (with the db of REDIS_URL,
    #: else of CELERY_RESULT_BACKEND), and every client follows a failover. Empty means no Sentinel.
    redis_sentinels: str = ""
    redis_sentinel_master: str = "courier"
    #: Password of the Sentinels themselves (their requirepass); empty when they ask for none.
    redis_sentinel_password: str = ""
    #: Production refuses a Redis that persists nothing (no appendonly) unless this accepts the risk.
    redis_accept_no_persistence: bool = False
    idempotency_ttl_s: int = Field(default=86_400, gt=0)
    revocation_ttl_s: int = Field(default=7 * 86_400, gt=0)

    # --- API authentication ------------------------------------------------------------------------------------
    api_key_cache_s: float = Field(default=30.0, ge=0)

    # --- Console (/console) ----------------------------------------------------------------------------------
    #: Key that signs the console's session cookie (itsdangerous); production refuses the placeholder.
    console_session_secret: str = "console_dev_secret"
    #: How long a console sign-in lasts; the cookie and the signature both expire after it.
    console_session_ttl_s: int = Field(default=8 * 3600, ge=60, le=7 * 86_400)
    #: Send the session cookie only over HTTPS (on behind TLS; off for http://localhost in development).
    console_cookie_secure: bool = False

    # --- Flower ------------------------------------------------------------------------------------------------
    flower_user: str = "admin"
    flower_password: str = "flower_dev_pass"
    flower_port: int = 5555

    # --- Identity and notifications ------------------------------------------------------
    #: Key of the HMAC that hashes reset/verification tokens, MFA codes and session tokens (the placeholder is
    #: refused in production when a secret is first hashed; the production compose file requires it).
    identity_secret_key: str = "identity_dev_secret"
    #: How long a password-reset link stays valid.
    password_reset_token_ttl_s: int = Field(default=3600, gt=0)
    #: How long an email-verification link stays valid.
    email_verification_token_ttl_s: int = Field(default=86_400, gt=0)
    #: How long an MFA code stays valid, and how many wrong guesses it survives.
    mfa_code_ttl_s: int = Field(default=300, gt=0)
    mfa_max_attempts: int = Field(default=5, ge=1)
    #: Lifetime of a session opened by a verified MFA code.
    session_ttl_s: int = Field(default=14 * 86_400, gt=0)
    #: Rate limits that protect users: password-reset requests per address, MFA challenges per user (per hour).
    password_reset_per_hour: int = Field(default=5, ge=1)
    mfa_challenges_per_hour: int = Field(default=5, ge=1)
    #: Pages of the client application that the emailed links open; Courier does not serve them, the deployer must
    #: (the defaults, on the API's host, answer 404). The one-time token is added as #token=... (a fragment).
    password_reset_url: str = "http://localhost:8000/reset-password"
    email_verification_url: str = "http://localhost:8000/verify-email"
    #: Comma-separated addresses that receive every security alert (besides the user concerned).
    security_alert_emails: str = ""
    #: Channel backends: outbox (files under var/outbox/, development) or the real provider (smtp / http).
    email_backend: str = Field(default="outbox", pattern="^(outbox|smtp)$")
    sms_backend: str = Field(default="outbox", pattern="^(outbox|http)$")
    push_backend: str = Field(default="outbox", pattern="^(outbox|http)$")
    #: SMTP: sender, server, security (none | starttls | ssl), login and timeout.
    email_from: str = "Courier <no-reply@localhost>"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_security: str = Field(default="none", pattern="^(none|starttls|ssl)$")
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_timeout_s: Seconds = 10.0
    #: SMS provider (HTTP): endpoint, API key (sent as a Bearer token), sender, and the payload shape as
    #: `provider_field:value` pairs (values: recipient, text, sender, reference).
    sms_provider_url: str = "http://127.0.0.1:9025/sms"
    sms_provider_api_key: str = ""
    sms_sender: str = "Courier"
    sms_payload_fields: str = "from:sender,to:recipient,body:text,reference:reference"
    #: Push provider (HTTP): endpoint, API key and payload shape (values: recipient = the device token, title,
    #: text, data, reference).
    push_provider_url: str = "http://127.0.0.1:9025/push"
    push_provider_api_key: str = ""
    push_payload_fields: str = "to:recipient,title:title,body:text,data:data,reference:reference"
    #: Field of an HTTP provider's JSON answer that holds its message id; timeout of each provider call.
    provider_message_id_field: str = "id"
    notification_http_timeout_s: Seconds = 10.0
    #: Beat interval of process_scheduled_notifications: a scheduled message goes out at most about this long
    #: after its time.
    notification_scheduler_interval_s: Seconds = 30.0
    #: retry_failed_notifications: how often, how many rows per run, and the attempts after which a message
    #: stays failed.
    notification_retry_interval_s: Seconds = 900.0
    notification_retry_batch: int = Field(default=500, ge=1)
    notification_max_attempts: int = Field(default=10, ge=1)
    #: A pending message dispatched this long ago and still unsent is dispatched again by the scheduler.
    notification_stale_s: Seconds = 900.0
    #: Bulk sends: rows per chunk (progress is reported per chunk) and the most recipients per request.
    bulk_chunk_size: int = Field(default=100, ge=1)
    bulk_max_recipients: int = Field(default=10_000, ge=1)

    @property
    def security_alert_recipients(self) -> list[str]:
        """SECURITY_ALERT_EMAILS as a list of addresses."""
        return [address.strip() for address in self.security_alert_emails.split(",") if address.strip()]

    # --- Audit and integrations ----------------------------------------------------------
    #: Path prefixes of mutating API calls the generic HTTP audit skips (comma-separated): the probe task is a
    #: health check that changes no domain state, and it is the benchmark's hot path.
    audit_http_exempt_paths: str = "/api/v1/tasks/ping"
    #: Entries older than this move to compressed archive files (weekly `audit.archive_old_logs`).
    audit_retention_days: int = Field(default=365, ge=1)
    #: Entries per archive file.
    audit_archive_batch_size: int = Field(default=10_000, ge=1)
    #: Where archives and reports are written; empty means VAR_DIR/audit-archive and VAR_DIR/reports.
    audit_archive_dir: str = ""
    audit_reports_dir: str = ""
    #: Anomaly detection (`audit.detect_anomalies`, every 5 minutes): the window, and the count within it that
    #: makes a finding, per rule.
    anomaly_window_s: int = Field(default=900, gt=0)
    anomaly_mfa_failures: int = Field(default=5, ge=1)
    anomaly_reset_requests: int = Field(default=5, ge=1)
    anomaly_failed_auths: int = Field(default=20, ge=1)
    anomaly_admin_actions: int = Field(default=100, ge=1)
    anomaly_dead_letters: int = Field(default=20, ge=1)
    #: Outbound HTTP (webhooks, external systems) may reach these addresses or networks although they are
    #: loopback, private or link-local (comma-separated IPs or CIDRs); empty refuses them all.
    egress_allow_list: str = ""
    #: Webhook delivery: request timeout, attempts, retry backoff (exponential, full jitter, Retry-After
    #: honoured, capped), how many deliveries in a row may fail before the endpoint is disabled, how long the
    #: previous secret keeps signing after a rotation, and how much of a response is read.
    webhook_timeout_s: Seconds = 15.0
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_retry_base_s: Seconds = 5.0
    webhook_retry_max_s: Seconds = 3600.0
    webhook_disable_after_failures: int = Field(default=5, ge=1)
    webhook_secret_grace_s: int = Field(default=86_400, ge=0)
    webhook_response_max_bytes: int = Field(default=65_536, ge=256)
    #: Fernet keys (comma-separated) of the secrets Courier stores and reads back, such as webhook signing
    #: secrets (app/crypto.py): the first encrypts, every one decrypts. The development key is refused in
    #: production.
    data_encryption_keys: str = DEV_DATA_ENCRYPTION_KEY
    #: External systems: request timeout, page size asked for, and the largest page body accepted.
    integration_timeout_s: Seconds = 15.0
    integration_page_size: int = Field(default=100, ge=1, le=1000)
    integration_response_max_bytes: int = Field(default=5_000_000, ge=1024)

    # --- Observability and operations ----------------------------------------------------
    #: Log format of the API, workers and recorder: json (one JSON object per line) or text.
    log_format: str = Field(default="json", pattern="^(json|text)$")
    #: Where API and worker processes keep their Prometheus multiprocess files; empty means <VAR_DIR>/metrics.
    metrics_dir: str = ""
    #: Port of each worker's own /metrics exporter (one worker per container); 0 = off (the API serves them).
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    #: While a dependency stays down (the broker, for the API's publisher), one log line every this many seconds
    #: says so; its going down and its coming back are logged once each, not once per refused request.
    outage_log_interval_s: Seconds = 30.0
    #: Seconds between two polls of a task's state by the live-progress stream (SSE).
    events_poll_interval_s: Seconds = 0.5
    #: Longest a live-progress stream stays open before the client must reconnect.
    events_max_duration_s: Seconds = 3600.0
    #: Live-progress streams one API key may hold open at once, per API process; one more is refused (429). Each
    #: stream polls the database: a few hundred from one client took every pooled connection, and then PostgreSQL's.
    events_max_streams_per_key: int = Field(default=10, ge=1, le=10_000)
    #: The largest request body the API takes (413 past it, before it is read): a bulk send of BULK_MAX_RECIPIENTS
    #: addresses fits; a 50 MB body held about nine times its size in an API process while it was parsed.
    api_max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, le=1024**3)

    @field_validator("celery_broker_url", "celery_result_backend", "redis_url", "rabbitmq_management_url")
    @classmethod
    def _normalise_url(cls, value: str) -> str:
        # Celery's "module:Class+scheme://" backend form (which app/engine/celery_app.py writes back into the
        # environment for Celery) names the same Redis: keep only the URL.
        scheme, sep, _ = value.partition("://")
        if sep and "+" in scheme:
            value = value.split("+", 1)[1]
        return value.rstrip("/") if value.startswith("http") else value

    @field_validator("data_encryption_keys")
    @classmethod
    def _valid_encryption_keys(cls, value: str) -> str:
        parse_keys(value)
        return value

    @field_validator("var_dir", "web_assets_dir")
    @classmethod
    def _anchor_at_root(cls, value: Path) -> Path:
        return value if value.is_absolute() else ROOT_DIR / value

    @model_validator(mode="after")
    def _refuse_dev_shortcuts_in_production(self) -> Settings:
        if self.environment is not Environment.production:
            return self
        if self.celery_task_always_eager:
            raise ValueError("CELERY_TASK_ALWAYS_EAGER is for development only; unset it in production.")
        weak = [
            name
            for name in ("rabbitmq_password", "flower_password", "console_session_secret")
            if getattr(self, name) in DEV_PLACEHOLDERS
        ]
        if DEV_DATA_ENCRYPTION_KEY in self.data_encryption_keys:
            weak.append("data_encryption_keys")
        if weak:
            raise ValueError(f"Development placeholder secrets are set in production: {', '.join(weak)}.")
        if self.task_time_limit_s <= self.task_soft_time_limit_s:
            raise ValueError("TASK_TIME_LIMIT_S must exceed TASK_SOFT_TIME_LIMIT_S (the soft limit dead-letters).")
        return self

    @model_validator(mode="after")
    def _refuse_classic_queues_on_a_cluster(self) -> Settings:
        if len(self.broker_urls) > 1 and self.queue_type is QueueType.classic:
            raise ValueError(
                "QUEUE_TYPE=classic with several broker hosts: a classic queue lives on one node, and while that "
                "node is down its tier is gone (and its messages with that node's disk). Set QUEUE_TYPE=quorum "
                '(README, "Running on a cluster").'
            )
        if self.queue_type is QueueType.quorum and self.delivery_limit <= self.max_starts_per_attempt:
            raise ValueError(
                "DELIVERY_LIMIT must exceed MAX_STARTS_PER_ATTEMPT: messages prefetched beside a task that kills its "
                "worker are redelivered too, and would be dead-lettered with it."
            )
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def sqlalchemy_url(self) -> str:
        """The SQL URL in use: DATABASE_URL, or an embedded SQLite file under var/."""
        url = self.database_url or f"sqlite:///{self.var_dir / 'courier.db'}"
        if url.startswith("postgres://"):
            url = "postgresql://" + url.removeprefix("postgres://")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        return url

    @computed_field  # type: ignore[prop-decorator]
    @property
    def redis_dsn(self) -> str:
        """Redis for Courier's own keys: REDIS_URL, else the result backend (through the Sentinels when set)."""
        url = self.redis_url or self.celery_result_backend
        if self.redis_sentinels:
            return self._sentinel_dsn(url)
        if self.redis_password and "@" not in url:
            url = url.replace("://", f"://:{quote(self.redis_password, safe='')}@", 1)
        return url

    @computed_field  # type: ignore[prop-decorator]
    @property
    def result_backend_dsn(self) -> str:
        """The Celery result backend with REDIS_PASSWORD applied when the URL carries none; with REDIS_SENTINELS,
        Celery's Sentinel form (`sentinel://:pw@s1:26379/db;sentinel://:pw@s2:26379/db`)."""
        url = self.celery_result_backend
        if self.redis_sentinels and url.startswith("redis"):
            return self._sentinel_dsn(url)
        if self.redis_password and url.startswith("redis") and "@" not in url:
            url = url.replace("://", f"://:{quote(self.redis_password, safe='')}@", 1)
        return url

    def _sentinel_dsn(self, url: str) -> str:
        """`url`'s db and password, at every Sentinel: the form Celery's SentinelBackend and redis_store read."""
        parts = urlsplit(url.split(";", 1)[0])  # (a Sentinel DSN already: its first Sentinel's db and password)
        db = (parts.path or "/0").lstrip("/") or "0"
        password = unquote(parts.password or "") or self.redis_password
        login = f":{quote(password, safe='')}@" if password else ""
        return ";".join(f"sentinel://{login}{host}:{port}/{db}" for host, port in self.sentinel_addresses)

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs."""
        return [host_port(item, 26379) for item in split_list(self.redis_sentinels)]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def broker_url(self) -> str:
        """The broker URL in use, kombu's `;`-separated failover list on a cluster: CELERY_BROKER_URL, else built
        from the RABBITMQ_* parts (one URL per host of RABBITMQ_HOSTS)."""
        return ";".join(self.broker_urls)

    @property
    def broker_urls(self) -> list[str]:
        """Every broker URL, one per node (CELERY_BROKER_URL split at `;`, else one per RABBITMQ_HOSTS entry)."""
        if self.celery_broker_url:
            return [url.strip() for url in self.celery_broker_url.split(";") if url.strip()]
        user, password = quote(self.rabbitmq_user, safe=""), quote(self.rabbitmq_password, safe="")
        vhost = quote(self.rabbitmq_vhost, safe="")
        hosts = [host_port(item, self.rabbitmq_port) for item in split_list(self.rabbitmq_hosts)]
        return [
            f"amqp://{user}:{password}@{host}:{port}/{vhost}"
            for host, port in hosts or [(self.rabbitmq_host, self.rabbitmq_port)]
        ]

    @property
    def management_urls(self) -> list[str]:
        """The management API of every node (RABBITMQ_MANAGEMENT_URLS, else RABBITMQ_MANAGEMENT_URL)."""
        urls = split_list(self.rabbitmq_management_urls) or [self.rabbitmq_management_url]
        return [url.rstrip("/") for url in urls]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def broker_vhost(self) -> str:
        """The vhost of the broker URL in use ('/' when it names none); of the first URL of a failover list."""
        return unquote(urlsplit(self._first_broker_url).path.lstrip("/")) or "/"

    @property
    def broker_credentials(self) -> tuple[str, str]:
        """User and password of the broker URL in use (also used for the management API)."""
        parts = urlsplit(self._first_broker_url)
        return unquote(parts.username or "guest"), unquote(parts.password or "guest")

    @property
    def _first_broker_url(self) -> str:
        # kombu reads `url1;url2` as a failover list; read whole, its vhost would be `courier;amqp://user:pw@...`.
        return self.broker_urls[0]

    @property
    def secrets(self) -> list[str]:
        """Every credential this configuration holds (passwords, keys, the passwords inside its URLs), for the
        logs to mask wherever one turns up (app/logging.py)."""
        found = [
            self.rabbitmq_password,
            self.rabbitmq_admin_password,
            self.redis_password,
            self.redis_sentinel_password,
            self.flower_password,
            self.smtp_password,
            self.sms_provider_api_key,
            self.push_provider_api_key,
            self.identity_secret_key,
            self.console_session_secret,
            *self.data_encryption_keys.split(","),
        ]
        for urls in (
            self.broker_url,
            self.celery_result_backend,
            self.redis_url,
            self.database_url,
            *self.management_urls,
        ):
            for url in urls.split(";"):
                try:
                    password = urlsplit(url.strip()).password
                except ValueError:  # not a URL urllib can read; the patterns still mask it
                    password = None
                if password:
                    found.append(unquote(password))
        return sorted({secret.strip() for secret in found if secret.strip()})

    @property
    def audit_archive_path(self) -> Path:
        """Where audit archives are written."""
        return Path(self.audit_archive_dir) if self.audit_archive_dir else self.var_dir / "audit-archive"

    @property
    def audit_reports_path(self) -> Path:
        """Where audit reports are written."""
        return Path(self.audit_reports_dir) if self.audit_reports_dir else self.var_dir / "reports"

    @property
    def metrics_path(self) -> Path:
        """The directory of the Prometheus multiprocess files (METRICS_DIR, else <VAR_DIR>/metrics)."""
        if not self.metrics_dir:
            return self.var_dir / "metrics"
        path = Path(self.metrics_dir)
        return path if path.is_absolute() else ROOT_DIR / path

    def status_url(self, task_id: str) -> str:
        """Where a client polls a dispatched task."""
        return f"{self.public_base_url}/api/v1/tasks/task/{task_id}"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once; tests call `get_settings.cache_clear()`."""
    return Settings()
