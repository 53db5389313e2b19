"""Store figures: snapshot and reopen time for 1,000,000 usage records, per backend, and the
throughput of ``increment_usage`` while snapshots run, as a ratio to ``store=None``.

Run with ``make bench-store`` (release build). Every figure is checked before it is timed: the
reopened store must return exactly the totals that were written. Ratios are measured side by
side in one run; times are medians of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from usagemeter import Actor, CostMap, MeteringService

TYPES = [f"bench:model-{i}:tokens" for i in range(10)]
COST_MAP = CostMap.from_dict({name: 3 + i for i, name in enumerate(TYPES)})


def fill(service: MeteringService, users: int) -> int:
    """Record one increment of every type for each user: users x 10 usage records."""
    for index in range(users):
        service.batch_increment_usages(Actor(f"user-{index:07d}"), [(t, 1 + index % 7) for t in TYPES])
    return service.get_global_usage()["total"]


def snapshot_and_reopen(backend: str, users: int, directory: Path) -> tuple[float, float, int]:
    """Seconds to write the first snapshot of ``users x 10`` records, and to reopen them."""
    store = directory / backend
    with MeteringService(COST_MAP, store=store, store_backend=backend, snapshot_interval=3600) as service:
        total = fill(service, users)
        started = time.perf_counter()
        service.flush()
        snapshot_seconds = time.perf_counter() - started
    started = time.perf_counter()
    reopened = MeteringService(COST_MAP, store=store, store_backend=backend)
    reopen_seconds = time.perf_counter() - started
    try:
        assert reopened.get_global_usage()["total"] == total, "reopened store lost usage"
        assert len(reopened.get_actors_usage()) == users
    finally:
        reopened.close()
    size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    shutil.rmtree(store)
    return snapshot_seconds, reopen_seconds, size


def increments_per_second(service: MeteringService, actors: list[Actor], calls: int) -> float:
    """Throughput of increment_usage over ``actors`` (round robin)."""
    increment = service.increment_usage
    count = len(actors)
    started = time.perf_counter()
    for i in range(calls):
        increment(actors[i % count], "bench:model-1:tokens", 1)
    return calls / (time.perf_counter() - started)


def throughput_ratio(
    backend: str, directory: Path, calls: int, repeat: int, interval: float
) -> tuple[float, float, float]:
    """Median increments/s with snapshots every ``interval`` s, without a store, and their ratio."""
    actors = [Actor(f"hot-{i}") for i in range(10_000)]
    stored = MeteringService(
        COST_MAP,
        store=directory / f"tp-{backend}-{interval}",
        store_backend=backend,
        snapshot_interval=interval,
    )
    memory = MeteringService(COST_MAP)
    with_store, without = [], []
    for _ in range(repeat):
        with_store.append(increments_per_second(stored, actors, calls))
        without.append(increments_per_second(memory, actors, calls))
    stored.flush()
    expected = 2 * repeat * calls * 4  # both services saw the same calls; price 4 µ¢
    assert stored.get_global_usage()["total"] + memory.get_global_usage()["total"] == expected
    stored.close()
    a, b = statistics.median(with_store), statistics.median(without)
    return a, b, a / b


def main() -> None:
    """Print the figures as a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000, help="users x 10 types = records")
    parser.add_argument("--calls", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="usagemeter-bench-") as tmp:
        directory = Path(tmp)
        print(f"records: {args.users * 10:,} (users {args.users:,} x {len(TYPES)} usage types)\n")
        print("| backend | first snapshot (s) | reopen + verify (s) | size on disk (MB) |")
        print("|---|---|---|---|")
        for backend in ("sled", "redb"):
            runs = [
                snapshot_and_reopen(backend, args.users, directory) for _ in range(max(1, args.repeat // 2))
            ]
            snapshot = statistics.median(r[0] for r in runs)
            reopen = statistics.median(r[1] for r in runs)
            print(f"| {backend} | {snapshot:.2f} | {reopen:.2f} | {runs[0][2] / 1e6:.0f} |")
        print(f"\nincrement_usage over 10,000 actors, {args.calls:,} calls x {args.repeat} (medians):\n")
        print("| backend | snapshot interval (s) | increments/s with snapshots | without store | ratio |")
        print("|---|---|---|---|---|")
        for backend in ("sled", "redb"):
            for interval in (1.0, 0.1):
                stored, memory, ratio = throughput_ratio(
                    backend, directory, args.calls, args.repeat, interval
                )
                print(f"| {backend} | {interval} | {stored:,.0f} | {memory:,.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
