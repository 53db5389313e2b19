"""A pure-Python implementation of ``MeteringService``'s metering semantics: the yardstick.

This is what a careful Python developer would write without a native core: plain dicts, one
``threading.Lock`` around every read and write of the ledger, and exact money as Python ints of
attocents (1 µ¢ = 10**12 attocents, so the 12 fractional digits of a price are kept exactly, as
usagemeter keeps them). It implements the benchmarked operations (``increment_usage``,
``try_increment_usage``, ``has_enough_credits_for``, ``batch_increment_usages``) and the reads
the benchmarks compare (``get_actor_current_month_usage_details``, ``get_global_usage``,
``get_actor_budget``), with the same shapes and the same rounding (half up to whole µ¢) as
usagemeter, so ``reference.read(...) == service.read(...)`` is the correctness check.

Same semantics, on purpose: the same input validation, the same per-actor range checks, the two
budget pools (monthly allowance, then lifetime purchased credit, then overage), the per-app
records, the global month aggregate, the overuse alarm ("the month total crossed a whole multiple
k >= 2 of the allowance with no purchased credit left"), and the clock read on every call.
Differences, also on purpose: every user has the same fixed ``monthly_allowance`` (no plan
events: the benchmarks configure usagemeter with one policy so every actor gets the same), and
only the cost map's priced types are accepted (``unmapped="error"``, no cost overrides in the
batch fast path beyond what the API allows).
"""

from __future__ import annotations

import calendar
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = [
    "ATTOCENTS_PER_MICROCENT",
    "GLOBAL_APP",
    "OTHER_APPS",
    "RefActor",
    "ReferenceMeter",
    "UserView",
    "microcents_half_up",
    "month_window",
    "price_attocents",
]

ATTOCENTS_PER_MICROCENT = 10**12
_HALF_MICROCENT = ATTOCENTS_PER_MICROCENT // 2
GLOBAL_APP = "os-global"
OTHER_APPS = "others"
MAX_UNITS = 2**64 - 1
# An actor's month (and each of its records) stays within 10^18 µ¢, as in usagemeter
# (`money::MAX_RECORD_ATTOCENTS`).
MAX_RECORD_ATTOCENTS = 10**18 * ATTOCENTS_PER_MICROCENT
# A cost beyond this is affordable to nobody (`money::MAX_ABS_ATTOCENTS`).
MAX_ABS_ATTOCENTS = 10**36
RESERVED_USAGE_TYPES = frozenset({"total"})

logger = logging.getLogger("usagemeter.reference")


def price_attocents(price: Decimal) -> int:
    """A cost-map price (µ¢ per unit, at most 12 fractional digits) as exact integer attocents."""
    sign, digits, exponent = price.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"price must be finite, got {price}")
    coefficient = int("".join(map(str, digits)) or "0")
    shift = exponent + 12
    if shift >= 0:
        value: int = coefficient * 10**shift
    else:
        value, remainder = divmod(coefficient, 10 ** (-shift))
        if remainder:
            raise ValueError(f"price {price} has more than 12 fractional digits")
    return -value if sign else value


def microcents_half_up(attocents: int) -> int:
    """Exact attocents rounded half up (towards +infinity on a tie) to whole µ¢, as usagemeter."""
    return (attocents + _HALF_MICROCENT) // ATTOCENTS_PER_MICROCENT


def month_window(epoch_seconds: float) -> tuple[float, float, str]:
    """``(start, end, "YYYY-MM")`` of the UTC month containing ``epoch_seconds``."""
    moment = time.gmtime(epoch_seconds)
    year, month = moment.tm_year, moment.tm_mon
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    return (
        float(calendar.timegm((year, month, 1, 0, 0, 0))),
        float(calendar.timegm((next_year, next_month, 1, 0, 0, 0))),
        f"{year:04d}-{month:02d}",
    )


@dataclass(frozen=True, slots=True)
class RefActor:
    """A user, optionally acting through an app: the reference's ``Actor``."""

    user_id: str
    app_id: str | None = None
    is_system: bool = False


class _Record:
    """A month record: total and count, and ``[units, cost, count]`` per usage type.

    Counters are 3-item lists rather than objects: one allocation, updated in place.
    """

    __slots__ = ("by_type", "count", "total")

    def __init__(self) -> None:
        self.total = 0
        self.count = 0
        self.by_type: dict[str, list[int]] = {}


class _UserMonth(_Record):
    """A user's month: the record over all apps, one record per app, and the pools."""

    __slots__ = ("allowance_used", "apps", "overage", "purchased_consumed")

    def __init__(self) -> None:
        super().__init__()
        self.apps: dict[str, _Record] = {}
        self.allowance_used = 0
        self.purchased_consumed = 0
        self.overage = 0


def _remaining(account: _Account, user_month: _UserMonth, allowance: int) -> int:
    """``max(0, allowance - allowance_used) + (purchased - consumed)``, exact."""
    return max(0, allowance - user_month.allowance_used) + account.purchased - account.consumed


def _split_over_pools(account: _Account, user_month: _UserMonth, allowance: int, cost: int) -> None:
    """Book a non-negative ``cost``: the allowance first, then purchased credit, then overage."""
    room = max(0, allowance - user_month.allowance_used)
    from_allowance = min(cost, room)
    from_purchased = min(cost - from_allowance, account.purchased - account.consumed)
    user_month.allowance_used += from_allowance
    user_month.purchased_consumed += from_purchased
    user_month.overage += cost - from_allowance - from_purchased
    account.consumed += from_purchased


class _Account:
    """A user: lifetime purchased credit and every month it has used."""

    __slots__ = ("consumed", "months", "purchased")

    def __init__(self) -> None:
        self.purchased = 0
        self.consumed = 0
        self.months: dict[str, _UserMonth] = {}


_EMPTY_MONTH = _UserMonth()
_EMPTY_ACCOUNT = _Account()


@dataclass(frozen=True)
class UserView:
    """Everything recorded for one user this month, exactly, to compare other stores against."""

    usage: dict[str, Any]
    """``{"total": µ¢, "<type>": {"units", "cost", "count"}}`` (µ¢ rounded half up)."""
    apps: dict[str, dict[str, int]]
    """``{"<app>": {"total": µ¢, "count"}}`` for every app the user used."""
    app_usage: dict[str, dict[str, Any]]
    """``{"<app>": {"total", "<type>": {"units", "cost", "count"}}}``: each app's own record."""
    pools_attocents: tuple[int, int, int]
    """``(allowance_used, purchased_consumed, overage)`` this month, exact."""
    consumed_attocents: int
    """Purchased credit consumed over the user's lifetime, exact."""


def _report(record: _Record) -> dict[str, Any]:
    report: dict[str, Any] = {"total": microcents_half_up(record.total)}
    for usage_type, (units, cost, count) in record.by_type.items():
        report[usage_type] = {"units": units, "cost": microcents_half_up(cost), "count": count}
    return report


def _check_amount(amount: object, what: str) -> int:
    if type(amount) is not int:  # bool is a subclass of int: refused too
        raise TypeError(f"{what} must be an int, not {type(amount).__name__}")
    if amount < 0:
        raise ValueError(f"{what} must not be negative, got {amount}")
    if amount > MAX_UNITS:
        raise OverflowError(f"{what} {amount} is larger than 2**64-1")
    return amount


def _check_usage_type(usage_type: object) -> str:
    if type(usage_type) is not str:
        raise TypeError(f"usage type must be a str, not {type(usage_type).__name__}")
    if not usage_type:
        raise ValueError("usage type must be a non-empty string")
    if usage_type in RESERVED_USAGE_TYPES:
        raise ValueError(f"usage type {usage_type!r} is reserved: reports use it for the total")
    return usage_type


def _override_attocents(cost_override: object) -> int:
    if type(cost_override) is not int:
        raise TypeError(f"cost_override must be an int, not {type(cost_override).__name__}")
    if cost_override < 0:
        raise ValueError(f"cost_override must not be negative, got {cost_override}")
    cost = cost_override * ATTOCENTS_PER_MICROCENT
    if cost > MAX_RECORD_ATTOCENTS:
        raise OverflowError(f"cost_override {cost_override} is larger than the ledger's range")
    return cost


class ReferenceMeter:
    """Meters usage per user, month, usage type and app, with one fixed monthly allowance.

    ``prices`` are ``(usage_type, Decimal µ¢ per unit)`` pairs (e.g. ``CostMap.items()``);
    ``monthly_allowance`` is in µ¢ and the same for every user. ``on_alarm(kind, actor,
    usage_type, message)`` is called (outside the lock) for each overuse alarm. Thread-safe:
    one lock guards the whole ledger.
    """

    def __init__(
        self,
        prices: Iterable[tuple[str, Decimal]],
        monthly_allowance: int,
        *,
        clock: Callable[[], float] = time.time,
        on_alarm: Callable[[str, RefActor, str | None, str], object] | None = None,
    ) -> None:
        """Build an empty ledger pricing with ``prices``."""
        self._prices: dict[str, int] = {name: price_attocents(price) for name, price in prices}
        self._allowance = monthly_allowance * ATTOCENTS_PER_MICROCENT
        self._clock = clock
        self._on_alarm = on_alarm
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self._global: dict[str, _Record] = {}
        # (start, end, label) of the month last seen, replaced as one tuple so that a thread never
        # reads the bounds of one month with the label of another.
        self._month_window: tuple[float, float, str] = (0.0, 0.0, "")
        self.alarms = 0
        """How many overuse alarms were raised."""

    # -- time ---------------------------------------------------------------------------------

    def _current_month(self) -> str:
        """This UTC month; the clock is read on every call, the label recomputed once a month."""
        now = self._clock()
        start, end, label = self._month_window
        if start <= now < end:
            return label
        self._month_window = month_window(now)
        return self._month_window[2]

    # -- writes -------------------------------------------------------------------------------

    def increment_usage(
        self, actor: RefActor, usage_type: str, amount: int, cost_override: int | None = None
    ) -> int:
        """Record ``amount`` units of ``usage_type``; return the user's month total in µ¢."""
        total = self._charge_one(actor, usage_type, amount, cost_override, False)
        assert total is not None  # only try_increment_usage is refused
        return microcents_half_up(total)

    def try_increment_usage(
        self, actor: RefActor, usage_type: str, amount: int, cost_override: int | None = None
    ) -> int | None:
        """Record only if the user's remaining budget covers the cost; the new total or None."""
        total = self._charge_one(actor, usage_type, amount, cost_override, True)
        return None if total is None else microcents_half_up(total)

    def _charge_one(
        self,
        actor: RefActor,
        usage_type: str,
        amount: int,
        cost_override: int | None,
        if_affordable: bool,
    ) -> int | None:
        """One usage; returns the month total in attocents (0 for the system actor), or None
        when ``if_affordable`` refused it."""
        if type(usage_type) is not str:
            _check_usage_type(usage_type)
        _check_amount(amount, "amount")
        override = None if cost_override is None else _override_attocents(cost_override)
        if actor.is_system:
            return 0
        if not usage_type or usage_type in RESERVED_USAGE_TYPES:
            _check_usage_type(usage_type)
        if override is None:
            if amount == 0:  # records nothing, whatever the type
                return self._month_total(actor.user_id)
            cost = self._price(usage_type) * amount
            if cost > MAX_ABS_ATTOCENTS:
                raise OverflowError("the cost of the call is beyond the ledger's range")
        else:
            cost = override
        month = self._current_month()
        app_id = actor.app_id or GLOBAL_APP
        user_id = actor.user_id
        allowance = self._allowance
        with self._lock:
            account = self._accounts.get(user_id)
            if account is None:
                account = self._accounts[user_id] = _Account()
            user_month = account.months.get(month) or _EMPTY_MONTH
            before = user_month.total
            net_before = user_month.allowance_used + user_month.overage
            counter = user_month.by_type.get(usage_type)
            if counter is not None and counter[0] + amount > MAX_UNITS:
                raise OverflowError("the actor's month units would leave the ledger's range")
            if before + cost > MAX_RECORD_ATTOCENTS:
                raise OverflowError("the actor's month total would leave the ledger's range")
            if if_affordable and cost > 0 and _remaining(account, user_month, allowance) < cost:
                return None
            if user_month is _EMPTY_MONTH:
                user_month = account.months[month] = _UserMonth()
            _split_over_pools(account, user_month, allowance, cost)
            after = before + cost
            user_month.total = after
            user_month.count += 1
            if counter is None:
                user_month.by_type[usage_type] = [amount, cost, 1]
            else:
                counter[0] += amount
                counter[1] += cost
                counter[2] += 1
            for record in (
                user_month.apps.get(app_id) or user_month.apps.setdefault(app_id, _Record()),
                self._global.get(month) or self._global.setdefault(month, _Record()),
            ):
                record.total += cost
                record.count += 1
                counter = record.by_type.get(usage_type)
                if counter is None:
                    record.by_type[usage_type] = [amount, cost, 1]
                else:
                    counter[0] += amount
                    counter[1] += cost
                    counter[2] += 1
            overuse = self._overuse_multiple(account, user_month, net_before)
        if overuse:
            self._raise_overuse(actor, after, overuse)
        return after

    def batch_increment_usages(
        self, actor: RefActor, usages: Iterable[tuple[str, int] | tuple[str, int, int | None]]
    ) -> int:
        """Record several usages as one atomic event: all validated first, all or nothing."""
        deltas: dict[str, list[int]] = {}
        for item in usages:
            if not 2 <= len(item) <= 3:
                raise ValueError("each usage must have 2 or 3 fields (usage_type, amount[, cost_override])")
            usage_type = item[0]
            if type(usage_type) is not str:
                _check_usage_type(usage_type)
            amount = _check_amount(item[1], "amount")
            cost_override = item[2] if len(item) == 3 else None
            override = None if cost_override is None else _override_attocents(cost_override)
            if actor.is_system:
                continue  # validated, never recorded (nor priced)
            _check_usage_type(usage_type)
            if override is not None:
                cost = override
            elif amount == 0:
                continue  # records nothing
            else:
                cost = self._price(usage_type) * amount
                if cost > MAX_ABS_ATTOCENTS:
                    raise OverflowError("the cost of the batch is beyond the ledger's range")
            delta = deltas.get(usage_type)
            if delta is None:
                deltas[usage_type] = [amount, cost, 1]
            else:
                delta[0] += amount
                delta[1] += cost
                delta[2] += 1
        if actor.is_system:
            return 0
        if not deltas:
            return microcents_half_up(self._month_total(actor.user_id))
        cost = sum(delta[1] for delta in deltas.values())
        items = sum(delta[2] for delta in deltas.values())
        month = self._current_month()
        app_id = actor.app_id or GLOBAL_APP
        allowance = self._allowance
        with self._lock:
            account = self._accounts.get(actor.user_id)
            if account is None:
                account = self._accounts[actor.user_id] = _Account()
            user_month = account.months.get(month) or _EMPTY_MONTH
            before = user_month.total
            net_before = user_month.allowance_used + user_month.overage
            for usage_type, (units, _, _) in deltas.items():
                counter = user_month.by_type.get(usage_type)
                if units > MAX_UNITS or (counter is not None and counter[0] + units > MAX_UNITS):
                    raise OverflowError("the actor's month units would leave the ledger's range")
            if before + cost > MAX_RECORD_ATTOCENTS:
                raise OverflowError("the actor's month total would leave the ledger's range")
            if user_month is _EMPTY_MONTH:
                user_month = account.months[month] = _UserMonth()
            _split_over_pools(account, user_month, allowance, cost)
            app_record = user_month.apps.get(app_id) or user_month.apps.setdefault(app_id, _Record())
            global_record = self._global.get(month) or self._global.setdefault(month, _Record())
            for record in (user_month, app_record, global_record):
                record.total += cost
                record.count += items
                by_type = record.by_type
                for usage_type, (units, type_cost, count) in deltas.items():
                    counter = by_type.get(usage_type)
                    if counter is None:
                        by_type[usage_type] = [units, type_cost, count]
                    else:
                        counter[0] += units
                        counter[1] += type_cost
                        counter[2] += count
            after = user_month.total
            overuse = self._overuse_multiple(account, user_month, net_before)
        if overuse:
            self._raise_overuse(actor, after, overuse)
        return microcents_half_up(after)

    def _overuse_multiple(self, account: _Account, user_month: _UserMonth, net_before: int) -> int:
        """The power-of-two multiple (>= 2) of the allowance that the month's usage net of
        purchased credit (allowance used + overage) crossed with this charge, no purchased credit
        left and having been at least the allowance already, else 0: the user is paged at 2x,
        4x, 8x ... (as usagemeter's ``pools::overuse_multiple_crossed``). Called under the lock."""
        allowance = self._allowance
        net_after = user_month.allowance_used + user_month.overage
        if account.purchased != account.consumed or allowance <= 0:
            return 0
        if net_before < allowance or net_after < 2 * allowance:
            return 0
        multiple = 1 << ((net_after // allowance).bit_length() - 1)  # largest power of two <= after
        if net_before < allowance * multiple:
            self.alarms += 1
            return multiple
        return 0

    def _raise_overuse(self, actor: RefActor, after: int, multiple: int) -> None:
        """Log the overuse alarm and call ``on_alarm`` (outside the lock, as usagemeter does)."""
        message = (
            f"month total {microcents_half_up(after)} µ¢ reached {multiple}x the monthly "
            f"allowance of {microcents_half_up(self._allowance)} µ¢ with no purchased credit left"
        )
        logger.warning("metering alarm overuse for %r: %s", actor, message)
        if self._on_alarm is not None:
            self._on_alarm("overuse", actor, None, message)

    def update_addon_credit(self, user_id: str, amount: int) -> int:
        """Add purchased credit (µ¢, >= 0) to a user; return the user's purchased total in µ¢."""
        _check_amount(amount, "amount")
        with self._lock:
            account = self._accounts.get(user_id)
            if account is None:
                account = self._accounts[user_id] = _Account()
            account.purchased += amount * ATTOCENTS_PER_MICROCENT
            return microcents_half_up(account.purchased)

    def _price(self, usage_type: str) -> int:
        """The price of a usage type in attocents per unit; KeyError if the cost map has none."""
        price = self._prices.get(usage_type)
        if price is None:
            raise KeyError(f"usage type {usage_type!r} is not in the cost map")
        return price

    # -- reads --------------------------------------------------------------------------------

    def _month_total(self, user_id: str) -> int:
        month = self._current_month()
        with self._lock:
            account = self._accounts.get(user_id) or _EMPTY_ACCOUNT
            return (account.months.get(month) or _EMPTY_MONTH).total

    def has_enough_credits_for(self, actor: RefActor, usage_type: str, amount: int) -> bool:
        """Whether the user's remaining budget covers ``amount`` units of ``usage_type``."""
        _check_usage_type(usage_type)
        _check_amount(amount, "amount")
        price = self._price(usage_type)
        if actor.is_system:
            return True
        cost = price * amount
        if cost > MAX_ABS_ATTOCENTS:
            return False
        month = self._current_month()
        with self._lock:
            account = self._accounts.get(actor.user_id) or _EMPTY_ACCOUNT
            user_month = account.months.get(month) or _EMPTY_MONTH
            return _remaining(account, user_month, self._allowance) >= cost

    def get_actor_current_month_usage_details(self, actor: RefActor) -> dict[str, Any]:
        """``{"usage": {"total", "<type>": {...}}, "app_totals": {"<app>": {"total", "count"}}}``.

        An app actor sees its own app and ``"others"`` (the sum of the user's other apps).
        """
        month = self._current_month()
        with self._lock:
            account = self._accounts.get(actor.user_id) or _EMPTY_ACCOUNT
            user_month = _EMPTY_MONTH if actor.is_system else account.months.get(month) or _EMPTY_MONTH
            usage = _report(user_month)
            apps = [(app, record.total, record.count) for app, record in user_month.apps.items()]
        app_totals: dict[str, dict[str, int]] = {}
        if actor.app_id is None:
            for app, total, count in apps:
                app_totals[app] = {"total": microcents_half_up(total), "count": count}
        else:
            own_total = own_count = other_total = other_count = 0
            for app, total, count in apps:
                if app == actor.app_id:
                    own_total += total
                    own_count += count
                else:
                    other_total += total
                    other_count += count
            app_totals[actor.app_id] = {"total": microcents_half_up(own_total), "count": own_count}
            app_totals[OTHER_APPS] = {"total": microcents_half_up(other_total), "count": other_count}
        return {"usage": usage, "app_totals": app_totals}

    def get_global_usage(self) -> dict[str, Any]:
        """This month's usage over all actors: ``{"total", "<type>": {"units", "cost", "count"}}``."""
        month = self._current_month()
        with self._lock:
            return _report(self._global.get(month) or _EMPTY_MONTH)

    def get_actor_budget(self, actor: RefActor) -> dict[str, int]:
        """This month's pools in whole µ¢, rounded as usagemeter rounds them (running sums).

        ``allowance_used + consumed_this_month + overage`` is the rounded month total, and
        ``remaining = max(0, allowance - allowance_used) + (purchased - consumed)``.
        """
        if actor.is_system:
            raise ValueError("the system actor is not metered: it has no budget")
        month = self._current_month()
        with self._lock:
            account = self._accounts.get(actor.user_id) or _EMPTY_ACCOUNT
            user_month = account.months.get(month) or _EMPTY_MONTH
            used, consumed_now, overage = (
                user_month.allowance_used,
                user_month.purchased_consumed,
                user_month.overage,
            )
            purchased, consumed = account.purchased, account.consumed
        allowance_used = microcents_half_up(used)
        through_purchased = microcents_half_up(used + consumed_now)
        total = microcents_half_up(used + consumed_now + overage)
        allowance = microcents_half_up(self._allowance)
        purchased_credits = microcents_half_up(purchased)
        consumed_credits = microcents_half_up(consumed)
        return {
            "monthly_allowance": allowance,
            "allowance_used": allowance_used,
            "purchased_credits": purchased_credits,
            "consumed_purchase_credits": consumed_credits,
            "consumed_this_month": through_purchased - allowance_used,
            "overage": total - through_purchased,
            "held": 0,  # the reference makes no holds (the benchmarked workload makes none)
            "remaining": max(0, allowance - allowance_used) + (purchased_credits - consumed_credits),
        }

    def user_view(self, user_id: str) -> UserView:
        """Everything recorded for ``user_id`` this month (apps unfiltered, pools exact)."""
        month = self._current_month()
        with self._lock:
            account = self._accounts.get(user_id) or _EMPTY_ACCOUNT
            user_month = account.months.get(month) or _EMPTY_MONTH
            return UserView(
                usage=_report(user_month),
                apps={
                    app: {"total": microcents_half_up(record.total), "count": record.count}
                    for app, record in user_month.apps.items()
                },
                app_usage={app: _report(record) for app, record in user_month.apps.items()},
                pools_attocents=(
                    user_month.allowance_used,
                    user_month.purchased_consumed,
                    user_month.overage,
                ),
                consumed_attocents=account.consumed,
            )

    def users(self) -> list[str]:
        """Every user with usage recorded this month."""
        month = self._current_month()
        with self._lock:
            return [user for user, account in self._accounts.items() if month in account.months]
