"""Start-up phase: the server greeting, the client's HandshakeResponse and COM_CHANGE_USER."""

from __future__ import annotations

from ..base import SessionStarted
from .charsets import SAFE_COLLATION_IDS
from .constants import (
    _AUTH,
    _FORWARD,
    _LOGIN,
    CLIENT_CONNECT_WITH_DB,
    CLIENT_DEPRECATE_EOF,
    CLIENT_MYSQL,
    CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION,
    CLIENT_SSL,
    STRIPPED_CAPABILITIES,
)
from .state import _Pending
from .wire import _cstring, _lenenc, _Malformed, _packet, _text


class LoginPhase:
    """Greeting and login (mixed into MySQLEngine)."""

    def _on_greeting(self, first: int, payload: bytes) -> object:
        self._queue.popleft()
        if first == 0xFF:  # the server refused the connection (too many, host blocked)
            return None
        if first != 0x0A:
            raise _Malformed(f"unsupported handshake protocol version {first}")
        nul = payload.find(b"\0", 1)
        if nul < 0:
            raise _Malformed("malformed server greeting")
        lo = nul + 1 + 4 + 8 + 1  # version, connection id, scramble part 1, filler
        if len(payload) < lo + 2:
            raise _Malformed("truncated server greeting")
        caps = int.from_bytes(payload[lo : lo + 2], "little")
        hi = lo + 5  # charset (1) + status (2)
        ext = hi + 2 + 1 + 6  # auth data length (1) + filler (6)
        if len(payload) >= hi + 2:
            caps |= int.from_bytes(payload[hi : hi + 2], "little") << 16
        if len(payload) >= ext + 4 and not caps & CLIENT_MYSQL:
            caps |= int.from_bytes(payload[ext : ext + 4], "little") << 32
        self._server_caps = caps & ~STRIPPED_CAPABILITIES
        self._mode = _LOGIN
        if not caps & STRIPPED_CAPABILITIES:
            return _FORWARD
        new = bytearray(payload)
        new[lo : lo + 2] = (self._server_caps & 0xFFFF).to_bytes(2, "little")
        if len(payload) >= hi + 2:
            new[hi : hi + 2] = ((self._server_caps >> 16) & 0xFFFF).to_bytes(2, "little")
        if len(payload) >= ext + 4 and not caps & CLIENT_MYSQL:
            new[ext : ext + 4] = (self._server_caps >> 32).to_bytes(4, "little")
        return _packet(0, bytes(new))


    def _on_login(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise _Malformed("truncated handshake response")
        caps = int.from_bytes(payload[0:4], "little")
        if not caps & CLIENT_PROTOCOL_41:
            raise _Malformed("pre-4.1 handshake responses are not supported")
        if len(payload) < 32:
            raise _Malformed("truncated handshake response")
        if not caps & CLIENT_MYSQL:
            caps |= int.from_bytes(payload[28:32], "little") << 32
        if caps & CLIENT_SSL:
            raise _Malformed("client insists on TLS to the database; the gateway carries the session in TLS itself")
        if caps & STRIPPED_CAPABILITIES:
            raise _Malformed("client asked for a capability the gateway did not offer (compression?)")
        if payload[8] not in SAFE_COLLATION_IDS:
            raise _Malformed(f"client character set (collation {payload[8]}) refused: its multibyte characters can hide quotes from the gateway; use utf8mb4")
        user, pos = _cstring(payload, 32)
        if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
            n, pos = _lenenc(payload, pos)
            pos += n
        elif caps & CLIENT_SECURE_CONNECTION:
            if pos >= len(payload):
                raise _Malformed("truncated handshake response")
            pos += 1 + payload[pos]
        else:
            _, pos = _cstring(payload, pos)
        if pos > len(payload):
            raise _Malformed("truncated handshake response")
        database = b""
        if caps & CLIENT_CONNECT_WITH_DB and pos < len(payload):
            database, pos = _cstring(payload, pos)
        self._caps = caps & self._server_caps
        self._deprecate_eof = bool(caps & self._server_caps & CLIENT_DEPRECATE_EOF)
        self._mode = _AUTH
        self._queue.append(_Pending("auth"))
        self._events.append(SessionStarted(_text(user), _text(database)))

    def _on_change_user(self, payload: bytes) -> None:
        user, pos = _cstring(payload, 1)
        if self._caps & CLIENT_SECURE_CONNECTION:
            if pos >= len(payload):
                raise _Malformed("truncated COM_CHANGE_USER")
            pos += 1 + payload[pos]
        else:
            _, pos = _cstring(payload, pos)
        if pos > len(payload):
            raise _Malformed("truncated COM_CHANGE_USER")
        database, _ = _cstring(payload, pos)
        self._stmts.clear()
        self._last_prepared = None
        self._mode = _AUTH
        self._queue.append(_Pending("change_user"))
        self._events.append(SessionStarted(_text(user), _text(database)))

