"""Events through which extensions decide plans and hear alarms.

Listeners are callables taking one event object, run in registration order. A listener that
raises is logged on the ``usagemeter`` logger and skipped: an extension's bug never breaks
metering, and never makes recorded usage look unrecorded.

A listener may be ``async def`` (a plan read with an async database driver). The plan events
await it under ``usagemeter.aio.AsyncMeteringService``; a plain ``MeteringService`` cannot, and
raises ``AsyncListenerError`` rather than decide a plan without it. An async alarm listener is
scheduled on the running event loop (or the loop an ``AsyncMeteringService`` runs on).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from usagemeter._core import Actor
from usagemeter.policies import Policy

__all__ = [
    "ALARM",
    "GET_USER_SUBSCRIPTION",
    "MONTHLY_CHARGES",
    "OVERRIDE_DEFAULT_SUBSCRIPTION",
    "REFUND",
    "REGISTER_AVAILABLE_POLICIES",
    "AlarmEvent",
    "AsyncListenerError",
    "EventBus",
    "GetUserSubscriptionEvent",
    "MonthlyCharge",
    "MonthlyChargesApplied",
    "MonthlyChargesEvent",
    "OverrideDefaultSubscriptionEvent",
    "RefundEvent",
    "RegisterAvailablePoliciesEvent",
]

OVERRIDE_DEFAULT_SUBSCRIPTION = "metering:overrideDefaultSubscription"
REGISTER_AVAILABLE_POLICIES = "metering:registerAvailablePolicies"
GET_USER_SUBSCRIPTION = "metering:getUserSubscription"
ALARM = "metering:alarm"
REFUND = "metering:refund"
MONTHLY_CHARGES = "metering:monthlyCharges"

logger = logging.getLogger("usagemeter")

Listener = Callable[[Any], object]


class AsyncListenerError(TypeError):
    """An ``async def`` listener of a plan event was reached from synchronous code, which cannot
    await it: use ``usagemeter.aio.AsyncMeteringService``, or a plain function."""


@dataclass
class OverrideDefaultSubscriptionEvent:
    """Listeners may set ``default_subscription_id`` (the plan used when the user has none)."""

    actor: Actor
    default_subscription_id: str


@dataclass
class RegisterAvailablePoliciesEvent:
    """Listeners may append ``Policy`` objects; they win over built-ins with the same id."""

    actor: Actor
    available_policies: list[Policy] = field(default_factory=list)


@dataclass
class GetUserSubscriptionEvent:
    """Listeners may set ``user_subscription_id`` to the id of the user's plan."""

    actor: Actor
    user_subscription_id: str | None = None


@dataclass(frozen=True)
class AlarmEvent:
    """Something an operator should know: ``unmapped_usage``, ``unknown_plan``, ``overuse``,
    ``monthly_charges`` (a month's charges could not be applied: the next charge tries again),
    ``store_error``, ``ledger_lost`` (a fleet's shared ledger lost its data, or another ledger
    answers at its address) or ``global_usage_rate`` (the last three with the system actor)."""

    actor: Actor
    kind: str
    usage_type: str | None
    message: str


@dataclass(frozen=True)
class RefundEvent:
    """A refund was booked (``metering:refund``): an audit trail's entry. ``cost`` is what was
    given back, in µ¢ rounded half up; ``month_total`` the user's month total after it."""

    actor: Actor
    usage_type: str
    units: int
    cost: int
    reason: str | None
    month_total: int


@dataclass(frozen=True)
class MonthlyCharge:
    """A recurring charge (a seat fee, a subscription price) that a ``metering:monthlyCharges``
    listener returns for a user: booked once a month as usage type ``usage_type``, ``units``
    units for ``cost`` µ¢ in all (an int: money is never a float), billed to the user."""

    usage_type: str
    cost: int
    units: int = 0

    def __post_init__(self) -> None:
        """Refuse what the ledger could not book, naming the field."""
        if not isinstance(self.usage_type, str) or not self.usage_type:
            raise TypeError(f"MonthlyCharge.usage_type must be a non-empty str, not {self.usage_type!r}")
        for name in ("cost", "units"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"MonthlyCharge.{name} must be an int, not {type(value).__name__}")
            if value < 0:
                raise ValueError(f"MonthlyCharge.{name} must not be negative, got {value}")


@dataclass(frozen=True)
class MonthlyChargesEvent:
    """``metering:monthlyCharges``: listeners return the ``MonthlyCharge`` objects (an iterable,
    or None for none) to bill ``actor``'s user for ``month`` (``YYYY-MM``). They are applied
    once per user and month, at the user's first charge of the month or by
    ``MeteringService.apply_monthly_charges``."""

    actor: Actor
    month: str


@dataclass(frozen=True)
class MonthlyChargesApplied:
    """What ``MeteringService.apply_monthly_charges`` did: ``charges`` applied now (empty when
    ``already_applied``), and ``cost``, the µ¢ booked for ``month`` (now, or the first time)."""

    month: str
    charges: tuple[MonthlyCharge, ...]
    cost: int
    already_applied: bool


class EventBus:
    """Named events with listeners; ``on``/``off`` are thread-safe."""

    def __init__(self) -> None:
        """Create a bus with no listeners."""
        self._listeners: dict[str, tuple[Listener, ...]] = {}
        self._async_names: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        # The loop of an AsyncMeteringService, for async alarm listeners reached from a thread
        # without one (the monitor); and the tasks scheduled, kept until they end.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[object] | concurrent.futures.Future[object]] = set()

    def on(self, name: str, listener: Listener) -> Listener:
        """Register ``listener`` for ``name``; returns it, so it can decorate a function."""
        if not callable(listener):
            raise TypeError("listener must be callable")
        with self._lock:
            self._listeners[name] = (*self._listeners.get(name, ()), listener)
            self._update_async_names()
        return listener

    def off(self, name: str, listener: Listener) -> None:
        """Remove one registration of ``listener`` for ``name``; ValueError if it is not registered."""
        with self._lock:
            listeners = list(self._listeners.get(name, ()))
            if listener not in listeners:
                raise ValueError(f"listener {listener!r} is not registered for {name!r}")
            listeners.remove(listener)
            self._listeners[name] = tuple(listeners)
            self._update_async_names()

    def _update_async_names(self) -> None:
        """Note which events have an ``async def`` listener (lock held)."""
        self._async_names = frozenset(
            name
            for name, listeners in self._listeners.items()
            if any(inspect.iscoroutinefunction(listener) for listener in listeners)
        )

    def has_async_listeners(self, *names: str) -> bool:
        """Whether any of the events ``names`` has a listener declared ``async def``."""
        return not self._async_names.isdisjoint(names)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Schedule async alarm listeners reached from threads without a loop on ``loop``."""
        self._loop = loop

    def listeners(self, name: str) -> tuple[Listener, ...]:
        """The listeners of ``name``, in registration order."""
        return self._listeners.get(name, ())

    def emit(
        self, name: str, event: object, *, awaitables: Literal["schedule", "refuse"] = "schedule"
    ) -> None:
        """Call every listener of ``name`` with ``event``; a listener that raises is logged.

        A listener that returns an awaitable (an ``async def`` one) is scheduled on the running
        loop (or the bound one) with ``awaitables="schedule"``; with ``"refuse"`` (the plan
        events, whose result is needed now) ``AsyncListenerError`` is raised instead.
        """
        # Copy-on-write tuples: emitting never holds the lock while listener code runs.
        for listener in self._listeners.get(name, ()):
            try:
                result = listener(event)
            except Exception:
                logger.exception("listener %r of %s raised; metering continues", listener, name)
                continue
            if inspect.isawaitable(result):
                if awaitables == "refuse":
                    _discard(result)
                    raise AsyncListenerError(
                        f"listener {listener!r} of {name} is async and this call cannot await it: "
                        "use usagemeter.aio.AsyncMeteringService, or a plain function"
                    )
                self._schedule(result, listener, name)

    async def emit_async(self, name: str, event: object) -> None:
        """``emit``, awaiting each listener that returns an awaitable before the next one runs."""
        for listener in self._listeners.get(name, ()):
            try:
                result = listener(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("listener %r of %s raised; metering continues", listener, name)

    def _schedule(self, awaitable: Awaitable[object], listener: Listener, name: str) -> None:
        """Run an async listener's awaitable on the running loop, else on the bound one."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = self._loop
        if loop is None or loop.is_closed():
            _discard(awaitable)
            logger.error("async listener %r of %s has no event loop to run on; skipped", listener, name)
            return

        async def run() -> object:
            try:
                return await awaitable
            except Exception:
                logger.exception("listener %r of %s raised; metering continues", listener, name)
                return None

        future: asyncio.Future[object] | concurrent.futures.Future[object]
        if _running_loop() is loop:
            future = loop.create_task(run())
        else:
            future = asyncio.run_coroutine_threadsafe(run(), loop)
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _discard(awaitable: Awaitable[object]) -> None:
    """Close a coroutine that will not be awaited (no "never awaited" warning)."""
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()
