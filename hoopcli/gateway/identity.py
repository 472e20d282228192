"""Who is on the other end of a CONNECT: a bearer JWT verified against a trusted issuer's JWKS.

Several issuers may be trusted at once (the company IdP, a CI platform). Keys are discovered
from each issuer's metadata, cached, and refetched when a token names an unknown `kid` — at
most once per REFETCH_INTERVAL per issuer, so a flood of forged kids cannot hammer the IdP.
Only asymmetric algorithms are accepted: `none` and HS* (which would let anyone holding the
public key forge tokens) never verify.

An identity is keyed by issuer and subject (`Principal`): alice at the CI issuer is not alice
at the company IdP. Groups come only through the issuer's grants (`TrustedIssuer.grants`),
applied here once, so a machine issuer's token cannot mint approver or auditor rights by a
claim, and nothing downstream compares bare names.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

from hoopcli.auth.tokens import ALLOWED_ALGORITHMS, LEEWAY_SECONDS

log = logging.getLogger(__name__)

REFETCH_INTERVAL = 30.0


class TokenRejected(Exception):
    """The token is not acceptable; the message is safe to show and to record."""


class Principal(NamedTuple):
    """Who someone is: a subject is only unique within the issuer that signed it."""

    issuer: str
    sub: str

    def __str__(self) -> str:
        return f"{self.sub} ({self.issuer})"


@dataclass(frozen=True)
class Identity:
    sub: str
    issuer: str
    email: str = ""
    name: str = ""
    groups: tuple[str, ...] = ()  # only those the issuer may grant (TrustedIssuer.grants)

    @property
    def principal(self) -> Principal:
        return Principal(self.issuer, self.sub)

    @property
    def label(self) -> str:
        return self.email or self.sub

    def public(self) -> dict:
        return {"sub": self.sub, "email": self.email, "name": self.name, "groups": list(self.groups), "issuer": self.issuer}


def parse_principal(text: str, issuers: Iterable[str]) -> Principal:
    """A subject as gateway.toml names it: `"issuer|sub"` for a configured issuer (its URL as
    in [[issuers]], without a trailing slash), or a bare `"sub"`, which means the FIRST
    configured issuer (the human IdP). A bare sub may itself contain "|" (Auth0's
    "auth0|123"): only a configured issuer's URL before the first "|" makes it qualified.
    ValueError for what looks like a URL but names no configured issuer."""
    issuers = [i.rstrip("/") for i in issuers]
    if not issuers:
        raise ValueError("no issuer is configured")
    head, bar, rest = text.partition("|")
    if bar and head.rstrip("/") in issuers:
        if not rest:
            raise ValueError(f"{text!r} names an issuer but no subject")
        return Principal(head.rstrip("/"), rest)
    if bar and "://" in head:
        raise ValueError(f"{text!r} names issuer {head!r}, which is not one of the [[issuers]]")
    return Principal(issuers[0], text)


@dataclass
class TrustedIssuer:
    issuer: str
    audiences: tuple[str, ...]
    groups_claim: str = "groups"
    ca_file: str = ""
    # Optional explicit JWKS URL; otherwise discovered from the issuer's metadata.
    jwks_uri: str = ""
    # The groups this issuer may grant; None: every group it claims. Others are dropped.
    # (gateway.toml's default: None for the first issuer, none at all for the others.)
    grants: frozenset[str] | None = None
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
        sub = str(claims["sub"])
        return Identity(
            sub=sub,
            issuer=trusted.issuer,
            email=str(claims.get("email", "")),
            name=str(claims.get("name", "")),
            groups=granted_groups(trusted, sub, claims.get(trusted.groups_claim)),
        )


def granted_groups(trusted: TrustedIssuer, sub: str, claimed) -> tuple[str, ...]:
    """The claimed groups this issuer may grant, in claim order; the rest are dropped (logged)."""
    if not claimed:
        return ()
    names = [claimed] if isinstance(claimed, str) else claimed if isinstance(claimed, list) else []
    names = list(dict.fromkeys(str(g) for g in names))
    if trusted.grants is None:
        return tuple(names)
    kept = tuple(g for g in names if g in trusted.grants)
    if len(kept) < len(names):
        dropped = sorted(set(names) - set(kept))
        log.debug("issuer %s may not grant %s: dropped for %s", trusted.issuer, ", ".join(dropped), sub)
    return kept
