"""One requests session policy for every call hoop makes to an IdP or a gateway API.

TLS verification is always on: the profile's CA file when given, the system store otherwise.
Plain http is accepted only for loopback addresses (a development IdP on 127.0.0.1).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from hoopcli.errors import ConfigError, Unreachable
from hoopcli.netutil import LOOPBACK_HOSTS

TIMEOUT = (5, 30)  # connect, read


def require_safe_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return url
    raise ConfigError(
        f"{what} URL '{url}' is not https",
        "hoop only talks to identity providers and gateways over TLS (plain http only on 127.0.0.1).",
    )


def session(ca_file: str = ""):
    import requests

    class _Session(requests.Session):
        # requests lets REQUESTS_CA_BUNDLE override a session's `verify`; hoop's CA choice
        # must win, so it is passed on every request.
        def request(self, method, url, **kwargs):
            kwargs.setdefault("verify", self.verify)
            return super().request(method, url, **kwargs)

    s = _Session()
    s.verify = ca_file or True
    s.headers["User-Agent"] = "hoop"
    return s


def describe_failure(exc: Exception, url: str, what: str) -> Unreachable:
    """Turn a requests exception into one clear line with a hint."""
    import requests

    host = urlsplit(url).netloc
    if isinstance(exc, requests.exceptions.SSLError):
        return Unreachable(
            f"TLS verification failed talking to the {what} at {host}",
            "Set the CA that signed its certificate with `hoop config set ca_file PATH`.",
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return Unreachable(f"the {what} at {host} did not answer in time", "Check the network and try again.")
    return Unreachable(f"cannot reach the {what} at {host}", "Check the URL in `hoop config show` and that the service is up.")
