"""hoop's command line: thin typer commands that call one function each and render the result.

Every failure is a HoopError rendered once, in `main` (by `errors.report`), as one line of what
happened and one line of what to do, with the exit code documented in the README. Heavy
modules (boto3, hvac, the gateway) are imported inside the commands that need them, so
`hoop --help` stays fast; `hoop exec NAME -- CMD…` does not come here at all (entry.py).
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer
import typer.core

from hoopcli import __version__
from hoopcli.completion import complete_connection
from hoopcli.errors import ExitCode, HoopError, UsageError
from hoopcli.errors import render as render_error
from hoopcli.errors import report as report_failure
from hoopcli.cli_common import JsonOpt, _api, _profile, state

app = typer.Typer(
    name="hoop",
    help="Reach databases and cloud APIs with your SSO identity: ephemeral credentials, a local tunnel, and an audit trail kept by the gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Show and change profile settings (never secrets).", no_args_is_help=True)
app.add_typer(config_app, name="config")




def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"hoop {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    profile: Optional[str] = typer.Option(None, "--profile", "-p", envvar="HOOP_PROFILE", help="Profile to use (default: 'default')."),
    debug: bool = typer.Option(False, "--debug", help="Log to stderr with secrets redacted."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    from hoopcli import logs
    from hoopcli.errors import use_profile

    state.profile = profile
    use_profile(profile)  # hints name it
    logs.setup(debug)




# ---- identity -----------------------------------------------------------------------------


@app.command()
def login(
    json_out: bool = JsonOpt,
    token_stdin: bool = typer.Option(False, "--token-stdin", help="Store an id token read from standard input."),
    ci: bool = typer.Option(False, "--ci", help="Use the CI platform's OIDC id token (GitHub Actions, GitLab) for this command."),
) -> None:
    """Log in with your identity provider (OIDC device flow); tokens go to the OS keyring."""
    from hoopcli.auth import login as flow
    from hoopcli.output import emit_json

    state.json = json_out
    profile = _profile()
    if token_stdin:
        tokens = flow.token_login(profile, sys.stdin.read())
    elif ci:
        tokens = flow.ci_login(profile)
    else:
        from hoopcli.ui import device_prompt

        show, on_wait, done = device_prompt(json_out)
        try:
            tokens = flow.device_login(profile, show, on_wait)
        finally:
            done()
    who = flow.identity(tokens)
    if json_out:
        emit_json({"event": "logged_in", **who})
    else:
        from hoopcli.output import info

        info(f"Logged in as {who['email'] or who['sub']} (profile '{profile.name}', session in {who['session_store']}).")


@app.command()
def logout(json_out: bool = JsonOpt) -> None:
    """Remove this profile's tokens and revoke the refresh token at the IdP."""
    from hoopcli.auth import login as flow
    from hoopcli.output import emit_json, info

    result = flow.logout(_profile())
    if json_out:
        emit_json(result)
    elif not result["removed"]:
        info(f"Not logged in (profile '{result['profile']}', {result['store']}): nothing to remove.")
    else:
        info("Logged out." + (" Refresh token revoked at the IdP." if result["refresh_token_revoked"] else ""))


@app.command()
def whoami(json_out: bool = JsonOpt) -> None:
    """Show who you are logged in as, from which session store, and until when."""
    from hoopcli.auth import login as flow
    from hoopcli.auth.session import load_session
    from hoopcli.output import emit_json, key_values

    who = flow.identity(load_session(_profile()))
    emit_json(who) if json_out else key_values(who)


@app.command()
def agent(
    lifetime: str = typer.Option("8h", "--lifetime", help="Exit by itself after this long: 90s, 30m, 8h."),
    stop: bool = typer.Option(False, "--stop", help="Stop the agent at HOOP_AGENT_SOCK."),
    foreground: bool = typer.Option(False, "--foreground", help="Do not detach; log to stderr until stopped."),
    detached: bool = typer.Option(False, "--detached", hidden=True),
    json_out: bool = JsonOpt,
) -> None:
    """Hold sessions in memory for headless machines, like ssh-agent: eval "$(hoop agent)"."""
    from hoopcli.auth import agent as holder

    holder.command(lifetime=lifetime, stop=stop, foreground=foreground, detached=detached, json_out=json_out)


# ---- config -------------------------------------------------------------------------------


@config_app.command("set")
def config_set(key: str, value: str, json_out: bool = JsonOpt) -> None:
    """Set a profile field: issuer, client_id, scopes, audience, gateway, ca_file."""
    from hoopcli.config import active_profile_name, set_value
    from hoopcli.output import emit_json, info

    path = set_value(state.profile, key, value)
    profile = active_profile_name(state.profile)
    if json_out:
        emit_json({"profile": profile, "key": key, "value": value, "config_file": str(path)})
    else:
        info(f"Set {key} for profile '{profile}' in {path}.")


@config_app.command("show")
def config_show(json_out: bool = JsonOpt) -> None:
    """Show the active profile after environment overrides."""
    from hoopcli.config import config_path
    from hoopcli.output import emit_json, key_values

    data = _profile().public_dict()
    data["config_file"] = str(config_path())
    emit_json(data) if json_out else key_values(data)


# ---- connections, connect, exec ------------------------------------------------------------




@app.command()
def connections(json_out: bool = JsonOpt) -> None:
    """List the connections the gateway lets you use."""
    from hoopcli.output import emit_json, table

    rows = _api().connections()
    if json_out:
        emit_json({"connections": rows})
    else:
        for row in rows:
            row["broker"] = (row.get("credentials") or {}).get("broker", "none")
        table(rows, ["name", "protocol", "database", "broker", "description"], title="Connections")


class _ExecCommand(typer.core.TyperCommand):
    """`hoop exec`'s usage line shows the command after `--`, which typer cannot declare."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[-- CMD ARGS...]"]


@app.command("exec", cls=_ExecCommand, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Connection name (see `hoop connections`).", autocompletion=complete_connection),
    command: Optional[str] = typer.Option(None, "-c", "--command", help="Run one statement with the protocol's client and print its output."),
    json_out: bool = JsonOpt,
) -> None:
    """Run a command (default: the protocol's client) through the gateway with ephemeral credentials.

    Example: hoop exec app-db -- psql -c 'select current_user'
    """
    from hoopcli.launch import exec_through_gateway

    raise typer.Exit(exec_through_gateway(_profile(), name, list(ctx.args), command=command, json_out=json_out))


@app.command()
def connect(
    name: str = typer.Argument(..., help="Connection name (see `hoop connections`).", autocompletion=complete_connection),
    port: int = typer.Option(0, "--port", help="Local port on 127.0.0.1 (default: a free one)."),
    show_secrets: bool = typer.Option(False, "--show-secrets", help="Also print the password (to this terminal only)."),
    json_out: bool = JsonOpt,
) -> None:
    """Open a local tunnel to a connection and keep it up until Ctrl-C."""
    from hoopcli.access import open_access
    from hoopcli.ui import TunnelStatus

    status = TunnelStatus(json_out)
    with open_access(_profile(), name, listen_port=port, on_event=status.event) as access:
        status.ready(access.summary(show_secrets))
        status.wait_forever()


@app.command()
def creds(
    name: str = typer.Argument(..., help="Connection name.", autocompletion=complete_connection),
    show_secrets: bool = typer.Option(False, "--show-secrets", help="Include passwords and keys."),
    json_out: bool = JsonOpt,
) -> None:
    """Show what the connection's broker issues (expiry, user, lease), then revoke it."""
    from hoopcli.auth.session import load_session
    from hoopcli.brokers.base import broker_for
    from hoopcli.output import emit_json, key_values

    profile = _profile()
    tokens = load_session(profile)
    hints = _connection_hints(profile, tokens, name)
    broker = broker_for(hints, profile)
    issued = broker.issue(tokens.bearer)
    try:
        data = {"connection": name, **issued.public(show_secrets)}
    finally:
        broker.revoke(issued)
    emit_json(data) if json_out else key_values(data)


def _connection_hints(profile, tokens, name: str) -> dict:
    """Profile-local connections (AWS APIs) first, then the gateway's registry."""
    local = (profile.connections or {}).get(name)
    if local is not None:
        return dict(local)
    from hoopcli.gateway_api import api_for

    return api_for(profile, tokens).connection(name).get("credentials") or {}


@app.command("credential-process")
def credential_process(
    name: str = typer.Argument(..., help="A connection with broker = \"aws\" (profile-local or from the gateway)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Always ask STS; do not use the keyring cache."),
) -> None:
    """Print AWS credential_process JSON, for `credential_process = hoop credential-process NAME` in ~/.aws/config."""
    import json

    from hoopcli.brokers.aws import credential_process as issue

    profile = _profile()
    doc = issue(profile, name, lambda tokens: _connection_hints(profile, tokens, name), use_cache=not no_cache)
    sys.stdout.write(json.dumps(doc) + "\n")


# ---- approvals and audit ------------------------------------------------------------------

approvals_app = typer.Typer(help="List and decide statements held for approval.", no_args_is_help=True)
app.add_typer(approvals_app, name="approvals")


@approvals_app.command("list")
def approvals_list(
    status: Optional[str] = typer.Option(None, help="pending, approved, denied, used, expired"),
    limit: int = typer.Option(50, "--limit", min=1, max=500, help="At most this many requests (one page)."),
    cursor: Optional[str] = typer.Option(None, "--cursor", help="The next page: the value after `more:` (or `next` in --json)."),
    json_out: bool = JsonOpt,
) -> None:
    """Approval requests, oldest first, one page at a time (approvers see all; others their own)."""
    from hoopcli.output import emit_json, info, table

    page = _api().approvals_page(status, limit, cursor)
    if json_out:
        emit_json({**page, "approvals": [_iso_times(r) for r in page["approvals"]]})
        return
    columns = ["id", "status", "sub", "connection", "statement", "size", "justification", "created_at"]
    table([_approval_row(r) for r in page["approvals"]], columns, title="Approvals")
    if page["next"]:
        again = (f" --status {status}" if status else "") + (f" --limit {limit}" if limit != 50 else "")
        info(f"more: hoop approvals list{again} --cursor {page['next']}")


EXCERPT_CHARS = 80  # of a statement in the table; --json gives what the gateway keeps (its first 4 KiB)


_TIMES = ("created_at", "decided_at", "expires_at", "grant_expires_at", "used_at")


def _iso_times(row: dict, local: bool = False) -> dict:
    """Epoch seconds from the gateway as ISO 8601: UTC for programs, local time for people."""
    from datetime import datetime, timezone

    out = dict(row)
    for key in _TIMES:
        if isinstance(out.get(key), (int, float)) and not isinstance(out[key], bool):
            when = datetime.fromtimestamp(out[key], tz=timezone.utc)
            out[key] = when.astimezone().strftime("%Y-%m-%d %H:%M:%S") if local else when.isoformat(timespec="seconds")
    return out


def _approval_row(row: dict) -> dict:
    """One line per request: the statement's whitespace folded and cut, its whole size beside it,
    its times in local time."""
    row = _iso_times(row, local=True)
    text = " ".join(str(row.get("statement") or "").split())
    if len(text) > EXCERPT_CHARS or row.get("truncated"):
        text = text[:EXCERPT_CHARS] + "…"
    size = row.get("statement_bytes")
    if not isinstance(size, int):  # a gateway from before requests kept their size
        return {**row, "statement": text, "size": ""}
    shown = f"{size} B" if size < 1024 else f"{size / 1024:.1f} KiB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MiB"
    return {**row, "statement": text, "size": shown}


def _decide(request_id: str, decision: str, reason: str, json_out: bool, sha256: str | None = None) -> None:
    from hoopcli.output import emit_json, info

    from hoopcli.errors import Denied, NotFound

    try:
        result = _api().decide(request_id, decision, reason, sha256)
    except NotFound as exc:
        raise NotFound(exc.message, "See the open requests with `hoop approvals list --status pending`.") from None
    except Denied as exc:
        raise Denied(exc.message, "Another approver decides: nobody approves their own request, and only approvers decide.") from None
    if json_out:
        emit_json(result)
    else:
        info(f"{request_id}: {result.get('status', decision)}")


@approvals_app.command("approve")
def approvals_approve(
    request_id: str,
    reason: str = typer.Option("", "--reason"),
    sha256: Optional[str] = typer.Option(
        None, "--sha256", help="The SHA-256 of the whole statement you read; required when the gateway keeps only its first 4 KiB."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Approve a held statement: its requester may run it once within the window."""
    _decide(request_id, "approve", reason, json_out, sha256)


@approvals_app.command("justify")
def approvals_justify(request_id: str, reason: str = typer.Argument(..., help="Why it should run: a ticket, a sentence."), json_out: bool = JsonOpt) -> None:
    """Attach your reason to your own held statement (once); approvers read it, and where the gateway requires one, nobody approves before it."""
    from hoopcli.errors import Denied, NotFound
    from hoopcli.output import emit_json, info

    try:
        result = _api().justify(request_id, reason)
    except NotFound as exc:
        raise NotFound(exc.message, "See your requests with `hoop approvals list --status pending`.") from None
    except Denied as exc:
        raise Denied(exc.message, "Only the one whose statement was held can give its reason.") from None
    if json_out:
        emit_json(result)
    else:
        info(f"{request_id}: reason attached; approvers see it")


@approvals_app.command("deny")
def approvals_deny(request_id: str, reason: str = typer.Option("", "--reason"), json_out: bool = JsonOpt) -> None:
    """Deny a held statement."""
    _decide(request_id, "deny", reason, json_out)


@app.command()
def dev(
    workdir: Optional[str] = typer.Option(None, "--workdir", help="Keep everything in this folder (default: a temp dir removed at exit)."),
    auto_approve: bool = typer.Option(False, "--auto-approve", help="Approve every device code at once, without opening the link."),
    identity: Optional[str] = typer.Option(None, "--as", help="With --auto-approve: sign the dev profile in as dev-user (default), dev-admin or dev-agent (dev-approver is always dev-admin)."),
    demo: bool = typer.Option(False, "--demo", help="Run the whole loop unattended (login, statements, a held DROP, the audit trail) and exit."),
    port: int = typer.Option(0, "--port", help="Gateway port on 127.0.0.1 (default: a free one)."),
    json_out: bool = JsonOpt,
) -> None:
    """DEVELOPMENT ONLY: a dev identity provider, a throw-away database and the gateway on 127.0.0.1, until Ctrl-C."""
    from hoopcli.dev.command import run_dev

    if identity and not auto_approve:
        raise UsageError("--as only applies with --auto-approve", "Use `hoop dev --auto-approve --as dev-user`.")
    raise typer.Exit(run_dev(workdir, (identity or True) if auto_approve else False, demo, json_out, port))


# ---- the gateway --------------------------------------------------------------------------


# Admin and auditor commands (audit, policy, gateway) live in cli_admin.py.
from hoopcli.cli_admin import access_app, audit_app, gateway_app, policy_app  # noqa: E402

app.add_typer(audit_app, name="audit")
app.add_typer(policy_app, name="policy")
app.add_typer(access_app, name="access")
app.add_typer(gateway_app, name="gateway")


def _render_error(exc: HoopError) -> None:
    render_error(exc, state.json)


def _click_exception() -> type[Exception]:
    """The parse-error base class typer raises: its own copy of click's (typer >= 0.2x vendors
    click), or click's in older typer. typer.Exit and typer.Abort are right in both."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover - older typer
        from click.exceptions import ClickException
    return ClickException


def _render_usage_error(exc) -> int:
    """A parse error: one line and a hint naming the command's own --help; `hoop` alone, help."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        sys.stderr.write(exc.format_message().rstrip("\n") + "\n")
        return int(ExitCode.USAGE)
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "hoop"
    _render_error(UsageError(exc.format_message(), f"See `{command} --help`."))
    return int(ExitCode.USAGE)


def main(argv: List[str] | None = None) -> None:
    """Entry point: run the app and turn every failure into one line and an exit code."""
    import os

    if os.environ.get("_HOOP_COMPLETE"):  # a shell's completion script calling back
        from hoopcli.completion import serve

        sys.exit(serve(app))
    args = sys.argv[1:] if argv is None else argv
    state.json = "--json" in (args[: args.index("--")] if "--" in args else args)  # not the child's own flags
    try:
        result = app(args=args, prog_name="hoop", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Abort:
        code = report_failure(KeyboardInterrupt(), state.json)
    except typer.Exit as exc:
        code = exc.exit_code
    except _click_exception() as exc:
        code = _render_usage_error(exc)
    except (KeyboardInterrupt, Exception) as exc:
        code = report_failure(exc, state.json)
    sys.stdout.flush()
    sys.exit(code)
