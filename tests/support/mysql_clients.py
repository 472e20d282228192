"""A child process for `hoop exec app-mysql -- python tests/support/mysql_clients.py MODE …`.

It reads where the tunnel is (HOOP_HOST, HOOP_PORT, HOOP_DB_USER, HOOP_DB_NAME, MYSQL_PWD) as
any program started by hoop would, drives real clients through it, and prints one JSON line
per check, so a test runs many clients for the price of one `hoop exec`.

Modes:
  clients MARK           mysql-connector (C extension and pure), PyMySQL, the mariadb CLI
  big TABLE MARK         a >16 MiB DELETE that needs approval, then SELECT 1 on the same connection
  charsets               PyMySQL logins in sjis/gbk/big5/cp932, a raw handshake in gbk
  raw TABLE              hand-made packets: COM_SET_OPTION + multi-statements, pipelining,
                         COM_MULTI, a client insisting on compression
  auth-smuggle TABLE     a DROP sent with id 2 in the same write as the login
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

HOST = os.environ.get("HOOP_HOST", "127.0.0.1")
PORT = int(os.environ.get("HOOP_PORT", "0"))
USER = os.environ.get("HOOP_DB_USER", "")
DB = os.environ.get("HOOP_DB_NAME", "")
PASSWORD = os.environ.get("MYSQL_PWD", "")

BIG_COMMENT = " /* " + "x" * (17 * 1024 * 1024) + " */"


def emit(check: str, **fields) -> None:
    print(json.dumps({"check": check, **fields}), flush=True)


def error_text(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


# ---- real clients ---------------------------------------------------------------------------------


def connector(pure: bool):
    import mysql.connector

    return mysql.connector.connect(
        host=HOST, port=PORT, user=USER, password=PASSWORD, database=DB, use_pure=pure, ssl_disabled=True
    )


def pymysql_conn(**kw):
    import pymysql

    return pymysql.connect(host=HOST, port=PORT, user=USER, password=PASSWORD, database=DB, **kw)


def one_value(conn, sql: str):
    cur = conn.cursor()
    cur.execute(sql)
    row = cur.fetchone()
    cur.close()
    return row[0] if row else None


def clients(mark: str) -> None:
    from mysql.connector import HAVE_CEXT

    emit("cext-available", ok=bool(HAVE_CEXT))
    for name, make in (
        ("cext", lambda: connector(pure=False)),
        ("pure", lambda: connector(pure=True)),
        ("pymysql", pymysql_conn),
    ):
        try:
            conn = make()
            emit(name, ok=True, cls=type(conn).__name__, value=one_value(conn, f"SELECT '{mark}-{name}'"))
            conn.close()
        except Exception as exc:  # reported, the test says which client failed and how
            emit(name, ok=False, error=error_text(exc))
    proc = subprocess.run(
        ["mariadb", "--no-defaults", "--protocol=TCP", "-h", HOST, "-P", str(PORT), "-u", USER, "-D", DB,
         "--batch", "--skip-column-names", "-e", f"SELECT '{mark}-mariadb'"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    emit("mariadb", ok=proc.returncode == 0, value=proc.stdout.strip(), error=proc.stderr.strip())


def big(table: str, mark: str) -> None:
    """The held statement's refusal must reach the client in sequence; the connection goes on."""
    for name, make in (("cext", lambda: connector(pure=False)), ("pymysql", pymysql_conn)):
        conn = make()
        cur = conn.cursor()
        try:
            cur.execute(f"DELETE FROM {table} /* {mark}-{name} */" + BIG_COMMENT)
            emit(name, refused=False)
        except Exception as exc:
            after = one_value(conn, "SELECT 1")
            emit(name, refused=True, error=error_text(exc), after=after)
        conn.close()


def charsets() -> None:
    for charset in ("sjis", "gbk", "big5", "cp932"):
        try:
            pymysql_conn(charset=charset).close()
            emit(charset, refused=False)
        except Exception as exc:
            emit(charset, refused=True, error=error_text(exc))
    raw = RawClient()
    seq, answer = raw.login(collation=28)
    emit("raw-gbk", seq=seq, answer=answer.hex(), text=answer[9:].decode(errors="replace"))


# ---- hand-made packets ----------------------------------------------------------------------------


def _native_token(password: bytes, scramble: bytes) -> bytes:
    h1 = hashlib.sha1(password).digest()
    h3 = hashlib.sha1(scramble + hashlib.sha1(h1).digest()).digest()
    return bytes(a ^ b for a, b in zip(h1, h3))


class RawClient:
    """Just enough of the protocol: native-password login, commands, whole responses."""

    CAPS = 1 | 8 | 0x200 | 0x2000 | 0x8000 | 0x20000 | 0x80000  # no multi-statements

    def __init__(self) -> None:
        self.sock = socket.create_connection((HOST, PORT), timeout=30)

    def read(self) -> tuple[int, bytes]:
        header = self._exact(4)
        return header[3], self._exact(int.from_bytes(header[:3], "little"))

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    def send(self, *packets: tuple[int, bytes]) -> None:
        self.sock.sendall(b"".join(len(p).to_bytes(3, "little") + bytes((s,)) + p for s, p in packets))

    def login(self, collation: int = 45, extra_caps: int = 0) -> tuple[int, bytes]:
        _, greeting = self.read()
        pos = greeting.index(b"\0", 1) + 1 + 4
        scramble = greeting[pos : pos + 8]
        pos += 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10
        scramble += greeting[pos : pos + 12]
        token = _native_token(PASSWORD.encode(), scramble)
        caps = self.CAPS | extra_caps
        body = caps.to_bytes(4, "little") + (1 << 24).to_bytes(4, "little") + bytes((collation,)) + b"\0" * 23
        body += USER.encode() + b"\0" + bytes((len(token),)) + token + DB.encode() + b"\0"
        self.send((1, body + b"mysql_native_password\0"))
        seq, answer = self.read()
        if answer[:1] == b"\xfe":  # auth switch
            plugin, _, data = answer[1:].partition(b"\0")
            self.send((seq + 1, _native_token(PASSWORD.encode(), data.rstrip(b"\0"))))
            seq, answer = self.read()
        return seq, answer

    def response(self) -> str:
        """One command's answer: OK, ERR (errno, text) or the rows of a text result set."""
        _, first = self.read()
        if first[0] == 0xFF:
            return f"ERR {int.from_bytes(first[1:3], 'little')} {first[9:].decode(errors='replace')}"
        if first[0] == 0x00 or (first[0] == 0xFE and len(first) < 9):
            return "OK"  # COM_SET_OPTION answers with an EOF packet
        for _ in range(first[0] + 1):  # column definitions, EOF
            self.read()
        rows = []
        while True:
            _, packet = self.read()
            if packet[0] == 0xFE and len(packet) < 9:
                return "ROWS " + ",".join(r[1 : 1 + r[0]].decode() for r in rows)
            rows.append(packet)


def query(text: str) -> tuple[int, bytes]:
    return 0, b"\x03" + text.encode()


def raw(table: str) -> None:
    c = RawClient()
    seq, answer = c.login()
    emit("login", ok=answer[:1] == b"\x00")
    c.send((0, b"\x1b\x00\x00"))  # COM_SET_OPTION: MYSQL_OPTION_MULTI_STATEMENTS_ON
    emit("set-option", answer=c.response())
    c.send(query(f"SELECT 'multi'; DROP TABLE {table}"))
    emit("multi-drop", answer=c.response())
    c.send(query("SELECT 'one'"), query(f"DROP TABLE {table}"), query("SELECT 'three'"))  # one write
    emit("pipelined", answers=[c.response(), c.response(), c.response()])
    c.send((0, b"\xfe" + b"\x00" * 8))  # COM_MULTI
    emit("com-multi", answer=c.response(), after=(c.send(query("SELECT 'after-multi'")), c.response())[1])
    compress = RawClient()
    seq, answer = compress.login(extra_caps=0x20)  # CLIENT_COMPRESS, never offered
    compress.send(query("SELECT 'uncompressed'"))
    emit("compress", login=answer[:1] == b"\x00", answer=compress.response())


def auth_smuggle(table: str) -> None:
    """A command with a non-zero sequence id sent in the same write as the login: the engine
    is still in the auth phase when it passes."""
    c = RawClient()
    _, greeting = c.read()
    pos = greeting.index(b"\0", 1) + 1 + 4
    scramble = greeting[pos : pos + 8]
    pos += 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10
    scramble += greeting[pos : pos + 12]
    token = _native_token(PASSWORD.encode(), scramble)
    body = c.CAPS.to_bytes(4, "little") + (1 << 24).to_bytes(4, "little") + b"\x2d" + b"\0" * 23
    body += USER.encode() + b"\0" + bytes((len(token),)) + token + DB.encode() + b"\0" + b"mysql_native_password\0"
    c.send((1, body), (2, b"\x03" + f"DROP TABLE {table}".encode()))
    answers = []
    try:
        for _ in range(3):
            seq, answer = c.read()
            answers.append([seq, answer[:1].hex(), answer[9:].decode(errors="replace")])
    except (ConnectionError, OSError) as exc:
        answers.append(error_text(exc))
    emit("auth-smuggle", answers=answers)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"clients": clients, "big": big, "charsets": charsets, "raw": raw, "auth-smuggle": auth_smuggle}[mode](*args)
