"""What `hoop login`, `hoop logout` and `hoop whoami` do, apart from rendering."""

from __future__ import annotations

import time
from typing import Callable

from hoopcli.auth.oidc import DeviceCode, provider_for
from hoopcli.auth.tokens import TokenSet, unverified_claims
from hoopcli.config import Profile
from hoopcli.errors import AuthError


def device_login(profile: Profile, show_code: Callable[[DeviceCode], None], on_wait=None) -> TokenSet:
    """Run the device flow; the id_token is validated before anything is stored."""
    from hoopcli.auth.store import default_store

    store = default_store()  # fail on a missing keyring before the person does any work
    provider = provider_for(profile)
    code = provider.start_device_flow(profile.scopes)
    show_code(code)
    body = provider.poll_device_flow(code, on_wait=on_wait)
    tokens = provider.token_set(body)
    tokens.source = store.name
    store.save(profile.name, tokens)
    return tokens


def token_login(profile: Profile, token: str) -> TokenSet:
    """`--token-stdin`: validate a given id token against the profile's issuer, then store it."""
    from hoopcli.auth.store import default_store

    token = token.strip()
    if not token:
        raise AuthError("no token on standard input", "Pipe the token in: `printf %s \"$TOKEN\" | hoop login --token-stdin`.")
    store = default_store()
    provider = provider_for(profile)
    claims = provider.validate_id_token(token, audience=profile.effective_audience)
    tokens = TokenSet(id_token=token, expires_at=float(claims["exp"]), issuer=provider.issuer, source=store.name)
    store.save(profile.name, tokens)
    return tokens


def ci_login(profile: Profile) -> TokenSet:
    """`--ci`: the CI platform's id token, validated and kept in memory for this command only."""
    from hoopcli.auth.ci import fetch_ci_token

    token = fetch_ci_token(profile.effective_audience, profile.ca_file)
    if profile.issuer:
        provider_for(profile).validate_id_token(token, audience=profile.effective_audience)
    return TokenSet.from_bearer(token, source="ci")


def logout(profile: Profile) -> dict:
    from hoopcli.auth.store import default_store

    store = default_store()
    tokens = store.load(profile.name)
    revoked = False
    if tokens and tokens.refresh_token and profile.issuer:
        try:
            revoked = provider_for(profile).revoke(tokens.refresh_token)
        except Exception:  # the local session ends regardless; say so in the result
            revoked = False
    removed = store.delete(profile.name)
    return {"profile": profile.name, "removed": removed, "refresh_token_revoked": revoked, "store": store.name}


def identity(tokens: TokenSet) -> dict:
    claims = unverified_claims(tokens.bearer)
    return {
        "sub": claims.get("sub"),
        "email": claims.get("email"),
        "name": claims.get("name"),
        "groups": claims.get("groups") or [],
        "issuer": claims.get("iss") or tokens.issuer,
        "expires_at": _iso(tokens.expires_at),
        "expires_in": int(tokens.expires_at - time.time()) if tokens.expires_at else None,
        "session_store": tokens.source,
    }


def _iso(ts: float) -> str | None:
    if not ts:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")
