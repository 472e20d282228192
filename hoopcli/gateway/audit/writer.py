"""AuditWriter: the gateway's non-blocking way into an audit store.

`submit()` runs on the relay's hot path (an asyncio loop): a few dict operations and a deque
append under a lock — no I/O, no hashing. A background thread takes batches (up to
`batch_size`, or whatever arrived within `interval`) and hands them on:

- `AuditWriter(store)`: the thread stores them itself (`BatchStorer`: normalize, append,
  export). Used when the caller owns a store object (tests, embedding).
- `AuditWriter.in_subprocess(store_url)`: the gateway's mode. The batches go, pickled, to a
  writer process (`audit/process.py`) that owns the store. Normalizing, hashing and SQLite
  inserts cost ~14 µs of CPU per statement; in the gateway's own process that work held the
  GIL in bursts of milliseconds and stalled every relayed session behind it (pgbench -S -c 8
  through the gateway, recording on ÷ off: ~0.47 with the thread, ~0.65 with the process,
  measured side by side; bench/RESULTS.md).

If the store fails, the batch is kept and retried with exponential backoff and jitter, and
`healthy` turns False with `last_error`, so the gateway can fail closed (refuse new sessions
and statements) until it recovers.

Records are stored in submit order, so `submit()`'s ticket n is stored exactly when
`stored >= n`; `flush()` waits for the tickets issued before it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import deque
from typing import Callable, Iterable

from .masking import mask_sql_secrets
from .record import check, normalize
from .replay import already_stored, mark, run_of
from .statements import StatementNormalizer, statement_record

log = logging.getLogger("hoopcli.audit")


STALL_SECONDS = 10.0  # records waiting this long with no append finishing: the store is stuck
MAX_BACKLOG = 200_000  # records queued but not stored before the writer reports unhealthy


def prepare(record: dict | tuple, statements: StatementNormalizer | None = None) -> dict:
    """Normalize, never raise: a record that cannot be kept as given is kept as best we can.
    Passwords written inside SQL are masked here, off the event loop. A statement tuple
    (record.py) takes the fast way through `statements` (one per batch) when it can."""
    if type(record) is tuple:
        fast = None
        if statements is not None:
            try:
                fast = statements(record)
            except Exception:  # e.g. a session field normalize() refuses: the general path says why
                pass
        if fast is not None:
            return fast
        record = statement_record(record)
    statement = record.get("statement")
    if isinstance(statement, str):
        record = dict(record, statement=mask_sql_secrets(statement))
    try:
        return normalize(record)
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"[:500]
    try:  # most likely a bad timestamp: keep everything else
        details = record.get("details")
        details = dict(details) if isinstance(details, dict) else {"value": details}
        details.update(
            audit_error=problem, original_ts=str(record.get("ts")), original_started_at=str(record.get("started_at"))
        )
        return normalize(dict(record, ts=time.time(), started_at=None, details=details))
    except Exception:
        keep = {name: record.get(name) for name in ("session_id", "sub", "connection") if isinstance(record.get(name), str)}
        return normalize(dict(keep, kind=record["kind"], outcome="error", details={"audit_error": problem}))


class BatchStorer:
    """Stores one batch at a time: prepare, append (retrying with backoff until it works or
    `abandon` is set), then hand the stored records to the exporters. Runs wherever the store
    lives: the writer thread, or the writer process."""

    def __init__(
        self,
        store,
        exporters: Iterable = (),
        *,
        initial_backoff: float = 0.05,
        max_backoff: float = 5.0,
        abandon: threading.Event | None = None,
        on_failure: Callable[[int, str], None] = lambda failures, error: None,
    ):
        self.store = store
        self.exporters = list(exporters)
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.abandon = abandon or threading.Event()
        self.on_failure = on_failure
        self.failures = 0  # failed append attempts in a row
        self.export_errors = 0
        self._append = getattr(store, "append_normalized", store.append)
        self._clear_runs: set[str] = set()  # runs whose first in-doubt batch was not stored

    def store_batch(self, records: list, marker: str | None = None, in_doubt: bool = False) -> list[dict] | None:
        """The records stored now ([] when an in-doubt batch was stored already), or None when
        abandoned before the store took them. `marker` goes into the last record's details
        (replay.py): a batch in doubt is looked for by it first, so it is stored exactly once."""
        if marker is not None:
            records = [*records[:-1], mark(records[-1], marker)]
        statements = StatementNormalizer(mask_sql_secrets)
        batch = [prepare(r, statements) for r in records]
        while True:
            try:
                if in_doubt and marker is not None and run_of(marker) not in self._clear_runs:
                    if already_stored(self.store, batch[-1], marker):
                        log.warning("audit writer: batch %s was stored before the restart; not stored again", marker)
                        return []
                    self._clear_runs.add(run_of(marker))  # the store holds a prefix: none after it either
                stored = self._append(batch)
            except Exception as exc:
                self.failures += 1
                error = f"{type(exc).__name__}: {exc}"
                log.error("audit store append failed (attempt %d): %s", self.failures, error)
                self.on_failure(self.failures, error)
                delay = min(self.max_backoff, self.initial_backoff * 2 ** min(self.failures - 1, 30))
                if self.abandon.wait(delay * random.uniform(0.5, 1.0)):
                    return None
                continue
            self.failures = 0
            self._export(stored)
            return stored

    def _export(self, stored: list[dict]) -> None:
        for exporter in self.exporters:
            try:
                exporter.export(stored)
            except Exception as exc:
                self.export_errors += 1
                log.warning("audit exporter %s failed: %s", type(exporter).__name__, exc)

    def close_exporters(self) -> None:
        for exporter in self.exporters:
            try:
                exporter.close()
            except Exception as exc:  # an exporter never breaks shutdown
                log.warning("audit exporter %s: close failed: %s", type(exporter).__name__, exc)


class AuditWriter:
    def __init__(
        self,
        store=None,
        exporters: Iterable = (),
        *,
        batch_size: int = 500,
        interval: float = 0.05,
        initial_backoff: float = 0.05,
        max_backoff: float = 5.0,
        journal=None,
        _process=None,
    ):
        self.store = store  # not owned: the caller closes it after close()
        self.batch_size = max(1, int(batch_size))
        self.interval = interval
        self._queue: deque[dict] = deque()
        self._lock = threading.Lock()  # submit order == ticket order
        self._cond = threading.Condition()  # flush waiters
        self._wake = threading.Event()
        self._abandon = threading.Event()  # close() gave up: stop retrying
        self._submitted = 0
        self._stored = 0
        self._urgent_upto = 0
        self._closed = False
        self._healthy = True
        self._thread_ended = False
        self._progress_at = time.monotonic()
        self.last_error: str | None = None
        self.failures = 0  # failed append attempts in a row
        self._export_errors = 0
        self.lost = 0  # records still queued when close() gave up
        self._storer = None
        self._process = _process
        self.journal = journal  # audit/journal.py: every record appended before the store sees it
        self.run = journal.run if journal is not None else uuid.uuid4().hex[:16]  # batch markers (replay.py)
        self._taken = 0  # tickets taken into batches
        if _process is None:
            self._storer = BatchStorer(
                store, exporters, initial_backoff=initial_backoff, max_backoff=max_backoff,
                abandon=self._abandon, on_failure=self._failed,
            )
        else:
            _process.start(on_stored=self._stored_batch, on_failure=self._failed)
        self._thread = threading.Thread(target=self._run, name="hoop-audit-writer", daemon=True)
        self._thread.start()

    @classmethod
    def in_subprocess(cls, store_url: str, exporter_specs: Iterable[tuple[str, str]] = (), **options) -> "AuditWriter":
        """A writer whose store (opened from `store_url`) and exporters live in a child process."""
        from .process import WriterProcess

        backoff = {k: options[k] for k in ("initial_backoff", "max_backoff") if k in options}
        journal = options.get("journal")
        keep = () if journal is None else (journal.lock_fd,)
        return cls(_process=WriterProcess(store_url, list(exporter_specs), keep_fds=keep, **backoff), **options)

    # ---- hot path ---------------------------------------------------------------------

    def submit(self, record: dict) -> int:
        """Queue one record; returns its ticket (see `stored`). Raises ValueError on a bad kind/field."""
        check(record)
        record = dict(record)
        if record.get("ts") is None:
            record["ts"] = time.time()  # when it happened; formatted off the hot path
        return self.enqueue(record)

    def enqueue(self, record: dict | tuple, start_id: int = 0) -> int:
        """submit() without the checks and the copy, for a record its caller built afresh from
        known fields with `ts` set, or a statement tuple (record.py) of a checked session
        (`start_id`: its start in the journal, which this record completes)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the audit writer is closed")
            if self._submitted == self._stored:
                self._progress_at = time.monotonic()  # the clock for a stall starts now
            self._submitted += 1
            ticket = self._submitted
            if self.journal is not None:
                self.journal.completed(ticket, record, start_id)
            self._queue.append(record)
        if len(self._queue) >= self.batch_size:
            self._wake.set()
        return ticket

    # ---- state --------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False when appends fail, when the store has made no progress for STALL_SECONDS
        while records wait (a hung store fails no call), or when the backlog is too long: the
        gateway then refuses sessions and statements instead of queueing without end."""
        # Asked before every statement: plain attributes (Thread.is_alive() costs ~6 calls).
        if not self._healthy or self._thread_ended:
            return False
        backlog = self._submitted - self._stored
        if backlog == 0:
            return True
        return backlog < MAX_BACKLOG and time.monotonic() - self._progress_at < STALL_SECONDS

    @property
    def submitted(self) -> int:
        return self._submitted

    @property
    def stored(self) -> int:
        return self._stored

    @property
    def pending(self) -> int:
        return self._submitted - self._stored

    @property
    def export_errors(self) -> int:
        return self._storer.export_errors if self._storer is not None else self._export_errors

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every record submitted so far is stored; False on timeout."""
        target = self._submitted
        with self._cond:
            if self._stored >= target:
                return True
            self._urgent_upto = max(self._urgent_upto, target)
        self._wake.set()
        with self._cond:
            return self._cond.wait_for(lambda: self._stored >= target, timeout)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Stop taking records, store what is queued (up to `timeout`), stop, close exporters."""
        with self._lock:
            already = self._closed
            self._closed = True
        if already and not self._thread.is_alive():
            return self.pending == 0
        ok = self.flush(timeout)
        self._abandon.set()
        self._wake.set()
        killed = self._process is not None and not ok
        if killed:
            self._process.stop(graceful=False)  # first: a send blocked on a stuck process fails
        self._thread.join(timeout=10)
        if not ok and self.pending == 0:
            ok = True  # the last append finished after the flush timed out: nothing was lost
        if not ok:
            # After the threads that report failures have stopped: a retry failing meanwhile
            # would otherwise replace this message with its own.
            self.lost = self.pending
            self.last_error = f"closed with {self.lost} audit record(s) not stored: {self.last_error}"
            log.error("audit writer: %s", self.last_error)
        if self._process is None:
            self._storer.close_exporters()
        elif not killed:
            self._process.stop(graceful=True)
        if self.journal is not None:
            self.journal.close(everything_stored=ok and self.pending == 0)
        return ok

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- outcomes (from the writer thread, or the writer process's reader thread) --------

    def _stored_batch(self, count: int, export_errors: int = 0) -> None:
        self.failures = 0
        self._healthy = True
        self._export_errors = export_errors
        self._progress_at = time.monotonic()
        with self._cond:
            self._stored += count
            self._cond.notify_all()
        if self.journal is not None:
            self.journal.trim(self._stored)

    def _failed(self, failures: int, error: str) -> None:
        self.failures = failures
        self._healthy = False
        if not self.lost:  # close() has said what was lost: that stays the last word
            self.last_error = error

    # ---- the writer thread --------------------------------------------------------------

    def _take(self) -> tuple[list, str | None]:
        """A batch and its marker; its records are in the journal before it goes anywhere."""
        batch = []
        queue = self._queue
        while queue and len(batch) < self.batch_size:
            batch.append(queue.popleft())
        if not batch:
            return batch, None
        self._taken += len(batch)
        if self.journal is not None:
            self.journal.batch_taken(self._taken)
        return batch, f"{self.run}:{self._taken}"

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._thread_ended = True

    def _loop(self) -> None:
        while True:
            urgent = self._stored < self._urgent_upto
            if len(self._queue) < self.batch_size and not urgent and not self._abandon.is_set():
                self._wake.wait(self.interval)
            self._wake.clear()
            batch, marker = self._take()
            if not batch:
                if self._abandon.is_set():
                    return
                if urgent and self._process is not None:
                    self._wake.wait(self.interval)  # sent already: the process's answer ends the wait
                continue
            if self._process is not None:
                if self._abandon.is_set():  # close() gave up on the process: these are lost
                    return
                self._process.send(batch, marker)
                continue
            stored = self._storer.store_batch(batch, marker)
            if stored is None:  # abandoned by close()
                return
            self._stored_batch(len(batch))
