"""Bad input raises the right exception, and a rejected call (or batch) changes nothing at all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import HUGE, MAX_PRICE, MAX_UNITS, PRICED_TYPES, PROMPT, new_service, snapshot, usage_of
from usagemeter import Actor, CostMap, MeteringService, UnknownUsageType
from usagemeter.types import UsageDetails

# (usage_type, amount, cost_override, exception): each item is wrong on its own.
BAD_ITEMS: list[tuple[Any, Any, Any, type[Exception]]] = [
    ("kv:write", -1, None, ValueError),
    ("kv:write", -(2**70), None, ValueError),
    ("kv:write", 1, -1, ValueError),
    ("kv:write", 0, -5, ValueError),
    ("kv:write", True, None, TypeError),
    ("kv:write", False, None, TypeError),
    ("kv:write", 1.0, None, TypeError),
    ("kv:write", 2.5, None, TypeError),
    ("kv:write", "3", None, TypeError),
    # Money is never a float: a float or bool override is refused like a float amount.
    ("kv:write", 1, 1.5, TypeError),
    ("kv:write", 1, True, TypeError),
    ("", 1, None, ValueError),
    ("total", 1, None, ValueError),
    (7, 1, None, TypeError),
    (None, 1, None, TypeError),
    (b"kv:write", 1, None, TypeError),
    ("kv:write", MAX_UNITS + 1, None, OverflowError),
    ("kv:write", 2**100, None, OverflowError),
    ("kv:write", 1, 2**128, OverflowError),
    ("no:such:type", 1, None, UnknownUsageType),
    (HUGE, 2, None, OverflowError),  # 2 x 10^18 µ¢ leaves an actor's range
    (HUGE, MAX_UNITS, None, OverflowError),
]
BAD_ITEM_IDS = [f"{item[0]!r}-{item[1]!r}-{item[2]!r}" for item in BAD_ITEMS]

ACTORS = [Actor("u"), Actor("u", "app-a"), Actor("v", "app-b"), Actor("w", email="w@example.com")]
APPS = ["app-a", "app-b", "os-global"]


@pytest.mark.parametrize(("usage_type", "amount", "override", "error"), BAD_ITEMS, ids=BAD_ITEM_IDS)
def test_a_bad_call_raises(
    service: MeteringService, usage_type: Any, amount: Any, override: Any, error: type[Exception]
) -> None:
    actor = Actor("u", "app-a")
    service.increment_usage(actor, "kv:read", 1)
    before = snapshot(service, [actor], APPS)
    with pytest.raises(error):
        service.increment_usage(actor, usage_type, amount, override)
    with pytest.raises(error):
        service.increment_usage(actor, usage_type, amount, cost_override=override)
    with pytest.raises(error):
        service.try_increment_usage(actor, usage_type, amount, override)
    with pytest.raises(error):
        service.batch_increment_usages(
            actor, [("kv:write", 1), (usage_type, amount, override), ("kv:read", 2)]
        )
    assert snapshot(service, [actor], APPS) == before


@pytest.mark.parametrize(
    ("amount", "error"),
    [(-1, ValueError), (True, TypeError), (1.5, TypeError), ("1", TypeError), (MAX_UNITS + 1, OverflowError)],
)
def test_a_bad_amount_in_a_usage_object_raises(
    service: MeteringService, amount: Any, error: type[Exception]
) -> None:
    actor = Actor("u")
    usage: dict[str, Any] = {"prompt": 10, "completion": amount}
    with pytest.raises(error):
        service.record_usage_object(usage, actor, "llm:org/model-1.5")
    assert usage_of(service, actor) == {"total": 0}


def test_a_bad_override_in_a_usage_object_raises(service: MeteringService) -> None:
    actor = Actor("u")
    with pytest.raises(ValueError):
        service.record_usage_object({"prompt": 1}, actor, "llm:org/model-1.5", cost_overrides={"prompt": -1})
    assert usage_of(service, actor) == {"total": 0}


def test_the_largest_amount_is_accepted(service: MeteringService) -> None:
    actor = Actor("u")
    # A free type: 2**64-1 units of a priced one would cost more than an actor's range (10^18 µ¢).
    assert service.increment_usage(actor, "free:thing", MAX_UNITS) == 0
    assert usage_of(service, actor)["free:thing"] == {"units": MAX_UNITS, "cost": 0, "count": 1}
    assert service.increment_usage(Actor("v"), "kv:read", 10**16) == 63 * 10**16


def test_units_overflowing_their_total_raise(service: MeteringService) -> None:
    actor = Actor("u")
    service.increment_usage(actor, "free:thing", MAX_UNITS)
    before = snapshot(service, [actor], APPS)
    with pytest.raises(OverflowError):
        service.increment_usage(actor, "free:thing", 1)
    with pytest.raises(OverflowError):
        service.increment_usage(actor, "free:thing", 1, cost_override=0)
    # A batch whose own items overflow when added up is refused as well.
    other = Actor("v")
    with pytest.raises(OverflowError):
        service.batch_increment_usages(other, [("free:thing", MAX_UNITS), ("free:thing", 1)])
    assert snapshot(service, [actor], APPS) == before
    assert usage_of(service, other) == {"total": 0}
    # Other usage types of the same actor are unaffected.
    assert service.increment_usage(actor, "kv:write", 1) == 125


def test_money_totals_overflowing_raise(small_map: CostMap) -> None:
    service = new_service(small_map)
    actor = Actor("rich")
    # Charge the largest price until a total would leave the ledger's range (10^18 µ¢).
    recorded = 0
    with pytest.raises(OverflowError):
        for _ in range(1_000):
            service.increment_usage(actor, HUGE, 1)
            recorded += 1
    assert recorded >= 1
    assert usage_of(service, actor)["total"] == recorded * MAX_PRICE
    before = snapshot(service, [actor], APPS)
    with pytest.raises(OverflowError):
        service.increment_usage(actor, HUGE, 1)
    with pytest.raises(OverflowError):
        service.increment_usage(actor, "kv:write", 1, cost_override=MAX_PRICE)
    with pytest.raises(OverflowError):
        service.set_actor_current_month_usage_total(actor, 2**200)
    assert snapshot(service, [actor], APPS) == before


def test_other_bad_arguments(service: MeteringService) -> None:
    actor = Actor("u")
    with pytest.raises(ValueError):
        service.set_actor_current_month_usage_total(actor, -1)
    with pytest.raises(TypeError):
        service.set_actor_current_month_usage_total(actor, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        service.update_addon_credit("u", -1)
    with pytest.raises(TypeError):
        service.update_addon_credit("u", 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        service.has_enough_credits_for(actor, "kv:read", -1)
    with pytest.raises(TypeError):
        service.has_enough_credits_for(actor, "kv:read", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        service.has_enough_credits_for(actor, "", 1)
    empty = UsageDetails(usage={"total": 0}, app_totals={})
    assert service.get_actor_current_month_usage_details(actor) == empty
    assert service.get_actor_addons(actor) == {"purchased_credits": 0, "consumed_purchase_credits": 0}


# ---------------------------------------------------------------------------------------------
# Property: any rejected call or batch leaves every record exactly as it was.

valid_items = st.tuples(
    st.sampled_from(PRICED_TYPES),
    st.integers(min_value=0, max_value=10**6),
    st.none() | st.integers(0, 10**9),
)


@st.composite
def prior_usage(draw: st.DrawFn) -> list[tuple[Actor, str, int, int | None]]:
    calls = draw(st.lists(st.tuples(st.sampled_from(ACTORS), valid_items), max_size=12))
    return [(actor, usage_type, amount, override) for actor, (usage_type, amount, override) in calls]


@st.composite
def rejected_operations(
    draw: st.DrawFn,
) -> tuple[str, Callable[[MeteringService, Actor], object], type[Exception]]:
    kind = draw(
        st.sampled_from(
            [
                "increment",
                "try",
                "batch",
                "usage_object",
                "set_total",
                "addon",
                "batch_overflow",
                "usage_object_kind",
            ]
        )
    )
    usage_type, amount, override, error = draw(st.sampled_from(BAD_ITEMS))
    if kind == "increment":
        return kind, lambda s, a: s.increment_usage(a, usage_type, amount, override), error
    if kind == "try":
        return kind, lambda s, a: s.try_increment_usage(a, usage_type, amount, cost_override=override), error
    if kind == "batch":
        before = draw(st.lists(valid_items, max_size=4))
        after = draw(st.lists(valid_items, max_size=4))
        items: list[Any] = [*before, (usage_type, amount, override), *after]
        return kind, lambda s, a: s.batch_increment_usages(a, items), error
    if kind == "usage_object":
        bad_amount, bad_error = draw(
            st.sampled_from(
                [(-1, ValueError), (True, TypeError), (0.5, TypeError), (MAX_UNITS + 1, OverflowError)]
            )
        )
        usage: dict[str, Any] = {"prompt": draw(st.integers(0, 1_000)), "completion": bad_amount}
        return kind, lambda s, a: s.record_usage_object(usage, a, "llm:org/model-1.5"), bad_error
    if kind == "usage_object_kind":
        unknown: dict[str, int] = {"prompt": 3, "not-a-kind": 1}
        return kind, lambda s, a: s.record_usage_object(unknown, a, "llm:org/model-1.5"), UnknownUsageType
    if kind == "set_total":
        total = draw(st.integers(max_value=-1))
        return kind, lambda s, a: s.set_actor_current_month_usage_total(a, total), ValueError
    if kind == "addon":
        credit = draw(st.integers(max_value=-1))
        return kind, lambda s, a: s.update_addon_credit(a.user_id, credit), ValueError
    # Two items that are fine alone but whose units overflow once added up.
    pair: list[tuple[str, int]] = [(PROMPT, MAX_UNITS), (PROMPT, draw(st.integers(1, MAX_UNITS)))]
    return kind, lambda s, a: s.batch_increment_usages(a, pair), OverflowError


@given(
    prior=prior_usage(),
    credits=st.lists(st.tuples(st.sampled_from(["u", "v", "w"]), st.integers(0, 10**8)), max_size=3),
    operation=rejected_operations(),
    target=st.sampled_from(ACTORS),
)
def test_a_rejected_call_changes_nothing(
    small_map: CostMap,
    prior: list[tuple[Actor, str, int, int | None]],
    credits: list[tuple[str, int]],
    operation: tuple[str, Callable[[MeteringService, Actor], object], type[Exception]],
    target: Actor,
) -> None:
    service = new_service(small_map)
    for user_id, amount in credits:
        service.update_addon_credit(user_id, amount)
    for actor, usage_type, amount, override in prior:
        service.increment_usage(actor, usage_type, amount, override)
    before = snapshot(service, ACTORS, APPS)
    _, call, error = operation
    with pytest.raises(error):
        call(service, target)
    assert snapshot(service, ACTORS, APPS) == before
