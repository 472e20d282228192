"""`hoop agent` on a headless machine: no keyring (keyring's fail backend), no D-Bus, a temp HOME.

Everything that matters runs as real processes: the detached agent, `hoop login` against the
real OpenID provider, `hoop whoami`, and a client of another uid (setpriv, needs root).
The protocol and the refresh logic also get in-process tests with an injected provider.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hoopcli.auth.agent import AgentServer, AgentStore, SessionBook, _refresh_due, _Session, parse_lifetime
from hoopcli.auth.tokens import TokenSet
from hoopcli.errors import HoopError, NotLoggedIn
from tests.support.cli import HOOP, run_subprocess, subprocess_env
from tests.support.oidc import approve_in_background

NOBODY = 65534
SOCK_LINE = re.compile(r"^HOOP_AGENT_SOCK=(\S+); export HOOP_AGENT_SOCK;$", re.M)
PID_LINE = re.compile(r"^echo Agent pid (\d+);$", re.M)


@dataclass
class Headless:
    home: Path
    runtime: Path
    tmp: Path
    env: dict
    started: float
    agents: list = field(default_factory=list)


@dataclass
class Agent:
    sock: str
    pid: int

    @property
    def dir(self) -> Path:
        return Path(self.sock).parent

    def store(self) -> AgentStore:
        return AgentStore(self.sock)

    def status(self) -> dict:
        return self.store().status()


@pytest.fixture
def headless(tmp_path):
    """No keyring, no D-Bus, HOME/TMPDIR/XDG_RUNTIME_DIR of our own; agents killed afterwards."""
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    runtime = Path(tempfile.mkdtemp(prefix="hoop-rt-"))  # short: Unix socket paths are limited
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = subprocess_env(home, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring", XDG_RUNTIME_DIR=str(runtime), TMPDIR=str(tmp))
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    box = Headless(home, runtime, tmp, env, time.time())
    yield box
    for agent in box.agents:
        if not _gone(agent.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent.pid, signal.SIGKILL)
    shutil.rmtree(runtime, ignore_errors=True)


def start_agent(box: Headless, *args: str) -> Agent:
    result = run_subprocess(["agent", *args], box.env, timeout=30)
    assert result.code == 0, result.err
    sock, pid = SOCK_LINE.search(result.out), PID_LINE.search(result.out)
    assert sock and pid, result.out
    agent = Agent(sock.group(1), int(pid.group(1)))
    box.agents.append(agent)
    return agent


def with_agent(box: Headless, agent: Agent, **extra: str) -> dict:
    return {**box.env, "HOOP_AGENT_SOCK": agent.sock, **extra}


def _gone(pid: int) -> bool:
    """Exited (a zombie counts: the agent is reparented to a PID 1 that may not reap it)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return text.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout}s")
        time.sleep(0.05)


def files_containing(roots, needles: list[str], newer_than: float = 0.0) -> list[str]:
    hits = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                    if not stat.S_ISREG(st.st_mode) or st.st_mtime < newer_than or st.st_size > 50_000_000:
                        continue
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                hits += [f"{path}: {n[:12]}…" for n in needles if n.encode() in data]
    return hits


def put_tokens(agent: Agent, provider, body: dict, profile: str = "default") -> TokenSet:
    """Store a token response in the agent as `hoop login` would (issuer and client_id for refresh)."""
    tokens = TokenSet(id_token=body["id_token"], access_token=body.get("access_token", ""),
                      refresh_token=body.get("refresh_token", ""), issuer=provider.issuer,
                      expires_at=float(provider.decode(body["id_token"])["exp"]))
    response = agent.store().client.request({"op": "put", "profile": profile, "tokens": json.loads(tokens.to_json()),
                                             "issuer": provider.issuer, "client_id": provider.client_id, "ca_file": ""})
    assert response == {"ok": True}
    return tokens


# ---- end to end: real processes -------------------------------------------------------------


def test_login_and_whoami_through_agent_leave_no_token_on_disk(headless, oidc_provider):
    agent = start_agent(headless)
    assert agent.dir.parent == headless.runtime / "hoop"
    assert stat.S_IMODE(agent.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(os.stat(agent.sock).st_mode) == 0o600
    assert sorted(os.listdir(agent.dir)) == ["agent.sock"]
    env = with_agent(headless, agent, HOOP_ISSUER=oidc_provider.issuer)

    approver = approve_in_background(oidc_provider, login="alice")
    login = run_subprocess(["login", "--json"], env)
    approver.join()
    assert login.code == 0, login.err
    assert login.json_lines()[-1]["session_store"] == "agent"
    who = run_subprocess(["whoami", "--json"], env)
    assert who.code == 0, who.err
    data = json.loads(who.out)
    assert (data["sub"], data["session_store"]) == ("alice", "agent")

    held = agent.store().load("default", refresh=False)  # the test is the same uid: it may ask
    secrets = [held.id_token, held.refresh_token, held.access_token]
    assert all(secrets)
    assert not any(s in text for s in secrets for text in (login.out, login.err, who.out, who.err))
    assert sorted(os.listdir(agent.dir)) == ["agent.sock"]
    roots = [headless.home, headless.runtime, headless.tmp]
    assert files_containing(roots, secrets) == []
    assert files_containing([tempfile.gettempdir()], secrets, newer_than=headless.started - 1) == []
    assert agent.status()["profiles"][0]["profile"] == "default"

    stop = run_subprocess(["agent", "--stop"], env)
    assert stop.code == 0, stop.err
    assert "unset HOOP_AGENT_SOCK;" in stop.out and f"Agent pid {agent.pid} killed" in stop.out
    assert not agent.dir.exists()
    wait_until(lambda: _gone(agent.pid), 5, "the agent did not exit")
    gone = run_subprocess(["whoami"], env)
    assert gone.code == 3 and "is not running" in gone.err


def test_refresh_happens_once_in_the_agent_for_concurrent_clients(headless, oidc_provider_factory):
    provider = oidc_provider_factory(id_token_ttl=30)  # every token is within the 60 s margin
    agent = start_agent(headless)
    env = with_agent(headless, agent, HOOP_ISSUER=provider.issuer)
    approver = approve_in_background(provider, login="alice")
    login = run_subprocess(["login", "--json"], env)
    approver.join()
    assert login.code == 0, login.err
    before = agent.store().load("default", refresh=False)
    time.sleep(1.1)  # iat has one-second resolution: make the refreshed id_token differ

    procs = [subprocess.Popen(HOOP + ["whoami", "--json"], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [(p.wait(timeout=30), p.stdout.read(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close(), p.stderr.close()
    for code, out, err in results:
        assert code == 0, err
        assert json.loads(out)["sub"] == "alice"
        assert before.refresh_token not in out + err and before.id_token not in out + err

    assert agent.status()["refreshes"] == 1
    after = agent.store().load("default", refresh=False)
    assert after.id_token != before.id_token and after.expires_at > before.expires_at
    assert after.refresh_token != before.refresh_token  # rotated
    old, new = provider.refresh_token_state(before.refresh_token), provider.refresh_token_state(after.refresh_token)
    assert old["consumed"] and old["grant"]  # used once; had it been presented twice, the grant would be gone
    assert new["active"]
    assert run_subprocess(["whoami"], env).code == 0  # a fresh set is not refreshed again at once
    assert agent.status()["refreshes"] == 1


def test_failed_refresh_in_the_agent_says_to_log_in(headless, oidc_provider_factory):
    provider = oidc_provider_factory(id_token_ttl=30)
    agent = start_agent(headless)
    tokens = put_tokens(agent, provider, provider.device_login("bob"))
    provider.revoke(tokens.refresh_token)
    who = run_subprocess(["whoami"], with_agent(headless, agent))
    assert who.code == 3
    assert "could not refresh" in who.err and "hoop login" in who.err
    assert "Traceback" not in who.err
    assert agent.status()["refreshes"] == 0


def test_killed_agent_ends_the_session(headless, oidc_provider):
    agent = start_agent(headless)
    put_tokens(agent, oidc_provider, oidc_provider.device_login("alice"))
    env = with_agent(headless, agent, HOOP_ISSUER=oidc_provider.issuer)
    assert json.loads(run_subprocess(["whoami", "--json"], env).out)["session_store"] == "agent"

    os.kill(agent.pid, signal.SIGKILL)
    wait_until(lambda: _gone(agent.pid), 5, "SIGKILL did not end the agent")
    who = run_subprocess(["whoami", "--json"], env)
    assert who.code == 3
    assert f"the hoop agent at {agent.sock} is not running" in who.err
    assert "eval" in who.err and "hoop agent" in who.err and "hoop login" in who.err
    assert json.loads(who.out)["kind"] == "NotLoggedIn"
    assert "Traceback" not in who.err
    before = oidc_provider.latest_device_seq()
    assert run_subprocess(["login"], env).code == 3
    assert oidc_provider.latest_device_seq() == before  # failed before asking the person for anything
    stop = run_subprocess(["agent", "--stop"], env)
    assert stop.code == 3 and "is not running" in stop.err


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to run a client as nobody")
def test_client_of_another_uid_is_refused(headless):
    proc = subprocess.Popen(HOOP + ["agent", "--foreground"], env=headless.env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sock = SOCK_LINE.search(proc.stdout.readline()).group(1)
        agent = Agent(sock, proc.pid)
        secret = "eyJ.not-a-real-token-but-a-secret.sig"
        assert agent.store().client.request({"op": "put", "profile": "default", "tokens": {"id_token": secret, "expires_at": time.time() + 600}}) == {"ok": True}
        # Open the file permissions on purpose: only the SO_PEERCRED check stands in the way.
        for d in (headless.runtime, headless.runtime / "hoop", agent.dir):
            os.chmod(d, 0o711)
        os.chmod(sock, 0o666)
        client = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1]); print('connected', flush=True)\n"
            "try:\n    s.sendall(b'{\"op\": \"get\", \"profile\": \"default\"}\\n'); data = s.recv(65536)\n"
            "except OSError as exc:\n    data = b''\n"
            "print('answer', repr(data))\n"
        )
        nobody = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "/usr/bin/python3", "-c", client, sock],
                                capture_output=True, text=True, timeout=15, env={"PATH": "/usr/bin:/bin"})
        assert "connected" in nobody.stdout, nobody.stderr  # the socket was reachable ...
        assert "answer b''" in nobody.stdout, nobody.stdout  # ... and the agent hung up without a word
        assert secret not in nobody.stdout
        status = agent.status()
        assert status["refused"] == 1 and status["uid"] == os.getuid()
        assert agent.store().load("default").id_token == secret  # its own user is still served
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        err = proc.stderr.read()
        assert f"refused a connection from uid {NOBODY}" in err
        assert secret not in err
        assert not agent.dir.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close(), proc.stderr.close()


def test_lifetime_ends_the_agent_by_itself(headless):
    agent = start_agent(headless, "--lifetime", "2s")
    assert 0 < agent.status()["expires_in"] <= 2
    wait_until(lambda: not agent.dir.exists(), 6, "the agent outlived --lifetime 2s")
    wait_until(lambda: _gone(agent.pid), 3, "the agent process outlived its socket")
    bad = run_subprocess(["agent", "--lifetime", "soon"], headless.env)
    assert bad.code == 2 and "--lifetime" in bad.err


def test_json_start_and_stop_without_an_agent(headless):
    result = run_subprocess(["agent", "--json", "--lifetime", "1m"], headless.env)
    assert result.code == 0, result.err
    started = json.loads(result.out)
    assert started["event"] == "agent_started" and started["lifetime"] == 60
    agent = Agent(started["socket"], started["pid"])
    headless.agents.append(agent)
    stop = run_subprocess(["agent", "--stop", "--json"], with_agent(headless, agent))
    assert json.loads(stop.out) == {"event": "agent_stopped", "pid": agent.pid, "socket": agent.sock}
    assert not agent.dir.exists()
    unset = run_subprocess(["agent", "--stop"], headless.env)
    assert unset.code == 2 and "HOOP_AGENT_SOCK is not set" in unset.err


# ---- in-process: the protocol and the refresh rules -----------------------------------------


class FakeProvider:
    """Counts refreshes; each takes `delay` seconds and returns a set valid for `ttl` seconds."""

    def __init__(self, ttl: float = 3600, delay: float = 0.0, fail: bool = False):
        self.ttl, self.delay, self.fail = ttl, delay, fail
        self.calls = 0
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def refresh(self, tokens: TokenSet) -> TokenSet:
        with self._lock:
            self.calls += 1
            self.seen.append(tokens.refresh_token)
            n = self.calls
        time.sleep(self.delay)
        if self.fail:
            from hoopcli.errors import AuthError

            raise AuthError("the session could not be refreshed (invalid_grant)", "Run `hoop login`.")
        return TokenSet(id_token=f"id-{n}", refresh_token=f"rt-{n}", expires_at=time.time() + self.ttl, issuer=tokens.issuer)


@pytest.fixture
def served():
    """An AgentServer on a thread in this process; yields (server, store, provider)."""
    provider = FakeProvider()
    server = AgentServer(SessionBook(lambda *key: provider), lifetime=60, socket_dir=Path(tempfile.mkdtemp(prefix="hoop-t-")))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    yield server, AgentStore(str(server.path)), provider
    server.stop()
    thread.join(5)
    server.close()
    assert not server.dir.exists()


def _near_expiry(refresh_token: str = "rt-0") -> TokenSet:
    return TokenSet(id_token="id-0", refresh_token=refresh_token, expires_at=time.time() + 20, issuer="https://idp.example")


def test_protocol_round_trip_and_bad_requests(served):
    server, store, _ = served
    request = store.client.request
    assert store.load("default") is None
    assert request({"op": "put", "profile": "p", "tokens": json.loads(TokenSet("id-x", expires_at=time.time() + 600).to_json()),
                    "issuer": "https://idp.example", "client_id": "hoop-cli"}) == {"ok": True}
    loaded = store.load("p")
    assert (loaded.id_token, loaded.source) == ("id-x", "agent")
    assert store.delete("p") is True and store.delete("p") is False
    assert request({"op": "fly"})["error"] == "bad_request"
    assert request({"op": "get"})["error"] == "bad_request"
    assert request({"op": "put", "profile": "p", "tokens": {}})["error"] == "bad_request"
    assert server.handle(b"not json")["error"] == "bad_request"
    assert server.handle(b"[1, 2]")["error"] == "bad_request"
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(5)
        raw.connect(str(server.path))
        raw.sendall(b"x" * (70 * 1024) + b"\n")
        assert json.loads(raw.makefile("rb").readline())["error"] == "too_large"
    with socket.socket(socket.AF_UNIX) as raw:  # several requests on one connection
        raw.settimeout(5)
        raw.connect(str(server.path))
        raw.sendall(b'{"op": "status"}\n{"op": "get", "profile": "p"}\n')
        reader = raw.makefile("rb")
        assert json.loads(reader.readline())["pid"] == os.getpid()
        assert json.loads(reader.readline()) == {"ok": True, "tokens": None}


def test_concurrent_gets_share_one_refresh(served):
    server, store, provider = served
    provider.delay = 0.3
    server.book.put("default", _near_expiry(), "https://idp.example", "hoop-cli")
    barrier = threading.Barrier(10)
    got: list[str] = []

    def client():
        barrier.wait()
        got.append(AgentStore(str(server.path)).load("default").id_token)

    threads = [threading.Thread(target=client) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert provider.calls == 1 and provider.seen == ["rt-0"]
    assert got == ["id-1"] * 10
    assert store.status()["refreshes"] == 1


def test_refresh_failure_is_not_logged_in_and_refresh_false_skips_it(served):
    server, store, provider = served
    provider.fail = True
    server.book.put("default", _near_expiry(), "https://idp.example", "hoop-cli")
    assert store.load("default", refresh=False).id_token == "id-0"
    with pytest.raises(NotLoggedIn) as caught:
        store.load("default")
    assert "hoop login" in caught.value.hint and "rt-0" not in caught.value.message


def test_short_lived_sets_are_not_refreshed_on_every_get():
    now = time.time()
    fresh = _Session(TokenSet("id", refresh_token="rt", expires_at=now + 30), "https://idp.example", "hoop-cli", "", refreshed_at=now)
    assert fresh.tokens.needs_refresh(now) and not _refresh_due(fresh, now)  # within the margin, yet just refreshed
    assert _refresh_due(fresh, now + 16)  # past half its lifetime: refresh
    assert _refresh_due(_Session(fresh.tokens, "https://idp.example", "hoop-cli", ""), now)  # never refreshed here: due
    assert not _refresh_due(_Session(TokenSet("id", expires_at=now + 3600), "i", "c", ""), now)


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("30m", 1800), ("8h", 28800), ("1d", 86400), ("45", 45)])
def test_parse_lifetime(text, seconds):
    assert parse_lifetime(text) == seconds


@pytest.mark.parametrize("text", ["0", "-5m", "8x", "", "h"])
def test_parse_lifetime_refuses_nonsense(text):
    with pytest.raises(HoopError):
        parse_lifetime(text)
