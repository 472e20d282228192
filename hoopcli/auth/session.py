"""The current session: which token hoop presents, from where, refreshed when near expiry.

Order: HOOP_TOKEN → CI id token (HOOP_CI=1) → `hoop agent` (HOOP_AGENT_SOCK) → OS keyring.
"""

from __future__ import annotations

import os

from hoopcli.auth.tokens import TokenSet
from hoopcli.config import Profile
from hoopcli.errors import HoopError, NotLoggedIn


def load_session(profile: Profile, *, refresh: bool = True) -> TokenSet:
    tokens = _from_environment(profile)
    if tokens is not None:
        if tokens.expires_at and _expired(tokens):
            raise NotLoggedIn(f"the token in {_env_name(tokens)} has expired", "Provide a fresh token.")
        return tokens
    from hoopcli.auth.store import default_store

    store = default_store()
    # `hoop agent` refreshes on its clients' behalf, once for all of them. Refreshing here too
    # would present a rotated refresh token a second time, and the IdP revokes the whole grant.
    delegated = getattr(store, "refreshes_itself", False)
    tokens = store.load(profile.name, refresh=refresh) if delegated else store.load(profile.name)
    if tokens is None:
        raise NotLoggedIn(f"not logged in (profile '{profile.name}', {store.name})")
    if refresh and not delegated and tokens.needs_refresh():
        tokens = refresh_session(profile, tokens, store)
    return tokens


def refresh_session(profile: Profile, tokens: TokenSet, store) -> TokenSet:
    from hoopcli.auth.oidc import provider_for

    try:
        fresh = provider_for(profile).refresh(tokens)
    except HoopError as exc:
        raise NotLoggedIn(f"the session has expired and could not be refreshed: {exc.message}") from None
    fresh.source = store.name
    store.save(profile.name, fresh)
    return fresh


def _from_environment(profile: Profile) -> TokenSet | None:
    if os.environ.get("HOOP_TOKEN"):
        return TokenSet.from_bearer(os.environ["HOOP_TOKEN"], source="env")
    if os.environ.get("HOOP_CI"):
        from hoopcli.auth.ci import fetch_ci_token

        return TokenSet.from_bearer(fetch_ci_token(profile.effective_audience, profile.ca_file), source="ci")
    return None


def _expired(tokens: TokenSet) -> bool:
    import time

    return tokens.expires_at < time.time()


def _env_name(tokens: TokenSet) -> str:
    return "HOOP_TOKEN" if tokens.source == "env" else "the CI id token"
