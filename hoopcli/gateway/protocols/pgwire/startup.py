"""The startup phase: what a StartupMessage may ask of the server through the gateway.

A StartupMessage is a list of name/value pairs. PostgreSQL reads `user`, `database`,
`options`, `replication` and `_pq_.*` itself and applies every other pair as a setting
(`SET name = value` before the first query), as it does each `-c name=value` / `--name=value`
in `options`. None of that passes the statement gate on its own, so the engine decides here,
before a byte reaches the server:

* `database` (defaulting to `user`, as the server does) must equal the pinned database when
  the engine has one: refused with 42501, PostgreSQL's own code for "permission denied for
  database" (3D000 would claim the database does not exist, and tools react to that by
  creating it or by telling the user a falsehood).
* `replication` other than false: refused. A walsender accepts replication commands
  (BASE_BACKUP copies every file of the cluster, START_REPLICATION streams every change,
  CREATE_REPLICATION_SLOT can pin WAL until the disk fills) in a grammar and a CopyBoth
  stream the classifier cannot read.
* `_pq_.*` protocol extensions: refused; they may change framing the engine parses.
* `options` switches other than `-c name=value` / `--name=value` (e.g. `-P`, `-f`, `-e`):
  refused.
* `client_encoding` must name an encoding whose multibyte characters never contain an ASCII
  byte (see encodings.py); anything else is refused before the server switches to it.
* Every other setting is judged by the gate as the statement `SET name TO 'value'`, exactly as
  if the client had sent it as SQL (a policy that holds `SET role` holds `-c role=x` too), and
  recorded as a statement of kind "startup" when allowed. `application_name` is the only
  setting that is passed without asking: every libpq client sends it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .encodings import startup_encoding_is_safe

DENIED = "42501"  # insufficient_privilege: what PostgreSQL answers for a database one may not use
UNSUPPORTED = "0A000"  # feature_not_supported

_FALSE = frozenset({"0", "f", "fa", "fal", "fals", "false", "n", "no", "of", "off"})


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    message: str
    rule: str


@dataclass(slots=True)
class Startup:
    """A StartupMessage read: who, where, and the settings the server would apply."""

    user: str
    database: str
    settings: list[tuple[str, str]]  # (lowercase name, value) in the order the server applies them
    refusal: Refusal | None = None


def read_startup(pairs: list[tuple[str, str]], pinned_database: str | None) -> Startup:
    """Check the name/value pairs of a StartupMessage (see the module docstring)."""
    params = dict(pairs)  # the server lets a later pair win, as a dict does
    user = params.get("user", "")
    database = params.get("database") or user
    startup = Startup(user, database, [])
    try:
        _check_special(params, database, pinned_database)
        for name, value in pairs:
            if name not in ("user", "database", "options", "replication"):
                startup.settings.append((name.lower(), value))
        startup.settings += _options_settings(params.get("options", ""))
        for name, value in startup.settings:
            if name == "client_encoding" and not startup_encoding_is_safe(value):
                raise _Refuse(
                    UNSUPPORTED,
                    f"hoop: client_encoding {value} is not supported through the gateway; use UTF8",
                    "client-encoding",
                )
    except _Refuse as exc:
        startup.refusal = Refusal(*exc.args)
    return startup


def setting_statement(name: str, value: str) -> str:
    """The SQL a setting from the startup stands for, as the gate and the audit trail see it."""
    ident = name if name.replace("_", "a").replace(".", "a").isalnum() and name.isascii() else '"' + name.replace('"', '""') + '"'
    literal = value.replace("'", "''")
    if "\\" in literal:  # an E'' string reads the same whatever standard_conforming_strings says
        return f"SET {ident} TO E'{literal.replace(chr(92), chr(92) * 2)}'"
    return f"SET {ident} TO '{literal}'"


class _Refuse(Exception):
    pass


def _check_special(params: dict[str, str], database: str, pinned_database: str | None) -> None:
    replication = params.get("replication")
    if replication is not None and replication.strip().lower() not in _FALSE:
        raise _Refuse(
            UNSUPPORTED,
            "hoop: replication connections are not supported through the gateway: "
            "the replication protocol is not read or recorded",
            "replication",
        )
    if pinned_database is not None and database != pinned_database:
        raise _Refuse(DENIED, f'hoop: this connection is pinned to database "{pinned_database}"', "pinned-database")
    for name in params:
        if name.startswith("_pq_."):
            raise _Refuse(UNSUPPORTED, f"hoop: protocol extension {name} is not supported through the gateway", "protocol-extension")


def _options_settings(options: str) -> list[tuple[str, str]]:
    """The settings of a StartupMessage's `options` (split as PostgreSQL's pg_split_opts does)."""
    settings = []
    args = _split_options(options)
    k = 0
    while k < len(args):
        arg = args[k]
        if arg == "-c" and k + 1 < len(args):
            k += 1
            item = args[k]
        elif arg.startswith("-c") and len(arg) > 2:
            item = arg[2:]
        elif arg.startswith("--") and len(arg) > 2:
            item = arg[2:]
        else:
            raise _Refuse(
                UNSUPPORTED,
                f"hoop: the startup option {arg!r} is not supported through the gateway; only -c name=value is",
                "startup-option",
            )
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise _Refuse(UNSUPPORTED, f"hoop: the startup option {item!r} sets nothing (expected name=value)", "startup-option")
        settings.append((name.replace("-", "_").lower(), value))
        k += 1
    return settings


def _split_options(options: str) -> list[str]:
    """Whitespace separates arguments; a backslash takes the next character literally."""
    args: list[str] = []
    current: list[str] = []
    started = False
    k = 0
    while k < len(options):
        ch = options[k]
        if ch.isspace() and ch.isascii():
            if started:
                args.append("".join(current))
                current, started = [], False
        else:
            if ch == "\\" and k + 1 < len(options):
                k += 1
                ch = options[k]
            current.append(ch)
            started = True
        k += 1
    if started:
        args.append("".join(current))
    return args
