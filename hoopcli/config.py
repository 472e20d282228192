"""Profiles: one TOML table per profile in the user's config dir. Never a secret.

Resolution order for each field: environment override (HOOP_ISSUER, HOOP_CLIENT_ID,
HOOP_GATEWAY, HOOP_AUDIENCE, HOOP_CA_FILE) → the profile's table → the built-in default.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from hoopcli.errors import ConfigError, NotFound, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_PROFILE = "default"
HEADER = (
    "# hoop configuration: one [profiles.NAME] table per profile.\n"
    "# This file never holds a secret: tokens live in the OS keyring or `hoop agent`.\n"
)

ENV_OVERRIDES = {
    "issuer": "HOOP_ISSUER",
    "client_id": "HOOP_CLIENT_ID",
    "gateway": "HOOP_GATEWAY",
    "audience": "HOOP_AUDIENCE",
    "ca_file": "HOOP_CA_FILE",
}
# Names that look like secrets are refused by `hoop config set`: the file must stay secret-free.
SECRET_WORDS = ("secret", "password", "token", "key")


@dataclass
class Profile:
    name: str = DEFAULT_PROFILE
    issuer: str = ""
    client_id: str = "hoop-cli"
    scopes: str = "openid email profile groups offline_access"
    audience: str = ""  # audience for CI id tokens; defaults to client_id
    gateway: str = ""  # https://gateway.example.com:8443
    ca_file: str = ""  # CA bundle or pinned CA for the gateway (and issuer)
    # Connections that do not go through a gateway (AWS APIs): {name: {broker=..., ...}}
    connections: dict | None = None

    @property
    def effective_audience(self) -> str:
        return self.audience or self.client_id

    def public_dict(self) -> dict:
        data = asdict(self)
        data["connections"] = data["connections"] or {}
        return data

    def require(self, field_name: str) -> str:
        value = getattr(self, field_name)
        if not value:
            raise ConfigError(
                f"profile '{self.name}' has no {field_name}",
                f"Set it with `hoop config set {field_name} VALUE` or {ENV_OVERRIDES.get(field_name, 'the config file')}.",
            )
        return value


SETTABLE = tuple(f.name for f in fields(Profile) if f.name not in ("name", "connections"))


def config_dir() -> Path:
    if os.environ.get("HOOP_CONFIG_DIR"):
        return Path(os.environ["HOOP_CONFIG_DIR"])
    from platformdirs import user_config_dir

    return Path(user_config_dir("hoop", appauthor=False))


def config_path() -> Path:
    return config_dir() / "config.toml"


def read_raw() -> dict:
    path = config_path()
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", "Fix the file by hand or remove it and run `hoop config set` again.") from None


def write_raw(data: dict) -> Path:
    import tomli_w

    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(HEADER + tomli_w.dumps(data), encoding="utf-8")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def active_profile_name(explicit: str | None = None) -> str:
    return explicit or os.environ.get("HOOP_PROFILE") or DEFAULT_PROFILE


def load_profile(name: str | None = None) -> Profile:
    name = active_profile_name(name)
    raw = read_raw().get("profiles", {})
    table = raw.get(name)
    if table is None and name != DEFAULT_PROFILE and not _env_configured():
        raise NotFound(f"no profile named '{name}'", f"Known profiles: {', '.join(sorted(raw)) or 'none'}. Create it with `hoop --profile {name} config set issuer URL`.")
    table = dict(table or {})
    known = {f.name for f in fields(Profile)}
    profile = Profile(name=name, **{k: v for k, v in table.items() if k in known and k != "name"})
    for field_name, env in ENV_OVERRIDES.items():
        if os.environ.get(env):
            setattr(profile, field_name, os.environ[env])
    return profile


def _env_configured() -> bool:
    return any(os.environ.get(env) for env in ENV_OVERRIDES.values())


def set_value(profile_name: str | None, key: str, value: str) -> Path:
    if key not in SETTABLE:
        if any(word in key.lower() for word in SECRET_WORDS):
            raise UsageError(f"'{key}' looks like a secret and the config file never holds one", "Use `hoop login` or HOOP_TOKEN instead.")
        raise UsageError(f"unknown setting '{key}'", f"Settable keys: {', '.join(SETTABLE)}.")
    name = active_profile_name(profile_name)
    data = read_raw()
    data.setdefault("profiles", {}).setdefault(name, {})[key] = value
    return write_raw(data)
