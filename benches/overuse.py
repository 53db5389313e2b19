"""Abuse must not slow metering: ns per call for users far over their allowance vs within it.

    python benches/overuse.py            # release build: `make bench-build` first

1,000 users without purchased credit in two groups of 500: "within" users are on a plan whose
allowance they never reach, "over" users are on the free plan (25,000,000 µ¢ a month) and start
at 1,000x of it. Both groups make the same calls (`increment_usage` of one unit costing a tenth of
the free allowance, random users of the group: the old rule raised an alarm every tenth call) in
interleaved rounds in one run, so the ratio is measured side by side. Alarms are
counted while timing and logged to a null handler, as a server that does not print them would.
Issue 8's target: over / within <= 1.2, with a logarithmic number of alarms per user and month.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Sequence

from usagemeter import (
    ALARM,
    GET_USER_SUBSCRIPTION,
    REGISTER_AVAILABLE_POLICIES,
    Actor,
    AlarmEvent,
    GetUserSubscriptionEvent,
    MeteringService,
    Policy,
    RegisterAvailablePoliciesEvent,
)

USERS_PER_GROUP = 500
CALLS = 100_000
ROUNDS = 7
USAGE_TYPE = "kv:write"
FREE_ALLOWANCE = 25_000_000
COST = FREE_ALLOWANCE // 10


def time_calls(service: MeteringService, calls: Sequence[Actor]) -> float:
    increment = service.increment_usage
    started = time.perf_counter()
    for actor in calls:
        increment(actor, USAGE_TYPE, 1, COST)
    return (time.perf_counter() - started) / len(calls) * 1e9


def plans(service: MeteringService) -> None:
    """Users named within-* are on a plan they never exhaust; the others are on temp_free."""

    def register(event: RegisterAvailablePoliciesEvent) -> None:
        event.available_policies.append(Policy("unlimited", 10**17))

    def subscription(event: GetUserSubscriptionEvent) -> None:
        if event.actor.user_id.startswith("within-"):
            event.user_subscription_id = "unlimited"

    service.events.on(REGISTER_AVAILABLE_POLICIES, register)
    service.events.on(GET_USER_SUBSCRIPTION, subscription)


def main() -> None:
    logger = logging.getLogger("usagemeter")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    service = MeteringService(subscription_ttl=float("inf"))
    plans(service)
    alarms: list[AlarmEvent] = []
    service.events.on(ALARM, alarms.append)
    within = [Actor(f"within-{i}") for i in range(USERS_PER_GROUP)]
    over = [Actor(f"over-{i}") for i in range(USERS_PER_GROUP)]
    assert service.get_actor_subscription(over[0]).monthly_allowance == FREE_ALLOWANCE
    for actor in within:
        service.increment_usage(actor, USAGE_TYPE, 1, COST)
    for actor in over:
        service.increment_usage(actor, USAGE_TYPE, 1, FREE_ALLOWANCE)
        service.increment_usage(actor, USAGE_TYPE, 1, 999 * FREE_ALLOWANCE)  # 1,000x
    alarms.clear()
    rng = random.Random(8)
    within_calls = [rng.choice(within) for _ in range(CALLS)]
    over_calls = [rng.choice(over) for _ in range(CALLS)]
    ratios, within_ns, over_ns = [], [], []
    for _ in range(ROUNDS):
        a = time_calls(service, within_calls)
        b = time_calls(service, over_calls)
        within_ns.append(a)
        over_ns.append(b)
        ratios.append(b / a)
    for actor in over[:3] + within[:3]:
        assert service.get_remaining_usage(actor) >= 0  # the ledger is sane after the run
    overuse = [alarm for alarm in alarms if alarm.kind == "overuse"]
    print(f"users: {USERS_PER_GROUP} within, {USERS_PER_GROUP} at 1,000x+ of the allowance; {ROUNDS} rounds")
    print(
        f"increment_usage ns/op, median: within {statistics.median(within_ns):.0f}, "
        f"over {statistics.median(over_ns):.0f}"
    )
    print(
        f"over / within, median of {ROUNDS} interleaved rounds: {statistics.median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}); target <= 1.2"
    )
    per_user = ROUNDS * CALLS // USERS_PER_GROUP
    print(
        f"overuse alarms while timing {2 * ROUNDS * CALLS:,} calls: {len(overuse)} "
        f"(an alarm at every whole multiple would have been about {ROUNDS * CALLS // 10:,}; "
        f"each over user went from 1,000x to about {1_000 + per_user // 10:,}x)"
    )


if __name__ == "__main__":
    main()
