"""A hypothesis state machine: the service against a small exact model, call after call.

Rules interleave charges (plain, affordable-only, batches, bad ones), purchases, manual totals,
plan changes, month rollovers and overuse alarms for three users acting through three apps. After
every rule each user's budget, month record, app totals, gate, and the global month must equal
the model's, and so must every overuse alarm raised. Prices are whole µ¢, so the model is exact
in plain integers; fractional prices are the other property tests' subject.

Size: the `default` profile runs 60 examples of up to 50 steps, `ci` 400 (about 20,000 calls).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from support import INTEGRAL_TYPES, FakeClock, small_cost_map
from usagemeter import (
    GET_USER_SUBSCRIPTION,
    REGISTER_AVAILABLE_POLICIES,
    Actor,
    AlarmEvent,
    GetUserSubscriptionEvent,
    MeteringService,
    Policy,
    RegisterAvailablePoliciesEvent,
)

USERS = ("u0", "u1", "u2")
APPS = (None, "app-a", "app-b")
PLANS = {"small": 500, "medium": 5_000, "none": 0}
TYPES = sorted(INTEGRAL_TYPES)
MONTHS = [calendar.timegm((2026, month, 10, 0, 0, 0)) for month in range(10, 13)]


@dataclass
class Month:
    total: int = 0
    count: int = 0
    allowance_used: int = 0
    consumed: int = 0  # purchased credit consumed this month
    overage: int = 0
    by_type: dict[str, list[int]] = field(default_factory=dict)  # type -> [units, cost, count]
    by_app: dict[str, list[int]] = field(default_factory=dict)  # app -> [total, count]


@dataclass
class User:
    plan: str = "small"
    purchased: int = 0
    consumed: int = 0
    months: dict[int, Month] = field(default_factory=dict)


def crossed_power_of_two(before: int, after: int, allowance: int) -> bool:
    """The model's overuse rule: net usage went across 2^k x allowance (k >= 1) from >= allowance."""
    if allowance <= 0 or before < allowance or after < 2 * allowance:
        return False
    threshold = 2 * allowance
    while threshold * 2 <= after:
        threshold *= 2
    return before < threshold


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(MONTHS[0])
        self.month = 0
        self.users = {user: User() for user in USERS}
        self.service = MeteringService(small_cost_map(), clock=self.clock, subscription_ttl=60.0)
        self.alarms: list[AlarmEvent] = []
        self.expected_alarms: list[str] = []
        self.service.events.on("metering:alarm", self.alarms.append)

        def register(event: RegisterAvailablePoliciesEvent) -> None:
            event.available_policies.extend(Policy(name, value) for name, value in PLANS.items())

        def subscription(event: GetUserSubscriptionEvent) -> None:
            event.user_subscription_id = self.users[event.actor.user_id].plan

        self.service.events.on(REGISTER_AVAILABLE_POLICIES, register)
        self.service.events.on(GET_USER_SUBSCRIPTION, subscription)

    # -- the model --------------------------------------------------------------------------

    def this_month(self, user: str) -> Month:
        return self.users[user].months.setdefault(self.month, Month())

    def allowance(self, user: str) -> int:
        return PLANS[self.users[user].plan]

    def remaining(self, user: str) -> int:
        state, month = self.users[user], self.this_month(user)
        return max(0, self.allowance(user) - month.allowance_used) + state.purchased - state.consumed

    def book(self, user: str, app: str | None, items: list[tuple[str, int, int]], manual: bool) -> None:
        """Record `items` (type, units, cost) for `user`: pools, records and the overuse alarm."""
        state, month, allowance = self.users[user], self.this_month(user), self.allowance(user)
        cost = sum(item_cost for _, _, item_cost in items)
        net_before = month.allowance_used + month.overage
        room = max(0, allowance - month.allowance_used)
        if manual and cost < 0:
            overage = min(-cost, month.overage)
            split = (-(-cost - overage), 0, -overage)
        elif manual:
            split = (min(cost, room), 0, cost - min(cost, room))
        else:
            from_allowance = min(cost, room)
            from_credit = min(cost - from_allowance, state.purchased - state.consumed)
            split = (from_allowance, from_credit, cost - from_allowance - from_credit)
        month.allowance_used += split[0]
        month.consumed += split[1]
        state.consumed += split[1]
        month.overage += split[2]
        month.total += cost
        month.count += len(items)
        app_record = month.by_app.setdefault(app or "os-global", [0, 0])
        app_record[0] += cost
        app_record[1] += len(items)
        for usage_type, units, item_cost in items:
            record = month.by_type.setdefault(usage_type, [0, 0, 0])
            record[0] += units
            record[1] += item_cost
            record[2] += 1
        net_after = month.allowance_used + month.overage
        credit_left = state.purchased - state.consumed
        if credit_left == 0 and split[2] > 0 and crossed_power_of_two(net_before, net_after, allowance):
            self.expected_alarms.append(user)

    # -- rules ------------------------------------------------------------------------------

    @rule(
        user=st.sampled_from(USERS),
        app=st.sampled_from(APPS),
        usage_type=st.sampled_from(TYPES),
        units=st.integers(min_value=0, max_value=40),
        override=st.none() | st.integers(min_value=0, max_value=3_000),
    )
    def increment(
        self, user: str, app: str | None, usage_type: str, units: int, override: int | None
    ) -> None:
        total = self.service.increment_usage(Actor(user, app), usage_type, units, override)
        if units or override is not None:
            cost = override if override is not None else INTEGRAL_TYPES[usage_type] * units
            self.book(user, app, [(usage_type, units, cost)], manual=False)
        assert total == self.this_month(user).total

    @rule(
        user=st.sampled_from(USERS),
        app=st.sampled_from(APPS),
        usage_type=st.sampled_from(TYPES),
        units=st.integers(min_value=1, max_value=40),
    )
    def try_increment(self, user: str, app: str | None, usage_type: str, units: int) -> None:
        cost = INTEGRAL_TYPES[usage_type] * units
        affordable = cost == 0 or self.remaining(user) >= cost
        result = self.service.try_increment_usage(Actor(user, app), usage_type, units)
        if affordable:
            self.book(user, app, [(usage_type, units, cost)], manual=False)
            assert result == self.this_month(user).total
        else:
            assert result is None

    @rule(
        user=st.sampled_from(USERS),
        app=st.sampled_from(APPS),
        items=st.lists(
            st.tuples(st.sampled_from(TYPES), st.integers(min_value=1, max_value=30)), min_size=1, max_size=4
        ),
    )
    def batch(self, user: str, app: str | None, items: list[tuple[str, int]]) -> None:
        self.service.batch_increment_usages(Actor(user, app), items)
        self.book(user, app, [(t, units, INTEGRAL_TYPES[t] * units) for t, units in items], manual=False)

    @rule(user=st.sampled_from(USERS), app=st.sampled_from(APPS), amount=st.integers(max_value=-1))
    def bad_charge_changes_nothing(self, user: str, app: str | None, amount: int) -> None:
        with pytest.raises(ValueError):
            self.service.increment_usage(Actor(user, app), "kv:read", amount)
        with pytest.raises(ValueError):
            self.service.batch_increment_usages(Actor(user, app), [("kv:read", 1), ("kv:write", amount)])

    @rule(user=st.sampled_from(USERS), amount=st.integers(min_value=0, max_value=4_000))
    def buy(self, user: str, amount: int) -> None:
        self.service.update_addon_credit(user, amount)
        self.users[user].purchased += amount

    @rule(user=st.sampled_from(USERS), new_total=st.integers(min_value=0, max_value=12_000))
    def set_total(self, user: str, new_total: int) -> None:
        month = self.this_month(user)
        if new_total < month.consumed:
            with pytest.raises(ValueError):
                self.service.set_actor_current_month_usage_total(Actor(user), new_total)
            return
        self.service.set_actor_current_month_usage_total(Actor(user), new_total)
        if new_total != month.total:
            self.book(user, None, [("manual_adjustment", 0, new_total - month.total)], manual=True)

    @rule(user=st.sampled_from(USERS), plan=st.sampled_from(sorted(PLANS)))
    def change_plan(self, user: str, plan: str) -> None:
        self.users[user].plan = plan
        self.service.invalidate_subscription(user)

    @precondition(lambda self: self.month < len(MONTHS) - 1)
    @rule()
    def next_month(self) -> None:
        self.month += 1
        self.clock.now = MONTHS[self.month]

    # -- what must hold after every step ----------------------------------------------------

    @invariant()
    def budgets_agree(self) -> None:
        for user in USERS:
            state, month = self.users[user], self.this_month(user)
            budget: Any = self.service.get_actor_budget(Actor(user))
            assert budget == {
                "monthly_allowance": self.allowance(user),
                "allowance_used": month.allowance_used,
                "purchased_credits": state.purchased,
                "consumed_purchase_credits": state.consumed,
                "consumed_this_month": month.consumed,
                "overage": month.overage,
                "held": 0,  # this model makes no holds (test_holds.py models them)
                "remaining": self.remaining(user),
            }
            assert self.service.has_any_usage(Actor(user)) == (self.remaining(user) > 0)
            assert self.service.has_usage_this_month(Actor(user)) == (month.count > 0)

    @invariant()
    def records_agree(self) -> None:
        global_total = 0
        for user in USERS:
            month = self.this_month(user)
            global_total += month.total
            details: Any = self.service.get_actor_current_month_usage_details(Actor(user))
            expected_usage: dict[str, Any] = {"total": month.total}
            for usage_type, (units, cost, count) in month.by_type.items():
                expected_usage[usage_type] = {"units": units, "cost": cost, "count": count}
            assert details["usage"] == expected_usage
            assert details["app_totals"] == {
                app: {"total": total, "count": count} for app, (total, count) in month.by_app.items()
            }
        assert self.service.get_global_usage()["total"] == global_total

    @invariant()
    def alarms_agree(self) -> None:
        raised = [alarm.actor.user_id for alarm in self.alarms if alarm.kind == "overuse"]
        assert raised == self.expected_alarms


test_the_service_matches_the_model = LedgerMachine.TestCase
