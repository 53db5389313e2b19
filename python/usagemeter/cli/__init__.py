"""The ``usagemeter`` command line: a load demo, store tools, reports and cost-map tools.

``usagemeter demo`` simulates an AI API server metering thousands of actors from several threads,
persisting to ``./usagemeter-data`` (a second run continues from it);
``usagemeter report --store PATH`` prints what a store holds for a month (top users, per-type
totals, or one user's details); ``usagemeter store verify PATH`` checks every record of a store and
``usagemeter store recover PATH`` keeps the records whose checksum holds;
``usagemeter costmap check PATH...`` validates cost-map files; ``usagemeter costmap show [PREFIX]``
lists the shipped prices. Everything here uses only the public API of the ``usagemeter`` package.

Money is never a float here either: costs arrive as integer µ¢ and are printed in dollars with
integer division (and as µ¢ in ``--json``); prices are ``decimal.Decimal``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import random
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, Inexact, localcontext
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

from usagemeter import (
    ALARM,
    GET_USER_SUBSCRIPTION,
    MICROCENTS_PER_DOLLAR,
    REGISTER_AVAILABLE_POLICIES,
    Actor,
    AlarmEvent,
    CostMap,
    CostMapError,
    GetUserSubscriptionEvent,
    MeteringService,
    Policy,
    RegisterAvailablePoliciesEvent,
    StoreError,
    StoreLockedError,
    to_microcents,
)
from usagemeter.store import recover_store, verify_store

__all__ = [
    "BACKENDS",
    "DEFAULT_STORE",
    "MANIFEST_NAME",
    "build_parser",
    "detect_backend",
    "format_dollars",
    "main",
    "run_costmap_check",
    "run_costmap_show",
    "run_demo",
    "run_report",
    "run_store_recover",
    "run_store_verify",
]

Backend = Literal["sled", "redb"]
BACKENDS: tuple[Backend, ...] = ("sled", "redb")
DEFAULT_STORE = "./usagemeter-data"  # where the demo persists unless told otherwise
MANIFEST_NAME = "usagemeter.manifest"  # every store directory has one (format version, backend, ...)


def format_dollars(microcents: int) -> str:
    """Formats an integer amount of µ¢ as exact dollars, e.g. ``123456789`` -> ``"$1.23456789"``.

    Integer division only: every µ¢ is shown (8 decimal places), nothing is rounded.
    """
    sign = "-" if microcents < 0 else ""
    dollars, rest = divmod(abs(microcents), MICROCENTS_PER_DOLLAR)
    return f"{sign}${dollars:,}.{rest:08d}"


def _count(number: int, noun: str) -> str:
    """``_count(1, "entry")`` -> ``"1 entry"``, ``_count(1105, "entry")`` -> ``"1,105 entries"``."""
    if number == 1:
        return f"1 {noun}"
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{number:,} {plural}"


def _plain_decimal(value: Decimal) -> str:
    """A Decimal written out in full, never in exponent form (``1E-7`` -> ``0.0000001``)."""
    return format(value, "f")


def _round_half_up(value: Decimal) -> int:
    """Rounds an exact µ¢ amount to whole µ¢ the way the ledger reports costs (half up)."""
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> None:
    """Prints ``rows`` under ``headers`` in aligned columns; ``right[i]`` right-aligns column i."""
    widths = [max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if align_right else cell.ljust(width)
            for cell, width, align_right in zip(cells, widths, right, strict=True)
        )
        return "  " + "  ".join(padded).rstrip()

    print(line(headers))
    print(line(["-" * width for width in widths]))
    for row in rows:
        print(line(row))


def _current_month() -> str:
    """The current UTC month, ``YYYY-MM``, as the service computes it from the system clock."""
    return time.strftime("%Y-%m", time.gmtime())


# --------------------------------------------------------------------------------------------
# Stores: finding one, its backend, opening it
# --------------------------------------------------------------------------------------------


def detect_backend(path: str | os.PathLike[str]) -> Backend | None:
    """The backend of the store at ``path``: the ``backend=`` line of its manifest, else the one of
    ``PATH/sled`` and ``PATH/redb`` that exists; None when neither tells (no store, or both present).
    """
    directory = Path(path)
    try:
        text = (directory / MANIFEST_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, equals, value = line.partition("=")
        if equals and key.strip() == "backend":
            for backend in BACKENDS:
                if value.strip() == backend:
                    return backend
    present = [backend for backend in BACKENDS if (directory / backend).exists()]
    return present[0] if len(present) == 1 else None


def _store_problem(path: Path, *, need_manifest: bool) -> str | None:
    """Why ``path`` is not an existing store directory, or None if it is one.

    With ``need_manifest=False`` a directory holding a backend directory but no manifest counts as
    a store too, so ``store verify`` / ``store recover`` can report on what is there. Looks only:
    never creates anything.
    """
    if not path.exists():
        return f"no store at {path}: the directory does not exist"
    if not path.is_dir():
        return f"no store at {path}: not a directory"
    if (path / MANIFEST_NAME).is_file():
        return None
    if not need_manifest and any((path / backend).exists() for backend in BACKENDS):
        return None
    return f"{path} is not a usagemeter store: it has no {MANIFEST_NAME}"


def _open_service(
    store: str | None, backend: Backend | None, cost_map: CostMap | None = None
) -> MeteringService:
    """A MeteringService on ``store`` (None: memory only) with ``backend`` (None: the library default)."""
    if store is None or backend is None:
        return MeteringService(cost_map, store=store)
    return MeteringService(cost_map, store=store, store_backend=backend)


def _store_error_message(error: StoreError, store: str) -> str:
    """The text shown for a StoreError: what happened, naming the store; a lock says who holds it."""
    if isinstance(error, StoreLockedError):
        return f"another process holds the store {store} (stop it, then retry): {error}"
    return f"{type(error).__name__}: {error}"


# --------------------------------------------------------------------------------------------
# usagemeter demo
# --------------------------------------------------------------------------------------------

# A plan small enough that its actors run dry after a few requests. It reaches the service the way
# a real server's plans do: registered and selected through the metering events.
DEMO_TINY_PLAN = Policy("demo-tiny", 2_000_000)  # $0.02 a month
TOP_UP = to_microcents("5")  # what a buyer purchases when a request is refused
MAX_TOP_UPS = 10  # purchases per buyer, so hot buyers eventually run dry too
ZIPF_EXPONENT = 1.0  # actor popularity ~ 1 / rank**s: a few actors send most of the traffic


class _Request(Protocol):
    """One kind of API request the simulated server handles."""

    def serve(self, service: MeteringService, actor: Actor, rng: random.Random) -> int:
        """Checks the actor can afford it, books it; returns the increments booked, 0 if refused."""
        ...


@dataclass(frozen=True, slots=True)
class _Chat:
    """A chat completion: the prompt is priced before the model runs, the answer is booked after.

    As in a real server, only the prompt (known up front) is checked; the completion is recorded
    whatever it costs, so an actor can end slightly over budget (the ledger books that as overage).
    """

    model_prefix: str
    input_kind: str
    output_kind: str
    max_output_tokens: int = 1_000

    def serve(self, service: MeteringService, actor: Actor, rng: random.Random) -> int:
        """Checks the prompt cost, then books prompt and completion tokens as one usage object."""
        prompt_tokens = rng.randint(50, 4_000)
        if not service.has_enough_credits_for(actor, f"{self.model_prefix}:{self.input_kind}", prompt_tokens):
            return 0
        completion_tokens = rng.randint(10, self.max_output_tokens)
        usage = {self.input_kind: prompt_tokens, self.output_kind: completion_tokens}
        service.record_usage_object(usage, actor, self.model_prefix)
        return len(usage)


@dataclass(frozen=True, slots=True)
class _Metered:
    """A request priced per unit of one usage type, checked and booked in one atomic call."""

    usage_type: str
    min_amount: int
    max_amount: int

    def serve(self, service: MeteringService, actor: Actor, rng: random.Random) -> int:
        """Books ``amount`` units with ``try_increment_usage``: all of it if affordable, else nothing."""
        amount = rng.randint(self.min_amount, self.max_amount)
        return 0 if service.try_increment_usage(actor, self.usage_type, amount) is None else 1


@dataclass(frozen=True, slots=True)
class _KeyValueBatch:
    """A burst of key-value operations, booked all or nothing as one batch."""

    def serve(self, service: MeteringService, actor: Actor, rng: random.Random) -> int:
        """Checks the burst priced as if every operation were a write (the dearer kind), books it."""
        writes = rng.randint(1, 20)
        reads = rng.randint(1, 100)
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


@dataclass(slots=True)
class _WorkerStats:
    """One worker's counters; only that worker writes them, the progress display reads them."""

    served: int = 0
    refused: int = 0
    increments: int = 0
    refused_users: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Population:
    """The simulated customers: actors ordered by popularity, and who is on which deal."""

    actors: list[Actor]  # most popular first
    cumulative_weights: list[float]  # Zipf popularity, for random.choices
    tiny_plan_users: frozenset[str]
    buyers: frozenset[str]  # users who buy credit when they are refused


def _make_population(actor_count: int, rng: random.Random) -> _Population:
    """Creates ``actor_count`` actors: ~35% with an app id, ~35% with an email, the rest anonymous.

    Purchases follow popularity as on a real service: the busiest 1% of actors and 2% of the
    others buy credit when refused; 5% of the others are on the tiny plan.
    """
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
    return _Population(actors, cumulative, frozenset(tiny_plan_users), frozenset(buyers))


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
    population: _Population,
    shop: _CreditShop,
    request_count: int,
    seed: str,
    stats: _WorkerStats,
    stop: threading.Event,
) -> None:
    """A worker thread: serves ``request_count`` requests from popularity-weighted actors."""
    rng = random.Random(seed)
    actors = rng.choices(population.actors, cum_weights=population.cumulative_weights, k=request_count)
    weights = [weight for weight, _ in REQUEST_MIX]
    requests = rng.choices([request for _, request in REQUEST_MIX], weights=weights, k=request_count)
    try:
        for index, (actor, request) in enumerate(zip(actors, requests, strict=True)):
            if index % 1024 == 0 and stop.is_set():
                return
            booked = request.serve(service, actor, rng)
            if booked:
                stats.served += 1
                stats.increments += booked
            else:
                stats.refused += 1
                stats.refused_users.add(actor.user_id)
                shop.offer(actor.user_id)
    except BaseException:
        stop.set()  # one worker failed: the others stop too, and the error is re-raised in main
        raise


class _Progress:
    """Shows progress on a stream: one updating line on a terminal, a line a second otherwise."""

    def __init__(self, stream: TextIO, total: int, started: float) -> None:
        """Progress towards ``total`` requests, timed from ``started`` (a perf_counter value)."""
        self._stream = stream
        self._total = total
        self._started = started
        self.interactive = stream.isatty()
        self.interval = 0.1 if self.interactive else 1.0

    def show(self, stats: Iterable[_WorkerStats], final: bool = False) -> None:
        """Writes the current counts (on a terminal, over the previous line)."""
        served = refused = 0
        for worker in stats:
            served += worker.served
            refused += worker.refused
        done = served + refused
        elapsed = time.perf_counter() - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        percent = 100 * done // self._total if self._total else 100
        text = (
            f"{done:,}/{self._total:,} requests ({percent}%), served {served:,}, "
            f"refused {refused:,}, {rate:,.0f} requests/s"
        )
        if self.interactive:
            self._stream.write(f"\r\033[K{text}" + ("\n" if final else ""))
        elif not final:
            self._stream.write(f"progress: {text}\n")
        self._stream.flush()


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


def _ledger_state(service: MeteringService) -> _LedgerState:
    """The current month's global usage and per-user counts of ``service``."""
    month = _current_month()
    actors = service.get_actors_usage(month)
    return _LedgerState(month, service.get_global_usage(), len(actors), sum(count for _, _, count in actors))


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
            count = record["count"] - old["count"]
            if units == cost == count == 0:
                continue  # not touched by this run
            counted += count
            if usage_type not in cost_map:
                problems.append(f"{usage_type}: {count:,} increments this run, but the demo never books it")
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
        problems.append(f"the ledger counts {counted:,} increments more, the workers made {increments:,}")
    per_user = after.increments - before.increments
    if per_user != increments:
        problems.append(f"the per-user counts grew by {per_user:,}, the workers made {increments:,}")
    return problems


def _print_usage_types(service: MeteringService, limit: int) -> None:
    """Prints the ``limit`` usage types that cost the most this month, over all actors."""
    global_usage = service.get_global_usage()
    records = [
        (usage_type, record)
        for usage_type, record in global_usage.items()
        if usage_type != "total" and not isinstance(record, int)
    ]
    records.sort(key=lambda item: (-item[1]["cost"], item[0]))
    print(f"\nTop usage types by cost ({len(records)} types used)")
    rows = [
        [usage_type, f"{record['units']:,}", f"{record['count']:,}", format_dollars(record["cost"])]
        for usage_type, record in records[:limit]
    ]
    _print_table(["usage type", "units", "increments", "cost"], rows, [False, True, True, True])


def _print_top_actors(service: MeteringService, population: _Population, limit: int) -> None:
    """Prints the ``limit`` users who spent the most this month, with what they have left.

    The store may hold users of earlier runs that this run's population lacks: they are shown too.
    """
    by_id = {actor.user_id: actor for actor in population.actors}
    print("\nTop actors by spend")
    rows = []
    for user_id, spent, _count in service.get_actors_usage()[:limit]:
        actor = by_id.get(user_id) or Actor(user_id)
        budget = service.get_actor_budget(actor)
        label = actor.user_id + (f" ({actor.app_id})" if actor.app_id else "")
        rows.append(
            [
                label,
                service.get_actor_subscription(actor).id,
                format_dollars(spent),
                format_dollars(budget["purchased_credits"]),
                format_dollars(budget["overage"]),
                format_dollars(budget["remaining"]),
            ]
        )
    _print_table(
        ["actor", "plan", "spent", "purchased", "overage", "remaining"],
        rows,
        [False, False, True, True, True, True],
    )


def run_demo(
    actor_count: int,
    thread_count: int,
    request_count: int,
    seed: int,
    store: str | None = DEFAULT_STORE,
    backend: Backend | None = None,
) -> int:
    """``usagemeter demo``: simulates an AI API server and prints throughput and usage tables.

    Persists to the store directory ``store`` (None: memory only) and continues from what it
    already holds; ``backend`` is the store backend (None: the existing store's, else the library
    default). Flushes and closes the store at the end. Returns the exit code: 0, or 1 if the store
    cannot be opened or written, or the ledger disagrees with the recomputation.
    """
    # The service logs every alarm as a warning; the demo counts them and prints a summary
    # instead of thousands of lines. Errors (a listener that raised, a failed snapshot) still show.
    logging.getLogger("usagemeter").setLevel(logging.ERROR)
    cost_map = CostMap.default()
    continuing = store is not None and (Path(store) / MANIFEST_NAME).is_file()
    if store is not None and backend is None:
        backend = detect_backend(store)  # None for a new store: the library's default backend
    opening = time.perf_counter()
    try:
        service = _open_service(store, backend, cost_map)
    except (StoreError, OSError) as error:
        message = _store_error_message(error, str(store)) if isinstance(error, StoreError) else str(error)
        print(f"usagemeter demo: cannot open the store {store}: {message}", file=sys.stderr)
        return 1
    open_seconds = time.perf_counter() - opening
    opened_backend = service.store_backend
    try:
        with service:
            code = _demo_session(
                service,
                cost_map,
                actor_count,
                thread_count,
                request_count,
                seed,
                store,
                continuing,
                open_seconds,
            )
            closing = time.perf_counter()
            service.flush()
        close_seconds = time.perf_counter() - closing
    except StoreError as error:
        print(
            f"usagemeter demo: the store {store} failed: {_store_error_message(error, str(store))}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        # Leaving the `with` closed the store, which flushed it.
        where = f": what was recorded is flushed to {store}" if store is not None else ""
        print(f"\ninterrupted{where}", file=sys.stderr)
        return 130
    if store is not None:
        again = (
            "usagemeter demo" if store == DEFAULT_STORE else f"usagemeter demo --store {shlex.quote(store)}"
        )
        print(
            f"\nstore: flushed and closed in {close_seconds:.2f} s; the data is in {store} "
            f"({opened_backend}): `usagemeter report --store {shlex.quote(store)}` shows it, "
            f"and `{again}` continues from it"
        )
    return code


def _demo_session(
    service: MeteringService,
    cost_map: CostMap,
    actor_count: int,
    thread_count: int,
    request_count: int,
    seed: int,
    store: str | None,
    continuing: bool,
    open_seconds: float,
) -> int:
    """The demo proper on an open ``service``: simulate, print the tables, check the ledger.

    Returns the exit code: 0, or 1 if the ledger disagrees with the recomputation.
    """
    population = _make_population(actor_count, random.Random(seed))
    _install_plans(service, population.tiny_plan_users)
    alarms = _AlarmCounter()
    service.events.on(ALARM, alarms)
    shop = _CreditShop(service, population.buyers)

    with_app = sum(actor.app_id is not None for actor in population.actors)
    with_email = sum(actor.email is not None for actor in population.actors)
    print(
        f"usagemeter demo: {request_count:,} requests from {actor_count:,} actors on {thread_count} "
        f"threads (seed {seed}), {len(cost_map):,} prices loaded"
    )
    print(
        f"actors: {with_app:,} with an app id, {with_email:,} with an email, "
        f"{len(population.tiny_plan_users):,} on the {format_dollars(DEMO_TINY_PLAN.monthly_allowance)} "
        f"'{DEMO_TINY_PLAN.id}' plan, {len(population.buyers):,} buy {format_dollars(TOP_UP)} "
        f"top-ups when refused"
    )
    before = _ledger_state(service)
    if store is None:
        print("store: none, memory only (nothing is kept after this run)")
    elif continuing:
        month_total = before.global_usage["total"]
        print(
            f"continuing from {store} ({service.store_backend}): {before.users:,} users, "
            f"{before.increments:,} increments this month ({format_dollars(month_total)}); "
            f"opened in {open_seconds:.2f} s"
        )
    else:
        print(f"store: new {service.store_backend} store at {store}, opened in {open_seconds:.2f} s")
    sys.stdout.flush()

    share, extra = divmod(request_count, thread_count)
    stats = [_WorkerStats() for _ in range(thread_count)]
    stop = threading.Event()
    started = time.perf_counter()
    progress = _Progress(sys.stderr, request_count, started)
    with concurrent.futures.ThreadPoolExecutor(thread_count, thread_name_prefix="demo-worker") as pool:
        futures = [
            pool.submit(
                _serve_requests,
                service,
                population,
                shop,
                share + (1 if worker < extra else 0),
                f"{seed}-worker-{worker}",
                stats[worker],
                stop,
            )
            for worker in range(thread_count)
        ]
        try:
            while concurrent.futures.wait(futures, timeout=progress.interval).not_done:
                progress.show(stats)
        except KeyboardInterrupt:
            stop.set()
            raise
        for future in futures:
            future.result()  # re-raises a worker's exception
    elapsed = max(time.perf_counter() - started, 1e-9)
    progress.show(stats, final=True)

    served = sum(worker.served for worker in stats)
    refused = sum(worker.refused for worker in stats)
    increments = sum(worker.increments for worker in stats)
    refused_users = set[str]().union(*(worker.refused_users for worker in stats))
    purchases, buyers = shop.sales()
    print(f"\nrequests: {served + refused:,} ({served:,} served, {refused:,} refused) in {elapsed:.2f} s")
    print(
        f"throughput: {(served + refused) / elapsed:,.0f} requests/s, "
        f"{increments / elapsed:,.0f} increments/s ({increments:,} increments)"
    )
    print(
        f"credit: {len(refused_users):,} actors refused at least once; {buyers:,} bought "
        f"{purchases:,} top-ups ({format_dollars(purchases * TOP_UP)})"
    )
    alarm_text = ", ".join(f"{count:,} {kind}" for kind, count in sorted(alarms.by_kind.items()))
    print(f"alarms: {alarm_text or 'none'}")

    _print_usage_types(service, limit=10)
    _print_top_actors(service, population, limit=10)

    after = _ledger_state(service)
    global_total = after.global_usage["total"]
    print(f"\nglobal total: {format_dollars(global_total)} ({global_total:,} µ¢)")
    if after.month != before.month:
        print(
            f"ledger check skipped: the month changed during the run ({before.month} -> {after.month}), "
            "and each month is kept apart"
        )
        return 0
    if not before.empty:
        run_total = global_total - before.global_usage["total"]
        print(
            f"this run added {format_dollars(run_total)} ({run_total:,} µ¢); the month now holds "
            f"{after.users:,} users, {after.increments:,} increments"
        )
    problems = _ledger_check(before, after, cost_map, increments)
    if problems:
        for problem in problems:
            print(f"ledger check FAILED: {problem}", file=sys.stderr)
        return 1
    if before.empty:
        print(
            f"ledger check: all {increments:,} increments counted; every cost and the global total equal "
            "units x price recomputed with Decimal, to the µ¢"
        )
    else:
        print(
            f"ledger check: all {increments:,} increments counted (this run's); what this run added to "
            "every cost and to the global total equals units x price recomputed with Decimal, within "
            "the rounding of the reported totals (< 1 µ¢)"
        )
    return 0


# --------------------------------------------------------------------------------------------
# usagemeter report
# --------------------------------------------------------------------------------------------


def _usage_records(usage: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """The per-type records ``{"<type>": {"units", "cost", "count"}}`` of a usage dict (no "total")."""
    return {
        usage_type: {"units": record["units"], "cost": record["cost"], "count": record["count"]}
        for usage_type, record in usage.items()
        if usage_type != "total" and isinstance(record, Mapping)
    }


def _month_report(service: MeteringService, month: str, top: int | None) -> dict[str, Any]:
    """What the open store holds for ``month``: the per-type totals and the users by spend.

    For the current month the per-type totals are ``get_global_usage()`` (exact sums, each rounded
    once); for another month they are the sums of every user's ``get_actor_month_usage_details``
    (each user's figure rounded to the µ¢ before summing), since the global aggregate covers only
    the current month.
    """
    current = month == _current_month()
    actors = service.get_actors_usage(month)
    if current:
        global_usage = service.get_global_usage()
        usage = _usage_records(global_usage)
        total: int = global_usage["total"]
        source = "get_global_usage"
    else:
        usage = {}
        for user_id, _total, _count in actors:
            details = service.get_actor_month_usage_details(Actor(user_id), month)
            for usage_type, record in _usage_records(details["usage"]).items():
                summed = usage.setdefault(usage_type, {"units": 0, "cost": 0, "count": 0})
                for key in ("units", "cost", "count"):
                    summed[key] += record[key]
        total = sum(user_total for _, user_total, _ in actors)
        source = "sum of get_actor_month_usage_details"
    shown = actors if top is None else actors[:top]
    return {
        "month": month,
        "users": len(actors),
        "increments": sum(count for _, _, count in actors),
        "total": total,
        "per_type_totals": source,
        "usage": dict(sorted(usage.items(), key=lambda item: (-item[1]["cost"], item[0]))),
        "top_actors": [
            {"user_id": user_id, "total": spent, "count": count} for user_id, spent, count in shown
        ],
    }


def _actor_report(service: MeteringService, user_id: str, month: str) -> dict[str, Any]:
    """One user's usage in ``month``: totals per usage type and per app."""
    details = service.get_actor_month_usage_details(Actor(user_id), month)
    usage = _usage_records(details["usage"])
    return {
        "month": month,
        "user_id": user_id,
        "total": details["usage"]["total"],
        "increments": sum(record["count"] for record in usage.values()),
        "usage": dict(sorted(usage.items(), key=lambda item: (-item[1]["cost"], item[0]))),
        "app_totals": {
            app: {"total": record["total"], "count": record["count"]}
            for app, record in details["app_totals"].items()
        },
    }


def _print_usage_table(title: str, usage: Mapping[str, Mapping[str, int]]) -> None:
    """Prints per-type records (already sorted) under ``title``."""
    print(f"\n{title}")
    rows = [
        [usage_type, f"{record['units']:,}", f"{record['count']:,}", format_dollars(record["cost"])]
        for usage_type, record in usage.items()
    ]
    _print_table(["usage type", "units", "increments", "cost"], rows, [False, True, True, True])


def _print_month_report(document: Mapping[str, Any]) -> None:
    """Prints a ``_month_report`` as text: totals, per-type table, top users."""
    total = document["total"]
    print(
        f"{document['month']}: {document['users']:,} users, {document['increments']:,} increments, "
        f"total {format_dollars(total)} ({total:,} µ¢)"
    )
    if not document["users"]:
        print("no usage recorded in this month")
        return
    usage = document["usage"]
    how = "" if document["per_type_totals"] == "get_global_usage" else "; sums of the per-user figures"
    _print_usage_table(f"Usage types by cost ({_count(len(usage), 'type')}{how})", usage)
    shown = document["top_actors"]
    print(f"\nTop users by spend ({len(shown):,} of {document['users']:,})")
    rows = [
        [row["user_id"], f"{row['count']:,}", format_dollars(row["total"]), f"{row['total']:,}"]
        for row in shown
    ]
    _print_table(["user", "increments", "spent", "µ¢"], rows, [False, True, True, True])


def _print_actor_report(document: Mapping[str, Any]) -> None:
    """Prints an ``_actor_report`` as text: totals, per-type table, per-app table."""
    total = document["total"]
    print(
        f"{document['user_id']} in {document['month']}: {document['increments']:,} increments, "
        f"total {format_dollars(total)} ({total:,} µ¢)"
    )
    if not document["usage"] and not document["app_totals"]:
        print("no usage recorded for this user in this month")
        return
    usage = document["usage"]
    _print_usage_table(f"Usage types by cost ({_count(len(usage), 'type')})", usage)
    apps = sorted(document["app_totals"].items(), key=lambda item: (-item[1]["total"], item[0]))
    print(f"\nApps ({_count(len(apps), 'app')})")
    rows = [[app, f"{record['count']:,}", format_dollars(record["total"])] for app, record in apps]
    _print_table(["app", "increments", "total"], rows, [False, True, True])


def run_report(store: str, month: str | None, actor: str | None, as_json: bool, top: int | None) -> int:
    """``usagemeter report``: prints what the store at ``store`` holds for ``month`` (default: now).

    Without ``actor``: the users, increments and total of the month, the per-type totals and the
    ``top`` users by spend (default 10 in text, all of them in JSON; 0: all). With ``actor`` (a user
    id): that user's usage per type and per app. ``as_json`` prints one JSON document (money as
    integer µ¢). Never creates a store: a path without one is an error. Returns the exit code: 0, or
    1 (message on stderr) if the store is missing, locked by another process or cannot be read.
    """
    path = Path(store)
    problem = _store_problem(path, need_manifest=True)
    if problem is not None:
        print(f"usagemeter report: {problem}", file=sys.stderr)
        return 1
    month = month or _current_month()
    if top is None:
        limit = None if as_json else 10
    else:
        limit = top or None  # 0: every user
    try:
        with _open_service(store, detect_backend(path)) as service:
            backend = service.store_backend
            if actor is None:
                document = _month_report(service, month, limit)
            else:
                document = _actor_report(service, actor, month)
    except StoreError as error:
        print(f"usagemeter report: {_store_error_message(error, store)}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"usagemeter report: {error}", file=sys.stderr)
        return 1
    document = {"store": store, "backend": backend, **document}
    if as_json:
        json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    print(f"store {store} ({backend})")
    if actor is None:
        _print_month_report(document)
    else:
        _print_actor_report(document)
    return 0


# --------------------------------------------------------------------------------------------
# usagemeter store verify / recover
# --------------------------------------------------------------------------------------------


def _describe(value: object) -> str:
    """A summary value as text: ints with separators, lists as their count and items."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
        return f"{len(items):,}" + (f" ({', '.join(str(item) for item in items)})" if items else "")
    return str(value)


def _run_store_tool(command: str, store: str, tool: Callable[[str], dict[str, Any]]) -> dict[str, Any] | None:
    """Runs ``tool(store)`` for ``usagemeter store COMMAND``: its result, or None after printing why not."""
    problem = _store_problem(Path(store), need_manifest=False)
    if problem is not None:
        print(f"usagemeter store {command}: {problem}", file=sys.stderr)
        return None
    try:
        return tool(store)
    except StoreError as error:
        print(f"usagemeter store {command}: {store}: {_store_error_message(error, store)}", file=sys.stderr)
    except OSError as error:
        print(f"usagemeter store {command}: {store}: {error}", file=sys.stderr)
    return None


def run_store_verify(store: str) -> int:
    """``usagemeter store verify``: checks every record of the store at ``store``.

    Prints a summary (backend, format version, generation, records, users, user months); returns 0;
    returns 1 with the error on stderr if the store is missing, corrupted, too new or locked.
    """
    summary = _run_store_tool("verify", store, verify_store)
    if summary is None:
        return 1
    print(f"{store}: ok, every record verified")
    shown = ("backend", "format_version", "generation", "records", "users", "user_months")
    for key in shown:
        print(f"  {key.replace('_', ' ')}: {_describe(summary.get(key, '?'))}")
    for key, value in summary.items():  # anything else the library reports
        if key not in shown:
            print(f"  {key.replace('_', ' ')}: {_describe(value)}")
    return 0


def run_store_recover(store: str) -> int:
    """``usagemeter store recover``: keeps every record of ``store`` whose checksum holds.

    Prints how many records were kept and each one dropped; returns 0, or 1 with the error on
    stderr if the store is missing, locked or cannot be rewritten.
    """
    result = _run_store_tool("recover", store, recover_store)
    if result is None:
        return 1
    dropped = list(result["dropped"])
    print(f"{store}: kept {_count(result['kept'], 'record')}, dropped {_count(len(dropped), 'record')}")
    for description in dropped:
        print(f"  dropped: {description}")
    return 0


# --------------------------------------------------------------------------------------------
# usagemeter costmap check / show
# --------------------------------------------------------------------------------------------


def run_costmap_check(paths: Sequence[str]) -> int:
    """``usagemeter costmap check``: loads ``paths`` together, reports counts and rounded prices.

    Returns 0 if the files load together, 1 (message on stderr) if they do not.
    """
    try:
        combined = CostMap.from_files(*paths)
        # Loading each file again alone gives its entry count whatever name the loader records as
        # the source; any error a file has alone, it also has in the combined load above.
        counts = [len(CostMap.from_files(path)) for path in paths]
    except (CostMapError, OSError) as error:
        print(f"usagemeter costmap check: {error}", file=sys.stderr)
        return 1
    for path, count in zip(paths, counts, strict=True):
        print(f"{path}: {_count(count, 'entry')}")
    print(f"ok: {_count(len(combined), 'entry')} in {_count(len(paths), 'file')}")
    rounded = combined.rounded_prices()
    if rounded:
        prices = _count(len(rounded), "price")
        print(f"{prices} with more than 12 fractional digits, rounded half-even at load:")
        for usage_type, source, original_text, rounded_price in rounded:
            print(f"  {usage_type} ({source}): {original_text} -> {_plain_decimal(rounded_price)} µ¢/unit")
    return 0


def run_costmap_show(prefix: str) -> int:
    """``usagemeter costmap show``: lists the default prices whose key starts with ``prefix``."""
    cost_map = CostMap.default()
    entries = sorted((key, price) for key, price in cost_map.items() if key.startswith(prefix))
    if entries:
        rows = [[key, _plain_decimal(price), cost_map.source_of(key)] for key, price in entries]
        _print_table(["usage type", "µ¢/unit", "source"], rows, [False, True, False])
    matching = f" matching {prefix!r}" if prefix else ""
    print(f"{len(entries):,} of {_count(len(cost_map), 'entry')}{matching}")
    return 0


# --------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", "").replace(",", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _month_argument(text: str) -> str:
    """An argparse type: a month ``YYYY-MM``."""
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", text):
        raise argparse.ArgumentTypeError(f"not a month YYYY-MM: {text!r}")
    return text


def _non_empty(text: str) -> str:
    """An argparse type: a non-empty string."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _store_argument(text: str) -> str | None:
    """An argparse type: a store directory, or ``none`` (memory only) -> None."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty (use 'none' for memory only)")
    return None if text == "none" else text


def build_parser() -> argparse.ArgumentParser:
    """The ``usagemeter`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="usagemeter",
        description="Exact, thread-safe usage metering and credits: demo, reports, store and cost-map tools.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="simulate an AI API server metering thousands of actors",
        description="Simulate an AI API server: worker threads serve requests from Zipf-skewed actors, "
        "check their credit, book real cost-map usage types, then print throughput and usage tables. "
        f"The usage persists to a store ({DEFAULT_STORE} unless --store says otherwise) and the next "
        "run continues from it.",
    )
    demo.add_argument("--actors", type=_at_least(1), default=5_000, help="distinct actors (default 5,000)")
    demo.add_argument("--threads", type=_at_least(1), default=4, help="worker threads (default 4)")
    demo.add_argument(
        "--requests", type=_at_least(0), default=200_000, help="total requests (default 200,000)"
    )
    demo.add_argument("--seed", type=int, default=42, help="random seed for actors and traffic (default 42)")
    demo.add_argument(
        "--store",
        type=_store_argument,
        default=DEFAULT_STORE,
        metavar="PATH",
        help=f"store directory, created if missing (default {DEFAULT_STORE}); 'none' keeps usage in "
        "memory only",
    )
    demo.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="store backend (default: the existing store's, else the library default)",
    )

    report = commands.add_parser(
        "report",
        help="print what a store holds for a month",
        description="Open the store at PATH and print, for a month (default: the current UTC month), "
        "its users, increments and total, the per-type totals and the top users by spend; with --actor, "
        "one user's usage per type and per app. Money is exact: dollars to the µ¢, integer µ¢ in "
        "--json. Exit 1 with the error on stderr if there is no store at PATH or another process "
        "holds it; nothing is ever created.",
    )
    report.add_argument("--store", required=True, metavar="PATH", help="store directory")
    report.add_argument(
        "--month",
        type=_month_argument,
        metavar="YYYY-MM",
        help="month to report (default: current UTC month)",
    )
    report.add_argument("--actor", type=_non_empty, metavar="ID", help="report this user id only")
    report.add_argument(
        "--top",
        type=_at_least(0),
        metavar="N",
        help="users listed by spend (default 10 as text, all in --json; 0: all)",
    )
    report.add_argument("--json", action="store_true", help="print one JSON document (money in integer µ¢)")

    store = commands.add_parser("store", help="verify or recover a store")
    store_commands = store.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    verify = store_commands.add_parser(
        "verify",
        help="check every record of a store",
        description="Check the store at PATH (format version, every record's checksum, the record count "
        "against the manifest) and print a summary. Exit 1 with the error on stderr if it is missing, "
        "corrupted, written by a newer version, or held by another process.",
    )
    verify.add_argument("path", metavar="PATH", help="store directory")
    recover = store_commands.add_parser(
        "recover",
        help="keep every record whose checksum holds, drop the others",
        description="Rewrite the store at PATH keeping every record whose checksum holds; print how many "
        "were kept and each record dropped. Exit 1 with the error on stderr if it cannot.",
    )
    recover.add_argument("path", metavar="PATH", help="store directory")

    costmap = commands.add_parser("costmap", help="check or list cost maps")
    costmap_commands = costmap.add_subparsers(dest="costmap_command", required=True, metavar="COMMAND")
    check = costmap_commands.add_parser(
        "check",
        help="validate cost-map JSON files loaded together",
        description="Load the files together as CostMap.from_files does; print the entries per file "
        "and any price rounded at load. Exit 1 with the error on stderr if they do not load.",
    )
    check.add_argument("paths", nargs="+", metavar="PATH", help="cost-map JSON file")
    show = costmap_commands.add_parser(
        "show",
        help="list the shipped prices",
        description="List the entries of CostMap.default() (exact µ¢ per unit and source file), "
        "optionally only those whose key starts with PREFIX.",
    )
    show.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="usage-type key prefix")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    """Runs the command ``args`` names; returns its exit code."""
    if args.command == "demo":
        return run_demo(args.actors, args.threads, args.requests, args.seed, args.store, args.backend)
    if args.command == "report":
        return run_report(args.store, args.month, args.actor, args.json, args.top)
    if args.command == "store":
        if args.store_command == "verify":
            return run_store_verify(args.path)
        return run_store_recover(args.path)
    if args.costmap_command == "check":
        return run_costmap_check(args.paths)
    return run_costmap_show(args.prefix)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``usagemeter`` command line on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
