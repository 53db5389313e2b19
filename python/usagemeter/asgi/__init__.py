"""usagemeter for ASGI servers (Starlette, FastAPI, Litestar, Quart...), with no framework needed.

- ``MeteringMiddleware(app, service, actor=...)``: gates HTTP requests on credit
  (``require_credits``) or a paid plan (``require_subscription``) with HTTP 402
  ``{"error": "insufficient_funds" | "subscription_required", "message": ...}``, and bills each
  response's bytes, its head and its body (``meter_egress``; ``response_head_bytes``);
- ``metering_dependency(service, actor=...)``: the same checks per route, for FastAPI's
  ``Depends`` (with ``install(app)``, which answers its ``PaymentRequired`` with the same 402);
- ``usage_app(service, actor=..., is_admin=...)``: the ``/metering`` routes (``/usage``,
  ``/usage/{app_id}``, ``/globalUsage``, ``/allCosts``, ``/openapi.json``).

``actor(scope)`` is the application's: it returns the ``usagemeter.Actor`` a request bills, or None
(not metered). ``service`` is a ``MeteringService`` or a ``usagemeter.aio.AsyncMeteringService``.
Importing this module imports no web framework.
"""

from usagemeter.asgi._gate import (
    MESSAGES,
    ActorFunction,
    MeteringStats,
    PaymentRequired,
    PaymentRequiredResponse,
    default_plan_id,
)
from usagemeter.asgi.dependency import (
    MeteringDependency,
    install,
    metering_dependency,
    payment_required_handler,
    stats_of,
)
from usagemeter.asgi.middleware import DEFAULT_EGRESS_USAGE_TYPE, MeteringMiddleware, response_head_bytes
from usagemeter.asgi.usage import OPENAPI, UsageApp, usage_app

__all__ = [
    "DEFAULT_EGRESS_USAGE_TYPE",
    "MESSAGES",
    "OPENAPI",
    "ActorFunction",
    "MeteringDependency",
    "MeteringMiddleware",
    "MeteringStats",
    "PaymentRequired",
    "PaymentRequiredResponse",
    "UsageApp",
    "default_plan_id",
    "install",
    "metering_dependency",
    "payment_required_handler",
    "response_head_bytes",
    "stats_of",
    "usage_app",
]
