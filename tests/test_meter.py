"""`service.meter(actor, usage_type).add(amount)`: exactly `increment_usage`, resolved once.

The meter keeps the actor's account and the usage type's price; every guarantee of
`increment_usage` must hold through it: the same totals, records, pools and alarms, the same
errors on bad input (changing nothing), plans from the events, the store, and threads.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import (
    HUGE,
    MAX_UNITS,
    PRICED_TYPES,
    FakeClock,
    collect_alarms,
    new_service,
    snapshot,
    usage_of,
)
from usagemeter import (
    GET_USER_SUBSCRIPTION,
    Actor,
    CostMap,
    GetUserSubscriptionEvent,
    Meter,
    MeteringService,
    Policy,
    StoreClosedError,
    UnknownUsageType,
)

ACTORS = [Actor("u1"), Actor("u1", "app-a"), Actor("u2", email="u2@example.com"), Actor("u3", "app-b")]
APPS = ["app-a", "app-b"]
PLAN = Policy("temp_free", 5_000)

calls = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=len(ACTORS) - 1),
        st.sampled_from(PRICED_TYPES),
        st.integers(min_value=0, max_value=3_000),
    ),
    max_size=60,
)


@given(calls=calls, purchased=st.integers(min_value=0, max_value=4_000))
def test_meter_add_records_exactly_what_increment_usage_records(
    small_map: CostMap, calls: list[tuple[int, str, int]], purchased: int
) -> None:
    by_call, by_meter = (new_service(small_map, policies=[PLAN]) for _ in range(2))
    alarms_by_call, alarms_by_meter = collect_alarms(by_call), collect_alarms(by_meter)
    for service in (by_call, by_meter):
        service.update_addon_credit("u1", purchased)
    meters: dict[tuple[int, str], Meter] = {}
    for actor_index, usage_type, amount in calls:
        actor = ACTORS[actor_index]
        meter = meters.setdefault((actor_index, usage_type), by_meter.meter(actor, usage_type))
        assert meter.add(amount) == by_call.increment_usage(actor, usage_type, amount)
    assert snapshot(by_meter, ACTORS, APPS) == snapshot(by_call, ACTORS, APPS)
    assert [(a.kind, a.actor, a.usage_type, a.message) for a in alarms_by_meter] == [
        (a.kind, a.actor, a.usage_type, a.message) for a in alarms_by_call
    ]


def test_a_meter_knows_its_pair(service: MeteringService) -> None:
    actor = Actor("u1", "app-a")
    meter = service.meter(actor, "kv:write")
    assert meter.actor is actor
    assert meter.usage_type == "kv:write"
    assert repr(meter) == f"Meter({actor!r}, 'kv:write')"


@pytest.mark.parametrize(
    ("usage_type", "error", "match"),
    [
        ("", ValueError, "non-empty"),
        ("total", ValueError, "reserved"),
        (7, TypeError, "must be a str"),
        ("not:in:the:map", UnknownUsageType, "not:in:the:map"),
    ],
)
def test_a_bad_usage_type_is_refused_when_the_meter_is_made(
    service: MeteringService, usage_type: Any, error: type[Exception], match: str
) -> None:
    before = snapshot(service, ACTORS, APPS)
    with pytest.raises(error, match=match):
        service.meter(Actor("u1"), usage_type)
    assert snapshot(service, ACTORS, APPS) == before


def test_a_meter_needs_an_actor(service: MeteringService) -> None:
    not_an_actor: Any = "u1"
    with pytest.raises(TypeError, match=r"usagemeter\.Actor"):
        service.meter(not_an_actor, "kv:write")


@pytest.mark.parametrize(
    ("amount", "error", "match"),
    [
        (-1, ValueError, "must not be negative"),
        (MAX_UNITS + 1, OverflowError, "amount"),
        (True, TypeError, "bool is not accepted"),
        (1.5, TypeError, "must be an int"),
        ("3", TypeError, "must be an int"),
    ],
)
def test_bad_amounts_raise_what_increment_usage_raises_and_change_nothing(
    service: MeteringService, amount: Any, error: type[Exception], match: str
) -> None:
    actor = ACTORS[1]
    service.increment_usage(actor, "kv:write", 2)
    meter = service.meter(actor, "kv:write")
    before = snapshot(service, ACTORS, APPS)
    with pytest.raises(error, match=match) as by_meter:
        meter.add(amount)
    with pytest.raises(error) as by_call:
        service.increment_usage(actor, "kv:write", amount)
    assert str(by_meter.value) == str(by_call.value)
    assert snapshot(service, ACTORS, APPS) == before


def test_an_overflowing_add_raises_and_records_nothing(service: MeteringService) -> None:
    actor = Actor("rich")
    meter = service.meter(actor, HUGE)
    meter.add(1)  # 10^18 µ¢: the per-actor limit
    before = snapshot(service, [actor], APPS)
    with pytest.raises(OverflowError):
        meter.add(1)
    with pytest.raises(OverflowError):
        service.meter(actor, "kv:write").add(MAX_UNITS)
    assert snapshot(service, [actor], APPS) == before


def test_the_system_actors_meter_records_nothing(service: MeteringService) -> None:
    before = snapshot(service, ACTORS, APPS)
    meter = service.meter(Actor.system(), "kv:write")
    assert meter.add(1_000) == 0
    with pytest.raises(ValueError, match="must not be negative"):
        meter.add(-1)
    assert snapshot(service, ACTORS, APPS) == before


def test_unpriced_types_recorded_for_free_raise_the_alarm_on_every_add(small_map: CostMap) -> None:
    service = new_service(small_map, unmapped="free")
    alarms = collect_alarms(service)
    meter = service.meter(Actor("u1"), "not:in:the:map")
    assert meter.add(5) == 0
    assert meter.add(7) == 0
    assert usage_of(service, Actor("u1"))["not:in:the:map"] == {"units": 12, "cost": 0, "count": 2}
    assert [(a.kind, a.usage_type) for a in alarms] == [("unmapped_usage", "not:in:the:map")] * 2


def test_a_meter_follows_the_month_and_the_plan(small_map: CostMap) -> None:
    clock = FakeClock()
    service = new_service(small_map, clock=clock, policies=[Policy("pro", 1_000)])
    plans: list[str] = []

    def subscribe(event: GetUserSubscriptionEvent) -> None:
        plans.append(event.actor.user_id)
        event.user_subscription_id = "pro"

    service.events.on(GET_USER_SUBSCRIPTION, subscribe)
    actor = Actor("u1")
    meter = service.meter(actor, "kv:write")
    assert meter.add(4) == 500
    assert plans == ["u1"]  # resolved through the events on the first add, then cached
    assert service.get_allowed_usage(actor)["monthly_allowance"] == 1_000
    assert service.get_actor_budget(actor)["remaining"] == 500
    clock.advance(31 * 86_400)  # November
    assert meter.add(1) == 125
    assert service.get_actor_month_usage_details(actor, "2026-10")["usage"]["total"] == 500


def test_a_closed_services_meter_refuses(small_map: CostMap) -> None:
    service = new_service(small_map)
    meter = service.meter(Actor("u1"), "kv:write")
    service.close()
    with pytest.raises(StoreClosedError):
        meter.add(1)


def test_meters_share_one_hot_account_across_threads_without_losing_an_update(small_map: CostMap) -> None:
    service = new_service(small_map)
    actor = Actor("hot", "app-a")
    shared = service.meter(actor, "kv:write")
    threads_count, adds = 8, 5_000

    def work(index: int) -> None:
        own = service.meter(actor, "kv:read")
        for _ in range(adds):
            shared.add(1)
            own.add(1)
            service.increment_usage(actor, "kv:write", 1)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    usage = usage_of(service, actor)
    calls = threads_count * adds
    assert usage["kv:write"] == {"units": 2 * calls, "cost": 2 * calls * 125, "count": 2 * calls}
    assert usage["kv:read"] == {"units": calls, "cost": calls * 63, "count": calls}
    assert usage["total"] == calls * (2 * 125 + 63)


def test_one_actor_object_meters_in_two_services(small_map: CostMap) -> None:
    first, second = new_service(small_map), new_service(small_map)
    actor = Actor("u1")
    for _ in range(3):
        first.increment_usage(actor, "kv:write", 1)
        second.increment_usage(actor, "kv:read", 1)
    second.meter(actor, "kv:read").add(1)
    assert usage_of(first, actor) == {"total": 375, "kv:write": {"units": 3, "cost": 375, "count": 3}}
    assert usage_of(second, actor) == {"total": 252, "kv:read": {"units": 4, "cost": 252, "count": 4}}


def test_what_a_meter_adds_is_stored(small_map: CostMap, tmp_path: Path) -> None:
    path = tmp_path / "store"
    with MeteringService(small_map, store=path, clock=FakeClock()) as service:
        meter = service.meter(Actor("u1", "app-a"), "kv:write")
        for _ in range(10):
            meter.add(2)
    with MeteringService(small_map, store=path, clock=FakeClock()) as reopened:
        assert usage_of(reopened, Actor("u1")) == {
            "total": 2_500,
            "kv:write": {"units": 20, "cost": 2_500, "count": 10},
        }
