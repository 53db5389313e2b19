"""An AI gateway metered by usagemeter: a FastAPI app selling LLM tokens per request.

    USAGEMETER_STORE=redis://127.0.0.1:6379/0 uvicorn gateway:app --app-dir examples --workers 2

Every worker process opens the same ledger (a Redis URL; a directory for one worker; nothing for a
ledger in memory). A request names its user with ``Authorization: Bearer <user id>``.

- ``POST /v1/chat/completions`` (OpenAI's request shape; ``"stream": true`` streams server-sent
  events): ``max_tokens`` is capped to what the user's remaining budget buys after the prompt
  (``acap_max_tokens``); when it buys nothing the answer is 402 ``insufficient_funds``. The
  reply's usage object is recorded as the provider returned it (``record_usage_object``); a
  streamed reply without a usage report is charged the documented estimate (``ameter_stream``).
- ``MeteringMiddleware`` answers 402 to a user whose budget is 0 before any route runs, and bills
  each response's bytes (its head and its body) as egress.
- ``/metering/...``: the usage routes (``usage_app``); ``GET /metering/globalUsage`` needs the
  admin token. ``POST /admin/credit`` (admin token) adds purchased credit.

The "model" is a stand-in that writes ``max_tokens`` tokens of text, so that the example runs
without a provider's key: replace ``complete`` with a call to your provider's SDK and keep the rest.

Settings (environment): ``USAGEMETER_STORE``; ``GATEWAY_ALLOWANCE`` (µ¢ a month of a user's free
plan, default 50,000,000 = $0.50); ``GATEWAY_ADMIN_TOKEN`` (default ``admin-secret``);
``GATEWAY_SNAPSHOT_INTERVAL`` (seconds between syncs, default 1).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.routing import Mount
from usagemeter import Actor, MeteringService, Policy, to_microcents
from usagemeter.aio import AsyncMeteringService
from usagemeter.asgi import MeteringMiddleware, usage_app
from usagemeter.llm import acap_max_tokens
from usagemeter.streaming import ameter_stream

ADMIN_TOKEN = os.environ.get("GATEWAY_ADMIN_TOKEN", "admin-secret")
PROVIDER = "openai"
EGRESS = "filesystem:egress:bytes"  # the shipped price of a byte sent

service = AsyncMeteringService(
    MeteringService(
        store=os.environ.get("USAGEMETER_STORE") or None,
        snapshot_interval=float(os.environ.get("GATEWAY_SNAPSHOT_INTERVAL", "1.0")),
        policies=[Policy("temp_free", int(os.environ.get("GATEWAY_ALLOWANCE", "50000000")))],
    )
)


def bearer(scope: Any) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, or None."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and value.startswith(b"Bearer "):
            return value[len(b"Bearer ") :].decode("latin-1").strip() or None
    return None


def actor_of(scope: Any) -> Actor | None:
    """The user a request bills: its bearer token (None: not metered, and refused by the routes).
    The admin acts as the system actor, which is never metered."""
    token = bearer(scope)
    if token is None:
        return None
    return Actor.system() if token == ADMIN_TOKEN else Actor(token)


def is_admin(scope: Any) -> bool:
    """Whether the request carries the admin token."""
    return bearer(scope) == ADMIN_TOKEN


def tokens_of(text: str) -> int:
    """A token count for the stand-in model: 4 characters a token, rounded up."""
    return math.ceil(len(text) / 4)


def complete(prompt_tokens: int, max_tokens: int) -> tuple[list[str], dict[str, Any]]:
    """The stand-in model: ``max_tokens`` tokens of text (4 characters each) in pieces, and the
    usage object OpenAI's chat completions return."""
    pieces = ["tok " for _ in range(max_tokens)]
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": max_tokens,
        "total_tokens": prompt_tokens + max_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }
    return pieces, usage


def insufficient_funds() -> JSONResponse:
    """The middleware's 402 body, for a request the budget cannot pay for."""
    return JSONResponse(
        {"error": "insufficient_funds", "message": "not enough credit for this request"}, status_code=402
    )


async def chat_completions(request: Request) -> Any:
    """OpenAI's ``POST /v1/chat/completions``, metered."""
    actor = actor_of(request.scope)
    if actor is None or actor.is_system:
        return JSONResponse({"error": "unauthorized", "message": "a user's bearer token is required"}, 401)
    body = await request.json()
    model = body.get("model")
    messages = body.get("messages")
    wanted = body.get("max_tokens", 256)
    if not isinstance(model, str) or not isinstance(messages, list) or type(wanted) is not int or wanted < 1:
        return JSONResponse({"error": "bad_request", "message": "model, messages and max_tokens"}, 400)
    prefix = f"{PROVIDER}:{model}"
    prompt_text = "".join(str(message.get("content", "")) for message in messages)
    prompt_tokens = tokens_of(prompt_text)
    max_tokens = await acap_max_tokens(service, actor, prefix, prompt_tokens, wanted)
    if max_tokens == 0:
        return insufficient_funds()
    pieces, usage = complete(prompt_tokens, max_tokens)
    headers = {"x-worker-pid": str(os.getpid()), "x-max-tokens": str(max_tokens)}
    if body.get("stream"):
        return StreamingResponse(
            stream_events(actor, prefix, prompt_tokens, model, pieces),
            media_type="text/event-stream",
            headers=headers,
        )
    total = await service.record_usage_object(usage, actor, prefix)
    headers["x-month-total"] = str(total)
    reply = {
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)}}],
        "usage": usage,
    }
    return JSONResponse(reply, headers=headers)


async def stream_events(
    actor: Actor, prefix: str, prompt_tokens: int, model: str, pieces: list[str]
) -> AsyncIterator[str]:
    """Server-sent events of the completion's chunks, metered as they go: no usage report comes,
    so the documented estimate is charged when the stream ends (or the client leaves)."""

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        for piece in pieces:
            yield {
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": {"content": piece}}],
            }

    async with ameter_stream(service, actor, prefix, chunks(), prompt_tokens=prompt_tokens) as metered:
        async for chunk in metered:
            yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


async def add_credit(request: Request) -> JSONResponse:
    """``POST /admin/credit`` ``{"user_id": ..., "dollars": "5.00"}`` (admin token)."""
    if not is_admin(request.scope):
        return JSONResponse({"error": "forbidden", "message": "the admin token is required"}, 403)
    body = await request.json()
    purchased = await service.update_addon_credit(body["user_id"], to_microcents(body["dollars"]))
    return JSONResponse({"user_id": body["user_id"], "purchased_credits": purchased})


async def health(request: Request) -> JSONResponse:
    """Liveness, with the worker's process id."""
    return JSONResponse({"ok": True, "pid": os.getpid()})


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Close the service when the worker stops: its last sync writes what it recorded."""
    yield
    await service.close()


api = FastAPI(
    title="usagemeter example gateway",
    lifespan=lifespan,
    routes=[
        Mount("/metering", app=usage_app(service, actor=actor_of, is_admin=is_admin)),
    ],
)
api.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
api.add_api_route("/admin/credit", add_credit, methods=["POST"])
api.add_api_route("/healthz", health, methods=["GET"])

app = MeteringMiddleware(
    api,
    service,
    actor=actor_of,
    require_credits=True,
    exempt_paths=["/healthz", "/metering", "/admin"],
    meter_egress=True,
    egress_usage_type=EGRESS,
)
"""The ASGI application: ``uvicorn gateway:app --app-dir examples``."""
