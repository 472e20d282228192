"""Starting the native client: its environment per protocol, signals in, exit code out.

Secrets reach the child through its environment only (never argv, never a file):
PGPASSWORD for PostgreSQL clients, MYSQL_PWD for MariaDB/MySQL clients (the MariaDB client
reads it; the environment of a process is readable only by its own user and root).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

from hoopcli.brokers.base import Credentials
from hoopcli.errors import ExitCode, UsageError

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
MYSQL_CLIENTS = ("mariadb", "mysql")


def protocol_env(protocol: str, port: int, creds: Credentials, database: str) -> dict[str, str]:
    """The variables the protocol's standard clients read."""
    env: dict[str, str] = {}
    if protocol == "postgres":
        env.update(PGHOST="127.0.0.1", PGPORT=str(port), PGSSLMODE="disable")
        if creds.username:
            env["PGUSER"] = creds.username
        if database:
            env["PGDATABASE"] = database
        if creds.password:
            env["PGPASSWORD"] = creds.password
    elif protocol == "mysql":
        env.update(MYSQL_HOST="127.0.0.1", MYSQL_TCP_PORT=str(port))
        if creds.password:
            env["MYSQL_PWD"] = creds.password
    if protocol in ("postgres", "mysql", "tcp"):
        env.update(HOOP_HOST="127.0.0.1", HOOP_PORT=str(port))
        if creds.username:
            env["HOOP_DB_USER"] = creds.username
        if database:
            env["HOOP_DB_NAME"] = database
    env.update(creds.env)
    return env


def default_client(protocol: str) -> list[str]:
    if protocol == "postgres":
        return ["psql"]
    if protocol == "mysql":
        for name in MYSQL_CLIENTS:
            if shutil.which(name):
                return [name]
        return ["mariadb"]
    raise UsageError(f"'{protocol}' connections have no default client", "Name the command: `hoop exec NAME -- CMD ARGS…`.")


def statement_command(protocol: str, sql: str, machine: bool) -> list[str]:
    """`hoop exec NAME -c SQL`: the protocol's client running one statement, stopping on error."""
    if protocol == "postgres":
        return ["psql", "-X", "-v", "ON_ERROR_STOP=1"] + (["-A", "-F", "\t", "--pset=footer=off"] if machine else []) + ["-c", sql]
    if protocol == "mysql":
        return default_client(protocol) + (["--batch"] if machine else ["--table"]) + ["-e", sql]
    raise UsageError(f"-c needs a database connection, and '{protocol}' is not one")


def with_mysql_identity(argv: list[str], creds: Credentials, database: str) -> list[str]:
    """MariaDB/MySQL clients read no user name from the environment: when the command is one of
    them and names no user, hoop adds --user (and the database) — names only, never a password."""
    if not argv or os.path.basename(argv[0]) not in MYSQL_CLIENTS:
        return argv
    rest = argv[1:]
    extra = []
    if creds.username and not any(a.startswith(("-u", "--user")) for a in rest):
        extra.append(f"--user={creds.username}")
    if database and not any(a.startswith(("-D", "--database")) for a in rest):
        extra.append(f"--database={database}")
    return [argv[0], *extra, *rest]


def terminal_sent_it_too(signum: int) -> bool:
    """Ctrl-C in a terminal goes to its whole foreground process group, and the child is in
    hoop's group: when that group is in the foreground, the child has its own SIGINT already,
    and a second one makes psql send two cancel requests. (A `kill -INT` of hoop from elsewhere
    while it is in the foreground looks the same and is then not passed on; SIGTERM and SIGHUP
    always are.)"""
    if signum != signal.SIGINT:
        return False
    for fd in (0, 1, 2):
        try:
            return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:  # not a terminal: try the next stream
            continue
    return False


def run_child(argv: list[str], env: dict[str, str], capture: bool = False) -> tuple[int, str, str]:
    """Run the command, forwarding SIGINT/SIGTERM/SIGHUP; return its exit code (128+N for a
    death by signal N, as a shell would) and, with capture, its stdout and stderr."""
    if not argv:
        raise UsageError("no command to run", "Use `hoop exec NAME -- CMD ARGS…`.")
    if shutil.which(argv[0], path=env.get("PATH")) is None:
        raise UsageError(f"command not found: {argv[0]}", "Install it or give its full path.")
    child: subprocess.Popen | None = None
    pending: list[int] = []

    def forward(signum, _frame):
        if child is None:
            pending.append(signum)  # arrived while the child was being started
            return
        if terminal_sent_it_too(signum):
            return
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    # The handlers go in before the child starts, so no signal can slip between the two.
    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    out = err = ""
    pipe = subprocess.PIPE if capture else None
    try:
        child = subprocess.Popen(argv, env=env, stdout=pipe, stderr=pipe, text=capture or None)
        for signum in pending:
            child.send_signal(signum)
        while True:
            try:
                out, err = child.communicate()
                break
            except KeyboardInterrupt:  # a handler we did not install; keep waiting for the child
                continue
        code = child.returncode
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return (128 - code if code < 0 else code), out or "", err or ""


def gateway_verdict_code(child_code: int, stderr: str) -> int:
    """A statement the gateway held or denied gets hoop's own exit code (5 or 4), so a script
    or an agent can tell "waiting for an approver" from an ordinary SQL error."""
    if child_code == 0:
        return 0
    if "hoop: statement held for approval" in stderr:
        return int(ExitCode.APPROVAL_PENDING)
    if "hoop: statement denied by policy" in stderr:
        return int(ExitCode.DENIED)
    return child_code


def exec_through_gateway(profile, name: str, child_args: list[str], *, command: str | None = None, json_out: bool = False) -> int:
    """`hoop exec`: open access to connection `name` (credentials, tunnel), run `child_args` (or
    the protocol's client; with `command`, that one statement through it) with the credentials
    in its environment only, close everything, and return the exit code to leave with: the
    child's own, unless the tunnel or the gateway's verdict says more."""
    from hoopcli.access import open_access
    from hoopcli.ui import ExecTunnelEvents

    tunnel_events = ExecTunnelEvents()
    with open_access(profile, name, on_event=tunnel_events.event) as access:
        if command is not None:
            argv = statement_command(access.protocol, command, machine=json_out)
        else:
            argv = list(child_args) or default_client(access.protocol)
        argv = with_mysql_identity(argv, access.creds, access.database)
        code, out, err = run_child(argv, access.env(), capture=command is not None)
    code = tunnel_events.exit_code_for(code)
    if command is not None:
        code = gateway_verdict_code(code, err)
        if code == ExitCode.APPROVAL_PENDING:
            err = held_hint(err, profile.name)
        _show_statement_result(name, code, out, err, json_out)
    return code


_APPROVER_RUNS = "An approver runs: hoop approvals approve "


def held_hint(err: str, profile: str) -> str:
    """The gateway cannot know the client's profile: name the one an approver uses here in its
    command, and end with what the requester does next, so that is the last line printed."""
    from hoopcli.dev.profiles import approver_profile_for
    from hoopcli.errors import with_profile

    approver = approver_profile_for(profile)
    if approver and approver != "default":
        err = err.replace(_APPROVER_RUNS, f"An approver runs: hoop --profile {approver} approvals approve ")
    again = with_profile("`hoop exec`", profile).strip("`")
    return err.rstrip("\n") + f"\nhoop: hint: once it is approved, run the same statement again with {again} (it runs once).\n"


def _show_statement_result(name: str, code: int, out: str, err: str, json_out: bool) -> None:
    import sys

    if json_out:
        from hoopcli.output import emit_json

        emit_json({"connection": name, "exit_code": code, "output": out, "error": err})
    else:
        sys.stdout.write(out)
        sys.stderr.write(err)
