"""Passwords inside SQL never reach the audit trail."""

import pytest

from hoopcli.gateway.audit.masking import mask_sql_secrets


@pytest.mark.parametrize(
    "sql, secret",
    [
        ("ALTER ROLE app PASSWORD 's3cr3t-1'", "s3cr3t-1"),
        ("create user bob with encrypted password 'it''s-2'", "it''s-2"),
        ("CREATE USER bob UNENCRYPTED PASSWORD 'old-syntax-10'", "old-syntax-10"),
        ("CREATE ROLE x LOGIN PASSWORD $$dollar-3$$", "dollar-3"),
        ("ALTER USER x WITH PASSWORD $pw$tagged-4$pw$ VALID UNTIL 'infinity'", "tagged-4"),
        ("CREATE USER 'u'@'%' IDENTIFIED BY 'my-5'", "my-5"),
        ("ALTER USER u IDENTIFIED WITH mysql_native_password BY 'native-6'", "native-6"),
        ("SET PASSWORD FOR 'u'@'%' = PASSWORD('old-7')", "old-7"),
        ("SET PASSWORD = 'plain-8'", "plain-8"),
        ("GRANT ALL ON *.* TO 'u'@'%' IDENTIFIED BY 'esc\\'aped-9'", "aped-9"),
    ],
)
def test_passwords_are_masked(sql, secret):
    masked = mask_sql_secrets(sql)
    assert secret not in masked
    assert "'[REDACTED" in masked


@pytest.mark.parametrize(
    "sql",
    ["select * from users where password_hash = $1", "select 1", "update t set identified = true where id = 2"],
)
def test_ordinary_statements_are_untouched(sql):
    assert mask_sql_secrets(sql) == sql


def test_password_in_a_statement_never_reaches_the_trail(gateway, as_user, pg_server):
    from tests.support.cli import run_subprocess

    env = as_user("alice", PGPASSWORD=pg_server.app_password)
    # app_user may not alter other roles: the statement fails, and its text must still be masked.
    run_subprocess(["exec", "app-db", "--", "psql", "-X", "-c", "ALTER ROLE postgres PASSWORD 'canary-masked-77'"], env)
    records = [r for r in gateway.records(sub="alice") if "ALTER ROLE postgres" in (r["statement"] or "")]
    assert records and all("canary-masked-77" not in r["statement"] for r in records)
    for path in _trail_files(gateway):  # the db, its WAL and journal, the export
        assert b"canary-masked-77" not in open(path, "rb").read(), path


# ---- end to end: the trail, the export and the approvers' view ---------------------------------

import glob  # noqa: E402
import json
import secrets
import ssl
import time
import urllib.parse
import urllib.request

from tests.masking_spellings import PG_SPELLINGS, fragments


def _wait_for(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def _assert_nowhere(gateway, tag: str, secret: str, expected: int) -> list[dict]:
    """The records tagged `tag` reached the store and the JSONL export, and no form of the
    secret is in the store's files (database, WAL) or the export."""
    records = _wait_for(lambda: len(found := [r for r in gateway.records() if tag in (r.get("statement") or "")]) >= expected and found)
    _wait_for(lambda: open(gateway.jsonl, "rb").read().count(tag.encode()) >= expected)
    for path in _trail_files(gateway):
        data = open(path, "rb").read()
        for fragment in fragments(secret):
            assert fragment.encode() not in data, (path, fragment)
    return records


def _trail_files(gateway) -> list[str]:
    """The store, its WAL and journal (a directory of segments, when durability keeps one), and
    the JSONL export: every file the gateway writes a statement to."""
    import os

    found = [gateway.jsonl]
    for path in glob.glob(gateway.audit_store + "*"):
        if os.path.isdir(path):
            found += [os.path.join(d, f) for d, _, files in os.walk(path) for f in files]
        else:
            found.append(path)
    return found


def _approvals_seen_by(gateway, token: str) -> bytes:
    """Every page of the approvals list (it is paged: other tests leave requests pending too)."""
    ctx = ssl.create_default_context(cafile=gateway.ca_file)
    pages, cursor = [], ""
    for _ in range(100):  # bounded: at most 100 pages of 500
        query = "?limit=500" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        request = urllib.request.Request(gateway.url + "/api/approvals" + query, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, context=ctx, timeout=10) as answer:
            body = answer.read()
        pages.append(body)
        cursor = json.loads(body).get("next") or ""
        if not cursor:
            break
    return b"\n".join(pages)


def test_postgres_password_in_any_spelling_reaches_neither_trail_nor_export(gateway, as_user, pg_server):
    from tests.support.cli import run_subprocess

    secret, tag = f"Qz7{secrets.token_hex(6)}'\\$Wx4", f"tag{secrets.token_hex(4)}"
    env = as_user("alice", PGPASSWORD=pg_server.app_password)
    spellings = ["E", "E hex escapes", "U&", "U& UESCAPE", "dollar", "continued on the next line", "E continued"]
    argv = ["exec", "app-db", "--", "psql", "-X"]
    for name in spellings:  # app_user may not alter postgres: each fails, and is recorded
        argv += ["-c", f"/* {tag} */ ALTER ROLE postgres PASSWORD {PG_SPELLINGS[name](secret)}"]
    argv += ["-c", f"/* {tag} */ SELECT dblink_connect('host=db1 password=' || {PG_SPELLINGS['E'](secret)})"]
    result = run_subprocess(argv, env)
    assert "permission denied" in result.err or "must be superuser" in result.err, result.err
    records = _assert_nowhere(gateway, tag, secret, len(spellings) + 1)
    assert all("[REDACTED" in r["statement"] for r in records)


def test_held_statements_are_masked_for_approvers_and_webhooks(gateway, as_user, pg_server, mariadb_server, tokens, approval_hook):
    """On connections under the default policy a password change is held: the request the
    approvers list and the webhook receive are masked too; the MySQL form uses the mariadb client."""
    from tests.support.cli import run_subprocess

    secret, tag = f"Qz7{secrets.token_hex(6)}\\'Wx4", f"tag{secrets.token_hex(4)}"
    pg = run_subprocess(["exec", "gated-db", "--", "psql", "-X", "-c",
                         f"/* {tag} */ ALTER ROLE postgres PASSWORD {PG_SPELLINGS['E'](secret)}"],
                        as_user("alice", PGPASSWORD=pg_server.app_password))
    escaped = secret.replace("\\", "\\\\").replace("'", "\\'")
    my = run_subprocess(["exec", "app-mysql", "--", "mariadb", "--batch", "-e",
                         f"/* {tag} */ CREATE USER 'hoop_mask_{tag}'@'%' IDENTIFIED BY '{escaped}'; "
                         f"/* {tag} */ SET PASSWORD FOR 'nobody_{tag}'@'%' = PASSWORD(_utf8mb4 X'{secret.encode().hex()}')"],
                        as_user("alice", MYSQL_PWD=mariadb_server.app_password))
    assert pg.code != 0 and my.code != 0, (pg.err, my.err)  # held, or refused by the server: never run
    assert not mariadb_server.sql(f"SELECT user FROM mysql.user WHERE user = 'hoop_mask_{tag}'").strip()
    _assert_nowhere(gateway, tag, secret, 2)
    seen = _approvals_seen_by(gateway, tokens("carol"))
    hooks = json.dumps(approval_hook.received).encode()
    assert tag.encode() in seen, "the held statement is not in the approvers' list"
    for fragment in fragments(secret):
        assert fragment.encode() not in seen and fragment.encode() not in hooks, fragment
