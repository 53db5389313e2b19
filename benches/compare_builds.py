"""Two builds of usagemeter side by side: `hot_path.py` run in turn under each, round after round.

    python benches/compare_builds.py --rounds 7 full=.venv-full/bin/python abi3=.venv-abi3/bin/python

Each interpreter is a venv with one build installed (a release wheel). Every round runs
`benches/hot_path.py` once under each, the order alternating from round to round, so the drift
of a shared machine falls on both alike. Prints, per operation, the median ns per call of each
build and the median of the per-round ratios (second build / first), with their range.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

HOT_PATH = Path(__file__).resolve().parent / "hot_path.py"


def run_once(python: str) -> dict[tuple[str, str], float]:
    """`hot_path.py`'s table as {(operation, "warm"|"cold"): ns per call}."""
    output = subprocess.run([python, str(HOT_PATH)], check=True, capture_output=True, text=True).stdout
    figures: dict[tuple[str, str], float] = {}
    for line in output.splitlines()[1:]:
        name, warm, cold = line.rsplit(maxsplit=2)
        figures[name.strip(), "warm"] = float(warm)
        figures[name.strip(), "cold"] = float(cold)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs=2, metavar="NAME=PYTHON")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    builds = [tuple(build.split("=", 1)) for build in args.builds]
    runs: dict[str, list[dict[tuple[str, str], float]]] = {name: [] for name, _ in builds}
    for round_number in range(args.rounds):
        order = builds if round_number % 2 == 0 else builds[::-1]
        for name, python in order:
            runs[name].append(run_once(python))
        print(f"round {round_number + 1} of {args.rounds} done", file=sys.stderr)
    (first, _), (second, _) = builds
    ratio = f"{second} / {first}, median (range) of {args.rounds} rounds"
    print(f"| ns per call | {first} | {second} | {ratio} |")
    print("|---|---:|---:|---:|")
    for key in runs[first][0]:
        a = [run[key] for run in runs[first]]
        b = [run[key] for run in runs[second]]
        ratios = [y / x for x, y in zip(a, b, strict=True)]
        print(
            f"| {key[0]}, {key[1]} | {statistics.median(a):.0f} | {statistics.median(b):.0f} "
            f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )


if __name__ == "__main__":
    main()
