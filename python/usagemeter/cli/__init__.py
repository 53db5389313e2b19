"""The ``usagemeter`` command line: a load demo, store tools, reports and cost-map tools.

``usagemeter demo`` simulates an AI API server metering thousands of actors from several threads,
persisting to ``./usagemeter-data`` (a second run continues from it);
``usagemeter report --store PATH`` prints what a store holds for a month (top users with their
balances, per-type totals, or one user's details); ``usagemeter store verify PATH`` checks every
record of a store and ``usagemeter store recover PATH`` keeps the records whose checksum holds;
``usagemeter costmap check PATH...`` validates cost-map files; ``usagemeter costmap show [PREFIX]``
lists the shipped prices. Everything here uses only the public API of the ``usagemeter`` package.

This module holds the argument parser and ``main``; each command lives in its own module
(``demo``, ``report``, ``store``, ``costmap``), and ``output`` is what they print with (rich, at
most 100 columns). ``import usagemeter`` imports none of it: the library never needs rich.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from collections.abc import Callable, Sequence

from usagemeter import __version__
from usagemeter.cli.costmap import run_costmap_check, run_costmap_show
from usagemeter.cli.demo import run_demo
from usagemeter.cli.report import JSON_SHAPE, run_report
from usagemeter.cli.store import BACKENDS, DEFAULT_STORE, run_store_recover, run_store_verify

__all__ = ["build_parser", "main"]


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
        "run continues from it.",
    )
    demo.add_argument("--actors", type=_at_least(1), default=5_000, help="distinct actors (default 5,000)")
    demo.add_argument("--threads", type=_at_least(1), default=4, help="worker threads (default 4)")
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
        help=f"store directory, created if missing (default {DEFAULT_STORE}); 'none' keeps usage in "
        "memory only",
    )
    demo.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="store backend (default: the existing store's, else the library default)",
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
            "user id. Exit 1 with the error on stderr if there is no store at PATH or another process "
            "holds it; nothing is ever created.",
            width=_HELP_WIDTH,
        ),
        epilog=f"--json prints one document of this shape (money in integer µ¢):\n{JSON_SHAPE}",
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
    report.add_argument("--exact", action="store_true", help=_EXACT_HELP + " (--json is always exact)")

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
        return run_demo(
            args.actors, args.threads, args.requests, args.seed, args.store, args.backend, args.exact
        )
    if args.command == "report":
        return run_report(args.store, args.month, args.actor, args.json, args.top, args.exact)
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
