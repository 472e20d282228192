"""A cache for AWS temporary credentials in the OS keyring (never a file), for
`hoop credential-process`, which AWS SDKs run before every command.

Entries live under service "hoop-aws", key "<profile>/<connection>", and are used until
5 minutes before they expire, only for the same person (the session's sub) and the same
profile-local connection settings. The cache fails open: with no usable keyring (or one that
errors), every call simply goes to STS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import datetime, timezone

log = logging.getLogger(__name__)
SERVICE = "hoop-aws"
MARGIN_SECONDS = 300


def fingerprint(sub: str, hints: dict | None) -> str:
    text = json.dumps({"sub": sub, "hints": hints or {}}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load(profile: str, name: str, fp: str, now: float | None = None) -> dict | None:
    text = _call("get_password", _key(profile, name))
    if not text:
        return None
    try:
        entry = json.loads(text)
        doc = entry["document"]
        expires = datetime.strptime(doc["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except (ValueError, KeyError, TypeError):
        return None
    if entry.get("fingerprint") != fp or expires - (time.time() if now is None else now) < MARGIN_SECONDS:
        return None
    return doc


def save(profile: str, name: str, fp: str, doc: dict) -> None:
    if "Expiration" in doc:
        _call("set_password", _key(profile, name), json.dumps({"fingerprint": fp, "document": doc}))


def _key(profile: str, name: str) -> str:
    return f"{profile}/{name}"


def _call(method: str, key: str, *args):
    """One keyring call; None (no cache) when there is no usable keyring or it fails."""
    from hoopcli.auth.store import usable_keyring

    try:
        return getattr(usable_keyring(), method)(SERVICE, key, *args)
    except Exception as exc:  # fail open: a broken keyring must not stop credentials
        log.debug("AWS credential cache unavailable: %s", type(exc).__name__)
        return None
