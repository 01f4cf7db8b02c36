"""A throwaway PostgreSQL cluster for the tests: Debian's server binaries, `initdb` and `pg_ctl` in a
temporary folder, listening on 127.0.0.1 only, stopped and deleted when the test session ends.

`initdb` refuses to run as root, so as root the cluster belongs to the `postgres` user the Debian
package creates. Without server binaries the tests that need one are skipped, unless
ARPO_REQUIRE_POSTGRES=1 (CI installs the package and sets it) turns the skip into a failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "arpo"


def server_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl, newest PostgreSQL first, or None."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(path.split("/")[4]))
    return Path(found[-1]).parent if found else None


def skip_or_fail(reason: str) -> None:
    if os.environ.get("ARPO_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required here (ARPO_REQUIRE_POSTGRES=1): {reason}")
    pytest.skip(reason)


@dataclass
class PostgresCluster:
    """A running server: make a fresh database per test with `new_database()`."""

    port: int
    folder: Path
    binaries: Path
    owner: str | None

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new empty database's SQLAlchemy URL."""
        import psycopg

        name = f"arpo_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.binaries / program), *args]
        if self.owner:
            command = ["runuser", "-u", self.owner, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=check)


def start_cluster() -> PostgresCluster:
    binaries = server_binaries()
    if binaries is None:
        skip_or_fail("no PostgreSQL server binaries (initdb, pg_ctl) found; install Debian's postgresql package")
    owner = _cluster_owner()
    folder = Path(tempfile.mkdtemp(prefix="arpo-pg-"))
    if owner:
        shutil.chown(folder, user=owner)
    cluster = PostgresCluster(port=_free_port(), folder=folder, binaries=binaries, owner=owner)
    data = folder / "data"
    try:
        cluster._run("initdb", "-D", str(data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-p {cluster.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        cluster._run("pg_ctl", "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "start")
    except subprocess.CalledProcessError as failure:
        log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        skip_or_fail(f"could not start PostgreSQL: {failure.stderr or failure.stdout} {log[-500:]}")
    return cluster


def _cluster_owner() -> str | None:
    """Who runs the server: `postgres` when we are root (initdb refuses root), else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        skip_or_fail("running as root and there is no postgres user to own the cluster")
    return "postgres"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
