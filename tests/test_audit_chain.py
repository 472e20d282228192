"""The canonical encoding, linking and verification, without any store."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopcli.gateway.audit import FIELDS, GENESIS, canonical, format_ts, new_record, normalize, record_hash
from hoopcli.gateway.audit.chain import link, verify_records


def _chain(n: int) -> list[dict]:
    records = [normalize(new_record("statement", sub="alice", statement=f"select {i}")) for i in range(n)]
    return link(records, 0, GENESIS)


def test_canonical_encoding_is_the_documented_one():
    record = normalize(new_record("connect", ts="2024-05-01T12:00:00Z", sub="ålice", details={"b": 1, "a": [2]}))
    record.update(seq=1, prev_hash=GENESIS, hash="ignored")
    body = {k: record[k] for k in FIELDS if k != "hash"}
    expected = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical(record) == expected
    assert "ålice".encode() in canonical(record)  # not \u escaped
    assert b'"hash"' not in canonical(record)
    assert record_hash(record) == hashlib.sha256(GENESIS.encode() + expected).hexdigest()


def test_link_assigns_seq_and_chains_hashes():
    chain = _chain(3)
    assert [r["seq"] for r in chain] == [1, 2, 3]
    assert chain[0]["prev_hash"] == GENESIS
    assert chain[1]["prev_hash"] == chain[0]["hash"]
    assert chain[2]["prev_hash"] == chain[1]["hash"]
    report = verify_records(chain)
    assert report.ok and report.checked == 3 and report.last_seq == 3


def test_record_defaults_and_normalization():
    record = new_record("statement")
    assert set(record) == set(FIELDS)
    assert record["ts"].endswith("Z") and len(record["ts"]) == len("2024-05-01T12:00:00.000000Z")
    out = normalize({"kind": "session_end", "ts": 0, "duration_ms": 5, "code": 503, "details": {1: b"\xff", "t": (1, 2)}})
    assert out["ts"] == "1970-01-01T00:00:00.000000Z"
    assert out["duration_ms"] == 5.0 and isinstance(out["duration_ms"], float)
    assert out["code"] == "503"
    assert out["details"] == {"1": "\\xff", "t": [1, 2]}
    assert out["message"] is None
    # what a store reads back normalizes to itself (so its hash is stable)
    assert normalize(json.loads(json.dumps(out))) == out


def test_timestamps_are_rfc3339_utc_microseconds():
    plus2 = timezone(timedelta(hours=2))
    assert format_ts(datetime(2024, 5, 1, 14, 0, tzinfo=plus2)) == "2024-05-01T12:00:00.000000Z"
    assert format_ts("2024-05-01T12:00:00.5Z") == "2024-05-01T12:00:00.500000Z"
    assert format_ts("2024-05-01T12:00:00") == "2024-05-01T12:00:00.000000Z"
    assert format_ts("1714564800.25") == format_ts(1714564800.25) == "2024-05-01T12:00:00.250000Z"
    with pytest.raises(ValueError):
        format_ts("yesterday")


def test_text_a_store_cannot_hold_is_escaped():
    out = normalize({"kind": "statement", "statement": "select '\x00'", "message": "bad \udcff"})
    assert "\x00" not in out["statement"]
    out["message"].encode("utf-8")


def test_unknown_kind_or_field_is_refused():
    with pytest.raises(ValueError, match="kind"):
        new_record("login")
    with pytest.raises(ValueError, match="bytes_in"):
        new_record("statement", bytes_in=3)


def test_verify_names_an_edited_record():
    chain = _chain(5)
    chain[2]["statement"] = "drop table users"
    report = verify_records(chain)
    assert not report.ok
    assert report.problems == ["seq 3: hash mismatch, the record was changed after it was written"]


def test_verify_names_a_rehashed_edit_at_the_next_record():
    chain = _chain(5)
    chain[2]["statement"] = "drop table users"
    chain[2]["hash"] = record_hash(chain[2])
    report = verify_records(chain)
    assert len(report.problems) == 1 and report.problems[0].startswith("seq 4: prev_hash")


def test_verify_names_deleted_records():
    chain = _chain(6)
    del chain[2]
    assert verify_records(chain).problems == ["seq 3 missing before seq 4 (deleted, or moved elsewhere)"]
    del chain[0]
    assert "seq 2: first record, seq 1..1 missing (deleted)" in verify_records(chain).problems


def test_verify_names_reordered_records():
    chain = _chain(5)
    chain[1], chain[3] = chain[3], chain[1]
    problems = " | ".join(verify_records(chain).problems)
    assert "seq 2..3 missing before seq 4" in problems
    assert "seq 3: comes after seq 4, records reordered" in problems
    assert "seq 2: comes after seq 3, records reordered" in problems


def test_verify_a_slice_takes_its_start_on_trust():
    chain = _chain(6)
    assert verify_records(chain[3:], from_genesis=False).ok
    assert not verify_records(chain[3:]).ok


# The writer's fast paths must hash and store exactly what the plain definitions would.
_text = st.text(st.characters(blacklist_categories=()), max_size=12)
_scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | _text
_json = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(
    texts=st.fixed_dictionaries({}, optional={name: _text | st.integers() for name in ("sub", "statement", "tag", "code", "message", "email")}),
    details=st.none() | st.dictionaries(_text, _json, max_size=4),
    duration=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)
def test_fast_paths_encode_exactly_what_json_dumps_would(texts, details, duration):
    from hoopcli.gateway.audit.record import TEXT_FIELDS, clean_text, jsonable
    from hoopcli.gateway.audit.store import to_row

    record = normalize({"kind": "statement", "ts": 1_700_000_000.25, "details": details, "duration_ms": duration, **texts})
    for name in TEXT_FIELDS:  # the one-pass check left nothing a per-field clean would change
        if record[name] is not None:
            assert record[name] == clean_text(record[name])
    if details is not None:
        expected = jsonable(details)
        assert record["details"] == (expected if isinstance(expected, dict) else {"value": expected})
    hashed = {k: v for k, v in record.items() if k != "hash"}
    assert canonical(record) == json.dumps(hashed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    row = to_row(dict(record, seq=1, prev_hash="0" * 64, hash="f" * 64))
    stored_details = row[list(record).index("details")]
    assert stored_details == (None if record["details"] is None else json.dumps(record["details"], sort_keys=True, ensure_ascii=False))


# ---- published chain heads ----------------------------------------------------------------


def test_a_chain_head_is_parsed_from_seq_colon_hash_and_refused_otherwise():
    from hoopcli.gateway.audit.chain import ChainHead

    digest = "ab" * 32
    assert ChainHead.parse(f"42:{digest.upper()}") == ChainHead(42, digest)
    for bad in ("42", f"x:{digest}", f"0:{digest}", "42:abc", f"-1:{digest}", f"42:{'zz' * 32}"):
        with pytest.raises(ValueError):
            ChainHead.parse(bad)


def test_a_published_head_catches_records_deleted_from_the_end():
    from hoopcli.gateway.audit.chain import ChainHead

    chain = _chain(10)
    head = ChainHead(10, chain[-1]["hash"])
    assert verify_records(chain, heads=[head]).ok
    assert verify_records(chain[:7]).ok  # without the head, a cut tail looks like a short trail
    report = verify_records(chain[:7], heads=[head])
    assert not report.ok
    assert report.problems == [
        "seq 8..10 missing: the published head is seq 10 but the store ends at seq 7 (records deleted from the end of the trail)"
    ]
    assert verify_records(chain[:9], heads=[head]).problems[0].startswith("seq 10 missing: the published head is seq 10")
    assert verify_records([], heads=[head]).problems[0].startswith("seq 1..10 missing: the published head is seq 10 but the store is empty")


def test_a_published_head_catches_a_tail_rewritten_after_a_cut():
    """Cut the tail, then let the store append again: the seqs come back, the hashes do not."""
    from hoopcli.gateway.audit.chain import ChainHead

    chain = _chain(10)
    head = ChainHead(10, chain[-1]["hash"])
    regrown = chain[:6] + link([normalize(new_record("statement", sub="mallory", statement=f"select {i}")) for i in range(6)], 6, chain[5]["hash"])
    assert verify_records(regrown).ok
    problems = verify_records(regrown, heads=[head]).problems
    assert len(problems) == 1 and problems[0].startswith("seq 10: hash differs from the published head 10:")


def test_an_older_head_still_in_the_store_verifies():
    from hoopcli.gateway.audit.chain import ChainHead

    chain = _chain(10)
    report = verify_records(chain, heads=[ChainHead(4, chain[3]["hash"])])
    assert report.ok and report.last_seq == 10


def _exported(tmp_path, **publisher):
    from hoopcli.gateway.audit.export import JsonLinesExporter

    path = tmp_path / "export.jsonl"
    return path, JsonLinesExporter(path, heads=publisher or True)


def _head_lines(path) -> list[dict]:
    return [json.loads(line)["chain_head"] for line in path.read_text().splitlines() if '"chain_head"' in line]


def test_the_jsonl_export_publishes_a_head_every_n_records_and_at_close(tmp_path):
    from hoopcli.gateway.audit.export import newest_head, read_jsonl

    chain = _chain(25)
    path, exporter = _exported(tmp_path, every_records=10, every_seconds=3600)
    for start in range(0, 25, 5):
        exporter.export(chain[start : start + 5])
    assert [h["seq"] for h in _head_lines(path)] == [10, 20]
    exporter.close()
    heads = _head_lines(path)
    assert [(h["seq"], h["hash"]) for h in heads] == [(10, chain[9]["hash"]), (20, chain[19]["hash"]), (25, chain[24]["hash"])]
    assert all(h["ts"].endswith("Z") for h in heads)
    assert list(read_jsonl(path)) == chain  # records only: head lines left out
    assert newest_head(path).seq == 25


def test_an_idle_export_publishes_its_head_within_the_interval(tmp_path):
    import time

    chain = _chain(3)
    path, exporter = _exported(tmp_path, every_records=1000, every_seconds=0.2)
    exporter.export(chain)
    assert _head_lines(path) == []
    deadline = time.monotonic() + 5
    while not _head_lines(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [h["seq"] for h in _head_lines(path)] == [3]  # no new record: no second head
    exporter.close()
    assert [h["seq"] for h in _head_lines(path)] == [3]


def test_newest_head_takes_the_highest_seq_and_passes_over_a_torn_line(tmp_path):
    from hoopcli.gateway.audit.export import newest_head

    chain = _chain(4)
    path = tmp_path / "export.jsonl"
    lines = [json.dumps(r) for r in chain[:3]] + [json.dumps({"chain_head": {"seq": 2, "hash": chain[1]["hash"]}})]
    path.write_text("\n".join(lines) + "\n" + json.dumps(chain[3])[:40])
    head = newest_head(path)
    assert (head.seq, head.hash) == (3, chain[2]["hash"])


def test_the_webhook_publishes_the_head_as_an_element_of_a_post(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from hoopcli.gateway.audit.export import WebhookExporter

    posts: list = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        chain = _chain(3)
        hook = WebhookExporter(f"http://127.0.0.1:{server.server_port}/", heads={"every_seconds": 3600})
        hook.export(chain)
        hook.close(timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert posts[0] == chain
    assert [p[0]["chain_head"]["seq"] for p in posts[1:]] == [3]
    assert posts[1][0]["chain_head"]["hash"] == chain[-1]["hash"]
    assert hook.delivered == 3 and hook.dropped == 0


def test_an_export_that_went_back_keeps_the_head_before_the_cut(tmp_path):
    """The store was cut to seq 6 and grew again: the export's newest head matches the regrown
    store, but the one before its seq went back does not."""
    from hoopcli.gateway.audit.export import export_heads

    chain = _chain(10)
    regrown = chain[:6] + link([normalize(new_record("statement", sub="mallory", statement=f"x {i}")) for i in range(6)], 6, chain[5]["hash"])
    path, exporter = _exported(tmp_path, every_records=5, every_seconds=3600)
    exporter.export(chain)
    exporter.export(regrown[6:])
    exporter.close()
    heads = export_heads(path)
    assert [(h.seq, h.hash) for h in heads] == [(10, chain[9]["hash"]), (12, regrown[11]["hash"])]
    assert verify_records(regrown, heads=heads[-1:]).ok  # the newest alone is fooled
    assert not verify_records(regrown, heads=heads).ok
