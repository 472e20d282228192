"""The gateway's front door with real tokens from the test provider: every refusal has a clear
status and a JSON reason, is recorded, and never takes the gateway down."""

from __future__ import annotations

import base64
import json

import pytest


def _forge(token: str, **changes) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    new_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{new_payload}.{signature}"


def _port(gateway, name: str) -> int:
    import tomllib

    target = tomllib.loads(gateway.config.read_text())["connections"][name]["target"]
    return int(target.rsplit(":", 1)[1])


def test_missing_token_is_407_and_recorded(gateway):
    status, body = gateway.connect_status(f"app-db:{_port(gateway, 'app-db')}", None)
    assert status == 407 and "missing bearer token" in body["error"]
    rec = [r for r in gateway.records(kind="connect") if r["code"] == "407" and "missing" in (r["message"] or "")]
    assert rec and rec[-1]["outcome"] == "refused" and rec[-1]["connection"] == "app-db"


def test_tampered_token_is_407(gateway, tokens):
    forged = _forge(tokens("bob"), sub="alice", groups=["dba"])
    status, body = gateway.connect_status(f"app-db:{_port(gateway, 'app-db')}", forged)
    assert status == 407, (status, body)
    assert "signature" in body["error"].lower()
    recs = [r for r in gateway.records(kind="connect") if r["code"] == "407" and "signature" in (r["message"] or "").lower()]
    assert recs and recs[-1]["sub"] is None  # the forged claims never became an identity


def test_token_from_untrusted_issuer_is_407(gateway, oidc_provider_factory):
    other = oidc_provider_factory(id_token_ttl=299)
    status, body = gateway.connect_status(f"app-db:{_port(gateway, 'app-db')}", other.device_login("alice")["id_token"])
    assert status == 407 and "untrusted issuer" in body["error"]


def test_unknown_connection_is_404_not_an_open_proxy(gateway, tokens):
    for target in ("nosuch:5432", "127.0.0.1:5432", "localhost:22", f"app-db:{_port(gateway, 'app-db') + 1}"):
        status, body = gateway.connect_status(target, tokens("alice"))
        assert status == 404, (target, status, body)
    recs = gateway.records(kind="connect", sub="alice")
    assert {"nosuch", "127.0.0.1", "localhost"} <= {r["connection"] for r in recs if r["code"] == "404"}


def test_identity_not_allowed_is_403_and_recorded(gateway, tokens):
    status, body = gateway.connect_status(f"admin-db:{_port(gateway, 'admin-db')}", tokens("bob"))
    assert status == 403 and "may not use admin-db" in body["error"]
    rec = gateway.records(kind="connect", sub="bob", connection="admin-db")[-1]
    assert rec["outcome"] == "refused" and rec["code"] == "403" and rec["email"] == "bob@example.com"


def test_unreachable_target_is_502(gateway, tokens):
    status, body = gateway.connect_status(f"dead-db:{_port(gateway, 'dead-db')}", tokens("alice"))
    assert status == 502 and "unreachable" in body["error"]


@pytest.mark.parametrize(
    "garbage",
    [b"\x16\x03\x01hello\r\n\r\n", b"GET\r\n\r\n", b"CONNECT\r\n\r\n", b"CONNECT app-db HTTP/1.1\r\n\r\n", b"X" * 20000, b"\x00\xff\r\n\r\n"],
)
def test_garbage_instead_of_connect_gets_a_status_and_gateway_survives(gateway, garbage):
    answer = gateway.raw(garbage)
    assert answer.startswith(b"HTTP/1.1 4"), answer[:80]
    assert gateway.alive()
    status, body = gateway.connect_status("x:1", None)  # still serving
    assert status == 407


def test_healthz_and_connections_api(gateway, tokens):
    import requests

    health = requests.get(gateway.url + "/healthz", verify=gateway.ca_file, timeout=5)
    assert health.status_code == 200 and health.json()["ok"] is True
    listing = requests.get(gateway.url + "/api/connections", headers={"Authorization": f"Bearer {tokens('bob')}"}, verify=gateway.ca_file, timeout=5)
    names = {c["name"] for c in listing.json()["connections"]}
    assert "app-db" in names and "admin-db" not in names
    assert all("target" not in c and "host" not in c for c in listing.json()["connections"])
    anonymous = requests.get(gateway.url + "/api/connections", verify=gateway.ca_file, timeout=5)
    assert anonymous.status_code == 401


def test_hoop_connections_lists_what_the_caller_may_use(gateway, as_user):
    from tests.support.cli import run_subprocess

    result = run_subprocess(["connections", "--json"], as_user("alice"))
    assert result.code == 0, result.err
    assert "app-db" in {c["name"] for c in json.loads(result.out)["connections"]}


def test_plain_tcp_without_tls_is_refused(gateway):
    import socket

    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"CONNECT app-db:5432 HTTP/1.1\r\n\r\n")
        try:
            data = sock.recv(100)
        except ConnectionResetError:
            data = b""
    # Nothing in plain HTTP at all: a TLS alert (content type 21) or a closed socket.
    assert b"HTTP" not in data, data
    assert data == b"" or data[:1] == b"\x15", data
    assert gateway.alive()


def test_a_refused_api_call_is_recorded_as_an_api_refusal_with_the_callers_identity(gateway, tokens):
    """Not as a refused CONNECT with no one behind it (issue 18)."""
    import requests

    answer = requests.post(gateway.url + "/api/approvals/nosuchid/approve", headers={"Authorization": f"Bearer {tokens('bob')}"},
                           json={}, verify=gateway.ca_file, timeout=10)
    assert answer.status_code in (403, 404)
    recs = [r for r in gateway.records(kind="api", sub="bob") if (r["details"] or {}).get("path") == "/api/approvals/nosuchid/approve"]
    assert recs and recs[-1]["outcome"] == "refused" and recs[-1]["details"]["method"] == "POST"
    assert recs[-1]["issuer"] and recs[-1]["code"] == str(answer.status_code)
    anonymous = requests.get(gateway.url + "/api/audit", verify=gateway.ca_file, timeout=10)
    assert anonymous.status_code == 401 or anonymous.status_code == 407 or anonymous.status_code == 403
    assert any((r["details"] or {}).get("path") == "/api/audit" and r["sub"] is None for r in gateway.records(kind="api"))
