"""Running hoop in tests: in-process (fast, injectable keyring) or as a real subprocess.

Tests never touch the machine's own keyring: in-process runs get a fresh in-memory backend;
subprocesses get HOME/XDG dirs in a temp dir and an explicit PYTHON_KEYRING_BACKEND.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend

REPO = Path(__file__).resolve().parents[2]
HOOP = [sys.executable, "-m", "hoopcli"]


class MemoryKeyring(KeyringBackend):
    """A keyring that lives in this process's memory only."""

    priority = 1

    def __init__(self):
        super().__init__()
        self.items: dict[tuple[str, str], str] = {}

    def get_password(self, service, username):
        return self.items.get((service, username))

    def set_password(self, service, username, password):
        self.items[(service, username)] = password

    def delete_password(self, service, username):
        import keyring.errors

        if (service, username) not in self.items:
            raise keyring.errors.PasswordDeleteError("not found")
        del self.items[(service, username)]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.out.splitlines() if line.startswith("{")]


@pytest.fixture
def mem_keyring():
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


@pytest.fixture
def hoop_home(tmp_path, monkeypatch):
    """A clean HOME and config dir for one test; hoop's own env vars cleared."""
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    for name in list(os.environ):
        if name.startswith(("HOOP_", "ACTIONS_ID_TOKEN")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("HOOP_CONFIG_DIR", str(home / ".config" / "hoop"))
    return home


def run_inprocess(args: list[str], stdin: str = "") -> Result:
    from hoopcli.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main(args)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdin = old_stdin
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def hoop(hoop_home, mem_keyring):
    """hoop(*args, stdin="") -> Result, run in this process with an in-memory keyring."""

    def run(*args: str, stdin: str = "") -> Result:
        return run_inprocess(list(args), stdin=stdin)

    return run


def subprocess_env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOOP_", "ACTIONS_ID_TOKEN"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        HOOP_CONFIG_DIR=str(home / ".config" / "hoop"),
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


def run_subprocess(args: list[str], env: dict, stdin: str | None = None, timeout: float = 60) -> Result:
    proc = subprocess.run(HOOP + args, env=env, input=stdin, capture_output=True, text=True, timeout=timeout, stdin=None if stdin is not None else subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)
