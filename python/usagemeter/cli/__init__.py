"""The ``usagemeter`` command line: a load demo, store tools, reports and cost-map tools.

``usagemeter demo`` simulates an AI API server metering thousands of actors from several threads,
persisting to ``./usagemeter-data`` (a second run continues from it);
``usagemeter demo --workers N --store redis://...`` runs it as N worker processes sharing one
ledger in Redis; ``usagemeter report --store PATH|URL`` prints what a store or a shared ledger
holds for a month (top users with their balances, per-type totals, or one user's details);
``usagemeter store verify PATH`` checks every record of a store, ``usagemeter store recover PATH``
keeps the records whose checksum holds and ``usagemeter store copy SRC DST`` copies a ledger
between a store directory and Redis;
``usagemeter costmap check PATH...`` validates cost-map files; ``usagemeter costmap diff OLD NEW``
shows what a new price drop changes; ``usagemeter costmap show [PREFIX]``
lists the shipped prices. Everything here uses only the public API of the ``usagemeter`` package.

This module holds the argument parser and ``main``; each command lives in its own module
(``demo``, ``fleet`` for the demo's worker processes, ``report``, ``store``, ``costmap``), and
``output`` is what they print with (rich, at most 100 columns). ``import usagemeter`` imports
none of it: the library never needs rich.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from collections.abc import Callable, Sequence

from usagemeter import __version__
from usagemeter.cli.costmap import run_costmap_check, run_costmap_diff, run_costmap_show
from usagemeter.cli.demo import run_demo
from usagemeter.cli.fleet import run_fleet_demo
from usagemeter.cli.report import CSV_COLUMNS, JSON_SHAPE, run_report
from usagemeter.cli.store import (
    ALL_BACKENDS,
    DEFAULT_STORE,
    run_store_copy,
    run_store_recover,
    run_store_verify,
)
from usagemeter.store import is_shared_url

__all__ = ["build_parser", "main"]


COSTMAP_FORMAT = """\
The cost-map format (README, "The price model"). Each key is a usage type; each value is
  a price: µ¢ per unit, a JSON number or a decimal string ("31.25"), read exactly, never
    through a float; or
  a price table, a JSON object:
    {"price": "125",
     "tiers": [{"above": 200000,
                "count": ["gemini:gemini-2.5-pro:promptTokenCount"],
                "price": "250"}],
     "service_tiers": {"flex": "62.5", "priority": {"price": "225", "tiers": [...]}},
     "from": [{"date": "2026-01-01", "price": "130", "tiers": [...],
               "service_tiers": {...}}]}
  price          the base price (required).
  tiers          once a request has more than `above` units of the `count` types (default:
                 this type), the tier's price prices EVERY unit of this type in it; thresholds
                 increase and no tier is cheaper than the price below it. A request is one
                 batch or one usage object.
  service_tiers  a price (or {"price", "tiers"}) per service tier: batch_increment_usages(...,
                 service_tier="flex"), or the payload's own service_tier field in
                 record_usage_object. "default" and "standard" mean the base price; another
                 name the table does not list is an error naming it. A type with no
                 service_tiers ignores the name.
  from           later prices, each in force from 00:00 UTC of its date (YYYY-MM-DD,
                 increasing) on the service's clock; recorded usage is never re-priced.
Cache writes by duration are separate meters, each with its own price or table
(claude:<model>:ephemeral_5m_input_tokens and claude:<model>:ephemeral_1h_input_tokens).
A malformed table is refused at load, naming the file, the key and the reason.
"""


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


_HELP_WIDTH = 78  # argparse's own wrapping width on an 80-column terminal
_EXACT_HELP = "show money to the µ¢ ($1.23456789) instead of rounded half up to the cent ($1.23)"


def build_parser() -> argparse.ArgumentParser:
    """The ``usagemeter`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="usagemeter",
        description="Exact, thread-safe usage metering and credits: demo, reports, store and cost-map tools.",
    )
    parser.add_argument("--version", action="version", version=f"usagemeter {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="simulate an AI API server metering thousands of actors",
        description="Simulate an AI API server: worker threads serve requests from Zipf-skewed actors, "
        "check their credit, book real cost-map usage types, then print throughput and usage tables. "
        f"The usage persists to a store ({DEFAULT_STORE} unless --store says otherwise) and the next "
        "run continues from it. With --workers N and --store redis://HOST:PORT/DB the requests are "
        "served by N worker processes sharing that one ledger, which also race for the last credits "
        "of a few small budgets with try_increment_usage; one combined report read back from Redis "
        "then shows the fleet's ledger and that every budget was honoured.",
    )
    demo.add_argument("--actors", type=_at_least(1), default=5_000, help="distinct actors (default 5,000)")
    demo.add_argument(
        "--threads",
        type=_at_least(1),
        default=4,
        help="worker threads (default 4; per process with --workers)",
    )
    demo.add_argument(
        "--workers",
        type=_at_least(1),
        metavar="N",
        help="serve the requests from N worker processes sharing one ledger: needs --store redis://... "
        "(default: one process)",
    )
    demo.add_argument(
        "--requests", type=_at_least(0), default=200_000, help="total requests (default 200,000)"
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=42,
        help="random seed (default 42). It fixes the workload: the actors, their plans, and every "
        "request (actor, kind, amounts), whatever --threads is. It does not fix which requests are "
        "refused, nor the totals, when several threads run: they serve the requests interleaved "
        "differently on every run, and a refusal depends on the actor's balance at that moment. "
        "With --threads 1 on a new store (or --store none) a run repeats exactly, timings aside.",
    )
    demo.add_argument(
        "--store",
        type=_store_argument,
        default=DEFAULT_STORE,
        metavar="PATH",
        help=f"store directory, created if missing (default {DEFAULT_STORE}), or a shared ledger's URL "
        "(redis://HOST:PORT/DB, rediss://, unix://); 'none' keeps usage in memory only",
    )
    demo.add_argument(
        "--backend",
        choices=ALL_BACKENDS,
        default=None,
        help="store backend (default: the existing store's, else the library default; redis for a "
        "URL; redis-cluster for a Redis Cluster's comma-separated seed URLs)",
    )
    demo.add_argument("--exact", action="store_true", help=_EXACT_HELP)

    report = commands.add_parser(
        "report",
        help="print what a store holds for a month",
        # Raw formatting keeps the JSON shape's lines; the description is wrapped here instead.
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Open the store at PATH and print, for a month (default: the current UTC month), "
            "its users, increments and total, the per-type totals and the top users by spend with their "
            "plan and balances; with --actor, one user's usage per type and per app, plan and balances. "
            "Money is dollars rounded to the cent (--exact: to the µ¢), integer µ¢ in --json. A store "
            "keeps no emails or plan choices, so the plan shown is what the built-in rules give a bare "
            "user id. PATH may also be a fleet's shared ledger (redis://HOST:PORT/DB, rediss://, "
            "unix://; --backend redis-cluster for a cluster's comma-separated seeds): the report opens "
            "it as one more worker, which loads every user, so it reads while servers run and meter, "
            "as of that moment. Exit 1 with the error on stderr if there is no store at PATH, another "
            "process holds it or Redis does not answer; nothing is ever created.",
            width=_HELP_WIDTH,
        ),
        epilog=f"--json prints one document of this shape (money in integer µ¢):\n{JSON_SHAPE}",
    )
    report.add_argument(
        "--store", required=True, metavar="PATH", help="store directory, or a shared ledger's redis:// URL"
    )
    report.add_argument(
        "--backend",
        choices=ALL_BACKENDS,
        default=None,
        help="store backend (default: the directory's store's; redis for a URL)",
    )
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
    formats = report.add_mutually_exclusive_group()
    formats.add_argument(
        "--format",
        choices=("text", "json", "csv"),
        default=None,
        help="text (default); json: one document (money in integer µ¢), as --json; csv: the month, one "
        f"row per (user, day, usage type), columns {','.join(CSV_COLUMNS)} (money in µ¢; rows with an "
        "empty date hold figures loaded from a store that kept no per-day figures)",
    )
    formats.add_argument("--json", action="store_true", help="print one JSON document (money in integer µ¢)")
    report.add_argument(
        "--by-day", action="store_true", help="add the month per UTC day (the user's days with --actor)"
    )
    report.add_argument("--exact", action="store_true", help=_EXACT_HELP + " (--json is always exact)")

    store = commands.add_parser("store", help="verify, recover or copy a store")
    store_commands = store.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    verify = store_commands.add_parser(
        "verify",
        help="check every record of a store",
        description="Check the store at PATH (format version, every record's checksum, the record count "
        "against the manifest) and print a summary. Exit 1 with the error on stderr if it is missing, "
        "corrupted, written by a newer version, or held by another process. A directory only: a "
        "shared ledger's URL (redis://...) is refused; `usagemeter report --store URL` opens one, which "
        "loads every user.",
    )
    verify.add_argument("path", metavar="PATH", help="store directory")
    recover = store_commands.add_parser(
        "recover",
        help="keep every record whose checksum holds, drop the others",
        description="Rewrite the store at PATH keeping every record whose checksum holds; print how many "
        "were kept and each record dropped. Exit 1 with the error on stderr if it cannot. A directory "
        "only: a shared ledger's URL (redis://...) is refused.",
    )
    recover.add_argument("path", metavar="PATH", help="store directory")
    copy = store_commands.add_parser(
        "copy",
        help="copy a ledger into a new store: a directory into Redis, or back",
        description="Copy every user of the store at SRC (a directory, or a shared ledger's URL "
        "redis://HOST:PORT/DB) into a new store at DST (a directory with no store, or an empty Redis "
        "database), verifying every record read; print how many users and user months were copied. "
        "Stop the servers writing to SRC first: a copy holds what SRC held when it was read. Exit 1 "
        "with the error on stderr, and DST untouched, if SRC is missing, locked, damaged or holds no "
        "users (a copy of nothing is a mistake: a wrong database number, a flushed Redis), or DST is "
        "not new.",
    )
    copy.add_argument("source", metavar="SRC", help="store directory or redis:// URL to copy from")
    copy.add_argument("destination", metavar="DST", help="new store directory or empty redis:// database")
    copy.add_argument(
        "--source-backend",
        choices=ALL_BACKENDS,
        default=None,
        help="SRC's backend (default: the directory's store's; redis for a URL)",
    )
    copy.add_argument(
        "--backend",
        choices=ALL_BACKENDS,
        default=None,
        help="DST's backend (default: sled for a directory; redis for a URL)",
    )

    costmap = commands.add_parser(
        "costmap",
        help="check or list cost maps",
        description='Check or list cost maps: JSON objects {"provider:model:meter": price}.',
        epilog=COSTMAP_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    costmap_commands = costmap.add_subparsers(dest="costmap_command", required=True, metavar="COMMAND")
    check = costmap_commands.add_parser(
        "check",
        help="validate cost-map JSON files loaded together",
        description="Load the files together as CostMap.from_files does; print the entries per file "
        "and any price rounded at load. Exit 1 with the error on stderr if they do not load.",
        epilog=COSTMAP_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("paths", nargs="+", metavar="PATH", help="cost-map JSON file")
    show = costmap_commands.add_parser(
        "show",
        help="list the shipped prices",
        description="List the entries of CostMap.default() (exact µ¢ per unit and source file), "
        "optionally only those whose key starts with PREFIX.",
    )
    show.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="usage-type key prefix")
    diff = costmap_commands.add_parser(
        "diff",
        help="what a new price drop changes: prices added, removed and changed",
        description="Compare two sets of prices: each is `default` (the shipped maps), a cost-map "
        "JSON file, or a directory whose *.json files load together. Prints the prices changed "
        "(old and new µ¢ per unit, and by how much, largest change first), added and removed. "
        "Exit 0 (with --exit-code: 1 when anything differs); 2 with the error on stderr when a "
        "side does not load.",
    )
    diff.add_argument("old", metavar="OLD", help="default, a cost-map file, or a directory of them")
    diff.add_argument("new", metavar="NEW", help="default, a cost-map file, or a directory of them")
    diff.add_argument("--prefix", default="", metavar="PREFIX", help="only usage types starting with PREFIX")
    diff.add_argument("--json", action="store_true", help="print the differences as JSON")
    diff.add_argument("--exit-code", action="store_true", help="exit 1 when anything differs")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    """Runs the command ``args`` names; returns its exit code."""
    if args.command == "demo":
        if args.workers is not None:
            if args.store is None or not is_shared_url(args.store):
                print(
                    "usagemeter demo: --workers needs a shared ledger for the worker processes: "
                    "--store redis://HOST:PORT/DB (or rediss://, unix://)",
                    file=sys.stderr,
                )
                return 2
            return run_fleet_demo(
                args.workers,
                args.actors,
                args.threads,
                args.requests,
                args.seed,
                args.store,
                args.backend,
                args.exact,
            )
        return run_demo(
            args.actors, args.threads, args.requests, args.seed, args.store, args.backend, args.exact
        )
    if args.command == "report":
        return run_report(
            args.store,
            args.month,
            args.actor,
            args.json,
            args.top,
            args.exact,
            args.backend,
            by_day=args.by_day,
            output_format=args.format,
        )
    if args.command == "store":
        if args.store_command == "verify":
            return run_store_verify(args.path)
        if args.store_command == "copy":
            return run_store_copy(args.source, args.destination, args.source_backend, args.backend)
        return run_store_recover(args.path)
    if args.costmap_command == "check":
        return run_costmap_check(args.paths)
    if args.costmap_command == "diff":
        return run_costmap_diff(args.old, args.new, args.prefix, args.json, args.exit_code)
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
