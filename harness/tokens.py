"""Bearer tokens for the service's admin API and the cluster servers: where they come from, and
which addresses a server may bind without one.

A token comes from a file readable by its owner alone (mode 0600 or stricter: a token that
other users can read is no secret) or from an environment variable. A token on the command
line would show in `ps`; one printed to stderr at start would land in logs. A server bound
beyond loopback without an explicitly given token is refused.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path


class TokenError(Exception):
    """A token source that cannot be used: the message names it and the fix."""


def read_token_file(path: str | Path) -> str:
    """The token in `path` (surrounding whitespace removed), refused unless the file is a
    regular file that only its owner can read or write."""
    where = Path(path)
    try:
        info = where.stat()
    except OSError as exc:
        raise TokenError(f"cannot read the token file {where}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TokenError(f"the token file {where} is not a regular file")
    if info.st_mode & 0o077:
        raise TokenError(
            f"the token file {where} has mode {stat.S_IMODE(info.st_mode):04o}: other users can "
            f"read it. Run `chmod 600 {where}`"
        )
    token = where.read_text(encoding="utf-8").strip()
    if not token:
        raise TokenError(f"the token file {where} is empty")
    return token


def token_from(file: str | None, env_var: str) -> str | None:
    """The token from `file` if given, else from the environment variable, else None."""
    if file:
        return read_token_file(file)
    token = os.environ.get(env_var, "").strip()
    return token or None


def write_token_file(path: str | Path, token: str) -> None:
    """Write `token` to a new file only its owner can read (refusing to overwrite one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps a server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost: it may resolve anywhere
