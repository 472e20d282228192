"""MySQL protocol constants: capability bits, commands, refusal codes, engine states."""

from __future__ import annotations

# ---- protocol constants -------------------------------------------------------------------

CLIENT_MYSQL = 1 << 0  # CLIENT_LONG_PASSWORD; MariaDB servers leave it unset
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_COMPRESS = 1 << 5
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_SSL = 1 << 11
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
CLIENT_DEPRECATE_EOF = 1 << 24
CLIENT_OPTIONAL_RESULTSET_METADATA = 1 << 25
CLIENT_ZSTD_COMPRESSION_ALGORITHM = 1 << 26
CLIENT_QUERY_ATTRIBUTES = 1 << 27
# MariaDB's extended capabilities live in the upper 32 bits.
MARIADB_CLIENT_COM_MULTI = 1 << 33
MARIADB_CLIENT_CACHE_METADATA = 1 << 36

# Capabilities the engine cannot follow: cleared in the greeting (and so in the response).
STRIPPED_CAPABILITIES = (
    CLIENT_SSL
    | CLIENT_COMPRESS
    | CLIENT_ZSTD_COMPRESSION_ALGORITHM
    | CLIENT_QUERY_ATTRIBUTES
    | CLIENT_OPTIONAL_RESULTSET_METADATA
    | MARIADB_CLIENT_COM_MULTI
    | MARIADB_CLIENT_CACHE_METADATA
)

SERVER_MORE_RESULTS_EXISTS = 0x0008
SERVER_STATUS_CURSOR_EXISTS = 0x0040

MAX_PACKET = 0xFFFFFF  # a physical packet this long is continued by the next one

# Refusal errors sent to the client.
ERRNO_BLOCKED = 1227  # ER_SPECIFIC_ACCESS_DENIED_ERROR
ERRNO_UNSUPPORTED = 1235  # ER_NOT_SUPPORTED_YET
ERRNO_DB_ACCESS_DENIED = 1044  # ER_DBACCESS_DENIED_ERROR
ERRNO_UNKNOWN_CHARSET = 1115  # ER_UNKNOWN_CHARACTER_SET
SQLSTATE_DENY = "42000"
SQLSTATE_HOLD = "HY000"

# Commands (first payload byte of a client packet with sequence id 0).
COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_CREATE_DB = 0x05
COM_DROP_DB = 0x06
COM_REFRESH = 0x07
COM_SHUTDOWN = 0x08
COM_STATISTICS = 0x09
COM_PROCESS_INFO = 0x0A
COM_PROCESS_KILL = 0x0C
COM_DEBUG = 0x0D
COM_PING = 0x0E
COM_CHANGE_USER = 0x11
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_SET_OPTION = 0x1B
COM_STMT_FETCH = 0x1C
COM_RESET_CONNECTION = 0x1F
COM_STMT_BULK_EXECUTE = 0xFA

_GATED = frozenset(
    {COM_QUERY, COM_STMT_PREPARE, COM_INIT_DB, COM_CREATE_DB, COM_DROP_DB, COM_PROCESS_KILL, COM_SHUTDOWN, COM_REFRESH}
)
# Commands relayed without a statement event: (response kind or None when none comes back).
_PLAIN = {
    COM_QUIT: None,
    COM_STMT_CLOSE: None,
    COM_STMT_SEND_LONG_DATA: None,
    COM_PING: "simple",
    COM_STATISTICS: "simple",
    COM_DEBUG: "simple",
    COM_SET_OPTION: "simple",
    COM_STMT_RESET: "simple",
    COM_RESET_CONNECTION: "simple",
    COM_PROCESS_INFO: "result",
    COM_FIELD_LIST: "fields",
    COM_STMT_FETCH: "fetch",
}
_COMMAND_NAMES = {
    0x00: "COM_SLEEP",
    0x0B: "COM_CONNECT",
    0x0F: "COM_TIME",
    0x10: "COM_DELAYED_INSERT",
    0x12: "COM_BINLOG_DUMP",
    0x13: "COM_TABLE_DUMP",
    0x14: "COM_CONNECT_OUT",
    0x15: "COM_REGISTER_SLAVE",
    0x1D: "COM_DAEMON",
    0x1E: "COM_BINLOG_DUMP_GTID",
    0xFE: "COM_MULTI",
}
# Commands the engine may withhold whole (named in the record of a refused oversize one).
_HELD_NAMES = {
    COM_QUERY: "COM_QUERY",
    COM_INIT_DB: "COM_INIT_DB",
    COM_CREATE_DB: "COM_CREATE_DB",
    COM_DROP_DB: "COM_DROP_DB",
    COM_CHANGE_USER: "COM_CHANGE_USER",
    COM_STMT_PREPARE: "COM_STMT_PREPARE",
    COM_STMT_EXECUTE: "COM_STMT_EXECUTE",
    COM_STMT_BULK_EXECUTE: "COM_STMT_BULK_EXECUTE",
}
_REFRESH_OPTIONS = (
    (0x01, "PRIVILEGES"),
    (0x02, "LOGS"),
    (0x04, "TABLES"),
    (0x08, "HOSTS"),
    (0x10, "STATUS"),
    (0x20, "THREADS"),
    (0x40, "SLAVE"),
    (0x80, "MASTER"),
)

# Client modes: what the client's next packet is.
_GREETING, _LOGIN, _AUTH, _COMMAND, _INFILE = range(5)

# Response states of a pending command.
_FIRST, _COLDEFS, _COLEOF, _ROWS, _DEFS = range(5)

_FORWARD = object()  # a held packet goes on unchanged
_DROP = object()  # a held packet is swallowed

GRANT_USED_MESSAGE = "hoop: an approval lets a statement run once; ask again: prepare it anew to request another approval"
GRANT_PENDING_MESSAGE = (
    "hoop: a statement approved to run once is executed by the id its prepare returns; wait for that answer"
)

