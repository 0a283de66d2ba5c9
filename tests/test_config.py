"""Settings: every field documented in .env.example, safe defaults, production guard rails."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from app.config import DEV_DATA_ENCRYPTION_KEY, Settings
from tests.support.services import session_env
from tests.support.session import ROOT

#: A key that is not the development one (32 url-safe base64 bytes, as Fernet wants).
PRODUCTION_KEY = "cHJvZHVjdGlvbi1rZXktZm9yLWNvbmZpZy10ZXN0cyE="


def _example_names() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)=", text, flags=re.M))


def test_every_setting_is_in_env_example_and_nothing_else_is():
    fields = {name.upper() for name in Settings.model_fields}
    assert _example_names() == fields


def test_every_variable_in_env_example_has_a_comment_above_its_group():
    lines = (ROOT / ".env.example").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[A-Z_]+=", line):
            block = lines[max(0, i - 6) : i]
            assert any(b.startswith("#") for b in block), f"{line} has no comment near it"


def test_the_defaults_point_at_localhost_and_an_sqlite_file_under_var(monkeypatch):
    for name in session_env():
        monkeypatch.delenv(name)
    settings = Settings(_env_file=ROOT / ".env.example")
    assert settings.broker_url == "amqp://courier:courier_dev_pass@127.0.0.1:5672/courier"
    assert settings.broker_vhost == "courier"
    assert settings.sqlalchemy_url == f"sqlite:///{ROOT / 'var' / 'courier.db'}"
    assert settings.redis_dsn == "redis://127.0.0.1:6379/0"


def test_a_postgres_url_is_normalised_to_the_psycopg_driver():
    settings = Settings(_env_file=None, database_url="postgres://u:p@db:5432/courier")
    assert settings.sqlalchemy_url == "postgresql+psycopg://u:p@db:5432/courier"


def test_a_redis_password_is_added_to_urls_that_carry_none():
    settings = Settings(_env_file=None, celery_result_backend="redis://cache:6379/0", redis_password="s3cr/t")
    assert settings.result_backend_dsn == "redis://:s3cr%2Ft@cache:6379/0"
    assert settings.redis_dsn == "redis://:s3cr%2Ft@cache:6379/0"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"celery_task_always_eager": True}, "CELERY_TASK_ALWAYS_EAGER"),
        ({"rabbitmq_password": "courier_dev_pass"}, "placeholder"),
        ({"flower_password": "flower_dev_pass"}, "placeholder"),
        ({"console_session_secret": "console_dev_secret"}, "console_session_secret"),
        ({"data_encryption_keys": f"{PRODUCTION_KEY},{DEV_DATA_ENCRYPTION_KEY}"}, "data_encryption_keys"),
    ],
)
def test_production_refuses_development_shortcuts(overrides, message):
    safe = {
        "rabbitmq_password": "x" * 20,
        "flower_password": "y" * 20,
        "data_encryption_keys": PRODUCTION_KEY,
        "console_session_secret": "z" * 32,
    }
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, environment="production", **{**safe, **overrides})
    Settings(_env_file=None, environment="production", **safe)


def test_a_celery_backend_class_prefix_in_the_result_url_is_normalised_away():
    # (the Celery app writes "module:Class+redis://..." back into the environment for Celery itself)
    settings = Settings(
        _env_file=None, celery_result_backend="app.engine.speed.results:CourierRedisBackend+redis://h:6379/3"
    )
    assert settings.celery_result_backend == "redis://h:6379/3"
    assert settings.redis_dsn == "redis://h:6379/3"


@pytest.mark.parametrize("keys", ["", "not-a-key", f"{PRODUCTION_KEY},short"])
def test_encryption_keys_that_are_not_fernet_keys_are_refused_at_start(keys):
    with pytest.raises(ValidationError, match="32 url-safe base64-encoded bytes|holds no key"):
        Settings(_env_file=None, data_encryption_keys=keys)
