"""Framing: physical packets (3-byte length + sequence id, 16 MiB continuations) into logical
ones, in chunks split anywhere. A packet can be withheld until its fate is known; row data is
never buffered. The phase modules decide what each packet means (`_client_keep`,
`_server_keep`, `_client_packet`, `_server_packet`)."""

from __future__ import annotations

from ..base import MAX_MESSAGE_BYTES
from .constants import _COMMAND, _DROP, _FORWARD, _INFILE, MAX_PACKET
from .wire import _Malformed


class _Stream:
    """Framing state of one direction."""

    __slots__ = (
        "direction",
        "hdr",
        "remaining",
        "more",
        "cont",
        "awaiting_first",
        "pending",
        "hold",
        "held",
        "keep",
        "buf",
        "size",
        "first",
        "first_len",
        "seq",
        "last_seq",
        "too_large",
        "pkt_start",
        "parts",
        "emit_from",
        "data",
    )

    def __init__(self, direction: str) -> None:
        self.direction = direction
        self.hdr = bytearray()  # a header split across chunks
        self.remaining = 0  # payload bytes left in the current physical packet
        self.more = False  # the current physical packet is 0xFFFFFF long: another follows
        self.cont = False  # the next header continues the current logical packet
        self.awaiting_first = False  # header read, first payload byte not yet seen
        self.pending = False  # undecided packet: its bytes are withheld until decided
        self.hold = False  # decided to withhold the whole packet until it is complete
        self.held = bytearray()  # withheld raw bytes from earlier chunks
        self.keep = 0  # payload bytes to collect: 0 none, -1 all, n a prefix
        self.buf = bytearray()
        self.size = 0  # payload bytes of the logical packet seen so far
        self.first = -1  # first payload byte (-1: empty packet)
        self.first_len = 0  # length of the first physical packet
        self.seq = 0  # sequence id of the logical packet's first physical packet
        self.last_seq = 0  # ... and of its last one (a reply to it takes the next id)
        self.too_large = False  # a withheld command outgrew MAX_MESSAGE_BYTES: being discarded
        self.pkt_start = -1  # where the current packet began in this chunk (-1: earlier)
        self.parts: list[bytes] = []
        self.emit_from = 0
        self.data = b""


class FramedEngine:
    """The byte loop shared by both directions (mixed into MySQLEngine)."""

    def _run(self, st: _Stream, data: bytes) -> bytes:
        n = len(data)
        i = 0
        st.parts = parts = []
        st.emit_from = 0
        st.data = data
        st.pkt_start = -1
        server = st.direction == "server"
        while i < n:
            if st.remaining == 0 and not st.awaiting_first:
                # ---- at a header ------------------------------------------------------------
                if not st.hdr:
                    if server and not st.cont and self._queue:
                        i = self._skip_rows(data, i, n)
                        if i >= n:
                            break
                    if not st.cont:
                        st.pkt_start = i
                        st.pending = self._may_hold(st)
                    if i + 4 <= n:
                        length = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16)
                        seq = data[i + 3]
                        i += 4
                    else:
                        st.hdr += data[i:]
                        i = n
                        break
                else:
                    take = min(4 - len(st.hdr), n - i)
                    st.hdr += data[i : i + take]
                    i += take
                    if len(st.hdr) < 4:
                        break
                    h = st.hdr
                    length = h[0] | (h[1] << 8) | (h[2] << 16)
                    seq = h[3]
                    st.hdr = bytearray()
                st.remaining = length
                st.more = length == MAX_PACKET
                st.last_seq = seq
                if st.cont:
                    st.cont = False
                    if length == 0:
                        self._complete(st, i)
                    continue
                st.seq = seq
                st.first_len = length
                st.size = 0
                st.keep = 0
                if length == 0:
                    st.first = -1
                    self._decide(st, -1)
                    self._complete(st, i)
                else:
                    st.awaiting_first = True
                continue
            if st.awaiting_first:
                st.awaiting_first = False
                st.first = data[i]
                self._decide(st, data[i])
            # ---- inside a payload -----------------------------------------------------------
            take = st.remaining if st.remaining <= n - i else n - i
            keep = st.keep
            if keep:
                if keep < 0:
                    if st.size + take > MAX_MESSAGE_BYTES:
                        self._outgrown(st)  # keeps nothing more of it (or raises)
                    elif take == st.first_len and st.size == 0 and not st.more:
                        st.buf = data[i : i + take]  # type: ignore[assignment]  # whole, one copy
                    else:
                        st.buf += data[i : i + take]
                else:
                    room = keep - len(st.buf)
                    if room > 0:
                        if st.size == 0 and not st.more and take == st.first_len:
                            st.buf = data[i : i + min(take, room)]  # type: ignore[assignment]
                        else:
                            st.buf += data[i : i + min(take, room)]
            i += take
            st.size += take
            st.remaining -= take
            if st.remaining == 0:
                if st.more:
                    st.cont = True
                else:
                    self._complete(st, i)
        # ---- chunk end ------------------------------------------------------------------------
        if st.pending or st.hold:
            s = st.pkt_start if st.pkt_start > 0 else 0
            if s > st.emit_from:
                parts.append(data[st.emit_from : s])
            if st.too_large:
                return b"".join(parts)  # the rest of this chunk belongs to the discarded packet
            st.held += data[s:]
            if len(st.held) > MAX_MESSAGE_BYTES + 4096:
                self._outgrown(st)
            return b"".join(parts)
        if not parts and st.emit_from == 0:
            return data
        if st.emit_from < n:
            parts.append(data[st.emit_from :])
        return b"".join(parts)

    def _outgrown(self, st: _Stream) -> None:
        """A withheld message passed MAX_MESSAGE_BYTES. A client command (never forwarded yet)
        is discarded as it arrives and refused when it ends; anything else ends the session."""
        if st.direction == "client" and st.hold and self._mode == _COMMAND:
            st.too_large = True
            st.keep = 0
            st.buf = bytearray()
            st.held = bytearray()
            return
        raise _Malformed(f"{st.direction} message larger than {MAX_MESSAGE_BYTES} bytes")

    def _decide(self, st: _Stream, first: int) -> None:
        """First payload byte known: choose how much to keep and whether to withhold it."""
        if st.direction == "server":
            keep, hold = self._server_keep(first, st.first_len)
        else:
            keep, hold = self._client_keep(first, st.seq)
        st.keep = keep
        st.buf = bytearray()
        if st.pending:
            st.pending = False
            if hold:
                st.hold = True  # bytes before the packet are cut off only if it is not forwarded
            elif st.held:
                st.parts.append(bytes(st.held))
                st.held = bytearray()

    def _complete(self, st: _Stream, end: int) -> None:
        """A logical packet ended at `end` in the current chunk."""
        payload = bytes(st.buf) if isinstance(st.buf, bytearray) else st.buf
        st.buf = bytearray()
        if st.direction == "server":
            action = self._server_packet(st.first, payload, st.first_len, st.size)
        elif st.too_large:
            st.too_large = False
            action = self._refuse_oversize(st.first, st.size)
        else:
            action = self._client_packet(st.first, st.seq, payload, st.size)
        if st.hold:
            st.hold = False
            if action is _FORWARD or action is None:
                if st.held:  # the packet began in an earlier chunk: nothing precedes it here
                    st.parts.append(bytes(st.held))
                    st.held = bytearray()
            else:
                start = st.pkt_start if st.pkt_start > 0 else 0
                if start > st.emit_from:
                    st.parts.append(st.data[st.emit_from : start])
                st.held = bytearray()
                if action is not _DROP:  # replacement bytes
                    st.parts.append(action)  # type: ignore[arg-type]
                st.emit_from = end
        if st.direction == "server":
            self._flush_synthetic(st, end)

    def _inject(self, st: _Stream, end: int, payload: bytes) -> None:
        if end > st.emit_from:
            st.parts.append(st.data[st.emit_from : end])
        st.parts.append(payload)
        st.emit_from = end

    def _may_hold(self, st: _Stream) -> bool:
        if st.direction == "server":
            return self._queue[0].kind == "greeting" if self._queue else False
        return self._mode != _INFILE

