"""``MeteringMiddleware``: gates HTTP requests on credit or a subscription, and bills response
bytes, for any ASGI application."""

from __future__ import annotations

import http
import logging
from collections.abc import Awaitable, Iterable

from usagemeter._core import Actor, UnknownUsageType
from usagemeter.aio import AsyncMeteringService
from usagemeter.asgi._gate import (
    REFUSALS,
    ASGIApp,
    Gate,
    Message,
    MeteringStats,
    Receive,
    Scope,
    Send,
    send_json,
)
from usagemeter.events import AsyncListenerError

__all__ = ["DEFAULT_EGRESS_USAGE_TYPE", "MeteringMiddleware", "response_head_bytes"]

logger = logging.getLogger("usagemeter")

DEFAULT_EGRESS_USAGE_TYPE = "egress:bytes"
"""The usage type response bytes are billed as, unless ``egress_usage_type`` names another. The
shipped cost maps price ``filesystem:egress:bytes``, not this: price ``egress:bytes`` in your cost
map, or pass ``egress_usage_type="filesystem:egress:bytes"``."""

# Extensions by which an app hands the server a file to send itself: the bytes would not pass
# through ``http.response.body``, so an egress-metering middleware hides them (the app then sends
# the file as body messages, which are counted).
_FILE_EXTENSIONS = ("http.response.pathsend", "http.response.zerocopysend")


def _status_line_bytes(status: int) -> int:
    """``len(b"HTTP/1.1 200 OK\\r\\n")`` for ``status``: the standard reason phrase (none for a code
    without one), as uvicorn and h11 write it."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return len(f"HTTP/1.1 {status} {phrase}\r\n".encode())


_STATUS_LINE_BYTES = {status: _status_line_bytes(status) for status in range(100, 600)}


def response_head_bytes(status: int, headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The bytes of a response's head as egress bills them: the HTTP/1.1 status line
    (``HTTP/1.1 200 OK\\r\\n``), each header the app sent in ``http.response.start`` as
    ``name: value\\r\\n``, and the blank line (``\\r\\n``) that ends the head.

    An estimate of what reaches the client: the headers the server adds itself (uvicorn's
    ``date`` and ``server``, about 60 bytes; ``transfer-encoding: chunked`` and the chunk
    framing of a response without ``content-length``; ``connection: close``) are not counted, and
    HTTP/2's compressed headers are counted as HTTP/1.1 would send them."""
    line = _STATUS_LINE_BYTES.get(status)
    if line is None:
        line = _status_line_bytes(status)
    return line + sum(len(name) + len(value) + 4 for name, value in headers) + 2


class MeteringMiddleware:
    """Pure ASGI middleware: gates HTTP requests on the actor's credit or subscription, and bills
    the bytes each response sends (its head and its body).

    ``actor(scope)`` (a function or ``async def``) returns the ``Actor`` a request bills, or None:
    that request is not metered and passes through. ``service`` is a ``MeteringService`` or an
    ``AsyncMeteringService``.

    - ``require_credits``: an actor whose remaining budget is 0 (``has_any_usage`` false) gets
      HTTP 402 ``{"error": "insufficient_funds", "message": ...}``;
    - ``require_subscription``: an actor on the default plan (``default_plan_id``) gets HTTP 402
      ``{"error": "subscription_required", "message": ...}`` (checked before credit);
    - ``exempt_paths``: paths neither gated nor metered; an entry matches itself and everything
      under it (``"/health"`` matches ``/health`` and ``/health/live``, not ``/healthz``);
    - ``meter_egress``: the bytes of every response are billed as ``egress_usage_type``, one
      ``increment_usage`` per response: its head (``response_head_bytes``: the status line and
      the headers the app sent, as HTTP/1.1 writes them; the server's own ``date`` and
      ``server`` headers are not counted) and its body bytes (streamed ones included), except
      where HTTP sends no body: the answer to a ``HEAD`` request, a 1xx, 204 or 304 status
      (the server drops what the app sends: a ``HEAD`` is billed its head alone). The charge is
      made when the last body message has been sent, or when the response ends early (the
      client went away, the app raised): then what was handed to the server until it reported
      the disconnect is billed. A 402 answer (the gate's, or the app's own) is not billed.
      ``egress_usage_type`` must be priced in the service's cost map (the shipped maps price
      ``filesystem:egress:bytes``), unless the service records unmapped types for free
      (``unmapped="free"``): else ``ValueError`` here.

    Only ``http`` scopes are gated and metered: ``websocket`` and ``lifespan`` scopes pass through
    untouched (a websocket has no status to answer 402 with before it is accepted; gate a websocket
    route with ``metering_dependency``, which closes the handshake with code 1008).

    ``stats`` (a ``MeteringStats``) counts metered requests, 402 answers by kind and the egress
    billed, for metrics.
    """

    def __init__(
        self,
        app: ASGIApp,
        service: object,
        *,
        actor: object,
        require_credits: bool = False,
        require_subscription: bool = False,
        exempt_paths: Iterable[str] = (),
        meter_egress: bool = False,
        egress_usage_type: str = DEFAULT_EGRESS_USAGE_TYPE,
    ) -> None:
        """Check every argument now: a bad one raises ``TypeError`` or ``ValueError`` here, never at
        the first request."""
        if not callable(app):
            raise TypeError(f"app must be an ASGI application, not {type(app).__name__}")
        self.app = app
        self._gate = Gate(
            service, actor=actor, require_credits=require_credits, require_subscription=require_subscription
        )
        self.service: AsyncMeteringService = self._gate.service
        self.stats: MeteringStats = self._gate.stats
        self._require_credits: bool = require_credits
        self._require_subscription: bool = require_subscription
        self._actor_function = self._gate.resolve_actor.function
        self._has_any_usage = self.service.sync.has_any_usage
        self._increment_usage = self.service.sync.increment_usage
        exact, prefixes = _exempt(exempt_paths)
        self._exempt_exact = exact
        self._exempt_prefixes = prefixes
        self._has_exempt = bool(exact)
        if not isinstance(meter_egress, bool):
            raise TypeError(f"meter_egress must be True or False, not {type(meter_egress).__name__}")
        self.meter_egress = meter_egress
        if not isinstance(egress_usage_type, str) or not egress_usage_type:
            raise ValueError("egress_usage_type must be a non-empty usage type such as 'egress:bytes'")
        self.egress_usage_type = egress_usage_type
        if meter_egress:
            _check_priced(self.service, egress_usage_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection.

        Written for speed (``make bench-asgi`` measures it against a trivial app): the native
        checks and charges are called directly, not through the async service's coroutines,
        which only an ``async def`` plan listener needs (the native call then raises
        ``AsyncListenerError`` having done nothing, and the async service makes it).
        """
        if scope["type"] != "http" or (
            self._has_exempt
            and ((path := scope["path"]) in self._exempt_exact or path.startswith(self._exempt_prefixes))
        ):
            await self.app(scope, receive, send)
            return
        actor = self._actor_function(scope)
        if type(actor) is not Actor:
            if actor is not None:  # an async actor function's coroutine, or a wrong type
                actor = await self._gate.resolve_actor.finish(actor)
            if actor is None:
                await self.app(scope, receive, send)
                return
        stats = self.stats
        stats.requests_metered += 1
        if self._require_subscription:
            refusal = await self._gate.refusal(actor)
            if refusal is not None:
                await send_json(send, 402, REFUSALS[refusal])
                return
        elif self._require_credits:
            try:
                has_budget = self._has_any_usage(actor)
            except AsyncListenerError:
                has_budget = await self.service.has_any_usage(actor)
            if not has_budget:
                stats.refused_insufficient_funds += 1
                await send_json(send, 402, REFUSALS["insufficient_funds"])
                return
        if not self.meter_egress:
            await self.app(scope, receive, send)
            return
        extensions = scope.get("extensions")
        if extensions and any(name in extensions for name in _FILE_EXTENSIONS):
            kept = {name: value for name, value in extensions.items() if name not in _FILE_EXTENSIONS}
            scope = {**scope, "extensions": kept}
        # An object rather than closures here: their cell variables would cost every request of
        # this method, metered or not (measured: 0.4 µs of the 2 µs this method cost).
        response = _Response(self, actor, receive, send, scope.get("method") == "HEAD")
        try:
            await self.app(scope, response.receive, response.send)
        finally:
            if not response.billed and response.sent_bytes:
                response.billed = True
                if not self._bill_now(actor, response.sent_bytes):
                    await self._bill_later(actor, response.sent_bytes)

    def metering_stats(self) -> dict[str, int]:
        """``stats.as_dict()``: the counters ``usagemeter.prometheus`` reads (a ``GateStats``:
        ``MeteringCollector(service, gates=[middleware])``)."""
        return self.stats.as_dict()

    def _bill_now(self, actor: Actor, sent_bytes: int) -> bool:
        """Charge a response's bytes with the native call; False if it needs an async plan look-up
        (nothing was recorded: ``_bill_later`` makes it). A failure is logged and counted, never
        raised into the response, which was sent already."""
        try:
            self._increment_usage(actor, self.egress_usage_type, sent_bytes)
        except AsyncListenerError:
            return False
        except Exception:
            self._billing_failed(actor, sent_bytes)
            return True
        stats = self.stats
        stats.egress_responses_billed += 1
        stats.egress_bytes_billed += sent_bytes
        return True

    async def _bill_later(self, actor: Actor, sent_bytes: int) -> None:
        """``_bill_now`` through the async service, which awaits the plan listeners."""
        try:
            await self.service.increment_usage(actor, self.egress_usage_type, sent_bytes)
        except Exception:
            self._billing_failed(actor, sent_bytes)
            return
        self.stats.egress_responses_billed += 1
        self.stats.egress_bytes_billed += sent_bytes

    def _billing_failed(self, actor: Actor, sent_bytes: int) -> None:
        self.stats.egress_billing_errors += 1
        logger.exception(
            "could not bill %d response bytes of %r as %s", sent_bytes, actor, self.egress_usage_type
        )


class _Response:
    """The bytes of one metered response (``response_head_bytes``, then the body's), billed once."""

    __slots__ = (
        "_receive",
        "_send",
        "actor",
        "billed",
        "bodiless",
        "disconnected",
        "middleware",
        "sent_bytes",
    )

    def __init__(
        self, middleware: MeteringMiddleware, actor: Actor, receive: Receive, send: Send, bodiless: bool
    ) -> None:
        self.middleware = middleware
        self.actor = actor
        self._receive = receive
        self._send = send
        self.sent_bytes = 0
        self.bodiless = bodiless  # a HEAD request's, or (at the start) a status without a body
        self.disconnected = False
        self.billed = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            # Servers drop what is sent after this (uvicorn does, silently): it is not billed.
            self.disconnected = True
        return message

    def send(self, message: Message) -> Awaitable[None]:
        # Not a coroutine itself: what is not billed goes straight to the server's send.
        kind = message["type"]
        if kind == "http.response.body" and not self.disconnected:
            return self._send_body(message)
        if kind == "http.response.start":
            if message.get("status") == 402:
                self.billed = True  # the app's own 402 answer is not billed, as the gate's is not
            elif not self.disconnected:
                return self._send_start(message)
        return self._send(message)

    async def _send_start(self, message: Message) -> None:
        await self._send(message)  # counted once the server took it (it checks status and headers)
        status: int = message["status"]
        if status < 200 or status in (204, 304):
            self.bodiless = True  # HTTP sends no body with these: servers drop what the app sends
        self.sent_bytes += response_head_bytes(status, message.get("headers", ()))

    async def _send_body(self, message: Message) -> None:
        await self._send(message)  # counted once the server took it (it may raise on a disconnect)
        if not self.bodiless:
            self.sent_bytes += len(message.get("body", b""))
        if not message.get("more_body", False) and not self.billed:
            self.billed = True
            if self.sent_bytes and not self.middleware._bill_now(self.actor, self.sent_bytes):
                await self.middleware._bill_later(self.actor, self.sent_bytes)


def _exempt(paths: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """The exact paths and the prefixes (``path + "/"``) of ``exempt_paths``."""
    if isinstance(paths, str | bytes):
        raise TypeError("exempt_paths must be a collection of paths such as ('/health',), not one string")
    exact: set[str] = set()
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"each exempt path must be a string starting with '/', got {path!r}")
        exact.add(path.rstrip("/") or "/")
    prefixes = tuple(sorted("/" if path == "/" else path + "/" for path in exact))
    return frozenset(exact), prefixes


def _check_priced(service: AsyncMeteringService, usage_type: str) -> None:
    """``ValueError`` unless the service can bill ``usage_type`` (priced, or unmapped types free)."""
    try:
        service.sync.meter(Actor.system(), usage_type)  # validates the type; records nothing
    except UnknownUsageType:
        raise ValueError(
            f"meter_egress bills response bytes as {usage_type!r}, which the service's cost map does "
            f"not price: add it to the cost map (µ¢ per byte), or pass egress_usage_type= a priced "
            f"type (the shipped maps price 'filesystem:egress:bytes'), or open the service with "
            f"unmapped='free'"
        ) from None
