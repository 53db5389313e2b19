"""The ``usagemeter`` command line: a load demo and cost-map tools.

``usagemeter demo`` simulates an AI API server metering thousands of actors from several threads;
``usagemeter costmap check PATH...`` validates cost-map files; ``usagemeter costmap show [PREFIX]``
lists the shipped prices. Everything here uses only the public API of the ``usagemeter`` package.

Money is never a float here either: costs arrive as integer µ¢ and are printed in dollars with
integer division; prices are ``decimal.Decimal``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, Inexact, localcontext
from typing import Protocol, TextIO

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
    to_microcents,
)

__all__ = ["build_parser", "format_dollars", "main", "run_costmap_check", "run_costmap_show", "run_demo"]


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


def _ledger_check(service: MeteringService, cost_map: CostMap, increments: int) -> list[str]:
    """Cross-checks the ledger against the workers and an independent Decimal recomputation.

    Returns the discrepancies (empty when the ledger is exact): every per-type cost and the global
    total must equal units x price rounded half up, and the ledger must count every increment.
    """
    problems: list[str] = []
    global_usage = service.get_global_usage()
    exact_total = Decimal(0)
    counted = 0
    # Enough digits for any µ¢ total, and Inexact trapped: this arithmetic must be exact too.
    with localcontext(prec=100) as context:
        context.traps[Inexact] = True
        for usage_type, record in global_usage.items():
            if usage_type == "total" or isinstance(record, int):
                continue
            exact_cost = record["units"] * cost_map[usage_type]
            exact_total += exact_cost
            counted += record["count"]
            if record["cost"] != _round_half_up(exact_cost):
                ledger_cost = record["cost"]
                problems.append(f"{usage_type}: ledger cost {ledger_cost} µ¢, units x price {exact_cost} µ¢")
        if global_usage["total"] != _round_half_up(exact_total):
            problems.append(f"global total {global_usage['total']} µ¢, units x price {exact_total} µ¢")
    if counted != increments:
        problems.append(f"ledger counts {counted:,} increments, the workers made {increments:,}")
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


def _print_top_actors(service: MeteringService, actors: Sequence[Actor], limit: int) -> None:
    """Prints the ``limit`` actors who spent the most this month, with what they have left."""
    spending = [
        (service.get_actor_current_month_usage_details(actor)["usage"]["total"], actor) for actor in actors
    ]
    spending.sort(key=lambda item: (-item[0], item[1].user_id))
    print("\nTop actors by spend")
    rows = []
    for spent, actor in spending[:limit]:
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


def run_demo(actor_count: int, thread_count: int, request_count: int, seed: int) -> int:
    """``usagemeter demo``: simulates an AI API server and prints throughput and usage tables.

    Returns the exit code: 0, or 1 if the ledger disagrees with the recomputation.
    """
    # The service logs every alarm as a warning; the demo counts them and prints a summary
    # instead of thousands of lines. Errors (a listener that raised) still show.
    logging.getLogger("usagemeter").setLevel(logging.ERROR)
    cost_map = CostMap.default()
    service = MeteringService(cost_map)
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
    _print_top_actors(service, population.actors, limit=10)

    global_total = service.get_global_usage()["total"]
    print(f"\nglobal total: {format_dollars(global_total)} ({global_total:,} µ¢)")
    problems = _ledger_check(service, cost_map, increments)
    if problems:
        for problem in problems:
            print(f"ledger check FAILED: {problem}", file=sys.stderr)
        return 1
    print(
        f"ledger check: all {increments:,} increments counted; every cost and the global total equal "
        "units x price recomputed with Decimal, to the µ¢"
    )
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


def build_parser() -> argparse.ArgumentParser:
    """The ``usagemeter`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="usagemeter",
        description="Exact, thread-safe usage metering and credits: demo and cost-map tools.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="simulate an AI API server metering thousands of actors",
        description="Simulate an AI API server: worker threads serve requests from Zipf-skewed actors, "
        "check their credit, book real cost-map usage types, then print throughput and usage tables.",
    )
    demo.add_argument("--actors", type=_at_least(1), default=5_000, help="distinct actors (default 5,000)")
    demo.add_argument("--threads", type=_at_least(1), default=4, help="worker threads (default 4)")
    demo.add_argument(
        "--requests", type=_at_least(0), default=200_000, help="total requests (default 200,000)"
    )
    demo.add_argument("--seed", type=int, default=42, help="random seed for actors and traffic (default 42)")

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


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``usagemeter`` command line on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return run_demo(args.actors, args.threads, args.requests, args.seed)
        if args.costmap_command == "check":
            return run_costmap_check(args.paths)
        return run_costmap_show(args.prefix)
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
