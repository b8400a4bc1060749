"""The real PostgreSQL of this machine for tests: started when it is down, one throwaway database per module.

Debian's cluster 15/main runs as the ``postgres`` user; as root these helpers start it with ``pg_ctlcluster``,
create a login role ``quidditch`` (password ``quidditch``) once, and connect over TCP on 127.0.0.1.
``QUIDDITCH_TEST_POSTGRES`` (an admin ``postgresql://`` URL) points them at another server instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

CLUSTER = ("15", "main")
BINARIES = Path("/usr/lib/postgresql/15/bin")
#: Test processes (pytest-xdist workers) take this lock to start the shared cluster one at a time.
START_LOCK = Path(tempfile.gettempdir()) / "quidditch-test-postgres.lock"
ROLE = "quidditch"
ADMIN_ENV = "QUIDDITCH_TEST_POSTGRES"


def admin_dsn(dbname: str = "postgres") -> str:
    base = os.environ.get(ADMIN_ENV)
    if base:
        return base.rsplit("/", 1)[0] + "/" + dbname
    return f"postgresql://{ROLE}:{ROLE}@127.0.0.1:5432/{dbname}"


def is_up() -> bool:
    try:
        with psycopg.connect(admin_dsn(), connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _run_as_postgres(*args: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=60)


def start() -> None:
    """Start the cluster (and create the test role) unless it answers already; safe from several processes."""
    if os.environ.get(ADMIN_ENV):
        return
    if shutil.which("pg_ctlcluster") is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql (.ci/run does)")
    with START_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _start_locked()


def _start_locked() -> None:
    status = subprocess.run(["pg_ctlcluster", *CLUSTER, "status"], capture_output=True, timeout=30)
    if status.returncode != 0:
        subprocess.run(["pg_ctlcluster", *CLUSTER, "start"], check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 30
    while True:
        try:
            _run_as_postgres("psql", "-qAtc", "SELECT 1")
            break
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    _run_as_postgres(
        "psql",
        "-qc",
        f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
        f"CREATE ROLE {ROLE} LOGIN SUPERUSER PASSWORD '{ROLE}'; END IF; END$$",
    )


class PrivateCluster:
    """A PostgreSQL server of its own (fresh data directory, free port) for a test that stops and restarts it.

    The machine's shared cluster serves the other tests, which may run at the same time on other pytest-xdist
    workers; stopping it would cut them too.
    """

    def __init__(self) -> None:
        if not (BINARIES / "initdb").exists():
            raise RuntimeError(f"PostgreSQL 15 binaries not found in {BINARIES}: apt-get install -y postgresql")
        self.home = Path(tempfile.mkdtemp(prefix="qp-pg-"))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(BINARIES / args[0]), *args[1:]]
        if os.geteuid() == 0:  # the server refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def create(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.home, "postgres")
        self._run("initdb", "-D", str(self.home / "data"), "-A", "trust", "-U", "postgres", "-N")
        self.start()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.home / "data"), "-o", options, "-l", str(self.home / "log"), "-w", "start")

    def stop(self) -> None:
        """Stop at once (``-m fast``: open connections are cut, as when a database host goes away)."""
        self._run("pg_ctl", "-D", str(self.home / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivateCluster]:
    """A PostgreSQL server this test alone uses, so it may stop and restart it."""
    cluster = PrivateCluster()
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.remove()


def create_database() -> str:
    """A new empty database; its ``postgresql://`` URL."""
    start()
    name = f"qp_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return admin_dsn(name)


def drop_database(dsn: str) -> None:
    start()
    name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def empty(dsn: str) -> None:
    """Remove everything a registry stored in ``dsn`` (its tables stay)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
        ]
        for table in tables:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))


@pytest.fixture(scope="module")
def postgres_db() -> Iterator[str]:
    """A throwaway database for this test module (dropped after it)."""
    dsn = create_database()
    try:
        yield dsn
    finally:
        drop_database(dsn)


@pytest.fixture
def postgres_dsn(postgres_db: str) -> Iterator[str]:
    """The module's database, emptied for this test."""
    empty(postgres_db)
    yield postgres_db
