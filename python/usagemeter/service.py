"""``MeteringService``: the public service class, and its wrapper.

The hot methods (``increment_usage``, ``try_increment_usage``, the credit checks, the reports)
are inherited from the native ``MeteringCore`` and run without any Python frame. This module
adds what is Python's to own: argument defaults, plan resolution through the events, alarms,
logging, and ``record_usage_object``.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from usagemeter._core import Actor, CostMap, MeteringCore
from usagemeter.events import (
    ALARM,
    GET_USER_SUBSCRIPTION,
    OVERRIDE_DEFAULT_SUBSCRIPTION,
    REGISTER_AVAILABLE_POLICIES,
    AlarmEvent,
    EventBus,
    GetUserSubscriptionEvent,
    OverrideDefaultSubscriptionEvent,
    RegisterAvailablePoliciesEvent,
)
from usagemeter.policies import BUILTIN_POLICIES, TEMP_FREE, USER_FREE, Policy

__all__ = ["SERVICE_METHODS", "MeteringService", "MeteringServiceWrapper"]

logger = logging.getLogger("usagemeter")

Clock = Callable[[], float | int]


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
    an existing store's raises ``StoreError``). ``store`` must be a local directory: an empty
    path or a URL (``redis://...``; shared stores are not supported yet) raises ``ValueError``
    before anything is created. Loss bound: a crash loses at most
    the changes of the last ``snapshot_interval`` plus the snapshot being written; whatever a
    returned ``flush()`` covered is never lost. ``close()`` (or leaving a ``with`` block, or the
    interpreter's exit) writes a last snapshot. SIGTERM is the host application's to handle:
    call ``close()`` from its handler or shutdown hook. With ``store=None`` (the default) the
    ledger lives in memory only.

    Every method is thread-safe. Money crosses the API as ``int`` microcents.
    """

    events: EventBus
    """The events of this service: ``events.on(name, listener)``, ``events.off(name, listener)``."""
    _policies: tuple[Policy, ...]

    def __new__(
        cls,
        cost_map: CostMap | None = None,
        *,
        policies: Iterable[Policy] = (),
        unmapped: Literal["error", "free"] = "error",
        subscription_ttl: float = 60.0,
        clock: Clock | None = None,
        store: str | os.PathLike[str] | None = None,
        store_backend: Literal["sled", "redb"] | None = None,
        snapshot_interval: float = 1.0,
    ) -> MeteringService:
        """Validate the options, open the store if any, and connect the ledger to the events."""
        if cost_map is None:
            cost_map = CostMap.default()
        elif not isinstance(cost_map, CostMap):
            raise TypeError(f"cost_map must be a usagemeter.CostMap, not {type(cost_map).__name__}")
        if unmapped not in ("error", "free"):
            raise ValueError(f"unmapped must be 'error' or 'free', not {unmapped!r}")
        if isinstance(subscription_ttl, bool) or not isinstance(subscription_ttl, int | float):
            raise TypeError("subscription_ttl must be a number of seconds")
        if not subscription_ttl >= 0:
            raise ValueError(f"subscription_ttl must be >= 0 seconds, got {subscription_ttl}")
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a callable returning epoch seconds")
        if isinstance(snapshot_interval, bool) or not isinstance(snapshot_interval, int | float):
            raise TypeError("snapshot_interval must be a number of seconds")
        if not snapshot_interval > 0 or snapshot_interval == float("inf"):
            raise ValueError(f"snapshot_interval must be positive seconds, got {snapshot_interval}")
        if store_backend not in (None, "sled", "redb"):
            raise ValueError(f"store_backend must be 'sled', 'redb' or None, not {store_backend!r}")
        store_path = None if store is None else os.fspath(store)
        policies = tuple(policies)
        for policy in policies:
            if not isinstance(policy, Policy):
                raise TypeError(f"policies must be Policy objects, not {type(policy).__name__}")
        ttl_ms = round(subscription_ttl * 1000)
        interval_ms = max(1, round(snapshot_interval * 1000))
        self = super().__new__(
            cls, cost_map, unmapped == "free", ttl_ms, clock, store_path, store_backend, interval_ms
        )
        # Set up here rather than in __init__, so the options are declared once.
        self.events = EventBus()
        self._policies = policies
        # Weak references: the native ledger keeps these callables, and a strong reference back
        # to the service would be a cycle through a native object that the GC cannot see.
        this = weakref.ref(self)
        self._install_hooks(_call_weak(this, "_resolve_policy"), _call_weak(this, "_raise_alarm"))
        if store_path is not None:
            _open_services.add(self)
        return self

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
        """Decide an actor's plan through the three subscription events."""
        default = OverrideDefaultSubscriptionEvent(actor, USER_FREE.id if actor.email else TEMP_FREE.id)
        self.events.emit(OVERRIDE_DEFAULT_SUBSCRIPTION, default)
        register = RegisterAvailablePoliciesEvent(actor, list(self._policies))
        self.events.emit(REGISTER_AVAILABLE_POLICIES, register)
        chosen = GetUserSubscriptionEvent(actor)
        self.events.emit(GET_USER_SUBSCRIPTION, chosen)

        available: dict[str, Policy] = {}
        for policy in (*register.available_policies, *BUILTIN_POLICIES):
            if isinstance(policy, Policy):
                available.setdefault(policy.id, policy)  # registered ones come first and win
            else:
                logger.error("ignoring a registered policy that is not a Policy: %r", policy)
        for wanted in (chosen.user_subscription_id, default.default_subscription_id):
            if wanted is not None and wanted in available:
                return available[wanted]
        self._raise_alarm(
            "unknown_plan",
            actor,
            None,
            f"neither the user's plan {chosen.user_subscription_id!r} nor the default "
            f"{default.default_subscription_id!r} is an available policy; using {USER_FREE.id}",
        )
        return USER_FREE

    def _raise_alarm(self, kind: str, actor: Actor, usage_type: str | None, message: str) -> None:
        """Log an alarm and emit ``metering:alarm``; never raises."""
        logger.warning("metering alarm %s for %r: %s", kind, actor, message)
        self.events.emit(ALARM, AlarmEvent(actor, kind, usage_type, message))

    def record_usage_object(
        self,
        usage: Mapping[str, int],
        actor: Actor,
        model_prefix: str,
        cost_overrides: Mapping[str, int] | None = None,
    ) -> int:
        """Book ``f"{model_prefix}:{kind}"`` for each ``kind: amount`` of ``usage``, atomically.

        ``cost_overrides`` maps a kind to the cost (µ¢) of that whole item. Returns the user's
        month total in µ¢.
        """
        if not isinstance(model_prefix, str) or not model_prefix:
            raise ValueError("model_prefix must be a non-empty string")
        overrides = dict(cost_overrides or {})
        unknown = set(overrides) - set(usage)
        if unknown:
            raise ValueError(f"cost_overrides name kinds that are not in usage: {sorted(unknown)}")
        items = [(f"{model_prefix}:{kind}", amount, overrides.get(kind)) for kind, amount in usage.items()]
        return self.batch_increment_usages(actor, items)


# Services with a store that are still open: closed (last snapshot written) at interpreter exit.
_open_services: weakref.WeakSet[MeteringService] = weakref.WeakSet()
_open_services_lock = threading.Lock()


@atexit.register
def _close_open_services() -> None:
    with _open_services_lock:
        services = list(_open_services)
    for service in services:
        try:
            service.close()
        except Exception:
            logger.exception("could not write the last snapshot of %s at exit", service.store_path)


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
    "record_usage_object",
    "has_enough_credits_for",
    "has_enough_credits",
    "has_any_usage",
    "get_remaining_usage",
    "get_allowed_usage",
    "get_actor_budget",
    "get_actor_current_month_usage_details",
    "get_actor_month_usage_details",
    "get_actor_current_month_app_usage_details",
    "get_actor_app_usage",
    "get_global_usage",
    "get_actor_subscription",
    "get_actor_addons",
    "update_addon_credit",
    "set_actor_current_month_usage_total",
    "invalidate_subscription",
    "get_actors_usage",
    "flush",
    "close",
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
