"""The benchmark workload: the seed system's pattern (an AI API server metering its users), with
realistic keys, generated deterministically from a seed before anything is timed.

- Actors: ``users`` users named ``user-00042``; a share of them act through an app
  (``Actor("user-00042", "app-3")``), and a few users also act through a second app, so app
  records and the ``others`` view are exercised.
- Usage types: real, priced entries of ``CostMap.default()`` (tokens, images, characters, seconds,
  bytes...), always including the ones whose price has a fraction of a µ¢, so the exact-money
  path and the rounding are exercised.
- Skew: actors and usage types are drawn from Zipf distributions (rank r has weight 1/r^s), so a
  few actors are hot (as on a real server), and a few models are most of the traffic. Ranks are
  shuffled over the actors so the hot ones are not simply the first names.
- Amounts follow the unit: hundreds to thousands of tokens, one to a few images, bytes in the
  kilobytes to megabytes.

Calls are kept as indexes (``Call``) and turned into each candidate's own argument tuples by
``call_args`` / ``batch_args``, so generation, and building actor objects, is never timed.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple, TypeVar

__all__ = [
    "Call",
    "Workload",
    "WorkloadConfig",
    "amount_range",
    "build_workload",
    "price_has_fraction",
    "zipf_cumulative_weights",
]

T = TypeVar("T")


@dataclass(frozen=True)
class WorkloadConfig:
    """What to generate. Defaults fit a ~5 minute run of the whole suite on 2 cores."""

    users: int = 20_000
    """Distinct users (1,000-100,000 in the issue)."""
    usage_types: int = 500
    """Distinct priced cost-map types drawn from (100-1,100 in the issue)."""
    calls: int = 200_000
    """Calls in one pass of the single-usage workload (and items in one pass of the batches)."""
    batch_size: int = 100
    """Items per ``batch_increment_usages`` call."""
    actor_skew: float = 1.1
    """Zipf exponent of the actor choice: the hottest actor gets ~1/8 of the calls."""
    type_skew: float = 1.0
    """Zipf exponent of the usage type choice."""
    app_share: float = 0.2
    """Share of users that act through an app."""
    second_app_share: float = 0.02
    """Share of users that also act through a second app (an extra actor)."""
    apps: int = 12
    """Distinct app ids."""
    credit_share: float = 0.1
    """Share of users with purchased credit (two monthly allowances' worth)."""
    monthly_allowance: int = 2_000_000_000
    """µ¢ per user and month ($20): the ~30 hottest users (half the calls) exhaust it within the
    first pass, the rest never do; ~120 overuse alarms a pass, so alarms stay a rare path."""
    seed: int = 4


class Call(NamedTuple):
    """One call: which actor (index into ``Workload.actor_keys``), which type, how many units."""

    actor: int
    usage_type: str
    amount: int


@dataclass(frozen=True)
class Workload:
    """The pre-generated calls and what they are made of."""

    config: WorkloadConfig
    prices: list[tuple[str, Decimal]]
    """Every price of the cost map (the reference prices from the same list as usagemeter)."""
    usage_types: list[str]
    """The types drawn from, most popular first."""
    actor_keys: list[tuple[str, str | None]]
    """``(user_id, app_id)`` of every actor."""
    credits: list[tuple[str, int]]
    """``(user_id, µ¢)`` of purchased credit, granted before the first call."""
    calls: list[Call]
    """The single-usage calls of one pass."""
    batches: list[tuple[int, list[tuple[str, int]]]]
    """``(actor index, [(usage_type, amount), ...])`` of one pass of batches."""

    def call_args(self, actors: Sequence[T], calls: Sequence[Call] | None = None) -> list[tuple[T, str, int]]:
        """The calls as ``(actor, usage_type, amount)`` tuples with the given actor objects."""
        return [(actors[c.actor], c.usage_type, c.amount) for c in (self.calls if calls is None else calls)]

    def batch_args(self, actors: Sequence[T]) -> list[tuple[T, list[tuple[str, int]]]]:
        """The batches as ``(actor, items)`` with the given actor objects (items are shared)."""
        return [(actors[index], items) for index, items in self.batches]

    def users(self) -> list[str]:
        """Every user id, in actor order, each once."""
        return list(dict.fromkeys(user for user, _ in self.actor_keys))


def zipf_cumulative_weights(count: int, exponent: float) -> list[float]:
    """Cumulative weights of ranks 1..count under Zipf(``exponent``), for ``random.choices``."""
    return list(itertools.accumulate(1.0 / rank**exponent for rank in range(1, count + 1)))


# Unit kinds by the last part of a usage type, and the amounts a call plausibly carries.
_TOKEN_WORDS = ("token", "prompt", "completion", "input", "output", "cache", "reasoning")


def amount_range(usage_type: str) -> tuple[int, int]:
    """Plausible ``(low, high)`` units for one call of ``usage_type`` (drawn log-uniformly)."""
    unit = usage_type.rsplit(":", 1)[-1].lower()
    if any(word in unit for word in _TOKEN_WORDS):
        return 20, 4_000
    if unit == "character":
        return 50, 5_000
    if unit == "bytes":
        return 1_000, 10_000_000
    if unit in ("second", "audio"):
        return 1, 60
    return 1, 4  # images, requests, pages, web searches, kv operations...


def _amount(rng: random.Random, low: int, high: int) -> int:
    if low == high:
        return low
    return int(low * (high / low) ** rng.random())


def _choose_types(prices: list[tuple[str, Decimal]], count: int, rng: random.Random) -> list[str]:
    """``count`` priced types, the fractional-price ones always among them, in popularity order."""
    price_of = dict(prices)
    priced = sorted(name for name, price in price_of.items() if price > 0)
    fractional = [name for name in priced if price_has_fraction(price_of[name])]
    if count > len(priced):
        raise ValueError(f"the cost map prices only {len(priced)} usage types, {count} were asked for")
    rest = [name for name in priced if not price_has_fraction(price_of[name])]
    chosen = fractional[:count] + rng.sample(rest, count - min(count, len(fractional)))
    rng.shuffle(chosen)
    return chosen


def price_has_fraction(price: Decimal) -> bool:
    """Whether a price (µ¢) is not a whole number of µ¢."""
    return price != price.to_integral_value()


def build_workload(config: WorkloadConfig, prices: list[tuple[str, Decimal]]) -> Workload:
    """Generate the workload for ``config`` from the cost map's ``prices`` (deterministic)."""
    rng = random.Random(config.seed)
    usage_types = _choose_types(prices, config.usage_types, rng)
    width = max(5, len(str(config.users - 1)))
    actor_keys: list[tuple[str, str | None]] = []
    second_actors: list[tuple[str, str | None]] = []
    for index in range(config.users):
        user_id = f"user-{index:0{width}d}"
        app = rng.randrange(config.apps) if rng.random() < config.app_share else None
        actor_keys.append((user_id, None if app is None else f"app-{app}"))
        if rng.random() < config.second_app_share:
            other = (0 if app is None else app + 1 + rng.randrange(config.apps - 1)) % config.apps
            second_actors.append((user_id, f"app-{other}"))
    actor_keys.extend(second_actors)
    credits = [
        (user_id, 2 * config.monthly_allowance)
        for user_id in dict.fromkeys(user for user, _ in actor_keys)
        if rng.random() < config.credit_share
    ]

    # Hot actors are a random few, not the first names: shuffle which actor gets which rank.
    actor_by_rank = list(range(len(actor_keys)))
    rng.shuffle(actor_by_rank)
    actor_weights = zipf_cumulative_weights(len(actor_by_rank), config.actor_skew)
    type_weights = zipf_cumulative_weights(len(usage_types), config.type_skew)
    ranges = {name: amount_range(name) for name in usage_types}

    def draw_items(count: int) -> list[tuple[str, int]]:
        types = rng.choices(usage_types, cum_weights=type_weights, k=count)
        return [(name, _amount(rng, *ranges[name])) for name in types]

    actors = rng.choices(actor_by_rank, cum_weights=actor_weights, k=config.calls)
    calls = [
        Call(actor, name, amount)
        for actor, (name, amount) in zip(actors, draw_items(config.calls), strict=True)
    ]
    batch_count = max(1, config.calls // config.batch_size)
    batch_actors = rng.choices(actor_by_rank, cum_weights=actor_weights, k=batch_count)
    batches = [(actor, draw_items(config.batch_size)) for actor in batch_actors]
    return Workload(
        config=config,
        prices=prices,
        usage_types=usage_types,
        actor_keys=actor_keys,
        credits=credits,
        calls=calls,
        batches=batches,
    )
