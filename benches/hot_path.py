"""Nanoseconds per call of the hot path, warm (one actor, one type) and cold (random pairs).

    python benches/hot_path.py            # release build: `make bench-build` first

Warm: the same actor and usage type every call, so everything the call touches stays in the
CPU caches: what is left is instructions. Cold: 200,000 calls over 20,000 (actor, type) pairs
of 20,000 users and 500 types, drawn at random, every record warm in memory but rarely in cache:
the difference is memory latency. Best of 5 passes each; everyone has purchased credit enough
that no call crosses an overuse alarm. The floor is the no-op native method with
`increment_usage`'s arguments. `batch_increment_usages` is timed per item, in batches of 100
distinct types (warm: one actor and the same 100 types; cold: a random actor and types). A rough
companion to `run.py` (no reference, no checks).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from usagemeter import Actor, MeteringService

CALLS = 200_000
BATCH = 100


def best_ns(run: Callable[[], object], calls: int) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        run()
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1e9


def calling(fn: Callable[..., object], calls: Sequence[tuple[Any, ...]]) -> Callable[[], None]:
    def run() -> None:
        for args in calls:
            fn(*args)

    return run


def adding(adds: Sequence[tuple[Callable[[int], object], int]]) -> Callable[[], None]:
    def run() -> None:
        for add, amount in adds:
            add(amount)

    return run


def batching(batch: Callable[..., object], calls: Sequence[tuple[Any, ...]]) -> Callable[[], None]:
    def run() -> None:
        for actor, items in calls:
            batch(actor, items)

    return run


def main() -> None:
    service = MeteringService()
    types = [name for name, price in sorted(service.cost_map.items()) if price > 0][:500]
    rng = random.Random(1)
    actors = [Actor(f"u{i}", email="u@example.com") for i in range(20_000)]
    for actor in actors:
        service.update_addon_credit(actor.user_id, 10**15)
    pairs = [(rng.choice(actors), rng.choice(types)) for _ in range(20_000)]
    warm = [(actors[0], types[0], 1)] * CALLS
    cold = [(*rng.choice(pairs), 1) for _ in range(CALLS)]
    for args in cold + warm[:1]:
        service.increment_usage(*args)  # every record exists before timing
    meters = {pair: service.meter(*pair).add for pair in [*pairs, (actors[0], types[0])]}
    meter_warm = [(meters[actors[0], types[0]], 1)] * CALLS
    meter_cold = [(meters[actor, usage_type], 1) for actor, usage_type, _ in cold]
    batch_warm = [(actors[0], [(name, 1) for name in types[:BATCH]])] * (CALLS // BATCH)
    batch_cold = [(rng.choice(actors), [(name, 1) for name in rng.sample(types, BATCH)]) for _ in batch_warm]
    for actor, items in batch_cold + batch_warm[:1]:
        service.batch_increment_usages(actor, items)
    rows = [
        ("floor", calling(service._noop_increment_usage, warm), calling(service._noop_increment_usage, cold)),
        ("increment_usage", calling(service.increment_usage, warm), calling(service.increment_usage, cold)),
        ("meter.add", adding(meter_warm), adding(meter_cold)),
        (
            "has_enough_credits_for",
            calling(service.has_enough_credits_for, warm),
            calling(service.has_enough_credits_for, cold),
        ),
        (
            "batch_increment_usages, per item",
            batching(service.batch_increment_usages, batch_warm),
            batching(service.batch_increment_usages, batch_cold),
        ),
    ]
    print(f"{'ns per call':<34} {'warm':>6} {'cold':>6}")
    for name, run_warm, run_cold in rows:
        print(f"{name:<34} {best_ns(run_warm, CALLS):6.0f} {best_ns(run_cold, CALLS):6.0f}")


if __name__ == "__main__":
    main()
