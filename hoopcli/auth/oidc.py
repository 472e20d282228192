"""OIDC against any standard IdP: discovery, device authorization grant (RFC 8628),
id_token validation, refresh and revocation (RFC 7009).

The poll loop takes its clock and sleep as arguments so tests can drive it; everything
else is plain HTTP through the session policy in `auth/http.py`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from hoopcli.auth.http import TIMEOUT, describe_failure, require_safe_url, session
from hoopcli.auth.tokens import ALLOWED_ALGORITHMS, LEEWAY_SECONDS, TokenSet
from hoopcli.errors import AuthError, ConfigError, Interrupted

log = logging.getLogger(__name__)
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL = 5
SLOW_DOWN_STEP = 5


@dataclass(frozen=True)
class DeviceCode:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int

    def public(self) -> dict:
        """What a person (or an agent handing the link to one) needs; never the device_code."""
        return {
            "event": "device_code",
            "user_code": self.user_code,
            "verification_uri": self.verification_uri,
            "verification_uri_complete": self.verification_uri_complete,
            "expires_in": self.expires_in,
            "interval": self.interval,
        }


class Provider:
    """One OpenID provider, discovered once per process."""

    def __init__(self, issuer: str, client_id: str, ca_file: str = ""):
        self.issuer = require_safe_url(issuer.rstrip("/"), "issuer")
        self.client_id = client_id
        self.http = session(ca_file)
        self._metadata: dict | None = None
        self._jwks = None

    # ---- discovery -------------------------------------------------------------------
    @property
    def metadata(self) -> dict:
        if self._metadata is None:
            url = self.issuer + "/.well-known/openid-configuration"
            data = self._get_json(url)
            if data.get("issuer", "").rstrip("/") != self.issuer:
                raise AuthError(
                    f"the IdP says its issuer is '{data.get('issuer')}', not '{self.issuer}'",
                    "Set the exact issuer URL with `hoop config set issuer URL`.",
                )
            self._metadata = data
        return self._metadata

    def endpoint(self, name: str) -> str:
        url = self.metadata.get(name)
        if not url:
            raise AuthError(f"the IdP does not advertise {name}", "Ask your IdP admin to enable it for the hoop client.")
        return require_safe_url(url, name)

    def _get_json(self, url: str) -> dict:
        import requests

        try:
            resp = self.http.get(url, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise describe_failure(exc, url, "identity provider") from None
        log.debug("IdP GET %s -> %s", url, resp.status_code)
        if resp.status_code != 200:
            raise AuthError(f"the IdP answered {resp.status_code} for {url}", "Check the issuer URL with `hoop config show`.")
        data = _json_or_empty(resp)
        if not data:
            raise AuthError(f"the IdP answered {url} with something that is not a JSON object", "Check the issuer URL with `hoop config show`.")
        return data

    def _post_form(self, url: str, form: dict):
        import requests

        try:
            return self.http.post(url, data=form, timeout=TIMEOUT, headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            raise describe_failure(exc, url, "identity provider") from None

    # ---- device authorization grant ---------------------------------------------------
    def start_device_flow(self, scopes: str) -> DeviceCode:
        resp = self._post_form(self.endpoint("device_authorization_endpoint"), {"client_id": self.client_id, "scope": scopes})
        body = _json_or_empty(resp)
        if resp.status_code != 200 or "device_code" not in body:
            raise AuthError(
                f"the IdP refused the device authorization request: {body.get('error', resp.status_code)} {body.get('error_description', '')}".strip(),
                "Check client_id and that the device flow is enabled for it.",
            )
        return DeviceCode(
            device_code=body["device_code"],
            user_code=body["user_code"],
            # RFC 8628 says verification_uri; some IdPs (Google) say verification_url.
            verification_uri=body.get("verification_uri") or body.get("verification_url", ""),
            verification_uri_complete=body.get("verification_uri_complete", ""),
            expires_in=int(body.get("expires_in", 600)),
            interval=int(body.get("interval", DEFAULT_INTERVAL)),
        )

    def poll_device_flow(
        self,
        code: DeviceCode,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[float], None] | None = None,
    ) -> dict:
        """Poll the token endpoint as RFC 8628 §3.5 says until the person decides."""
        interval = max(code.interval, 1)
        deadline = clock() + code.expires_in
        token_url = self.endpoint("token_endpoint")
        form = {"grant_type": DEVICE_GRANT, "device_code": code.device_code, "client_id": self.client_id}
        while True:
            if clock() + interval > deadline:
                raise AuthError("the device code expired before it was approved", "Run `hoop login` again and approve sooner.")
            if on_wait:
                on_wait(deadline - clock())
            try:
                sleep(interval)
            except KeyboardInterrupt:
                raise Interrupted("login cancelled", "Run `hoop login` again when ready.") from None
            # Seconds pass between polls: an IdP (or a load balancer) may have closed the idle
            # keep-alive connection, and a POST on it would fail. Each poll dials afresh.
            self.http.close()
            resp = self._post_form(token_url, form)
            body = _json_or_empty(resp)
            if resp.status_code == 200 and "id_token" in body:
                return body
            error = body.get("error", f"http_{resp.status_code}")
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval += SLOW_DOWN_STEP
                continue
            if error == "access_denied":
                raise AuthError("the login was denied at the identity provider", "Run `hoop login` again and approve the request.")
            if error == "expired_token":
                raise AuthError("the device code expired before it was approved", "Run `hoop login` again and approve sooner.")
            if resp.status_code == 200:
                raise AuthError("the IdP returned no id_token", "Make sure the 'openid' scope is allowed for the hoop client.")
            raise AuthError(f"the IdP refused the login: {error} {body.get('error_description', '')}".strip(), "Run `hoop login` again.")

    # ---- tokens ----------------------------------------------------------------------
    def validate_id_token(self, id_token: str, audience: str | None = None) -> dict:
        """Signature against the issuer's JWKS, then iss, aud and exp. Raises AuthError."""
        import jwt

        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            raise AuthError("the IdP returned an id_token that is not a JWT", "Check the IdP configuration.") from None
        key = self._signing_key(header.get("kid"))
        try:
            return jwt.decode(
                id_token,
                key=key,
                algorithms=list(ALLOWED_ALGORITHMS),
                audience=audience or self.client_id,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"the id_token failed validation: {exc}", "Check issuer and client_id in `hoop config show`.") from None

    def _signing_key(self, kid: str | None):
        import jwt

        for attempt in range(2):
            if self._jwks is None or attempt == 1:
                self._jwks = jwt.PyJWKSet.from_dict(self._get_json(self.endpoint("jwks_uri")))
            for jwk in self._jwks.keys:
                if kid is None or jwk.key_id == kid:
                    return jwk.key
        raise AuthError("the id_token is signed with a key the IdP does not publish", "Check the issuer URL.")

    def token_set(self, body: dict, previous: TokenSet | None = None) -> TokenSet:
        claims = self.validate_id_token(body["id_token"])
        return TokenSet(
            id_token=body["id_token"],
            access_token=body.get("access_token", ""),
            refresh_token=body.get("refresh_token") or (previous.refresh_token if previous else ""),
            expires_at=float(claims["exp"]),
            issuer=self.issuer,
        )

    def refresh(self, tokens: TokenSet) -> TokenSet:
        if not tokens.refresh_token:
            raise AuthError("the session expired and has no refresh token", "Run `hoop login`.")
        resp = self._post_form(
            self.endpoint("token_endpoint"),
            {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token, "client_id": self.client_id},
        )
        body = _json_or_empty(resp)
        if resp.status_code != 200 or "id_token" not in body:
            raise AuthError(f"the session could not be refreshed ({body.get('error', resp.status_code)})", "Run `hoop login`.")
        return self.token_set(body, previous=tokens)

    def revoke(self, token: str, hint: str = "refresh_token") -> bool:
        """RFC 7009. Returns False when the IdP advertises no revocation endpoint."""
        url = self.metadata.get("revocation_endpoint")
        if not url or not token:
            return False
        resp = self._post_form(require_safe_url(url, "revocation_endpoint"), {"token": token, "token_type_hint": hint, "client_id": self.client_id})
        return resp.status_code == 200


def _json_or_empty(resp) -> dict:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def provider_for(profile) -> Provider:
    if not profile.issuer:
        raise ConfigError(
            f"profile '{profile.name}' has no issuer",
            "Set it with `hoop config set issuer https://idp.example.com` (or HOOP_ISSUER).",
        )
    return Provider(profile.issuer, profile.client_id, profile.ca_file)
