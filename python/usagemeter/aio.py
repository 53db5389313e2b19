"""``AsyncMeteringService``: the service for asyncio (and trio, through anyio) servers.

The same methods as ``MeteringService``, as coroutines, over the same native ledger. A call that
never waits (a charge, a credit check, a report of one user) runs the native method directly on
the event loop: it takes a fraction of a microsecond and no lock that I/O holds. What can wait
runs elsewhere, so the loop is never blocked:

- a plan look-up whose listeners are ``async def`` is awaited on the loop (the native call is
  then made again with the plan in hand);
- ``flush()``, ``close()``, opening a store (``AsyncMeteringService.open``) and the reports that
  scan every user run in a worker thread;
- on a fleet's shared ledger, a ``try_increment_usage`` that needs a budget lease from Redis (one
  round trip) runs in a worker thread; the calls its lease covers stay on the loop. So do keyed
  calls and refunds, which are decided on the shared ledger.

Under trio (or any loop but asyncio's) the worker threads come from ``anyio``, which must then be
installed.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

from usagemeter._core import Actor, CostMap, Meter
from usagemeter.events import (
    MONTHLY_CHARGES,
    AsyncListenerError,
    EventBus,
    MonthlyCharge,
    MonthlyChargesApplied,
)
from usagemeter.holds import Hold
from usagemeter.policies import Policy
from usagemeter.providers import service_tier_of
from usagemeter.service import _SHARED_BACKENDS, MeteringService, _month_label
from usagemeter.types import (
    ActorBudget,
    ActorReport,
    AddonCredits,
    AllowedUsage,
    AppTotals,
    UsageByDay,
    UsageDetails,
    UsageReport,
)

__all__ = ["AsyncMeter", "AsyncMeteringService"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

Usages = Iterable[tuple[str, int] | tuple[str, int, int | None]]

_NOT_PREPARED = object()
"""No monthly charges handed over: the ledger asks the listeners itself (`_prepared_call`)."""


async def _in_thread(call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run ``call`` in a worker thread: asyncio's default executor, else anyio's (trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        try:
            import anyio.to_thread
        except ImportError:
            raise RuntimeError(
                "usagemeter.aio runs on asyncio, or on another event loop through anyio: "
                "install anyio (pip install anyio)"
            ) from None
        return await anyio.to_thread.run_sync(functools.partial(call, *args, **kwargs))
    return await asyncio.to_thread(call, *args, **kwargs)


class AsyncMeteringService:
    """``MeteringService``'s methods as coroutines, never blocking the event loop.

    ``AsyncMeteringService(service)`` wraps a ``MeteringService`` (sync code may go on using it:
    one ledger). ``await AsyncMeteringService.open(cost_map, **options)`` builds one, opening its
    store in a worker thread; the options are ``MeteringService``'s. ``async with`` closes it.

    Listeners of the plan events may be ``async def``; they are awaited. Listeners that are plain
    functions run on the loop, as in ``MeteringService``: make one that waits on I/O async.
    """

    sync: MeteringService
    """The ``MeteringService`` underneath (the same ledger, for sync code and threads)."""

    def __init__(self, service: MeteringService) -> None:
        """Wrap ``service``; does no I/O."""
        if not isinstance(service, MeteringService):
            raise TypeError(f"expected a MeteringService, not {type(service).__name__}")
        self.sync = service
        # On a fleet, keyed calls and a month's first charges wait on Redis: they run in a
        # worker thread (`_keyed`, `_after_plan`), never on the loop.
        self._fleet = service.store_backend in _SHARED_BACKENDS
        service._offload_from_loop = True
        # The hottest native methods, bound once (an attribute lookup less per call).
        self._increment_usage = service.increment_usage
        self._try_nowait = service._try_increment_usage_nowait
        self._has_enough_credits_for = service.has_enough_credits_for
        self._has_any_usage = service.has_any_usage

    @classmethod
    async def open(cls, cost_map: CostMap | None = None, **options: Any) -> Self:
        """Build a ``MeteringService(cost_map, **options)`` in a worker thread (opening a store
        reads it, and a shared ledger connects to Redis) and wrap it."""
        service = await _in_thread(functools.partial(MeteringService, cost_map, **options))
        opened = cls(service)
        opened._bind_loop()
        return opened

    async def __aenter__(self) -> Self:
        """Return the service; leaving the block closes it."""
        self._bind_loop()
        return self

    def _bind_loop(self) -> None:
        """Async alarm listeners reached from other threads (the monitor's store errors) run on
        the loop this service is used from."""
        loop = _running_loop_or_none()
        if loop is not None:
            self.events.bind_loop(loop)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the service (its last snapshot is written in a worker thread)."""
        await self.close()

    @property
    def events(self) -> EventBus:
        """The events of the service: ``events.on(name, listener)``; listeners may be async."""
        return self.sync.events

    @property
    def cost_map(self) -> CostMap:
        """The cost map the service prices with."""
        return self.sync.cost_map

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has begun."""
        return self.sync.closed

    @property
    def store_path(self) -> str | None:
        """The store directory or the shared ledger's URL, or None."""
        return self.sync.store_path

    @property
    def store_backend(self) -> str | None:
        """The store backend, or None for a memory-only service."""
        return self.sync.store_backend

    async def _with_plan(
        self, actor: Actor, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run a native call that may need the actor's plan. If the plan is not cached and a
        listener is async, the native call refuses (``AsyncListenerError``, nothing recorded):
        resolve the plan here, awaiting the listeners, and make the call again with it."""
        try:
            return call(*args, **kwargs)
        except AsyncListenerError:
            return await self._after_plan(actor, call, *args, **kwargs)

    async def _after_plan(
        self, actor: Actor, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """The slow half of ``_with_plan``: await the plan's listeners, then call again with it.
        (The hottest methods inline the fast half: one coroutine a call, not two.)"""
        self._bind_loop()
        policy = await self.sync._resolve_policy_async(actor)
        local = self.sync._prepared_plans
        plans: dict[Actor, Policy] | None = getattr(local, "plans", None)
        if plans is None:
            plans = local.plans = {}
        plans[actor] = policy
        # The first charge of a month applies the monthly charges: if a listener is async, it is
        # awaited here and its charges handed over like the plan (applied once by the ledger).
        # (None: a listener failed, its alarm is raised, and the ledger tries again later.)
        monthly: dict[Actor, list[MonthlyCharge] | None] | None = None
        due = self.events.has_async_listeners(MONTHLY_CHARGES)
        if due and self.sync._monthly_charges_applied(actor) is None:
            charges = await self._monthly_charges_or_alarm(actor)
            monthly = getattr(local, "monthly", None)
            if monthly is None:
                monthly = local.monthly = {}
            monthly[actor] = charges
        if self._fleet:
            # The call may write the month's charges to the shared ledger: off the loop, with
            # the plan (and charges) handed over in that thread.
            plans.pop(actor, None)
            handed: object = monthly.pop(actor, None) if monthly is not None else _NOT_PREPARED
            prepared = functools.partial(self._prepared_call, actor, policy, handed, call, *args, **kwargs)
            return await _in_thread(prepared)
        try:
            return call(*args, **kwargs)
        finally:
            plans.pop(actor, None)
            if monthly is not None:
                monthly.pop(actor, None)

    def _prepared_call(
        self,
        actor: Actor,
        policy: Policy,
        charges: list[MonthlyCharge] | object | None,
        call: Callable[_P, _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """``call`` in a worker thread, with the actor's plan (and monthly charges, unless
        ``_NOT_PREPARED``) handed over through that thread's ``_prepared_plans``."""
        local = self.sync._prepared_plans
        plans: dict[Actor, Policy] = getattr(local, "plans", None) or {}
        local.plans = plans
        plans[actor] = policy
        monthly: dict[Actor, Any] | None = None
        if charges is not _NOT_PREPARED:
            monthly = getattr(local, "monthly", None) or {}
            local.monthly = monthly
            monthly[actor] = charges
        try:
            return call(*args, **kwargs)
        finally:
            plans.pop(actor, None)
            if monthly is not None:
                monthly.pop(actor, None)

    async def _keyed(self, actor: Actor, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """A call with an idempotency key: on a fleet it is decided on the shared ledger, so it
        runs in a worker thread; elsewhere it never waits, and runs here."""
        if not self._fleet:
            return await self._with_plan(actor, call, *args, **kwargs)
        try:
            return await _in_thread(call, *args, **kwargs)
        except AsyncListenerError:
            return await self._after_plan(actor, call, *args, **kwargs)

    async def _monthly_charges_or_alarm(self, actor: Actor) -> list[MonthlyCharge] | None:
        """The monthly charges, awaited; None (and a ``monthly_charges`` alarm) if a listener
        fails, as ``MeteringService._monthly_charges_hook`` does."""
        month = _month_of(self.sync)
        try:
            return await self.sync._collect_monthly_charges_async(actor, month)
        except Exception as error:
            self.sync._raise_alarm(
                "monthly_charges",
                actor,
                None,
                f"the monthly charges of {month} were not applied (the next charge tries again): "
                f"a listener failed: {error!r}",
            )
            return None

    # Recording usage.

    async def increment_usage(
        self,
        actor: Actor,
        usage_type: str,
        amount: int,
        cost_override: int | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> int:
        """Record ``amount`` units of ``usage_type``; return the user's month total in µ¢.
        With ``idempotency_key``, a retry records nothing and returns the first call's total."""
        if idempotency_key is not None:
            return await self._keyed(
                actor,
                self.sync.increment_usage,
                actor,
                usage_type,
                amount,
                cost_override,
                idempotency_key=idempotency_key,
            )
        try:
            return self._increment_usage(actor, usage_type, amount, cost_override)
        except AsyncListenerError:
            return await self._after_plan(
                actor, self._increment_usage, actor, usage_type, amount, cost_override
            )

    async def try_increment_usage(
        self,
        actor: Actor,
        usage_type: str,
        amount: int,
        cost_override: int | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> int | None:
        """Record only if the remaining budget covers the cost; return the new total or None.

        On a fleet, a charge that needs a new budget lease from Redis runs in a worker thread.
        With ``idempotency_key``, a retry of an accepted call returns its total, recording
        nothing (a refused call keeps no key: its retry is decided again).
        """
        if idempotency_key is not None and self._fleet:
            return await self._keyed(
                actor,
                self.sync.try_increment_usage,
                actor,
                usage_type,
                amount,
                cost_override,
                idempotency_key=idempotency_key,
            )
        try:
            decided, total = self._try_nowait(
                actor, usage_type, amount, cost_override, idempotency_key=idempotency_key
            )
        except AsyncListenerError:
            decided, total = await self._after_plan(
                actor,
                self._try_nowait,
                actor,
                usage_type,
                amount,
                cost_override,
                idempotency_key=idempotency_key,
            )
        if decided:
            return total
        return await _in_thread(self._try_in_thread, actor, usage_type, amount, cost_override)

    def _try_in_thread(
        self, actor: Actor, usage_type: str, amount: int, cost_override: int | None
    ) -> int | None:
        return self.sync.try_increment_usage(actor, usage_type, amount, cost_override)

    async def batch_increment_usages(
        self,
        actor: Actor,
        usages: Usages,
        *,
        idempotency_key: str | None = None,
        service_tier: str | None = None,
    ) -> int:
        """Record several usages as one atomic event: all validated first, all or nothing (one
        request for a price table, priced in ``service_tier``)."""
        items = list(usages)  # an iterator would be spent by a first attempt
        if idempotency_key is not None:
            return await self._keyed(
                actor,
                self.sync.batch_increment_usages,
                actor,
                items,
                idempotency_key=idempotency_key,
                service_tier=service_tier,
            )
        return await self._with_plan(
            actor, self.sync.batch_increment_usages, actor, items, service_tier=service_tier
        )

    async def try_batch_increment_usages(
        self,
        actor: Actor,
        usages: Usages,
        *,
        idempotency_key: str | None = None,
        service_tier: str | None = None,
    ) -> int | None:
        """Record the items atomically only if the remaining budget covers them all; the new
        total or None. On a fleet, a charge that needs a new lease runs in a worker thread."""
        items = list(usages)
        if idempotency_key is not None and self._fleet:
            return await self._keyed(
                actor,
                self.sync.try_batch_increment_usages,
                actor,
                items,
                idempotency_key=idempotency_key,
                service_tier=service_tier,
            )
        decided, total = await self._with_plan(
            actor,
            self.sync._try_batch_increment_usages_nowait,
            actor,
            items,
            idempotency_key=idempotency_key,
            service_tier=service_tier,
        )
        if decided:
            return total
        return await _in_thread(self.sync.try_batch_increment_usages, actor, items, service_tier=service_tier)

    async def record_usage_object(
        self,
        usage: Any,
        actor: Actor,
        model_prefix: str,
        cost_overrides: Mapping[str, int] | None = None,
        *,
        idempotency_key: str | None = None,
        service_tier: str | None = None,
    ) -> int:
        """``MeteringService.record_usage_object``: a provider's usage payload, atomically."""
        return await self._keyed(
            actor,
            self.sync.record_usage_object,
            usage,
            actor,
            model_prefix,
            cost_overrides,
            idempotency_key=idempotency_key,
            service_tier=service_tier,
        )

    async def try_record_usage_object(
        self,
        usage: Any,
        actor: Actor,
        model_prefix: str,
        cost_overrides: Mapping[str, int] | None = None,
        *,
        idempotency_key: str | None = None,
        service_tier: str | None = None,
    ) -> int | None:
        """``MeteringService.try_record_usage_object``: the payload's items only if the budget
        covers them all. On a fleet, a charge that needs a new lease runs in a worker thread."""
        items = self.sync._usage_batch(usage, model_prefix, cost_overrides)
        tier = service_tier_of(usage) if service_tier is None else service_tier
        return await self.try_batch_increment_usages(
            actor, items, idempotency_key=idempotency_key, service_tier=tier
        )

    async def apply_monthly_charges(self, actor: Actor) -> MonthlyChargesApplied:
        """``MeteringService.apply_monthly_charges``, awaiting async listeners."""
        sync = self.sync
        month = _month_of(sync)
        applied = sync._monthly_charges_applied(actor)
        if applied is not None:
            return MonthlyChargesApplied(month, (), applied, already_applied=True)
        if not sync.events.listeners(MONTHLY_CHARGES):
            return MonthlyChargesApplied(month, (), 0, already_applied=False)
        charges = await sync._collect_monthly_charges_async(actor, month)
        return await self._keyed(actor, sync._apply_collected, actor, month, charges)

    async def reserve(
        self,
        actor: Actor,
        cost: int | None = None,
        usages: Usages | None = None,
        ttl: float = 600.0,
        *,
        service_tier: str | None = None,
    ) -> Hold | None:
        """``MeteringService.reserve``: a ``Hold`` (with ``asettle``, ``arelease``, ``async with``)
        or None. On a fleet, a hold that needs a new budget lease from Redis is asked for in a
        worker thread."""
        items = None if usages is None else list(usages)
        if self._fleet:
            try:
                hold = await _in_thread(self.sync.reserve, actor, cost, items, ttl, service_tier=service_tier)
            except AsyncListenerError:
                # The plan needs async listeners, awaited here; on a fleet the reserve then runs
                # in a worker thread too, the plan handed over (`_after_plan`).
                hold = await self._after_plan(
                    actor, self.sync.reserve, actor, cost, items, ttl, service_tier=service_tier
                )
        else:
            hold = await self._with_plan(
                actor, self.sync.reserve, actor, cost, items, ttl, service_tier=service_tier
            )
        if hold is not None:
            hold._aio = self
        return hold

    async def holds(self, actor: Actor) -> list[Hold]:
        """The actor's outstanding holds, oldest first."""
        holds = self.sync.holds(actor)
        for hold in holds:
            hold._aio = self
        return holds

    async def meter(self, actor: Actor, usage_type: str) -> AsyncMeter:
        """A handle on ``increment_usage(actor, usage_type, amount)``: ``await meter.add(n)``."""
        return AsyncMeter(self, self.sync.meter(actor, usage_type))

    async def update_addon_credit(
        self, user_id: str, amount: int, *, idempotency_key: str | None = None
    ) -> int:
        """Add purchased credit (µ¢, >= 0) to a user; return the user's purchased total. On a
        fleet, a call with an idempotency key is decided on the shared ledger, in a worker thread."""
        if idempotency_key is not None and self._fleet:
            return await _in_thread(
                self.sync.update_addon_credit, user_id, amount, idempotency_key=idempotency_key
            )
        return self.sync.update_addon_credit(user_id, amount, idempotency_key=idempotency_key)

    async def set_actor_current_month_usage_total(self, actor: Actor, total: int) -> int:
        """Set the user's month total by booking the difference as ``manual_adjustment``."""
        return await self._with_plan(actor, self.sync.set_actor_current_month_usage_total, actor, total)

    async def refund(
        self,
        actor: Actor,
        usage_type: str,
        units: int | None = None,
        cost: int | None = None,
        reason: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> int:
        """``MeteringService.refund``: give back usage charged this month, booked as
        ``refund:<usage_type>``; return the user's month total. On a fleet every refund is decided
        on the shared ledger (a round trip), in a worker thread."""
        if idempotency_key is not None or self._fleet:
            return await self._keyed(
                actor,
                self.sync.refund,
                actor,
                usage_type,
                units,
                cost,
                reason,
                idempotency_key=idempotency_key,
            )
        return await self._with_plan(actor, self.sync.refund, actor, usage_type, units, cost, reason)

    # Credit checks and estimates.

    async def has_enough_credits_for(self, actor: Actor, usage_type: str, amount: int) -> bool:
        """Whether the user's remaining budget covers ``amount`` units of ``usage_type``."""
        try:
            return self._has_enough_credits_for(actor, usage_type, amount)
        except AsyncListenerError:
            return await self._after_plan(actor, self._has_enough_credits_for, actor, usage_type, amount)

    async def has_enough_credits_for_usages(
        self, actor: Actor, usages: Usages, *, service_tier: str | None = None
    ) -> bool:
        """Whether the user's remaining budget covers all the items together (one request)."""
        items = list(usages)
        return await self._with_plan(
            actor, self.sync.has_enough_credits_for_usages, actor, items, service_tier=service_tier
        )

    async def has_enough_credits(self, actor: Actor, amount: int) -> bool:
        """Whether the user's remaining budget covers ``amount`` µ¢."""
        return await self._with_plan(actor, self.sync.has_enough_credits, actor, amount)

    async def has_any_usage(self, actor: Actor) -> bool:
        """Whether the user has budget left this month."""
        try:
            return self._has_any_usage(actor)
        except AsyncListenerError:
            return await self._after_plan(actor, self._has_any_usage, actor)

    async def has_usage_this_month(self, actor: Actor) -> bool:
        """Whether the user recorded any usage this month."""
        return self.sync.has_usage_this_month(actor)

    async def cost_of(
        self,
        usage_type: str,
        amount: int,
        cost_override: int | None = None,
        *,
        service_tier: str | None = None,
    ) -> int:
        """What ``amount`` units of ``usage_type`` cost, in µ¢."""
        return self.sync.cost_of(usage_type, amount, cost_override, service_tier=service_tier)

    async def cost_of_usages(self, usages: Usages, *, service_tier: str | None = None) -> int:
        """What the items cost together (one request), in µ¢."""
        return self.sync.cost_of_usages(usages, service_tier=service_tier)

    async def affordable_units(self, actor: Actor, usage_type: str, reserved: Usages | None = None) -> int:
        """The most units of ``usage_type`` the remaining budget pays for after ``reserved``."""
        items = None if reserved is None else list(reserved)
        return await self._with_plan(actor, self.sync.affordable_units, actor, usage_type, items)

    async def get_remaining_usage(self, actor: Actor) -> int:
        """Allowance left this month plus purchased credit left, in µ¢."""
        return await self._with_plan(actor, self.sync.get_remaining_usage, actor)

    async def get_allowed_usage(self, actor: Actor) -> AllowedUsage:
        """``{"remaining", "monthly_allowance", "addons": {...}}`` in µ¢."""
        return await self._with_plan(actor, self.sync.get_allowed_usage, actor)

    async def get_actor_budget(self, actor: Actor) -> ActorBudget:
        """This month's pools: allowance used, purchased credit, overage and what remains."""
        return await self._with_plan(actor, self.sync.get_actor_budget, actor)

    async def get_actor_subscription(self, actor: Actor) -> Policy:
        """The actor's plan (cached per user for ``subscription_ttl`` seconds)."""
        policy: Policy = await self._with_plan(actor, self.sync.get_actor_subscription, actor)
        return policy

    async def invalidate_subscription(self, user_id: str) -> None:
        """Forget the cached plan of a user."""
        self.sync.invalidate_subscription(user_id)

    async def get_actor_addons(self, actor: Actor) -> AddonCredits:
        """``{"purchased_credits", "consumed_purchase_credits"}`` in µ¢ (lifetime)."""
        return self.sync.get_actor_addons(actor)

    # Reports.

    async def get_actor_current_month_usage_details(self, actor: Actor) -> UsageDetails:
        """The user's usage this month: ``{"usage": {...}, "app_totals": {...}}``."""
        return self.sync.get_actor_current_month_usage_details(actor)

    async def get_actor_month_usage_details(self, actor: Actor, month: str) -> UsageDetails:
        """The user's usage in a month (``YYYY-MM``, UTC)."""
        return self.sync.get_actor_month_usage_details(actor, month)

    async def get_actor_usage_by_day(self, actor: Actor, month: str | None = None) -> UsageByDay:
        """The user's usage in ``month`` (default: this month) per UTC day (``UsageByDay``)."""
        return self.sync.get_actor_usage_by_day(actor, month)

    async def get_actor_current_month_app_usage_details(
        self, actor: Actor, app_id: str | None = None
    ) -> UsageReport:
        """The user's usage this month through one app (default: the actor's own app)."""
        return self.sync.get_actor_current_month_app_usage_details(actor, app_id)

    async def get_actor_app_usage(self, actor: Actor, app_id: str) -> AppTotals:
        """``{"total", "count"}`` of the user's usage this month through one app."""
        return self.sync.get_actor_app_usage(actor, app_id)

    async def get_actor_report(self, actor: Actor, month: str | None = None) -> ActorReport:
        """A user's month in one call: plan, budget, usage by type and by app."""
        return await self._with_plan(actor, self.sync.get_actor_report, actor, month)

    async def get_global_usage(self) -> UsageReport:
        """This month's usage over all actors (summed in a worker thread: it scans every user)."""
        return await _in_thread(self.sync.get_global_usage)

    async def get_actors_usage(self, month: str | None = None) -> list[tuple[str, int, int]]:
        """``(user_id, total µ¢, count)`` of every user with usage in ``month`` (worker thread)."""
        return await _in_thread(self.sync.get_actors_usage, month)

    async def check_global_usage_rate(self) -> int | None:
        """``MeteringService.check_global_usage_rate``, in a worker thread."""
        return await _in_thread(self.sync.check_global_usage_rate)

    # The store.

    async def flush(self) -> None:
        """Wait, in a worker thread, until everything recorded before the call is durable."""
        await _in_thread(self.sync.flush)

    async def close(self) -> None:
        """Close the service, writing its last snapshot in a worker thread. Idempotent."""
        await _in_thread(self.sync.close)

    async def aclose(self) -> None:
        """``close()`` (the name ``contextlib.aclosing`` and ``redis.asyncio`` use)."""
        await self.close()


class AsyncMeter:
    """``await service.meter(actor, usage_type)``: ``await meter.add(amount)`` records as
    ``increment_usage(actor, usage_type, amount)`` would, with the account and price found once."""

    def __init__(self, service: AsyncMeteringService, meter: Meter) -> None:
        """Wrap a native ``Meter`` of ``service``."""
        self._service = service
        self._meter = meter
        self._add = meter.add

    @property
    def actor(self) -> Actor:
        """The actor this meter records for."""
        return self._meter.actor

    @property
    def usage_type(self) -> str:
        """The usage type this meter records."""
        return self._meter.usage_type

    async def add(self, amount: int) -> int:
        """Record ``amount`` units; return the user's month total in µ¢."""
        try:
            return self._add(amount)
        except AsyncListenerError:
            return await self._service._after_plan(self._meter.actor, self._add, amount)


def _month_of(service: MeteringService) -> str:
    """The current month (``YYYY-MM``) on the service's clock."""
    return _month_label(float(service._clock()))


def _running_loop_or_none() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
