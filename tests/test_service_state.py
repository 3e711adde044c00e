"""The service's state is never created silently, never shared by two services, never served
when it disagrees with the sides, and its problems are messages naming the path (exit 2), not
tracebacks (issue 13, findings 7 and 8)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vecmig.harness.clusters.base import Record, Side
from vecmig.harness.clusters.fake import FakeCluster
from vecmig.harness.core.phases import Phase
from vecmig.harness.core.state import Checkpoint, MigrationState
from vecmig.harness.service.resume import marker_for, resume_problems
from vecmig.harness.state import SQLiteStore, StateError

DIM = 4


def sides() -> dict[Side, FakeCluster]:
    return {Side.OLD: FakeCluster(DIM, shards=1, replicas=1), Side.NEW: FakeCluster(DIM)}


# -- opening ------------------------------------------------------------------------------------


def test_a_missing_state_is_not_created_without_init(tmp_path: Path) -> None:
    path = tmp_path / "mistyped.sqlite"
    with pytest.raises(StateError, match=f"no migration state at {path}.*--init"):
        SQLiteStore.open(path)
    assert not path.exists()
    store = SQLiteStore.open(path, init=True)
    store.save_phase(Phase.DUAL_WRITE, 1)
    store.close()
    with pytest.raises(StateError, match="already exists"):
        SQLiteStore.open(path, init=True)
    assert SQLiteStore.open(path).load().phase is Phase.DUAL_WRITE


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(b"garbage page " * 400), "file is not a database"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
    ids=["empty", "garbage", "directory"],
)
def test_a_state_that_is_not_one_is_an_error_naming_the_path(
    tmp_path: Path, make: object, message: str
) -> None:
    path = tmp_path / "state.sqlite"
    make(path)  # type: ignore[operator]
    with pytest.raises(StateError, match=message) as raised:
        SQLiteStore.open(path)
    assert str(path) in str(raised.value)


def test_a_state_this_user_cannot_write_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only mount (root ignores file modes, so the check is what is exercised)."""
    path = tmp_path / "state.sqlite"
    SQLiteStore.open(path, init=True).close()
    monkeypatch.setattr("vecmig.harness.state.os.access", lambda *_: False)
    with pytest.raises(StateError, match=f"{path} is not readable and writable"):
        SQLiteStore.open(path)


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="does not exist"):
        SQLiteStore.open(tmp_path / "nowhere" / "state.sqlite", init=True)


def test_a_second_holder_of_the_state_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    first = SQLiteStore.open(path, init=True, holder="vecmig serve, port 8100")
    with pytest.raises(StateError, match=r"in use by pid .* port 8100"):
        SQLiteStore.open(path)
    first.close()
    SQLiteStore.open(path).close()  # released with the first holder


def test_a_copy_without_the_wal_file_holds_the_current_phase(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    store = SQLiteStore.open(path, init=True)
    for epoch, phase in enumerate((Phase.DUAL_WRITE, Phase.BACKFILL), start=1):
        store.save_phase(phase, epoch)
    copy = tmp_path / "copy.sqlite"
    shutil.copy(path, copy)  # the -wal file stays behind
    assert SQLiteStore(copy).load() == MigrationState(Phase.BACKFILL, 2)
    store.close()


# -- checks against the sides ---------------------------------------------------------------------


def test_a_stale_state_is_refused_against_the_sides_markers() -> None:
    both = sides()
    for port in both.values():
        port.write_marker(marker_for("m1", Phase.SHADOW, 3))
    stale = MigrationState(Phase.BACKFILL, 2)
    problems = resume_problems(stale, "m1", both, fresh=False)
    assert len(problems) == 2 and "state is behind the sides" in problems[0]
    assert resume_problems(MigrationState(Phase.SHADOW, 3), "m1", both, fresh=False) == []
    ahead = MigrationState(Phase.CUTOVER, 4)  # crashed between saving and marking: fine
    assert resume_problems(ahead, "m1", both, fresh=False) == []


def test_sides_of_another_migration_are_refused_even_with_init() -> None:
    both = sides()
    both[Side.NEW].write_marker(marker_for("finished", Phase.DECOMMISSIONED, 5))
    problems = resume_problems(MigrationState(), "fresh", both, fresh=True)
    assert len(problems) == 1 and "belongs to migration 'finished'" in problems[0]


def test_a_resumed_state_needs_its_sides_marked() -> None:
    problems = resume_problems(MigrationState(Phase.CUTOVER, 4), "m1", sides(), fresh=False)
    assert any("carries no migration marker" in p for p in problems)


def test_a_checkpoint_ahead_of_new_is_refused() -> None:
    both = sides()
    vector = np.ones(DIM, dtype=np.float32)
    both[Side.OLD].upsert([Record(f"p{i}", vector, {}, 1) for i in range(5)])
    both[Side.NEW].upsert([Record("p0", vector, {}, 1)])
    for port in both.values():
        port.write_marker(marker_for("m1", Phase.BACKFILL, 2))
    behind = MigrationState(Phase.BACKFILL, 2, Checkpoint("p3", 4))
    assert "new lacks 'p3'" in resume_problems(behind, "m1", both, fresh=False)[0]
    fine = MigrationState(Phase.BACKFILL, 2, Checkpoint("p0", 1))
    assert resume_problems(fine, "m1", both, fresh=False) == []


# -- the command -----------------------------------------------------------------------------------


def serve(state: Path, *extra: str, wait: bool = True) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        "-m",
        "vecmig",
        "serve",
        "--old",
        "fake://?shards=1&replicas=1",
        "--new",
        "fake://?shards=1&replicas=1",
        "--dim",
        str(DIM),
        "--state",
        str(state),
        "--port",
        "0",
        "--log-level",
        "warning",
        *extra,
    ]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )


def refusal(state: Path, *extra: str) -> str:
    process = serve(state, *extra)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2, err
    assert "Traceback" not in err
    return err


def test_serve_refuses_a_mistyped_or_broken_state_with_exit_2_naming_it(tmp_path: Path) -> None:
    assert "pass --init" in refusal(tmp_path / "typo.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"\x00garbage" * 1000)
    assert str(tmp_path / "junk.sqlite") in refusal(tmp_path / "junk.sqlite")
    assert "is a directory" in refusal(tmp_path)
    assert "does not exist" in refusal(tmp_path / "no" / "state.sqlite", "--init")


def test_a_second_service_on_the_same_state_refuses_to_start(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    first = serve(state, "--init")
    try:
        lock = Path(f"{state}.lock")
        deadline = time.monotonic() + 60
        while not (lock.exists() and "vecmig serve" in lock.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr
            time.sleep(0.1)
        err = refusal(state)
        assert f"in use by pid {first.pid}" in err
    finally:
        first.terminate()
        first.communicate(timeout=30)
