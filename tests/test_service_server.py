"""The servers' own limits and doors (issue 13, findings 4, 6 and 10): slow clients cannot hold
the file descriptors normal clients need, a token comes from the environment or a private
file, and neither server binds beyond loopback without one."""

from __future__ import annotations

import http.client
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vecmig.harness.tokens import TokenError, is_loopback, read_token_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_serve(*extra: str, files: int | None = None, **env: str) -> subprocess.Popen[str]:
    def limit() -> None:
        if files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

    return subprocess.Popen(
        [sys.executable, "-m", "vecmig", "cluster", "serve", "--dim", "4", *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit,  # noqa: PLW1509 - rlimits must be set in the child, before exec
        env={**os.environ, **env},
    )


def health(port: int, timeout: float = 10.0) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/v1/health")
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.fixture
def limited_server() -> Iterator[int]:
    """A cluster server allowed 256 file descriptors, with a 2 s header timeout."""
    port = free_port()
    process = cluster_serve(
        "--port", str(port), "--header-timeout-s", "2", "--log-level", "warning", files=256
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert health(port, 2) == 200
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_slow_clients_cannot_starve_normal_ones_of_connections(limited_server: int) -> None:
    """300 clients that never finish their headers, against a 256-descriptor server: normal
    clients are still answered, and the slow ones are closed."""
    slow: list[socket.socket] = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", limited_server), timeout=5)
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(s)
        answers = [health(limited_server) for _ in range(20)]
        assert answers == [200] * 20
        closed = 0
        for s in slow:
            s.settimeout(10)
            try:
                closed += s.recv(1) == b""
            except (ConnectionResetError, TimeoutError):
                closed += 1
        assert closed == len(slow)
    finally:
        for s in slow:
            s.close()


def test_servers_refuse_to_bind_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    env = {"VECMIG_CLUSTER_TOKEN": "", "VECMIG_ADMIN_TOKEN": ""}
    process = cluster_serve("--host", "0.0.0.0", "--port", str(free_port()), **env)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and "beyond this machine" in err
    serve = subprocess.run(
        [sys.executable, "-m", "vecmig", "serve", "--old", "fake://", "--new", "fake://"]
        + ["--dim", "4", "--state", str(tmp_path / "s.sqlite"), "--init", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert serve.returncode == 2 and "give the admin token explicitly" in serve.stderr
    assert not (tmp_path / "s.sqlite").exists()


def test_a_token_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    path.chmod(0o644)
    with pytest.raises(TokenError, match="chmod 600"):
        read_token_file(path)
    path.chmod(0o600)
    assert read_token_file(path) == "s3cret"
    process = cluster_serve("--port", str(free_port()), "--token-file", str(tmp_path / "none"))
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and "cannot read the token file" in err


def test_loopback_means_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    assert not is_loopback("myhost.example")


def test_serve_without_a_token_on_loopback_keeps_a_private_one_beside_the_state(
    tmp_path: Path,
) -> None:
    from vecmig.harness.service.command import _admin_token

    class Args:
        admin_token_file = None
        host = "127.0.0.1"
        state = str(tmp_path / "s.sqlite")

    saved = os.environ.pop("VECMIG_ADMIN_TOKEN", None)
    try:
        token = _admin_token(Args())  # type: ignore[arg-type]
        path = tmp_path / "s.sqlite.admin-token"
        assert path.read_text().strip() == token and path.stat().st_mode & 0o777 == 0o600
        assert _admin_token(Args()) == token  # type: ignore[arg-type]
    finally:
        if saved is not None:
            os.environ["VECMIG_ADMIN_TOKEN"] = saved


def test_a_server_bound_beyond_loopback_with_a_token_warns(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret")
    token.chmod(0o600)
    process = cluster_serve(
        "--host", "0.0.0.0", "--port", "0", "--token-file", str(token), "--log-level", "info"
    )
    try:
        assert process.stderr is not None
        seen = ""
        deadline = time.monotonic() + 60
        while "reachable beyond this machine" not in seen and time.monotonic() < deadline:
            seen += process.stderr.readline()
        assert "reachable beyond this machine" in seen
    finally:
        process.terminate()
        process.communicate(timeout=30)
