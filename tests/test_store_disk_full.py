"""A full disk, for real: snapshots fail loudly, counters keep counting, the next snapshot saves all.

The tests run as root, which ignores directory permissions, so a read-only directory proves
nothing; instead the store lives on a small tmpfs (``mount -t tmpfs -o size=...``), and a filler
file takes every free byte once the store is open. Skipped only where mounting is not permitted.
"""

from __future__ import annotations

import errno
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import PRICED_TYPES, FakeClock, collect_alarms, small_cost_map
from test_store import BACKENDS, observe, open_store
from usagemeter import Actor, MeteringService, StoreWriteError
from usagemeter.store import verify_store

TMPFS_SIZE = "2m"
ACTORS_PER_ROUND = 1_000
MAX_ROUNDS = 40  # far more data than the tmpfs holds: a flush must have failed long before
APPS: list[str | None] = [None, "app-a", "app-b"]
AT_ONCE = 10.0


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError as error:
        reason = f"no mount command: {error}"
        print(reason)
        pytest.skip(reason)
    if result.returncode != 0:
        reason = f"mounting a tmpfs is not permitted here: {result.stderr.strip() or result.returncode}"
        print(reason)
        pytest.skip(reason)
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill(path: Path) -> int:
    """Writes `path` until the file system is full; returns its size."""
    chunk = b"\xa5" * 65_536
    written = 0
    with open(path, "wb", buffering=0) as file:
        while True:
            try:
                written += file.write(chunk) or 0
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                if len(chunk) == 1:
                    return written
                chunk = chunk[: len(chunk) // 2]


def record_round(services: list[MeteringService], round_: int) -> None:
    for index in range(ACTORS_PER_ROUND):
        actor = Actor(f"user-{round_:02d}-{index:04d}", APPS[index % 3])
        for service in services:
            service.increment_usage(actor, PRICED_TYPES[index % len(PRICED_TYPES)], index + 1)


def sample_users(rounds: int) -> list[str]:
    return [
        f"user-{round_:02d}-{index:04d}"
        for round_ in range(rounds)
        for index in range(0, ACTORS_PER_ROUND, 97)
    ]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_full_disk_fails_loudly_keeps_counting_and_recovers(
    backend: str, tiny_tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="usagemeter")
    clock = FakeClock()
    memory = MeteringService(small_cost_map(), clock=clock)  # the reference: same calls, no store
    store = tiny_tmpfs / "store"
    service = open_store(store, backend, clock, snapshot_interval=0.1)
    filler = tiny_tmpfs / "filler"
    finished = False
    try:
        alarms = collect_alarms(service)
        for target in (service, memory):
            target.increment_usage(Actor("early"), "kv:write", 3)
        service.flush()
        fill(filler)

        rounds, failure = 0, None
        while failure is None and rounds < MAX_ROUNDS:
            record_round([service, memory], rounds)
            rounds += 1
            try:
                service.flush()
            except StoreWriteError as error:
                failure = error
        assert failure is not None, (
            f"flush() never failed with {rounds * ACTORS_PER_ROUND} actors on a full disk"
        )
        assert str(failure), "StoreWriteError must say what failed"
        print(f"{backend}: flush() failed after {rounds * ACTORS_PER_ROUND} actors: {failure}")

        # The background snapshot fails too: an alarm of kind store_error, and a log record.
        deadline = time.monotonic() + AT_ONCE
        while not any(alarm.kind == "store_error" for alarm in alarms) and time.monotonic() < deadline:
            time.sleep(0.05)
        store_alarms = [alarm for alarm in alarms if alarm.kind == "store_error"]
        assert store_alarms, [alarm.kind for alarm in alarms]
        assert all(alarm.message for alarm in store_alarms)
        assert any(
            record.name == "usagemeter"
            and record.levelno >= logging.WARNING
            and "store_error" in record.getMessage()
            for record in caplog.records
        ), [record.getMessage() for record in caplog.records]

        # Counters keep counting in memory while the disk is full, and the queries stay right.
        record_round([service, memory], rounds)
        rounds += 1
        users = ["early", *sample_users(rounds)]
        assert observe(service, users, APPS, ["2026-10"]) == observe(memory, users, APPS, ["2026-10"])
        with pytest.raises(StoreWriteError):
            service.flush()

        # Space comes back: the next snapshot saves everything still unsaved.
        filler.unlink()
        try:
            service.flush()
        except StoreWriteError as error:
            pytest.fail(f"{backend}: flush() still fails after the space was freed: {error}")
        state = observe(service, users, APPS, ["2026-10"])
        assert state == observe(memory, users, APPS, ["2026-10"])
        finished = True
    finally:
        filler.unlink(missing_ok=True)  # so that close() can save, even after a failure
        try:
            service.close()
        except StoreWriteError:
            if finished:
                raise  # otherwise the test has already failed: report that failure, not this one
    print(f"{backend}: {sum(p.stat().st_size for p in store.rglob('*') if p.is_file())} bytes on disk")
    with open_store(store, backend, clock) as reopened:
        assert observe(reopened, users, APPS, ["2026-10"]) == state
        assert len(reopened.get_actors_usage()) == rounds * ACTORS_PER_ROUND + 1
    assert shutil.disk_usage(tiny_tmpfs).free > 0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_store_reopens_after_a_failed_batch_that_partly_landed(backend: str, tiny_tmpfs: Path) -> None:
    """A few records on a full disk: the failed batch may land in part, and the count stays right.

    The meta record's count was kept in memory across a failed snapshot, while the keys of the
    failed batch that did land were no longer new to the next one: the count went stale and the
    store, closed cleanly, refused to reopen ("should hold 2 records but 4 were found").
    """
    clock = FakeClock()
    memory = MeteringService(small_cost_map(), clock=clock)
    store = tiny_tmpfs / "store"
    filler = tiny_tmpfs / "filler"
    service = open_store(store, backend, clock, snapshot_interval=3600.0)  # only flush() writes
    users: list[str] = []
    try:
        for target in (service, memory):
            target.increment_usage(Actor("first"), "kv:write", 3)
        service.flush()
        fill(filler)
        failures = 0
        for attempt in range(200):
            user = f"while-full-{attempt}"
            users.append(user)
            for target in (service, memory):
                target.increment_usage(Actor(user, "app-a"), "kv:read", attempt + 1)
            try:
                service.flush()
            except StoreWriteError:
                failures += 1
                break
        assert failures, "flush() never failed on a full disk"
        filler.unlink()
        for target in (service, memory):
            target.increment_usage(Actor("after"), "kv:write", 5)
            for user in users:
                target.increment_usage(Actor(user, "app-a"), "kv:read", 1)
        service.flush()
    finally:
        filler.unlink(missing_ok=True)
        service.close()
    everyone = ["first", "after", *users]
    expected = observe(memory, everyone, APPS, ["2026-10"])
    with open_store(store, backend, clock) as reopened:
        assert observe(reopened, everyone, APPS, ["2026-10"]) == expected
    assert verify_store(store)["records"] == 2 * len(everyone)
