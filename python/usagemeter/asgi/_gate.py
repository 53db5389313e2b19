"""What the middleware, the dependency and the usage routes share: the service, the actor, the
checks and their 402 answers, and a JSON response that needs no framework."""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from usagemeter._core import Actor
from usagemeter.aio import AsyncMeteringService
from usagemeter.events import (
    OVERRIDE_DEFAULT_SUBSCRIPTION,
    REGISTER_AVAILABLE_POLICIES,
    AsyncListenerError,
)
from usagemeter.policies import BUILTIN_POLICIES, USER_FREE
from usagemeter.service import MeteringService, _available_policies

# The ASGI types, spelled out here so that usagemeter needs no framework (Starlette's are the same).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ActorFunction = Callable[[Scope], "Actor | Awaitable[Actor | None] | None"]
"""``actor(scope)``: the ``Actor`` a request bills, or None (not metered); may be ``async def``."""

ErrorKind = Literal["insufficient_funds", "subscription_required"]

MESSAGES: dict[ErrorKind, str] = {
    "insufficient_funds": (
        "No budget is left this month: the monthly allowance and any purchased credit are spent. "
        "Buy credit or upgrade the plan to go on."
    ),
    "subscription_required": "This needs a paid subscription: the account is on the free plan.",
}
"""The ``message`` of each 402 answer."""

_BUILTIN_IDS = frozenset(policy.id for policy in BUILTIN_POLICIES)


def as_async_service(service: object) -> AsyncMeteringService:
    """``service`` as an ``AsyncMeteringService`` (a ``MeteringService`` is wrapped, not copied)."""
    if isinstance(service, AsyncMeteringService):
        return service
    if isinstance(service, MeteringService):
        return AsyncMeteringService(service)
    raise TypeError(
        f"service must be a usagemeter.MeteringService or usagemeter.aio.AsyncMeteringService, "
        f"not {type(service).__name__}"
    )


def check_flag(name: str, value: object) -> bool:
    """``value`` if it is a bool, else ``TypeError`` (a truthy string is a mistake, not a yes)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {type(value).__name__}")
    return value


def is_async_callable(function: object) -> bool:
    """Whether calling ``function`` returns a coroutine (an ``async def`` or an object whose
    ``__call__`` is one)."""
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004  (the method, not callable())
    )


class ActorResolver:
    """Calls the application's ``actor(scope)`` (sync or async) and checks what it returns."""

    __slots__ = ("function",)

    def __init__(self, function: object, name: str = "actor") -> None:
        """Check that ``function`` is callable."""
        if not callable(function):
            raise TypeError(
                f"{name} must be a function of the ASGI scope returning a usagemeter.Actor or None, "
                f"not {type(function).__name__}"
            )
        self.function: Callable[[Scope], Any] = function

    async def __call__(self, scope: Scope) -> Actor | None:
        """The request's actor, or None; ``TypeError`` if the function returned anything else."""
        actor = self.function(scope)
        if actor is None or type(actor) is Actor:
            return actor
        return await self.finish(actor)

    async def finish(self, returned: object) -> Actor | None:
        """Await what an ``async def`` actor function returned, and check it."""
        actor = await returned if inspect.isawaitable(returned) else returned
        if actor is None or type(actor) is Actor:
            return actor
        raise TypeError(
            f"the actor function {self.function!r} returned {type(actor).__name__}: "
            "it must return a usagemeter.Actor, or None for a request that is not metered"
        )


async def default_plan_id(service: MeteringService | AsyncMeteringService, actor: Actor) -> str:
    """The id of the plan ``actor`` gets when no ``metering:getUserSubscription`` listener names
    one: ``user_free`` with an email, else ``temp_free``, as ``metering:overrideDefaultSubscription``
    listeners may change it (awaited if they are ``async def``). A default that is not an
    available plan (built-in, given to the service, or registered through
    ``metering:registerAvailablePolicies``) falls back to ``user_free``, as the service does.

    An actor is "on the default plan" when ``get_actor_subscription(actor).id`` is this id.
    """
    sync = service.sync if isinstance(service, AsyncMeteringService) else service
    events = sync.events
    default, register, _ = sync._plan_events(actor)
    if events.listeners(OVERRIDE_DEFAULT_SUBSCRIPTION):
        await events.emit_async(OVERRIDE_DEFAULT_SUBSCRIPTION, default)
    wanted = default.default_subscription_id
    if wanted in _BUILTIN_IDS:  # available whatever is registered: no need to ask
        return wanted
    await events.emit_async(REGISTER_AVAILABLE_POLICIES, register)
    return wanted if wanted in _available_policies(register) else USER_FREE.id


@dataclass(slots=True)
class MeteringStats:
    """Counters of a ``MeteringMiddleware`` (or a dependency), for metrics. Plain ints, only ever
    increased, updated on the event loop's thread.

    - ``requests_metered``: HTTP requests that had an actor (not exempt, ``actor`` not None);
    - ``refused_insufficient_funds``, ``refused_subscription_required``: 402 answers of each kind;
    - ``egress_responses_billed``: responses whose bytes were billed (one charge each);
    - ``egress_bytes_billed``: the bytes those charges recorded (heads and bodies);
    - ``egress_billing_errors``: charges that raised (logged on the ``usagemeter`` logger; the
      response itself was already sent).
    """

    requests_metered: int = 0
    refused_insufficient_funds: int = 0
    refused_subscription_required: int = 0
    egress_responses_billed: int = 0
    egress_bytes_billed: int = 0
    egress_billing_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {
            "requests_metered": self.requests_metered,
            "refused_insufficient_funds": self.refused_insufficient_funds,
            "refused_subscription_required": self.refused_subscription_required,
            "egress_responses_billed": self.egress_responses_billed,
            "egress_bytes_billed": self.egress_bytes_billed,
            "egress_billing_errors": self.egress_billing_errors,
        }

    def metering_stats(self) -> dict[str, int]:
        """``as_dict()``: what ``usagemeter.prometheus`` reads from a gate (``GateStats``)."""
        return self.as_dict()


class PaymentRequired(Exception):
    """A request refused with HTTP 402: ``error`` is ``"insufficient_funds"`` or
    ``"subscription_required"``. The dependency raises it; ``usagemeter.asgi.install(app)`` answers
    it with the same JSON body as the middleware."""

    status_code = 402

    def __init__(self, error: ErrorKind, message: str | None = None) -> None:
        """An answer of kind ``error`` with ``message`` (default: ``MESSAGES[error]``)."""
        if error not in MESSAGES:
            raise ValueError(f"error must be one of {sorted(MESSAGES)}, not {error!r}")
        self.error: ErrorKind = error
        self.message: str = MESSAGES[error] if message is None else message
        super().__init__(f"{error}: {self.message}")

    def body(self) -> dict[str, str]:
        """``{"error": ..., "message": ...}``, the JSON body of the 402 answer."""
        return {"error": self.error, "message": self.message}


class Gate:
    """The credit and subscription checks of one request, as the middleware and the dependency
    make them."""

    __slots__ = ("require_credits", "require_subscription", "resolve_actor", "service", "stats")

    def __init__(
        self,
        service: object,
        *,
        actor: object,
        require_credits: object,
        require_subscription: object,
    ) -> None:
        """Check the arguments (``TypeError``/``ValueError`` before anything runs)."""
        self.service = as_async_service(service)
        self.resolve_actor = ActorResolver(actor)
        self.require_credits = check_flag("require_credits", require_credits)
        self.require_subscription = check_flag("require_subscription", require_subscription)
        self.stats = MeteringStats()

    async def refusal(self, actor: Actor) -> ErrorKind | None:
        """Why ``actor`` is refused (a subscription first, then credit), or None.

        The native checks are called directly; only when a plan listener is ``async def`` (the
        native call raises ``AsyncListenerError``, having done nothing) does the async service
        make them."""
        service = self.service
        sync = service.sync
        if self.require_subscription:
            try:
                plan = sync.get_actor_subscription(actor)
            except AsyncListenerError:
                plan = await service.get_actor_subscription(actor)
            if plan.id == await default_plan_id(service, actor):
                self.stats.refused_subscription_required += 1
                return "subscription_required"
        if self.require_credits:
            try:
                has_budget = sync.has_any_usage(actor)
            except AsyncListenerError:
                has_budget = await service.has_any_usage(actor)
            if not has_budget:
                self.stats.refused_insufficient_funds += 1
                return "insufficient_funds"
        return None


def json_bytes(value: object) -> bytes:
    """Compact UTF-8 JSON; only ints, strings, lists and dicts reach here (money is never a float)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


async def send_json(
    send: Send, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """Send a whole JSON response: ``body`` is already encoded."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def error_body(error: str, message: str) -> bytes:
    """``{"error": ..., "message": ...}`` encoded."""
    return json_bytes({"error": error, "message": message})


REFUSALS: dict[ErrorKind, bytes] = {kind: error_body(kind, message) for kind, message in MESSAGES.items()}
"""The 402 bodies, encoded once."""


class PaymentRequiredResponse:
    """The 402 answer of a ``PaymentRequired`` as an ASGI app (what Starlette's exception handlers
    return). On a websocket, which has no status to answer with, it closes the handshake with
    code 1008 (policy violation) and the error as the reason."""

    __slots__ = ("exception",)

    def __init__(self, exception: PaymentRequired) -> None:
        """The answer to ``exception``."""
        self.exception = exception

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the answer."""
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": self.exception.error})
            return
        await send_json(send, 402, json_bytes(self.exception.body()))
