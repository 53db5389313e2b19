"""Keyed calls on a fleet (issue 12): idempotency keys and monthly charges recorded exactly once
across workers (services on one real Redis, and worker processes racing or killed), because the
shared ledger records a keyed call and its key in one compare-and-set."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_workers import SEAT_FEE, fleet_cost_map
from redis_support import RedisServer
from test_fleet import Spawn, spawn, start_together  # noqa: F401  (the fixture)
from usagemeter import (
    MONTHLY_CHARGES,
    Actor,
    HoldSettledError,
    IdempotencyKeyReused,
    MeteringService,
    MonthlyCharge,
    Policy,
)

ALLOWANCE = 100_000  # µ¢ a month per user


def prefix(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}-"


def worker(url: str, **options: Any) -> MeteringService:
    options.setdefault("snapshot_interval", 0.1)
    options.setdefault("policies", [Policy("temp_free", ALLOWANCE)])
    return MeteringService(fleet_cost_map(), store=url, **options)


@pytest.fixture
def two_workers(redis_server: RedisServer) -> Iterator[tuple[MeteringService, MeteringService]]:
    first, second = worker(redis_server.url), worker(redis_server.url)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def usage(service: MeteringService, user: str) -> dict[str, Any]:
    service.flush()
    details: Any = service.get_actor_current_month_usage_details(Actor(user))
    result: dict[str, Any] = details["usage"]
    return result


def test_a_key_retried_on_another_worker_records_once(
    two_workers: tuple[MeteringService, MeteringService],
) -> None:
    a, b = two_workers
    user = prefix("retry") + "u"
    actor = Actor(user)
    first = a.increment_usage(actor, "fleet:int", 8, idempotency_key="req-1")
    assert first == 1_000
    # The client timed out and retried through the other worker: replayed, not recorded.
    assert b.increment_usage(actor, "fleet:int", 8, idempotency_key="req-1") == 1_000
    assert a.increment_usage(actor, "fleet:int", 8, idempotency_key="req-1") == 1_000
    with pytest.raises(IdempotencyKeyReused):
        b.increment_usage(actor, "fleet:int", 9, idempotency_key="req-1")
    assert b.batch_increment_usages(actor, [("fleet:small", 2)], idempotency_key="req-2") == 1_006
    assert a.batch_increment_usages(actor, [("fleet:small", 2)], idempotency_key="req-2") == 1_006
    for service in (a, b):
        assert usage(service, user)["fleet:int"] == {"units": 8, "cost": 1_000, "count": 1}
        assert usage(service, user)["fleet:small"]["count"] == 1


def test_a_workers_hold_settles_once_on_the_fleet_whatever_the_key_or_the_thread(
    two_workers: tuple[MeteringService, MeteringService],
) -> None:
    """Issue 18, point 4: a keyed settle on a fleet is recorded on the shared ledger, so the
    worker's hold was dropped only after it, and a second key recorded again."""
    a, _ = two_workers
    user = prefix("hold-once") + "u"
    actor = Actor(user)
    hold = a.reserve(actor, cost=5_000)
    assert hold is not None
    assert hold.settle(usages=[("fleet:int", 8)], idempotency_key="s-1") == 1_000
    assert hold.settle(usages=[("fleet:int", 8)], idempotency_key="s-1") == 1_000  # a retry
    for key in ("s-2", None):
        with pytest.raises(HoldSettledError, match="already settled"):
            hold.settle(usages=[("fleet:int", 8)], idempotency_key=key)
    # Threads racing with keys of their own on fresh holds: one settle each records.
    holds = [a.reserve(actor, cost=200) for _ in range(20)]
    outcomes: list[str] = []

    def settle(index: int) -> None:
        for number, held in enumerate(holds):
            assert held is not None
            try:
                held.settle(usages=[("fleet:small", 1)], idempotency_key=f"h{number}-t{index}")
                outcomes.append("settled")
            except HoldSettledError:
                outcomes.append("refused")

    threads = [threading.Thread(target=settle, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (outcomes.count("settled"), outcomes.count("refused")) == (20, 40)
    recorded = usage(a, user)
    assert recorded["fleet:int"]["count"] == 1 and recorded["fleet:small"]["count"] == 20
    assert a.holds(actor) == []


def test_keyed_refunds_credit_and_tries_on_a_fleet(
    two_workers: tuple[MeteringService, MeteringService],
) -> None:
    a, b = two_workers
    user = prefix("kinds") + "u"
    actor = Actor(user)
    a.increment_usage(actor, "fleet:int", 10)  # 1,250 µ¢
    a.flush()
    b.flush()
    # A refund decided on the fleet's figures: the charge made on worker a is there.
    total, given, booked = b._refund(actor, "fleet:int", 4, None, "refund-1")
    assert (total, given, booked) == (750, 500, True)
    assert a._refund(actor, "fleet:int", 4, None, "refund-1")[:2] == (750, 500)
    with pytest.raises(ValueError, match="cannot refund"):
        a._refund(actor, "fleet:int", 7, None, "refund-2")
    assert b.update_addon_credit(user, 5_000, idempotency_key="buy-1") == 5_000
    assert a.update_addon_credit(user, 5_000, idempotency_key="buy-1") == 5_000
    a.flush()
    assert a.get_actor_addons(actor)["purchased_credits"] == 5_000
    # A keyed try: refused beyond what the fleet has free, and then nothing is kept.
    budget = ALLOWANCE + 5_000 - 750
    assert a.try_increment_usage(actor, "fleet:call", 1, budget + 1, idempotency_key="try-1") is None
    assert b.try_increment_usage(actor, "fleet:call", 1, budget, idempotency_key="try-1") == ALLOWANCE + 5_000
    assert a.try_increment_usage(actor, "fleet:call", 1, budget, idempotency_key="try-1") == ALLOWANCE + 5_000
    assert a.try_increment_usage(actor, "fleet:call", 1, 1, idempotency_key="try-2") is None
    assert usage(b, user)["fleet:call"]["count"] == 1


def test_workers_racing_one_key_record_it_once_and_keyed_tries_never_overspend(
    redis_server: RedisServer,
) -> None:
    services = [worker(redis_server.url) for _ in range(2)]
    user = prefix("race") + "u"
    actor = Actor(user)
    totals: list[int | None] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def run(index: int) -> None:
        service = services[index % 2]
        start.wait()
        for call in range(25):
            same = service.increment_usage(actor, "fleet:small", 1, idempotency_key="one-key")
            spent = service.try_increment_usage(
                actor, "fleet:call", 1, 3_000, idempotency_key=f"try-{index}-{call}"
            )
            with lock:
                totals.append(same)
                totals.append(spent)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        figures = usage(services[0], user)
        assert figures["fleet:small"] == {"units": 1, "cost": 3, "count": 1}
        spent = figures["fleet:call"]["cost"]
        assert spent <= ALLOWANCE - 3
        assert spent == 3_000 * figures["fleet:call"]["count"]
        assert spent >= ALLOWANCE - 3 - 3_000  # the racers used what was free
    finally:
        for service in services:
            service.close()


def seat_fees(service: MeteringService, user: str) -> dict[str, int]:
    figures = usage(service, user)
    entry: dict[str, int] = figures.get("fleet:seat", {"units": 0, "cost": 0, "count": 0})
    return entry


def test_monthly_charges_apply_once_across_workers(
    two_workers: tuple[MeteringService, MeteringService],
) -> None:
    a, b = two_workers
    for service in (a, b):
        service.events.on(MONTHLY_CHARGES, lambda event: [MonthlyCharge("fleet:seat", SEAT_FEE, 1)])
    user = prefix("seat") + "u"
    actor = Actor(user, app_id="an-app")
    a.increment_usage(actor, "fleet:int", 1)
    b.increment_usage(actor, "fleet:int", 1)
    assert b.apply_monthly_charges(actor).already_applied
    b.flush()  # b's charge reaches the shared ledger; a's flush below reads it
    for service in (a, b):
        assert seat_fees(service, user) == {"units": 1, "cost": SEAT_FEE, "count": 1}
        # Billed to the user, not to the app the actor acted through.
        assert service.get_actor_app_usage(Actor(user), "an-app")["total"] == 250


@pytest.mark.timeout(180)
def test_four_processes_metering_the_same_users_charge_each_seat_fee_once(
    spawn: Spawn,  # noqa: F811
    redis_server: RedisServer,
) -> None:
    users = prefix("seats")
    workers = [
        spawn(f"monthly-{index}", mode="monthly", url=redis_server.url, seed=index, prefix=users, users=40)
        for index in range(4)
    ]
    start_together(workers)
    for running in workers:
        running.finish()
    with worker(redis_server.url) as fresh:
        for index in range(40):
            assert seat_fees(fresh, f"{users}{index}") == {"units": 1, "cost": SEAT_FEE, "count": 1}
            assert usage(fresh, f"{users}{index}")["fleet:int"]["count"] == 4


@pytest.mark.timeout(180)
def test_a_worker_killed_while_applying_monthly_charges_leaves_none_doubled_or_lost(
    spawn: Spawn,  # noqa: F811
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    users = prefix("killed")
    victim = spawn(
        "monthly-victim", mode="monthly", url=redis_server.url, seed=7, prefix=users, users=400, announce=True
    )
    start_together([victim])
    for _ in range(20):
        victim.expect("metered")
    victim.kill()  # somewhere among the 400 users' first charges
    with worker(redis_server.url) as fresh:
        fresh.events.on(MONTHLY_CHARGES, lambda event: [MonthlyCharge("fleet:seat", SEAT_FEE, 1)])
        for index in range(400):
            fresh.increment_usage(Actor(f"{users}{index}"), "fleet:small", 1)
        for index in range(400):
            assert seat_fees(fresh, f"{users}{index}") == {"units": 1, "cost": SEAT_FEE, "count": 1}
