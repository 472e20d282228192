"""The gateway does not own the trail it is audited by (PostgreSQL, roles set up as an admin would).

An admin role owns the audit database; the gateway logs in as its own role with nothing else.
`hoop gateway init --admin-dsn` (or the SQL `hoop gateway audit-schema` prints, run with psql)
makes the admin own the table and its triggers, and gives the gateway's role INSERT and SELECT
only: a real gateway then starts with `--strict` and records a psql session, and that role can
neither disable the trigger nor UPDATE, DELETE, TRUNCATE, DROP or switch triggers off for its
session. A gateway whose role would own its trail is warned at start and refused with --strict.
The store URL's password is in no output of the gateway, its log or its errors.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from hoopcli.gateway.audit import new_record
from hoopcli.gateway.audit.postgres import PostgresStore, check_trail
from tests.support.cli import REPO, run_subprocess, subprocess_env
from tests.support.gateway import _read_line, gateway_config

_names = itertools.count()


@dataclass
class Trail:
    """An audit database owned by `admin`; `gateway_role` may log in and nothing more."""

    db: str
    admin: str
    admin_password: str
    gateway_role: str
    gateway_password: str
    server: object

    def dsn(self, user: str, with_password: bool = True) -> str:
        password = {self.admin: self.admin_password, self.gateway_role: self.gateway_password}[user]
        return self.server.dsn(user=user, password=password if with_password else None, dbname=self.db)

    def as_admin(self):
        return psycopg.connect(self.dsn(self.admin), autocommit=True)

    def as_gateway(self):
        return psycopg.connect(self.dsn(self.gateway_role), autocommit=True)

    def rows(self) -> int:
        with self.as_admin() as conn:
            return conn.execute("SELECT count(*) FROM hoop_audit").fetchone()[0]

    def table_owner(self) -> str | None:
        with self.as_admin() as conn:
            row = conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass('hoop_audit')").fetchone()
            return row[0] if row else None


@pytest.fixture
def trail(pg_server):
    n = f"{os.getpid()}_{next(_names)}"
    made = Trail(f"trail_{n}", f"trail_admin_{n}", secrets.token_urlsafe(12), f"hoop_gw_{n}", secrets.token_urlsafe(12), pg_server)
    from psycopg import sql

    for role, password in ((made.admin, made.admin_password), (made.gateway_role, made.gateway_password)):
        pg_server.sql(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    pg_server.sql(f"CREATE DATABASE {made.db} OWNER {made.admin}")
    yield made
    pg_server.sql(f"DROP DATABASE {made.db} WITH (FORCE)")
    for role in (made.gateway_role, made.admin):
        pg_server.sql(f"DROP ROLE {role}")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOOP_", "PG"))}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def _init(trail: Trail, admin: str | None = None):
    admin = admin or trail.admin
    password = trail.admin_password if admin == trail.admin else trail.gateway_password
    return run_subprocess(
        ["gateway", "init", "--admin-dsn", trail.dsn(admin, with_password=False),
         "--store", trail.dsn(trail.gateway_role, with_password=False), "--json"],
        _env(PGPASSWORD=password),
    )


REFUSED = [
    "ALTER TABLE hoop_audit DISABLE TRIGGER USER",
    "ALTER TABLE hoop_audit DISABLE TRIGGER ALL",
    "UPDATE hoop_audit SET sub = 'mallory'",
    "DELETE FROM hoop_audit",
    "TRUNCATE hoop_audit",
    "DROP TABLE hoop_audit",
    "ALTER TABLE hoop_audit OWNER TO CURRENT_USER",
    "DROP TRIGGER hoop_audit_no_change ON hoop_audit",
    "SET session_replication_role = replica",
]


def _assert_gateway_role_cannot_rewrite(trail: Trail) -> None:
    before = trail.rows()
    assert before > 0
    with trail.as_gateway() as conn:
        for statement in REFUSED:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    assert trail.rows() == before  # every record still there
    with trail.as_admin() as conn:
        enabled = dict(conn.execute("SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'hoop_audit'::regclass AND NOT tgisinternal").fetchall())
    assert enabled == {"hoop_audit_no_change": "O", "hoop_audit_no_truncate": "O"}


def test_init_gives_the_trail_to_the_admin_and_the_gateway_role_only_appends(trail):
    result = _init(trail)
    assert result.code == 0, result.err
    assert json.loads(result.out) == {"table": "hoop_audit", "gateway_role": trail.gateway_role, "findings": [], "ok": True}
    assert trail.table_owner() == trail.admin
    with PostgresStore(trail.dsn(trail.gateway_role)) as store:  # the gateway's role appends and verifies
        store.append([new_record("statement", sub="alice", statement=f"select {i}") for i in range(5)])
        assert store.verify().ok
    assert check_trail(trail.dsn(trail.gateway_role)) == (True, [])
    _assert_gateway_role_cannot_rewrite(trail)
    again = _init(trail)  # safe to run again: the records stay
    assert again.code == 0 and trail.rows() == 5


def test_init_refuses_the_gateways_own_role_as_admin(trail):
    result = _init(trail, admin=trail.gateway_role)
    assert result.code == 2 and "is the gateway's role" in result.err
    assert trail.table_owner() is None  # nothing was created


def test_the_printed_schema_run_with_psql_gives_the_same_least_privilege(trail):
    printed = run_subprocess(["gateway", "audit-schema", "--store", trail.dsn(trail.gateway_role, with_password=False)], _env())
    assert printed.code == 0, printed.err
    assert f'GRANT SELECT, INSERT ON hoop_audit TO "{trail.gateway_role}"' in printed.out
    psql = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", trail.dsn(trail.admin, with_password=False)],
        input=printed.out, capture_output=True, text=True, timeout=30, env=_env(PGPASSWORD=trail.admin_password),
    )
    assert psql.returncode == 0, psql.stderr
    assert trail.table_owner() == trail.admin
    with trail.as_gateway() as conn:
        conn.execute("INSERT INTO hoop_audit (seq, ts, kind, prev_hash, hash) VALUES (1, 't', 'connect', 'p', 'h')")
    _assert_gateway_role_cannot_rewrite(trail)


# ---- a real gateway on that store ------------------------------------------------------------------


def _launch(config_text: str, workdir: Path, *extra: str) -> tuple[subprocess.Popen, dict]:
    """Start `hoop gateway --json`; its first line: the ready event, or the error that stopped it."""
    config = workdir / "gateway.toml"
    config.write_text(config_text)
    with open(workdir / "gateway.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hoopcli", "gateway", "--config", str(config), "--dev-tls", str(workdir / "tls"), "--json", *extra],
            cwd=workdir, env=_env(), stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    line = _read_line(proc, 30)
    return proc, (json.loads(line) if line.startswith("{") else {})


def _stop(proc: subprocess.Popen, refused: bool = False) -> str:
    """SIGTERM (unless it `refused` to start and exits by itself), wait; what it wrote to
    stdout after its first line."""
    if proc.poll() is None and not refused:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    return proc.stdout.read().decode(errors="replace")


def _config(oidc_provider, pg_server, workdir: Path, store_url: str) -> str:
    text = gateway_config(oidc_provider.issuer, pg_server.port, None, workdir)
    assert 'audit_store = "audit.db"' in text
    return text.replace('audit_store = "audit.db"', f'audit_store = "{store_url}"')


def _output(workdir: Path, *more: str) -> str:
    return (workdir / "gateway.log").read_text(errors="replace") + "".join(more)


def test_a_strict_gateway_records_through_a_role_with_insert_and_select_only(trail, oidc_provider, pg_server, tokens, tmp_path):
    assert _init(trail).code == 0
    store_url = trail.dsn(trail.gateway_role)  # the password in the URL, as gateway.toml may hold it
    proc, event = _launch(_config(oidc_provider, pg_server, tmp_path, store_url), tmp_path, "--strict")
    try:
        assert event.get("event") == "listening", _output(tmp_path, json.dumps(event))
        assert event["audit_warnings"] == []
        assert event["audit_store"] == store_url.replace(trail.gateway_password, "***")
        assert event["audit_store"].startswith(f"postgresql://{trail.gateway_role}:***@")
        home = tmp_path / "home"
        home.mkdir()
        env = subprocess_env(home, HOOP_TOKEN=tokens("alice"), HOOP_GATEWAY=event["url"], HOOP_CA_FILE=event["ca_file"], PGPASSWORD=pg_server.app_password)
        ran = run_subprocess(["exec", "app-db", "--", "psql", "-X", "-q", "-c", "select 'least-privilege-check'"], env)
        assert ran.code == 0, ran.err
    finally:
        rest = _stop(proc)
    with trail.as_admin() as conn:
        recorded = conn.execute("SELECT count(*) FROM hoop_audit WHERE statement = 'select ''least-privilege-check'''").fetchone()[0]
    assert recorded == 1
    _assert_gateway_role_cannot_rewrite(trail)
    assert trail.gateway_password not in _output(tmp_path, rest, json.dumps(event))


def test_a_gateway_that_would_own_its_trail_is_warned_and_refused_with_strict(trail, oidc_provider, pg_server, tmp_path):
    """No admin step: the gateway's role would create, and so own, the table."""
    with trail.as_admin() as conn:  # what an admin who skipped init might grant: CREATE in the schema
        conn.execute(f'GRANT CREATE ON SCHEMA public TO "{trail.gateway_role}"')
    store_url = trail.dsn(trail.gateway_role)
    strict_dir, plain_dir = tmp_path / "strict", tmp_path / "plain"
    strict_dir.mkdir()
    plain_dir.mkdir()
    proc, refused = _launch(_config(oidc_provider, pg_server, strict_dir, store_url), strict_dir, "--strict")
    rest = _stop(proc, refused=True)
    assert proc.returncode == 8 and refused["exit_code"] == 8, refused
    assert refused["error"].startswith("--strict: the gateway could rewrite its own audit trail: there is no audit table yet")
    assert "hoop gateway init --admin-dsn" in refused["hint"]
    assert trail.table_owner() is None  # refused before creating anything

    proc, event = _launch(_config(oidc_provider, pg_server, plain_dir, store_url), plain_dir)
    try:
        assert event.get("event") == "listening", _output(plain_dir, json.dumps(event))
        assert any("no audit table yet" in w for w in event["audit_warnings"])
    finally:
        rest = _stop(proc)
    assert "warning: there is no audit table yet" in _output(plain_dir)
    assert trail.table_owner() == trail.gateway_role
    assert check_trail(store_url)[1][0].startswith(f"role {trail.gateway_role} owns table hoop_audit")
    for workdir, more in ((strict_dir, json.dumps(refused)), (plain_dir, rest + json.dumps(event))):
        assert trail.gateway_password not in _output(workdir, more)


def test_an_unreachable_store_is_named_without_its_password(trail, oidc_provider, pg_server, tmp_path):
    password = "pw-%zz-" + secrets.token_urlsafe(8)  # a bad percent-encoding: libpq quotes it back
    store_url = f"postgresql://{trail.gateway_role}:{password}@127.0.0.1:{pg_server.port}/{trail.db}"
    proc, failed = _launch(_config(oidc_provider, pg_server, tmp_path, store_url), tmp_path)
    rest = _stop(proc, refused=True)
    assert proc.returncode == 6 and failed["event"] == "error", failed
    out = _output(tmp_path, rest, json.dumps(failed))
    assert failed["error"].startswith(f"cannot open the audit store postgresql://{trail.gateway_role}:")
    assert "invalid percent-encoded token" in out  # libpq's reason is kept…
    assert password not in out and password.replace("%zz", "") not in out  # …without the password


def test_the_stores_own_errors_carry_no_password(trail):
    """The writer process logs the store's errors without the CLI's redaction: the store
    scrubs them itself (libpq quotes a bad percent-encoding, password and all)."""
    password = "pw-%zz-" + secrets.token_urlsafe(8)
    with pytest.raises(psycopg.ProgrammingError) as caught:
        PostgresStore(f"postgresql://{trail.gateway_role}:{password}@127.0.0.1:1/{trail.db}")
    assert "invalid percent-encoded token" in str(caught.value)
    assert password not in str(caught.value) and "***" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
