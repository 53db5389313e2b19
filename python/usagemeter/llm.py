"""Cost pre-checks for one LLM call: "prompt + max_tokens" in one check, and ``max_tokens`` capped
to what the remaining budget buys.

Built on the service's native estimates (``has_enough_credits_for_usages``, ``affordable_units``)
and on ``usagemeter.providers``: the model's input and output usage types are the ones
``record_usage_object`` books for it (an undated model priced as its newest dated snapshot).
The prompt is priced as uncached input, the most it can cost; nothing is recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usagemeter._core import Actor
from usagemeter.providers import _count, estimated_usage, usage_items

if TYPE_CHECKING:
    from usagemeter.aio import AsyncMeteringService
    from usagemeter.holds import Hold
    from usagemeter.service import MeteringService

__all__ = [
    "acan_afford_completion",
    "acap_max_tokens",
    "areserve_completion",
    "can_afford_completion",
    "cap_max_tokens",
    "completion_items",
    "reserve_completion",
]


def completion_items(
    service: MeteringService | AsyncMeteringService, model_prefix: str, prompt_tokens: int, max_tokens: int
) -> list[tuple[str, int]]:
    """The items of a call to ``model_prefix`` with ``prompt_tokens`` of input and ``max_tokens``
    of output: ``[(input_type, prompt_tokens), (output_type, max_tokens)]``."""
    prompt_tokens = _count(prompt_tokens, "prompt_tokens")
    max_tokens = _count(max_tokens, "max_tokens")
    items = usage_items(
        estimated_usage(model_prefix, prompt_tokens, max_tokens), model_prefix, service.cost_map
    )
    assert len(items) == 2, items  # an estimated payload books the input and the output type
    return items


def can_afford_completion(
    service: MeteringService, actor: Actor, model_prefix: str, prompt_tokens: int, max_tokens: int
) -> bool:
    """Whether ``actor``'s remaining budget covers the prompt and ``max_tokens`` of output together.

    One native check of both items (``has_enough_credits_for_usages``), so the answer is about
    the whole call, not the prompt alone. ``UnknownUsageType`` for an unpriced model.
    """
    return service.has_enough_credits_for_usages(
        actor, completion_items(service, model_prefix, prompt_tokens, max_tokens)
    )


def cap_max_tokens(
    service: MeteringService, actor: Actor, model_prefix: str, prompt_tokens: int, max_tokens: int
) -> int:
    """``min(max_tokens, what the remaining budget buys after the prompt)``: 0 when the budget does
    not cover the prompt and one output token.

    Pass the result as the request's ``max_tokens`` (``max_output_tokens``, ``maxOutputTokens``)
    so a call never costs more than the actor has; 0 means refuse the call.
    """
    prompt_item, (output_type, max_tokens) = completion_items(
        service, model_prefix, prompt_tokens, max_tokens
    )
    return min(max_tokens, service.affordable_units(actor, output_type, [prompt_item]))


async def acan_afford_completion(
    service: AsyncMeteringService, actor: Actor, model_prefix: str, prompt_tokens: int, max_tokens: int
) -> bool:
    """``can_afford_completion`` for an ``AsyncMeteringService``."""
    items = completion_items(service, model_prefix, prompt_tokens, max_tokens)
    return await service.has_enough_credits_for_usages(actor, items)


async def acap_max_tokens(
    service: AsyncMeteringService, actor: Actor, model_prefix: str, prompt_tokens: int, max_tokens: int
) -> int:
    """``cap_max_tokens`` for an ``AsyncMeteringService``."""
    prompt_item, (output_type, max_tokens) = completion_items(
        service, model_prefix, prompt_tokens, max_tokens
    )
    return min(max_tokens, await service.affordable_units(actor, output_type, [prompt_item]))


def reserve_completion(
    service: MeteringService,
    actor: Actor,
    model_prefix: str,
    prompt_tokens: int,
    max_tokens: int,
    ttl: float = 600.0,
) -> Hold | None:
    """Hold the worst case of one call (the prompt and ``max_tokens`` of output) until it is
    settled with the real usage: a ``Hold``, or None when the budget net of the actor's other
    holds does not cover it. Pass the hold to ``meter_stream(..., hold=hold)`` to settle it with
    what the stream used; two calls of one user in flight then cannot together overspend."""
    items = completion_items(service, model_prefix, prompt_tokens, max_tokens)
    return service.reserve(actor, usages=items, ttl=ttl)


async def areserve_completion(
    service: AsyncMeteringService,
    actor: Actor,
    model_prefix: str,
    prompt_tokens: int,
    max_tokens: int,
    ttl: float = 600.0,
) -> Hold | None:
    """``reserve_completion`` for an ``AsyncMeteringService``."""
    items = completion_items(service, model_prefix, prompt_tokens, max_tokens)
    return await service.reserve(actor, usages=items, ttl=ttl)
