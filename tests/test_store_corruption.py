"""Damaged stores: opening raises ``StoreCorruptedError``; it never returns an emptied or altered ledger.

For each backend one store is built (`record_known_usage` of test_store), closed and observed.
Each case copies it (``shutil.copytree``), damages the copy, and opens it in a child process (a
corrupt file may make an embedded database panic, abort or hang; a child keeps that from taking
pytest down and turns a hang into a timeout). The child also runs ``verify_store`` on a second
copy, which must agree with opening. The rule every case checks: opening either raises
``StoreCorruptedError`` (``StoreVersionError`` for a newer format), or returns a service whose every
answer equals the original's. Some damages must raise: a store emptied or truncated to nothing,
its data directory gone, a damaged manifest, every copy of a user's key flipped.

Run as a script by the tests: ``python tests/test_store_corruption.py probe OPEN_PATH VERIFY_PATH BACKEND``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_store import (
    BACKENDS,
    KNOWN_APPS,
    KNOWN_USERS,
    as_json,
    known_state,
    observe,
    observe_known,
    open_store,
    record_known_usage,
)
from usagemeter import Actor, StoreCorruptedError, StoreVersionError
from usagemeter.store import recover_store, verify_store
from usagemeter.types import UsageDetails

THIS_FILE = Path(__file__).resolve()
CHILD_TIMEOUT = 60.0
MANIFEST = "usagemeter.manifest"
VICTIM = b"known-17"  # a user id that is no prefix of another one (known-0 ... known-39)

Damage = Callable[[Path, str], None]


# ---- the child ---------------------------------------------------------------------------------


def outcome_of(action: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"value": action()}
    except BaseException as error:  # PanicException is a BaseException: report it, do not die
        return {"error": type(error).__name__, "message": str(error)}


def probe(open_path: str, verify_path: str, backend: str) -> dict[str, Any]:
    def observe_copy() -> Any:
        with open_store(open_path, backend) as service:
            return observe_known(service)

    return {"open": outcome_of(observe_copy), "verify": outcome_of(lambda: verify_store(verify_path))}


def run_probe(open_path: Path, verify_path: Path, backend: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(THIS_FILE), "probe", str(open_path), str(verify_path), backend],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"the child died ({result.returncode}): {result.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


# ---- the pristine store ---------------------------------------------------------------------------


def data_dir(store: Path, backend: str) -> Path:
    return store / backend


def data_files(store: Path, backend: str) -> list[Path]:
    """The backend's files (sled: everything under PATH/sled/; redb: PATH/redb/ledger.redb), largest first."""
    files = [path for path in data_dir(store, backend).rglob("*") if path.is_file()]
    assert files, f"no data files under {data_dir(store, backend)}"
    return sorted(files, key=lambda path: (-path.stat().st_size, str(path)))


@pytest.fixture(scope="module", params=BACKENDS)
def pristine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, Any]:
    """(backend, a closed store holding `record_known_usage`, what a child observes on it)."""
    backend: str = request.param
    store = tmp_path_factory.mktemp(f"pristine-{backend}") / "store"
    with open_store(store, backend, snapshot_interval=3600.0) as service:
        record_known_usage(service)
    if backend == "redb":
        assert (store / "redb" / "ledger.redb").is_file()
    probe_dir = tmp_path_factory.mktemp(f"pristine-probe-{backend}")
    report = run_probe(copy_of(store, probe_dir / "open"), copy_of(store, probe_dir / "verify"), backend)
    assert "value" in report["open"], report["open"]
    assert report["open"]["value"] == known_state()
    assert report["verify"]["value"]["backend"] == backend
    return backend, store, report["open"]["value"]


def as_dict(value: object) -> dict[str, Any]:
    assert isinstance(value, dict)
    return value


def copy_of(store: Path, destination: Path) -> Path:
    shutil.copytree(store, destination)
    return destination


# ---- damages ------------------------------------------------------------------------------------


def flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ mask]))


def flip_main_file_at(fraction: float) -> Damage:
    def damage(store: Path, backend: str) -> None:
        main = data_files(store, backend)[0]
        size = main.stat().st_size
        flip(main, min(size - 1, int(size * fraction)))

    return damage


def flip_every_file_in_the_middle(store: Path, backend: str) -> None:
    for path in data_files(store, backend):
        if path.stat().st_size:
            flip(path, path.stat().st_size // 2)


def flip_every_copy_of_a_user_id(store: Path, backend: str) -> None:
    found = 0
    for path in data_files(store, backend):
        content = path.read_bytes()
        start = content.find(VICTIM)
        while start != -1:
            flip(path, start + len(VICTIM) - 1, 0x01)  # known-17 -> known-16: a valid-looking id
            found += 1
            start = content.find(VICTIM, start + 1)
    assert found, f"{VICTIM!r} is not stored as plain bytes in any data file"


def truncate_main_file_to(fraction: float) -> Damage:
    def damage(store: Path, backend: str) -> None:
        main = data_files(store, backend)[0]
        with open(main, "r+b") as file:
            file.truncate(int(main.stat().st_size * fraction))

    return damage


def truncate_main_file_by(count: int) -> Damage:
    def damage(store: Path, backend: str) -> None:
        main = data_files(store, backend)[0]
        with open(main, "r+b") as file:
            file.truncate(max(0, main.stat().st_size - count))

    return damage


def empty_every_data_file(store: Path, backend: str) -> None:
    for path in data_files(store, backend):
        path.write_bytes(b"")


def delete_the_data_dir(store: Path, backend: str) -> None:
    shutil.rmtree(data_dir(store, backend))


def delete_the_data_files(store: Path, backend: str) -> None:
    for path in data_files(store, backend):
        path.unlink()


def delete_the_manifest(store: Path, backend: str) -> None:
    (store / MANIFEST).unlink()


def rewrite_manifest(change: Callable[[bytes], bytes]) -> Damage:
    def damage(store: Path, backend: str) -> None:
        manifest = store / MANIFEST
        manifest.write_bytes(change(manifest.read_bytes()))

    return damage


def flip_manifest_at(fraction: float) -> Damage:
    def damage(store: Path, backend: str) -> None:
        manifest = store / MANIFEST
        size = manifest.stat().st_size
        flip(manifest, min(size - 1, int(size * fraction)), 0x01)

    return damage


def other_record_count(content: bytes) -> bytes:
    """The manifest with its record count (the line naming "records"/"count") one higher."""
    lines = content.decode().splitlines(keepends=True)
    for index, line in enumerate(lines):
        if "record" in line.lower() or "count" in line.lower():
            head = line.rstrip("\r\n")
            digits = len(head) - len(head.rstrip("0123456789"))
            assert digits, f"no number at the end of the manifest line {line!r}"
            lines[index] = f"{head[:-digits]}{int(head[-digits:]) + 1}{line[len(head) :]}"
            return "".join(lines).encode()
    raise AssertionError(f"no record count in the manifest: {content!r}")


SHOULD_RAISE = "raise"  # StoreCorruptedError is the only acceptable outcome
RAISE_OR_SAME = "raise or same"  # a flip in unused space may change nothing, then the data must be equal

DAMAGES: dict[str, tuple[Damage, str]] = {
    **{
        f"flip main file at {fraction:.0%}": (flip_main_file_at(fraction), RAISE_OR_SAME)
        for fraction in (0.0, 0.002, 0.01, 0.03, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.99, 1.0)
    },
    "flip the middle of every data file": (flip_every_file_in_the_middle, RAISE_OR_SAME),
    "flip every copy of a user id": (flip_every_copy_of_a_user_id, SHOULD_RAISE),
    "truncate main file to 0": (truncate_main_file_to(0.0), SHOULD_RAISE),
    "truncate main file to 10%": (truncate_main_file_to(0.1), RAISE_OR_SAME),
    "truncate main file to half": (truncate_main_file_to(0.5), RAISE_OR_SAME),
    "truncate main file by 1 byte": (truncate_main_file_by(1), RAISE_OR_SAME),
    "truncate main file by 4 KiB": (truncate_main_file_by(4096), RAISE_OR_SAME),
    "empty every data file": (empty_every_data_file, SHOULD_RAISE),
    "delete the data files": (delete_the_data_files, SHOULD_RAISE),
    "delete the data dir": (delete_the_data_dir, SHOULD_RAISE),
    "delete the manifest": (delete_the_manifest, RAISE_OR_SAME),
    "empty the manifest": (rewrite_manifest(lambda content: b""), SHOULD_RAISE),
    "truncate the manifest": (rewrite_manifest(lambda content: content[: len(content) // 2]), SHOULD_RAISE),
    "garbage manifest": (rewrite_manifest(lambda content: b"\x00\xff" * 40), SHOULD_RAISE),
    "manifest record count off by one": (rewrite_manifest(other_record_count), SHOULD_RAISE),
    **{
        f"flip manifest at {fraction:.0%}": (flip_manifest_at(fraction), RAISE_OR_SAME)
        for fraction in (0.0, 0.25, 0.5, 0.75)
    },
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_a_damaged_store_raises_or_is_intact(
    pristine: tuple[str, Path, Any], name: str, tmp_path: Path
) -> None:
    backend, store, original = pristine
    damage, expectation = DAMAGES[name]
    damaged, for_verify = copy_of(store, tmp_path / "open"), copy_of(store, tmp_path / "verify")
    damage(damaged, backend)
    damage(for_verify, backend)
    report = run_probe(damaged, for_verify, backend)
    opened, verified = report["open"], report["verify"]
    if "value" in opened:
        altered = [
            index
            for index, (got, want) in enumerate(zip(opened["value"], original, strict=True))
            if got != want
        ]
        assert not altered, (
            f"{name}: opened WITHOUT an error and the ledger DIFFERS from the original "
            f"({len(altered)} answers differ; first: {str(opened['value'][altered[0]])[:400]}, "
            f"originally {str(original[altered[0]])[:400]})"
        )
        assert expectation == RAISE_OR_SAME, f"{name}: opened without an error (the data was intact)"
        assert "value" in verified, f"{name}: opening worked but verify_store raised {verified}"
    else:
        assert opened["error"] == "StoreCorruptedError", f"{name}: {opened}"
        assert opened["message"], "the error must name what failed"
        assert verified.get("error") == "StoreCorruptedError", f"{name}: verify_store gave {verified}"


def test_the_must_raise_cases_raise_in_process(pristine: tuple[str, Path, Any], tmp_path: Path) -> None:
    """The same through the in-process API, with the exception types (no child in between)."""
    backend, store, _ = pristine
    for index, (name, (damage, expectation)) in enumerate(DAMAGES.items()):
        if expectation != SHOULD_RAISE or name == "flip every copy of a user id":
            continue
        damaged = copy_of(store, tmp_path / f"case-{index}")
        damage(damaged, backend)
        with pytest.raises(StoreCorruptedError):
            open_store(damaged, backend).close()
            pytest.fail(f"{name}: opened")
        with pytest.raises(StoreCorruptedError):
            verify_store(damaged)


def newer_version_manifest(content: bytes, version: int) -> bytes:
    """The manifest claiming format `version`, with a checksum that holds (``crc=`` CRC-32 of the body)."""
    body = content.decode().rsplit("crc=", 1)[0]
    assert f"format={version - 1}\n" in body, body
    body = body.replace(f"format={version - 1}\n", f"format={version}\n")
    return f"{body}crc={zlib.crc32(body.encode()):08x}\n".encode()


def test_a_store_from_a_newer_format_version_is_refused(
    pristine: tuple[str, Path, Any], tmp_path: Path
) -> None:
    backend, store, original = pristine
    damaged = copy_of(store, tmp_path / "newer")
    manifest = damaged / MANIFEST
    version = verify_store(store)["format_version"]
    manifest.write_bytes(newer_version_manifest(manifest.read_bytes(), version + 1))
    for action in (lambda: open_store(damaged, backend).close(), lambda: verify_store(damaged)):
        with pytest.raises(StoreVersionError) as caught:
            action()
        assert re.search(rf"(format|version)\D{{0,3}}{version + 1}\b", str(caught.value)), str(caught.value)
    # Back to the current version (checksum recomputed) it opens: the refusal was about the version.
    body = (
        manifest.read_bytes()
        .decode()
        .rsplit("crc=", 1)[0]
        .replace(f"format={version + 1}\n", f"format={version}\n")
    )
    manifest.write_bytes(f"{body}crc={zlib.crc32(body.encode()):08x}\n".encode())
    with open_store(damaged, backend) as service:
        assert as_json(observe_known(service)) == original


VICTIM_USER = "victim-user"
VICTIM_APP = "victim-unique-app-name"  # stored as text only inside the victim's month record
VICTIM_COST = 12_345


@pytest.mark.parametrize("backend", BACKENDS)
def test_recover_keeps_every_sound_record_and_reports_the_dropped(backend: str, tmp_path: Path) -> None:
    """One record's value damaged: opening names it, recover_store drops it alone, the rest is intact.

    redb keeps values as written, so a flip inside the victim's app name reaches the record's own
    checksum. sled checksums its pages itself and refuses the whole page before any record is
    decoded: there the error cannot name the record and recovery cannot get past sled; what this
    test can demand of sled is that nothing opens, recovered or not, with altered data.
    """
    store = tmp_path / "store"
    with open_store(store, backend, snapshot_interval=3600.0) as service:
        record_known_usage(service)
        service.increment_usage(Actor(VICTIM_USER, VICTIM_APP), "kv:read", 5, VICTIM_COST)
        original = observe(service, [*KNOWN_USERS, VICTIM_USER], KNOWN_APPS, ["2026-10"])
        original_rows = service.get_actors_usage()
    records = verify_store(store)["records"]
    damaged = copy_of(store, tmp_path / "damaged")
    hits = 0
    for path in data_files(damaged, backend):
        content = path.read_bytes()
        start = content.find(VICTIM_APP.encode())
        while start != -1:
            flip(path, start + 3, 0x01)
            hits += 1
            start = content.find(VICTIM_APP.encode(), start + 1)
    assert hits, f"{VICTIM_APP!r} is not stored as plain bytes"

    with pytest.raises(StoreCorruptedError) as caught:
        open_store(damaged, backend).close()
    with pytest.raises(StoreCorruptedError):
        verify_store(damaged)
    if backend == "sled":
        try:
            recovered = recover_store(damaged)
        except StoreCorruptedError:
            with pytest.raises(StoreCorruptedError):  # still refused, never opened half-empty
                open_store(damaged, backend).close()
            return
    else:
        assert VICTIM_USER in str(caught.value), f"the error does not name the damaged record: {caught.value}"
        recovered = recover_store(damaged)
        assert recovered["kept"] == records - 1, recovered
        assert len(recovered["dropped"]) == 1 and VICTIM_USER in recovered["dropped"][0], recovered
        assert verify_store(damaged)["records"] == records - 1
    with open_store(damaged, backend) as service:
        rows = service.get_actors_usage()
        assert rows == [row for row in original_rows if row[0] != VICTIM_USER]
        blocks = observe(service, KNOWN_USERS, KNOWN_APPS, ["2026-10"])[3:]  # after global and actors lists
        assert blocks == original[3 : 3 + len(blocks)]  # every other user exactly as before
        assert service.get_global_usage()["total"] == as_dict(original[0])["total"] - VICTIM_COST
        victim = service.get_actor_month_usage_details(Actor(VICTIM_USER), "2026-10")
        assert victim == UsageDetails(usage={"total": 0}, app_totals={})
    assert recovered["kept"] + len(recovered["dropped"]) == records


if __name__ == "__main__":
    if sys.argv[1:2] == ["probe"]:
        print(json.dumps(probe(*sys.argv[2:5])), flush=True)
