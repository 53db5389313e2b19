"""The fleet's fault run (issue 18): 4 worker processes meter strict, plain and keyed traffic while
Redis is SIGSTOPped, SIGKILLed and restarted from its append-only file, FLUSHALLed, and a worker is
SIGKILLed. At the end: every budget held, every key recorded exactly once, and the ledger equal to
what the workers' calls returned (a killed worker's loss measured and bounded).

`make test` runs a short schedule; `make fleet-long` (USAGEMETER_FLEET_LONG=1) a longer one. Real
`redis-server` and worker processes (`fleet_workers.py`, mode `chaos`); no mocks.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from fleet_workers import fleet_cost_map
from redis_support import RedisServer
from test_fleet import LONG, FleetWorker, Spawn, spawn  # noqa: F401  (the fixture)
from usagemeter import Actor, MeteringService, Policy

WORKERS = 4
COST = 1_000  # µ¢ per strict call
PHASE = 6.0 if LONG else 2.5  # seconds of traffic between two faults
STALL = 10.0 if LONG else 3.0  # seconds Redis stays SIGSTOPped
# Strict calls spend budget user i in the i-th PHASE of the run (one a fault, roughly), each
# budget small enough to run out in its window: the fleet races for its last credits there.
BUDGET_USERS = 8 if LONG else 7
BUDGET_CALLS = 300 if LONG else 150  # each budget user's allowance, in strict calls
CALLER_BOUND = 1.0 + 1.0  # caller_timeout plus scheduling noise (4 workers on 2 cores)


def figures(service: MeteringService, user: str) -> dict[str, Any]:
    report: dict[str, Any] = service.get_actor_current_month_usage_details(Actor(user))["usage"]
    return report


def units(service: MeteringService, user: str, usage_type: str) -> int:
    entry = figures(service, user).get(usage_type)
    return 0 if entry is None else int(entry["units"])


@pytest.mark.timeout(900 if LONG else 400)
def test_the_fleet_keeps_its_promises_through_every_fault(spawn: Spawn, tmp_path: Path) -> None:  # noqa: F811
    server = RedisServer()  # appendonly, fsync always
    prefix = f"faults-{uuid.uuid4().hex[:6]}-"
    tallies = {f"w{i}": tmp_path / f"w{i}.json" for i in range(WORKERS)}
    workers: dict[str, FleetWorker] = {}
    schedule: list[tuple[str, float]] = []
    try:
        for i, (name, tally) in enumerate(tallies.items()):
            workers[name] = spawn(
                name,
                mode="chaos",
                url=server.url,
                worker=name,
                prefix=prefix,
                seed=i,
                users=5,
                budget_users=BUDGET_USERS,
                cost=COST,
                allowance=BUDGET_CALLS * COST,
                tally_path=str(tally),
                tally_every=20,
                budget_seconds=PHASE,
            )
        for worker in workers.values():
            worker.expect("ready")
        for worker in workers.values():
            worker.send("go")
        started = time.monotonic()

        def mark(event: str) -> None:
            schedule.append((event, round(time.monotonic() - started, 2)))

        time.sleep(PHASE)
        assert server.pid is not None
        mark("SIGSTOP redis")
        os.kill(server.pid, signal.SIGSTOP)
        time.sleep(STALL)
        os.kill(server.pid, signal.SIGCONT)
        mark("SIGCONT redis")
        time.sleep(PHASE)
        mark("SIGKILL redis")
        server.kill()
        time.sleep(1.0)
        server.start()  # the same port and append-only file
        mark("redis restarted from its AOF")
        time.sleep(PHASE)
        mark("FLUSHALL")
        server.command("FLUSHALL")
        time.sleep(PHASE)
        mark("SIGKILL worker w3")
        workers["w3"].kill()
        time.sleep(PHASE)
        mark("stop")
        reports = {}
        for name in ("w0", "w1", "w2"):
            workers[name].send("stop")
        for name in ("w0", "w1", "w2"):
            reports[name] = workers[name].finish()["tally"]
        killed = json.loads(tallies["w3"].read_text())

        with MeteringService(
            fleet_cost_map(),
            store=server.url,
            policies=[Policy("temp_free", BUDGET_CALLS * COST)],
            snapshot_interval=0.1,
        ) as reader:
            # The killed worker's open keys, retried from a new worker: recorded at most once.
            for key in killed["keys_open"]:
                reader.increment_usage(Actor(f"{prefix}w3-keyed"), "fleet:int", 1, idempotency_key=key)
            reader.flush()
            summary: dict[str, Any] = {"schedule": schedule, "workers": {}}
            for name, tally in [*reports.items(), ("w3 (killed)", killed)]:
                summary["workers"][name] = {
                    "calls": tally["calls"],
                    "longest_wait_s": {k: round(v, 2) for k, v in tally["longest_wait_by_kind"].items()},
                    "errors": tally["errors"],
                    "keys": len(tally["keys_done"]) + len(tally["keys_open"]),
                }
            # 1. Budgets: what the callers were told was accepted never passes a budget.
            for user in [f"{prefix}budget-{i}" for i in range(BUDGET_USERS)]:
                accepted = sum(r["accepted"][user] for r in [*reports.values(), killed])
                booked = units(reader, user, "fleet:call")
                summary[user] = {"accepted": accepted, "booked": booked, "budget": BUDGET_CALLS}
                assert accepted <= BUDGET_CALLS, summary
                assert booked <= BUDGET_CALLS, summary
                assert booked >= sum(r["accepted"][user] for r in reports.values()), summary
            # 2. Keys: each exactly once (one unit a key on the worker's keyed user).
            for name, tally in [*reports.items(), ("w3", killed)]:
                keys = set(tally["keys_done"]) | set(tally["keys_open"])
                booked = units(reader, f"{prefix}{name}-keyed", "fleet:int")
                summary["workers"][name if name != "w3" else "w3 (killed)"]["keys_booked"] = booked
                assert booked == len(keys), summary
            # 3. Plain usage: the live workers' figures exactly what their calls returned.
            returned = booked = 0
            for name, tally in reports.items():
                for user, count in tally["units"].items():
                    assert units(reader, user, "fleet:int") == count, (name, user, summary)
                    returned += count
                    booked += units(reader, user, "fleet:int")
            summary["plain units of the live workers: returned, booked"] = [returned, booked]
            lost = sum(count - units(reader, user, "fleet:int") for user, count in killed["units"].items())
            summary["w3 plain units: saved tally minus booked (its loss, <= one interval)"] = lost
        print(json.dumps(summary, indent=1))
        for name, tally in reports.items():
            assert tally["longest_wait"] <= CALLER_BOUND, (name, summary)
        assert all(not r["keys_open"] for r in reports.values()), summary
    finally:
        server.close()
