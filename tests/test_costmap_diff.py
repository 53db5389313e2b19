"""``usagemeter costmap diff OLD NEW`` (issue 19): what a new price drop changes, as a person reads
it and as JSON, from the shipped maps, a file or a directory of files; real CLI processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import run_cli
from usagemeter import CostMap
from usagemeter.cli.costmap import costmap_diff

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, prices: dict[str, str]) -> Path:
    path.write_text(json.dumps(prices))
    return path


def test_the_diff_lists_changed_added_and_removed_prices_largest_change_first() -> None:
    old = CostMap.from_dict({"a:x": 100, "a:y": 10, "a:z": "2.5", "a:gone": 7, "a:zero": 0, "b:same": 1})
    new = CostMap.from_dict({"a:x": 125, "a:y": 1, "a:z": "2.5", "a:new": "0.3", "a:zero": 3, "b:same": 1})
    assert costmap_diff(old, new) == {
        "added": {"a:new": "0.3"},
        "removed": {"a:gone": "7"},
        "changed": {
            "a:zero": {"old": "0", "new": "3", "change": "from 0"},
            "a:y": {"old": "10", "new": "1", "change": "-90.0%"},
            "a:x": {"old": "100", "new": "125", "change": "+25.0%"},
        },
        "unchanged": 2,
    }
    assert costmap_diff(old, new, prefix="b:") == {"added": {}, "removed": {}, "changed": {}, "unchanged": 1}


def test_the_shipped_maps_against_their_own_files_differ_in_nothing() -> None:
    result = run_cli("costmap", "diff", "default", str(REPO / "costmaps"), "--exit-code")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(
        f"0 prices changed, 0 added, 0 removed, {len(CostMap.default()):,} unchanged"
    )


def test_a_price_drop_is_shown_as_a_person_reads_it_and_as_json(tmp_path: Path) -> None:
    old = write(tmp_path / "old.json", {"m:gemini-2.5-pro:prompt": "15", "m:gemini-2.5-pro:output": "60"})
    folder = tmp_path / "new"
    folder.mkdir()
    write(folder / "a.json", {"m:gemini-2.5-pro:prompt": "125"})
    write(folder / "b.json", {"m:gemini-3-pro:prompt": "200"})
    text = run_cli("costmap", "diff", str(old), str(folder), "--exit-code")
    assert text.returncode == 1, text.stderr  # it differs
    lines = [line.split() for line in text.stdout.splitlines()]
    assert ["m:gemini-2.5-pro:prompt", "15", "125", "+733.3%"] in lines
    assert ["m:gemini-3-pro:prompt", "200"] in lines and ["m:gemini-2.5-pro:output", "60"] in lines
    assert text.stdout.strip().endswith("1 price changed, 1 added, 1 removed, 0 unchanged")
    as_json = run_cli("costmap", "diff", str(old), str(folder), "--json")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout)["changed"] == {
        "m:gemini-2.5-pro:prompt": {"old": "15", "new": "125", "change": "+733.3%"}
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "bad.json"), ('{"a:x": "-1"}', "a:x"), (None, "no *.json")],
    ids=["malformed", "negative price", "empty directory"],
)
def test_a_side_that_does_not_load_is_exit_2_with_the_reason(
    tmp_path: Path, content: str | None, message: str
) -> None:
    if content is None:
        bad = tmp_path / "empty"
        bad.mkdir()
    else:
        bad = tmp_path / "bad.json"
        bad.write_text(content)
    result = run_cli("costmap", "diff", "default", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usagemeter costmap diff: ") and message in result.stderr
    assert "Traceback" not in result.stderr
