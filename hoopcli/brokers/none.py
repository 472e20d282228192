"""The "none" broker: the target needs no secret from hoop (trust, client certificates, or the
user's own credentials already in the environment). It only passes on the user name hint."""

from __future__ import annotations

from hoopcli.brokers.base import Credentials


class NoneBroker:
    name = "none"

    def __init__(self, hints: dict | None = None):
        self.username = (hints or {}).get("user", "")

    def issue(self, identity_token: str) -> Credentials:
        return Credentials(username=self.username, broker=self.name)

    def renew(self, creds: Credentials) -> Credentials:
        return creds

    def revoke(self, creds: Credentials) -> None:
        return None
