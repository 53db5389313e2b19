"""Worker processes for the fleet tests (`test_fleet.py`): real interpreters sharing one Redis ledger.

Run as `python fleet_workers.py CONFIG_JSON`. A worker opens its own `MeteringService` on the
configured URL, prints `{"event": "ready", ...}` as one JSON line, waits for a `go` line on stdin,
does its work, and prints `{"event": "done", ...}` with what it did (after `close()`, so the
figures it reports are all in Redis unless the worker was killed; with `close_may_fail` a
`close()` that raises `StoreError` is reported as `close_error` and the sync thread stopped).
Every line on stdout is JSON; errors go to stderr. The parent (`FleetWorker` in test_fleet.py)
reads the lines on a thread.

Modes:
- `race`: `calls` racing `try_increment_usage` (cost `cost` each) on `users` users of one budget;
  reports how many calls each user had accepted.
- `sums`: `calls` seeded random `increment_usage` calls over `users` users, apps and types;
  writes its exact expected figures (see `Tally`) to `expected_path` and reports them.
- `victim`: records `increment_usage` on its own users until killed, and every `lease_every`
  calls spends one call of `lease_user`'s budget (so it holds a budget lease, in use, when it is
  killed); calls `flush()` every `flush_every` calls and reports after each what had been
  recorded before that flush began. Before each call it counts the call in a shared file
  (`attempts_path`, one little-endian int64 a user, the budget user last), so the parent knows
  an upper bound of what it recorded when it SIGKILLs it.
- `steady`: `increment_usage` on its own users until a `stop` line arrives on stdin; reports the
  units of each user, any exception, and the alarms it saw (e.g. `store_error` during an outage).
- `strict_steady`: `steady`, and after each plain call one strict `try_increment_usage` (cost
  `cost`) on one of `budget_users` shared budget users, until `stop`; reports the units of each
  own user, the µ¢ accepted per budget user, and the alarms (e.g. `ledger_lost` after a wipe).
- `holds`: `reserve` / `settle` (at most what was held) / `release` racing on one user's budget;
  reports the µ¢ settled.
- `hold_victim`: holds part of one user's budget for an hour, prints `held`, waits to be killed.
- `chaos`: until a `stop` line, mixes strict `try_increment_usage` on shared budget users, plain
  `increment_usage` on its own users and keyed calls (the strict ones on budget user `i` during
  the `i`-th window of `budget_seconds`) (each key retried, same key, until it is
  answered), while the parent fails Redis under it (`fleet_faults.py`); keeps its exact tally in
  `tally_path` (rewritten every `tally_every` calls, and before each keyed call is sent, so a
  parent that SIGKILLs it knows what it had been told) and reports its longest wait.
- `monthly`: meters `users` users once each, in a seeded order, with a monthly seat fee: every
  first charge of the month applies the fee, racing the other workers (`announce`: prints
  `metered` after each, for a test that kills the worker midway).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import random
import struct
import sys
import threading
import time
import traceback
from decimal import Decimal
from pathlib import Path
from typing import Any

from usagemeter import (
    ALARM,
    MONTHLY_CHARGES,
    Actor,
    AlarmEvent,
    CostMap,
    MeteringService,
    MonthlyCharge,
    Policy,
    StoreError,
)

# Prices (µ¢ per unit) of the fleet tests' cost map: integral, zero and fractional, so exact sums
# across workers are checked to the attocent (costs are reported rounded half up).
FLEET_PRICES: dict[str, int | str | Decimal] = {
    "fleet:call": 1_000,
    "fleet:int": 125,
    "fleet:small": 3,
    "fleet:free": 0,
    "fleet:frac": "31.25",
    "fleet:tiny": "0.000001",
}
SEAT_FEE = 1_000  # µ¢ a month: the `monthly` mode's recurring charge (a cost, not a price)
SUM_TYPES: tuple[str, ...] = ("fleet:int", "fleet:small", "fleet:free", "fleet:frac", "fleet:tiny")
SUM_APPS: tuple[str | None, ...] = (None, "app-a", "app-b")
NO_APP = "os-global"  # where usage without an app is booked (README)


def fleet_cost_map() -> CostMap:
    return CostMap.from_dict(FLEET_PRICES)


def open_service(config: dict[str, Any]) -> MeteringService:
    """A service on the configured URL. `allowance` (µ¢) replaces temp_free's monthly allowance,
    the plan of every actor without an email, so each user's budget is exactly that."""
    options: dict[str, Any] = {
        "store": config["url"],
        "snapshot_interval": config.get("interval", 0.1),
        "lease_ttl": config.get("lease_ttl", 10.0),
        "offline_spending": config.get("offline_spending", "refuse"),
        "connect_timeout": config.get("connect_timeout", 5.0),
    }
    if config.get("backend"):
        options["store_backend"] = config["backend"]
    if config.get("allowance") is not None:
        options["policies"] = [Policy("temp_free", int(config["allowance"]))]
    return MeteringService(fleet_cost_map(), **options)


class Tally:
    """Exact expected figures of `increment_usage` calls: per user and type (units, exact cost,
    count), per user and app (exact cost, count), and per type over everyone."""

    def __init__(self) -> None:
        self.types: dict[str, dict[str, list[Any]]] = {}
        self.apps: dict[str, dict[str, list[Any]]] = {}

    def add(self, user: str, app: str | None, usage_type: str, units: int) -> None:
        if units == 0:
            return  # the ledger records nothing for 0 units without an override (test_properties)
        cost = Decimal(str(FLEET_PRICES[usage_type])) * units
        entry = self.types.setdefault(user, {}).setdefault(usage_type, [0, Decimal(0), 0])
        entry[0] += units
        entry[1] += cost
        entry[2] += 1
        app_entry = self.apps.setdefault(user, {}).setdefault(app or NO_APP, [Decimal(0), 0])
        app_entry[0] += cost
        app_entry[1] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "types": {
                user: {t: [e[0], str(e[1]), e[2]] for t, e in per_type.items()}
                for user, per_type in self.types.items()
            },
            "apps": {
                user: {a: [str(e[0]), e[1]] for a, e in per_app.items()}
                for user, per_app in self.apps.items()
            },
        }


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def wait_for(line: str) -> None:
    got = sys.stdin.readline().strip()
    if got != line:
        raise SystemExit(f"expected {line!r} on stdin, got {got!r}")


def run_race(config: dict[str, Any], service: MeteringService) -> dict[str, Any]:
    rng = random.Random(config["seed"])
    users = [f"{config['prefix']}{index}" for index in range(config["users"])]
    actors = [Actor(user) for user in users]
    accepted = dict.fromkeys(users, 0)
    refused = 0
    cost = config["cost"]
    for _ in range(config["calls"]):
        index = rng.randrange(len(actors))
        if service.try_increment_usage(actors[index], "fleet:call", 1, cost) is None:
            refused += 1
        else:
            accepted[users[index]] += 1
    return {"accepted": accepted, "refused": refused}


def run_sums(config: dict[str, Any], service: MeteringService) -> dict[str, Any]:
    rng = random.Random(config["seed"])
    tally = Tally()
    prefix = config["prefix"]
    actors: dict[tuple[int, str | None], Actor] = {}
    for _ in range(config["calls"]):
        user_index = rng.randrange(config["users"])
        app = rng.choice(SUM_APPS)
        usage_type = rng.choice(SUM_TYPES)
        units = rng.randint(0, 1_000)
        actor = actors.get((user_index, app))
        if actor is None:
            actor = actors[(user_index, app)] = Actor(f"{prefix}{user_index}", app)
        service.increment_usage(actor, usage_type, units)
        tally.add(f"{prefix}{user_index}", app, usage_type, units)
    expected = tally.to_json()
    Path(config["expected_path"]).write_text(json.dumps(expected))
    return {"expected_path": config["expected_path"]}


def run_victim(config: dict[str, Any], service: MeteringService) -> dict[str, Any]:
    users = [f"{config['prefix']}{index}" for index in range(config["users"])]
    actors = [Actor(user) for user in users]
    lease_user = config["lease_user"]
    lease_actor = Actor(lease_user)
    # Slot i counts user i's calls, the last slot the budget user's accepted-or-tried ones.
    recorded = [0] * (len(users) + 1)
    with (
        open(config["attempts_path"], "r+b") as file,
        mmap.mmap(file.fileno(), 8 * len(recorded)) as attempts,
    ):
        calls = 0
        while True:
            index = calls % len(users)
            # Counted before the call: what the worker recorded is never more than this.
            struct.pack_into("<q", attempts, 8 * index, recorded[index] + 1)
            service.increment_usage(actors[index], "fleet:int", 1)
            recorded[index] += 1
            calls += 1
            if calls % config["lease_every"] == 0:
                # Spending keeps this worker's budget lease in use (renewed every round).
                struct.pack_into("<q", attempts, 8 * len(users), recorded[-1] + 1)
                if service.try_increment_usage(lease_actor, "fleet:call", 1, config["cost"]) is None:
                    raise SystemExit("the budget ran out: the test's budget is too small")
                recorded[-1] += 1
            if calls % config["flush_every"] == 0:
                before = list(recorded)
                service.flush()
                emit("flushed", units=dict(zip([*users, lease_user], before, strict=True)))


def stop_line() -> threading.Event:
    """An event set when a `stop` line arrives on stdin (read on a daemon thread)."""
    stop = threading.Event()

    def read_stop() -> None:
        wait_for("stop")
        stop.set()

    threading.Thread(target=read_stop, daemon=True).start()
    return stop


def run_steady(config: dict[str, Any], service: MeteringService) -> dict[str, Any]:
    stop = stop_line()
    users = [f"{config['prefix']}{index}" for index in range(config["users"])]
    actors = [Actor(user) for user in users]
    units = [0] * len(users)
    errors: list[str] = []
    calls = 0
    while not stop.is_set():
        index = calls % len(users)
        try:
            service.increment_usage(actors[index], "fleet:int", 1)
            units[index] += 1
        except Exception as error:  # reported, and the test fails on it
            errors.append(f"{type(error).__name__}: {error}")
            if len(errors) > 20:
                break
        calls += 1
        if calls % 100 == 0:
            time.sleep(0.001)  # metering at a steady pace, not a busy loop hogging a shared core
    return {"units": dict(zip(users, units, strict=True)), "errors": errors}


def run_strict_steady(config: dict[str, Any], service: MeteringService) -> dict[str, Any]:
    stop = threading.Event()

    def read_stop() -> None:
        wait_for("stop")
        stop.set()

    threading.Thread(target=read_stop, daemon=True).start()
    users = [f"{config['prefix']}{index}" for index in range(config["users"])]
    actors = [Actor(user) for user in users]
    budget_users = [f"{config['budget_prefix']}{index}" for index in range(config["budget_users"])]
    budget_actors = [Actor(user) for user in budget_users]
    units = [0] * len(users)
    accepted = [0] * len(budget_users)
    errors: list[str] = []
    cost = config["cost"]
    calls = 0
    while not stop.is_set():
        index = calls % len(users)
        budget_index = calls % len(budget_users)
        try:
            service.increment_usage(actors[index], "fleet:int", 1)
            units[index] += 1
            if service.try_increment_usage(budget_actors[budget_index], "fleet:call", 1, cost) is not None:
                accepted[budget_index] += cost
        except Exception as error:  # reported, and the test fails on it
            errors.append(f"{type(error).__name__}: {error}")
            if len(errors) > 20:
                break
        calls += 1
        if calls % 50 == 0:
            time.sleep(0.001)  # a steady pace, not a busy loop hogging a shared core
    return {
        "units": dict(zip(users, units, strict=True)),
        "accepted": dict(zip(budget_users, accepted, strict=True)),
        "errors": errors,
    }


def run_holds(config: dict[str, Any], service: MeteringService) -> dict[str, Any]:
    """`calls` reserves of `cost` on user `user`, each settled at a random real cost no larger,
    or released; reports the µ¢ settled and how many reserves were refused."""
    rng = random.Random(config["seed"])
    actor = Actor(config["user"])
    settled = refused = released = 0
    for _ in range(config["calls"]):
        hold = service.reserve(actor, cost=config["cost"], ttl=60)
        if hold is None:
            refused += 1
        elif rng.random() < 0.2:
            hold.release()
            released += 1
        else:
            real = rng.randint(1, config["cost"])
            hold.settle(cost=real, usage_type="fleet:call")
            settled += real
    return {"settled": settled, "refused": refused, "released": released}


def run_hold_victim(config: dict[str, Any], service: MeteringService) -> dict[str, Any]:
    """Holds `cost` of user `user` for an hour, says so, and waits to be killed."""
    hold = service.reserve(Actor(config["user"]), cost=config["cost"], ttl=3_600)
    emit("held", held=hold is not None)
    time.sleep(3_600)
    return {}


def with_seat_fee(service: MeteringService) -> None:
    """Every user pays a monthly seat fee of `SEAT_FEE` µ¢ (`metering:monthlyCharges`)."""
    service.events.on(MONTHLY_CHARGES, lambda event: [MonthlyCharge("fleet:seat", SEAT_FEE, 1)])


def run_monthly(config: dict[str, Any], service: MeteringService) -> dict[str, Any]:
    """Meters each of `users` users once, in a seeded order: each user's first charge of the
    month applies its monthly charges, racing the other workers doing the same."""
    with_seat_fee(service)
    rng = random.Random(config["seed"])
    users = [f"{config['prefix']}{index}" for index in range(config["users"])]
    rng.shuffle(users)
    for user in users:
        service.increment_usage(Actor(user), "fleet:int", 1)
        if config.get("announce"):
            emit("metered", user=user)
    return {"metered": len(users)}


def run_chaos(config: dict[str, Any], service: MeteringService) -> dict[str, Any]:
    from usagemeter import StoreError

    stop = stop_line()
    rng = random.Random(config["seed"])
    name = config["worker"]
    budget_users = [Actor(f"{config['prefix']}budget-{i}") for i in range(config["budget_users"])]
    own_users = [Actor(f"{config['prefix']}{name}-{i}") for i in range(config["users"])]
    key_user = Actor(f"{config['prefix']}{name}-keyed")
    tally: dict[str, Any] = {
        "accepted": {actor.user_id: 0 for actor in budget_users},  # strict calls accepted
        "units": {actor.user_id: 0 for actor in own_users},  # plain units recorded
        "keys_done": [],  # keys answered (recorded or replayed)
        "keys_open": [],  # keys sent, no answer yet (retried, same key)
        "errors": {},
        "longest_wait": 0.0,
        "longest_wait_by_kind": {"strict": 0.0, "plain": 0.0, "keyed": 0.0},
        "calls": 0,
    }
    tally_path = Path(config["tally_path"])

    def save() -> None:
        tally_path.with_suffix(".tmp").write_text(json.dumps(tally))
        tally_path.with_suffix(".tmp").replace(tally_path)

    next_key = 0
    began = time.monotonic()
    while not stop.is_set():
        roll = rng.random()
        kind = "strict" if roll < 0.45 else "plain" if roll < 0.9 else "keyed"
        started = time.monotonic()
        try:
            if roll < 0.45:
                # One budget a window of `budget_seconds`, so each is raced for under whichever
                # fault the parent makes then.
                window = int((time.monotonic() - began) / config["budget_seconds"])
                actor = budget_users[min(window, len(budget_users) - 1)]
                if service.try_increment_usage(actor, "fleet:call", 1, config["cost"]) is not None:
                    tally["accepted"][actor.user_id] += 1
            elif roll < 0.9:
                actor = rng.choice(own_users)
                service.increment_usage(actor, "fleet:int", 1)
                tally["units"][actor.user_id] += 1
            else:
                if tally["keys_open"]:
                    key = tally["keys_open"][0]
                else:
                    key = f"{name}-{next_key}"
                    next_key += 1
                    tally["keys_open"].append(key)
                    save()  # a kill from here on leaves the key to retry
                service.increment_usage(key_user, "fleet:int", 1, idempotency_key=key)
                tally["keys_open"].remove(key)
                tally["keys_done"].append(key)
        except StoreError as error:
            raised = type(error).__name__
            tally["errors"][raised] = tally["errors"].get(raised, 0) + 1
        waited = time.monotonic() - started
        tally["longest_wait"] = max(tally["longest_wait"], waited)
        by_kind = tally["longest_wait_by_kind"]
        by_kind[kind] = max(by_kind[kind], waited)
        tally["calls"] += 1
        if tally["calls"] % config["tally_every"] == 0:
            save()
        if tally["calls"] % 50 == 0:
            time.sleep(0.001)  # a steady pace on a shared 2-core machine
    # Redis is healthy again: every key still open is retried until answered.
    deadline = time.monotonic() + 60
    while tally["keys_open"] and time.monotonic() < deadline:
        key = tally["keys_open"][0]
        try:
            service.increment_usage(key_user, "fleet:int", 1, idempotency_key=key)
            tally["keys_open"].remove(key)
            tally["keys_done"].append(key)
        except StoreError:
            time.sleep(0.1)
    save()
    return {"tally": tally}


MODES = {
    "race": run_race,
    "sums": run_sums,
    "victim": run_victim,
    "steady": run_steady,
    "strict_steady": run_strict_steady,
    "holds": run_holds,
    "hold_victim": run_hold_victim,
    "monthly": run_monthly,
    "chaos": run_chaos,
}


def main() -> None:
    config: dict[str, Any] = json.loads(sys.argv[1])
    alarms: list[dict[str, str]] = []
    lock = threading.Lock()

    def on_alarm(event: AlarmEvent) -> None:
        with lock:
            alarms.append({"kind": event.kind, "message": event.message})

    service = open_service(config)
    service.events.on(ALARM, on_alarm)
    emit("ready", worker_id=service._worker_id)
    wait_for("go")
    started = time.monotonic()
    try:
        result = MODES[config["mode"]](config, service)
    except BaseException:
        traceback.print_exc()
        raise
    worked = time.monotonic() - started
    close_error = None
    try:
        service.close()
    except StoreError as error:
        if not config.get("close_may_fail"):
            raise
        # Another ledger answers: the last sync cannot be written, and the thread is stopped.
        close_error = f"{type(error).__name__}: {error}"
        with contextlib.suppress(StoreError):
            service._close_at_exit()
    closed = time.monotonic() - started
    with lock:
        seen = list(alarms)
    emit(
        "done",
        seconds=worked,
        closed_after=closed,
        close_error=close_error,
        stats=service._sync_stats(),
        alarms=seen,
        **result,
    )


if __name__ == "__main__":
    main()
