"""The approval lifecycle (issue 30): the window counts from the approval; an undecided request
expires after `pending_ttl_seconds`, stays listed as expired and is recorded once as an
approval_decision "expired"; a connection can require the requester's reason before anyone
approves, and approvers read it. The book with a fake clock, then a real gateway, psql through
`hoop exec`, and the real CLI for list / justify / approve."""

from __future__ import annotations

import json
import re
import time

import pytest

from hoopcli.gateway.approvals import ApprovalBook, ApprovalStateError
from hoopcli.gateway.settings import settings_from_dict
from tests.support.cli import run_subprocess, subprocess_env
from tests.support.gateway import gateway_config, start_gateway

IDP = "https://idp.example.com"
ALICE, CAROL = (IDP, "alice"), (IDP, "carol")
STMT = "DROP TABLE orders"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def new_book(clock, decisions, **kwargs) -> ApprovalBook:
    return ApprovalBook({"dba"}, clock=clock, on_decision=decisions.append, **kwargs)


def test_the_window_counts_from_the_approval_not_the_request():
    clock, decisions = Clock(), []
    book = new_book(clock, decisions, grant_window=900, pending_ttl=3600)
    req = book.request(ALICE, "app-db", STMT)
    clock.now += 3000  # approved late, long after a window counted from the request would have closed
    approved = book.approve(req.id, CAROL, ["dba"])
    assert approved.grant_expires_at == clock.now + 900
    clock.now += 899
    assert book.consume(ALICE, "app-db", STMT) is not None


def test_an_unused_grant_expires_at_the_end_of_its_window_and_is_reported():
    clock, decisions = Clock(), []
    book = new_book(clock, decisions, grant_window=900)
    req = book.request(ALICE, "app-db", STMT)
    book.approve(req.id, CAROL, ["dba"])
    clock.now += 900
    assert book.consume(ALICE, "app-db", STMT) is None
    assert [(d.id, d.status) for d in decisions] == [(req.id, "approved"), (req.id, "expired")]


def test_an_undecided_request_expires_stays_listed_and_is_reported_once():
    clock, decisions = Clock(), []
    book = new_book(clock, decisions, pending_ttl=60)
    req = book.request(ALICE, "app-db", STMT)
    clock.now += 59
    book.sweep()
    assert book.get(req.id).status == "pending" and decisions == []
    clock.now += 1
    book.sweep()  # what the gateway's timer does: nobody had to look
    assert [(d.id, d.status) for d in decisions] == [(req.id, "expired")]
    book.sweep()
    assert [r.id for r in book.list("expired")] == [req.id] and len(decisions) == 1
    with pytest.raises(ApprovalStateError, match="expired, not pending"):
        book.approve(req.id, CAROL, ["dba"])
    assert book.request(ALICE, "app-db", STMT).id != req.id  # asking again is a new request


def test_an_expiry_noticed_by_a_failing_call_is_still_reported():
    clock, decisions = Clock(), []
    book = new_book(clock, decisions, pending_ttl=60)
    req = book.request(ALICE, "app-db", STMT)
    clock.now += 61
    with pytest.raises(ApprovalStateError):
        book.approve(req.id, CAROL, ["dba"])
    assert [d.status for d in decisions] == ["expired"]


def test_a_required_reason_comes_from_the_requester_once_before_approval():
    clock, decisions = Clock(), []
    book = new_book(clock, decisions, require_reason=["prod-db"])
    req = book.request(ALICE, "prod-db", STMT)
    other = book.request(ALICE, "app-db", STMT)
    assert req.reason_required and not other.reason_required
    with pytest.raises(ApprovalStateError, match=f"hoop approvals justify {req.id}"):
        book.approve(req.id, CAROL, ["dba"])
    with pytest.raises(PermissionError, match="only its requester"):
        book.justify(req.id, CAROL, "I am not alice")
    with pytest.raises(PermissionError):
        book.justify(req.id, ("https://ci.example.com", "alice"), "alice at another issuer")
    with pytest.raises(ValueError, match="empty"):
        book.justify(req.id, ALICE, "  \n ")
    justified = book.justify(req.id, ALICE, "ticket OPS-1: table  replaced by orders_v2")
    assert justified.justification == "ticket OPS-1: table replaced by orders_v2"
    with pytest.raises(ApprovalStateError, match="cannot change"):
        book.justify(req.id, ALICE, "something else")
    approved = book.approve(req.id, CAROL, ["dba"])
    assert approved.status == "approved" and approved.to_dict()["justification"] == justified.justification
    # Denying needs no reason.
    denied = book.deny(book.request(ALICE, "prod-db", "TRUNCATE orders").id, CAROL, ["dba"])
    assert denied.status == "denied"


def test_settings_read_the_ttl_and_require_reason():
    base = {"issuers": [{"issuer": IDP, "audiences": ["hoop-cli"]}],
            "connections": {"db": {"protocol": "postgres", "target": "h:5432", "groups": ["g"]}}}
    defaults = settings_from_dict(base)
    assert defaults.approval_pending_ttl_seconds == 3600 and defaults.approval_require_reason is False
    tuned = settings_from_dict({**base, "gateway": {"approvals": {"pending_ttl_seconds": 120, "require_reason": ["db"]}}})
    assert tuned.approval_pending_ttl_seconds == 120 and tuned.approval_require_reason == ("db",)
    with pytest.raises(ValueError, match="pending_ttl_seconds must be a positive whole number"):
        settings_from_dict({**base, "gateway": {"approvals": {"pending_ttl_seconds": 0}}})
    with pytest.raises(ValueError, match="names 'nope'"):
        settings_from_dict({**base, "gateway": {"approvals": {"require_reason": ["nope"]}}})


# ---- end to end: a gateway whose requests expire after 2 s; one where gated-db needs a reason ----


def _gateway_with(tmp_path_factory, oidc_provider, pg_server, approvals: str):
    workdir = tmp_path_factory.mktemp("lifecycle-gw")
    config = gateway_config(oidc_provider.issuer, pg_server.port, None, workdir).replace(
        "window_seconds = 300\n", f"window_seconds = 300\n{approvals}\n")
    return start_gateway(config, workdir)


@pytest.fixture(scope="module")
def short_gateway(tmp_path_factory, oidc_provider, pg_server):
    with _gateway_with(tmp_path_factory, oidc_provider, pg_server, "pending_ttl_seconds = 2") as gw:
        yield gw


@pytest.fixture(scope="module")
def reason_gateway(tmp_path_factory, oidc_provider, pg_server):
    with _gateway_with(tmp_path_factory, oidc_provider, pg_server, 'require_reason = ["gated-db"]') as gw:
        yield gw


@pytest.fixture(scope="module")
def lifecycle_table(pg_server):
    pg_server.sql("CREATE TABLE IF NOT EXISTS lifecycle_scratch (id int)", dbname="app")
    pg_server.sql("ALTER TABLE lifecycle_scratch OWNER TO app_user", dbname="app")
    return "lifecycle_scratch"


def _env(tmp_path, gw, tokens, login, **extra):
    home = tmp_path / f"home-{login}"
    home.mkdir(exist_ok=True)
    return subprocess_env(home, HOOP_TOKEN=tokens(login), HOOP_GATEWAY=gw.url, HOOP_CA_FILE=gw.ca_file, **extra)


def _held_id(env, sql) -> str:
    held = run_subprocess(["exec", "gated-db", "--", "psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql], env)
    match = re.search(r"request ([0-9a-f]{8})", held.err)
    assert held.code != 0 and match, held.err
    return match.group(1)


def _table_exists(pg_server, name) -> bool:
    return bool(pg_server.sql(f"select to_regclass('public.{name}') is not null", dbname="app")[0][0])


def test_a_held_statement_expires_on_time_is_listed_and_recorded(tmp_path, short_gateway, tokens, pg_server, lifecycle_table):
    alice = _env(tmp_path, short_gateway, tokens, "alice", PGPASSWORD=pg_server.app_password)
    carol = _env(tmp_path, short_gateway, tokens, "carol")
    statement = f"TRUNCATE {lifecycle_table}"
    request_id = _held_id(alice, statement)
    # Nobody looks at the approvals: the gateway's own sweep records the expiry.
    expired = short_gateway.records(kind="approval_decision", connection="gated-db")
    deadline = time.monotonic() + 15
    while not [r for r in expired if r["details"]["request_id"] == request_id] and time.monotonic() < deadline:
        time.sleep(0.2)
        expired = short_gateway.query(kind="approval_decision", connection="gated-db")
    (record,) = [r for r in expired if r["details"]["request_id"] == request_id]
    assert record["outcome"] == "expired" and record["sub"] == "alice" and record["statement"] == statement
    listing = run_subprocess(["approvals", "list", "--status", "expired", "--json"], carol)
    assert listing.code == 0, listing.err
    (row,) = [r for r in json.loads(listing.out)["approvals"] if r["id"] == request_id]
    assert row["status"] == "expired"
    late = run_subprocess(["approvals", "approve", request_id], carol)
    assert late.code != 0 and "expired, not pending" in late.err
    assert _table_exists(pg_server, lifecycle_table)


def test_a_reason_is_required_given_by_the_requester_and_seen_by_the_approver(tmp_path, reason_gateway, tokens, pg_server, lifecycle_table):
    alice = _env(tmp_path, reason_gateway, tokens, "alice", PGPASSWORD=pg_server.app_password)
    carol = _env(tmp_path, reason_gateway, tokens, "carol")
    statement = f"DROP TABLE {lifecycle_table}"
    request_id = _held_id(alice, statement)
    refused = run_subprocess(["approvals", "approve", request_id], carol)
    assert refused.code != 0 and f"hoop approvals justify {request_id}" in refused.err
    not_theirs = run_subprocess(["approvals", "justify", request_id, "let me"], carol)
    assert not_theirs.code == 4 and "only its requester" in not_theirs.err
    given = run_subprocess(["approvals", "justify", request_id, "OPS-7: replaced by v2"], alice)
    assert given.code == 0, given.err
    seen = json.loads(run_subprocess(["approvals", "list", "--status", "pending", "--json"], carol).out)["approvals"]
    assert [r["justification"] for r in seen if r["id"] == request_id] == ["OPS-7: replaced by v2"]
    approved = run_subprocess(["approvals", "approve", request_id, "--json"], carol)
    assert approved.code == 0, approved.err
    (decision,) = [r for r in reason_gateway.records(kind="approval_decision", connection="gated-db")
                   if r["details"]["request_id"] == request_id and r["outcome"] == "approved"]
    assert decision["details"]["justification"] == "OPS-7: replaced by v2" and decision["sub"] == "carol"
    assert _table_exists(pg_server, lifecycle_table)  # approved, not yet run


def test_a_policy_rule_can_require_the_requesters_reason():
    """`require_reason = true` on a rule: what that rule holds waits for a justification; what
    another rule holds does not (issue 30: a rule can require a justification)."""
    from hoopcli.gateway.approvals import ApprovalBook, ApprovalStateError
    from hoopcli.gateway.identity import Principal
    from hoopcli.gateway.policy import Policy, make_gate

    policy = Policy.from_config({"rules": [
        {"match": ["drop"], "action": "require_approval", "require_reason": True},
        {"match": ["truncate"], "action": "require_approval"},
    ]})
    book = ApprovalBook({"dba"})
    alice, carol = Principal("https://idp", "alice"), Principal("https://idp", "carol")
    gate = make_gate(policy, book, (alice, frozenset()), "app-db", "postgres", database="app")
    dropped = book.get(gate("DROP TABLE t").request_id)
    truncated = book.get(gate("TRUNCATE t").request_id)
    assert dropped.reason_required and not truncated.reason_required
    with pytest.raises(ApprovalStateError, match="justify"):
        book.approve(dropped.id, carol, ["dba"])
    book.justify(dropped.id, alice, "OPS-7: the table was replaced by t2")
    assert book.approve(dropped.id, carol, ["dba"]).status == "approved"
    assert book.approve(truncated.id, carol, ["dba"]).status == "approved"
    with pytest.raises(ValueError, match="require_reason"):
        Policy.from_config({"rules": [{"match": ["drop"], "action": "require_approval", "require_reason": "yes"}]})
