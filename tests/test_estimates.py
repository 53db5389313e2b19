"""Cost estimates: `cost_of`, `cost_of_usages`, `has_enough_credits_for_usages` and
`affordable_units` agree with what a charge books, exactly, and record nothing."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from usagemeter import Actor, CostMap, MeteringService, Policy, UnknownUsageType

PRICES = {"llm:input": "0.15", "llm:output": "0.6", "image": 4_000, "free": 0}
ALLOWANCE = 1_000


def new_service(allowance: int = ALLOWANCE, **options: object) -> MeteringService:
    return MeteringService(
        CostMap.from_dict(PRICES),  # type: ignore[arg-type]
        policies=[Policy("temp_free", allowance)],
        **options,  # type: ignore[arg-type]
    )


def half_up(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def test_cost_of_is_the_cost_a_charge_books() -> None:
    service = new_service()
    assert service.cost_of("llm:input", 3) == half_up(Decimal("0.45")) == 0
    assert service.cost_of("llm:input", 10) == 2  # 1.5 rounds half up
    assert service.cost_of("llm:output", 1_001) == half_up(Decimal("600.6")) == 601
    assert service.cost_of("image", 2, cost_override=123) == 123
    assert service.cost_of("not:priced", 5, cost_override=7) == 7
    actor = Actor("ann")
    assert service.increment_usage(actor, "llm:output", 1_001) == service.cost_of("llm:output", 1_001)


def test_cost_of_usages_sums_exactly_then_rounds_once() -> None:
    service = new_service()
    items: list[tuple[str, int] | tuple[str, int, int | None]] = [
        ("llm:input", 3),
        ("llm:input", 3),
        ("llm:input", 4),
    ]
    # 0.45 + 0.45 + 0.6 = 1.5 -> 2, where the rounded parts would add up to 0 + 0 + 1.
    assert service.cost_of_usages(items) == 2
    assert service.cost_of_usages([("image", 1), ("free", 10**6), ("llm:output", 5, None)]) == 4_003
    assert service.cost_of_usages([]) == 0
    assert service.batch_increment_usages(Actor("bo"), items) == 2


def test_has_enough_credits_for_usages_decides_the_items_together() -> None:
    service = new_service()
    actor = Actor("cy")
    prompt_and_output: list[tuple[str, int] | tuple[str, int, int | None]] = [
        ("llm:input", 2_000),
        ("llm:output", 1_166),
    ]
    assert service.cost_of_usages(prompt_and_output) == 1_000  # 300 + 699.6 -> exactly 999.6
    assert service.has_enough_credits_for_usages(actor, prompt_and_output)
    assert not service.has_enough_credits_for_usages(actor, [("llm:input", 2_000), ("llm:output", 1_167)])
    # Each part alone is affordable: only the sum says no.
    assert service.has_enough_credits_for(actor, "llm:output", 1_167)
    assert service.has_enough_credits_for_usages(Actor.system(), [("image", 10**9)])
    assert service.cost_of("image", 2**64 - 1) == 4_000 * (2**64 - 1)  # exact, whatever its size
    assert not service.has_enough_credits_for_usages(actor, [("image", 2**64 - 1)])
    assert not service.has_enough_credits_for_usages(actor, [("image", 2**64 - 1)] * 3_000)  # beyond i128


def test_affordable_units_caps_max_tokens_after_the_prompt() -> None:
    service = new_service()
    actor = Actor("di")
    service.increment_usage(actor, "image", 0)
    assert service.affordable_units(actor, "llm:output") == 1_666  # 1,000 / 0.6
    assert service.affordable_units(actor, "llm:output", [("llm:input", 2_000)]) == 1_166  # 700 / 0.6
    assert service.affordable_units(actor, "llm:output", [("image", 1)]) == 0
    assert service.affordable_units(actor, "free") == 2**64 - 1
    assert service.affordable_units(Actor.system(), "llm:output") == 2**64 - 1
    assert service.affordable_units(actor, "llm:output", [("image", 2**64 - 1)]) == 0


@given(
    spent=st.integers(0, 2_000),
    credit=st.integers(0, 500),
    reserved_input=st.integers(0, 10_000),
    usage_type=st.sampled_from(["llm:input", "llm:output", "image"]),
)
def test_affordable_units_is_the_largest_affordable_amount(
    spent: int, credit: int, reserved_input: int, usage_type: str
) -> None:
    service = new_service()
    actor = Actor("eve")
    service.increment_usage(actor, "llm:output", spent)
    if credit:
        service.update_addon_credit("eve", credit)
    reserved: list[tuple[str, int] | tuple[str, int, int | None]] = [("llm:input", reserved_input)]
    units = service.affordable_units(actor, usage_type, reserved)
    if units > 0:
        assert service.has_enough_credits_for_usages(actor, [*reserved, (usage_type, units)])
    assert not service.has_enough_credits_for_usages(actor, [*reserved, (usage_type, units + 1)])


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.cost_of("llm:input", -1), ValueError),
        (lambda s: s.cost_of("llm:input", 1.0), TypeError),
        (lambda s: s.cost_of("llm:input", True), TypeError),
        (lambda s: s.cost_of("", 1), ValueError),
        (lambda s: s.cost_of("unknown", 1), UnknownUsageType),
        (lambda s: s.cost_of("llm:input", 1, cost_override=-5), ValueError),
        (lambda s: s.cost_of_usages([("image", 2**64 - 1)] * 3_000), OverflowError),
        (lambda s: s.cost_of_usages([("llm:input",)]), ValueError),
        (lambda s: s.cost_of_usages(["llm:input"]), TypeError),
        (lambda s: s.cost_of_usages(5), TypeError),
        (lambda s: s.has_enough_credits_for_usages(Actor("x"), [("unknown", 1)]), UnknownUsageType),
        (lambda s: s.has_enough_credits_for_usages("x", [("image", 1)]), TypeError),
        (lambda s: s.affordable_units(Actor("x"), "unknown"), UnknownUsageType),
        (lambda s: s.affordable_units(Actor("x"), "image", [("image", -1)]), ValueError),
    ],
)
def test_bad_input_is_refused_and_records_nothing(call: object, error: type[Exception]) -> None:
    service = new_service()
    with pytest.raises(error):
        call(service)  # type: ignore[operator]
    assert service._account_count() == 0


def test_refusals_are_counted_for_metrics() -> None:
    service = new_service(allowance=100)
    actor = Actor("fred")
    assert service._stats() == {"refusals": 0}
    assert service.try_increment_usage(actor, "image", 1) is None
    assert service.try_increment_usage(actor, "llm:output", 100) == 60
    assert service.try_increment_usage(actor, "llm:output", 100) is None
    assert service._stats() == {"refusals": 2}


def test_a_store_reports_its_lag_and_failures(tmp_path: Path) -> None:
    with new_service(store=tmp_path / "ledger", snapshot_interval=0.05) as service:
        service.increment_usage(Actor("gil"), "image", 1)
        service.flush()
        stats = service._stats()
        assert stats["store_failures"] == 0
        assert 0 <= stats["store_lag_ms"] < 60_000
        assert set(stats) == {"refusals", "store_failures", "store_lag_ms"}


def test_try_batch_records_all_items_only_if_the_budget_covers_them_together() -> None:
    service = new_service()
    actor = Actor("hu")
    input_and_output: list[tuple[str, int] | tuple[str, int, int | None]] = [
        ("llm:input", 2_000),
        ("llm:output", 1_167),
    ]
    assert service.try_batch_increment_usages(actor, input_and_output) is None  # 1,000.2 > 1,000
    assert service.has_usage_this_month(actor) is False
    assert service._stats()["refusals"] == 1
    assert service.try_batch_increment_usages(actor, [("llm:input", 2_000), ("llm:output", 1_166)]) == 1_000
    assert service.get_remaining_usage(actor) == 0
    assert service.try_batch_increment_usages(actor, [("free", 5)]) == 1_000  # costs nothing: accepted
    assert service.try_batch_increment_usages(Actor.system(), [("image", 10**6)]) == 0
    with pytest.raises(UnknownUsageType):
        service.try_batch_increment_usages(actor, [("free", 1), ("unknown", 1)])
    assert service.get_actor_current_month_usage_details(actor)["usage"]["total"] == 1_000
