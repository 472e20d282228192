"""A tiny OpenID issuer whose private key the test holds, for tokens with chosen claims.

The real provider (tests/support/oidc.py) only ever signs well-formed, current tokens. The
JWT attack tests also need validly signed tokens that are wrong in one way each (expired, not
yet valid, another audience, an unknown `kid`), so this module runs a stdlib HTTP server on
127.0.0.1 serving `/.well-known/openid-configuration` and `/jwks` for an RSA key generated at
run time, and signs whatever claims a test asks for.

    with start_jwks_issuer() as issuer:
        token = issuer.token(sub="alice", groups=["dba"])          # valid for 5 minutes
        issuer.token(exp_in=-120)                                   # expired
        issuer.token(kid="rotated-away", key=issuer.spare_key)      # a key /jwks does not list

`issuer.hits` counts requests per path, so a test can see whether (and how often) a verifier
fetched the JWKS, or whether anything fetched a URL an attacker put in a token header.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_rsa_key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key, kid: str) -> dict:
    """The public half of an RSA private key as a JWK with `kid`, `use: sig`, `alg: RS256`."""
    numbers = key.public_key().public_numbers()

    def n2b(n: int) -> str:
        return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": n2b(numbers.n), "e": n2b(numbers.e)}


def public_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def unsigned(header: dict, claims: dict) -> str:
    """header.payload, both base64url JSON, with no signature part: for hand-made tokens."""
    return b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())


@dataclass
class JwksIssuer:
    url: str
    key: object = field(repr=False)
    kid: str
    # A second key that /jwks never lists: "signed by someone else", same format.
    spare_key: object = field(repr=False)
    audience: str = "hoop-cli"
    hits: Counter = field(default_factory=Counter)

    @property
    def jwks_uri(self) -> str:
        return self.url + "/jwks"

    def claims(self, sub: str = "alice", *, exp_in: float | None = 300, nbf_in: float | None = None,
               iat_in: float | None = 0, **extra) -> dict:
        """Claims for `sub` with times relative to now (seconds); None leaves a claim out."""
        now = int(time.time())
        claims = {"iss": self.url, "sub": sub, "aud": self.audience, "email": f"{sub}@jwks.test",
                  "jti": secrets.token_hex(8)}
        if iat_in is not None:
            claims["iat"] = now + int(iat_in)
        if exp_in is not None:
            claims["exp"] = now + int(exp_in)
        if nbf_in is not None:
            claims["nbf"] = now + int(nbf_in)
        claims.update(extra)
        return claims

    def sign(self, claims: dict, *, key=None, kid: str | None = "default", alg: str = "RS256",
             headers: dict | None = None) -> str:
        """Sign exactly these claims. kid="default" uses the published kid; None leaves it out."""
        import jwt

        kid = self.kid if kid == "default" else kid
        extra = dict(headers or {})
        if kid is not None:
            extra["kid"] = kid
        return jwt.encode(claims, key or self.key, algorithm=alg, headers=extra)

    def token(self, sub: str = "alice", *, key=None, kid: str | None = "default", headers: dict | None = None,
              exp_in: float | None = 300, nbf_in: float | None = None, iat_in: float | None = 0, **extra) -> str:
        return self.sign(self.claims(sub, exp_in=exp_in, nbf_in=nbf_in, iat_in=iat_in, **extra),
                         key=key, kid=kid, headers=headers)


class _Handler(BaseHTTPRequestHandler):
    issuer: JwksIssuer  # set on a per-server subclass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        issuer = self.issuer
        issuer.hits[self.path] += 1
        if self.path == "/.well-known/openid-configuration":
            body = {
                "issuer": issuer.url,
                "jwks_uri": issuer.jwks_uri,
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
            }
        elif self.path == "/jwks":
            body = {"keys": [public_jwk(issuer.key, issuer.kid)]}
        else:
            self.send_error(404)
            return
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


@contextlib.contextmanager
def start_jwks_issuer(audience: str = "hoop-cli") -> Iterator[JwksIssuer]:
    """Serve a fresh issuer on a free 127.0.0.1 port for the duration of the block."""
    key, spare = new_rsa_key(), new_rsa_key()
    handler = type("Handler", (_Handler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    issuer = JwksIssuer(url=f"http://127.0.0.1:{server.server_address[1]}", key=key,
                        kid="k-" + secrets.token_hex(4), spare_key=spare, audience=audience)
    handler.issuer = issuer
    thread = threading.Thread(target=server.serve_forever, name="jwks-issuer", daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
