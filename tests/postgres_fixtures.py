"""The real PostgreSQL of this machine for tests: started when it is down, one throwaway database per module.

Debian's cluster 15/main runs as the ``postgres`` user; as root these helpers start it with ``pg_ctlcluster``,
create a login role ``quidditch`` (password ``quidditch``) once, and connect over TCP on 127.0.0.1.
``QUIDDITCH_TEST_POSTGRES`` (an admin ``postgresql://`` URL) points them at another server instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

CLUSTER = ("15", "main")
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
    """Start the cluster (and create the test role) unless it answers already."""
    if os.environ.get(ADMIN_ENV):
        return
    if shutil.which("pg_ctlcluster") is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql (.ci/run does)")
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


def stop() -> None:
    """Stop the cluster at once (``-m fast``: open connections are cut, as when a database host goes away)."""
    subprocess.run(["pg_ctlcluster", *CLUSTER, "stop", "-m", "fast"], check=True, capture_output=True, timeout=60)


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
