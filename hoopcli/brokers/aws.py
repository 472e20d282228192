"""The AWS broker: the user's id_token buys temporary AWS credentials (STS
AssumeRoleWithWebIdentity), or, with broker "aws-rds", an RDS IAM database auth token.

AssumeRoleWithWebIdentity is an unsigned call: hoop needs no AWS credentials of its own and
never reads ~/.aws (its botocore session ignores AWS_PROFILE, AWS_CONFIG_FILE and
AWS_SHARED_CREDENTIALS_FILE, and the STS client is built with signature_version=UNSIGNED, so
no credential provider runs).

Hints (a profile-local connection in config.toml, or a gateway connection's `credentials`):
  broker="aws"      role_arn (required), region (required), duration_seconds=900,
                    session_policy (JSON text or a TOML table, optional),
                    sts_endpoint (optional: a VPC endpoint, or moto in tests), ca_file (optional)
  broker="aws-rds"  the same, plus db_host (required), db_port=5432, db_user (required): the
                    password becomes an RDS IAM auth token for db_user (valid 15 minutes, needed
                    only when the connection opens); the AWS keys stay in hoop's memory.

STS credentials cannot be revoked (revoke is a no-op: they simply expire) and cannot be renewed
without a fresh identity token, so renew returns them unchanged; a session longer than
duration_seconds needs a new `hoop exec`.
"""

from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime, timezone

from hoopcli.brokers.base import Credentials, translated_errors
from hoopcli.errors import BrokerError, ConfigError, ExitCode, HoopError, UsageError

MIN_DURATION, MAX_DURATION = 900, 43200
RDS_TOKEN_SECONDS = 900
SESSION_NAME_CHARS = re.compile(r"[^A-Za-z0-9_+=,.@-]")
# A botocore session that reads neither the user's AWS config/credentials files nor AWS_PROFILE.
ISOLATED_SESSION_VARS = {
    "profile": (None, None, None, None),
    "config_file": (None, None, os.devnull, None),
    "credentials_file": (None, None, os.devnull, None),
}


class AwsBroker:
    name = "aws"

    def __init__(self, role_arn: str, region: str, *, duration_seconds: int = MIN_DURATION, session_policy: str = "",
                 sts_endpoint: str = "", ca_file: str = "", rds: dict | None = None):
        self.role_arn = role_arn
        self.region = region
        self.duration_seconds = duration_seconds
        self.session_policy = session_policy
        self.sts_endpoint = sts_endpoint
        self.ca_file = ca_file
        self.rds = rds  # {"host", "port", "user"} for aws-rds
        self.name = "aws-rds" if rds else "aws"

    @classmethod
    def from_hints(cls, hints: dict, profile=None) -> "AwsBroker":
        from hoopcli.auth.http import require_safe_url

        kind = hints.get("broker", "aws")
        required = ["role_arn", "region"] + (["db_host", "db_user"] if kind == "aws-rds" else [])
        missing = [key for key in required if not hints.get(key)]
        if missing:
            raise ConfigError(
                f"the {kind} credentials of this connection have no {', '.join(missing)}",
                "Set them in the connection's table (config.toml or the gateway's registry).",
            )
        try:
            duration = int(hints.get("duration_seconds") or MIN_DURATION)
        except (TypeError, ValueError):
            raise ConfigError(f"duration_seconds must be a number, not {hints.get('duration_seconds')!r}") from None
        if not MIN_DURATION <= duration <= MAX_DURATION:
            raise ConfigError(f"duration_seconds must be between {MIN_DURATION} and {MAX_DURATION}, not {duration}")
        policy = hints.get("session_policy") or ""
        if isinstance(policy, dict):
            policy = json.dumps(policy)
        if policy:
            try:
                json.loads(policy)
            except ValueError:
                raise ConfigError("session_policy is not valid JSON", "Give an IAM policy document as JSON text or a TOML table.") from None
        endpoint = str(hints.get("sts_endpoint") or "")
        if endpoint:
            require_safe_url(endpoint, "STS endpoint")
        rds = None
        if kind == "aws-rds":
            rds = {"host": str(hints["db_host"]), "port": int(hints.get("db_port") or 5432), "user": str(hints["db_user"])}
        return cls(str(hints["role_arn"]), str(hints["region"]), duration_seconds=duration, session_policy=policy,
                   sts_endpoint=endpoint, ca_file=str(hints.get("ca_file") or ""), rds=rds)

    # -- the Broker interface ----------------------------------------------------------------

    def issue(self, identity_token: str) -> Credentials:
        request = {
            "RoleArn": self.role_arn,
            "RoleSessionName": session_name(identity_token),
            "WebIdentityToken": identity_token,
            "DurationSeconds": self.duration_seconds,
        }
        if self.session_policy:
            request["Policy"] = self.session_policy
        with translated_errors(lambda exc: _describe(self, exc)):
            answer = self._sts().assume_role_with_web_identity(**request)
        keys = answer["Credentials"]
        expires_at = keys["Expiration"].timestamp()
        if self.rds:
            with translated_errors(lambda exc: _describe(self, exc)):
                token = self._rds_token(keys)
            return Credentials(username=self.rds["user"], password=token,
                               expires_at=min(expires_at, time.time() + RDS_TOKEN_SECONDS), broker=self.name)
        return Credentials(
            username=answer.get("AssumedRoleUser", {}).get("Arn", ""),
            expires_at=expires_at,
            env={
                "AWS_ACCESS_KEY_ID": keys["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": keys["SecretAccessKey"],
                "AWS_SESSION_TOKEN": keys["SessionToken"],
                "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region,
            },
            broker=self.name,
        )

    def renew(self, creds: Credentials) -> Credentials:
        # STS credentials cannot be extended; new ones need a fresh identity token (a new `hoop exec`).
        return creds

    def revoke(self, creds: Credentials) -> None:
        # STS temporary credentials cannot be revoked; they expire after duration_seconds
        # (an admin can deny sessions issued before a time with an inline role policy).
        return None

    # -- plumbing ----------------------------------------------------------------------------

    def _session(self):
        import botocore.session

        return botocore.session.Session(session_vars=ISOLATED_SESSION_VARS)

    def _sts(self):
        from botocore import UNSIGNED
        from botocore.config import Config

        config = Config(signature_version=UNSIGNED, retries={"max_attempts": 2, "mode": "standard"},
                        connect_timeout=5, read_timeout=20, user_agent_extra="hoop")
        return self._session().create_client("sts", region_name=self.region, endpoint_url=self.sts_endpoint or None,
                                              verify=self.ca_file or True, config=config)

    def _rds_token(self, keys: dict) -> str:
        """Signed locally (a presigned URL): no request reaches AWS here."""
        rds = self._session().create_client(
            "rds", region_name=self.region, aws_access_key_id=keys["AccessKeyId"],
            aws_secret_access_key=keys["SecretAccessKey"], aws_session_token=keys["SessionToken"],
        )
        return rds.generate_db_auth_token(DBHostname=self.rds["host"], Port=self.rds["port"],
                                          DBUsername=self.rds["user"], Region=self.region)


def session_name(identity_token: str) -> str:
    """RoleSessionName from the token's email (else sub): AWS allows [\\w+=,.@-], 2 to 64 chars.
    It shows in CloudTrail and in the assumed-role ARN, so it names the person."""
    from hoopcli.auth.tokens import unverified_claims

    claims = unverified_claims(identity_token)
    raw = str(claims.get("email") or claims.get("sub") or "")
    name = SESSION_NAME_CHARS.sub("-", raw)[:64]
    return name if len(name) >= 2 else f"hoop-{name or 'session'}"


# STS error codes (AssumeRoleWithWebIdentity) → (what happened, what to do)
_STS_ERRORS = {
    "AccessDenied": (
        "AWS denied assuming {role}",
        "The role's trust policy must trust your identity provider, with audience and sub/group "
        "conditions that match your token (`hoop whoami`). Ask the AWS admin.",
    ),
    "InvalidIdentityToken": (
        "AWS rejected your identity token for {role}",
        "An IAM OIDC identity provider for your issuer must exist in the role's account and list "
        "your client id as an audience. Ask the AWS admin.",
    ),
    "ExpiredTokenException": ("your identity token has expired", "Run `hoop login` again (or provide a fresh HOOP_TOKEN)."),
    "IDPRejectedClaim": (
        "AWS refused a claim in your identity token for {role}",
        "The identity provider configuration in IAM does not accept this token. Ask the AWS admin.",
    ),
    "IDPCommunicationError": (
        "AWS could not reach your identity provider to check the token",
        "Try again in a moment; if it persists the IdP's discovery/JWKS endpoint is not reachable from AWS.",
    ),
    "MalformedPolicyDocument": ("AWS refused the session_policy", "Fix the connection's session_policy (an IAM policy document)."),
    "PackedPolicyTooLarge": ("the session_policy is too large", "Shorten the connection's session_policy."),
    "RegionDisabledException": ("STS is not enabled in region {region}", "Use another region or ask the AWS admin to activate it."),
}


def _describe(b: AwsBroker, exc: Exception) -> HoopError | None:
    import botocore.exceptions as bx

    where = b.sts_endpoint or f"STS in {b.region}"
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code, detail = error.get("Code", "Unknown"), " ".join(str(error.get("Message", "")).split())[:300]
        what, hint = _STS_ERRORS.get(code, ("AWS refused the request for {role}", "Ask the AWS admin."))
        message = what.format(role=b.role_arn, region=b.region) + f" ({code}{': ' + detail if detail else ''})"
        return BrokerError(message, hint)
    if isinstance(exc, bx.SSLError):
        return BrokerError(f"TLS verification failed talking to {where}",
                           "Set `ca_file` in the connection to the CA that signed the endpoint's certificate.",
                           exit_code=ExitCode.UNREACHABLE)
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError, bx.ConnectionClosedError)):
        return BrokerError(f"cannot reach {where}", "Check the network (and `sts_endpoint`, if the connection sets one).",
                           exit_code=ExitCode.UNREACHABLE)
    if isinstance(exc, bx.NoRegionError):
        return ConfigError("no AWS region for this connection", "Set `region` in the connection.")
    if isinstance(exc, bx.ParamValidationError):
        return BrokerError(f"invalid STS request: {exc}", "Check the connection's role_arn and duration_seconds.")
    return None


# ---- `hoop credential-process` ------------------------------------------------------------


def process_document(creds: Credentials) -> dict:
    """The JSON an AWS SDK reads from a credential_process (Version 1)."""
    env = creds.env
    if "AWS_ACCESS_KEY_ID" not in env:
        raise UsageError("credential-process needs a connection with broker \"aws\"",
                         "aws-rds and database connections are used with `hoop exec`.")
    doc = {
        "Version": 1,
        "AccessKeyId": env["AWS_ACCESS_KEY_ID"],
        "SecretAccessKey": env["AWS_SECRET_ACCESS_KEY"],
        "SessionToken": env["AWS_SESSION_TOKEN"],
    }
    if creds.expires_at:
        doc["Expiration"] = datetime.fromtimestamp(creds.expires_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return doc


def credential_process(profile, name: str, hints_for, use_cache: bool = True) -> dict:
    """The credential_process document for connection `name`: from the keyring cache while it
    has more than 5 minutes left (and was made for the same person and connection settings),
    otherwise fresh from STS. hints_for(tokens) returns the connection's credential hints."""
    from hoopcli.auth.session import load_session
    from hoopcli.auth.tokens import unverified_claims
    from hoopcli.brokers import cache

    tokens = load_session(profile, refresh=False)  # no session, no credentials: logout ends the cache too
    local = (profile.connections or {}).get(name)
    fingerprint = cache.fingerprint(unverified_claims(tokens.bearer).get("sub", ""), local)
    if use_cache:
        doc = cache.load(profile.name, name, fingerprint)
        if doc is not None:
            return doc
    tokens = load_session(profile)
    hints = hints_for(tokens)
    if (hints or {}).get("broker") != "aws":
        raise UsageError(f"connection '{name}' does not use the aws broker", "credential-process serves broker = \"aws\" connections only.")
    doc = process_document(AwsBroker.from_hints(hints, profile).issue(tokens.bearer))
    if use_cache:
        cache.save(profile.name, name, fingerprint, doc)
    return doc
