"""MeteringService behaviour: the seed system's own cases, reports, plans, events, months, alarms."""

from __future__ import annotations

import dataclasses
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pytest
from support import (
    COMPLETION,
    EGRESS,
    FRACTION,
    NOVEMBER_1,
    PROMPT,
    FakeClock,
    app_totals_of,
    budget_of,
    collect_alarms,
    exact_cost,
    global_usage,
    round_half_up,
    usage_of,
)
from usagemeter import (
    ALARM,
    BUILTIN_POLICIES,
    GET_USER_SUBSCRIPTION,
    OVERRIDE_DEFAULT_SUBSCRIPTION,
    REGISTER_AVAILABLE_POLICIES,
    TEMP_FREE,
    USER_FREE,
    Actor,
    AlarmEvent,
    CostMap,
    GetUserSubscriptionEvent,
    MeteringService,
    MeteringServiceWrapper,
    OverrideDefaultSubscriptionEvent,
    Policy,
    RegisterAvailablePoliciesEvent,
    UnknownUsageType,
)
from usagemeter.types import UsageDetails

EMPTY_DETAILS: UsageDetails = {"usage": {"total": 0}, "app_totals": {}}


def add_policy(service: MeteringService, policy: Policy) -> None:
    def register(event: RegisterAvailablePoliciesEvent) -> None:
        event.available_policies.append(policy)

    service.events.on(REGISTER_AVAILABLE_POLICIES, register)


def subscribe_everyone(service: MeteringService, policy_id: str) -> None:
    def subscribe(event: GetUserSubscriptionEvent) -> None:
        event.user_subscription_id = policy_id

    service.events.on(GET_USER_SUBSCRIPTION, subscribe)


# ---------------------------------------------------------------------------------------------
# Values: Actor, Policy, constants


def test_actor_is_a_frozen_hashable_value() -> None:
    actor = Actor("u1", "app-a", email="u1@example.com")
    assert (actor.user_id, actor.app_id, actor.email, actor.is_system) == (
        "u1",
        "app-a",
        "u1@example.com",
        False,
    )
    assert actor == Actor("u1", "app-a", email="u1@example.com")
    assert hash(actor) == hash(Actor("u1", "app-a", email="u1@example.com"))
    assert actor != Actor("u1", "app-b", email="u1@example.com")
    assert Actor("u1") != Actor("u1", "app-a")
    assert len({Actor("u1"), Actor("u1"), Actor("u2")}) == 2
    assert Actor("u1").app_id is None
    assert Actor("u1").email is None
    attribute = "user_id"
    with pytest.raises(AttributeError):
        setattr(actor, attribute, "u2")
    assert actor.user_id == "u1"


def test_system_actor() -> None:
    system = Actor.system()
    assert system.is_system
    assert system == Actor.system()
    assert not Actor("u").is_system
    assert system != Actor("u")


def test_actor_refuses_bad_ids() -> None:
    with pytest.raises(ValueError):
        Actor("")
    with pytest.raises(TypeError):
        Actor(1)  # type: ignore[arg-type]


def test_policies_and_builtins() -> None:
    assert TEMP_FREE == Policy("temp_free", 25_000_000)
    assert USER_FREE == Policy("user_free", 50_000_000)
    assert TEMP_FREE.monthly_storage_allowance == 0
    assert {TEMP_FREE, USER_FREE} <= set(BUILTIN_POLICIES)
    policy = Policy("gold", 10, 5)
    assert (policy.id, policy.monthly_allowance, policy.monthly_storage_allowance) == ("gold", 10, 5)
    assert hash(policy) == hash(Policy("gold", 10, 5))
    attribute = "monthly_allowance"
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(policy, attribute, 11)
    with pytest.raises(ValueError):
        Policy("bad", -1)
    with pytest.raises(TypeError):
        Policy("bad", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Policy("bad", True)


def test_event_names() -> None:
    assert OVERRIDE_DEFAULT_SUBSCRIPTION == "metering:overrideDefaultSubscription"
    assert REGISTER_AVAILABLE_POLICIES == "metering:registerAvailablePolicies"
    assert GET_USER_SUBSCRIPTION == "metering:getUserSubscription"
    assert ALARM == "metering:alarm"


def test_unmapped_option_is_checked(small_map: CostMap) -> None:
    with pytest.raises(ValueError):
        MeteringService(small_map, unmapped="ignore")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The seed system's own cases


def test_seed_batch_of_two_writes_and_three_reads_costs_439(default_service: MeteringService) -> None:
    actor = Actor("seed-user")
    total = default_service.batch_increment_usages(
        actor, [("kv:write", 1), ("kv:write", 1), ("kv:read", 1), ("kv:read", 1), ("kv:read", 1)]
    )
    assert total == 439
    assert usage_of(default_service, actor) == {
        "total": 439,
        "kv:write": {"units": 2, "cost": 250, "count": 2},
        "kv:read": {"units": 3, "cost": 189, "count": 3},
    }
    assert app_totals_of(default_service, actor) == {"os-global": {"total": 439, "count": 5}}
    assert default_service.get_global_usage() == usage_of(default_service, actor)


def test_seed_batch_with_amounts_costs_439(default_service: MeteringService) -> None:
    actor = Actor("seed-user-2")
    assert default_service.batch_increment_usages(actor, [("kv:write", 2), ("kv:read", 3)]) == 439
    assert usage_of(default_service, actor) == {
        "total": 439,
        "kv:write": {"units": 2, "cost": 250, "count": 1},
        "kv:read": {"units": 3, "cost": 189, "count": 1},
    }


def test_an_app_actor_sees_its_app_and_others(service: MeteringService) -> None:
    app_a, app_b, no_app = Actor("u", "app-a"), Actor("u", "app-b"), Actor("u")
    service.increment_usage(app_a, "kv:write", 1)  # 125
    service.increment_usage(app_a, "kv:read", 1)  # 63
    service.increment_usage(app_b, "kv:read", 2)  # 126
    service.increment_usage(no_app, "kv:write", 2)  # 250, booked under os-global
    assert app_totals_of(service, app_a) == {
        "app-a": {"total": 188, "count": 2},
        "others": {"total": 376, "count": 2},
    }
    assert app_totals_of(service, app_b) == {
        "app-b": {"total": 126, "count": 1},
        "others": {"total": 438, "count": 3},
    }
    # A user (no app) sees every app, os-global included.
    assert app_totals_of(service, no_app) == {
        "app-a": {"total": 188, "count": 2},
        "app-b": {"total": 126, "count": 1},
        "os-global": {"total": 250, "count": 1},
    }
    # The usage record is the user's, over all apps (the "actor's month record"; apps have their own).
    assert usage_of(service, app_a) == usage_of(service, no_app)
    assert usage_of(service, no_app)["total"] == 564


def test_an_app_actor_without_usage_still_sees_both_entries(service: MeteringService) -> None:
    assert app_totals_of(service, Actor("fresh", "app-a")) == {
        "app-a": {"total": 0, "count": 0},
        "others": {"total": 0, "count": 0},
    }
    service.increment_usage(Actor("fresh", "app-b"), "kv:read", 1)
    assert app_totals_of(service, Actor("fresh", "app-a")) == {
        "app-a": {"total": 0, "count": 0},
        "others": {"total": 63, "count": 1},
    }


def test_a_tiny_policy_from_the_events_leaves_nothing_and_every_check_false(
    default_service: MeteringService,
) -> None:
    tiny = Policy("tiny", 10)
    add_policy(default_service, tiny)
    subscribe_everyone(default_service, "tiny")
    actor = Actor("tiny-user", email="tiny@example.com")

    assert default_service.get_actor_subscription(actor) == tiny
    assert default_service.get_remaining_usage(actor) == 10
    assert default_service.has_enough_credits(actor, 10)
    assert not default_service.has_enough_credits(actor, 11)

    assert default_service.increment_usage(actor, "kv:read", 1) == 63
    assert default_service.get_remaining_usage(actor) == 0
    assert not default_service.has_enough_credits(actor, 1)
    assert not default_service.has_enough_credits_for(actor, "kv:read", 1)
    assert default_service.try_increment_usage(actor, "kv:read", 1) is None
    assert default_service.get_allowed_usage(actor) == {
        "remaining": 0,
        "monthly_allowance": 10,
        "addons": {"purchased_credits": 0, "consumed_purchase_credits": 0},
    }
    # the refused try recorded nothing
    assert usage_of(default_service, actor) == {"total": 63, "kv:read": {"units": 1, "cost": 63, "count": 1}}
    budget = budget_of(default_service, actor)
    assert (budget["allowance_used"], budget["overage"], budget["remaining"]) == (10, 53, 0)


def test_every_shipped_price_charged_twice_costs_exactly_twice_the_price(
    default_service: MeteringService, default_cost_map: CostMap
) -> None:
    everything = Actor("everything")
    expected_total = Decimal(0)
    for index, (usage_type, price) in enumerate(default_cost_map.items()):
        one_type = Actor(f"one-type-{index}")
        default_service.increment_usage(one_type, usage_type, 1)
        total = default_service.increment_usage(one_type, usage_type, 1)
        assert total == round_half_up(exact_cost(price, 2)), usage_type
        default_service.increment_usage(everything, usage_type, 1)
        default_service.increment_usage(everything, usage_type, 1)
        expected_total += exact_cost(price, 2)
    usage = usage_of(default_service, everything)
    for usage_type, price in default_cost_map.items():
        assert usage[usage_type] == {"units": 2, "cost": round_half_up(exact_cost(price, 2)), "count": 2}, (
            usage_type
        )
    # The month total is the exact sum rounded once, not the sum of rounded per-type costs.
    assert usage["total"] == round_half_up(expected_total)
    assert len(usage) == 1105 + 1
    report = global_usage(default_service)
    for usage_type, price in default_cost_map.items():
        assert report[usage_type] == {"units": 4, "cost": round_half_up(exact_cost(price, 4)), "count": 4}


# ---------------------------------------------------------------------------------------------
# Report shapes


def test_details_shape(service: MeteringService) -> None:
    actor = Actor("u")
    assert service.get_actor_current_month_usage_details(actor) == EMPTY_DETAILS
    assert service.increment_usage(actor, "kv:write", 2) == 250
    assert service.increment_usage(actor, "kv:read", 1) == 313
    assert service.get_actor_current_month_usage_details(actor) == {
        "usage": {
            "total": 313,
            "kv:write": {"units": 2, "cost": 250, "count": 1},
            "kv:read": {"units": 1, "cost": 63, "count": 1},
        },
        "app_totals": {"os-global": {"total": 313, "count": 2}},
    }
    assert service.has_usage_this_month(actor)
    assert not service.has_usage_this_month(Actor("someone-else"))


def test_costs_are_reported_as_rounded_ints(service: MeteringService) -> None:
    actor = Actor("u")
    assert service.increment_usage(actor, FRACTION, 1) == 31  # 31.25
    assert service.increment_usage(actor, FRACTION, 1) == 63  # 62.5 rounds half up
    usage = usage_of(service, actor)
    assert usage[FRACTION] == {"units": 2, "cost": 63, "count": 2}
    assert all(type(value) is int for value in usage[FRACTION].values())
    assert type(usage["total"]) is int


def test_egress_is_exact_across_many_small_calls(service: MeteringService) -> None:
    actor = Actor("u")
    totals = [service.increment_usage(actor, EGRESS, 1) for _ in range(100)]
    # 0.011175870895 µ¢ per byte: rounding per call would keep the total at 0 forever.
    assert totals[43] == 0  # 44 bytes = 0.49173831938 µ¢
    assert totals[44] == 1  # 45 bytes = 0.502914190275 µ¢
    assert totals[-1] == 1  # 100 bytes = 1.1175870895 µ¢
    assert usage_of(service, actor)[EGRESS] == {"units": 100, "cost": 1, "count": 100}


def test_amount_zero_without_override_records_nothing(service: MeteringService) -> None:
    actor = Actor("u")
    service.increment_usage(actor, "kv:write", 1)
    assert service.increment_usage(actor, "kv:read", 0) == 125
    assert service.batch_increment_usages(actor, [("kv:read", 0)]) == 125
    assert usage_of(service, actor) == {"total": 125, "kv:write": {"units": 1, "cost": 125, "count": 1}}
    service.increment_usage(Actor("zero-only"), "kv:read", 0)
    assert not service.has_usage_this_month(Actor("zero-only"))


def test_an_override_is_the_cost_of_the_whole_call(service: MeteringService) -> None:
    actor = Actor("u")
    assert service.increment_usage(actor, "kv:write", 10, cost_override=7) == 7
    # With an override, an unpriced usage type is accepted even when unmapped="error".
    assert service.increment_usage(actor, "custom:unpriced", 3, cost_override=5) == 12
    # An override with amount 0 is still a recorded call.
    assert service.increment_usage(actor, "kv:read", 0, cost_override=4) == 16
    assert usage_of(service, actor) == {
        "total": 16,
        "kv:write": {"units": 10, "cost": 7, "count": 1},
        "custom:unpriced": {"units": 3, "cost": 5, "count": 1},
        "kv:read": {"units": 0, "cost": 4, "count": 1},
    }
    assert service.batch_increment_usages(actor, [("kv:write", 1, None), ("kv:write", 5, 0)]) == 141
    assert usage_of(service, actor)["kv:write"] == {"units": 16, "cost": 132, "count": 3}


def test_app_usage_details(service: MeteringService) -> None:
    app_a, app_b, no_app = Actor("u", "app-a"), Actor("u", "app-b"), Actor("u")
    service.increment_usage(app_a, "kv:write", 2)
    service.increment_usage(app_b, "kv:read", 1)
    service.increment_usage(no_app, "kv:read", 3)
    app_a_record = {"total": 250, "kv:write": {"units": 2, "cost": 250, "count": 1}}
    os_global_record = {"total": 189, "kv:read": {"units": 3, "cost": 189, "count": 1}}
    assert service.get_actor_current_month_app_usage_details(app_a) == app_a_record
    assert service.get_actor_current_month_app_usage_details(app_a, "app-a") == app_a_record
    # The user's usage without an app is another app's record to an app actor.
    with pytest.raises(PermissionError):
        service.get_actor_current_month_app_usage_details(app_a, "os-global")
    assert service.get_actor_current_month_app_usage_details(no_app) == os_global_record
    assert service.get_actor_current_month_app_usage_details(no_app, "app-b") == {
        "total": 63,
        "kv:read": {"units": 1, "cost": 63, "count": 1},
    }
    assert service.get_actor_current_month_app_usage_details(no_app, "never-used") == {"total": 0}
    assert service.get_actor_app_usage(app_a, "app-a") == {"total": 250, "count": 1}
    with pytest.raises(PermissionError):
        service.get_actor_app_usage(app_a, "os-global")
    assert service.get_actor_app_usage(no_app, "os-global") == {"total": 189, "count": 1}
    assert service.get_actor_app_usage(no_app, "app-b") == {"total": 63, "count": 1}
    assert service.get_actor_app_usage(no_app, "never-used") == {"total": 0, "count": 0}


def test_an_app_actor_may_not_read_another_app(service: MeteringService) -> None:
    resolutions: list[object] = []

    def count(event: GetUserSubscriptionEvent) -> None:
        resolutions.append(event)

    service.events.on(GET_USER_SUBSCRIPTION, count)
    service.increment_usage(Actor("u", "app-b"), "kv:read", 1)
    before = service.get_actor_current_month_usage_details(Actor("u"))
    resolved = len(resolutions)
    for actor in (Actor("u", "app-a"), Actor("stranger", "app-a")):
        with pytest.raises(PermissionError):
            service.get_actor_current_month_app_usage_details(actor, "app-b")
        with pytest.raises(PermissionError):
            service.get_actor_app_usage(actor, "app-b")
    # The refusal comes first: no plan was resolved and no account was created or changed.
    assert len(resolutions) == resolved
    assert service.get_actor_current_month_usage_details(Actor("u")) == before
    assert not service.has_usage_this_month(Actor("stranger"))


def test_global_usage(service: MeteringService) -> None:
    assert service.get_global_usage() == {"total": 0}
    service.increment_usage(Actor("a"), "kv:write", 1)
    service.increment_usage(Actor("b", "app-x"), "kv:write", 3)
    service.increment_usage(Actor("c"), "kv:read", 2)
    service.increment_usage(Actor.system(), "kv:read", 100)
    assert service.get_global_usage() == {
        "total": 626,
        "kv:write": {"units": 4, "cost": 500, "count": 2},
        "kv:read": {"units": 2, "cost": 126, "count": 1},
    }


def test_record_usage_object(service: MeteringService) -> None:
    actor = Actor("u", "chat-app")
    total = service.record_usage_object({"prompt": 100, "completion": 10}, actor, "llm:org/model-1.5")
    assert total == 100 * 2 + 10 * 8
    assert usage_of(service, actor) == {
        "total": 280,
        PROMPT: {"units": 100, "cost": 200, "count": 1},
        COMPLETION: {"units": 10, "cost": 80, "count": 1},
    }
    total = service.record_usage_object(
        {"prompt": 5, "completion": 5}, actor, "llm:org/model-1.5", cost_overrides={"prompt": 1}
    )
    assert total == 280 + 1 + 40
    assert usage_of(service, actor)[PROMPT] == {"units": 105, "cost": 201, "count": 2}
    assert app_totals_of(service, actor)["chat-app"] == {"total": 321, "count": 4}


def test_record_usage_object_is_all_or_nothing(service: MeteringService) -> None:
    actor = Actor("u")
    with pytest.raises(UnknownUsageType):
        service.record_usage_object({"prompt": 1, "reasoning": 1}, actor, "llm:org/model-1.5")
    with pytest.raises(ValueError):
        service.record_usage_object({"prompt": 1, "completion": -1}, actor, "llm:org/model-1.5")
    assert service.get_actor_current_month_usage_details(actor) == EMPTY_DETAILS
    assert service.get_global_usage() == {"total": 0}


def test_addons(service: MeteringService) -> None:
    actor = Actor("buyer")
    assert service.get_actor_addons(actor) == {"purchased_credits": 0, "consumed_purchase_credits": 0}
    assert service.update_addon_credit("buyer", 1_000) == 1_000
    assert service.update_addon_credit("buyer", 500) == 1_500
    assert service.update_addon_credit("buyer", 0) == 1_500
    assert service.get_actor_addons(actor) == {"purchased_credits": 1_500, "consumed_purchase_credits": 0}
    assert service.get_actor_addons(Actor("buyer", "some-app")) == service.get_actor_addons(actor)
    with pytest.raises(ValueError):
        service.update_addon_credit("buyer", -1)
    assert service.get_remaining_usage(actor) == TEMP_FREE.monthly_allowance + 1_500


def test_purchased_credit_is_used_after_the_allowance(small_map: CostMap, clock: FakeClock) -> None:
    service = MeteringService(small_map, policies=(Policy("temp_free", 100),), clock=clock)
    actor = Actor("buyer")
    assert service.get_actor_subscription(actor) == Policy("temp_free", 100)
    service.update_addon_credit("buyer", 1_000)
    assert service.get_remaining_usage(actor) == 1_100
    service.increment_usage(actor, "kv:write", 1)  # 125: 100 allowance + 25 purchased
    assert service.get_actor_addons(actor) == {"purchased_credits": 1_000, "consumed_purchase_credits": 25}
    assert service.get_allowed_usage(actor) == {
        "remaining": 975,
        "monthly_allowance": 100,
        "addons": {"purchased_credits": 1_000, "consumed_purchase_credits": 25},
    }
    assert budget_of(service, actor) == {
        "monthly_allowance": 100,
        "allowance_used": 100,
        "purchased_credits": 1_000,
        "consumed_purchase_credits": 25,
        "overage": 0,
        "remaining": 975,
    }
    service.increment_usage(actor, "kv:read", 16)  # 1008: 975 purchased + 33 overage
    budget = budget_of(service, actor)
    assert (budget["consumed_purchase_credits"], budget["overage"], budget["remaining"]) == (1_000, 33, 0)
    # Overage is counted once: buying more credit makes exactly that much available again.
    service.update_addon_credit("buyer", 50)
    assert service.get_remaining_usage(actor) == 50


def test_set_total_books_a_manual_adjustment(service: MeteringService) -> None:
    actor = Actor("u", "app-a")
    service.increment_usage(actor, "kv:write", 2)
    service.increment_usage(actor, "kv:read", 1)
    assert service.set_actor_current_month_usage_total(actor, 1_000) == 1_000
    usage = usage_of(service, actor)
    assert usage["total"] == 1_000
    assert usage["manual_adjustment"] == {"units": 0, "cost": 687, "count": 1}
    assert usage["kv:write"] == {"units": 2, "cost": 250, "count": 1}
    assert service.get_global_usage()["total"] == 1_000
    assert service.get_actor_app_usage(actor, "app-a") == {"total": 1_000, "count": 3}
    # Lowering books a negative difference.
    assert service.set_actor_current_month_usage_total(actor, 200) == 200
    usage = usage_of(service, actor)
    assert usage["total"] == 200
    assert usage["manual_adjustment"] == {"units": 0, "cost": -113, "count": 2}
    assert service.get_global_usage()["total"] == 200
    assert budget_of(service, actor)["allowance_used"] == 200
    assert service.get_remaining_usage(actor) == TEMP_FREE.monthly_allowance - 200
    # Setting the current total changes nothing.
    assert service.set_actor_current_month_usage_total(actor, 200) == 200
    assert usage_of(service, actor)["manual_adjustment"]["count"] == 2
    with pytest.raises(ValueError):
        service.set_actor_current_month_usage_total(actor, -1)
    assert usage_of(service, actor)["total"] == 200


def test_set_total_on_a_fresh_actor(service: MeteringService) -> None:
    actor = Actor("fresh")
    assert service.set_actor_current_month_usage_total(actor, 42) == 42
    assert usage_of(service, actor) == {
        "total": 42,
        "manual_adjustment": {"units": 0, "cost": 42, "count": 1},
    }
    assert app_totals_of(service, actor) == {"os-global": {"total": 42, "count": 1}}


# ---------------------------------------------------------------------------------------------
# The system actor


def test_the_system_actor_is_never_metered(service: MeteringService) -> None:
    system = Actor.system()
    assert service.increment_usage(system, "kv:write", 5) == 0
    assert service.try_increment_usage(system, "kv:write", 5) == 0
    assert service.batch_increment_usages(system, [("kv:write", 1), ("kv:read", 2)]) == 0
    assert service.record_usage_object({"prompt": 3}, system, "llm:org/model-1.5") == 0
    assert service.has_enough_credits(system, 10**20)
    assert service.has_enough_credits_for(system, "kv:write", 10**9)
    assert service.has_any_usage(system)  # never metered: never out of budget
    assert not service.has_usage_this_month(system)
    assert service.get_actor_current_month_usage_details(system) == EMPTY_DETAILS
    assert service.get_global_usage() == {"total": 0}
    for read in (service.get_remaining_usage, service.get_allowed_usage, service.get_actor_budget):
        with pytest.raises(ValueError, match="not metered"):
            read(system)


# ---------------------------------------------------------------------------------------------
# The wrapper

PUBLIC_METHODS = [
    "increment_usage",
    "meter",
    "try_increment_usage",
    "batch_increment_usages",
    "record_usage_object",
    "has_enough_credits_for",
    "has_enough_credits",
    "has_any_usage",
    "has_usage_this_month",
    "get_remaining_usage",
    "get_allowed_usage",
    "get_actor_budget",
    "get_actor_current_month_usage_details",
    "get_actor_month_usage_details",
    "get_actor_current_month_app_usage_details",
    "get_actor_app_usage",
    "get_global_usage",
    "get_actor_subscription",
    "get_actor_addons",
    "update_addon_credit",
    "set_actor_current_month_usage_total",
    "invalidate_subscription",
    "check_global_usage_rate",
    "get_actors_usage",
    "flush",
    "close",
]


def test_the_wrapper_exposes_every_public_method(service: MeteringService) -> None:
    wrapper = MeteringServiceWrapper(service)
    assert wrapper.metering_service is service
    public = {name for name in dir(service) if not name.startswith("_") and callable(getattr(service, name))}
    assert set(PUBLIC_METHODS) <= public
    for name in sorted(public | set(PUBLIC_METHODS)):
        assert callable(getattr(wrapper, name)), name


def test_the_wrapper_calls_reach_the_service(service: MeteringService) -> None:
    wrapper = MeteringServiceWrapper(service)
    actor = Actor("u")
    assert wrapper.increment_usage(actor, "kv:write", 1) == 125
    assert wrapper.batch_increment_usages(actor, [("kv:read", 1)]) == 188
    assert wrapper.try_increment_usage(actor, "kv:read", 1) == 251
    assert wrapper.get_actor_current_month_usage_details(
        actor
    ) == service.get_actor_current_month_usage_details(actor)
    assert usage_of(service, actor)["total"] == 251
    assert wrapper.get_remaining_usage(actor) == service.get_remaining_usage(actor)
    assert wrapper.get_actor_subscription(actor) == TEMP_FREE
    assert wrapper.update_addon_credit("u", 5) == 5
    assert service.get_actor_addons(actor)["purchased_credits"] == 5
    assert wrapper.get_global_usage() == service.get_global_usage()


# ---------------------------------------------------------------------------------------------
# Months


def test_month_rollover(service: MeteringService, clock: FakeClock) -> None:
    actor = Actor("u", "app-a")
    service.increment_usage(actor, "kv:write", 2)
    clock.now = NOVEMBER_1 - 0.001  # 2026-10-31T23:59:59.999Z is still October
    assert service.increment_usage(actor, "kv:read", 1) == 313
    october = service.get_actor_current_month_usage_details(actor)
    assert usage_of(service, actor)["total"] == 313

    clock.now = NOVEMBER_1
    assert service.get_actor_current_month_usage_details(actor) == {
        "usage": {"total": 0},
        "app_totals": {"app-a": {"total": 0, "count": 0}, "others": {"total": 0, "count": 0}},
    }
    assert service.get_global_usage() == {"total": 0}
    assert not service.has_usage_this_month(actor)
    assert service.has_any_usage(actor)  # a new month, a new allowance
    assert service.get_actor_app_usage(actor, "app-a") == {"total": 0, "count": 0}
    assert budget_of(service, actor)["allowance_used"] == 0
    assert service.get_remaining_usage(actor) == TEMP_FREE.monthly_allowance
    assert service.get_actor_month_usage_details(actor, "2026-10") == october

    assert service.increment_usage(actor, "kv:read", 1) == 63
    assert usage_of(service, actor) == {"total": 63, "kv:read": {"units": 1, "cost": 63, "count": 1}}
    assert service.get_actor_month_usage_details(
        actor, "2026-11"
    ) == service.get_actor_current_month_usage_details(actor)
    assert service.get_actor_month_usage_details(actor, "2026-10") == october
    assert service.get_actor_month_usage_details(actor, "2026-09") == {
        "usage": {"total": 0},
        "app_totals": {"app-a": {"total": 0, "count": 0}, "others": {"total": 0, "count": 0}},
    }
    assert global_usage(service)["total"] == 63


def test_month_labels_are_utc(small_map: CostMap) -> None:
    clock = FakeClock(NOVEMBER_1 - 1)  # 23:59:59 UTC on Oct 31, already November east of UTC
    service = MeteringService(small_map, clock=clock)
    service.increment_usage(Actor("u"), "kv:write", 1)
    october: Any = service.get_actor_month_usage_details(Actor("u"), "2026-10")
    assert october["usage"] == {"total": 125, "kv:write": {"units": 1, "cost": 125, "count": 1}}
    clock.now = NOVEMBER_1
    assert usage_of(service, Actor("u")) == {"total": 0}


def test_a_bad_month_label_is_refused(service: MeteringService) -> None:
    # Not named by the spec; a malformed "YYYY-MM" is a ValueError like any other bad argument.
    for label in ("2026-13", "2026/10", "October"):
        with pytest.raises(ValueError):
            service.get_actor_month_usage_details(Actor("u"), label)


def test_purchased_credit_outlives_the_month(small_map: CostMap, clock: FakeClock) -> None:
    service = MeteringService(small_map, policies=(Policy("temp_free", 100),), clock=clock)
    actor = Actor("u")
    service.update_addon_credit("u", 200)
    service.increment_usage(actor, "kv:write", 2)  # 250 = 100 allowance + 150 purchased
    assert service.get_remaining_usage(actor) == 50
    clock.now = NOVEMBER_1 + 3600
    assert service.get_remaining_usage(actor) == 100 + 50
    assert service.get_actor_addons(actor) == {"purchased_credits": 200, "consumed_purchase_credits": 150}


# ---------------------------------------------------------------------------------------------
# Plans and the subscription cache


def test_default_plan_depends_on_the_email(service: MeteringService) -> None:
    assert service.get_actor_subscription(Actor("anon")) == TEMP_FREE
    assert service.get_actor_subscription(Actor("known", email="known@example.com")) == USER_FREE
    assert service.get_remaining_usage(Actor("anon")) == 25_000_000
    assert (
        service.get_allowed_usage(Actor("known", email="known@example.com"))["monthly_allowance"]
        == 50_000_000
    )


def test_listeners_can_override_the_default(service: MeteringService) -> None:
    seen: list[Actor] = []

    def override(event: OverrideDefaultSubscriptionEvent) -> None:
        seen.append(event.actor)
        assert event.default_subscription_id == "temp_free"
        event.default_subscription_id = "user_free"

    service.events.on(OVERRIDE_DEFAULT_SUBSCRIPTION, override)
    assert service.get_actor_subscription(Actor("anon", "app")) == USER_FREE
    assert seen == [Actor("anon", "app")]


def test_service_policies_take_precedence_over_builtins(small_map: CostMap, clock: FakeClock) -> None:
    service = MeteringService(small_map, policies=(Policy("temp_free", 7), Policy("gold", 9)), clock=clock)
    assert service.get_actor_subscription(Actor("anon")) == Policy("temp_free", 7)
    subscribe_everyone(service, "gold")
    assert service.get_actor_subscription(Actor("other")) == Policy("gold", 9)


def test_registered_policies_take_precedence_over_builtins(service: MeteringService) -> None:
    add_policy(service, Policy("user_free", 3))
    assert service.get_actor_subscription(Actor("u", email="u@example.com")) == Policy("user_free", 3)


def test_the_events_carry_the_actor(service: MeteringService) -> None:
    actors: list[Actor] = []

    def register(event: RegisterAvailablePoliciesEvent) -> None:
        actors.append(event.actor)
        assert isinstance(event.available_policies, list)

    def subscription(event: GetUserSubscriptionEvent) -> None:
        actors.append(event.actor)
        assert event.user_subscription_id is None

    service.events.on(REGISTER_AVAILABLE_POLICIES, register)
    service.events.on(GET_USER_SUBSCRIPTION, subscription)
    actor = Actor("u", "app-a", email="u@example.com")
    service.get_actor_subscription(actor)
    assert actors == [actor, actor]


def test_a_listener_can_be_removed(service: MeteringService) -> None:
    def subscribe(event: GetUserSubscriptionEvent) -> None:
        event.user_subscription_id = "tiny"

    add_policy(service, Policy("tiny", 10))
    service.events.on(GET_USER_SUBSCRIPTION, subscribe)
    assert service.get_actor_subscription(Actor("a")) == Policy("tiny", 10)
    service.events.off(GET_USER_SUBSCRIPTION, subscribe)
    assert service.get_actor_subscription(Actor("b")) == TEMP_FREE


def test_the_subscription_is_cached_for_the_ttl(small_map: CostMap, clock: FakeClock) -> None:
    service = MeteringService(small_map, subscription_ttl=60.0, clock=clock)
    runs = {OVERRIDE_DEFAULT_SUBSCRIPTION: 0, REGISTER_AVAILABLE_POLICIES: 0, GET_USER_SUBSCRIPTION: 0}
    plan = {"id": "tiny"}

    def override(event: OverrideDefaultSubscriptionEvent) -> None:
        runs[OVERRIDE_DEFAULT_SUBSCRIPTION] += 1

    def register(event: RegisterAvailablePoliciesEvent) -> None:
        runs[REGISTER_AVAILABLE_POLICIES] += 1
        event.available_policies.extend([Policy("tiny", 10), Policy("big", 1_000)])

    def subscription(event: GetUserSubscriptionEvent) -> None:
        runs[GET_USER_SUBSCRIPTION] += 1
        event.user_subscription_id = plan["id"]

    service.events.on(OVERRIDE_DEFAULT_SUBSCRIPTION, override)
    service.events.on(REGISTER_AVAILABLE_POLICIES, register)
    service.events.on(GET_USER_SUBSCRIPTION, subscription)

    def ran(times: int) -> bool:
        return all(count == times for count in runs.values())

    actor = Actor("u")
    service.increment_usage(actor, "kv:read", 1)
    assert ran(1)
    assert service.get_actor_subscription(actor) == Policy("tiny", 10)
    service.try_increment_usage(actor, "kv:read", 0)
    service.has_enough_credits(actor, 1)
    service.has_enough_credits_for(actor, "kv:read", 1)
    service.get_remaining_usage(actor)
    service.get_allowed_usage(actor)
    service.increment_usage(Actor("u", "some-app"), "kv:read", 1)  # cached per user, not per app
    assert ran(1)

    plan["id"] = "big"
    clock.advance(59)
    assert service.get_actor_subscription(actor) == Policy("tiny", 10)
    assert service.get_remaining_usage(actor) == 0
    assert ran(1)

    clock.advance(2)  # 61 s after the first resolution
    assert service.get_actor_subscription(actor) == Policy("big", 1_000)
    # The pools keep what each charge took: 10 µ¢ of allowance (the rest was overage under
    # "tiny"), so the new allowance leaves 990 (remaining = max(0, allowance - allowance_used) + ...).
    assert service.get_remaining_usage(actor) == 1_000 - 10
    assert ran(2)
    service.get_actor_subscription(actor)
    assert ran(2)

    plan["id"] = "tiny"
    service.invalidate_subscription("u")
    assert service.get_actor_subscription(actor) == Policy("tiny", 10)
    assert ran(3)

    service.get_actor_subscription(Actor("v"))
    assert ran(4)
    service.invalidate_subscription("never-seen")  # dropping nothing is fine
    service.get_actor_subscription(actor)
    assert ran(4)


def test_an_unknown_plan_falls_back_to_user_free_with_an_alarm(service: MeteringService) -> None:
    alarms = collect_alarms(service)

    def override(event: OverrideDefaultSubscriptionEvent) -> None:
        event.default_subscription_id = "missing-default"

    service.events.on(OVERRIDE_DEFAULT_SUBSCRIPTION, override)
    subscribe_everyone(service, "platinum")
    actor = Actor("u", "app-a")
    service.increment_usage(actor, "kv:read", 0)  # a user with an account: the plan is cached
    assert service.get_actor_subscription(actor) == USER_FREE
    assert service.get_remaining_usage(actor) == USER_FREE.monthly_allowance
    unknown = [alarm for alarm in alarms if alarm.kind == "unknown_plan"]
    assert len(unknown) == 1
    assert unknown[0].actor == actor
    assert isinstance(unknown[0].message, str) and unknown[0].message
    assert isinstance(unknown[0], AlarmEvent)


def test_an_unknown_user_plan_falls_back_to_the_default_with_an_alarm_naming_it(
    service: MeteringService, caplog: pytest.LogCaptureFixture
) -> None:
    # "the policy with the user's id, else the default's", never silently (issue 18: a typo in
    # a listener gave the default plan with no alarm and no log line).
    alarms = collect_alarms(service)
    assert service.get_actor_subscription(Actor("w")) == TEMP_FREE  # no plan named: no alarm
    assert alarms == []
    subscribe_everyone(service, "pro_typo")
    assert service.get_actor_subscription(Actor("u")) == TEMP_FREE
    assert service.get_actor_subscription(Actor("v", email="v@example.com")) == USER_FREE
    unknown = [alarm for alarm in alarms if alarm.kind == "unknown_plan"]
    assert [alarm.actor for alarm in unknown] == [Actor("u"), Actor("v", email="v@example.com")]
    assert all("'pro_typo'" in alarm.message for alarm in unknown)
    assert "using the default temp_free" in unknown[0].message
    assert "pro_typo" in caplog.text


# ---------------------------------------------------------------------------------------------
# Unmapped usage


def test_unmapped_usage_is_an_error_by_default(service: MeteringService) -> None:
    actor = Actor("u")
    with pytest.raises(UnknownUsageType, match="mystery:type") as caught:
        service.increment_usage(actor, "mystery:type", 5)
    assert isinstance(caught.value, KeyError)
    with pytest.raises(UnknownUsageType):
        service.batch_increment_usages(actor, [("kv:write", 1), ("mystery:type", 1)])
    with pytest.raises(KeyError):
        service.try_increment_usage(actor, "mystery:type", 1)
    assert service.get_actor_current_month_usage_details(actor) == EMPTY_DETAILS
    assert service.get_global_usage() == {"total": 0}


def test_unmapped_usage_can_be_free_with_an_alarm(small_map: CostMap, clock: FakeClock) -> None:
    service = MeteringService(small_map, unmapped="free", clock=clock)
    alarms = collect_alarms(service)
    actor = Actor("u", "app-a")
    service.increment_usage(actor, "kv:write", 1)
    assert service.increment_usage(actor, "mystery:type", 5) == 125
    assert service.increment_usage(actor, "mystery:type", 2) == 125
    assert usage_of(service, actor)["mystery:type"] == {"units": 7, "cost": 0, "count": 2}
    unmapped = [alarm for alarm in alarms if alarm.kind == "unmapped_usage"]
    assert len(unmapped) == 2
    assert all(alarm.usage_type == "mystery:type" and alarm.actor == actor for alarm in unmapped)
    assert all(isinstance(alarm.message, str) and alarm.message for alarm in unmapped)
    # Priced usage raises no such alarm.
    service.increment_usage(actor, "kv:read", 1)
    assert len([alarm for alarm in alarms if alarm.kind == "unmapped_usage"]) == 2


# ---------------------------------------------------------------------------------------------
# Overuse alarms


def test_overuse_alarms_at_doubling_multiples_from_over_the_allowance(
    small_map: CostMap, clock: FakeClock
) -> None:
    service = MeteringService(small_map, policies=(Policy("temp_free", 100),), clock=clock)
    alarms = collect_alarms(service)
    actor = Actor("heavy")

    def overuse() -> list[str]:
        return [alarm.message for alarm in alarms if alarm.kind == "overuse"]

    service.increment_usage(actor, "kv:read", 1, cost_override=150)  # 1.5x
    assert overuse() == []
    service.increment_usage(actor, "kv:read", 1, cost_override=49)  # 1.99x
    assert overuse() == []
    service.increment_usage(actor, "kv:read", 1, cost_override=1)  # 2x
    assert len(overuse()) == 1
    assert "2x" in overuse()[0]
    for _ in range(199):  # 2x -> 3.99x, one call a µ¢: no alarm at 3x any more
        service.increment_usage(actor, "kv:read", 1, cost_override=1)
    assert len(overuse()) == 1
    service.increment_usage(actor, "kv:read", 1, cost_override=1)  # 4x
    assert len(overuse()) == 2 and "4x" in overuse()[1]
    service.increment_usage(actor, "kv:read", 1, cost_override=2_000)  # 24x: crosses 8x and 16x
    assert len(overuse()) == 3 and "16x" in overuse()[2]


def test_a_single_jump_from_under_the_allowance_pages_nobody(small_map: CostMap, clock: FakeClock) -> None:
    service = MeteringService(small_map, policies=(Policy("temp_free", 100),), clock=clock)
    alarms = collect_alarms(service)
    actor = Actor("burst")
    service.increment_usage(actor, "kv:read", 1, cost_override=10_000)  # 0 -> 100x in one call
    assert [alarm for alarm in alarms if alarm.kind == "overuse"] == []
    service.increment_usage(actor, "kv:read", 1, cost_override=10_000)  # 100x -> 200x: crosses 128x
    assert len([alarm for alarm in alarms if alarm.kind == "overuse"]) == 1


def test_overuse_alarms_are_logarithmic_per_actor_and_month(small_map: CostMap, clock: FakeClock) -> None:
    service = MeteringService(small_map, policies=(Policy("temp_free", 100),), clock=clock)
    alarms = collect_alarms(service)
    actor = Actor("abuser")
    for _ in range(20_000):  # up to 20,000x the allowance, 100 µ¢ a call
        service.increment_usage(actor, "kv:read", 1, cost_override=100)
    # 2x, 4x, ... 16384x: 14 alarms for 20,000 calls (the old rule raised one at every multiple).
    assert len([alarm for alarm in alarms if alarm.kind == "overuse"]) == 14


def test_overuse_is_counted_net_of_purchased_credit(small_map: CostMap, clock: FakeClock) -> None:
    service = MeteringService(small_map, policies=(Policy("temp_free", 100),), clock=clock)
    alarms = collect_alarms(service)
    actor = Actor("buyer")
    service.update_addon_credit("buyer", 1_000)
    service.increment_usage(actor, "kv:read", 1, cost_override=350)  # 3.5x, 750 credit left
    assert [alarm for alarm in alarms if alarm.kind == "overuse"] == []
    # Credit runs out: the total is 11.5x, but net of the 1,000 of credit it is 1.5x.
    service.increment_usage(actor, "kv:read", 1, cost_override=800)
    assert [alarm for alarm in alarms if alarm.kind == "overuse"] == []
    service.increment_usage(actor, "kv:read", 1, cost_override=50)  # net 2x
    assert len([alarm for alarm in alarms if alarm.kind == "overuse"]) == 1


# ---------------------------------------------------------------------------------------------
# Listeners that fail


def test_a_listener_that_raises_is_logged_and_metering_goes_on(
    service: MeteringService, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: GetUserSubscriptionEvent) -> None:
        raise RuntimeError("boom in a listener")

    def working(event: GetUserSubscriptionEvent) -> None:
        event.user_subscription_id = "tiny"

    add_policy(service, Policy("tiny", 10))
    service.events.on(GET_USER_SUBSCRIPTION, broken)
    service.events.on(GET_USER_SUBSCRIPTION, working)
    actor = Actor("u")
    with caplog.at_level(logging.DEBUG):
        assert service.increment_usage(actor, "kv:write", 1) == 125
    # The other listener still ran (natural reading: one failing listener is skipped, not all).
    assert service.get_actor_subscription(actor) == Policy("tiny", 10)
    records = [record for record in caplog.records if record.name.split(".")[0] == "usagemeter"]
    assert records, "the failing listener was not logged on the usagemeter logger"
    assert "boom in a listener" in caplog.text
    assert usage_of(service, actor) == {"total": 125, "kv:write": {"units": 1, "cost": 125, "count": 1}}


def test_an_alarm_listener_that_raises_does_not_break_the_call(
    small_map: CostMap, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    service = MeteringService(small_map, unmapped="free", clock=clock)

    def broken(event: AlarmEvent) -> None:
        raise ValueError("alarm listener failed")

    service.events.on(ALARM, broken)
    alarms = collect_alarms(service)
    actor = Actor("u")
    with caplog.at_level(logging.DEBUG):
        assert service.increment_usage(actor, "mystery:type", 1) == 0
        assert service.increment_usage(actor, "kv:write", 1) == 125
    assert "alarm listener failed" in caplog.text
    assert [alarm.kind for alarm in alarms] == ["unmapped_usage"]
    assert usage_of(service, actor)["mystery:type"] == {"units": 1, "cost": 0, "count": 1}


def test_a_zero_ttl_resolves_the_plan_on_every_call(small_map: CostMap, clock: FakeClock) -> None:
    # Not named by the spec: "cached for subscription_ttl seconds" with 0 s means never cached.
    service = MeteringService(small_map, subscription_ttl=0, clock=clock)
    runs: list[Actor] = []

    def count(event: GetUserSubscriptionEvent) -> None:
        runs.append(event.actor)

    service.events.on(GET_USER_SUBSCRIPTION, count)
    for _ in range(3):
        service.get_actor_subscription(Actor("u"))
    assert len(runs) == 3


def test_set_total_makes_a_fractional_total_exact(service: MeteringService) -> None:
    actor = Actor("u")
    assert service.increment_usage(actor, FRACTION, 1) == 31  # exactly 31.25
    assert service.set_actor_current_month_usage_total(actor, 100) == 100
    usage = usage_of(service, actor)
    assert usage["manual_adjustment"]["cost"] == 69  # exactly 68.75
    assert usage["total"] == 100
    assert service.set_actor_current_month_usage_total(actor, 0) == 0
    usage = usage_of(service, actor)
    assert usage["total"] == 0
    assert usage["manual_adjustment"]["cost"] == -31  # exactly -31.25
    assert service.get_global_usage()["total"] == 0


def test_the_system_actor_sets_no_totals(service: MeteringService) -> None:
    # "its calls record nothing and return 0" (natural reading for the manual total as well)
    assert service.set_actor_current_month_usage_total(Actor.system(), 500) == 0
    assert service.get_global_usage() == {"total": 0}


def test_reserved_and_empty_app_ids_are_refused() -> None:
    # The report key "others" would be ambiguous as an app id; an empty app id is no app id.
    with pytest.raises(ValueError):
        Actor("u", "others")
    with pytest.raises(ValueError):
        Actor("u", "")


def test_a_user_never_charged_is_checked_without_running_the_events_each_time(clock: FakeClock) -> None:
    """A credit gate checks every request's user, new ones too: their plan is cached (bounded)."""
    service = MeteringService(CostMap.from_dict({"kv:write": 5}), clock=clock, subscription_ttl=60)
    looked_up: list[str] = []
    service.events.on(GET_USER_SUBSCRIPTION, lambda event: looked_up.append(event.actor.user_id))
    visitor = Actor("visitor")
    for _ in range(10):
        assert service.has_any_usage(visitor)
        assert service.get_remaining_usage(visitor) == TEMP_FREE.monthly_allowance
    assert looked_up == ["visitor"]
    assert service._account_count() == 0  # a read still creates no account
    assert service._plan_cache_sizes() == (1, 1)
    # Charged now: the plan moves into the account (and the store's last plan), with no new look-up.
    service.increment_usage(visitor, "kv:write", 2)
    assert looked_up == ["visitor"]
    assert service._last_plan("visitor") == (TEMP_FREE.id, TEMP_FREE.monthly_allowance)
    # Expired, or invalidated: looked up again.
    clock.advance(61)
    service.has_any_usage(visitor)
    service.invalidate_subscription("visitor")
    service.has_enough_credits(visitor, 1)
    assert looked_up == ["visitor"] * 3


def test_the_cached_plans_of_users_never_charged_stay_bounded() -> None:
    service = MeteringService(CostMap.from_dict({"kv:write": 5}))
    bound = 65_536
    for i in range(bound + 10):
        service.has_any_usage(Actor(f"random-{i}"))
    total, guests = service._plan_cache_sizes()
    assert guests == total <= bound
    assert guests >= 10  # emptied once at the bound, then refilled
    assert service._account_count() == 0


@pytest.mark.parametrize("backend", [None, "sled", "redb"])
def test_refused_strict_calls_of_users_never_charged_create_no_account(
    backend: str | None, tmp_path: Path
) -> None:
    """Issue 18, point 10: each refused ``try_*`` or ``reserve`` of a new user id made a
    permanent account (~900 B): a million random ids reached 923 MB."""
    store: dict[str, Any] = {} if backend is None else {"store": tmp_path / "store", "store_backend": backend}
    prices = CostMap.from_dict({"kv:write": 5, "m:prompt_tokens": 1, "m:completion_tokens": 1})
    with MeteringService(prices, clock=FakeClock(), **store) as service:
        service.increment_usage(Actor("regular"), "kv:write", 1)
        before = service._account_count()
        too_much = TEMP_FREE.monthly_allowance + 1
        for i in range(3_000):
            stranger = Actor(f"stranger-{i}")
            assert service.try_increment_usage(stranger, "kv:write", 1, cost_override=too_much) is None
            assert service.try_batch_increment_usages(stranger, [("kv:write", 1, too_much)]) is None
            payload = {"prompt_tokens": too_much, "completion_tokens": 1}
            assert service.try_record_usage_object(payload, stranger, model_prefix="m") is None
            assert service.reserve(stranger, cost=too_much) is None
            assert (
                service.try_increment_usage(
                    stranger, "kv:write", 1, cost_override=too_much, idempotency_key=f"k{i}"
                )
                is None
            )
        assert service._account_count() == before
        _, guests = service._plan_cache_sizes()
        assert guests <= 65_536  # their plans are cached as guests', in the bounded cache
        # A later accepted call of one of them records, and makes its account then.
        stranger = Actor("stranger-7")
        assert service.try_increment_usage(stranger, "kv:write", 2) == 10
        hold = service.reserve(Actor("stranger-8"), cost=100)
        assert hold is not None
        assert service._account_count() == before + 2
        assert service.get_actor_current_month_usage_details(stranger)["usage"]["total"] == 10


def test_a_users_plan_does_not_depend_on_which_form_of_actor_comes_first(
    small_map: CostMap, clock: FakeClock
) -> None:
    """Issue 18: ``Actor("bob")`` and ``Actor("bob", email=...)`` share one cached plan, and the
    allowance flipped between temp_free and user_free each ``subscription_ttl``. An email once
    seen at a look-up counts until ``invalidate_subscription``."""
    service = MeteringService(small_map, clock=clock, subscription_ttl=10)
    anonymous, known = Actor("bob"), Actor("bob", email="bob@example.com")
    service.increment_usage(anonymous, "kv:read", 1)  # bob has an account
    assert service.get_allowed_usage(anonymous)["monthly_allowance"] == TEMP_FREE.monthly_allowance
    clock.advance(11)
    assert service.get_allowed_usage(known)["monthly_allowance"] == USER_FREE.monthly_allowance
    for round_ in range(6):  # whichever form looks the plan up next
        clock.advance(11)
        actor = anonymous if round_ % 2 == 0 else known
        assert service.get_allowed_usage(actor)["monthly_allowance"] == USER_FREE.monthly_allowance
        assert service.try_increment_usage(anonymous, "kv:read", 1) is not None
        assert service.get_actor_subscription(anonymous) == USER_FREE
    # A user never charged (its plan cached as a guest's) follows the same rule.
    assert service.get_actor_subscription(Actor("eve", email="eve@example.com")) == USER_FREE
    clock.advance(11)
    assert service.get_actor_subscription(Actor("eve")) == USER_FREE
    # Invalidated: the email is forgotten with the plan.
    service.invalidate_subscription("bob")
    assert service.get_allowed_usage(anonymous)["monthly_allowance"] == TEMP_FREE.monthly_allowance


@pytest.mark.parametrize("backend", ["sled", "redb"])
def test_an_email_seen_for_a_user_outlives_a_restart(
    backend: Literal["sled", "redb"], tmp_path: Path, small_map: CostMap
) -> None:
    """The rule above holds across a restart on a store: the account keeps the email flag."""
    clock = FakeClock()
    path = tmp_path / "store"
    with MeteringService(small_map, clock=clock, store=path, store_backend=backend) as service:
        service.increment_usage(Actor("bob", email="bob@example.com"), "kv:read", 1)
        service.increment_usage(Actor("ann"), "kv:read", 1)
    with MeteringService(small_map, clock=clock, store=path, store_backend=backend) as service:
        assert service.get_actor_subscription(Actor("bob")) == USER_FREE
        assert service.get_actor_subscription(Actor("ann")) == TEMP_FREE
        assert service.holds(Actor("bob")) == []
        service.invalidate_subscription("bob")
    with MeteringService(small_map, clock=clock, store=path, store_backend=backend) as service:
        assert service.get_actor_subscription(Actor("bob")) == TEMP_FREE  # invalidated: forgotten
