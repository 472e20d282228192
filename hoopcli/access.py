"""One governed access to a connection: look it up at the gateway, get credentials from its
broker, open the local tunnel; and undo all of it (tunnel down, lease revoked) at the end.

Used by `hoop exec` and `hoop connect`; a SIGTERM or SIGHUP while it is open becomes an
`Interrupted` error, so the cleanup runs however hoop is stopped (short of SIGKILL).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from hoopcli.brokers.base import Credentials, broker_for
from hoopcli.errors import Interrupted
from hoopcli.logs import register_secret

log = logging.getLogger(__name__)
TOKEN_REUSE_SECONDS = 2.0


@dataclass
class Access:
    name: str
    connection: dict
    creds: Credentials
    port: int
    broker: object = None
    tunnel_thread: object = None
    _stop_renew: threading.Event = field(default_factory=threading.Event)

    @property
    def protocol(self) -> str:
        return self.connection["protocol"]

    @property
    def database(self) -> str:
        return self.connection.get("database", "")

    def env(self) -> dict[str, str]:
        from hoopcli.launch import protocol_env

        return {**os.environ, **protocol_env(self.protocol, self.port, self.creds, self.database)}

    def summary(self, show_secrets: bool = False) -> dict:
        info = {
            "connection": self.name,
            "protocol": self.protocol,
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.creds.username or None,
            "database": self.database or None,
            "command": self.ready_command(),
            "credentials": self.creds.public(show_secrets),
        }
        return info

    def ready_command(self) -> str:
        user = f" user={self.creds.username}" if self.creds.username else ""
        db = f" dbname={self.database}" if self.database else ""
        if self.protocol == "postgres":
            return f'psql "host=127.0.0.1 port={self.port}{user}{db} sslmode=disable"'
        if self.protocol == "mysql":
            u = f" -u {self.creds.username}" if self.creds.username else ""
            d = f" {self.database}" if self.database else ""
            return f"mariadb -h 127.0.0.1 -P {self.port}{u} -p{d}"
        return f"127.0.0.1:{self.port}"

    def keep_renewed(self) -> None:
        """Renew leased credentials at two thirds of their remaining life while the access lasts."""
        if not self.creds.renewable or not self.creds.expires_at:
            return

        def loop():
            while not self._stop_renew.is_set():
                wait = max(5.0, (self.creds.expires_at - time.time()) * 2 / 3)
                if self._stop_renew.wait(wait):
                    return
                try:
                    self.creds = self.broker.renew(self.creds)
                except Exception as exc:
                    log.warning("could not renew %s credentials: %s", self.creds.broker, exc)

        threading.Thread(target=loop, name="hoop-renew", daemon=True).start()


def token_source(profile):
    """The bearer for each new tunnel connection. One token set is kept for the tunnel and
    reloaded (refreshing it if due) by one caller at a time: twenty clients connecting at once
    must not spend the same rotating refresh token twenty times, which revokes the grant."""
    from hoopcli.auth.session import load_session

    lock = threading.Lock()
    current, loaded_at = None, 0.0

    def bearer() -> str:
        nonlocal current, loaded_at
        with lock:
            # Reused for a moment only: a logout or a new login elsewhere is seen at once.
            if current is None or current.needs_refresh() or time.monotonic() - loaded_at > TOKEN_REUSE_SECONDS:
                current, loaded_at = load_session(profile), time.monotonic()
            return current.bearer

    return bearer


@contextmanager
def open_access(profile, name: str, *, listen_port: int = 0, on_event=None):
    """Credentials for `name` and, for a gateway connection, a local tunnel to it.

    A profile-local connection (`[profiles.P.connections.NAME]`, e.g. an AWS API) needs no
    gateway: only its broker runs, and the child gets the broker's environment.
    """
    from hoopcli.auth.session import load_session

    with _signals_interrupt():
        tokens = load_session(profile)
        local = (profile.connections or {}).get(name)
        if local is not None:
            connection = {"name": name, "protocol": local.get("protocol", "api"), "credentials": dict(local)}
        else:
            from hoopcli.gateway_api import api_for

            connection = api_for(profile, tokens).connection(name)
        broker = broker_for(connection.get("credentials") or {}, profile)
        creds = broker.issue(tokens.bearer)
        for secret in creds.secrets():
            register_secret(secret)
        log.debug("%s broker issued credentials for %s (user %s, lease %s)", creds.broker, name, creds.username or "-", creds.lease_id or "-")
        access = Access(name=name, connection=connection, creds=creds, port=0, broker=broker)
        try:
            if local is None:
                _open_tunnel(access, profile, listen_port, on_event)
            access.keep_renewed()
            yield access
        finally:
            access._stop_renew.set()
            if access.tunnel_thread is not None:
                access.tunnel_thread.stop()
            broker.revoke(access.creds)


def _open_tunnel(access: Access, profile, listen_port: int, on_event) -> None:
    from hoopcli.tunnel import Tunnel, TunnelThread

    tunnel = Tunnel(profile.gateway, access.name, int(access.connection["port"]), token_source(profile), profile.ca_file, listen_port, on_event)
    access.tunnel_thread = TunnelThread(tunnel)
    access.port = access.tunnel_thread.start()
    log.debug("tunnel for %s listening on 127.0.0.1:%d (gateway %s)", access.name, access.port, profile.gateway)


@contextmanager
def _signals_interrupt():
    """SIGTERM/SIGHUP raise Interrupted in the main thread, so `finally` blocks revoke leases."""

    def handler(signum, _frame):
        raise Interrupted(f"stopped by {signal.Signals(signum).name}", "Leased credentials were revoked.")

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
