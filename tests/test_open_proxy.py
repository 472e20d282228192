"""The gateway is not an open proxy: a CONNECT only ever reaches a registered connection's target.

Two listeners on 127.0.0.1 count every connection they get: the registered target of `app-db`
(a `tcp` connection) and a sentinel on another port. Every trick for naming another place —
an IP, `localhost`, the sentinel's port on the registered name, userinfo, path segments,
percent-encoding, NUL bytes, absolute URIs, Host headers, very long names, a second request
behind the first, a CONNECT inside the tunnel — is sent with a valid token for a person who
may use `app-db`. The sentinel must get zero connections, and the registered target exactly
one per `200` answer.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest

from tests.support.gateway import parse_response, start_gateway


class CountingListener:
    """Accepts on 127.0.0.1:0 and keeps what each connection sent."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytearray] = []
        self._settles = 0  # our own connections (settled_count), not counted
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def count(self) -> int:
        return len(self.received) - self._settles

    def settled_count(self, timeout: float = 5) -> int:
        """`count` once every connection made before this call has been accepted: the kernel
        hands connections to accept() in the order their handshakes completed, so when our
        own (marked) one has arrived, so has any earlier one."""
        marker = f"settle-{self._settles}-{self.port}".encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(marker)
            deadline = time.monotonic() + timeout
            while not any(bytes(b) == marker for b in self.received):
                assert time.monotonic() < deadline, "the listener never accepted its own marker connection"
                time.sleep(0.01)
        self._settles += 1
        return self.count

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            buf = bytearray()
            self.received.append(buf)
            threading.Thread(target=self._read, args=(conn, buf), daemon=True).start()

    @staticmethod
    def _read(conn, buf) -> None:
        conn.settimeout(5)
        with conn:
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
            except OSError:
                return

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture(scope="module")
def listeners():
    registered, sentinel = CountingListener(), CountingListener()
    yield registered, sentinel
    registered.close()
    sentinel.close()


@pytest.fixture(scope="module")
def proxy_gateway(oidc_provider, listeners, tmp_path_factory):
    registered, sentinel = listeners
    workdir = tmp_path_factory.mktemp("open-proxy-gateway")
    config = f"""
[gateway]
listen = "127.0.0.1:0"
audit_store = "audit.db"

[[issuers]]
issuer = "{oidc_provider.issuer}"
audiences = ["hoop-cli"]

[connections.app-db]
protocol = "tcp"
target = "127.0.0.1:{registered.port}"
groups = ["dba"]
"""
    with start_gateway(config, workdir) as gw:
        yield gw


@pytest.fixture(scope="module")
def token(oidc_provider):
    return oidc_provider.device_login("alice")["id_token"]  # alice is in "dba"


def exchange(gw, raw: bytes, then: bytes = b"") -> tuple[int, dict, bytes]:
    """Send a request head; on 200 send `then` through the tunnel. Returns status, body, rest."""
    ctx = ssl.create_default_context(cafile=gw.ca_file)
    answer = b""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock, ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        tls.sendall(raw)
        while True:
            try:
                data = tls.recv(65536)
            except OSError:
                break
            if not data:
                break
            answer += data
            if answer.startswith(b"HTTP/1.1 200 ") and b"\r\n\r\n" in answer:
                if then:
                    tls.sendall(then)
                    time.sleep(0.2)
                break
    status, body = parse_response(answer)
    return status, body, answer


def connect_head(target: str, token: str, extra: str = "") -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}Proxy-Authorization: Bearer {token}\r\n\r\n".encode("latin-1")


def attempts(registered: int, sentinel: int) -> dict[str, bytes | str]:
    """name -> CONNECT target (str) or a whole raw request (bytes, with {TOKEN} to fill in)."""
    s = sentinel
    return {
        "unregistered-name": f"nosuch:{s}",
        "ip": f"127.0.0.1:{s}",
        "ip-registered-port": f"127.0.0.1:{registered}",
        "localhost": f"localhost:{s}",
        "localhost-ssh": "localhost:22",
        "ipv6-literal": f"[::1]:{s}",
        "ipv6-bare": f"::1:{s}",
        "ip-as-integer": f"2130706433:{s}",
        "ip-as-hex": f"0x7f000001:{s}",
        "ip-short-form": f"127.1:{s}",
        "zero-address": f"0.0.0.0:{s}",
        "registered-name-sentinel-port": f"app-db:{s}",
        "registered-name-port-plus-one": f"app-db:{registered + 1}",
        "registered-name-port-zero": "app-db:0",
        "registered-name-port-too-big": f"app-db:{registered + 65536}",
        "registered-name-negative-port": f"app-db:-{registered}",
        "registered-name-plus-port": f"app-db:+{registered}",
        "registered-name-no-port": "app-db",
        "userinfo-evil": "app-db@evil:5432",
        "userinfo-sentinel": f"app-db@127.0.0.1:{s}",
        "name-port-userinfo": f"app-db:{registered}@127.0.0.1:{s}",
        "double-port": f"app-db:{registered}:{s}",
        "dot-dot-slash": f"../app-db:{registered}",
        "path-segments": f"app-db/../127.0.0.1:{s}",
        "percent-nul": f"app-db%00:{registered}",
        "percent-encoded-name": f"%61pp-db:{registered}",
        "trailing-dot": f"app-db.:{registered}",
        "upper-case": f"APP-DB:{registered}",
        "nul-byte": f"app-db\x00:{registered}",
        "tab": f"app-db\t:{registered}",
        "backslash": f"app-db\\127.0.0.1:{s}",
        "absolute-uri": f"http://127.0.0.1:{s}/",
        "absolute-uri-registered": f"http://app-db:{registered}/",
        "very-long-name": "a" * 6000 + f":{s}",
        "very-long-registered-prefix": "app-db" + "x" * 5000 + f":{registered}",
        "oversized-head": "a" * 20000 + f":{s}",
        "non-ascii": f"app-db\u00e9:{registered}",
        "raw-get-absolute": b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer {TOKEN}\r\n\r\n" % (s, s),
        "raw-pipelined-second-connect": (
            b"CONNECT nosuch:%d HTTP/1.1\r\nProxy-Authorization: Bearer {TOKEN}\r\n\r\n"
            b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nProxy-Authorization: Bearer {TOKEN}\r\n\r\n" % (s, s)
        ),
        "raw-http10": b"CONNECT 127.0.0.1:%d HTTP/1.0\r\nProxy-Authorization: Bearer {TOKEN}\r\n\r\n" % s,
        "raw-two-spaces": b"CONNECT  127.0.0.1:%d HTTP/1.1\r\nProxy-Authorization: Bearer {TOKEN}\r\n\r\n" % s,
        "raw-lf-only": b"CONNECT 127.0.0.1:%d HTTP/1.1\nProxy-Authorization: Bearer {TOKEN}\n\n\r\n\r\n" % s,
    }




def test_positive_control_the_registered_name_reaches_the_registered_target(proxy_gateway, listeners, token):
    registered, sentinel = listeners
    before = registered.count
    status, body, _ = exchange(proxy_gateway, connect_head(f"app-db:{registered.port}", token), then=b"hello")
    assert status == 200, body
    deadline = time.monotonic() + 5
    while registered.count == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert registered.settled_count() == before + 1
    assert sentinel.settled_count() == 0


def test_no_trick_reaches_anything_but_the_registered_target(proxy_gateway, listeners, token):
    registered, sentinel = listeners
    before = registered.count
    answers = {}
    for name, attempt in attempts(registered.port, sentinel.port).items():
        if isinstance(attempt, bytes):
            raw = attempt.replace(b"{TOKEN}", token.encode())
        else:
            raw = connect_head(attempt, token)
        status, body, answer = exchange(proxy_gateway, raw)
        answers[name] = status
        assert status in (400, 404, 405, 431), (name, status, answer[:200])
    assert sentinel.settled_count() == 0, answers
    assert registered.settled_count() == before, answers
    assert proxy_gateway.alive()


def test_host_headers_do_not_redirect_a_valid_connect(proxy_gateway, listeners, token):
    registered, sentinel = listeners
    before = registered.count
    target = f"app-db:{registered.port}"
    for extra in (f"Host: 127.0.0.1:{sentinel.port}\r\n", f"X-Forwarded-Host: 127.0.0.1:{sentinel.port}\r\n",
                  f"Forwarded: host=127.0.0.1:{sentinel.port}\r\n", f"X-Hoop-Target: 127.0.0.1:{sentinel.port}\r\n"):
        raw = f"CONNECT {target} HTTP/1.1\r\n{extra}Proxy-Authorization: Bearer {token}\r\n\r\n".encode()
        status, body, _ = exchange(proxy_gateway, raw)
        assert status == 200, (extra, body)
    deadline = time.monotonic() + 5
    while registered.count < before + 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert registered.settled_count() == before + 4
    assert sentinel.settled_count() == 0


def test_a_connect_inside_the_tunnel_is_just_bytes_for_the_registered_target(proxy_gateway, listeners, token):
    registered, sentinel = listeners
    inner = f"CONNECT 127.0.0.1:{sentinel.port} HTTP/1.1\r\nProxy-Authorization: Bearer {token}\r\n\r\n".encode()
    status, body, answer = exchange(proxy_gateway, connect_head(f"app-db:{registered.port}", token), then=inner)
    assert status == 200, body
    assert answer.endswith(b"\r\n\r\n")  # nothing came back: nobody answered the inner CONNECT
    deadline = time.monotonic() + 5
    while not any(bytes(b) == inner for b in registered.received) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert any(bytes(b) == inner for b in registered.received)
    assert sentinel.settled_count() == 0


def test_refusals_are_recorded_with_the_name_asked_for(proxy_gateway, listeners, token):
    registered, sentinel = listeners
    exchange(proxy_gateway, connect_head(f"127.0.0.1:{sentinel.port}", token))
    recs = proxy_gateway.records(kind="connect", connection="127.0.0.1")
    assert recs and all(r["code"] == "404" and r["outcome"] == "refused" and r["sub"] == "alice" for r in recs)


def test_the_api_never_dials_either(proxy_gateway, listeners, token):
    import requests

    registered, sentinel = listeners
    for path in (f"/api/connections/127.0.0.1:{sentinel.port}", "/api/connections/../../etc/passwd",
                 f"/api/connections/app-db%2F..%2F127.0.0.1:{sentinel.port}", f"//127.0.0.1:{sentinel.port}/"):
        resp = requests.get(proxy_gateway.url + path, headers={"Authorization": f"Bearer {token}"}, verify=proxy_gateway.ca_file, timeout=10)
        assert resp.status_code in (400, 404), (path, resp.status_code)
    assert sentinel.settled_count() == 0
