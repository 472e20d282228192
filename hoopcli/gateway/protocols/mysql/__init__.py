"""MySQL / MariaDB wire engine (sans-io): bytes in from either side, bytes out and events.

The relay feeds every chunk it reads to `from_client` or `from_server` and forwards what comes
back. Nothing here touches a socket or awaits.

What the engine does to the traffic
- The server greeting (Handshake v10): the engine clears the capability bits it cannot
  follow: CLIENT_SSL (the gateway terminates TLS itself), CLIENT_COMPRESS and zstd
  compression, MySQL 8 query attributes (their COM_QUERY/COM_STMT_EXECUTE framing is not
  implemented; MariaDB never offers them) and optional result-set metadata, and MariaDB's
  COM_MULTI and metadata caching.
- Capabilities are negotiated as a server does: the session uses what the client asked for
  AND the (rewritten) greeting offered. A bit the client sets without the offer (libmysqlclient
  8.x always sets CLIENT_QUERY_ATTRIBUTES) is cleared in the HandshakeResponse forwarded to the
  server, and the engine reads the response with the same agreed bits, so the server, the
  client's framing (which follows the greeting) and the engine read every packet alike. A
  client asking for TLS (an SSLRequest) gets ERR 1235/08004 and the session ends.
- The login (HandshakeResponse41, COM_CHANGE_USER) yields `SessionStarted(user, database)`.
  Its collation id must be in charsets.SAFE_COLLATION_IDS (an allow-list of ASCII-safe
  character sets); with `MySQLEngine(database="x")` its database must be empty or exactly
  `x`. A refused login gets ERR 1115/42000 (character set) or 1044/42000 ("hoop: this
  connection is pinned to database `x`") and the session ends (a ProtocolError event carries
  the reason); a refused COM_CHANGE_USER gets the same ERR, is never forwarded, and the
  session goes on as before. USE and COM_INIT_DB are the gate's to judge.
  Auth exchanges (auth switch, more data, caching_sha2, ed25519, native password) pass through
  untouched and are never parsed or recorded, nor is LOAD DATA LOCAL file content. Apart from
  the greeting's and the response's capability words every byte passes unchanged, and when
  nothing in a chunk is withheld or rewritten the very same bytes object is handed back.
- Statements. Every one that changes something or names SQL is shown to the gate first and
  withheld until it answers allow:
    COM_QUERY          -> StatementStarted(text, "query")
    COM_STMT_PREPARE   -> StatementStarted(text, "prepare"), tag "PREPARE"
    COM_INIT_DB        -> StatementStarted("USE `db`", "init_db")     (gated too: same as USE)
    COM_CREATE_DB/COM_DROP_DB/COM_PROCESS_KILL/COM_SHUTDOWN/COM_REFRESH -> the equivalent SQL
                          text ("DROP DATABASE `x`", "KILL 7", "SHUTDOWN", "FLUSH TABLES"),
                          kind "create_db", "drop_db", "kill", "shutdown", "refresh"
  COM_STMT_EXECUTE (kind "execute") and COM_STMT_BULK_EXECUTE ("bulk_execute") carry the text
  of their prepared statement and are not asked again: the prepare was. An execute of the
  MariaDB pipelining id -1 right after a refused prepare is refused too (the server would
  otherwise run the previous statement).
- An approval runs once. A statement whose prepare the gate allowed on a grant (allow with a
  request_id) may be executed once: its first execute (by id or by -1) passes, every later
  one is refused (rule "grant-used", ERR 1227/42000), and so is an execute of an id the
  server has not given out yet while such a prepare still awaits its answer (rule
  "grant-pending": it could be that id). COM_STMT_RESET does not re-arm it; COM_STMT_CLOSE,
  COM_RESET_CONNECTION and COM_CHANGE_USER forget it with the statement (ids are never
  reused in a connection). Once a session has had a granted prepare, its executes are
  withheld until complete, so that one can be refused whole: MAX_MESSAGE_BYTES applies to
  them then. Sessions without one pay an attribute check per execute. Commands that only read session state (ping,
  statistics, field list, fetch, stmt close/reset, set option, reset connection, quit) pass
  without events. Replication and other server-internal commands are refused.
- Results: one terminal event per StatementStarted, in order. OK -> "OK n rows affected"
  ("OK 1 row affected"); a result set -> "SELECT n" (n = rows); a cursor opened by an execute
  -> "CURSOR"; several results of one command (SERVER_MORE_RESULTS_EXISTS: multi-statements,
  CALL) -> their tags joined by "; ". ERR -> StatementFailed(f"{errno}/{sqlstate}", message)
  (MariaDB progress reports, errno 0xFFFF, are not errors).
- Refusals answer the client with an ERR packet whose sequence id follows the command's last
  packet (1, or more for a command sent as several 16 MiB packets; mod 256), so the session
  stays usable:
    deny -> 1227 / SQLSTATE 42000, hold -> 1227 / SQLSTATE HY000,
    refused protocol command -> 1235 / SQLSTATE 42000,
    a withheld command larger than MAX_MESSAGE_BYTES -> 1227 / 42000 (rule "too-large"; it is
    discarded as it arrives, never buffered whole, and its text is not recorded),
  message = the verdict's message (a default when empty), plus a `StatementBlocked` event. If
  earlier commands are still awaiting their answers (pipelining clients), the ERR is queued
  behind them. A gate that raises counts as deny (rule "gate-error").
- Parameters of COM_STMT_EXECUTE are decoded into strings only with record_params=True, and
  only from execute packets up to 1 MiB; otherwise (and for parameters sent as long data,
  pipelined executes whose prepare has not been answered yet, or types it cannot decode)
  they are None or the marker "<long data>".
- Framing: 3-byte length + sequence id, chunks split anywhere, 16 MiB continuation packets.
  A message the engine has to hold whole (a statement awaiting the gate) may not grow past
  MAX_MESSAGE_BYTES (a client command over it is refused, anything else is a ProtocolError);
  row data is never buffered. Anything malformed yields ProtocolError and close=True; no
  exception escapes `from_client` / `from_server`.
- Sequence ids: a client packet with id 0 starts a command; outside LOAD DATA LOCAL and the
  auth exchanges a client packet with another id is a ProtocolError (the server would refuse it
  as out of order, and letting it through unparsed would hide a statement from the gate).
  During authentication only the one packet the server asked for (the id after its auth
  switch / more-data packet) passes unread; any other ends the session before it is forwarded.

Modules, by phase: framing.py (the byte loop), login.py (greeting, HandshakeResponse,
COM_CHANGE_USER), commands.py (client commands and the gate), results.py (server answers),
params.py (execute parameters), charsets.py (the character-set allow-list), constants.py,
wire.py (readers and packet builders), state.py (bookkeeping), engine.py (MySQLEngine).
"""

from __future__ import annotations

from .charsets import SAFE_COLLATION_IDS
from .constants import (
    ERRNO_BLOCKED,
    ERRNO_UNSUPPORTED,
    GRANT_USED_MESSAGE,
    SQLSTATE_DENY,
    SQLSTATE_HOLD,
    STRIPPED_CAPABILITIES,
)
from .engine import MySQLEngine
from .wire import err_packet

__all__ = [
    "GRANT_USED_MESSAGE",
    "MySQLEngine",
    "ERRNO_BLOCKED",
    "ERRNO_UNSUPPORTED",
    "SAFE_COLLATION_IDS",
    "SQLSTATE_DENY",
    "SQLSTATE_HOLD",
    "STRIPPED_CAPABILITIES",
    "err_packet",
]
