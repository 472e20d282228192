"""Plain TCP connections: bytes pass untouched; the session record carries the byte counts."""

from __future__ import annotations

from hoopcli.gateway.protocols.base import Output


class TcpEngine:
    __slots__ = ()

    def from_client(self, data: bytes) -> Output:
        return Output(to_server=data)

    def from_server(self, data: bytes) -> Output:
        return Output(to_client=data)
