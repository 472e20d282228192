"""The one small interface every credential source keeps.

A broker turns (a connection's credential hints, the user's identity token) into short-lived
credentials, renews them while a long session runs, and revokes them when it ends. Nothing a
broker returns is ever written to disk: it lives in memory and in the child's environment.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Protocol


# Broker environment values that are not secrets (and must not be masked in messages).
PUBLIC_ENV = frozenset({"AWS_REGION", "AWS_DEFAULT_REGION"})


@dataclass
class Credentials:
    username: str = ""
    password: str = field(default="", repr=False)
    # Unix time the credentials stop working, when the broker knows it.
    expires_at: float | None = None
    lease_id: str = ""
    renewable: bool = False
    # Extra environment for the child (AWS_ACCESS_KEY_ID, ...). Values are secrets.
    env: dict[str, str] = field(default_factory=dict, repr=False)
    # Which broker issued them, for display.
    broker: str = "none"

    def secrets(self) -> list[str]:
        return [v for k, v in [("", self.password), *self.env.items()] if v and k not in PUBLIC_ENV]

    def public(self, show_secrets: bool = False) -> dict:
        data = {
            "broker": self.broker,
            "username": self.username,
            "expires_at": self.expires_at,
            "expires_in": int(self.expires_at - time.time()) if self.expires_at else None,
            "lease_id": self.lease_id,
            "renewable": self.renewable,
            "env": sorted(self.env),
        }
        if show_secrets:
            data["password"] = self.password
            data["env"] = dict(self.env)
        return data


class Broker(Protocol):
    name: str

    def issue(self, identity_token: str) -> Credentials: ...

    def renew(self, creds: Credentials) -> Credentials: ...

    def revoke(self, creds: Credentials) -> None: ...


@contextmanager
def translated_errors(describe: Callable[[Exception], "Exception | None"]):
    """Run a block and turn what a client library raises into the broker's one clear error:
    `describe(exc)` returns the BrokerError to raise instead, or None to let `exc` through."""
    try:
        yield
    except Exception as exc:
        error = describe(exc)
        if error is None:
            raise
        raise error from None


def broker_for(hints: dict, profile) -> "Broker":
    """Build the broker a connection names in its credential hints ({"broker": "vault", ...})."""
    from hoopcli.errors import ConfigError

    kind = (hints or {}).get("broker", "none")
    if kind == "none":
        from hoopcli.brokers.none import NoneBroker

        return NoneBroker(hints)
    if kind == "vault":
        from hoopcli.brokers.vault import VaultBroker

        return VaultBroker.from_hints(hints, profile)
    if kind in ("aws", "aws-rds"):
        from hoopcli.brokers.aws import AwsBroker

        return AwsBroker.from_hints(hints, profile)
    raise ConfigError(f"unknown credential broker '{kind}'", "Known brokers: none, vault, aws, aws-rds.")
