"""`hoop gateway`: load gateway.toml, set up TLS, run until stopped."""

from __future__ import annotations

from pathlib import Path

from hoopcli.errors import ConfigError, UsageError
from hoopcli.netutil import LOOPBACK_HOSTS



def start_gateway(config: str, dev_tls: str | None, insecure_listen: bool, on_ready) -> None:
    from hoopcli.gateway.app import Gateway, run_gateway
    from hoopcli.gateway.settings import load_settings
    from hoopcli.gateway.tls import make_dev_tls, server_context

    try:
        settings = load_settings(config)
    except ValueError as exc:
        raise ConfigError(f"gateway config: {exc}", "Fix gateway.toml; the README has a reference.") from None
    ca = None
    if insecure_listen:
        if settings.listen_host not in LOOPBACK_HOSTS:
            raise UsageError("--insecure-listen only binds 127.0.0.1", "Use TLS (tls_cert/tls_key or --dev-tls) for any other address.")
        ssl_ctx = None
    elif dev_tls:
        paths = make_dev_tls(Path(dev_tls))
        ssl_ctx, ca = server_context(paths["cert"], paths["key"]), paths["ca"]
    elif settings.tls_cert and settings.tls_key:
        ssl_ctx = server_context(settings.tls_cert, settings.tls_key)
    else:
        raise ConfigError(
            "the gateway has no TLS certificate",
            "Set gateway.tls_cert and gateway.tls_key, or pass --dev-tls DIR for a development CA.",
        )
    try:
        gateway = Gateway(settings)
    except ValueError as exc:
        raise ConfigError(f"gateway config: {exc}", "Fix gateway.toml; the README has a reference.") from None
    scheme = "http" if ssl_ctx is None else "https"

    def ready(port: int) -> None:
        on_ready({"event": "listening", "url": f"{scheme}://{settings.listen_host}:{port}", "ca_file": ca, "audit_store": settings.audit_store})

    run_gateway(gateway, ssl_ctx, ready)
