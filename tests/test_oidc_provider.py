"""The OpenID provider fixture is a real provider: discovery, device flow through its own pages,
signed id_tokens with our claims, refresh, revocation, and the slow_down test control."""

from __future__ import annotations

import time

import jwt
import pytest

from tests.support.oidc import OIDCTestError, approve_in_background


def test_discovery_advertises_what_hoop_uses(oidc_provider):
    meta = oidc_provider.metadata
    assert meta["issuer"] == oidc_provider.issuer
    assert oidc_provider.issuer.startswith("http://127.0.0.1:")
    for name in ("device_authorization_endpoint", "revocation_endpoint", "jwks_uri", "token_endpoint"):
        assert meta[name].startswith(oidc_provider.issuer + "/"), name
    assert "urn:ietf:params:oauth:grant-type:device_code" in meta["grant_types_supported"]
    assert {"offline_access", "email", "groups"} <= set(meta["scopes_supported"])
    assert "RS256" in meta["id_token_signing_alg_values_supported"]


def test_device_authorization_carries_interval(oidc_provider):
    started = oidc_provider.start_device_authorization()
    assert started["interval"] == oidc_provider.device_interval
    assert started["verification_uri"] == oidc_provider.issuer + "/device"
    assert oidc_provider.poll_token(started["device_code"]).json()["error"] == "authorization_pending"


def test_device_login_gives_id_token_with_our_claims(oidc_provider, monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # PyJWKClient's urllib would honour them
    tokens = oidc_provider.device_login("alice")
    assert tokens["token_type"].lower() == "bearer"
    assert tokens["access_token"] and tokens["refresh_token"]
    assert tokens["expires_in"] == oidc_provider.access_token_ttl

    claims = oidc_provider.decode(tokens["id_token"])  # signature against the JWKS, iss, aud, exp
    signing_key = oidc_provider.jwks_client.get_signing_key_from_jwt(tokens["id_token"])
    assert jwt.decode(tokens["id_token"], signing_key.key, algorithms=["RS256"], audience="hoop-cli",
                      issuer=oidc_provider.issuer) == claims
    assert claims["iss"] == oidc_provider.issuer
    assert claims["aud"] == "hoop-cli"
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.com"
    assert claims["groups"] == ["dba", "developers"]
    assert claims["exp"] - claims["iat"] == oidc_provider.id_token_ttl
    assert jwt.get_unverified_header(tokens["id_token"])["alg"] == "RS256"


@pytest.mark.parametrize(("login", "groups"), [
    ("bob", ["developers"]),
    ("carol", ["approvers", "auditors"]),
    ("agent-1", ["agents"]),
    ("mallory", []),
])
def test_groups_by_login(oidc_provider, login, groups):
    claims = oidc_provider.decode(oidc_provider.device_login(login)["id_token"])
    assert (claims["sub"], claims["groups"]) == (login, groups)


def test_other_client_tokens_have_other_audience(oidc_provider):
    tokens = oidc_provider.device_login("bob", client_id=oidc_provider.other_client_id)
    with pytest.raises(jwt.InvalidAudienceError):
        oidc_provider.decode(tokens["id_token"])
    assert oidc_provider.decode(tokens["id_token"], audience="other-client")["sub"] == "bob"


def test_wrong_password_is_refused(oidc_provider):
    started = oidc_provider.start_device_authorization()
    with pytest.raises(OIDCTestError, match="login was refused"):
        oidc_provider.approve(started["user_code"], login="alice", password="wrong")
    assert oidc_provider.poll_token(started["device_code"]).json()["error"] == "authorization_pending"


def test_refresh_returns_new_id_token_and_rotates(oidc_provider):
    tokens = oidc_provider.device_login("carol")
    resp = oidc_provider.refresh(tokens["refresh_token"])
    assert resp.status_code == 200, resp.text
    fresh = resp.json()
    claims = oidc_provider.decode(fresh["id_token"])
    assert (claims["sub"], claims["groups"], claims["email"]) == ("carol", ["approvers", "auditors"], "carol@example.com")
    assert fresh["refresh_token"] != tokens["refresh_token"]  # public client: rotated
    assert oidc_provider.revoked(tokens["refresh_token"])
    assert not oidc_provider.revoked(fresh["refresh_token"])


def test_revocation_makes_refresh_token_unusable(oidc_provider):
    tokens = oidc_provider.device_login("alice")
    assert not oidc_provider.revoked(tokens["refresh_token"])
    assert oidc_provider.revoke(tokens["refresh_token"]).status_code == 200
    assert oidc_provider.revoked(tokens["refresh_token"])
    resp = oidc_provider.refresh(tokens["refresh_token"])
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("at", ["consent", "confirm"])
def test_deny_gives_access_denied(oidc_provider, at):
    started = oidc_provider.start_device_authorization()
    oidc_provider.deny(started["user_code"], at=at)
    resp = oidc_provider.poll_token(started["device_code"])
    assert resp.status_code == 400
    assert resp.json()["error"] == "access_denied"


def test_slow_down_control_and_poll_log(oidc_provider):
    oidc_provider.set_device_behaviour(interval=2, slow_down_polls=2)
    started = oidc_provider.start_device_authorization()
    assert started["interval"] == 2
    oidc_provider.approve(started["user_code"])
    answers = [oidc_provider.poll_token(started["device_code"]) for _ in range(3)]
    assert [r.json().get("error") for r in answers[:2]] == ["slow_down", "slow_down"]
    assert answers[2].status_code == 200 and "id_token" in answers[2].json()

    log = oidc_provider.poll_log(started["user_code"])
    assert log["answers"] == ["slow_down", "slow_down", "ok"]
    assert len(log["polls"]) == 3 and log["polls"] == sorted(log["polls"])
    assert abs(log["polls"][0] - time.time() * 1000) < 30_000
    assert oidc_provider.polls(started["user_code"].replace("-", "").lower()) == log["polls"]

    # the behaviour applied to that one authorization only
    assert oidc_provider.start_device_authorization()["interval"] == oidc_provider.device_interval


def test_approve_in_background_finds_the_next_authorization(oidc_provider):
    approver = approve_in_background(oidc_provider, login="bob", timeout=15)
    started = oidc_provider.start_device_authorization()
    approver.join()
    assert approver.user_code == started["user_code"]
    assert oidc_provider.poll_token(started["device_code"]).status_code == 200


def test_short_ttl_provider_from_factory(oidc_provider_factory, oidc_provider):
    # 4 s: long enough for device_login to finish on a loaded 2-core machine
    short = oidc_provider_factory(id_token_ttl=2, device_code_ttl=4)
    assert short is oidc_provider_factory(id_token_ttl=2, device_code_ttl=4)
    assert short.issuer != oidc_provider.issuer
    stale = short.start_device_authorization()
    stale_deadline = time.monotonic() + 4.1
    assert stale["expires_in"] == 4

    tokens = short.device_login("alice")
    assert tokens["expires_in"] == 2  # the access token follows ID_TOKEN_TTL unless told
    claims = short.decode(tokens["id_token"])
    assert claims["exp"] - claims["iat"] == 2
    # keys are per process: the other provider's JWKS does not vouch for this token
    with pytest.raises(jwt.InvalidSignatureError):
        oidc_provider.decode(tokens["id_token"])

    time.sleep(2.1)
    with pytest.raises(jwt.ExpiredSignatureError):
        short.decode(tokens["id_token"])
    time.sleep(max(0.0, stale_deadline - time.monotonic()))
    assert short.poll_token(stale["device_code"]).json()["error"] == "expired_token"


def test_claims_and_refresh_token_follow_the_scopes(oidc_provider):
    tokens = oidc_provider.device_login("alice", scopes="openid email")
    assert "refresh_token" not in tokens  # no offline_access, no refresh token
    claims = oidc_provider.decode(tokens["id_token"])
    assert claims["email"] == "alice@example.com"
    assert "groups" not in claims and "name" not in claims
