"""Risky statements held for approval with the real psql through `hoop exec` (issue 6):
DROP is held and the table survives; an approver approves; the re-run passes once;
self-approval is refused; tricks in multi-statement strings and comments are still caught."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.cli import run_subprocess


@pytest.fixture(scope="module")
def scratch_table(pg_server):
    pg_server.sql("CREATE TABLE IF NOT EXISTS gate_scratch (id int)", dbname="app")
    pg_server.sql("GRANT ALL ON gate_scratch TO app_user", dbname="app")
    pg_server.sql("ALTER TABLE gate_scratch OWNER TO app_user", dbname="app")
    return "gate_scratch"


def _psql(env, sql):
    return run_subprocess(["exec", "gated-db", "--", "psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql], env)


def _table_exists(pg_server, name) -> bool:
    return bool(pg_server.sql(f"select to_regclass('public.{name}') is not null", dbname="app")[0][0])


def test_drop_is_held_approved_by_an_approver_and_passes_once(gateway, as_user, pg_server, scratch_table):
    alice = as_user("alice", PGPASSWORD=pg_server.app_password)
    carol = as_user("carol")
    held = _psql(alice, f"DROP TABLE {scratch_table}")
    assert held.code != 0
    match = re.search(r"request ([0-9a-f]{8})", held.err)
    assert match, held.err
    request_id = match.group(1)
    assert f"hoop approvals approve {request_id}" in held.err
    assert _table_exists(pg_server, scratch_table)

    # The session stays usable after a held statement: the next statement in it runs.
    multi = run_subprocess(["exec", "gated-db", "--", "psql", "-X", "-A", "-t", "-c", f"DROP TABLE {scratch_table}", "-c", "select 'still-usable'"], alice)
    assert "still-usable" in multi.out

    not_an_approver = run_subprocess(["approvals", "approve", request_id, "--reason", "me"], alice)
    assert not_an_approver.code == 4

    listing = run_subprocess(["approvals", "list", "--json", "--status", "pending"], carol)
    assert request_id in {a["id"] for a in json.loads(listing.out)["approvals"]}
    approved = run_subprocess(["approvals", "approve", request_id, "--reason", "cleanup ticket 42", "--json"], carol)
    assert approved.code == 0, approved.err
    assert json.loads(approved.out)["status"] == "approved"

    rerun = _psql(alice, f"DROP TABLE {scratch_table}")
    assert rerun.code == 0, rerun.err
    assert not _table_exists(pg_server, scratch_table)

    trail = [r for r in gateway.records() if r["statement"] == f"DROP TABLE {scratch_table}"]
    kinds = [(r["kind"], r["outcome"]) for r in trail]
    assert ("statement", "held") in kinds
    assert ("approval_request", "pending") in kinds
    decision = [r for r in trail if r["kind"] == "approval_decision" and r["outcome"] == "approved"][0]
    assert decision["sub"] == "carol" and decision["message"] == "cleanup ticket 42"
    assert decision["details"]["requester"] == "alice"
    assert ("statement", "ok") in kinds


def test_routine_statements_pass_untouched(gateway, as_user, pg_server):
    alice = as_user("alice", PGPASSWORD=pg_server.app_password)
    result = _psql(alice, "select count(*) from orders where id > 0")
    assert result.code == 0 and result.out.strip() == "4"


@pytest.fixture(scope="module")
def victim(pg_server):
    """A table app_user owns, with no foreign key pointing at it: every statement below would
    really drop, truncate or empty it if the gateway forwarded it."""
    pg_server.sql("CREATE TABLE IF NOT EXISTS gate_victim (id int)", dbname="app")
    pg_server.sql("ALTER TABLE gate_victim OWNER TO app_user", dbname="app")
    return "gate_victim"


@pytest.mark.parametrize(
    "sql",
    [
        "select 1; DROP TABLE {t}",
        "select 1 /* ; */ ; drop table {t}",
        "/* harmless */ TRUNCATE {t}",
        "WITH d AS (DELETE FROM {t} RETURNING *) SELECT count(*) FROM d",
        "delete from {t}",
        "delete from {t} where id = id",
    ],
)
def test_hidden_risky_statements_are_still_held(gateway, as_user, pg_server, victim, sql):
    pg_server.sql(f"TRUNCATE {victim}; INSERT INTO {victim} VALUES (1), (2), (3)", dbname="app")
    owner = pg_server.sql(f"select tableowner from pg_tables where tablename = '{victim}'", dbname="app")[0][0]
    assert owner == "app_user"  # so the role could do it: only the gateway stands in the way
    alice = as_user("alice", PGPASSWORD=pg_server.app_password)
    result = _psql(alice, sql.format(t=victim))
    assert result.code != 0 and "held for approval" in result.err, (sql, result)
    assert pg_server.sql(f"select count(*) from {victim}", dbname="app")[0][0] == 3


def test_copy_program_is_denied(gateway, as_user, pg_server):
    alice = as_user("alice", PGPASSWORD=pg_server.app_password)
    result = _psql(alice, "COPY customers TO PROGRAM 'cat > /tmp/x'")
    assert result.code != 0 and "denied by policy" in result.err


def test_non_approver_cannot_approve(gateway, as_user, pg_server):
    alice = as_user("alice", PGPASSWORD=pg_server.app_password)
    held = _psql(alice, "TRUNCATE orders")
    request_id = re.search(r"request ([0-9a-f]{8})", held.err).group(1)
    bob = run_subprocess(["approvals", "approve", request_id], as_user("bob"))
    assert bob.code == 4
    denied = run_subprocess(["approvals", "deny", request_id, "--reason", "no", "--json"], as_user("carol"))
    assert json.loads(denied.out)["status"] == "denied"


def test_self_approval_is_refused_even_for_an_approver(gateway, as_user, pg_server, victim):
    carol = as_user("carol", PGPASSWORD=pg_server.app_password)  # in "approvers", allowed on gated-db
    held = _psql(carol, f"DROP TABLE {victim}")
    request_id = re.search(r"request ([0-9a-f]{8})", held.err).group(1)
    result = run_subprocess(["approvals", "approve", request_id], carol)
    assert result.code == 4 and "own" in result.err
    assert _psql(carol, f"DROP TABLE {victim}").code != 0  # still held: no grant came of it
    assert _table_exists(pg_server, victim)


def test_new_requests_reach_the_approval_webhook(gateway, as_user, pg_server, approval_hook):
    import time

    alice = as_user("alice", PGPASSWORD=pg_server.app_password)
    held = _psql(alice, "ALTER TABLE customers ADD COLUMN webhook_probe int")
    request_id = re.search(r"request ([0-9a-f]{8})", held.err).group(1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(e.get("id") == request_id for e in approval_hook.received):
        time.sleep(0.1)
    [event] = [e for e in approval_hook.received if e.get("id") == request_id]
    assert event["event"] == "approval_request" and event["sub"] == "alice"
    assert event["statement"] == "ALTER TABLE customers ADD COLUMN webhook_probe int"


def test_exec_c_gives_distinct_exit_codes_for_held_and_denied(gateway, as_user, pg_server):
    alice = as_user("alice", PGPASSWORD=pg_server.app_password)
    held = run_subprocess(["exec", "gated-db", "-c", "TRUNCATE customers"], alice)
    assert held.code == 5 and "held for approval" in held.err  # README: 5 = approval pending
    denied = run_subprocess(["exec", "gated-db", "-c", "COPY customers TO PROGRAM 'true'", "--json"], alice)
    assert denied.code == 4
    assert json.loads(denied.out)["exit_code"] == 4
    fine = run_subprocess(["exec", "gated-db", "-c", "select 'not-gated'"], alice)
    assert fine.code == 0 and "not-gated" in fine.out
    failed = run_subprocess(["exec", "gated-db", "-c", "select no_such_column"], alice)
    assert failed.code == 1  # an ordinary SQL error keeps psql's own code
