"""Where a session's tokens live: the OS keyring (or `hoop agent`), never a plaintext file.

Each store keeps one entry per profile holding the token set as JSON, so the three tokens
are always written and removed together.
"""

from __future__ import annotations

import os
from typing import Protocol

from hoopcli.auth.tokens import TokenSet
from hoopcli.errors import KeyringUnavailable

KEYRING_SERVICE = "hoop"
# Backends that would write tokens to a file in clear or weakly obfuscated: never used.
PLAINTEXT_BACKENDS = ("keyrings.alt.file", "keyring.backends.null", "keyring.backends.fail")


class TokenStore(Protocol):
    name: str

    def load(self, profile: str) -> TokenSet | None: ...

    def save(self, profile: str, tokens: TokenSet) -> None: ...

    def delete(self, profile: str) -> bool: ...


class KeyringStore:
    name = "keyring"

    def __init__(self):
        self._backend = usable_keyring()

    def load(self, profile: str) -> TokenSet | None:
        text = self._call(self._backend.get_password, KEYRING_SERVICE, profile)
        return TokenSet.from_json(text, source=self.name) if text else None

    def save(self, profile: str, tokens: TokenSet) -> None:
        self._call(self._backend.set_password, KEYRING_SERVICE, profile, tokens.to_json())

    def delete(self, profile: str) -> bool:
        import keyring.errors

        try:
            self._backend.delete_password(KEYRING_SERVICE, profile)
            return True
        except keyring.errors.PasswordDeleteError:
            return False
        except keyring.errors.KeyringError as exc:
            raise _locked(exc) from None

    @staticmethod
    def _call(fn, *args):
        import keyring.errors

        try:
            return fn(*args)
        except keyring.errors.KeyringError as exc:
            raise _locked(exc) from None


def _locked(exc: Exception) -> KeyringUnavailable:
    return KeyringUnavailable(f"the OS keyring refused the request ({type(exc).__name__}: {exc})")


def usable_keyring():
    """The active keyring backend, or KeyringUnavailable when only a fail/plaintext one exists."""
    import keyring
    from keyring.backends import chainer

    backend = keyring.get_keyring()
    candidates = backend.backends if isinstance(backend, chainer.ChainerBackend) else [backend]
    good = [b for b in candidates if not type(b).__module__.startswith(PLAINTEXT_BACKENDS)]
    if not good:
        raise KeyringUnavailable(f"no usable OS keyring backend (found {type(backend).__module__}.{type(backend).__name__})")
    return backend if isinstance(backend, chainer.ChainerBackend) else good[0]


def default_store() -> TokenStore:
    """`hoop agent` when one is running (HOOP_AGENT_SOCK), the OS keyring otherwise."""
    if os.environ.get("HOOP_AGENT_SOCK"):
        from hoopcli.auth.agent import AgentStore

        return AgentStore(os.environ["HOOP_AGENT_SOCK"])
    return KeyringStore()
