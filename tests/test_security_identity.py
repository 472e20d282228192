"""Identity per issuer (issue 28, section 1): a subject is (issuer, sub), and groups come only
through the issuer's `grants`, in every decision (connection access, policy rules, approvals)
and every record.

The gateway here trusts three issuers:
  A  the test OpenID provider (real device-flow tokens), first, so it grants every group;
     alice (dba, developers), bob (developers), carol (approvers, auditors)
  B  an issuer whose key the test holds, `grants = ["developers"]`: tokens for any `sub` with
     any claimed groups, of which only "developers" counts
  C  another held-key issuer, `grants = ["approvers"]`: a machine issuer let to approve
Every refusal below has a positive control that differs in the one thing the test is about.
"""

from __future__ import annotations

import contextlib
import logging
import re

import pytest
import requests

from hoopcli.gateway.identity import Principal, TrustedIssuer, granted_groups, parse_principal
from tests.support.gateway import start_gateway
from tests.support.jwks_issuer import start_jwks_issuer

PG_TABLE = "ident_twin"  # owned by app_user, in both databases: a DROP would really drop it
OTHER_DB = "ident_other"


@pytest.fixture(scope="module")
def issuer_b():
    with start_jwks_issuer() as iss:
        yield iss


@pytest.fixture(scope="module")
def issuer_c():
    with start_jwks_issuer() as iss:
        yield iss


@pytest.fixture(scope="module")
def ident_gateway(oidc_provider, issuer_b, issuer_c, pg_server, tmp_path_factory):
    port = pg_server.port
    config = f"""
[gateway]
listen = "127.0.0.1:0"
audit_store = "audit.db"

[gateway.approvals]
approver_groups = ["approvers"]

[[issuers]]
issuer = "{oidc_provider.issuer}"
audiences = ["hoop-cli"]

[[issuers]]
issuer = "{issuer_b.url}"
audiences = ["hoop-cli"]
grants = ["developers"]

[[issuers]]
issuer = "{issuer_c.url}"
audiences = ["hoop-cli"]
grants = ["approvers"]

[connections.held-db]
protocol = "postgres"
target = "127.0.0.1:{port}"
groups = ["developers"]
database = "app"
policy = "default"

[connections.any-db]
protocol = "postgres"
target = "127.0.0.1:{port}"
groups = ["developers"]
policy = "default"

[connections.lead-db]
protocol = "postgres"
target = "127.0.0.1:{port}"
groups = ["developers"]
database = "app"
policy = "default"
approver_groups = ["auditors"]

[connections.named-db]
protocol = "postgres"
target = "127.0.0.1:{port}"
subjects = ["carol", "{issuer_b.url}|svc-deploy"]
database = "app"
"""
    with start_gateway(config, tmp_path_factory.mktemp("ident-gateway")) as gw:
        yield gw


@pytest.fixture(scope="module")
def twin_tables(pg_server):
    """PG_TABLE in `app` and in OTHER_DB, both owned by app_user (who could drop them)."""
    if not pg_server.database_exists(OTHER_DB):
        pg_server.sql(f"CREATE DATABASE {OTHER_DB} OWNER app_user")
    for db in ("app", OTHER_DB):
        pg_server.sql(f"CREATE TABLE IF NOT EXISTS {PG_TABLE} (id int)", dbname=db)
        pg_server.sql(f"ALTER TABLE {PG_TABLE} OWNER TO app_user", dbname=db)


def table_exists(pg_server, db: str, name: str = PG_TABLE) -> bool:
    return bool(pg_server.sql(f"select to_regclass('public.{name}') is not null", dbname=db)[0][0])


@contextlib.contextmanager
def tunnel(gw, connection: str, port: int, token: str):
    from hoopcli.tunnel import Tunnel, TunnelThread

    thread = TunnelThread(Tunnel(gw.url, connection, port, lambda: token, ca_file=gw.ca_file))
    local = thread.start()
    try:
        yield local
    finally:
        thread.stop()


def run_sql(gw, pg_server, connection: str, token: str, sql: str, dbname: str = "app") -> str | None:
    """Run `sql` as app_user through the gateway; None when it ran, else the server's message."""
    import psycopg

    with tunnel(gw, connection, pg_server.port, token) as local:
        with psycopg.connect(host="127.0.0.1", port=local, user="app_user", password=pg_server.app_password,
                             dbname=dbname, autocommit=True, connect_timeout=10) as conn:
            try:
                conn.execute(sql)
            except psycopg.Error as exc:
                return str(exc)
    return None


def request_id_of(message: str | None) -> str:
    match = re.search(r"held for approval \(request ([0-9a-f]{8})\)", message or "")
    assert match, message
    return match.group(1)


def api(gw, method: str, path: str, token: str, **body) -> requests.Response:
    return requests.request(method, gw.url + path, headers={"Authorization": f"Bearer {token}"},
                            json=body or None, verify=gw.ca_file, timeout=10)


def wait_records(gw, predicate) -> list[dict]:
    """Records matching `predicate`, once the store holds everything the gateway had submitted
    (a barrier, tests/support/gateway.py), so the exact counts below are complete."""
    return [r for r in gw.records() if predicate(r)]


def connect_status(gw, target: str, token: str) -> int:
    """The status of one CONNECT; a 200 tunnel is closed once its head is read."""
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=gw.ca_file)
    answer = b""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Bearer {token}\r\n\r\n".encode())
            while b"\r\n\r\n" not in answer:
                data = tls.recv(65536)
                if not data:
                    break
                answer += data
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


# ---- approvals across issuers (through the real gateway) --------------------------------------


def test_another_issuers_same_sub_or_claimed_group_cannot_approve_see_or_use(
    ident_gateway, tokens, issuer_b, oidc_provider, pg_server, twin_tables
):
    gw, drop = ident_gateway, f"DROP TABLE {PG_TABLE}"
    request_id = request_id_of(run_sql(gw, pg_server, "held-db", tokens("alice"), drop))
    assert table_exists(pg_server, "app")

    # carol at B (same sub as the approver, no groups) and a B token claiming the approver and
    # auditor groups: neither may approve, and the request stays pending.
    carol_b = issuer_b.token(sub="carol")
    claimer_b = issuer_b.token(sub="ci-bot", groups=["approvers", "auditors", "developers"])
    for token in (carol_b, claimer_b):
        answer = api(gw, "POST", f"/api/approvals/{request_id}/approve", token)
        assert answer.status_code == 403, answer.text
    assert api(gw, "GET", "/api/audit", claimer_b).status_code == 403  # no auditor right minted either
    assert api(gw, "GET", "/api/whoami", claimer_b).json()["groups"] == ["developers"]

    # alice at B (a developer there) neither sees alice-at-A's request nor may decide it.
    alice_b = issuer_b.token(sub="alice", groups=["developers"])
    listed = api(gw, "GET", "/api/approvals", alice_b).json()["approvals"]
    assert request_id not in {r["id"] for r in listed}
    assert api(gw, "POST", f"/api/approvals/{request_id}/deny", alice_b).status_code == 403
    assert request_id in {r["id"] for r in api(gw, "GET", "/api/approvals", tokens("alice")).json()["approvals"]}

    # carol at A approves (the positive control); alice at B running the same text is held on
    # a request of her own, the table still there; then alice at A's grant runs it.
    approved = api(gw, "POST", f"/api/approvals/{request_id}/approve", tokens("carol"), reason="ok")
    assert approved.status_code == 200 and approved.json()["status"] == "approved", approved.text
    other = request_id_of(run_sql(gw, pg_server, "held-db", alice_b, drop))
    assert other != request_id and table_exists(pg_server, "app")
    assert run_sql(gw, pg_server, "held-db", tokens("alice"), drop) is None
    assert not table_exists(pg_server, "app")

    # The trail names each one by sub and issuer.
    issuer_a = oidc_provider.issuer.rstrip("/")
    [asked] = wait_records(gw, lambda r: r["kind"] == "approval_request" and r["details"]["request_id"] == request_id)
    assert (asked["sub"], asked["issuer"], asked["database"]) == ("alice", issuer_a, "app")
    [decided] = wait_records(gw, lambda r: r["kind"] == "approval_decision" and r["outcome"] == "approved"
                             and r["details"]["request_id"] == request_id)
    assert (decided["sub"], decided["issuer"], decided["details"]["requester_issuer"]) == ("carol", issuer_a, issuer_a)
    refusals = wait_records(gw, lambda r: r["kind"] == "api" and r["code"] == "403" and request_id in (r["message"] or ""))
    assert {(r["sub"], r["issuer"]) for r in refusals} == {("carol", issuer_b.url), ("ci-bot", issuer_b.url), ("alice", issuer_b.url)}
    [theirs] = wait_records(gw, lambda r: r["kind"] == "approval_request" and r["details"]["request_id"] == other)
    assert (theirs["sub"], theirs["issuer"]) == ("alice", issuer_b.url)


def test_a_grant_runs_only_in_the_database_it_was_requested_for(ident_gateway, tokens, pg_server, twin_tables):
    """any-db is not pinned: the session's database comes from the start-up packet."""
    gw, drop, alice = ident_gateway, f"DROP TABLE IF EXISTS {PG_TABLE}", tokens("alice")
    pg_server.sql(f"CREATE TABLE IF NOT EXISTS {PG_TABLE} (id int)", dbname="app")
    pg_server.sql(f"ALTER TABLE {PG_TABLE} OWNER TO app_user", dbname="app")
    request_id = request_id_of(run_sql(gw, pg_server, "any-db", alice, drop, dbname=OTHER_DB))
    assert api(gw, "POST", f"/api/approvals/{request_id}/approve", tokens("carol")).status_code == 200

    elsewhere = run_sql(gw, pg_server, "any-db", alice, drop, dbname="app")
    assert request_id_of(elsewhere) != request_id  # held again, on a request for app
    assert table_exists(pg_server, "app")
    assert run_sql(gw, pg_server, "any-db", alice, drop, dbname=OTHER_DB) is None  # where it was granted
    assert not table_exists(pg_server, OTHER_DB) and table_exists(pg_server, "app")
    listed = {r["id"]: r for r in api(gw, "GET", "/api/approvals", alice).json()["approvals"]}
    assert listed[request_id]["database"] == OTHER_DB and listed[request_id]["status"] == "used"


def test_per_connection_approvers_decide_without_the_right_to_connect(
    ident_gateway, tokens, issuer_c, pg_server, twin_tables
):
    """lead-db is approved by auditors only; carol (an auditor, not a developer) approves its
    requests yet may not open it. C's granted approver decides held-db, not lead-db."""
    gw = ident_gateway
    pg_server.sql("CREATE TABLE IF NOT EXISTS ident_lead (id int)", dbname="app")
    pg_server.sql("ALTER TABLE ident_lead OWNER TO app_user", dbname="app")
    approver_c = issuer_c.token(sub="release-bot", groups=["approvers"])
    lead = request_id_of(run_sql(gw, pg_server, "lead-db", tokens("bob"), "DROP TABLE ident_lead"))
    held = request_id_of(run_sql(gw, pg_server, "held-db", tokens("bob"), "DROP TABLE ident_lead"))

    assert api(gw, "POST", f"/api/approvals/{lead}/approve", approver_c).status_code == 403
    assert api(gw, "POST", f"/api/approvals/{held}/deny", approver_c).status_code == 200  # grants = ["approvers"]
    assert api(gw, "POST", f"/api/approvals/{lead}/approve", tokens("carol")).status_code == 200
    assert connect_status(gw, f"lead-db:{pg_server.port}", tokens("carol")) == 403
    assert connect_status(gw, f"lead-db:{pg_server.port}", tokens("bob")) == 200
    seen_by_c = {r["id"] for r in api(gw, "GET", "/api/approvals", approver_c).json()["approvals"]}
    assert held in seen_by_c and lead not in seen_by_c


def test_subjects_name_their_issuer(ident_gateway, tokens, issuer_b, pg_server):
    """named-db: subjects = ["carol", "<B>|svc-deploy"]: bare means the first issuer's."""
    gw, target = ident_gateway, f"named-db:{pg_server.port}"
    assert connect_status(gw, target, tokens("carol")) == 200
    assert connect_status(gw, target, issuer_b.token(sub="carol")) == 403
    assert connect_status(gw, target, issuer_b.token(sub="svc-deploy")) == 200
    assert connect_status(gw, target, tokens("svc-deploy")) == 403


def test_a_second_issuers_groups_open_only_what_it_grants(ident_gateway, issuer_b, pg_server):
    """B grants developers: held-db (developers) opens; a claimed dba opens nothing more."""
    gw = ident_gateway
    assert connect_status(gw, f"held-db:{pg_server.port}", issuer_b.token(sub="dev", groups=["developers"])) == 200
    assert connect_status(gw, f"held-db:{pg_server.port}", issuer_b.token(sub="dev", groups=["dba"])) == 403


def test_whoami_shows_the_issuer(tokens, oidc_provider, tmp_path):
    import json

    from tests.support.cli import run_subprocess, subprocess_env

    who = run_subprocess(["whoami", "--json"], subprocess_env(tmp_path, HOOP_TOKEN=tokens("alice")))
    assert who.code == 0, who.err
    assert json.loads(who.out)["issuer"].rstrip("/") == oidc_provider.issuer.rstrip("/")


# ---- the pieces, without a gateway ------------------------------------------------------------

A, B = "https://idp.example", "https://ci.example"


def test_grants_drop_what_the_issuer_may_not_grant_and_log_it(caplog):
    ci = TrustedIssuer(issuer=B, audiences=("hoop-cli",), grants=frozenset({"ci"}))
    with caplog.at_level(logging.DEBUG, logger="hoopcli.gateway.identity"):
        assert granted_groups(ci, "bot", ["approvers", "ci", "auditors"]) == ("ci",)
    assert "approvers" in caplog.text and "auditors" in caplog.text and B in caplog.text
    assert granted_groups(ci, "bot", "approvers") == ()  # a single string claim too
    everything = TrustedIssuer(issuer=A, audiences=("hoop-cli",), grants=None)
    assert granted_groups(everything, "alice", ["dba", "approvers"]) == ("dba", "approvers")
    assert granted_groups(everything, "alice", {"approvers": True}) == ()  # not a list: nothing


def test_settings_grant_all_for_the_first_issuer_and_nothing_for_the_others():
    from hoopcli.gateway.settings import settings_from_dict

    entries = [{"issuer": A, "audiences": ["hoop-cli"]}, {"issuer": B, "audiences": ["hoop-cli"]},
               {"issuer": "https://m.example", "audiences": ["x"], "grants": ["ci"]}]
    first, second, third = settings_from_dict({"issuers": entries}).issuers
    assert (first.grants, second.grants, third.grants) == (None, frozenset(), frozenset({"ci"}))
    with pytest.raises(ValueError, match=r"issuers\[1\].grants"):
        settings_from_dict({"issuers": [entries[0], {**entries[1], "grants": "approvers"}]})
    with pytest.raises(ValueError, match="listed twice"):
        settings_from_dict({"issuers": [entries[0], entries[0]]})
    with pytest.raises(ValueError, match='may not contain "\\|"'):
        settings_from_dict({"issuers": [{"issuer": "https://idp.example/a|b", "audiences": ["x"]}]})


def test_config_subjects_resolve_to_principals():
    issuers = [A, B]
    assert parse_principal("alice", issuers) == Principal(A, "alice")
    assert parse_principal(f"{B}|alice", issuers) == Principal(B, "alice")
    assert parse_principal(f"{B}/|repo:org/app:ref:main", issuers) == Principal(B, "repo:org/app:ref:main")
    assert parse_principal("auth0|123", issuers) == Principal(A, "auth0|123")  # a bare sub with a bar
    with pytest.raises(ValueError, match="not one of the"):
        parse_principal("https://typo.example|alice", issuers)
    from hoopcli.gateway.settings import settings_from_dict

    conn = {"protocol": "postgres", "target": "127.0.0.1:5432", "subjects": ["https://nope.example|x"]}
    with pytest.raises(ValueError, match="connections.c: subjects"):
        settings_from_dict({"issuers": [{"issuer": A, "audiences": ["x"]}], "connections": {"c": conn}})


def test_policy_rule_subjects_are_per_issuer():
    from hoopcli.gateway.policy import Policy

    config = {"rules": [{"match": ["drop"], "action": "allow", "subjects": ["bob", f"{B}|deployer"]},
                        {"match": ["drop"], "action": "deny"}]}
    policy = Policy.from_config(config, subject=lambda s: parse_principal(s, [A, B]))
    decide = lambda who: policy.decide("DROP TABLE t", (who, frozenset()), "postgres").action  # noqa: E731
    assert decide(Principal(A, "bob")) == "allow"
    assert decide(Principal(B, "bob")) == "deny"
    assert decide(Principal(B, "deployer")) == "allow"
    assert decide(Principal(A, "deployer")) == "deny"
    with pytest.raises(ValueError, match=r"rules\[0\].subjects"):
        Policy.from_config({"rules": [{"match": ["drop"], "action": "allow", "subjects": ["https://x.example|a"]}]},
                           subject=lambda s: parse_principal(s, [A]))


def test_book_keys_requests_and_decisions_by_issuer_and_sub():
    from hoopcli.gateway.approvals import ApprovalBook

    book = ApprovalBook({"approvers"}, connection_approvers={"lead-db": {"auditors"}})
    alice_a, alice_b = Principal(A, "alice"), Principal(B, "alice")
    mine = book.request(alice_a, "db", "DROP TABLE t", database="app")
    with pytest.raises(PermissionError, match="their own"):
        book.approve(mine.id, alice_a, ["approvers"])
    approved = book.approve(mine.id, alice_b, ["approvers"])  # someone else, who holds the group
    assert (approved.decided_by, approved.decided_by_issuer) == ("alice", B)
    assert book.consume(alice_b, "db", "DROP TABLE t", database="app") is None
    assert book.consume(alice_a, "db", "DROP TABLE t", database="other") is None
    assert book.consume(alice_a, "db", "DROP TABLE t", database="app").id == mine.id
    lead = book.request(alice_a, "lead-db", "DROP TABLE t", database="app")
    with pytest.raises(PermissionError, match="auditors"):
        book.approve(lead.id, alice_b, ["approvers"])
    assert [r.id for r in book.page(viewer=(alice_b, ["approvers"]))[0]] == [mine.id]


def test_an_unpinned_mysql_session_that_switched_databases_gets_no_approval():
    """After USE on an unpinned connection the gateway cannot tell where the server is (the
    USE may have failed): nothing is approvable, and a grant for the old database stays unused."""
    from hoopcli.gateway.approvals import ApprovalBook
    from hoopcli.gateway.policy import Policy, make_gate
    from hoopcli.gateway.policy.gate import SessionDatabase

    book, alice = ApprovalBook({"approvers"}), Principal(A, "alice")
    session = SessionDatabase("app")
    gate = make_gate(Policy.from_config("default"), book, (alice, ()), "any-mysql", "mysql", session=session)
    held = gate("DROP TABLE t")
    assert held.action == "hold"
    book.approve(held.request_id, Principal(A, "carol"), ["approvers"])
    assert gate("USE `app`").action == "allow" and session.database == "app"  # the same one: known
    assert gate("USE scratch").action == "allow" and session.database is None
    refused = gate("DROP TABLE t")
    assert refused.action == "deny" and "database" in refused.message
    assert book.get(held.request_id).status == "approved"  # not spent in the wrong place
    session.database = "app"  # a new login (COM_CHANGE_USER) names it again
    assert gate("DROP TABLE t").request_id == held.request_id
