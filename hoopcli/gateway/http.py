"""The gateway's HTTP/1.1 front door, sans-io: parse one request head, build responses.

The head is the only HTTP the tunnel speaks: after `200` on a CONNECT the stream is the
database's own protocol. Heads are capped so a client cannot make the gateway buffer forever.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]

    def bearer(self, header: str) -> str | None:
        value = self.headers.get(header, "")
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    @property
    def content_length(self) -> int:
        value = self.headers.get("content-length", "0")
        if not (value.isascii() and value.isdigit()):
            raise BadRequest(400, "bad Content-Length")
        # Compare lengths first: int() of thousands of digits is slow and then refused.
        if len(value.lstrip("0")) > len(str(MAX_BODY_BYTES)) or int(value) > MAX_BODY_BYTES:
            raise BadRequest(413, "request body too large")
        return int(value)


def find_head_end(buffer: bytes | bytearray) -> int:
    """Index just past the blank line ending the head, or -1 when more bytes are needed."""
    end = buffer.find(b"\r\n\r\n")
    if end == -1:
        if len(buffer) > MAX_HEAD_BYTES:
            raise BadRequest(431, "request head too large")
        return -1
    if end > MAX_HEAD_BYTES:
        raise BadRequest(431, "request head too large")
    return end + 4


def parse_head(head: bytes) -> Request:
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "not an HTTP/1.1 request line")
    method, target, _ = parts
    if not method.isalpha() or not method.isupper() or not target:
        raise BadRequest(400, "bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header line")
        headers[name.lower()] = value.strip()
    return Request(method, target, headers)


def parse_connect_authority(target: str) -> tuple[str, int]:
    """`name:port` → (name, port). The name is a registered connection, never a host."""
    name, sep, port = target.rpartition(":")
    if not sep or not name or not (port.isascii() and port.isdigit() and len(port) <= 5) or not (0 < int(port) < 65536):
        raise BadRequest(400, "CONNECT needs name:port")
    return name, int(port)


def response(status: int, body: dict | None = None, extra_headers: dict | None = None) -> bytes:
    payload = json.dumps(body if body is not None else {}, default=str).encode()
    headers = {
        "Content-Type": "application/json",
        "Content-Length": str(len(payload)),
        "Connection": "close",
        "Cache-Control": "no-store",
        **(extra_headers or {}),
    }
    if status == 407:
        headers.setdefault("Proxy-Authenticate", 'Bearer realm="hoop"')
    head = f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + payload


CONNECT_OK = b"HTTP/1.1 200 Connection established\r\n\r\n"
