"""Events through which extensions decide plans and hear alarms.

Listeners are plain callables taking one event object. They run synchronously, in registration
order. A listener that raises is logged on the ``usagemeter`` logger and skipped: an extension's
bug never breaks metering, and never makes recorded usage look unrecorded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from usagemeter._core import Actor
from usagemeter.policies import Policy

__all__ = [
    "ALARM",
    "GET_USER_SUBSCRIPTION",
    "OVERRIDE_DEFAULT_SUBSCRIPTION",
    "REGISTER_AVAILABLE_POLICIES",
    "AlarmEvent",
    "EventBus",
    "GetUserSubscriptionEvent",
    "OverrideDefaultSubscriptionEvent",
    "RegisterAvailablePoliciesEvent",
]

OVERRIDE_DEFAULT_SUBSCRIPTION = "metering:overrideDefaultSubscription"
REGISTER_AVAILABLE_POLICIES = "metering:registerAvailablePolicies"
GET_USER_SUBSCRIPTION = "metering:getUserSubscription"
ALARM = "metering:alarm"

logger = logging.getLogger("usagemeter")

Listener = Callable[[Any], object]


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
    ``store_error`` or ``global_usage_rate`` (the last two with the system actor)."""

    actor: Actor
    kind: str
    usage_type: str | None
    message: str


class EventBus:
    """Named events with listeners; ``on``/``off`` are thread-safe."""

    def __init__(self) -> None:
        """Create a bus with no listeners."""
        self._listeners: dict[str, tuple[Listener, ...]] = {}
        self._lock = threading.Lock()

    def on(self, name: str, listener: Listener) -> Listener:
        """Register ``listener`` for ``name``; returns it, so it can decorate a function."""
        if not callable(listener):
            raise TypeError("listener must be callable")
        with self._lock:
            self._listeners[name] = (*self._listeners.get(name, ()), listener)
        return listener

    def off(self, name: str, listener: Listener) -> None:
        """Remove one registration of ``listener`` for ``name``; ValueError if it is not registered."""
        with self._lock:
            listeners = list(self._listeners.get(name, ()))
            if listener not in listeners:
                raise ValueError(f"listener {listener!r} is not registered for {name!r}")
            listeners.remove(listener)
            self._listeners[name] = tuple(listeners)

    def listeners(self, name: str) -> tuple[Listener, ...]:
        """The listeners of ``name``, in registration order."""
        return self._listeners.get(name, ())

    def emit(self, name: str, event: object) -> None:
        """Call every listener of ``name`` with ``event``; a listener that raises is logged."""
        # Copy-on-write tuples: emitting never holds the lock while listener code runs.
        for listener in self._listeners.get(name, ()):
            try:
                listener(event)
            except Exception:
                logger.exception("listener %r of %s raised; metering continues", listener, name)
