"""The gateway API client (gateway_api.py over auth/http.fetch: http.client + ssl, no requests):
TLS verified against the profile's CA or the system store, HTTPS_PROXY/NO_PROXY as the tunnel
follows them, redirects never followed, and every failure one clear error with a hint."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hoopcli.auth.http import fetch, proxy_for_host
from hoopcli.errors import ConfigError, Denied, NotFound, NotLoggedIn, Unreachable
from hoopcli.gateway_api import GatewayAPI


class _Recorder(BaseHTTPRequestHandler):
    answers: dict = {}  # path -> (status, headers, body bytes)

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": self.rfile.read(length)})
        status, headers, body = self.server.answers.get(self.path.split("?")[0], (200, {}, b'{"connections": []}'))
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", **headers}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def _serve(tls: ssl.SSLContext | None = None, answers: dict | None = None):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen, server.answers = [], answers or {}
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def plain(no_proxy_env):
    server = _serve()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def dev_tls(tmp_path_factory):
    from hoopcli.gateway.tls import make_dev_tls, server_context

    paths = make_dev_tls(tmp_path_factory.mktemp("tls"), hostnames=("127.0.0.1",))
    other = make_dev_tls(tmp_path_factory.mktemp("other-ca"), hostnames=("127.0.0.1",))
    return paths, other["ca"], server_context(paths["cert"], paths["key"])


@pytest.fixture
def tls_server(dev_tls, no_proxy_env):
    server = _serve(tls=dev_tls[2])
    yield server
    server.shutdown()


def _url(server, scheme="http", host="127.0.0.1") -> str:
    return f"{scheme}://{host}:{server.server_address[1]}"


# ---- requests as the gateway sees them -----------------------------------------------------


def test_bearer_query_and_json_body_reach_the_gateway(plain):
    plain.answers["/api/approvals/req-1/approve"] = (200, {}, b'{"status": "approved"}')
    api = GatewayAPI(_url(plain), "tok-123")
    plain.answers["/api/approvals"] = (200, {}, b'{"approvals": [{"id": "req-1"}]}')
    assert api.approvals("pending") == [{"id": "req-1"}]
    assert api.decide("req-1", "approve", "looks fine") == {"status": "approved"}
    get, post = plain.seen[-2], plain.seen[-1]
    assert get["method"] == "GET" and get["path"] == "/api/approvals?status=pending"
    assert get["headers"]["Authorization"] == "Bearer tok-123" and get["headers"]["User-Agent"] == "hoop"
    assert post["method"] == "POST" and post["path"] == "/api/approvals/req-1/approve"
    assert post["headers"]["Content-Type"] == "application/json"
    assert json.loads(post["body"]) == {"reason": "looks fine"}


def test_connection_names_are_quoted_into_one_path_segment(plain):
    plain.answers["/api/connections/a%2Fb%20c"] = (200, {}, b'{"name": "a/b c"}')
    assert GatewayAPI(_url(plain), "t").connection("a/b c") == {"name": "a/b c"}
    assert plain.seen[-1]["path"] == "/api/connections/a%2Fb%20c"


@pytest.mark.parametrize(
    "status, body, kind, words",
    [
        (401, b'{"error": "token expired"}', NotLoggedIn, "the gateway refused the session: token expired"),
        (403, b'{"error": "alice may not use x"}', Denied, "the gateway denied access: alice may not use x"),
        (404, b'{"error": "no connection named x"}', NotFound, "the gateway says: no connection named x"),
        (500, b"<html>oops</html>", Unreachable, "the gateway answered 500: Internal Server Error"),
        (502, b'["not", "an", "object"]', Unreachable, "the gateway answered 502: Bad Gateway"),
    ],
)
def test_error_statuses_become_hoop_errors(plain, status, body, kind, words):
    plain.answers["/api/connections/x"] = (status, {}, body)
    with pytest.raises(kind) as caught:
        GatewayAPI(_url(plain), "t").connection("x")
    assert caught.value.message == words and caught.value.hint


def test_redirects_are_not_followed(plain):
    other = _serve()
    try:
        plain.answers["/api/connections"] = (302, {"Location": _url(other) + "/api/connections"}, b"")
        with pytest.raises(Unreachable, match="answered 302"):
            GatewayAPI(_url(plain), "secret-bearer").connections()
        assert other.seen == []  # the bearer never went to the other address
    finally:
        other.shutdown()


def test_a_header_with_a_line_break_is_refused_and_not_echoed(plain):
    with pytest.raises(NotLoggedIn) as caught:
        GatewayAPI(_url(plain), "tok\r\nX-Injected: 1").connections()
    assert "tok" not in caught.value.message and "X-Injected" not in caught.value.message
    assert plain.seen == []


# ---- failures ------------------------------------------------------------------------------


def test_nothing_listening_is_cannot_reach(no_proxy_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unreachable) as caught:
        GatewayAPI(f"https://127.0.0.1:{port}", "t").connections()
    assert caught.value.message == f"cannot reach the gateway at 127.0.0.1:{port}"
    assert "hoop config show" in caught.value.hint


def test_a_silent_gateway_is_a_timeout(no_proxy_env):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(Unreachable, match="did not answer in time"):
            fetch("GET", f"http://127.0.0.1:{port}/api/connections", what="gateway", timeout=(2, 0.3))


def test_plain_http_only_to_loopback():
    with pytest.raises(ConfigError, match="is not https"):
        GatewayAPI("http://gateway.example.com:8443", "t")


# ---- TLS -----------------------------------------------------------------------------------


def test_tls_verified_against_the_profile_ca(tls_server, dev_tls):
    paths, _, _ = dev_tls
    assert GatewayAPI(_url(tls_server, "https"), "t", paths["ca"]).connections() == []


@pytest.mark.parametrize("which", ["system store", "another CA"])
def test_a_certificate_not_signed_by_the_trusted_ca_is_refused(tls_server, dev_tls, which):
    ca_file = "" if which == "system store" else dev_tls[1]
    with pytest.raises(Unreachable) as caught:
        GatewayAPI(_url(tls_server, "https"), "secret-bearer", ca_file).connections()
    assert caught.value.message.startswith("TLS verification failed talking to the gateway at 127.0.0.1:")
    assert "hoop config set ca_file" in caught.value.hint
    assert tls_server.seen == []


def test_the_host_name_is_checked(tls_server, dev_tls):
    # The certificate names 127.0.0.1 only; the same server reached as "localhost" is refused.
    with pytest.raises(Unreachable, match="TLS verification failed"):
        GatewayAPI(_url(tls_server, "https", host="localhost"), "t", dev_tls[0]["ca"]).connections()


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_an_unusable_ca_file_is_a_config_error(tmp_path, no_proxy_env, content):
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_text(content)
    with pytest.raises(ConfigError) as caught:
        GatewayAPI("https://127.0.0.1:1", "t", str(ca_file)).connections()
    assert str(ca_file) in caught.value.message and "ca_file" in caught.value.hint


# ---- the forward proxy ---------------------------------------------------------------------


class _RefusingProxy:
    """Records each request line and answers 403: enough to see whether hoop used it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                self.lines.append(head.split(b"\r\n")[0].decode())
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")


def test_https_proxy_is_asked_to_connect_and_no_proxy_bypasses_it(tls_server, dev_tls, monkeypatch):
    proxy = _RefusingProxy()
    port = tls_server.server_address[1]
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    api = GatewayAPI(_url(tls_server, "https"), "secret-bearer", dev_tls[0]["ca"])
    with pytest.raises(Unreachable, match=f"the proxy 127.0.0.1:{proxy.port} refused the CONNECT to 127.0.0.1:{port}: 403"):
        api.connections()
    assert [line.rsplit(" ", 1)[0] for line in proxy.lines] == [f"CONNECT 127.0.0.1:{port}"]
    assert tls_server.seen == []
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert api.connections() == []
    assert len(proxy.lines) == 1 and len(tls_server.seen) == 1
    proxy.sock.close()


def test_the_api_and_the_tunnel_pick_the_same_proxy(monkeypatch):
    from hoopcli.tunnel import GatewayAddress, proxy_for

    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:8080")
    monkeypatch.setenv("NO_PROXY", ".internal")
    for host in ("gw.example.com", "gw.internal"):
        assert proxy_for(GatewayAddress(host, 8443, True)) == proxy_for_host(host)
    assert proxy_for_host("gw.example.com") == ("proxy.corp", 8080)
    assert proxy_for_host("gw.internal") is None


def test_the_api_and_the_tunnel_share_one_verifying_tls_context(dev_tls):
    from hoopcli.auth.http import tls_context
    from hoopcli.tunnel import client_tls_context

    ca = dev_tls[0]["ca"]
    ctx = tls_context(ca)
    assert client_tls_context(ca) is ctx and tls_context("") is tls_context("") and tls_context("") is not ctx
    for c in (ctx, tls_context("")):
        assert c.verify_mode == ssl.CERT_REQUIRED and c.check_hostname and c.minimum_version >= ssl.TLSVersion.TLSv1_2
