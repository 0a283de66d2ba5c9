"""Courier's one source of configuration: a typed Settings class read from the environment and `.env`."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, unquote, urlsplit

from pydantic import Field, computed_field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT_DIR = Path(__file__).resolve().parent.parent

#: Secrets that ship in `.env.example`; refused outside development.
DEV_PLACEHOLDERS = frozenset({"courier_dev_pass", "flower_dev_pass", "guest"})

Seconds = Annotated[float, Field(gt=0)]


class Environment(StrEnum):
    """Where this process runs; production refuses development shortcuts."""

    development = "development"
    test = "test"
    production = "production"


class QueueType(StrEnum):
    """RabbitMQ queue type for the work queues: classic (with priorities) or quorum (replicated)."""

    classic = "classic"
    quorum = "quorum"


class Settings(BaseSettings):
    """Every setting Courier reads. `.env.example` documents each field with a safe development default."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

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

    # --- SQL ---------------------------------------------------------------------------------------------------
    database_url: str = ""

    # --- Celery / RabbitMQ ------------------------------------------------------------------------------------
    #: Full broker URL; empty means it is built from the RABBITMQ_* parts below.
    celery_broker_url: str = ""
    celery_result_backend: str = "redis://127.0.0.1:6379/0"
    celery_task_always_eager: bool = False
    celery_worker_name: str = ""
    celery_worker_concurrency: int = Field(default=2, ge=1)
    celery_log_level: str = "INFO"
    worker_prefetch_multiplier: int = Field(default=4, ge=1)
    #: Celery pool: prefork, or solo (one task at a time, for debugging). The threads pool is not offered: it
    #: stopped consuming under the benchmark's load (see the README, "Performance").
    celery_worker_pool: str = Field(default="prefork", pattern="^(prefork|solo)$")
    #: Run one worker per tier (true) or one worker consuming every tier (false).
    worker_per_tier: bool = True
    worker_heartbeat_interval_s: Seconds = 5.0

    rabbitmq_host: str = "127.0.0.1"
    rabbitmq_port: int = 5672
    rabbitmq_user: str = "courier"
    rabbitmq_password: str = "courier_dev_pass"
    rabbitmq_vhost: str = "courier"
    rabbitmq_management_url: str = "http://127.0.0.1:15672"
    #: Administrator used only to provision the vhost, user and policies (`python -m app.cli provision`).
    rabbitmq_admin_user: str = "guest"
    rabbitmq_admin_password: str = "guest"

    queue_type: QueueType = QueueType.classic
    dead_letter_ttl_s: int = Field(default=86_400, gt=0)
    dead_letter_max_length: int = Field(default=10_000, gt=0)
    #: Cap on ready messages per work queue; 0 means unbounded. Over the cap a publish is refused (HTTP 503).
    work_queue_max_length: int = Field(default=0, ge=0)
    #: Quorum queues only: deliveries before the broker dead-letters a message that keeps killing workers.
    delivery_limit: int = Field(default=5, ge=1)

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
    task_soft_time_limit_s: Seconds = 300.0
    task_time_limit_s: Seconds = 330.0

    # --- Run history -------------------------------------------------------------------------------------------
    #: Workers send task events for the run history (and Flower); false trades the history for throughput.
    history_enabled: bool = True
    history_flush_interval_s: Seconds = 0.5
    history_batch_size: int = Field(default=500, ge=1)
    history_retention_days: int = Field(default=30, ge=1)

    # --- Redis (idempotency, revocations, heartbeats) ----------------------------------------------------------
    redis_url: str = ""
    redis_password: str = ""
    idempotency_ttl_s: int = Field(default=86_400, gt=0)
    revocation_ttl_s: int = Field(default=7 * 86_400, gt=0)

    # --- API authentication ------------------------------------------------------------------------------------
    api_key_cache_s: float = Field(default=30.0, ge=0)

    # --- Flower ------------------------------------------------------------------------------------------------
    flower_user: str = "admin"
    flower_password: str = "flower_dev_pass"
    flower_port: int = 5555

    @field_validator("celery_broker_url", "celery_result_backend", "redis_url", "rabbitmq_management_url")
    @classmethod
    def _normalise_url(cls, value: str) -> str:
        # Celery's "module:Class+scheme://" backend form (which app/tasks/celery_app.py writes back into the
        # environment for Celery) names the same Redis: keep only the URL.
        scheme, sep, _ = value.partition("://")
        if sep and "+" in scheme:
            value = value.split("+", 1)[1]
        return value.rstrip("/") if value.startswith("http") else value

    @field_validator("var_dir")
    @classmethod
    def _anchor_var_dir(cls, value: Path) -> Path:
        return value if value.is_absolute() else ROOT_DIR / value

    @model_validator(mode="after")
    def _refuse_dev_shortcuts_in_production(self) -> Settings:
        if self.environment is not Environment.production:
            return self
        if self.celery_task_always_eager:
            raise ValueError("CELERY_TASK_ALWAYS_EAGER is for development only; unset it in production.")
        weak = [name for name in ("rabbitmq_password", "flower_password") if getattr(self, name) in DEV_PLACEHOLDERS]
        if weak:
            raise ValueError(f"Development placeholder secrets are set in production: {', '.join(weak)}.")
        if self.task_time_limit_s <= self.task_soft_time_limit_s:
            raise ValueError("TASK_TIME_LIMIT_S must exceed TASK_SOFT_TIME_LIMIT_S (the soft limit dead-letters).")
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
        """Redis for Courier's own keys: REDIS_URL, else the result backend."""
        url = self.redis_url or self.celery_result_backend
        if self.redis_password and "@" not in url:
            url = url.replace("://", f"://:{quote(self.redis_password, safe='')}@", 1)
        return url

    @computed_field  # type: ignore[prop-decorator]
    @property
    def result_backend_dsn(self) -> str:
        """The Celery result backend with REDIS_PASSWORD applied when the URL carries none."""
        url = self.celery_result_backend
        if self.redis_password and url.startswith("redis") and "@" not in url:
            url = url.replace("://", f"://:{quote(self.redis_password, safe='')}@", 1)
        return url

    @computed_field  # type: ignore[prop-decorator]
    @property
    def broker_url(self) -> str:
        """The broker URL in use: CELERY_BROKER_URL, else built from the RABBITMQ_* parts."""
        if self.celery_broker_url:
            return self.celery_broker_url
        user, password = quote(self.rabbitmq_user, safe=""), quote(self.rabbitmq_password, safe="")
        vhost = quote(self.rabbitmq_vhost, safe="")
        return f"amqp://{user}:{password}@{self.rabbitmq_host}:{self.rabbitmq_port}/{vhost}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def broker_vhost(self) -> str:
        """The vhost of the broker URL in use ('/' when it names none)."""
        return unquote(urlsplit(self.broker_url).path.lstrip("/")) or "/"

    @property
    def broker_credentials(self) -> tuple[str, str]:
        """User and password of the broker URL in use (also used for the management API)."""
        parts = urlsplit(self.broker_url)
        return unquote(parts.username or "guest"), unquote(parts.password or "guest")

    def status_url(self, task_id: str) -> str:
        """Where a client polls a dispatched task."""
        return f"{self.public_base_url}/api/v1/tasks/task/{task_id}"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once; tests call `get_settings.cache_clear()`."""
    return Settings()
