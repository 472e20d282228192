"""How hoop talks HTTP to an IdP or a gateway API: one TLS and proxy policy for every call.

TLS verification is always on: the profile's CA file when given, the system store otherwise.
Plain http is accepted only for loopback addresses (a development IdP on 127.0.0.1).

Two clients share that policy. `fetch` (http.client + ssl, no third-party import) serves the
gateway's JSON API, which `hoop exec`/`connect` call on every start; it reaches the gateway the
same way the tunnel does: the same TLS context and the same HTTPS_PROXY/NO_PROXY rule
(`proxy_for_host`). `session` (requests) serves the IdP, the CI token service and Vault.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from hoopcli.errors import ConfigError, NotLoggedIn, Unreachable
from hoopcli.netutil import LOOPBACK_HOSTS

TIMEOUT = (5, 30)  # connect, read
DEFAULT_PROXY_PORT = 3128


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


def tls_context(ca_file: str = ""):
    """Certificate and host name verified: against `ca_file` when given, else the system store.

    One context per CA choice and process, shared by the API call and the tunnel (an SSLContext
    is safe to share between threads, and neither changes it): loading the system store takes
    ~30 ms, which `hoop exec` would otherwise pay twice on every start."""
    return _tls_context(ca_file)


@lru_cache(maxsize=None)
def _tls_context(ca_file: str):
    import ssl

    try:
        ctx = ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:  # a missing, unreadable or non-PEM CA file
        detail = getattr(exc, "strerror", None) or "not a PEM CA certificate"
        raise ConfigError(f"cannot use the CA file '{ca_file}' ({detail})", "Set a PEM file with `hoop config set ca_file PATH` (or HOOP_CA_FILE).") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def proxy_for_host(host: str) -> tuple[str, int] | None:
    """The forward proxy from HTTPS_PROXY (or https_proxy), unless NO_PROXY exempts `host`."""
    import os

    url = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if not url:
        return None
    from urllib.request import proxy_bypass_environment  # ~5 ms of imports, only with a proxy set

    if proxy_bypass_environment(host):
        return None
    parts = urlsplit(url if "://" in url else "http://" + url)
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or DEFAULT_PROXY_PORT


@dataclass
class Response:
    status: int
    reason: str
    body: bytes

    def json(self):
        """The body as JSON; ValueError when it is not JSON."""
        import json

        return json.loads(self.body)


def require_single_line(value: str, what: str) -> str:
    """A header value (often a token) with no CR, LF or NUL: one that has them could add headers
    of its own to the request. The value is never echoed."""
    if "\r" in value or "\n" in value or "\0" in value:
        raise NotLoggedIn(f"cannot send the request to the {what}: a header holds a line break", "Check that HOOP_TOKEN (or the stored token) is a single line.")
    return value


def fetch(method: str, url: str, *, what: str, ca_file: str = "", headers: dict | None = None, params: dict | None = None,
          json_body=None, timeout: tuple[float, float] = TIMEOUT) -> Response:
    """One request with the standard library: TLS verified (see `tls_context`), through the
    HTTPS_PROXY forward proxy by CONNECT unless NO_PROXY exempts the host (TLS end to end, so
    the proxy sees only ciphertext), redirects not followed (a bearer token never leaves for
    another URL). Any failure to get an answer is an Unreachable naming `what`."""
    import http.client

    parts = urlsplit(require_safe_url(url, what))
    host, tls = parts.hostname or "", parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if params:
        from urllib.parse import urlencode

        target += ("&" if "?" in target else "?") + urlencode(params, doseq=True)
    head = {"User-Agent": "hoop", "Accept": "application/json", **(headers or {})}
    for value in head.values():
        require_single_line(str(value), what)
    body = None
    if json_body is not None:
        import json

        body = json.dumps(json_body).encode()
        head["Content-Type"] = "application/json"
    proxy = proxy_for_host(host)
    connect_timeout, read_timeout = timeout
    dial_host, dial_port = proxy or (host, port)
    if tls:
        conn = http.client.HTTPSConnection(dial_host, dial_port, timeout=connect_timeout, context=tls_context(ca_file))
    else:
        conn = http.client.HTTPConnection(dial_host, dial_port, timeout=connect_timeout)
    if proxy is not None:
        conn.set_tunnel(host, port)
    try:
        conn.connect()  # TCP, the proxy's CONNECT and the TLS handshake, within the connect timeout
        conn.sock.settimeout(read_timeout)
        conn.request(method, target, body=body, headers=head)
        resp = conn.getresponse()
        return Response(resp.status, resp.reason, resp.read())
    except (OSError, http.client.HTTPException) as exc:
        if proxy is not None:
            raise _through_proxy_failure(exc, proxy, f"{host}:{port}", url, what) from None
        raise describe_failure(exc, url, what) from None
    finally:
        conn.close()


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
    """Turn a failed request (requests' exceptions or the standard library's) into one clear
    line with a hint."""
    host = urlsplit(url).netloc
    if _is_tls_failure(exc):
        return Unreachable(
            f"TLS verification failed talking to the {what} at {host}",
            "Set the CA that signed its certificate with `hoop config set ca_file PATH`.",
        )
    if _is_timeout(exc):
        return Unreachable(f"the {what} at {host} did not answer in time", "Check the network and try again.")
    return Unreachable(f"cannot reach the {what} at {host}", "Check the URL in `hoop config show` and that the service is up.")


PROXY_HINT = "Check HTTPS_PROXY and NO_PROXY, or ask for the gateway's host and port on the proxy's allow list."


def proxy_refused(proxy: tuple[str, int], target: str, status_line: str) -> Unreachable:
    """The forward proxy answered the CONNECT with something else than 200. Named by host:port
    only: HTTPS_PROXY may carry credentials. The status line is the proxy's: printable, short."""
    line = "".join(c if c.isprintable() else "?" for c in status_line.strip())[:200]
    hint = PROXY_HINT
    if line.startswith("407"):
        hint = "The proxy asks for credentials, which hoop does not send: exempt the gateway with NO_PROXY, or have the proxy let it through."
    return Unreachable(f"the proxy {proxy[0]}:{proxy[1]} refused the CONNECT to {target}: {line}", hint)


def proxy_unreachable(proxy: tuple[str, int], target: str, why: str) -> Unreachable:
    return Unreachable(f"cannot reach the {target} through the proxy {proxy[0]}:{proxy[1]} ({why})",
                       "Check HTTPS_PROXY and NO_PROXY, and that the proxy is up.")


def _through_proxy_failure(exc: Exception, proxy: tuple[str, int], target: str, url: str, what: str) -> Unreachable:
    """A request through the forward proxy failed: say whether the proxy refused the CONNECT
    (http.client reports it as OSError("Tunnel connection failed: 403 Forbidden"))."""
    import re

    refused = re.match(r"Tunnel connection failed: (.*)", str(exc), re.DOTALL)
    if refused:
        return proxy_refused(proxy, target, refused.group(1))
    if _is_tls_failure(exc) or _is_timeout(exc):
        return describe_failure(exc, url, what)
    return proxy_unreachable(proxy, f"{what} at {target}", getattr(exc, "strerror", None) or type(exc).__name__)


def _is_tls_failure(exc: Exception) -> bool:
    ssl = sys.modules.get("ssl")
    if ssl is not None and isinstance(exc, ssl.SSLError):
        return True
    requests = sys.modules.get("requests")  # imported only by the callers that use `session`
    return requests is not None and isinstance(exc, requests.exceptions.SSLError)


def _is_timeout(exc: Exception) -> bool:
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since Python 3.10
        return True
    requests = sys.modules.get("requests")
    return requests is not None and isinstance(exc, requests.exceptions.Timeout)
