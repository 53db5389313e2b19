"""Monthly recurring charges (issue 12, point 4): listeners of ``metering:monthlyCharges`` return
charges for a user, applied exactly once per user and month (at the user's first charge of the
month, or by ``apply_monthly_charges``), billed to the user, not to the app, under races and
restarts."""

from __future__ import annotations

import asyncio
import calendar
import logging
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import monthly_crash as crash_child
import pytest
from redis_support import RedisServer
from support import FakeClock
from usagemeter import (
    ALARM,
    MONTHLY_CHARGES,
    Actor,
    AlarmEvent,
    AsyncListenerError,
    CostMap,
    MeteringService,
    MonthlyCharge,
    MonthlyChargesApplied,
    MonthlyChargesEvent,
    Policy,
)
from usagemeter.aio import AsyncMeteringService

PRICES = CostMap.from_dict({"kv:write": 125, "llm:output": 2})
ALLOWANCE = 10_000
SEAT = 5_000
OCTOBER_1 = calendar.timegm((2026, 10, 1, 0, 0, 0))
NOVEMBER_1 = calendar.timegm((2026, 11, 1, 0, 0, 0))
CRASH_CHILD = Path(__file__).with_name("monthly_crash.py")


def new_service(**options: Any) -> MeteringService:
    options.setdefault("clock", FakeClock(OCTOBER_1 + 3600))
    return MeteringService(PRICES, policies=[Policy("temp_free", ALLOWANCE)], **options)


def seat_fee(event: MonthlyChargesEvent) -> list[MonthlyCharge]:
    return [MonthlyCharge("seat_fee", SEAT, units=1)]


def usage(service: MeteringService, actor: Actor, month: str = "2026-10") -> dict[str, Any]:
    return dict(service.get_actor_month_usage_details(actor, month)["usage"])


def test_the_first_charge_of_a_month_applies_them_once_billed_to_the_user() -> None:
    service = new_service()
    heard: list[MonthlyChargesEvent] = []

    def listener(event: MonthlyChargesEvent) -> list[MonthlyCharge]:
        heard.append(event)
        return [MonthlyCharge("seat_fee", SEAT, units=1), MonthlyCharge("support_plan", 700)]

    service.events.on(MONTHLY_CHARGES, listener)
    alice = Actor("alice", "chat-app")
    assert service.increment_usage(alice, "kv:write", 1) == SEAT + 700 + 125
    for _ in range(5):
        service.increment_usage(alice, "kv:write", 1)
    assert [(e.actor, e.month) for e in heard] == [(alice, "2026-10")]
    details = service.get_actor_month_usage_details(alice, "2026-10")
    assert details["usage"]["seat_fee"] == {"units": 1, "cost": SEAT, "count": 1}
    assert details["usage"]["support_plan"] == {"units": 0, "cost": 700, "count": 1}
    # Billed to the user (the global app, reported as "others"), not to the actor's app.
    assert details["app_totals"]["chat-app"] == {"total": 6 * 125, "count": 6}
    assert details["app_totals"]["others"] == {"total": SEAT + 700, "count": 2}  # one per charge
    applied = service.apply_monthly_charges(alice)
    assert applied == MonthlyChargesApplied("2026-10", (), SEAT + 700, already_applied=True)
    assert len(heard) == 1
    # They count against the budget like any charge.
    assert service.get_remaining_usage(alice) == ALLOWANCE - SEAT - 700 - 6 * 125


def test_apply_monthly_charges_applies_them_once_before_any_usage() -> None:
    service = new_service()
    service.events.on(MONTHLY_CHARGES, seat_fee)
    bob = Actor("bob")
    applied = service.apply_monthly_charges(bob)
    assert applied == MonthlyChargesApplied("2026-10", (MonthlyCharge("seat_fee", SEAT, 1),), SEAT, False)
    assert service.apply_monthly_charges(bob).already_applied
    assert service.increment_usage(bob, "kv:write", 1) == SEAT + 125
    assert usage(service, bob)["seat_fee"]["count"] == 1
    with pytest.raises(ValueError, match="system actor"):
        service.apply_monthly_charges(Actor.system())


def test_a_listener_answering_nothing_claims_the_month_and_none_claims_nothing() -> None:
    service = new_service()
    asked: list[str] = []

    def nothing(event: MonthlyChargesEvent) -> None:
        asked.append(event.actor.user_id)

    carol = Actor("carol")
    service.increment_usage(carol, "kv:write", 1)  # no listener yet: the month is not claimed
    service.events.on(MONTHLY_CHARGES, nothing)
    service.invalidate_subscription("carol")  # the next charge takes the slow path
    service.increment_usage(carol, "kv:write", 1)
    service.invalidate_subscription("carol")
    service.increment_usage(carol, "kv:write", 1)
    assert asked == ["carol"]  # answered nothing once: the month is claimed, never asked again
    assert service.apply_monthly_charges(carol) == MonthlyChargesApplied("2026-10", (), 0, True)


def test_threads_racing_at_the_first_charge_of_the_month_apply_them_once() -> None:
    service = new_service()
    service.events.on(MONTHLY_CHARGES, seat_fee)
    dave = Actor("dave")
    barrier = threading.Barrier(16)

    def charge() -> None:
        barrier.wait()
        for _ in range(20):
            service.increment_usage(dave, "kv:write", 1)
        service.apply_monthly_charges(dave)

    threads = [threading.Thread(target=charge) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    details = usage(service, dave)
    assert details["seat_fee"] == {"units": 1, "cost": SEAT, "count": 1}
    assert details["total"] == SEAT + 16 * 20 * 125


def test_each_month_is_charged_once_as_the_clock_rolls_over() -> None:
    clock = FakeClock(OCTOBER_1 + 3600)
    service = new_service(clock=clock, subscription_ttl=float("inf"))
    service.events.on(MONTHLY_CHARGES, seat_fee)
    erin = Actor("erin")
    service.increment_usage(erin, "kv:write", 1)
    clock.now = NOVEMBER_1 - 0.001
    service.increment_usage(erin, "kv:write", 1)
    clock.now = NOVEMBER_1
    service.increment_usage(erin, "kv:write", 1)
    service.increment_usage(erin, "kv:write", 1)
    assert usage(service, erin, "2026-10")["seat_fee"]["count"] == 1
    assert usage(service, erin, "2026-11")["seat_fee"]["count"] == 1
    assert usage(service, erin, "2026-11")["total"] == SEAT + 250
    # Kept until the month is over whatever the window: a short window does not re-apply them.
    short = new_service(clock=clock, idempotency_window=1)
    short.events.on(MONTHLY_CHARGES, seat_fee)
    short.increment_usage(erin, "kv:write", 1)
    clock.advance(20 * 86_400)
    short.invalidate_subscription("erin")
    short.increment_usage(erin, "kv:write", 1)
    assert usage(short, erin, "2026-11")["seat_fee"]["count"] == 1


@pytest.mark.parametrize("backend", ["sled", "redb"])
def test_a_restart_does_not_apply_them_again(tmp_path: Path, backend: str) -> None:
    clock = FakeClock(OCTOBER_1 + 3600)
    path = tmp_path / "ledger"
    frank = Actor("frank")
    with new_service(clock=clock, store=path, store_backend=backend) as service:
        service.events.on(MONTHLY_CHARGES, seat_fee)
        service.increment_usage(frank, "kv:write", 1)
    clock.advance(25 * 86_400)  # later in October: past the idempotency window, not the month
    with new_service(clock=clock, store=path, store_backend=backend) as service:
        service.events.on(MONTHLY_CHARGES, seat_fee)
        service.increment_usage(frank, "kv:write", 1)
        assert service.apply_monthly_charges(frank).already_applied
        assert usage(service, frank)["seat_fee"]["count"] == 1
    clock.now = NOVEMBER_1 + 60
    with new_service(clock=clock, store=path, store_backend=backend) as service:
        service.events.on(MONTHLY_CHARGES, seat_fee)
        service.increment_usage(frank, "kv:write", 1)
        assert usage(service, frank, "2026-11")["seat_fee"]["count"] == 1
        assert usage(service, frank, "2026-10")["seat_fee"]["count"] == 1


def test_a_failing_listener_applies_nothing_raises_an_alarm_and_is_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = new_service()
    alarms: list[AlarmEvent] = []
    service.events.on(ALARM, alarms.append)
    failing = [True]

    def flaky(event: MonthlyChargesEvent) -> list[MonthlyCharge]:
        if failing[0]:
            raise ConnectionError("billing database down")
        return [MonthlyCharge("seat_fee", SEAT)]

    service.events.on(MONTHLY_CHARGES, flaky)
    gina = Actor("gina")
    with caplog.at_level(logging.WARNING, logger="usagemeter"):
        assert service.increment_usage(gina, "kv:write", 1) == 125  # the user's call goes on
    assert [a.kind for a in alarms] == ["monthly_charges"]
    assert "billing database down" in alarms[0].message
    with pytest.raises(ConnectionError):
        service.apply_monthly_charges(gina)
    failing[0] = False
    # The next charge tries again (the plan stays cached: no plan look-up is needed for that).
    assert service.increment_usage(gina, "kv:write", 1) == SEAT + 250
    assert service.increment_usage(gina, "kv:write", 1) == SEAT + 375
    assert usage(service, gina)["seat_fee"]["count"] == 1


@pytest.mark.parametrize(
    "answer",
    [lambda e: MonthlyCharge("seat_fee", SEAT), lambda e: [("seat_fee", SEAT)], lambda e: "seat_fee"],
)
def test_a_listener_returning_something_else_is_an_alarm(answer: Any) -> None:
    service = new_service()
    alarms: list[AlarmEvent] = []
    service.events.on(ALARM, alarms.append)
    service.events.on(MONTHLY_CHARGES, answer)
    service.increment_usage(Actor("hal"), "kv:write", 1)
    assert [a.kind for a in alarms] == ["monthly_charges"]
    assert "MonthlyCharge" in alarms[0].message
    assert usage(service, Actor("hal"))["total"] == 125


def test_monthly_charges_are_checked_when_made() -> None:
    with pytest.raises(TypeError, match="cost must be an int"):
        MonthlyCharge("seat_fee", 12.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        MonthlyCharge("seat_fee", -1)
    with pytest.raises(TypeError, match="usage_type"):
        MonthlyCharge("", 1)


def test_an_async_listener_needs_the_async_service() -> None:
    service = new_service()

    async def seat(event: MonthlyChargesEvent) -> list[MonthlyCharge]:
        await asyncio.sleep(0)
        return [MonthlyCharge("seat_fee", SEAT)]

    service.events.on(MONTHLY_CHARGES, seat)
    ivy = Actor("ivy")
    with pytest.raises(AsyncListenerError):
        service.increment_usage(ivy, "kv:write", 1)
    assert usage(service, ivy)["total"] == 0  # refused before anything was recorded

    async def main() -> None:
        aservice = AsyncMeteringService(service)
        assert await aservice.increment_usage(ivy, "kv:write", 1) == SEAT + 125
        assert await aservice.increment_usage(ivy, "kv:write", 1) == SEAT + 250
        assert (await aservice.apply_monthly_charges(ivy)).already_applied
        jo = Actor("jo")
        applied = await aservice.apply_monthly_charges(jo)
        assert applied.charges == (MonthlyCharge("seat_fee", SEAT),)
        assert await aservice.try_increment_usage(jo, "kv:write", 1) == SEAT + 125

    asyncio.run(main())
    assert usage(service, ivy)["seat_fee"]["count"] == 1


def test_a_failing_async_listener_is_an_alarm_and_the_call_goes_on() -> None:
    service = new_service()
    alarms: list[AlarmEvent] = []
    service.events.on(ALARM, alarms.append)

    async def down(event: MonthlyChargesEvent) -> list[MonthlyCharge]:
        raise ConnectionError("billing database down")

    service.events.on(MONTHLY_CHARGES, down)

    async def main() -> None:
        aservice = AsyncMeteringService(service)
        assert await aservice.increment_usage(Actor("lou"), "kv:write", 1) == 125
        assert await aservice.increment_usage(Actor("lou"), "kv:write", 1) == 250

    asyncio.run(main())
    assert [a.kind for a in alarms] == ["monthly_charges", "monthly_charges"]  # tried at each charge


def test_a_fleet_refuses_monthly_charges_rather_than_double_them(redis_server: RedisServer) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    with new_service(store=url) as service:
        service.events.on(MONTHLY_CHARGES, seat_fee)
        kim = Actor("kim")
        with pytest.raises(NotImplementedError, match="fleet"):
            service.apply_monthly_charges(kim)
        # At a charge they are not applied (each worker would apply them once: doubled).
        assert service.increment_usage(kim, "kv:write", 1) == 125


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["sled", "redb"])
def test_sigkill_during_monthly_and_keyed_charges_loses_and_doubles_nothing(
    tmp_path: Path, backend: str
) -> None:
    """Kill a child metering with keys (and applying the seat fee at each user's first charge of a
    month) at a random moment, 6 times, the month rolling over between the 3rd and 4th. After
    each restart the store holds a month's seat fee exactly when it holds the month's key, never
    twice; then every call the child started is retried, and each key's charge and each month's
    seat fee are in the ledger exactly once."""
    store = tmp_path / "store"
    rng = random.Random(20261201)
    intents: dict[tuple[str, str], set[str]] = {}  # (month, user) -> keys started
    stored_before_retries = 0
    for cycle in range(6):
        month, epoch = ("2026-10", OCTOBER_1 + 3600.0) if cycle < 3 else ("2026-11", NOVEMBER_1 + 3600.0)
        log_path = tmp_path / f"cycle-{cycle}.log"
        command = [
            sys.executable,
            str(CRASH_CHILD),
            str(store),
            backend,
            str(epoch),
            str(log_path),
            str(cycle),
        ]
        stderr_path = tmp_path / f"cycle-{cycle}.stderr"
        with (
            open(stderr_path, "w", encoding="utf-8") as stderr,
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True) as child,
        ):
            try:
                assert child.stdout is not None
                assert child.stdout.readline().strip() == "ready", stderr_path.read_text()
                time.sleep(rng.uniform(0.05, 0.4))
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait()
        assert child.returncode == -signal.SIGKILL, stderr_path.read_text()
        started = [line.split() for line in log_path.read_text().splitlines() if line.startswith("I ")]
        assert len(started) > 10, "the child charged next to nothing before it was killed"
        for _, key, user in started:
            intents.setdefault((month, user), set()).add(key)
        with crash_child.open_service(store, backend, epoch) as service:
            for user in crash_child.USERS:
                actor = Actor(user, crash_child.APP)
                figures = usage(service, actor, month)
                seats = figures.get("seat_fee", {"count": 0})["count"]
                claimed = service._monthly_charges_applied(actor) is not None
                assert seats == int(claimed), (cycle, user, seats, claimed)
                stored_before_retries += figures.get("kv:write", {"count": 0})["count"]
            for _, key, user in started:
                crash_child.charge(service, key, user)
            for user in crash_child.USERS:
                actor = Actor(user, crash_child.APP)
                for (intent_month, intent_user), keys in intents.items():
                    if intent_user != user:
                        continue
                    figures = usage(service, actor, intent_month)
                    assert figures["kv:write"]["count"] == len(keys), (cycle, user, intent_month)
                    assert figures["seat_fee"] == {"units": 1, "cost": crash_child.SEAT, "count": 1}
    # The store held charges (and their keys) at the kills: the retries were replays, not all new.
    assert stored_before_retries > 0
