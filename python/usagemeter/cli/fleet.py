"""``usagemeter demo --workers N --store redis://...``: the demo as a fleet of worker processes.

N worker processes (started with the ``spawn`` context: nothing of the parent's ledger is
inherited) each open a MeteringService on the same shared ledger in Redis. They serve the
demo's workload together, each taking every N-th block of requests (``--threads`` threads per
process), and at the same time race for the last credits of a few small budgets: RACE_USERS new
users on the DEMO_TINY_PLAN, charged by every worker with ``try_increment_usage`` until the budget
refuses them. The parent then opens the ledger once more, as a reader, and prints one combined
report: the usage types and top actors of the whole fleet, the ledger check of ``usagemeter demo``
over every worker's increments, and per raced user the budget, what the workers were granted and
what the ledger holds, which must be equal, within the budget, and at least RACE_MIN_SPENT of it.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import shlex
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from usagemeter import ALARM, Actor, CostMap, MeteringService, StoreError
from usagemeter.cli.demo import (
    BLOCK_SIZE,
    DEMO_TINY_PLAN,
    _AlarmCounter,
    _Blocks,
    _CreditShop,
    _install_plans,
    _ledger_check,
    _ledger_state,
    _print_top_actors,
    _print_usage_types,
    _serve_requests,
    _WorkerStats,
    make_population,
)
from usagemeter.cli.output import Printer, count, format_dollars, make_table
from usagemeter.cli.store import AnyBackend, open_service, store_error_message
from usagemeter.store import shown

__all__ = ["RACE_MIN_SPENT_PERCENT", "RACE_UNITS", "RACE_USAGE_TYPE", "RACE_USERS", "run_fleet_demo"]

RACE_USERS = 6  # new users per run whose small budgets every worker races for
RACE_USAGE_TYPE = "aws-polly:neural:character"  # 1,600 µ¢ a character: an integer price
RACE_UNITS = 10  # characters a call: 16,000 µ¢, so the $0.02 plan affords exactly 125 calls
RACE_MIN_SPENT_PERCENT = 95  # the fleet must spend at least this much of each raced budget
RACE_GIVE_UP = 5  # refusals in a row after which a worker stops charging a user
RACE_RETRY_PAUSE = 0.05  # seconds between a refusal and the next try (the fleet rebalances leases)
START_TIMEOUT = 120.0  # seconds for every worker to open the ledger
RUN_TIMEOUT = 3_600.0  # seconds for the workers to finish once started


class _StripedBlocks(_Blocks):
    """The blocks of one worker process of N: numbers ``index``, ``index + N``, ``index + 2N`` ..."""

    def __init__(self, request_count: int, index: int, workers: int) -> None:
        """Worker ``index``'s share (0-based) of ``request_count`` requests among ``workers``."""
        super().__init__(request_count)
        self._index = index
        self._workers = workers
        self._round = 0

    def take(self) -> tuple[int, int] | None:
        """(block number, its size) of this worker's next block, or None when none is left."""
        with self._lock:
            block = self._round * self._workers + self._index
            start = block * BLOCK_SIZE
            if start >= self._request_count:
                return None
            self._round += 1
        return block, min(BLOCK_SIZE, self._request_count - start)


@dataclass(frozen=True, slots=True)
class _Job:
    """What one worker process is told (picklable: it crosses to a spawned process)."""

    index: int
    workers: int
    store: str
    backend: AnyBackend | None
    actor_count: int
    thread_count: int
    request_count: int
    seed: int
    race_users: tuple[str, ...]


@dataclass(slots=True)
class _Result:
    """What one worker process reports back (picklable)."""

    index: int
    pid: int
    worker_id: str | None = None
    served: int = 0
    refused: int = 0
    increments: int = 0
    refused_users: set[str] = field(default_factory=set)
    purchases: int = 0
    race_accepted: dict[str, int] = field(default_factory=dict)  # user id -> calls accepted
    alarms: dict[str, int] = field(default_factory=dict)
    error: str | None = None


def _race(service: MeteringService, users: tuple[str, ...], accepted: dict[str, int]) -> None:
    """Charges every raced user RACE_UNITS of RACE_USAGE_TYPE with ``try_increment_usage``, round
    robin, until each has refused RACE_GIVE_UP calls in a row; counts the calls accepted."""
    refusals = dict.fromkeys(users, 0)
    while True:
        active = [user for user in users if refusals[user] < RACE_GIVE_UP]
        if not active:
            return
        refused_all = True
        for user in active:
            if service.try_increment_usage(Actor(user), RACE_USAGE_TYPE, RACE_UNITS) is None:
                refusals[user] += 1
            else:
                refusals[user] = 0
                accepted[user] = accepted.get(user, 0) + 1
                refused_all = False
        if refused_all:
            time.sleep(RACE_RETRY_PAUSE)


def _fleet_worker(job: _Job, ready: Any, results: Any) -> None:
    """One worker process: opens the shared ledger, waits for the others, then serves its blocks
    and races for the raced budgets; puts its ``_Result`` on ``results``, even on failure."""
    result = _Result(job.index, os.getpid())
    try:
        service = open_service(job.store, job.backend, CostMap.default())
    except BaseException as error:
        ready.abort()  # the others stop waiting for this one
        result.error = f"cannot open {shown(job.store)}: " + (
            store_error_message(error, job.store) if isinstance(error, StoreError) else repr(error)
        )
        results.put(result)
        return
    try:
        with service:
            result.worker_id = service._worker_id
            population = make_population(job.actor_count, job.seed)
            _install_plans(service, population.tiny_plan_users | frozenset(job.race_users))
            alarms = _AlarmCounter()
            service.events.on(ALARM, alarms)
            shop = _CreditShop(service, population.buyers)
            ready.wait(START_TIMEOUT)
            blocks = _StripedBlocks(job.request_count, job.index, job.workers)
            stats = [_WorkerStats() for _ in range(job.thread_count)]
            stop = threading.Event()
            errors: list[BaseException] = []

            def serve(worker_stats: _WorkerStats) -> None:
                try:
                    _serve_requests(service, population, job.seed, blocks, shop, worker_stats, stop)
                except BaseException as error:
                    errors.append(error)

            threads = [threading.Thread(target=serve, args=(one,)) for one in stats]
            for thread in threads:
                thread.start()
            _race(service, job.race_users, result.race_accepted)
            for thread in threads:
                thread.join()
            if errors:
                raise errors[0]
            result.served = sum(one.served for one in stats)
            result.refused = sum(one.refused for one in stats)
            result.increments = sum(one.increments for one in stats) + sum(result.race_accepted.values())
            result.refused_users = set[str]().union(*(one.refused_users for one in stats))
            result.purchases = shop.sales()[0]
            result.alarms = dict(alarms.by_kind)
            service.flush()
    except BaseException:
        result.error = traceback.format_exc(limit=4).strip()
    results.put(result)


def _run_workers(jobs: list[_Job]) -> list[_Result]:
    """Starts one spawned process per job, waits for all, returns their results (in job order).

    A process that died without reporting gets a result naming its exit code. Every process is
    joined (or killed, after RUN_TIMEOUT) before this returns: none outlives the demo.
    """
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(len(jobs))
    results: Any = context.Queue()
    processes = [
        context.Process(
            target=_fleet_worker, args=(job, ready, results), name=f"usagemeter-worker-{job.index}"
        )
        for job in jobs
    ]
    collected: dict[int, _Result] = {}
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + START_TIMEOUT + RUN_TIMEOUT
        while len(collected) < len(jobs) and time.monotonic() < deadline:
            try:
                result: _Result = results.get(timeout=0.5)
            except queue.Empty:
                if not any(process.is_alive() for process in processes):
                    try:  # a last result may still be in the pipe
                        result = results.get(timeout=1.0)
                    except queue.Empty:
                        break
                else:
                    continue
            collected[result.index] = result
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
    for job, process in zip(jobs, processes, strict=True):
        if job.index not in collected:
            collected[job.index] = _Result(
                job.index, process.pid or 0, error=f"exited with code {process.exitcode} without a report"
            )
    return [collected[job.index] for job in jobs]


def _race_user_ids() -> tuple[str, ...]:
    """RACE_USERS user ids new to the ledger: this run's time (a tenth of a second, 7 hex digits,
    cycling every 8 years) makes them unique."""
    stamp = f"{int(time.time() * 10) % 16**7:07x}"
    return tuple(f"race-{stamp}-{number:02d}" for number in range(RACE_USERS))


def run_fleet_demo(
    workers: int,
    actor_count: int,
    thread_count: int,
    request_count: int,
    seed: int,
    store: str,
    backend: AnyBackend | None = None,
    exact: bool = False,
) -> int:
    """``usagemeter demo --workers N``: the demo served by ``workers`` processes sharing ``store``.

    ``store`` is a shared ledger's URL (``redis://...``; ``backend`` ``redis-cluster`` for a
    cluster's seeds). Prints each worker's figures, then one report read back from the ledger:
    usage types, top actors, the ledger check over every worker's increments, and the raced
    budgets. Returns the exit code: 0, or 1 if the ledger cannot be opened, a worker failed, the
    ledger disagrees with the workers, or a raced budget was overspent or left under-spent.
    """
    out = Printer(sys.stdout)
    cost_map = CostMap.default()
    population = make_population(actor_count, seed)
    race_users = _race_user_ids()
    try:
        with open_service(store, backend, cost_map) as reader:
            before = _ledger_state(reader)
            opened_backend = reader.store_backend
    except (StoreError, OSError, ValueError) as error:
        message = store_error_message(error, store) if isinstance(error, StoreError) else str(error)
        print(f"usagemeter demo: cannot open the shared ledger {shown(store)}: {message}", file=sys.stderr)
        return 1
    out.print(
        f"usagemeter demo: {count(request_count, 'request')} from {count(actor_count, 'actor')} on "
        f"{count(workers, 'worker')} (processes) x {count(thread_count, 'thread')} (seed {seed})"
    )
    out.print(
        f"shared ledger: {shown(store)} ({opened_backend}); "
        f"this month so far: {count(before.users, 'user')}, "
        f"{count(before.increments, 'increment')}, "
        f"{format_dollars(before.global_usage['total'], exact=exact)}"
    )
    out.print(
        f"budget race: {count(RACE_USERS, 'new user')} on the "
        f"{format_dollars(DEMO_TINY_PLAN.monthly_allowance, exact=exact)} '{DEMO_TINY_PLAN.id}' plan, "
        f"charged {RACE_UNITS} units of {RACE_USAGE_TYPE} at a time by every worker until refused"
    )
    out.flush()
    jobs = [
        _Job(index, workers, store, backend, actor_count, thread_count, request_count, seed, race_users)
        for index in range(workers)
    ]
    started = time.perf_counter()
    results = _run_workers(jobs)
    elapsed = max(time.perf_counter() - started, 1e-9)
    failed = [result for result in results if result.error is not None]
    for result in failed:
        print(
            f"usagemeter demo: worker {result.index} (pid {result.pid}) failed: {result.error}",
            file=sys.stderr,
        )
    if failed:
        return 1

    out.print(f"\nworker processes: {workers:,} finished in {elapsed:.2f} s (with start-up)")
    table = make_table(
        ["worker", "pid", "worker id in the ledger", "served", "refused", "increments", "top-ups", "raced"],
        [False, True, False, True, True, True, True, True],
    )
    for result in results:
        table.add_row(
            str(result.index),
            str(result.pid),
            result.worker_id or "?",
            f"{result.served:,}",
            f"{result.refused:,}",
            f"{result.increments:,}",
            f"{result.purchases:,}",
            f"{sum(result.race_accepted.values()):,}",
        )
    out.print(table)
    served = sum(result.served for result in results)
    refused = sum(result.refused for result in results)
    increments = sum(result.increments for result in results)
    alarms: dict[str, int] = {}
    for result in results:
        for kind, number in result.alarms.items():
            alarms[kind] = alarms.get(kind, 0) + number
    out.print(
        f"requests: {served + refused:,} ({served:,} served, {refused:,} refused); "
        f"{count(increments, 'increment')} booked by the fleet"
    )
    alarm_text = ", ".join(f"{number:,} {kind}" for kind, number in sorted(alarms.items()))
    out.print(f"alarms: {alarm_text or 'none'}")

    try:
        with open_service(store, backend, cost_map) as reader:
            _install_plans(reader, population.tiny_plan_users | frozenset(race_users))
            out.print(f"\nOne ledger, read back from {shown(store)} by a new reader")
            _print_usage_types(out, reader, limit=10, exact=exact)
            _print_top_actors(out, reader, population, limit=10, exact=exact)
            after = _ledger_state(reader)
            code = _check_fleet(out, reader, before, after, cost_map, increments, results, race_users, exact)
    except (StoreError, OSError) as error:
        message = store_error_message(error, store) if isinstance(error, StoreError) else str(error)
        print(f"usagemeter demo: cannot read the shared ledger {shown(store)}: {message}", file=sys.stderr)
        return 1
    out.print(f"\n  `usagemeter report --store {shlex.quote(store)}` shows the ledger", wrap=False)
    return code


def _check_fleet(
    out: Printer,
    reader: MeteringService,
    before: Any,
    after: Any,
    cost_map: CostMap,
    increments: int,
    results: list[_Result],
    race_users: tuple[str, ...],
    exact: bool,
) -> int:
    """Prints the global total, the ledger check and the raced budgets (in integer µ¢, whatever
    ``exact`` says: a raced call costs a fraction of a cent); returns the exit code."""
    code = 0
    out.print(f"\nglobal total: {format_dollars(after.global_usage['total'], exact=exact)}")
    if after.month != before.month:
        out.print(f"ledger check skipped: the month changed during the run ({before.month} -> {after.month})")
    else:
        problems = _ledger_check(before, after, cost_map, increments)
        for problem in problems:
            print(f"ledger check FAILED: {problem}", file=sys.stderr)
        if problems:
            code = 1
        else:
            out.print(
                f"ledger check: the {count(increments, 'increment')} of every worker are all in the one "
                "ledger; what they added to every cost and to the global total equals units x price "
                "recomputed with Decimal"
            )
    # Integer µ¢ here whatever --exact says: a call costs a fraction of a cent.
    price = int(cost_map[RACE_USAGE_TYPE]) * RACE_UNITS
    out.print(
        f"\nBudgets raced for by {count(len(results), 'worker')} "
        f"(money in µ¢, {price:,} a call; "
        f"honoured: ledger = accepted <= budget, and >= {RACE_MIN_SPENT_PERCENT}% spent)"
    )
    table = make_table(
        ["user", "budget", "calls", "accepted", "in ledger", "remaining", "spent", "honoured"],
        [False, True, True, True, True, True, True, False],
    )
    honoured_all = True
    for user in race_users:
        per_worker = [result.race_accepted.get(user, 0) for result in results]
        accepted = sum(per_worker) * price
        budget = reader.get_actor_budget(Actor(user))
        allowance = budget["monthly_allowance"] + budget["purchased_credits"]
        ledger = reader.get_actor_current_month_usage_details(Actor(user))["usage"]["total"]
        honoured = ledger == accepted <= allowance and 100 * accepted >= RACE_MIN_SPENT_PERCENT * allowance
        honoured_all = honoured_all and honoured
        table.add_row(
            user,
            f"{allowance:,}",
            " + ".join(f"{calls:,}" for calls in per_worker),
            f"{accepted:,}",
            f"{ledger:,}",
            f"{budget['remaining']:,}",
            f"{100 * accepted / allowance:.1f}%" if allowance else "-",
            "yes" if honoured else "NO",
        )
    out.print(table)
    if honoured_all:
        out.print(f"budgets honoured: all {count(len(race_users), 'user')}, never overspent by the fleet")
    else:
        print("budget check FAILED: a raced budget was overspent, under-spent or not booked", file=sys.stderr)
        code = 1
    return code
