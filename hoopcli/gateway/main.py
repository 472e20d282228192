"""`hoop gateway`: load gateway.toml, check who owns the audit trail, set up TLS, run until stopped.

The store URL is shown only with its password replaced (`public_url`): in the ready event, the
log line and every error.
"""

from __future__ import annotations

from pathlib import Path

from hoopcli.errors import ConfigError, Unreachable, UsageError
from hoopcli.netutil import LOOPBACK_HOSTS

INIT_HINT = (
    "Run `hoop gateway init --admin-dsn postgresql://ADMIN@host/db` (or the SQL of `hoop gateway audit-schema`) "
    "as an admin role, and give the gateway a role with INSERT and SELECT only."
)


def trail_warnings(store_url: str, strict: bool) -> list[str]:
    """What would let the gateway rewrite the trail it is audited by (empty when an admin owns
    it); with `strict`, a ConfigError instead of a warning."""
    from hoopcli.gateway.audit.store import public_url

    if not store_url.startswith(("postgresql://", "postgres://")):
        if strict:
            raise ConfigError(
                "--strict: the audit store is a SQLite file, which the gateway writes and so can rewrite",
                "Use a PostgreSQL store an admin owns (hoop gateway init), or start without --strict.",
            )
        return []
    from hoopcli.gateway.audit.postgres import check_trail

    try:
        exists, findings = check_trail(store_url)
    except Exception as exc:  # psycopg's errors, their passwords scrubbed by postgres.connect
        raise Unreachable(
            f"cannot open the audit store {public_url(store_url)}: {type(exc).__name__}: {str(exc).strip()}",
            "Check gateway.audit_store and that the database is up; no statement is forwarded without it.",
        ) from None
    if not exists:
        findings.append("there is no audit table yet: the gateway creates it and so owns it")
    if findings and strict:
        raise ConfigError("--strict: the gateway could rewrite its own audit trail: " + "; ".join(findings), INIT_HINT)
    return findings


def start_gateway(config: str, dev_tls: str | None, insecure_listen: bool, on_ready, strict: bool = False) -> None:
    from hoopcli.gateway.app import Gateway, run_gateway
    from hoopcli.gateway.settings import load_settings
    from hoopcli.gateway.tls import make_dev_tls, server_context

    try:
        settings = load_settings(config)
    except ValueError as exc:
        raise ConfigError(f"gateway config: {exc}", "Fix gateway.toml; the README has a reference.") from None
    ca = None
    tls_files: tuple[str, str] | None = None  # re-read on SIGHUP (certificate rotation)
    if insecure_listen:
        if settings.listen_host not in LOOPBACK_HOSTS:
            raise UsageError("--insecure-listen only binds 127.0.0.1", "Use TLS (tls_cert/tls_key or --dev-tls) for any other address.")
        ssl_ctx = None
    elif dev_tls:
        paths = make_dev_tls(Path(dev_tls))
        ssl_ctx, ca = server_context(paths["cert"], paths["key"]), paths["ca"]
        tls_files = (str(paths["cert"]), str(paths["key"]))
    elif settings.tls_cert and settings.tls_key:
        ssl_ctx = server_context(settings.tls_cert, settings.tls_key)
        tls_files = (settings.tls_cert, settings.tls_key)
    else:
        raise ConfigError(
            "the gateway has no TLS certificate",
            "Set gateway.tls_cert and gateway.tls_key, or pass --dev-tls DIR for a development CA.",
        )
    from hoopcli.gateway.audit.store import public_url

    warnings = trail_warnings(settings.audit_store, strict)
    try:
        gateway = Gateway(settings)
    except ValueError as exc:
        raise ConfigError(f"gateway config: {exc}", "Fix gateway.toml; the README has a reference.") from None
    scheme = "http" if ssl_ctx is None else "https"

    def ready(port: int) -> None:
        on_ready({
            "event": "listening",
            "url": f"{scheme}://{settings.listen_host}:{port}",
            "ca_file": ca,
            "audit_store": public_url(settings.audit_store),
            "audit_warnings": warnings,
        })

    run_gateway(gateway, ssl_ctx, ready, tls_files)
