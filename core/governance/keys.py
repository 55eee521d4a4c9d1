"""Own provider keys, encrypted at rest.

AES-256-GCM (the ``cryptography`` package) with a key derived by HKDF-SHA256 from
``PARLEY_SECRET_KEY``; each ciphertext is bound to its row (workspace, person,
provider) as associated data, so a ciphertext copied to another row does not
decrypt. Without the secret, own keys are off and every attempt says how to turn
them on. A key is never shown back: only its provider, last four characters, who
set it and when.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.errors import UsageError

OFF = (
    "Own keys are off: PARLEY_SECRET_KEY is not set. An operator sets it to a long random value "
    "(e.g. the output of `python -c \"import secrets; print(secrets.token_urlsafe(32))\"`) and restarts "
    "Parley; keys are then stored encrypted with it."
)


class KeyBox:
    """Encrypts and decrypts own keys with the operator's secret."""

    def __init__(self, secret: str | None) -> None:
        self.enabled = bool(secret)
        if not secret:
            self._aead = None
            self.key_id = ""
            return
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"parley own keys", info=b"v1").derive(
            secret.encode()
        )
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"id" + key).hexdigest()[:12]

    def _need(self) -> AESGCM:
        if self._aead is None:
            raise UsageError(OFF)
        return self._aead

    @staticmethod
    def _aad(workspace: str, user: str, provider: str) -> bytes:
        return "\0".join((workspace, user, provider)).encode()

    def seal(self, plaintext: str, workspace: str, user: str, provider: str) -> str:
        nonce = os.urandom(12)
        ct = self._need().encrypt(nonce, plaintext.encode(), self._aad(workspace, user, provider))
        return base64.b64encode(nonce + ct).decode()

    def open(self, token: str, workspace: str, user: str, provider: str) -> str | None:
        """The key, or None when it cannot be decrypted (PARLEY_SECRET_KEY changed, row tampered)."""
        raw = base64.b64decode(token)
        try:
            return self._need().decrypt(raw[:12], raw[12:], self._aad(workspace, user, provider)).decode()
        except (InvalidTag, ValueError):
            return None


def last4(key: str) -> str:
    return key[-4:] if len(key) >= 12 else "…"
