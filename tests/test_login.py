"""`hoop login` / whoami / logout against the real OpenID provider (npm oidc-provider).

The person who approves the device code is the test, driving the provider's own pages.
Keyrings: an in-memory backend in-process; the real Secret Service test is in
test_keyring_secret_service.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


from tests.support.cli import HOOP, run_subprocess, subprocess_env
from tests.support.oidc import approve_in_background


def _configure(hoop, provider):
    assert hoop("config", "set", "issuer", provider.issuer).code == 0


def _files_containing(root, needle: str) -> list[str]:
    hits = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as f:
                    if needle.encode() in f.read():
                        hits.append(path)
            except OSError:
                pass
    return hits


def test_login_stores_tokens_in_keyring_and_whoami_shows_identity(hoop, hoop_home, mem_keyring, oidc_provider):
    _configure(hoop, oidc_provider)
    approver = approve_in_background(oidc_provider, login="alice")
    result = hoop("login", "--json")
    approver.join()
    assert result.code == 0, result.err
    lines = result.json_lines()
    assert lines[0]["event"] == "device_code"
    assert lines[0]["user_code"] == approver.user_code
    assert lines[0]["verification_uri"].startswith(oidc_provider.issuer)
    assert "device_code" not in lines[0]  # the secret half of the grant is never shown
    assert lines[-1]["event"] == "logged_in" and lines[-1]["sub"] == "alice"
    assert approver.user_code in result.err  # people read the code on stderr

    stored = json.loads(mem_keyring.items[("hoop", "default")])
    assert stored["id_token"] and stored["refresh_token"]
    assert _files_containing(hoop_home, stored["refresh_token"]) == []
    assert _files_containing(hoop_home, stored["id_token"]) == []

    who = hoop("whoami", "--json")
    assert who.code == 0, who.err
    data = json.loads(who.out)
    assert data["sub"] == "alice"
    assert data["email"] == "alice@example.com"
    assert data["groups"] == ["dba", "developers"]
    assert data["issuer"] == oidc_provider.issuer
    assert data["session_store"] == "keyring"
    assert data["expires_in"] > 60


def test_slow_down_adds_five_seconds_and_keeps_polling(hoop, mem_keyring, oidc_provider):
    _configure(hoop, oidc_provider)
    oidc_provider.set_device_behaviour(interval=1, slow_down_polls=1)
    approver = approve_in_background(oidc_provider, login="bob")
    result = hoop("login", "--json")
    approver.join()
    assert result.code == 0, result.err
    polls = oidc_provider.polls(approver.user_code)
    assert len(polls) == 2, polls  # one slow_down, then success
    gap = (polls[1] - polls[0]) / 1000
    assert gap >= 5.9, f"second poll came {gap:.2f}s after slow_down; RFC 8628 says interval + 5 s"
    assert result.json_lines()[-1]["sub"] == "bob"


def test_access_denied_stops_with_clear_message(hoop, mem_keyring, oidc_provider):
    _configure(hoop, oidc_provider)
    approver = approve_in_background(oidc_provider, login="alice", deny=True)
    result = hoop("login")
    approver.join()
    assert result.code == 3
    assert "denied" in result.err
    assert "hoop login" in result.err
    assert mem_keyring.items == {}


def test_expired_device_code_stops_with_clear_message(hoop, mem_keyring, oidc_provider_factory):
    provider = oidc_provider_factory(device_code_ttl=3)
    _configure(hoop, provider)
    started = time.monotonic()
    result = hoop("login")
    assert result.code == 3
    assert "expired" in result.err
    assert time.monotonic() - started < 10
    assert mem_keyring.items == {}


def test_access_token_near_expiry_is_refreshed(hoop, mem_keyring, oidc_provider_factory):
    provider = oidc_provider_factory(id_token_ttl=30)  # always within the 60 s refresh margin
    _configure(hoop, provider)
    approver = approve_in_background(provider, login="alice")
    assert hoop("login").code == 0
    approver.join()
    before = json.loads(mem_keyring.items[("hoop", "default")])
    time.sleep(1.1)  # iat has one-second resolution: make the new token differ
    who = hoop("whoami", "--json")
    assert who.code == 0, who.err
    after = json.loads(mem_keyring.items[("hoop", "default")])
    assert after["id_token"] != before["id_token"]
    assert after["expires_at"] > before["expires_at"]
    assert json.loads(who.out)["sub"] == "alice"


def test_failed_refresh_says_to_log_in(hoop, mem_keyring, oidc_provider_factory):
    provider = oidc_provider_factory(id_token_ttl=30)
    _configure(hoop, provider)
    approver = approve_in_background(provider, login="alice")
    assert hoop("login").code == 0
    approver.join()
    stored = json.loads(mem_keyring.items[("hoop", "default")])
    provider.revoke(stored["refresh_token"])
    who = hoop("whoami")
    assert who.code == 3
    assert "hoop login" in who.err


def test_logout_revokes_refresh_token_at_provider(hoop, mem_keyring, oidc_provider):
    _configure(hoop, oidc_provider)
    approver = approve_in_background(oidc_provider, login="carol")
    assert hoop("login").code == 0
    approver.join()
    refresh_token = json.loads(mem_keyring.items[("hoop", "default")])["refresh_token"]
    assert not oidc_provider.revoked(refresh_token)
    result = hoop("logout", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["refresh_token_revoked"] is True
    assert oidc_provider.revoked(refresh_token)
    assert oidc_provider.refresh(refresh_token).status_code == 400
    assert mem_keyring.items == {}
    assert hoop("whoami").code == 3


def test_token_for_another_audience_is_rejected_and_nothing_stored(hoop, mem_keyring, oidc_provider):
    _configure(hoop, oidc_provider)
    foreign = oidc_provider.device_login("alice", client_id="other-client")["id_token"]
    result = hoop("login", "--token-stdin", stdin=foreign)
    assert result.code == 3
    assert "audience" in result.err.lower()
    assert mem_keyring.items == {}


def test_token_from_another_issuer_is_rejected_and_nothing_stored(hoop, mem_keyring, oidc_provider, oidc_provider_factory):
    other = oidc_provider_factory(id_token_ttl=299)  # a second, unrelated provider
    _configure(hoop, oidc_provider)
    foreign = other.device_login("alice")["id_token"]
    result = hoop("login", "--token-stdin", stdin=foreign)
    assert result.code == 3
    assert mem_keyring.items == {}


def test_wrong_issuer_in_discovery_is_rejected(hoop, mem_keyring, oidc_provider):
    # The provider answers on localhost too, but says its issuer is 127.0.0.1: a mix-up.
    hoop("config", "set", "issuer", oidc_provider.issuer.replace("127.0.0.1", "localhost"))
    result = hoop("login")
    assert result.code == 3
    assert "issuer" in result.err
    assert mem_keyring.items == {}


def test_token_stdin_stores_a_valid_token(hoop, mem_keyring, oidc_provider):
    _configure(hoop, oidc_provider)
    token = oidc_provider.device_login("bob")["id_token"]
    result = hoop("login", "--token-stdin", "--json", stdin=token + "\n")
    assert result.code == 0, result.err
    assert json.loads(mem_keyring.items[("hoop", "default")])["id_token"] == token


def test_hoop_token_overrides_keyring(hoop, monkeypatch, mem_keyring, oidc_provider):
    token = oidc_provider.device_login("agent-1")["id_token"]
    monkeypatch.setenv("HOOP_TOKEN", token)
    result = hoop("whoami", "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["sub"] == "agent-1" and data["session_store"] == "env"
    assert mem_keyring.items == {}


class _FakeGitHubTokenService(BaseHTTPRequestHandler):
    """GitHub's id-token endpoint cannot run here; this stands in for it (it hands out a real
    token from the test provider) and records what hoop asked for."""

    token = ""
    seen: list = []

    def do_GET(self):
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        body = json.dumps({"value": type(self).token}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_ci_login_with_github_actions_token(hoop, monkeypatch, mem_keyring, oidc_provider):
    _configure(hoop, oidc_provider)
    _FakeGitHubTokenService.token = oidc_provider.device_login("agent-1")["id_token"]
    _FakeGitHubTokenService.seen = []
    server = HTTPServer(("127.0.0.1", 0), _FakeGitHubTokenService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"http://127.0.0.1:{server.server_port}/token?api-version=2.0")
        monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "runner-request-token")
        result = hoop("login", "--ci", "--json")
    finally:
        server.shutdown()
    assert result.code == 0, result.err
    data = result.json_lines()[-1]
    assert data["sub"] == "agent-1" and data["session_store"] == "ci"
    path, auth = _FakeGitHubTokenService.seen[0]
    assert "audience=hoop-cli" in path and auth == "bearer runner-request-token"
    assert mem_keyring.items == {}  # kept in memory for the command only


def test_ci_login_with_gitlab_style_variable(hoop, monkeypatch, mem_keyring, oidc_provider):
    _configure(hoop, oidc_provider)
    monkeypatch.setenv("HOOP_ID_TOKEN", oidc_provider.device_login("bob")["id_token"])
    result = hoop("login", "--ci", "--json")
    assert result.code == 0, result.err
    assert result.json_lines()[-1]["sub"] == "bob"
    monkeypatch.setenv("HOOP_ID_TOKEN", oidc_provider.device_login("bob", client_id="other-client")["id_token"])
    assert hoop("login", "--ci").code == 3


def test_no_keyring_backend_fails_clearly_and_writes_nothing(tmp_path, oidc_provider):
    home = tmp_path / "home"
    home.mkdir()
    env = subprocess_env(home, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring", HOOP_ISSUER=oidc_provider.issuer)
    before = oidc_provider.latest_device_seq()
    result = run_subprocess(["login"], env)
    assert result.code == 3
    assert "keyring" in result.err and "HOOP_TOKEN" in result.err and "PYTHON_KEYRING_BACKEND" in result.err
    assert "Traceback" not in result.err
    assert oidc_provider.latest_device_seq() == before  # failed before asking the person for anything
    assert [p for p in home.rglob("*") if p.is_file()] == []


def test_non_tty_commands_never_prompt(tmp_path, oidc_provider):
    home = tmp_path / "home"
    home.mkdir()
    env = subprocess_env(home, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring", HOOP_ISSUER=oidc_provider.issuer)
    for args in (["login", "--token-stdin"], ["whoami"], ["logout"]):
        result = run_subprocess(args, env, stdin="", timeout=20)
        assert result.code != 0 and "hoop: error:" in result.err, (args, result)
        assert "Traceback" not in result.err


def test_ctrl_c_cancels_login_with_130(tmp_path, oidc_provider):
    home = tmp_path / "home"
    home.mkdir()
    env = subprocess_env(
        home,
        HOOP_ISSUER=oidc_provider.issuer,
        PYTHON_KEYRING_BACKEND="tests.support.cli.MemoryKeyring",
    )
    proc = subprocess.Popen(HOOP + ["login", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    first = json.loads(proc.stdout.readline())
    assert first["event"] == "device_code"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 130
    assert "cancelled" in err or "interrupted" in err
    assert "Traceback" not in err
