"""Per-day figures (issue 12, point 6): `get_actor_usage_by_day`, in memory, on the embedded
stores across restarts, and on a fleet's shared ledger, against an exact model."""

from __future__ import annotations

import asyncio
import calendar
import time
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis_support import RedisServer
from support import FRACTION, INTEGRAL_TYPES, FakeClock, exact_cost, exact_sum
from usagemeter import Actor, CostMap, MeteringService
from usagemeter.aio import AsyncMeteringService
from usagemeter.types import UsageByDay

DAY = 86_400


def at(day: int, hour: int = 12, month: int = 10) -> float:
    """2026-MM-DD at the hour, UTC, in epoch seconds."""
    return float(calendar.timegm((2026, month, day, hour, 0, 0)))


def month_usage(service: MeteringService, actor: Actor, month: str = "2026-10") -> dict[str, Any]:
    usage: dict[str, Any] = dict(service.get_actor_month_usage_details(actor, month)["usage"])
    return usage


def summed_days(by_day: UsageByDay) -> dict[str, dict[str, int]]:
    """Each usage type's figures summed over the days and the undated part."""
    days = [*by_day["days"].values(), *([by_day["undated"]] if by_day["undated"] else [])]
    sums: dict[str, dict[str, int]] = {}
    for day in days:
        for usage_type, figures in day["by_type"].items():
            into = sums.setdefault(usage_type, {"units": 0, "cost": 0, "count": 0})
            for key in ("units", "cost", "count"):
                into[key] += figures[key]
    return sums


# ---------------------------------------------------------------------------------------------
# The shape, and what goes into a day.


def test_every_kind_of_booking_lands_on_its_day(small_map: CostMap) -> None:
    clock = FakeClock(at(1, 23))
    service = MeteringService(small_map, clock=clock)
    user, app = Actor("u"), Actor("u", "app-a")
    service.increment_usage(user, "kv:write", 2)  # 250 µ¢ on the 1st
    clock.now = at(2, 0)  # one hour later: the 2nd
    service.increment_usage(app, "kv:write", 1)  # another app of the same user
    service.batch_increment_usages(user, [("kv:read", 1), ("kv:write", 1)])
    service.refund(user, "kv:write", 1)
    service.set_actor_current_month_usage_total(user, 1_000)
    by_day = service.get_actor_usage_by_day(user)
    assert by_day == {
        "month": "2026-10",
        "days": {
            "2026-10-01": {
                "total": 250,
                "count": 1,
                "by_type": {"kv:write": {"units": 2, "cost": 250, "count": 1}},
            },
            "2026-10-02": {
                "total": 750,
                "count": 5,
                "by_type": {
                    "kv:write": {"units": 2, "cost": 250, "count": 2},
                    "kv:read": {"units": 1, "cost": 63, "count": 1},
                    "refund:kv:write": {"units": 1, "cost": -125, "count": 1},
                    "manual_adjustment": {"units": 0, "cost": 562, "count": 1},
                },
            },
        },
        "undated": None,
    }
    assert list(by_day["days"]) == sorted(by_day["days"])
    usage = month_usage(service, user)
    assert usage["total"] == 1_000 == sum(day["total"] for day in by_day["days"].values())
    assert summed_days(by_day) == {key: value for key, value in usage.items() if key != "total"}
    # The same figures through an app actor (the user's, over all apps, like `usage`), and for
    # the month asked by name.
    assert service.get_actor_usage_by_day(app, "2026-10") == by_day


def test_months_are_kept_apart_and_an_unused_month_is_empty(small_map: CostMap) -> None:
    clock = FakeClock(at(31, 23))
    service = MeteringService(small_map, clock=clock)
    user = Actor("u")
    service.increment_usage(user, "kv:write", 1)
    clock.advance(2 * 3600)  # 2026-11-01T01:00Z
    service.increment_usage(user, "kv:read", 1)
    october = service.get_actor_usage_by_day(user, "2026-10")
    assert list(october["days"]) == ["2026-10-31"]
    november = service.get_actor_usage_by_day(user)  # the current month on the service's clock
    assert november["month"] == "2026-11" and list(november["days"]) == ["2026-11-01"]
    assert service.get_actor_usage_by_day(user, "2026-09") == {
        "month": "2026-09",
        "days": {},
        "undated": None,
    }
    assert service.get_actor_usage_by_day(Actor("never"), "2026-10")["days"] == {}
    assert service.get_actor_usage_by_day(Actor.system())["days"] == {}


@pytest.mark.parametrize("month", ["2026-13", "2026-1", "26-01", "", "2026-01-01", "2026/01", " 2026-01"])
def test_a_bad_month_is_a_value_error(service: MeteringService, month: str) -> None:
    with pytest.raises(ValueError, match="month must be 'YYYY-MM'"):
        service.get_actor_usage_by_day(Actor("u"), month)


def test_bad_arguments_are_type_errors(service: MeteringService) -> None:
    with pytest.raises(TypeError, match=r"usagemeter\.Actor"):
        service.get_actor_usage_by_day("u")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        service.get_actor_usage_by_day(Actor("u"), 202610)  # type: ignore[arg-type]


def test_a_closed_service_refuses(small_map: CostMap, tmp_path: Path) -> None:
    from usagemeter import StoreClosedError

    service = MeteringService(small_map, store=tmp_path / "s")
    service.close()
    with pytest.raises(StoreClosedError):
        service.get_actor_usage_by_day(Actor("u"))


def test_the_async_service_reads_the_same(small_map: CostMap) -> None:
    clock = FakeClock(at(3))
    service = AsyncMeteringService(MeteringService(small_map, clock=clock))

    async def read() -> UsageByDay:
        await service.increment_usage(Actor("u"), "kv:write", 1)
        return await service.get_actor_usage_by_day(Actor("u"))

    by_day = asyncio.run(read())
    assert by_day == service.sync.get_actor_usage_by_day(Actor("u"), "2026-10")
    assert by_day["days"]["2026-10-03"]["total"] == 125


# ---------------------------------------------------------------------------------------------
# The property: summed over the days, every usage type's figures are the month's, exactly.

TYPES = sorted(INTEGRAL_TYPES)
Op = tuple[Literal["charge", "refund", "set_total", "override"], int, str, int]

operations = st.lists(
    st.tuples(
        st.sampled_from(["charge", "charge", "refund", "set_total", "override"]),
        st.integers(min_value=1, max_value=31),  # the day of the call, in any order
        st.sampled_from([*TYPES, FRACTION]),
        st.integers(min_value=0, max_value=10**6),
    ),
    max_size=40,
)


@given(ops=operations)
def test_days_sum_to_the_month(small_map: CostMap, ops: list[Op]) -> None:
    """Random charges, refunds, cost overrides and set_total on random days of one month, with
    an exact model per (day, type): each day's figures are the model's (rounded once), and the
    days add up to the month's figures."""
    clock = FakeClock(at(1))
    service = MeteringService(small_map, clock=clock)
    user = Actor("u")
    model: dict[tuple[int, str], list[Any]] = {}  # (day, type) -> [units, exact cost, count]
    charged: dict[str, list[Any]] = {}  # type -> [units, exact cost] net of refunds

    def book(day: int, usage_type: str, units: int, cost: Decimal) -> None:
        entry = model.setdefault((day, usage_type), [0, Decimal(0), 0])
        entry[0] += units
        entry[1] += cost
        entry[2] += 1

    for kind, day, usage_type, amount in ops:
        clock.now = at(day, hour=amount % 24)
        price = small_map[usage_type]
        if kind == "charge" and amount > 0:
            service.increment_usage(user, usage_type, amount)
            cost = exact_cost(price, amount)
        elif kind == "override":
            service.increment_usage(user, usage_type, amount, amount * 3)
            cost = Decimal(amount * 3)  # a call even of 0 units at 0 µ¢: an override records it
        elif kind == "refund":
            net = charged.get(usage_type, [0, Decimal(0)])
            units = min(amount, net[0])
            refund_cost = exact_cost(price, units)
            if units == 0 or refund_cost > net[1]:
                continue
            service.refund(user, usage_type, units)
            book(day, f"refund:{usage_type}", units, -refund_cost)
            net[0] -= units
            net[1] -= refund_cost
            continue
        elif kind == "set_total":
            before = exact_sum(entry[1] for entry in model.values())
            service.set_actor_current_month_usage_total(user, amount)
            if Decimal(amount) != before:
                book(day, "manual_adjustment", 0, Decimal(amount) - before)
            continue
        else:
            continue
        book(day, usage_type, amount, cost)
        net = charged.setdefault(usage_type, [0, Decimal(0)])
        net[0] += amount
        net[1] += cost

    by_day = service.get_actor_usage_by_day(user, "2026-10")
    assert by_day["undated"] is None
    expected: dict[str, dict[str, Any]] = {}
    for (day, usage_type), (units, cost, count) in sorted(model.items()):
        date = f"2026-10-{day:02d}"
        entry = expected.setdefault(date, {"total": Decimal(0), "count": 0, "by_type": {}})
        entry["total"] += cost
        entry["count"] += count
        entry["by_type"][usage_type] = {"units": units, "cost": _round(cost), "count": count}
    for entry in expected.values():
        entry["total"] = _round(entry["total"])
    assert by_day["days"] == expected
    assert list(by_day["days"]) == sorted(by_day["days"])
    usage = month_usage(service, user)
    sums = summed_days(by_day)
    assert set(sums) == {key for key in usage if key != "total"}
    for usage_type, figures in sums.items():
        month = usage[usage_type]
        assert (figures["units"], figures["count"]) == (month["units"], month["count"])
        exact = exact_sum(cost for (_, t), (_, cost, _) in model.items() if t == usage_type)
        assert month["cost"] == _round(exact)
        if (
            usage_type != FRACTION
            and usage_type != "manual_adjustment"
            and "refund:" + FRACTION != usage_type
        ):
            assert figures["cost"] == month["cost"]  # whole µ¢: nothing to round


def _round(value: Decimal) -> int:
    """The API's rounding of an exact cost: half up, towards +infinity on a tie (also below
    zero: refunds, adjustments)."""
    return int((value + Decimal("0.5")).to_integral_value(rounding=ROUND_FLOOR))


# ---------------------------------------------------------------------------------------------
# Persistence: the days survive a restart of either embedded store, old months included.


@pytest.mark.parametrize("backend", ["sled", "redb"])
def test_days_survive_a_restart(small_map: CostMap, tmp_path: Path, backend: Literal["sled", "redb"]) -> None:
    clock = FakeClock(at(30, month=9))
    store = tmp_path / "store"
    user, other = Actor("u"), Actor("v", "app-a")
    with MeteringService(small_map, clock=clock, store=store, store_backend=backend) as service:
        service.increment_usage(user, "kv:write", 3)
        for day in (1, 2, 2, 17):
            clock.now = at(day)
            service.increment_usage(user, "kv:read", day)
            service.increment_usage(other, FRACTION, 1)
        service.refund(user, "kv:read", 1)
        service.set_actor_current_month_usage_total(other, 10_000)
        before = {
            (actor.user_id, month): service.get_actor_usage_by_day(actor, month)
            for actor in (user, other)
            for month in ("2026-09", "2026-10")
        }
    assert list(before["u", "2026-09"]["days"]) == ["2026-09-30"]
    assert list(before["v", "2026-10"]["days"]) == ["2026-10-01", "2026-10-02", "2026-10-17"]
    with MeteringService(small_map, clock=clock, store=store) as reopened:
        after = {
            (actor.user_id, month): reopened.get_actor_usage_by_day(actor, month)
            for actor in (user, other)
            for month in ("2026-09", "2026-10")
        }
        assert after == before
        # Metering goes on into the loaded days.
        reopened.increment_usage(user, "kv:read", 5)
        assert reopened.get_actor_usage_by_day(user)["days"]["2026-10-17"]["by_type"]["kv:read"] == {
            "units": 22,
            "cost": 22 * 63,
            "count": 2,
        }


# ---------------------------------------------------------------------------------------------
# A fleet: two workers' days sum exactly in the shared ledger.


@pytest.mark.timeout(120)
def test_two_workers_days_sum_on_the_shared_ledger(redis_server: RedisServer) -> None:
    prices = CostMap.from_dict({"fleet:int": 125, "fleet:frac": "31.25"})
    clock_a, clock_b = FakeClock(at(4)), FakeClock(at(5))
    options: dict[str, Any] = {"store": redis_server.url, "snapshot_interval": 0.1}
    a = MeteringService(prices, clock=clock_a, **options)
    b = MeteringService(prices, clock=clock_b, **options)
    try:
        user = Actor("shared")
        for _ in range(3):
            a.increment_usage(user, "fleet:int", 2)
            b.increment_usage(user, "fleet:int", 1)
            b.increment_usage(Actor("shared", "app-b"), "fleet:frac", 1)  # 31.25 µ¢ a call
        clock_a.now = at(5, 20)  # worker a's clock reaches the 5th too
        a.increment_usage(user, "fleet:frac", 1)
        for service in (a, b, a, b):
            service.flush()
        expected: UsageByDay = {
            "month": "2026-10",
            "days": {
                "2026-10-04": {
                    "total": 750,
                    "count": 3,
                    "by_type": {"fleet:int": {"units": 6, "cost": 750, "count": 3}},
                },
                "2026-10-05": {
                    "total": 375 + 125,  # 375 + 4 x 31.25 exactly
                    "count": 7,
                    "by_type": {
                        "fleet:int": {"units": 3, "cost": 375, "count": 3},
                        "fleet:frac": {"units": 4, "cost": 125, "count": 4},
                    },
                },
            },
            "undated": None,
        }
        deadline = time.monotonic() + 30
        while a.get_actor_usage_by_day(user) != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.get_actor_usage_by_day(user) == expected
        assert b.get_actor_usage_by_day(user) == expected
        usage = month_usage(a, user)
        assert summed_days(expected) == {key: value for key, value in usage.items() if key != "total"}
        with MeteringService(prices, clock=clock_a, **options) as fresh:
            assert fresh.get_actor_usage_by_day(user) == expected
    finally:
        a.close()
        b.close()
