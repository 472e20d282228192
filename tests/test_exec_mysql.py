"""`hoop exec` with the real `mariadb` client through the gateway to a throw-away MariaDB with
password auth: statements recorded with the same fields as PostgreSQL, and the same gating."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.support.cli import run_subprocess


@pytest.fixture(scope="module")
def mysql_tables(mariadb_server):
    mariadb_server.sql("CREATE TABLE IF NOT EXISTS app.items (id int primary key, name varchar(20)); "
                       "INSERT IGNORE INTO app.items VALUES (1,'a'),(2,'b'),(3,'c'); "
                       "CREATE TABLE IF NOT EXISTS app.scratch (id int)")
    return mariadb_server


@pytest.fixture
def alice_my(as_user, mysql_tables):
    # The "none" broker: the person's own password, in the environment only.
    return as_user("alice", MYSQL_PWD=mysql_tables.app_password)


def _mariadb(env, sql):
    return run_subprocess(["exec", "app-mysql", "--", "mariadb", "--batch", "--skip-column-names", "-e", sql], env)


def test_mariadb_statements_recorded_under_identity(gateway, alice_my):
    result = _mariadb(alice_my, "select 'my-1', current_user(); select count(*) from items")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("my-1\tapp_user@") and lines[1] == "3"
    recs = [r for r in gateway.records(kind="statement", sub="alice") if r["connection"] == "app-mysql"]
    texts = [r["statement"] for r in recs]
    assert "select 'my-1', current_user()" in texts or any("my-1" in t for t in texts)
    rec = [r for r in recs if "my-1" in r["statement"]][0]
    assert rec["outcome"] == "ok" and rec["db_user"] == "app_user" and rec["database"] == "app"
    assert rec["email"] == "alice@example.com"


def test_mariadb_error_is_recorded_and_exit_code_passed(gateway, alice_my):
    result = _mariadb(alice_my, "select nosuchcol_my2 from items")
    assert result.code == 1 and "Unknown column" in result.err
    [rec] = [r for r in gateway.records(kind="statement", sub="alice") if "nosuchcol_my2" in (r["statement"] or "")]
    assert rec["outcome"] == "error" and rec["code"].startswith("1054")


def test_mariadb_drop_is_held_then_approved(gateway, as_user, alice_my, mysql_tables):
    held = _mariadb(alice_my, "DROP TABLE scratch")
    assert held.code != 0
    request_id = re.search(r"request ([0-9a-f]{8})", held.err).group(1)
    assert "scratch" in mysql_tables.sql("SHOW TABLES FROM app")
    approved = run_subprocess(["approvals", "approve", request_id, "--reason", "my cleanup", "--json"], as_user("carol"))
    assert approved.code == 0, approved.err
    rerun = _mariadb(alice_my, "DROP TABLE scratch")
    assert rerun.code == 0, rerun.err
    assert "scratch" not in mysql_tables.sql("SHOW TABLES FROM app").split()


def test_mariadb_default_client_gets_user_and_database(gateway, alice_my):
    import subprocess

    from tests.support.cli import HOOP

    proc = subprocess.run(HOOP + ["exec", "app-mysql"], env=alice_my, input="select database(), 'my-4';\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "app\tmy-4" in proc.stdout


def test_exec_c_json_with_mariadb(gateway, alice_my):
    result = run_subprocess(["exec", "app-mysql", "-c", "select id from items order by id", "--json"], alice_my)
    assert result.code == 0, result.err
    data = json.loads(result.out.splitlines()[-1])
    assert data["output"].split() == ["id", "1", "2", "3"]


def test_character_sets_that_could_fool_the_policy_are_refused(gateway, alice_my):
    since = time.time()
    at_login = run_subprocess(["exec", "app-mysql", "--", "mariadb", "--default-character-set=gbk", "-e", "select 1"], alice_my)
    assert at_login.code != 0
    switched = _mariadb(alice_my, "SET NAMES gbk")
    assert switched.code != 0 and "character set is not supported" in switched.err
    assert _mariadb(alice_my, "SET NAMES utf8mb4; select 'still-fine'").out.strip() == "still-fine"
    ends = gateway.records(kind="session_end", sub="alice", connection="app-mysql", since=since, ended=True)
    ends = [r for r in ends if "collation" in (r["message"] or "")]
    assert ends and ends[-1]["outcome"] == "error"
