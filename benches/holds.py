"""What a hold costs: `reserve` + `settle` per call, against one `try_increment_usage`.

A call metered with a hold makes two native calls (reserve the worst case before, settle the
real usage after) where a strict call without one makes one (`try_increment_usage` after the
fact, which cannot protect a streaming reply). One process, one service, 1,000 users; each
round times N calls of each form back to back (the order rotated between rounds), and the
medians of the rounds are compared. Every form is checked to record the same usage first.

    make bench-holds                          # prints the table
    python benches/holds.py --write-results   # also replaces the "holds" section of RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from sections import write_section  # benches/ is the script's directory, on sys.path
from usagemeter import Actor, CostMap, MeteringService, Policy

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PRICES = CostMap.from_dict({"llm:input": 2, "llm:output": 8})
WORST = [("llm:input", 1_000), ("llm:output", 500)]  # the prompt and max_tokens
REAL = [("llm:input", 1_000), ("llm:output", 120)]  # what the reply used


def try_one(service: MeteringService, actor: Actor) -> None:
    service.try_increment_usage(actor, "llm:output", 120)


def reserve_settle_one(service: MeteringService, actor: Actor) -> None:
    hold = service.reserve(actor, cost=4_000)
    assert hold is not None
    hold.settle(usages=[("llm:output", 120)])


def try_batch(service: MeteringService, actor: Actor) -> None:
    service.try_batch_increment_usages(actor, REAL)


def reserve_settle_batch(service: MeteringService, actor: Actor) -> None:
    hold = service.reserve(actor, usages=WORST)
    assert hold is not None
    hold.settle(usages=REAL)


FORMS: dict[str, Callable[[MeteringService, Actor], None]] = {
    "try_increment_usage": try_one,
    "reserve + settle (one type)": reserve_settle_one,
    "try_batch_increment_usages (2 items)": try_batch,
    "reserve + settle (2 items)": reserve_settle_batch,
}
PAIRS = [
    ("reserve + settle (one type)", "try_increment_usage"),
    ("reserve + settle (2 items)", "try_batch_increment_usages (2 items)"),
]


def new_service() -> tuple[MeteringService, list[Actor]]:
    service = MeteringService(PRICES, policies=[Policy("temp_free", 10**15)])
    actors = [Actor(f"user-{i}") for i in range(1_000)]
    for actor in actors:
        service.increment_usage(actor, "llm:input", 1)  # accounts and plans in place
    return service, actors


def check_forms() -> None:
    """Each pair of forms records the same usage and leaves nothing held."""
    for held, plain in PAIRS:
        service, actors = new_service()
        FORMS[held](service, actors[0])
        FORMS[plain](service, actors[1])
        reports = [service.get_actor_current_month_usage_details(actor)["usage"] for actor in actors[:2]]
        assert reports[0] == reports[1], (held, plain, reports)
        assert service.get_actor_budget(actors[0])["held"] == 0


def timed(form: Callable[[MeteringService, Actor], None], n: int) -> float:
    """ns per call of `form` over `n` calls, round-robin over the users of a fresh service."""
    service, actors = new_service()
    count = len(actors)
    started = time.perf_counter_ns()
    for i in range(n):
        form(service, actors[i % count])
    return (time.perf_counter_ns() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write-results", nargs="?", const=str(RESULTS), metavar="PATH")
    args = parser.parse_args()
    check_forms()
    samples: dict[str, list[float]] = {name: [] for name in FORMS}
    names = list(FORMS)
    for round_number in range(args.rounds):
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        for name in order:
            samples[name].append(timed(FORMS[name], args.calls))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    lines = [
        "<!-- holds -->",
        f"Made by `make bench-holds`: {args.calls:,} calls per form and round, {args.rounds} rounds "
        f"(order rotated), medians; 1,000 users; load average at the end {load}.",
        "",
        "| a call metered with a hold | ns per call | without a hold | ns per call | ratio |",
        "|---|---:|---|---:|---:|",
    ]
    for held, plain in PAIRS:
        ratio = medians[held] / medians[plain]
        lines.append(f"| {held} | {medians[held]:,.0f} | `{plain}` | {medians[plain]:,.0f} | {ratio:.2f}x |")
    lines += [
        "",
        "A hold is two native calls and a `Hold` object; the figures include making and dropping it.",
        "<!-- /holds -->",
    ]
    print("\n".join(lines))
    if args.write_results:
        title = "Holds: reserve + settle vs try_increment_usage"
        write_section(Path(args.write_results), "holds", title, lines)


if __name__ == "__main__":
    main()
