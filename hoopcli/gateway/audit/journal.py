"""The local journal: no statement is forwarded ahead of its record (durability levels).

A gateway whose `durability` is "process" or "power" appends every record to an append-only
file before the store ever sees it, and a statement's start (who, when, what) before its
bytes go upstream:

    process  the start is written (os.write) before the engine's bytes are forwarded: it
             survives the gateway process dying (SIGKILL, OOM) at any instant; the kernel
             holds it. A power loss or kernel crash can lose what the disk had not written.
    power    the same, and the file is fsync()ed before forwarding. Sessions share one
             fsync (group commit): a sync thread syncs everything appended so far while the
             sessions that wait for it hold their upstream bytes.
    async    no journal (`durability = "async"`): records wait in memory for the writer;
             a gateway that dies loses what was queued (up to the writer's batch interval,
             more while the store is slow).

A start costs the event loop a tuple on a queue; before the statement's bytes go upstream
the relay's commit() writes whatever was handed over since the last write (the start, the
outcomes that came meanwhile, other records) as one frame with one write(). The writer
thread writes what is left before it takes a batch: the store never holds a record the
journal does not, so a restart knows what is stored. (Deferring the write to the loop's next
turn, so that every session forwarding in one turn shares it, was measured: the callbacks
cost the loop as much as the writes saved, and -c 1 waited a turn longer. bench/durability.py.)

Files: `<dir>/<run>.<segment>.journal`, one run per gateway start, a lock file keeping a
second gateway out. One frame per write: length (4 bytes), CRC-32 (4), codec (1: marshal or
pickle), then the payload, a list of entries; replay stops at the first frame that is short
or does not match its CRC (a write torn by a power loss: none of its starts was forwarded).

    ("S", session_no, session)          a session's checked fields, once per segment
    ("s", start_id, session_no, started, text, kind, params)      a statement started
    ("o", ticket, start_id, duration, outcome, tag, code, message, details)   its outcome
    ("t", ticket, 0, session_no, started, text, duration, outcome, tag, code, message, details)
                                        a statement record with no journaled start
    ("d", ticket, record)               any other record (connect, session_end, held, …)
    ("b", last_ticket)                  the writer took a batch ending there (replay.py)

Tickets are the writer's (AuditWriter), so "the store holds tickets ≤ n" trims every segment
whose newest ticket is ≤ n. A segment is rotated at `segment_bytes`; the new one starts with
the statements still running and their sessions, so nothing older is needed to replay it.
"""

from __future__ import annotations

import fcntl
import logging
import marshal
import os
import pickle
import struct
import threading
import time
import uuid
import zlib
from collections import deque
from pathlib import Path

from .masking import first_secret_keyword, mask_sql_secrets

log = logging.getLogger("hoopcli.audit")

LEVELS = ("process", "power", "async")
SEGMENT_BYTES = 32 * 1024 * 1024
LOCK_WAIT = 30.0  # seconds a starting gateway waits for the journal's lock (an old writer finishing)
_HEAD = struct.Struct("<IIB")  # payload length, CRC-32 of codec + payload, codec
_MARSHAL, _PICKLE = 0, 1


# The journal is a file: what it holds must be masked like the store (no password on disk).
# Masking runs here, on the relay's loop, so a statement too large to mask quickly that may
# hold a secret keeps only the text before its first secret keyword: the journal matters only
# when a gateway dies, and then this record says what was cut.
MASK_ON_LOOP_MAX = 64 * 1024
TOO_LARGE_TO_MASK = "'[REDACTED: too large to mask before forwarding; the text after this point is not kept]'"


def journal_text(text: str) -> str:
    if len(text) <= MASK_ON_LOOP_MAX:
        return mask_sql_secrets(text)
    first = first_secret_keyword(text)
    return text if first < 0 else text[:first] + TOO_LARGE_TO_MASK


def encode_frame(entries: list) -> bytes:
    """One frame holding every entry of one write: one header and one CRC per write, so a
    write torn by a power loss is found and dropped whole."""
    try:
        codec, payload = _MARSHAL, marshal.dumps(entries)
    except ValueError:  # a details value marshal does not know
        codec, payload = _PICKLE, pickle.dumps(entries, protocol=5)
    return _HEAD.pack(len(payload), zlib.crc32(payload, codec), codec) + payload


def read_frames(path: Path):
    """Every entry of every whole frame of a segment; stops quietly at a torn or corrupt tail."""
    data = path.read_bytes()
    at, end = 0, len(data)
    while at + _HEAD.size <= end:
        length, crc, codec = _HEAD.unpack_from(data, at)
        start = at + _HEAD.size
        payload = data[start:start + length]
        if len(payload) < length or zlib.crc32(payload, codec) != crc or codec not in (_MARSHAL, _PICKLE):
            if start + length < end or len(payload) < length:
                log.warning("audit journal %s: stopped at a torn frame at byte %d of %d", path.name, at, end)
            return
        entries = marshal.loads(payload) if codec == _MARSHAL else pickle.loads(payload)
        if type(entries) is tuple:  # a journal from before frames were grouped: one entry each
            yield entries
        else:
            yield from entries
        at = start + length


def segment_name(run: str, number: int) -> str:
    return f"{run}.{number:06d}.journal"


# What the gateway's threads hand the journal (`Journal._pending`), turned into entries by
# whichever thread writes next (`Journal._drain`), in the order they were handed over: starts
# ("s", with the session's dict), outcomes ("o", already the entry) and these.
_RECORD, _FORGET = range(2)


class Journal:
    """The gateway's end: append (event loop and writer thread), commit, rotate, trim.

    Appending costs the event loop a tuple and a deque append (thread-safe without a lock);
    `commit()` writes everything pending with one write() under the lock, which the writer
    thread takes only to write a batch's boundary and the sync thread only to read where a
    sync must reach."""

    def __init__(self, directory: str | Path, level: str = "process", *, segment_bytes: int = SEGMENT_BYTES):
        if level not in ("process", "power"):
            raise ValueError(f"a journal is for durability \"process\" or \"power\", not {level!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.level = level
        self.segment_bytes = segment_bytes
        self._lock_file = lock_directory(self.directory)
        self.lock_fd = self._lock_file.fileno()  # the writer process inherits it (lock_directory)
        self.run = f"{uuid.uuid4().hex[:16]}"
        self._pending: deque = deque()  # handed over, not yet written (any thread appends)
        self._lock = threading.Lock()  # below: the file, the segment list, the session numbers
        self._segments: list[tuple[Path, int]] = []  # closed segments and their newest ticket
        self._number = -1
        self._fd = -1
        self._size = 0
        self._newest_ticket = 0
        self._starts: dict[int, tuple[tuple, tuple]] = {}  # running: start id → its session's entry, its entry
        self._next_start = 0  # the event loop's
        self._sessions: dict[int, tuple[int, tuple, dict]] = {}  # id(session) → number, entry, session
        self._in_segment: set[int] = set()  # session numbers written in the current segment
        self._next_session = 0
        self._writes = 0  # write() calls made, and how many of them a sync covers ("power")
        self._synced = 0
        self._sync: _GroupSync | None = _GroupSync(self) if level == "power" else None
        with self._lock:
            self._open_segment()

    # ---- the event loop: a statement starts; make it durable before forwarding ---------

    def started(self, session: dict, started: float, text: str, kind: str, params) -> int:
        self._next_start += 1
        start_id = self._next_start
        text = mask_sql_secrets(text) if len(text) <= MASK_ON_LOOP_MAX else journal_text(text)
        self._pending.append(("s", start_id, session, started, text, kind, params))
        return start_id

    def commit(self) -> int:
        """0 when everything handed over so far would survive at this level; for "power" not
        yet synced, the write count a sync must cover first (`synced`, `when_durable`)."""
        if self._pending:
            with self._lock:
                self._drain()
        if self._sync is None:
            return 0
        writes = self._writes
        return 0 if self._synced >= writes else writes

    @property
    def synced(self) -> int:
        return self._synced

    def when_durable(self, callback) -> None:
        """("power") Run `callback` on the calling loop once a sync covers what is written."""
        self._sync.wait(callback)

    # ---- records with tickets (AuditWriter.enqueue, under its lock: in ticket order) ------

    def completed(self, ticket: int, record, start_id: int = 0) -> None:
        """A record the writer will store as `ticket`. A statement whose start is journaled
        (`start_id`) keeps only its outcome here: replay takes the rest from the start."""
        if start_id and type(record) is tuple:
            _, _, _, duration, outcome, tag, code, message, details = record
            self._pending.append(("o", ticket, start_id, duration, outcome, tag, code, message, details))
        else:
            self._pending.append((_RECORD, ticket, record))

    def batch_taken(self, last_ticket: int) -> None:
        """The writer thread took tickets up to `last_ticket`: write them (and the boundary,
        for replay.py) before the batch can reach the store."""
        with self._lock:
            self._drain(("b", last_ticket))

    def trim(self, stored: int) -> None:
        """Delete the closed segments whose every record the store holds."""
        with self._lock:
            while self._segments and self._segments[0][1] <= stored:
                path, _ = self._segments.pop(0)
                _unlink(path)

    def forget(self, session: dict) -> None:
        """A session ended: its fields are no longer needed in new segments (after what it
        has handed over so far is written)."""
        self._pending.append((_FORGET, session))

    def close(self, everything_stored: bool) -> None:
        """Stop; with everything stored, delete this run's files (else a restart replays them)."""
        if self._sync is not None:
            self._sync.stop()
        with self._lock:
            self._drain()
            os.close(self._fd)
            self._fd = -1
            if everything_stored:
                for path, _ in self._segments:
                    _unlink(path)
                _unlink(self._path(self._number))
                self._segments.clear()
        self._lock_file.close()

    # ---- inside the lock ---------------------------------------------------------------

    def _drain(self, last: tuple | None = None) -> None:
        """Write what is pending (and `last`) as one frame. Entries handed over meanwhile wait
        for the next drain: whoever handed them over commits after this one ends."""
        pending, sessions, in_segment, starts = self._pending, self._sessions, self._in_segment, self._starts
        entries: list[tuple] = []
        for _ in range(len(pending)):  # one pass, few calls: this runs on the loop for every statement
            item = pending.popleft()
            what = item[0]
            if what == "s":
                _, start_id, session, started, text, kind, params = item
                known = sessions.get(id(session))
                if known is None or known[0] not in in_segment:
                    known = self._session_entry(session, entries)
                entry = ("s", start_id, known[0], started, text, kind, params)
                starts[start_id] = (known[1], entry)
            elif what == "o":  # already the entry
                entry = item
                starts.pop(item[2], None)
                self._newest_ticket = item[1]
            elif what is _RECORD:
                entry = self._record_entry(item[1], item[2], entries)
                self._newest_ticket = item[1]
            else:  # _FORGET
                sessions.pop(id(item[1]), None)
                continue
            entries.append(entry)
        if last is not None:
            entries.append(last)
        if entries:
            self._write(encode_frame(entries))

    def _record_entry(self, ticket: int, record, entries: list) -> tuple:
        if type(record) is tuple:  # a statement tuple (record.py) with no journaled start
            session, started, text, duration, outcome, tag, code, message, details = record
            number = self._session_entry(session, entries)[0]
            return ("t", ticket, 0, number, started, journal_text(text), duration, outcome, tag, code, message, details)
        if isinstance(record, dict) and isinstance(record.get("statement"), str):
            record = {**record, "statement": journal_text(record["statement"])}
        return ("d", ticket, record)

    def _session_entry(self, session: dict, entries: list) -> tuple[int, tuple, dict]:
        """(number, entry, session) for a session; its entry goes into `entries` first if
        this segment lacks it."""
        known = self._sessions.get(id(session))
        if known is None:
            self._next_session += 1
            number = self._next_session
            known = self._sessions[id(session)] = (number, ("S", number, session), session)
        if known[0] not in self._in_segment:
            self._in_segment.add(known[0])
            entries.append(known[1])
        return known

    def _write(self, data: bytes) -> None:
        self._append_frame(data)
        self._size += len(data)
        self._writes += 1
        if self._size >= self.segment_bytes:
            self._rotate()

    def _rotate(self) -> None:
        if self._sync is not None:
            os.fsync(self._fd)  # the old segment is complete on disk before the new one counts
        os.close(self._fd)
        self._segments.append((self._path(self._number), self._newest_ticket))
        self._open_segment()
        # The statements still running, and their sessions, start the new segment.
        entries: list[tuple] = []
        for session_entry, entry in self._starts.values():
            if session_entry[1] not in self._in_segment:
                self._in_segment.add(session_entry[1])
                entries.append(session_entry)
            entries.append(entry)
        if entries:
            data = encode_frame(entries)
            self._append_frame(data)
            self._size = len(data)
            self._writes += 1

    def _append_frame(self, data: bytes) -> None:
        """One write() per frame. A failed or short one (a full disk) is cut off again, so the
        frames written after it are not hidden behind a torn one when the journal is replayed."""
        try:
            if os.write(self._fd, data) == len(data):
                return
            problem: OSError = OSError(f"short write to {self._path(self._number).name}")
        except OSError as exc:
            problem = exc
        os.ftruncate(self._fd, self._size)
        raise problem

    def _open_segment(self) -> None:
        self._number += 1
        self._fd = os.open(self._path(self._number), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self._size = 0
        self._in_segment = set()
        if self._sync is not None:
            _fsync_directory(self.directory)

    def _path(self, number: int) -> Path:
        return self.directory / segment_name(self.run, number)


class _GroupSync:
    """("power") One thread fsyncs for every waiting session: while a sync runs, new
    waiters gather for the next one, so sessions share flushes (group commit)."""

    def __init__(self, journal: Journal):
        self.journal = journal
        self._cond = threading.Condition()
        self._waiting: list = []
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="hoop-journal-sync", daemon=True)
        self._thread.start()

    def wait(self, callback) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        with self._cond:
            self._waiting.append((loop, callback))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(10)

    def _run(self) -> None:
        journal = self.journal
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiting or self._stopped)
                if self._stopped and not self._waiting:
                    return
                waiting, self._waiting = self._waiting, []
            with journal._lock:
                journal._drain()
                upto, fd = journal._writes, journal._fd
            try:
                os.fsync(fd)
            except OSError as exc:  # e.g. rotated meanwhile: the rotation synced the old one
                log.debug("audit journal: fsync: %s", exc)
            journal._synced = max(journal._synced, upto)
            for loop, callback in waiting:
                try:
                    loop.call_soon_threadsafe(callback)
                except RuntimeError:  # that loop is closed: nothing waits any more
                    pass


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def lock_directory(directory: Path, wait: float = LOCK_WAIT):
    """The directory's lock, held by the gateway and inherited by its writer process: a
    restarted gateway waits for the old writer process to finish its last batch before it
    replays (else both could store one batch). Another live gateway keeps it: refused."""
    handle = open(directory / "lock", "a+")
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except OSError:
            if time.monotonic() >= deadline:
                handle.close()
                raise ValueError(
                    f"the audit journal {directory} is in use by another gateway; give each its own journal_dir"
                ) from None
            time.sleep(0.05)
