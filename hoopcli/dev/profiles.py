"""The two profiles `hoop dev` writes, and the lock that says a `hoop dev` owns them.

* `dev` signs in with hoop's own client (the sign-in page offers dev-user first): the
  requester, whose risky statements are held;
* `dev-approver` signs in with a second client of the dev issuer (dev-admin first): the
  approver. Nobody approves their own request, so the loop needs both.

While `hoop dev` runs it holds an exclusive lock on `dev.lock` beside the config file, so a
second `hoop dev` does not silently point the same profiles at its own stack, and an error
in another terminal can say "`hoop dev` is running: use --profile dev". This module is
imported on error paths: it stays free of heavy imports.
"""

from __future__ import annotations

import os
from pathlib import Path

from hoopcli.errors import ConfigError

PROFILE = "dev"
APPROVER_PROFILE = "dev-approver"
CLIENT_ID = "hoop-cli"
APPROVER_CLIENT_ID = "hoop-dev-approver"
LOCK_NAME = "dev.lock"


def approver_profile_for(profile: str | None) -> str | None:
    """The profile an approver uses beside `profile`: dev-approver for dev, else the same."""
    return APPROVER_PROFILE if profile == PROFILE else profile


def write_profiles(issuer_url: str, gateway_url: str, ca_file: str) -> str:
    """Point `dev` and `dev-approver` at this stack in the current config dir; its path."""
    from hoopcli.config import config_path, set_value

    for profile, client_id in ((PROFILE, CLIENT_ID), (APPROVER_PROFILE, APPROVER_CLIENT_ID)):
        for key, value in (("issuer", issuer_url), ("client_id", client_id), ("gateway", gateway_url), ("ca_file", ca_file)):
            set_value(profile, key, value)
    return str(config_path())


def _lock_path() -> Path:
    from hoopcli.config import config_dir

    return config_dir() / LOCK_NAME


class ProfilesLock:
    """`acquire()` holds the `dev` profiles for this process, or refuses when another `hoop dev`
    holds them; `release()` (or this process ending) lets them go."""

    def __init__(self):
        self.fd: int | None = None

    def acquire(self) -> "ProfilesLock":
        import fcntl

        path = _lock_path()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"another `hoop dev` (pid {other}) is running and owns the profiles '{PROFILE}' and '{APPROVER_PROFILE}'",
                "Use that one, or stop it (Ctrl-C in its terminal) first; `hoop dev --demo` keeps a config of its own.",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


def dev_is_running() -> bool:
    """True while some `hoop dev` holds the lock in this config dir (never creates the file)."""
    import fcntl

    try:
        fd = os.open(_lock_path(), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False
