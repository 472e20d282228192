"""A DEVELOPMENT-ONLY OpenID issuer, built into hoop for `hoop dev` and for tests.

Never use it for anything real: whoever opens its /device page chooses who they are (one of
a few demo identities), and `auto_approve` signs in every device code without asking.

What it does keep real is the protocol, so the hoop client and the gateway are exercised
exactly as against a production IdP:

* discovery (`/.well-known/openid-configuration`, marked `"hoop_dev": true`) and a JWKS with
  one RSA key, generated in memory at start and never written anywhere;
* the device authorization grant (RFC 8628): `POST /device/code`, a `/device` page with an
  identity dropdown and Approve/Deny, and `POST /token` answering authorization_pending,
  slow_down (the interval grows by 5 s for this and every later poll), access_denied and
  expired_token;
* RS256 id_tokens (kid in the header) with iss, sub, aud (the client id), exp, iat, email,
  name and groups;
* refresh tokens that rotate on every use (a rotated one presented again revokes its whole
  family, as OAuth 2.0 Security BCP §4.14 suggests) and revocation (RFC 7009).

Tokens live in this process's memory only. It listens on 127.0.0.1 and nowhere else.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

log = logging.getLogger(__name__)

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_GRANT = "refresh_token"
DEFAULT_CLIENT_ID = "hoop-cli"
# RFC 8628 §6.1: consonants only, so no word is spelled by accident; 20^8 codes.
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
SLOW_DOWN_STEP = 5
# Clock and scheduling slack before a poll counts as "too fast".
POLL_TOLERANCE = 0.05
MAX_BODY = 64 * 1024
FORM_NONCE_TTL = 900
BANNER = "hoop DEVELOPMENT issuer: not for real use. Anyone who can open its pages chooses who they are."


@dataclass(frozen=True)
class DevIdentity:
    sub: str
    name: str
    email: str
    groups: tuple[str, ...]

    def claims(self) -> dict:
        return {"sub": self.sub, "name": self.name, "email": self.email, "groups": list(self.groups)}


DEV_IDENTITIES: dict[str, DevIdentity] = {
    i.sub: i
    for i in (
        DevIdentity("dev-admin", "Dev Admin", "dev-admin@example.com", ("dba", "approvers", "auditors")),
        DevIdentity("dev-user", "Dev User", "dev-user@example.com", ("developers",)),
        DevIdentity("dev-agent", "Dev Agent", "dev-agent@example.com", ("agents",)),
    )
}
# `auto_approve=True` signs hoop's own client in as this identity, and the sign-in page offers
# it first: a requester who is not the only approver, so what they run can be approved.
DEFAULT_AUTO_IDENTITY = "dev-user"
# The identity the approver client (`hoop dev`'s `dev-approver` profile) signs in as.
APPROVER_IDENTITY = "dev-admin"


@dataclass
class _DeviceGrant:
    device_code: str
    user_code: str
    client_id: str
    scope: str
    expires_at: float  # monotonic
    interval: int
    status: str = "pending"  # pending → approved | denied
    identity: str | None = None
    last_poll: float | None = None


@dataclass
class _Refresh:
    identity: str
    client_id: str
    scope: str
    family: str


class OAuthError(Exception):
    def __init__(self, error: str, description: str = "", status: int = 400):
        super().__init__(error)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict:
        return {"error": self.error, **({"error_description": self.description} if self.description else {})}


def resolve_auto_approve(value: bool | str | None) -> str | None:
    """True → the default identity, a name → that identity, False/None/"" → nobody."""
    if value is True:
        return DEFAULT_AUTO_IDENTITY
    if not value:
        return None
    if value not in DEV_IDENTITIES:
        raise ValueError(f"unknown dev identity {value!r}; known: {', '.join(DEV_IDENTITIES)}")
    return str(value)


def normalize_user_code(code: str) -> str:
    """'abcd efgh', 'ABCD-EFGH' and 'abcdefgh' are the same code: 'ABCD-EFGH'."""
    letters = "".join(ch for ch in code.upper() if ch.isalnum())
    return f"{letters[:4]}-{letters[4:]}" if len(letters) == 8 else letters


class DevIssuer:
    """Start with `start()` (or `with DevIssuer() as issuer:`); `issuer.url` is the issuer."""

    def __init__(
        self,
        *,
        auto_approve: bool | str = False,
        client_id: str = DEFAULT_CLIENT_ID,
        approver_client_id: str | None = None,
        token_ttl: int = 3600,
        device_ttl: int = 600,
        interval: int = 1,
        port: int = 0,
    ):
        self.auto_identity = resolve_auto_approve(auto_approve)
        self.client_id = client_id
        # A second registered client whose sign-ins default to APPROVER_IDENTITY (page and
        # auto-approve alike): a second identity to approve with, in a profile of its own.
        self.approver_client_id = approver_client_id
        self.token_ttl = token_ttl
        self.device_ttl = device_ttl
        self.interval = interval
        self.host = "127.0.0.1"  # never anything else
        self.port = port
        self._lock = threading.Lock()
        self._devices: dict[str, _DeviceGrant] = {}
        self._user_codes: dict[str, str] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._rotated: dict[str, str] = {}  # spent refresh token → its family
        self._access: dict[str, tuple[str, float]] = {}  # opaque access token → (sub, expiry)
        self._nonces: dict[str, float] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._key = None
        self.kid = ""
        self._jwk: dict = {}

    # ---- lifecycle ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the dev issuer is not running")
        return f"http://{self.host}:{self.port}"

    def start(self) -> "DevIssuer":
        from cryptography.hazmat.primitives.asymmetric import rsa

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._jwk = _public_jwk(self._key.public_key())
        self.kid = self._jwk["kid"]
        self._server = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="hoop-dev-issuer", daemon=True)
        self._thread.start()
        log.info("%s Listening on %s", BANNER, self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
        with self._lock:
            self._devices.clear()
            self._user_codes.clear()
            self._refresh.clear()
            self._rotated.clear()
            self._access.clear()
        self._key = None

    def __enter__(self) -> "DevIssuer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- metadata ----------------------------------------------------------------------
    def discovery(self) -> dict:
        base = self.url
        return {
            "issuer": base,
            "hoop_dev": True,
            "hoop_dev_warning": BANNER,
            "jwks_uri": f"{base}/jwks",
            "device_authorization_endpoint": f"{base}/device/code",
            "token_endpoint": f"{base}/token",
            "revocation_endpoint": f"{base}/revoke",
            "grant_types_supported": [DEVICE_GRANT, REFRESH_GRANT],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": ["openid", "email", "profile", "groups", "offline_access"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "email", "name", "groups"],
        }

    def jwks(self) -> dict:
        return {"keys": [dict(self._jwk)]}

    # ---- the device authorization grant -------------------------------------------------
    def device_authorization(self, form: dict[str, str]) -> dict:
        self._check_client(form.get("client_id", ""))
        scope = form.get("scope", "openid")
        with self._lock:
            self._expire_locked()
            device_code = secrets.token_urlsafe(32)
            user_code = self._new_user_code_locked()
            grant = _DeviceGrant(device_code, user_code, form["client_id"], scope, time.monotonic() + self.device_ttl, self.interval)
            if self.auto_identity:
                grant.status, grant.identity = "approved", self._identity_for_client(grant.client_id)
            self._devices[device_code] = grant
            self._user_codes[user_code] = device_code
        verification = f"{self.url}/device"
        return {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": verification,
            "verification_uri_complete": f"{verification}?{urlencode({'user_code': user_code})}",
            "expires_in": self.device_ttl,
            "interval": self.interval,
        }

    def approve(self, user_code: str, identity: str) -> bool:
        """Approve a pending code as one of DEV_IDENTITIES; False when no such pending code."""
        if identity not in DEV_IDENTITIES:
            raise ValueError(f"unknown dev identity {identity!r}")
        return self._decide(user_code, "approved", identity)

    def deny(self, user_code: str) -> bool:
        return self._decide(user_code, "denied", None)

    def _decide(self, user_code: str, status: str, identity: str | None) -> bool:
        with self._lock:
            self._expire_locked()
            grant = self._devices.get(self._user_codes.get(normalize_user_code(user_code), ""))
            if grant is None or grant.status != "pending":
                return False
            grant.status, grant.identity = status, identity
            return True

    def default_identity_for(self, user_code: str) -> str:
        """Who the sign-in page offers first for this code: its client's identity."""
        with self._lock:
            grant = self._devices.get(self._user_codes.get(normalize_user_code(user_code), ""))
            client = grant.client_id if grant is not None else self.client_id
        return self._identity_for_client(client)

    def _identity_for_client(self, client_id: str) -> str:
        if self.approver_client_id is not None and client_id == self.approver_client_id:
            return APPROVER_IDENTITY
        return self.auto_identity or DEFAULT_AUTO_IDENTITY

    def pending_user_codes(self) -> list[str]:
        with self._lock:
            self._expire_locked()
            return [g.user_code for g in self._devices.values() if g.status == "pending"]

    # ---- the token endpoint ---------------------------------------------------------------
    def token(self, form: dict[str, str]) -> dict:
        grant_type = form.get("grant_type", "")
        self._check_client(form.get("client_id", ""))
        if grant_type == DEVICE_GRANT:
            return self._device_token(form)
        if grant_type == REFRESH_GRANT:
            return self._refresh_token(form)
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")

    def _device_token(self, form: dict[str, str]) -> dict:
        now = time.monotonic()
        with self._lock:
            grant = self._devices.get(form.get("device_code", ""))
            if grant is None or grant.client_id != form["client_id"]:
                raise OAuthError("invalid_grant", "unknown or already used device_code")
            if now >= grant.expires_at:
                self._drop_device_locked(grant)
                raise OAuthError("expired_token", "the device code expired")
            too_fast = grant.last_poll is not None and now - grant.last_poll < grant.interval - POLL_TOLERANCE
            grant.last_poll = now
            if grant.status == "pending":
                if too_fast:  # RFC 8628 §3.5: this and every later poll waits 5 s longer
                    grant.interval += SLOW_DOWN_STEP
                    raise OAuthError("slow_down", f"poll at most every {grant.interval} seconds")
                raise OAuthError("authorization_pending", "waiting for the person to approve")
            self._drop_device_locked(grant)
            if grant.status == "denied":
                raise OAuthError("access_denied", "the request was denied")
            return self._issue_locked(grant.identity, grant.client_id, grant.scope, family=None)

    def _refresh_token(self, form: dict[str, str]) -> dict:
        token = form.get("refresh_token", "")
        with self._lock:
            entry = self._refresh.pop(token, None)
            if entry is None:
                family = self._rotated.get(token)
                if family is not None:  # a spent token came back: someone holds a copy
                    self._revoke_family_locked(family)
                raise OAuthError("invalid_grant", "unknown, revoked or already used refresh token")
            if entry.client_id != form["client_id"]:
                self._refresh[token] = entry
                raise OAuthError("invalid_grant", "the refresh token belongs to another client")
            self._rotated[token] = entry.family
            return self._issue_locked(entry.identity, entry.client_id, entry.scope, family=entry.family)

    def revoke(self, form: dict[str, str]) -> None:
        """RFC 7009: always 200, known token or not; a refresh token takes its family along."""
        token = form.get("token", "")
        with self._lock:
            entry = self._refresh.get(token)
            if entry is not None:
                self._revoke_family_locked(entry.family)
            self._access.pop(token, None)

    def _issue_locked(self, identity_name: str | None, client_id: str, scope: str, family: str | None) -> dict:
        import jwt

        identity = DEV_IDENTITIES[identity_name or ""]
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": client_id,
            "iat": now,
            "exp": now + self.token_ttl,
            "auth_time": now,
            "jti": secrets.token_urlsafe(12),
            **identity.claims(),
        }
        id_token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
        access_token = secrets.token_urlsafe(32)
        self._access[access_token] = (identity.sub, time.monotonic() + self.token_ttl)
        body = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": self.token_ttl,
            "id_token": id_token,
            "scope": scope,
        }
        if "offline_access" in scope.split():
            refresh = secrets.token_urlsafe(32)
            self._refresh[refresh] = _Refresh(identity.sub, client_id, scope, family or secrets.token_hex(8))
            body["refresh_token"] = refresh
        return body

    def _revoke_family_locked(self, family: str) -> None:
        for token in [t for t, e in self._refresh.items() if e.family == family]:
            del self._refresh[token]
            self._rotated[token] = family

    # ---- the /device page ---------------------------------------------------------------
    def new_form_nonce(self) -> str:
        nonce = secrets.token_urlsafe(16)
        with self._lock:
            now = time.monotonic()
            for n in [n for n, exp in self._nonces.items() if exp < now]:
                del self._nonces[n]
            self._nonces[nonce] = now + FORM_NONCE_TTL
        return nonce

    def take_form_nonce(self, nonce: str) -> bool:
        with self._lock:
            expiry = self._nonces.pop(nonce, None)
        return expiry is not None and expiry >= time.monotonic()

    # ---- helpers -------------------------------------------------------------------------
    def _check_client(self, client_id: str) -> None:
        if client_id not in (self.client_id, self.approver_client_id) or not client_id:
            raise OAuthError("invalid_client", f"unknown client_id {client_id!r}", status=401)

    def _new_user_code_locked(self) -> str:
        while True:
            letters = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))
            code = f"{letters[:4]}-{letters[4:]}"
            if code not in self._user_codes:
                return code

    def _drop_device_locked(self, grant: _DeviceGrant) -> None:
        self._devices.pop(grant.device_code, None)
        self._user_codes.pop(grant.user_code, None)

    def _expire_locked(self) -> None:
        # Keep expired grants a while so a late poll still gets expired_token, not invalid_grant.
        now = time.monotonic()
        for grant in [g for g in self._devices.values() if now >= g.expires_at + 3600]:
            self._drop_device_locked(grant)
        for token in [t for t, (_, exp) in self._access.items() if exp < now]:
            del self._access[token]


def _b64url_uint(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _public_jwk(public_key) -> dict:
    numbers = public_key.public_numbers()
    jwk = {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}
    # RFC 7638 thumbprint as the key id.
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True)
    kid = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


# ---- HTTP ---------------------------------------------------------------------------------


def _handler_for(issuer: DevIssuer):
    class Handler(_Handler):
        pass

    Handler.issuer = issuer
    return Handler


class _Handler(BaseHTTPRequestHandler):
    issuer: DevIssuer
    server_version = "hoop-dev-issuer"
    sys_version = ""
    timeout = 15  # a client that stalls mid-request is dropped

    def log_message(self, format, *args):  # noqa: A002 — no request lines (user codes) in any log
        pass

    # ---- routing ----------------------------------------------------------------------
    def do_GET(self):
        from hoopcli.dev.pages import device_page, index_page

        path, query = self._path()
        if path == "/.well-known/openid-configuration":
            return self._json(200, self.issuer.discovery())
        if path == "/jwks":
            return self._json(200, self.issuer.jwks())
        if path == "/device":
            return self._html(200, device_page(self.issuer, query.get("user_code", "")))
        if path == "/":
            return self._html(200, index_page())
        return self._json(404, {"error": "not_found"})

    def do_POST(self):
        from hoopcli.dev.pages import device_decision

        path, _ = self._path()
        try:
            form = self._form()
        except OAuthError as exc:
            return self._json(exc.status, exc.body())
        try:
            if path == "/device/code":
                return self._json(200, self.issuer.device_authorization(form))
            if path == "/token":
                return self._json(200, self.issuer.token(form))
            if path == "/revoke":
                self.issuer.revoke(form)
                return self._json(200, {})
            if path == "/device":
                status, page = device_decision(self.issuer, form)
                return self._html(status, page)
        except OAuthError as exc:
            return self._json(exc.status, exc.body())
        return self._json(404, {"error": "not_found"})

    # ---- plumbing ---------------------------------------------------------------------
    def _path(self) -> tuple[str, dict[str, str]]:
        parts = urlsplit(self.path)
        return parts.path.rstrip("/") or "/", {k: v[0] for k, v in parse_qs(parts.query).items()}

    def _form(self) -> dict[str, str]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise OAuthError("invalid_request", "bad Content-Length") from None
        if length < 0 or length > MAX_BODY:
            raise OAuthError("invalid_request", "request body too large", status=413)
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        raw = self.rfile.read(length) if length else b""
        if raw and ctype != "application/x-www-form-urlencoded":
            raise OAuthError("invalid_request", "send application/x-www-form-urlencoded")
        try:
            return {k: v[0] for k, v in parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()}
        except UnicodeDecodeError:
            raise OAuthError("invalid_request", "the form is not UTF-8") from None

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Pragma", "no-cache")
        self.send_header("X-Hoop-Dev", "development only")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: dict) -> None:
        extra = {"WWW-Authenticate": 'Basic realm="hoop-dev"'} if status == 401 else None
        self._send(status, json.dumps(data).encode(), "application/json", extra)

    def _html(self, status: int, page: str) -> None:
        self._send(
            status,
            page.encode(),
            "text/html; charset=utf-8",
            {
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
                "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer",
            },
        )

