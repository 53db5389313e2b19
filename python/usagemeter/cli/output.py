"""What every command prints with: a 100-column rich console, money, counts and tables.

Money is never a float here: an amount arrives as integer µ¢ and is formatted with integer
arithmetic. Human output shows dollars at the cent, rounded half up (``$1.23``); ``exact=True``
shows every µ¢ (``$1.23456789``). JSON output is the commands' own business (integer µ¢).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from decimal import Decimal
from typing import TextIO

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table

from usagemeter import MICROCENTS_PER_DOLLAR

__all__ = [
    "MICROCENTS_PER_CENT",
    "WIDTH",
    "Printer",
    "count",
    "format_dollars",
    "make_console",
    "make_table",
    "plain_decimal",
]

# Every line a command prints fits this many columns (a terminal narrower than this gets its own
# width): rich wraps text and shrinks tables to it, and the tests check the line lengths.
WIDTH = 100
MICROCENTS_PER_CENT = MICROCENTS_PER_DOLLAR // 100

# Spaces at the end of a line (before any colour codes): rich leaves them where it wraps a line
# and after a left-aligned last table column.
_TRAILING_SPACES = re.compile(r" +(?=(?:\x1b\[[0-9;]*m)*$)", re.M)


def make_console(file: TextIO) -> Console:
    """A rich console writing to ``file``, at most WIDTH columns wide.

    Markup, highlighting and emoji codes are off: user ids, usage types and paths are data and are
    printed as they are (``[bold]`` in a user id stays ``[bold]``). Colours only on a terminal.
    """
    width = WIDTH
    if file.isatty():
        width = min(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns)
    return Console(file=file, width=width, markup=False, highlight=False, emoji=False)


class Printer:
    """Prints text and tables to a file through a ``make_console`` console, minus trailing spaces."""

    def __init__(self, file: TextIO) -> None:
        """A printer writing to ``file`` (a terminal gets colours and at most its own width)."""
        self.console = make_console(file)

    def print(self, *objects: RenderableType, wrap: bool = True) -> None:
        """Prints ``objects`` as ``Console.print`` does, wrapped to the console's width.

        ``wrap=False`` prints a line as it is, however long (text to be copied whole).
        """
        with self.console.capture() as captured:
            self.console.print(*objects, soft_wrap=not wrap)
        self.console.file.write(_TRAILING_SPACES.sub("", captured.get()))

    def flush(self) -> None:
        """Flushes the file."""
        self.console.file.flush()


def format_dollars(microcents: int, *, exact: bool = False) -> str:
    """An integer amount of µ¢ as dollars: ``123456789`` -> ``"$1.23"``, or ``"$1.23456789"`` exact.

    The default rounds to the cent, half up (half away from zero for a negative amount), with
    integer arithmetic only; ``exact=True`` shows every µ¢ (8 decimal places), nothing rounded.
    """
    magnitude = abs(microcents)
    if exact:
        dollars, rest = divmod(magnitude, MICROCENTS_PER_DOLLAR)
        sign = "-" if microcents < 0 else ""
        return f"{sign}${dollars:,}.{rest:08d}"
    cents, rest = divmod(magnitude, MICROCENTS_PER_CENT)
    if 2 * rest >= MICROCENTS_PER_CENT:
        cents += 1
    dollars, cents = divmod(cents, 100)
    sign = "-" if microcents < 0 and (dollars or cents) else ""  # never "-$0.00"
    return f"{sign}${dollars:,}.{cents:02d}"


def count(number: int, noun: str) -> str:
    """``count(1, "user")`` -> ``"1 user"``, ``count(1105, "entry")`` -> ``"1,105 entries"``."""
    if number == 1:
        return f"1 {noun}"
    # Every noun the commands count is regular: "entry" -> "entries", "key" -> "keys", "user" -> "users".
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        plural = noun[:-1] + "ies"
    else:
        plural = noun + "s"
    return f"{number:,} {plural}"


def plain_decimal(value: Decimal) -> str:
    """A Decimal written out in full, never in exponent form (``1E-7`` -> ``0.0000001``)."""
    return format(value, "f")


def make_table(headers: Sequence[str], right: Sequence[bool]) -> Table:
    """An empty table with ``headers``; ``right[i]`` right-aligns column i (numbers and money).

    Plain layout (a header, a rule, then the rows; columns at least two spaces apart), so the
    output stays readable in a log and easy to grep. A cell too wide for the console wraps rather
    than being cut, so no value is ever shown partly.
    """
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for header, align_right in zip(headers, right, strict=True):
        table.add_column(header, justify="right" if align_right else "left", overflow="fold")
    return table
