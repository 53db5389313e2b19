"""Generate `costmaps/<provider>.json` from the published reference prices.

Run from the repository root: `python scripts/generate_costmaps.py [PATH_TO_REFERENCE_JSON]`
(default `../shared/data/reference-costmaps.json`). The output is committed: the build, the tests
and the package never need the reference file.

Prices are copied as exact decimal strings (never through a float) and the provider grouping is
kept, one file per provider. Two entries are left out on purpose: `openrouter/auto` is a router
that picks a model at request time, and the source system lists it with a negative placeholder
price (-100000000 µ¢ per token for prompt and completion) meaning "no fixed price". A negative
price is never a valid charge (the loader refuses one), so those keys are not shipped; callers
that route through `openrouter/auto` must pass a cost override with the price of the model that
was actually used.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path

EXCLUDED_PLACEHOLDERS = {
    "openrouter:openrouter/auto:prompt",
    "openrouter:openrouter/auto:completion",
}


def generate(reference: Path, out_dir: Path) -> dict[str, int]:
    """Write one JSON object per provider into `out_dir`; return the entry count per file."""
    providers = json.loads(reference.read_text(encoding="utf-8"))
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    for provider, prices in sorted(providers.items()):
        kept = {}
        for usage_type, price in prices.items():
            if usage_type in EXCLUDED_PLACEHOLDERS:
                if Decimal(price) >= 0:
                    raise SystemExit(f"{usage_type} is no longer a negative placeholder: review it")
                continue
            if Decimal(price) < 0:
                raise SystemExit(f"unexpected negative price for {usage_type}: {price}")
            kept[usage_type] = str(price)
        target = out_dir / f"{provider}.json"
        target.write_text(json.dumps(kept, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written[target.name] = len(kept)
    return written


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    reference = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent / "shared/data/reference-costmaps.json"
    )
    written = generate(reference, root / "costmaps")
    for name, count in written.items():
        print(f"{name}: {count} prices")
    print(f"total: {sum(written.values())} prices in {len(written)} files")


if __name__ == "__main__":
    main()
