"""Price tables (issue 19.1): size tiers that price the whole request, service tiers, dated prices.

Every charge path prices through the table: a request is one batch or one usage object (its size
for a tier is the sum of the counted meters' units in it), the service tier is a keyword of the
batch path (or the payload's own ``service_tier``), and a dated price is the one in force at the
charge's time on the service's clock.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import FakeClock
from usagemeter import Actor, CostMap, CostMapError, MeteringService, UnknownUsageType
from usagemeter.aio import AsyncMeteringService
from usagemeter.cli import main
from usagemeter.providers import service_tier_of
from usagemeter.streaming import meter_stream

PRO = "gemini:gemini-2.5-pro"
PRO_PROMPT = f"{PRO}:promptTokenCount"
PRO_OUTPUT = f"{PRO}:candidatesTokenCount"
GPT = "openai:gpt-5.1"

# Gemini 2.5 Pro: above 200k prompt tokens the whole request costs 250 / 1,500 µ¢ a token.
GEMINI_TABLES: dict[str, Any] = {
    PRO_PROMPT: {"price": "125", "tiers": [{"above": 200_000, "count": [PRO_PROMPT], "price": "250"}]},
    PRO_OUTPUT: {"price": "1000", "tiers": [{"above": 200_000, "count": [PRO_PROMPT], "price": "1500"}]},
}
# OpenAI flex is half price, priority double.
OPENAI_TABLES: dict[str, Any] = {
    f"{GPT}:prompt_tokens": {"price": "125", "service_tiers": {"flex": "62.5", "priority": "250"}},
    f"{GPT}:cached_tokens": {"price": "12.5", "service_tiers": {"flex": "6.25", "priority": "25"}},
    f"{GPT}:completion_tokens": {"price": "1000", "service_tiers": {"flex": "500", "priority": "2000"}},
}


def tables(prices: dict[str, Any]) -> CostMap:
    return CostMap.from_json(json.dumps(prices), "tiers.json")


def service(prices: dict[str, Any], **options: Any) -> MeteringService:
    options.setdefault("clock", FakeClock())
    return MeteringService(tables(prices), **options)


# ---------------------------------------------------------------------------------------------
# The two worked examples of the README


def test_a_long_context_gemini_call_costs_the_tier_price_for_the_whole_request() -> None:
    metering = service(GEMINI_TABLES)
    actor = Actor("u")
    usage = {"promptTokenCount": 250_000, "candidatesTokenCount": 2_000}
    total = metering.record_usage_object(usage, actor, PRO)
    assert total == 250_000 * 250 + 2_000 * 1_500 == 65_500_000
    # At the threshold (not above it) the request is priced at the base prices.
    at_threshold = {"promptTokenCount": 200_000, "candidatesTokenCount": 2_000}
    assert metering.cost_of_usages([(PRO_PROMPT, 200_000), (PRO_OUTPUT, 2_000)]) == 27_000_000
    assert metering.record_usage_object(at_threshold, actor, PRO) == 65_500_000 + 27_000_000
    # The output tier counts the prompt: output alone is never long-context.
    assert metering.cost_of(PRO_OUTPUT, 300_000) == 300_000 * 1_000


def test_a_flex_openai_call_is_half_price_from_the_payloads_service_tier() -> None:
    metering = service(OPENAI_TABLES)
    actor = Actor("u")
    usage = {"prompt_tokens": 1000, "completion_tokens": 200, "service_tier": "flex"}
    assert metering.record_usage_object(usage, actor, GPT) == 1000 * 62.5 + 200 * 500 == 162_500
    # The keyword overrides the payload's own service tier.
    plain = {"prompt_tokens": 1000, "completion_tokens": 200}
    assert metering.record_usage_object(plain, Actor("v"), GPT, service_tier="priority") == 650_000
    assert metering.record_usage_object(usage, Actor("w"), GPT, service_tier="default") == 325_000
    assert metering.try_record_usage_object(usage, Actor("x"), GPT) == 162_500


def test_the_payload_service_tier_is_read_from_the_usage_or_the_response() -> None:
    assert service_tier_of({"prompt_tokens": 1}) is None
    assert service_tier_of({"input_tokens": 1, "service_tier": "priority"}) == "priority"
    assert service_tier_of({"service_tier": "flex", "usage": {"prompt_tokens": 1}}) == "flex"
    assert service_tier_of({"usage": {"service_tier": "batch"}}) == "batch"
    with pytest.raises(TypeError, match="service_tier"):
        service_tier_of({"service_tier": 3})


def test_an_anthropic_payload_reports_its_service_tier() -> None:
    prompt, output = "claude:claude-x:input_tokens", "claude:claude-x:output_tokens"
    metering = service(
        {
            prompt: {"price": "300", "service_tiers": {"priority": "600", "batch": "150"}},
            output: {"price": "1500", "service_tiers": {"priority": "3000", "batch": "750"}},
        }
    )
    usage = {"input_tokens": 100, "output_tokens": 10, "service_tier": "standard"}
    assert metering.record_usage_object(usage, Actor("u"), "claude:claude-x") == 45_000
    usage["service_tier"] = "batch"
    assert metering.record_usage_object(usage, Actor("v"), "claude:claude-x") == 22_500


# ---------------------------------------------------------------------------------------------
# Service tiers


def test_an_unknown_service_tier_is_an_error_naming_it_and_records_nothing() -> None:
    metering = service(OPENAI_TABLES)
    actor = Actor("u")
    usage = {"prompt_tokens": 1000, "completion_tokens": 200}
    with pytest.raises(ValueError, match=r'"flx".*flex, priority') as raised:
        metering.record_usage_object(usage, actor, GPT, service_tier="flx")
    assert "panicked" not in str(raised.value)
    with pytest.raises(ValueError, match='"scale"'):
        metering.cost_of_usages([(f"{GPT}:prompt_tokens", 1)], service_tier="scale")
    assert metering.get_actors_usage() == []


def test_a_type_without_service_tiers_ignores_the_name() -> None:
    metering = service({**GEMINI_TABLES, "plain:thing": 7})
    assert metering.cost_of_usages([(PRO_PROMPT, 10), ("plain:thing", 1)], service_tier="flex") == 1257
    assert metering.batch_increment_usages(Actor("u"), [("plain:thing", 2)], service_tier="anything") == 14


def test_the_batch_path_takes_the_service_tier_as_an_option() -> None:
    metering = service(OPENAI_TABLES)
    items = [(f"{GPT}:prompt_tokens", 1000), (f"{GPT}:completion_tokens", 200)]
    assert metering.cost_of_usages(items) == 325_000
    assert metering.cost_of_usages(items, service_tier="flex") == 162_500
    assert metering.cost_of(f"{GPT}:prompt_tokens", 1000, service_tier="priority") == 250_000
    assert metering.batch_increment_usages(Actor("u"), items, service_tier="flex") == 162_500
    assert metering.try_batch_increment_usages(Actor("v"), items, service_tier="priority") == 650_000
    keyed = metering.batch_increment_usages(Actor("w"), items, idempotency_key="k1", service_tier="flex")
    assert keyed == 162_500
    assert (
        metering.batch_increment_usages(Actor("w"), items, idempotency_key="k1", service_tier="flex")
        == 162_500
    )
    assert metering.has_enough_credits_for_usages(Actor("x"), items, service_tier="flex")


# ---------------------------------------------------------------------------------------------
# Every charge path prices through the table


def test_the_single_item_paths_price_a_tiered_type_as_a_request_of_its_own() -> None:
    prices = {"t:units": {"price": "10", "tiers": [{"above": 100, "price": "20"}]}}
    metering = service(prices)
    actor = Actor("u")
    assert metering.cost_of("t:units", 100) == 1_000
    assert metering.cost_of("t:units", 101) == 2_020
    assert metering.increment_usage(actor, "t:units", 101) == 2_020
    assert metering.try_increment_usage(actor, "t:units", 50) == 2_520
    assert metering.meter(actor, "t:units").add(200) == 6_520
    assert metering.has_enough_credits_for(actor, "t:units", 1)
    remaining = metering.get_remaining_usage(actor)
    assert metering.affordable_units(actor, "t:units") == remaining // 10
    # A cost override still wins.
    assert metering.increment_usage(actor, "t:units", 500, 1) == 6_521


def test_a_tiered_type_is_never_recorded_for_free_on_an_unmapped_free_service() -> None:
    metering = service({"t:units": {"price": "3", "service_tiers": {"flex": "1"}}}, unmapped="free")
    assert metering.increment_usage(Actor("u"), "t:units", 10) == 30
    with pytest.raises(UnknownUsageType):
        service({"t:units": {"price": "3", "service_tiers": {"flex": "1"}}}).increment_usage(
            Actor("u"), "t:x", 1
        )


def test_holds_reserve_and_settle_through_the_table() -> None:
    metering = service(OPENAI_TABLES)
    actor = Actor("u")
    items = [(f"{GPT}:prompt_tokens", 1000), (f"{GPT}:completion_tokens", 200)]
    hold = metering.reserve(actor, usages=items, service_tier="flex")
    assert hold is not None and hold.amount == 162_500
    # Settled in the service tier it was reserved in, unless told otherwise.
    assert hold.settle(usages=items) == 162_500
    other = metering.reserve(actor, usages=items)
    assert other is not None and other.amount == 325_000
    assert other.settle(usages=items, service_tier="priority") == 162_500 + 650_000


def test_the_async_service_prices_through_the_table() -> None:
    async def run() -> tuple[int, int, int]:
        metering = AsyncMeteringService(service(OPENAI_TABLES))
        usage = {"prompt_tokens": 1000, "completion_tokens": 200, "service_tier": "flex"}
        first = await metering.record_usage_object(usage, Actor("u"), GPT)
        second = await metering.try_record_usage_object(usage, Actor("v"), GPT, service_tier="priority")
        assert second is not None
        cost = await metering.cost_of_usages([(f"{GPT}:prompt_tokens", 2)], service_tier="flex")
        return first, second, cost

    assert asyncio.run(run()) == (162_500, 650_000, 125)


def test_a_refund_of_a_tiered_type_needs_its_cost() -> None:
    metering = service(OPENAI_TABLES)
    actor = Actor("u")
    metering.batch_increment_usages(actor, [(f"{GPT}:prompt_tokens", 1000)], service_tier="flex")
    with pytest.raises(ValueError, match="priced by a table"):
        metering.refund(actor, f"{GPT}:prompt_tokens", 1000)
    assert metering.refund(actor, f"{GPT}:prompt_tokens", 1000, cost=62_500) == 0


# ---------------------------------------------------------------------------------------------
# Dated prices


def test_a_dated_price_switches_at_midnight_utc_on_the_services_clock() -> None:
    midnight = calendar.timegm((2026, 10, 20, 0, 0, 0))
    clock = FakeClock(midnight - 0.001)
    prices = {"t:units": {"price": "10", "from": [{"date": "2026-10-20", "price": "12"}]}}
    metering = service(prices, clock=clock)
    actor = Actor("u")
    assert metering.cost_of("t:units", 100) == 1_000
    assert metering.increment_usage(actor, "t:units", 100) == 1_000
    clock.advance(0.001)
    assert metering.cost_of("t:units", 100) == 1_200
    # Recorded usage is never re-priced: the first 100 stay at the old price.
    assert metering.increment_usage(actor, "t:units", 100) == 2_200
    assert metering.batch_increment_usages(actor, [("t:units", 1)]) == 2_212


def test_a_date_changes_the_whole_price_tiers_and_service_tiers_included() -> None:
    prices = {
        "t:units": {
            "price": "10",
            "from": [
                {
                    "date": "2026-10-01",
                    "price": "20",
                    "tiers": [{"above": 5, "price": "30"}],
                    "service_tiers": {"flex": "15"},
                }
            ],
        }
    }
    metering = service(prices)  # the clock stands at 2026-10-15
    assert metering.cost_of_usages([("t:units", 5)]) == 100
    assert metering.cost_of_usages([("t:units", 6)]) == 180
    assert metering.cost_of_usages([("t:units", 6)], service_tier="flex") == 90


# ---------------------------------------------------------------------------------------------
# The mapping protocol and loading


def test_a_table_is_a_key_of_the_map_shown_at_its_first_base_price(tmp_path: Path) -> None:
    cost_map = tables({**GEMINI_TABLES, "plain:thing": 7, "flat:thing": {"price": "2.5"}})
    assert len(cost_map) == 4
    assert PRO_PROMPT in cost_map and cost_map.is_table(PRO_PROMPT)
    assert not cost_map.is_table("plain:thing") and not cost_map.is_table("flat:thing")
    assert str(cost_map[PRO_PROMPT]) == "125"
    assert str(cost_map["flat:thing"]) == "2.5"
    assert set(cost_map.keys()) == {PRO_PROMPT, PRO_OUTPUT, "plain:thing", "flat:thing"}
    assert cost_map.source_of(PRO_OUTPUT) == "tiers.json"
    merged = CostMap.from_dict({PRO_PROMPT: 1}).merged(cost_map)
    assert merged.is_table(PRO_PROMPT)
    path = tmp_path / "tiers.json"
    path.write_text(json.dumps(GEMINI_TABLES), encoding="utf-8")
    assert CostMap.from_files(path).is_table(PRO_OUTPUT)


MALFORMED = [
    ({"price": "1", "tier": []}, 'unknown field "tier"'),
    ({"tiers": []}, "price is missing"),
    ({"price": "-1"}, "negative"),
    ({"price": "1.5.0"}, "not a decimal number"),
    ({"price": "1", "tiers": [{"above": 0, "price": "2"}]}, "positive integer"),
    ({"price": "1", "tiers": [{"above": "10", "price": "2"}]}, "positive integer"),
    ({"price": "1", "tiers": [{"above": 20, "price": "2"}, {"above": 10, "price": "3"}]}, "must increase"),
    ({"price": "2", "tiers": [{"above": 10, "price": "1"}]}, "cheaper than the price below"),
    ({"price": "1", "from": [{"date": "2026-13-01", "price": "2"}]}, "not a YYYY-MM-DD date"),
    (
        {"price": "1", "from": [{"date": "2026-02-01", "price": "2"}, {"date": "2026-01-01", "price": "3"}]},
        "increase",
    ),
    ({"price": "1", "service_tiers": {"flex": "-0.5"}}, "negative"),
    ({"price": "1", "service_tiers": {"standard": "2"}}, "always means the base price"),
]


@pytest.mark.parametrize(("table", "reason"), MALFORMED)
def test_a_malformed_table_is_refused_at_load_with_file_key_and_reason(
    tmp_path: Path, table: dict[str, Any], reason: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"ok:thing": 1, "bad:thing": table}), encoding="utf-8")
    with pytest.raises(CostMapError) as raised:
        CostMap.from_files(path)
    message = str(raised.value)
    assert str(path) in message and '"bad:thing"' in message and reason in message, message


# ---------------------------------------------------------------------------------------------
# Properties


@st.composite
def tiered_tables(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]]]:
    """A base price and increasing (threshold, price) tiers whose prices never decrease."""
    base = draw(st.integers(0, 10_000))
    count = draw(st.integers(1, 4))
    thresholds = sorted(draw(st.sets(st.integers(1, 10_000), min_size=count, max_size=count)))
    steps = draw(st.lists(st.integers(0, 10_000), min_size=count, max_size=count))
    tiers, price = [], base
    for threshold, step in zip(thresholds, steps, strict=True):
        price += step
        tiers.append((threshold, price))
    return base, tiers


def tier_map(base: int, tiers: list[tuple[int, int]]) -> CostMap:
    table = {"price": str(base), "tiers": [{"above": a, "price": str(p)} for a, p in tiers]}
    return tables({"t:units": table})


@given(tiered_tables(), st.integers(0, 12_000))
def test_a_tiered_price_is_never_cheaper_than_the_tier_below_for_the_same_request(
    table: tuple[int, list[tuple[int, int]]], units: int
) -> None:
    base, tiers = table
    metering = MeteringService(tier_map(base, tiers), clock=FakeClock())
    cost = metering.cost_of_usages([("t:units", units)])
    # The tier the request is in prices all its units...
    in_force = [price for above, price in tiers if units > above]
    assert cost == units * (in_force[-1] if in_force else base)
    # ...and no price below it would have cost more for the same request.
    for below in [base] + [price for above, price in tiers if units > above]:
        assert cost >= units * below
    # A bigger request never costs less.
    assert metering.cost_of_usages([("t:units", units + 1)]) >= cost


@given(tiered_tables(), st.integers(1, 20), st.data())
def test_n_calls_below_the_threshold_cost_exactly_n_times_one(
    table: tuple[int, list[tuple[int, int]]], calls: int, data: st.DataObject
) -> None:
    base, tiers = table
    size = data.draw(st.integers(0, tiers[0][0]))
    metering = MeteringService(tier_map(base, tiers), clock=FakeClock())
    actor = Actor("u")
    one = metering.cost_of("t:units", size)
    assert one == size * base
    total = 0
    for _ in range(calls):
        total = metering.increment_usage(actor, "t:units", size)
    assert total == calls * one
    batched = Actor("b")
    for _ in range(calls):
        total = metering.batch_increment_usages(batched, [("t:units", size)])
    assert total == calls * one


def test_the_readme_price_model_examples_run() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The price model\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    for at, block in enumerate(blocks):
        exec(compile(block, f"README.md price model example {at + 1}", "exec"), {})
    tables_json = re.search(r"```json\n(.*?)```", section, re.S)
    assert tables_json is not None
    cost_map = CostMap.from_json(tables_json.group(1), "README.md")
    assert cost_map.is_table("openai:gpt-5.1:prompt_tokens")


def test_costmap_help_prints_the_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["costmap", "--help"])
    out = capsys.readouterr().out
    for field in ('"tiers"', '"service_tiers"', '"from"', "00:00 UTC", "ephemeral_1h_input_tokens"):
        assert field in out


def test_a_stream_is_priced_in_the_service_tier_its_chunks_report() -> None:
    metering = service(OPENAI_TABLES)
    chunks: list[dict[str, Any]] = [
        {"choices": [{"delta": {"content": "hi"}}], "service_tier": "flex"},
        {"choices": [], "usage": {"prompt_tokens": 1000, "completion_tokens": 200}, "service_tier": "flex"},
    ]
    stream = meter_stream(metering, Actor("u"), GPT, chunks)
    assert len(list(stream)) == 2
    assert stream.total == 162_500
    held = Actor("h")
    hold = metering.reserve(held, usages=[(f"{GPT}:prompt_tokens", 1000)])
    assert hold is not None
    with meter_stream(metering, held, GPT, chunks, hold=hold) as settled:
        list(settled)
    assert settled.total == 162_500
