"""Crash loop: kill a metering process with SIGKILL at random moments and check what its store kept.

    python tests/crashloop.py --backend sled|redb --kills N [--interval 0.05] [--seed S] [--dir D]

Each cycle spawns a child (``crashloop.py child ...``) that opens a ``MeteringService`` on the same
store directory (so the ledger accumulates across kills) and records usage from several threads.
Each thread owns a few users and meters them one call at a time, so the calls on one user form a
sequence. Around every call the child appends to a log of its own (opened with ``O_APPEND``, one
``os.write`` per line, no buffering, so a line is on disk before the next call starts):

    I <thread> <seq> <time> <user> <app|-> <kind> <payload>    before the call (intent)
    D <thread> <seq> <time>                                    after it returned (done)
    FS <time> <done counts per thread>                         before ``flush()``
    FD <time> <the same counts>                                ``flush()`` returned

The counts of a flush are each thread's done counter read before ``flush()`` was called: every
call they count returned before the flush began, so the flush covers it.

The parent kills the child a random 0.05-0.6 s after it reports readiness, opens the store
in-process and checks, per user:

- the store opens (no ``StoreCorruptedError``);
- the user's ledger is the ledger verified after the previous cycle plus the effect of a *prefix*
  of this cycle's calls on that user (a snapshot is a consistent cut, a call is atomic), of some
  length ``k``;
- ``k >= `` the calls covered by a returned ``flush()``;
- ``k >= `` the calls whose done line is older than ``kill time - interval - margin`` (the loss
  bound: the last ``snapshot_interval`` plus the snapshot being written; ``margin``, by default
  ``2 x interval + 0.2 s``, covers the snapshot in progress, the fsync and scheduling on a loaded
  2-core machine);
- ``k <= `` the calls attempted (intent lines): nothing is stored that was never recorded;
- totals equal the sum of their parts: the user total, the per-type costs, the app totals and
  each app's per-type costs; the global month equals the sum over ``get_actors_usage``.

Times are ``time.time()`` (comparable across processes). The verifying service is closed before
the next cycle so the child can take the store lock. Exit status 1 on any violation.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

from support import COMPLETION, PROMPT, FakeClock, small_cost_map
from usagemeter import (
    OVERRIDE_DEFAULT_SUBSCRIPTION,
    Actor,
    MeteringService,
    OverrideDefaultSubscriptionEvent,
    Policy,
    StoreError,
)

__all__ = ["CycleResult", "LogRecord", "Op", "Summary", "main", "parse_log", "run"]

MONTH = "2026-10"  # the children and the verifier run on a FakeClock standing in October 2026
GLOBAL_APP = "os-global"
THREADS = 4
USERS_PER_THREAD = 4  # plus one new user per thread and cycle, so the record count grows
APPS: tuple[str | None, ...] = (None, "app-a", "app-b")
# Whole-µ¢ prices, so a prefix of calls has an exact expected cost.
PRICES: dict[str, int] = {"kv:write": 125, "kv:read": 63, PROMPT: 2, COMPLETION: 8}
WORK_TYPES: tuple[str, ...] = tuple(PRICES)
PLAN = Policy("crashloop", 10**15)  # never exhausted: try_increment_usage always records
READY_TIMEOUT = 60.0
KILL_DELAY = (0.05, 0.6)

State = dict[str, int]


# ---------------------------------------------------------------------------------------------
# The workload


@dataclass(frozen=True)
class Op:
    """One metering call of a child: ``kind`` is inc, try, batch or credit."""

    thread: int
    seq: int
    user: str
    app: str | None
    kind: str
    items: tuple[tuple[str, int], ...] = ()
    credit: int = 0

    def intent_line(self, now: float) -> str:
        if self.kind == "credit":
            payload = str(self.credit)
        else:
            payload = ";".join(f"{usage_type}={amount}" for usage_type, amount in self.items)
        return f"I {self.thread} {self.seq} {now:.6f} {self.user} {self.app or '-'} {self.kind} {payload}\n"

    @staticmethod
    def from_intent(fields: Sequence[str]) -> Op:
        _, thread, seq, _, user, app, kind, payload = fields
        if kind == "credit":
            return Op(int(thread), int(seq), user, None if app == "-" else app, kind, (), int(payload))
        items = tuple((part.split("=")[0], int(part.split("=")[1])) for part in payload.split(";"))
        return Op(int(thread), int(seq), user, None if app == "-" else app, kind, items)

    def effect(self) -> State:
        """What this call adds to its user's ledger, as a flat state (see `read_user`)."""
        if self.kind == "credit":
            return {"purchased": self.credit}
        app = self.app or GLOBAL_APP
        change: State = defaultdict(int)
        for usage_type, amount in self.items:
            cost = PRICES[usage_type] * amount
            for key, value in (
                ("total", cost),
                (f"type {usage_type} units", amount),
                (f"type {usage_type} cost", cost),
                (f"type {usage_type} count", 1),
                (f"app {app} total", cost),
                (f"app {app} count", 1),
                (f"app {app} type {usage_type} units", amount),
                (f"app {app} type {usage_type} cost", cost),
                (f"app {app} type {usage_type} count", 1),
            ):
                change[key] += value
        return dict(change)


def thread_users(thread: int, cycle: int) -> list[str]:
    return [f"t{thread}-u{index}" for index in range(USERS_PER_THREAD)] + [f"c{cycle}-t{thread}"]


def next_op(rng: random.Random, thread: int, seq: int, users: Sequence[str]) -> Op:
    user, app, draw = rng.choice(users), rng.choice(APPS), rng.random()
    if draw < 0.05:
        return Op(thread, seq, user, None, "credit", (), rng.randint(1, 10**6))
    if draw < 0.20:
        first, second = rng.sample(WORK_TYPES, 2)
        return Op(
            thread, seq, user, app, "batch", ((first, rng.randint(1, 999)), (second, rng.randint(1, 999)))
        )
    kind = "try" if draw < 0.30 else "inc"
    return Op(thread, seq, user, app, kind, ((rng.choice(WORK_TYPES), rng.randint(1, 999)),))


def choose_plan(event: OverrideDefaultSubscriptionEvent) -> None:
    event.default_subscription_id = PLAN.id


def open_service(store: Path, backend: str, interval: float) -> MeteringService:
    """The service every child and every verification opens: same prices, plan and month."""
    service = MeteringService(
        small_cost_map(),
        store=store,
        store_backend="redb" if backend == "redb" else "sled",  # argparse allows only these two
        snapshot_interval=interval,
        policies=[PLAN],
        clock=FakeClock(),
    )
    service.events.on(OVERRIDE_DEFAULT_SUBSCRIPTION, choose_plan)
    return service


def apply(service: MeteringService, op: Op) -> None:
    actor = Actor(op.user, op.app)
    if op.kind == "credit":
        service.update_addon_credit(op.user, op.credit)
    elif op.kind == "batch":
        service.batch_increment_usages(actor, list(op.items))
    elif op.kind == "try":
        usage_type, amount = op.items[0]
        if service.try_increment_usage(actor, usage_type, amount) is None:
            raise AssertionError(f"try_increment_usage refused {op} under a plan that never runs out")
    else:
        usage_type, amount = op.items[0]
        service.increment_usage(actor, usage_type, amount)


def run_child(store: Path, backend: str, interval: float, log_path: Path, cycle: int, seed: int) -> None:
    """Meters from `THREADS` threads and flushes from the main thread until it is killed."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def log(line: str) -> None:
        os.write(log_fd, line.encode())

    def fail(where: str) -> NoReturn:
        text = traceback.format_exc()
        log(f"E {time.time():.6f} {where}: {text.strip().splitlines()[-1]}\n")
        sys.stderr.write(text)
        sys.stderr.flush()
        os._exit(3)

    try:
        service = open_service(store, backend, interval)
    except BaseException:
        fail("open")
    done_counts = [0] * THREADS

    def work(thread: int) -> None:
        try:
            rng = random.Random(f"{seed}-{cycle}-{thread}")
            users = thread_users(thread, cycle)
            seq = 0
            while True:
                op = next_op(rng, thread, seq, users)
                log(op.intent_line(time.time()))
                apply(service, op)
                log(f"D {thread} {seq} {time.time():.6f}\n")
                seq += 1
                done_counts[thread] = seq
        except BaseException:
            fail(f"thread {thread}")

    for thread in range(THREADS):
        threading.Thread(target=work, args=(thread,), daemon=True).start()
    log(f"R {time.time():.6f} {os.getpid()}\n")
    print("ready", flush=True)
    flush_rng = random.Random(f"{seed}-{cycle}-flush")
    try:
        while True:
            time.sleep(flush_rng.uniform(0.0, 0.1))
            counts = ",".join(str(count) for count in list(done_counts))
            log(f"FS {time.time():.6f} {counts}\n")
            service.flush()
            log(f"FD {time.time():.6f} {counts}\n")
    except BaseException:
        fail("flush")


# ---------------------------------------------------------------------------------------------
# Reading the log and the store


@dataclass
class LogRecord:
    """What a child's log says: its calls, when each returned, and what returned flushes covered."""

    ops: dict[tuple[int, int], Op] = field(default_factory=dict)
    done: dict[tuple[int, int], float] = field(default_factory=dict)
    flushed_counts: list[int] = field(default_factory=lambda: [0] * THREADS)
    flushes: int = 0
    ready: bool = False
    errors: list[str] = field(default_factory=list)


def parse_log(path: Path) -> LogRecord:
    record = LogRecord()
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    for line in lines[:-1]:  # the part after the last newline is a line the kill cut short
        fields = line.split(" ")
        tag = fields[0]
        if tag == "I":
            op = Op.from_intent(fields)
            record.ops[op.thread, op.seq] = op
        elif tag == "D":
            record.done[int(fields[1]), int(fields[2])] = float(fields[3])
        elif tag == "FD":
            counts = [int(count) for count in fields[2].split(",")]
            record.flushed_counts = [max(pair) for pair in zip(record.flushed_counts, counts, strict=True)]
            record.flushes += 1
        elif tag == "R":
            record.ready = True
        elif tag == "E":
            record.errors.append(line)
    return record


def add_into(state: State, change: State) -> None:
    for key, value in change.items():
        state[key] = state.get(key, 0) + value
        if state[key] == 0:
            del state[key]


def read_user(service: MeteringService, user: str, violations: list[str]) -> State:
    """A user's October ledger as a flat state; checks on the way that its totals add up."""
    actor = Actor(user)
    details = service.get_actor_month_usage_details(actor, MONTH)
    usage: dict[str, Any] = details["usage"]
    state: State = {}
    add_into(state, {"total": usage["total"]})
    for usage_type, figures in usage.items():
        if usage_type != "total":
            add_into(
                state, {f"type {usage_type} {name}": figures[name] for name in ("units", "cost", "count")}
            )
    type_costs = sum(figures["cost"] for usage_type, figures in usage.items() if usage_type != "total")
    if usage["total"] != type_costs:
        violations.append(f"{user}: total {usage['total']} != sum of per-type costs {type_costs}")
    app_totals: dict[str, Any] = details["app_totals"]
    if sum(figures["total"] for figures in app_totals.values()) != usage["total"]:
        violations.append(f"{user}: total {usage['total']} != sum of app totals {app_totals}")
    per_type_count: dict[str, int] = defaultdict(int)
    for app, figures in app_totals.items():
        add_into(state, {f"app {app} total": figures["total"], f"app {app} count": figures["count"]})
        app_details: dict[str, Any] = service.get_actor_current_month_app_usage_details(actor, app)
        if app_details["total"] != figures["total"]:
            violations.append(f"{user}: app {app} details total {app_details['total']} != {figures['total']}")
        parts = [(usage_type, part) for usage_type, part in app_details.items() if usage_type != "total"]
        if sum(part["cost"] for _, part in parts) != figures["total"]:
            violations.append(f"{user}: app {app} total {figures['total']} != sum of its types {parts}")
        if sum(part["count"] for _, part in parts) != figures["count"]:
            violations.append(f"{user}: app {app} count {figures['count']} != sum of its types {parts}")
        for usage_type, part in parts:
            per_type_count[usage_type] += part["count"]
            add_into(
                state,
                {f"app {app} type {usage_type} {name}": part[name] for name in ("units", "cost", "count")},
            )
    for usage_type, figures in usage.items():
        if usage_type != "total" and figures["count"] != per_type_count[usage_type]:
            violations.append(f"{user}: {usage_type} count {figures['count']} != sum over apps")
    add_into(state, {"purchased": service.get_actor_addons(actor)["purchased_credits"]})
    return state


def read_store(service: MeteringService, users: Iterable[str], violations: list[str]) -> dict[str, State]:
    """Every user's flat state; checks the global month against the sum of the users."""
    known = set(users)
    actors_usage = service.get_actors_usage(MONTH)
    if service.get_actors_usage() != actors_usage:
        violations.append("get_actors_usage() and get_actors_usage(MONTH) differ")
    if actors_usage != sorted(actors_usage, key=lambda row: (-row[1], row[0])):
        violations.append("get_actors_usage is not sorted by total descending, then user id")
    never_attempted = {row[0] for row in actors_usage} - known
    if never_attempted:
        violations.append(f"users in the store that no child ever metered: {sorted(never_attempted)[:5]}")
    states = {user: read_user(service, user, violations) for user in sorted(known | never_attempted)}
    for user_id, total, count in actors_usage:
        state = states[user_id]
        count_of_user = sum(
            value for key, value in state.items() if key.startswith("type ") and key.endswith(" count")
        )
        if (total, count) != (state.get("total", 0), count_of_user):
            violations.append(f"get_actors_usage says {user_id} has {(total, count)}, its details disagree")
    listed = {row[0] for row in actors_usage}
    for user, state in states.items():
        if user not in listed and any(key.startswith("type ") for key in state):
            violations.append(f"{user} has usage but is missing from get_actors_usage")
    global_usage: dict[str, Any] = service.get_global_usage()
    if global_usage["total"] != sum(row[1] for row in actors_usage):
        violations.append(f"global total {global_usage['total']} != sum over get_actors_usage")
    for usage_type, figures in global_usage.items():
        if usage_type == "total":
            continue
        for name in ("units", "cost", "count"):
            expected = sum(state.get(f"type {usage_type} {name}", 0) for state in states.values())
            if figures[name] != expected:
                violations.append(f"global {usage_type} {name} {figures[name]} != sum over users {expected}")
    missing_types = {
        key.split(" ")[1] for state in states.values() for key in state if key.startswith("type ")
    } - set(global_usage)
    if missing_types:
        violations.append(f"usage types missing from the global month: {sorted(missing_types)}")
    return states


# ---------------------------------------------------------------------------------------------
# Checking one cycle


@dataclass
class CycleResult:
    attempted: int = 0  # calls with an intent line
    returned: int = 0  # calls with a done line
    stored: int = 0  # calls whose effect is in the store
    flushed: int = 0  # calls covered by a returned flush
    lost: int = 0  # returned calls missing from the store
    max_user_loss: int = 0
    loss_seconds: float = 0.0  # age at the kill of the oldest returned call that was lost
    violations: list[str] = field(default_factory=list)


def check_user(
    user: str,
    ops: Sequence[Op],
    log: LogRecord,
    baseline: State,
    observed: State,
    kill_time: float,
    threshold: float,
    result: CycleResult,
) -> None:
    """Finds the prefix of this cycle's `ops` on `user` that the store holds and checks its bounds."""
    item_counts = [0]
    for op in ops:
        item_counts.append(item_counts[-1] + len(op.items))

    def calls_count(state: State) -> int:
        return sum(
            value for key, value in state.items() if key.startswith("type ") and key.endswith(" count")
        )

    delta = calls_count(observed) - calls_count(baseline)
    candidates = [k for k, count in enumerate(item_counts) if count == delta]
    stored: int | None = None
    if candidates:
        expected = dict(baseline)
        for op in ops[: candidates[0]]:
            add_into(expected, op.effect())
        for k in candidates:
            if k > candidates[0]:
                add_into(expected, ops[k - 1].effect())
            if expected == observed:
                stored = k
                break
    if stored is None:
        expected = dict(baseline)
        for op in ops:
            add_into(expected, op.effect())
        differing = sorted(
            key for key in set(expected) | set(observed) if expected.get(key) != observed.get(key)
        )
        result.violations.append(
            f"{user}: the store holds no prefix of its {len(ops)} calls this cycle (count delta {delta}); "
            f"differs from all calls in {differing[:6]}"
        )
        return
    flushed = sum(1 for op in ops if op.seq < log.flushed_counts[op.thread])
    returned = [log.done[op.thread, op.seq] for op in ops if (op.thread, op.seq) in log.done]
    must = sum(1 for done in returned if done < threshold)
    result.attempted += len(ops)
    result.returned += len(returned)
    result.stored += stored
    result.flushed += flushed
    if stored < flushed:
        result.violations.append(
            f"{user}: {flushed} calls were covered by a returned flush(), only {stored} stored"
        )
    if stored < must:
        result.violations.append(
            f"{user}: lost calls that returned more than interval + margin before the kill: "
            f"{must} returned before {threshold:.3f}, only {stored} stored (kill at {kill_time:.3f})"
        )
    if stored < len(returned):
        lost = len(returned) - stored
        result.lost += lost
        result.max_user_loss = max(result.max_user_loss, lost)
        result.loss_seconds = max(result.loss_seconds, kill_time - returned[stored])


def check_cycle(
    log: LogRecord,
    baselines: dict[str, State],
    observed: dict[str, State],
    kill_time: float,
    threshold: float,
) -> CycleResult:
    result = CycleResult()
    ops_by_user: dict[str, list[Op]] = defaultdict(list)
    for key in sorted(log.ops):
        op = log.ops[key]
        ops_by_user[op.user].append(op)
    for user in sorted(set(ops_by_user) | set(baselines) | set(observed)):
        check_user(
            user,
            ops_by_user.get(user, []),
            log,
            baselines.get(user, {}),
            observed.get(user, {}),
            kill_time,
            threshold,
            result,
        )
    return result


def check_attempted(
    observed: dict[str, State], attempted_units: dict[str, int], violations: list[str]
) -> None:
    """Per user and type: stored units <= units of every call ever attempted (all cycles so far)."""
    for user, state in observed.items():
        for key, value in state.items():
            if key.startswith("type ") and key.endswith(" units"):
                usage_type = key.split(" ")[1]
                ceiling = attempted_units.get(f"{user} {usage_type}", 0)
                if value > ceiling:
                    violations.append(
                        f"{user}: {value} units of {usage_type} stored, {ceiling} ever attempted"
                    )


# ---------------------------------------------------------------------------------------------
# The parent


@dataclass
class Summary:
    kills: int = 0
    violations: list[str] = field(default_factory=list)
    max_loss: int = 0  # returned calls lost in one kill
    max_loss_seconds: float = 0.0
    seconds: float = 0.0


def wait_until_ready(process: subprocess.Popen[str], timeout: float) -> bool:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return bool(ready) and process.stdout.readline().strip() == "ready"


def run(
    backend: str,
    kills: int,
    interval: float,
    seed: int,
    directory: Path,
    margin: float | None = None,
    out: TextIO = sys.stdout,
) -> Summary:
    """Runs `kills` cycles on the store `directory/store`; returns what they showed."""
    margin = 2 * interval + 0.2 if margin is None else margin
    store = directory / "store"
    rng = random.Random(seed)
    summary = Summary()
    baselines: dict[str, State] = {}
    attempted_units: dict[str, int] = defaultdict(int)
    users: set[str] = set()
    started = time.monotonic()

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    say(f"crashloop: backend {backend}, interval {interval} s, margin {margin:.3f} s, store {store}")
    for cycle in range(1, kills + 1):
        log_path = directory / f"cycle-{cycle:05d}.log"
        stderr_path = directory / f"cycle-{cycle:05d}.stderr"
        with open(stderr_path, "w", encoding="utf-8") as stderr:
            process = subprocess.Popen(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "child",
                    "--store",
                    str(store),
                    "--backend",
                    backend,
                    "--interval",
                    str(interval),
                    "--log",
                    str(log_path),
                    "--cycle",
                    str(cycle),
                    "--seed",
                    str(seed),
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
            try:
                if not wait_until_ready(process, READY_TIMEOUT):
                    summary.violations.append(f"cycle {cycle}: the child did not become ready")
                delay = rng.uniform(*KILL_DELAY)
                time.sleep(delay)
                if process.poll() is not None:
                    summary.violations.append(
                        f"cycle {cycle}: the child exited by itself ({process.returncode})"
                    )
                kill_time = time.time()
                os.kill(process.pid, signal.SIGKILL)
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait()
                assert process.stdout is not None
                process.stdout.close()
        summary.kills = cycle
        log = parse_log(log_path)
        cycle_violations = [f"cycle {cycle}: child error: {error}" for error in log.errors]
        if summary.violations or cycle_violations:
            summary.violations.extend(cycle_violations)
            say(stderr_path.read_text(encoding="utf-8"))
            break
        for op in log.ops.values():
            users.add(op.user)
            for usage_type, amount in op.items:
                attempted_units[f"{op.user} {usage_type}"] += amount
        try:
            service = open_service(store, backend, interval)
        except StoreError as error:
            summary.violations.append(f"cycle {cycle}: reopening after the kill failed: {error!r}")
            break
        try:
            read_violations: list[str] = []
            observed = read_store(service, users, read_violations)
        finally:
            service.close()
        result = check_cycle(log, baselines, observed, kill_time, kill_time - interval - margin)
        result.violations[:0] = read_violations
        check_attempted(observed, attempted_units, result.violations)
        summary.violations.extend(f"cycle {cycle}: {violation}" for violation in result.violations)
        summary.max_loss = max(summary.max_loss, result.lost)
        summary.max_loss_seconds = max(summary.max_loss_seconds, result.loss_seconds)
        stored_units = sum(
            v
            for s in observed.values()
            for k, v in s.items()
            if k.startswith("type ") and k.endswith("units")
        )
        say(
            f"kill {cycle}/{kills} after {delay:.2f} s: {result.stored}/{result.attempted} calls stored "
            f"({result.returned} returned, {result.flushed} flushed, {log.flushes} flushes), "
            f"loss {result.lost} calls ({result.loss_seconds:.3f} s); "
            f"store {stored_units}/{sum(attempted_units.values())} units of all attempted; "
            f"{len(result.violations)} violations"
        )
        for violation in result.violations[:10]:
            say(f"  VIOLATION {violation}")
        if result.violations:
            break  # the next baseline would be wrong; keep the store and logs to look at
        baselines = observed
        log_path.unlink()
        stderr_path.unlink()
    summary.seconds = time.monotonic() - started
    say(f"crashloop: took {summary.seconds:.1f} s, margin {margin:.3f} s")
    say(
        f"crashloop: {summary.kills} kills, backend {backend}, {len(summary.violations)} violations, "
        f"max loss {summary.max_loss} increments ({summary.max_loss_seconds:.3f} s)"
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["child"]:
        child = argparse.ArgumentParser(prog="crashloop.py child")
        child.add_argument("--store", type=Path, required=True)
        child.add_argument("--backend", required=True)
        child.add_argument("--interval", type=float, required=True)
        child.add_argument("--log", type=Path, required=True)
        child.add_argument("--cycle", type=int, required=True)
        child.add_argument("--seed", type=int, required=True)
        options = child.parse_args(arguments[1:])
        run_child(options.store, options.backend, options.interval, options.log, options.cycle, options.seed)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backend", choices=("sled", "redb"), default="sled")
    parser.add_argument("--kills", type=int, required=True)
    parser.add_argument("--interval", type=float, default=0.05, help="snapshot_interval of the children")
    parser.add_argument("--margin", type=float, default=None, help="default: 2 x interval + 0.2 s")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dir", type=Path, default=None, help="where the store and logs go (kept)")
    options = parser.parse_args(arguments)
    seed = random.randrange(2**32) if options.seed is None else options.seed
    print(f"crashloop: seed {seed}", flush=True)
    directory = options.dir or Path(tempfile.mkdtemp(prefix="crashloop-"))
    directory.mkdir(parents=True, exist_ok=True)
    summary = run(options.backend, options.kills, options.interval, seed, directory, options.margin)
    for violation in summary.violations[:50]:
        print(f"VIOLATION {violation}", flush=True)
    if summary.violations:
        print(f"crashloop: store and logs kept in {directory}", flush=True)
        return 1
    if options.dir is None:
        shutil.rmtree(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
