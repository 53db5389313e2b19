"""Provider usage payloads (issue 11, point 3): each provider's usage object, as its API reference
documents it, books each token once at the shipped price for it.

Expected costs are computed here from `costmaps/*.json` read as text, with Decimal arithmetic,
independently of the native cost map: exact per item, the month total rounded half up once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from anthropic.types import Usage as AnthropicUsage
from hypothesis import given
from hypothesis import strategies as st
from openai.types import CompletionUsage
from openai.types.responses import ResponseUsage
from support import (
    PROMPT,
    FakeClock,
    collect_alarms,
    exact_cost,
    exact_sum,
    round_half_up,
    snapshot,
    usage_of,
)
from usagemeter import Actor, CostMap, MeteringService, Policy, UnknownUsageType, providers
from usagemeter.providers import PROVIDERS, resolve_model_prefix, usage_items

COSTMAP_DIR = Path(__file__).resolve().parent.parent / "costmaps"


def _shipped_prices() -> dict[str, Decimal]:
    prices: dict[str, Decimal] = {}
    for path in sorted(COSTMAP_DIR.glob("*.json")):
        for key, value in json.loads(path.read_text(), parse_float=Decimal, parse_int=Decimal).items():
            prices[key] = Decimal(value) if isinstance(value, str) else value
    return prices


PRICES = _shipped_prices()


def expected_total(items: Mapping[str, int]) -> int:
    """The month total after booking ``items`` on a new actor: the exact sum, rounded half up."""
    return round_half_up(
        exact_sum(exact_cost(PRICES[usage_type], units) for usage_type, units in items.items())
    )


def expected_report(items: Mapping[str, int]) -> dict[str, Any]:
    """The actor's usage report after booking ``items`` once."""
    report: dict[str, Any] = {"total": expected_total(items)}
    for usage_type, units in items.items():
        cost = round_half_up(exact_cost(PRICES[usage_type], units))
        report[usage_type] = {"units": units, "cost": cost, "count": 1 if units else 0}
    return report


@pytest.fixture
def shipped(default_cost_map: CostMap, clock: FakeClock) -> MeteringService:
    return MeteringService(default_cost_map, clock=clock)


def check_charge(
    service: MeteringService, usage: object, model_prefix: str, expected: Mapping[str, int], user: str = "u"
) -> None:
    """``usage`` books exactly ``expected`` (usage type -> units), at the shipped prices."""
    actor = Actor(user)
    assert sorted(usage_items(usage, model_prefix, service.cost_map)) == sorted(expected.items())
    total = service.record_usage_object(usage, actor, model_prefix)
    assert total == expected_total(expected)
    report = usage_of(service, actor)
    assert report == {k: v for k, v in expected_report(expected).items() if k == "total" or v["count"]}


# --- One test per provider --------------------------------------------------------------------

# https://platform.openai.com/docs/api-reference/chat/object (usage; prompt_tokens include
# prompt_tokens_details.cached_tokens, completion_tokens include reasoning_tokens)
OPENAI_CHAT = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 192,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
OPENAI_CHAT_ITEMS = {
    "openai:gpt-5.1:prompt_tokens": 2006 - 1920,
    "openai:gpt-5.1:cached_tokens": 1920,
    "openai:gpt-5.1:completion_tokens": 300,
}


def test_openai_chat_completions(shipped: MeteringService) -> None:
    check_charge(shipped, OPENAI_CHAT, "openai:gpt-5.1", OPENAI_CHAT_ITEMS)


def test_openai_chat_without_a_cached_price_charges_the_cached_tokens_as_prompt(
    shipped: MeteringService,
) -> None:
    # o1-mini has no cached price in the shipped map: every prompt token at the prompt price.
    check_charge(
        shipped,
        OPENAI_CHAT,
        "openai:o1-mini",
        {"openai:o1-mini:prompt_tokens": 2006, "openai:o1-mini:completion_tokens": 300},
    )


# https://platform.openai.com/docs/api-reference/responses/object (usage: input_tokens include
# input_tokens_details.cached_tokens; output_tokens include output_tokens_details.reasoning_tokens)
OPENAI_RESPONSES = {
    "input_tokens": 328,
    "input_tokens_details": {"cached_tokens": 128},
    "output_tokens": 52,
    "output_tokens_details": {"reasoning_tokens": 40},
    "total_tokens": 380,
}
OPENAI_RESPONSES_ITEMS = {
    "openai:gpt-5-mini-2025-08-07:prompt_tokens": 200,
    "openai:gpt-5-mini-2025-08-07:cached_tokens": 128,
    "openai:gpt-5-mini-2025-08-07:completion_tokens": 52,  # the 40 reasoning tokens once, inside
}


def test_openai_responses(shipped: MeteringService) -> None:
    check_charge(shipped, OPENAI_RESPONSES, "openai:gpt-5-mini", OPENAI_RESPONSES_ITEMS)


# https://docs.anthropic.com/en/api/messages (usage) and
# https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching#tracking-cache-performance
# (input_tokens exclude cache reads and writes; cache_creation splits writes by TTL)
ANTHROPIC = {
    "input_tokens": 50,
    "cache_creation_input_tokens": 3000,
    "cache_read_input_tokens": 10000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
    "output_tokens": 503,
    "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
    "service_tier": "standard",
}
SONNET = "claude:claude-sonnet-4-5-20250929"
ANTHROPIC_ITEMS = {
    f"{SONNET}:input_tokens": 50,
    f"{SONNET}:output_tokens": 503,
    f"{SONNET}:cache_read_input_tokens": 10000,
    f"{SONNET}:ephemeral_5m_input_tokens": 1000,
    f"{SONNET}:ephemeral_1h_input_tokens": 2000,
}


def test_anthropic_with_cache_writes_by_ttl_and_cache_reads(shipped: MeteringService) -> None:
    check_charge(shipped, ANTHROPIC, "claude:claude-sonnet-4-5", ANTHROPIC_ITEMS)


def test_anthropic_cache_writes_without_a_breakdown_are_five_minute_writes(shipped: MeteringService) -> None:
    usage = {
        "input_tokens": 12,
        "cache_creation_input_tokens": 2048,
        "cache_read_input_tokens": 0,
        "output_tokens": 7,
    }
    haiku = "claude:claude-3-haiku-20240307"  # a fractional write price: 31.25 µ¢
    check_charge(
        shipped,
        usage,
        haiku,
        {
            f"{haiku}:input_tokens": 12,
            f"{haiku}:output_tokens": 7,
            f"{haiku}:ephemeral_5m_input_tokens": 2048,
        },
    )


# https://ai.google.dev/api/generate-content#UsageMetadata (promptTokenCount includes
# cachedContentTokenCount; thoughtsTokenCount and toolUsePromptTokenCount are beside the others)
GEMINI_RESPONSE = {
    "candidates": [{"content": {"parts": [{"text": "..."}], "role": "model"}, "finishReason": "STOP"}],
    "usageMetadata": {
        "promptTokenCount": 1200,
        "cachedContentTokenCount": 1000,
        "candidatesTokenCount": 300,
        "thoughtsTokenCount": 700,
        "toolUsePromptTokenCount": 50,
        "totalTokenCount": 2250,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}],
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 1000}],
    },
    "modelVersion": "gemini-2.5-flash",
}
GEMINI_ITEMS = {
    # No cached price in the shipped map: the cached tokens stay prompt tokens; tool-use prompts
    # are input; thoughts are output.
    "gemini:gemini-2.5-flash:promptTokenCount": 1200 + 50,
    "gemini:gemini-2.5-flash:candidatesTokenCount": 300 + 700,
}


def test_gemini(shipped: MeteringService) -> None:
    check_charge(shipped, GEMINI_RESPONSE["usageMetadata"], "gemini:gemini-2.5-flash", GEMINI_ITEMS)


def test_gemini_whole_response_and_snake_case(shipped: MeteringService) -> None:
    check_charge(shipped, GEMINI_RESPONSE, "gemini:gemini-2.5-flash", GEMINI_ITEMS, user="whole")
    snake = {  # google-genai's pydantic objects dump snake_case
        "prompt_token_count": 1200,
        "cached_content_token_count": 1000,
        "candidates_token_count": 300,
        "thoughts_token_count": 700,
        "tool_use_prompt_token_count": 50,
        "total_token_count": 2250,
    }
    check_charge(shipped, snake, "gemini:gemini-2.5-flash", GEMINI_ITEMS, user="snake")


# https://docs.mistral.ai/api/#tag/chat/operation/chat_completion_v1_chat_completions_post (UsageInfo)
def test_mistral(shipped: MeteringService) -> None:
    usage = {"prompt_tokens": 37, "completion_tokens": 120, "total_tokens": 157, "prompt_audio_seconds": None}
    check_charge(
        shipped,
        usage,
        "mistral:mistral-small-latest",
        {
            "mistral:mistral-small-latest:prompt_tokens": 37,
            "mistral:mistral-small-latest:completion_tokens": 120,
        },
    )


# https://docs.x.ai/docs/api-reference#chat-completions and
# https://docs.x.ai/developers/advanced-api-usage/prompt-caching/usage-and-pricing
XAI_ITEMS = {"xai:grok-3-mini:prompt_tokens": 32, "xai:grok-3-mini:completion-tokens": 9 + 94}


def test_xai_completion_tokens_meet_the_maps_completion_dash_tokens(shipped: MeteringService) -> None:
    # xAI has reported reasoning tokens beside completion_tokens (total = prompt + completion +
    # reasoning) and inside them (total = prompt + completion): both charge every output token once.
    beside = {
        "prompt_tokens": 32,
        "completion_tokens": 9,
        "total_tokens": 32 + 9 + 94,
        "prompt_tokens_details": {
            "text_tokens": 32,
            "audio_tokens": 0,
            "image_tokens": 0,
            "cached_tokens": 6,
        },
        "completion_tokens_details": {
            "reasoning_tokens": 94,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
        "num_sources_used": 0,
    }
    inside = {**beside, "completion_tokens": 9 + 94, "total_tokens": 32 + 9 + 94}
    check_charge(shipped, beside, "xai:grok-3-mini", XAI_ITEMS, user="beside")
    check_charge(shipped, inside, "xai:grok-3-mini", XAI_ITEMS, user="inside")


# https://api-docs.deepseek.com/api/create-chat-completion (usage: prompt_cache_hit_tokens +
# prompt_cache_miss_tokens = prompt_tokens; reasoning_tokens within completion_tokens)
def test_deepseek(shipped: MeteringService) -> None:
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "total_tokens": 1500,
        "prompt_cache_hit_tokens": 600,
        "prompt_cache_miss_tokens": 400,
        "prompt_tokens_details": {"cached_tokens": 600},
        "completion_tokens_details": {"reasoning_tokens": 350},
    }
    reasoner = "deepseek:deepseek-reasoner"
    items = {
        f"{reasoner}:prompt_tokens": 400,
        f"{reasoner}:cached_tokens": 600,
        f"{reasoner}:completion_tokens": 500,
    }
    check_charge(shipped, usage, reasoner, items)
    only_miss = {"prompt_tokens": 1000, "completion_tokens": 500, "prompt_cache_miss_tokens": 400}
    check_charge(shipped, only_miss, reasoner, items, user="only-miss")


# https://console.groq.com/docs/api-reference#chat-create (usage, with timings in seconds)
def test_groq(shipped: MeteringService) -> None:
    usage = {
        "queue_time": 0.037,
        "prompt_tokens": 18,
        "prompt_time": 0.000921,
        "completion_tokens": 556,
        "completion_time": 0.463,
        "total_tokens": 574,
        "total_time": 0.464,
    }
    model = "groq:llama-3.1-8b-instant"
    check_charge(shipped, usage, model, {f"{model}:prompt_tokens": 18, f"{model}:completion_tokens": 556})


# https://docs.together.ai/reference/chat-completions-1 (usage: prompt_tokens, completion_tokens,
# total_tokens and a top-level cached_tokens); the shipped map names the prices input and output.
def test_together(shipped: MeteringService) -> None:
    usage = {
        "completion_tokens": 34,
        "prompt_tokens": 49,
        "total_tokens": 83,
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
        "cached_tokens": 0,
    }
    model = "together:model-fallback-test-1"
    check_charge(shipped, usage, model, {f"{model}:input": 49, f"{model}:output": 34})


# https://openrouter.ai/docs/use-cases/usage-accounting (cached_tokens within prompt_tokens;
# cost in credits is metadata: the cost map prices)
def test_openrouter(shipped: MeteringService) -> None:
    usage = {
        "completion_tokens": 2,
        "completion_tokens_details": {"reasoning_tokens": 0},
        "cost": 0.95,
        "cost_details": {"upstream_inference_cost": 19},
        "is_byok": False,
        "prompt_tokens": 194,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 0, "audio_tokens": 0},
        "total_tokens": 196,
    }
    model = "openrouter:openai/gpt-5.1"
    items = {f"{model}:prompt": 94, f"{model}:input_cache_read": 100, f"{model}:completion": 2}
    check_charge(shipped, usage, model, items)


def test_every_provider_has_a_test() -> None:
    assert set(PROVIDERS) == {
        "openai",
        "claude",
        "anthropic",
        "gemini",
        "mistral",
        "xai",
        "deepseek",
        "groq",
        "together",
        "openrouter",
    }


# --- SDK objects give the same charge as the dicts ---------------------------------------------


def test_sdk_objects_charge_as_their_dicts(shipped: MeteringService) -> None:
    check_charge(
        shipped, CompletionUsage.model_validate(OPENAI_CHAT), "openai:gpt-5.1", OPENAI_CHAT_ITEMS, "a"
    )
    # The SDK requires input_tokens_details.cache_write_tokens, which the API reports as 0 here.
    responses = {**OPENAI_RESPONSES, "input_tokens_details": {"cached_tokens": 128, "cache_write_tokens": 0}}
    check_charge(
        shipped, ResponseUsage.model_validate(responses), "openai:gpt-5-mini", OPENAI_RESPONSES_ITEMS, "b"
    )
    check_charge(
        shipped, AnthropicUsage.model_validate(ANTHROPIC), "claude:claude-sonnet-4-5", ANTHROPIC_ITEMS, "c"
    )
    # An SDK object with optional fields left out (model_dump gives None for them).
    bare = AnthropicUsage(input_tokens=10, output_tokens=5)
    check_charge(shipped, bare, SONNET, {f"{SONNET}:input_tokens": 10, f"{SONNET}:output_tokens": 5}, "d")


def test_a_plain_object_and_a_to_dict_object(shipped: MeteringService) -> None:
    class Plain:
        def __init__(self) -> None:
            self.prompt_tokens = 10
            self.completion_tokens = 2
            self.total_tokens = 12

    class Proto:
        __slots__ = ()

        def to_dict(self) -> dict[str, int]:
            return {"prompt_tokens": 10, "completion_tokens": 2}

    items = {"mistral:mistral-nemo:prompt_tokens": 10, "mistral:mistral-nemo:completion_tokens": 2}
    check_charge(shipped, Plain(), "mistral:mistral-nemo", items, "plain")
    check_charge(shipped, Proto(), "mistral:mistral-nemo", items, "proto")


# --- Undated aliases ----------------------------------------------------------------------------


def test_undated_aliases_resolve_to_the_newest_dated_price(default_cost_map: CostMap) -> None:
    resolve = resolve_model_prefix
    assert resolve("claude:claude-sonnet-4-5", default_cost_map) == "claude:claude-sonnet-4-5-20250929"
    assert resolve("claude:claude-3-5-sonnet", default_cost_map) == "claude:claude-3-5-sonnet-20241022"
    assert resolve("claude:claude-opus-4", default_cost_map) == "claude:claude-opus-4-20250514"
    assert resolve("openai:gpt-5", default_cost_map) == "openai:gpt-5-2025-08-07"
    assert resolve("openai:gpt-5-mini", default_cost_map) == "openai:gpt-5-mini-2025-08-07"
    # Exact matches win, and a dated name never falls back to an undated one.
    assert resolve("claude:claude-opus-4-6", default_cost_map) == "claude:claude-opus-4-6"
    assert resolve("openai:gpt-4o-2024-05-13", default_cost_map) == "openai:gpt-4o-2024-05-13"
    assert resolve("claude:claude-sonnet-9", default_cost_map) == "claude:claude-sonnet-9"


def test_an_exact_match_wins_over_a_dated_one() -> None:
    cost_map = CostMap.from_dict(
        {"x:m:prompt_tokens": 1, "x:m-20250101:prompt_tokens": 2, "x:m-20260101:prompt_tokens": 3}
    )
    assert resolve_model_prefix("x:m", cost_map) == "x:m"
    other = CostMap.from_dict({"x:m-20250101:prompt_tokens": 2, "x:m-2026-01-01:prompt_tokens": 3})
    assert resolve_model_prefix("x:m", other) == "x:m-2026-01-01"


def test_an_unknown_model_raises_naming_the_usage_type(shipped: MeteringService) -> None:
    actor = Actor("u")
    with pytest.raises(UnknownUsageType, match="claude:claude-sonnet-9:input_tokens"):
        shipped.record_usage_object(ANTHROPIC, actor, "claude:claude-sonnet-9")
    with pytest.raises(UnknownUsageType, match="openai:gpt-9:prompt_tokens"):
        shipped.record_usage_object({"prompt_tokens": 0, "completion_tokens": 0}, actor, "openai:gpt-9")
    assert usage_of(shipped, actor) == {"total": 0}


def test_an_unknown_model_on_a_free_unmapped_service_is_recorded_for_free(default_cost_map: CostMap) -> None:
    service = MeteringService(default_cost_map, unmapped="free", clock=FakeClock())
    alarms = collect_alarms(service)
    actor = Actor("u")
    assert service.record_usage_object(OPENAI_CHAT, actor, "openai:gpt-9") == 0
    # Unpriced, the cached tokens are booked with the prompt tokens.
    assert usage_of(service, actor) == {
        "total": 0,
        "openai:gpt-9:prompt_tokens": {"units": 2006, "cost": 0, "count": 1},
        "openai:gpt-9:completion_tokens": {"units": 300, "cost": 0, "count": 1},
    }
    assert {alarm.kind for alarm in alarms} == {"unmapped_usage"}


# --- The failures seen before (issue 11) --------------------------------------------------------


def test_the_failures_seen_before_are_gone(shipped: MeteringService) -> None:
    actor = Actor("u")
    # OpenAI's total_tokens raised UnknownUsageType; its nested details a TypeError.
    shipped.record_usage_object(
        {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}, actor, "openai:gpt-4o"
    )
    shipped.record_usage_object(OPENAI_CHAT, actor, "openai:gpt-4o")
    # Anthropic's non-zero cache_creation_input_tokens raised UnknownUsageType, service_tier TypeError.
    shipped.record_usage_object(
        {"input_tokens": 1, "output_tokens": 1, "cache_creation_input_tokens": 5, "service_tier": "standard"},
        actor,
        SONNET,
    )
    # xAI's completion_tokens met the map's completion-tokens only by renaming them.
    shipped.record_usage_object({"prompt_tokens": 3, "completion_tokens": 4}, actor, "xai:grok-3")
    # An undated model name was unknown.
    shipped.record_usage_object({"input_tokens": 3, "output_tokens": 4}, actor, "claude:claude-sonnet-4-5")
    report = usage_of(shipped, actor)
    assert report["xai:grok-3:completion-tokens"]["units"] == 4
    assert report[f"{SONNET}:ephemeral_5m_input_tokens"]["units"] == 5
    assert report[f"{SONNET}:input_tokens"] == {"units": 4, "cost": 4 * 300, "count": 2}
    assert not any("total" in key for key in report if key != "total")


def test_payloads_shaped_for_the_old_rule_still_book_the_same(shipped: MeteringService) -> None:
    # Callers worked around the old rule by naming the cost map's keys: those still book as before.
    check_charge(
        shipped,
        {"prompt_tokens": 3, "completion-tokens": 4},
        "xai:grok-3",
        {"xai:grok-3:prompt_tokens": 3, "xai:grok-3:completion-tokens": 4},
        "xai",
    )
    check_charge(
        shipped,
        {"input_tokens": 3, "output_tokens": 4, "ephemeral_1h_input_tokens": 5},
        SONNET,
        {f"{SONNET}:input_tokens": 3, f"{SONNET}:output_tokens": 4, f"{SONNET}:ephemeral_1h_input_tokens": 5},
        "claude",
    )
    check_charge(shipped, {"character": 500}, "openai:tts-1", {"openai:tts-1:character": 500}, "tts")


# --- Cost overrides -----------------------------------------------------------------------------


def test_cost_overrides_name_the_booked_kinds(shipped: MeteringService) -> None:
    actor = Actor("u")
    total = shipped.record_usage_object(
        OPENAI_CHAT, actor, "openai:gpt-5.1", cost_overrides={"cached_tokens": 7}
    )
    without_cached = {k: v for k, v in OPENAI_CHAT_ITEMS.items() if not k.endswith(":cached_tokens")}
    assert total == expected_total(without_cached) + 7
    assert usage_of(shipped, actor)["openai:gpt-5.1:cached_tokens"] == {"units": 1920, "cost": 7, "count": 1}
    before = snapshot(shipped, [actor], [])
    with pytest.raises(ValueError, match="total_tokens"):
        shipped.record_usage_object(OPENAI_CHAT, actor, "openai:gpt-5.1", cost_overrides={"total_tokens": 1})
    with pytest.raises(ValueError):
        shipped.record_usage_object(
            OPENAI_CHAT, actor, "openai:gpt-5.1", cost_overrides={"prompt_tokens": -1}
        )
    assert snapshot(shipped, [actor], []) == before


# --- Bad input changes nothing ------------------------------------------------------------------

BAD_PAYLOADS: list[tuple[str, str, dict[str, Any], type[Exception], str]] = [
    (
        "negative",
        "openai:gpt-5.1",
        {"prompt_tokens": -1, "completion_tokens": 1},
        ValueError,
        "prompt_tokens",
    ),
    ("float", "openai:gpt-5.1", {"prompt_tokens": 1.0, "completion_tokens": 1}, TypeError, "prompt_tokens"),
    (
        "bool",
        "claude:claude-sonnet-4-5",
        {"input_tokens": True, "output_tokens": 1},
        TypeError,
        "input_tokens",
    ),
    (
        "string",
        "gemini:gemini-2.5-pro",
        {"promptTokenCount": "12", "candidatesTokenCount": 1},
        TypeError,
        "prompt",
    ),
    (
        "negative nested",
        "openai:gpt-5.1",
        {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": -2}},
        ValueError,
        "cached_tokens",
    ),
    (
        "junk details",
        "openai:gpt-5.1",
        {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": 3},
        TypeError,
        "prompt_tokens_details",
    ),
    (
        "cached above prompt",
        "openai:gpt-5.1",
        {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 6}},
        ValueError,
        "exceeds prompt_tokens",
    ),
    (
        "reasoning above completion",
        "deepseek:deepseek-reasoner",
        {"prompt_tokens": 5, "completion_tokens": 1, "completion_tokens_details": {"reasoning_tokens": 2}},
        ValueError,
        "reasoning_tokens",
    ),
    (
        "cache writes that do not add up",
        "claude:claude-sonnet-4-5",
        {
            "input_tokens": 1,
            "output_tokens": 1,
            "cache_creation_input_tokens": 10,
            "cache_creation": {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": 3},
        },
        ValueError,
        "cache_creation_input_tokens",
    ),
    (
        "a server tool count that is not an int",
        "claude:claude-sonnet-4-5",
        {"input_tokens": 1, "output_tokens": 1, "server_tool_use": {"web_search_requests": 1.5}},
        TypeError,
        "web_search_requests",
    ),
    (
        "an unknown count",
        "openai:gpt-5.1",
        {"prompt_tokens": 1, "completion_tokens": 1, "surprise_tokens": 5},
        UnknownUsageType,
        "openai:gpt-5.1:surprise_tokens",
    ),
    (
        "a top-level cached_tokens above prompt_tokens",
        "openai:gpt-5.1",
        {"prompt_tokens": 10, "cached_tokens": 20},
        ValueError,
        "cached_tokens .*exceeds prompt_tokens",
    ),
    (
        "a top-level cached_tokens that disagrees with the breakdown",
        "openai:gpt-5.1",
        {"prompt_tokens": 1000, "prompt_tokens_details": {"cached_tokens": 1000}, "cached_tokens": 400},
        ValueError,
        "'cached_tokens' \\(400\\) is a second report of the count usagemeter reads from "
        "'prompt_tokens_details.cached_tokens', which says 1000",
    ),
    (
        "input_tokens beside prompt_tokens, disagreeing",
        "openai:gpt-5.1",
        {"prompt_tokens": 10, "completion_tokens": 1, "input_tokens": 11},
        ValueError,
        "'input_tokens' \\(11\\) is a second report",
    ),
    (
        "OpenRouter's cost map name beside the breakdown, disagreeing",
        "openrouter:openai/gpt-5.1",
        {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 4}, "input_cache_read": 5},
        ValueError,
        "'input_cache_read' \\(5\\)",
    ),
    (
        "Together's cached_tokens and the breakdown disagreeing",
        "together:model-fallback-test-1",
        {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 4}, "cached_tokens": 5},
        ValueError,
        "'cached_tokens' \\(5\\)",
    ),
    (
        "Anthropic's TTL split at the top level and in cache_creation, disagreeing",
        "claude:claude-sonnet-4-5",
        {
            "input_tokens": 1,
            "output_tokens": 1,
            "cache_creation": {"ephemeral_5m_input_tokens": 10},
            "ephemeral_5m_input_tokens": 3,
        },
        ValueError,
        "'ephemeral_5m_input_tokens' \\(3\\)",
    ),
    (
        "Anthropic's top-level TTL split above the cache writes",
        "claude:claude-sonnet-4-5",
        {
            "input_tokens": 1,
            "output_tokens": 1,
            "cache_creation_input_tokens": 10,
            "ephemeral_1h_input_tokens": 20,
        },
        ValueError,
        "not the sum",
    ),
    (
        "Gemini's two spellings of one count, disagreeing",
        "gemini:gemini-2.5-pro",
        {"promptTokenCount": 10, "prompt_token_count": 1000, "candidatesTokenCount": 1},
        ValueError,
        "'prompt_token_count' \\(1000\\) is a second report",
    ),
    (
        "a response whose usage is junk",
        "openai:gpt-5.1",
        {"usage": "junk"},
        TypeError,
        "'usage' must be the openai usage report",
    ),
    (
        "a response without usage",
        "openai:gpt-5.1",
        {"id": "x", "usage": None},
        TypeError,
        "'usage' must be the openai",
    ),
    (
        "a Gemini response whose usage is a list",
        "gemini:gemini-2.5-pro",
        {"usageMetadata": []},
        TypeError,
        "'usageMetadata' must be",
    ),
    ("an empty report", "openai:gpt-5.1", {}, ValueError, "the openai usage report is empty"),
    ("an empty wrapped report", "claude:claude-sonnet-4-5", {"usage": {}}, ValueError, "report is empty"),
    ("a report of Nones", "gemini:gemini-2.5-pro", {"promptTokenCount": None}, ValueError, "is empty"),
    (
        "a wrapped report with none of the dialect's counts",
        "openai:gpt-5.1",
        {"usage": {"tokens": "many"}},
        TypeError,
        "none of the token counts usagemeter reads for 'openai'",
    ),
    ("fallback nested", "llm:org/model-1.5", {"prompt": 1, "details": {"a": 1}}, TypeError, "details"),
    ("fallback None", "llm:org/model-1.5", {"prompt": 1, "completion": None}, TypeError, "completion"),
    ("fallback string", "llm:org/model-1.5", {"prompt": 1, "completion": "2"}, TypeError, "completion"),
    ("fallback negative", "llm:org/model-1.5", {"prompt": 1, "completion": -2}, ValueError, "completion"),
]


@pytest.mark.parametrize(
    ("model_prefix", "usage", "error", "message"),
    [case[1:] for case in BAD_PAYLOADS],
    ids=[case[0] for case in BAD_PAYLOADS],
)
def test_bad_payloads_raise_and_change_nothing(
    default_cost_map: CostMap, model_prefix: str, usage: dict[str, Any], error: type[Exception], message: str
) -> None:
    cost_map = default_cost_map.merged(
        CostMap.from_dict({PROMPT: 2, PROMPT.replace("prompt", "completion"): 8})
    )
    service = MeteringService(cost_map, clock=FakeClock())
    actor = Actor("u", "app")
    service.increment_usage(actor, PROMPT, 1)
    before = snapshot(service, [actor], ["app"])
    with pytest.raises(error, match=message):
        service.record_usage_object(usage, actor, model_prefix)
    assert snapshot(service, [actor], ["app"]) == before


def test_not_a_payload_raises(shipped: MeteringService) -> None:
    with pytest.raises(TypeError, match="usage must be a mapping"):
        shipped.record_usage_object(42, Actor("u"), "openai:gpt-5.1")
    with pytest.raises(ValueError, match="model_prefix"):
        shipped.record_usage_object(OPENAI_CHAT, Actor("u"), "")
    with pytest.raises(TypeError, match="cost_map"):
        usage_items(OPENAI_CHAT, "openai:gpt-5.1", {})  # type: ignore[arg-type]


# --- The fallback and the rest ------------------------------------------------------------------


def test_another_provider_keeps_the_seed_rule(service: MeteringService) -> None:
    actor = Actor("u")
    assert usage_items({"prompt": 100, "completion": 10}, "llm:org/model-1.5", service.cost_map) == [
        ("llm:org/model-1.5:prompt", 100),
        ("llm:org/model-1.5:completion", 10),
    ]
    assert service.record_usage_object({"prompt": 100, "completion": 0}, actor, "llm:org/model-1.5") == 200
    assert "llm:org/model-1.5:completion" not in usage_of(service, actor)  # 0 units: checked, not reported


def test_zero_optional_items_are_not_booked(shipped: MeteringService) -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 0}}
    assert usage_items(usage, "openai:gpt-5.1", shipped.cost_map) == [
        ("openai:gpt-5.1:prompt_tokens", 10),
        ("openai:gpt-5.1:completion_tokens", 0),
    ]


def test_server_tool_requests_are_charged_only_when_priced(default_cost_map: CostMap) -> None:
    usage = {"input_tokens": 1, "output_tokens": 1, "server_tool_use": {"web_search_requests": 3}}
    assert usage_items(usage, SONNET, default_cost_map) == [
        (f"{SONNET}:input_tokens", 1),
        (f"{SONNET}:output_tokens", 1),
    ]
    priced = default_cost_map.merged(CostMap.from_dict({f"{SONNET}:web_search_requests": 1_000_000}))
    assert (f"{SONNET}:web_search_requests", 3) in usage_items(usage, SONNET, priced)


def test_reasoning_priced_apart_when_the_map_prices_it() -> None:
    cost_map = CostMap.from_dict(
        {"openai:m:prompt_tokens": 1, "openai:m:completion_tokens": 4, "openai:m:reasoning_tokens": 8}
    )
    assert usage_items(OPENAI_CHAT, "openai:m", cost_map) == [
        ("openai:m:prompt_tokens", 2006),
        ("openai:m:completion_tokens", 300 - 192),
        ("openai:m:reasoning_tokens", 192),
    ]


def test_an_unknown_nested_field_is_ignored_and_logged_once(
    shipped: MeteringService, caplog: pytest.LogCaptureFixture
) -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "new_breakdown": {"x_tokens": 1}}
    with caplog.at_level(logging.WARNING, logger="usagemeter"):
        usage_items(usage, "groq:llama-3.1-8b-instant", shipped.cost_map)
        usage_items(usage, "groq:llama-3.1-8b-instant", shipped.cost_map)
    assert [r.getMessage() for r in caplog.records if "new_breakdown" in r.getMessage()] == [
        "usagemeter ignores the groq usage field 'new_breakdown' (dict): "
        "it is not a count it knows how to price"
    ]


def test_the_unknown_field_log_is_bounded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, shipped: MeteringService
) -> None:
    # Field names come from payloads, which strangers may write: the names remembered (to log each
    # once) stop at _MAX_WARNED, and the log says so once.
    monkeypatch.setattr(providers, "_warned", set())
    limit = providers._MAX_WARNED
    with caplog.at_level(logging.WARNING, logger="usagemeter"):
        for n in range(limit + 50):
            usage_items({"prompt_tokens": 1, f"junk_{n}": "x"}, "openai:gpt-5.1", shipped.cost_map)
    assert len(providers._warned) == limit
    ignored = [r for r in caplog.records if "usagemeter ignores the openai usage field" in r.getMessage()]
    assert len(ignored) == limit
    assert [r.getMessage() for r in caplog.records if "its limit" in r.getMessage()] == [
        f"usagemeter has logged {limit} unknown usage fields, its limit: further unknown fields are "
        "ignored without a log line"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="usagemeter"):
        usage_items({"prompt_tokens": 1, "junk_0": "x", "junk_late": "x"}, "openai:gpt-5.1", shipped.cost_map)
    assert caplog.records == []  # one seen already, one past the bound: neither logged again
    assert len(providers._warned) == limit


# --- A count named twice (issue 18, point 9) ----------------------------------------------------


@pytest.mark.parametrize(
    ("model_prefix", "usage", "same_as"),
    [
        (  # the payload: 1,000 cached tokens, not 2,000
            "openai:gpt-5.1",
            {"prompt_tokens": 1000, "prompt_tokens_details": {"cached_tokens": 1000}, "cached_tokens": 1000},
            {"prompt_tokens": 1000, "prompt_tokens_details": {"cached_tokens": 1000}},
        ),
        (  # a top-level cached_tokens alone is the cached tokens, part of prompt_tokens: 10, not 20
            "openai:gpt-5.1",
            {"prompt_tokens": 10, "cached_tokens": 10},
            {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 10}},
        ),
        (
            "openai:gpt-5.1",
            {"prompt_tokens": 10, "completion_tokens": 3, "input_tokens": 10, "output_tokens": 3},
            {"prompt_tokens": 10, "completion_tokens": 3},
        ),
        (
            "openai:gpt-5.1",
            {"prompt_tokens": 10, "completion_tokens": 8, "reasoning_tokens": 5},
            {
                "prompt_tokens": 10,
                "completion_tokens": 8,
                "completion_tokens_details": {"reasoning_tokens": 5},
            },
        ),
        (  # OpenRouter's cost map names at the top level
            "openrouter:openai/gpt-5.1",
            {
                "prompt_tokens": 10,
                "prompt": 10,
                "prompt_tokens_details": {"cached_tokens": 4},
                "input_cache_read": 4,
            },
            {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 4}},
        ),
        (
            "together:model-fallback-test-1",
            {
                "prompt_tokens": 10,
                "prompt_tokens_details": {"cached_tokens": 4},
                "cached_tokens": 4,
                "input": 10,
            },
            {"prompt_tokens": 10, "cached_tokens": 4},
        ),
        (
            "deepseek:deepseek-chat",
            {"prompt_tokens": 10, "prompt_cache_hit_tokens": 6, "cached_tokens": 6},
            {"prompt_tokens": 10, "prompt_cache_hit_tokens": 6},
        ),
        (
            "claude:claude-sonnet-4-5",
            {
                "input_tokens": 1,
                "output_tokens": 1,
                "cache_creation_input_tokens": 10,
                "cache_creation": {"ephemeral_5m_input_tokens": 4, "ephemeral_1h_input_tokens": 6},
                "ephemeral_5m_input_tokens": 4,
                "ephemeral_1h_input_tokens": 6,
            },
            {
                "input_tokens": 1,
                "output_tokens": 1,
                "cache_creation_input_tokens": 10,
                "cache_creation": {"ephemeral_5m_input_tokens": 4, "ephemeral_1h_input_tokens": 6},
            },
        ),
        (  # a top-level split of the cache writes is their split
            "claude:claude-sonnet-4-5",
            {
                "input_tokens": 1,
                "output_tokens": 1,
                "cache_creation_input_tokens": 10,
                "ephemeral_1h_input_tokens": 10,
            },
            {
                "input_tokens": 1,
                "output_tokens": 1,
                "cache_creation_input_tokens": 10,
                "cache_creation": {"ephemeral_1h_input_tokens": 10},
            },
        ),
        (
            "claude:claude-sonnet-4-5",
            {
                "input_tokens": 1,
                "output_tokens": 1,
                "server_tool_use": {"web_search_requests": 2},
                "web_search_requests": 2,
            },
            {"input_tokens": 1, "output_tokens": 1, "server_tool_use": {"web_search_requests": 2}},
        ),
        (
            "gemini:gemini-2.5-pro",
            {
                "promptTokenCount": 10,
                "prompt_token_count": 10,
                "candidatesTokenCount": 2,
                "candidates_token_count": 2,
            },
            {"promptTokenCount": 10, "candidatesTokenCount": 2},
        ),
    ],
)
def test_a_count_named_twice_is_booked_once(
    shipped: MeteringService, model_prefix: str, usage: dict[str, Any], same_as: dict[str, Any]
) -> None:
    expected = dict(usage_items(same_as, model_prefix, shipped.cost_map))
    check_charge(shipped, usage, model_prefix, expected)


_CACHED_PRICED = CostMap.from_dict(
    {"openai:m:prompt_tokens": 4, "openai:m:cached_tokens": 1, "openai:m:completion_tokens": 16}
)


def _booked(items: list[tuple[str, int]]) -> dict[str, int]:
    return {usage_type.rsplit(":", 1)[1]: units for usage_type, units in items}


@given(
    prompt=st.integers(0, 10_000),
    cached=st.integers(0, 10_000),
    duplicate=st.integers(0, 10_000),
    in_breakdown=st.booleans(),
)
def test_a_top_level_duplicate_never_changes_the_bill_and_cached_never_exceeds_prompt(
    prompt: int, cached: int, duplicate: int, in_breakdown: bool
) -> None:
    # The rule: a top-level field named like a count the dialect reads is one more report of that
    # count. The bill is the one the dialect's own field gives, or a ValueError when the reports
    # disagree; cached tokens above the prompt tokens are a ValueError whatever reports them.
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": 1}
    if in_breakdown:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    with_duplicate = {**usage, "cached_tokens": duplicate}
    reported = cached if in_breakdown else duplicate  # the breakdown's count, else the top level's
    if reported > prompt or (in_breakdown and duplicate != cached):
        with pytest.raises(ValueError, match="cached_tokens"):
            usage_items(with_duplicate, "openai:m", _CACHED_PRICED)
        return
    booked = _booked(usage_items(with_duplicate, "openai:m", _CACHED_PRICED))
    assert booked.get("cached_tokens", 0) == reported <= prompt
    assert booked["prompt_tokens"] + booked.get("cached_tokens", 0) == prompt  # each token once
    if in_breakdown:
        assert usage_items(with_duplicate, "openai:m", _CACHED_PRICED) == usage_items(
            usage, "openai:m", _CACHED_PRICED
        )


def test_try_record_usage_object_records_the_whole_payload_only_if_affordable() -> None:
    prices = CostMap.from_dict(
        {"openai:m:prompt_tokens": 1, "openai:m:cached_tokens": "0.5", "openai:m:completion_tokens": 4}
    )
    service = MeteringService(prices, policies=[Policy("temp_free", 1_000)])
    actor = Actor("tess")
    usage = {
        "prompt_tokens": 200,
        "completion_tokens": 150,
        "total_tokens": 350,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    # 100 uncached + 100 cached x 0.5 + 150 x 4 = 750 µ¢
    assert service.try_record_usage_object(usage, actor, "openai:m") == 750
    assert service.try_record_usage_object(usage, actor, "openai:m") is None  # 1,500 > 1,000
    details = service.get_actor_current_month_usage_details(actor)["usage"]
    assert details["total"] == 750 and details["openai:m:completion_tokens"]["count"] == 1
    assert service._stats()["refusals"] == 1
    with pytest.raises(ValueError, match="cost_overrides"):
        service.try_record_usage_object(usage, actor, "openai:m", {"nope": 1})
