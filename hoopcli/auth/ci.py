"""CI platforms' OIDC id tokens, kept in memory for one command.

GitHub Actions: ACTIONS_ID_TOKEN_REQUEST_URL + ACTIONS_ID_TOKEN_REQUEST_TOKEN (needs
`permissions: id-token: write`). GitLab CI and others: an `id_tokens:` variable exposed as
HOOP_ID_TOKEN.
"""

from __future__ import annotations

import os
from urllib.parse import urlencode

from hoopcli.auth.http import TIMEOUT, describe_failure, session
from hoopcli.errors import AuthError

GITHUB_URL = "ACTIONS_ID_TOKEN_REQUEST_URL"
GITHUB_TOKEN = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"
GENERIC = "HOOP_ID_TOKEN"


def fetch_ci_token(audience: str, ca_file: str = "") -> str:
    if os.environ.get(GENERIC):
        return os.environ[GENERIC]
    if os.environ.get(GITHUB_URL) and os.environ.get(GITHUB_TOKEN):
        return _github_token(audience, ca_file)
    raise AuthError(
        "no CI id token found",
        f"On GitHub Actions grant `permissions: id-token: write`; on GitLab expose an `id_tokens:` entry as {GENERIC}.",
    )


def _github_token(audience: str, ca_file: str) -> str:
    import requests

    base = os.environ[GITHUB_URL]
    url = base + ("&" if "?" in base else "?") + urlencode({"audience": audience})
    try:
        resp = session(ca_file).get(url, headers={"Authorization": f"bearer {os.environ[GITHUB_TOKEN]}"}, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise describe_failure(exc, base, "CI token service") from None
    value = resp.json().get("value") if resp.status_code == 200 else None
    if not value:
        raise AuthError(f"the CI token service answered {resp.status_code}", "Check `permissions: id-token: write` in the workflow.")
    return value
