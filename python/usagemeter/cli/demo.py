"""``usagemeter demo``: an AI API server metering thousands of actors from several threads.

The workload (the actors, their plans, and every request: who sends it, what kind, how many
units) is generated from ``--seed`` in blocks of BLOCK_SIZE requests, each block from its own
random generator, so it is the same for a given seed whatever the number of threads. Worker
threads take the blocks in turn and serve them against one MeteringService, persisting to
``./usagemeter-data`` (a second run continues from it). Which requests are refused depends on
each actor's balance when the request is served, so with several threads (interleaved differently
on every run) the refusals and totals vary; with ``--threads 1`` on a new or in-memory store the
whole run repeats exactly (timings aside).

Money is never a float here either: costs arrive as integer µ¢ and are checked against a
``decimal.Decimal`` recomputation at the end.
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import shlex
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, Inexact, localcontext
from pathlib import Path
from typing import Any, Protocol

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from usagemeter import (
    ALARM,
    GET_USER_SUBSCRIPTION,
    REGISTER_AVAILABLE_POLICIES,
    Actor,
    AlarmEvent,
    CostMap,
    GetUserSubscriptionEvent,
    MeteringService,
    Policy,
    RegisterAvailablePoliciesEvent,
    StoreError,
    to_microcents,
)
from usagemeter.cli.output import Printer, count, format_dollars, make_console, make_table
from usagemeter.cli.store import (
    DEFAULT_STORE,
    MANIFEST_NAME,
    AnyBackend,
    detect_backend,
    open_service,
    store_error_message,
)
from usagemeter.providers import usage_items
from usagemeter.store import is_shared_url, shown

__all__ = [
    "BLOCK_SIZE",
    "DEMO_TINY_PLAN",
    "REQUEST_MIX",
    "Call",
    "Population",
    "demo_store_problem",
    "make_population",
    "run_demo",
    "workload_block",
]

# A plan small enough that its actors run dry after a few requests. It reaches the service the way
# a real server's plans do: registered and selected through the metering events.
DEMO_TINY_PLAN = Policy("demo-tiny", 2_000_000)  # $0.02 a month
TOP_UP = to_microcents("5")  # what a buyer purchases when a request is refused
MAX_TOP_UPS = 10  # purchases per buyer, so hot buyers eventually run dry too
ZIPF_EXPONENT = 1.0  # actor popularity ~ 1 / rank**s: a few actors send most of the traffic
# Requests generated (and taken by a worker) at a time: large enough that taking a block costs
# nothing next to serving it, small enough that the threads finish close together.
BLOCK_SIZE = 1_000


class _Request(Protocol):
    """One kind of API request the simulated server handles."""

    def draw(self, rng: random.Random) -> tuple[int, ...]:
        """The request's amounts (tokens, characters, bytes...), drawn when the workload is made."""
        ...

    def serve(self, service: MeteringService, actor: Actor, amounts: tuple[int, ...]) -> int:
        """Checks the actor can afford it, books it; returns the increments booked, 0 if refused."""
        ...


@dataclass(frozen=True, slots=True)
class _Chat:
    """A chat completion: the worst case is held before the model runs, the answer settles it.

    As in a real server that streams its replies: the prompt and ``max_output_tokens`` of output
    are reserved first (``reserve``), so two requests of one actor in flight cannot together
    spend more than the budget; the real usage then settles the hold (``Hold.settle``), which
    frees what the reply did not use.
    """

    model_prefix: str
    input_kind: str
    output_kind: str
    max_output_tokens: int = 1_000

    def draw(self, rng: random.Random) -> tuple[int, ...]:
        """(prompt tokens, completion tokens)."""
        return rng.randint(50, 4_000), rng.randint(10, self.max_output_tokens)

    def serve(self, service: MeteringService, actor: Actor, amounts: tuple[int, ...]) -> int:
        """Holds the prompt and the longest answer, then settles with the tokens the answer used."""
        prompt_tokens, completion_tokens = amounts
        worst = {self.input_kind: prompt_tokens, self.output_kind: self.max_output_tokens}
        hold = service.reserve(actor, usages=usage_items(worst, self.model_prefix, service.cost_map))
        if hold is None:
            return 0
        used = usage_items(
            {self.input_kind: prompt_tokens, self.output_kind: completion_tokens},
            self.model_prefix,
            service.cost_map,
        )
        hold.settle(usages=used)
        return len(used)


@dataclass(frozen=True, slots=True)
class _Metered:
    """A request priced per unit of one usage type, checked and booked in one atomic call."""

    usage_type: str
    min_amount: int
    max_amount: int

    def draw(self, rng: random.Random) -> tuple[int, ...]:
        """(units,)."""
        return (rng.randint(self.min_amount, self.max_amount),)

    def serve(self, service: MeteringService, actor: Actor, amounts: tuple[int, ...]) -> int:
        """Books the units with ``try_increment_usage``: all of them if affordable, else nothing."""
        return 0 if service.try_increment_usage(actor, self.usage_type, amounts[0]) is None else 1


@dataclass(frozen=True, slots=True)
class _KeyValueBatch:
    """A burst of key-value operations, booked all or nothing as one batch."""

    def draw(self, rng: random.Random) -> tuple[int, ...]:
        """(writes, reads)."""
        return rng.randint(1, 20), rng.randint(1, 100)

    def serve(self, service: MeteringService, actor: Actor, amounts: tuple[int, ...]) -> int:
        """Checks the burst priced as if every operation were a write (the dearer kind), books it."""
        writes, reads = amounts
        if not service.has_enough_credits_for(actor, "kv:write", writes + reads):
            return 0
        service.batch_increment_usages(actor, [("kv:write", writes), ("kv:read", reads)])
        return 2


# (weight, request): the traffic mix. Every usage type here is a real key of CostMap.default().
REQUEST_MIX: tuple[tuple[int, _Request], ...] = (
    (10, _Chat("claude:claude-sonnet-4-5-20250929", "input_tokens", "output_tokens")),
    (10, _Chat("claude:claude-haiku-4-5-20251001", "input_tokens", "output_tokens")),
    (14, _Chat("openai:gpt-4o-mini", "prompt_tokens", "completion_tokens")),
    (10, _Chat("openai:gpt-5-mini-2025-08-07", "prompt_tokens", "completion_tokens")),
    (12, _Chat("gemini:gemini-2.5-flash", "promptTokenCount", "candidatesTokenCount")),
    (8, _Chat("deepseek:deepseek-chat", "prompt_tokens", "completion_tokens")),
    (6, _Metered("aws-polly:neural:character", 100, 1_500)),  # text to speech
    (4, _Metered("openai:gpt-image-1:low:1024x1024", 1, 2)),  # image generations
    (16, _Metered("filesystem:egress:bytes", 1_000, 20_000_000)),  # downloads, 22-digit price
    (10, _KeyValueBatch()),
)


@dataclass(frozen=True)
class Population:
    """The simulated customers: actors ordered by popularity, and who is on which deal."""

    actors: list[Actor]  # most popular first
    cumulative_weights: list[float]  # Zipf popularity, for random.choices
    tiny_plan_users: frozenset[str]
    buyers: frozenset[str]  # users who buy credit when they are refused


def make_population(actor_count: int, seed: int) -> Population:
    """Creates ``actor_count`` actors from ``seed``: ~35% with an app id, ~35% with an email.

    Purchases follow popularity as on a real service: the busiest 1% of actors and 2% of the
    others buy credit when refused; 5% of the others are on the tiny plan.
    """
    rng = random.Random(f"{seed}-population")
    actors: list[Actor] = []
    for index in range(actor_count):
        user_id = f"user-{index:05d}"
        app_id = f"app-{rng.randrange(8)}" if rng.random() < 0.35 else None
        email = f"{user_id}@example.com" if rng.random() < 0.35 else None
        actors.append(Actor(user_id, app_id, email=email))
    rng.shuffle(actors)  # popularity rank is independent of the user id and attributes
    busiest = max(1, actor_count // 100)
    tiny_plan_users: set[str] = set()
    buyers: set[str] = set()
    cumulative: list[float] = []
    total = 0.0
    for rank, actor in enumerate(actors, start=1):
        total += 1.0 / rank**ZIPF_EXPONENT
        cumulative.append(total)
        draw = rng.random()
        if rank <= busiest or 0.05 <= draw < 0.07:
            buyers.add(actor.user_id)
        elif draw < 0.05:
            tiny_plan_users.add(actor.user_id)
    return Population(actors, cumulative, frozenset(tiny_plan_users), frozenset(buyers))


@dataclass(frozen=True, slots=True)
class Call:
    """One request of the workload: who sends it, what kind, and its amounts."""

    actor: Actor
    request: _Request
    amounts: tuple[int, ...]


def workload_block(population: Population, seed: int, block: int, size: int) -> list[Call]:
    """The ``size`` requests of block number ``block``: popularity-weighted actors, the traffic mix.

    Depends only on its arguments (each block has its own generator), never on which thread serves
    it or on what was refused before.
    """
    rng = random.Random(f"{seed}-block-{block}")
    actors = rng.choices(population.actors, cum_weights=population.cumulative_weights, k=size)
    kinds = rng.choices(
        [request for _, request in REQUEST_MIX], [weight for weight, _ in REQUEST_MIX], k=size
    )
    return [Call(actor, request, request.draw(rng)) for actor, request in zip(actors, kinds, strict=True)]


class _Blocks:
    """Hands out the workload's block numbers, in order, to whichever worker asks next."""

    def __init__(self, request_count: int) -> None:
        """Blocks of BLOCK_SIZE requests (the last one smaller) covering ``request_count``."""
        self._request_count = request_count
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> tuple[int, int] | None:
        """(block number, its size), or None when every block is taken."""
        with self._lock:
            block = self._next
            start = block * BLOCK_SIZE
            if start >= self._request_count:
                return None
            self._next += 1
        return block, min(BLOCK_SIZE, self._request_count - start)


@dataclass(slots=True)
class _WorkerStats:
    """One worker's counters; only that worker writes them, the progress display reads them."""

    served: int = 0
    refused: int = 0
    increments: int = 0
    refused_users: set[str] = field(default_factory=set)


class _CreditShop:
    """Sells top-ups to buyers who are refused; thread-safe, used only on the (rare) refusal path."""

    def __init__(self, service: MeteringService, buyers: frozenset[str]) -> None:
        """A shop selling to ``buyers`` through ``service.update_addon_credit``."""
        self._service = service
        self._buyers = buyers
        self._lock = threading.Lock()
        self._purchases: dict[str, int] = {}

    def offer(self, user_id: str) -> None:
        """A buyer who was just refused buys one top-up, up to MAX_TOP_UPS in all."""
        if user_id not in self._buyers:
            return
        with self._lock:  # two threads refusing the same buyer at once must sell one top-up
            bought = self._purchases.get(user_id, 0)
            if bought >= MAX_TOP_UPS:
                return
            self._purchases[user_id] = bought + 1
            self._service.update_addon_credit(user_id, TOP_UP)

    def sales(self) -> tuple[int, int]:
        """(number of purchases, number of distinct buyers who purchased)."""
        with self._lock:
            return sum(self._purchases.values()), len(self._purchases)


class _AlarmCounter:
    """Counts ``metering:alarm`` events by kind."""

    def __init__(self) -> None:
        """An empty counter."""
        self._lock = threading.Lock()
        self.by_kind: dict[str, int] = {}

    def __call__(self, event: AlarmEvent) -> None:
        """The listener: counts ``event.kind``."""
        with self._lock:
            self.by_kind[event.kind] = self.by_kind.get(event.kind, 0) + 1


def _install_plans(service: MeteringService, tiny_plan_users: frozenset[str]) -> None:
    """Offers DEMO_TINY_PLAN through the events and selects it for ``tiny_plan_users``."""

    def register_policies(event: RegisterAvailablePoliciesEvent) -> None:
        event.available_policies.append(DEMO_TINY_PLAN)

    def select_subscription(event: GetUserSubscriptionEvent) -> None:
        if event.actor.user_id in tiny_plan_users:
            event.user_subscription_id = DEMO_TINY_PLAN.id

    service.events.on(REGISTER_AVAILABLE_POLICIES, register_policies)
    service.events.on(GET_USER_SUBSCRIPTION, select_subscription)


def _serve_requests(
    service: MeteringService,
    population: Population,
    seed: int,
    blocks: _Blocks,
    shop: _CreditShop,
    stats: _WorkerStats,
    stop: threading.Event,
) -> None:
    """A worker thread: takes blocks of the workload and serves them until none is left."""
    try:
        while not stop.is_set() and (taken := blocks.take()) is not None:
            for call in workload_block(population, seed, *taken):
                booked = call.request.serve(service, call.actor, call.amounts)
                if booked:
                    stats.served += 1
                    stats.increments += booked
                else:
                    stats.refused += 1
                    stats.refused_users.add(call.actor.user_id)
                    shop.offer(call.actor.user_id)
    except BaseException:
        stop.set()  # one worker failed: the others stop too, and the error is re-raised in main
        raise


def _progress_detail(stats: list[_WorkerStats], started: float) -> tuple[int, str]:
    """(requests done, "served ..., refused ..., N/s") over every worker."""
    served = sum(worker.served for worker in stats)
    refused = sum(worker.refused for worker in stats)
    elapsed = time.perf_counter() - started
    rate = (served + refused) / elapsed if elapsed > 0 else 0.0
    return served + refused, f"served {served:,}, refused {refused:,}, {rate:,.0f}/s"


@dataclass(frozen=True, slots=True)
class _LedgerState:
    """What the ledger holds for the current month at one moment: the demo compares two of them."""

    month: str
    global_usage: dict[str, Any]  # get_global_usage(): {"total", "<type>": {"units", "cost", "count"}}
    users: int  # users with usage this month
    increments: int  # sum of the per-user counts of get_actors_usage()

    @property
    def empty(self) -> bool:
        """True when nothing at all was booked this month."""
        return not any(isinstance(record, dict) for record in self.global_usage.values())


def _current_month() -> str:
    """The current UTC month, ``YYYY-MM``, as the service computes it from the system clock."""
    return time.strftime("%Y-%m", time.gmtime())


def _ledger_state(service: MeteringService) -> _LedgerState:
    """The current month's global usage and per-user counts of ``service``."""
    month = _current_month()
    actors = service.get_actors_usage(month)
    return _LedgerState(month, service.get_global_usage(), len(actors), sum(n for _, _, n in actors))


def _round_half_up(value: Decimal) -> int:
    """Rounds an exact µ¢ amount to whole µ¢ the way the ledger reports costs (half up)."""
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))


_ZERO_RECORD: Mapping[str, int] = {"units": 0, "cost": 0, "count": 0}


def _ledger_check(before: _LedgerState, after: _LedgerState, cost_map: CostMap, increments: int) -> list[str]:
    """Cross-checks what this run added to the ledger against the workers and a Decimal recomputation.

    Returns the discrepancies (empty when the ledger is exact). The demo books only cost-map prices,
    so what this run added to a usage type costs exactly (units added) x price. The ledger keeps
    exact sums and reports them rounded half up to the µ¢: for a usage type (or a month) that was
    empty before the run, the reported cost must equal that product rounded half up; for one that
    already held earlier data (an earlier run on the same store), the growth of the reported cost
    must be within the rounding of the two reported values, i.e. less than 1 µ¢ away from the
    product. The ledger must also count every increment of this run, per type and per user.
    """
    problems: list[str] = []
    exact_run_total = Decimal(0)
    counted = 0
    # Enough digits for any µ¢ total, and Inexact trapped: this arithmetic must be exact too.
    with localcontext(prec=100) as context:
        context.traps[Inexact] = True
        for usage_type, record in after.global_usage.items():
            if usage_type == "total" or not isinstance(record, dict):
                continue
            earlier = before.global_usage.get(usage_type)
            new_type = not isinstance(earlier, dict)
            old: Mapping[str, int] = _ZERO_RECORD if not isinstance(earlier, dict) else earlier
            units = record["units"] - old["units"]
            cost = record["cost"] - old["cost"]
            added = record["count"] - old["count"]
            if units == cost == added == 0:
                continue  # not touched by this run
            counted += added
            if usage_type not in cost_map:
                problems.append(
                    f"{usage_type}: {count(added, 'increment')} this run, but the demo never books it"
                )
                continue
            exact_cost = units * cost_map[usage_type]
            exact_run_total += exact_cost
            if new_type and cost != _round_half_up(exact_cost):
                problems.append(f"{usage_type}: ledger cost {cost} µ¢, units x price {exact_cost} µ¢")
            elif not new_type and not abs(cost - exact_cost) < 1:
                problems.append(
                    f"{usage_type}: ledger cost grew by {cost} µ¢, units added x price is {exact_cost} µ¢"
                )
        for usage_type, record in before.global_usage.items():
            if isinstance(record, dict) and usage_type not in after.global_usage:
                problems.append(f"{usage_type}: held usage before the run, gone after it")
        total = after.global_usage["total"] - before.global_usage["total"]
        if before.empty and total != _round_half_up(exact_run_total):
            problems.append(f"global total {total} µ¢, units x price {exact_run_total} µ¢")
        elif not before.empty and not abs(total - exact_run_total) < 1:
            problems.append(f"global total grew by {total} µ¢, units added x price is {exact_run_total} µ¢")
    if counted != increments:
        problems.append(f"the ledger counts {count(counted, 'increment')}, the workers made {increments:,}")
    per_user = after.increments - before.increments
    if per_user != increments:
        problems.append(f"the per-user counts grew by {per_user:,}, the workers made {increments:,}")
    return problems


def _print_usage_types(out: Printer, service: MeteringService, limit: int, exact: bool) -> None:
    """Prints the ``limit`` usage types that cost the most this month, over all actors."""
    records = [
        (usage_type, record)
        for usage_type, record in service.get_global_usage().items()
        if usage_type != "total" and not isinstance(record, int)
    ]
    records.sort(key=lambda item: (-item[1]["cost"], item[0]))
    out.print(f"\nTop usage types by cost ({count(len(records), 'type')} used)")
    table = make_table(["usage type", "units", "increments", "cost"], [False, True, True, True])
    for usage_type, record in records[:limit]:
        table.add_row(
            usage_type,
            f"{record['units']:,}",
            f"{record['count']:,}",
            format_dollars(record["cost"], exact=exact),
        )
    out.print(table)


def _print_top_actors(
    out: Printer, service: MeteringService, population: Population, limit: int, exact: bool
) -> None:
    """Prints the ``limit`` users who spent the most this month, with their plan and what is left.

    The store may hold users of earlier runs that this run's population lacks: they are shown too.
    """
    by_id = {actor.user_id: actor for actor in population.actors}
    out.print("\nTop actors by spend")
    table = make_table(
        ["actor", "plan", "spent", "purchased", "overage", "remaining"],
        [False, False, True, True, True, True],
    )
    # Largest first, ties by user id, so that a repeated run prints the same table.
    ranked = sorted(service.get_actors_usage(), key=lambda row: (-row[1], row[0]))
    for user_id, spent, _increments in ranked[:limit]:
        actor = by_id.get(user_id) or Actor(user_id)
        budget = service.get_actor_budget(actor)
        table.add_row(
            actor.user_id + (f" ({actor.app_id})" if actor.app_id else ""),
            service.get_actor_subscription(actor).id,
            format_dollars(spent, exact=exact),
            format_dollars(budget["purchased_credits"], exact=exact),
            format_dollars(budget["overage"], exact=exact),
            format_dollars(budget["remaining"], exact=exact),
        )
    out.print(table)


def demo_store_problem(store: str) -> str | None:
    """Why the demo cannot keep a store at ``store``, or None if it can (found, or created there).

    A store is a directory, created with its parents if missing: a regular file at the path, or at
    one of its parents, is an error, told before the store is opened. A shared ledger's URL
    (``redis://...``) is None: whether it answers is found out by opening it.
    """
    if is_shared_url(store):
        return None
    path = Path(store)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if candidate.is_dir():
                return None
            where = "it" if candidate == path else f"{candidate}"
            return f"--store {shown(store)}: {where} is a file, not a directory (a store is a directory)"
    return None


def run_demo(
    actor_count: int,
    thread_count: int,
    request_count: int,
    seed: int,
    store: str | None = DEFAULT_STORE,
    backend: AnyBackend | None = None,
    exact: bool = False,
) -> int:
    """``usagemeter demo``: simulates an AI API server and prints throughput and usage tables.

    Persists to the store directory ``store`` (None: memory only) and continues from what it
    already holds; ``backend`` is the store backend (None: the existing store's, else the library
    default). ``exact`` shows money to the µ¢ instead of the cent. Flushes and closes the store at
    the end. Returns the exit code: 0, or 1 if the store cannot be opened or written, or the ledger
    disagrees with the recomputation.
    """
    if store is not None:
        problem = demo_store_problem(store)
        if problem is not None:
            print(f"usagemeter demo: {problem}", file=sys.stderr)
            return 1
    # The service logs every alarm as a warning; the demo counts them and prints a summary
    # instead of thousands of lines. Errors (a listener that raised, a failed snapshot) still show.
    logging.getLogger("usagemeter").setLevel(logging.ERROR)
    cost_map = CostMap.default()
    shared = store is not None and is_shared_url(store)
    continuing = store is not None and not shared and (Path(store) / MANIFEST_NAME).is_file()
    if store is not None and not shared and backend is None:
        backend = detect_backend(store)  # None for a new store: the library's default backend
    opening = time.perf_counter()
    try:
        service = open_service(store, backend, cost_map)
    except (StoreError, OSError) as error:
        message = store_error_message(error, str(store)) if isinstance(error, StoreError) else str(error)
        print(f"usagemeter demo: cannot open the store {shown(store)}: {message}", file=sys.stderr)
        return 1
    open_seconds = time.perf_counter() - opening
    opened_backend = service.store_backend
    out = Printer(sys.stdout)
    try:
        with service:
            code = _demo_session(
                out,
                service,
                cost_map,
                actor_count,
                thread_count,
                request_count,
                seed,
                store,
                continuing,
                open_seconds,
                exact,
            )
            closing = time.perf_counter()
            service.flush()
        close_seconds = time.perf_counter() - closing
    except StoreError as error:
        print(
            f"usagemeter demo: the store {shown(store)} failed: {store_error_message(error, str(store))}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        # Leaving the `with` closed the store, which flushed it.
        where = f": what was recorded is flushed to {shown(store)}" if store is not None else ""
        print(f"\ninterrupted{where}", file=sys.stderr)
        return 130
    if store is not None:
        again = (
            "usagemeter demo" if store == DEFAULT_STORE else f"usagemeter demo --store {shlex.quote(store)}"
        )
        out.print(
            f"\nstore: flushed and closed in {close_seconds:.2f} s; "
            f"the data is in {shown(store)} ({opened_backend})"
        )
        out.print(f"  `usagemeter report --store {shlex.quote(store)}` shows it")
        out.print(f"  `{again}` continues from it")
    return code


def _demo_session(
    out: Printer,
    service: MeteringService,
    cost_map: CostMap,
    actor_count: int,
    thread_count: int,
    request_count: int,
    seed: int,
    store: str | None,
    continuing: bool,
    open_seconds: float,
    exact: bool,
) -> int:
    """The demo proper on an open ``service``: simulate, print the tables, check the ledger.

    Returns the exit code: 0, or 1 if the ledger disagrees with the recomputation.
    """
    population = make_population(actor_count, seed)
    _install_plans(service, population.tiny_plan_users)
    alarms = _AlarmCounter()
    service.events.on(ALARM, alarms)
    shop = _CreditShop(service, population.buyers)

    with_app = sum(actor.app_id is not None for actor in population.actors)
    with_email = sum(actor.email is not None for actor in population.actors)
    out.print(
        f"usagemeter demo: {count(request_count, 'request')} from {count(actor_count, 'actor')} "
        f"on {count(thread_count, 'thread')} (seed {seed})"
    )
    out.print(f"cost map: {count(len(cost_map), 'price')} loaded")
    out.print(
        f"actors: {with_app:,} with an app id, {with_email:,} with an email, "
        f"{len(population.tiny_plan_users):,} on the "
        f"{format_dollars(DEMO_TINY_PLAN.monthly_allowance, exact=exact)} '{DEMO_TINY_PLAN.id}' plan"
    )
    out.print(
        f"buyers: {count(len(population.buyers), 'actor')}, buying "
        f"{format_dollars(TOP_UP, exact=exact)} top-ups when refused (up to {MAX_TOP_UPS} each)"
    )
    before = _ledger_state(service)
    if store is None:
        out.print("store: none, memory only (nothing is kept after this run)")
    elif continuing or (is_shared_url(store) and not before.empty):  # a shared ledger holding usage
        out.print(f"continuing from {shown(store)} ({service.store_backend}), opened in {open_seconds:.2f} s")
        out.print(
            f"  this month so far: {count(before.users, 'user')}, {count(before.increments, 'increment')}, "
            f"{format_dollars(before.global_usage['total'], exact=exact)}"
        )
    else:
        out.print(
            f"store: new {service.store_backend} store at {shown(store)}, opened in {open_seconds:.2f} s"
        )
    out.flush()

    stats = [_WorkerStats() for _ in range(thread_count)]
    blocks = _Blocks(request_count)
    stop = threading.Event()
    started = time.perf_counter()
    columns = (
        TextColumn("requests"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    # On a terminal the progress line updates in place; in a log it is written once, at the end.
    with (
        Progress(*columns, console=make_console(sys.stderr)) as progress,
        concurrent.futures.ThreadPoolExecutor(thread_count, thread_name_prefix="demo-worker") as pool,
    ):
        task = progress.add_task("requests", total=request_count, detail="")
        futures = [
            pool.submit(_serve_requests, service, population, seed, blocks, shop, stats[worker], stop)
            for worker in range(thread_count)
        ]
        try:
            while True:
                running = concurrent.futures.wait(futures, timeout=0.1).not_done
                done, detail = _progress_detail(stats, started)
                progress.update(task, completed=done, detail=detail)
                if not running:
                    break
        except KeyboardInterrupt:
            stop.set()
            raise
        for future in futures:
            future.result()  # re-raises a worker's exception
    elapsed = max(time.perf_counter() - started, 1e-9)

    served = sum(worker.served for worker in stats)
    refused = sum(worker.refused for worker in stats)
    increments = sum(worker.increments for worker in stats)
    refused_users = set[str]().union(*(worker.refused_users for worker in stats))
    purchases, buyers = shop.sales()
    out.print(f"\nrequests: {served + refused:,} ({served:,} served, {refused:,} refused) in {elapsed:.2f} s")
    out.print(
        f"throughput: {(served + refused) / elapsed:,.0f} requests/s, "
        f"{increments / elapsed:,.0f} increments/s ({count(increments, 'increment')})"
    )
    out.print(
        f"credit: {count(len(refused_users), 'actor')} refused at least once; "
        f"{count(buyers, 'buyer')} bought {count(purchases, 'top-up')} "
        f"({format_dollars(purchases * TOP_UP, exact=exact)})"
    )
    alarm_text = ", ".join(f"{number:,} {kind}" for kind, number in sorted(alarms.by_kind.items()))
    out.print(f"alarms: {alarm_text or 'none'}")

    _print_usage_types(out, service, limit=10, exact=exact)
    _print_top_actors(out, service, population, limit=10, exact=exact)

    after = _ledger_state(service)
    global_total = after.global_usage["total"]
    out.print(f"\nglobal total: {format_dollars(global_total, exact=exact)}")
    if after.month != before.month:
        out.print(
            f"ledger check skipped: the month changed during the run ({before.month} -> {after.month}), "
            "and each month is kept apart"
        )
        return 0
    if not before.empty:
        run_total = global_total - before.global_usage["total"]
        out.print(
            f"this run added {format_dollars(run_total, exact=exact)}; the month now holds "
            f"{count(after.users, 'user')} and {count(after.increments, 'increment')}"
        )
    problems = _ledger_check(before, after, cost_map, increments)
    if problems:
        for problem in problems:
            print(f"ledger check FAILED: {problem}", file=sys.stderr)
        return 1
    if before.empty:
        out.print(
            f"ledger check: all {count(increments, 'increment')} counted; every cost and the global total"
        )
        out.print("  equal units x price recomputed with Decimal, to the µ¢")
    else:
        out.print(
            f"ledger check: all {count(increments, 'increment')} counted (this run's); what this run added"
        )
        out.print("  to every cost and to the global total equals units x price recomputed with Decimal,")
        out.print("  within the rounding of the reported totals (< 1 µ¢)")
    return 0
