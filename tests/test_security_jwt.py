"""JWT attacks against a real `hoop gateway`: every forged, stale or misdirected token is
refused with 407 and a reason, and each refusal is a `connect` record in the audit trail.

The gateway here trusts two issuers: the test OpenID provider (real device-flow id_tokens)
and `tests/support/jwks_issuer.py`, an issuer whose RSA key the test holds, so tokens that
are validly signed but wrong in exactly one claim can be made. A valid token from each issuer
is accepted (the positive controls), so every refusal below is caused by the one thing the
variant changes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
import ssl
import time
from pathlib import Path

import pytest
import requests

from tests.support.gateway import parse_response, start_gateway
from tests.support.jwks_issuer import b64url, public_jwk, public_pem, start_jwks_issuer, unsigned

PEOPLE = '["dba", "developers", "agents"]'


@pytest.fixture(scope="module")
def issuer():
    with start_jwks_issuer() as iss:
        yield iss


@pytest.fixture(scope="module")
def attacker():
    """An issuer nobody trusts: its JWKS URL is what an attacker would put in `jku`."""
    with start_jwks_issuer() as iss:
        yield iss


@pytest.fixture(scope="module")
def jwt_gateway(oidc_provider, issuer, pg_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("jwt-gateway")
    config = f"""
[gateway]
listen = "127.0.0.1:0"
audit_store = "audit.db"

[gateway.export]
jsonl = "audit.jsonl"

[[issuers]]
issuer = "{oidc_provider.issuer}"
audiences = ["hoop-cli"]

[[issuers]]
issuer = "{issuer.url}"
audiences = ["hoop-cli"]
grants = ["dba"]  # a second issuer grants no group unless listed (test_security_identity.py)

[connections.app-db]
protocol = "postgres"
target = "127.0.0.1:{pg_server.port}"
groups = {PEOPLE}
database = "app"
credentials = {{ broker = "none", user = "app_user" }}
"""
    with start_gateway(config, workdir) as gw:
        yield gw


def wait_records(gw, predicate, **filters) -> list[dict]:
    """Records matching filters and predicate, once the store holds everything the gateway had
    submitted (a barrier, tests/support/gateway.py): a CONNECT's record is submitted before its
    answer, so an absent record was never made, and a count is complete."""
    return [r for r in gw.records(**filters) if predicate(r)]


def connect(gw, target: str, token: str | None, header: str = "Proxy-Authorization", scheme: str = "Bearer") -> tuple[int, dict]:
    """One CONNECT over TLS; returns (status, JSON body). A 200 tunnel is closed right away."""
    auth = f"{header}: {scheme} {token}\r\n" if token is not None else ""
    ctx = ssl.create_default_context(cafile=gw.ca_file)
    answer = b""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock, ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        tls.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
        while True:
            try:
                data = tls.recv(65536)
            except OSError:
                break
            if not data:
                break
            answer += data
            if answer.startswith(b"HTTP/1.1 200 ") and b"\r\n\r\n" in answer:
                break
    return parse_response(answer)


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def header_of(token: str) -> dict:
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))


def hmac_token(header: dict, claims: dict, secret: bytes) -> str:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[header["alg"]]
    signing_input = unsigned(header, claims)
    return signing_input + "." + b64url(hmac.new(secret, signing_input.encode(), digest).digest())


def provider_key(oidc_provider, kid: str):
    import jwt

    return next(k for k in jwt.PyJWKSet.from_dict(oidc_provider.jwks()).keys if k.key_id == kid)


# ---- the positive controls ------------------------------------------------------------------


def test_valid_token_from_the_held_key_issuer_is_accepted(jwt_gateway, issuer, pg_server):
    token = issuer.token(sub="jwks-alice", groups=["dba"])
    status, body = connect(jwt_gateway, f"app-db:{pg_server.port}", token)
    assert status == 200, body
    [rec] = wait_records(jwt_gateway, lambda r: r["code"] == "200", kind="connect", sub="jwks-alice")
    assert rec["outcome"] == "ok" and rec["issuer"] == issuer.url and rec["connection"] == "app-db"


def test_valid_token_from_the_openid_provider_is_accepted(jwt_gateway, ctx, pg_server):
    status, body = connect(jwt_gateway, f"app-db:{pg_server.port}", ctx.real)
    assert status == 200, body


@pytest.mark.parametrize("exp_in, accepted", [(-10, True), (-25, True), (-35, False), (-60, False)])
def test_expiry_is_accepted_within_the_documented_30s_leeway_and_not_beyond(jwt_gateway, issuer, pg_server, exp_in, accepted):
    """Both sides of the README's 30 s, a few seconds off it (a test that took 5 s still holds)."""
    status, body = connect(jwt_gateway, f"app-db:{pg_server.port}", issuer.token(sub="leeway", groups=["dba"], exp_in=exp_in))
    if accepted:
        assert status == 200, body
    else:
        assert status == 407 and "expired" in body["error"], body


# ---- the attacks ----------------------------------------------------------------------------
# Each builder gets (ctx) and returns the token to present. ctx gives the fixtures below.


class Ctx:
    def __init__(self, oidc_provider, issuer, attacker, tokens, other_provider):
        self.oidc, self.issuer, self.attacker, self.tokens, self.other = oidc_provider, issuer, attacker, tokens, other_provider
        self._device = None
        self._real = None

    @property
    def real(self) -> str:
        """A fresh id_token for alice (the session's cached one may be near its expiry)."""
        if self._real is None:
            self._real = self.oidc.device_login("alice")["id_token"]
        return self._real

    @property
    def device(self) -> dict:
        """A fresh token response (id_token, opaque access_token, refresh_token) for bob."""
        if self._device is None:
            self._device = self.oidc.device_login("bob")
        return self._device

    def real_claims(self, **changes) -> dict:
        claims = claims_of(self.real)
        claims.update(changes)
        return claims


def _alg_none(ctx, alg):
    return unsigned({"alg": alg, "typ": "JWT"}, ctx.real_claims(sub="mallory", groups=["dba"])) + "."


def _alg_none_keeping_signature(ctx):
    header, payload, signature = ctx.real.split(".")
    return b64url(json.dumps({"alg": "none"}).encode()) + "." + payload + "." + signature


def _hs_with_provider_public_key(ctx, alg="HS256", form="pem"):
    kid = header_of(ctx.real)["kid"]
    pub = provider_key(ctx.oidc, kid).key
    from cryptography.hazmat.primitives import serialization

    pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    secret = {"pem": pem, "pem-stripped": pem.strip(), "jwk": json.dumps(next(k for k in ctx.oidc.jwks()["keys"] if k["kid"] == kid)).encode()}[form]
    return hmac_token({"alg": alg, "typ": "JWT", "kid": kid}, ctx.real_claims(sub="mallory", groups=["dba"]), secret)


def _hs_with_held_issuer_public_key(ctx):
    return hmac_token({"alg": "HS256", "kid": ctx.issuer.kid}, ctx.issuer.claims("mallory", groups=["dba"]), public_pem(ctx.issuer.key))


def _tampered(ctx, **changes):
    header, _, signature = ctx.real.split(".")
    return header + "." + b64url(json.dumps(ctx.real_claims(**changes)).encode()) + "." + signature


def _signature_stripped(ctx):
    header, payload, _ = ctx.real.split(".")
    return f"{header}.{payload}."


def _signature_of_another_token(ctx):
    header, payload, _ = ctx.real.split(".")
    return f"{header}.{payload}.{ctx.device['id_token'].split('.')[2]}"


def _jku_injection(ctx):
    # Claims the trusted held-key issuer, signed by the attacker, pointing at the attacker's JWKS.
    return ctx.attacker.sign(ctx.issuer.claims("mallory", groups=["dba"]), kid=ctx.attacker.kid,
                             headers={"jku": ctx.attacker.jwks_uri, "x5u": ctx.attacker.url + "/x5u"})


def _embedded_jwk(ctx):
    spare = ctx.issuer.spare_key
    return ctx.issuer.sign(ctx.issuer.claims("mallory", groups=["dba"]), key=spare, kid="attacker-embedded",
                           headers={"jwk": public_jwk(spare, "attacker-embedded")})


ATTACKS = {
    # name: (builder, fragment of the reason the gateway gives)
    "alg-none": (lambda c: _alg_none(c, "none"), "algorithm 'none' is not accepted"),
    "alg-None": (lambda c: _alg_none(c, "None"), "is not accepted"),
    "alg-NONE": (lambda c: _alg_none(c, "NONE"), "is not accepted"),
    "alg-none-keeps-real-signature": (_alg_none_keeping_signature, "is not accepted"),
    "hs256-provider-public-key-pem": (_hs_with_provider_public_key, "algorithm 'HS256' is not accepted"),
    "hs256-provider-public-key-pem-stripped": (lambda c: _hs_with_provider_public_key(c, form="pem-stripped"), "is not accepted"),
    "hs256-provider-public-jwk-json": (lambda c: _hs_with_provider_public_key(c, form="jwk"), "is not accepted"),
    "hs384-provider-public-key": (lambda c: _hs_with_provider_public_key(c, alg="HS384"), "is not accepted"),
    "hs512-provider-public-key": (lambda c: _hs_with_provider_public_key(c, alg="HS512"), "is not accepted"),
    "hs256-held-issuer-public-key": (_hs_with_held_issuer_public_key, "is not accepted"),
    "wrong-iss": (lambda c: c.issuer.sign(c.issuer.claims(groups=["dba"], iss="https://evil.example")), "untrusted issuer"),
    "iss-of-provider-signed-by-held-key": (lambda c: c.issuer.sign(c.real_claims(sub="mallory")), "unknown key"),
    "iss-of-provider-with-provider-kid-signed-by-held-key": (
        lambda c: c.issuer.sign(c.real_claims(sub="mallory"), kid=header_of(c.real)["kid"]), "signature"),
    "wrong-aud": (lambda c: c.issuer.token(groups=["dba"], aud="other-client"), "audience is not accepted"),
    "wrong-aud-list": (lambda c: c.issuer.token(groups=["dba"], aud=["other-client", "vault"]), "audience is not accepted"),
    "missing-aud": (lambda c: c.issuer.sign({k: v for k, v in c.issuer.claims(groups=["dba"]).items() if k != "aud"}), "aud"),
    "real-token-for-another-client": (lambda c: c.oidc.device_login("alice", client_id="other-client")["id_token"], "audience is not accepted"),
    "expired": (lambda c: c.issuer.token(groups=["dba"], exp_in=-120, iat_in=-400), "token expired"),
    "missing-exp": (lambda c: c.issuer.token(groups=["dba"], exp_in=None), "exp"),
    "nbf-in-the-future": (lambda c: c.issuer.token(groups=["dba"], nbf_in=120), "not yet valid"),
    "iat-in-the-future": (lambda c: c.issuer.token(groups=["dba"], iat_in=3600, exp_in=7200), "not yet valid"),
    "missing-sub": (lambda c: c.issuer.sign({k: v for k, v in c.issuer.claims(groups=["dba"]).items() if k != "sub"}), "sub"),
    "unknown-kid": (lambda c: c.issuer.token(groups=["dba"], key=c.issuer.spare_key, kid="rotated-" + secrets.token_hex(3)), "unknown key"),
    "published-kid-other-key": (lambda c: c.issuer.token(groups=["dba"], key=c.issuer.spare_key), "signature"),
    "no-kid-other-key": (lambda c: c.issuer.token(groups=["dba"], key=c.issuer.spare_key, kid=None), "signature"),
    "jku-x5u-injection": (_jku_injection, "unknown key"),
    "embedded-jwk": (_embedded_jwk, "unknown key"),
    "tampered-sub": (lambda c: _tampered(c, sub="carol"), "signature"),
    "tampered-groups": (lambda c: _tampered(c, groups=["dba", "approvers", "auditors"]), "signature"),
    "tampered-exp": (lambda c: _tampered(c, exp=int(time.time()) + 86400 * 365), "signature"),
    "signature-stripped": (_signature_stripped, "signature"),
    "signature-from-another-token": (_signature_of_another_token, "signature"),
    "token-from-another-issuer": (lambda c: c.other.device_login("alice")["id_token"], "untrusted issuer"),
    "opaque-access-token": (lambda c: c.device["access_token"], "not a well-formed JWT"),
    "refresh-token": (lambda c: c.device["refresh_token"], "not a well-formed JWT"),
    "garbage": (lambda c: "not.a.jwt", "not a well-formed JWT"),
}


@pytest.fixture(scope="module")
def ctx(oidc_provider, issuer, attacker, tokens, oidc_provider_factory):
    # The other provider is the one test_gateway_refusals.py starts too (same settings, shared).
    return Ctx(oidc_provider, issuer, attacker, tokens, oidc_provider_factory(id_token_ttl=299))


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_is_refused_with_407_and_recorded(jwt_gateway, ctx, pg_server, name):
    builder, reason = ATTACKS[name]
    token = builder(ctx)
    target = f"atk-{name}:{pg_server.port}"  # the token is judged before the name is looked up
    status, body = connect(jwt_gateway, target, token)
    assert status == 407, (name, status, body)
    assert reason.lower() in body["error"].lower(), (name, body)
    recs = wait_records(jwt_gateway, lambda r: True, kind="connect", connection=f"atk-{name}")
    assert len(recs) == 1, recs
    rec = recs[0]
    assert rec["outcome"] == "refused" and rec["code"] == "407"
    assert rec["message"] == body["error"]
    assert rec["sub"] is None  # no identity was taken from an unverified token
    # And the same token gets nowhere through the API either.
    api = requests.get(jwt_gateway.url + "/api/whoami", headers={"Authorization": f"Bearer {token}"}, verify=jwt_gateway.ca_file, timeout=10)
    assert api.status_code == 401, (name, api.status_code, api.text)


def test_the_real_app_db_is_never_reached_with_a_forged_token(jwt_gateway, ctx, pg_server):
    """The same attacks against the registered name: still 407, and no `connect ok` for mallory."""
    for name in ("alg-none", "hs256-provider-public-key-pem", "tampered-sub", "jku-x5u-injection"):
        status, body = connect(jwt_gateway, f"app-db:{pg_server.port}", ATTACKS[name][0](ctx))
        assert status == 407, (name, body)
    ok = wait_records(jwt_gateway, lambda r: r["outcome"] == "ok", kind="connect", sub="mallory")
    assert ok == []


def test_jku_and_x5u_urls_in_a_token_are_never_fetched(jwt_gateway, ctx, pg_server, attacker):
    before = sum(attacker.hits.values())
    status, _ = connect(jwt_gateway, f"app-db:{pg_server.port}", _jku_injection(ctx))
    assert status == 407
    assert sum(attacker.hits.values()) == before == 0


def test_a_flood_of_unknown_kids_fetches_the_jwks_at_most_once(jwt_gateway, issuer, pg_server):
    # The positive control (or this warm-up) has loaded the issuer's keys.
    assert connect(jwt_gateway, f"app-db:{pg_server.port}", issuer.token(sub="warm", groups=["dba"]))[0] == 200
    before = issuer.hits["/jwks"]
    for _ in range(25):
        forged = issuer.token(groups=["dba"], key=issuer.spare_key, kid="flood-" + secrets.token_hex(4))
        assert connect(jwt_gateway, f"app-db:{pg_server.port}", forged)[0] == 407
    assert issuer.hits["/jwks"] - before <= 1, issuer.hits


@pytest.mark.parametrize(
    "header,scheme",
    [("Authorization", "Bearer"), ("Proxy-Authorization", "Basic"), ("Proxy-Authorization", "bearer\t"), ("X-Token", "Bearer")],
)
def test_token_in_the_wrong_place_is_407_missing(jwt_gateway, issuer, pg_server, header, scheme):
    status, body = connect(jwt_gateway, f"app-db:{pg_server.port}", issuer.token(groups=["dba"]), header=header, scheme=scheme)
    assert status == 407 and "missing bearer token" in body["error"], (header, scheme, body)


def test_the_gateway_survived_every_attack(jwt_gateway, issuer, pg_server):
    assert jwt_gateway.alive()
    assert connect(jwt_gateway, f"app-db:{pg_server.port}", issuer.token(sub="after", groups=["dba"]))[0] == 200
    from hoopcli.gateway.audit import open_store

    with open_store(jwt_gateway.audit_store) as store:
        report = store.verify()
    assert report.ok, report.problems


def test_the_gateway_log_holds_no_forged_or_real_token(jwt_gateway, ctx):
    text = (jwt_gateway.workdir / "gateway.log").read_text(errors="replace") + Path(jwt_gateway.jsonl).read_text(errors="replace")
    for token in (ctx.real, ctx.device["id_token"], ctx.device["access_token"], ctx.device["refresh_token"]):
        assert token not in text
    assert "eyJ" not in text  # no JWT (header, payload or whole) was written anywhere
