"""STS endpoints for the AWS broker tests.

Fixtures:
  moto_sts          session-wide moto server (ThreadedMotoServer) on a free 127.0.0.1 port.
                    `moto_sts.endpoint` is its URL. moto answers AssumeRoleWithWebIdentity for
                    any role ARN and any web identity token: it proves the client side (request,
                    parsing, the credentials work against moto's other APIs), not AWS's checks.
  sts_error_server  session-wide tiny HTTP server that answers every STS call with the error
                    named by the first path segment of the endpoint, in STS's own XML shape:
                    sts_endpoint = f"{sts_error_server.url}/InvalidIdentityToken". For the
                    error mapping, since moto never refuses a token. It keeps every request it
                    got (`.requests`: path, headers, body) so tests can see what hoop sent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from xml.sax.saxutils import escape

import pytest

ERRORS = {
    "AccessDenied": (403, "Not authorized to perform sts:AssumeRoleWithWebIdentity"),
    "InvalidIdentityToken": (400, "No OpenIDConnect provider found in your account for http://127.0.0.1"),
    "ExpiredTokenException": (400, "Token expired: current date/time 1795437766 must be before the expiration date/time"),
    "IDPCommunicationError": (400, "Couldn't retrieve verification key from your identity provider"),
    "MalformedPolicyDocument": (400, "Syntax errors in policy."),
}


@dataclass
class MotoSts:
    endpoint: str
    server: object

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])


@pytest.fixture(scope="session")
def moto_sts() -> Iterator[MotoSts]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        pytest.skip("moto[server] is not installed")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield MotoSts(f"http://{host}:{port}", server)
    finally:
        server.stop()


class _ErrorHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        self.server.requests.append(SeenRequest(self.path, dict(self.headers), self.rfile.read(length).decode()))
        code = self.path.strip("/").split("/")[0] or "AccessDenied"
        status, message = ERRORS.get(code, (400, "unexpected"))
        body = (
            '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            f"<Error><Type>Sender</Type><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
            "<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@dataclass
class SeenRequest:
    path: str
    headers: dict
    body: str


@dataclass
class StsErrorServer:
    url: str
    requests: list


@pytest.fixture(scope="session")
def sts_error_server() -> Iterator[StsErrorServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ErrorHandler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, name="sts-errors", daemon=True)
    thread.start()
    try:
        yield StsErrorServer(f"http://127.0.0.1:{server.server_address[1]}", server.requests)
    finally:
        server.shutdown()
        server.server_close()
