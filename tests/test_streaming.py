"""Metered streams (issue 11, point 5): chunks pass unchanged, and the call is recorded exactly once
when the stream ends, with the provider's usage report or the documented estimate."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import pytest
from anthropic.types import RawMessageStreamEvent
from openai.types.chat import ChatCompletionChunk
from pydantic import TypeAdapter
from support import FakeClock, usage_of
from usagemeter import Actor, CostMap, MeteringService, UnknownUsageType
from usagemeter.aio import AsyncMeteringService
from usagemeter.streaming import AsyncMeteredStream, MeteredStream, ameter_stream, meter_stream

GPT = "openai:gpt-5.1"  # 125 µ¢ a prompt token, 13 a cached one, 1000 a completion token
SONNET = "claude:claude-sonnet-4-5-20250929"  # 300 input, 30 cache read, 1500 output
FLASH = "gemini:gemini-2.5-flash"  # 12 prompt, 48 candidates


@pytest.fixture
def shipped(default_cost_map: CostMap, clock: FakeClock) -> MeteringService:
    return MeteringService(default_cost_map, clock=clock)


def chat_chunk(text: str) -> dict[str, Any]:
    # https://platform.openai.com/docs/api-reference/chat-streaming/streaming
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-5.1",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        "usage": None,
    }


CHAT_TEXT = ["Hello", ", world", "! How are you today?"]  # 5 + 7 + 20 = 32 characters: 8 tokens
CHAT_CHUNKS = [chat_chunk(text) for text in CHAT_TEXT]
CHAT_USAGE_CHUNK = {  # stream_options={"include_usage": True}: the last chunk, no choices
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "gpt-5.1",
    "choices": [],
    "usage": {
        "prompt_tokens": 1000,
        "completion_tokens": 9,
        "total_tokens": 1009,
        "prompt_tokens_details": {"cached_tokens": 600},
    },
}
CHAT_REPORT_COST = 400 * 125 + 600 * 13 + 9 * 1000


def gpt_usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    """The usage report of an actor after one call to ``GPT``."""
    report: dict[str, Any] = {
        "total": prompt * 125 + cached * 13 + completion * 1000,
        f"{GPT}:prompt_tokens": {"units": prompt, "cost": prompt * 125, "count": 1},
        f"{GPT}:completion_tokens": {"units": completion, "cost": completion * 1000, "count": 1},
    }
    if cached:
        report[f"{GPT}:cached_tokens"] = {"units": cached, "cost": cached * 13, "count": 1}
    return {k: v for k, v in report.items() if k == "total" or v["units"]}


class Upstream:
    """A provider's stream: yields ``chunks``, then raises ``error`` if given; counts closes."""

    def __init__(self, chunks: Iterable[Any], error: BaseException | None = None) -> None:
        self.chunks = list(chunks)
        self.error = error
        self.closed = 0
        self.read = 0

    def __iter__(self) -> Iterator[Any]:
        for chunk in self.chunks:
            self.read += 1
            yield chunk
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.closed += 1


# --- Sync ---------------------------------------------------------------------------------------


def test_chunks_pass_unchanged_and_the_usage_report_is_recorded(shipped: MeteringService) -> None:
    actor = Actor("u")
    chunks = [*CHAT_CHUNKS, CHAT_USAGE_CHUNK]
    stream = meter_stream(shipped, actor, GPT, chunks, prompt_tokens=5)
    assert isinstance(stream, MeteredStream)
    assert usage_of(shipped, actor) == {"total": 0}  # nothing before the end
    received = list(stream)
    assert all(a is b for a, b in zip(received, chunks, strict=True))
    assert stream.usage == CHAT_USAGE_CHUNK["usage"]
    assert stream.estimated is False
    assert stream.total == CHAT_REPORT_COST
    assert usage_of(shipped, actor) == gpt_usage(400, 9, cached=600)
    stream.close()  # exactly once: neither close() nor collection records again
    del stream
    gc.collect()
    assert usage_of(shipped, actor) == gpt_usage(400, 9, cached=600)


def test_sdk_chunks_give_the_same_charge(shipped: MeteringService) -> None:
    actor = Actor("u")
    chunks = [ChatCompletionChunk.model_validate(c) for c in [*CHAT_CHUNKS, CHAT_USAGE_CHUNK]]
    with meter_stream(shipped, actor, GPT, chunks) as stream:
        assert list(stream) == chunks
    assert usage_of(shipped, actor) == gpt_usage(400, 9, cached=600)


def test_without_a_report_the_estimate_is_recorded(shipped: MeteringService) -> None:
    # Output: ceil(32 characters / 4) = 8 tokens; input: ceil(len(prompt_text) / 4) = ceil(10 / 4) = 3.
    actor = Actor("u")
    stream = meter_stream(shipped, actor, GPT, CHAT_CHUNKS, prompt_text="0123456789")
    assert list(stream) == CHAT_CHUNKS
    assert stream.estimated is True
    assert stream.usage == {"prompt_tokens": 3, "completion_tokens": 8}
    assert usage_of(shipped, actor) == gpt_usage(3, 8)
    # prompt_tokens wins over prompt_text; neither: 0 input tokens. 33 characters: 9 tokens.
    other = Actor("v")
    list(
        meter_stream(
            shipped, other, GPT, [*CHAT_CHUNKS, chat_chunk("!")], prompt_tokens=40, prompt_text="x" * 99
        )
    )
    assert usage_of(shipped, other) == gpt_usage(40, 9)
    third = Actor("w")
    list(meter_stream(shipped, third, GPT, CHAT_CHUNKS))
    assert usage_of(shipped, third) == gpt_usage(0, 8)


def test_the_estimate_counts_every_kind_of_generated_text(shipped: MeteringService) -> None:
    chunks = [
        {"choices": [{"delta": {"reasoning_content": "abcd"}}]},  # DeepSeek reasoning: 4
        {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": '{"a":1}'}}]}}]},  # 7
        {"choices": [{"delta": {"refusal": "no"}}, {"delta": {"content": "yes"}}]},  # 2 + 3
        {"choices": [{"text": "legacy"}]},  # a legacy completion chunk: 6
        {"choices": [{"delta": {"role": "assistant"}}]},  # 0
    ]  # 22 characters: 6 tokens
    actor = Actor("u")
    list(meter_stream(shipped, actor, GPT, chunks))
    assert usage_of(shipped, actor) == gpt_usage(0, 6)


def test_consumer_breaking_early_records_what_was_streamed_once(shipped: MeteringService) -> None:
    actor = Actor("u")
    upstream = Upstream([*CHAT_CHUNKS, CHAT_USAGE_CHUNK])
    with meter_stream(shipped, actor, GPT, upstream, prompt_tokens=12) as stream:
        for chunk in stream:
            assert chunk is CHAT_CHUNKS[0]
            break
    assert upstream.read == 1
    assert upstream.closed == 1
    assert stream.finished and stream.estimated
    assert usage_of(shipped, actor) == gpt_usage(12, 2)  # "Hello": ceil(5 / 4) = 2
    with pytest.raises(StopIteration):
        next(stream)  # a closed stream yields nothing more
    assert usage_of(shipped, actor) == gpt_usage(12, 2)


def test_a_stream_dropped_unclosed_records_when_collected(shipped: MeteringService) -> None:
    actor = Actor("u")
    for chunk in meter_stream(shipped, actor, GPT, iter(CHAT_CHUNKS)):
        assert chunk is CHAT_CHUNKS[0]
        break
    gc.collect()
    assert usage_of(shipped, actor) == gpt_usage(0, 2)


def test_close_closes_the_upstream(shipped: MeteringService) -> None:
    actor = Actor("u")

    def generator() -> Iterator[dict[str, Any]]:
        try:
            yield from CHAT_CHUNKS
        finally:
            closed.append(True)

    closed: list[bool] = []
    stream = meter_stream(shipped, actor, GPT, generator())
    next(stream)
    stream.close()
    stream.close()
    assert closed == [True]
    assert usage_of(shipped, actor) == gpt_usage(0, 2)


def test_upstream_raising_charges_what_was_streamed_and_propagates(shipped: MeteringService) -> None:
    actor = Actor("u")
    received = []
    with pytest.raises(ConnectionResetError, match="peer"):
        for chunk in meter_stream(
            shipped, actor, GPT, Upstream(CHAT_CHUNKS[:2], ConnectionResetError("peer"))
        ):
            received.append(chunk)
    assert received == CHAT_CHUNKS[:2]
    assert usage_of(shipped, actor) == gpt_usage(0, 3)  # "Hello, world": 12 characters


def test_recording_errors_are_not_swallowed(shipped: MeteringService) -> None:
    actor = Actor("u")
    with pytest.raises(UnknownUsageType, match="openai:gpt-9:prompt_tokens"):
        list(meter_stream(shipped, actor, "openai:gpt-9", CHAT_CHUNKS))
    # With an upstream error too: the recording error is raised, chained to the upstream's.
    with pytest.raises(UnknownUsageType) as raised:
        list(meter_stream(shipped, actor, "openai:gpt-9", Upstream(CHAT_CHUNKS, TimeoutError("slow"))))
    assert isinstance(raised.value.__context__, TimeoutError)
    with pytest.raises(UnknownUsageType):
        with meter_stream(shipped, actor, "openai:gpt-9", CHAT_CHUNKS) as stream:
            next(stream)
    assert usage_of(shipped, actor) == {"total": 0}


def test_bad_arguments_raise_at_once(shipped: MeteringService) -> None:
    actor = Actor("u")
    with pytest.raises(TypeError, match="iterable"):
        meter_stream(shipped, actor, GPT, 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prompt_tokens"):
        meter_stream(shipped, actor, GPT, [], prompt_tokens=-1)
    with pytest.raises(TypeError, match="prompt_text"):
        meter_stream(shipped, actor, GPT, [], prompt_text=b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="actor"):
        meter_stream(shipped, "u", GPT, [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="service"):
        meter_stream(object(), actor, GPT, [])
    with pytest.raises(ValueError, match="model_prefix"):
        meter_stream(shipped, actor, "", [])

    class AsyncOnly:
        async def record_usage_object(self, usage: object, actor: Actor, model_prefix: str) -> int:
            return 0

    with pytest.raises(TypeError, match="ameter_stream"):
        meter_stream(AsyncOnly(), actor, GPT, [])
    gc.collect()  # a stream that failed to build records nothing (nor fails) when collected
    assert usage_of(shipped, actor) == {"total": 0}


# --- Anthropic, Responses and Gemini streams -------------------------------------------------

# https://docs.anthropic.com/en/docs/build-with-claude/streaming
ANTHROPIC_EVENTS: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-4-5-20250929",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 25, "cache_read_input_tokens": 100, "output_tokens": 1},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    # 5 + 75 = 80 characters: an estimate of 20 tokens, above the 15 the report counts.
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": " there" * 12 + "!!!"},
    },
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 15},
    },
    {"type": "message_stop"},
]


def sonnet_usage(input_tokens: int, output_tokens: int, cache_read: int) -> dict[str, Any]:
    return {
        "total": input_tokens * 300 + output_tokens * 1500 + cache_read * 30,
        f"{SONNET}:input_tokens": {"units": input_tokens, "cost": input_tokens * 300, "count": 1},
        f"{SONNET}:output_tokens": {"units": output_tokens, "cost": output_tokens * 1500, "count": 1},
        f"{SONNET}:cache_read_input_tokens": {"units": cache_read, "cost": cache_read * 30, "count": 1},
    }


def test_anthropic_events_as_dicts_and_sdk_objects(shipped: MeteringService) -> None:
    actor = Actor("dicts")
    stream = meter_stream(shipped, actor, "claude:claude-sonnet-4-5", ANTHROPIC_EVENTS)
    assert list(stream) == ANTHROPIC_EVENTS
    assert stream.estimated is False
    # message_delta's count replaces message_start's 1, and a final report is taken as it is.
    assert usage_of(shipped, actor) == sonnet_usage(25, 15, 100)
    # The SDK gives pings no type of their own: leave them out.
    events = [
        TypeAdapter(RawMessageStreamEvent).validate_python(e) for e in ANTHROPIC_EVENTS if e["type"] != "ping"
    ]
    sdk = Actor("sdk")
    list(meter_stream(shipped, sdk, "claude:claude-sonnet-4-5", events))
    assert usage_of(shipped, sdk) == sonnet_usage(25, 15, 100)


def test_an_anthropic_stream_cut_short_keeps_its_exact_input(shipped: MeteringService) -> None:
    # Closed before message_delta: message_start's input counts, output raised to the estimate
    # (80 characters, 20 tokens, more than message_start's 1).
    actor = Actor("u")
    with meter_stream(shipped, actor, SONNET, ANTHROPIC_EVENTS) as stream:
        for event in stream:
            if event["type"] == "content_block_stop":
                break
    assert stream.estimated is False
    assert usage_of(shipped, actor) == sonnet_usage(25, 20, 100)


# https://platform.openai.com/docs/api-reference/responses-streaming
RESPONSES_EVENTS: list[dict[str, Any]] = [
    {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "usage": None}},
    {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "delta": "Hi"},
    {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "delta": " there"},
    {
        "type": "response.completed",
        "response": {
            "id": "resp_1",
            "status": "completed",
            "usage": {
                "input_tokens": 36,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 87,
                "output_tokens_details": {"reasoning_tokens": 80},
                "total_tokens": 123,
            },
        },
    },
]


def test_openai_responses_events(shipped: MeteringService) -> None:
    actor = Actor("u")
    list(meter_stream(shipped, actor, GPT, RESPONSES_EVENTS))
    assert usage_of(shipped, actor) == gpt_usage(36, 87)
    cut = Actor("cut")  # without response.completed: "Hi there" is 8 characters, 2 tokens
    list(meter_stream(shipped, cut, GPT, RESPONSES_EVENTS[:3], prompt_tokens=36))
    assert usage_of(shipped, cut) == gpt_usage(36, 2)


def gemini_chunk(text: str, usage: dict[str, int], finish: str | None = None) -> dict[str, Any]:
    # https://ai.google.dev/api/generate-content#method:-models.streamgeneratecontent
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash"}


def test_gemini_chunks(shipped: MeteringService) -> None:
    chunks = [
        gemini_chunk("The quick brown fox", {"promptTokenCount": 9, "totalTokenCount": 9}),
        gemini_chunk(
            " jumps.",
            {
                "promptTokenCount": 9,
                "candidatesTokenCount": 7,
                "thoughtsTokenCount": 20,
                "totalTokenCount": 36,
            },
            finish="STOP",
        ),
    ]
    actor = Actor("u")
    list(meter_stream(shipped, actor, FLASH, chunks))
    assert usage_of(shipped, actor) == {
        "total": 9 * 12 + 27 * 48,
        f"{FLASH}:promptTokenCount": {"units": 9, "cost": 9 * 12, "count": 1},
        f"{FLASH}:candidatesTokenCount": {"units": 27, "cost": 27 * 48, "count": 1},
    }
    cut = Actor("cut")  # only the first chunk: its prompt count, and 19 characters = 5 tokens out
    with meter_stream(shipped, cut, FLASH, chunks) as stream:
        next(stream)
    assert usage_of(shipped, cut) == {
        "total": 9 * 12 + 5 * 48,
        f"{FLASH}:promptTokenCount": {"units": 9, "cost": 9 * 12, "count": 1},
        f"{FLASH}:candidatesTokenCount": {"units": 5, "cost": 5 * 48, "count": 1},
    }


# --- Async --------------------------------------------------------------------------------------


class AsyncUpstream:
    """An async provider stream (as ``openai.AsyncStream``): chunks, then maybe an error."""

    def __init__(self, chunks: Iterable[Any], error: BaseException | None = None) -> None:
        self.chunks = list(chunks)
        self.error = error
        self.closed = 0

    async def _generate(self) -> AsyncIterator[Any]:
        for chunk in self.chunks:
            await asyncio.sleep(0)
            yield chunk
        if self.error is not None:
            raise self.error

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._generate()

    async def close(self) -> None:
        self.closed += 1


def test_async_with_a_sync_and_an_async_service(shipped: MeteringService) -> None:
    async def main() -> None:
        sync_actor, async_actor = Actor("sync"), Actor("async")
        stream = ameter_stream(shipped, sync_actor, GPT, AsyncUpstream([*CHAT_CHUNKS, CHAT_USAGE_CHUNK]))
        assert isinstance(stream, AsyncMeteredStream)
        assert [chunk async for chunk in stream] == [*CHAT_CHUNKS, CHAT_USAGE_CHUNK]
        assert stream.total == CHAT_REPORT_COST
        service = AsyncMeteringService(shipped)
        async with ameter_stream(
            service, async_actor, GPT, AsyncUpstream(CHAT_CHUNKS), prompt_text="abc"
        ) as s:
            async for _ in s:
                pass
        assert s.usage == {"prompt_tokens": 1, "completion_tokens": 8}
        assert await service.get_actor_current_month_usage_details(async_actor) == {
            "usage": gpt_usage(1, 8),
            "app_totals": {"os-global": {"total": 1 * 125 + 8 * 1000, "count": 2}},
        }
        assert usage_of(shipped, sync_actor) == gpt_usage(400, 9, cached=600)

    asyncio.run(main())


def test_async_consumer_breaking_early(shipped: MeteringService) -> None:
    async def main() -> AsyncUpstream:
        upstream = AsyncUpstream([*CHAT_CHUNKS, CHAT_USAGE_CHUNK])
        async with ameter_stream(
            AsyncMeteringService(shipped), Actor("u"), GPT, upstream, prompt_tokens=7
        ) as s:
            async for _ in s:
                break
        await s.aclose()  # idempotent
        return upstream

    upstream = asyncio.run(main())
    assert upstream.closed == 1
    assert usage_of(shipped, Actor("u")) == gpt_usage(7, 2)


def test_async_upstream_raising(shipped: MeteringService) -> None:
    async def main() -> list[Any]:
        received = []
        upstream = AsyncUpstream(CHAT_CHUNKS[:2], ConnectionResetError("peer"))
        async for chunk in ameter_stream(AsyncMeteringService(shipped), Actor("u"), GPT, upstream):
            received.append(chunk)
        return received

    with pytest.raises(ConnectionResetError):
        asyncio.run(main())
    assert usage_of(shipped, Actor("u")) == gpt_usage(0, 3)


def test_async_recording_errors_are_not_swallowed(shipped: MeteringService) -> None:
    async def main() -> None:
        async for _ in ameter_stream(
            AsyncMeteringService(shipped), Actor("u"), "openai:gpt-9", AsyncUpstream(CHAT_CHUNKS)
        ):
            pass

    with pytest.raises(UnknownUsageType, match="openai:gpt-9"):
        asyncio.run(main())
    with pytest.raises(TypeError, match="async iterable"):
        ameter_stream(shipped, Actor("u"), GPT, CHAT_CHUNKS)  # type: ignore[arg-type]


def test_a_sync_stream_on_an_async_service_records_through_its_sync_service(shipped: MeteringService) -> None:
    actor = Actor("u")
    list(meter_stream(AsyncMeteringService(shipped), actor, GPT, [*CHAT_CHUNKS, CHAT_USAGE_CHUNK]))
    assert usage_of(shipped, actor) == gpt_usage(400, 9, cached=600)


# ---------------------------------------------------------------------------------------------
# Holds: the worst case is held while the reply streams, the real usage settles it.


def test_a_hold_is_settled_with_what_the_stream_used(shipped: MeteringService) -> None:
    from usagemeter.llm import reserve_completion

    actor = Actor("held")
    budget = shipped.get_remaining_usage(actor)
    worst = 1000 * 125 + 500 * 1000  # the prompt, and max_tokens=500 of output
    hold = reserve_completion(shipped, actor, GPT, prompt_tokens=1000, max_tokens=500)
    assert hold is not None and hold.amount == worst
    stream = meter_stream(shipped, actor, GPT, [*CHAT_CHUNKS, CHAT_USAGE_CHUNK], hold=hold)
    assert next(stream) == CHAT_CHUNKS[0]
    # A second request in flight sees the held worst case, not the budget before it.
    assert shipped.get_remaining_usage(actor) == budget - worst
    assert reserve_completion(shipped, actor, GPT, 1000, (budget - worst) // 1000 + 1) is None
    assert list(stream) == [*CHAT_CHUNKS[1:], CHAT_USAGE_CHUNK]
    assert hold.state == "settled" and stream.total == CHAT_REPORT_COST
    assert usage_of(shipped, actor) == gpt_usage(400, 9, cached=600)
    assert shipped.get_remaining_usage(actor) == budget - CHAT_REPORT_COST


def test_a_hold_is_settled_by_the_estimate_when_the_stream_breaks(shipped: MeteringService) -> None:
    from usagemeter.llm import areserve_completion

    async def scenario() -> None:
        service = AsyncMeteringService(shipped)
        actor = Actor("async-held")
        hold = await areserve_completion(service, actor, GPT, prompt_tokens=40, max_tokens=100)
        assert hold is not None

        async def upstream() -> AsyncIterator[dict[str, Any]]:
            yield CHAT_CHUNKS[0]
            raise ConnectionError("the provider hung up")

        with pytest.raises(ConnectionError):
            async for _ in ameter_stream(service, actor, GPT, upstream(), prompt_tokens=40, hold=hold):
                pass
        assert hold.state == "settled"
        assert usage_of(shipped, actor) == gpt_usage(40, 2)  # "Hello": ceil(5 / 4) tokens
        assert await service.get_remaining_usage(actor) == shipped.get_remaining_usage(Actor("fresh")) - (
            40 * 125 + 2 * 1000
        )

    asyncio.run(scenario())


def test_a_hold_of_another_actor_or_not_a_hold_is_refused(shipped: MeteringService) -> None:
    hold = shipped.reserve(Actor("a"), cost=10)
    assert hold is not None
    with pytest.raises(ValueError, match="the hold is"):
        meter_stream(shipped, Actor("b"), GPT, CHAT_CHUNKS, hold=hold)
    with pytest.raises(TypeError, match=r"usagemeter\.Hold"):
        meter_stream(shipped, Actor("a"), GPT, CHAT_CHUNKS, hold=5)  # type: ignore[arg-type]
    assert hold.state == "held"


# --- The seed system's edge cases (issue 19, point 4) ------------------------------------------


class UpstreamDown(RuntimeError):
    """The provider failed the call."""


ROLE_ONLY = {  # OpenAI's first chunk: a role and no text
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "gpt-5.1",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
    "usage": None,
}


@pytest.mark.parametrize("chunks", [[], [ROLE_ONLY]], ids=["no chunk", "a role chunk"])
def test_a_stream_that_fails_before_any_output_charges_nothing(
    shipped: MeteringService, chunks: list[dict[str, Any]]
) -> None:
    actor = Actor("u")
    stream = meter_stream(shipped, actor, GPT, Upstream(chunks, UpstreamDown("503")), prompt_tokens=1_000)
    with pytest.raises(UpstreamDown):
        list(stream)
    assert stream.finished and stream.usage is None and stream.total is None
    assert usage_of(shipped, actor) == {"total": 0}


def test_a_stream_that_fails_after_some_output_charges_what_was_streamed(shipped: MeteringService) -> None:
    actor = Actor("u")
    stream = meter_stream(
        shipped, actor, GPT, Upstream(CHAT_CHUNKS[:1], UpstreamDown("reset")), prompt_tokens=40
    )
    with pytest.raises(UpstreamDown):
        list(stream)
    assert stream.estimated is True
    assert usage_of(shipped, actor) == gpt_usage(40, 2)  # "Hello": ceil(5 / 4) = 2 tokens


def test_a_failed_response_with_its_own_usage_report_is_charged_that_report(shipped: MeteringService) -> None:
    # The Responses API's response.failed event carries the provider's bill: it is charged.
    failed = {"type": "response.failed", "response": {"usage": {"input_tokens": 70, "output_tokens": 0}}}
    actor = Actor("u")
    stream = meter_stream(shipped, actor, GPT, Upstream([failed], UpstreamDown("failed")))
    with pytest.raises(UpstreamDown):
        list(stream)
    assert stream.estimated is False
    assert usage_of(shipped, actor) == gpt_usage(70, 0)


def test_a_failure_before_any_output_releases_the_hold(shipped: MeteringService) -> None:
    from usagemeter.llm import reserve_completion

    actor = Actor("u")
    hold = reserve_completion(shipped, actor, GPT, prompt_tokens=1_000, max_tokens=500)
    assert hold is not None and shipped.get_actor_budget(actor)["held"] > 0
    stream = meter_stream(shipped, actor, GPT, Upstream([], UpstreamDown("503")), hold=hold)
    with pytest.raises(UpstreamDown):
        list(stream)
    assert shipped.get_actor_budget(actor)["held"] == 0
    assert usage_of(shipped, actor) == {"total": 0}


@pytest.mark.parametrize(
    "empty", [{}, {"prompt_tokens": None, "completion_tokens": None}], ids=["{}", "only None"]
)
def test_a_usage_report_present_but_empty_is_no_report_and_the_estimate_is_charged(
    shipped: MeteringService, empty: dict[str, Any]
) -> None:
    actor = Actor("u")
    chunks = [*CHAT_CHUNKS, {**CHAT_USAGE_CHUNK, "usage": empty}]
    stream = meter_stream(shipped, actor, GPT, chunks, prompt_tokens=12)
    assert list(stream) == chunks
    assert stream.estimated is True
    assert usage_of(shipped, actor) == gpt_usage(12, 8)


def test_an_anthropic_stream_with_empty_usage_is_charged_the_estimate(shipped: MeteringService) -> None:
    actor = Actor("u")
    events = [
        {"type": "message_start", "message": {"usage": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "abcdefgh"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}},
        {"type": "message_stop"},
    ]
    stream = meter_stream(shipped, actor, SONNET, events, prompt_tokens=10)
    list(stream)
    assert stream.estimated is True
    assert usage_of(shipped, actor)["total"] == 10 * 300 + 2 * 1500


def test_an_async_stream_that_fails_before_any_output_charges_nothing(shipped: MeteringService) -> None:
    async def failing() -> AsyncIterator[dict[str, Any]]:
        if shipped is not None:  # always: the generator raises before yielding anything
            raise UpstreamDown("503")
        yield ROLE_ONLY

    async def main() -> None:
        service = AsyncMeteringService(shipped)
        stream = ameter_stream(service, Actor("u"), GPT, failing(), prompt_tokens=1_000)
        with pytest.raises(UpstreamDown):
            async for _ in stream:
                pass
        assert stream.usage is None

    asyncio.run(main())
    assert usage_of(shipped, Actor("u")) == {"total": 0}
