"""Who is on the other end of a CONNECT: a bearer JWT verified against a trusted issuer's JWKS.

Several issuers may be trusted at once (the company IdP, a CI platform). Keys are discovered
from each issuer's metadata, cached, and refetched when a token names an unknown `kid` — at
most once per REFETCH_INTERVAL per issuer, so a flood of forged kids cannot hammer the IdP.
Only asymmetric algorithms are accepted: `none` and HS* (which would let anyone holding the
public key forge tokens) never verify.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from hoopcli.auth.tokens import ALLOWED_ALGORITHMS, LEEWAY_SECONDS

log = logging.getLogger(__name__)

REFETCH_INTERVAL = 30.0


class TokenRejected(Exception):
    """The token is not acceptable; the message is safe to show and to record."""


@dataclass(frozen=True)
class Identity:
    sub: str
    issuer: str
    email: str = ""
    name: str = ""
    groups: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.email or self.sub

    def public(self) -> dict:
        return {"sub": self.sub, "email": self.email, "name": self.name, "groups": list(self.groups), "issuer": self.issuer}


@dataclass
class TrustedIssuer:
    issuer: str
    audiences: tuple[str, ...]
    groups_claim: str = "groups"
    ca_file: str = ""
    # Optional explicit JWKS URL; otherwise discovered from the issuer's metadata.
    jwks_uri: str = ""
    _keys: dict = field(default_factory=dict, repr=False)
    _fetched_at: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def key_for(self, kid: str | None):
        key = self._lookup(kid)
        if key is None and time.monotonic() - self._fetched_at >= REFETCH_INTERVAL:
            self._refresh()
            key = self._lookup(kid)
        if key is None:
            raise TokenRejected("token signed with an unknown key")
        return key

    def _lookup(self, kid):
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _refresh(self) -> None:
        import jwt
        import requests

        with self._lock:
            if time.monotonic() - self._fetched_at < REFETCH_INTERVAL and self._keys:
                return
            self._fetched_at = time.monotonic()
            verify = self.ca_file or True
            try:
                uri = self.jwks_uri or requests.get(
                    self.issuer.rstrip("/") + "/.well-known/openid-configuration", timeout=10, verify=verify
                ).json()["jwks_uri"]
                jwks = jwt.PyJWKSet.from_dict(requests.get(uri, timeout=10, verify=verify).json())
            except Exception as exc:  # the IdP being down must not crash the gateway
                log.warning("cannot fetch JWKS for %s: %s", self.issuer, exc)
                return
            self._keys = {k.key_id: k for k in jwks.keys if k.public_key_use in (None, "sig")}


class IdentityVerifier:
    def __init__(self, issuers: list[TrustedIssuer]):
        if not issuers:
            raise ValueError("at least one trusted issuer is required")
        self.issuers = {i.issuer.rstrip("/"): i for i in issuers}

    def verify(self, token: str) -> Identity:
        """Blocking (may fetch JWKS); the server calls it off the event loop."""
        import jwt

        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenRejected("not a well-formed JWT") from None
        if header.get("alg") not in ALLOWED_ALGORITHMS:
            raise TokenRejected(f"algorithm {header.get('alg')!r} is not accepted")
        trusted = self.issuers.get(str(unverified.get("iss", "")).rstrip("/"))
        if trusted is None:
            raise TokenRejected("token from an untrusted issuer")
        jwk = trusted.key_for(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key=jwk.key,
                algorithms=list(ALLOWED_ALGORITHMS),
                audience=list(trusted.audiences),
                issuer=unverified["iss"],
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("token expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("token not yet valid (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("token audience is not accepted") from None
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"token rejected: {exc}") from None
        groups = claims.get(trusted.groups_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        return Identity(
            sub=str(claims["sub"]),
            issuer=trusted.issuer,
            email=str(claims.get("email", "")),
            name=str(claims.get("name", "")),
            groups=tuple(str(g) for g in groups),
        )
