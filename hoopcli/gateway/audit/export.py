"""Exporters: where stored audit records go next (a JSON-lines file, a webhook).

The writer calls `export(records)` with records already stored (seq and hashes included), so an
exported stream can be checked with `chain.verify_records(read_jsonl(path), from_genesis=False)`.
An exporter sees nothing but records; a failing exporter is counted, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import sys
import threading
from typing import Iterator, Mapping

log = logging.getLogger("hoopcli.audit")


def build_exporters(specs) -> list:
    """Exporters from ("jsonl", path) / ("webhook", url) pairs (what gateway.toml names)."""
    makers = {"jsonl": JsonLinesExporter, "webhook": WebhookExporter}
    return [makers[kind](target) for kind, target in specs]


def encode_line(record: dict) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


class Exporter:
    """Receives each stored batch; must return quickly (the writer thread calls it)."""

    errors = 0

    def export(self, records: list[dict]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JsonLinesExporter(Exporter):
    """One JSON object per line, appended to `path` (created 0600) or written to stdout for "-"."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False):
        self.path = os.fspath(path)
        self.fsync = fsync
        self.errors = 0
        self.written = 0
        self._lock = threading.Lock()
        self._fh = None
        if self.path != "-":
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fh = os.fdopen(fd, "a", encoding="utf-8")

    def export(self, records: list[dict]) -> None:
        text = "".join(encode_line(r) for r in records)
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
                return
            self.written += len(records)

    def close(self) -> None:
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

    def export(self, records: list[dict]) -> None:
        try:
            self._queue.put_nowait(list(records))
        except queue.Full:
            self._drop(records, "the webhook queue is full")

    def _drop(self, records: list, reason: str) -> None:
        self.errors += 1
        self.dropped += len(records)
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
                self.delivered += len(batch)
                return
            reason = f"HTTP {status}"
            if status != 429 and status < 500:
                break  # the receiver refuses this batch: retrying will not help
        self._drop(batch, f"{reason} after {attempt + 1} attempt(s)")

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued within `timeout`, then drop the rest (counted) and stop."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()
            self._thread.join(5)
        self._session.close()
