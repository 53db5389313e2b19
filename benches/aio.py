"""What `usagemeter.aio` adds to a call that never waits: ns per call, sync vs awaited.

One process, one service, 1,000 users; each round times N calls of each form back to back (the
order rotated between rounds), and the medians of the rounds are compared. The awaited form is
`await service.increment_usage(...)` inside one coroutine, as a request handler makes it: the
coroutine's own cost (creating and running it) is part of what is measured.

    make bench-aio            # prints the table
    python benches/aio.py --write-results   # also replaces the "aio" section of RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from sections import write_section  # benches/ is the script's directory, on sys.path
from usagemeter import Actor, CostMap, MeteringService, Policy
from usagemeter.aio import AsyncMeteringService

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PRICES = CostMap.from_dict({"llm:input": 2, "llm:output": 8})


def timed_sync(call: Callable[[Actor], object], actors: list[Actor], n: int) -> float:
    """ns per call of `call(actor)` over `n` calls."""
    count = len(actors)
    started = time.perf_counter_ns()
    for i in range(n):
        call(actors[i % count])
    return (time.perf_counter_ns() - started) / n


def timed_async(call: Callable[[Actor], object], actors: list[Actor], n: int) -> float:
    """ns per awaited call of the coroutine function `call(actor)`, in one running loop."""

    async def run() -> float:
        count = len(actors)
        started = time.perf_counter_ns()
        for i in range(n):
            await call(actors[i % count])  # type: ignore[misc]
        return (time.perf_counter_ns() - started) / n

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write-results", nargs="?", const=str(RESULTS), metavar="PATH")
    args = parser.parse_args()

    service = MeteringService(PRICES, policies=[Policy("temp_free", 10**15)])
    aio = AsyncMeteringService(service)
    actors = [Actor(f"user-{i}") for i in range(1_000)]
    for actor in actors:
        service.increment_usage(actor, "llm:input", 1)  # accounts and plans in place

    forms: dict[str, Callable[[], float]] = {
        "increment_usage (sync)": lambda: timed_sync(
            lambda a: service.increment_usage(a, "llm:input", 1), actors, args.calls
        ),
        "increment_usage (await)": lambda: timed_async(
            lambda a: aio.increment_usage(a, "llm:input", 1), actors, args.calls
        ),
        "try_increment_usage (sync)": lambda: timed_sync(
            lambda a: service.try_increment_usage(a, "llm:output", 1), actors, args.calls
        ),
        "try_increment_usage (await)": lambda: timed_async(
            lambda a: aio.try_increment_usage(a, "llm:output", 1), actors, args.calls
        ),
        "has_enough_credits_for (sync)": lambda: timed_sync(
            lambda a: service.has_enough_credits_for(a, "llm:output", 100), actors, args.calls
        ),
        "has_enough_credits_for (await)": lambda: timed_async(
            lambda a: aio.has_enough_credits_for(a, "llm:output", 100), actors, args.calls
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in forms}
    names = list(forms)
    for round_number in range(args.rounds):
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        for name in order:
            samples[name].append(forms[name]())
    medians = {name: statistics.median(values) for name, values in samples.items()}

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    lines = [
        "<!-- aio -->",
        f"Made by `make bench-aio`: {args.calls:,} calls per form and round, {args.rounds} rounds "
        f"(order rotated), medians; 1,000 users; load average at the end {load}.",
        "",
        "| call | sync ns/call | awaited ns/call | awaited / sync |",
        "|---|---:|---:|---:|",
    ]
    for call in ("increment_usage", "try_increment_usage", "has_enough_credits_for"):
        sync, awaited = medians[f"{call} (sync)"], medians[f"{call} (await)"]
        lines.append(f"| `{call}` | {sync:,.0f} | {awaited:,.0f} | {awaited / sync:.2f}x |")
    lines += [
        "",
        "The difference is the coroutine: creating it, running it to its end, and the `await`.",
        "The native call inside is the same one.",
        "<!-- /aio -->",
    ]
    print("\n".join(lines))
    if args.write_results:
        write_section(Path(args.write_results), "aio", "Async API: awaited calls vs sync calls", lines)


if __name__ == "__main__":
    main()
