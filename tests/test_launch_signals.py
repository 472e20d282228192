"""`hoop exec … -- CMD`: signals reach the child exactly once.

A real pseudo-terminal: hoop's launcher (`run_child`) runs as the session leader of a pty, its
child reports the signals it gets, and the launcher says each signal it passes on (two
SIGINTs that arrive close together merge in the kernel, so the child's count alone cannot
tell). Ctrl-C typed at the terminal reaches the child from the terminal and is not passed on
(psql would send two cancel requests); a signal sent to hoop alone is passed on.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time

from tests.support.cli import REPO

# Counts each SIGINT and SIGTERM delivered for a second after the first one, then prints the
# counts. Python runs a handler once for signals that arrive close together, so the count comes
# from the wakeup fd, where the C-level handler writes one byte per delivery (as psql counts).
CHILD = r"""
import os, select, signal, time
r, w = os.pipe()
os.set_blocking(w, False)
signal.set_wakeup_fd(w)
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: None)
print("ready", flush=True)
got = b""
end = time.monotonic() + 20
while time.monotonic() < end:
    if select.select([r], [], [], 0.05)[0]:
        got += os.read(r, 64)
        end = min(end, time.monotonic() + 1.0)
print(f"INT={got.count(signal.SIGINT)} TERM={got.count(signal.SIGTERM)}", flush=True)
"""
LAUNCHER = (
    "import os, subprocess, sys\n"
    "from hoopcli.launch import run_child\n"
    "send = subprocess.Popen.send_signal\n"
    "def say_and_send(child, signum):\n"
    "    print(f'passed on {int(signum)}', flush=True)\n"
    "    send(child, signum)\n"
    "subprocess.Popen.send_signal = say_and_send\n"
    f"sys.exit(run_child([sys.executable, '-c', {CHILD!r}], dict(os.environ))[0])\n"
)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _read_until(fd: int, marker: bytes, timeout: float = 20) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the pty closed: the launcher ended
                break
            if not chunk:
                break
            data += chunk
    return data


def _run_on_a_pty(send) -> str:
    """Start the launcher as the session leader of a new pty; `send(pid, master)` once the child
    is ready; return what the child printed."""
    pid, master = pty.fork()
    if pid == 0:  # the launcher: its pty is its controlling terminal, its group the foreground
        os.execve(sys.executable, [sys.executable, "-c", LAUNCHER], _env())
    try:
        assert b"ready" in _read_until(master, b"ready"), "the child did not start"
        send(pid, master)
        return _read_until(master, b"TERM=").decode(errors="replace")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)


def test_ctrl_c_at_the_terminal_reaches_the_child_once():
    out = _run_on_a_pty(lambda _pid, master: os.write(master, b"\x03"))  # ^C, as typed
    assert "INT=1 TERM=0" in out and "passed on" not in out, out


def test_sigterm_to_hoop_on_a_terminal_is_passed_on():
    out = _run_on_a_pty(lambda pid, _master: os.kill(pid, signal.SIGTERM))
    assert "INT=0 TERM=1" in out and f"passed on {int(signal.SIGTERM)}" in out, out


def test_sigint_to_hoop_without_a_terminal_is_passed_on():
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], env=_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert b"INT=1 TERM=0" in out and f"passed on {int(signal.SIGINT)}".encode() in out, out + err
