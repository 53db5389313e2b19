"""Invariants of the ledger, stated as properties over random calls."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import (
    EGRESS,
    FRACTION,
    INTEGRAL_TYPES,
    MAX_UNITS,
    PRICED_TYPES,
    TENTH,
    app_totals_of,
    budget_of,
    exact_cost,
    exact_sum,
    global_usage,
    new_service,
    round_half_up,
    snapshot,
    usage_of,
)
from usagemeter import Actor, CostMap, Policy

APPS: list[str | None] = [None, "app-a", "app-b"]


# ---------------------------------------------------------------------------------------------
# Exactness: N calls of 1 unit cost exactly what 1 call of N units costs.


@given(
    usage_type=st.sampled_from([EGRESS, FRACTION, TENTH, *PRICED_TYPES]),
    amounts=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=40),
)
def test_split_calls_cost_what_one_call_costs(
    small_map: CostMap, usage_type: str, amounts: list[int]
) -> None:
    service = new_service(small_map)
    many, one = Actor("many"), Actor("one")
    for amount in amounts:
        service.increment_usage(many, usage_type, amount)
    service.increment_usage(one, usage_type, sum(amounts))
    expected = round_half_up(exact_cost(small_map[usage_type], sum(amounts)))
    many_usage, one_usage = usage_of(service, many), usage_of(service, one)
    assert many_usage["total"] == one_usage["total"] == expected
    if sum(amounts) == 0:
        assert usage_type not in many_usage and usage_type not in one_usage
    else:
        assert many_usage[usage_type] == {
            "units": sum(amounts),
            "cost": expected,
            "count": len([amount for amount in amounts if amount > 0]),
        }
        assert one_usage[usage_type] == {"units": sum(amounts), "cost": expected, "count": 1}
    assert global_usage(service)["total"] == round_half_up(
        exact_cost(small_map[usage_type], 2 * sum(amounts))
    )


@pytest.mark.parametrize("usage_type", [EGRESS, FRACTION, TENTH])
@pytest.mark.parametrize("calls", [1, 7, 1_000, 4_096])
def test_single_units_add_up_exactly(small_map: CostMap, usage_type: str, calls: int) -> None:
    service = new_service(small_map)
    many, one = Actor("many"), Actor("one")
    for _ in range(calls):
        service.increment_usage(many, usage_type, 1)
    assert service.increment_usage(one, usage_type, calls) == usage_of(service, many)["total"]
    assert usage_of(service, many)["total"] == round_half_up(exact_cost(small_map[usage_type], calls))


def test_a_million_bytes_of_egress_cost_the_same_in_one_call_or_in_a_batch(small_map: CostMap) -> None:
    service = new_service(small_map)
    batched, single = Actor("batched"), Actor("single")
    service.batch_increment_usages(batched, [(EGRESS, 1)] * 1_000_000)
    service.increment_usage(single, EGRESS, 1_000_000)
    assert usage_of(service, batched)["total"] == usage_of(service, single)["total"] == 11_176  # 11175.870895
    assert usage_of(service, batched)[EGRESS]["count"] == 1_000_000


# ---------------------------------------------------------------------------------------------
# Overrides replace price x amount for the whole call.

calls_with_overrides = st.lists(
    st.tuples(
        st.sampled_from([*PRICED_TYPES, "custom:unpriced"]),
        st.integers(min_value=0, max_value=10**7),
        st.none() | st.integers(min_value=0, max_value=10**12),
    ),
    min_size=1,
    max_size=30,
).map(lambda calls: [c if c[0] != "custom:unpriced" or c[2] is not None else (c[0], c[1], 0) for c in calls])


@given(calls=calls_with_overrides)
def test_overrides_replace_the_whole_cost_of_the_call(
    small_map: CostMap, calls: list[tuple[str, int, int | None]]
) -> None:
    service = new_service(small_map)
    actor = Actor("u")
    exact_by_type: dict[str, Decimal] = {}
    units_by_type: dict[str, int] = {}
    count_by_type: dict[str, int] = {}
    for usage_type, amount, override in calls:
        service.increment_usage(actor, usage_type, amount, override)
        if amount == 0 and override is None:
            continue
        cost = Decimal(override) if override is not None else exact_cost(small_map[usage_type], amount)
        exact_by_type[usage_type] = exact_sum([exact_by_type.get(usage_type, Decimal(0)), cost])
        units_by_type[usage_type] = units_by_type.get(usage_type, 0) + amount
        count_by_type[usage_type] = count_by_type.get(usage_type, 0) + 1
    usage = usage_of(service, actor)
    assert usage["total"] == round_half_up(exact_sum(exact_by_type.values()))
    assert set(usage) == {"total", *exact_by_type}
    for usage_type, exact in exact_by_type.items():
        assert usage[usage_type] == {
            "units": units_by_type[usage_type],
            "cost": round_half_up(exact),
            "count": count_by_type[usage_type],
        }


@given(
    usage_type=st.sampled_from(PRICED_TYPES),
    amount=st.integers(min_value=0, max_value=MAX_UNITS),
    override=st.integers(min_value=0, max_value=10**15),
)
def test_an_override_ignores_the_amount(
    small_map: CostMap, usage_type: str, amount: int, override: int
) -> None:
    service = new_service(small_map)
    actor = Actor("u")
    assert service.increment_usage(actor, usage_type, amount, cost_override=override) == override
    assert usage_of(service, actor)[usage_type] == {"units": amount, "cost": override, "count": 1}
    # The same item as a batch, on a fresh service, records the same.
    batched = new_service(small_map)
    assert batched.batch_increment_usages(Actor("v"), [(usage_type, amount, override)]) == override
    assert usage_of(batched, Actor("v")) == usage_of(service, actor)


# ---------------------------------------------------------------------------------------------
# The two pools: per call, allowance + purchased + overage == cost; `remaining` has one formula.

integral_calls = st.tuples(
    st.sampled_from(sorted(INTEGRAL_TYPES)),
    st.integers(min_value=0, max_value=60),
    st.none() | st.integers(min_value=0, max_value=3_000),
)

operations = st.lists(
    st.one_of(
        st.tuples(st.just("increment"), integral_calls),
        st.tuples(st.just("try"), integral_calls),
        st.tuples(st.just("batch"), st.lists(integral_calls, max_size=4)),
        st.tuples(st.just("buy"), st.integers(min_value=0, max_value=3_000)),
        st.tuples(st.just("set_total"), st.integers(min_value=0, max_value=20_000)),
    ),
    min_size=1,
    max_size=25,
)


def call_cost(usage_type: str, amount: int, override: int | None) -> int:
    return override if override is not None else INTEGRAL_TYPES[usage_type] * amount


def check_budget(budget: dict[str, int], allowance: int, total: int) -> None:
    assert budget["monthly_allowance"] == allowance
    purchased, consumed = budget["purchased_credits"], budget["consumed_purchase_credits"]
    assert budget["remaining"] == max(0, allowance - budget["allowance_used"]) + (purchased - consumed)
    # One month only here, so lifetime consumption is this month's.
    assert budget["allowance_used"] + consumed + budget["overage"] == total
    assert 0 <= budget["allowance_used"] <= allowance
    assert 0 <= consumed <= purchased
    assert budget["overage"] >= 0


@given(allowance=st.integers(min_value=0, max_value=5_000), ops=operations)
def test_every_charge_splits_exactly_over_the_pools(
    small_map: CostMap, allowance: int, ops: list[Any]
) -> None:
    service = new_service(small_map, policies=(Policy("temp_free", allowance),))
    actor = Actor("u", "app-a")
    for kind, argument in ops:
        before = budget_of(service, actor)
        total_before = usage_of(service, actor)["total"]
        if kind == "buy":
            assert service.update_addon_credit("u", argument) == before["purchased_credits"] + argument
            after = budget_of(service, actor)
            assert after == {
                **before,
                "purchased_credits": before["purchased_credits"] + argument,
                "remaining": before["remaining"] + argument,
            }
            continue
        if kind == "increment":
            total = service.increment_usage(actor, *argument)
            cost = call_cost(*argument)
        elif kind == "batch":
            total = service.batch_increment_usages(actor, argument)
            cost = sum(call_cost(*item) for item in argument)
        elif kind == "set_total":
            if argument < before["consumed_purchase_credits"]:  # one month: all of it this month
                # Below what purchased credit paid this month: refused, nothing changes.
                with pytest.raises(ValueError, match="purchased credit"):
                    service.set_actor_current_month_usage_total(actor, argument)
                assert budget_of(service, actor) == before
                assert usage_of(service, actor)["total"] == total_before
                continue
            total = service.set_actor_current_month_usage_total(actor, argument)
            cost = argument - total_before
        else:
            cost = call_cost(*argument)
            result = service.try_increment_usage(actor, *argument)
            if cost > before["remaining"]:
                assert result is None
                assert budget_of(service, actor) == before
                assert usage_of(service, actor)["total"] == total_before
                continue
            assert result is not None
            total = result
        after = budget_of(service, actor)
        assert total == total_before + cost == usage_of(service, actor)["total"]
        allowance_delta = after["allowance_used"] - before["allowance_used"]
        consumed_delta = after["consumed_purchase_credits"] - before["consumed_purchase_credits"]
        overage_delta = after["overage"] - before["overage"]
        assert allowance_delta + consumed_delta + overage_delta == cost
        if kind == "set_total":
            # An adjustment never moves purchased credit: it fills the allowance, then overage;
            # lowered, it gives back overage first, then allowance.
            assert consumed_delta == 0
            assert after["purchased_credits"] == before["purchased_credits"]
            room = max(0, allowance - before["allowance_used"])
            if cost >= 0:
                assert (allowance_delta, overage_delta) == (min(cost, room), cost - min(cost, room))
            else:
                assert overage_delta == -min(-cost, before["overage"])
        elif cost >= 0:
            # A charge fills the allowance first, then purchased credit, then overage.
            room = max(0, allowance - before["allowance_used"])
            assert allowance_delta == min(cost, room)
            credit_left = before["purchased_credits"] - before["consumed_purchase_credits"]
            assert consumed_delta == min(cost - allowance_delta, credit_left)
            assert after["remaining"] == max(0, before["remaining"] - cost)
        if kind == "try":
            assert overage_delta == 0
        check_budget(after, allowance, total)
        assert service.get_remaining_usage(actor) == after["remaining"]
        allowed: Any = service.get_allowed_usage(actor)
        assert allowed == {
            "remaining": after["remaining"],
            "monthly_allowance": allowance,
            "addons": {
                "purchased_credits": after["purchased_credits"],
                "consumed_purchase_credits": after["consumed_purchase_credits"],
            },
        }


# ---------------------------------------------------------------------------------------------
# Records agree: month total == sum of per-type costs == sum of app totals; global == sum of users.

app_calls = st.lists(
    st.tuples(
        st.sampled_from(["u", "v", "w"]),
        st.sampled_from(APPS),
        st.sampled_from(sorted(INTEGRAL_TYPES)),
        st.integers(min_value=0, max_value=10**6),
        st.none() | st.integers(min_value=0, max_value=10**9),
    ),
    max_size=40,
)


@given(calls=app_calls, batched=st.booleans())
def test_records_agree_with_each_other(small_map: CostMap, calls: list[Any], batched: bool) -> None:
    service = new_service(small_map)
    for user_id, app_id, usage_type, amount, override in calls:
        actor = Actor(user_id, app_id)
        if batched:
            service.batch_increment_usages(actor, [(usage_type, amount, override)])
        else:
            service.increment_usage(actor, usage_type, amount, override)
    global_report = global_usage(service)
    users_total = 0
    type_sums: dict[str, dict[str, int]] = {}
    for user_id in ("u", "v", "w"):
        user = Actor(user_id)
        usage = usage_of(service, user)
        per_type = {key: value for key, value in usage.items() if key != "total"}
        assert usage["total"] == sum(counters["cost"] for counters in per_type.values())
        apps = app_totals_of(service, user)
        assert usage["total"] == sum(entry["total"] for entry in apps.values())
        assert sum(c["count"] for c in per_type.values()) == sum(entry["count"] for entry in apps.values())
        for app_id in APPS:
            if app_id is None:
                continue
            app_view = app_totals_of(service, Actor(user_id, app_id))
            assert app_view[app_id]["total"] + app_view["others"]["total"] == usage["total"]
            assert app_view[app_id] == service.get_actor_app_usage(user, app_id)
        for app_id, entry in apps.items():
            record: Any = service.get_actor_current_month_app_usage_details(user, app_id)
            assert record["total"] == entry["total"]
            assert sum(v["count"] for k, v in record.items() if k != "total") == entry["count"]
        # The recorded calls of this user, recomputed.
        mine = [c for c in calls if c[0] == user_id and not (c[3] == 0 and c[4] is None)]
        assert usage["total"] == sum(call_cost(c[2], c[3], c[4]) for c in mine)
        assert sum(c["count"] for c in per_type.values()) == len(mine)
        users_total += usage["total"]
        for key, counters in per_type.items():
            sums = type_sums.setdefault(key, {"units": 0, "cost": 0, "count": 0})
            for field in ("units", "cost", "count"):
                sums[field] += counters[field]
    assert global_report["total"] == users_total
    assert {key: value for key, value in global_report.items() if key != "total"} == type_sums


# ---------------------------------------------------------------------------------------------
# Overflow raises OverflowError and records nothing.


@given(
    units=st.integers(min_value=1, max_value=MAX_UNITS),
    extra=st.integers(min_value=0, max_value=2**70),
    batched=st.booleans(),
)
def test_overflowing_units_raise_and_record_nothing(
    small_map: CostMap, units: int, extra: int, batched: bool
) -> None:
    service = new_service(small_map)
    actor = Actor("u", "app-a")
    # A free type, so 2**64-1 units stay inside an actor's money range (10^18 µ¢).
    service.increment_usage(actor, "free:thing", units)
    service.increment_usage(Actor("v"), "kv:write", 5)
    too_many = MAX_UNITS - units + 1 + extra
    apps = ["app-a", "os-global"]
    before = snapshot(service, [actor, Actor("v")], apps)
    with pytest.raises(OverflowError):
        if batched:
            service.batch_increment_usages(actor, [("kv:write", 1), ("free:thing", too_many)])
        else:
            service.increment_usage(actor, "free:thing", too_many)
    assert snapshot(service, [actor, Actor("v")], apps) == before
    # Exactly up to the limit is still fine.
    fits = MAX_UNITS - units
    service.increment_usage(actor, "free:thing", fits)
    assert usage_of(service, actor)["free:thing"]["units"] == MAX_UNITS


@given(
    prices_charged=st.integers(min_value=1, max_value=5), override=st.integers(min_value=1, max_value=10**30)
)
def test_overflowing_money_raises_and_records_nothing(
    small_map: CostMap, prices_charged: int, override: int
) -> None:
    service = new_service(small_map)
    actor = Actor("u")
    # 10^18 µ¢ ($10^10) is an actor's range (the largest price a cost map accepts, and the Rust
    # core's `MAX_RECORD_ATTOCENTS`): any further charge on top of it must overflow.
    service.increment_usage(actor, "kv:write", 1, cost_override=10**18)
    before = snapshot(service, [actor], ["os-global"])
    with pytest.raises(OverflowError):
        service.increment_usage(actor, "kv:read", prices_charged, cost_override=override)
    assert snapshot(service, [actor], ["os-global"]) == before
