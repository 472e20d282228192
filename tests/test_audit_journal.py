"""The journal on its own: what is on disk when commit() returns, group sync ("power"),
rotation and trimming, torn tails, and replay that stores a run exactly once however often
it is cut short. Real files and a real SQLite store; no gateway."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from hoopcli.gateway.audit import open_store
from hoopcli.gateway.audit.journal import Journal, read_frames
from hoopcli.gateway.audit.replay import NO_OUTCOME, replay_leftovers, run_batches
from hoopcli.gateway.audit.writer import BatchStorer

SESSION = {"kind": "statement", "session_id": "s1", "sub": "alice", "email": None, "issuer": "https://idp",
           "connection": "app-db", "db_user": "app", "database": "app"}


def frames(journal: Journal) -> list[tuple]:
    return [f for path in sorted(journal.directory.glob("*.journal")) for f in read_frames(path)]


def test_a_started_statement_is_on_disk_when_commit_returns(tmp_path):
    journal = Journal(tmp_path / "j")
    journal.started(SESSION, time.time(), "delete from t", "query", None)
    assert [f[0] for f in frames(journal)] == []  # appended, not yet written
    assert journal.commit() == 0  # "process": written, nothing to wait for
    kinds = [f[0] for f in frames(journal)]
    assert kinds == ["S", "s"] and frames(journal)[1][4] == "delete from t"
    journal.close(everything_stored=False)


def test_power_waits_for_a_sync_shared_by_every_waiter(tmp_path):
    journal = Journal(tmp_path / "j", "power")

    async def scenario():
        released = []
        needs = []
        for n in range(5):
            journal.started(SESSION, time.time(), f"select {n}", "query", None)
            need = journal.commit()
            assert need > 0  # not forwarded before an fsync covers it
            needs.append(need)
            journal.when_durable(lambda n=n: released.append(n))
        for _ in range(200):
            if len(released) == 5:
                break
            await asyncio.sleep(0.01)
        return released, needs

    released, needs = asyncio.run(scenario())
    assert sorted(released) == list(range(5)) and journal.synced >= max(needs)
    assert journal.commit() == 0
    journal.close(everything_stored=True)
    assert not list((tmp_path / "j").glob("*.journal"))  # all stored: nothing left to replay


def test_rotation_carries_running_statements_and_trim_deletes_stored_segments(tmp_path):
    journal = Journal(tmp_path / "j", segment_bytes=2000)
    long_running = journal.started(SESSION, time.time(), "select pg_sleep(3600)", "query", None)
    journal.commit()
    for ticket in range(1, 60):
        start = journal.started(SESSION, time.time(), f"select {ticket}", "query", None)
        journal.completed(ticket, (SESSION, time.time(), f"select {ticket}", 0.1, "ok", "SELECT 1", None, None, {"kind": "query"}), start)
        journal.commit()
    segments = sorted((tmp_path / "j").glob("*.journal"))
    assert len(segments) > 3
    newest = list(read_frames(segments[-1]))
    assert any(f[0] == "s" and f[1] == long_running for f in newest)  # still running: carried over
    assert any(f[0] == "S" for f in newest)  # with its session
    journal.trim(59)
    assert sorted((tmp_path / "j").glob("*.journal")) == segments[-1:]
    journal.close(everything_stored=False)


def test_a_torn_tail_ends_the_replay_at_the_last_whole_frame(tmp_path):
    """A frame is one write (every start handed over since the last commit): a write torn by a
    power loss is dropped whole, and none of its statements had been forwarded."""
    journal = Journal(tmp_path / "j")
    for n in range(3):
        journal.started(SESSION, time.time(), f"select {n}", "query", None)
        journal.commit()  # one write each, as three statements forwarded one after another
    journal.started(SESSION, time.time(), "select 3", "query", None)
    journal.started(SESSION, time.time(), "select 4", "query", None)
    journal.commit()  # two starts of one loop turn: one frame
    journal.close(everything_stored=False)
    [segment] = (tmp_path / "j").glob("*.journal")
    whole = segment.read_bytes()
    starts = [f[4] for f in read_frames(segment) if f[0] == "s"]
    assert starts == [f"select {n}" for n in range(5)]
    segment.write_bytes(whole[:-5])  # the last write cut short (power lost mid-write)
    assert [f[4] for f in read_frames(segment) if f[0] == "s"] == ["select 0", "select 1", "select 2"]
    segment.write_bytes(whole[:-5] + b"\xff" * 5 + whole[-5:])  # corrupted bytes: CRC mismatch
    assert [f[4] for f in read_frames(segment) if f[0] == "s"] == ["select 0", "select 1", "select 2"]


def _journal_of_a_killed_run(directory) -> str:
    """A run that stored nothing: 250 finished statements in batches of 100 taken, and three
    started whose outcome never came."""
    journal = Journal(directory)
    for ticket in range(1, 251):
        start = journal.started(SESSION, 1_700_000_000 + ticket, f"select {ticket}", "query", None)
        journal.completed(ticket, (SESSION, 1_700_000_000 + ticket, f"select {ticket}", 0.1, "ok", "SELECT 1", None, None, {"kind": "query"}), start)
        if ticket % 100 == 0:
            journal.batch_taken(ticket)
    for n in range(3):
        journal.started(SESSION, 1_700_001_000 + n, f"update t set n = {n}", "query", None)
    journal.commit()
    run = journal.run
    journal._lock_file.close()  # dies without close(): its files stay
    return run


def test_replay_stores_a_killed_run_once_even_when_cut_short_and_repeated(tmp_path):
    directory = tmp_path / "j"
    run = _journal_of_a_killed_run(directory)
    batches = run_batches(run, sorted(directory.glob("*.journal")))
    assert [marker for _, marker in batches] == [f"{run}:100", f"{run}:200", f"{run}:253"]
    backup = tmp_path / "copy"
    shutil.copytree(directory, backup)

    with open_store(str(tmp_path / "audit.db")) as store:
        storer = BatchStorer(store)
        # The first batch reached the store before the gateway died (the writer had taken it).
        storer.store_batch(batches[0][0], batches[0][1])
        assert replay_leftovers(directory, "", BatchStorer(store)) == 153
        shutil.rmtree(directory)
        shutil.copytree(backup, directory)  # the replay "died" before deleting the journal
        assert replay_leftovers(directory, "", BatchStorer(store)) == 0
        records = store.query(kind="statement")
        assert store.verify().ok
    texts = [r["statement"] for r in records]
    assert texts == [f"select {n}" for n in range(1, 251)] + [f"update t set n = {n}" for n in range(3)]
    unknown = records[-3:]
    assert all(r["outcome"] == "error" and r["message"] == NO_OUTCOME for r in unknown)
    assert not list(directory.glob("*.journal"))


def test_a_second_gateway_on_the_same_journal_is_refused(tmp_path):
    from hoopcli.gateway.audit.journal import lock_directory

    first = Journal(tmp_path / "j")
    with pytest.raises(ValueError, match="in use by another gateway"):
        lock_directory(tmp_path / "j", wait=0.2)
    first.close(everything_stored=True)


def test_the_journal_keeps_no_password_in_any_frame(tmp_path):
    """The journal is a file on the gateway host: starts, outcomes and other records in it are
    masked like the store; a statement too large to mask on the loop keeps only the text before
    its first secret keyword."""
    from hoopcli.gateway.audit.journal import MASK_ON_LOOP_MAX, Journal

    secret = "s3cr3t-" + "x" * 8
    big = "ALTER ROLE app PASSWORD '" + secret + "' /*" + "y" * MASK_ON_LOOP_MAX + "*/"
    journal = Journal(tmp_path, "process")
    try:
        session = {"session_id": "s1", "sub": "alice"}
        for text in (f"ALTER ROLE app PASSWORD E'{secret}'", big):
            start = journal.started(session, 1.0, text, "query", None)
            journal.completed(1, (session, 1.0, text, 0.1, "ok", "ALTER ROLE", "", "", {}), start)
        journal.completed(2, {"kind": "statement", "statement": f"CREATE USER u IDENTIFIED BY '{secret}'", "outcome": "held"})
        assert journal.commit() == 0
    finally:
        journal.close(everything_stored=False)
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert secret.encode() not in data
    assert b"too large to mask before forwarding" in data and b"ALTER ROLE app " in data


def test_a_failed_write_is_cut_off_so_later_frames_still_replay(tmp_path, monkeypatch):
    """A short write (a full disk) must not leave a torn frame in the middle of a segment:
    replay stops at the first torn frame, so every start written after it would be lost."""
    import hoopcli.gateway.audit.journal as journal_module

    journal = Journal(tmp_path / "j")
    journal.started(SESSION, time.time(), "select 1", "query", None)
    journal.commit()
    real_write = journal_module.os.write
    monkeypatch.setattr(journal_module.os, "write", lambda fd, data: real_write(fd, data[: len(data) // 2]))
    journal.started(SESSION, time.time(), "select 2", "query", None)
    with pytest.raises(OSError):
        journal.commit()  # not on disk: the relay does not forward this statement
    monkeypatch.setattr(journal_module.os, "write", real_write)
    journal.started(SESSION, time.time(), "select 3", "query", None)
    journal.commit()
    journal.close(everything_stored=False)
    [segment] = (tmp_path / "j").glob("*.journal")
    assert [f[4] for f in read_frames(segment) if f[0] == "s"] == ["select 1", "select 3"]
