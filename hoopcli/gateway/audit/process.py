"""The audit writer process: the store and the exporters, outside the gateway's GIL.

The gateway (`WriterProcess`, used by `AuditWriter.in_subprocess`) starts
`python -m hoopcli.gateway.audit.process`, sends it batches of submitted records over its
stdin and reads its answers from a second pipe (stdout stays the gateway's, where a JSON-lines
exporter to "-" writes). Frames are a 4-byte big-endian length and a pickle; both ends are
this module, so nothing else ever writes to either pipe.

    gateway → process   {"store": url, "exporters": [...], ...}   once, first
                        ("batch", [record, ...], marker, in_doubt)  then, in submit order
                        ("close",)                                  store the rest, close, exit
    process → gateway   ("stored", count, export_errors)            one per batch, in order
                        ("failed", failures, error)                 each failed append attempt

The process ignores SIGINT/SIGTERM and runs in its own session: the gateway ends it (after
its last batch) through the pipe; if the gateway dies, end of input does the same. If the
process dies, the gateway starts another and sends again every batch not yet acknowledged,
marked in doubt: the new process looks for each one's marker in the store first and skips a
batch stored just before the crash (replay.py), so nothing is lost and nothing stored twice.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any, BinaryIO, Callable

log = logging.getLogger("hoopcli.audit")

_LENGTH = struct.Struct(">I")
RESTART_BACKOFF = (0.1, 5.0)  # first and longest pause before starting a writer process again


def write_frame(out: BinaryIO, message: Any) -> None:
    _write_data(out, pickle.dumps(message, protocol=5))


def _write_data(out: BinaryIO, data: bytes) -> None:
    out.write(_LENGTH.pack(len(data)) + data)
    out.flush()


def read_frame(inp: BinaryIO) -> Any:
    """The next message, or None at end of input."""
    head = inp.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    data = inp.read(length)
    if len(data) < length:
        return None
    return pickle.loads(data)


def _picklable(batch: list) -> list[dict]:
    """Records whose details hold something pickle refuses are sent as their JSON form."""
    from .record import jsonable
    from .statements import statement_record

    records = (statement_record(r) if type(r) is tuple else r for r in batch)
    return [{k: jsonable(v) for k, v in record.items()} for record in records]


class WriterProcess:
    """The gateway's end: starts the process, sends batches, turns answers into callbacks."""

    def __init__(
        self, store_url: str, exporter_specs: list[tuple[str, str]], *, initial_backoff=0.05, max_backoff=5.0, keep_fds=()
    ):
        self.keep_fds = tuple(keep_fds)  # the journal's lock: held until this process ends too
        self.config = {
            "store": str(store_url),
            "exporters": [tuple(spec) for spec in exporter_specs],
            "initial_backoff": initial_backoff,
            "max_backoff": max_backoff,
        }
        # A write blocks while the process is busy with the batch before (a batch is larger
        # than the pipe), so the pipe has its own lock and answers never wait for it.
        self._send_lock = threading.Lock()
        self._inflight_lock = threading.Lock()
        self._inflight: deque[tuple[list, str]] = deque()  # (batch, marker) sent, not acknowledged, oldest first
        self._proc: subprocess.Popen | None = None
        self._closing = False
        self._on_stored: Callable = lambda count, export_errors: None
        self._on_failure: Callable = lambda failures, error: None
        self._reader: threading.Thread | None = None
        self.restarts = 0

    # ---- life ------------------------------------------------------------------------

    def start(self, on_stored: Callable[[int, int], None], on_failure: Callable[[int, str], None]) -> None:
        self._on_stored, self._on_failure = on_stored, on_failure
        with self._send_lock:
            self._spawn()

    def _spawn(self) -> None:
        """Start a process; send it the config and every unacknowledged batch (send lock held)."""
        answers_r, answers_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hoopcli.gateway.audit.process", str(answers_w)],
                stdin=subprocess.PIPE,
                pass_fds=(answers_w, *self.keep_fds),
                start_new_session=True,  # Ctrl-C at the gateway's terminal must not reach it
            )
        finally:
            os.close(answers_w)
        self._proc = proc
        self._reader = threading.Thread(target=self._read_answers, args=(proc, os.fdopen(answers_r, "rb")),
                                        name="hoop-audit-answers", daemon=True)
        self._reader.start()
        with self._inflight_lock:
            unacknowledged = list(self._inflight)
        try:
            write_frame(proc.stdin, self.config)
            for batch, marker in unacknowledged:
                self._write(proc, batch, marker, in_doubt=True)
        except (OSError, ValueError):
            pass  # it died already: its reader thread sees that and starts another

    def send(self, batch: list, marker: str | None = None) -> None:
        with self._send_lock:
            with self._inflight_lock:
                self._inflight.append((batch, marker))
            try:
                self._write(self._proc, batch, marker)
            except (OSError, ValueError):  # ValueError: its pipe was closed by stop()
                pass  # the process is gone; the batch stays in flight and goes to the next one

    @staticmethod
    def _write(proc: subprocess.Popen, batch: list, marker: str | None, in_doubt: bool = False) -> None:
        try:
            data = pickle.dumps(("batch", batch, marker, in_doubt), protocol=5)
        except Exception:
            data = pickle.dumps(("batch", _picklable(batch), marker, in_doubt), protocol=5)
        _write_data(proc.stdin, data)

    def stop(self, graceful: bool = True, timeout: float = 30.0) -> None:
        """Ask the process to finish (graceful: everything sent was acknowledged) or kill it
        (a write blocked on a stuck process then fails and lets go); wait for it either way."""
        self._closing = True
        if not graceful and self._proc is not None:
            self._proc.kill()
        with self._send_lock:  # after this no restart can start another process
            proc = self._proc
        if proc is None:
            return
        try:
            if graceful:
                write_frame(proc.stdin, ("close",))
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout if graceful else 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)

    # ---- answers ---------------------------------------------------------------------

    def _read_answers(self, proc: subprocess.Popen, answers: BinaryIO) -> None:
        reported = ""
        with answers:
            while (message := self._read(answers)) is not None:
                if message[0] == "stored":
                    with self._inflight_lock:
                        if self._inflight:
                            self._inflight.popleft()
                    self._on_stored(message[1], message[2])
                elif message[0] == "failed":
                    reported = message[2]
                    self._on_failure(message[1], reported)
        code = proc.wait()
        if self._closing:
            return
        error = f"the audit writer process exited (code {code})" + (f" after: {reported}" if reported else "")
        self._on_failure(self.restarts + 1, error)
        log.error("%s; starting another", error)
        self._restart()

    @staticmethod
    def _read(answers: BinaryIO):
        try:
            return read_frame(answers)
        except Exception:  # a torn frame: the process is dying
            return None

    def _restart(self) -> None:
        first, longest = RESTART_BACKOFF
        time.sleep(min(longest, first * 2 ** min(self.restarts, 10)))
        with self._send_lock:
            if self._closing:
                return
            self.restarts += 1
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            self._spawn()


# ---- the process ------------------------------------------------------------------------


def main(answers_fd: int) -> int:
    from .export import build_exporters
    from .store import open_store
    from .writer import BatchStorer

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="hoop audit writer: %(message)s")
    inp = sys.stdin.buffer
    answers = os.fdopen(answers_fd, "wb")
    config = read_frame(inp)
    if config is None:
        return 0
    try:
        store = open_store(config["store"])
    except Exception as exc:  # the gateway reports it, waits, and starts another process
        write_frame(answers, ("failed", 1, f"cannot open the audit store: {type(exc).__name__}: {exc}"))
        return 3
    storer = BatchStorer(
        store,
        build_exporters(config["exporters"]),
        initial_backoff=config["initial_backoff"],
        max_backoff=config["max_backoff"],
        on_failure=lambda failures, error: write_frame(answers, ("failed", failures, error)),
    )
    try:
        while (message := read_frame(inp)) is not None and message[0] == "batch":
            _, batch, marker, in_doubt = message
            storer.store_batch(batch, marker, in_doubt)
            write_frame(answers, ("stored", len(batch), storer.export_errors))
    finally:
        storer.close_exporters()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
