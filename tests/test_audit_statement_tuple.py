"""The statement tuple the session recorder enqueues, and the writer's fast ways through it.

The recorder hands statements over as tuples and the writer normalizes and hashes the common
case without the general path. These tests hold the fast paths to the general ones: the same
record, the same canonical bytes, the same hash, for any text, timestamp, duration or details
hypothesis can think of (a mismatch would be a broken chain or a changed record).
"""

from __future__ import annotations

import math
import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from hoopcli.gateway.audit import GENESIS, canonical, normalize, record_hash
from hoopcli.gateway.audit.chain import Preencoded, _canonical_normalized, link, verify_records
from hoopcli.gateway.audit.masking import mask_sql_secrets
from hoopcli.gateway.audit.store import to_row
from hoopcli.gateway.audit.statements import StatementNormalizer, statement_record
from hoopcli.gateway.audit.writer import BatchStorer, prepare
from hoopcli.gateway.protocols.base import SessionStarted, StatementFailed, StatementFinished, StatementStarted
from hoopcli.gateway.server import SessionRecorder

SESSION_TEXT = st.one_of(st.none(), st.text(max_size=12), st.sampled_from(["alice", "app-db", "ålice", "x\x00y"]))
TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["select 1", "ALTER ROLE a PASSWORD 'pw'", "é", "\x00", "\udcff"]))
MAYBE_TEXT = st.one_of(st.none(), TEXT)
DETAILS = st.one_of(
    st.fixed_dictionaries({"kind": st.sampled_from(["query", "execute", "copy"])}),
    st.fixed_dictionaries({"kind": st.just("execute"), "params": st.lists(st.one_of(st.none(), TEXT), max_size=3)}),
    st.dictionaries(TEXT, TEXT, max_size=3),
)
STARTED = st.one_of(
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.sampled_from([1714564800.9999996, 0.0, 253402300799.5, -1.0, math.inf, math.nan]),
    st.integers(0, 2**32),
)
DURATION = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.just(0.0004999))


def _session(sub, connection, db_user, database) -> dict:
    return {"session_id": "0123456789abcdef", "connection": connection, "sub": sub, "email": "a@example.com",
            "issuer": "https://idp.example", "kind": "statement", "db_user": db_user, "database": database}


@settings(max_examples=400, deadline=None)
@given(SESSION_TEXT, SESSION_TEXT, SESSION_TEXT, SESSION_TEXT, STARTED, TEXT, DURATION,
       st.sampled_from(["ok", "error", "é"]), MAYBE_TEXT, MAYBE_TEXT, MAYBE_TEXT, DETAILS)
def test_a_statement_tuple_prepares_to_what_its_record_would(sub, connection, db_user, database, started, text,
                                                             duration, outcome, tag, code, message, details):
    item = (_session(sub, connection, db_user, database), started, text, duration, outcome, tag, code, message, details)
    fast = prepare(item, StatementNormalizer(mask_sql_secrets))
    general = prepare(statement_record(item))
    if "audit_error" in (general["details"] or {}):  # a timestamp it could not keep: both use "now"
        fast["ts"] = general["ts"]
    assert fast == general
    # ... and hashes and is stored as the general path would (link and to_row use the
    # pre-encoded text of a fast record, the field-by-field encoders otherwise)
    linked = link([fast], 41, GENESIS)[0]
    assert _canonical_normalized(linked) == canonical(linked)
    assert linked["hash"] == record_hash(linked)
    assert to_row(linked) == to_row(dict(linked))
    assert link([general], 41, GENESIS)[0]["hash"] == linked["hash"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), TEXT, DURATION, st.sampled_from(["ok", "error"]), MAYBE_TEXT,
                          st.booleans()), min_size=1, max_size=8),
       st.sampled_from([GENESIS, "f" * 64, 'odd "head" \\ é', None]))
def test_a_batch_links_and_rows_the_same_either_way(statements, head):
    """A batch as the writer process receives it (sessions and the shared details dict are one
    object each after pickle) against the same records made one by one the general way."""
    sessions = [_session(f"user{i}", "app-db", "app", "app") for i in range(3)]
    shared = {"kind": "query"}
    items = [(sessions[s], 1714564800.0 + i / 7, text, duration, outcome, tag, None, None,
              shared if same else {"kind": "execute", "params": [text, None]})
             for i, (s, text, duration, outcome, tag, same) in enumerate(statements)]
    batch = pickle.loads(pickle.dumps(items, protocol=5))
    normalizer = StatementNormalizer(mask_sql_secrets)
    fast = link([prepare(item, normalizer) for item in batch], 7, head)
    general = link([prepare(statement_record(item)) for item in items], 7, head)
    assert [r["hash"] for r in fast] == [r["hash"] for r in general]
    assert [to_row(r) for r in fast] == [to_row(r) for r in general]
    assert fast == general


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(SESSION_TEXT, TEXT, MAYBE_TEXT, DURATION), min_size=1, max_size=5))
def test_records_linked_the_fast_way_verify(rows):
    records = [normalize({"kind": "statement", "ts": 1714564800.25, "sub": sub, "statement": text, "tag": tag,
                          "duration_ms": duration, "details": {"n": i, "t": [text]}})
               for i, (sub, text, tag, duration) in enumerate(rows)]
    chain = link(records, 0, GENESIS)
    assert all(r["hash"] == record_hash(r) for r in chain)
    assert verify_records(chain).ok


def test_a_value_normalize_never_leaves_falls_back_to_the_general_encoder():
    record = link([normalize({"kind": "statement", "ts": 0.0})], 0, GENESIS)[0]
    for field, value in (("duration_ms", math.inf), ("duration_ms", 3), ("seq", True), ("details", [1])):
        bad = dict(record, **{field: value})
        try:
            _canonical_normalized(bad)
        except TypeError:
            continue
        raise AssertionError(f"{field}={value!r} took the fast encoder")


def test_the_recorder_enqueues_a_tuple_the_writer_stores_as_the_full_record():
    queued: list = []

    def enqueue(record, start_id: int = 0) -> None:  # AuditWriter.enqueue: the record, its journal start
        queued.append(record)

    recorder = SessionRecorder(queued.append, {"session_id": "s1", "connection": "app-db", "sub": "alice",
                                               "email": "a@example.com", "issuer": "https://idp"}, enqueue)
    recorder.handle([SessionStarted("app_user", "app")])
    recorder.handle([StatementStarted("select 1"), StatementFinished("SELECT 1")])
    recorder.handle([StatementStarted("ALTER ROLE x PASSWORD 'hunter2'", kind="query"), StatementFailed("42501", "denied")])
    assert [type(item) for item in queued] == [tuple, tuple]
    batch = pickle.loads(pickle.dumps(queued, protocol=5))  # as the writer process receives it
    normalizer = StatementNormalizer(mask_sql_secrets)
    assert normalizer(batch[0]) is not None  # the common case takes the fast path
    assert normalizer(batch[1]) is None  # an error's code and message: the general one

    class Store:
        def append_normalized(self, records):
            return link(records, 0, GENESIS)

        append = append_normalized

    stored = BatchStorer(Store()).store_batch(batch)
    first, second = stored
    assert first["kind"] == "statement" and first["sub"] == "alice" and first["db_user"] == "app_user"
    assert first["database"] == "app" and first["statement"] == "select 1" and first["tag"] == "SELECT 1"
    assert first["outcome"] == "ok" and first["ts"] == first["started_at"] and first["ts"].endswith("Z")
    assert first["details"] == {"kind": "query"} and isinstance(first["duration_ms"], float)
    assert second["outcome"] == "error" and second["code"] == "42501" and second["message"] == "denied"
    assert "hunter2" not in second["statement"] and second["statement"] == mask_sql_secrets("ALTER ROLE x PASSWORD 'hunter2'")
    assert verify_records(stored).ok


def test_a_session_dict_carrying_code_or_message_does_not_leak_them_into_its_statements():
    session = dict(_session("alice", "app-db", "app", "app"), code="X", message="m")
    item = (session, 1714564800.25, "select 1", 0.5, "ok", "SELECT 1", None, None, {"kind": "query"})
    fast = StatementNormalizer(mask_sql_secrets)(item)
    assert fast is not None and fast["code"] is None and fast["message"] is None
    assert fast == prepare(statement_record(item))


def test_a_negative_zero_duration_is_stored_as_zero_and_still_verifies(tmp_path):
    from hoopcli.gateway.audit.sqlite import SQLiteStore

    record = normalize({"kind": "session_end", "ts": 1714564800.0, "duration_ms": -0.0001})
    assert math.copysign(1, record["duration_ms"]) == 1  # SQLite would read -0.0 back as 0.0
    with SQLiteStore(tmp_path / "audit.db") as store:
        store.append([{"kind": "session_end", "ts": 1714564800.0, "duration_ms": -0.0001}])
        assert store.verify().ok


def test_the_writer_stores_fast_records_as_the_general_path_would(tmp_path):
    """Through a real SQLite store: the rows the fast path inserts read back, hash and verify
    exactly as the same statements stored the general way."""
    from hoopcli.gateway.audit.sqlite import SQLiteStore

    shared = {"kind": "query"}
    sessions = [_session(f"user{i}", "app-db", "app", "app") for i in range(2)]
    items = [(sessions[i % 2], 1714564800.0 + i / 3, f"select {i}", 0.25 * i, "ok", "SELECT 1", None, None, shared)
             for i in range(20)]
    items.append((sessions[0], 1714564810.0, "select 'é'", 1.0, "ok", "SELECT 1", None, None, shared))  # general
    batch = pickle.loads(pickle.dumps(items, protocol=5))
    normalizer = StatementNormalizer(mask_sql_secrets)
    assert [type(normalizer(item)) for item in batch] == [Preencoded] * 20 + [type(None)]
    with SQLiteStore(tmp_path / "fast.db") as fast, SQLiteStore(tmp_path / "general.db") as general:
        BatchStorer(fast).store_batch(batch)
        general.append([statement_record(item) for item in items])
        assert fast.query() == general.query()
        assert fast.verify().ok and fast.verify().checked == 21
