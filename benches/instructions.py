"""Instructions per call of the hot path, counted by callgrind: stable on a noisy machine.

    python benches/instructions.py [floor increment_usage ...]   # needs valgrind

For each operation, runs a loop of N calls on one warm actor under `valgrind --tool=callgrind`
for two values of N and divides the difference in instructions by the difference in calls, so
start-up and the loop's set-up cancel out. The Python loop itself is included (it is in the
floor too). `batch_increment_usages` counts per item (batches of 100 distinct types). Use a
release build (`make bench-build`, then `.venv-bench/bin/python`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

OPERATIONS = (
    "floor",
    "increment_usage",
    "try_increment_usage",
    "has_enough_credits_for",
    "meter.add",
    "batch_increment_usages",  # per item: calls / 100 batches of 100 distinct types
)
SMALL, LARGE = 20_000, 60_000

LOOP = """
import sys
from usagemeter import Actor, MeteringService
service = MeteringService()
actor = Actor("u0", email="u@example.com")
usage_type = "claude:claude-sonnet-4-5-20250929:output_tokens"
service.update_addon_credit("u0", 10**15)
operation, calls = sys.argv[1], int(sys.argv[2])

def adds(add, calls):  # a function, so the loop's names are fast locals
    for _ in range(calls):
        add(1)

def loop(fn, actor, usage_type, calls):
    for _ in range(calls):
        fn(actor, usage_type, 1)

def batches(batch, actor, items, calls):
    for _ in range(calls):
        batch(actor, items)

if operation == "meter.add":
    adds(service.meter(actor, usage_type).add, 1_000 + calls)
elif operation == "batch_increment_usages":
    types = [name for name, price in sorted(service.cost_map.items()) if price > 0][:100]
    batches(service.batch_increment_usages, actor, [(name, 1) for name in types], 10 + calls // 100)
else:
    fn = {
        "floor": service._noop_increment_usage,
        "increment_usage": service.increment_usage,
        "try_increment_usage": service.try_increment_usage,
        "has_enough_credits_for": service.has_enough_credits_for,
    }[operation]
    loop(fn, actor, usage_type, 1_000 + calls)
"""


def instructions(operation: str, calls: int) -> int:
    valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    result = subprocess.run(
        [*valgrind, sys.executable, "-c", LOOP, operation, str(calls)],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"Collected : (\d+)", result.stderr)
    if match is None:
        raise RuntimeError(f"callgrind printed no count:\n{result.stderr}")
    return int(match.group(1))


def main() -> None:
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    for operation in sys.argv[1:] or OPERATIONS:
        if operation not in OPERATIONS:
            sys.exit(f"unknown operation {operation!r}; choose from {', '.join(OPERATIONS)}")
        per_call = (instructions(operation, LARGE) - instructions(operation, SMALL)) / (LARGE - SMALL)
        print(f"{operation:<24} {per_call:7,.0f} instructions per call")


if __name__ == "__main__":
    main()
