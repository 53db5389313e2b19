"""Helpers shared by the test modules.

`tests/` has no `__init__.py`, so pytest (and mypy) put it on the import path and the test
modules import this file as `support`. Fixtures live in `conftest.py`; plain functions and
constants live here so they can be imported and type-checked.
"""

from __future__ import annotations

import calendar
import decimal
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from usagemeter import ALARM, Actor, AlarmEvent, CostMap, MeteringService

# 2026-10-15T12:00:00Z and the first instant of November 2026 (UTC).
OCTOBER_15 = calendar.timegm((2026, 10, 15, 12, 0, 0))
NOVEMBER_1 = calendar.timegm((2026, 11, 1, 0, 0, 0))

# Exact prices of the small test cost map, in µ¢ per unit.
EGRESS = "filesystem:egress:bytes"
EGRESS_PRICE_TEXT = "0.0111758708953857421875"
EGRESS_PRICE = Decimal("0.011175870895")  # 12 fractional digits, rounded half-even at load
FRACTION = "claude:haiku:ephemeral_5m_input_tokens"  # 31.25 µ¢
TENTH = "tenth:of:a:microcent"  # 0.1 µ¢, given as a Decimal
PROMPT = "llm:org/model-1.5:prompt"
COMPLETION = "llm:org/model-1.5:completion"
HUGE = "huge:model:tokens"  # 10^18 µ¢ per unit: the largest price a cost map accepts
MAX_PRICE = 10**18

SMALL_PRICES: dict[str, int | str | Decimal] = {
    "kv:write": 125,
    "kv:read": 63,
    FRACTION: "31.25",
    EGRESS: EGRESS_PRICE_TEXT,
    TENTH: Decimal("0.1"),
    PROMPT: 2,
    COMPLETION: "8",
    "free:thing": 0,
    HUGE: str(MAX_PRICE),
}

# Every type of the small map whose cost stays far inside the ledger's range.
PRICED_TYPES: tuple[str, ...] = tuple(sorted(k for k in SMALL_PRICES if k != HUGE))
# Priced types with whole-µ¢ prices: their costs never need rounding.
INTEGRAL_TYPES: dict[str, int] = {"kv:write": 125, "kv:read": 63, PROMPT: 2, COMPLETION: 8, "free:thing": 0}

MAX_UNITS = 2**64 - 1


class FakeClock:
    """A settable clock returning epoch seconds, for `MeteringService(clock=...)`."""

    def __init__(self, now: float = OCTOBER_15) -> None:
        self.now: float = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def small_cost_map() -> CostMap:
    return CostMap.from_dict(SMALL_PRICES)


def new_service(cost_map: CostMap, **options: Any) -> MeteringService:
    """A service on `cost_map` whose clock stands still in October 2026 unless one is given."""
    options.setdefault("clock", FakeClock())
    return MeteringService(cost_map, **options)


def exact_cost(price: Decimal, units: int) -> Decimal:
    with decimal.localcontext() as context:
        context.prec = 100
        return price * units


def exact_sum(values: Iterable[Decimal | int]) -> Decimal:
    with decimal.localcontext() as context:
        context.prec = 100
        total = Decimal(0)
        for value in values:
            total += value
        return total


def round_half_up(value: Decimal) -> int:
    """Whole µ¢, half up: how the API reports an exact cost (all costs here are >= 0)."""
    with decimal.localcontext() as context:
        context.prec = 100
        return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def usage_of(service: MeteringService, actor: Actor) -> dict[str, Any]:
    """The `usage` part of the actor's current-month details."""
    details: Any = service.get_actor_current_month_usage_details(actor)
    usage: dict[str, Any] = details["usage"]
    return usage


def app_totals_of(service: MeteringService, actor: Actor) -> dict[str, Any]:
    details: Any = service.get_actor_current_month_usage_details(actor)
    totals: dict[str, Any] = details["app_totals"]
    return totals


BUDGET_KEYS = (
    "monthly_allowance",
    "allowance_used",
    "purchased_credits",
    "consumed_purchase_credits",
    "overage",
    "remaining",
)


def budget_of(service: MeteringService, actor: Actor) -> dict[str, int]:
    """The six figures /tmp/api_spec.md names for `get_actor_budget` (extra keys are ignored)."""
    budget: Any = service.get_actor_budget(actor)
    assert set(BUDGET_KEYS) <= set(budget)
    return {key: budget[key] for key in BUDGET_KEYS}


def global_usage(service: MeteringService) -> dict[str, Any]:
    report: Any = service.get_global_usage()
    result: dict[str, Any] = report
    return result


def collect_alarms(service: MeteringService) -> list[AlarmEvent]:
    """Every `metering:alarm` the service raises from now on, in order."""
    alarms: list[AlarmEvent] = []

    def on_alarm(event: AlarmEvent) -> None:
        alarms.append(event)

    service.events.on(ALARM, on_alarm)
    return alarms


def snapshot(service: MeteringService, actors: Sequence[Actor], apps: Sequence[str]) -> list[object]:
    """Everything observable about `actors` (and each app of their users) and the global month."""
    state: list[object] = [service.get_global_usage()]
    for actor in actors:
        user = Actor(actor.user_id)
        state.append(service.get_actor_current_month_usage_details(actor))
        state.append(service.get_actor_current_month_usage_details(user))
        state.append(service.get_actor_current_month_app_usage_details(actor))
        state.append(service.get_actor_budget(actor))
        state.append(service.get_actor_addons(actor))
        state.append(service.get_remaining_usage(actor))
        state.append(service.has_any_usage(actor))
        state.append(service.has_usage_this_month(actor))
        for app in apps:
            state.append(service.get_actor_current_month_app_usage_details(user, app))
            state.append(service.get_actor_app_usage(user, app))
    return state
