"""The server side: what each answer means for the command at the head of the queue."""

from __future__ import annotations

from ..base import StatementFailed, StatementFinished
from .constants import (
    _COLDEFS,
    _COLEOF,
    _COMMAND,
    _DEFS,
    _FIRST,
    _INFILE,
    _ROWS,
    MAX_PACKET,
    SERVER_MORE_RESULTS_EXISTS,
    SERVER_STATUS_CURSOR_EXISTS,
)
from .framing import _Stream
from .state import _Pending
from .wire import _lenenc, _Malformed, _rows_tag, _text


class ServerSide:
    """Result tracking (mixed into MySQLEngine)."""


    def _skip_rows(self, data: bytes, i: int, n: int) -> int:
        """Hot path: count whole row / definition packets in this chunk without parsing."""
        head = self._queue[0]
        if head.state == _ROWS:
            limit = -1
        elif head.state in (_COLDEFS, _DEFS) and head.left > 1:
            limit = head.left - 1  # the last definition takes the slow path (state change)
        else:
            return i
        count = 0
        while i + 4 <= n and count != limit:
            length = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16)
            end = i + 4 + length
            if end > n or length == 0 or length == MAX_PACKET or data[i + 4] >= 0xFE:
                break
            count += 1
            i = end
        if count:
            if limit < 0:
                head.rows += count
            else:
                head.left -= count
        return i

    def _server_keep(self, first: int, first_len: int) -> tuple[int, bool]:
        if not self._queue:
            return 0, False
        head = self._queue[0]
        kind = head.kind
        if kind == "greeting":
            return -1, True  # small; rewritten before the client sees it
        if kind in ("auth", "change_user"):
            return 0, False  # only the first byte matters; auth contents are never read
        if first == 0xFF or first == -1 or (first == 0xFE and first_len < MAX_PACKET):
            return -1, False  # ERR, EOF, OK-as-EOF: small control packets
        if kind == "simple" or head.state == _FIRST:
            return -1, False
        return 0, False  # a row or a definition: relayed without being read

    def _server_packet(self, first: int, payload: bytes, first_len: int, size: int) -> object:
        if not self._queue:
            return None  # unsolicited (a server about to close); relayed as is
        head = self._queue[0]
        kind = head.kind
        if kind == "greeting":
            return self._on_greeting(first, payload)
        if kind in ("auth", "change_user"):
            if first == 0x00 or first == 0xFF:
                self._queue.popleft()
                self._mode = _COMMAND
                self._auth_seq = -1
            else:  # auth switch, more data: the client may answer with one packet, the next id
                self._auth_seq = (self._server.last_seq + 1) & 0xFF
            return None
        if first == 0xFF and len(payload) >= 3 and payload[1] == 0xFF and payload[2] == 0xFF:
            return None  # MariaDB progress report
        if kind == "synthetic":  # cannot be the head when a packet arrives
            raise _Malformed("server answered a command it never received")
        if kind == "simple":
            if first == 0xFF:
                self._failed(head, payload)
            elif first == 0x00:
                self._finished(head, self._ok_tag(payload)[0])
            else:
                self._finished(head, "OK")
            return None
        if kind == "prepare":
            return self._prepare_packet(head, first, payload)
        if kind == "fields":
            if first == 0xFF:
                self._failed(head, payload)
            elif first == 0xFE and (first_len < 9 or self._deprecate_eof and first_len < MAX_PACKET):
                self._finished(head, "OK")
            return None
        # kind == "result"
        state = head.state
        if state == _ROWS:
            if first == 0xFE and (first_len < 9 or self._deprecate_eof and first_len < MAX_PACKET):
                status = self._eof_status(payload)
                if head.cursor or status & SERVER_STATUS_CURSOR_EXISTS:
                    tag = "CURSOR"
                else:
                    tag = f"SELECT {head.rows}"
                self._result_done(head, tag, status)
            elif first == 0xFF:
                self._failed(head, payload)
            else:
                head.rows += 1
        elif state == _FIRST:
            if first == 0x00:
                tag, status = self._ok_tag(payload)
                self._result_done(head, tag, status)
            elif first == 0xFF:
                self._failed(head, payload)
            elif first == 0xFB:
                self._mode = _INFILE  # LOAD DATA LOCAL: the client sends the file, then OK/ERR
            elif first == 0xFE or first == -1:
                raise _Malformed("server sent an empty or EOF packet where a result was due")
            else:
                count, _ = _lenenc(payload, 0)
                if count == 0:
                    raise _Malformed("result set with zero columns")
                head.left = count
                head.rows = 0
                head.cursor = False
                head.state = _COLDEFS
        elif state == _COLDEFS:
            if first == 0xFF:
                self._failed(head, payload)
                return None
            head.left -= 1
            if head.left == 0:
                head.state = _ROWS if self._deprecate_eof else _COLEOF
        elif state == _COLEOF:
            if first != 0xFE:
                raise _Malformed("expected an EOF packet after the column definitions")
            status = self._eof_status(payload)
            if status & SERVER_STATUS_CURSOR_EXISTS:
                head.cursor = True
                self._result_done(head, "CURSOR", status)
            else:
                head.state = _ROWS
        return None

    def _prepare_packet(self, head: _Pending, first: int, payload: bytes) -> None:
        if head.state == _FIRST:
            if first == 0xFF:
                self._failed(head, payload)
                return
            if first != 0x00 or len(payload) < 9:
                raise _Malformed("malformed COM_STMT_PREPARE response")
            stmt_id = int.from_bytes(payload[1:5], "little")
            columns = int.from_bytes(payload[5:7], "little")
            params = int.from_bytes(payload[7:9], "little")
            stmt = head.stmt
            if stmt is not None:
                stmt.num_params = params
                self._stmts[stmt_id] = stmt
            eof = 0 if self._deprecate_eof else 1
            head.left = params + (eof if params else 0) + columns + (eof if columns else 0)
            if head.left == 0:
                self._finished(head, "PREPARE")
            else:
                head.state = _DEFS
        else:
            head.left -= 1
            if head.left == 0:
                self._finished(head, "PREPARE")

    def _result_done(self, head: _Pending, tag: str, status: int) -> None:
        if status & SERVER_MORE_RESULTS_EXISTS:
            head.tags.append(tag)
            head.state = _FIRST
            head.rows = 0
            head.cursor = False
        else:
            self._finished(head, tag)

    def _finished(self, head: _Pending, tag: str) -> None:
        self._queue.popleft()
        if head.statement:
            if head.tags:
                tag = "; ".join([*head.tags, tag])
            self._events.append(StatementFinished(tag))

    def _failed(self, head: _Pending, payload: bytes) -> None:
        self._queue.popleft()
        if head.statement:
            code, message = self._parse_err(payload)
            self._events.append(StatementFailed(code, message))

    def _flush_synthetic(self, st: _Stream, end: int) -> None:
        q = self._queue
        while q and q[0].kind == "synthetic":
            self._inject(st, end, q.popleft().reply)

    @staticmethod
    def _parse_err(payload: bytes) -> tuple[str, str]:
        if len(payload) < 3:
            raise _Malformed("truncated ERR packet")
        errno = int.from_bytes(payload[1:3], "little")
        if len(payload) >= 9 and payload[3] == 0x23:  # '#'
            sqlstate = payload[4:9].decode("ascii", "replace")
            message = payload[9:]
        else:
            sqlstate = "HY000"
            message = payload[3:]
        return f"{errno}/{sqlstate}", _text(message)

    @staticmethod
    def _ok_tag(payload: bytes) -> tuple[str, int]:
        affected, pos = _lenenc(payload, 1)
        _, pos = _lenenc(payload, pos)  # last insert id
        status = int.from_bytes(payload[pos : pos + 2], "little") if pos + 2 <= len(payload) else 0
        return _rows_tag(affected), status

    def _eof_status(self, payload: bytes) -> int:
        if self._deprecate_eof:
            return self._ok_tag(payload)[1]
        return int.from_bytes(payload[3:5], "little") if len(payload) >= 5 else 0

