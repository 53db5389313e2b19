"""Cost pre-checks for one LLM call (issue 11, point 4): prompt + max_tokens in one check, and
max_tokens capped to what the budget buys. A user without an email is on temp_free: 25,000,000 µ¢."""

from __future__ import annotations

import asyncio

import pytest
from support import FakeClock
from usagemeter import Actor, CostMap, MeteringService, UnknownUsageType
from usagemeter.aio import AsyncMeteringService
from usagemeter.llm import (
    acan_afford_completion,
    acap_max_tokens,
    can_afford_completion,
    cap_max_tokens,
    completion_items,
)

ALLOWANCE = 25_000_000
GPT = "openai:gpt-5.1"  # 125 µ¢ a prompt token, 1000 a completion token


@pytest.fixture
def shipped(default_cost_map: CostMap, clock: FakeClock) -> MeteringService:
    return MeteringService(default_cost_map, clock=clock)


def test_the_budget_after_the_prompt_caps_max_tokens(shipped: MeteringService) -> None:
    actor = Actor("u")
    # 1,000 prompt tokens cost 125,000 µ¢; the 24,875,000 left buy 24,875 completion tokens.
    assert cap_max_tokens(shipped, actor, GPT, 1_000, 100_000) == 24_875
    assert cap_max_tokens(shipped, actor, GPT, 1_000, 500) == 500
    assert can_afford_completion(shipped, actor, GPT, 1_000, 24_875)
    assert not can_afford_completion(shipped, actor, GPT, 1_000, 24_876)
    # Spending moves both.
    shipped.increment_usage(actor, f"{GPT}:completion_tokens", 875)
    assert cap_max_tokens(shipped, actor, GPT, 1_000, 100_000) == 24_000
    assert not can_afford_completion(shipped, actor, GPT, 1_000, 24_001)


def test_a_prompt_the_budget_cannot_pay_caps_to_zero(shipped: MeteringService) -> None:
    actor = Actor("u")
    affordable_prompt = ALLOWANCE // 125
    assert cap_max_tokens(shipped, actor, GPT, affordable_prompt, 10) == 0
    assert can_afford_completion(shipped, actor, GPT, affordable_prompt, 0)
    assert cap_max_tokens(shipped, actor, GPT, affordable_prompt + 1, 10) == 0
    assert not can_afford_completion(shipped, actor, GPT, affordable_prompt + 1, 0)


def test_fractional_prices_are_exact(shipped: MeteringService) -> None:
    # gemini-1.5-flash: 7.5 µ¢ a prompt token, 30 a candidates token. 3 prompt tokens: 22.5 µ¢;
    # 833,332 output tokens: 24,999,960 µ¢, in all 24,999,982.5 <= 25,000,000 < 25,000,012.5.
    actor = Actor("u")
    model = "gemini:gemini-1.5-flash"
    assert cap_max_tokens(shipped, actor, model, 3, 10**9) == 833_332
    assert can_afford_completion(shipped, actor, model, 3, 833_332)
    assert not can_afford_completion(shipped, actor, model, 3, 833_333)


def test_the_model_types_are_the_ones_record_usage_object_books(shipped: MeteringService) -> None:
    sonnet = "claude:claude-sonnet-4-5-20250929"
    assert completion_items(shipped, "claude:claude-sonnet-4-5", 10, 20) == [
        (f"{sonnet}:input_tokens", 10),
        (f"{sonnet}:output_tokens", 20),
    ]
    assert completion_items(shipped, "xai:grok-3", 1, 2) == [
        ("xai:grok-3:prompt_tokens", 1),
        ("xai:grok-3:completion-tokens", 2),
    ]
    # 300 µ¢ an input token, 1500 an output token.
    assert (
        cap_max_tokens(shipped, Actor("u"), "claude:claude-sonnet-4-5", 1_000, 10**6)
        == (ALLOWANCE - 300_000) // 1500
    )


def test_bad_input(shipped: MeteringService) -> None:
    actor = Actor("u")
    with pytest.raises(UnknownUsageType, match="openai:gpt-9"):
        can_afford_completion(shipped, actor, "openai:gpt-9", 1, 1)
    with pytest.raises(UnknownUsageType, match="openai:gpt-9"):
        cap_max_tokens(shipped, actor, "openai:gpt-9", 1, 1)
    with pytest.raises(ValueError, match="max_tokens"):
        cap_max_tokens(shipped, actor, GPT, 1, -1)
    with pytest.raises(TypeError, match="prompt_tokens"):
        can_afford_completion(shipped, actor, GPT, True, 1)


def test_async_twins(shipped: MeteringService) -> None:
    async def main() -> tuple[int, bool, bool]:
        service = AsyncMeteringService(shipped)
        actor = Actor("u")
        return (
            await acap_max_tokens(service, actor, GPT, 1_000, 100_000),
            await acan_afford_completion(service, actor, GPT, 1_000, 24_875),
            await acan_afford_completion(service, actor, GPT, 1_000, 24_876),
        )

    assert asyncio.run(main()) == (24_875, True, False)
