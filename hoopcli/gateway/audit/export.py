"""Exporters: where stored audit records go next (a JSON-lines file, a webhook).

The writer calls `export(records)` with records already stored (seq and hashes included), so an
exported stream can be checked with `chain.verify_records(read_jsonl(path), from_genesis=False)`.
An exporter sees nothing but records; a failing exporter is counted, never fatal.

Built for the gateway (`build_exporters`), each exporter also publishes the chain head, the
(seq, hash) of the newest record it exported, as `{"chain_head": {"seq", "hash", "ts"}}`: a line
of the JSONL file, an element of a webhook POST. It does so once `HEAD_EVERY_RECORDS` records
or `HEAD_EVERY_SECONDS` seconds have passed since a record it has not yet covered, and at
close. `hoop audit verify --head-from FILE` checks a store against the newest one, so records
deleted from the end of the store after their head left the box are found. `read_jsonl` skips
head lines; `export_heads` reads them.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import sys
import threading
import time
from typing import Callable, Iterator, Mapping

from .chain import HEAD_KEY, ChainHead
from .record import format_ts

log = logging.getLogger("hoopcli.audit")

HEAD_EVERY_RECORDS = 1000  # a head at least after this many records…
HEAD_EVERY_SECONDS = 1.0  # …or this long after the oldest record no head covers yet


def build_exporters(specs) -> list:
    """Exporters from ("jsonl", path) / ("webhook", url) pairs (what gateway.toml names),
    each publishing the chain head."""
    makers = {"jsonl": JsonLinesExporter, "webhook": WebhookExporter}
    return [makers[kind](target, heads=True) for kind, target in specs]


def encode_line(record: dict) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """The records of a JSONL export, in file order (head lines left out)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                item = json.loads(line)
                if HEAD_KEY not in item:
                    yield item


def newest_head(path: str | os.PathLike) -> ChainHead | None:
    """The highest chain position an export vouches for (see export_heads)."""
    return max(export_heads(path), key=lambda head: head.seq, default=None)


def export_heads(path: str | os.PathLike) -> list[ChainHead]:
    """The chain positions an export vouches for: each head line and each record is a
    published (seq, hash), and in one export seq only grows. Returned: the last position of
    every run where it grew — the newest, and each one after which seq went back (the store was
    cut and grew again: that older head no longer matches the store). A torn last line (the
    writer killed mid-write) is passed over."""
    peaks: list[ChainHead] = []
    last: ChainHead | None = None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            head = _head_of_line(line)
            if head is None:
                continue
            if last is not None and head.seq <= last.seq and head != last:
                peaks.append(last)
            last = head
    return peaks + ([last] if last is not None else [])


def _head_of_line(line: str) -> ChainHead | None:
    try:
        item = json.loads(line)
        if not isinstance(item, dict):
            return None
        return ChainHead.from_document(item[HEAD_KEY]) if HEAD_KEY in item else ChainHead(item["seq"], item["hash"])
    except (ValueError, KeyError, TypeError):
        return None


def _records_in(batch: list[dict]) -> int:
    return sum(1 for item in batch if HEAD_KEY not in item)


class HeadPublisher:
    """When an exporter publishes the chain head: after `every_records` records, at most
    `every_seconds` after the oldest record not yet covered (a timer thread, so an idle trail
    is covered too), and at close. `publish(document)` is the exporter's own way out; a
    `sign(document) -> document` hook is where signed checkpoints plug in."""

    def __init__(
        self,
        publish: Callable[[dict], None],
        *,
        every_records: int = HEAD_EVERY_RECORDS,
        every_seconds: float = HEAD_EVERY_SECONDS,
        sign: Callable[[dict], dict] | None = None,
    ):
        self._publish = publish
        self.every_records = max(1, int(every_records))
        self.every_seconds = float(every_seconds)
        self._sign = sign
        self._cond = threading.Condition()
        self._pending: ChainHead | None = None  # newest exported, not yet published
        self._uncovered = 0  # records since the last published head
        self._oldest_at = 0.0  # when the oldest of them was exported
        self._closed = False
        self.published: ChainHead | None = None
        self._timer = threading.Thread(target=self._run, name="hoop-audit-head", daemon=True)
        self._timer.start()

    def saw(self, records: list[dict]) -> None:
        """The exporter has exported these stored records (in seq order)."""
        if not records:
            return
        last = records[-1]
        try:
            head = ChainHead(last["seq"], last["hash"])
        except (KeyError, ValueError):
            return  # not a stored record: nothing to vouch for
        with self._cond:
            if self._uncovered == 0:
                self._oldest_at = time.monotonic()
            self._pending = head
            self._uncovered += len(records)
            if self._uncovered >= self.every_records:
                self._flush_locked()
            else:
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._pending is None:
                    self._cond.wait()
                    continue
                wait = self._oldest_at + self.every_seconds - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                self._flush_locked()

    def _flush_locked(self) -> None:
        head, self._pending, self._uncovered = self._pending, None, 0
        if head is None:
            return
        document = head.document(format_ts(time.time()))
        if self._sign is not None:
            document = self._sign(document)
        try:
            self._publish(document)
        except Exception as exc:  # counted by the exporter where it can; never fatal
            log.warning("audit: publishing the chain head %s failed: %s", head, exc)
            return
        self.published = head

    def close(self) -> None:
        """Publish what is not yet covered, stop the timer."""
        with self._cond:
            self._flush_locked()
            self._closed = True
            self._cond.notify()
        self._timer.join(5)


def _head_publisher(heads, publish: Callable[[dict], None]) -> HeadPublisher | None:
    """`heads`: False/None (none), True (the defaults) or a dict of HeadPublisher options."""
    if not heads:
        return None
    return HeadPublisher(publish, **(heads if isinstance(heads, dict) else {}))


class Exporter:
    """Receives each stored batch; must return quickly (the writer thread calls it)."""

    errors = 0
    heads: HeadPublisher | None = None

    def export(self, records: list[dict]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JsonLinesExporter(Exporter):
    """One JSON object per line, appended to `path` (created 0600) or written to stdout for "-"."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False, heads=False):
        self.path = os.fspath(path)
        self.fsync = fsync
        self.errors = 0
        self.written = 0
        self._lock = threading.Lock()
        self._fh = None
        if self.path != "-":
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fh = os.fdopen(fd, "a", encoding="utf-8")
        self.heads = _head_publisher(heads, self._write_head)

    def export(self, records: list[dict]) -> None:
        if self._write("".join(encode_line(r) for r in records)):
            self.written += len(records)
            if self.heads is not None:
                self.heads.saw(records)

    def _write_head(self, document: dict) -> None:
        self._write(encode_line(document))

    def _write(self, text: str) -> bool:
        with self._lock:
            fh = self._fh if self._fh is not None else sys.stdout
            try:
                fh.write(text)
                fh.flush()
                if self.fsync and self._fh is not None:
                    os.fsync(fh.fileno())
            except (OSError, ValueError) as exc:
                self.errors += 1
                log.warning("audit export to %s failed: %s", self.path, exc)
                return False
            return True

    def close(self) -> None:
        if self.heads is not None:
            self.heads.close()  # the last head, before the file closes
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


class WebhookExporter(Exporter):
    """POSTs each batch as a JSON array from its own thread, so the writer never waits on it.

    Connection errors, timeouts, 429 and 5xx are retried with exponential backoff and jitter,
    up to `max_retries` times after the first attempt; then the batch is dropped and counted
    (`dropped`, `errors`, `last_error`). Other 4xx answers drop the batch at once. A full queue
    (the receiver is down for long) drops new batches the same way.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        max_retries: int = 5,
        *,
        headers: Mapping[str, str] | None = None,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_queue: int = 1000,
        heads=False,
    ):
        import requests

        self.url = url
        self.timeout = timeout
        self.max_retries = max(0, int(max_retries))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.errors = 0
        self.dropped = 0
        self.delivered = 0
        self.last_error: str | None = None
        self._session = requests.Session()
        self._session.headers.update({"Content-Type": "application/json", "User-Agent": "hoop-audit"})
        if headers:
            self._session.headers.update(headers)  # may hold a secret: never logged
        self._requests = requests
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(max_queue)))
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hoop-audit-webhook", daemon=True)
        self._thread.start()
        self.heads = _head_publisher(heads, lambda document: self._enqueue([document]))

    def export(self, records: list[dict]) -> None:
        if self._enqueue(list(records)) and self.heads is not None:
            self.heads.saw(records)

    def _enqueue(self, batch: list[dict]) -> bool:
        """Queue one POST (a batch of records, or a one-element array holding a head)."""
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self._drop(batch, "the webhook queue is full")
            return False
        return True

    def _drop(self, records: list, reason: str) -> None:
        self.errors += 1
        self.dropped += _records_in(records)
        self.last_error = reason
        log.error("audit webhook: dropped %d record(s): %s", len(records), reason)

    def _run(self) -> None:
        while True:
            try:
                batch = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self._abandon.is_set():
                    return
                continue
            if batch is None:
                return
            if self._abandon.is_set():
                self._drop(batch, "closed before delivery")
                continue
            self._deliver(batch)

    def _deliver(self, batch: list[dict]) -> None:
        body = json.dumps(batch, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        reason = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                if self._abandon.wait(delay * random.uniform(0.5, 1.0)):
                    break
            try:
                response = self._session.post(self.url, data=body, timeout=self.timeout)
            except self._requests.RequestException as exc:
                reason = f"{type(exc).__name__}"
                continue
            status = response.status_code
            response.close()
            if 200 <= status < 300:
                self.delivered += _records_in(batch)
                return
            reason = f"HTTP {status}"
            if status != 429 and status < 500:
                break  # the receiver refuses this batch: retrying will not help
        self._drop(batch, f"{reason} after {attempt + 1} attempt(s)")

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (the last head included) within `timeout`, then drop the rest
        (counted) and stop."""
        if self.heads is not None:
            self.heads.close()
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()
            self._thread.join(5)
        self._session.close()
