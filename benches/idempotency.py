"""What an idempotency key costs: ns per `increment_usage` with a new key, with a retried key, and
without one, side by side (issue 12's goal: a keyed call costs at most 1.5x one without a key).

One process, one service, 1,000 users; each round times N calls of each form back to back (the
order rotated between rounds), and the medians of the rounds are compared. Every call of the
"new key" form passes a key never seen (a request id made before the timing, as a server has one
already): it is looked up, fingerprinted (SHA-256 of the payload) and kept. The "retry" form
passes the keys of the previous round again: each call only replays. Keys are kept for
`--window` seconds (120 by default: longer than a round, so that a retried key is still kept,
short enough that keys expire and are pruned over the rounds as in a steady state, and memory
stays bounded).

    make bench-idempotency                       # prints the table
    python benches/idempotency.py --write-results   # also replaces the "idempotency" section of RESULTS.md
    python benches/idempotency.py --memory       # bytes per key kept (RSS growth)
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sections import write_section  # benches/ is the script's directory, on sys.path
from usagemeter import Actor, CostMap, MeteringService, Policy

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PRICES = CostMap.from_dict({"llm:input": 2, "llm:output": 8})
GOAL = 1.5


def new_service(window: float) -> MeteringService:
    return MeteringService(
        PRICES,
        policies=[Policy("temp_free", 10**15)],
        idempotency_window=window,
        max_idempotency_keys=2**40,
        max_idempotency_keys_per_user=2**40,
    )


def timed(call: Callable[[Actor, str], object], actors: list[Actor], keys: list[str]) -> float:
    """ns per call of `call(actor, key)` over `len(keys)` calls."""
    count = len(actors)
    started = time.perf_counter_ns()
    for i, key in enumerate(keys):
        call(actors[i % count], key)
    return (time.perf_counter_ns() - started) / len(keys)


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_per_key(keys: int) -> float:
    """RSS growth per key kept: `keys` UUIDs (36 characters) over 1,000 users."""
    service = new_service(86_400.0)
    actors = [Actor(f"user-{i}") for i in range(1_000)]
    for actor in actors:
        service.increment_usage(actor, "llm:input", 1)
    names = [str(uuid.uuid4()) for _ in range(keys)]
    gc.collect()
    before = rss_bytes()
    for i, key in enumerate(names):
        service.increment_usage(actors[i % 1_000], "llm:input", 1, idempotency_key=key)
    gc.collect()
    assert service._idempotency_key_count() == keys
    return (rss_bytes() - before) / keys


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--window", type=float, default=120.0, help="idempotency_window, seconds")
    parser.add_argument("--memory", type=int, nargs="?", const=200_000, metavar="KEYS")
    parser.add_argument("--write-results", nargs="?", const=str(RESULTS), metavar="PATH")
    args = parser.parse_args()

    if args.memory:
        print(f"{memory_per_key(args.memory):.0f} bytes per key kept ({args.memory:,} keys of 36 characters)")
        return

    service = new_service(args.window)
    actors = [Actor(f"user-{i}") for i in range(1_000)]
    for actor in actors:
        service.increment_usage(actor, "llm:input", 1)  # accounts and plans in place

    # The results are checked before anything is timed: a retry records nothing and returns
    # the first call's total.
    probe = Actor("probe")
    first = service.increment_usage(probe, "llm:input", 1, idempotency_key="probe-key")
    assert service.increment_usage(probe, "llm:input", 1, idempotency_key="probe-key") == first
    assert service.get_actor_current_month_usage_details(probe)["usage"]["llm:input"]["count"] == 1

    def unkeyed(actor: Actor, key: str) -> object:
        return service.increment_usage(actor, "llm:input", 1)

    def keyed(actor: Actor, key: str) -> object:
        return service.increment_usage(actor, "llm:input", 1, idempotency_key=key)

    previous: list[str] = [f"warm-{i}" for i in range(args.calls)]
    timed(keyed, actors, previous)
    samples: dict[str, list[float]] = {"no key": [], "new key": [], "retried key": []}
    names = list(samples)
    for round_number in range(args.rounds):
        fresh = [f"{round_number}-{i}-{uuid.uuid4().hex[:8]}" for i in range(args.calls)]
        forms: dict[str, tuple[Callable[[Actor, str], object], list[str]]] = {
            "no key": (unkeyed, fresh),
            "new key": (keyed, fresh),
            "retried key": (keyed, previous),
        }
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        for name in order:
            call, keys = forms[name]
            samples[name].append(timed(call, actors, keys))
        previous = fresh
    medians = {name: statistics.median(values) for name, values in samples.items()}

    base = medians["no key"]
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    lines = [
        "<!-- idempotency -->",
        f"Made by `make bench-idempotency`: {args.calls:,} calls per form and round, "
        f"{args.rounds} rounds (order rotated), medians; 1,000 users; keys kept {args.window:g} s; "
        f"load average at the end {load}.",
        "",
        "| `increment_usage` | ns/call | / no key |",
        "|---|---:|---:|",
    ]
    for name in names:
        lines.append(f"| {name} | {medians[name]:,.0f} | {medians[name] / base:.2f}x |")
    ratio = medians["new key"] / base
    verdict = "met" if ratio <= GOAL else "missed"
    lines += [
        "",
        f"Goal: a new key costs at most {GOAL}x a call without one: {verdict} ({ratio:.2f}x).",
        "A new key is looked up, fingerprinted (SHA-256 of the payload) and kept under the account's",
        'lock; a retried key is only looked up (the "new key" form of the previous round made them).',
        "<!-- /idempotency -->",
    ]
    print("\n".join(lines))
    if args.write_results:
        title = "Idempotency keys: keyed vs unkeyed calls"
        write_section(Path(args.write_results), "idempotency", title, lines)


if __name__ == "__main__":
    main()
