"""Passwords inside SQL never reach the audit trail."""

import pytest

from hoopcli.gateway.audit.masking import mask_sql_secrets


@pytest.mark.parametrize(
    "sql, secret",
    [
        ("ALTER ROLE app PASSWORD 's3cr3t-1'", "s3cr3t-1"),
        ("create user bob with encrypted password 'it''s-2'", "it''s-2"),
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
    assert "[REDACTED]" in masked


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
    import glob

    for path in glob.glob(gateway.audit_store + "*") + [gateway.jsonl]:  # the db, its WAL, the export
        assert b"canary-masked-77" not in open(path, "rb").read(), path
