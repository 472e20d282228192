"""End to end with a real Secret Service keyring: gnome-keyring inside dbus-run-session, with
HOME and XDG dirs in a temp dir (the machine's own keyring is never touched)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.support.cli import REPO, subprocess_env
from tests.support.oidc import approve_in_background

SCRIPT = r"""
set -e
# Unlock a fresh login keyring with a throw-away password, as a desktop session would.
eval "$(printf 'test-unlock\n' | gnome-keyring-daemon --unlock --components=secrets)"
export GNOME_KEYRING_CONTROL
"$PY" -m hoopcli login --json > "$OUT/login.json"
"$PY" -m hoopcli whoami --json > "$OUT/whoami.json"
"$PY" -c 'import keyring; print(type(keyring.get_keyring()).__module__)' > "$OUT/backend.txt"
"$PY" -c 'import keyring, json; print(json.loads(keyring.get_password("hoop", "default"))["refresh_token"])' > "$OUT/stored.txt"
"$PY" -m hoopcli logout --json > "$OUT/logout.json"
"$PY" -c 'import keyring; print(keyring.get_password("hoop", "default"))' > "$OUT/after.txt"
"""


@pytest.mark.skipif(not (shutil.which("dbus-run-session") and shutil.which("gnome-keyring-daemon")), reason="needs gnome-keyring and dbus (installed by .ci/run)")
def test_login_whoami_logout_with_gnome_keyring(tmp_path, oidc_provider):
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    out.mkdir()
    env = subprocess_env(home, HOOP_ISSUER=oidc_provider.issuer, PY=sys.executable, OUT=str(out), XDG_RUNTIME_DIR=str(tmp_path / "run"), XDG_DATA_HOME=str(home / ".local/share"))
    os.makedirs(env["XDG_RUNTIME_DIR"], mode=0o700)
    env.pop("PYTHON_KEYRING_BACKEND", None)
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    approver = approve_in_background(oidc_provider, login="alice", timeout=60)
    proc = subprocess.run(["dbus-run-session", "--", "bash", "-c", SCRIPT], env=env, cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    approver.join()
    assert proc.returncode == 0, proc.stderr
    assert (out / "backend.txt").read_text().strip() == "keyring.backends.SecretService"
    assert json.loads((out / "whoami.json").read_text())["sub"] == "alice"
    refresh_token = (out / "stored.txt").read_text().strip()
    assert refresh_token and oidc_provider.revoked(refresh_token)
    assert (out / "after.txt").read_text().strip() == "None"
    # The keyring's own encrypted file lives under HOME; no hoop token sits in clear anywhere.
    for path in home.rglob("*"):
        if path.is_file():
            assert refresh_token.encode() not in path.read_bytes(), path
