"""The client side of the gateway's JSON API (connections, approvals, audit).

Same TLS and proxy policy as the tunnel (auth/http.fetch): verified against the profile's CA
or the system store, through HTTPS_PROXY unless NO_PROXY exempts the gateway. Standard library
only, because `hoop exec` and `hoop connect` make one of these calls on every start.
"""

from __future__ import annotations

import logging

from hoopcli.auth.http import fetch, require_safe_url
from hoopcli.errors import ConfigError, Denied, HoopError, NotFound, NotLoggedIn, UsageError


log = logging.getLogger(__name__)


class GatewayAPI:
    def __init__(self, base_url: str, token: str, ca_file: str = ""):
        if not base_url:
            raise ConfigError("no gateway configured", "Set it with `hoop config set gateway https://gateway.example.com:8443`.")
        self.base = require_safe_url(base_url.rstrip("/"), "gateway")
        self.ca_file = ca_file
        self._token = token

    def _call(self, method: str, path: str, params: dict | None = None, json: dict | None = None):
        resp = fetch(method, self.base + path, what="gateway", ca_file=self.ca_file, params=params, json_body=json,
                     headers={"Authorization": f"Bearer {self._token}"})
        try:
            body = resp.json()
        except ValueError:
            body = {}
        log.debug("gateway API %s %s -> %s", method, path, resp.status)
        if resp.status == 200:
            return body
        reason = body.get("error", resp.reason) if isinstance(body, dict) else resp.reason
        raise api_error(resp.status, reason)

    def connections(self) -> list[dict]:
        return self._call("GET", "/api/connections")["connections"]

    def connection(self, name: str) -> dict:
        from urllib.parse import quote

        return self._call("GET", f"/api/connections/{quote(name, safe='')}")

    def approvals(self, status: str | None = None) -> list[dict]:
        """The first page only (see approvals_page)."""
        return self.approvals_page(status)["approvals"]

    def approvals_page(self, status: str | None = None, limit: int | None = None, cursor: str | None = None) -> dict:
        """{"approvals": [...], "next": cursor of the next page or None}: one bounded page."""
        params = {k: v for k, v in (("status", status), ("limit", limit), ("cursor", cursor)) if v}
        answer = self._call("GET", "/api/approvals", params=params or None)
        return {"approvals": answer["approvals"], "next": answer.get("next")}

    def decide(self, request_id: str, decision: str, reason: str, sha256: str | None = None) -> dict:
        body = {"reason": reason} if sha256 is None else {"reason": reason, "sha256": sha256}
        return self._call("POST", f"/api/approvals/{request_id}/{decision}", json=body)

    def explain(self, connection: str, sql: str, subject: str | None = None, groups: list[str] | None = None) -> dict:
        body: dict = {"connection": connection, "sql": sql}
        if subject is not None:
            body["as"] = subject
        if groups:
            body["groups"] = groups
        return self._call("POST", "/api/policy/explain", json=body)

    def justify(self, request_id: str, reason: str) -> dict:
        return self._call("POST", f"/api/approvals/{request_id}/justify", json={"reason": reason})

    def audit(self, **filters) -> list[dict]:
        params = {k: v for k, v in filters.items() if v is not None}
        answer = self._call("GET", "/api/audit", params=params)
        if answer.get("truncated"):
            log.warning("the gateway returned its maximum of %d records; narrow with --since or read the store on the gateway host", len(answer["records"]))
            from hoopcli.output import info

            info(f"hoop: only the newest {len(answer['records'])} records; narrow with --since/--identity, or use --store on the gateway host")
        return answer["records"]

    def verify(self) -> dict:
        return self._call("GET", "/api/audit/verify")


def api_error(status: int, reason: str) -> HoopError:
    if status in (401, 407):
        return NotLoggedIn(f"the gateway refused the session: {reason}")
    if status == 403:
        return Denied(f"the gateway denied access: {reason}", "Ask an admin to grant your identity or group access.")
    if status == 404:
        return NotFound(f"the gateway says: {reason}", "List what you may use with `hoop connections`.")
    if status in (400, 409):
        return UsageError(f"the gateway refused the request: {reason}")
    from hoopcli.errors import Unreachable

    return Unreachable(f"the gateway answered {status}: {reason}", "Check the gateway's health and logs.")


def api_for(profile, tokens) -> GatewayAPI:
    return GatewayAPI(profile.gateway, tokens.bearer, profile.ca_file)
