"""``usagemeter costmap check PATH...`` validates cost-map files; ``costmap show [PREFIX]`` lists
the shipped prices; ``costmap diff OLD NEW`` shows what a new price drop changes. Prices are
``decimal.Decimal`` µ¢ per unit, printed digit for digit.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path, PurePath
from typing import Any

from usagemeter import CostMap, CostMapError
from usagemeter.cli.output import Printer, count, make_table, plain_decimal

__all__ = ["costmap_diff", "load_side", "run_costmap_check", "run_costmap_diff", "run_costmap_show"]


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
            source = PurePath(cost_map.source_of(key)).stem
            # A table's price shown is its first base price; the table prices each request.
            table.add_row(
                key, plain_decimal(price), f"{source} (table)" if cost_map.is_table(key) else source
            )
        out.print(table)
    matching = f" matching {prefix!r}" if prefix else ""
    out.print(f"{len(entries):,} of {count(len(cost_map), 'entry')}{matching}")
    return 0


def load_side(where: str) -> CostMap:
    """One side of a diff: ``default`` (the shipped maps), a cost-map JSON file, or a directory
    whose ``*.json`` files load together (a ``costmaps/`` folder). ``CostMapError`` or
    ``OSError`` when it does not load."""
    if where == "default":
        return CostMap.default()
    path = Path(where)
    if path.is_dir():
        files = sorted(str(file) for file in path.glob("*.json"))
        if not files:
            raise OSError(f"{where}: a directory with no *.json cost-map file")
        return CostMap.from_files(*files)
    return CostMap.from_files(where)


def _change(old: Decimal, new: Decimal) -> str:
    """The relative change of a price, as a signed percentage (exact decimals, no float)."""
    if old == 0:
        return "from 0" if new != 0 else "0%"
    percent = (new - old) * 100 / old
    return f"{percent:+.1f}%"


def costmap_diff(old: CostMap, new: CostMap, prefix: str = "") -> dict[str, Any]:
    """What changes from ``old`` to ``new`` among the keys starting with ``prefix``:
    ``{"added": {key: price}, "removed": {key: price}, "changed": {key: {"old", "new",
    "change"}}, "unchanged": n}``, prices as exact decimal strings (µ¢ per unit); ``changed`` is
    ordered by the size of the relative change, largest first."""
    before = {key: price for key, price in old.items() if key.startswith(prefix)}
    after = {key: price for key, price in new.items() if key.startswith(prefix)}
    changed = [
        (key, before[key], after[key]) for key in before.keys() & after.keys() if before[key] != after[key]
    ]

    def size(item: tuple[str, Decimal, Decimal]) -> tuple[Decimal, str]:
        key, was, now = item
        relative = abs(now - was) / was if was else Decimal("Infinity")
        return (-relative, key)

    return {
        "added": {key: plain_decimal(after[key]) for key in sorted(after.keys() - before.keys())},
        "removed": {key: plain_decimal(before[key]) for key in sorted(before.keys() - after.keys())},
        "changed": {
            key: {"old": plain_decimal(was), "new": plain_decimal(now), "change": _change(was, now)}
            for key, was, now in sorted(changed, key=size)
        },
        "unchanged": len(before.keys() & after.keys()) - len(changed),
    }


def run_costmap_diff(old: str, new: str, prefix: str, as_json: bool, exit_code: bool) -> int:
    """``usagemeter costmap diff OLD NEW``: the prices added, removed and changed (old -> new, by
    how much), largest change first. Returns 0, or with ``exit_code`` 1 when anything differs (as
    ``git diff --exit-code``); 2 with the error on stderr when a side does not load."""
    try:
        sides = load_side(old), load_side(new)
    except (CostMapError, OSError) as error:
        print(f"usagemeter costmap diff: {error}", file=sys.stderr)
        return 2
    diff = costmap_diff(*sides, prefix=prefix)
    differs = bool(diff["added"] or diff["removed"] or diff["changed"])
    if as_json:
        json.dump(diff, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return 1 if exit_code and differs else 0
    out = Printer(sys.stdout)
    if diff["changed"]:
        table = make_table(["changed", "old µ¢/unit", "new µ¢/unit", "change"], [False, True, True, True])
        for key, prices in diff["changed"].items():
            table.add_row(key, prices["old"], prices["new"], prices["change"])
        out.print(table)
    for title in ("added", "removed"):
        if diff[title]:
            table = make_table([title, "µ¢/unit"], [False, True])
            for key, price in diff[title].items():
                table.add_row(key, price)
            out.print(table)
    out.print(
        f"{count(len(diff['changed']), 'price')} changed, {len(diff['added']):,} added, "
        f"{len(diff['removed']):,} removed, {diff['unchanged']:,} unchanged"
    )
    return 1 if exit_code and differs else 0
