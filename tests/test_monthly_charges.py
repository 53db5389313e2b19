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
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from redis_support import RedisServer
from support import FakeClock
from usagemeter import (
    ALARM,
    MONTHLY_CHARGES,
    Actor,
    AlarmEvent,
    AsyncListenerError,
    CostMap,
    IdempotencyKeyReused,
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
    bob = Actor("bob")
    # No listener: nothing applied, and the month stays unclaimed for one registered later.
    assert service.apply_monthly_charges(bob) == MonthlyChargesApplied("2026-10", (), 0, False)
    service.events.on(MONTHLY_CHARGES, seat_fee)
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


def test_two_workers_of_a_fleet_apply_them_once(redis_server: RedisServer) -> None:
    """On a fleet the month is claimed on the shared ledger (test_fleet_keys.py has the races)."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    clock = FakeClock(OCTOBER_1 + 3600)
    with new_service(store=url, clock=clock) as one, new_service(store=url, clock=clock) as two:
        for worker in (one, two):
            worker.events.on(MONTHLY_CHARGES, seat_fee)
        kim = Actor("kim")
        assert one.increment_usage(kim, "kv:write", 1) == SEAT + 125
        assert two.increment_usage(kim, "kv:write", 1) >= SEAT + 125
        assert two.apply_monthly_charges(kim).already_applied
        one.flush()
        two.flush()
    with new_service(store=url, clock=clock) as reader:
        figures = usage(reader, kim)
        assert figures["seat_fee"] == {"units": 1, "cost": SEAT, "count": 1}
        assert figures["kv:write"]["count"] == 2


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


class KeysAndMonthlyChargesAgainstAModel(RuleBasedStateMachine):
    """Keyed and unkeyed charges, keyed refunds, monthly charges and the clock (hours, and month
    rollovers) on one user, against an exact model of the month totals and of every key."""

    WINDOW = 86_400

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(OCTOBER_1 + 3600)
        self.service = new_service(clock=self.clock)
        self.service.events.on(MONTHLY_CHARGES, seat_fee)
        self.actor = Actor("model", "app")
        self.totals: dict[str, int] = {}  # month -> total µ¢
        self.charged: dict[str, int] = {}  # month -> kv:write units net of refunds
        self.seated: set[str] = set()
        self.keys: dict[str, tuple[tuple[str, int], int, float]] = {}  # key -> (payload, result, at)

    def month(self) -> str:
        return time.strftime("%Y-%m", time.gmtime(self.clock.now))

    def due(self) -> None:
        """A call that reaches the ledger's charge (not a replay) applies the month's seat fee."""
        month = self.month()
        if month not in self.seated:
            self.seated.add(month)
            self.totals[month] = self.totals.get(month, 0) + SEAT

    def live(self, key: str) -> tuple[tuple[str, int], int, float] | None:
        kept = self.keys.get(key)
        return kept if kept is not None and kept[2] + self.WINDOW > self.clock.now else None

    @rule(key=st.sampled_from(["a", "b", "c"]), units=st.integers(1, 3))
    def keyed_charge(self, key: str, units: int) -> None:
        kept = self.live(key)
        if kept is not None:
            if kept[0] != ("charge", units):
                with pytest.raises(IdempotencyKeyReused):
                    self.service.increment_usage(self.actor, "kv:write", units, idempotency_key=key)
                return
            assert self.service.increment_usage(self.actor, "kv:write", units, idempotency_key=key) == kept[1]
            return
        result = self.service.increment_usage(self.actor, "kv:write", units, idempotency_key=key)
        self.due()
        month = self.month()
        self.totals[month] = self.totals.get(month, 0) + 125 * units
        self.charged[month] = self.charged.get(month, 0) + units
        assert result == self.totals[month]
        self.keys[key] = (("charge", units), result, self.clock.now)

    @rule(units=st.integers(1, 3))
    def charge(self, units: int) -> None:
        result = self.service.increment_usage(self.actor, "kv:write", units)
        self.due()
        month = self.month()
        self.totals[month] = self.totals.get(month, 0) + 125 * units
        self.charged[month] = self.charged.get(month, 0) + units
        assert result == self.totals[month]

    @rule(key=st.sampled_from(["b", "r"]), units=st.integers(1, 3))
    def keyed_refund(self, key: str, units: int) -> None:
        kept = self.live(key)
        if kept is not None:
            if kept[0] != ("refund", units):
                with pytest.raises(IdempotencyKeyReused):
                    self.service.refund(self.actor, "kv:write", units=units, idempotency_key=key)
                return
            assert self.service.refund(self.actor, "kv:write", units=units, idempotency_key=key) == kept[1]
            return
        if not self.totals:
            return  # never charged: no account, refused before any month is looked at
        month = self.month()
        if units > self.charged.get(month, 0):
            with pytest.raises(ValueError, match="cannot refund"):
                self.service.refund(self.actor, "kv:write", units=units, idempotency_key=key)
            self.due()  # the refund's plan look-up applied them before it was refused
            return
        result = self.service.refund(self.actor, "kv:write", units=units, idempotency_key=key)
        self.due()
        self.totals[month] -= 125 * units
        self.charged[month] -= units
        assert result == self.totals[month]
        self.keys[key] = (("refund", units), result, self.clock.now)

    @rule()
    def apply_monthly(self) -> None:
        applied = self.service.apply_monthly_charges(self.actor)
        assert applied.already_applied == (self.month() in self.seated)
        assert applied.cost == SEAT
        self.due()

    @rule(hours=st.integers(1, 30))
    def wait(self, hours: int) -> None:
        self.clock.advance(hours * 3600)

    @rule(minutes=st.integers(0, 600))
    def next_month(self, minutes: int) -> None:
        moment = time.gmtime(self.clock.now)
        year, month = (moment.tm_year, moment.tm_mon + 1) if moment.tm_mon < 12 else (moment.tm_year + 1, 1)
        self.clock.now = calendar.timegm((year, month, 1, 0, 0, 0)) + 60.0 * minutes

    @invariant()
    def totals_match(self) -> None:
        for month in {*self.totals, self.month()}:
            figures = usage(self.service, self.actor, month)
            assert figures["total"] == self.totals.get(month, 0), month
            assert figures.get("seat_fee", {"count": 0})["count"] == (month in self.seated), month


KeysAndMonthlyChargesAgainstAModel.TestCase.settings = settings(stateful_step_count=40, deadline=None)
test_keys_and_monthly_charges_against_an_exact_model = KeysAndMonthlyChargesAgainstAModel.TestCase
