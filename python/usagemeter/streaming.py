"""Metering a streamed LLM response: the provider's usage report if one came, else an estimate.

``meter_stream(service, actor, model_prefix, chunks)`` wraps a provider's stream (an iterable of
chunks, dicts or SDK objects) and yields every chunk unchanged; ``ameter_stream`` does the same
for an async iterable. When the stream ends, however it ends (exhausted, closed early by the
consumer, or raising), the call is recorded exactly once through ``record_usage_object``:

- the provider's own usage report when the stream carried a final one: an OpenAI chat
  completion chunk with ``usage`` (``stream_options={"include_usage": True}``; Mistral, xAI,
  DeepSeek, Groq, Together and OpenRouter send the same chunk), an OpenAI Responses
  ``response.completed`` / ``response.incomplete`` / ``response.failed`` event's
  ``response.usage``, Anthropic's ``message_start`` usage updated by ``message_delta``'s
  (cumulative) usage, or a Gemini chunk's ``usageMetadata`` on the chunk that carries a
  ``finishReason``;
- a report that never became final (Anthropic's ``message_start`` without a ``message_delta``,
  Gemini's ``usageMetadata`` before the last chunk) is recorded with its output count raised to
  at least the estimate below: its input counts are exact;
- no report at all: **the estimate**, output tokens = ceil(characters of generated text streamed
  / 4) and input tokens = ``prompt_tokens`` if given, else ceil(``len(prompt_text)`` / 4) if
  given, else 0. Generated text is every text delta the stream carried: OpenAI chat
  ``choices[].delta.content``, ``refusal``, ``reasoning_content`` / ``reasoning``, tool-call
  ``arguments`` (or ``choices[].text`` of legacy completions), Responses
  ``response.output_text.delta`` / ``refusal.delta`` / ``function_call_arguments.delta`` /
  ``reasoning_text.delta``, Anthropic ``content_block_delta`` ``text`` / ``thinking`` /
  ``partial_json``, Gemini ``candidates[].content.parts[].text``. Characters are Python ``str``
  code points. Reasoning the provider never streams cannot be seen: ask for the usage report.

With ``hold=`` (a ``Hold`` from ``service.reserve`` or ``usagemeter.llm.reserve_completion``,
made before the call), the end of the stream settles the hold with that usage instead: the
worst case was held while the reply streamed, and what it did not use is free again.

A usage report that is present but empty (``usage: {}``, or every count None) is no report: the
estimate is charged. A stream whose upstream raises before producing any output (no generated
text, no final usage report) charges nothing, as the system usagemeter grows out of does: the
call failed; with ``hold=`` the hold is released. If the upstream raises after some output, what
was streamed is recorded and the upstream's exception propagates;
if recording itself fails (an unknown model, a closed service), that error is raised, chained to
the upstream's one when there was one. Close a stream you stop reading (``with`` /
``async with``, or ``close()`` / ``aclose()``) to record at once and see recording errors; a
stream dropped unclosed records when it is garbage-collected, where an error can only be
reported as unraisable.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from usagemeter._core import Actor
from usagemeter.holds import Hold
from usagemeter.providers import _count, estimate_tokens, estimated_usage, service_tier_of, to_mapping

__all__ = ["AsyncMeteredStream", "MeteredStream", "ameter_stream", "meter_stream"]

T = TypeVar("T")


class _RecordsUsage(Protocol):
    def record_usage_object(
        self, usage: Any, actor: Actor, model_prefix: str, /, *, service_tier: str | None = None
    ) -> Any: ...


def _get(obj: object, name: str) -> Any:
    """``obj[name]`` for a mapping, ``obj.name`` for an SDK object; None when absent."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _text(value: object) -> int:
    return len(value) if isinstance(value, str) else 0


def _seq(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _report(usage: object) -> object:
    """``usage`` if it reports something, else None: a report that is present but empty
    (``usage: {}``, or only None values) is no report, and the stream is charged the estimate."""
    if usage is None:
        return None
    try:
        fields = to_mapping(usage)
    except Exception:
        return usage  # not a shape this module reads: recording names the problem
    return usage if any(value is not None for value in fields.values()) else None


# Responses API stream events that carry generated text in ``delta``:
# https://platform.openai.com/docs/api-reference/responses-streaming
_RESPONSES_TEXT_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_text.delta",
    }
)
_RESPONSES_END_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
# The output count of each report shape, raised to the estimate when the report is not final.
_OUTPUT_FIELDS = ("output_tokens", "completion_tokens", "candidatesTokenCount", "candidates_token_count")


class _StreamUsage:
    """What a stream has shown so far: the provider's usage report, and the text generated."""

    def __init__(self) -> None:
        self.report: object = None  # the latest usage report, as the provider sent it
        self.anthropic_updates: list[object] = []  # message_delta usages, applied in order
        self.final = False
        self.characters = 0
        # The service tier a chunk reported (OpenAI puts it on the chunk or the response, not in
        # its usage): the request is priced in it (README, "The price model").
        self.service_tier: str | None = None

    def observe(self, chunk: object) -> None:
        """Take what ``chunk`` tells about usage; never raises for a chunk it does not know."""
        event = _get(chunk, "type")
        if isinstance(event, str):
            # Anthropic Messages streaming: https://docs.anthropic.com/en/docs/build-with-claude/streaming
            if event == "message_start":
                usage = _report(_get(_get(chunk, "message"), "usage"))
                if usage is not None:
                    self.report, self.anthropic_updates, self.final = usage, [], False
                return
            if event == "message_delta":
                usage = _report(_get(chunk, "usage"))
                if usage is not None:
                    self.anthropic_updates.append(usage)
                    self.final = self.report is not None
                return
            if event == "content_block_delta":
                delta = _get(chunk, "delta")
                self.characters += sum(_text(_get(delta, k)) for k in ("text", "thinking", "partial_json"))
                return
            if event in _RESPONSES_TEXT_EVENTS:
                self.characters += _text(_get(chunk, "delta"))
                return
            if event in _RESPONSES_END_EVENTS:
                self._take_service_tier(_get(chunk, "response"))
                usage = _report(_get(_get(chunk, "response"), "usage"))
                if usage is not None:
                    self.report, self.anthropic_updates, self.final = usage, [], True
                return
        # OpenAI chat completion chunks (and the providers that copy them):
        # https://platform.openai.com/docs/api-reference/chat-streaming
        for choice in _seq(_get(chunk, "choices")):
            delta = _get(choice, "delta")
            if delta is None:
                self.characters += _text(_get(choice, "text"))  # legacy completions
                continue
            for key in ("content", "refusal", "reasoning_content", "reasoning"):
                self.characters += _text(_get(delta, key))
            for call in _seq(_get(delta, "tool_calls")):
                self.characters += _text(_get(_get(call, "function"), "arguments"))
        self._take_service_tier(chunk)
        usage = _report(_get(chunk, "usage"))
        if usage is not None:
            self.report, self.anthropic_updates, self.final = usage, [], True
        # Gemini streamGenerateContent: https://ai.google.dev/api/generate-content#v1beta.GenerateContentResponse
        finished = False
        for candidate in _seq(_get(chunk, "candidates")):
            for part in _seq(_get(_get(candidate, "content"), "parts")):
                self.characters += _text(_get(part, "text"))
            finished = (
                finished or (_get(candidate, "finishReason") or _get(candidate, "finish_reason")) is not None
            )
        metadata = _report(_get(chunk, "usageMetadata"))
        if metadata is None:
            metadata = _report(_get(chunk, "usage_metadata"))
        if metadata is not None:
            self.report, self.anthropic_updates, self.final = metadata, [], finished

    def produced_nothing(self) -> bool:
        """No generated text streamed, and no final usage report (a provider's own bill)."""
        return self.characters == 0 and not (self.report is not None and self.final)

    def _take_service_tier(self, obj: object) -> None:
        tier = getattr(_get(obj, "service_tier"), "value", _get(obj, "service_tier"))
        if isinstance(tier, str):
            self.service_tier = tier

    def payload(
        self, model_prefix: str, prompt_tokens: int | None, prompt_text: str | None
    ) -> tuple[Mapping[str, Any], bool]:
        """The usage to record, and whether it is the estimate (no report came)."""
        output_estimate = math.ceil(self.characters / 4)
        if self.report is None:
            if prompt_tokens is not None:
                prompt = prompt_tokens
            elif prompt_text is not None:
                prompt = estimate_tokens(prompt_text)
            else:
                prompt = 0
            return estimated_usage(model_prefix, prompt, output_estimate), True
        report = dict(to_mapping(self.report))
        for update in self.anthropic_updates:
            # message_delta's counts are cumulative: they replace message_start's.
            report.update({k: v for k, v in to_mapping(update).items() if v is not None})
        if not self.final:
            key = next((k for k in _OUTPUT_FIELDS if report.get(k) is not None), None)
            if key is None:
                key = list(estimated_usage(model_prefix, 0, 0))[1]
            report[key] = max(_count(report.get(key), key), output_estimate)
        return report, False


def _distinct(iterator: object, iterable: object) -> tuple[object, ...]:
    return (iterator,) if iterator is iterable else (iterator, iterable)


class _Metering:
    """The parts of a metered stream that do not depend on sync or async iteration."""

    def __init__(
        self,
        service: object,
        actor: Actor,
        model_prefix: str,
        prompt_tokens: int | None,
        prompt_text: str | None,
        hold: Hold | None = None,
    ) -> None:
        if not callable(getattr(service, "record_usage_object", None)):
            raise TypeError(
                f"service must be a MeteringService or AsyncMeteringService, not {type(service).__name__}"
            )
        if not isinstance(actor, Actor):
            raise TypeError(f"actor must be a usagemeter.Actor, not {type(actor).__name__}")
        if not isinstance(model_prefix, str) or not model_prefix:
            raise ValueError("model_prefix must be a non-empty string")
        if prompt_tokens is not None:
            _count(prompt_tokens, "prompt_tokens")
        if prompt_text is not None and not isinstance(prompt_text, str):
            raise TypeError(f"prompt_text must be a str, not {type(prompt_text).__name__}")
        if hold is not None and not isinstance(hold, Hold):
            raise TypeError(f"hold must be a usagemeter.Hold, not {type(hold).__name__}")
        if hold is not None and hold.actor != actor:
            raise ValueError(f"the hold is {hold.actor!r}'s, not {actor!r}'s")
        self._hold = hold
        self._service = service
        self._actor = actor
        self._model_prefix = model_prefix
        self._prompt_tokens = prompt_tokens
        self._prompt_text = prompt_text
        self._seen = _StreamUsage()
        # Armed (False) by the subclass once fully built: a stream that failed to build records nothing.
        self._finished = True
        # Set when the upstream raised: before any output and without a final report, the call
        # produced nothing and is charged nothing.
        self._failed = False
        self.usage: Mapping[str, Any] | None = None
        """The usage recorded (the provider's report, or the estimate), once the stream ended."""
        self.estimated: bool | None = None
        """Whether ``usage`` is the estimate from the chunks (no usage report came)."""
        self.total: int | None = None
        """The user's month total in µ¢ after recording, once recorded."""

    @property
    def finished(self) -> bool:
        """Whether the stream ended and its usage was recorded (or recording was attempted)."""
        return self._finished

    def _begin_finish(self) -> Mapping[str, Any] | None:
        """Mark the stream finished (recording is attempted once) and decide what to record:
        None for nothing (finished before, or failed before producing any output)."""
        if self._finished:
            return None
        self._finished = True
        if self._failed and self._seen.produced_nothing():
            self.usage, self.estimated, self.total = None, None, None
            return None
        self.usage, self.estimated = self._seen.payload(
            self._model_prefix, self._prompt_tokens, self._prompt_text
        )
        return self.usage

    def _tier(self, usage: Mapping[str, Any]) -> str | None:
        """The service tier to price the stream's usage in: the report's own, else a chunk's."""
        return service_tier_of(usage) or self._seen.service_tier

    def _sync_service(self) -> _RecordsUsage:
        """The service to record with synchronously (an async service's ``.sync``)."""
        service = self._service
        if inspect.iscoroutinefunction(getattr(service, "record_usage_object", None)):
            service = getattr(service, "sync", None)
            if service is None:
                raise TypeError("this service records asynchronously: use ameter_stream")
        return service  # type: ignore[return-value]

    def _settle_items(self, usage: Mapping[str, Any]) -> list[tuple[str, int, int | None]]:
        """The batch items ``record_usage_object`` would book for ``usage`` (to settle a hold)."""
        service: Any = self._sync_service()
        items: list[tuple[str, int, int | None]] = service._usage_batch(usage, self._model_prefix, None)
        return items

    def _finish_sync(self) -> None:
        finishing = not self._finished
        usage = self._begin_finish()
        if usage is None and finishing and self._hold is not None:
            self._hold.release()  # a failed call that produced nothing gives its hold back
        elif usage is not None and self._hold is not None:
            self.total = self._hold.settle(usages=self._settle_items(usage), service_tier=self._tier(usage))
        elif usage is not None:
            service = self._sync_service()
            tier = self._tier(usage)
            if tier is None:
                self.total = service.record_usage_object(usage, self._actor, self._model_prefix)
            else:
                self.total = service.record_usage_object(
                    usage, self._actor, self._model_prefix, service_tier=tier
                )

    async def _finish_async(self) -> None:
        finishing = not self._finished
        usage = self._begin_finish()
        if usage is None and finishing and self._hold is not None:
            await self._hold.arelease()
        elif usage is not None and self._hold is not None:
            self.total = await self._hold.asettle(
                usages=self._settle_items(usage), service_tier=self._tier(usage)
            )
        elif usage is not None:
            service: _RecordsUsage = self._service  # type: ignore[assignment]
            tier = self._tier(usage)
            if tier is None:
                result = service.record_usage_object(usage, self._actor, self._model_prefix)
            else:
                result = service.record_usage_object(
                    usage, self._actor, self._model_prefix, service_tier=tier
                )
            if inspect.isawaitable(result):
                result = await result
            self.total = result

    def __del__(self) -> None:
        # Dropped unclosed (a consumer that broke out of its loop): record now. Nobody can catch
        # an error here; Python reports it as unraisable.
        if not getattr(self, "_finished", True):
            self._finish_sync()


class MeteredStream(_Metering, Iterator[T], Generic[T]):
    """A provider's stream, yielded unchanged, recorded once when it ends (see the module docs).

    Iterate it, or use it as a context manager to record as soon as the block ends::

        with meter_stream(service, alice, "openai:gpt-5.1", stream) as chunks:
            for chunk in chunks:
                ...
    """

    def __init__(
        self,
        service: object,
        actor: Actor,
        model_prefix: str,
        chunks: Iterable[T],
        *,
        prompt_tokens: int | None = None,
        prompt_text: str | None = None,
        hold: Hold | None = None,
    ) -> None:
        """Wrap ``chunks``; nothing is read or recorded until iteration."""
        if not isinstance(chunks, Iterable):
            raise TypeError(f"chunks must be an iterable, not {type(chunks).__name__}")
        super().__init__(service, actor, model_prefix, prompt_tokens, prompt_text, hold)
        self._sync_service()  # an async service without .sync: TypeError now, not at the end
        self._source = chunks
        self._chunks = iter(chunks)
        self._finished = False

    def __iter__(self) -> Self:
        """The stream itself."""
        return self

    def __next__(self) -> T:
        """The next chunk, unchanged; at the end (or an upstream error) the usage is recorded."""
        if self._finished:
            raise StopIteration
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._finish_sync()
            raise
        except BaseException:
            self._failed = True
            self._finish_sync()  # what was streamed is charged; a recording error chains to this one
            raise
        self._seen.observe(chunk)
        return chunk

    def close(self) -> None:
        """Stop reading: close the upstream (if it can be closed) and record. Idempotent."""
        if self._finished:
            return
        try:
            # The iterator (a generator's cleanup), then the iterable: an SDK stream's close()
            # releases the HTTP response, which closing its iterator does not.
            for source in _distinct(self._chunks, self._source):
                close = getattr(source, "close", None)
                if callable(close):
                    close()
        finally:
            self._finish_sync()

    def __enter__(self) -> Self:
        """The stream."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """``close()``."""
        self.close()


class AsyncMeteredStream(_Metering, AsyncIterator[T], Generic[T]):
    """``MeteredStream`` for an async iterable; records with ``await`` on an async service.

    ::

        async with ameter_stream(service, alice, "claude:claude-sonnet-4-5", events) as chunks:
            async for event in chunks:
                ...
    """

    def __init__(
        self,
        service: object,
        actor: Actor,
        model_prefix: str,
        chunks: AsyncIterable[T],
        *,
        prompt_tokens: int | None = None,
        prompt_text: str | None = None,
        hold: Hold | None = None,
    ) -> None:
        """Wrap ``chunks``; nothing is read or recorded until iteration."""
        if not isinstance(chunks, AsyncIterable):
            raise TypeError(f"chunks must be an async iterable, not {type(chunks).__name__}")
        super().__init__(service, actor, model_prefix, prompt_tokens, prompt_text, hold)
        self._source = chunks
        self._chunks = aiter(chunks)
        self._finished = False

    def __aiter__(self) -> Self:
        """The stream itself."""
        return self

    async def __anext__(self) -> T:
        """The next chunk, unchanged; at the end (or an upstream error) the usage is recorded."""
        if self._finished:
            raise StopAsyncIteration
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            await self._finish_async()
            raise
        except BaseException:
            self._failed = True
            await self._finish_async()  # what was streamed is charged; a recording error chains
            raise
        self._seen.observe(chunk)
        return chunk

    async def aclose(self) -> None:
        """Stop reading: close the upstream (``aclose()`` or ``close()``) and record. Idempotent."""
        if self._finished:
            return
        try:
            for source in _distinct(self._chunks, self._source):  # as in MeteredStream.close
                close = getattr(source, "aclose", None) or getattr(source, "close", None)
                if callable(close):
                    result = close()
                    if inspect.isawaitable(result):
                        await result
        finally:
            await self._finish_async()

    async def __aenter__(self) -> Self:
        """The stream."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """``aclose()``."""
        await self.aclose()


def meter_stream(
    service: object,
    actor: Actor,
    model_prefix: str,
    chunks: Iterable[T],
    *,
    prompt_tokens: int | None = None,
    prompt_text: str | None = None,
    hold: Hold | None = None,
) -> MeteredStream[T]:
    """Meter a streamed LLM response: yield ``chunks`` unchanged, record the call once at the end.

    ``service`` is a ``MeteringService`` (an ``AsyncMeteringService`` records through its
    ``.sync``). The usage recorded is the provider's usage report, else the estimate: output
    tokens = ceil(characters streamed / 4), input tokens = ``prompt_tokens``, else
    ceil(``len(prompt_text)`` / 4), else 0 (the module docstring has the details). Afterwards
    the stream's ``usage``, ``estimated`` and ``total`` tell what was recorded. With ``hold``
    (made by ``reserve`` before the call), that usage settles the hold instead.
    """
    return MeteredStream(
        service,
        actor,
        model_prefix,
        chunks,
        prompt_tokens=prompt_tokens,
        prompt_text=prompt_text,
        hold=hold,
    )


def ameter_stream(
    service: object,
    actor: Actor,
    model_prefix: str,
    chunks: AsyncIterable[T],
    *,
    prompt_tokens: int | None = None,
    prompt_text: str | None = None,
    hold: Hold | None = None,
) -> AsyncMeteredStream[T]:
    """``meter_stream`` for an async iterable (``openai.AsyncStream``, an async generator, ...).

    With an async service (``usagemeter.aio.AsyncMeteringService``) the usage is recorded with
    ``await service.record_usage_object(...)``; with a ``MeteringService``, directly.
    """
    return AsyncMeteredStream(
        service,
        actor,
        model_prefix,
        chunks,
        prompt_tokens=prompt_tokens,
        prompt_text=prompt_text,
        hold=hold,
    )
