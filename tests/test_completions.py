"""Shell completion: the checked-in scripts are current, and a real bash using them gets
commands and (from the real gateway) connection names — or nothing, quietly and quickly.

Each completion runs the real `hoop` console script, as a shell would.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hoopcli import completion
from tests.support.cli import REPO, run_subprocess, subprocess_env

COMPLETIONS = REPO / "completions"
REGENERATE = "Regenerate them with: python -m hoopcli.completion --write (and commit completions/)."
NO_KEYRING = {"PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}


@pytest.fixture(scope="module")
def hoop_bin(tmp_path_factory) -> Path:
    """A folder holding `hoop`: the venv's console script, or a stand-in running this Python."""
    installed = Path(sys.executable).parent / "hoop"
    if installed.exists():
        return installed.parent
    folder = tmp_path_factory.mktemp("bin")
    (folder / "hoop").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m hoopcli "$@"\n')
    (folder / "hoop").chmod(0o755)
    return folder


def bash_complete(line: str, env: dict, hoop_bin: Path) -> tuple[list[str], subprocess.CompletedProcess, float]:
    """Complete `line` (cursor at its end) the way bash would, with completions/hoop.bash."""
    words = line.split()
    if line.endswith(" "):
        words.append("")
    script = f"""
source {shlex.quote(str(COMPLETIONS / 'hoop.bash'))}
func=$(complete -p hoop | sed -n 's/.*-F \\([^ ]*\\) hoop$/\\1/p')
[ -n "$func" ] || {{ echo "hoop.bash registered no completion function" >&2; exit 99; }}
COMP_LINE={shlex.quote(line)}
COMP_POINT=${{#COMP_LINE}}
COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})
COMP_CWORD={len(words) - 1}
"$func" hoop "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = {**env, "PATH": f"{hoop_bin}{os.pathsep}{env.get('PATH', os.defpath)}"}
    started = time.monotonic()
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    return [w for w in proc.stdout.splitlines() if w], proc, elapsed


@pytest.fixture
def plain_env(tmp_path) -> dict:
    home = tmp_path / "home"
    home.mkdir()
    return subprocess_env(home, **NO_KEYRING)


def cache_files(env: dict) -> list[Path]:
    return sorted(Path(env["XDG_CACHE_HOME"], "hoop").glob("connections-*.json"))


# ---- the scripts ---------------------------------------------------------------------------


@pytest.mark.parametrize("shell", completion.SHELLS)
def test_checked_in_script_is_current(shell):
    path = COMPLETIONS / f"hoop.{shell}"
    assert path.exists(), f"{path} is missing. {REGENERATE}"
    assert path.read_text(encoding="utf-8") == completion.script(shell), f"{path} is out of date. {REGENERATE}"


def test_hoop_prints_its_own_script(plain_env):
    result = run_subprocess([], {**plain_env, "_HOOP_COMPLETE": "source_bash"})
    assert result.code == 0, result.err
    assert result.out == completion.source("bash")
    assert result.out.strip() in (COMPLETIONS / "hoop.bash").read_text()


def test_unknown_instruction_prints_nothing_on_stdout(plain_env):
    result = run_subprocess([], {**plain_env, "_HOOP_COMPLETE": "source_tcsh"})
    assert result.code != 0 and result.out == "" and "Traceback" not in result.err


# ---- commands and options ------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, expected",
    [
        ("hoop ex", ["exec"]),
        ("hoop conn", ["connect", "connections"]),
        ("hoop approvals a", ["approve"]),
        ("hoop audit ", ["list", "verify", "export"]),
        ("hoop --ver", ["--version"]),
    ],
)
def test_bash_completes_commands(line, expected, plain_env, hoop_bin):
    words, proc, _ = bash_complete(line, plain_env, hoop_bin)
    assert sorted(words) == sorted(expected), proc.stderr
    assert proc.stderr == ""


# ---- connection names from the gateway -----------------------------------------------------


def test_bash_offers_connection_names_from_the_gateway(as_user, hoop_bin):
    env = as_user("alice")
    words, proc, _ = bash_complete("hoop exec ", env, hoop_bin)
    assert {"app-db", "gated-db", "dead-db"} <= set(words), proc.stderr
    assert "admin-db" not in words  # alice may not use it, so the gateway does not list it
    assert proc.stderr == ""

    words, _, _ = bash_complete("hoop connect app", env, hoop_bin)
    assert "app-db" in words and all(w.startswith("app") for w in words)
    words, _, _ = bash_complete("hoop creds gat", env, hoop_bin)
    assert words == ["gated-db"]
    words, _, _ = bash_complete("hoop --profile default exec ga", env, hoop_bin)
    assert words == ["gated-db"]


def test_names_are_cached_for_a_minute_owner_only_and_without_the_token(as_user, hoop_bin, tokens):
    env = as_user("alice")
    bash_complete("hoop exec ", env, hoop_bin)
    [cache] = cache_files(env)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) & 0o077 == 0
    text = cache.read_text()
    assert tokens("alice") not in text and "eyJ" not in text
    data = json.loads(text)
    assert set(data) == {"fetched_at", "names"} and "app-db" in data["names"]

    # Logged out now: the cached names still answer, without asking the gateway.
    logged_out = {k: v for k, v in env.items() if k != "HOOP_TOKEN"} | NO_KEYRING
    words, _, _ = bash_complete("hoop exec app", logged_out, hoop_bin)
    assert "app-db" in words

    # A minute later the cache is stale, and logged out there is nothing to offer.
    data["fetched_at"] -= completion.CACHE_TTL + 1
    cache.write_text(json.dumps(data))
    words, proc, _ = bash_complete("hoop exec app", logged_out, hoop_bin)
    assert words == [] and proc.stderr == ""


def test_not_logged_in_offers_nothing_quietly(gateway, plain_env, hoop_bin):
    env = {**plain_env, "HOOP_GATEWAY": gateway.url, "HOOP_CA_FILE": gateway.ca_file}
    words, proc, elapsed = bash_complete("hoop exec ", env, hoop_bin)
    assert words == [] and proc.stderr == ""
    assert elapsed < completion.FETCH_DEADLINE + 3
    assert cache_files(env) == []  # a failure is not cached


def test_gateway_down_offers_nothing_quietly(as_user, hoop_bin):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = {**as_user("alice"), "HOOP_GATEWAY": f"https://127.0.0.1:{closed}"}
    words, proc, _ = bash_complete("hoop connect ", env, hoop_bin)
    assert words == [] and proc.stderr == ""


def test_silent_gateway_gives_up_after_the_deadline(as_user, hoop_bin):
    """A gateway that accepts the TCP connection and never answers: no hang at the prompt."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # never accept()ed: the handshake completes, TLS never does
        env = {**as_user("alice"), "HOOP_GATEWAY": f"https://127.0.0.1:{listener.getsockname()[1]}"}
        words, proc, elapsed = bash_complete("hoop exec ", env, hoop_bin)
    assert words == [] and proc.stderr == ""
    assert completion.FETCH_DEADLINE <= elapsed < completion.FETCH_DEADLINE + 3


# ---- the pieces, in process ----------------------------------------------------------------


def test_cache_round_trip_and_expiry(tmp_path, monkeypatch):
    path = tmp_path / "c" / "connections-x.json"
    completion._write_cache(path, ["a", "b"])
    assert completion._read_cache(path) == ["a", "b"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + completion.CACHE_TTL + 1)
    assert completion._read_cache(path) is None
    monkeypatch.setattr(time, "time", lambda: now - 3600)  # written "in the future": distrust
    assert completion._read_cache(path) is None
    path.write_text("{not json")
    assert completion._read_cache(path) is None


def test_profile_local_connections_complete_for_creds_only(hoop_home, monkeypatch):
    from hoopcli.config import write_raw

    write_raw({"profiles": {"default": {"connections": {"aws-prod": {"broker": "aws"}}}}})
    assert completion.connection_names(None, include_local=True) == ["aws-prod"]
    assert completion.connection_names(None) == []


def test_within_returns_none_on_failure_or_timeout():
    assert completion._within(1, lambda: 42) == 42
    assert completion._within(1, lambda: 1 / 0) is None
    started = time.monotonic()
    assert completion._within(0.2, time.sleep, 5) is None
    assert time.monotonic() - started < 1
