"""A token with a line break never reaches the gateway: it would add headers of its own to the
CONNECT request (`Proxy-Authorization: Bearer <token>`). A plain socket stands in for the
gateway and counts what it receives; the real CONNECT path is in test_exec_postgres.py."""

from __future__ import annotations

import asyncio
import socket

import pytest

from hoopcli.errors import NotLoggedIn
from hoopcli.tunnel import Tunnel


@pytest.mark.parametrize("token", ["abc\r\nX-Injected: 1", "abc\ndef", "abc\0def"])
def test_a_token_with_a_line_break_is_refused_before_anything_is_sent(token):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        tunnel = Tunnel(f"http://127.0.0.1:{port}", "app-db", 5432, token_source=lambda: token)
        with pytest.raises(NotLoggedIn) as caught:
            asyncio.run(tunnel.open_leg())
        assert token not in str(caught.value) and "line break" in str(caught.value)
        with pytest.raises(socket.timeout):
            listener.accept()  # not even a connection was made
