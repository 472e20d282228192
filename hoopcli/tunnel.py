"""The local forwarder: 127.0.0.1:PORT → TLS → gateway `CONNECT name:port` → relay.

Each accepted client gets its own gateway leg, so one client's failure never touches the
listener or the others. Reaching the gateway through a corporate forward proxy
(HTTPS_PROXY/NO_PROXY) is a plain CONNECT to the proxy, then TLS to the gateway end to end:
the proxy only ever sees ciphertext.

Relaying uses asyncio Protocols that write each chunk straight to the peer transport, with
TCP_NODELAY on every socket and backpressure by pausing the reading side (see bench/).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from hoopcli.auth.http import proxy_for_host, proxy_refused, proxy_unreachable, require_single_line, tls_context
from hoopcli.errors import ConfigError, Unreachable
from hoopcli.netutil import LOOPBACK_HOSTS, new_event_loop, set_nodelay

log = logging.getLogger(__name__)
HEAD_LIMIT = 16 * 1024
HANDSHAKE_TIMEOUT = 15.0


class GatewayRefused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class GatewayAddress:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> "GatewayAddress":
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError(f"gateway URL '{url}' is not https://host:port", "Set it with `hoop config set gateway https://HOST:PORT`.")
        if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
            raise ConfigError(f"gateway URL '{url}' is not https", "hoop reaches gateways over TLS only (plain http on 127.0.0.1 for tests).")
        return cls(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), parts.scheme == "https")


def client_tls_context(ca_file: str = "") -> ssl.SSLContext:
    """The same verified TLS context as the gateway API calls (auth/http.tls_context)."""
    return tls_context(ca_file)


def proxy_for(address: GatewayAddress) -> tuple[str, int] | None:
    """The forward proxy from HTTPS_PROXY (or https_proxy), unless NO_PROXY exempts the gateway:
    the same rule as the gateway API calls (auth/http.proxy_for_host)."""
    return proxy_for_host(address.host)


class _HeadThenRelay(asyncio.Protocol):
    """One leg toward the gateway: reads one HTTP response head, then relays to `peer`."""

    def __init__(self):
        self.transport = None
        self.buffer = bytearray()
        self.head: asyncio.Future = asyncio.get_running_loop().create_future()
        self.peer = None  # the local client's transport, once relaying

    def connection_made(self, transport) -> None:
        self.transport = transport
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.write(data)
            return
        self.buffer += data
        if self.head.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(self.buffer[: end + 4])
            del self.buffer[: end + 4]
            self.head.set_result(head)
        elif len(self.buffer) > HEAD_LIMIT:
            self.head.set_exception(GatewayRefused(502, "oversized response head"))

    def start_relay(self, peer) -> None:
        self.peer = peer
        if self.buffer:
            peer.write(bytes(self.buffer))
            self.buffer.clear()

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()

    def connection_lost(self, exc) -> None:
        if not self.head.done():
            self.head.set_exception(GatewayRefused(502, "the gateway closed the connection"))
        if self.peer is not None:
            self.peer.close()


def parse_status(head: bytes) -> tuple[int, str, bytes]:
    line, _, rest = head.partition(b"\r\n")
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise GatewayRefused(502, "not an HTTP response from the gateway")
    return int(parts[1]), (parts[2] if len(parts) > 2 else b"").decode("latin-1"), rest


class Tunnel:
    """A listener on 127.0.0.1 relaying each client to one registered gateway connection.

    token_source() returns the current bearer token (refreshing it when near expiry); it is
    called once per client connection, off the event loop, so a tunnel that outlives a token
    picks up a new login without a restart. on_event(kind, detail) reports to the UI.
    """

    def __init__(
        self,
        gateway_url: str,
        connection: str,
        port: int,
        token_source: Callable[[], str],
        ca_file: str = "",
        listen_port: int = 0,
        on_event: Callable[[str, dict], None] | None = None,
    ):
        self.gateway = GatewayAddress.parse(gateway_url)
        self.connection = connection
        self.port = port
        self.token_source = token_source
        self.tls = client_tls_context(ca_file) if self.gateway.tls else None
        self.listen_port = listen_port
        self.on_event = on_event or (lambda kind, detail: None)
        self.active = 0
        self.proxy = proxy_for(self.gateway)
        self._server = None
        self._clients: set = set()

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _LocalSide(self), "127.0.0.1", self.listen_port, backlog=256)
        except OSError as exc:
            raise Unreachable(f"cannot listen on 127.0.0.1:{self.listen_port} ({exc.strerror})", "Choose another --port or leave it out for a free one.") from None
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self.listen_port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in list(self._clients):
            client.close()
        if self._server is not None:
            await self._server.wait_closed()

    # ---- one gateway leg -------------------------------------------------------------
    async def open_leg(self) -> _HeadThenRelay:
        loop = asyncio.get_running_loop()
        token = require_single_line(await loop.run_in_executor(None, self.token_source), "gateway")
        leg = await asyncio.wait_for(self._dial(), HANDSHAKE_TIMEOUT)
        request = (
            f"CONNECT {self.connection}:{self.port} HTTP/1.1\r\n"
            f"Host: {self.connection}:{self.port}\r\n"
            f"Proxy-Authorization: Bearer {token}\r\n"
            "User-Agent: hoop\r\n\r\n"
        )
        leg.transport.write(request.encode())
        head = await asyncio.wait_for(leg.head, HANDSHAKE_TIMEOUT)
        status, reason, rest = parse_status(head)
        log.debug("tunnel: CONNECT %s:%d -> %d%s", self.connection, self.port, status, " (via proxy)" if self.proxy else "")
        if status != 200:
            body = bytes(leg.buffer)
            leg.transport.close()
            raise GatewayRefused(status, _reason_from_body(body) or reason)
        return leg

    async def _dial(self) -> _HeadThenRelay:
        loop = asyncio.get_running_loop()
        g = self.gateway
        if self.proxy is None:
            _, leg = await loop.create_connection(_HeadThenRelay, g.host, g.port, ssl=self.tls, server_hostname=g.host if self.tls else None)
            return leg
        target = f"{g.host}:{g.port}"
        try:
            _, via = await loop.create_connection(_HeadThenRelay, *self.proxy)
        except OSError as exc:
            raise proxy_unreachable(self.proxy, f"gateway at {target}", exc.strerror or type(exc).__name__) from None
        via.transport.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        try:
            status, reason, _ = parse_status(await via.head)
        except GatewayRefused:  # closed, or not HTTP: the proxy's doing, not the gateway's
            via.transport.close()
            raise proxy_unreachable(self.proxy, f"gateway at {target}", "no HTTP answer to the CONNECT") from None
        if status != 200:
            via.transport.close()
            raise proxy_refused(self.proxy, target, f"{status} {reason}")
        if self.tls is None:
            return via
        leg = _HeadThenRelay()
        transport = await loop.start_tls(via.transport, leg, self.tls, server_hostname=g.host)
        leg.connection_made(transport)
        return leg


def _reason_from_body(body: bytes) -> str:
    import json

    try:
        return str(json.loads(body.decode()).get("error", ""))
    except (ValueError, UnicodeDecodeError, AttributeError):
        return ""


class _LocalSide(asyncio.Protocol):
    """One local client (psql, mariadb, an app) on 127.0.0.1."""

    def __init__(self, tunnel: Tunnel):
        self.tunnel = tunnel
        self.transport = None
        self.leg: _HeadThenRelay | None = None
        self.early = bytearray()
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        set_nodelay(transport)
        self.tunnel._clients.add(self)
        self.tunnel.active += 1
        asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        t = self.tunnel
        try:
            leg = await t.open_leg()
        except GatewayRefused as exc:
            t.on_event("refused", {"status": exc.status, "reason": exc.reason})
            self.close()
            return
        except Exception as exc:  # network trouble or a token that cannot be refreshed
            t.on_event("error", {"error": exc})
            self.close()
            return
        if self.closed:
            leg.transport.close()
            return
        self.leg = leg
        leg.start_relay(self.transport)
        if self.early:
            leg.transport.write(bytes(self.early))
            self.early.clear()
        t.on_event("connected", {"active": t.active})

    def data_received(self, data: bytes) -> None:
        if self.leg is not None:
            self.leg.transport.write(data)
        else:
            self.early += data

    def pause_writing(self) -> None:
        if self.leg is not None:
            self.leg.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.leg is not None:
            self.leg.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if self.closed:
            return
        self.closed = True
        self.tunnel._clients.discard(self)
        self.tunnel.active -= 1
        if self.leg is not None:
            self.leg.transport.close()
        self.tunnel.on_event("disconnected", {"active": self.tunnel.active})


class TunnelThread:
    """Runs a Tunnel on its own event loop in a background thread (for `hoop exec`, whose
    main thread waits for the child and forwards signals)."""

    def __init__(self, tunnel: Tunnel):
        self.tunnel = tunnel
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hoop-tunnel", daemon=True)

    def start(self) -> int:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self.tunnel.start(), self.loop).result(timeout=10)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.tunnel.close(), self.loop).result(timeout=5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
