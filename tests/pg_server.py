"""A real PostgreSQL server for the tests: `initdb` in a temporary directory, `postgres` on a
free loopback port, stopped at the end of the run.

PostgreSQL refuses to run as root; as root the server runs as the `postgres` OS user
(Debian's package creates it) through `runuser`. Each test gets its own schema in one
database (a `search_path` in its URL), which is much faster than a database per test.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent

    def version(path: str) -> tuple[int, ...]:  # /usr/lib/postgresql/15/bin/pg_ctl -> (15,)
        name = Path(path).parent.parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=version)
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Unavailable(Exception):
    """PostgreSQL cannot be started here; the message says why."""


class PostgresServer:
    def __init__(self) -> None:
        bindir = _bindir()
        if bindir is None or not (bindir / "initdb").exists() or not (bindir / "postgres").exists():
            raise Unavailable("PostgreSQL server binaries (initdb, postgres) not found; apt-get install postgresql")
        self.bindir = bindir
        self.prefix: list[str] = []
        self.owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self.owner = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root and there is no `postgres` user to run the server as") from None
            runuser = shutil.which("runuser")
            if runuser is None:
                raise Unavailable("running as root and `runuser` is missing")
            self.prefix = [runuser, "-u", "postgres", "--"]
        self.root = Path(tempfile.mkdtemp(prefix="viking-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._schemas = itertools.count(1)
        if self.owner is not None:
            os.chown(self.root, self.owner.pw_uid, self.owner.pw_gid)

    def _run(self, *args: str, timeout: float = 120) -> None:
        result = subprocess.run(
            [*self.prefix, *args], capture_output=True, text=True, timeout=timeout, cwd=self.root, check=False
        )
        if result.returncode != 0:
            raise Unavailable(f"{Path(args[0]).name} failed: {result.stdout[-2000:]} {result.stderr[-2000:]}")

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        # Durability is not what these tests are about: no fsync, and quick checkpoints.
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=300 -c shared_buffers=32MB"
        )
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        self.admin("CREATE DATABASE viking")

    def stop(self) -> None:
        try:
            if self.data.exists():
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop", timeout=60)
        except (Unavailable, subprocess.TimeoutExpired):
            pass
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "viking", schema: str | None = None) -> str:
        base = f"postgresql://postgres@127.0.0.1:{self.port}/{database}"
        return f"{base}?options=-csearch_path%3D{schema}" if schema else base

    def admin(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url(database), autocommit=True) as conn:
                    conn.execute(sql.encode())
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def fresh_url(self) -> str:
        """A URL to a new, empty schema: a store of its own for one test."""
        schema = f"t{next(self._schemas)}"
        self.admin(f"CREATE SCHEMA {schema}", "viking")
        return self.url(schema=schema)
