"""hoop's command line: thin typer commands that call one function each and render the result.

Every failure is a HoopError rendered once, in `main`, as one line of what happened and one
line of what to do, with the exit code documented in the README. Heavy modules (boto3, hvac,
the gateway) are imported inside the commands that need them, so `hoop --help` stays fast.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from hoopcli import __version__
from hoopcli.errors import ExitCode, HoopError, Interrupted, UsageError

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


class State:
    profile: Optional[str] = None
    json: bool = False


state = State()

JsonOpt = typer.Option(False, "--json", help="Machine-readable output: one JSON object per line on stdout.")


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

    state.profile = profile
    logs.setup(debug)


def _profile():
    from hoopcli.config import load_profile

    return load_profile(state.profile)


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


# ---- config -------------------------------------------------------------------------------


@config_app.command("set")
def config_set(key: str, value: str) -> None:
    """Set a profile field: issuer, client_id, scopes, audience, gateway, ca_file."""
    from hoopcli.config import active_profile_name, set_value
    from hoopcli.output import info

    path = set_value(state.profile, key, value)
    info(f"Set {key} for profile '{active_profile_name(state.profile)}' in {path}.")


@config_app.command("show")
def config_show(json_out: bool = JsonOpt) -> None:
    """Show the active profile after environment overrides."""
    from hoopcli.config import config_path
    from hoopcli.output import emit_json, key_values

    data = _profile().public_dict()
    data["config_file"] = str(config_path())
    emit_json(data) if json_out else key_values(data)


# ---- the gateway --------------------------------------------------------------------------


@app.command()
def gateway(
    config: str = typer.Option("gateway.toml", "--config", "-c", help="Path to gateway.toml."),
    dev_tls: Optional[str] = typer.Option(None, "--dev-tls", help="Make (or reuse) a development CA and server certificate in this folder."),
    insecure_listen: bool = typer.Option(False, "--insecure-listen", help="Listen without TLS (127.0.0.1 only; for tests)."),
    json_out: bool = JsonOpt,
) -> None:
    """Run the gateway: TLS, CONNECT with bearer tokens, per-statement audit trail."""
    from hoopcli.gateway.main import start_gateway
    from hoopcli.output import emit_json, info

    def ready(event: dict) -> None:
        if json_out:
            emit_json(event)
        info(f"hoop gateway listening on {event['url']} (audit store: {event['audit_store']})")
        if event.get("ca_file"):
            info(f"Development CA: {event['ca_file']}  (pin it with `hoop config set ca_file {event['ca_file']}`)")

    start_gateway(config, dev_tls, insecure_listen, ready)


# ---- the error boundary -------------------------------------------------------------------


def _render_error(exc: HoopError) -> None:
    from hoopcli.logs import redact

    sys.stderr.write(f"hoop: error: {redact(exc.message)}\n")
    if exc.hint:
        sys.stderr.write(f"hoop: hint: {exc.hint}\n")
    if state.json:
        from hoopcli.output import emit_json

        emit_json({"event": "error", **exc.to_json()})


def main(argv: List[str] | None = None) -> None:
    """Entry point: run the app and turn every failure into one line and an exit code."""
    import click

    args = sys.argv[1:] if argv is None else argv
    state.json = "--json" in args
    try:
        result = app(args=args, prog_name="hoop", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except HoopError as exc:
        _render_error(exc)
        code = int(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        _render_error(Interrupted("interrupted", ""))
        code = int(ExitCode.INTERRUPTED)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.ClickException as exc:
        _render_error(UsageError(exc.format_message(), "See `hoop --help` or `hoop COMMAND --help`."))
        code = int(ExitCode.USAGE)
    sys.stdout.flush()
    sys.exit(code)
