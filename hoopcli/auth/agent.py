"""`hoop agent`: an ssh-agent-like holder of sessions, in memory only, for machines without a keyring.

    eval "$(hoop agent --lifetime 8h)"   # prints HOOP_AGENT_SOCK=...; export ...; echo Agent pid N;
    hoop login                           # default_store() sees HOOP_AGENT_SOCK: tokens go to the agent
    eval "$(hoop agent --stop)"          # the agent exits, forgets everything, removes its socket

The agent listens on a Unix socket in a private directory ($XDG_RUNTIME_DIR/hoop/agent-XXXX/ or a
fresh 0700 temp dir), mode 0600, and checks every connection's peer uid with SO_PEERCRED: only
the uid that started it is served. It never writes a token anywhere, never logs one, and is
not dumpable (no core files, no ptrace by other processes of the same user).

Protocol: one JSON object per line in, one JSON object per line out, any number per connection.

    {"op": "get", "profile": P, "refresh": true}  -> {"ok": true, "tokens": {...} | null}
    {"op": "put", "profile": P, "tokens": {...}, "issuer": I, "client_id": C, "ca_file": F}
                                                  -> {"ok": true}
    {"op": "delete", "profile": P}                -> {"ok": true, "deleted": bool}
    {"op": "status"}                              -> {"ok": true, "pid", "uid", "socket", "expires_in",
                                                      "refreshes", "refused", "profiles": [...]}
    {"op": "stop"}                                -> {"ok": true, "stopping": true, "pid"}
    failures                                      -> {"ok": false, "error": CODE, "message": TEXT}

Refresh happens here, on behalf of every client: a `get` that finds the session within the
refresh margin refreshes it once (a per-profile lock; callers that waited get the new set), so a
rotating refresh token is presented exactly once. Clients must not refresh again
(`AgentStore.refreshes_itself`, honoured by `session.load_session`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import selectors
import shlex
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hoopcli.auth.tokens import TokenSet
from hoopcli.errors import HoopError, KeyringUnavailable, NotLoggedIn, Unreachable, UsageError

log = logging.getLogger("hoop.agent")

SOCKET_NAME = "agent.sock"
MAX_LINE = 64 * 1024  # a token set is a few KB; anything much bigger is not a request
CLIENT_IDLE_SECONDS = 30  # the agent drops a connection that says nothing for this long
CLIENT_TIMEOUT = 60  # a client waits this long for an answer (a refresh may take the IdP's time)
READY_TIMEOUT = 15  # `hoop agent` waits this long for the detached agent's socket
STOP_WAIT_SECONDS = 5
SOCKET_CHECK_SECONDS = 5  # how often the agent checks that its socket is still there
MAX_UNIX_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_LIFETIME = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

START_HINT = 'Start one with `eval "$(hoop agent)"` and run `hoop login`, or unset HOOP_AGENT_SOCK to use the OS keyring.'


def parse_lifetime(text: str) -> int:
    """'90s', '30m', '8h', '1d' or plain seconds -> seconds (> 0)."""
    match = _LIFETIME.match(text or "")
    seconds = int(match.group(1)) * _UNITS[match.group(2)] if match else 0
    if seconds <= 0:
        raise UsageError(f"invalid --lifetime '{text}'", "Use a positive duration such as 90s, 30m, 8h or 1d.")
    return seconds


def _clock() -> float:
    """Seconds that keep counting while the machine sleeps (CLOCK_BOOTTIME on Linux)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


# ---- the agent's memory ---------------------------------------------------------------------


@dataclass
class _Session:
    tokens: TokenSet
    issuer: str
    client_id: str
    ca_file: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    refreshed_at: float | None = None  # wall time of the agent's last refresh of this session
    refreshes: int = 0


class SessionBook:
    """Profiles -> token sets, in this process's memory; refreshes them for every client.

    `provider_for(issuer, client_id, ca_file)` returns an object with `.refresh(TokenSet)`
    (an `oidc.Provider`); tests inject their own.
    """

    def __init__(self, provider_for: Callable[[str, str, str], object] | None = None):
        self._sessions: dict[str, _Session] = {}
        self._mutex = threading.Lock()
        self._providers: dict[tuple[str, str, str], object] = {}
        self._provider_for = provider_for or _oidc_provider
        self.refreshes = 0

    def put(self, profile: str, tokens: TokenSet, issuer: str, client_id: str, ca_file: str = "") -> None:
        tokens.source = "agent"
        with self._mutex:
            # A new Session (and lock): a refresh still running for the old set is discarded.
            self._sessions[profile] = _Session(tokens, issuer or tokens.issuer, client_id, ca_file)

    def delete(self, profile: str) -> bool:
        with self._mutex:
            return self._sessions.pop(profile, None) is not None

    def clear(self) -> None:
        with self._mutex:
            self._sessions.clear()
            self._providers.clear()

    def get(self, profile: str, refresh: bool = True) -> TokenSet | None:
        """The session, refreshed first when due. Raises HoopError when the refresh fails."""
        with self._mutex:
            session = self._sessions.get(profile)
        if session is None or not refresh or not _refresh_due(session):
            return session.tokens if session else None
        with session.lock:
            with self._mutex:
                current = self._sessions.get(profile)
            if current is not session:  # logged in again or deleted while we waited
                return current.tokens if current else None
            if not _refresh_due(session):  # another client's get refreshed it while we waited
                return session.tokens
            fresh = self._provider(session).refresh(session.tokens)
            fresh.source = "agent"
            with self._mutex:
                session.tokens = fresh
                session.refreshed_at = time.time()
                session.refreshes += 1
                self.refreshes += 1
            return fresh

    def status(self) -> dict:
        with self._mutex:
            profiles = [
                {
                    "profile": name,
                    "issuer": s.tokens.issuer or s.issuer,
                    "expires_at": s.tokens.expires_at,
                    "refreshable": bool(s.tokens.refresh_token),
                    "refreshes": s.refreshes,
                }
                for name, s in sorted(self._sessions.items())
            ]
            return {"profiles": profiles, "refreshes": self.refreshes}

    def _provider(self, session: _Session):
        key = (session.issuer, session.client_id, session.ca_file)
        with self._mutex:
            provider = self._providers.get(key)
        if provider is None:
            if not session.issuer:
                raise NotLoggedIn("the agent does not know this session's issuer, so it cannot refresh it")
            provider = self._provider_for(*key)
            with self._mutex:
                self._providers[key] = provider
        return provider


def _refresh_due(session: _Session, now: float | None = None) -> bool:
    """Within the refresh margin — unless the agent refreshed this set itself less than half its
    lifetime ago. The second rule matters when the IdP's token lifetime is shorter than the
    margin: without it every single `get` would refresh (and rotate the refresh token)."""
    now = time.time() if now is None else now
    tokens = session.tokens
    if not tokens.needs_refresh(now):
        return False
    if session.refreshed_at is not None:
        half_life = (tokens.expires_at - session.refreshed_at) / 2
        if now < session.refreshed_at + half_life:
            return False
    return True


def _oidc_provider(issuer: str, client_id: str, ca_file: str):
    from hoopcli.auth.oidc import Provider

    return Provider(issuer, client_id, ca_file)


# ---- the server -----------------------------------------------------------------------------


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return _PEERCRED.unpack(raw)


def make_socket_dir() -> Path:
    """A fresh private directory: under $XDG_RUNTIME_DIR/hoop when that is usable, else a temp dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and _private_dir(Path(runtime)):
        base = Path(runtime) / "hoop"
        try:
            base.mkdir(mode=0o700, exist_ok=True)
        except OSError:
            base = None
        if base is not None and _private_dir(base):
            path = Path(tempfile.mkdtemp(prefix="agent-", dir=base))
            if len(os.fsencode(path / SOCKET_NAME)) <= MAX_UNIX_PATH:
                return path
            os.rmdir(path)
    path = Path(tempfile.mkdtemp(prefix="hoop-agent-"))
    if len(os.fsencode(path / SOCKET_NAME)) > MAX_UNIX_PATH:
        os.rmdir(path)
        path = Path(tempfile.mkdtemp(prefix="hoop-agent-", dir="/tmp"))
    return path


def _private_dir(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def _not_dumpable() -> None:
    """Like ssh-agent: no core dumps, and no ptrace or /proc/PID/mem reads by the same user."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):  # pragma: no cover - best effort
        log.debug("could not make the agent non-dumpable")


class AgentServer:
    """One listening socket, one thread per client connection, a deadline."""

    def __init__(self, book: SessionBook, lifetime: float, socket_dir: Path | None = None):
        if not hasattr(socket, "SO_PEERCRED"):
            raise UsageError("hoop agent needs SO_PEERCRED (Linux) to check who connects", "Use the OS keyring or HOOP_TOKEN on this system.")
        self.book = book
        self.uid = os.getuid()
        self.pid = os.getpid()
        self.lifetime = lifetime
        self.deadline = _clock() + lifetime
        self.started_at = time.time()
        self.refused = 0
        self.dir = socket_dir or make_socket_dir()
        self.path = self.dir / SOCKET_NAME
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is 0600 from the moment it exists
        try:
            self.listener.bind(str(self.path))
        except OSError as exc:
            self.listener.close()
            os.rmdir(self.dir)
            raise HoopError(f"cannot listen on {self.path}: {exc.strerror or exc}", "Set XDG_RUNTIME_DIR or TMPDIR to a writable directory.") from None
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._inode = os.lstat(self.path).st_ino
        self.listener.listen(64)
        self.listener.setblocking(False)

    @property
    def expires_in(self) -> int:
        return max(0, int(self.deadline - _clock()))

    def stop(self) -> None:
        """Safe from any thread and from signal handlers."""
        self._stopping.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def serve(self) -> str:
        """Serve until stopped, the lifetime ends or the socket disappears; returns why."""
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                remaining = self.deadline - _clock()
                if remaining <= 0:
                    return "lifetime"
                if not self._socket_is_ours():
                    return "socket removed"
                for key, _ in sel.select(timeout=min(remaining, SOCKET_CHECK_SECONDS)):
                    if key.fileobj is self.listener:
                        self._accept()
            return "stopped"
        finally:
            sel.close()

    def close(self) -> None:
        """Forget every session, remove the socket and its directory."""
        self.book.clear()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()
        if self._socket_is_ours():
            try:
                os.unlink(self.path)
            except OSError:
                pass
        try:
            os.rmdir(self.dir)
        except OSError as exc:
            log.warning("could not remove %s: %s", self.dir, exc.strerror)

    def _socket_is_ours(self) -> bool:
        try:
            return os.lstat(self.path).st_ino == self._inode
        except OSError:
            return False

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        try:
            pid, uid, _gid = peer_credentials(conn)
        except OSError:
            pid, uid = 0, -1
        if uid != self.uid:
            self.refused += 1
            log.warning("hoop agent: refused a connection from uid %s (pid %s): only uid %s is served", uid, pid, self.uid)
            conn.close()
            return
        conn.setblocking(True)
        threading.Thread(target=self._serve_client, args=(conn,), name=f"agent-client-{pid}", daemon=True).start()

    def _serve_client(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(CLIENT_IDLE_SECONDS)
            try:
                reader = conn.makefile("rb")
                while not self._stopping.is_set():
                    line = reader.readline(MAX_LINE + 1)
                    if not line:
                        return
                    if len(line) > MAX_LINE:
                        conn.sendall(_encode(_error("too_large", f"a request line may be at most {MAX_LINE} bytes")))
                        return
                    response = self.handle(line)
                    conn.sendall(_encode(response))
                    if response.get("stopping"):
                        self.stop()
                        return
            except OSError:  # timeouts, resets: the client is gone
                return

    def handle(self, line: bytes) -> dict:
        """One request line -> one response object. Never includes a token in an error."""
        try:
            request = json.loads(line)
        except ValueError:
            return _error("bad_request", "the request is not JSON")
        if not isinstance(request, dict):
            return _error("bad_request", "the request is not a JSON object")
        op = request.get("op")
        if op == "status":
            return {"ok": True, "pid": self.pid, "uid": self.uid, "socket": str(self.path), "expires_in": self.expires_in,
                    "refused": self.refused, **self.book.status()}
        if op == "stop":
            return {"ok": True, "stopping": True, "pid": self.pid}
        if op not in ("get", "put", "delete"):
            return _error("bad_request", f"unknown op {op!r}: get, put, delete, status, stop")
        profile = request.get("profile")
        if not isinstance(profile, str) or not profile:
            return _error("bad_request", "a profile name is required")
        if op == "delete":
            return {"ok": True, "deleted": self.book.delete(profile)}
        if op == "put":
            return self._put(profile, request)
        try:
            tokens = self.book.get(profile, refresh=request.get("refresh", True) is not False)
        except HoopError as exc:
            log.info("refresh of profile %s failed: %s", profile, exc.message)
            return _error("refresh_failed", exc.message)
        except Exception as exc:  # noqa: BLE001 - one bad refresh must not end the agent
            log.warning("refresh of profile %s failed: %s", profile, type(exc).__name__)
            return _error("refresh_failed", f"unexpected {type(exc).__name__}")
        return {"ok": True, "tokens": _token_dict(tokens) if tokens else None}

    def _put(self, profile: str, request: dict) -> dict:
        data = request.get("tokens")
        if not isinstance(data, dict) or not isinstance(data.get("id_token"), str) or not data["id_token"]:
            return _error("bad_request", "put needs tokens with an id_token")
        settings = [request.get(k, "") for k in ("issuer", "client_id", "ca_file")]
        if not all(isinstance(v, str) for v in settings):
            return _error("bad_request", "issuer, client_id and ca_file must be strings")
        try:
            tokens = TokenSet.from_json(json.dumps(data), source="agent")
            tokens.expires_at = float(tokens.expires_at)
        except (TypeError, ValueError):
            return _error("bad_request", "malformed tokens")
        self.book.put(profile, tokens, *settings)
        return {"ok": True}


def _error(code: str, message: str) -> dict:
    from hoopcli.logs import redact

    return {"ok": False, "error": code, "message": redact(message)}


def _encode(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _token_dict(tokens: TokenSet) -> dict:
    return json.loads(tokens.to_json())


# ---- the client: a TokenStore ---------------------------------------------------------------


class AgentClient:
    """Requests to the agent at one socket path; every failure is a HoopError with a hint."""

    def __init__(self, path: str, timeout: float = CLIENT_TIMEOUT):
        self.path = path
        self.timeout = timeout

    def request(self, payload: dict) -> dict:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        with sock:
            try:
                sock.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
                raise NotLoggedIn(f"the hoop agent at {self.path} is not running", START_HINT) from None
            except PermissionError:
                raise KeyringUnavailable(
                    f"the hoop agent socket {self.path} belongs to another user",
                    "Point HOOP_AGENT_SOCK at your own agent: " + START_HINT,
                ) from None
            except OSError as exc:
                raise NotLoggedIn(f"cannot reach the hoop agent at {self.path} ({exc.strerror or exc})", START_HINT) from None
            try:
                sock.sendall(_encode(payload))
                line = sock.makefile("rb").readline(MAX_LINE * 2)
            except socket.timeout:
                raise Unreachable(f"the hoop agent at {self.path} did not answer within {self.timeout:.0f} s",
                                  "Try again; restart it with `hoop agent --stop` and `eval \"$(hoop agent)\"` if it keeps hanging.") from None
            except OSError:
                line = b""
        if not line:
            raise KeyringUnavailable(
                f"the hoop agent at {self.path} closed the connection without answering",
                "It only serves the user who started it: point HOOP_AGENT_SOCK at your own agent.",
            )
        try:
            response = json.loads(line)
        except ValueError:
            raise KeyringUnavailable(f"{self.path} did not answer like a hoop agent", START_HINT) from None
        if not isinstance(response, dict):
            raise KeyringUnavailable(f"{self.path} did not answer like a hoop agent", START_HINT)
        return response


class AgentStore:
    """TokenStore backed by a running `hoop agent` (HOOP_AGENT_SOCK)."""

    name = "agent"
    # The agent refreshes sessions itself, once for all its clients; load_session must not.
    refreshes_itself = True

    def __init__(self, path: str, client: AgentClient | None = None):
        self.client = client or AgentClient(path)
        self.path = path
        self._call({"op": "status"})  # fail before a login asks the person for anything

    def load(self, profile: str, refresh: bool = True) -> TokenSet | None:
        response = self._call({"op": "get", "profile": profile, "refresh": refresh})
        data = response.get("tokens")
        return TokenSet.from_json(json.dumps(data), source=self.name) if data else None

    def save(self, profile: str, tokens: TokenSet) -> None:
        from hoopcli.config import load_profile

        settings = load_profile(profile)  # what the agent needs to refresh; never a secret
        self._call({
            "op": "put",
            "profile": profile,
            "tokens": _token_dict(tokens),
            "issuer": tokens.issuer or settings.issuer,
            "client_id": settings.client_id,
            "ca_file": settings.ca_file,
        })

    def delete(self, profile: str) -> bool:
        return bool(self._call({"op": "delete", "profile": profile}).get("deleted"))

    def status(self) -> dict:
        return self._call({"op": "status"})

    def _call(self, payload: dict) -> dict:
        response = self.client.request(payload)
        if response.get("ok"):
            return response
        message = response.get("message") or response.get("error") or "unknown error"
        if response.get("error") == "refresh_failed":
            raise NotLoggedIn(f"the session has expired and the hoop agent could not refresh it: {message}",
                              "Run `hoop login` (the agent keeps the new session).")
        raise KeyringUnavailable(f"the hoop agent at {self.path} refused the request: {message}", START_HINT)


# ---- the command ----------------------------------------------------------------------------


def command(*, lifetime: str, stop: bool, foreground: bool, detached: bool, json_out: bool) -> None:
    """`hoop agent`: start (detached unless --foreground), or --stop the one at HOOP_AGENT_SOCK."""
    if stop:
        _render(stop_agent(), json_out)
        return
    seconds = parse_lifetime(lifetime)
    if foreground or detached:
        run_foreground(seconds, json_out=json_out or detached, detached=detached)
    else:
        _render(start_detached(seconds), json_out)


def run_foreground(lifetime: int, *, json_out: bool, detached: bool) -> None:
    _not_dumpable()
    server = AgentServer(SessionBook(), lifetime)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: server.stop())
    try:
        _render(_started_event(server), json_out)
        if detached:
            _detach_stdio()
        else:
            from hoopcli.output import info

            info(f"hoop agent (pid {server.pid}) listening on {server.path}; Ctrl-C or `hoop agent --stop` to stop it.")
        why = server.serve()
        log.info("hoop agent exiting: %s", why)
    finally:
        server.close()


def start_detached(lifetime: int) -> dict:
    """Start `hoop agent --foreground --detached` in its own session; return once its socket is up."""
    import hoopcli

    package_parent = str(Path(hoopcli.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-m", "hoopcli", "agent", "--detached", "--lifetime", f"{lifetime}s"]
    proc = subprocess.Popen(argv, env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    with proc.stdout, proc.stderr:
        line = _read_line(proc, READY_TIMEOUT)
        if line:
            try:
                event = json.loads(line)
            except ValueError:
                event = {}
            if event.get("event") == "agent_started":
                proc.returncode = 0  # it lives on by design; no "still running" warning
                return event
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            raise HoopError(f"hoop agent did not start within {READY_TIMEOUT} s", "Run `hoop agent --foreground` to see why.")
        raise _child_error(proc.stderr.read().decode(errors="replace"), proc.returncode)


def _read_line(proc: subprocess.Popen, timeout: float) -> bytes:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        return proc.stdout.readline() if sel.select(timeout) else b""
    finally:
        sel.close()


def _child_error(stderr: str, code: int | None) -> HoopError:
    message = next((l[len("hoop: error: "):] for l in stderr.splitlines() if l.startswith("hoop: error: ")), "")
    hint = next((l[len("hoop: hint: "):] for l in stderr.splitlines() if l.startswith("hoop: hint: ")), None)
    if message:
        return HoopError(f"hoop agent could not start: {message}", hint)
    return HoopError(f"hoop agent exited with {code} before its socket was ready", "Run `hoop agent --foreground` to see why.")


def _detach_stdio() -> None:
    """After the ready line: let go of the starter's pipes so `$(hoop agent)` returns."""
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def stop_agent() -> dict:
    path = os.environ.get("HOOP_AGENT_SOCK", "")
    if not path:
        raise UsageError("HOOP_AGENT_SOCK is not set: no agent to stop", 'Run it in the shell where you ran `eval "$(hoop agent)"`.')
    response = AgentClient(path).request({"op": "stop"})
    if not response.get("ok"):
        raise HoopError(f"the hoop agent at {path} refused to stop: {response.get('message')}")
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"event": "agent_stopped", "pid": response.get("pid"), "socket": path}


def _started_event(server: AgentServer) -> dict:
    from datetime import datetime, timezone

    expires = datetime.fromtimestamp(server.started_at + server.lifetime, tz=timezone.utc)
    return {"event": "agent_started", "socket": str(server.path), "pid": server.pid, "lifetime": int(server.lifetime),
            "expires_at": expires.isoformat(timespec="seconds")}


def _render(event: dict, json_out: bool) -> None:
    """sh for `eval`, like ssh-agent; one JSON object with --json."""
    if json_out:
        from hoopcli.output import emit_json

        emit_json(event)
        return
    if event["event"] == "agent_started":
        sock = shlex.quote(event["socket"])
        lines = [f"HOOP_AGENT_SOCK={sock}; export HOOP_AGENT_SOCK;", f"HOOP_AGENT_PID={event['pid']}; export HOOP_AGENT_PID;",
                 f"echo Agent pid {event['pid']};"]
    else:
        lines = ["unset HOOP_AGENT_SOCK;", "unset HOOP_AGENT_PID;", f"echo Agent pid {event['pid']} killed;"]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
