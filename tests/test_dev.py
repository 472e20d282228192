"""`hoop dev`: the development-only issuer on its own, then the whole stack.

The issuer is driven with plain HTTP (as a browser and as an RFC 8628 client would) and with
hoop's own OIDC client; its tokens are checked against its JWKS and by the gateway's
verifier. The stack runs as `hoop dev --demo` (a real subprocess, end to end), as `hoop dev`
stopped with Ctrl-C, and in-process with the TCP echo target.
"""

from __future__ import annotations

import json
import re
import selectors
import signal
import subprocess
import time
from pathlib import Path

import jwt
import pytest
import requests

from hoopcli.auth.oidc import Provider
from hoopcli.dev.issuer import DEVICE_GRANT, DevIssuer
from tests.support.cli import HOOP, subprocess_env

SCOPES = "openid email profile groups offline_access"
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def issuer():
    with DevIssuer() as iss:
        yield iss


@pytest.fixture(scope="module")
def auto_issuer():
    with DevIssuer(auto_approve="dev-user") as iss:
        yield iss


def post(iss: DevIssuer, path: str, **form) -> requests.Response:
    return requests.post(iss.url + path, data=form, timeout=10)


def start_code(iss: DevIssuer, scope: str = SCOPES) -> dict:
    resp = post(iss, "/device/code", client_id="hoop-cli", scope=scope)
    assert resp.status_code == 200, resp.text
    return resp.json()


def poll(iss: DevIssuer, device_code: str) -> requests.Response:
    return post(iss, "/token", grant_type=DEVICE_GRANT, device_code=device_code, client_id="hoop-cli")


def verify_with_jwks(iss: DevIssuer, token: str) -> dict:
    jwks = requests.get(iss.url + "/jwks", timeout=10).json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id == kid)
    return jwt.decode(token, key.key, algorithms=["RS256"], audience="hoop-cli", issuer=iss.url)


def approve_in_browser(iss: DevIssuer, page_url: str, identity: str, action: str = "approve", nonce: str | None = None) -> requests.Response:
    """GET the page a person opens, then submit its form the way a browser does."""
    page = requests.get(page_url, timeout=10)
    assert page.status_code == 200 and "DEVELOPMENT ONLY" in page.text
    user_code = re.search(r'name=user_code[^>]*value="([^"]*)"', page.text).group(1)
    form_nonce = re.search(r"name=nonce value=([^\s>]+)", page.text).group(1)
    return post(iss, "/device", nonce=form_nonce if nonce is None else nonce, user_code=user_code, identity=identity, action=action)


# ---- the issuer ---------------------------------------------------------------------------


def test_discovery_is_marked_development_only_and_lists_every_endpoint(issuer):
    meta = requests.get(issuer.url + "/.well-known/openid-configuration", timeout=10).json()
    assert meta["hoop_dev"] is True and meta["issuer"] == issuer.url
    assert issuer.url.startswith("http://127.0.0.1:")
    for name in ("jwks_uri", "device_authorization_endpoint", "token_endpoint", "revocation_endpoint"):
        assert meta[name].startswith(issuer.url + "/")
    assert set(meta["grant_types_supported"]) == {DEVICE_GRANT, "refresh_token"}
    keys = requests.get(meta["jwks_uri"], timeout=10).json()["keys"]
    assert [(k["kty"], k["alg"], k["use"]) for k in keys] == [("RSA", "RS256", "sig")] and keys[0]["kid"] == issuer.kid
    assert "d" not in keys[0] and "p" not in keys[0]  # public half only


def test_device_code_shape(issuer):
    code = start_code(issuer)
    assert re.fullmatch(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}", code["user_code"])
    assert code["verification_uri"] == issuer.url + "/device"
    assert code["verification_uri_complete"] == f"{issuer.url}/device?user_code={code['user_code']}"
    assert (code["expires_in"], code["interval"]) == (600, 1)
    assert post(issuer, "/device/code", client_id="someone-else", scope="openid").json()["error"] == "invalid_client"


def test_auto_approve_device_flow_with_hoops_own_client(auto_issuer):
    provider = Provider(auto_issuer.url, "hoop-cli")
    code = provider.start_device_flow(SCOPES)
    tokens = provider.token_set(provider.poll_device_flow(code))  # validates signature, iss, aud, exp
    claims = verify_with_jwks(auto_issuer, tokens.id_token)
    assert (claims["sub"], claims["email"], claims["groups"]) == ("dev-user", "dev-user@example.com", ["developers"])
    assert claims["aud"] == "hoop-cli" and 3590 <= claims["exp"] - claims["iat"] <= 3600
    assert jwt.get_unverified_header(tokens.id_token) == {"alg": "RS256", "typ": "JWT", "kid": auto_issuer.kid}
    assert tokens.refresh_token


def test_html_form_approve_as_a_browser_would(issuer):
    code = start_code(issuer)
    assert poll(issuer, code["device_code"]).json()["error"] == "authorization_pending"
    done = approve_in_browser(issuer, code["verification_uri_complete"], "dev-admin")
    assert done.status_code == 200 and "Signed in as" in done.text
    time.sleep(1)
    body = poll(issuer, code["device_code"]).json()
    claims = verify_with_jwks(issuer, body["id_token"])
    assert claims["sub"] == "dev-admin" and claims["groups"] == ["dba", "approvers", "auditors"]
    # A device code is exchanged once.
    time.sleep(1)
    assert poll(issuer, code["device_code"]).json()["error"] == "invalid_grant"


def _preselected(page: str) -> str:
    return re.search(r"<option value=([\w-]+) selected>", page).group(1)


def test_sign_in_page_offers_the_requester_first_and_dev_admin_only_to_the_approver_client():
    """dev-admin is the only approver: pre-selected for everyone, what it runs could never be
    approved (nobody approves their own). It is offered first only on the approver client's codes."""
    with DevIssuer(approver_client_id="hoop-dev-approver") as iss:
        mine = start_code(iss)
        theirs = post(iss, "/device/code", client_id="hoop-dev-approver", scope=SCOPES).json()
        assert _preselected(requests.get(mine["verification_uri_complete"], timeout=10).text) == "dev-user"
        assert _preselected(requests.get(iss.url + "/device", timeout=10).text) == "dev-user"
        assert _preselected(requests.get(theirs["verification_uri_complete"], timeout=10).text) == "dev-admin"
        # The choice stays the person's: the requester's code can still be signed in as anyone listed.
        assert approve_in_browser(iss, mine["verification_uri_complete"], "dev-agent").status_code == 200


def test_auto_approve_signs_each_client_in_as_its_own_identity():
    with DevIssuer(auto_approve=True, approver_client_id="hoop-dev-approver") as iss:
        subs = {}
        for client in ("hoop-cli", "hoop-dev-approver"):
            provider = Provider(iss.url, client)
            body = provider.poll_device_flow(provider.start_device_flow(SCOPES))
            subs[client] = provider.validate_id_token(body["id_token"])["sub"]
        assert subs == {"hoop-cli": "dev-user", "hoop-dev-approver": "dev-admin"}
        assert post(iss, "/device/code", client_id="someone-else", scope=SCOPES).status_code == 401


def test_one_hoop_dev_owns_the_dev_profiles_at_a_time(tmp_path, monkeypatch):
    from hoopcli.dev.profiles import ProfilesLock, dev_is_running
    from hoopcli.errors import ConfigError

    monkeypatch.setenv("HOOP_CONFIG_DIR", str(tmp_path))
    assert not dev_is_running() and not (tmp_path / "dev.lock").exists()  # asking creates nothing
    first = ProfilesLock().acquire()
    try:
        assert dev_is_running()
        with pytest.raises(ConfigError, match=r"another `hoop dev` \(pid \d+\) is running"):
            ProfilesLock().acquire()
    finally:
        first.release()
    assert not dev_is_running()
    ProfilesLock().acquire().release()  # free again once the first let go


def test_html_form_deny_and_stale_forms(issuer):
    code = start_code(issuer)
    # A form without its one-time nonce (a cross-site POST) changes nothing.
    forged = post(issuer, "/device", nonce="forged", user_code=code["user_code"], identity="dev-admin", action="approve")
    assert forged.status_code == 400 and "expired" in forged.text
    assert poll(issuer, code["device_code"]).json()["error"] == "authorization_pending"
    assert approve_in_browser(issuer, code["verification_uri_complete"], "nobody").status_code == 400
    denied = approve_in_browser(issuer, code["verification_uri_complete"], "dev-user", action="deny")
    assert denied.status_code == 200
    time.sleep(1)
    assert poll(issuer, code["device_code"]).json()["error"] == "access_denied"
    # The code is spent: approving it now fails.
    assert approve_in_browser(issuer, f"{issuer.url}/device?user_code={code['user_code']}", "dev-user").status_code == 400


def test_slow_down_when_polled_too_fast_and_the_interval_stays_longer(issuer):
    code = start_code(issuer)
    first = poll(issuer, code["device_code"])
    assert first.status_code == 400 and first.json()["error"] == "authorization_pending"
    assert poll(issuer, code["device_code"]).json()["error"] == "slow_down"
    time.sleep(1.1)  # the old interval is no longer enough: it grew by 5 s
    assert poll(issuer, code["device_code"]).json()["error"] == "slow_down"
    assert issuer.approve(code["user_code"].lower().replace("-", ""), "dev-agent")
    body = poll(issuer, code["device_code"]).json()
    assert verify_with_jwks(issuer, body["id_token"])["sub"] == "dev-agent"


def test_device_code_expires():
    with DevIssuer(device_ttl=1) as iss:
        code = start_code(iss)
        time.sleep(1.1)
        resp = poll(iss, code["device_code"])
        assert resp.status_code == 400 and resp.json()["error"] == "expired_token"
        assert not iss.approve(code["user_code"], "dev-user")


def test_refresh_rotates_and_a_replayed_refresh_token_ends_the_family(auto_issuer):
    code = start_code(auto_issuer)
    time.sleep(1)
    first = poll(auto_issuer, code["device_code"]).json()
    r1 = post(auto_issuer, "/token", grant_type="refresh_token", refresh_token=first["refresh_token"], client_id="hoop-cli").json()
    assert r1["refresh_token"] != first["refresh_token"]
    assert verify_with_jwks(auto_issuer, r1["id_token"])["sub"] == "dev-user"
    replay = post(auto_issuer, "/token", grant_type="refresh_token", refresh_token=first["refresh_token"], client_id="hoop-cli")
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    # The replay revoked the rotated token too: whoever holds either copy must log in again.
    after = post(auto_issuer, "/token", grant_type="refresh_token", refresh_token=r1["refresh_token"], client_id="hoop-cli")
    assert after.json()["error"] == "invalid_grant"


def test_revocation(auto_issuer):
    provider = Provider(auto_issuer.url, "hoop-cli")
    tokens = provider.token_set(provider.poll_device_flow(provider.start_device_flow(SCOPES)))
    fresh = provider.refresh(tokens)
    assert fresh.refresh_token != tokens.refresh_token
    assert provider.revoke(fresh.refresh_token)
    assert post(auto_issuer, "/token", grant_type="refresh_token", refresh_token=fresh.refresh_token, client_id="hoop-cli").json()["error"] == "invalid_grant"
    assert post(auto_issuer, "/revoke", token="never-issued", client_id="hoop-cli").status_code == 200  # RFC 7009 §2.2


def test_no_refresh_token_without_offline_access(auto_issuer):
    code = start_code(auto_issuer, scope="openid email")
    time.sleep(1)
    body = poll(auto_issuer, code["device_code"]).json()
    assert "id_token" in body and "refresh_token" not in body


def test_tokens_verify_at_the_gateway_and_forgeries_do_not(auto_issuer):
    from hoopcli.gateway.identity import IdentityVerifier, TokenRejected, TrustedIssuer

    code = start_code(auto_issuer)
    time.sleep(1)
    token = poll(auto_issuer, code["device_code"]).json()["id_token"]
    verifier = IdentityVerifier([TrustedIssuer(issuer=auto_issuer.url, audiences=("hoop-cli",))])
    who = verifier.verify(token)
    assert (who.sub, who.groups) == ("dev-user", ("developers",))
    head, payload, sig = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["groups"] = ["dba"]
    forged = ".".join([head, jwt.utils.base64url_encode(json.dumps(claims).encode()).decode(), sig])
    with pytest.raises(TokenRejected):
        verifier.verify(forged)
    with DevIssuer() as other:  # same shape, another key: the kid is unknown
        foreign = jwt.encode({**claims, "iss": auto_issuer.url}, other._key, algorithm="RS256", headers={"kid": other.kid})
    with pytest.raises(TokenRejected):
        verifier.verify(foreign)


# ---- the stack ----------------------------------------------------------------------------


def _summary(stdout: str) -> dict:
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert lines, stdout
    return lines[-1]


def test_demo_runs_the_whole_loop_unattended(tmp_path):
    from hoopcli.dev.stack import postgres_usable

    home = tmp_path / "home"
    home.mkdir()
    workdir = tmp_path / "dev"
    env = subprocess_env(home)
    started = time.monotonic()
    proc = subprocess.run(HOOP + ["dev", "--demo", "--json", "--workdir", str(workdir)], env=env,
                          capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert took < 60
    summary = _summary(proc.stdout)
    assert summary["ok"] and all(step["ok"] for step in summary["steps"])
    assert summary["identity"]["sub"] == "dev-user"
    assert summary["audit"]["verify"]["ok"] and summary["audit"]["verify"]["checked"] >= summary["audit"]["records"] > 0
    if postgres_usable()[0] is not None:
        recorded = {(r["statement"], r["kind"]): r for r in summary["statements"]}
        assert recorded[("select id, name, email from customers order by id", "statement")]["tag"] == "SELECT 3"
        assert recorded[("insert into customers (name, email) values ('Katherine Johnson', 'katherine@example.com')", "statement")]["tag"] == "INSERT 0 1"
        drops = [r for r in summary["statements"] if r["statement"] == "drop table customers" and r["kind"] == "statement"]
        assert [r["outcome"] for r in drops] == ["held", "ok"]  # held first; after the approval it ran
        assert recorded[("drop table customers", "approval_request")]["outcome"] == "pending"
        held = summary["held"]
        assert held["outcome"] == "held" and held["table_still_exists"] and held["exit_code"] == 5
        # The loop closes: the requester could not approve, a second identity did, the re-run ran.
        steps = {s["name"]: s for s in summary["steps"]}
        assert steps["requester_cannot_approve"]["exit_code"] == 4
        assert held["approved_by"] == "dev-admin" and held["ran_after_approval"]
        assert steps["recorded_approval"]["ok"] and steps["recorded_drop_ran"]["ok"]
        # Every command is echoed as a person would type it, with the profile it used.
        assert summary["commands"] and all(c.startswith(("hoop --profile dev ", "hoop --profile dev-approver ")) for c in summary["commands"])
        assert f"hoop --profile dev-approver approvals approve {held['request_id']} --reason 'hoop dev --demo'" in summary["commands"]
    else:
        assert [s["name"] for s in summary["steps"]][:2] == ["login", "echo"]
    # Nothing secret anywhere: not in the output, not in any file the run left behind, and
    # the person's own hoop config was not touched (the demo has a config dir of its own).
    assert not JWT_RE.search(proc.stdout + proc.stderr)
    for path in workdir.rglob("*"):
        if path.is_file():
            assert not JWT_RE.search(path.read_bytes().decode("latin-1")), path
    assert not (home / ".config" / "hoop" / "config.toml").exists()
    config = (workdir / "config" / "config.toml").read_text()
    assert "[profiles.dev]" in config and summary["stack"]["gateway"] in config


def _read_json_line(proc: subprocess.Popen, timeout: float) -> dict | None:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if sel.select(timeout=0.2):
            line = proc.stdout.readline()
            if line.startswith("{"):
                return json.loads(line)
    return None


def test_dev_serves_until_ctrl_c_then_cleans_up(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = subprocess_env(home)
    proc = subprocess.Popen(HOOP + ["dev", "--json", "--auto-approve", "--as", "dev-user"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        ready = _read_json_line(proc, 45)
        assert ready and ready["event"] == "ready", proc.stderr.read() if proc.poll() is not None else "no ready event"
        assert ready["gateway"].startswith("https://127.0.0.1:") and ready["issuer"].startswith("http://127.0.0.1:")
        assert any(c.startswith("hoop --profile dev login") for c in ready["commands"])
        assert any(c.startswith("hoop --profile dev-approver approvals approve ID") for c in ready["commands"])
        config_file = home / ".config" / "hoop" / "config.toml"
        config = config_file.read_text()
        assert ready["issuer"] in config and ready["ca_file"] in config
        assert "[profiles.dev-approver]" in config and 'client_id = "hoop-dev-approver"' in config
        # A second `hoop dev` does not take the profiles over: it stops before starting anything.
        second = subprocess.run(HOOP + ["dev", "--json"], env=env, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert second.returncode == 8 and "another `hoop dev`" in second.stderr, second.stderr
        assert config_file.read_text() == config
        provider = Provider(ready["issuer"], "hoop-cli")
        token = provider.token_set(provider.poll_device_flow(provider.start_device_flow(SCOPES))).id_token
        # Without --profile, the error about the (empty) default profile points at `hoop dev`'s.
        bare = subprocess.run(HOOP + ["connections"], env={**env, "HOOP_TOKEN": token}, capture_output=True, text=True, timeout=30)
        assert bare.returncode == 8 and "`hoop --profile dev …`" in bare.stderr and "export HOOP_PROFILE=dev" in bare.stderr, bare.stderr
        sql = "select count(*) from customers" if ready["protocol"] == "postgres" else None
        if sql:
            done = subprocess.run(HOOP + ["--profile", "dev", "exec", ready["connection"], "-c", sql],
                                  env={**env, "HOOP_TOKEN": token}, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0 and "3" in done.stdout, done.stderr
            # Held: the approver's command names the approver's profile, and what to do next is
            # the last line printed.
            held = subprocess.run(HOOP + ["--profile", "dev", "exec", ready["connection"], "-c", "drop table customers"],
                                  env={**env, "HOOP_TOKEN": token}, capture_output=True, text=True, timeout=60)
            assert held.returncode == 5, held.stderr
            request = re.search(r"hoop request (\w+)", held.stderr).group(1)
            assert f"An approver runs: hoop --profile dev-approver approvals approve {request}" in held.stderr
            assert held.stderr.rstrip().splitlines()[-1].startswith("hoop: hint: once it is approved, run the same statement again with hoop --profile dev exec")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=40)
        assert proc.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1]) == {"event": "stopped"}
        assert not Path(ready["workdir"]).exists()
        if sql:  # the trail was flushed before the store went away: the database is stopped too
            import socket

            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", int(ready["target"].rsplit(":", 1)[1])), timeout=2).close()
    finally:
        if proc.poll() is None:  # stop it the clean way first, so its database is stopped too
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_echo_target_demo_in_process(monkeypatch, capsys, tmp_path):
    """The fallback when no PostgreSQL is installed: a TCP echo server behind the gateway."""
    from hoopcli.dev.demo import run_demo
    from hoopcli.dev.stack import start_stack

    monkeypatch.setenv("HOME", str(tmp_path))
    with start_stack(str(tmp_path / "dev"), "dev-agent", own_config=True, target="tcp") as stack:
        assert stack.connection == "demo-echo" and stack.postgres is None
        assert stack.describe()["no_postgres_because"] == "a TCP target was asked for"
        code = run_demo(stack, json_out=True)
    summary = _summary(capsys.readouterr().out)
    assert code == 0 and summary["ok"], summary["steps"]
    assert summary["identity"]["sub"] == "dev-agent"
    assert [s["name"] for s in summary["steps"]] == ["login", "echo", "audit_list", "audit_verify", "recorded_session"]
