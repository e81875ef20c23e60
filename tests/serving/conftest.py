"""Real services for the serving tests: a private PostgreSQL cluster, store URLs for both databases.

- `require_or_skip(what, why)`: a test that needs an external program (PostgreSQL, Chromium) skips
  without it, or fails when `RECGPT_REQUIRE_SERVICES=1` (CI sets it, so a missing service never passes
  silently).
- `pg_cluster` (session): `initdb` into a temporary folder and `pg_ctl start` on a free loopback port,
  stopped at the end. As root (initdb refuses root) the binaries run as the `postgres` system user.
- `store_url`: parametrised over `sqlite` and `postgresql`, an empty database per test.
- `fresh_store`: a `Store` opened (migrated) on `store_url`, closed after the test.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from recgpt.serving.store import Store

REQUIRE_ENV = "RECGPT_REQUIRE_SERVICES"
PG_SYSTEM_USER = "postgres"


def require_or_skip(what: str, why: str) -> None:
    """Skip the test because `what` is unavailable (`why`), or fail when services are required."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{what} is required ({REQUIRE_ENV}=1) but {why}", pytrace=False)
    pytest.skip(f"{what} not available: {why}")


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def pg_bin_dir() -> Path | None:
    """The newest PostgreSQL server binaries: Debian's /usr/lib/postgresql/N/bin, else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    """A running private cluster; `new_database()` gives each test its own empty database."""

    bin_dir: Path
    root: Path
    port: int
    as_user: list[str]
    _names: Iterator[int] = field(default_factory=lambda: count(1))

    @property
    def data(self) -> Path:
        return self.root / "data"

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program as the cluster's owner, from a folder that owner can read."""
        cmd = [*self.as_user, str(self.bin_dir / tool), *args]
        proc = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
        return proc

    def url(self, database: str) -> str:
        return f"postgresql://{PG_SYSTEM_USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database and return its URL."""
        name = f"t{next(self._names)}"
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_SYSTEM_USER, name)
        return self.url(name)


def _start_cluster() -> PgCluster:
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        require_or_skip("PostgreSQL", "no initdb/pg_ctl in /usr/lib/postgresql/*/bin or on PATH")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="recgpt-pg-"))  # under /tmp: readable by the postgres user
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            require_or_skip("PostgreSQL", "running as root without runuser to drop to the postgres user")
        try:
            shutil.chown(root, PG_SYSTEM_USER, PG_SYSTEM_USER)
        except (LookupError, PermissionError) as exc:
            require_or_skip("PostgreSQL", f"running as root and no usable '{PG_SYSTEM_USER}' user ({exc})")
        as_user = ["runuser", "-u", PG_SYSTEM_USER, "--"]
    cluster = PgCluster(bin_dir=bin_dir, root=root, port=_free_port(), as_user=as_user)
    cluster.run(
        "initdb", "-D", str(cluster.data), "-U", PG_SYSTEM_USER, "--auth=trust", "-E", "UTF8", "--no-sync"
    )
    opts = (
        f"-k {root} -c listen_addresses=127.0.0.1 -p {cluster.port} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"  # a throwaway cluster: speed
    )
    cluster.run(
        "pg_ctl", "start", "-w", "-t", "60", "-D", str(cluster.data), "-l", str(root / "log"), "-o", opts
    )
    return cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster on loopback for the whole test session."""
    cluster = _start_cluster()
    try:
        yield cluster
    finally:
        cluster.run("pg_ctl", "stop", "-m", "fast", "-w", "-D", str(cluster.data), check=False)
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database's URL: a SQLite file in tmp_path, or a new database in the private cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'serving.db'}"
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database()


@pytest.fixture
def fresh_store(store_url: str) -> Iterator[Store]:
    """A migrated, empty `Store` on `store_url`, closed after the test."""
    from recgpt.serving.store import Store

    store = Store.open(store_url)
    try:
        yield store
    finally:
        store.close()
