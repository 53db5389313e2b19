"""Provider usage payloads -> priced usage items.

An LLM API reports what a call used in its own shape: OpenAI's ``prompt_tokens`` include the
cached tokens, Anthropic's ``input_tokens`` exclude the cache reads and writes, Gemini counts
thinking apart from the answer, xAI spells a cost map key ``completion-tokens``. This module turns
such a payload (a dict, or an SDK object) plus a ``model_prefix`` like ``"openai:gpt-5.1"`` into the
``(usage_type, units)`` items that ``MeteringService.batch_increment_usages`` prices with the cost
map, counting every token once at the price the cost map has for it.

Rules, for every provider (the table per provider is in ``README.md`` and in each dialect below):

- The provider is the first segment of the prefix: ``openai``, ``claude`` / ``anthropic``,
  ``gemini``, ``mistral``, ``xai``, ``deepseek``, ``groq``, ``together``, ``openrouter``. Another
  provider keeps the seed system's rule: each field ``kind`` is booked as ``prefix:kind``, and every
  field must then be an int count (a nested object, None or a string raises ``TypeError`` naming it).
- Totals (``total_tokens``, ``totalTokenCount``) are never charged; breakdowns that are part of a
  count already charged (audio, image, text tokens) are not charged again.
- A subset priced apart (cached reads, cache writes, reasoning) is taken out of its including
  count and charged at its own price when the cost map has one, else left in (charged once, at the
  including count's price).
- A call's input and output items are booked even at 0 units (so an unknown model raises
  ``UnknownUsageType`` even for an empty call, and the call counts); the optional items (cache
  reads and writes, reasoning priced apart, ...) only when not 0.
- Metadata (``service_tier``, timings, ``cost`` as reported by a router, ...) is ignored. Counts
  billed per request (``server_tool_use.web_search_requests``, xAI's ``num_sources_used``,
  Mistral's ``prompt_audio_seconds``) are charged only when the cost map prices them under that
  name. An int field this module does not know is booked as ``prefix:field`` when not 0 (so a new
  billable count is never dropped silently: the service raises ``UnknownUsageType``, or records it
  for free with ``unmapped="free"`` and an ``unmapped_usage`` alarm); an unknown non-count field is
  ignored and logged once on the ``usagemeter`` logger (the first ``_MAX_WARNED`` names; the log
  says once when it stops).
- A count is booked once, whatever names it: a top-level field named like a count the dialect
  reads elsewhere (its cost map names, the other API's spelling: OpenAI's top-level
  ``cached_tokens`` beside ``prompt_tokens_details.cached_tokens``) is one more report of that
  count, never added to it: without the dialect's own field it is the report (the subset checks
  apply to it), beside it the two must agree, else ``ValueError`` (``_also_named``). Gemini's
  camelCase and snake_case spellings of one field must agree too. A whole response whose
  ``usage`` is not an object raises ``TypeError`` naming that field, and an empty report
  (``{}``, or only None) ``ValueError``: booking nothing would lose the call.
- Counts are ints >= 0: a negative count raises ``ValueError``, a bool, float or string count
  ``TypeError``, and a subset larger than its total (``cached_tokens > prompt_tokens``)
  ``ValueError``, all before anything is recorded.
- An undated model resolves to the newest dated model of the cost map when the prefix itself is
  not priced: ``claude:claude-sonnet-4-5`` -> ``claude:claude-sonnet-4-5-20250929``,
  ``openai:gpt-5`` -> ``openai:gpt-5-2025-08-07`` (see ``resolve_model_prefix``).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from usagemeter._core import CostMap

__all__ = [
    "PROVIDERS",
    "estimate_tokens",
    "estimated_usage",
    "provider_of",
    "resolve_model_prefix",
    "service_tier_of",
    "to_mapping",
    "usage_items",
]

logger = logging.getLogger("usagemeter")


# --- Reading payloads -------------------------------------------------------------------------


def to_mapping(obj: object) -> Mapping[str, Any]:
    """A usage payload as a mapping: a dict as it is, an SDK object through its own serializer.

    Pydantic models (the ``openai`` and ``anthropic`` packages, ``google-genai``): ``model_dump()``;
    other objects: their public attributes (``vars()``); else ``to_dict()`` (proto-plus messages).
    Anything else raises ``TypeError``.
    """
    if isinstance(obj, Mapping):
        return obj
    model_dump = getattr(obj, "model_dump", None)
    if callable(model_dump):
        dumped = model_dump()
        if isinstance(dumped, Mapping):
            return dumped
    try:
        attributes = {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    except TypeError:
        attributes = {}
    if attributes:
        return attributes
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        converted = to_dict()
        if isinstance(converted, Mapping):
            return converted
    raise TypeError(
        f"usage must be a mapping or a provider SDK object (model_dump(), attributes or to_dict()), "
        f"not {type(obj).__name__}"
    )


def _service_tier_field(obj: object) -> str | None:
    value = obj.get("service_tier") if isinstance(obj, Mapping) else getattr(obj, "service_tier", None)
    value = getattr(value, "value", value)  # an SDK's enum member
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"usage field 'service_tier' must be a string, not {type(value).__name__}: {value!r}")


def service_tier_of(usage: object) -> str | None:
    """The service tier a payload reports, or None: its ``service_tier`` field (Anthropic's
    ``usage.service_tier``, OpenAI's on the response and in gateways' usage reports), else that of
    its ``usage`` object when a whole response is passed. A price table with service tiers prices
    the request in it (README, "The price model"); "default" and "standard" mean the base price.
    A ``service_tier`` that is not a string raises ``TypeError``."""
    tier = _service_tier_field(usage)
    if tier is None:
        inner = usage.get("usage") if isinstance(usage, Mapping) else getattr(usage, "usage", None)
        if inner is not None and _is_object(inner):
            tier = _service_tier_field(inner)
    return tier


def _is_object(value: object) -> bool:
    """Whether ``value`` is a nested object (a mapping or an SDK object), not a scalar or a list."""
    return not isinstance(value, str | bytes | int | float | bool | list | tuple | type(None))


def _count(value: object, where: str) -> int:
    """A count of units: an int >= 0 (None, an absent optional field, is 0)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"usage field {where!r} must be an int count of units, not {type(value).__name__}: {value!r}"
        )
    if value < 0:
        raise ValueError(f"usage field {where!r} must be >= 0, got {value}")
    return value


def _nested(usage: Mapping[str, Any], key: str, where: str = "") -> Mapping[str, Any]:
    """A nested breakdown (``prompt_tokens_details``), or an empty mapping when absent or None."""
    value = usage.get(key)
    if value is None:
        return {}
    if not _is_object(value):
        raise TypeError(
            f"usage field {where + key!r} must be an object, not {type(value).__name__}: {value!r}"
        )
    return to_mapping(value)


def _field(usage: Mapping[str, Any], *keys: str, where: str = "") -> int:
    """The count reported under ``keys``, spellings of one field (Gemini's ``promptTokenCount``
    and ``prompt_token_count``): 0 when none is present (not None). Two spellings present must
    agree (``ValueError``): a count is read once, never summed nor picked."""
    found = [(where + key, _count(usage[key], where + key)) for key in keys if usage.get(key) is not None]
    for name, units in found[1:]:
        _same_report(name, units, *found[0])
    return found[0][1] if found else 0


def _same_report(name: str, units: int, read_from: str, read: int) -> None:
    """``ValueError`` unless field ``name`` (``units``), a second report of the count read from
    ``read_from`` (``read``), agrees with it: a payload that says two things is refused, not
    guessed at."""
    if units != read:
        raise ValueError(
            f"usage field {name!r} ({units}) is a second report of the count usagemeter reads from "
            f"{read_from!r}, which says {read} (an absent field says 0): a count is booked once, and "
            f"a payload whose reports disagree is refused rather than guessed at"
        )


def _present(usage: Mapping[str, Any], key: str) -> bool:
    return usage.get(key) is not None


# --- Charges ----------------------------------------------------------------------------------


class _Charge(NamedTuple):
    """Units to book at the first of ``kinds`` the cost map prices (``kinds[-1]`` if none is)."""

    kinds: tuple[str, ...]
    units: int
    required: bool = False  # booked even at 0 units (a call's input and output)
    priced_only: bool = False  # dropped unless one of ``kinds`` is priced


# The unknown non-count fields logged so far, once each. Their names come from payloads, which
# strangers may write, so the set is bounded: past _MAX_WARNED names nothing more is remembered
# (nor logged), and the log says so once.
_warned: set[tuple[str, str]] = set()
_WARNED_LOCK = threading.Lock()
_MAX_WARNED = 1_000


def _ignore_unknown(provider: str, key: str, value: object) -> None:
    """Log, once per provider and field, a non-count field this module does not know."""
    name = (provider, key)
    if name in _warned:
        return
    with _WARNED_LOCK:
        if name in _warned or len(_warned) >= _MAX_WARNED:
            return
        _warned.add(name)
        last = len(_warned) == _MAX_WARNED
    logger.warning(
        "usagemeter ignores the %s usage field %r (%s): it is not a count it knows how to price",
        provider,
        key,
        type(value).__name__,
    )
    if last:
        logger.warning(
            "usagemeter has logged %d unknown usage fields, its limit: further unknown fields are "
            "ignored without a log line",
            _MAX_WARNED,
        )


def _also_named(
    usage: Mapping[str, Any],
    known: set[str],
    names: tuple[str, ...],
    units: int,
    read_from: str,
    present: bool,
) -> tuple[int, str]:
    """A count the dialect read (``units`` from field ``read_from``; ``present``: whether that
    field was there), reconciled with the top-level fields ``names`` that name the same count
    (its cost map names, the other API's spelling: OpenAI's ``cached_tokens`` beside
    ``prompt_tokens_details.cached_tokens``). Each is one report of that count, read once (added
    to ``known``, so never booked again): present reports must agree (``ValueError``); when the
    dialect's own field is absent, the first name present is the report. Returns the count and
    the field it was read from."""
    for name in names:
        if name in known or usage.get(name) is None:
            continue
        known.add(name)
        reported = _count(usage[name], name)
        if present:
            _same_report(name, reported, read_from, units)
        else:
            units, read_from, present = reported, name, True
    return units, read_from


def _unknown_fields(provider: str, usage: Mapping[str, Any], known: set[str], charges: list[_Charge]) -> None:
    """Book the unknown int fields as ``prefix:field`` (when not 0); log and skip the others.

    A field named like a kind one of ``charges`` books is never booked again: ``_also_named``
    reads each such name with its count, and one it missed is a ``ValueError`` here, not a double
    count."""
    booked = {kind for charge in charges for kind in charge.kinds}
    for key, value in usage.items():
        if key in known or value is None:
            continue
        if key in booked:
            raise ValueError(
                f"usage field {key!r} names a count the {provider} usage report gives in another field: "
                "it is not booked twice"
            )
        if isinstance(value, int) and not isinstance(value, bool):
            units = _count(value, key)
            if units:
                charges.append(_Charge((key,), units, required=True))
        else:
            _ignore_unknown(provider, key, value)


def _split(
    total: int, total_name: str, parts: list[tuple[tuple[str, ...], int, str]], total_kinds: tuple[str, ...]
) -> list[_Charge]:
    """``total`` minus its priced-apart ``parts`` at ``total_kinds``, each part at its own kinds
    (falling back to ``total_kinds``). ``ValueError`` when the parts exceed the total."""
    taken = sum(units for _, units, _ in parts)
    if taken > total:
        names = " + ".join(name for _, _, name in parts)
        raise ValueError(f"usage field {names} ({taken}) exceeds {total_name} ({total}), which includes it")
    charges = [_Charge(total_kinds, total - taken, required=True)]
    charges += [_Charge(kinds + total_kinds, units) for kinds, units, _ in parts]
    return charges


# --- Dialects ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _OpenAICompatible:
    """The OpenAI usage shapes, which most providers copy, with each provider's cost map names.

    Chat completions: ``prompt_tokens`` (including ``prompt_tokens_details.cached_tokens`` and
    ``cache_write_tokens``), ``completion_tokens`` (including
    ``completion_tokens_details.reasoning_tokens``), ``total_tokens``. Responses API:
    ``input_tokens`` / ``input_tokens_details``, ``output_tokens`` / ``output_tokens_details``,
    the same inclusions. The other ``*_details`` fields (audio, image, text, prediction tokens)
    are breakdowns of the counts and are not charged again.
    """

    provider: str
    prompt: tuple[str, ...] = ("prompt_tokens",)
    completion: tuple[str, ...] = ("completion_tokens",)
    cached: tuple[str, ...] = ("cached_tokens",)
    cache_write: tuple[str, ...] = ("cache_write_tokens",)
    reasoning: tuple[str, ...] = ("reasoning_tokens",)
    ignored: frozenset[str] = frozenset()
    priced_only: frozenset[str] = frozenset()
    # DeepSeek: prompt_cache_hit_tokens + prompt_cache_miss_tokens == prompt_tokens.
    deepseek_cache_fields: bool = False
    # xAI has reported reasoning tokens both inside completion_tokens and beside them: beside
    # them exactly when total_tokens == prompt + completion + reasoning.
    reasoning_may_be_extra: bool = False

    def charges(self, usage: Mapping[str, Any]) -> list[_Charge] | None:
        """The charges of a payload in this shape, or None if it is not a token usage report."""
        if _present(usage, "prompt_tokens") or _present(usage, "completion_tokens"):
            return self._charges(
                usage,
                "prompt_tokens",
                "completion_tokens",
                "prompt_tokens_details",
                "completion_tokens_details",
            )
        if _present(usage, "input_tokens") or _present(usage, "output_tokens"):
            return self._charges(
                usage, "input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details"
            )
        return None

    def _charges(
        self,
        usage: Mapping[str, Any],
        prompt_key: str,
        completion_key: str,
        prompt_details_key: str,
        completion_details_key: str,
    ) -> list[_Charge]:
        prompt_details = _nested(usage, prompt_details_key)
        completion_details = _nested(usage, completion_details_key)
        where_p, where_c = prompt_details_key + ".", completion_details_key + "."
        known = {prompt_key, completion_key, prompt_details_key, completion_details_key, "total_tokens"}
        known |= self.ignored | self.priced_only

        def read(names: tuple[str, ...], fields: Mapping[str, Any], key: str, where: str) -> tuple[int, str]:
            """``fields[key]``, reconciled with the top-level fields ``names`` (``_also_named``)."""
            units = _field(fields, key, where=where)
            return _also_named(usage, known, names, units, where + key, _present(fields, key))

        prompt, prompt_name = read((*self.prompt, "prompt_tokens", "input_tokens"), usage, prompt_key, "")
        completion, completion_name = read(
            (*self.completion, "completion_tokens", "output_tokens"), usage, completion_key, ""
        )
        cached_name = where_p + "cached_tokens"
        cached = _field(prompt_details, "cached_tokens", where=where_p)
        cached_present = _present(prompt_details, "cached_tokens")
        if self.deepseek_cache_fields:
            known |= {"prompt_cache_hit_tokens", "prompt_cache_miss_tokens"}
            # DeepSeek's own fields win over the OpenAI-style breakdown when both are present.
            if _present(usage, "prompt_cache_hit_tokens"):
                cached = _count(usage["prompt_cache_hit_tokens"], "prompt_cache_hit_tokens")
                cached_name, cached_present = "prompt_cache_hit_tokens", True
            elif _present(usage, "prompt_cache_miss_tokens"):
                miss = _count(usage["prompt_cache_miss_tokens"], "prompt_cache_miss_tokens")
                if miss > prompt:
                    raise ValueError(
                        f"usage field prompt_cache_miss_tokens ({miss}) exceeds {prompt_name} ({prompt})"
                    )
                cached, cached_name, cached_present = prompt - miss, "prompt_cache_hit_tokens", True
        # A top-level cached_tokens (Together's place for it) is one more report of the same count.
        cached, cached_name = _also_named(usage, known, self.cached, cached, cached_name, cached_present)
        cache_write, cache_write_name = read(self.cache_write, prompt_details, "cache_write_tokens", where_p)
        charges = _split(
            prompt,
            prompt_name,
            [(self.cached, cached, cached_name), (self.cache_write, cache_write, cache_write_name)],
            self.prompt,
        )

        reasoning, reasoning_name = read(self.reasoning, completion_details, "reasoning_tokens", where_c)
        total = usage.get("total_tokens")
        if (
            self.reasoning_may_be_extra
            and reasoning
            and isinstance(total, int)
            and not isinstance(total, bool)
            and total == prompt + completion + reasoning
        ):
            # Reported beside completion_tokens: both are output, charged once each.
            charges += [
                _Charge(self.completion, completion, required=True),
                _Charge(self.reasoning + self.completion, reasoning),
            ]
        else:
            charges += _split(
                completion, completion_name, [(self.reasoning, reasoning, reasoning_name)], self.completion
            )

        for key in sorted(self.priced_only):
            if _present(usage, key):
                charges.append(_Charge((key,), _count(usage[key], key), priced_only=True))
        _unknown_fields(self.provider, usage, known, charges)
        return charges


# Anthropic Messages API, ``usage``: https://docs.anthropic.com/en/api/messages (response
# ``usage``) and https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching ("Tracking
# cache performance": input_tokens are the tokens after the last cache breakpoint, so the total
# input is input_tokens + cache_creation_input_tokens + cache_read_input_tokens). Writes default
# to the 5-minute cache; ``cache_creation`` splits them by TTL. ``output_tokens`` includes
# ``output_tokens_details.thinking_tokens`` ("output_tokens remains the inclusive, authoritative
# total used for billing", anthropic SDK 2.16). ``server_tool_use`` counts requests billed per
# request (web search, web fetch): charged only when the cost map prices them.
_ANTHROPIC_IGNORED = frozenset({"service_tier", "inference_geo", "speed", "output_tokens_details"})
_ANTHROPIC_KNOWN = frozenset(
    {
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cache_creation",
        "server_tool_use",
    }
)


def _anthropic(usage: Mapping[str, Any]) -> list[_Charge] | None:
    if not any(
        _present(usage, key)
        for key in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    ):
        return None
    known = set(_ANTHROPIC_KNOWN | _ANTHROPIC_IGNORED)
    charges = [
        _Charge(("input_tokens",), _count(usage.get("input_tokens"), "input_tokens"), required=True),
        _Charge(("output_tokens",), _count(usage.get("output_tokens"), "output_tokens"), required=True),
        _Charge(
            ("cache_read_input_tokens", "input_tokens"),
            _count(usage.get("cache_read_input_tokens"), "cache_read_input_tokens"),
        ),
    ]
    written = _count(usage.get("cache_creation_input_tokens"), "cache_creation_input_tokens")
    by_ttl = _nested(usage, "cache_creation")
    # The split by TTL, from cache_creation or from top-level fields named as the cost map names
    # its parts (one report each: _also_named).
    five_minutes, one_hour = (
        _also_named(
            usage,
            known,
            (key,),
            _field(by_ttl, key, where="cache_creation."),
            "cache_creation." + key,
            _present(by_ttl, key),
        )[0]
        for key in ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
    )
    split = bool(by_ttl) or any(
        _present(usage, key) for key in ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
    )
    if split and (five_minutes or one_hour or written):
        if _present(usage, "cache_creation_input_tokens") and written != five_minutes + one_hour:
            raise ValueError(
                f"usage field cache_creation_input_tokens ({written}) is not the sum of cache_creation's "
                f"ephemeral_5m_input_tokens ({five_minutes}) and ephemeral_1h_input_tokens ({one_hour})"
            )
    else:
        five_minutes, one_hour = written, 0  # no breakdown: the default TTL, 5 minutes
    charges += [
        _Charge(("ephemeral_5m_input_tokens", "cache_creation_input_tokens", "input_tokens"), five_minutes),
        _Charge(("ephemeral_1h_input_tokens", "cache_creation_input_tokens", "input_tokens"), one_hour),
    ]
    tools = _nested(usage, "server_tool_use")
    for key in sorted(tools):
        if tools[key] is not None and not _is_object(tools[key]):
            requests = _count(tools[key], "server_tool_use." + key)
            requests = _also_named(usage, known, (key,), requests, "server_tool_use." + key, True)[0]
            charges.append(_Charge((key,), requests, priced_only=True))
    _unknown_fields("anthropic", usage, known, charges)
    return charges


# Gemini API ``usageMetadata``: https://ai.google.dev/api/generate-content#UsageMetadata
# promptTokenCount includes cachedContentTokenCount ("when cachedContent is set, this is still the
# total effective prompt size"); candidatesTokenCount excludes thoughtsTokenCount, which is billed
# as output ("output price, including thinking tokens", https://ai.google.dev/gemini-api/docs/pricing);
# toolUsePromptTokenCount is input beside the prompt. The *TokensDetails lists break the counts
# down by modality and are not charged again. google-genai's pydantic objects dump snake_case.
_GEMINI_FIELDS = {
    "prompt": ("promptTokenCount", "prompt_token_count"),
    "cached": ("cachedContentTokenCount", "cached_content_token_count"),
    "candidates": ("candidatesTokenCount", "candidates_token_count"),
    "thoughts": ("thoughtsTokenCount", "thoughts_token_count"),
    "tool_use": ("toolUsePromptTokenCount", "tool_use_prompt_token_count"),
}
_GEMINI_IGNORED = frozenset(
    {
        "totalTokenCount",
        "total_token_count",
        "promptTokensDetails",
        "prompt_tokens_details",
        "cacheTokensDetails",
        "cache_tokens_details",
        "candidatesTokensDetails",
        "candidates_tokens_details",
        "toolUsePromptTokensDetails",
        "tool_use_prompt_tokens_details",
        "trafficType",
        "traffic_type",
        "responseTokensDetails",
        "response_tokens_details",
    }
)


def _gemini(usage: Mapping[str, Any]) -> list[_Charge] | None:
    keys = [key for names in _GEMINI_FIELDS.values() for key in names]
    if not any(_present(usage, key) for key in keys):
        return None
    counts = {name: _field(usage, *names) for name, names in _GEMINI_FIELDS.items()}
    prompt_kinds = ("promptTokenCount",)
    output_kinds = ("candidatesTokenCount",)
    charges = _split(
        counts["prompt"],
        "promptTokenCount",
        [(("cachedContentTokenCount",), counts["cached"], "cachedContentTokenCount")],
        prompt_kinds,
    )
    charges += [
        _Charge(output_kinds, counts["candidates"], required=True),
        _Charge(("thoughtsTokenCount", *output_kinds), counts["thoughts"]),
        _Charge(("toolUsePromptTokenCount", *prompt_kinds), counts["tool_use"]),
    ]
    # Every name of a count is in ``keys``, read above (two spellings must agree: ``_field``).
    _unknown_fields("gemini", usage, set(keys) | _GEMINI_IGNORED, charges)
    return charges


_Dialect = Callable[[Mapping[str, Any]], list[_Charge] | None]

# OpenAI chat completions ``usage``: https://platform.openai.com/docs/api-reference/chat/object
# (prompt_tokens_details.cached_tokens are part of prompt_tokens; completion_tokens_details
# .reasoning_tokens part of completion_tokens, https://platform.openai.com/docs/guides/reasoning).
# Responses API ``usage``: https://platform.openai.com/docs/api-reference/responses/object
# (input_tokens_details.cached_tokens within input_tokens, output_tokens_details.reasoning_tokens
# within output_tokens).
_OPENAI = _OpenAICompatible("openai", ignored=frozenset({"service_tier"}))
# Mistral ``UsageInfo``: https://docs.mistral.ai/api/#tag/chat/operation/chat_completion_v1_chat_completions_post
# (prompt_tokens, completion_tokens, total_tokens, prompt_audio_seconds for audio input).
_MISTRAL = _OpenAICompatible("mistral", priced_only=frozenset({"prompt_audio_seconds"}))
# xAI chat completions: https://docs.x.ai/docs/api-reference#chat-completions and
# https://docs.x.ai/docs/guides/reasoning (completion_tokens_details.reasoning_tokens); cached
# tokens: https://docs.x.ai/developers/advanced-api-usage/prompt-caching/usage-and-pricing. The
# shipped cost map spells the output key ``completion-tokens``. num_sources_used (Live Search,
# billed per source) is charged only when priced.
_XAI = _OpenAICompatible(
    "xai",
    completion=("completion_tokens", "completion-tokens"),
    reasoning_may_be_extra=True,
    priced_only=frozenset({"num_sources_used"}),
)
# DeepSeek ``usage``: https://api-docs.deepseek.com/api/create-chat-completion
# (prompt_tokens = prompt_cache_hit_tokens + prompt_cache_miss_tokens; reasoning_tokens are part
# of completion_tokens). Cache hits are priced as ``cached_tokens`` in the shipped map.
_DEEPSEEK = _OpenAICompatible("deepseek", deepseek_cache_fields=True)
# Groq ``usage``: https://console.groq.com/docs/api-reference#chat-create (OpenAI's counts plus
# queue_time, prompt_time, completion_time, total_time in seconds: metadata).
_GROQ = _OpenAICompatible(
    "groq", ignored=frozenset({"queue_time", "prompt_time", "completion_time", "total_time"})
)
# Together ``usage``: https://docs.together.ai/reference/chat-completions-1 (prompt_tokens,
# completion_tokens, total_tokens, and a top-level cached_tokens). The shipped map names the
# prices ``input`` and ``output``.
_TOGETHER = _OpenAICompatible(
    "together",
    prompt=("prompt_tokens", "input"),
    completion=("completion_tokens", "output"),
)
# OpenRouter ``usage``: https://openrouter.ai/docs/use-cases/usage-accounting (prompt_tokens
# including prompt_tokens_details.cached_tokens and cache_write_tokens; reasoning_tokens within
# completion_tokens; ``cost`` in credits and ``cost_details``, metadata here: the cost map prices).
_OPENROUTER = _OpenAICompatible(
    "openrouter",
    prompt=("prompt_tokens", "prompt"),
    completion=("completion_tokens", "completion"),
    cached=("cached_tokens", "input_cache_read"),
    cache_write=("cache_write_tokens", "input_cache_write"),
    reasoning=("reasoning_tokens", "internal_reasoning"),
    ignored=frozenset({"cost", "cost_details", "is_byok"}),
)

PROVIDERS: Mapping[str, _Dialect] = {
    "openai": _OPENAI.charges,
    "claude": _anthropic,
    "anthropic": _anthropic,
    "gemini": _gemini,
    "mistral": _MISTRAL.charges,
    "xai": _XAI.charges,
    "deepseek": _DEEPSEEK.charges,
    "groq": _GROQ.charges,
    "together": _TOGETHER.charges,
    "openrouter": _OPENROUTER.charges,
}
"""The providers whose usage payloads are read field by field, by the prefix's first segment."""


def provider_of(model_prefix: str) -> str:
    """The provider segment of a model prefix: ``"openai:gpt-5.1"`` -> ``"openai"``."""
    return model_prefix.split(":", 1)[0]


# --- Undated model aliases --------------------------------------------------------------------

# A model's release date at the end of its name: Anthropic's -YYYYMMDD, OpenAI's -YYYY-MM-DD.
_DATE_SUFFIX = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2})$")


class _ModelIndex:
    """The models a cost map prices, and the undated prefixes resolved so far (maps are immutable)."""

    def __init__(self, cost_map: CostMap) -> None:
        self.models: frozenset[str] = frozenset(key.rsplit(":", 1)[0] for key in cost_map.keys())
        dated: dict[str, tuple[str, str]] = {}
        for model in self.models:
            match = _DATE_SUFFIX.search(model)
            if match:
                base, date = model[: match.start()], match.group(1).replace("-", "")
                if base not in dated or date > dated[base][0]:
                    dated[base] = (date, model)
        self.newest_dated = {base: model for base, (_, model) in dated.items()}
        # (prefix, candidate kinds) -> the first kind priced under prefix, or None: the same few
        # charges recur on every call, and each look-up would otherwise cross into the native map.
        self.priced_kinds: dict[tuple[str, tuple[str, ...]], str | None] = {}

    def priced_kind(self, cost_map: CostMap, prefix: str, kinds: tuple[str, ...]) -> str | None:
        """The first of ``kinds`` priced under ``prefix``, or None."""
        key = (prefix, kinds)
        try:
            return self.priced_kinds[key]
        except KeyError:
            pass
        kind = next((k for k in kinds if f"{prefix}:{k}" in cost_map), None)
        if len(self.priced_kinds) < _MAX_PRICED_KINDS:  # bounded: prefixes come from callers
            self.priced_kinds[key] = kind
        return kind


# Keyed by id(); each entry holds its cost map, so the id cannot be reused while it is cached.
# Bounded: an application holds a handful of cost maps, a test suite may build many.
_INDEXES: dict[int, tuple[CostMap, _ModelIndex]] = {}
_INDEXES_LOCK = threading.Lock()
_MAX_INDEXES = 16
_MAX_PRICED_KINDS = 100_000


def _index(cost_map: CostMap) -> _ModelIndex:
    entry = _INDEXES.get(id(cost_map))
    if entry is not None and entry[0] is cost_map:
        return entry[1]
    index = _ModelIndex(cost_map)
    with _INDEXES_LOCK:
        if len(_INDEXES) >= _MAX_INDEXES:
            _INDEXES.pop(next(iter(_INDEXES)))
        _INDEXES[id(cost_map)] = (cost_map, index)
    return index


def resolve_model_prefix(model_prefix: str, cost_map: CostMap) -> str:
    """The prefix the cost map prices for ``model_prefix``.

    The prefix itself when the cost map has any price under it (an exact match always wins);
    else the newest dated model named ``<model_prefix>-YYYYMMDD`` or ``<model_prefix>-YYYY-MM-DD``
    (``claude:claude-sonnet-4-5`` -> ``claude:claude-sonnet-4-5-20250929``, as the provider's own
    alias points to the latest snapshot); else ``model_prefix`` unchanged, so that recording
    names the unknown usage type. A dated name is never resolved to an undated one: snapshots of
    one model have had different prices.
    """
    if not isinstance(model_prefix, str) or not model_prefix:
        raise ValueError("model_prefix must be a non-empty string")
    if not isinstance(cost_map, CostMap):
        raise TypeError(f"cost_map must be a usagemeter.CostMap, not {type(cost_map).__name__}")
    index = _index(cost_map)
    if model_prefix in index.models:
        return model_prefix
    return index.newest_dated.get(model_prefix, model_prefix)


# --- Items ------------------------------------------------------------------------------------


_WRAPPERS = ("usage", "usageMetadata", "usage_metadata")


def _unwrap(usage: Mapping[str, Any], provider: str) -> Mapping[str, Any]:
    """A whole response passed instead of its usage: its ``usage`` / ``usageMetadata``.

    Called only for a payload the dialect of ``provider`` did not recognise: a wrapper field that
    holds no object (``{"usage": "junk"}``, a response without usage: ``{"usage": None}``) is
    that payload's problem, and ``TypeError`` names it."""
    for key in _WRAPPERS:
        if key not in usage:
            continue
        inner = usage[key]
        if not _is_object(inner):
            raise TypeError(
                f"usage field {key!r} must be the {provider} usage report (an object), not "
                f"{type(inner).__name__}: {inner!r} (a response without usage cannot be booked)"
            )
        return to_mapping(inner)
    return usage


def _fallback_items(usage: Mapping[str, Any], prefix: str, known_provider: bool) -> list[tuple[str, int]]:
    """The seed system's rule: each field ``kind`` booked as ``prefix:kind``, every one a count.
    ``known_provider``: the payload is one a dialect did not recognise (the error says so)."""
    provider = provider_of(prefix)
    why = (
        f"this {provider} usage report has none of the token counts usagemeter reads for {provider!r}, "
        f"so each field is booked as '{prefix}:<field>'"
        if known_provider
        else f"{provider!r} is not a provider whose payloads usagemeter reads field by field; "
        f"pass only the counts to book as '{prefix}:<field>'"
    )
    items = []
    for kind, value in usage.items():
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"usage keys must be non-empty strings, not {kind!r}")
        if value is None or isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"usage field {kind!r} must be an int count of units, not {type(value).__name__}: {value!r} "
                f"({why})"
            )
        items.append((f"{prefix}:{kind}", _count(value, kind)))
    return items


def _priced_items(
    usage: object, model_prefix: str, cost_map: CostMap
) -> tuple[list[tuple[str, int]], frozenset[str]]:
    """The items to book, and every kind the payload maps to (including optional ones at 0)."""
    if not isinstance(model_prefix, str) or not model_prefix:
        raise ValueError("model_prefix must be a non-empty string")
    payload = to_mapping(usage)
    prefix = resolve_model_prefix(model_prefix, cost_map)
    index = _index(cost_map)
    provider = provider_of(model_prefix).lower()
    dialect = PROVIDERS.get(provider)
    charges = None
    if dialect is not None:
        charges = dialect(payload)
        if charges is None:
            unwrapped = _unwrap(payload, provider)
            if unwrapped is not payload:
                payload = unwrapped
                charges = dialect(payload)
    if charges is None:
        if dialect is not None and not any(value is not None for value in payload.values()):
            raise ValueError(
                f"the {provider} usage report is empty ({dict(payload)!r}): it has none of the token "
                f"counts usagemeter reads for {provider!r}, and booking nothing would lose the call"
            )
        items = _fallback_items(payload, prefix, dialect is not None)
        return items, frozenset(usage_type.rsplit(":", 1)[1] for usage_type, _ in items)

    merged: dict[str, int] = {}
    kinds: set[str] = set()
    for charge in charges:
        kind = index.priced_kind(cost_map, prefix, charge.kinds)
        if kind is None:
            if charge.priced_only:
                continue
            # A charge lists its own names first and its including count's last: unpriced, a
            # subset is booked with its including count, so an unknown model raises naming the
            # call's input or output type.
            kind = charge.kinds[-1]
        kinds.add(kind)
        if charge.units or charge.required or kind in merged:
            merged[kind] = merged.get(kind, 0) + charge.units
    return [(f"{prefix}:{kind}", units) for kind, units in merged.items()], frozenset(kinds)


def usage_items(usage: object, model_prefix: str, cost_map: CostMap) -> list[tuple[str, int]]:
    """The ``(usage_type, units)`` items a provider's usage payload books, priced by ``cost_map``.

    ``usage`` is the provider's usage report as returned (a dict, or an SDK object such as
    ``openai.types.CompletionUsage``, ``openai.types.responses.ResponseUsage`` or
    ``anthropic.types.Usage``; a whole response with a ``usage`` / ``usageMetadata`` field is
    accepted too). ``model_prefix`` is ``"<provider>:<model>"``; an undated model resolves to its
    newest dated price (``resolve_model_prefix``). See the module docstring for the rules.

    Nothing is recorded: pass the items to ``batch_increment_usages`` (as
    ``record_usage_object`` does), or to a cost estimate. Usage types the cost map does not
    price are returned as they are; recording them raises ``UnknownUsageType`` (or records them
    for free, on a service with ``unmapped="free"``). Bad counts raise ``ValueError`` /
    ``TypeError`` naming the field.
    """
    if not isinstance(cost_map, CostMap):
        raise TypeError(f"cost_map must be a usagemeter.CostMap, not {type(cost_map).__name__}")
    return _priced_items(usage, model_prefix, cost_map)[0]


def estimated_usage(model_prefix: str, input_tokens: int, output_tokens: int) -> dict[str, int]:
    """A usage payload in the provider's own shape, for token counts estimated by the caller.

    ``{"prompt_tokens": i, "completion_tokens": o}`` for OpenAI and the providers that copy it,
    ``{"input_tokens": i, "output_tokens": o}`` for Anthropic, ``{"promptTokenCount": i,
    "candidatesTokenCount": o}`` for Gemini; another provider gets OpenAI's names. Feeding it
    to ``usage_items`` or ``record_usage_object`` books the model's input and output types.
    """
    input_tokens = _count(input_tokens, "input_tokens")
    output_tokens = _count(output_tokens, "output_tokens")
    dialect = PROVIDERS.get(provider_of(model_prefix).lower())
    if dialect is _anthropic:
        return {"input_tokens": input_tokens, "output_tokens": output_tokens}
    if dialect is _gemini:
        return {"promptTokenCount": input_tokens, "candidatesTokenCount": output_tokens}
    return {"prompt_tokens": input_tokens, "completion_tokens": output_tokens}


def estimate_tokens(text: str) -> int:
    """Tokens estimated from text: ceil(characters / 4), OpenAI's rule of thumb for English."""
    return math.ceil(len(text) / 4)
