"""Secrets Courier has to read back, stored encrypted: webhook signing secrets (HMAC keys cannot be hashed).

Each value is a Fernet token (AES-128-CBC and HMAC-SHA256, from the `cryptography` library) under the first key
of DATA_ENCRYPTION_KEYS; every listed key decrypts, so a key is rotated by putting a new one first, running
`python -m app.cli reencrypt-secrets`, and then dropping the old one. A database dump or backup holds no usable secret.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from cryptography.fernet import InvalidToken, MultiFernet
from sqlalchemy import Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from app.config import get_settings, parse_keys


class SecretUnreadable(RuntimeError):
    """A stored secret none of the configured keys decrypts."""


@lru_cache
def _cipher(keys: str) -> MultiFernet:
    return MultiFernet(parse_keys(keys))


def cipher() -> MultiFernet:
    """The cipher of the configured keys."""
    return _cipher(get_settings().data_encryption_keys)


def encrypt(text: str) -> str:
    """The token of `text` under the first key."""
    return cipher().encrypt(text.encode()).decode()


def decrypt(token: str) -> str:
    """The text of a token written under any configured key.

    Raises:
        SecretUnreadable: when no configured key wrote it (a key was dropped too soon, or another deployment's).
    """
    return _opened(cipher().decrypt, token)


def reencrypt(token: str) -> str:
    """The same secret under the first key (for a key rotation).

    Raises:
        SecretUnreadable: as `decrypt`.
    """
    return _opened(cipher().rotate, token)


def _opened(open_: Callable[[bytes], bytes], token: str) -> str:
    try:
        return open_(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            "a stored secret cannot be decrypted with any key in DATA_ENCRYPTION_KEYS "
            "(was the key it was written with removed?)"
        ) from None


class EncryptedText(TypeDecorator[str]):
    """A text column stored as a Fernet token and read back as the text."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else encrypt(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else decrypt(str(value))
