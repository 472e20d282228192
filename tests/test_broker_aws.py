"""The AWS broker and `hoop credential-process` against moto's STS, with real id_tokens from the
test OpenID provider.

What moto proves: the client side only. hoop builds a correct, unsigned
AssumeRoleWithWebIdentity request, parses the answer, and the temporary credentials it hands
out are accepted by moto's other APIs (the real `aws` CLI calling sts get-caller-identity sees
the assumed-role ARN). moto accepts any web identity token and any role ARN: it does not check
the token's signature, the role's trust policy or the audience, so AWS's refusals are played
by a small server answering in STS's own XML error format (`sts_error_server`).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from hoopcli.brokers.aws import session_name
from hoopcli.brokers.base import broker_for
from hoopcli.errors import BrokerError, ConfigError, ExitCode


ROLE = "arn:aws:iam::123456789012:role/hoop-dev"
AWS_CLI = str(Path(sys.executable).parent / "aws")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _hints(endpoint: str, **extra) -> dict:
    return {"broker": "aws", "role_arn": ROLE, "region": "eu-west-1", "sts_endpoint": endpoint, **extra}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _caller_arn(endpoint: str, env: dict) -> str:
    import botocore.session

    sts = botocore.session.Session().create_client(
        "sts", region_name=env["AWS_REGION"], endpoint_url=endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], aws_session_token=env["AWS_SESSION_TOKEN"],
    )
    return sts.get_caller_identity()["Arn"]


# ---- the broker ---------------------------------------------------------------------------


def test_assume_role_with_a_real_id_token(moto_sts, tokens):
    broker = broker_for(_hints(moto_sts.endpoint), None)
    creds = broker.issue(tokens("alice"))
    assert creds.broker == "aws" and not creds.renewable and not creds.password
    assert set(creds.env) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION"}
    assert creds.env["AWS_REGION"] == creds.env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert creds.username == "arn:aws:sts::123456789012:assumed-role/hoop-dev/alice@example.com"
    assert 890 < creds.expires_at - time.time() <= 900
    assert creds.env["AWS_SECRET_ACCESS_KEY"] not in repr(creds)
    assert _caller_arn(moto_sts.endpoint, creds.env) == creds.username
    assert broker.renew(creds) is creds
    assert broker.revoke(creds) is None


def test_duration_and_session_policy(moto_sts, tokens):
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}
    creds = broker_for(_hints(moto_sts.endpoint, duration_seconds=3600, session_policy=policy), None).issue(tokens("alice"))
    assert 3590 < creds.expires_at - time.time() <= 3600


def test_the_sts_call_is_unsigned_and_ignores_aws_files(sts_error_server, tokens, tmp_path, monkeypatch):
    """Poisoned ~/.aws files, AWS_PROFILE naming a missing profile and access keys in the
    environment: none is read, and the request carries no signature."""
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "config").write_text("[default]\nregion = us-west-2\nsts_regional_endpoints = nonsense\n[broken\n")
    (home / ".aws" / "credentials").write_text("[default]\naws_access_key_id = AKIAPOISON\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "poison-secret")
    monkeypatch.delenv("AWS_CONFIG_FILE", raising=False)
    sts_error_server.requests.clear()
    with pytest.raises(BrokerError, match="AccessDenied"):
        broker_for(_hints(sts_error_server.url + "/AccessDenied"), None).issue(tokens("alice"))
    (request,) = sts_error_server.requests
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert "authorization" not in headers and "x-amz-security-token" not in headers
    form = parse_qs(request.body)
    assert form["Action"] == ["AssumeRoleWithWebIdentity"] and form["RoleArn"] == [ROLE]
    assert form["RoleSessionName"] == ["alice@example.com"] and form["DurationSeconds"] == ["900"]


@pytest.mark.parametrize("claims, expected", [
    ({"sub": "alice", "email": "alice@example.com"}, "alice@example.com"),
    ({"sub": "alice"}, "alice"),
    ({"sub": "repo:org/app:ref:refs/heads/main"}, "repo-org-app-ref-refs-heads-main"),
    ({"email": "zoë+ops@example.com"}, "zo-+ops@example.com"),
    ({"sub": "x" * 100}, "x" * 64),
    ({"sub": "a"}, "hoop-a"),
    ({}, "hoop-session"),
])
def test_session_name(claims, expected):
    import jwt

    token = jwt.encode(claims, "k" * 32, algorithm="HS256")
    name = session_name(token)
    assert name == expected
    assert re.fullmatch(r"[\w+=,.@-]{2,64}", name, re.ASCII)


# ---- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize("code, message, hint", [
    ("AccessDenied", "AWS denied assuming " + ROLE, "trust policy"),
    ("InvalidIdentityToken", "AWS rejected your identity token", "OIDC identity provider"),
    ("ExpiredTokenException", "your identity token has expired", "hoop login"),
    ("IDPCommunicationError", "could not reach your identity provider", "Try again"),
    ("MalformedPolicyDocument", "refused the session_policy", "session_policy"),
])
def test_sts_refusals_are_explained(sts_error_server, tokens, code, message, hint):
    with pytest.raises(BrokerError) as caught:
        broker_for(_hints(f"{sts_error_server.url}/{code}"), None).issue(tokens("alice"))
    err = caught.value
    assert message in err.message and f"({code}: " in err.message
    assert hint in err.hint and err.exit_code == ExitCode.BROKER
    assert tokens("alice") not in err.message + err.hint


def test_unreachable_endpoint(tokens):
    started = time.monotonic()
    with pytest.raises(BrokerError, match="cannot reach http://127.0.0.1") as caught:
        broker_for(_hints(f"http://127.0.0.1:{_closed_port()}"), None).issue(tokens("alice"))
    assert caught.value.exit_code == ExitCode.UNREACHABLE and "sts_endpoint" in caught.value.hint
    assert time.monotonic() - started < 10


def test_tls_failure(moto_sts, tokens):
    with pytest.raises(BrokerError, match="TLS") as caught:
        broker_for(_hints(moto_sts.endpoint.replace("http:", "https:")), None).issue(tokens("alice"))
    assert caught.value.exit_code == ExitCode.UNREACHABLE


@pytest.mark.parametrize("hints, message", [
    ({"broker": "aws", "region": "eu-west-1"}, "no role_arn"),
    ({"broker": "aws", "role_arn": ROLE}, "no region"),
    ({"broker": "aws-rds", "role_arn": ROLE, "region": "eu-west-1", "db_user": "u"}, "no db_host"),
    ({"broker": "aws", "role_arn": ROLE, "region": "eu-west-1", "duration_seconds": 60}, "between 900 and 43200"),
    ({"broker": "aws", "role_arn": ROLE, "region": "eu-west-1", "session_policy": "{nope"}, "not valid JSON"),
    ({"broker": "aws", "role_arn": ROLE, "region": "eu-west-1", "sts_endpoint": "http://sts.example.com"}, "not https"),
])
def test_bad_hints(hints, message):
    with pytest.raises(ConfigError, match=message):
        broker_for(hints, None)


# ---- aws-rds --------------------------------------------------------------------------------


def test_rds_auth_token(moto_sts, tokens):
    hints = _hints(moto_sts.endpoint, broker="aws-rds", db_host="app.cluster-x.eu-west-1.rds.amazonaws.com",
                   db_port=5432, db_user="app_iam")
    creds = broker_for(hints, None).issue(tokens("alice"))
    assert creds.broker == "aws-rds" and creds.username == "app_iam" and creds.env == {}
    assert creds.expires_at - time.time() <= 900
    token = creds.password
    assert token.startswith("app.cluster-x.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app_iam&X-Amz-")
    query = parse_qs(urlsplit("https://" + token).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == ["900"]
    assert query["X-Amz-Credential"][0].split("/")[2:4] == ["eu-west-1", "rds-db"]
    assert query["X-Amz-Security-Token"][0] and re.fullmatch(r"[0-9a-f]{64}", query["X-Amz-Signature"][0])


# ---- hoop credential-process ----------------------------------------------------------------


def _write_config(home: Path, connections: dict) -> None:
    import tomli_w

    path = home / ".config" / "hoop" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps({"profiles": {"default": {"connections": connections}}}))


@pytest.fixture
def aws_prod(hoop, hoop_home, moto_sts, tokens, monkeypatch):
    """A profile-local connection aws-prod pointing at moto; alice's token in HOOP_TOKEN."""
    _write_config(hoop_home, {"aws-prod": _hints(moto_sts.endpoint)})
    monkeypatch.setenv("HOOP_TOKEN", tokens("alice"))
    return hoop


def test_credential_process_document(aws_prod, mem_keyring):
    result = aws_prod("credential-process", "aws-prod")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert set(doc) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert doc["Version"] == 1 and doc["AccessKeyId"] and doc["SecretAccessKey"] and doc["SessionToken"]
    assert ISO.match(doc["Expiration"])
    expires = datetime.strptime(doc["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    assert 880 < expires - time.time() <= 900
    assert list(mem_keyring.items) == [("hoop-aws", "default/aws-prod")]


def test_credential_process_cache(aws_prod, mem_keyring, hoop_home, moto_sts, tokens, monkeypatch):
    first = json.loads(aws_prod("credential-process", "aws-prod").out)
    assert json.loads(aws_prod("credential-process", "aws-prod").out) == first  # from the keyring
    fresh = json.loads(aws_prod("credential-process", "aws-prod", "--no-cache").out)
    assert fresh["AccessKeyId"] != first["AccessKeyId"]
    assert json.loads(aws_prod("credential-process", "aws-prod").out) == first  # --no-cache wrote nothing
    # Another person, or changed connection settings: not served from the cache.
    monkeypatch.setenv("HOOP_TOKEN", tokens("bob"))
    for_bob = json.loads(aws_prod("credential-process", "aws-prod").out)
    assert for_bob["AccessKeyId"] != first["AccessKeyId"]
    _write_config(hoop_home, {"aws-prod": _hints(moto_sts.endpoint, duration_seconds=1800)})
    longer = json.loads(aws_prod("credential-process", "aws-prod").out)
    assert longer["AccessKeyId"] != for_bob["AccessKeyId"]
    # Within 5 minutes of expiry an entry is not used.
    entry = json.loads(mem_keyring.items[("hoop-aws", "default/aws-prod")])
    entry["document"]["Expiration"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 200))
    mem_keyring.items[("hoop-aws", "default/aws-prod")] = json.dumps(entry)
    assert json.loads(aws_prod("credential-process", "aws-prod").out)["AccessKeyId"] != longer["AccessKeyId"]
    assert not list((hoop_home).rglob("*aws*"))  # never a file


def test_credential_process_without_a_keyring(aws_prod, hoop_home):
    import keyring
    from keyring.backends import fail

    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        first, second = (aws_prod("credential-process", "aws-prod") for _ in range(2))
    finally:
        keyring.set_keyring(previous)
    assert first.code == second.code == 0, first.err
    assert json.loads(first.out)["AccessKeyId"] != json.loads(second.out)["AccessKeyId"]


def test_credential_process_refusals(aws_prod, hoop_home, moto_sts, monkeypatch):
    _write_config(hoop_home, {"rds": _hints(moto_sts.endpoint, broker="aws-rds", db_host="h", db_user="u"),
                              "down": _hints(f"http://127.0.0.1:{_closed_port()}")})
    result = aws_prod("credential-process", "rds")
    assert result.code == int(ExitCode.USAGE) and "does not use the aws broker" in result.err
    result = aws_prod("credential-process", "down")
    assert result.code == int(ExitCode.UNREACHABLE) and "hoop: hint:" in result.err and result.out == ""
    monkeypatch.delenv("HOOP_TOKEN")
    result = aws_prod("credential-process", "rds")
    assert result.code == int(ExitCode.NOT_LOGGED_IN)


def _aws_env(home: Path, token: str) -> dict:
    from tests.support.cli import subprocess_env

    return subprocess_env(home, HOOP_TOKEN=token, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
                          AWS_EC2_METADATA_DISABLED="true")


def test_aws_cli_uses_hoop_as_credential_process(moto_sts, tokens, tmp_path):
    """The real consumer: the aws CLI runs `hoop credential-process` from ~/.aws/config."""
    home = tmp_path / "home"
    _write_config(home, {"aws-prod": _hints(moto_sts.endpoint)})
    (home / ".aws").mkdir()
    (home / ".aws" / "config").write_text(
        f"[profile hoop]\nregion = eu-west-1\ncredential_process = {sys.executable} -m hoopcli credential-process aws-prod\n")
    done = subprocess.run([AWS_CLI, "--profile", "hoop", "sts", "get-caller-identity", "--endpoint-url", moto_sts.endpoint,
                           "--output", "json"], env=_aws_env(home, tokens("alice")), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["Arn"] == "arn:aws:sts::123456789012:assumed-role/hoop-dev/alice@example.com"


def test_exec_aws_cli_with_a_profile_local_connection(moto_sts, tokens, tmp_path):
    from tests.support.cli import HOOP

    home = tmp_path / "home"
    _write_config(home, {"aws-prod": _hints(moto_sts.endpoint)})
    done = subprocess.run(HOOP + ["exec", "aws-prod", "--", AWS_CLI, "sts", "get-caller-identity", "--endpoint-url",
                                  moto_sts.endpoint, "--output", "json"],
                          env=_aws_env(home, tokens("alice")), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["Arn"] == "arn:aws:sts::123456789012:assumed-role/hoop-dev/alice@example.com"
