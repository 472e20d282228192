"""The Vault (and OpenBao) broker: the user's id_token buys a short-lived database login.

issue:  POST auth/<auth_mount>/login {role, jwt}  → a client token, kept in this object's memory
        GET  <mount>/creds/<role>                 → username, password, lease
renew:  PUT  auth/token/renew-self, then sys/leases/renew (a lease dies with its token)
revoke: PUT  sys/leases/revoke, then auth/token/revoke-self (which also revokes its leases)

The hvac client is always built with an explicit url and token, so hvac never falls back to
VAULT_ADDR, VAULT_TOKEN or ~/.vault-token; hvac itself never writes a token file, and neither
does hoop. Plain http is refused except on loopback.

Hints (from the gateway registry's `credentials` table):
  broker="vault", addr (required), role (required), auth_mount="jwt", auth_role="" (Vault's
  default_role when empty), mount="database", namespace="", ca_file="".
"""

from __future__ import annotations

import dataclasses
import logging
import time

from hoopcli.brokers.base import Credentials, translated_errors
from hoopcli.errors import BrokerError, ConfigError, ExitCode

log = logging.getLogger(__name__)
TIMEOUT = 15  # seconds per Vault request; revoke runs while hoop is being stopped


class VaultBroker:
    name = "vault"

    def __init__(self, addr: str, role: str, *, auth_mount: str = "jwt", auth_role: str = "", mount: str = "database",
                 namespace: str = "", ca_file: str = ""):
        from hoopcli.auth.http import require_safe_url

        self.addr = require_safe_url(addr.rstrip("/"), "Vault")
        self.role = role
        self.auth_mount = auth_mount.strip("/")
        self.auth_role = auth_role
        self.mount = mount.strip("/")
        self.namespace = namespace
        self.ca_file = ca_file
        # lease_id -> the hvac client holding the token that owns it; memory only.
        self._clients: dict[str, object] = {}

    @classmethod
    def from_hints(cls, hints: dict, profile=None) -> "VaultBroker":
        missing = [key for key in ("addr", "role") if not hints.get(key)]
        if missing:
            raise ConfigError(
                f"the vault credentials of this connection have no {' or '.join(missing)}",
                "Ask the gateway admin to set them in the connection's `credentials` table.",
            )
        return cls(
            str(hints["addr"]),
            str(hints["role"]),
            auth_mount=str(hints.get("auth_mount") or "jwt"),
            auth_role=str(hints.get("auth_role") or ""),
            mount=str(hints.get("mount") or "database"),
            namespace=str(hints.get("namespace") or ""),
            ca_file=str(hints.get("ca_file") or ""),
        )

    # -- the Broker interface ----------------------------------------------------------------

    def issue(self, identity_token: str) -> Credentials:
        client = self._client()
        with self._explained("log in to Vault", login=True):
            client.auth.jwt.jwt_login(role=self.auth_role, jwt=identity_token, path=self.auth_mount)
        try:
            with self._explained(f"read {self.mount}/creds/{self.role}"):
                secret = client.secrets.database.generate_credentials(name=self.role, mount_point=self.mount)
        except BaseException:
            self._revoke_token(client)
            raise
        data = secret.get("data") or {}
        lease_id = secret.get("lease_id") or ""
        self._clients[lease_id] = client
        return Credentials(
            username=data.get("username", ""),
            password=data.get("password", ""),
            expires_at=_expiry(secret),
            lease_id=lease_id,
            renewable=bool(secret.get("renewable")),
            broker=self.name,
        )

    def renew(self, creds: Credentials) -> Credentials:
        client = self._owner(creds)
        with self._explained("renew the Vault token"):
            try:
                client.auth.token.renew_self()
            except Exception as exc:  # a non-renewable token still carries the lease until its TTL
                if not _is_vault_error(exc):
                    raise
                log.debug("the Vault token was not renewed: %s", exc)
        with self._explained(f"renew lease {creds.lease_id}"):
            secret = client.sys.renew_lease(lease_id=creds.lease_id)
        return dataclasses.replace(creds, expires_at=_expiry(secret) or creds.expires_at,
                                   renewable=bool(secret.get("renewable", creds.renewable)))

    def revoke(self, creds: Credentials) -> None:
        """Best effort, never raises: revoke the lease, then the token (which takes any lease
        left with it). A failure is logged as a warning naming the lease and when it expires."""
        client = self._clients.pop(creds.lease_id, None)
        if client is None:
            return
        problems = []
        try:
            with self._explained(f"revoke lease {creds.lease_id}"):
                client.sys.revoke_lease(lease_id=creds.lease_id)
        except BrokerError as exc:
            problems.append(exc.message)
        token_revoked = self._revoke_token(client)
        if problems and not token_revoked:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(creds.expires_at)) if creds.expires_at else "its TTL"
            log.warning("could not revoke Vault lease %s (%s); it expires at %s", creds.lease_id, problems[0], when)

    # -- plumbing ----------------------------------------------------------------------------

    def _client(self):
        import hvac

        from hoopcli.auth.http import session

        # token="" (not None): hvac reads VAULT_TOKEN / ~/.vault-token only when token is None.
        return hvac.Client(
            url=self.addr,
            token="",
            verify=self.ca_file or True,
            namespace=self.namespace or None,
            timeout=TIMEOUT,
            session=session(self.ca_file),
        )

    def _owner(self, creds: Credentials):
        client = self._clients.get(creds.lease_id)
        if client is None:
            raise BrokerError(f"no Vault token for lease {creds.lease_id} in this hoop process",
                              "Leases can only be renewed by the hoop process that created them.")
        return client

    def _revoke_token(self, client) -> bool:
        try:
            with self._explained("revoke the Vault token"):
                client.auth.token.revoke_self()
            return True
        except BrokerError as exc:
            log.debug("could not revoke the Vault token: %s", exc.message)
            return False
        finally:
            client.token = ""
            client.adapter.close()

    def _explained(self, action: str, login: bool = False):
        return translated_errors(lambda exc: _describe(self, action, login, exc))


def _is_vault_error(exc: Exception) -> bool:
    import hvac.exceptions

    return isinstance(exc, hvac.exceptions.VaultError)


def _describe(b: VaultBroker, action: str, login: bool, exc: Exception) -> BrokerError | None:
    import hvac.exceptions
    import requests

    where = b.addr + (f" (namespace {b.namespace})" if b.namespace else "")
    if isinstance(exc, requests.exceptions.SSLError):
        return BrokerError(
            f"TLS verification failed talking to Vault at {where}",
            "Set `ca_file` in the connection's credentials to the CA that signed Vault's certificate.",
            exit_code=ExitCode.UNREACHABLE,
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return BrokerError(f"Vault at {where} did not answer in time", "Check the network and try again.",
                           exit_code=ExitCode.UNREACHABLE)
    if isinstance(exc, requests.exceptions.ConnectionError):
        return BrokerError(f"cannot reach Vault at {where}",
                           "Check that Vault is up and that `addr` in the connection's credentials is right.",
                           exit_code=ExitCode.UNREACHABLE)
    if not isinstance(exc, hvac.exceptions.VaultError):
        return None
    detail = _vault_message(exc)
    if isinstance(exc, hvac.exceptions.VaultDown) or "sealed" in detail:
        return BrokerError(f"Vault at {where} is sealed", "Ask the Vault operators to unseal it, then try again.",
                           exit_code=ExitCode.UNREACHABLE)
    if isinstance(exc, hvac.exceptions.VaultNotInitialized):
        return BrokerError(f"Vault at {where} is not initialized", "Ask the Vault operators to initialize it.",
                           exit_code=ExitCode.UNREACHABLE)
    if login:
        return _login_error(b, detail, exc)
    path = f"{b.mount}/creds/{b.role}"
    if "unknown role" in detail or isinstance(exc, hvac.exceptions.InvalidPath):
        return BrokerError(f"Vault has no role '{b.role}' at {b.mount}/ ({detail})",
                           "Ask the gateway admin to fix `mount`/`role` in the connection's credentials.")
    if isinstance(exc, (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized)):
        return BrokerError(f"Vault permission denied: cannot {action}",
                           f"Your Vault policy (from auth role '{b.auth_role or 'default'}') must allow it, and "
                           f"{path} must exist. Ask the Vault admin.")
    return BrokerError(f"Vault refused to {action}: {detail}", "Ask the Vault admin; `hoop --debug` shows the request.")


def _login_error(b: VaultBroker, detail: str, exc: Exception) -> BrokerError:
    import hvac.exceptions

    role = b.auth_role or "(default role)"
    if "could not be found" in detail or ("role" in detail and "not found" in detail):
        return BrokerError(f"Vault has no JWT auth role '{role}' at auth/{b.auth_mount} ({detail})",
                           "Ask the gateway admin to fix `auth_role` in the connection's credentials.")
    if "expired" in detail:
        return BrokerError(f"Vault permission denied: your identity token has expired ({detail})",
                           "Run `hoop login` again (or provide a fresh HOOP_TOKEN).")
    if isinstance(exc, hvac.exceptions.InvalidRequest) and ("claim" in detail or "audience" in detail or "token" in detail):
        return BrokerError(f"Vault permission denied: role '{role}' refused your identity token ({detail})",
                           "The role's bound claims (groups, audience, issuer) do not match your token: check "
                           "`hoop whoami`, and ask the Vault admin to bind your group if you should have access.")
    if isinstance(exc, (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized)):
        return BrokerError(f"Vault permission denied at auth/{b.auth_mount}/login ({detail})",
                           "Check `auth_mount` in the connection's credentials: the JWT auth method may be mounted elsewhere.")
    return BrokerError(f"Vault refused the login at auth/{b.auth_mount}: {detail}", "Ask the Vault admin.")


def _vault_message(exc: Exception) -> str:
    errors = getattr(exc, "errors", None) or []
    text = "; ".join(str(e) for e in errors) if errors else str(exc.args[0] if exc.args else exc)
    # Vault wraps some errors as "1 error occurred:\n\t* permission denied\n\n".
    text = text.replace("1 error occurred:", "").replace("\n\t*", "").strip()
    return " ".join(text.split())[:300]


def _expiry(secret: dict) -> float | None:
    duration = secret.get("lease_duration")
    return time.time() + int(duration) if duration else None
