"""Start-up phase: the server greeting, the client's HandshakeResponse and COM_CHANGE_USER."""

from __future__ import annotations

from ..base import SessionStarted, Verdict
from .charsets import SAFE_COLLATION_IDS, charset_refusal
from .constants import (
    _AUTH,
    _DROP,
    _FORWARD,
    _LOGIN,
    CLIENT_CONNECT_WITH_DB,
    CLIENT_DEPRECATE_EOF,
    CLIENT_MYSQL,
    CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION,
    CLIENT_SSL,
    ERRNO_DB_ACCESS_DENIED,
    ERRNO_UNKNOWN_CHARSET,
    ERRNO_UNSUPPORTED,
    MAX_PACKET,
    SQLSTATE_DENY,
    STRIPPED_CAPABILITIES,
)
from .state import _Pending
from .wire import (
    _cstring,
    _lenenc,
    _Malformed,
    _packet,
    _quote_ident,
    _text,
    err_packet,
)


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

    # ---- HandshakeResponse41 ---------------------------------------------------------------------

    def _on_login(self, seq: int, payload: bytes) -> object:
        """Negotiate as a server would, check the character set and database, and forward the
        response with the capabilities both ends will use: what the client asked for and the
        greeting offered. A bit the client set without the offer (libmysqlclient 8.x sets
        CLIENT_QUERY_ATTRIBUTES regardless) is cleared in the forwarded packet, so the server,
        the client's own framing (which follows the greeting) and the engine agree."""
        if len(payload) < 4:
            raise _Malformed("truncated handshake response")
        if len(payload) >= MAX_PACKET:  # a few hundred bytes in practice; rewritten as one packet
            raise _Malformed("handshake response larger than one packet")
        asked = int.from_bytes(payload[0:4], "little")
        if not asked & CLIENT_PROTOCOL_41:
            raise _Malformed("pre-4.1 handshake responses are not supported")
        if asked & CLIENT_SSL:
            raise _Refused(
                "client insists on TLS to the database; the gateway carries the session in TLS itself",
                err_packet(ERRNO_UNSUPPORTED, "08004", TLS_REFUSAL, seq + 1),
            )
        if len(payload) < 32:
            raise _Malformed("truncated handshake response")
        caps = self._agreed_caps(payload)
        if payload[8] not in SAFE_COLLATION_IDS:
            message = charset_refusal(payload[8])
            raise _Refused(message, err_packet(ERRNO_UNKNOWN_CHARSET, "42000", message, seq + 1))
        user, database = _login_names(payload, caps)
        self._check_pinned(database, refusal_seq=seq + 1)
        self._caps = caps
        self._deprecate_eof = bool(caps & CLIENT_DEPRECATE_EOF)
        self._mode = _AUTH
        self._auth_seq = -1
        self._queue.append(_Pending("auth"))
        self._events.append(SessionStarted(_text(user), _text(database)))
        forwarded = _with_caps(payload, caps)
        return _FORWARD if forwarded == payload else _packet(seq, forwarded)

    def _agreed_caps(self, payload: bytes) -> int:
        """The client's capabilities masked to the offer, read the way the server will read the
        forwarded packet (MariaDB's extended word only when CLIENT_MYSQL ends up clear)."""
        offered = self._server_caps
        caps = int.from_bytes(payload[0:4], "little") & offered & 0xFFFFFFFF
        if not caps & CLIENT_MYSQL:
            caps |= (int.from_bytes(payload[28:32], "little") << 32) & offered
        return caps

    def _check_pinned(self, database: bytes, refusal_seq: int) -> None:
        """A login naming another database than the pinned one ends the session."""
        if self._pinned_db is None or not database or database == self._pinned_db:
            return
        message = pinned_message(self._pinned_db)
        raise _Refused(
            f"login named database {_text(database)!r}; {message}",
            err_packet(ERRNO_DB_ACCESS_DENIED, SQLSTATE_DENY, message, refusal_seq),
        )

    # ---- COM_CHANGE_USER --------------------------------------------------------------------------

    def _on_change_user(self, payload: bytes) -> object:
        """Forward a change of user unless its character set or database is refused; a refused
        one never reaches the server, so the session goes on as before."""
        user, database, collation = _change_user_fields(payload, self._caps)
        text = f"<change user to {_text(user)!r}, database {_quote_ident(_text(database))}>"
        if collation is not None and collation not in SAFE_COLLATION_IDS:
            message = charset_refusal(collation)
            self._refuse(text, Verdict("deny", message, rule="charset"), ERRNO_UNKNOWN_CHARSET, SQLSTATE_DENY)
            return _DROP
        if self._pinned_db is not None and database and database != self._pinned_db:
            message = pinned_message(self._pinned_db)
            self._refuse(text, Verdict("deny", message, rule="database-pinned"), ERRNO_DB_ACCESS_DENIED, SQLSTATE_DENY)
            return _DROP
        self._stmts.clear()
        self._last_prepared = None
        self._mode = _AUTH
        self._auth_seq = -1
        self._queue.append(_Pending("change_user"))
        self._events.append(SessionStarted(_text(user), _text(database)))
        return _FORWARD


class _Refused(_Malformed):
    """The login is refused: answer the client with `reply`, then end the session."""

    def __init__(self, reason: str, reply: bytes) -> None:
        super().__init__(reason)
        self.reply = reply


TLS_REFUSAL = "hoop: the gateway carries this session in TLS itself; connect without TLS to the local tunnel"


def pinned_message(database: bytes) -> str:
    return f"hoop: this connection is pinned to database {_quote_ident(_text(database))}"


def _with_caps(payload: bytes, caps: int) -> bytes:
    """The response with its capability words replaced by caps."""
    new = bytearray(payload)
    new[0:4] = (caps & 0xFFFFFFFF).to_bytes(4, "little")
    if not caps & CLIENT_MYSQL:
        new[28:32] = (caps >> 32).to_bytes(4, "little")
    return bytes(new)


def _login_names(payload: bytes, caps: int) -> tuple[bytes, bytes]:
    """User and database of a HandshakeResponse41, parsed with the agreed capabilities."""
    user, pos = _cstring(payload, 32)
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        n, pos = _lenenc(payload, pos)
        pos += n
        if pos > len(payload):
            raise _Malformed("truncated handshake response")
    else:
        pos = _skip_auth_response(payload, pos, caps, "handshake response")
    database = b""
    if caps & CLIENT_CONNECT_WITH_DB and pos < len(payload):
        database, pos = _cstring(payload, pos)
    return user, database


def _skip_auth_response(payload: bytes, pos: int, caps: int, what: str) -> int:
    """Past the auth response at `pos`: one length byte then the data (CLIENT_SECURE_CONNECTION),
    or a NUL-terminated string."""
    if caps & CLIENT_SECURE_CONNECTION:
        if pos >= len(payload):
            raise _Malformed(f"truncated {what}")
        pos += 1 + payload[pos]
    else:
        _, pos = _cstring(payload, pos)
    if pos > len(payload):
        raise _Malformed(f"truncated {what}")
    return pos


def _change_user_fields(payload: bytes, caps: int) -> tuple[bytes, bytes, int | None]:
    """User, database and collation id (None when absent) of COM_CHANGE_USER, read as MariaDB
    and MySQL read them: the collation is there when two bytes follow the database."""
    user, pos = _cstring(payload, 1)
    pos = _skip_auth_response(payload, pos, caps, "COM_CHANGE_USER")
    database, pos = _cstring(payload, pos)
    collation = int.from_bytes(payload[pos : pos + 2], "little") if pos + 2 <= len(payload) else None
    return user, database, collation
