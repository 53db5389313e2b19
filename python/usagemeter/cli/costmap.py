"""``usagemeter costmap check PATH...`` validates cost-map files; ``costmap show [PREFIX]`` lists
the shipped prices. Prices are ``decimal.Decimal`` µ¢ per unit, printed digit for digit.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import PurePath

from usagemeter import CostMap, CostMapError
from usagemeter.cli.output import Printer, count, make_table, plain_decimal

__all__ = ["run_costmap_check", "run_costmap_show"]


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
    out = Printer(sys.stdout)
    for path, entries in zip(paths, counts, strict=True):
        out.print(f"{path}: {count(entries, 'entry')}")
    out.print(f"ok: {count(len(combined), 'entry')} in {count(len(paths), 'file')}")
    rounded = combined.rounded_prices()
    if rounded:
        out.print(
            f"{count(len(rounded), 'price')} with more than 12 fractional digits, rounded half-even at load:"
        )
        for usage_type, source, original_text, rounded_price in rounded:
            out.print(f"  {usage_type} ({source}):")
            out.print(f"    {original_text} -> {plain_decimal(rounded_price)} µ¢/unit")
    return 0


def run_costmap_show(prefix: str) -> int:
    """``usagemeter costmap show``: lists the default prices whose key starts with ``prefix``.

    The source column names the shipped file without its ``.json`` suffix (every shipped file has
    it): with it, the longest key, price and file name do not fit 100 columns side by side.
    """
    cost_map = CostMap.default()
    entries = sorted((key, price) for key, price in cost_map.items() if key.startswith(prefix))
    out = Printer(sys.stdout)
    if entries:
        table = make_table(["usage type", "µ¢/unit", "source"], [False, True, False])
        for key, price in entries:
            table.add_row(key, plain_decimal(price), PurePath(cost_map.source_of(key)).stem)
        out.print(table)
    matching = f" matching {prefix!r}" if prefix else ""
    out.print(f"{len(entries):,} of {count(len(cost_map), 'entry')}{matching}")
    return 0
