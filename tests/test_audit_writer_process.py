"""The gateway's audit writer process (AuditWriter.in_subprocess): a real child process that
owns the store, fed over a pipe. What these prove: every submitted record lands in the store
in order and the chain verifies; the child dying loses nothing (a new one gets every batch not
yet acknowledged); a store that cannot be opened makes the writer unhealthy (the gateway then
refuses sessions) with the reason; Ctrl-C at the gateway's terminal does not reach the child."""

from __future__ import annotations

import os
import signal
import socket
import time

from hoopcli.gateway.audit import AuditWriter, open_store, read_jsonl, verify_records


def _wait(predicate, seconds=10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_every_record_is_stored_in_order_and_exported(tmp_path):
    db, jsonl = tmp_path / "audit.db", tmp_path / "export.jsonl"
    writer = AuditWriter.in_subprocess(str(db), [("jsonl", str(jsonl))])
    for i in range(5_000):
        writer.submit({"kind": "statement", "sub": "alice", "statement": f"select {i}", "details": {"n": i}})
    assert writer.flush(30) and writer.healthy
    assert writer.close()
    assert writer.stored == writer.submitted == 5_000
    with open_store(db) as store:
        report = store.verify()
        assert report.ok and report.checked == 5_000
        records = store.query()
    assert [r["statement"] for r in records] == [f"select {i}" for i in range(5_000)]
    exported = list(read_jsonl(jsonl))
    assert [r["seq"] for r in exported] == list(range(1, 5_001))
    assert verify_records(exported).ok


def test_a_killed_writer_process_is_replaced_and_nothing_is_lost(tmp_path):
    db = tmp_path / "audit.db"
    writer = AuditWriter.in_subprocess(str(db), interval=0.01)
    for i in range(1_000):
        writer.submit({"kind": "statement", "statement": f"select {i}"})
    assert writer.flush(30)
    first = writer._process._proc.pid
    os.kill(first, signal.SIGKILL)
    for i in range(1_000, 2_000):
        writer.submit({"kind": "statement", "statement": f"select {i}"})
    assert writer.flush(30), writer.last_error
    assert writer._process._proc.pid != first and writer._process.restarts == 1
    assert writer.healthy
    assert writer.close()
    with open_store(db) as store:
        assert store.verify().ok
        statements = [r["statement"] for r in store.query()]
    # A batch the dead process stored but had not acknowledged may be stored twice; none is lost.
    assert set(statements) == {f"select {i}" for i in range(2_000)}
    assert len(statements) - 2_000 <= 500


def test_an_unreachable_store_makes_the_writer_unhealthy_with_the_reason():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    writer = AuditWriter.in_subprocess(f"postgresql://hoop@127.0.0.1:{port}/audit?connect_timeout=1", interval=0.01)
    writer.submit({"kind": "statement", "statement": "select 1"})
    assert _wait(lambda: not writer.healthy, 15)
    assert "cannot open the audit store" in (writer.last_error or "")
    assert writer.close(timeout=0.5) is False
    assert writer.lost == 1


def test_the_writer_process_is_out_of_reach_of_the_terminals_ctrl_c(tmp_path):
    writer = AuditWriter.in_subprocess(str(tmp_path / "audit.db"))
    try:
        child = writer._process._proc.pid
        assert os.getsid(child) != os.getsid(0)  # its own session: no terminal SIGINT/SIGHUP
        writer.submit({"kind": "statement", "statement": "select 1"})
        assert writer.flush(30)
    finally:
        assert writer.close()
    assert _wait(lambda: writer._process._proc.poll() is not None, 5)


def test_close_gives_up_on_a_stuck_writer_process_in_time():
    """A store that never answers (a black-hole PostgreSQL): the batches fill the pipe and the
    sending thread blocks; close() must still return after its timeout, counting the loss."""
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen()
        port = black_hole.getsockname()[1]
        writer = AuditWriter.in_subprocess(f"postgresql://hoop@127.0.0.1:{port}/audit?connect_timeout=60", interval=0.01)
        for i in range(5_000):  # far more than a pipe holds
            writer.submit({"kind": "statement", "statement": f"select {i} -- " + "x" * 100})
        time.sleep(0.5)
        started = time.monotonic()
        assert writer.close(timeout=1) is False
        assert time.monotonic() - started < 8
        assert writer.lost == 5_000
        assert writer._process._proc.poll() is not None
