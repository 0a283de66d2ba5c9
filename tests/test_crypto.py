"""Stored secrets (app/crypto.py): a token no configured key opens fails with one clear error, whether it is
read or rewritten under a new key."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from app import crypto


def test_a_token_of_a_key_not_configured_is_unreadable_and_cannot_be_rewritten():
    foreign = Fernet(Fernet.generate_key()).encrypt(b"whsec_elsewhere").decode()
    with pytest.raises(crypto.SecretUnreadable, match="DATA_ENCRYPTION_KEYS"):
        crypto.decrypt(foreign)
    with pytest.raises(crypto.SecretUnreadable, match="DATA_ENCRYPTION_KEYS"):
        crypto.reencrypt(foreign)
    # while a token of the configured key round-trips
    assert crypto.decrypt(crypto.reencrypt(crypto.encrypt("whsec_here"))) == "whsec_here"
