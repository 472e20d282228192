"""Every exec on the machine, from the Linux process-events connector, with its argv.

Sampling /proc/*/cmdline every few milliseconds misses a process that lives shorter than the
period (a `sh -c` wrapper, a helper that runs for a millisecond). The kernel's proc connector
(netlink, NETLINK_CONNECTOR, group CN_IDX_PROC) announces every exec instead; the watcher
reads /proc/PID/cmdline the moment the announcement arrives.

The watcher runs as its own process (this file as a script), not as a thread of the test: a
thread has to win the GIL back before it can read, and by then a short process is gone. It
asks for SCHED_FIFO so a busy machine does not delay it either.

What it still cannot see:
  * a process that exits (or execs again) between the announcement and the read — with
    SCHED_FIFO that is tens of microseconds; such execs are counted as `unreadable`;
  * an argv a process rewrites after its exec (setproctitle): the /proc sampler in
    test_security_canary.py keeps running beside it for that;
  * processes of another PID namespace (the kernel reports its own pids); the start-up probe
    fails then, and the watcher says it is not working;
  * announcements the kernel dropped because the socket buffer was full: counted as
    `overflows` (the caller asserts none).
Subscribing needs CAP_NET_ADMIN (root); without it `start()` returns False and says why.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import subprocess
import sys
import time
from pathlib import Path

NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_EXEC = 2
NLMSG_DONE = 3
SO_RCVBUFFORCE = 33
NLMSG_HEADER = 16  # nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32
EVENT_AT = NLMSG_HEADER + 20  # after cn_msg: idx, val, seq, ack u32; len, flags u16
EXEC_TGID_AT = EVENT_AT + 16 + 4  # proc_event: what, cpu u32, timestamp u64; exec: pid, tgid
START_TIMEOUT = 10


class ExecWatcher:
    """The parent side: start() before the commands to watch, stop() after; then `seen`."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.error = ""
        self.seen: set[str] = set()
        self.summary: dict = {}
        self.probe = f"hoop-exec-watch-probe-{secrets.token_hex(6)}"

    def start(self) -> bool:
        """True once the watcher is subscribed and has seen a millisecond-long probe exec."""
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        line = self.proc.stdout.readline() if sel.select(START_TIMEOUT) else b""
        sel.close()
        if line.strip() != b"ready":
            self.stop()
            if line.startswith(b"{"):
                self.error = json.loads(line).get("error", "")
            self.error = self.error or "the watcher did not start"
            return False
        subprocess.run(["/bin/sh", "-c", ":", self.probe], check=True)
        return True

    @property
    def working(self) -> bool:
        return any(self.probe in argv for argv in self.seen)

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        try:
            out, err = proc.communicate(timeout=15)  # EOF on its stdin: it reports and exits
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        lines = out.decode(errors="replace").splitlines()
        report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
        self.error = report.get("error") or (err.decode(errors="replace").strip()[-500:] if not report else "")
        self.seen |= set(report.get("argv", ()))
        self.summary = {k: v for k, v in report.items() if k != "argv"}


# ---- the watcher process -------------------------------------------------------------------------


def _subscribe():
    import socket
    import struct

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)  # bursts of execs wait here
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    sock.bind((0, CN_IDX_PROC))  # port id 0: the kernel picks a unique one
    op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
    cn_msg = struct.pack("=IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
    sock.send(struct.pack("=IHHII", NLMSG_HEADER + len(cn_msg), NLMSG_DONE, 0, 0, 0) + cn_msg)
    sock.setblocking(False)
    return sock


def _realtime() -> str:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        return "fifo"
    except (OSError, AttributeError):
        return "normal"


def _cmdline(tgid: int) -> bytes:
    try:
        fd = os.open(f"/proc/{tgid}/cmdline", os.O_RDONLY)
    except OSError:
        return b""
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _execs(datagram: bytes):
    """The tgid of each exec announced in one datagram (one or more netlink messages)."""
    import struct

    at = 0
    while at + NLMSG_HEADER <= len(datagram):
        length = struct.unpack_from("=I", datagram, at)[0]
        if length < NLMSG_HEADER or at + length > len(datagram):
            return
        if length >= EXEC_TGID_AT + 4 \
                and struct.unpack_from("=II", datagram, at + NLMSG_HEADER) == (CN_IDX_PROC, CN_VAL_PROC) \
                and struct.unpack_from("=I", datagram, at + EVENT_AT)[0] == PROC_EVENT_EXEC:
            yield struct.unpack_from("=I", datagram, at + EXEC_TGID_AT)[0]
        at += (length + 3) & ~3


def main() -> int:
    try:
        sock = _subscribe()
    except OSError as exc:
        print(json.dumps({"error": f"proc connector unavailable: {exc}"}), flush=True)
        return 0
    scheduler = _realtime()
    seen: set[bytes] = set()
    counts = {"execs": 0, "unreadable": 0, "overflows": 0}
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(sys.stdin.buffer, selectors.EVENT_READ)
    print("ready", flush=True)
    started = time.monotonic()
    while True:
        ready = {key.fileobj for key, _ in sel.select()}
        if sock in ready:
            _drain(sock, seen, counts)
        if sys.stdin.buffer in ready and not os.read(sys.stdin.fileno(), 4096):
            _drain(sock, seen, counts)  # what the kernel queued before the stop
            break
    argv = sorted(raw.replace(b"\0", b" ").strip().decode("utf-8", "replace") for raw in seen)
    print(json.dumps({"scheduler": scheduler, "seconds": round(time.monotonic() - started, 3), **counts, "argv": argv}))
    return 0


def _drain(sock, seen: set[bytes], counts: dict) -> None:
    import errno

    while True:
        try:
            datagram = sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            counts["overflows"] += 1
            continue
        for tgid in _execs(datagram):
            counts["execs"] += 1
            raw = _cmdline(tgid)
            if raw:
                seen.add(raw)
            else:
                counts["unreadable"] += 1


if __name__ == "__main__":
    sys.exit(main())
