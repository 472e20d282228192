"""The Vault broker against a real OpenBao dev server, real id_tokens from the test OpenID
provider, and a real PostgreSQL whose roles Vault creates and drops.

The end-to-end tests at the bottom run `hoop exec` as a subprocess through a gateway of this
module's own, whose `vault-db` connection is brokered by Vault.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from hoopcli.brokers.base import broker_for
from hoopcli.errors import BrokerError, ConfigError, ExitCode
from tests.support.openbao import NAMESPACE, NAMESPACE_DB_ROLE, start_openbao  # noqa: F401

ROLE_PREFIX = "v-jwt-"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _login(pg_server, username: str, password: str) -> str:
    import psycopg

    with psycopg.connect(host=pg_server.host, port=pg_server.port, dbname="app", user=username, password=password,
                         connect_timeout=10) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 3
        return conn.execute("SELECT current_user").fetchone()[0]


def _ephemeral_roles(pg_server) -> set[str]:
    return {r[0] for r in pg_server.sql("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-jwt-%'")}


def _token_count(openbao) -> int:
    return len(openbao.root().auth.token.list_accessors()["data"]["keys"])


# ---- the broker ---------------------------------------------------------------------------


def test_issue_creates_a_login_and_revoke_drops_it(openbao, pg_server, tokens):
    broker = broker_for(openbao.hints(), None)
    creds = broker.issue(tokens("alice"))
    assert creds.broker == "vault" and creds.renewable and creds.lease_id.startswith("database/creds/app-readonly/")
    assert creds.username.startswith(ROLE_PREFIX) and creds.password
    assert 250 < creds.expires_at - time.time() <= 300
    assert creds.password not in repr(creds)
    assert pg_server.role_exists(creds.username)
    assert _login(pg_server, creds.username, creds.password) == creds.username
    assert openbao.lease(creds.lease_id) is not None

    broker.revoke(creds)
    assert not pg_server.role_exists(creds.username)
    assert openbao.lease(creds.lease_id) is None
    broker.revoke(creds)  # a second revoke is a no-op


def test_renew_extends_the_lease(openbao, pg_server, tokens):
    broker = broker_for(openbao.hints(), None)
    creds = broker.issue(tokens("alice"))
    try:
        before = openbao.lease(creds.lease_id)["expire_time"]
        time.sleep(1.1)
        renewed = broker.renew(creds)
        assert renewed.lease_id == creds.lease_id and renewed.password == creds.password
        assert renewed.expires_at > creds.expires_at
        assert openbao.lease(creds.lease_id)["expire_time"] > before
        assert _login(pg_server, renewed.username, renewed.password) == creds.username
    finally:
        broker.revoke(creds)
    assert not pg_server.role_exists(creds.username)


def test_the_vault_token_is_revoked_with_the_lease(openbao, tokens):
    before = _token_count(openbao)
    broker = broker_for(openbao.hints(), None)
    creds = broker.issue(tokens("alice"))
    assert _token_count(openbao) == before + 1
    broker.revoke(creds)
    assert _token_count(openbao) == before


def test_namespace_is_sent(openbao, pg_server, tokens):
    broker = broker_for(openbao.hints(namespace=NAMESPACE, role=NAMESPACE_DB_ROLE), None)
    creds = broker.issue(tokens("alice"))
    try:
        assert pg_server.role_exists(creds.username)
    finally:
        broker.revoke(creds)
    assert not pg_server.role_exists(creds.username)
    # The same role name outside the namespace does not exist.
    with pytest.raises(BrokerError, match=f"no role '{NAMESPACE_DB_ROLE}'"):
        broker_for(openbao.hints(role=NAMESPACE_DB_ROLE), None).issue(tokens("alice"))


# ---- refusals -----------------------------------------------------------------------------


def test_wrong_group_is_permission_denied_with_a_hint(openbao, pg_server, tokens):
    roles = _ephemeral_roles(pg_server)
    with pytest.raises(BrokerError) as caught:
        broker_for(openbao.hints(), None).issue(tokens("bob"))
    err = caught.value
    assert "permission denied" in err.message and "groups" in err.message
    assert "bound claims" in err.hint and "hoop whoami" in err.hint
    assert err.exit_code == ExitCode.BROKER
    assert _ephemeral_roles(pg_server) == roles


def test_wrong_audience_is_permission_denied(openbao, oidc_provider):
    other = oidc_provider.device_login("alice", client_id="other-client")["id_token"]
    with pytest.raises(BrokerError, match="permission denied.*audience"):
        broker_for(openbao.hints(), None).issue(other)


def test_garbage_token_is_refused(openbao):
    with pytest.raises(BrokerError, match="permission denied"):
        broker_for(openbao.hints(), None).issue("not.a.jwt")


def test_unknown_database_role(openbao, tokens):
    before = _token_count(openbao)
    with pytest.raises(BrokerError) as caught:
        broker_for(openbao.hints(role="nope"), None).issue(tokens("alice"))
    assert "no role 'nope'" in caught.value.message and "unknown role" in caught.value.message
    assert "role" in caught.value.hint
    assert _token_count(openbao) == before  # the login's token was revoked on the way out


def test_unknown_auth_role(openbao, tokens):
    with pytest.raises(BrokerError, match="no JWT auth role 'nope'") as caught:
        broker_for(openbao.hints(auth_role="nope"), None).issue(tokens("alice"))
    assert "auth_role" in caught.value.hint


def test_policy_refusal(openbao, tokens):
    with pytest.raises(BrokerError, match="permission denied: cannot read secret/creds/app-readonly") as caught:
        broker_for(openbao.hints(mount="secret"), None).issue(tokens("alice"))
    assert "policy" in caught.value.hint


def test_wrong_auth_mount(openbao, tokens):
    with pytest.raises(BrokerError, match="auth/nojwt") as caught:
        broker_for(openbao.hints(auth_mount="nojwt"), None).issue(tokens("alice"))
    assert "auth_mount" in caught.value.hint


def test_unreachable_vault(tokens):
    hints = {"broker": "vault", "addr": f"http://127.0.0.1:{_closed_port()}", "role": "r"}
    started = time.monotonic()
    with pytest.raises(BrokerError, match="cannot reach Vault at http://127.0.0.1") as caught:
        broker_for(hints, None).issue(tokens("alice"))
    assert caught.value.exit_code == ExitCode.UNREACHABLE
    assert time.monotonic() - started < 10


def test_tls_failure(openbao, tokens):
    with pytest.raises(BrokerError, match="TLS") as caught:
        broker_for(openbao.hints(addr=openbao.addr.replace("http:", "https:")), None).issue(tokens("alice"))
    assert "ca_file" in caught.value.hint and caught.value.exit_code == ExitCode.UNREACHABLE


def test_sealed_vault(tokens):
    with start_openbao() as sealed:
        sealed.root().sys.seal()
        with pytest.raises(BrokerError, match="is sealed") as caught:
            broker_for({"broker": "vault", "addr": sealed.addr, "role": "r"}, None).issue(tokens("alice"))
    assert "unseal" in caught.value.hint and caught.value.exit_code == ExitCode.UNREACHABLE


@pytest.mark.parametrize("hints, message", [
    ({"broker": "vault", "role": "r"}, "no addr"),
    ({"broker": "vault", "addr": "http://127.0.0.1:8200"}, "no role"),
    ({"broker": "vault", "addr": "http://vault.example.com:8200", "role": "r"}, "not https"),
])
def test_bad_hints(hints, message):
    with pytest.raises(ConfigError, match=message):
        broker_for(hints, None)


def test_never_reads_or_writes_vault_token_files(openbao, pg_server, tokens, tmp_path, monkeypatch):
    """A poison ~/.vault-token and VAULT_TOKEN/VAULT_ADDR in the environment: hoop ignores all
    three, leaves the file alone and creates no file in HOME."""
    home = tmp_path / "home"
    home.mkdir()
    poison = openbao.root().auth.token.create(policies=["default"], num_uses=50, ttl="10m")["auth"]
    token_file = home / ".vault-token"
    token_file.write_text(poison["client_token"])
    os.utime(token_file, (1_000_000_000, 1_000_000_000))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("VAULT_TOKEN", poison["client_token"])
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("BAO_TOKEN", poison["client_token"])
    before = sorted(home.rglob("*"))

    broker = broker_for(openbao.hints(), None)
    creds = broker.issue(tokens("alice"))
    broker.renew(creds)
    broker.revoke(creds)

    assert not pg_server.role_exists(creds.username)
    assert sorted(home.rglob("*")) == before
    assert token_file.read_text() == poison["client_token"] and token_file.stat().st_mtime == 1_000_000_000
    # A use-limited token shows any use: its remaining uses are untouched.
    looked_up = openbao.root().auth.token.lookup_accessor(poison["accessor"])["data"]
    assert looked_up["num_uses"] == 50


# ---- end to end: hoop exec through a gateway with a vault-brokered connection ---------------


@pytest.fixture(scope="module")
def vault_gateway(openbao, oidc_provider, pg_server):
    from tests.support.gateway import gateway_config, start_gateway

    workdir = Path(tempfile.mkdtemp(prefix="hoop-vault-gateway-"))
    hints = ", ".join(f'{k} = "{v}"' for k, v in openbao.hints().items())
    config = gateway_config(oidc_provider.issuer, pg_server.port, None, workdir) + f"""
[connections.vault-db]
protocol = "postgres"
target = "127.0.0.1:{pg_server.port}"
groups = ["dba", "developers"]
database = "app"
credentials = {{ {hints} }}
"""
    with start_gateway(config, workdir) as gw:
        yield gw


@pytest.fixture
def exec_env(vault_gateway, tokens, tmp_path):
    from tests.support.cli import subprocess_env

    home = tmp_path / "home"
    home.mkdir()
    return subprocess_env(home, HOOP_TOKEN=tokens("alice"), HOOP_GATEWAY=vault_gateway.url, HOOP_CA_FILE=vault_gateway.ca_file)


def test_exec_psql_sees_the_ephemeral_role(exec_env, pg_server):
    from tests.support.cli import run_subprocess

    before = _ephemeral_roles(pg_server)
    result = run_subprocess(["exec", "vault-db", "--", "psql", "-X", "-A", "-t", "-c", "select current_user"], exec_env)
    assert result.code == 0, result.err
    user = result.out.strip()
    assert user.startswith(ROLE_PREFIX)
    assert user not in before and not pg_server.role_exists(user)
    assert _ephemeral_roles(pg_server) == before


def test_creds_shows_then_revokes(exec_env, pg_server):
    from tests.support.cli import run_subprocess

    result = run_subprocess(["creds", "vault-db", "--json"], exec_env)
    assert result.code == 0, result.err
    (data,) = result.json_lines()
    assert data["broker"] == "vault" and data["username"].startswith(ROLE_PREFIX) and data["renewable"]
    assert "password" not in data and 250 < data["expires_in"] <= 300
    assert not pg_server.role_exists(data["username"])


def test_exec_bob_is_refused_by_vault(vault_gateway, tokens, tmp_path):
    from tests.support.cli import run_subprocess, subprocess_env

    home = tmp_path / "bob"
    home.mkdir()
    env = subprocess_env(home, HOOP_TOKEN=tokens("bob"), HOOP_GATEWAY=vault_gateway.url, HOOP_CA_FILE=vault_gateway.ca_file)
    result = run_subprocess(["exec", "vault-db", "--", "psql", "-c", "select 1"], env)
    assert result.code == int(ExitCode.BROKER)
    assert "permission denied" in result.err and "hoop: hint:" in result.err
    assert tokens("bob") not in result.err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_revokes_the_role(exec_env, pg_server, sig):
    from tests.support.cli import HOOP

    before = _ephemeral_roles(pg_server)
    proc = subprocess.Popen(HOOP + ["exec", "vault-db", "--", "psql", "-X", "-c", "select pg_sleep(30)"], env=exec_env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        new: set[str] = set()
        while not new and time.monotonic() < deadline and proc.poll() is None:
            new = _ephemeral_roles(pg_server) - before
            time.sleep(0.1)
        assert new, "no ephemeral role appeared: " + (proc.stderr.read() if proc.poll() is not None else "")
        _wait_for_sleep(pg_server, new)
        proc.send_signal(sig)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, err  # hoop forwards it; psql dies of it
    else:
        assert proc.returncode != 0 and "canceling statement" in err, err  # psql cancels through the tunnel
    deadline = time.monotonic() + 5
    while _ephemeral_roles(pg_server) & new and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _ephemeral_roles(pg_server) & new


def _wait_for_sleep(pg_server, users: set[str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = pg_server.sql("SELECT usename FROM pg_stat_activity WHERE query LIKE 'select pg_sleep%'")
        if {r[0] for r in rows} & users:
            return
        time.sleep(0.1)
    raise AssertionError("psql never started its statement")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_connect_stopped_by_signal_revokes_the_role(exec_env, pg_server, sig):
    from tests.support.cli import HOOP

    before = _ephemeral_roles(pg_server)
    proc = subprocess.Popen(HOOP + ["connect", "vault-db", "--json"], env=exec_env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = proc.stdout.readline()
        assert '"port"' in ready, proc.stderr.read() if proc.poll() is not None else ready
        new = _ephemeral_roles(pg_server) - before
        assert len(new) == 1
        proc.send_signal(sig)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == int(ExitCode.INTERRUPTED) or proc.returncode == 128 + sig, proc.stderr.read()
    assert not _ephemeral_roles(pg_server) & new
