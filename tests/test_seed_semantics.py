"""Seed fidelity (issue 8): the spending gate, manual totals, and the global rate alarm.

The system usagemeter grows out of uses ``hasAnyUsage`` as its gate ("budget left"), leaves the
credit pool alone when an operator sets a month total, and raises ``excessiveGlobalUsageRate`` when
the global month total grows too fast between two checks.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import NOVEMBER_1, FakeClock, budget_of, collect_alarms, new_service
from usagemeter import Actor, AlarmEvent, CostMap, MeteringService, Policy, to_microcents

# ---------------------------------------------------------------------------------------------
# 1. has_any_usage: remaining > 0


def test_has_any_usage_is_the_spending_gate(service: MeteringService) -> None:
    newcomer = Actor("newcomer")
    assert service.has_any_usage(newcomer)  # a new user has the whole allowance
    assert not service.has_usage_this_month(newcomer)

    spender = Actor("spender")  # temp_free: 25,000,000 µ¢
    service.increment_usage(spender, "kv:read", 1, cost_override=24_999_999)
    assert service.has_any_usage(spender)
    service.increment_usage(spender, "kv:read", 1, cost_override=1)  # exactly exhausted
    assert not service.has_any_usage(spender)
    assert service.has_usage_this_month(spender)
    service.update_addon_credit("spender", 1)  # one µ¢ of purchased credit opens the gate again
    assert service.has_any_usage(spender)
    service.increment_usage(spender, "kv:read", 1, cost_override=5)  # into overage
    assert not service.has_any_usage(spender)
    assert service.has_any_usage(Actor.system())


def test_has_any_usage_follows_the_month(service: MeteringService, clock: FakeClock) -> None:
    actor = Actor("monthly")
    service.increment_usage(actor, "kv:read", 1, cost_override=30_000_000)
    assert not service.has_any_usage(actor)
    clock.now = NOVEMBER_1
    assert service.has_any_usage(actor)


# ---------------------------------------------------------------------------------------------
# 2. set_actor_current_month_usage_total leaves purchased credit alone


def test_setting_a_total_uses_none_of_the_purchased_credit(service: MeteringService) -> None:
    """The issue's case: 55,000,000 µ¢ with 5,000,000 of credit used all of the credit before."""
    actor = Actor("adjusted", email="a@example.com")  # user_free: 50,000,000 µ¢
    service.update_addon_credit("adjusted", 5_000_000)
    assert service.set_actor_current_month_usage_total(actor, 55_000_000) == 55_000_000
    budget: Any = service.get_actor_budget(actor)
    assert budget["purchased_credits"] == 5_000_000
    assert budget["consumed_purchase_credits"] == 0
    assert (budget["allowance_used"], budget["overage"]) == (50_000_000, 5_000_000)
    assert service.get_remaining_usage(actor) == 5_000_000  # the credit is all still there
    service.set_actor_current_month_usage_total(actor, 0)
    assert budget_of(service, actor)["consumed_purchase_credits"] == 0
    assert service.get_remaining_usage(actor) == 55_000_000


def test_a_total_below_what_credit_paid_this_month_is_refused(service: MeteringService) -> None:
    actor = Actor("paid")
    service.update_addon_credit("paid", 10_000_000)
    service.increment_usage(actor, "kv:read", 1, cost_override=30_000_000)  # 25M allowance + 5M credit
    before = service.get_actor_budget(actor)
    with pytest.raises(ValueError, match="5000000 µ¢ that purchased credit paid"):
        service.set_actor_current_month_usage_total(actor, 4_999_999)
    assert service.get_actor_budget(actor) == before
    assert service.set_actor_current_month_usage_total(actor, 5_000_000) == 5_000_000
    budget: Any = service.get_actor_budget(actor)
    assert (budget["allowance_used"], budget["consumed_this_month"], budget["overage"]) == (0, 5_000_000, 0)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("charge"), st.integers(min_value=0, max_value=3_000)),
        st.tuples(st.just("buy"), st.integers(min_value=0, max_value=3_000)),
        st.tuples(st.just("set_total"), st.integers(min_value=0, max_value=10_000)),
    ),
    min_size=1,
    max_size=30,
)


@given(allowance=st.integers(min_value=0, max_value=4_000), ops=operations)
def test_manual_totals_never_move_purchased_credit(
    small_map: CostMap, allowance: int, ops: list[Any]
) -> None:
    """Property: over any interleaving of charges, purchases and manual totals, a manual total
    changes neither purchased nor consumed credit, lands exactly on its target, and keeps
    ``allowance_used + consumed_this_month + overage == total``; a refused one changes nothing."""
    service = new_service(small_map, policies=(Policy("temp_free", allowance),))
    actor = Actor("u")
    total = 0
    for kind, amount in ops:
        before: Any = service.get_actor_budget(actor)
        if kind == "charge":
            total = service.increment_usage(actor, "kv:read", 1, cost_override=amount)
        elif kind == "buy":
            service.update_addon_credit("u", amount)
        elif amount < before["consumed_this_month"]:
            with pytest.raises(ValueError):
                service.set_actor_current_month_usage_total(actor, amount)
            assert service.get_actor_budget(actor) == before
        else:
            total = service.set_actor_current_month_usage_total(actor, amount)
            assert total == amount
            after: Any = service.get_actor_budget(actor)
            assert after["purchased_credits"] == before["purchased_credits"]
            assert after["consumed_purchase_credits"] == before["consumed_purchase_credits"]
            assert after["consumed_this_month"] == before["consumed_this_month"]
            assert 0 <= after["allowance_used"] <= allowance
            assert after["overage"] >= 0
        budget: Any = service.get_actor_budget(actor)
        assert budget["allowance_used"] + budget["consumed_this_month"] + budget["overage"] == total
        left = budget["purchased_credits"] - budget["consumed_purchase_credits"]
        assert budget["remaining"] == max(0, allowance - budget["allowance_used"]) + left


# ---------------------------------------------------------------------------------------------
# 3. The global rate alarm


def rate_alarms(alarms: list[AlarmEvent]) -> list[AlarmEvent]:
    return [alarm for alarm in alarms if alarm.kind == "global_usage_rate"]


def test_the_global_rate_alarm_fires_above_the_maximum(small_map: CostMap, clock: FakeClock) -> None:
    limit = to_microcents("0.10")  # 10,000,000 µ¢ a minute
    # The monitor checks only every 10^9 s here: these checks are the test's own.
    service = MeteringService(
        small_map, clock=clock, max_global_usage_per_minute=limit, global_usage_check_interval=1e9
    )
    alarms = collect_alarms(service)
    for index in range(10):
        service.increment_usage(Actor(f"u{index}"), "kv:read", 1, cost_override=14_000_000)
    clock.advance(15 * 60)
    # 140,000,000 µ¢ in 15 minutes: 9,333,333 µ¢ a minute, under the maximum.
    assert service.check_global_usage_rate() == 9_333_333
    assert rate_alarms(alarms) == []
    service.increment_usage(Actor("burst"), "kv:read", 1, cost_override=150_000_001)
    clock.advance(15 * 60)
    assert service.check_global_usage_rate() == 10_000_000  # exactly the maximum: no alarm
    assert rate_alarms(alarms) == []
    service.increment_usage(Actor("burst"), "kv:read", 1, cost_override=150_000_015)
    clock.advance(15 * 60)
    assert service.check_global_usage_rate() == 10_000_001
    [alarm] = rate_alarms(alarms)
    assert alarm.actor == Actor.system()
    assert "10000001 µ¢ a minute" in alarm.message and str(limit) in alarm.message


def test_a_new_month_starts_a_new_baseline(small_map: CostMap, clock: FakeClock) -> None:
    service = MeteringService(
        small_map, clock=clock, max_global_usage_per_minute=1, global_usage_check_interval=1e9
    )
    alarms = collect_alarms(service)
    service.increment_usage(Actor("u"), "kv:read", 1, cost_override=10**9)
    clock.now = NOVEMBER_1 + 60
    assert service.check_global_usage_rate() is None  # October's total is not November's growth
    clock.advance(60)
    assert service.check_global_usage_rate() == 0
    assert rate_alarms(alarms) == []


def test_the_rate_is_off_by_default_and_checks_report_it(small_map: CostMap, clock: FakeClock) -> None:
    service = MeteringService(small_map, clock=clock)
    alarms = collect_alarms(service)
    assert service.check_global_usage_rate() is None  # the first check is the baseline
    service.increment_usage(Actor("u"), "kv:read", 1, cost_override=10**12)
    clock.advance(60)
    assert service.check_global_usage_rate() == 10**12
    assert rate_alarms(alarms) == []


@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("5", TypeError)]
)
def test_a_bad_maximum_is_refused(small_map: CostMap, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_global_usage_per_minute"):
        MeteringService(small_map, max_global_usage_per_minute=value)


@pytest.mark.parametrize("interval", [0, -1, float("inf"), float("nan")])
def test_a_bad_check_interval_is_refused(small_map: CostMap, interval: float) -> None:
    with pytest.raises(ValueError, match="global_usage_check_interval"):
        MeteringService(small_map, max_global_usage_per_minute=1, global_usage_check_interval=interval)


@pytest.mark.timeout(60)
def test_the_monitor_checks_when_the_interval_has_passed(small_map: CostMap, clock: FakeClock) -> None:
    service = MeteringService(
        small_map, clock=clock, max_global_usage_per_minute=1_000, global_usage_check_interval=900
    )
    alarms = collect_alarms(service)
    service.increment_usage(Actor("u"), "kv:read", 1, cost_override=10**9)
    time.sleep(2.5)  # the monitor ticks every second, but 900 s have not passed on the clock
    assert rate_alarms(alarms) == []
    clock.advance(900)
    deadline = time.monotonic() + 10
    while not rate_alarms(alarms) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(rate_alarms(alarms)) == 1
    time.sleep(2.5)  # checked again only 900 s later
    assert len(rate_alarms(alarms)) == 1
