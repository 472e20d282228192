"""The token set hoop keeps per profile, and reading claims out of a JWT."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

REFRESH_MARGIN_SECONDS = 60
# JWT signature algorithms hoop accepts anywhere (client and gateway): asymmetric only, so a
# public key can never double as an HMAC secret, and never `none`.
ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
LEEWAY_SECONDS = 30


@dataclass
class TokenSet:
    id_token: str
    access_token: str = ""
    refresh_token: str = ""
    # Unix time when the id_token (the token hoop presents to the gateway) expires.
    expires_at: float = 0.0
    issuer: str = ""
    # Where this session lives: "env", "ci", "agent", "keyring"; not persisted.
    source: str = field(default="", compare=False)

    def needs_refresh(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.expires_at - now < REFRESH_MARGIN_SECONDS

    @property
    def bearer(self) -> str:
        """The token hoop presents to the gateway and to Vault/STS: the id_token (see README)."""
        return self.id_token

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("source")
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str, source: str = "") -> "TokenSet":
        data = json.loads(text)
        known = {k: data[k] for k in ("id_token", "access_token", "refresh_token", "expires_at", "issuer") if k in data}
        return cls(**known, source=source)

    @classmethod
    def from_bearer(cls, token: str, source: str) -> "TokenSet":
        claims = unverified_claims(token)
        return cls(id_token=token, expires_at=float(claims.get("exp", 0) or 0), issuer=str(claims.get("iss", "")), source=source)


def unverified_claims(token: str) -> dict:
    """Claims for display and expiry only; the gateway does the real verification. Read with
    base64 and json (no JOSE library to import on every command's start)."""
    import base64

    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return {}
    return claims if isinstance(claims, dict) else {}
