"""``usage_app``: the seed system's ``/metering`` routes as a pure ASGI application."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from usagemeter._core import Actor
from usagemeter.aio import AsyncMeteringService
from usagemeter.asgi._gate import (
    ActorResolver,
    Receive,
    Scope,
    Send,
    as_async_service,
    error_body,
    is_async_callable,
    json_bytes,
    send_json,
)

__all__ = ["UsageApp", "usage_app"]

_Handler = Callable[[Scope, "Actor | None", str], Awaitable[bytes]]


class UsageApp:
    """The ``/metering`` routes (``usage_app`` builds one); a pure ASGI application."""

    def __init__(self, service: object, *, actor: object, is_admin: object = None) -> None:
        """See ``usage_app``."""
        self.service: AsyncMeteringService = as_async_service(service)
        self._actor = ActorResolver(actor)
        if is_admin is not None and not callable(is_admin):
            raise TypeError(
                f"is_admin must be a function of the ASGI scope returning a bool, or None, "
                f"not {type(is_admin).__name__}"
            )
        self._is_admin: Callable[[Scope], Any] | None = is_admin
        self._is_admin_async = is_async_callable(is_admin)
        self._routes: dict[str, _Handler] = {
            "/usage": self._usage,
            "/usageByDay": self._usage_by_day,
            "/globalUsage": self._global_usage,
            "/allCosts": self._costs,
            "/openapi.json": self._openapi,
        }
        # The cost map is immutable: its JSON is made once.
        cost_map = self.service.cost_map
        self._all_costs = json_bytes(
            {
                "costs": [
                    {
                        "usageType": usage_type,
                        "ucentsPerUnit": format(price, "f"),
                        "source": cost_map.source_of(usage_type),
                    }
                    for usage_type, price in cost_map.items()
                ]
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request."""
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":  # a websocket: refuse the handshake
            await send({"type": "websocket.close", "code": 1003})
            return
        path = _route_path(scope)
        app_id = ""
        if path.startswith("/usage/"):
            app_id = path[len("/usage/") :]
            handler: _Handler | None = self._app_usage
        else:
            handler = self._routes.get(path)
        if handler is None:
            await send_json(send, 404, error_body("not_found", f"no route {path!r} here"))
            return
        if scope["method"] != "GET":
            await send_json(
                send,
                405,
                error_body("method_not_allowed", f"{path} answers GET only"),
                ((b"allow", b"GET"),),
            )
            return
        actor: Actor | None = None
        if path != "/openapi.json":  # the only route open to anyone
            actor = await self._actor(scope)
            if actor is None:
                await send_json(send, 401, error_body("unauthorized", "authentication required"))
                return
        try:
            body = await handler(scope, actor, app_id)
        except _HTTPError as error:
            await send_json(send, error.status, error_body(error.error, error.message))
            return
        await send_json(send, 200, body)

    async def _usage(self, scope: Scope, actor: Actor | None, app_id: str) -> bytes:
        actor = _metered_caller(actor)
        details = await self.service.get_actor_current_month_usage_details(actor)
        allowance = await self.service.get_allowed_usage(actor)
        return json_bytes({**details, "allowanceInfo": allowance})

    async def _usage_by_day(self, scope: Scope, actor: Actor | None, app_id: str) -> bytes:
        actor = _metered_caller(actor)
        month = _query_value(scope, "month")
        try:
            report = await self.service.get_actor_usage_by_day(actor, month)
        except ValueError as error:
            raise _HTTPError(400, "bad_request", str(error)) from None
        return json_bytes(report)

    async def _app_usage(self, scope: Scope, actor: Actor | None, app_id: str) -> bytes:
        actor = _metered_caller(actor)
        if not app_id or "/" in app_id:
            raise _HTTPError(400, "bad_request", "the path must be /usage/{app_id}, with one app id")
        try:
            details = await self.service.get_actor_current_month_app_usage_details(actor, app_id)
        except PermissionError as error:
            raise _HTTPError(403, "forbidden", str(error)) from None
        except ValueError as error:
            raise _HTTPError(400, "bad_request", str(error)) from None
        return json_bytes(details)

    async def _global_usage(self, scope: Scope, actor: Actor | None, app_id: str) -> bytes:
        is_admin = self._is_admin
        allowed = False
        if is_admin is not None:
            allowed = is_admin(scope)
            if self._is_admin_async:
                allowed = await allowed
        if allowed is not True:
            raise _HTTPError(403, "forbidden", "only an administrator may read the global usage")
        return json_bytes(await self.service.get_global_usage())

    async def _costs(self, scope: Scope, actor: Actor | None, app_id: str) -> bytes:
        return self._all_costs

    async def _openapi(self, scope: Scope, actor: Actor | None, app_id: str) -> bytes:
        document = copy.deepcopy(OPENAPI)
        document["servers"] = [{"url": scope.get("root_path", "") or "/"}]
        return json_bytes(document)


def usage_app(service: object, *, actor: object, is_admin: object = None) -> UsageApp:
    """The seed system's metering routes as a pure ASGI app, to mount at ``/metering``.

    ``actor(scope)`` (sync or ``async def``) returns the caller's ``Actor``, or None: 401.
    ``is_admin(scope)`` (sync or ``async def``, default None: nobody) returns True for the callers
    who may read the global usage (else 403). Every answer is JSON; money is integer µ¢, prices are
    exact decimal strings of µ¢ per unit.

    - ``GET /usage``: the caller's month, ``{"usage": {"total", "<type>": {"units", "cost",
      "count"}}, "app_totals": {"<app>": {"total", "count"}}, "allowanceInfo": {"remaining",
      "monthly_allowance", "addons": {"purchased_credits", "consumed_purchase_credits"}}}``;
    - ``GET /usage/{app_id}``: the caller's month through one app, ``{"total", "<type>": {...}}``
      (an app actor may read its own app and ``others``: another app is 403);
    - ``GET /globalUsage``: the month over every actor, ``{"total", "<type>": {...}}`` (admins);
    - ``GET /allCosts``: ``{"costs": [{"usageType", "ucentsPerUnit", "source"}]}``, every price of
      the cost map (``ucentsPerUnit`` a decimal string, never a float);
    - ``GET /usageByDay?month=YYYY-MM``: the caller's month per UTC day (default: this month),
      as ``get_actor_usage_by_day``; a bad month answers 400.
    - ``GET /openapi.json``: an OpenAPI 3.1 document of these routes (no actor needed).

    The routes about the caller's own usage (``/usage``, ``/usage/{app_id}``, ``/usageByDay``)
    answer 403 ``not_metered`` to the system actor (``Actor.system()``, never metered: it has no
    month nor budget of its own). Unknown paths answer 404 and other methods 405, as
    ``{"error", "message"}``. Mounted under a
    prefix (Starlette's ``Mount("/metering", app=...)``, a server's ``root_path``), the routes are
    relative to it.
    """
    return UsageApp(service, actor=actor, is_admin=is_admin)


class _HTTPError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


NOT_METERED = (
    "the system actor is not metered: it has no usage nor budget of its own to show "
    "(GET /globalUsage, for administrators, is the month over every actor)"
)
"""The ``message`` of the 403 ``not_metered`` answer to the system actor."""


def _metered_caller(actor: Actor | None) -> Actor:
    """The caller of a route about its own usage: 403 ``not_metered`` for the system actor."""
    assert actor is not None  # __call__ answered 401 without one
    if actor.is_system:
        raise _HTTPError(403, "not_metered", NOT_METERED)
    return actor


def _route_path(scope: Scope) -> str:
    """The request's path below the mount point. Starlette (since 0.33) and the ASGI spec keep the
    full path in ``path`` and the prefix in ``root_path``; older routers cut ``path`` instead."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def _query_value(scope: Scope, name: str) -> str | None:
    """The last value of query parameter ``name``, or None when absent."""
    query: bytes = scope.get("query_string", b"")
    value: str | None = None
    for key, item in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key == name:
            value = item
    return value


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop: answer the server's lifespan messages."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


_INT = {"type": "integer", "minimum": 0}
_ERROR_RESPONSE = {"$ref": "#/components/responses/Error"}


def _ok(description: str, schema_name: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}},
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "usagemeter",
        "version": "1",
        "description": (
            "Usage and prices of the calling actor. Money is integer microcents (µ¢; "
            "$1 = 100,000,000 µ¢); prices are exact decimal strings of µ¢ per unit."
        ),
    },
    "paths": {
        "/usage": {
            "get": {
                "operationId": "getUsage",
                "summary": "The caller's usage this month, and what the caller may still spend",
                "responses": {
                    "200": _ok("The caller's month", "Usage"),
                    "401": _ERROR_RESPONSE,
                    "403": _ERROR_RESPONSE,
                },
            }
        },
        "/usage/{app_id}": {
            "get": {
                "operationId": "getAppUsage",
                "summary": "The caller's usage this month through one app",
                "parameters": [
                    {"name": "app_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _ok("The caller's month through the app", "UsageRecord"),
                    "400": _ERROR_RESPONSE,
                    "401": _ERROR_RESPONSE,
                    "403": _ERROR_RESPONSE,
                },
            }
        },
        "/usageByDay": {
            "get": {
                "operationId": "getUsageByDay",
                "summary": "The caller's usage of a month per UTC day, over all of its apps",
                "parameters": [
                    {
                        "name": "month",
                        "in": "query",
                        "required": False,
                        "description": "YYYY-MM (UTC); default: this month",
                        "schema": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                    }
                ],
                "responses": {
                    "200": _ok("The month's days", "UsageByDay"),
                    "400": _ERROR_RESPONSE,
                    "401": _ERROR_RESPONSE,
                    "403": _ERROR_RESPONSE,
                },
            }
        },
        "/globalUsage": {
            "get": {
                "operationId": "getGlobalUsage",
                "summary": "This month's usage over every actor (administrators only)",
                "responses": {
                    "200": _ok("The month over every actor", "UsageRecord"),
                    "401": _ERROR_RESPONSE,
                    "403": _ERROR_RESPONSE,
                },
            }
        },
        "/allCosts": {
            "get": {
                "operationId": "getAllCosts",
                "summary": "Every priced usage type and its price",
                "responses": {"200": _ok("The cost map", "AllCosts"), "401": _ERROR_RESPONSE},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenAPI",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    },
    "components": {
        "responses": {
            "Error": {
                "description": (
                    "An error: 400, 401, 403 (forbidden; not_metered: the system actor, which has no "
                    "usage of its own, on a route about the caller's usage), 404 or 405"
                ),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {
                    "error": {
                        "type": "string",
                        "examples": [
                            "bad_request",
                            "unauthorized",
                            "forbidden",
                            "not_metered",
                            "not_found",
                            "method_not_allowed",
                        ],
                    },
                    "message": {"type": "string"},
                },
            },
            "UsageEntry": {
                "type": "object",
                "description": "One usage type's month: units, cost (µ¢) and number of charges",
                "required": ["units", "cost", "count"],
                "properties": {"units": _INT, "cost": _INT, "count": _INT},
            },
            "UsageRecord": {
                "type": "object",
                "description": "A month's total (µ¢) and one entry per usage type",
                "required": ["total"],
                "properties": {"total": _INT},
                "additionalProperties": {"$ref": "#/components/schemas/UsageEntry"},
            },
            "DayUsage": {
                "type": "object",
                "description": "A day's total (µ¢), number of charges, and one entry per usage type",
                "required": ["total", "count", "by_type"],
                "properties": {
                    "total": _INT,
                    "count": _INT,
                    "by_type": {
                        "type": "object",
                        "additionalProperties": {"$ref": "#/components/schemas/UsageEntry"},
                    },
                },
            },
            "UsageByDay": {
                "type": "object",
                "required": ["month", "days", "undated"],
                "properties": {
                    "month": {"type": "string", "description": "YYYY-MM"},
                    "days": {
                        "type": "object",
                        "description": "By UTC date (YYYY-MM-DD), only days with usage",
                        "additionalProperties": {"$ref": "#/components/schemas/DayUsage"},
                    },
                    "undated": {
                        "description": "Figures loaded from a store that kept no days",
                        "anyOf": [{"$ref": "#/components/schemas/DayUsage"}, {"type": "null"}],
                    },
                },
            },
            "AppTotal": {
                "type": "object",
                "required": ["total", "count"],
                "properties": {"total": _INT, "count": _INT},
            },
            "AllowanceInfo": {
                "type": "object",
                "description": "What the caller may still spend (µ¢)",
                "required": ["remaining", "monthly_allowance", "addons"],
                "properties": {
                    "remaining": _INT,
                    "monthly_allowance": _INT,
                    "addons": {
                        "type": "object",
                        "required": ["purchased_credits", "consumed_purchase_credits"],
                        "properties": {"purchased_credits": _INT, "consumed_purchase_credits": _INT},
                    },
                },
            },
            "Usage": {
                "type": "object",
                "required": ["usage", "app_totals", "allowanceInfo"],
                "properties": {
                    "usage": {"$ref": "#/components/schemas/UsageRecord"},
                    "app_totals": {
                        "type": "object",
                        "description": "Per app (os-global: usage outside any app)",
                        "additionalProperties": {"$ref": "#/components/schemas/AppTotal"},
                    },
                    "allowanceInfo": {"$ref": "#/components/schemas/AllowanceInfo"},
                },
            },
            "AllCosts": {
                "type": "object",
                "required": ["costs"],
                "properties": {
                    "costs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["usageType", "ucentsPerUnit", "source"],
                            "properties": {
                                "usageType": {"type": "string"},
                                "ucentsPerUnit": {
                                    "type": "string",
                                    "pattern": "^[0-9]+(\\.[0-9]+)?$",
                                    "description": "µ¢ per unit, an exact decimal",
                                },
                                "source": {"type": "string", "description": "The cost map file"},
                            },
                        },
                    }
                },
            },
        },
    },
}
"""The OpenAPI 3.1 document of ``usage_app`` (``servers`` is set per request from ``root_path``)."""
