"""A PostgresEngine between a real client and the real PostgreSQL, without the gateway around
it: for tests of engine decisions (startup checks, the encoding fence) with psql, psycopg and a
raw-socket client that logs in with SCRAM itself (so it can pipeline what libpq never does).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import selectors
import socket
import struct
import threading


class EngineRelay:
    """Listens on 127.0.0.1; each client gets a fresh engine from `make_engine()`. Records every
    event, and how many bytes each session sent on to the server."""

    def __init__(self, pg_port: int, make_engine) -> None:
        self.pg_port = pg_port
        self.make_engine = make_engine
        self.events: list = []
        self.bytes_up: list[int] = []  # per session, in order of arrival
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            slot = len(self.bytes_up)
            self.bytes_up.append(0)
            threading.Thread(target=self._pump, args=(client, slot), daemon=True).start()

    def _pump(self, client: socket.socket, slot: int) -> None:
        engine = self.make_engine()
        server = socket.create_connection(("127.0.0.1", self.pg_port), timeout=10)
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, "c")
        sel.register(server, selectors.EVENT_READ, "s")
        try:
            for _ in range(1_000_000):  # bounded: a test session is short
                for key, _ in sel.select(timeout=30):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    out = engine.from_client(data) if key.data == "c" else engine.from_server(data)
                    self.events += out.events  # before the client can see what follows from them
                    if out.to_server:
                        self.bytes_up[slot] += len(out.to_server)
                        server.sendall(out.to_server)
                    if out.to_client:
                        client.sendall(out.to_client)
                    if out.close:
                        return
        except OSError:
            return
        finally:
            sel.close()
            client.close()
            server.close()


# ---- a raw client ---------------------------------------------------------------------------


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def Q(sql: str) -> bytes:
    return msg(b"Q", sql.encode() + b"\0")


class RawClient:
    """Speaks the protocol by hand after a SCRAM-SHA-256 login."""

    def __init__(self, port: int, user: str, password: str, database: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        body = struct.pack("!I", 196608) + b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        self._scram(password)
        self.until(b"Z")

    def read(self) -> tuple[bytes, bytes] | None:
        head = self._exact(5)
        if head is None:
            return None
        body = self._exact(struct.unpack("!I", head[1:])[0] - 4)
        return head[:1], body or b""

    def until(self, kind: bytes) -> list[tuple[bytes, bytes]]:
        """Messages up to and including the next of `kind` (or up to the connection's end)."""
        got = []
        for _ in range(100_000):
            m = self.read()
            if m is None:
                return got
            got.append(m)
            if m[0] == kind:
                return got
        raise AssertionError("no end")

    def rest(self) -> list[tuple[bytes, bytes]]:
        """Everything until the connection closes."""
        return self.until(b"\xff")

    def _exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def _scram(self, password: str) -> None:
        kind, body = self.read()
        assert kind == b"R" and struct.unpack("!I", body[:4])[0] == 10, (kind, body)
        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        first_bare = f"n=,r={nonce}"
        first = ("n,," + first_bare).encode()
        self.sock.sendall(msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
        kind, body = self.read()
        server_first = body[4:].decode()
        fields = dict(item.split("=", 1) for item in server_first.split(","))
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        final_bare = f"c={base64.b64encode(b'n,,').decode()},r={fields['r']}"
        auth = f"{first_bare},{server_first},{final_bare}".encode()
        signature = hmac.new(hashlib.sha256(client_key).digest(), auth, "sha256").digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
        self.sock.sendall(msg(b"p", f"{final_bare},p={proof}".encode()))


def error_fields(body: bytes) -> dict[str, str]:
    out = {}
    for part in body.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return out
