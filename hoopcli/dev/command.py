"""`hoop dev` itself: start the stack, say what to run next (or run the demo), wait for
Ctrl-C, stop everything in order. DEVELOPMENT ONLY."""

from __future__ import annotations

import contextlib
import signal
import threading
import time

from hoopcli.dev.profiles import APPROVER_PROFILE, PROFILE
from hoopcli.dev.stack import BANNER, DevStack, start_stack
from hoopcli.dev.targets import DEMO_DB, DEMO_ROLE, DEMO_TABLE
from hoopcli.errors import Interrupted

def run_dev(workdir: str | None, auto_approve: bool | str, demo: bool, json_out: bool, port: int) -> int:
    """Start the stack; with `demo`, run the unattended loop and return its verdict, otherwise
    print the next commands and wait for Ctrl-C (or SIGTERM/SIGHUP)."""
    try:
        with _signals_interrupt():
            return _run(workdir, auto_approve, demo, json_out, port)
    except KeyboardInterrupt:
        raise Interrupted("hoop dev was stopped before it finished", "Everything it had started was stopped and removed.") from None


def _run(workdir: str | None, auto_approve: bool | str, demo: bool, json_out: bool, port: int) -> int:
    from hoopcli.output import emit_json, info

    if demo:
        from hoopcli.dev.demo import DEMO_IDENTITY, run_demo

        if not json_out:
            info(f"hoop dev --demo — {BANNER}")
        with start_stack(workdir, auto_approve or DEMO_IDENTITY, port, own_config=True) as stack:
            return run_demo(stack, json_out)

    if not json_out:
        info(f"hoop dev — {BANNER}")
        info("Starting the issuer, the demo target and the gateway ...")
    with start_stack(workdir, auto_approve, port) as stack:
        if json_out:
            emit_json({"event": "ready", **stack.describe(), "commands": stack.next_commands()})
        else:
            _announce(stack, info)
        _wait_for_stop()
        if not json_out:
            info("Stopping: gateway (flushing the audit trail), database, issuer ...")
    if json_out:
        emit_json({"event": "stopped"})
    else:
        info("Stopped." + ("" if workdir else " The work dir was removed."))
    return 0


def _announce(stack: DevStack, info) -> None:
    d = stack.describe()
    if d["auto_approve"]:
        who = f"'{PROFILE}' is signed in as {d['auto_approve']} and '{APPROVER_PROFILE}' as dev-admin at once"
    else:
        who = "approve sign-ins on that page"
    if stack.postgres:
        target = f"PostgreSQL {d['postgres_version']} on {d['target']}, database {DEMO_DB}, table {DEMO_TABLE}, role {DEMO_ROLE}"
    else:
        target = f"TCP echo server on {d['target']} ({stack.no_postgres_because})"
    lines = [
        "",
        f"  issuer      {d['issuer']}   (sign-in page {d['device_page']}; {who})",
        f"  gateway     {d['gateway']}   (development CA {d['ca_file']})",
        f"  connection  {d['connection']} → {target}",
        "  policy      default: DROP, TRUNCATE, ALTER, GRANT, unqualified DELETE/UPDATE are held for approval",
        f"  audit       {d['audit_store']}",
        f"  profiles    '{PROFILE}' (requester) and '{APPROVER_PROFILE}' (approver) in {d['config_file']}",
        "",
        "Identities on the sign-in page: dev-user (developers), dev-admin (dba, approvers, auditors), dev-agent (agents).",
        "Nobody approves their own statement: approve what 'dev' runs from 'dev-approver'.",
        f"Next, in another terminal (or `export HOOP_PROFILE={PROFILE}` and leave out --profile {PROFILE}):",
        *(f"  {c}" for c in stack.next_commands()),
        "",
        f"Press Ctrl-C to stop; the work dir {d['workdir']} is then " + ("kept." if stack.kept else "removed."),
    ]
    for line in lines:
        info(line)


def _wait_for_stop() -> None:
    """Until Ctrl-C (or SIGTERM/SIGHUP, turned into the same by `_signals_interrupt`)."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM and SIGHUP raise KeyboardInterrupt like Ctrl-C does, so that however `hoop dev`
    is stopped (short of SIGKILL) the `finally` blocks stop the database and the gateway."""

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

