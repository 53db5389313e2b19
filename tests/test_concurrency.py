"""Real threads, exact totals: no lost updates, no overspending, no half-applied batches."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

from support import FakeClock, app_totals_of, budget_of, global_usage, usage_of
from usagemeter import (
    GET_USER_SUBSCRIPTION,
    Actor,
    CostMap,
    GetUserSubscriptionEvent,
    MeteringService,
    Policy,
)


def run_threads(count: int, work: Callable[[int], None]) -> None:
    """Runs `work(index)` on `count` threads that start together; re-raises the first failure."""
    barrier = threading.Barrier(count)
    failures: list[BaseException] = []

    def runner(index: int) -> None:
        try:
            barrier.wait()
            work(index)
        except BaseException as error:
            failures.append(error)

    threads = [
        threading.Thread(target=runner, args=(index,), name=f"meter-{index}") for index in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def test_eight_threads_on_one_actor_lose_nothing(service: MeteringService) -> None:
    threads, per_thread = 8, 50_000
    actor = Actor("hot-user")

    def work(_: int) -> None:
        increment = service.increment_usage
        for _ in range(per_thread):
            increment(actor, "kv:read", 1)

    run_threads(threads, work)
    calls = threads * per_thread
    expected = {"total": 63 * calls, "kv:read": {"units": calls, "cost": 63 * calls, "count": calls}}
    assert usage_of(service, actor) == expected
    assert service.get_global_usage() == expected
    assert app_totals_of(service, actor) == {"os-global": {"total": 63 * calls, "count": calls}}
    assert service.get_actor_app_usage(actor, "os-global") == {"total": 63 * calls, "count": calls}
    budget = budget_of(service, actor)
    assert budget["allowance_used"] + budget["overage"] == 63 * calls


def test_eight_threads_over_ten_thousand_actors_lose_nothing(service: MeteringService) -> None:
    threads, users, rounds = 8, 10_000, 3
    actors = [Actor(f"user-{index}", "app-a" if index % 2 else None) for index in range(users)]

    def work(index: int) -> None:
        # Every thread visits every actor, each from a different starting point, so threads meet
        # on the same accounts (and on first-use account creation) all the time.
        order = actors[index * users // threads :] + actors[: index * users // threads]
        for _ in range(rounds):
            for actor in order:
                service.increment_usage(actor, "kv:write", 1)

    run_threads(threads, work)
    per_actor = threads * rounds
    for actor in actors:
        assert usage_of(service, actor) == {
            "total": 125 * per_actor,
            "kv:write": {"units": per_actor, "cost": 125 * per_actor, "count": per_actor},
        }, actor
    calls = users * per_actor
    assert service.get_global_usage() == {
        "total": 125 * calls,
        "kv:write": {"units": calls, "cost": 125 * calls, "count": calls},
    }
    assert app_totals_of(service, actors[1]) == {
        "app-a": {"total": 125 * per_actor, "count": per_actor},
        "others": {"total": 0, "count": 0},
    }


def test_sixteen_threads_racing_for_the_last_credits_of_equal_price(small_map: CostMap) -> None:
    # 1,000 µ¢ allowance + 500 µ¢ purchased = 1,500 µ¢: exactly 23 reads of 63 µ¢ fit (1,449).
    service = MeteringService(small_map, policies=(Policy("temp_free", 1_000),), clock=FakeClock())
    actor = Actor("contended")
    service.update_addon_credit("contended", 500)
    accepted: list[int] = []

    def work(_: int) -> None:
        mine = 0
        for _ in range(100):
            if service.try_increment_usage(actor, "kv:read", 1) is not None:
                mine += 1
        accepted.append(mine)

    run_threads(16, work)
    assert sum(accepted) == 23
    assert usage_of(service, actor) == {"total": 1_449, "kv:read": {"units": 23, "cost": 1_449, "count": 23}}
    assert budget_of(service, actor) == {
        "monthly_allowance": 1_000,
        "allowance_used": 1_000,
        "purchased_credits": 500,
        "consumed_purchase_credits": 449,
        "overage": 0,
        "remaining": 51,
    }


def test_sixteen_threads_racing_with_random_costs_never_overspend(small_map: CostMap) -> None:
    allowance, purchased = 60_000, 40_000
    available = allowance + purchased
    service = MeteringService(small_map, policies=(Policy("temp_free", allowance),), clock=FakeClock())
    actors = [Actor("racer", "app-a"), Actor("racer", "app-b"), Actor("racer")]
    service.update_addon_credit("racer", purchased)
    accepted_costs: list[list[int]] = [[] for _ in range(16)]

    def work(index: int) -> None:
        rng = random.Random(index)
        for attempt in range(400):
            cost = rng.randint(1, 300)
            actor = actors[attempt % len(actors)]
            if service.try_increment_usage(actor, "kv:read", 1, cost_override=cost) is not None:
                accepted_costs[index].append(cost)

    run_threads(16, work)
    spent = sum(sum(costs) for costs in accepted_costs)
    assert 0 < spent <= available
    usage = usage_of(service, Actor("racer"))
    assert usage["total"] == spent
    assert usage["kv:read"]["count"] == sum(len(costs) for costs in accepted_costs)
    budget = budget_of(service, Actor("racer"))
    assert budget["overage"] == 0
    assert budget["remaining"] == available - spent
    assert budget["allowance_used"] == min(allowance, spent)
    assert budget["consumed_purchase_credits"] == spent - min(allowance, spent)
    assert sum(entry["total"] for entry in app_totals_of(service, Actor("racer")).values()) == spent
    # 16 x 400 attempts averaging ~150 µ¢ ask for far more than is available: the budget was
    # exhausted down to less than the largest price tried.
    assert budget["remaining"] < 300


def test_concurrent_batches_are_atomic(service: MeteringService) -> None:
    actor = Actor("batcher", "app-a")
    user = Actor("batcher")
    writers, batches_per_writer = 4, 5_000
    rejected_per_thread = 2_000
    done = threading.Event()
    violations: list[str] = []
    reads = [0]

    def consistent(usage: dict[str, Any]) -> bool:
        writes = usage.get("kv:write", {"units": 0, "cost": 0, "count": 0})
        read = usage.get("kv:read", {"units": 0, "cost": 0, "count": 0})
        return bool(
            read["units"] == 2 * writes["units"]
            and read["count"] == writes["count"]
            and usage["total"] == 125 * writes["units"] + 63 * read["units"]
        )

    def work(index: int) -> None:
        if index < writers:
            for _ in range(batches_per_writer):
                service.batch_increment_usages(actor, [("kv:write", 1), ("kv:read", 2)])
        elif index < writers + 2:
            for _ in range(rejected_per_thread):
                try:
                    service.batch_increment_usages(actor, [("kv:write", 1), ("kv:read", 2), ("kv:read", -1)])
                except ValueError:
                    continue
                violations.append("a batch with a negative amount was accepted")
        else:
            # Readers: every snapshot must show whole batches only (at least one read each).
            while True:
                finished_before_read = done.is_set()
                for usage in (usage_of(service, user), global_usage(service)):
                    if not consistent(usage):
                        violations.append(f"half-applied batch visible: {usage}")
                app: Any = service.get_actor_current_month_app_usage_details(actor)
                if not consistent(app):
                    violations.append(f"half-applied batch visible in the app record: {app}")
                reads[0] += 1
                if finished_before_read:
                    break

    def work_and_signal(index: int) -> None:
        try:
            work(index)
        finally:
            if index < writers + 2:
                finished.append(index)
                if len(finished) == writers + 2:
                    done.set()

    finished: list[int] = []
    run_threads(writers + 2 + 2, work_and_signal)
    assert violations == []
    assert reads[0] > 0
    batches = writers * batches_per_writer
    expected = {
        "total": batches * (125 + 2 * 63),
        "kv:write": {"units": batches, "cost": 125 * batches, "count": batches},
        "kv:read": {"units": 2 * batches, "cost": 126 * batches, "count": batches},
    }
    assert usage_of(service, user) == expected
    assert service.get_global_usage() == expected
    assert service.get_actor_app_usage(actor, "app-a") == {"total": expected["total"], "count": 2 * batches}


def test_concurrent_set_totals_each_land_whole(service: MeteringService) -> None:
    # Each set books "target - current total" under the user's lock; a read-then-book race would
    # leave a total that is the sum of two differences, i.e. none of the targets.
    actor = Actor("adjusted")
    targets = [1_000 * (index + 1) for index in range(8)]

    def work(index: int) -> None:
        for round_ in range(500):
            service.set_actor_current_month_usage_total(actor, targets[(index + round_) % len(targets)])

    run_threads(8, work)
    usage = usage_of(service, actor)
    assert usage["total"] in targets
    assert usage["manual_adjustment"]["cost"] == usage["total"]
    assert usage["manual_adjustment"]["units"] == 0
    assert service.get_global_usage()["total"] == usage["total"]
    assert budget_of(service, actor)["allowance_used"] == usage["total"]


def test_concurrent_credit_purchases_add_up(service: MeteringService) -> None:
    def work(_: int) -> None:
        for _ in range(2_000):
            service.update_addon_credit("buyer", 3)

    run_threads(8, work)
    assert service.get_actor_addons(Actor("buyer")) == {
        "purchased_credits": 8 * 2_000 * 3,
        "consumed_purchase_credits": 0,
    }


def test_a_new_user_hit_by_many_threads_resolves_its_plan_a_few_times_at_most(
    service: MeteringService,
) -> None:
    resolutions: list[str] = []

    def count(event: GetUserSubscriptionEvent) -> None:
        resolutions.append(event.actor.user_id)

    service.events.on(GET_USER_SUBSCRIPTION, count)
    actor = Actor("newcomer")

    def work(_: int) -> None:
        for _ in range(2_000):
            service.increment_usage(actor, "kv:read", 1)

    run_threads(8, work)
    # Cached per user: not once per call (16,000 calls). Racing first calls may each resolve.
    assert 1 <= len(resolutions) <= 8
    assert usage_of(service, actor)["kv:read"] == {"units": 16_000, "cost": 63 * 16_000, "count": 16_000}
