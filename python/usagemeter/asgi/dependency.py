"""The middleware's checks per route, as a FastAPI (or Starlette) dependency."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import Any, Protocol, cast

from usagemeter._core import Actor
from usagemeter.asgi._gate import Gate, MeteringStats, PaymentRequired, PaymentRequiredResponse

__all__ = ["MeteringDependency", "install", "metering_dependency", "payment_required_handler", "stats_of"]


class MeteringDependency(Protocol):
    """What ``metering_dependency`` returns: ``async def (connection: HTTPConnection) -> Actor |
    None``, with its counters as ``.stats`` and ``metering_stats()`` (a prometheus ``GateStats``)."""

    stats: MeteringStats

    def __call__(self, connection: Any) -> Awaitable[Actor | None]:
        """Check the request; return its actor (None: not metered) or raise ``PaymentRequired``."""
        ...

    def metering_stats(self) -> dict[str, int]:
        """The counters by name."""
        ...


def metering_dependency(
    service: object,
    *,
    actor: object,
    require_credits: bool = True,
    require_subscription: bool = False,
) -> MeteringDependency:
    """A dependency making ``MeteringMiddleware``'s checks for the routes that use it.

    ``gate = metering_dependency(service, actor=actor_of)``, then
    ``@app.get("/generate", dependencies=[Depends(gate)])`` or, to get the actor in the route,
    ``async def generate(actor: Actor | None = Depends(gate))``. It returns the request's actor
    (None: not metered, passes). A refused request raises ``PaymentRequired``, which
    ``install(app)`` (once per application) answers with HTTP 402 and exactly the middleware's
    body, ``{"error": "insufficient_funds" | "subscription_required", "message": ...}``: FastAPI's
    ``HTTPException`` would wrap it in ``{"detail": ...}``. Until ``install(app)`` is called, every
    request through the dependency raises ``RuntimeError`` saying so, rather than answer 500 only
    to the users who run out of credit.

    ``actor(scope)`` is as for the middleware (sync or ``async def``). The dependency takes a
    Starlette ``HTTPConnection``, so it works on websocket routes too, where a refusal closes the
    handshake with code 1008. Its counters are the function's ``.stats`` (``MeteringStats``), and
    its ``metering_stats()`` is what ``usagemeter.prometheus.MeteringCollector(gates=...)`` reads.
    Starlette is imported when this is called, never by ``import usagemeter``.
    """
    from starlette.requests import HTTPConnection

    gate = Gate(
        service, actor=actor, require_credits=require_credits, require_subscription=require_subscription
    )

    async def dependency(connection: HTTPConnection) -> Actor | None:
        scope = connection.scope
        _check_installed(scope)
        request_actor = await gate.resolve_actor(scope)
        if request_actor is None:
            return None
        gate.stats.requests_metered += 1
        refusal = await gate.refusal(request_actor)
        if refusal is not None:
            raise PaymentRequired(refusal)
        return request_actor

    # FastAPI reads the parameter's annotation to inject the connection; a real class, not the
    # string that `from __future__ import annotations` leaves (HTTPConnection is imported here).
    dependency.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("connection", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=HTTPConnection)],
        return_annotation=Actor | None,
    )
    dependency.stats = gate.stats  # type: ignore[attr-defined]
    # What usagemeter.prometheus reads from a gate: MeteringCollector(service, gates=[dependency]).
    dependency.metering_stats = gate.stats.as_dict  # type: ignore[attr-defined]
    dependency.__qualname__ = dependency.__name__ = "metering_dependency"
    return cast(MeteringDependency, dependency)


def stats_of(dependency: MeteringDependency) -> MeteringStats:
    """The counters of a dependency made by ``metering_dependency``."""
    stats = getattr(dependency, "stats", None)
    if not isinstance(stats, MeteringStats):
        raise TypeError("not a dependency made by usagemeter.asgi.metering_dependency")
    return stats


async def payment_required_handler(connection: Any, exception: Exception) -> PaymentRequiredResponse:
    """The exception handler answering ``PaymentRequired``: HTTP 402 with
    ``{"error": ..., "message": ...}`` (``FastAPI(exception_handlers={PaymentRequired: this})``,
    or ``install(app)``)."""
    if not isinstance(exception, PaymentRequired):
        raise exception
    return PaymentRequiredResponse(exception)


def install(app: Any) -> Any:
    """Make a Starlette or FastAPI ``app`` answer ``PaymentRequired`` with HTTP 402 and the
    middleware's JSON body; returns ``app``. Call it once, before the app serves."""
    add = getattr(app, "add_exception_handler", None)
    if add is None:
        raise TypeError(f"install() needs a Starlette or FastAPI application, not {type(app).__name__}")
    add(PaymentRequired, payment_required_handler)
    return app


def _check_installed(scope: Any) -> None:
    """``RuntimeError`` unless the app serving this request answers ``PaymentRequired``."""
    handlers = scope.get("starlette.exception_handlers")
    if handlers is not None and PaymentRequired not in handlers[0]:
        raise RuntimeError(
            "usagemeter's metering dependency needs its 402 answer installed: call "
            "usagemeter.asgi.install(app) on the FastAPI/Starlette application"
        )
