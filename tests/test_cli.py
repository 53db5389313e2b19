"""The ``usagemeter`` command line, run as a user runs it: ``python -m usagemeter ...`` in a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from usagemeter import CostMap, to_microcents


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m usagemeter *args`` and captures its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "usagemeter", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )


def number(text: str) -> int:
    """``"12,345"`` -> 12345."""
    return int(text.replace(",", ""))


def dollars_to_microcents(text: str) -> int:
    """``"$1,234.56789012"`` -> its exact µ¢."""
    return to_microcents(text.lstrip("$").replace(",", ""))


def table(lines: list[str], title: str) -> list[list[str]]:
    """The rows (cells split on runs of 2+ spaces) of the table printed under ``title``."""
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 3 :]:  # title, header, rule
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


# ---- demo -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_output() -> str:
    """One small demo run, shared by the demo tests."""
    result = run_cli("demo", "--requests", "3000", "--actors", "300", "--threads", "3", "--seed", "7")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_demo_counts_add_up(demo_output: str) -> None:
    pattern = r"^requests: ([\d,]+) \(([\d,]+) served, ([\d,]+) refused\) in [\d.]+ s$"
    match = re.search(pattern, demo_output, re.M)
    assert match, demo_output
    requests, served, refused = (number(group) for group in match.groups())
    assert requests == 3000
    assert served + refused == requests
    assert served > 0
    assert refused > 0, "some actors must run out of credit"


def test_demo_prints_throughput(demo_output: str) -> None:
    match = re.search(
        r"^throughput: ([\d,]+) requests/s, ([\d,]+) increments/s \(([\d,]+) increments\)$", demo_output, re.M
    )
    assert match, demo_output
    requests_per_second, increments_per_second, increments = (number(group) for group in match.groups())
    assert requests_per_second > 0
    assert increments_per_second > 0
    served_match = re.search(r"([\d,]+) served", demo_output)
    assert served_match
    served = number(served_match.group(1))
    assert increments >= served  # a served request books one usage type or more
    assert f"ledger check: all {increments:,} increments counted" in demo_output


def test_demo_tables_are_consistent(demo_output: str) -> None:
    lines = demo_output.splitlines()
    default = CostMap.default()
    global_line = re.search(r"^global total: (\$[\d,.]+) \(([\d,]+) µ¢\)$", demo_output, re.M)
    assert global_line, demo_output
    global_total = number(global_line.group(2))
    assert dollars_to_microcents(global_line.group(1)) == global_total

    types = table(lines, "Top usage types by cost")
    assert 0 < len(types) <= 10
    costs = [dollars_to_microcents(row[3]) for row in types]
    assert costs == sorted(costs, reverse=True)
    assert sum(costs) <= global_total
    for usage_type, units, count, _cost in types:
        assert usage_type in default
        assert number(units) > 0
        assert number(count) > 0

    actors = table(lines, "Top actors by spend")
    assert 0 < len(actors) <= 10
    spent = [dollars_to_microcents(row[2]) for row in actors]
    assert spent == sorted(spent, reverse=True)
    assert sum(spent) <= global_total + len(actors)  # each total is rounded to whole µ¢
    for _actor, plan, _spent, purchased, overage, remaining in actors:
        assert plan in {"temp_free", "user_free", "demo-tiny"}
        assert dollars_to_microcents(purchased) >= 0
        assert dollars_to_microcents(overage) >= 0
        assert dollars_to_microcents(remaining) >= 0


def test_demo_with_no_requests() -> None:
    result = run_cli("demo", "--requests", "0", "--actors", "10", "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert "requests: 0 (0 served, 0 refused)" in result.stdout
    assert "global total: $0.00000000 (0 µ¢)" in result.stdout


@pytest.mark.parametrize("option", ["--actors", "--threads"])
def test_demo_rejects_bad_counts(option: str) -> None:
    result = run_cli("demo", option, "0")
    assert result.returncode == 2
    assert "must be at least 1" in result.stderr


# ---- costmap check --------------------------------------------------------------------------


def test_costmap_check_good_files(tmp_path: Path) -> None:
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps({"chat:model:input": "31.25", "chat:model:output": 125}))
    egress = tmp_path / "egress.json"
    egress.write_text('{"files:egress:bytes": 0.0111758708953857421875}')
    result = run_cli("costmap", "check", str(chat), str(egress))
    assert result.returncode == 0, result.stderr
    assert f"{chat}: 2 entries" in result.stdout
    assert f"{egress}: 1 entry" in result.stdout
    assert "ok: 3 entries in 2 files" in result.stdout
    assert "files:egress:bytes" in result.stdout
    assert "0.0111758708953857421875 -> 0.011175870895" in result.stdout
    assert result.stderr == ""


def test_costmap_check_without_rounding(tmp_path: Path) -> None:
    kv = tmp_path / "kv.json"
    kv.write_text('{"kv:read": 63, "kv:write": "125"}')
    result = run_cli("costmap", "check", str(kv))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{kv}: 2 entries", "ok: 2 entries in 1 file"]


@pytest.mark.parametrize(
    "content",
    ['{"chat:model:input": -1}', '{"chat:model:input": "lots"}', '{"chat:model:input": "NaN"}'],
)
def test_costmap_check_bad_price(tmp_path: Path, content: str) -> None:
    bad = tmp_path / "bad-prices.json"
    bad.write_text(content)
    result = run_cli("costmap", "check", str(bad))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "bad-prices.json" in result.stderr
    assert "chat:model:input" in result.stderr


def test_costmap_check_same_key_in_two_files(tmp_path: Path) -> None:
    first = tmp_path / "first.json"
    first.write_text('{"kv:read": 63}')
    second = tmp_path / "second.json"
    second.write_text('{"kv:read": 64}')
    result = run_cli("costmap", "check", str(first), str(second))
    assert result.returncode == 1
    assert "kv:read" in result.stderr
    assert "second.json" in result.stderr


def test_costmap_check_malformed_json(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"kv:read": 63,')
    result = run_cli("costmap", "check", str(broken))
    assert result.returncode == 1
    assert "broken.json" in result.stderr


def test_costmap_check_missing_file(tmp_path: Path) -> None:
    result = run_cli("costmap", "check", str(tmp_path / "missing.json"))
    assert result.returncode == 1
    assert "missing.json" in result.stderr


# ---- costmap show ---------------------------------------------------------------------------


def shown_entries(stdout: str) -> list[tuple[str, Decimal, str]]:
    """The (key, price, source) rows printed by ``costmap show``."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["usage", "type", "µ¢/unit", "source"]
    rows = []
    for line in lines[2:-1]:  # header, rule ... count line
        key, price, source = line.split()
        rows.append((key, Decimal(price), source))
    return rows


@pytest.mark.parametrize("prefix", ["claude:claude-sonnet-4-5", "filesystem:", "kv:", "openai:gpt-image-1:"])
def test_costmap_show_prefix(prefix: str) -> None:
    result = run_cli("costmap", "show", prefix)
    assert result.returncode == 0, result.stderr
    default = CostMap.default()
    expected = sorted(key for key in default.keys() if key.startswith(prefix))
    assert expected
    rows = shown_entries(result.stdout)
    assert [key for key, _, _ in rows] == expected
    for key, price, source in rows:
        assert price == default[key]  # exact, digit for digit
        assert source == default.source_of(key)
    count_line = f"{len(expected):,} of {len(default):,} entries matching {prefix!r}"
    assert result.stdout.splitlines()[-1] == count_line


def test_costmap_show_exact_prices() -> None:
    result = run_cli("costmap", "show", "filesystem:egress")
    assert "0.011175870895" in result.stdout  # rounded at load to 12 digits, never via a float
    assert not re.search(r"\dE[+-]?\d", result.stdout, re.I)  # no exponent notation


def test_costmap_show_everything() -> None:
    result = run_cli("costmap", "show")
    assert result.returncode == 0, result.stderr
    default = CostMap.default()
    assert [key for key, _, _ in shown_entries(result.stdout)] == sorted(default.keys())
    assert result.stdout.splitlines()[-1] == f"{len(default):,} of {len(default):,} entries"


def test_costmap_show_no_match() -> None:
    result = run_cli("costmap", "show", "no-such-provider:")
    assert result.returncode == 0
    count_line = f"0 of {len(CostMap.default()):,} entries matching 'no-such-provider:'"
    assert result.stdout.splitlines() == [count_line]


# ---- entry points ---------------------------------------------------------------------------


def test_help_lists_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout
    assert "costmap" in result.stdout


def test_no_command_is_a_usage_error() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage: usagemeter" in result.stderr


def test_main_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    from usagemeter.cli import main

    assert main(["costmap", "show", "kv:"]) == 0
    out = capsys.readouterr().out
    assert "kv:read" in out
    assert "kv:write" in out
