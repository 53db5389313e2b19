"""The example gateway (examples/gateway.py), end to end: a real uvicorn with 2 worker processes
on one Redis ledger, driven by httpx."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis_support import RedisServer, free_port
from usagemeter import Actor, CostMap, MeteringService, Policy

ROOT = Path(__file__).resolve().parent.parent
ALLOWANCE = 2_000_000  # µ¢ a month: $0.02
MODEL = "gpt-4o-mini"
PREFIX = f"openai:{MODEL}"
INTERVAL = 0.1


class Gateway:
    def __init__(self, url: str, process: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.process = process

    def client(self, user: str | None = None, *, keep_alive: bool = True) -> httpx.Client:
        headers = {} if user is None else {"authorization": f"Bearer {user}"}
        limits = httpx.Limits(max_keepalive_connections=None if keep_alive else 0)
        return httpx.Client(base_url=self.url, headers=headers, limits=limits, timeout=10.0)


@pytest.fixture
def gateway(redis_server: RedisServer, tmp_path: Path) -> Iterator[Gateway]:
    port = free_port()
    env = {
        **os.environ,
        "USAGEMETER_STORE": f"redis://127.0.0.1:{redis_server.port}/0",
        "GATEWAY_ALLOWANCE": str(ALLOWANCE),
        "GATEWAY_SNAPSHOT_INTERVAL": str(INTERVAL),
    }
    log = (tmp_path / "uvicorn.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "gateway:app", "--app-dir", str(ROOT / "examples"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--log-level", "warning"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"uvicorn exited: {(tmp_path / 'uvicorn.log').read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start within 60 s"
            time.sleep(0.1)
        yield Gateway(url, process)
    finally:
        process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown: each worker closes its service
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    assert process.returncode == 0, (tmp_path / "uvicorn.log").read_text()


def chat(client: httpx.Client, content: str, max_tokens: int, **extra: object) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    return client.post("/v1/chat/completions", json={**body, **extra})


def expected_cost(prompt_tokens: int, completion_tokens: int) -> int:
    prices = CostMap.default()
    exact = (
        prices[f"{PREFIX}:prompt_tokens"] * prompt_tokens
        + prices[f"{PREFIX}:completion_tokens"] * completion_tokens
    )
    return int(exact.to_integral_value(rounding="ROUND_HALF_UP"))


def test_the_gateway_meters_caps_and_refuses_with_402_across_two_workers(
    gateway: Gateway, redis_server: RedisServer
) -> None:
    prompt = "Summarise the ledger design in one paragraph, please." * 4  # 212 characters: 53 tokens
    completions: list[tuple[int, int]] = []  # (prompt tokens, completion tokens) of each reply
    refused = None
    with gateway.client("alice") as alice:
        for _ in range(500):
            response = chat(alice, prompt, 400)
            if response.status_code == 402:
                refused = response
                break
            assert response.status_code == 200, response.text
            usage = response.json()["usage"]
            assert usage["completion_tokens"] == int(response.headers["x-max-tokens"]) <= 400
            completions.append((usage["prompt_tokens"], usage["completion_tokens"]))
    assert refused is not None, "the credit never ran out"
    assert refused.json()["error"] == "insufficient_funds"
    assert refused.headers["content-type"] == "application/json"
    assert completions[-1][1] < 400  # the last reply was capped to what was left
    assert all(prompt_tokens == math.ceil(len(prompt) / 4) for prompt_tokens, _ in completions)

    llm_cost = sum(expected_cost(p, c) for p, c in completions)
    # Wait for both workers' syncs, then read the shared ledger with a fresh service.
    time.sleep(5 * INTERVAL)
    with gateway.client("alice", keep_alive=False) as fresh:
        usage = fresh.get("/metering/usage").json()
    details = usage["usage"]
    assert details[f"{PREFIX}:prompt_tokens"]["units"] == sum(p for p, _ in completions)
    assert details[f"{PREFIX}:completion_tokens"]["units"] == sum(c for _, c in completions)
    egress = details["filesystem:egress:bytes"]
    assert egress["count"] == len(completions)  # one charge per metered response (402s are free)
    prices = CostMap.default()
    exact_total = (
        prices[f"{PREFIX}:prompt_tokens"] * sum(p for p, _ in completions)
        + prices[f"{PREFIX}:completion_tokens"] * sum(c for _, c in completions)
        + prices["filesystem:egress:bytes"] * egress["units"]
    )
    assert details["total"] == int(exact_total.to_integral_value(rounding="ROUND_HALF_UP"))
    assert usage["allowanceInfo"]["monthly_allowance"] == ALLOWANCE
    # The cap keeps the LLM cost within the allowance; the egress of replies rides on top.
    assert llm_cost <= ALLOWANCE

    # Another user, on fresh connections (either worker): the usage route and the admin's global view.
    # A new connection each: the kernel hands each to either worker. At least 40 requests, and
    # on until both workers have answered (at most 400).
    pids: set[str] = set()
    requests = 0
    with gateway.client("bob", keep_alive=False) as bob:
        while requests < 40 or (len(pids) < 2 and requests < 400):
            response = chat(bob, "hi", 5)
            assert response.status_code == 200
            pids.add(response.headers["x-worker-pid"])
            requests += 1
    assert len(pids) == 2, f"{requests} requests all went to one worker: {pids}"
    time.sleep(5 * INTERVAL)
    with gateway.client("admin-secret") as admin:
        global_usage = admin.get("/metering/globalUsage").json()
    with MeteringService(
        store=f"redis://127.0.0.1:{redis_server.port}/0", policies=[Policy("temp_free", ALLOWANCE)]
    ) as reader:
        ledger_global = reader.get_global_usage()
        bob_usage = reader.get_actor_current_month_usage_details(Actor("bob"))["usage"]
    assert global_usage["total"] == ledger_global["total"]
    assert bob_usage[f"{PREFIX}:completion_tokens"] == {
        "units": 5 * requests,
        "cost": expected_cost(0, 5 * requests),
        "count": requests,
    }


def test_the_gateway_routes_and_a_streamed_reply(gateway: Gateway) -> None:
    with gateway.client() as anonymous:
        assert anonymous.get("/metering/usage").status_code == 401
        costs = anonymous.get("/metering/allCosts")  # exempt from the gate, but the route needs a user
        assert costs.status_code == 401
        assert "/usage" in json.dumps(anonymous.get("/metering/openapi.json").json()["paths"])
        assert chat(anonymous, "hi", 5).status_code == 401
    with gateway.client("carol") as carol:
        assert carol.get("/metering/globalUsage").status_code == 403
        prices = carol.get("/metering/allCosts").json()["costs"]
        assert {
            "usageType": f"{PREFIX}:completion_tokens",
            "ucentsPerUnit": str(CostMap.default()[f"{PREFIX}:completion_tokens"]),
        } in [{k: entry[k] for k in ("usageType", "ucentsPerUnit")} for entry in prices]
        with carol.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "abcdefgh"}],
                "max_tokens": 7,
                "stream": True,
            },
        ) as stream:
            assert stream.status_code == 200
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) == 8
        time.sleep(5 * INTERVAL)
        usage = carol.get("/metering/usage").json()["usage"]
    # No usage report in the stream: the estimate, 7 pieces of 4 characters = 7 tokens out, 2 in.
    assert usage[f"{PREFIX}:completion_tokens"]["units"] == 7
    assert usage[f"{PREFIX}:prompt_tokens"]["units"] == 2
