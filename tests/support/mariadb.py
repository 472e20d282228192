"""A throw-away MariaDB server for the test session.

`mariadb_server` installs a fresh data directory, starts `mariadbd` on a free 127.0.0.1 port
with password authentication (never --skip-grant-tables) and TLS (a self-signed certificate,
so clients that opportunistically use TLS really do), creates the database `app`, the user
`app_user` (random password, all privileges on `app`) and gives `root` a random password.
It is shut down (bounded) at the end of the session.

Passwords reach the `mariadb` client through MYSQL_PWD in its environment, never argv.
"""

from __future__ import annotations

import datetime
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

_SBIN = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/usr/local/mysql/bin"])
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0


def _which(*names: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + _SBIN
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client_env(password: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYSQL")}
    env.pop("MARIADB_HOST", None)
    if password is not None:
        env["MYSQL_PWD"] = password
    return env


@dataclass
class MariaDBServer:
    host: str
    port: int
    admin_user: str
    admin_password: str
    app_user: str
    app_password: str
    database: str
    datadir: Path
    socket_path: Path
    tls_cert: Path
    client: str  # path of the `mariadb` client
    version: str

    def client_env(self, password: str | None) -> dict[str, str]:
        """Environment for a `mariadb` child: the password in MYSQL_PWD, no stray MYSQL_* vars."""
        return _client_env(password)

    def client_argv(
        self,
        *extra: str,
        port: int | None = None,
        user: str | None = None,
        database: str | None = None,
    ) -> list[str]:
        """argv for the real `mariadb` client over TCP (to this server or, with port, a relay)."""
        argv = [
            self.client,
            "--no-defaults",
            "--protocol=TCP",
            "-h",
            self.host,
            "-P",
            str(port or self.port),
            "-u",
            user or self.admin_user,
        ]
        if database:
            argv += ["-D", database]
        return argv + list(extra)

    def sql(
        self,
        statement: str,
        *,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
        port: int | None = None,
        extra: Sequence[str] = (),
        check: bool = True,
        timeout: float = 30,
    ) -> str:
        """Run `statement` with the real client (batch mode, no column names); return stdout.

        As the admin unless user/password are given. With check, a failure raises
        AssertionError carrying the client's stderr.
        """
        if user is None:
            user, password = self.admin_user, self.admin_password
        argv = self.client_argv(
            "--batch", "--skip-column-names", *extra, "-e", statement, port=port, user=user, database=database
        )
        proc = subprocess.run(
            argv, env=self.client_env(password), capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"mariadb failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout if proc.returncode == 0 else proc.stderr

    def create_database(self, prefix: str = "db") -> str:
        """A fresh database that app_user may use fully; for tests that want isolation."""
        name = f"{prefix}_{secrets.token_hex(4)}"
        self.sql(
            f"CREATE DATABASE `{name}`; GRANT ALL ON `{name}`.* TO '{self.app_user}'@'%';"
        )
        return name


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()  # SIGTERM: a clean shutdown
    try:
        proc.wait(_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _start(base: Path, server: str, install: str) -> tuple[subprocess.Popen, int, Path]:
    # A private tmpdir: installs running at the same time (parallel test sessions) otherwise
    # trip over each other's temporary tables in /tmp.
    tmpdir = base / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    install_log = base / "install.log"
    for attempt in range(2):
        datadir = base / f"data{attempt}"
        with install_log.open("ab") as log:
            result = subprocess.run(
                [
                    install,
                    "--no-defaults",
                    f"--datadir={datadir}",
                    f"--tmpdir={tmpdir}",
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--skip-name-resolve",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=180,
            )
        if result.returncode == 0:
            break
    else:
        raise RuntimeError(f"mariadb-install-db failed:\n{_log_tail(install_log)}")
    cert, key = _self_signed(base)
    error_log = base / "error.log"
    for _attempt in range(3):
        port = _free_port()
        proc = subprocess.Popen(
            [
                server,
                "--no-defaults",
                f"--datadir={datadir}",
                f"--tmpdir={tmpdir}",
                f"--socket={base / 'mysqld.sock'}",
                f"--pid-file={base / 'mysqld.pid'}",
                f"--log-error={error_log}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-doublewrite=0",
                "--max-connections=200",
                "--max-connect-errors=1000000",
                "--max-allowed-packet=64M",
                "--local-infile=1",
                f"--ssl-cert={cert}",
                f"--ssl-key={key}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if (base / "mysqld.sock").exists():
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                        s.settimeout(2)
                        if s.recv(5)[4:5] == b"\x0a":  # a protocol 10 greeting
                            return proc, port, datadir
                except OSError:
                    pass
            time.sleep(0.1)
        _stop(proc)
        if "Address already in use" not in _log_tail(error_log, 60):
            break
    raise RuntimeError(f"mariadbd did not become ready:\n{_log_tail(error_log)}")


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    server = _which("mariadbd", "mysqld")
    install = _which("mariadb-install-db", "mysql_install_db")
    client = _which("mariadb", "mysql")
    if not (server and install and client):
        pytest.skip("MariaDB (mariadbd, mariadb-install-db, mariadb) is not installed")
    base = tmp_path_factory.mktemp("mariadb")
    proc, port, datadir = _start(base, server, install)
    try:
        admin_password = secrets.token_urlsafe(18)
        app_password = secrets.token_urlsafe(18)
        setup = (
            f"ALTER USER 'root'@'localhost' IDENTIFIED BY '{admin_password}';"
            f"CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';"
            f"ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY '{admin_password}';"
            "GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;"
            "DROP USER IF EXISTS 'root'@'::1';"
            "CREATE DATABASE app;"
            f"CREATE USER 'app_user'@'%' IDENTIFIED BY '{app_password}';"
            "GRANT ALL ON app.* TO 'app_user'@'%';"
            "SELECT VERSION();"
        )
        # The first connection goes through the socket as root, who has no password yet.
        proc_setup = subprocess.run(
            [client, "--no-defaults", f"--socket={base / 'mysqld.sock'}", "-u", "root", "--batch",
             "--skip-column-names", "-e", setup],
            env=_client_env(None),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc_setup.returncode != 0:
            raise RuntimeError(f"MariaDB setup failed: {proc_setup.stderr.strip()}")
        yield MariaDBServer(
            host="127.0.0.1",
            port=port,
            admin_user="root",
            admin_password=admin_password,
            app_user="app_user",
            app_password=app_password,
            database="app",
            datadir=datadir,
            socket_path=base / "mysqld.sock",
            tls_cert=base / "server.crt",
            client=client,
            version=proc_setup.stdout.strip(),
        )
    finally:
        _stop(proc)
