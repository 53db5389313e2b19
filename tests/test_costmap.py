"""Cost maps: the shipped prices, exact decimal reading, the mapping protocol and every loading error."""

from __future__ import annotations

import json
import re
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import EGRESS, EGRESS_PRICE, EGRESS_PRICE_TEXT, FRACTION, SMALL_PRICES, TENTH
from usagemeter import CostMap, CostMapError

COSTMAP_DIR = Path(__file__).resolve().parent.parent / "costmaps"
TWELVE_DIGITS = Decimal("1e-12")


def shipped_prices() -> dict[str, tuple[str, str]]:
    """usage type -> (file name, price text) read straight from `costmaps/*.json`."""
    prices: dict[str, tuple[str, str]] = {}
    for path in sorted(COSTMAP_DIR.glob("*.json")):
        # Numbers are kept as their text, never parsed through a float.
        pairs = json.loads(path.read_text(encoding="utf-8"), parse_float=str, parse_int=str)
        for key, text in pairs.items():
            assert key not in prices, f"{key} shipped twice"
            prices[key] = (path.name, str(text))
    return prices


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# The shipped map


def test_default_map_has_every_shipped_price(default_cost_map: CostMap) -> None:
    assert len(default_cost_map) == 1105
    assert len(default_cost_map.keys()) == 1105
    assert len(shipped_prices()) == 1105


def test_default_map_prices_match_the_shipped_files_exactly(default_cost_map: CostMap) -> None:
    shipped = shipped_prices()
    assert set(default_cost_map.keys()) == set(shipped)
    for key, (file_name, text) in shipped.items():
        price = default_cost_map[key]
        assert isinstance(price, Decimal), key
        expected = Decimal(text)
        exponent = expected.as_tuple().exponent
        assert isinstance(exponent, int)
        if exponent < -12:
            expected = expected.quantize(TWELVE_DIGITS, rounding=ROUND_HALF_EVEN)
        assert price == expected, key
        assert default_cost_map.source_of(key).endswith(file_name), key


def test_default_map_equals_loading_the_shipped_files(default_cost_map: CostMap) -> None:
    from_files = CostMap.from_files(*sorted(COSTMAP_DIR.glob("*.json")))
    assert dict(from_files.items()) == dict(default_cost_map.items())


def test_default_map_keys_come_back_unchanged(default_cost_map: CostMap) -> None:
    keys = default_cost_map.keys()
    assert all(isinstance(key, str) and key for key in keys)
    assert not [key for key in keys if "_dot_" in key]
    assert any("." in key for key in keys)
    assert any("/" in key for key in keys)
    assert all(":" in key for key in keys)
    assert sum("." in key for key in keys) == 338  # as the reference data's README counts them
    assert default_cost_map["groq:llama-3.1-70b-versatile:prompt_tokens"] > 0
    # The keys with dots, slashes and colons can be looked up by exactly the text that came out.
    for key in keys:
        assert key in default_cost_map
        assert default_cost_map[key] == default_cost_map.get(key)


def test_default_map_has_the_seed_prices(default_cost_map: CostMap) -> None:
    assert default_cost_map["kv:write"] == Decimal(125)
    assert default_cost_map["kv:read"] == Decimal(63)
    assert default_cost_map["claude:claude-3-haiku-20240307:ephemeral_5m_input_tokens"] == Decimal("31.25")
    assert default_cost_map.source_of("kv:write").endswith("kv.json")


def test_negative_openrouter_auto_placeholders_are_not_shipped(default_cost_map: CostMap) -> None:
    assert "openrouter:openrouter/auto:prompt" not in default_cost_map
    assert "openrouter:openrouter/auto:completion" not in default_cost_map
    assert all(price >= 0 for _, price in default_cost_map.items())


def test_egress_prices_are_rounded_half_even_to_twelve_digits_and_reported(default_cost_map: CostMap) -> None:
    assert default_cost_map[EGRESS] == EGRESS_PRICE
    assert default_cost_map["filesystem:cached-egress:bytes"] == Decimal("0.009313225746")
    rounded = {entry[0]: entry for entry in default_cost_map.rounded_prices()}
    assert set(rounded) == {EGRESS, "filesystem:cached-egress:bytes"}
    usage_type, source, original, price = rounded[EGRESS]
    assert usage_type == EGRESS
    assert source.endswith("file-system.json")
    assert original == EGRESS_PRICE_TEXT
    assert price == EGRESS_PRICE
    assert isinstance(price, Decimal)
    assert rounded["filesystem:cached-egress:bytes"][2] == "0.00931322574615478515625"


# ---------------------------------------------------------------------------------------------
# Exact reading


def test_a_price_is_read_from_its_json_text_never_through_a_float(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "exact.json",
        '{"as:number": 31.25, "as:string": "31.25", "tenth": 0.1, "tricky": 2.675,'
        ' "twelve:digits": 0.123456789012, "exponent": 1.5e2, "zero": 0, "big": 123456789012345678}',
    )
    prices = CostMap.from_files(path)
    assert prices["as:number"] == Decimal("31.25")
    assert prices["as:string"] == Decimal("31.25")
    assert prices["tenth"] == Decimal("0.1")  # float(0.1) would be 0.1000000000000000055...
    assert prices["tricky"] == Decimal("2.675")
    assert prices["twelve:digits"] == Decimal("0.123456789012")
    assert prices["exponent"] == Decimal(150)
    assert prices["zero"] == Decimal(0)
    assert prices["big"] == Decimal("123456789012345678")
    assert prices.rounded_prices() == []


def test_more_than_twelve_digits_round_half_even_and_are_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "halves.json",
        '{"tie:down": "0.0000000000005", "tie:up": "0.0000000000015", "tie:even": "0.0000000000025",'
        ' "above": "0.00000000000050001", "below": 0.00000000000049999, "exact": "0.000000000001"}',
    )
    prices = CostMap.from_files(path)
    assert prices["tie:down"] == Decimal(0)
    assert prices["tie:up"] == Decimal("0.000000000002")
    assert prices["tie:even"] == Decimal("0.000000000002")
    assert prices["above"] == Decimal("0.000000000001")
    assert prices["below"] == Decimal(0)
    assert prices["exact"] == Decimal("0.000000000001")
    reported = {entry[0]: entry for entry in prices.rounded_prices()}
    assert set(reported) == {"tie:down", "tie:up", "tie:even", "above", "below"}
    assert reported["tie:up"][2] == "0.0000000000015"
    assert reported["tie:up"][3] == Decimal("0.000000000002")
    assert reported["above"][1].endswith("halves.json")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.00000000000006", "0"),  # 0.06 of the last kept digit
        ("0.000000000000051", "0"),  # 0.051 of it
        ("6e-14", "0"),
        ("0.0000000000000009", "0"),
        ("0.00000000000000", "0"),
        ("1.00000000000006", "1"),
        ("0.00000000000096", "0.000000000001"),
    ],
)
def test_a_price_far_below_the_last_kept_digit_rounds_down(text: str, expected: str) -> None:
    # Half-even at 12 digits: anything under half of 10^-12 µ¢ rounds to the lower neighbour,
    # however few significant digits the text has.
    assert CostMap.from_dict({"svc:price": text})["svc:price"] == Decimal(expected)


# ---------------------------------------------------------------------------------------------
# Constructors


def test_from_dict_takes_int_str_and_decimal_prices(small_map: CostMap) -> None:
    assert len(small_map) == len(SMALL_PRICES)
    assert small_map["kv:write"] == Decimal(125)
    assert small_map[FRACTION] == Decimal("31.25")
    assert small_map[TENTH] == Decimal("0.1")
    assert small_map[EGRESS] == EGRESS_PRICE
    assert small_map.source_of("kv:write") == "dict"
    assert [entry[0] for entry in small_map.rounded_prices()] == [EGRESS]


@pytest.mark.parametrize("price", [1.5, 0.0, True, False])
def test_from_dict_refuses_floats_and_bools(price: object) -> None:
    prices: dict[str, Any] = {"svc:fine": 1, "svc:price": price}
    with pytest.raises(TypeError):
        CostMap.from_dict(prices)


@pytest.mark.parametrize(
    ("prices", "key"),
    [
        ({"svc:price": -1}, "svc:price"),
        ({"svc:price": Decimal("-0.5")}, "svc:price"),
        ({"svc:price": "cheap"}, "svc:price"),
        ({"svc:price": "NaN"}, "svc:price"),
        ({"svc:price": Decimal("NaN")}, "svc:price"),
        ({"svc:price": Decimal("Infinity")}, "svc:price"),
        ({"svc:price": 10**18 + 1}, "svc:price"),
        ({"total": 1}, "total"),
    ],
)
def test_from_dict_refuses_bad_prices_naming_the_key(prices: dict[str, Any], key: str) -> None:
    # The spec lists these errors for files; a dict goes through the same loader, so the same
    # CostMapError (a ValueError) naming the key is the natural behaviour.
    with pytest.raises(CostMapError, match=re.escape(key)):
        CostMap.from_dict(prices)


def test_from_dict_refuses_an_empty_key() -> None:
    with pytest.raises(CostMapError):
        CostMap.from_dict({"": 1})


def test_from_files_takes_str_and_pathlike(tmp_path: Path) -> None:
    one = write(tmp_path, "one.json", '{"a:b": 1, "c.d/e:f": "2.5"}')
    two = write(tmp_path, "two.json", '{"g": 3}')
    prices = CostMap.from_files(str(one), two)
    assert dict(prices.items()) == {"a:b": Decimal(1), "c.d/e:f": Decimal("2.5"), "g": Decimal(3)}
    assert prices.source_of("a:b").endswith("one.json")
    assert prices.source_of("g").endswith("two.json")


def test_merged_lets_the_second_map_win_and_changes_neither(tmp_path: Path) -> None:
    base = CostMap.from_dict({"x": 1, "y": 2})
    other = CostMap.from_files(write(tmp_path, "other.json", '{"y": 20, "z": "30.5"}'))
    merged = base.merged(other)
    assert dict(merged.items()) == {"x": Decimal(1), "y": Decimal(20), "z": Decimal("30.5")}
    assert merged.source_of("y").endswith("other.json")
    assert merged.source_of("x") == "dict"
    assert dict(base.items()) == {"x": Decimal(1), "y": Decimal(2)}
    assert dict(other.items()) == {"y": Decimal(20), "z": Decimal("30.5")}
    # and the other way round
    assert other.merged(base)["y"] == Decimal(2)


def test_merged_onto_the_default_map_overrides_one_price(default_cost_map: CostMap) -> None:
    merged = default_cost_map.merged(CostMap.from_dict({"kv:write": 1, "custom:type": "0.5"}))
    assert len(merged) == 1106
    assert merged["kv:write"] == Decimal(1)
    assert merged["kv:read"] == Decimal(63)
    assert merged["custom:type"] == Decimal("0.5")
    assert default_cost_map["kv:write"] == Decimal(125)


def test_merging_drops_the_rounding_report_of_an_overridden_price(default_cost_map: CostMap) -> None:
    # Natural reading of "b wins": a price replaced by the second map was never loaded with rounding.
    merged = default_cost_map.merged(CostMap.from_dict({EGRESS: 1}))
    assert [entry[0] for entry in merged.rounded_prices()] == ["filesystem:cached-egress:bytes"]


# ---------------------------------------------------------------------------------------------
# Mapping protocol


def test_mapping_protocol(small_map: CostMap) -> None:
    assert len(small_map) == len(SMALL_PRICES)
    assert "kv:write" in small_map
    assert "kv:writes" not in small_map
    assert small_map["kv:read"] == Decimal(63)
    with pytest.raises(KeyError):
        small_map["kv:writes"]
    assert small_map.get("kv:read") == Decimal(63)
    assert small_map.get("kv:writes") is None
    assert small_map.get("kv:writes", Decimal(7)) == Decimal(7)
    keys = small_map.keys()
    assert sorted(keys) == sorted(SMALL_PRICES)
    assert list(iter(small_map)) == list(keys)
    assert sorted(key for key in small_map) == sorted(SMALL_PRICES)
    items = small_map.items()
    assert [key for key, _ in items] == list(keys)
    assert all(isinstance(price, Decimal) for _, price in items)
    assert dict(items) == {key: small_map[key] for key in keys}


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=30).filter(lambda key: key != "total"),
        st.integers(min_value=0, max_value=10**12),
        max_size=20,
    )
)
def test_any_non_empty_key_comes_back_unchanged(prices: dict[str, int]) -> None:
    given_prices: dict[str, Any] = dict(prices)
    from_dict = CostMap.from_dict(given_prices)
    assert sorted(from_dict.keys()) == sorted(prices)
    assert {key: from_dict[key] for key in prices} == {key: Decimal(v) for key, v in prices.items()}
    assert all(key in from_dict for key in prices)


def test_keys_from_a_file_come_back_unchanged(tmp_path: Path) -> None:
    keys = ["a.b.c", "openrouter:meta-llama/llama-3.1-8b:prompt", "üñï:cødé", 'quote"d', "sp ace", "_dot_"]
    path = write(tmp_path, "keys.json", json.dumps({key: index + 1 for index, key in enumerate(keys)}))
    prices = CostMap.from_files(path)
    assert prices.keys() == keys  # file order, unchanged text
    assert [prices[key] for key in keys] == [Decimal(index + 1) for index in range(len(keys))]


# ---------------------------------------------------------------------------------------------
# Loading errors: each is a CostMapError (a ValueError) naming the file and the key.


def test_costmap_error_is_a_value_error() -> None:
    assert issubclass(CostMapError, ValueError)


@pytest.mark.parametrize(
    ("label", "text"),
    [
        ("unclosed", '{"svc:price": 1'),
        ("trailing-garbage", '{"svc:price": 1} x'),
        ("not-an-object", "[1, 2]"),
        ("bare-nan", '{"svc:price": NaN}'),
        ("empty-file", ""),
    ],
)
def test_malformed_json_names_the_file(tmp_path: Path, label: str, text: str) -> None:
    # A syntax error has no key to name, so only the file is required here.
    path = write(tmp_path, f"malformed-{label}.json", text)
    with pytest.raises(CostMapError, match=re.escape(path.name)):
        CostMap.from_files(path)


BAD_PRICES = [
    ("non-numeric", '"cheap"'),
    ("empty-string", '""'),
    ("hex", '"0x10"'),
    ("padded", '" 1"'),
    ("nan-string", '"NaN"'),
    ("infinity-string", '"Infinity"'),
    ("negative-number", "-1"),
    ("negative-fraction", "-0.5"),
    ("negative-string", '"-0.5"'),
    ("null", "null"),
    ("true", "true"),
    ("false", "false"),
    ("array", "[1]"),
    ("object", '{"x": 1}'),
    ("too-large-number", "1e19"),
    ("too-large-string", '"1000000000000000001"'),
]


@pytest.mark.parametrize(("label", "price"), BAD_PRICES)
def test_a_bad_price_names_the_file_and_the_key(tmp_path: Path, label: str, price: str) -> None:
    key = f"svc:{label}/model-1.5:prompt"
    path = write(tmp_path, f"bad-{label}.json", f'{{"svc:fine": 1, "{key}": {price}}}')
    with pytest.raises(CostMapError) as caught:
        CostMap.from_files(path)
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert path.name in message
    assert key in message


def test_the_largest_price_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "largest.json", '{"a": 1e18, "b": "1000000000000000000"}')
    prices = CostMap.from_files(path)
    assert prices["a"] == prices["b"] == Decimal(10**18)


def test_an_empty_key_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "empty-key.json", '{"svc:fine": 1, "": 2}')
    with pytest.raises(CostMapError, match=re.escape(path.name)) as caught:
        CostMap.from_files(path)
    assert re.search(r'""|\'\'|(?i:empty)', str(caught.value))


def test_the_reserved_key_total_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "reserved.json", '{"svc:fine": 1, "total": 2}')
    with pytest.raises(CostMapError, match=re.escape(path.name)) as caught:
        CostMap.from_files(path)
    assert "total" in str(caught.value)


def test_a_key_twice_in_one_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    # json.loads would silently keep the last value; the loader must refuse.
    path = write(tmp_path, "twice.json", '{"svc:dup.1": 1, "svc:other": 2, "svc:dup.1": 3}')
    with pytest.raises(CostMapError, match=re.escape(path.name)) as caught:
        CostMap.from_files(path)
    assert "svc:dup.1" in str(caught.value)


def test_a_key_in_two_files_names_both_files_and_the_key(tmp_path: Path) -> None:
    first = write(tmp_path, "first-provider.json", '{"svc:shared/key.1": 1, "svc:a": 2}')
    second = write(tmp_path, "second-provider.json", '{"svc:b": 3, "svc:shared/key.1": 4}')
    with pytest.raises(CostMapError) as caught:
        CostMap.from_files(first, second)
    message = str(caught.value)
    assert "svc:shared/key.1" in message
    # The spec asks for "the file"; naming both is what tells an operator which two disagree.
    assert second.name in message
    assert first.name in message


def test_a_key_in_a_shipped_file_and_a_copy_of_it_is_an_error(tmp_path: Path) -> None:
    copy = write(tmp_path, "kv-copy.json", (COSTMAP_DIR / "kv.json").read_text(encoding="utf-8"))
    with pytest.raises(CostMapError, match="kv:"):
        CostMap.from_files(COSTMAP_DIR / "kv.json", copy)


def test_an_error_in_a_later_file_fails_the_whole_load(tmp_path: Path) -> None:
    good = write(tmp_path, "good.json", '{"svc:a": 1}')
    bad = write(tmp_path, "bad.json", '{"svc:b": -1}')
    with pytest.raises(CostMapError, match=re.escape(bad.name)):
        CostMap.from_files(good, bad)


def test_membership_of_a_non_string_is_false(small_map: CostMap) -> None:
    assert 1 not in small_map
    assert None not in small_map


def test_a_missing_file_names_the_file(tmp_path: Path) -> None:
    # Not named by the spec: a missing file may be an OSError or a CostMapError, but must say which.
    missing = tmp_path / "no-such-provider.json"
    with pytest.raises((OSError, CostMapError), match=re.escape(missing.name)):
        CostMap.from_files(missing)


@given(data=st.data(), places=st.integers(min_value=0, max_value=24), as_number=st.booleans())
def test_any_decimal_price_text_is_read_exactly(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, places: int, as_number: bool
) -> None:
    price = data.draw(
        st.decimals(min_value=0, max_value=10**12, places=places, allow_nan=False, allow_infinity=False)
    )
    text = format(price, "f")
    path = tmp_path_factory.mktemp("prices") / "random.json"
    path.write_text(f'{{"svc:price": {text if as_number else json.dumps(text)}}}', encoding="utf-8")
    prices = CostMap.from_files(path)
    expected = price.quantize(TWELVE_DIGITS, rounding=ROUND_HALF_EVEN) if places > 12 else price
    assert prices["svc:price"] == expected
    rounded = prices.rounded_prices()
    if expected != price:
        assert [(entry[0], entry[2], entry[3]) for entry in rounded] == [("svc:price", text, expected)]
    else:
        assert rounded == [] or rounded[0][3] == price  # trailing zeros past 12 digits change nothing
