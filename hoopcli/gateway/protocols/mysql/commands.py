"""The client side: commands, the gate, refusals."""

from __future__ import annotations

import logging

from ..base import ALLOW, MAX_MESSAGE_BYTES, StatementBlocked, StatementStarted, Verdict
from .charsets import _UNSAFE_CHARSET_SWITCH, CHARSET_REFUSED
from .constants import (
    _AUTH,
    _COMMAND,
    _COMMAND_NAMES,
    _DROP,
    _FORWARD,
    _GATED,
    _GREETING,
    _HELD_NAMES,
    _INFILE,
    _LOGIN,
    _PLAIN,
    _REFRESH_OPTIONS,
    _ROWS,
    COM_CHANGE_USER,
    COM_CREATE_DB,
    COM_DROP_DB,
    COM_INIT_DB,
    COM_PROCESS_KILL,
    COM_QUERY,
    COM_RESET_CONNECTION,
    COM_SHUTDOWN,
    COM_STMT_BULK_EXECUTE,
    COM_STMT_CLOSE,
    COM_STMT_EXECUTE,
    COM_STMT_FETCH,
    COM_STMT_PREPARE,
    COM_STMT_RESET,
    COM_STMT_SEND_LONG_DATA,
    ERRNO_BLOCKED,
    ERRNO_UNSUPPORTED,
    GRANT_PENDING_MESSAGE,
    GRANT_USED_MESSAGE,
    SQLSTATE_DENY,
    SQLSTATE_HOLD,
)
from .params import PARAMS_KEEP_BYTES, decode_params
from .state import _BLOCKED_STMT, _Pending, _Stmt
from .wire import _Malformed, _quote_ident, _text, err_packet

log = logging.getLogger("hoopcli.gateway.protocols.mysql")


class ClientSide:
    """Command handling and gating (mixed into MySQLEngine)."""


    def _client_keep(self, first: int, seq: int) -> tuple[int, bool]:
        mode = self._mode
        if mode == _INFILE:
            return 0, False  # file content: relayed, never read
        if mode == _AUTH and seq != 0:
            # Auth data, relayed unread, but only the one packet the server asked for: any
            # other would reach a server that may already take it for a command.
            return 0, seq != self._auth_seq
        if mode in (_GREETING, _LOGIN):
            return -1, True
        if seq != 0:
            return 0, False  # refused in _client_packet
        if first in _GATED or first == COM_CHANGE_USER:
            return -1, True
        if first in (COM_STMT_EXECUTE, COM_STMT_BULK_EXECUTE):
            refuse = self._granted or self._last_prepared is _BLOCKED_STMT
            return (PARAMS_KEEP_BYTES + 1 if self._record_params else 5), refuse
        if first == COM_STMT_SEND_LONG_DATA:
            return 7, False
        if first in (COM_STMT_CLOSE, COM_STMT_RESET, COM_STMT_FETCH):
            return 5, False
        if first in _PLAIN:
            return 64, False
        return 64, True  # refused

    def _client_packet(self, first: int, seq: int, payload: bytes, size: int) -> object:
        mode = self._mode
        if mode == _INFILE:
            if size == 0:
                self._mode = _COMMAND  # the empty packet ends the file
            return None
        if mode == _GREETING:
            raise _Malformed("client sent data before the server greeting")
        if mode == _LOGIN:
            return self._on_login(seq, payload)
        if seq != 0:
            if mode == _AUTH:
                if seq != self._auth_seq:
                    raise _Malformed(f"client packet out of sequence (id {seq}) during authentication")
                self._auth_seq = -1
                return None
            raise _Malformed(f"client packet out of sequence (id {seq}) where a command was due")
        if first < 0:
            raise _Malformed("empty command packet")
        if first == COM_QUERY:
            text = _text(payload[1:])
            if not self._allowed(text):
                return _DROP
            self._queue.append(_Pending("result", statement=True))
            self._events.append(StatementStarted(text, "query"))
            return _FORWARD
        if first == COM_STMT_PREPARE:
            text = _text(payload[1:])
            verdict = self._judge(text)
            if verdict is None:
                self._last_prepared = _BLOCKED_STMT
                return _DROP
            stmt = _Stmt(text)
            if verdict.request_id is not None:
                stmt.grant = verdict.request_id
                self._granted = True
            self._last_prepared = stmt
            self._queue.append(_Pending("prepare", statement=True, stmt=stmt))
            self._events.append(StatementStarted(text, "prepare"))
            return _FORWARD
        if first in (COM_STMT_EXECUTE, COM_STMT_BULK_EXECUTE):
            return self._on_execute(first, payload, size)
        if first in _GATED:  # init_db, create/drop db, kill, shutdown, refresh
            text, kind = self._command_text(first, payload)
            if not self._allowed(text):
                return _DROP
            self._queue.append(_Pending("simple", statement=True))
            self._events.append(StatementStarted(text, kind))
            return _FORWARD
        if first == COM_CHANGE_USER:
            return self._on_change_user(payload)
        if first in _PLAIN:
            self._plain_command(first, payload)
            return None
        name = _COMMAND_NAMES.get(first, f"command 0x{first:02x}")
        message = f"the gateway does not relay {name}"
        self._refuse(
            f"<{name}>",
            Verdict("deny", message, rule="mysql-unsupported-command"),
            ERRNO_UNSUPPORTED,
            SQLSTATE_DENY,
        )
        return _DROP

    def _plain_command(self, first: int, payload: bytes) -> None:
        if first == COM_STMT_CLOSE and len(payload) >= 5:
            self._stmts.pop(int.from_bytes(payload[1:5], "little"), None)
        elif first == COM_STMT_SEND_LONG_DATA and len(payload) >= 7:
            stmt = self._stmts.get(int.from_bytes(payload[1:5], "little"))
            if stmt is not None:
                stmt.long_data.add(int.from_bytes(payload[5:7], "little"))
        elif first == COM_STMT_RESET and len(payload) >= 5:
            stmt = self._stmts.get(int.from_bytes(payload[1:5], "little"))
            if stmt is not None:
                stmt.long_data.clear()
        elif first == COM_RESET_CONNECTION:
            self._stmts.clear()
            self._last_prepared = None
        kind = _PLAIN[first]
        if kind == "fetch":  # rows of an open cursor, ended like a result set's
            self._queue.append(_Pending("result", state=_ROWS))
        elif kind == "fields":
            self._queue.append(_Pending("fields", state=_ROWS))
        elif kind is not None:
            self._queue.append(_Pending(kind))

    def _on_execute(self, first: int, payload: bytes, size: int) -> object:
        if len(payload) < 5:
            raise _Malformed("truncated COM_STMT_EXECUTE")
        stmt_id = int.from_bytes(payload[1:5], "little")
        if stmt_id == 0xFFFFFFFF:
            stmt = self._last_prepared
            if stmt is _BLOCKED_STMT:
                self._refuse(
                    "<execute of the last prepared statement>",
                    Verdict(
                        "deny",
                        "the last prepared statement was not allowed; prepare it again",
                        rule="mysql-refused-prepare",
                    ),
                    ERRNO_BLOCKED,
                    SQLSTATE_DENY,
                )
                return _DROP
        else:
            stmt = self._stmts.get(stmt_id)
        if self._granted and self._grant_refused(stmt):
            return _DROP
        text = stmt.text if stmt is not None else f"/* unknown prepared statement {stmt_id} */"
        params = None
        if first == COM_STMT_EXECUTE:
            kind = "execute"
            if self._record_params and stmt is not None:
                params = decode_params(stmt, payload, size)
            if stmt is not None:
                stmt.long_data.clear()
        else:
            kind = "bulk_execute"
        self._queue.append(_Pending("result", statement=True))
        self._events.append(StatementStarted(text, kind, params))
        return _FORWARD

    def _command_text(self, first: int, payload: bytes) -> tuple[str, str]:
        arg = payload[1:]
        if first == COM_INIT_DB:
            return f"USE {_quote_ident(_text(arg))}", "init_db"
        if first == COM_CREATE_DB:
            return f"CREATE DATABASE {_quote_ident(_text(arg))}", "create_db"
        if first == COM_DROP_DB:
            return f"DROP DATABASE {_quote_ident(_text(arg))}", "drop_db"
        if first == COM_PROCESS_KILL:
            if len(arg) < 4:
                raise _Malformed("truncated COM_PROCESS_KILL")
            return f"KILL {int.from_bytes(arg[:4], 'little')}", "kill"
        if first == COM_SHUTDOWN:
            return "SHUTDOWN", "shutdown"
        flags = arg[0] if arg else 0
        names = [name for bit, name in _REFRESH_OPTIONS if flags & bit]
        return "FLUSH " + ", ".join(names or ["TABLES"]), "refresh"

    # ---- gating ---------------------------------------------------------------------------------

    def _allowed(self, text: str) -> bool:
        return self._judge(text) is not None

    def _judge(self, text: str) -> Verdict | None:
        """The allow verdict for text, or None when it was refused (and answered)."""
        if _UNSAFE_CHARSET_SWITCH.search(text):
            self._refuse(text, CHARSET_REFUSED, ERRNO_BLOCKED, SQLSTATE_DENY)
            return None
        if self._gate is None:
            return ALLOW
        try:
            verdict = self._gate(text)
        except Exception:
            log.exception("gate failed; refusing the statement")
            verdict = Verdict("deny", "statement refused: the policy check failed", rule="gate-error")
        if verdict.action == "allow":
            return verdict
        if verdict.action == "hold":
            self._refuse(text, verdict, ERRNO_BLOCKED, SQLSTATE_HOLD)
        else:
            self._refuse(text, verdict, ERRNO_BLOCKED, SQLSTATE_DENY)
        return None

    def _grant_refused(self, stmt: _Stmt | None) -> bool:
        """An execute in a session that had a granted prepare: refuse (and answer) the second
        run of a granted statement; count the first."""
        if stmt is None:  # an id the server has not given out (yet)
            for pending in self._queue:
                if pending.kind == "prepare" and pending.stmt is not None and pending.stmt.grant is not None:
                    verdict = Verdict("deny", GRANT_PENDING_MESSAGE, request_id=pending.stmt.grant, rule="grant-pending")
                    self._refuse(pending.stmt.text, verdict, ERRNO_BLOCKED, SQLSTATE_DENY)
                    return True
            return False
        if stmt.grant is None:
            return False
        if stmt.used:
            verdict = Verdict("deny", GRANT_USED_MESSAGE, request_id=stmt.grant, rule="grant-used")
            self._refuse(stmt.text, verdict, ERRNO_BLOCKED, SQLSTATE_DENY)
            return True
        stmt.used = True
        return False

    def _refuse(self, text: str, verdict: Verdict, errno: int, sqlstate: str) -> None:
        message = verdict.message or (
            "statement held for approval" if verdict.action == "hold" else "statement denied by policy"
        )
        self._events.append(StatementBlocked(text, verdict))
        # The answer to a command takes the id after its last packet's: 1 for a one-packet
        # command, more for one sent as several 16 MiB packets (mod 256, as the wire wraps).
        reply = err_packet(errno, sqlstate, message, seq=self._client.last_seq + 1)
        if self._queue:
            self._queue.append(_Pending("synthetic", reply=reply))
        else:
            self._to_client_extra.append(reply)

    def _refuse_oversize(self, first: int, size: int) -> object:
        """A command too large to hold for the gate was discarded unseen: refuse it."""
        if first == COM_STMT_PREPARE:
            self._last_prepared = _BLOCKED_STMT  # an execute of "the last prepared" is refused too
        name = _HELD_NAMES.get(first, f"command 0x{first:02x}")
        limit = MAX_MESSAGE_BYTES >> 20
        verdict = Verdict(
            "deny",
            f"hoop: statement refused: larger than the gateway reads ({limit} MiB); it was not run",
            rule="too-large",
        )
        self._refuse(f"<{name} of {size} bytes, not read>", verdict, ERRNO_BLOCKED, SQLSTATE_DENY)
        return _DROP
