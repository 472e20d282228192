"""AuditWriter (batching, flush, retry, health) and the exporters."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hoopcli.gateway.audit import (
    AuditWriter,
    JsonLinesExporter,
    WebhookExporter,
    new_record,
    open_store,
    read_jsonl,
    verify_records,
)


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path / "audit.db") as s:
        yield s


class FlakyStore:
    """Wraps a store: the first `failures` appends raise; records which threads appended and how much."""

    def __init__(self, inner, failures=0):
        self.inner = inner
        self.failures = failures
        self.batches: list[int] = []
        self.threads: set[int] = set()

    def append(self, records):
        self.threads.add(threading.get_ident())
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database is down")
        self.batches.append(len(records))
        return self.inner.append(records)


def test_close_stores_every_submitted_record(store):
    writer = AuditWriter(store)
    for i in range(10_000):
        writer.submit({"kind": "statement", "sub": "alice", "statement": f"select {i}"})
    assert writer.close()
    assert writer.stored == writer.submitted == 10_000 and writer.pending == 0
    report = store.verify()
    assert report.ok and report.checked == 10_000
    assert store.query(limit=1)[0]["statement"] == "select 9999"


def test_submit_is_cheap_and_never_touches_the_store(store):
    flaky = FlakyStore(store)
    writer = AuditWriter(flaky, batch_size=100, interval=0.02)
    record = new_record("statement", sub="alice", statement="select 1")
    started = time.thread_time()  # CPU of this thread: a loaded machine does not stretch it
    tickets = [writer.submit(record) for _ in range(2000)]
    per_submit = (time.thread_time() - started) / 2000
    assert tickets == list(range(1, 2001))
    assert per_submit < 200e-6  # ~2-3 µs on a laptop; an SQLite insert per submit costs far more
    assert writer.flush(10)
    assert threading.get_ident() not in flaky.threads
    assert max(flaky.batches) <= 100 and len(flaky.batches) < 2000  # batched
    writer.close()


def test_flush_waits_for_what_was_submitted(store):
    writer = AuditWriter(store, interval=5.0)  # flush must not wait for the interval
    writer.submit(new_record("connect", sub="alice", outcome="ok"))
    started = time.monotonic()
    assert writer.flush(5)
    assert time.monotonic() - started < 1.0
    assert [r["sub"] for r in store.query()] == ["alice"]
    assert writer.flush(0)  # nothing new: returns at once
    writer.close()


def test_timestamp_is_taken_at_submit(store):
    writer = AuditWriter(store, interval=5.0)
    before = time.time()
    writer.submit({"kind": "connect"})
    time.sleep(0.3)  # stored at close, long after
    writer.close()
    (record,) = store.query()
    from datetime import datetime

    ts = datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
    assert before <= ts < before + 0.2


def test_a_failing_store_makes_the_writer_unhealthy_until_it_recovers(store):
    flaky = FlakyStore(store, failures=3)
    writer = AuditWriter(flaky, interval=0.01, initial_backoff=0.05, max_backoff=0.1)
    writer.submit(new_record("connect", sub="alice"))
    deadline = time.monotonic() + 5
    while writer.healthy and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not writer.healthy
    assert "ConnectionError: database is down" in writer.last_error
    writer.submit(new_record("session_end", sub="alice"))
    assert writer.flush(5)
    assert writer.healthy and writer.failures == 0
    assert [r["kind"] for r in store.query()] == ["connect", "session_end"]  # nothing lost, order kept
    writer.close()


def test_close_gives_up_after_its_timeout_when_the_store_stays_down(store):
    writer = AuditWriter(FlakyStore(store, failures=10**9), interval=0.01, initial_backoff=0.01, max_backoff=0.05)
    writer.submit(new_record("connect"))
    started = time.monotonic()
    assert writer.close(timeout=0.3) is False
    assert time.monotonic() - started < 2
    assert writer.lost == 1 and "not stored" in writer.last_error
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(new_record("connect"))


def test_close_counts_nothing_lost_when_the_last_append_ends_after_its_timeout(store):
    class SlowStore:
        def append(self, records):
            time.sleep(0.5)
            return store.append(records)

    writer = AuditWriter(SlowStore(), interval=0.01)
    writer.submit(new_record("connect"))
    time.sleep(0.05)  # the writer thread is inside the slow append
    assert writer.close(timeout=0.1) is True
    assert writer.lost == 0 and writer.last_error is None
    assert len(store.query()) == 1


def test_submit_refuses_bad_records(store):
    writer = AuditWriter(store)
    with pytest.raises(ValueError, match="kind"):
        writer.submit({"kind": "nonsense"})
    with pytest.raises(ValueError, match="password"):
        writer.submit({"kind": "connect", "password": "x"})
    writer.close()


def test_a_record_with_a_bad_timestamp_is_kept_and_flagged(store):
    writer = AuditWriter(store)
    writer.submit({"kind": "statement", "ts": "last tuesday", "statement": "select 1", "details": {"a": 1}})
    writer.close()
    (record,) = store.query()
    assert record["statement"] == "select 1"
    assert record["details"]["a"] == 1 and record["details"]["original_ts"] == "last tuesday"
    assert "RFC 3339" in record["details"]["audit_error"]


def test_json_lines_exporter_writes_exactly_the_stored_records(store, tmp_path):
    path = tmp_path / "audit.jsonl"
    exporter = JsonLinesExporter(path)
    writer = AuditWriter(store, [exporter], batch_size=64)
    for i in range(500):
        writer.submit(new_record("statement", sub="ålice", statement=f"select {i}", details={"n": i}))
    assert writer.close()
    exported = list(read_jsonl(path))
    assert exported == store.query()
    assert verify_records(exported).ok
    assert (path.stat().st_mode & 0o777) == 0o600
    assert "ålice" in path.read_text(encoding="utf-8")


def test_json_lines_to_stdout(store, capsys):
    writer = AuditWriter(store, [JsonLinesExporter("-")])
    writer.submit(new_record("connect", sub="bob", outcome="refused", code=403))
    writer.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["code"] == "403"


def test_a_failing_exporter_is_counted_not_fatal(store):
    class Broken:
        def export(self, records):
            raise OSError("disk full")

        def close(self):
            pass

    writer = AuditWriter(store, [Broken()])
    writer.submit(new_record("connect"))
    assert writer.flush(5) and writer.healthy
    writer.close()
    assert writer.export_errors == 1 and len(store.query()) == 1


# ---- webhook ------------------------------------------------------------------------------


class Receiver:
    """A tiny webhook receiver on 127.0.0.1 that answers `fail_first` POSTs with `status`."""

    def __init__(self, fail_first=0, status=503):
        self.fail_first = fail_first
        self.status = status
        self.posts = 0
        self.batches: list[list[dict]] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts += 1
                outer.headers.append(dict(self.headers))
                if outer.posts <= outer.fail_first:
                    self.send_response(outer.status)
                else:
                    outer.batches.append(json.loads(body))
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory():
    made = []

    def make(**kwargs):
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_webhook_retries_503_then_delivers_once(store, receiver_factory):
    receiver = receiver_factory(fail_first=2, status=503)
    hook = WebhookExporter(receiver.url, timeout=2, max_retries=4, backoff=0.02,
                           headers={"Authorization": "Bearer webhook-secret"})
    writer = AuditWriter(store, [hook])
    for i in range(3):
        writer.submit(new_record("statement", sub="alice", statement=f"select {i}"))
    assert writer.close()  # closes the exporter too, which delivers what it holds
    assert receiver.posts == 3
    delivered = [r for batch in receiver.batches for r in batch]
    assert delivered == store.query()
    assert hook.delivered == 3 and hook.dropped == 0 and hook.errors == 0
    assert receiver.headers[-1]["Content-Type"] == "application/json"
    assert receiver.headers[-1]["Authorization"] == "Bearer webhook-secret"


def test_webhook_drops_and_counts_after_max_retries(receiver_factory):
    receiver = receiver_factory(fail_first=10**6, status=502)
    hook = WebhookExporter(receiver.url, timeout=2, max_retries=2, backoff=0.01)
    hook.export([{"seq": 1}, {"seq": 2}])
    hook.close(timeout=5)
    assert receiver.posts == 3
    assert hook.dropped == 2 and hook.errors == 1 and "HTTP 502 after 3 attempt(s)" in hook.last_error


def test_webhook_does_not_retry_a_client_error(receiver_factory):
    receiver = receiver_factory(fail_first=10**6, status=400)
    hook = WebhookExporter(receiver.url, timeout=2, max_retries=5, backoff=0.01)
    hook.export([{"seq": 1}])
    hook.close(timeout=5)
    assert receiver.posts == 1 and hook.dropped == 1


def test_webhook_retries_connection_errors_without_blocking_the_caller(receiver_factory):
    receiver = receiver_factory()
    url = receiver.url
    receiver.close()  # nothing listens there any more
    hook = WebhookExporter(url, timeout=1, max_retries=2, backoff=0.01)
    posted_from = []  # the threads each attempt ran on: none may be the caller's
    post = hook._session.post
    hook._session.post = lambda *a, **kw: posted_from.append(threading.get_ident()) or post(*a, **kw)
    hook.export([{"seq": 1}])
    hook.close(timeout=5)
    assert hook.dropped == 1 and hook.last_error.startswith("ConnectionError after 3 attempt(s)")
    assert len(posted_from) == 3 and threading.get_ident() not in posted_from


def test_a_hung_store_makes_the_writer_unhealthy(monkeypatch):
    """A store that blocks (network black hole) fails no call; the writer must still say so."""
    import threading

    from hoopcli.gateway.audit import writer as writer_module
    from hoopcli.gateway.audit.writer import AuditWriter

    release = threading.Event()

    class HungStore:
        def append(self, records):
            release.wait(30)
            return records

    monkeypatch.setattr(writer_module, "STALL_SECONDS", 0.3)
    w = AuditWriter(HungStore(), interval=0.01)
    assert w.healthy
    w.submit({"kind": "statement", "statement": "select 1"})
    deadline = time.monotonic() + 5
    while w.healthy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not w.healthy
    release.set()
    assert w.flush(5)
    assert w.healthy
    w.close()
