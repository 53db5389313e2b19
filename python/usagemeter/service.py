"""``MeteringService``: the public service class, and its wrapper.

The hot methods (``increment_usage``, ``try_increment_usage``, the credit checks, the reports)
are inherited from the native ``MeteringCore`` and run without any Python frame. This module
adds what is Python's to own: argument defaults, plan resolution through the events, alarms,
logging, and ``record_usage_object``.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from usagemeter._core import Actor, CostMap, MeteringCore
from usagemeter.events import (
    ALARM,
    GET_USER_SUBSCRIPTION,
    MONTHLY_CHARGES,
    OVERRIDE_DEFAULT_SUBSCRIPTION,
    REFUND,
    REGISTER_AVAILABLE_POLICIES,
    AlarmEvent,
    AsyncListenerError,
    EventBus,
    GetUserSubscriptionEvent,
    MonthlyCharge,
    MonthlyChargesApplied,
    MonthlyChargesEvent,
    OverrideDefaultSubscriptionEvent,
    RefundEvent,
    RegisterAvailablePoliciesEvent,
    _discard,
)
from usagemeter.holds import Hold, Usages, reserved_usage_type, ttl_ms
from usagemeter.policies import BUILTIN_POLICIES, TEMP_FREE, USER_FREE, Policy
from usagemeter.providers import _priced_items, service_tier_of
from usagemeter.types import ActorReport

__all__ = ["PLAN_EVENTS", "SERVICE_METHODS", "MeteringService", "MeteringServiceWrapper"]

logger = logging.getLogger("usagemeter")

Clock = Callable[[], float | int]

PLAN_EVENTS = (OVERRIDE_DEFAULT_SUBSCRIPTION, REGISTER_AVAILABLE_POLICIES, GET_USER_SUBSCRIPTION)
"""The events of a plan look-up, in the order they are emitted."""

# The longest idempotency window accepted: a year (keys are kept in memory and in the store).
MAX_IDEMPOTENCY_WINDOW = 366 * 86_400.0

# The longest snapshot interval accepted: a day. Longer would be a loss bound nobody wants, and
# 1e300 s would overflow the native millisecond count.
MAX_SNAPSHOT_INTERVAL = 86_400.0


class MeteringService(MeteringCore):
    """Meters usage per actor, month, usage type and app, with monthly allowances and credits.

    ``cost_map`` (default ``CostMap.default()``) prices usage types in µ¢ per unit.
    ``policies`` are plans available besides the built-in ``temp_free`` and ``user_free``.
    ``unmapped="free"`` records usage types missing from the cost map at 0 µ¢ and raises a
    ``metering:alarm``; the default ``"error"`` raises ``UnknownUsageType``.
    A user's plan is resolved through the events and cached for ``subscription_ttl`` seconds.
    ``clock`` returns epoch seconds (default: the system clock); months are UTC ``YYYY-MM``.

    ``store`` (a directory) makes the ledger durable: it is loaded (every record verified) when
    the service opens, and a background thread writes the records changed since the last snapshot
    every ``snapshot_interval`` seconds, as one atomic batch made durable with fsync.
    ``store_backend`` is ``"sled"`` or ``"redb"``; the default ``None`` opens an existing store
    with its own backend and creates a new one with sled (an explicit backend that differs from
    an existing store's raises ``StoreError``). An empty path, or a URL of another scheme than
    the shared ledger's, raises ``ValueError`` before anything is created.

    ``store="redis://HOST:PORT/DB"`` (also ``rediss://``, ``unix://``; ``store_backend=
    "redis-cluster"`` for a Redis Cluster's seed nodes, comma-separated) makes this service a
    worker of a fleet sharing one ledger: every call is answered in-process, and a native thread
    syncs with Redis every ``snapshot_interval``. ``try_increment_usage`` spends budget leases
    reserved in Redis (``lease_ttl`` seconds without renewal), so the fleet never overspends;
    while Redis is unreachable it refuses, unless ``offline_spending="leases"`` (spend the leases
    held). ``connect_timeout`` bounds opening (``StoreUnavailableError``). ``caller_timeout``
    (seconds, default 1) bounds what a caller waits on Redis in all, retries and the wait for the
    sync thread included: a keyed call, a refund, a lease request of ``try_increment_usage``, a
    month's first charge with monthly charges. A keyed call whose write was sent and not answered
    in time raises ``StoreOutcomeUnknownError`` (it may have been recorded: retry it with the same
    key); after a failure no caller is sent to Redis until the sync thread reaches it again. The
    URL's password is never shown (``store_path``, messages, alarms: ``redis://:***@host``). See
    the README's fleet section for the bounds. For a directory store, the loss bound: a crash loses at most
    the changes of the last ``snapshot_interval`` plus the snapshot being written; whatever a
    returned ``flush()`` covered is never lost. ``close()`` (or leaving a ``with`` block, or the
    interpreter's exit) writes a last snapshot. SIGTERM is the host application's to handle:
    call ``close()`` from its handler or shutdown hook. With ``store=None`` (the default) the
    ledger lives in memory only. After ``os.fork()`` a service with a store refuses every call in
    the child (``StoreClosedError``): open a new one there. A memory-only service goes on in the
    child as an independent copy.

    ``idempotency_window`` (seconds, default 24 h) is how long an ``idempotency_key`` passed to
    ``increment_usage``, ``try_increment_usage``, ``batch_increment_usages``,
    ``record_usage_object``, ``update_addon_credit`` or ``refund`` is kept: a retry within it
    records nothing and returns the first call's result. Keys are kept with the user's records
    in the store (a retry after a restart is recognised too); at most
    ``max_idempotency_keys_per_user`` per user and ``max_idempotency_keys`` in all (about 150
    bytes each for a 36-character key), beyond which a new key raises
    ``IdempotencyKeyLimitError``. Listeners of ``metering:monthlyCharges`` return
    ``MonthlyCharge`` objects, applied once per user and month (``apply_monthly_charges``).

    ``max_global_usage_per_minute`` (µ¢, default None: off) raises a ``global_usage_rate`` alarm
    when the month's global total grew faster than that between two checks, made at most every
    ``global_usage_check_interval`` seconds (default 900) by a background thread, never on the hot
    path; ``check_global_usage_rate()`` makes one at once.

    Every method is thread-safe. Money crosses the API as ``int`` microcents.
    """

    events: EventBus
    """The events of this service: ``events.on(name, listener)``, ``events.off(name, listener)``."""
    _policies: tuple[Policy, ...]
    _clock: Clock
    _max_global_usage_per_minute: int | None
    _global_usage_check_interval: float
    _rate_lock: threading.Lock
    _rate_baseline: tuple[str, float, int] | None
    _prepared_plans: threading.local
    _offload_from_loop: bool

    def __new__(
        cls,
        cost_map: CostMap | None = None,
        *,
        policies: Iterable[Policy] = (),
        unmapped: Literal["error", "free"] = "error",
        subscription_ttl: float = 60.0,
        clock: Clock | None = None,
        store: str | os.PathLike[str] | None = None,
        store_backend: Literal["sled", "redb", "redis", "redis-cluster"] | None = None,
        snapshot_interval: float = 1.0,
        max_global_usage_per_minute: int | None = None,
        global_usage_check_interval: float = 900.0,
        lease_ttl: float = 10.0,
        offline_spending: Literal["refuse", "leases"] = "refuse",
        connect_timeout: float = 5.0,
        caller_timeout: float = 1.0,
        idempotency_window: float = 86_400.0,
        max_idempotency_keys: int = 1_000_000,
        max_idempotency_keys_per_user: int = 100_000,
    ) -> MeteringService:
        """Validate the options, open the store if any, and connect the ledger to the events."""
        if cost_map is None:
            cost_map = CostMap.default()
        elif not isinstance(cost_map, CostMap):
            raise TypeError(f"cost_map must be a usagemeter.CostMap, not {type(cost_map).__name__}")
        if unmapped not in ("error", "free"):
            raise ValueError(f"unmapped must be 'error' or 'free', not {unmapped!r}")
        _check_seconds("subscription_ttl", subscription_ttl)
        if not subscription_ttl >= 0:
            raise ValueError(f"subscription_ttl must be >= 0 seconds, got {subscription_ttl}")
        # Infinity (or anything beyond the native millisecond range) caches plans for good.
        ttl_ms = 2**62 if subscription_ttl >= 2**52 else round(subscription_ttl * 1000)
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a callable returning epoch seconds")
        _check_seconds("snapshot_interval", snapshot_interval)
        if not 0 < snapshot_interval <= MAX_SNAPSHOT_INTERVAL:
            raise ValueError(
                f"snapshot_interval must be positive seconds, at most {MAX_SNAPSHOT_INTERVAL:g} "
                f"(a day), got {snapshot_interval}"
            )
        if max_global_usage_per_minute is not None:
            if isinstance(max_global_usage_per_minute, bool) or not isinstance(
                max_global_usage_per_minute, int
            ):
                raise TypeError("max_global_usage_per_minute must be an int of µ¢ per minute, or None")
            if max_global_usage_per_minute < 0:
                raise ValueError(
                    f"max_global_usage_per_minute must be >= 0 µ¢, got {max_global_usage_per_minute}"
                )
        _check_seconds("global_usage_check_interval", global_usage_check_interval)
        if not (0 < global_usage_check_interval and math.isfinite(global_usage_check_interval)):
            raise ValueError(
                f"global_usage_check_interval must be positive seconds, got {global_usage_check_interval}"
            )
        if store_backend not in (None, "sled", "redb", "redis", "redis-cluster"):
            raise ValueError(
                "store_backend must be 'sled', 'redb', 'redis', 'redis-cluster' or None, "
                f"not {store_backend!r}"
            )
        for name, seconds in (
            ("lease_ttl", lease_ttl),
            ("connect_timeout", connect_timeout),
            ("caller_timeout", caller_timeout),
        ):
            _check_seconds(name, seconds)
            if not 0 < seconds <= MAX_SNAPSHOT_INTERVAL:
                raise ValueError(f"{name} must be positive seconds, at most a day, got {seconds}")
        if offline_spending not in ("refuse", "leases"):
            raise ValueError(f"offline_spending must be 'refuse' or 'leases', not {offline_spending!r}")
        _check_seconds("idempotency_window", idempotency_window)
        if not 0 < idempotency_window <= MAX_IDEMPOTENCY_WINDOW:
            raise ValueError(
                f"idempotency_window must be positive seconds, at most a year, got {idempotency_window}"
            )
        for name, count in (
            ("max_idempotency_keys", max_idempotency_keys),
            ("max_idempotency_keys_per_user", max_idempotency_keys_per_user),
        ):
            if isinstance(count, bool) or not isinstance(count, int):
                raise TypeError(f"{name} must be an int")
            if not 0 <= count <= 2**48:
                raise ValueError(f"{name} must be between 0 and 2**48, got {count}")
        store_path = None if store is None else os.fspath(store)
        policies = tuple(policies)
        for policy in policies:
            if not isinstance(policy, Policy):
                raise TypeError(f"policies must be Policy objects, not {type(policy).__name__}")
        interval_ms = max(1, round(snapshot_interval * 1000))
        self = super().__new__(
            cls,
            cost_map,
            unmapped == "free",
            ttl_ms,
            clock,
            store_path,
            store_backend,
            interval_ms,
            max(1, round(lease_ttl * 1000)),
            offline_spending == "leases",
            max(1, round(connect_timeout * 1000)),
            max(1, round(caller_timeout * 1000)),
            max(1, round(idempotency_window * 1000)),
            max_idempotency_keys,
            max_idempotency_keys_per_user,
        )
        # Set up here rather than in __init__, so the options are declared once.
        self.events = EventBus()
        self._policies = policies
        self._clock = clock if clock is not None else time.time
        self._max_global_usage_per_minute = max_global_usage_per_minute
        self._global_usage_check_interval = float(global_usage_check_interval)
        self._rate_lock = threading.Lock()
        self._rate_baseline = None
        self._prepared_plans = threading.local()
        # Set by ``usagemeter.aio`` when it wraps the service (see ``_monthly_charges_hook``).
        self._offload_from_loop = False
        # Weak references: the native ledger keeps these callables, and a strong reference back
        # to the service would be a cycle through a native object that the GC cannot see.
        this = weakref.ref(self)
        self._install_hooks(
            _call_weak(this, "_resolve_policy"),
            _call_weak(this, "_raise_alarm"),
            _call_weak(this, "_monthly_charges_hook"),
        )
        if store_path is not None:
            with _open_services_lock:
                _open_services.add(self)
        if max_global_usage_per_minute is not None:
            self.check_global_usage_rate()  # the baseline the first check compares with
        if store_path is not None or max_global_usage_per_minute is not None:
            _monitor.watch(self)
        return self

    def __repr__(self) -> str:
        """``MeteringService(store=..., backend=...)``: the store as ``store_path`` shows it (a URL's
        password masked)."""
        state = ", closed" if self.closed else ""
        return f"{type(self).__name__}(store={self.store_path!r}, backend={self.store_backend!r}{state})"

    def __enter__(self) -> Self:
        """Return the service; leaving the block closes it."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the service (writing a last snapshot if it has a store)."""
        self.close()

    def _resolve_policy(self, actor: Actor) -> Policy:
        """Decide an actor's plan through the three subscription events (the native ledger calls
        this when its cache misses). ``AsyncListenerError`` if a listener is ``async def``: the
        async service then resolves the plan with ``_resolve_policy_async`` and hands it over
        through ``_prepared_plans`` for the call it makes again."""
        prepared: dict[Actor, Policy] | None = getattr(self._prepared_plans, "plans", None)
        if prepared is not None and actor in prepared:
            return prepared[actor]
        if self.events.has_async_listeners(*PLAN_EVENTS):
            raise AsyncListenerError(
                "a listener of the plan events is async and this call cannot await it: use "
                "usagemeter.aio.AsyncMeteringService, or plain functions"
            )
        events = self._plan_events(actor)
        for name, event in zip(PLAN_EVENTS, events, strict=True):
            self.events.emit(name, event, awaitables="refuse")
        return self._chosen_policy(*events)

    async def _resolve_policy_async(self, actor: Actor) -> Policy:
        """``_resolve_policy``, awaiting the listeners that are ``async def``."""
        events = self._plan_events(actor)
        for name, event in zip(PLAN_EVENTS, events, strict=True):
            await self.events.emit_async(name, event)
        return self._chosen_policy(*events)

    def _plan_events(
        self, actor: Actor
    ) -> tuple[OverrideDefaultSubscriptionEvent, RegisterAvailablePoliciesEvent, GetUserSubscriptionEvent]:
        """The three events of a plan look-up, in the order they are emitted (``PLAN_EVENTS``).
        The default is ``user_free`` for an actor with an email, or for one whose user was seen
        with an email at an earlier look-up (until ``invalidate_subscription``): a user's plan
        does not depend on which form of its ``Actor`` comes first."""
        has_email = bool(actor.email) or (not actor.is_system and self._plan_email_seen(actor.user_id))
        return (
            OverrideDefaultSubscriptionEvent(actor, USER_FREE.id if has_email else TEMP_FREE.id),
            RegisterAvailablePoliciesEvent(actor, list(self._policies)),
            GetUserSubscriptionEvent(actor),
        )

    def _chosen_policy(
        self,
        default: OverrideDefaultSubscriptionEvent,
        register: RegisterAvailablePoliciesEvent,
        chosen: GetUserSubscriptionEvent,
    ) -> Policy:
        """The plan the listeners chose: the user's, else the default, else ``user_free``."""
        actor = chosen.actor
        available = _available_policies(register)
        user_plan = chosen.user_subscription_id
        if user_plan is not None and user_plan in available:
            return available[user_plan]
        default_plan = default.default_subscription_id
        if default_plan is not None and default_plan in available:
            if user_plan is not None:
                # Falling back is right; doing it silently hid typos ("pro_typo", issue 18).
                self._raise_alarm(
                    "unknown_plan",
                    actor,
                    None,
                    f"the user's plan {user_plan!r} is not an available policy; using the "
                    f"default {default_plan}",
                )
            return available[default_plan]
        fallback = available[USER_FREE.id]  # a registered user_free wins over the built-in one
        self._raise_alarm(
            "unknown_plan",
            actor,
            None,
            f"neither the user's plan {chosen.user_subscription_id!r} nor the default "
            f"{default.default_subscription_id!r} is an available policy; using {fallback.id}",
        )
        return fallback

    def _raise_alarm(self, kind: str, actor: Actor, usage_type: str | None, message: str) -> None:
        """Log an alarm and emit ``metering:alarm``; never raises."""
        logger.warning("metering alarm %s for %r: %s", kind, actor, message)
        self.events.emit(ALARM, AlarmEvent(actor, kind, usage_type, message))

    def check_global_usage_rate(self) -> int | None:
        """Compare this month's global total with the last check's; return the rate in µ¢ a minute.

        Raises a ``global_usage_rate`` alarm when the rate exceeds ``max_global_usage_per_minute``.
        Returns None on the first check of a month (it only records the baseline) or when no
        time passed on the service's clock. The background monitor calls this every
        ``global_usage_check_interval`` seconds when the option is set; it sums every actor's
        month (about 1 ms per 1,000 actors), so it is never on the hot path.
        """
        with self._rate_lock:
            now = float(self._clock())
            month = _month_label(now)
            total: int = self.get_global_usage()["total"]
            baseline, self._rate_baseline = self._rate_baseline, (month, now, total)
        if baseline is None or baseline[0] != month:
            return None
        elapsed_ms = round((now - baseline[1]) * 1000)  # time, not money: a float is fine here
        if elapsed_ms <= 0:
            return None
        rate: int = (total - baseline[2]) * 60_000 // elapsed_ms  # µ¢ a minute, integer arithmetic
        limit = self._max_global_usage_per_minute
        if limit is not None and rate > limit:
            self._raise_alarm(
                "global_usage_rate",
                Actor.system(),
                None,
                f"the global month total grew by {total - baseline[2]} µ¢ in "
                f"{elapsed_ms / 60_000:.1f} minutes: {rate} µ¢ a minute, over the maximum of {limit}",
            )
        return rate

    def _global_usage_check_due(self) -> bool:
        """Whether the monitor should call ``check_global_usage_rate`` now (service clock)."""
        if self._max_global_usage_per_minute is None or self.closed:
            return False
        baseline = self._rate_baseline
        if baseline is None:
            return True
        return float(self._clock()) - baseline[1] >= self._global_usage_check_interval

    def _raise_store_errors(self) -> None:
        """Raise the background snapshot errors as ``store_error`` alarms, and a fleet's lost or
        replaced shared ledger as ``ledger_lost`` (monitor thread)."""
        for kind, message in self._take_store_errors():
            self._raise_alarm(kind, Actor.system(), None, message)

    def get_actor_report(self, actor: Actor, month: str | None = None) -> ActorReport:
        """A user's month in one call: plan, budget, usage by type and by app (``ActorReport``).

        ``month`` is ``YYYY-MM`` (UTC), default the current month on the service's clock.
        ``budget`` is ``get_actor_budget(actor)`` for the current month and None for another
        (``get_actor_budget`` reads the current month only); ``plan_id`` is the user's plan now.
        The figures are read one after another, not as one atomic view: a charge made meanwhile
        may show in one part and not yet in another. ``ValueError`` for the system actor (never
        metered) or a bad month.
        """
        if not isinstance(actor, Actor):
            raise TypeError(f"actor must be a usagemeter.Actor, not {type(actor).__name__}")
        if actor.is_system:
            raise ValueError("the system actor is not metered: it has no report")
        if month is not None and not isinstance(month, str):
            raise TypeError(f"month must be a 'YYYY-MM' string or None, not {type(month).__name__}")
        # At a month's end the parts could be of two months: read them again in the new one (a
        # clock that changes month between every two reads would be broken: stop after three).
        for _ in range(3):
            current = _month_label(float(self._clock()))
            wanted = current if month is None else month
            details = self.get_actor_month_usage_details(actor, wanted)  # checks the month's form
            plan_id = self.get_actor_subscription(actor).id
            budget = self.get_actor_budget(actor) if wanted == current else None
            if _month_label(float(self._clock())) == current:
                break
        return {
            "user_id": actor.user_id,
            "month": wanted,
            "plan_id": plan_id,
            "budget": budget,
            "usage": details["usage"],
            "app_totals": details["app_totals"],
        }

    def refund(
        self,
        actor: Actor,
        usage_type: str,
        units: int | None = None,
        cost: int | None = None,
        reason: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> int:
        """Give back ``units`` and ``cost`` (µ¢; default: the price of ``units``) of
        ``usage_type`` charged to the actor this month; return the user's month total.

        With ``idempotency_key``, a retry within the window books nothing, emits no event and
        returns the first call's total; another refund under the same key raises
        ``IdempotencyKeyReused``.

        Booked as usage type ``refund:<usage_type>`` (the units refunded, a negative cost): its
        own record kind in the reports. The cost goes back to the pools in the reverse order of a
        charge: overage, then purchased credit, then allowance. More units or cost than the
        actor's app was charged of that type this month (net of earlier refunds) raises
        ``ValueError`` and changes nothing. ``reason`` (a str) is logged and sent with the
        ``metering:refund`` event, for an audit trail.
        """
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"reason must be a str or None, not {type(reason).__name__}")
        total, given_back, booked = self._refund(actor, usage_type, units, cost, idempotency_key)
        if not booked:
            logger.info("refund under idempotency key %r to %r was booked already", idempotency_key, actor)
            return total
        logger.info(
            "refund of %s units and %s µ¢ of %s to %r: %s",
            units or 0,
            given_back,
            usage_type,
            actor,
            reason or "no reason given",
        )
        self.events.emit(REFUND, RefundEvent(actor, usage_type, units or 0, given_back, reason, total))
        return total

    def reserve(
        self,
        actor: Actor,
        cost: int | None = None,
        usages: Usages | None = None,
        ttl: float = 600.0,
        *,
        service_tier: str | None = None,
    ) -> Hold | None:
        """Hold ``cost`` µ¢, or what the batch ``usages`` would cost, for ``ttl`` seconds, if the
        actor's remaining budget net of its other holds covers it; else None (nothing held).

        Decided atomically, like ``try_increment_usage``: threads (and, on a fleet, workers)
        racing for a user's last credits never hold and spend more than the budget together.
        The hold lowers ``get_remaining_usage`` and every credit check until it is settled
        (``hold.settle(usages=...)`` records the real usage), released, or expires. It is kept
        in the store, so it outlives a restart, never its expiry. On a fleet it is kept in this
        worker's budget lease: if the worker dies, its holds end with the lease.

        ``usages`` are priced as one request in ``service_tier`` (README, "The price model"); the
        hold settles in that service tier unless ``settle`` names another.
        """
        items = None if usages is None else list(usages)
        held = self._reserve(actor, cost, items, ttl_ms(ttl), service_tier)
        if held is None:
            return None
        return Hold(self, actor, held, reserved_usage_type(items), service_tier=service_tier)

    def holds(self, actor: Actor) -> list[Hold]:
        """The actor's outstanding holds, oldest first (after a restart too: settle or release
        them by these handles)."""
        return [Hold(self, actor, held) for held in self._holds(actor)]

    def record_usage_object(
        self,
        usage: object,
        actor: Actor,
        model_prefix: str,
        cost_overrides: Mapping[str, int] | None = None,
        *,
        idempotency_key: str | None = None,
        service_tier: str | None = None,
    ) -> int:
        """Book a provider's usage report for a model, as one atomic batch; return the month total.

        ``usage`` is the usage object as the provider returned it: a dict, or an SDK object
        (``openai.types.CompletionUsage``, ``openai.types.responses.ResponseUsage``,
        ``anthropic.types.Usage``, ...). ``model_prefix`` is ``"<provider>:<model>"``, e.g.
        ``"openai:gpt-5.1"`` or ``"claude:claude-sonnet-4-5"`` (an undated model is priced as its
        newest dated snapshot). For the providers ``usagemeter.providers.PROVIDERS`` knows
        (OpenAI chat and responses, Anthropic, Gemini, Mistral, xAI, DeepSeek, Groq, Together,
        OpenRouter) each field is mapped onto the cost map's names: totals are ignored, nothing is
        counted twice, and cached, cache-write and reasoning tokens are priced apart when the cost
        map has prices for them. For another provider each field ``kind`` is booked as
        ``f"{model_prefix}:{kind}"`` and must be an int. ``usagemeter.providers.usage_items``
        shows what a payload books without recording it.

        ``cost_overrides`` maps a kind (the last segment of a booked usage type, e.g.
        ``"prompt_tokens"``) to the cost in µ¢ of that whole item; a kind the payload does not map
        to raises ``ValueError``. Bad counts raise ``ValueError`` / ``TypeError`` naming the field,
        an unpriced usage type ``UnknownUsageType``, and nothing is recorded.

        With ``idempotency_key``, a retry within the window records nothing and returns the
        first call's total (the key is ``batch_increment_usages``'s, over the booked items).

        The payload is one request for a price table (README, "The price model"): a size tier
        counts its items together. ``service_tier`` (OpenAI's "flex", "priority", Anthropic's
        "priority", ...) overrides the payload's own ``service_tier`` field, which is read
        otherwise (``usagemeter.providers.service_tier_of``).
        """
        items = self._usage_batch(usage, model_prefix, cost_overrides)
        tier = service_tier_of(usage) if service_tier is None else service_tier
        return self.batch_increment_usages(actor, items, idempotency_key=idempotency_key, service_tier=tier)

    def try_record_usage_object(
        self,
        usage: object,
        actor: Actor,
        model_prefix: str,
        cost_overrides: Mapping[str, int] | None = None,
        *,
        idempotency_key: str | None = None,
        service_tier: str | None = None,
    ) -> int | None:
        """``record_usage_object`` only if the user's remaining budget covers the whole payload:
        all its items or none, atomically (``try_batch_increment_usages``); the new month total,
        or None (nothing recorded, and no key kept: a retry is decided again). On a fleet, budget
        leases make it strict across workers. ``service_tier`` as for ``record_usage_object``."""
        items = self._usage_batch(usage, model_prefix, cost_overrides)
        tier = service_tier_of(usage) if service_tier is None else service_tier
        return self.try_batch_increment_usages(
            actor, items, idempotency_key=idempotency_key, service_tier=tier
        )

    def apply_monthly_charges(self, actor: Actor) -> MonthlyChargesApplied:
        """Apply the user's monthly charges of the current month now, unless they are applied.

        The ``metering:monthlyCharges`` listeners return ``MonthlyCharge`` objects for the
        actor; they are booked as one atomic batch billed to the user (the ``os-global`` app,
        whatever the actor's app), under a reserved key of the month claimed in the same critical
        section: exactly once per user and month, under races and across a restart of a durable
        store. The first charge of a month applies them too (this call is for a job that bills
        every user on the 1st, or a test). With no listener registered nothing is applied and the
        month is not claimed. A listener that raises makes this call raise, with nothing applied.
        An ``async def`` listener raises ``AsyncListenerError``: use
        ``usagemeter.aio.AsyncMeteringService``. On a fleet the month is claimed on the shared
        ledger, once across workers.
        """
        month = _month_label(float(self._clock()))
        applied: int | None = self._monthly_charges_applied(actor)
        if applied is not None:
            return MonthlyChargesApplied(month, (), applied, already_applied=True)
        if not self.events.listeners(MONTHLY_CHARGES):
            # Nothing to apply, and the month is left unclaimed: a listener registered later in
            # the month still bills it (as at a charge).
            return MonthlyChargesApplied(month, (), 0, already_applied=False)
        charges = self._collect_monthly_charges(actor, month)
        return self._apply_collected(actor, month, charges)

    def _apply_collected(
        self, actor: Actor, month: str, charges: list[MonthlyCharge]
    ) -> MonthlyChargesApplied:
        """Book charges collected from the listeners, once (see ``apply_monthly_charges``)."""
        fresh, cost = self._apply_monthly_charges(actor, [_charge_item(c) for c in charges])
        return MonthlyChargesApplied(month, tuple(charges) if fresh else (), cost, already_applied=not fresh)

    def _monthly_charges_hook(self, actor: Actor) -> list[tuple[str, int, int]] | bool | None:
        """The monthly charges to apply at a user's first charge of a month (the native ledger
        calls this on the plan's slow path when the month's are not applied): None when no
        listener is registered, False when one failed (a ``monthly_charges`` alarm: the user's
        call goes on, and the user's next charge tries again). ``AsyncListenerError`` for an
        async listener, unless ``usagemeter.aio`` prepared the charges
        (``_prepared_plans.monthly``)."""
        prepared: dict[Actor, list[MonthlyCharge] | None] | None = getattr(
            self._prepared_plans, "monthly", None
        )
        if prepared is not None and actor in prepared:
            ready = prepared[actor]
            return False if ready is None else [_charge_item(c) for c in ready]
        if not self.events.listeners(MONTHLY_CHARGES):
            return None
        if self._offload_from_loop and self.store_backend in _SHARED_BACKENDS and _on_event_loop():
            # On a fleet the month's charges are written to the shared ledger (a Redis round
            # trip): ``usagemeter.aio`` makes the call again in a worker thread, off the loop.
            raise AsyncListenerError(
                "on a fleet the monthly charges are written to the shared ledger: "
                "usagemeter.aio applies them in a worker thread"
            )
        if self.events.has_async_listeners(MONTHLY_CHARGES):
            raise AsyncListenerError(
                f"a listener of {MONTHLY_CHARGES} is async and this call cannot await it: use "
                "usagemeter.aio.AsyncMeteringService, or plain functions"
            )
        month = _month_label(float(self._clock()))
        try:
            charges = self._collect_monthly_charges(actor, month)
        except AsyncListenerError:
            raise
        except Exception as error:
            self._raise_alarm(
                "monthly_charges",
                actor,
                None,
                f"the monthly charges of {month} were not applied (the next charge tries again): "
                f"a listener failed: {error!r}",
            )
            return False
        return [_charge_item(c) for c in charges]

    def _collect_monthly_charges(self, actor: Actor, month: str) -> list[MonthlyCharge]:
        """Run the ``metering:monthlyCharges`` listeners; their charges, checked. Raises what a
        listener raises (nothing is applied then), ``AsyncListenerError`` for an async one."""
        event = MonthlyChargesEvent(actor, month)
        charges: list[MonthlyCharge] = []
        for listener in self.events.listeners(MONTHLY_CHARGES):
            result = listener(event)
            if inspect.isawaitable(result):
                _discard(result)
                raise AsyncListenerError(
                    f"listener {listener!r} of {MONTHLY_CHARGES} is async and this call cannot "
                    "await it: use usagemeter.aio.AsyncMeteringService, or a plain function"
                )
            charges.extend(_checked_charges(listener, result))
        return charges

    async def _collect_monthly_charges_async(self, actor: Actor, month: str) -> list[MonthlyCharge]:
        """``_collect_monthly_charges``, awaiting the listeners that are ``async def``."""
        event = MonthlyChargesEvent(actor, month)
        charges: list[MonthlyCharge] = []
        for listener in self.events.listeners(MONTHLY_CHARGES):
            result = listener(event)
            if inspect.isawaitable(result):
                result = await result
            charges.extend(_checked_charges(listener, result))
        return charges

    def _usage_batch(
        self, usage: object, model_prefix: str, cost_overrides: Mapping[str, int] | None
    ) -> list[tuple[str, int, int | None]]:
        """The batch items a provider's usage payload books, with their cost overrides."""
        items, kinds = _priced_items(usage, model_prefix, self.cost_map)
        overrides = dict(cost_overrides or {})
        unknown = set(overrides) - kinds
        if unknown:
            raise ValueError(
                f"cost_overrides name kinds that this usage does not book: {sorted(unknown)} "
                f"(it books {sorted(kinds)})"
            )
        return [
            (usage_type, units, overrides.get(usage_type.rsplit(":", 1)[1])) for usage_type, units in items
        ]


def _checked_charges(listener: object, result: object) -> list[MonthlyCharge]:
    """A monthly-charges listener's answer: None, or an iterable of ``MonthlyCharge``."""
    if result is None:
        return []
    if not isinstance(result, Iterable) or isinstance(result, str | bytes | MonthlyCharge):
        raise TypeError(
            f"listener {listener!r} of {MONTHLY_CHARGES} must return MonthlyCharge objects "
            f"(an iterable) or None, not {type(result).__name__}"
        )
    charges = list(result)
    for charge in charges:
        if not isinstance(charge, MonthlyCharge):
            raise TypeError(
                f"listener {listener!r} of {MONTHLY_CHARGES} returned a {type(charge).__name__}, "
                "not a MonthlyCharge"
            )
    return charges


def _charge_item(charge: MonthlyCharge) -> tuple[str, int, int]:
    """A monthly charge as a batch item: its cost overrides any price of its usage type."""
    return (charge.usage_type, charge.units, charge.cost)


_SHARED_BACKENDS = ("redis", "redis-cluster")
"""The backends of a fleet's shared ledger, where keyed calls wait on Redis."""


def _on_event_loop() -> bool:
    """Whether this thread is running an asyncio event loop now."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _available_policies(register: RegisterAvailablePoliciesEvent) -> dict[str, Policy]:
    """The plans by id after ``metering:registerAvailablePolicies``: the registered ones (first
    registration of an id wins) and the built-ins they do not replace."""
    available: dict[str, Policy] = {}
    for policy in (*register.available_policies, *BUILTIN_POLICIES):
        if isinstance(policy, Policy):
            available.setdefault(policy.id, policy)  # registered ones come first and win
        else:
            logger.error("ignoring a registered policy that is not a Policy: %r", policy)
    return available


def _check_seconds(name: str, value: object) -> None:
    """``TypeError`` unless ``value`` is an int or float (a bool is not a number of seconds)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds")


def _month_label(epoch_seconds: float) -> str:
    """The UTC ``YYYY-MM`` of an instant."""
    moment = time.gmtime(math.floor(epoch_seconds))
    return f"{moment.tm_year:04d}-{moment.tm_mon:02d}"


# Services with a store that are still open: closed (last snapshot written) at interpreter exit.
_open_services: weakref.WeakSet[MeteringService] = weakref.WeakSet()
_open_services_lock = threading.Lock()


@atexit.register
def _close_open_services() -> None:
    with _open_services_lock:
        services = list(_open_services)
    for service in services:
        try:
            # Stops the snapshot thread even if the last snapshot fails, so the process can end.
            service._close_at_exit()
        except Exception:
            logger.exception(
                "could not write the last snapshot of %s at exit: the usage recorded since the last "
                "successful snapshot is lost",
                service.store_path,
            )


class _Monitor:
    """One daemon thread for every service: raises the store errors of background snapshots as
    alarms, and runs the global usage rate checks when they are due.

    Alarm listeners therefore run here, never on the native snapshot thread, so a listener may call
    ``flush()`` or ``close()``. It ticks once a second and holds a service only while it works on it.
    """

    TICK_SECONDS = 1.0

    def __init__(self) -> None:
        self._services: weakref.WeakSet[MeteringService] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, service: MeteringService) -> None:
        """Look after ``service`` until it is closed or collected; start the thread if needed."""
        with self._lock:
            self._services.add(service)
            if self._thread is None or not self._thread.is_alive():
                self._start()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="usagemeter-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._tick_all():
            time.sleep(self.TICK_SECONDS)

    def _tick_all(self) -> bool:
        """One round over the services; False (and the thread ends) when none is left.

        The services are strong references only inside this call, so a service the application
        dropped is collected between two rounds.
        """
        with self._lock:
            services = list(self._services)
            if not services:
                self._thread = None
                return False
        for service in services:
            self.tick(service)
        return True

    def tick(self, service: MeteringService) -> None:
        """Raise ``service``'s pending store errors, and check its global rate if due."""
        try:
            service._raise_store_errors()
            if service._global_usage_check_due():
                service.check_global_usage_rate()
        except Exception:
            logger.exception("the usagemeter monitor failed on a service; it goes on")
        if service.closed:
            with self._lock:
                self._services.discard(service)

    def after_fork_in_child(self) -> None:
        """The thread did not survive the fork: forget it (and a lock another thread may hold)."""
        self._lock = threading.Lock()
        self._thread = None
        if self._services:
            self._start()


_monitor = _Monitor()


def _after_fork_in_child() -> None:
    """A service with a store belongs to the parent: its copy in the child refuses every call."""
    global _open_services_lock
    _open_services_lock = threading.Lock()
    for service in list(_open_services):
        service._forked()
    _monitor.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _call_weak(ref: weakref.ReferenceType[MeteringService], method: str) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        service = ref()
        if service is None:
            raise RuntimeError("the MeteringService is gone")
        return getattr(service, method)(*args)

    return call


SERVICE_METHODS: tuple[str, ...] = (
    "increment_usage",
    "meter",
    "try_increment_usage",
    "batch_increment_usages",
    "try_batch_increment_usages",
    "record_usage_object",
    "try_record_usage_object",
    "has_enough_credits_for",
    "has_enough_credits_for_usages",
    "has_enough_credits",
    "cost_of",
    "cost_of_usages",
    "affordable_units",
    "has_any_usage",
    "has_usage_this_month",
    "get_remaining_usage",
    "get_allowed_usage",
    "get_actor_budget",
    "get_actor_current_month_usage_details",
    "get_actor_month_usage_details",
    "get_actor_current_month_app_usage_details",
    "get_actor_usage_by_day",
    "get_actor_app_usage",
    "get_global_usage",
    "get_actor_subscription",
    "get_actor_addons",
    "update_addon_credit",
    "set_actor_current_month_usage_total",
    "refund",
    "reserve",
    "holds",
    "apply_monthly_charges",
    "invalidate_subscription",
    "get_actors_usage",
    "check_global_usage_rate",
    "flush",
    "close",
    "get_actor_report",
)
"""Every public method of ``MeteringService``, as ``MeteringServiceWrapper`` exposes them."""


class MeteringServiceWrapper:
    """Exposes every public method of a service directly, and the service as ``.metering_service``.

    The methods are the service's own bound methods, so calling through the wrapper costs nothing.
    """

    def __init__(self, service: MeteringService) -> None:
        """Wrap ``service``."""
        if not isinstance(service, MeteringService):
            raise TypeError(f"expected a MeteringService, not {type(service).__name__}")
        self.metering_service = service
        for name in SERVICE_METHODS:
            setattr(self, name, getattr(service, name))

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            """Every name of ``SERVICE_METHODS`` (bound in ``__init__``)."""
