"""usagemeter.asgi under a real uvicorn server, with real httpx clients: the middleware's 402
gates and egress billing, the FastAPI dependency, and the /metering routes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from decimal import Decimal
from typing import Any

import httpx
import pytest
from asgi_support import serve
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from support import FakeClock
from usagemeter import (
    GET_USER_SUBSCRIPTION,
    OVERRIDE_DEFAULT_SUBSCRIPTION,
    Actor,
    CostMap,
    GetUserSubscriptionEvent,
    MeteringService,
    OverrideDefaultSubscriptionEvent,
    Policy,
)
from usagemeter.aio import AsyncMeteringService
from usagemeter.asgi import (
    MESSAGES,
    MeteringMiddleware,
    PaymentRequired,
    PaymentRequiredResponse,
    default_plan_id,
    install,
    metering_dependency,
    stats_of,
    usage_app,
)
from usagemeter.asgi.usage import NOT_METERED
from usagemeter.prometheus import MeteringCollector

EGRESS = "egress:bytes"
PRICES: dict[str, int | str | Decimal] = {"work:unit": 1_000_000, EGRESS: "0.5", "kv:write": 125}
TEMP_FREE_ALLOWANCE = 25_000_000
PRO = Policy("pro", 2_000_000_000)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


def header_actor(scope: Scope) -> Actor | None:
    """The actor named by the request's ``x-user`` (and ``x-email``, ``x-app``) headers, or None."""
    headers = dict(scope["headers"])
    user = headers.get(b"x-user")
    if user is None:
        return None
    email = headers.get(b"x-email")
    app = headers.get(b"x-app")
    return Actor(user.decode(), app.decode() if app else None, email=email.decode() if email else None)


def new_service(**options: Any) -> MeteringService:
    options.setdefault("clock", FakeClock())
    return MeteringService(CostMap.from_dict(PRICES), **options)


def spend_everything(service: MeteringService, user: str) -> None:
    """Spend a temp_free user's whole allowance: remaining becomes 0."""
    service.increment_usage(Actor(user), "work:unit", TEMP_FREE_ALLOWANCE // 1_000_000)
    assert service.get_remaining_usage(Actor(user)) == 0


def egress_of(service: MeteringService, user: str) -> dict[str, int] | None:
    entry: dict[str, int] | None = service.get_actor_current_month_usage_details(Actor(user))["usage"].get(
        EGRESS
    )
    return entry


def egress_entry(units: int) -> dict[str, int]:
    """The egress report of one response of ``units`` bytes at 0.5 µ¢ a byte (half up)."""
    return {"units": units, "cost": (units + 1) // 2, "count": 1}


# uvicorn adds these headers itself (transfer-encoding to a response without content-length):
# they are not the app's, and egress does not bill them.
SERVER_ADDED = (b"date", b"server", b"transfer-encoding")


def head_bytes(response: httpx.Response) -> int:
    """The head of ``response`` as the client received it, by egress's rule: the status line, each
    header the app sent as ``name: value\\r\\n`` (not the server's own), and the final ``\\r\\n``."""
    line = f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n".encode()
    headers = [(name, value) for name, value in response.headers.raw if name.lower() not in SERVER_ADDED]
    return len(line) + sum(len(name) + len(value) + 4 for name, value in headers) + 2


# What egress bills for plain_body's answer: its head (the status line, Starlette's two headers,
# the blank line) and its 1,234 body bytes; a streamed answer's head is the status line alone.
PLAIN_HEAD = len(
    b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\ncontent-type: text/plain; charset=utf-8\r\n\r\n"
)
PLAIN_BILLED = PLAIN_HEAD + 1234
BARE_HEAD = len(b"HTTP/1.1 200 OK\r\n\r\n")


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll ``condition`` (the server bills on its own thread after the client has its answer)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


def starlette_app(extra: list[Route] | None = None) -> Starlette:
    routes = [
        Route("/hello", hello),
        Route("/health", hello),
        Route("/health/live", hello),
        Route("/healthz", hello),
        *(extra or []),
    ]
    return Starlette(routes=routes)


@pytest.fixture
def service() -> MeteringService:
    return new_service()


# -- The credit gate ---------------------------------------------------------------------------


def test_insufficient_funds_answers_402_with_the_exact_body(service: MeteringService) -> None:
    spend_everything(service, "broke")
    app = MeteringMiddleware(starlette_app(), service, actor=header_actor, require_credits=True)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        refused = client.get("/hello", headers={"x-user": "broke"})
        served = client.get("/hello", headers={"x-user": "rich"})
    assert refused.status_code == 402
    assert refused.headers["content-type"] == "application/json"
    assert refused.content == json.dumps(
        {"error": "insufficient_funds", "message": MESSAGES["insufficient_funds"]}, separators=(",", ":")
    ).encode("utf-8")
    assert served.status_code == 200
    assert served.text == "hello"
    assert app.stats.as_dict() == {
        "requests_metered": 2,
        "refused_insufficient_funds": 1,
        "refused_subscription_required": 0,
        "egress_responses_billed": 0,
        "egress_bytes_billed": 0,
        "egress_billing_errors": 0,
    }


def test_the_prometheus_collector_reads_the_middlewares_and_the_dependencys_counters(
    service: MeteringService,
) -> None:
    spend_everything(service, "broke")
    middleware = MeteringMiddleware(
        starlette_app([Route("/plain", plain_body)]),
        service,
        actor=header_actor,
        require_credits=True,
        meter_egress=True,
    )
    gate = metering_dependency(service, actor=header_actor)
    with serve(middleware) as url, httpx.Client(base_url=url) as client:
        assert client.get("/plain", headers={"x-user": "broke"}).status_code == 402
        assert client.get("/plain", headers={"x-user": "rich"}).status_code == 200
        wait_for(lambda: middleware.stats.egress_responses_billed == 1)
    registry = CollectorRegistry()
    collector = MeteringCollector(service, gates=[middleware, gate])
    registry.register(collector)
    try:
        metrics = generate_latest(registry).decode()
    finally:
        collector.close()
    assert 'usagemeter_gate_refusals_total{reason="insufficient_funds"} 1.0' in metrics
    assert 'usagemeter_gate_refusals_total{reason="subscription_required"} 0.0' in metrics
    assert "usagemeter_gate_requests_metered_total 2.0" in metrics
    assert f"usagemeter_gate_egress_bytes_billed_total {PLAIN_BILLED}.0" in metrics
    assert middleware.metering_stats() == middleware.stats.as_dict()


def test_credit_bought_after_a_refusal_opens_the_gate(service: MeteringService) -> None:
    spend_everything(service, "broke")
    app = MeteringMiddleware(starlette_app(), service, actor=header_actor, require_credits=True)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/hello", headers={"x-user": "broke"}).status_code == 402
        service.update_addon_credit("broke", 1)
        assert client.get("/hello", headers={"x-user": "broke"}).status_code == 200


def test_a_request_without_an_actor_passes_unmetered(service: MeteringService) -> None:
    app = MeteringMiddleware(
        starlette_app(), service, actor=header_actor, require_credits=True, meter_egress=True
    )
    with serve(app) as url, httpx.Client(base_url=url) as client:
        response = client.get("/hello")
    assert response.status_code == 200
    assert app.stats.requests_metered == 0
    assert service.get_actors_usage() == []


def test_exempt_paths_are_neither_gated_nor_billed(service: MeteringService) -> None:
    spend_everything(service, "broke")
    app = MeteringMiddleware(
        starlette_app(),
        service,
        actor=header_actor,
        require_credits=True,
        exempt_paths=("/health/",),
        meter_egress=True,
    )
    with serve(app) as url, httpx.Client(base_url=url) as client:
        broke = {"x-user": "broke"}
        assert client.get("/health", headers=broke).status_code == 200
        assert client.get("/health/live", headers=broke).status_code == 200
        assert client.get("/healthz", headers=broke).status_code == 402
        assert client.get("/health", headers={"x-user": "rich"}).status_code == 200
    assert egress_of(service, "broke") is None
    assert egress_of(service, "rich") is None
    assert app.stats.requests_metered == 1


# -- The subscription gate ---------------------------------------------------------------------


def subscribe(service: MeteringService, paying: set[str]) -> None:
    def plan(event: GetUserSubscriptionEvent) -> None:
        if event.actor.user_id in paying:
            event.user_subscription_id = PRO.id

    service.events.on(GET_USER_SUBSCRIPTION, plan)


def test_subscription_required_for_actors_on_the_default_plan() -> None:
    service = new_service(policies=[PRO])
    subscribe(service, {"paid"})
    app = MeteringMiddleware(starlette_app(), service, actor=header_actor, require_subscription=True)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        free = client.get("/hello", headers={"x-user": "free", "x-email": "free@example.com"})
        anonymous = client.get("/hello", headers={"x-user": "anon"})
        paid = client.get("/hello", headers={"x-user": "paid"})
    assert free.status_code == anonymous.status_code == 402
    assert free.json() == {"error": "subscription_required", "message": MESSAGES["subscription_required"]}
    assert free.headers["content-type"] == "application/json"
    assert paid.status_code == 200
    assert app.stats.refused_subscription_required == 2


def test_the_default_plan_follows_the_override_event() -> None:
    trial = Policy("trial", 0)
    service = new_service(policies=[PRO, trial])
    subscribe(service, {"paid"})

    def default_trial(event: OverrideDefaultSubscriptionEvent) -> None:
        event.default_subscription_id = "trial"

    service.events.on(OVERRIDE_DEFAULT_SUBSCRIPTION, default_trial)
    app = MeteringMiddleware(starlette_app(), service, actor=header_actor, require_subscription=True)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/hello", headers={"x-user": "new"}).status_code == 402
        assert client.get("/hello", headers={"x-user": "paid"}).status_code == 200
    assert service.get_actor_subscription(Actor("new")).id == "trial"


def test_default_plan_id() -> None:
    service = new_service(policies=[PRO])
    assert asyncio.run(default_plan_id(service, Actor("a"))) == "temp_free"
    assert asyncio.run(default_plan_id(service, Actor("a", email="a@example.com"))) == "user_free"

    def unknown_default(event: OverrideDefaultSubscriptionEvent) -> None:
        event.default_subscription_id = "gone"

    service.events.on(OVERRIDE_DEFAULT_SUBSCRIPTION, unknown_default)
    # As the service decides: a default that is no available plan falls back to user_free.
    assert asyncio.run(default_plan_id(service, Actor("a"))) == "user_free"


def test_async_listeners_decide_the_plan_through_the_middleware() -> None:
    service = AsyncMeteringService(new_service(policies=[PRO]))
    looked_up: list[str] = []

    async def plan(event: GetUserSubscriptionEvent) -> None:
        await asyncio.sleep(0.001)  # a database read
        looked_up.append(event.actor.user_id)
        if event.actor.user_id == "paid":
            event.user_subscription_id = PRO.id

    async def actor(scope: Scope) -> Actor | None:
        await asyncio.sleep(0)
        return header_actor(scope)

    service.events.on(GET_USER_SUBSCRIPTION, plan)
    app = MeteringMiddleware(
        starlette_app(), service, actor=actor, require_subscription=True, require_credits=True
    )
    with serve(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/hello", headers={"x-user": "paid"}).status_code == 200
        assert client.get("/hello", headers={"x-user": "free"}).status_code == 402
    assert sorted(set(looked_up)) == ["free", "paid"]


# -- Egress ------------------------------------------------------------------------------------


async def plain_body(request: Request) -> Response:
    return PlainTextResponse("x" * 1234)


async def streamed_body(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for size in (100, 200, 300):
            yield b"s" * size
            await asyncio.sleep(0)

    return StreamingResponse(chunks())


async def endless_body(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"e" * 1000
        # Starlette stops the stream when the client goes away; the rest is never sent.
        await asyncio.sleep(30)
        yield b"e" * 5000

    return StreamingResponse(chunks())


def egress_app(service: MeteringService | AsyncMeteringService, **options: Any) -> MeteringMiddleware:
    routes = [Route("/plain", plain_body), Route("/stream", streamed_body), Route("/endless", endless_body)]
    return MeteringMiddleware(
        starlette_app(routes), service, actor=header_actor, meter_egress=True, **options
    )


def test_egress_bills_the_head_and_body_bytes_of_a_plain_response_once(service: MeteringService) -> None:
    app = egress_app(service)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        response = client.get("/plain", headers={"x-user": "reader"})
        assert len(response.content) == 1234
        wait_for(lambda: egress_of(service, "reader") is not None)
    assert head_bytes(response) == PLAIN_HEAD  # the rule, checked against what the client received
    assert egress_of(service, "reader") == egress_entry(PLAIN_BILLED)
    assert app.stats.egress_bytes_billed == PLAIN_BILLED
    assert app.stats.egress_responses_billed == 1


async def big_body(request: Request) -> Response:
    return Response(b"b" * 1_000_000, media_type="application/octet-stream")


def test_a_head_request_is_billed_its_head_alone_and_a_get_its_head_and_body(
    service: MeteringService,
) -> None:
    # Starlette answers HEAD /big as GET /big, body included; uvicorn sends no body to a HEAD
    # (HTTP has none), so that body is not billed: only the head the client received.
    app = MeteringMiddleware(
        starlette_app([Route("/big", big_body)]), service, actor=header_actor, meter_egress=True
    )
    big_head = len(
        b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\ncontent-type: application/octet-stream\r\n\r\n"
    )
    with serve(app) as url, httpx.Client(base_url=url) as client:
        for _ in range(3):
            head = client.head("/big", headers={"x-user": "peeker"})
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-length"] == "1000000"
        wait_for(lambda: app.stats.egress_responses_billed == 3)
        got = client.get("/big", headers={"x-user": "getter"})
        assert len(got.content) == 1_000_000
        wait_for(lambda: app.stats.egress_responses_billed == 4)
    assert head_bytes(head) == head_bytes(got) == big_head
    assert egress_of(service, "peeker") == {"units": 3 * big_head, "cost": 3 * big_head // 2, "count": 3}
    assert egress_of(service, "getter") == egress_entry(big_head + 1_000_000)
    assert app.stats.egress_bytes_billed == 4 * big_head + 1_000_000


def test_a_bodiless_status_is_billed_its_head_alone(service: MeteringService) -> None:
    async def not_modified(scope: Scope, receive: Any, send: Any) -> None:
        headers = [(b"etag", b'"v1"')]
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    app = MeteringMiddleware(not_modified, service, actor=header_actor, meter_egress=True)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        response = client.get("/", headers={"x-user": "cacher"})
        assert response.status_code == 304 and response.content == b""
        wait_for(lambda: app.stats.egress_responses_billed == 1)
    expected = len(b'HTTP/1.1 304 Not Modified\r\netag: "v1"\r\n\r\n')
    assert head_bytes(response) == expected
    assert egress_of(service, "cacher") == egress_entry(expected)


def test_egress_bills_a_streamed_response_once_for_all_its_chunks(service: MeteringService) -> None:
    app = egress_app(service)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        response = client.get("/stream", headers={"x-user": "reader"})
        assert len(response.content) == 600
        wait_for(lambda: egress_of(service, "reader") is not None)
    assert head_bytes(response) == BARE_HEAD
    assert egress_of(service, "reader") == egress_entry(BARE_HEAD + 600)


def test_egress_bills_what_was_sent_before_the_client_went_away(service: MeteringService) -> None:
    app = egress_app(service)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        received = 0
        with client.stream("GET", "/endless", headers={"x-user": "quitter"}) as response:
            for chunk in response.iter_raw():
                received += len(chunk)
                if received >= 1000:
                    break
        assert received == 1000
        client.close()  # the connection goes, and the server reports the disconnect to the app
        wait_for(lambda: egress_of(service, "quitter") is not None)
    assert egress_of(service, "quitter") == egress_entry(BARE_HEAD + 1000)
    assert app.stats.egress_responses_billed == 1


def test_egress_ignores_what_an_app_sends_after_the_disconnect(service: MeteringService) -> None:
    async def stubborn(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a" * 1000, "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        # uvicorn drops these silently: they never reach the client, so they are not billed.
        await send({"type": "http.response.body", "body": b"a" * 5000, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    app = MeteringMiddleware(stubborn, service, actor=header_actor, meter_egress=True)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        with client.stream("GET", "/", headers={"x-user": "quitter"}) as response:
            assert len(next(response.iter_raw())) == 1000
        client.close()
        wait_for(lambda: egress_of(service, "quitter") is not None)
    assert egress_of(service, "quitter") == egress_entry(BARE_HEAD + 1000)


def test_egress_is_billed_when_an_async_listener_decides_the_plan() -> None:
    service = new_service(policies=[PRO])
    looked_up: list[str] = []

    async def plan(event: GetUserSubscriptionEvent) -> None:
        await asyncio.sleep(0.001)
        looked_up.append(event.actor.user_id)
        event.user_subscription_id = PRO.id

    service.events.on(GET_USER_SUBSCRIPTION, plan)
    app = egress_app(AsyncMeteringService(service), require_credits=True)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        # A user never charged: the native charge meets the async listener, the async service
        # awaits it and charges.
        assert client.get("/plain", headers={"x-user": "new"}).status_code == 200
        wait_for(lambda: app.stats.egress_responses_billed == 1)
    assert egress_of(service, "new") == egress_entry(PLAIN_BILLED)
    assert "new" in looked_up
    assert service.get_actor_subscription(Actor("new")).id == PRO.id


def test_a_failed_charge_is_counted_and_logged_and_the_response_stands(
    service: MeteringService, caplog: pytest.LogCaptureFixture
) -> None:
    app = egress_app(service)
    service.close()  # every charge now raises StoreClosedError
    with serve(app) as url, httpx.Client(base_url=url) as client:
        response = client.get("/plain", headers={"x-user": "reader"})
        assert response.status_code == 200
        assert len(response.content) == 1234
        wait_for(lambda: app.stats.egress_billing_errors == 1)
    assert app.stats.egress_responses_billed == 0
    assert f"could not bill {PLAIN_BILLED} response bytes" in caplog.text


def test_a_402_answer_is_not_billed(service: MeteringService) -> None:
    spend_everything(service, "broke")
    app = egress_app(service, require_credits=True)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/plain", headers={"x-user": "broke"}).status_code == 402
    assert egress_of(service, "broke") is None
    assert app.stats.egress_bytes_billed == 0


async def own_402(request: Request) -> Response:
    return JSONResponse({"error": "insufficient_funds", "message": "this route's own check"}, status_code=402)


def test_the_apps_own_402_answer_is_not_billed_either(service: MeteringService) -> None:
    routes = [Route("/own402", own_402), Route("/plain", plain_body)]
    app = MeteringMiddleware(starlette_app(routes), service, actor=header_actor, meter_egress=True)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/own402", headers={"x-user": "asker"}).status_code == 402
        assert client.get("/plain", headers={"x-user": "asker"}).status_code == 200
        wait_for(lambda: app.stats.egress_responses_billed == 1)
    assert egress_of(service, "asker") == egress_entry(PLAIN_BILLED)


def test_egress_with_the_shipped_prices_needs_their_usage_type() -> None:
    shipped = MeteringService(clock=FakeClock())
    with pytest.raises(ValueError, match="filesystem:egress:bytes"):
        MeteringMiddleware(starlette_app(), shipped, actor=header_actor, meter_egress=True)
    app = MeteringMiddleware(
        starlette_app([Route("/plain", plain_body)]),
        shipped,
        actor=header_actor,
        meter_egress=True,
        egress_usage_type="filesystem:egress:bytes",
    )
    with serve(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/plain", headers={"x-user": "reader"}).status_code == 200
        wait_for(lambda: app.stats.egress_responses_billed == 1)
    usage = shipped.get_actor_current_month_usage_details(Actor("reader"))["usage"]
    assert usage["filesystem:egress:bytes"]["units"] == PLAIN_BILLED


def test_egress_of_an_unpriced_type_is_accepted_when_the_service_records_it_free() -> None:
    service = new_service(unmapped="free")
    app = MeteringMiddleware(
        starlette_app(), service, actor=header_actor, meter_egress=True, egress_usage_type="cdn:bytes"
    )
    assert app.egress_usage_type == "cdn:bytes"


# -- Construction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"actor": "alice"}, TypeError, "actor must be a function"),
        ({"require_credits": "yes"}, TypeError, "require_credits must be True or False"),
        ({"require_subscription": 1}, TypeError, "require_subscription must be True or False"),
        ({"meter_egress": "on"}, TypeError, "meter_egress must be True or False"),
        ({"exempt_paths": "/health"}, TypeError, "not one string"),
        ({"exempt_paths": ["health"]}, ValueError, "starting with '/'"),
        ({"meter_egress": True, "egress_usage_type": ""}, ValueError, "non-empty"),
        ({"meter_egress": True, "egress_usage_type": "cdn:bytes"}, ValueError, "does not price"),
    ],
)
def test_bad_middleware_arguments_raise_at_construction(
    service: MeteringService, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    arguments: dict[str, Any] = {"actor": header_actor, **options}
    with pytest.raises(error, match=match):
        MeteringMiddleware(starlette_app(), service, **arguments)


def test_bad_services_and_apps_are_refused(service: MeteringService) -> None:
    with pytest.raises(TypeError, match=r"service must be a usagemeter\.MeteringService"):
        MeteringMiddleware(starlette_app(), object(), actor=header_actor)
    with pytest.raises(TypeError, match="app must be an ASGI application"):
        MeteringMiddleware("app", service, actor=header_actor)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="is_admin must be a function"):
        usage_app(service, actor=header_actor, is_admin=True)
    with pytest.raises(TypeError, match="actor must be a function"):
        metering_dependency(service, actor=None)
    with pytest.raises(ValueError, match="error must be one of"):
        PaymentRequired("broke")  # type: ignore[arg-type]


def test_an_actor_function_returning_something_else_is_an_error(service: MeteringService) -> None:
    app = MeteringMiddleware(starlette_app(), service, actor=lambda scope: "alice", require_credits=True)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/hello").status_code == 500  # uvicorn logs the TypeError


def test_websocket_and_lifespan_scopes_pass_through(service: MeteringService) -> None:
    seen: list[Scope] = []

    async def inner(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope)

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        raise AssertionError(f"the middleware sent {message}")

    spend_everything(service, "broke")
    app = MeteringMiddleware(inner, service, actor=header_actor, require_credits=True, meter_egress=True)
    websocket = {"type": "websocket", "path": "/ws", "headers": [(b"x-user", b"broke")]}
    asyncio.run(app(websocket, receive, send))
    asyncio.run(app({"type": "lifespan"}, receive, send))
    assert seen == [websocket, {"type": "lifespan"}]
    assert app.stats.requests_metered == 0


def test_egress_metering_hides_the_file_sending_extensions(service: MeteringService) -> None:
    seen: list[Scope] = []

    async def inner(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    app = MeteringMiddleware(inner, service, actor=header_actor, meter_egress=True)
    extensions: dict[str, Any] = {
        "http.response.pathsend": {},
        "http.response.zerocopysend": {},
        "http.response.trailers": {},
    }
    scope = {"type": "http", "path": "/", "headers": [(b"x-user", b"reader")], "extensions": extensions}
    asyncio.run(app(scope, receive, send))
    # Files then go out as body messages, which are counted; the caller's scope is left alone.
    assert seen[0]["extensions"] == {"http.response.trailers": {}}
    assert scope["extensions"] is extensions and len(extensions) == 3


def test_a_refusal_closes_a_websocket_handshake() -> None:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    response = PaymentRequiredResponse(PaymentRequired("insufficient_funds"))
    asyncio.run(response({"type": "websocket"}, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "insufficient_funds"}]


def test_importing_usagemeter_asgi_imports_no_framework() -> None:
    code = (
        "import sys, usagemeter.asgi\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'fastapi', 'anyio'))\n"
        "print(loaded)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- The dependency ----------------------------------------------------------------------------


def fastapi_app(service: MeteringService, *, installed: bool = True, **options: Any) -> FastAPI:
    app = FastAPI()
    gate = metering_dependency(service, actor=header_actor, **options)
    app.state.gate = gate

    @app.get("/generate")
    async def generate(actor: Actor | None = Depends(gate)) -> dict[str, str | None]:  # noqa: B008
        return {"user": None if actor is None else actor.user_id}

    @app.get("/free")
    async def free() -> dict[str, str]:
        return {"ok": "yes"}

    if installed:
        install(app)
    return app


def test_the_dependency_answers_the_middlewares_402_in_fastapi(service: MeteringService) -> None:
    spend_everything(service, "broke")
    app = fastapi_app(service)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        refused = client.get("/generate", headers={"x-user": "broke"})
        served = client.get("/generate", headers={"x-user": "rich"})
        anonymous = client.get("/generate")
        ungated = client.get("/free", headers={"x-user": "broke"})
    assert refused.status_code == 402
    assert refused.headers["content-type"] == "application/json"
    assert refused.json() == {"error": "insufficient_funds", "message": MESSAGES["insufficient_funds"]}
    assert served.json() == {"user": "rich"}
    assert anonymous.json() == {"user": None}
    assert ungated.json() == {"ok": "yes"}
    assert stats_of(app.state.gate).as_dict()["refused_insufficient_funds"] == 1
    assert stats_of(app.state.gate).requests_metered == 2


def test_the_dependency_checks_subscriptions(service: MeteringService) -> None:
    service = new_service(policies=[PRO])
    subscribe(service, {"paid"})
    app = fastapi_app(service, require_credits=False, require_subscription=True)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        refused = client.get("/generate", headers={"x-user": "free"})
        served = client.get("/generate", headers={"x-user": "paid"})
    assert refused.status_code == 402
    assert refused.json()["error"] == "subscription_required"
    assert served.json() == {"user": "paid"}


def test_the_dependency_without_install_fails_loudly_for_everyone(service: MeteringService) -> None:
    app = fastapi_app(service, installed=False)
    with serve(app) as url:
        # Not only the users out of credit: a missing install() shows at the first request.
        # (A new connection each: uvicorn closes one whose app raised.)
        assert httpx.get(url + "/generate", headers={"x-user": "rich"}).status_code == 500
        assert httpx.get(url + "/free").status_code == 200


def test_the_dependency_works_in_plain_starlette(service: MeteringService) -> None:
    spend_everything(service, "broke")
    gate = metering_dependency(service, actor=header_actor)

    async def generate(request: Request) -> Response:
        actor = await gate(request)
        return PlainTextResponse(actor.user_id if actor else "-")

    app = install(Starlette(routes=[Route("/generate", generate)]))
    with serve(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/generate", headers={"x-user": "rich"}).text == "rich"
        refused = client.get("/generate", headers={"x-user": "broke"})
    assert refused.status_code == 402
    assert refused.json()["error"] == "insufficient_funds"


# -- The /metering routes ----------------------------------------------------------------------


def is_admin(scope: Scope) -> bool:
    return dict(scope["headers"]).get(b"x-admin") == b"1"


@pytest.fixture
def charged() -> MeteringService:
    """A service with known charges: alice 3 kv:write outside apps and 2 work:unit through app1,
    bob 10 kv:write; alice bought $1 of credit."""
    service = new_service()
    service.increment_usage(Actor("alice"), "kv:write", 3)
    service.increment_usage(Actor("alice", "app1"), "work:unit", 2)
    service.increment_usage(Actor("bob"), "kv:write", 10)
    service.update_addon_credit("alice", 100_000_000)
    return service


@pytest.fixture(params=["starlette", "fastapi"])
def metering_url(request: pytest.FixtureRequest, charged: MeteringService) -> Iterator[str]:
    """The routes mounted at /metering in Starlette, or in FastAPI, under uvicorn."""
    routes = usage_app(charged, actor=header_actor, is_admin=is_admin)
    app: Any
    if request.param == "starlette":
        app = Starlette(routes=[Mount("/metering", app=routes)])
    else:
        app = FastAPI()
        app.mount("/metering", routes)
    with serve(app) as url:
        yield url + "/metering"


def test_usage_route(metering_url: str) -> None:
    response = httpx.get(metering_url + "/usage", headers={"x-user": "alice"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "usage": {
            "total": 2_000_375,
            "kv:write": {"units": 3, "cost": 375, "count": 1},
            "work:unit": {"units": 2, "cost": 2_000_000, "count": 1},
        },
        "app_totals": {"app1": {"total": 2_000_000, "count": 1}, "os-global": {"total": 375, "count": 1}},
        "allowanceInfo": {
            "remaining": TEMP_FREE_ALLOWANCE - 2_000_375 + 100_000_000,
            "monthly_allowance": TEMP_FREE_ALLOWANCE,
            "addons": {"purchased_credits": 100_000_000, "consumed_purchase_credits": 0},
        },
    }


def test_app_usage_route(metering_url: str) -> None:
    alice = {"x-user": "alice"}
    assert httpx.get(metering_url + "/usage/app1", headers=alice).json() == {
        "total": 2_000_000,
        "work:unit": {"units": 2, "cost": 2_000_000, "count": 1},
    }
    assert httpx.get(metering_url + "/usage/other", headers=alice).json() == {"total": 0}
    # An app reads its own record, never another app's.
    through_app1 = {"x-user": "alice", "x-app": "app1"}
    assert httpx.get(metering_url + "/usage/app1", headers=through_app1).json()["total"] == 2_000_000
    forbidden = httpx.get(metering_url + "/usage/app2", headers=through_app1)
    assert forbidden.status_code == 403
    assert forbidden.json()["error"] == "forbidden"
    assert httpx.get(metering_url + "/usage/", headers=alice).status_code == 400


def test_usage_by_day_route(metering_url: str) -> None:
    alice = {"x-user": "alice"}
    response = httpx.get(metering_url + "/usageByDay", headers=alice)
    assert response.status_code == 200
    report = response.json()
    assert list(report) == ["month", "days", "undated"] and report["undated"] is None
    (day,) = report["days"].values()  # every charge of the fixture was made on one day
    assert (day["total"], day["count"]) == (2_000_375, 2)
    assert day["by_type"]["kv:write"] == {"units": 3, "cost": 375, "count": 1}
    earlier = httpx.get(metering_url + "/usageByDay?month=2001-01", headers=alice).json()
    assert earlier == {"month": "2001-01", "days": {}, "undated": None}
    for bad in ("2026-13", "26-01", ""):
        refused = httpx.get(metering_url + f"/usageByDay?month={bad}", headers=alice)
        assert refused.status_code == 400 and refused.json()["error"] == "bad_request"
    assert httpx.get(metering_url + "/usageByDay").status_code == 401


def test_global_usage_route_is_for_admins(metering_url: str) -> None:
    assert httpx.get(metering_url + "/globalUsage").status_code == 401
    refused = httpx.get(metering_url + "/globalUsage", headers={"x-user": "alice"})
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"
    admin = httpx.get(metering_url + "/globalUsage", headers={"x-user": "root", "x-admin": "1"})
    assert admin.status_code == 200
    assert admin.json() == {
        "total": 2_001_625,
        "kv:write": {"units": 13, "cost": 1_625, "count": 2},
        "work:unit": {"units": 2, "cost": 2_000_000, "count": 1},
    }


def test_all_costs_route_sends_prices_as_decimal_strings(metering_url: str) -> None:
    response = httpx.get(metering_url + "/allCosts", headers={"x-user": "alice"})
    assert response.json() == {
        "costs": [
            {"usageType": "work:unit", "ucentsPerUnit": "1000000", "source": "dict"},
            {"usageType": EGRESS, "ucentsPerUnit": "0.5", "source": "dict"},
            {"usageType": "kv:write", "ucentsPerUnit": "125", "source": "dict"},
        ]
    }
    assert httpx.get(metering_url + "/allCosts").status_code == 401


def test_errors_are_json(metering_url: str) -> None:
    alice = {"x-user": "alice"}
    assert httpx.get(metering_url + "/usage").json()["error"] == "unauthorized"
    missing = httpx.get(metering_url + "/nothing", headers=alice)
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    wrong = httpx.post(metering_url + "/usage", headers=alice)
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET"
    assert wrong.json()["error"] == "method_not_allowed"


def test_the_system_actor_gets_a_json_403_from_the_routes_of_its_own_usage(
    charged: MeteringService,
) -> None:
    # An app whose authentication maps its own internal calls to Actor.system(): that actor is
    # never metered, and has no month nor budget to show (GET /usage was a plain-text 500).
    def system_or_user(scope: Scope) -> Actor | None:
        return Actor.system() if dict(scope["headers"]).get(b"x-system") == b"1" else header_actor(scope)

    app = Starlette(
        routes=[Mount("/metering", app=usage_app(charged, actor=system_or_user, is_admin=lambda scope: True))]
    )
    system = {"x-system": "1"}
    with serve(app) as url, httpx.Client(base_url=url + "/metering") as client:
        for path in ("/usage", "/usage/app1", "/usageByDay"):
            refused = client.get(path, headers=system)
            assert refused.status_code == 403, path
            assert refused.headers["content-type"] == "application/json"
            assert refused.json() == {"error": "not_metered", "message": NOT_METERED}
        assert client.get("/globalUsage", headers=system).json()["total"] == 2_001_625
        assert client.get("/allCosts", headers=system).status_code == 200
        assert client.get("/usage", headers={"x-user": "alice"}).status_code == 200
        document = client.get("/openapi.json").json()
    for path in ("/usage", "/usage/{app_id}", "/usageByDay"):
        assert "403" in document["paths"][path]["get"]["responses"], path
    assert "not_metered" in document["components"]["schemas"]["Error"]["properties"]["error"]["examples"]
    assert charged.get_global_usage()["total"] == 2_001_625  # nothing recorded


def test_openapi_document_lists_the_routes(metering_url: str) -> None:
    response = httpx.get(metering_url + "/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert sorted(document["paths"]) == [
        "/allCosts",
        "/globalUsage",
        "/openapi.json",
        "/usage",
        "/usage/{app_id}",
        "/usageByDay",
    ]
    assert document["servers"] == [{"url": "/metering"}]
    # Every reference resolves inside the document.
    text = response.text
    for reference in {part.split('"')[0] for part in text.split('"$ref":"#/')[1:]}:
        node: Any = document
        for key in reference.split("/"):
            node = node[key]
        assert isinstance(node, dict)


def test_usage_app_alone_under_uvicorn_with_an_async_service_and_lifespan(charged: MeteringService) -> None:
    async def admin(scope: Scope) -> bool:
        await asyncio.sleep(0)
        return is_admin(scope)

    app = usage_app(AsyncMeteringService(charged), actor=header_actor, is_admin=admin)
    with serve(app, lifespan="on") as url:
        response = httpx.get(url + "/globalUsage", headers={"x-user": "root", "x-admin": "1"})
        assert response.json()["total"] == 2_001_625
        assert httpx.get(url + "/openapi.json").json()["servers"] == [{"url": "/"}]
