"""What every command module shares: the global options' state, --json, the profile and the
gateway API client (cli.py and cli_admin.py both import from here, never from each other)."""

from __future__ import annotations

from typing import Optional

import typer


class State:
    profile: Optional[str] = None
    json: bool = False


state = State()

JsonOpt = typer.Option(False, "--json", help="Machine-readable output: one JSON object per line on stdout.")


def _profile():
    from hoopcli.config import load_profile

    return load_profile(state.profile)


def _api():
    from hoopcli.auth.session import load_session
    from hoopcli.gateway_api import api_for

    profile = _profile()
    return api_for(profile, load_session(profile))
