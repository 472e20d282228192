"""Socket and event-loop choices shared by both relays (the local tunnel and the gateway)."""

from __future__ import annotations

import asyncio
import os
import socket

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def set_nodelay(transport) -> None:
    """TCP_NODELAY: a relay that waits to fill packets adds latency to every round trip."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (a measurable win on the relay path, see bench/); plain asyncio
    otherwise or with HOOP_NO_UVLOOP=1."""
    if not os.environ.get("HOOP_NO_UVLOOP"):
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()
