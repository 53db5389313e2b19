"""Fuzzed stores: every tool on a randomly damaged store raises a store error or gives the data back.

For each backend one small store is built and closed. Each case (a deterministic seed) copies it,
damages the copy's data files (bit flips, a truncation, a zeroed range, two swapped 4 KiB pages,
one to three of them), and runs on copies of the damaged store: ``verify_store``; a
``MeteringService`` opening it (backend detected), observed and closed; ``recover_store`` and an
open after it. The rules each case checks:

- ``verify_store`` and opening either raise ``StoreCorruptedError`` or give exactly the original
  summary / answers; ``close()`` never raises;
- ``recover_store`` and the open after it return or raise a ``StoreError`` (recovery may drop
  records; what it keeps must open or be refused cleanly);
- nothing else escapes (no ``PanicException``, no crash of the process) and nothing is printed on
  stderr (the file descriptor itself is captured): no "panicked" message, no backtrace.

The cases run in a child process (``python tests/test_store_fuzz.py run ...``), one JSON line per
case, so an abort or a hang fails the test with the case that caused it. 100 cases per backend
by default; ``USAGEMETER_FUZZ_CASES=2000`` (``make fuzz-store``) for the long run, and
``USAGEMETER_FUZZ_SEED`` moves the seeds.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import FakeClock, small_cost_map
from test_store import BACKENDS, KNOWN_APPS, KNOWN_USERS, as_json, observe, open_store, record_known_usage
from usagemeter import MeteringService, StoreCorruptedError, StoreError
from usagemeter.store import recover_store, verify_store

THIS_FILE = Path(__file__).resolve()
CASES = int(os.environ.get("USAGEMETER_FUZZ_CASES", "100"))
FIRST_SEED = int(os.environ.get("USAGEMETER_FUZZ_SEED", "0"))
CASES_PER_CHILD = 100
SECONDS_PER_CASE = 3.0  # a generous ceiling (a case takes ~0.05-0.2 s) before a child counts as hung
PAGE = 4096
USERS = KNOWN_USERS[:12]


# ---- damages ------------------------------------------------------------------------------------


def data_files(store: Path, backend: str) -> list[Path]:
    return sorted(path for path in (store / backend).rglob("*") if path.is_file() and path.stat().st_size)


def pick_file(rng: random.Random, files: list[Path]) -> Path:
    """A data file, the larger ones more often (sled's log and snapshot, redb's only file)."""
    return rng.choices(files, weights=[path.stat().st_size for path in files])[0]


def flip_bits(rng: random.Random, path: Path) -> str:
    content = bytearray(path.read_bytes())
    flips = rng.randint(1, 8)
    for _ in range(flips):
        content[rng.randrange(len(content))] ^= 1 << rng.randrange(8)
    path.write_bytes(content)
    return f"flip {flips} bits of {path.name}"


def truncate(rng: random.Random, path: Path) -> str:
    size = path.stat().st_size
    length = rng.choice([0, rng.randrange(size), size - rng.randint(1, min(size, PAGE))])
    with open(path, "r+b") as file:
        file.truncate(length)
    return f"truncate {path.name} to {length} of {size}"


def zero_range(rng: random.Random, path: Path) -> str:
    content = bytearray(path.read_bytes())
    length = min(len(content), rng.choice([1, 8, 64, 512, PAGE, rng.randint(1, 4 * PAGE)]))
    start = rng.randrange(len(content) - length + 1)
    content[start : start + length] = bytes(length)
    path.write_bytes(content)
    return f"zero {length} bytes of {path.name} at {start}"


def swap_pages(rng: random.Random, path: Path) -> str:
    content = bytearray(path.read_bytes())
    pages = len(content) // PAGE
    if pages < 2:
        return flip_bits(rng, path)
    first, second = rng.sample(range(pages), 2)
    a, b = slice(first * PAGE, (first + 1) * PAGE), slice(second * PAGE, (second + 1) * PAGE)
    content[a], content[b] = content[b], content[a]
    path.write_bytes(content)
    return f"swap pages {first} and {second} of {path.name}"


DAMAGES: list[Callable[[random.Random, Path], str]] = [flip_bits, truncate, zero_range, swap_pages]


def damage(store: Path, backend: str, seed: int) -> list[str]:
    rng = random.Random(f"{backend}-{seed}")
    done = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        files = data_files(store, backend)
        if not files:
            break
        done.append(rng.choice(DAMAGES)(rng, pick_file(rng, files)))
    return done


# ---- the child ------------------------------------------------------------------------------------


def open_service(path: Path) -> MeteringService:
    return MeteringService(small_cost_map(), store=path, clock=FakeClock(), snapshot_interval=3600.0)


def observe_small(service: MeteringService) -> Any:
    return as_json(observe(service, USERS, KNOWN_APPS, ["2026-10"]))


@contextlib.contextmanager
def stderr_captured() -> Iterator[Callable[[], str]]:
    """Sends file descriptor 2 (Rust writes there directly) to a file; yields what was written."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        text: list[str] = []
        try:
            yield lambda: "".join(text)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text.append(capture.read().decode(errors="replace"))


def outcome(action: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"value": action()}
    except BaseException as error:  # a PanicException is a BaseException: report it
        return {
            "error": type(error).__name__,
            "store_error": isinstance(error, StoreError),
            "corrupted": isinstance(error, StoreCorruptedError),
            "message": str(error)[:500],
        }


def run_case(pristine: Path, backend: str, seed: int, work: Path) -> dict[str, Any]:
    case_dir = work / f"case-{seed}"
    damaged = case_dir / "damaged"
    shutil.copytree(pristine, damaged)
    report: dict[str, Any] = {"seed": seed, "damage": damage(damaged, backend, seed)}
    copies = {name: case_dir / name for name in ("verify", "open", "recover")}
    for path in copies.values():
        shutil.copytree(damaged, path)

    def open_and_close(path: Path) -> Any:
        service = open_service(path)
        try:
            return observe_small(service)
        finally:
            service.close()

    def recover_then_open() -> Any:
        recovered = recover_store(copies["recover"])
        return {"recovered": recovered, "open": outcome(lambda: open_and_close(copies["recover"]))}

    with stderr_captured() as stderr:
        report["verify"] = outcome(lambda: verify_store(copies["verify"]))
        report["open"] = outcome(lambda: open_and_close(copies["open"]))
        report["recover"] = outcome(recover_then_open)
    report["stderr"] = stderr()[-2000:]
    shutil.rmtree(case_dir, ignore_errors=True)
    return report


def child_main(pristine: str, backend: str, first: int, count: int, work: str) -> None:
    for seed in range(first, first + count):
        print(json.dumps(run_case(Path(pristine), backend, seed, Path(work))), flush=True)


# ---- the parent ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def pristine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, Any]:
    """(backend, a closed store, (its verify summary, what opening it observes))."""
    backend: str = request.param
    store = tmp_path_factory.mktemp(f"fuzz-{backend}") / "store"
    with open_store(store, backend, snapshot_interval=3600.0) as service:
        record_known_usage(service)
    with open_service(store) as service:
        observed = observe_small(service)
    return backend, store, (verify_store(store), observed)


def check(report: dict[str, Any], expected_summary: Any, expected_state: Any) -> list[str]:
    """What is wrong with one case's report (nothing: [])."""
    problems = []
    verified, opened, recovered = report["verify"], report["open"], report["recover"]
    if "value" in verified:
        if verified["value"] != expected_summary:
            problems.append(f"verify_store passed with a different summary: {verified['value']}")
    elif not verified["corrupted"]:
        problems.append(f"verify_store raised {verified}")
    if "value" in opened:
        if opened["value"] != expected_state:
            problems.append("opened WITHOUT an error and the ledger DIFFERS from the original")
    elif not opened["corrupted"]:
        problems.append(f"opening raised {opened}")
    if "value" in recovered:
        after = recovered["value"]["open"]
        if "error" in after and not after["store_error"]:
            problems.append(f"opening after recover_store raised {after}")
    elif not recovered["store_error"]:
        problems.append(f"recover_store raised {recovered}")
    if report["stderr"]:
        problems.append(f"stderr was written: {report['stderr'][:1000]!r}")
    return problems


CHUNKS = [
    (first, min(CASES_PER_CHILD, FIRST_SEED + CASES - first))
    for first in range(FIRST_SEED, FIRST_SEED + CASES, CASES_PER_CHILD)
]


@pytest.mark.timeout(int(CASES_PER_CHILD * SECONDS_PER_CASE) + 120)
@pytest.mark.parametrize(
    "chunk", CHUNKS, ids=[f"seeds-{first}-{first + count - 1}" for first, count in CHUNKS]
)
def test_damaged_stores_raise_a_store_error_or_are_intact(
    pristine: tuple[str, Path, Any], chunk: tuple[int, int], tmp_path: Path
) -> None:
    backend, store, (expected_summary, expected_state) = pristine
    first, count = chunk
    command = [
        sys.executable,
        str(THIS_FILE),
        "run",
        str(store),
        backend,
        str(first),
        str(count),
        str(tmp_path),
    ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=count * SECONDS_PER_CASE + 60, check=False
        )
        stdout, stderr, code = result.stdout, result.stderr, result.returncode
    except subprocess.TimeoutExpired as error:
        stdout = error.stdout.decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        stderr, code = "(hung)", None
    reports = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    failures = {}
    for report in reports:
        problems = check(report, expected_summary, expected_state)
        if problems:
            failures[report["seed"]] = {"damage": report["damage"], "problems": problems}
    outcomes = ["intact" if "value" in report["open"] else report["open"]["error"] for report in reports]
    print(
        f"{backend}: {len(reports)} cases, "
        + ", ".join(f"{outcomes.count(o)} {o}" for o in sorted(set(outcomes)))
    )
    if len(reports) < count:
        seed = first + len(reports)
        pytest.fail(
            f"{backend}: the child stopped at seed {seed} (exit {code}), damage "
            f"{damage(copy_for_replay(store, tmp_path / 'replay'), backend, seed)}: {stderr[-3000:]}"
        )
    assert code == 0, stderr[-3000:]
    assert not failures, json.dumps(failures, indent=1)[:8000]


def copy_for_replay(store: Path, destination: Path) -> Path:
    shutil.copytree(store, destination, dirs_exist_ok=True)
    return destination


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        _, _, path, backend_arg, first_arg, count_arg, work_arg = sys.argv
        child_main(path, backend_arg, int(first_arg), int(count_arg), work_arg)
