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

Outcomes (rows, error, duration) and the other records are appended as they happen and
written with the next start, or by the writer thread before it takes a batch: the store
never holds a record the journal does not, so a restart knows what is stored.

Files: `<dir>/<run>.<segment>.journal`, one run per gateway start, a lock file keeping a
second gateway out. Frames: length (4 bytes), CRC-32 (4), codec (1: marshal or pickle),
payload; replay stops at the first frame that is short or does not match its CRC.

    ("S", session_no, session)          a session's checked fields, once per segment
    ("s", start_id, session_no, started, text, kind, params)      a statement started
    ("t", ticket, start_id, session_no, started, text, duration, outcome, tag, code, message, details)
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


def encode_frame(entry: tuple) -> bytes:
    try:
        codec, payload = _MARSHAL, marshal.dumps(entry)
    except ValueError:  # a details value marshal does not know
        codec, payload = _PICKLE, pickle.dumps(entry, protocol=5)
    return _HEAD.pack(len(payload), zlib.crc32(payload, codec), codec) + payload


def read_frames(path: Path):
    """Every whole frame of a segment; stops quietly at a torn or corrupt tail."""
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
        yield marshal.loads(payload) if codec == _MARSHAL else pickle.loads(payload)
        at = start + length


def segment_name(run: str, number: int) -> str:
    return f"{run}.{number:06d}.journal"


class Journal:
    """The gateway's end: append (event loop and writer thread), commit, rotate, trim."""

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
        self._lock = threading.Lock()  # the buffer, the file, the segment list
        self._buffer: list[bytes] = []
        self._segments: list[tuple[Path, int]] = []  # closed segments and their newest ticket
        self._number = -1
        self._fd = -1
        self._size = 0
        self._newest_ticket = 0
        self._starts: dict[int, tuple[int, bytes, bytes]] = {}  # running: session number and frame, start frame
        self._next_start = 0
        self._sessions: dict[int, tuple[int, bytes, dict]] = {}  # id(session) → number, frame, session
        self._in_segment: set[int] = set()  # session numbers written in the current segment
        self._next_session = 0
        self._appended = 0  # frames appended, and how many of them are written / synced
        self._written = 0
        self._synced = 0
        self._sync: _GroupSync | None = _GroupSync(self) if level == "power" else None
        with self._lock:
            self._open_segment()

    # ---- the event loop: a statement starts; make it durable before forwarding ---------

    def started(self, session: dict, started: float, text: str, kind: str, params) -> int:
        text = journal_text(text)
        with self._lock:
            self._next_start += 1
            start_id = self._next_start
            number, session_frame = self._session_number(session)
            frame = encode_frame(("s", start_id, number, started, text, kind, params))
            self._starts[start_id] = (number, session_frame, frame)
            self._buffer.append(frame)
            self._appended += 1
        return start_id

    def commit(self) -> int:
        """0 when everything appended so far would survive at this level; for "power" not yet
        synced, how many frames a sync must cover first (`synced`, `when_durable`)."""
        if self._written != self._appended:
            with self._lock:
                self._write_buffer()
        if self._sync is None:
            return 0
        appended = self._appended
        return 0 if self._synced >= appended else appended

    @property
    def synced(self) -> int:
        return self._synced

    def when_durable(self, callback) -> None:
        """("power") Run `callback` on the calling loop once a sync covers what is appended."""
        self._sync.wait(callback)

    # ---- the writer (under its lock, in ticket order) ------------------------------------

    def completed(self, ticket: int, record, start_id: int = 0) -> None:
        if type(record) is tuple:
            session, started, text, duration, outcome, tag, code, message, details = record
            text = journal_text(text)
            with self._lock:
                number = self._session_number(session)[0]
                self._starts.pop(start_id, None)
                self._buffer.append(encode_frame(
                    ("t", ticket, start_id, number, started, text, duration, outcome, tag, code, message, details)
                ))
                self._appended += 1
                self._newest_ticket = ticket
            return
        if isinstance(record, dict) and isinstance(record.get("statement"), str):
            record = {**record, "statement": journal_text(record["statement"])}
        frame = encode_frame(("d", ticket, record))
        with self._lock:
            self._buffer.append(frame)
            self._appended += 1
            self._newest_ticket = ticket

    def batch_taken(self, last_ticket: int) -> None:
        """The writer thread took tickets up to `last_ticket`: write them (and the boundary,
        for replay.py) before the batch can reach the store."""
        with self._lock:
            self._buffer.append(encode_frame(("b", last_ticket)))
            self._appended += 1
            self._write_buffer()

    def trim(self, stored: int) -> None:
        """Delete the closed segments whose every record the store holds."""
        with self._lock:
            while self._segments and self._segments[0][1] <= stored:
                path, _ = self._segments.pop(0)
                _unlink(path)

    def forget(self, session: dict) -> None:
        """A session ended: its fields are no longer needed in new segments."""
        with self._lock:
            self._sessions.pop(id(session), None)

    def close(self, everything_stored: bool) -> None:
        """Stop; with everything stored, delete this run's files (else a restart replays them)."""
        if self._sync is not None:
            self._sync.stop()
        with self._lock:
            self._write_buffer()
            os.close(self._fd)
            self._fd = -1
            if everything_stored:
                for path, _ in self._segments:
                    _unlink(path)
                _unlink(self._path(self._number))
                self._segments.clear()
        self._lock_file.close()

    # ---- inside the lock ---------------------------------------------------------------

    def _session_number(self, session: dict) -> tuple[int, bytes]:
        """The session's number and frame, written first if this segment lacks it."""
        known = self._sessions.get(id(session))
        if known is None:
            self._next_session += 1
            number = self._next_session
            known = self._sessions[id(session)] = (number, encode_frame(("S", number, session)), session)
        if known[0] not in self._in_segment:
            self._in_segment.add(known[0])
            self._buffer.append(known[1])
            self._appended += 1
        return known[0], known[1]

    def _write_buffer(self) -> None:
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        count = len(self._buffer)
        self._buffer.clear()
        _write_all(self._fd, data)
        self._size += len(data)
        self._written += count
        if self._size >= self.segment_bytes:
            self._rotate()

    def _rotate(self) -> None:
        if self._sync is not None:
            os.fsync(self._fd)  # the old segment is complete on disk before the new one counts
        os.close(self._fd)
        self._segments.append((self._path(self._number), self._newest_ticket))
        self._open_segment()
        # The statements still running, and their sessions, start the new segment.
        for number, session_frame, frame in self._starts.values():
            if number not in self._in_segment:
                self._in_segment.add(number)
                self._buffer.append(session_frame)
                self._appended += 1
            self._buffer.append(frame)
            self._appended += 1
        if self._buffer:
            data = b"".join(self._buffer)
            self._written += len(self._buffer)
            self._buffer.clear()
            _write_all(self._fd, data)
            self._size = len(data)

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
                journal._write_buffer()
                upto, fd = journal._written, journal._fd
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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
