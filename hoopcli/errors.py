"""One exception family for every failure a user can see.

Each error carries what happened, what to do about it, and a documented exit code; `report`
and `render` at the bottom are the one place they reach the user (from `cli.main`, and from
entry.py's typer-free `hoop exec`), so no command prints a traceback.
"""

from __future__ import annotations

import re
from enum import IntEnum


class ExitCode(IntEnum):
    """The exit codes hoop documents in the README. `hoop exec` returns the child's own code."""

    OK = 0
    ERROR = 1  # anything not covered below
    USAGE = 2  # bad flags, bad config value, bad input
    NOT_LOGGED_IN = 3  # no session, session expired and cannot be refreshed, token refused (407)
    DENIED = 4  # identity not allowed (403), statement or approval denied
    APPROVAL_PENDING = 5  # a statement is held until an approver decides
    UNREACHABLE = 6  # gateway, IdP, Vault, AWS or the target cannot be reached (502)
    NOT_FOUND = 7  # unknown connection or profile (404)
    CONFIG = 8  # configuration missing or invalid
    BROKER = 9  # a credential broker refused or failed
    INTERRUPTED = 130  # Ctrl-C


class HoopError(Exception):
    """A failure with a one-line message, a hint and an exit code."""

    exit_code: ExitCode = ExitCode.ERROR
    default_hint: str = ""

    def __init__(self, message: str, hint: str | None = None, *, exit_code: ExitCode | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        if exit_code is not None:
            self.exit_code = exit_code

    def to_json(self) -> dict:
        return {
            "error": self.message,
            "hint": self.hint,
            "exit_code": int(self.exit_code),
            "kind": type(self).__name__,
        }


class UsageError(HoopError):
    exit_code = ExitCode.USAGE


class ConfigError(HoopError):
    exit_code = ExitCode.CONFIG
    default_hint = "Check `hoop config show` and set the missing value with `hoop config set KEY VALUE`."


class NotLoggedIn(HoopError):
    exit_code = ExitCode.NOT_LOGGED_IN
    default_hint = "Run `hoop login` (in another terminal if a tunnel is running)."


class AuthError(HoopError):
    """The identity provider refused or could not be used."""

    exit_code = ExitCode.NOT_LOGGED_IN


class KeyringUnavailable(HoopError):
    exit_code = ExitCode.NOT_LOGGED_IN
    default_hint = (
        "Install a keyring backend (e.g. gnome-keyring and secretstorage), set "
        "PYTHON_KEYRING_BACKEND, start `eval $(hoop agent)`, or pass a token in HOOP_TOKEN."
    )


class Denied(HoopError):
    exit_code = ExitCode.DENIED


class ApprovalPending(HoopError):
    exit_code = ExitCode.APPROVAL_PENDING


class Unreachable(HoopError):
    exit_code = ExitCode.UNREACHABLE


class NotFound(HoopError):
    exit_code = ExitCode.NOT_FOUND


class BrokerError(HoopError):
    exit_code = ExitCode.BROKER


class Interrupted(HoopError):
    exit_code = ExitCode.INTERRUPTED


# The profile this command runs with (--profile or HOOP_PROFILE), set once by the entry points.
_profile_in_use: str | None = None
# Commands that use no profile: a hint naming them gets no --profile.
_NO_PROFILE = re.compile(r"`hoop (?!--profile |-p |dev\b|agent\b|gateway\b|--version|--help)")


def use_profile(name: str | None) -> None:
    global _profile_in_use
    _profile_in_use = name or None


def with_profile(text: str, profile: str | None) -> str:
    """Every `hoop …` command in `text` with `--profile NAME` in it, so a hint works as
    printed, also when pasted into another terminal (not for the default profile)."""
    if not text or not profile or profile == "default":
        return text
    return _NO_PROFILE.sub(f"`hoop --profile {profile} ", text)


def hint_for(exc: HoopError) -> str:
    """The hint as shown: naming the profile in use, and pointing at a running `hoop dev`
    when the default profile is not set up (its profiles are the ones that work then)."""
    hint = exc.hint
    if _profile_in_use in (None, "default") and isinstance(exc, (NotLoggedIn, ConfigError)):
        from hoopcli.dev.profiles import PROFILE, dev_is_running

        if dev_is_running():
            hint = f"{hint} `hoop dev` is running: use `hoop --profile {PROFILE} …`, or `export HOOP_PROFILE={PROFILE}` first.".strip()
    return with_profile(hint, _profile_in_use)


def render(exc: HoopError, as_json: bool) -> None:
    """The one way a failure reaches the user: what happened and what to do on stderr (secrets
    redacted), and with --json also as the last JSON line on stdout."""
    import sys

    from hoopcli.logs import redact

    hint = hint_for(exc)
    sys.stderr.write(f"hoop: error: {redact(exc.message)}\n")
    if hint:
        sys.stderr.write(f"hoop: hint: {hint}\n")
    if as_json:
        from hoopcli.output import emit_json

        emit_json({"event": "error", **exc.to_json(), "hint": hint, "error": redact(exc.message)})


def report(exc: BaseException, as_json: bool) -> int:
    """Render a failure that ended a command and return its exit code: a HoopError as it is,
    Ctrl-C as Interrupted, anything else (a bug) as one redacted line, never a traceback."""
    if isinstance(exc, HoopError):
        render(exc, as_json)
        return int(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        render(Interrupted("interrupted", ""), as_json)
        return int(ExitCode.INTERRUPTED)
    import logging

    if logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("hoopcli").exception("unexpected error")
    render(HoopError(f"unexpected {type(exc).__name__}: {exc}", "Run again with --debug for details, and report it if it persists."), as_json)
    return int(ExitCode.ERROR)
