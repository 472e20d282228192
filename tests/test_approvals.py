"""ApprovalBook: who may decide, one-use grants, windows and expiry, reuse, wait()."""

from __future__ import annotations

import re
import threading

import pytest

from hoopcli.gateway.approvals import ApprovalBook, ApprovalStateError

STMT = "DROP TABLE orders"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def book(clock):
    return ApprovalBook({"dba", "sre"}, clock=clock)


def test_request_shape_and_reuse_while_pending(book, clock):
    req = book.request("alice", "app-db", STMT, ("drop",))
    assert re.fullmatch(r"[0-9a-f]{8}", req.id)
    assert (req.sub, req.connection, req.statement, req.status) == ("alice", "app-db", STMT, "pending")
    assert req.categories == ("drop",) and req.created_at == clock.now
    clock.now += 60
    assert book.request("alice", "app-db", STMT).id == req.id  # no spam
    assert book.request("bob", "app-db", STMT).id != req.id
    assert book.request("alice", "other-db", STMT).id != req.id
    assert book.request("alice", "app-db", STMT + ";").id != req.id
    assert len(book.list()) == 4 and len(book.list("pending")) == 4


def test_self_approval_refused_even_for_an_approver(book):
    req = book.request("carol", "app-db", STMT)
    with pytest.raises(PermissionError, match="their own"):
        book.approve(req.id, "carol", ["dba"])
    with pytest.raises(PermissionError, match="their own"):
        book.deny(req.id, "carol", ["dba"])
    assert book.get(req.id).status == "pending"


def test_non_approver_refused(book):
    req = book.request("alice", "app-db", STMT)
    with pytest.raises(PermissionError, match="approvers must be in one of the groups dba, sre"):
        book.approve(req.id, "mallory", ["dev"])
    with pytest.raises(PermissionError):
        book.deny(req.id, "mallory", [])
    assert book.get(req.id).status == "pending"


def test_no_approver_groups_means_nobody(clock):
    book = ApprovalBook(clock=clock)
    req = book.request("alice", "app-db", STMT)
    with pytest.raises(PermissionError, match="no approver groups"):
        book.approve(req.id, "carol", ["dba"])


def test_approval_is_one_use_of_the_exact_statement(book):
    req = book.request("alice", "app-db", STMT)
    assert book.consume("alice", "app-db", STMT) is None  # not approved yet
    approved = book.approve(req.id, "carol", ["dba"], "change ticket 42")
    assert (approved.status, approved.decided_by, approved.reason) == ("approved", "carol", "change ticket 42")
    assert book.consume("bob", "app-db", STMT) is None  # someone else
    assert book.consume("alice", "other-db", STMT) is None  # elsewhere
    assert book.consume("alice", "app-db", STMT.lower()) is None  # other text
    used = book.consume("alice", "app-db", STMT)
    assert used is not None and used.id == req.id and used.status == "used"
    assert book.consume("alice", "app-db", STMT) is None  # spent
    assert book.get(req.id).status == "used"
    with pytest.raises(ApprovalStateError):
        book.approve(req.id, "dave", ["sre"])


def test_grant_window_expires(clock):
    book = ApprovalBook({"dba"}, clock=clock, grant_window=300)
    req = book.request("alice", "app-db", STMT)
    book.approve(req.id, "carol", ["dba"])
    clock.now += 299
    first = book.request("alice", "app-db", "TRUNCATE t")
    book.approve(first.id, "carol", ["dba"])
    assert book.consume("alice", "app-db", "TRUNCATE t") is not None
    clock.now += 2  # 301 s after the approval of STMT
    assert book.consume("alice", "app-db", STMT) is None
    assert book.get(req.id).status == "expired"


def test_default_grant_window_is_fifteen_minutes(book, clock):
    req = book.request("alice", "app-db", STMT)
    approved = book.approve(req.id, "carol", ["dba"])
    assert approved.grant_expires_at == clock.now + 15 * 60


def test_pending_requests_expire(clock):
    book = ApprovalBook({"dba"}, clock=clock, pending_ttl=3600)
    req = book.request("alice", "app-db", STMT)
    clock.now += 3600
    assert book.get(req.id).status == "expired"
    with pytest.raises(ApprovalStateError, match="expired"):
        book.approve(req.id, "carol", ["dba"])
    again = book.request("alice", "app-db", STMT)  # a fresh request after expiry
    assert again.id != req.id and again.status == "pending"


def test_deny_path(book):
    req = book.request("alice", "app-db", STMT)
    denied = book.deny(req.id, "carol", ["sre"], "not during the sale")
    assert (denied.status, denied.decided_by, denied.reason, denied.grant_expires_at) == (
        "denied", "carol", "not during the sale", None)
    assert book.consume("alice", "app-db", STMT) is None
    with pytest.raises(ApprovalStateError, match="denied"):
        book.approve(req.id, "dave", ["dba"])
    assert book.request("alice", "app-db", STMT).id != req.id  # asking again is a new request
    assert [r.id for r in book.list("denied")] == [req.id]


def test_unknown_id_and_bad_status(book):
    with pytest.raises(KeyError, match="no approval request"):
        book.approve("deadbeef", "carol", ["dba"])
    with pytest.raises(ValueError):
        book.list("maybe")


def test_ids_are_case_insensitive_and_collisions_retried(clock):
    ids = iter(["abcd0001", "abcd0001", "abcd0002"])
    book = ApprovalBook({"dba"}, clock=clock, id_factory=lambda: next(ids))
    a = book.request("alice", "app-db", "DROP TABLE a")
    b = book.request("alice", "app-db", "DROP TABLE b")
    assert (a.id, b.id) == ("abcd0001", "abcd0002")
    assert book.approve(" ABCD0001 ", "carol", ["dba"]).status == "approved"


def test_on_request_hook_fires_once_and_failures_are_contained(clock):
    seen = []
    decided = []

    def hook(req):
        seen.append(req.id)
        raise RuntimeError("webhook down")

    book = ApprovalBook({"dba"}, clock=clock, on_request=hook, on_decision=decided.append)
    req = book.request("alice", "app-db", STMT)
    book.request("alice", "app-db", STMT)
    assert seen == [req.id]
    book.approve(req.id, "carol", ["dba"])
    book.consume("alice", "app-db", STMT)
    assert [r.status for r in decided] == ["approved", "used"]


def test_pending_limit_per_sub(clock):
    book = ApprovalBook({"dba"}, clock=clock, max_pending_per_sub=2)
    book.request("alice", "app-db", "DROP TABLE a")
    book.request("alice", "app-db", "DROP TABLE b")
    with pytest.raises(PermissionError, match="too many"):
        book.request("alice", "app-db", "DROP TABLE c")
    book.request("bob", "app-db", "DROP TABLE c")


def test_finished_requests_are_forgotten_after_retention(clock):
    book = ApprovalBook({"dba"}, clock=clock, retention=600)
    req = book.request("alice", "app-db", STMT)
    book.deny(req.id, "carol", ["dba"])
    clock.now += 601
    assert book.list() == []


def test_concurrent_requests_for_one_statement_share_one_request(book):
    ids = []
    lock = threading.Lock()

    def ask():
        r = book.request("alice", "app-db", STMT)
        with lock:
            ids.append(r.id)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(book.list()) == 1


def test_constructor_validation():
    with pytest.raises(TypeError):
        ApprovalBook("dba")
    with pytest.raises(ValueError, match="grant_window"):
        ApprovalBook({"dba"}, grant_window=0)


# ---- bounded requests: a prefix, the hash and the length, never the whole text (issue 17 #6) ----

from hoopcli.gateway.approvals import PREFIX_BYTES, digest_statement

LONG = "DELETE FROM orders /* " + "x" * (2 * PREFIX_BYTES) + " */"


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def test_a_long_request_keeps_a_prefix_its_hash_and_its_length(book):
    req = book.request("alice", "app-db", LONG, ("delete",))
    assert req.truncated and LONG.startswith(req.statement)
    assert len(req.statement.encode()) == PREFIX_BYTES
    assert (req.statement_sha256, req.statement_chars, req.statement_bytes) == (_sha(LONG), len(LONG), len(LONG))
    short = book.request("alice", "app-db", STMT)
    assert (short.statement, short.truncated, short.statement_sha256) == (STMT, False, _sha(STMT))


def test_the_prefix_is_cut_on_a_character_boundary():
    for filler in ("é", "€", "😀"):  # 2, 3 and 4 bytes of UTF-8: the cut lands inside some
        for shift in range(4):
            text = "x" * shift + filler * PREFIX_BYTES
            digest = digest_statement(text)
            raw = digest.prefix.encode()
            assert PREFIX_BYTES - 3 <= len(raw) <= PREFIX_BYTES and text.startswith(digest.prefix)
            assert (digest.size, digest.sha256, digest.truncated) == (len(text.encode()), _sha(text), True)


def test_lone_surrogates_are_hashed_not_refused():
    digest = digest_statement("select '\udcff'")  # the engines decode with "replace", but be total
    assert not digest.truncated and len(digest.sha256) == 64


def test_a_truncated_prefix_stops_before_a_password_it_might_cut_open():
    filler = "x" * (PREFIX_BYTES - 30)  # the cut falls inside the literal: "… PASSWORD 'hunt"
    text = filler + "; ALTER ROLE app PASSWORD 'hunter2-and-more-of-the-secret'"
    prefix = digest_statement(text).prefix
    assert "hunt" not in prefix and prefix == filler + "; ALTER ROLE app "
    whole = "ALTER ROLE app PASSWORD 'short'"
    assert digest_statement(whole).prefix == whole  # not cut: the masking of records and views finds its end


def test_a_grant_runs_only_the_exact_long_text_not_one_with_the_same_prefix(book):
    req = book.request("alice", "app-db", LONG)
    book.approve(req.id, "carol", ["dba"], sha256=_sha(LONG))
    twin = LONG[:-4] + "y */"  # same 4 KiB prefix, same length, other text
    assert digest_statement(twin).prefix == req.statement and len(twin) == len(LONG)
    assert book.consume("alice", "app-db", twin) is None
    assert book.consume("alice", "app-db", LONG).id == req.id
    assert book.consume("alice", "app-db", LONG) is None


def test_identical_long_resends_reuse_the_pending_request(book):
    first = book.request("alice", "app-db", LONG)
    assert book.request("alice", "app-db", str(LONG)).id == first.id
    assert len(book.list("pending")) == 1


def test_pending_bytes_are_capped_per_requester(clock):
    book = ApprovalBook({"dba"}, clock=clock, max_pending_bytes=3 * len(LONG))
    held = [book.request("alice", "app-db", LONG + f"-- {n}") for n in range(2)]
    with pytest.raises(PermissionError, match=r"too many pending approval bytes for alice: \d+ bytes"):
        book.request("alice", "app-db", LONG + "-- 2")
    book.request("bob", "app-db", LONG + "-- 2")  # someone else's budget
    book.deny(held[0].id, "carol", ["dba"])  # a decision frees the requester's room
    assert book.request("alice", "app-db", LONG + "-- 2").status == "pending"


def test_approve_by_hash_refuses_another_hash(book):
    req = book.request("alice", "app-db", LONG)
    with pytest.raises(ApprovalStateError, match=f"only the first {PREFIX_BYTES} are kept.*{_sha(LONG)}"):
        book.approve(req.id, "carol", ["dba"])  # a truncated statement is not approved unread
    with pytest.raises(ApprovalStateError, match="nothing was approved"):
        book.approve(req.id, "carol", ["dba"], sha256=_sha(LONG + " "))
    assert book.get(req.id).status == "pending"
    assert book.approve(req.id, "carol", ["dba"], sha256=_sha(LONG).upper()).status == "approved"
    other = book.request("alice", "app-db", LONG + "-- 2")
    assert book.deny(other.id, "carol", ["dba"]).status == "denied"  # denying needs no hash


def test_requests_do_not_hold_the_statement_in_memory(clock):
    import tracemalloc

    book = ApprovalBook({"dba"}, clock=clock, max_pending_bytes=1 << 40)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(40):
            text = f"DELETE FROM t /* {n} " + "x" * (1 << 20) + " */"  # 1 MiB each, 40 MiB in all
            book.request("alice", "app-db", text)
            del text
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(book.list("pending")) == 40
    assert grown < 1 << 20, f"the book kept {grown} bytes for 40 held 1 MiB statements"


def test_finished_requests_are_capped_oldest_first_and_pending_ones_never(clock):
    book = ApprovalBook({"dba"}, clock=clock, max_finished=3)
    denied = []
    for n in range(5):
        clock.now += 1
        denied.append(book.deny(book.request("alice", "app-db", f"DROP TABLE t{n}").id, "carol", ["dba"]).id)
    waiting = book.request("alice", "app-db", "DROP TABLE keep")
    remaining = {r.id for r in book.list()}
    assert remaining == {*denied[2:], waiting.id}


def test_pages_cover_every_request_once_in_order(clock):
    book = ApprovalBook({"dba"}, clock=clock)
    for n in range(7):
        book.request("alice" if n % 2 else "bob", "app-db", f"DROP TABLE t{n}")  # same created_at: ids break ties
    seen, cursor = [], None
    for _ in range(10):
        rows, cursor = book.page(limit=3, after=cursor)
        seen += rows
        if cursor is None:
            break
    assert [r.id for r in seen] == [r.id for r in book.list()] and len(seen) == 7
    mine, more = book.page(viewer=("alice", ["dev"]), limit=50)
    assert {r.sub for r in mine} == {"alice"} and len(mine) == 3 and more is None
    everyone, _ = book.page(viewer=("carol", ["dba"]), limit=50)  # an approver of app-db
    assert len(everyone) == 7


@pytest.mark.parametrize("limit", [0, 501])
def test_page_limit_is_bounded(book, limit):
    with pytest.raises(ValueError, match="limit"):
        book.page(limit=limit)


@pytest.mark.parametrize("cursor", ["nonsense", "nan_abc", "inf_abc", "1.5_", "_abc"])
def test_a_bad_cursor_is_refused(book, cursor):
    with pytest.raises(ValueError, match="bad cursor"):
        book.page(after=cursor)


def test_cap_settings_are_validated():
    with pytest.raises(ValueError, match="max_pending_bytes"):
        ApprovalBook({"dba"}, max_pending_bytes=0)
    with pytest.raises(ValueError, match="max_finished"):
        ApprovalBook({"dba"}, max_finished=-1)


def test_gateway_settings_read_the_approval_caps():
    from hoopcli.gateway.settings import settings_from_dict

    issuers = [{"issuer": "https://idp.example.com", "audiences": ["hoop-cli"]}]
    default = settings_from_dict({"issuers": issuers})
    assert (default.approval_max_pending, default.approval_max_pending_bytes) == (100, 64 * 1024 * 1024)
    tuned = settings_from_dict({"gateway": {"approvals": {"max_pending": 7, "max_pending_bytes": 1024}}, "issuers": issuers})
    assert (tuned.approval_max_pending, tuned.approval_max_pending_bytes) == (7, 1024)
    for bad in (0, -1, "64MiB", True, 1.5):
        with pytest.raises(ValueError, match="gateway.approvals.max_pending_bytes must be a positive whole number"):
            settings_from_dict({"gateway": {"approvals": {"max_pending_bytes": bad}}, "issuers": issuers})


def test_the_gateway_builds_its_approval_book_with_the_configured_caps(tmp_path):
    from hoopcli.gateway.app import Gateway
    from hoopcli.gateway.audit import open_store
    from hoopcli.gateway.settings import settings_from_dict

    issuers = [{"issuer": "https://idp.example.com", "audiences": ["hoop-cli"]}]
    settings = settings_from_dict({"gateway": {"approvals": {"max_pending": 7, "max_pending_bytes": 1024}}, "issuers": issuers})
    with open_store(str(tmp_path / "audit.db")) as store:
        gw = Gateway(settings, store=store)
        try:
            assert (gw.approvals.max_pending_per_sub, gw.approvals.max_pending_bytes) == (7, 1024)
        finally:
            gw.writer.close()
