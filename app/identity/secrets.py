"""Making and hashing secrets: one-time tokens, MFA codes, session tokens and passwords.

Tokens and codes are hashed with HMAC-SHA256 under IDENTITY_SECRET_KEY: a six-digit code has too little
entropy for a plain hash to hide it from someone who reads the table. Passwords use scrypt with a salt.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from app.config import Environment, get_settings

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def new_token() -> str:
    """A URL-safe one-time token with 256 bits of randomness."""
    return secrets.token_urlsafe(32)


def new_code(digits: int = 6) -> str:
    """A numeric MFA code."""
    return f"{secrets.randbelow(10**digits):0{digits}d}"


#: The development value of IDENTITY_SECRET_KEY (in .env.example); production refuses it.
DEV_SECRET_KEY = "identity_dev_secret"


def _key() -> bytes:
    settings = get_settings()
    if settings.environment is Environment.production and settings.identity_secret_key == DEV_SECRET_KEY:
        raise RuntimeError("IDENTITY_SECRET_KEY is the development placeholder; set a long random value.")
    return settings.identity_secret_key.encode()


def digest(secret: str) -> str:
    """The stored form of a token or code: HMAC-SHA256 under IDENTITY_SECRET_KEY, hex."""
    return hmac.new(_key(), secret.encode(), hashlib.sha256).hexdigest()


def matches(secret: str, stored: str) -> bool:
    """Constant-time comparison of a presented secret with its stored digest."""
    return hmac.compare_digest(digest(secret), stored)


def hash_password(password: str) -> str:
    """scrypt hash of a password, with its parameters and salt: `scrypt$n$r$p$salt$hash`."""
    salt = secrets.token_hex(16)
    derived = hashlib.scrypt(password.encode(), salt=salt.encode(), n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt}${derived.hex()}"


def check_password(password: str, stored: str) -> bool:
    """True when `password` produces `stored`."""
    _, n, r, p, salt, expected = stored.split("$")
    derived = hashlib.scrypt(password.encode(), salt=salt.encode(), n=int(n), r=int(r), p=int(p))
    return hmac.compare_digest(derived.hex(), expected)


def email_digest(email: str) -> str:
    """First 16 hex of SHA-256 of the lowercased address: names an address in logs and audit without it."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:16]
