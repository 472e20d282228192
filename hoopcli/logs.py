"""--debug logging, with secrets masked before any handler sees them."""

from __future__ import annotations

import logging
import re

# JWTs, bearer tokens, passwords in DSNs and key=value pairs, AWS secret-looking values.
_PATTERNS = [
    (re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[JWT]"),
    (re.compile(r"(?i)(bearer\s+)[^\s'\"]+"), r"\1[REDACTED]"),
    (re.compile(r"(?i)((?:password|passwd|secret|token|refresh_token|access_token|id_token|device_code|session_token|client_secret)[\"']?\s*[:=]\s*[\"']?)[^\s&'\",}]+"), r"\1[REDACTED]"),
    # user:password@host, in a URL or bare (an error naming a URL's netloc)
    (re.compile(r"((?:://|(?<![^\s(\[<'\"=,]))[^\s:/@'\"]+:)(?!//)[^\s@]+@"), r"\1[REDACTED]@"),
]
_PATTERNS += [
    # XML answers (AWS STS) and JSON keys in AWS's spelling.
    (re.compile(r"(<(SecretAccessKey|SessionToken|Password|Token)>)[^<]*(</\2>)"), r"\1[REDACTED]\3"),
    (re.compile(r"(\"(?:SecretAccessKey|SessionToken|client_token)\"\s*:\s*\")[^\"]+"), r"\1[REDACTED]"),
]
_known_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Values hoop handles at run time (passwords from brokers) are masked wherever they appear."""
    if value and len(value) >= 6:
        _known_secrets.add(value)


def redact(text: str) -> str:
    for secret in _known_secrets:
        text = text.replace(secret, "[REDACTED]")
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


def setup(debug: bool) -> None:
    root = logging.getLogger()
    if not debug:
        root.setLevel(logging.WARNING)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    # Third-party wire dumps (response bodies with credentials in them) stay out of hoop's
    # debug log; redaction is the second line of defence, not the first.
    for noisy in ("botocore", "boto3", "urllib3", "hvac", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.INFO)
