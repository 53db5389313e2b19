"""`to_microcents`: dollars in, exact integer microcents out ($1 = 100_000_000 µ¢)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from usagemeter import to_microcents

MICROCENTS_PER_DOLLAR = 100_000_000


@pytest.mark.parametrize(
    ("dollars", "microcents"),
    [
        ("0.04", 4_000_000),
        ("1", 100_000_000),
        ("0.00000001", 1),
        ("12.34", 1_234_000_000),
        ("0", 0),
        ("-0.04", -4_000_000),
        ("1000000", 100_000_000_000_000),
        # Trailing zeros past the 8th place still name a whole number of µ¢.
        ("0.040000000", 4_000_000),
        ("99999999999.99999999", 9_999_999_999_999_999_999),
        (Decimal("0.04"), 4_000_000),
        (Decimal("-12.5"), -1_250_000_000),
        (Decimal("1E+2"), 10_000_000_000),
        (Decimal("-0"), 0),
        (1, 100_000_000),
        (0, 0),
        (-3, -300_000_000),
        (10**12, 10**20),
    ],
)
def test_dollars_convert_exactly(dollars: str | Decimal | int, microcents: int) -> None:
    result = to_microcents(dollars)
    assert result == microcents
    assert type(result) is int


def test_a_float_is_refused_with_a_hint() -> None:
    with pytest.raises(TypeError, match=r"(?i)str.*Decimal|Decimal.*str"):
        to_microcents(0.04)  # type: ignore[arg-type]


def test_a_bool_is_refused() -> None:
    with pytest.raises(TypeError):
        to_microcents(True)
    with pytest.raises(TypeError):
        to_microcents(False)


@pytest.mark.parametrize(
    "dollars",
    ["0.000000001", "0.040000001", "-0.000000005", Decimal("0.000000005"), Decimal("1E-9")],
)
def test_less_than_a_microcent_is_refused(dollars: str | Decimal) -> None:
    with pytest.raises(ValueError):
        to_microcents(dollars)


@pytest.mark.parametrize(
    "dollars",
    ["NaN", "nan", "inf", "Infinity", "-Infinity", Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")],
)
def test_nan_and_infinity_are_refused(dollars: str | Decimal) -> None:
    with pytest.raises(ValueError):
        to_microcents(dollars)


@pytest.mark.parametrize("dollars", ["", "abc", "0.04$", "1,000"])
def test_text_that_is_not_a_number_is_refused(dollars: str) -> None:
    # The spec does not name this case; ValueError is what `Decimal`-like parsing does.
    with pytest.raises(ValueError):
        to_microcents(dollars)


@given(st.integers(min_value=-(10**20), max_value=10**20))
def test_every_whole_microcent_amount_survives_its_dollar_text(microcents: int) -> None:
    dollars = Decimal(microcents).scaleb(-8)  # exact: at most 21 significant digits
    assert to_microcents(str(dollars)) == microcents
    assert to_microcents(dollars) == microcents


@given(st.decimals(min_value=-(10**12), max_value=10**12, places=8, allow_nan=False, allow_infinity=False))
def test_decimal_text_matches_exact_integer_math(dollars: Decimal) -> None:
    sign, digits, exponent = dollars.as_tuple()
    assert isinstance(exponent, int)
    magnitude = int("".join(map(str, digits)) or "0")
    shift = exponent + 8
    if shift >= 0:
        expected = magnitude * 10**shift
    else:
        expected, rest = divmod(magnitude, 10**-shift)
        assert rest == 0
    if sign:
        expected = -expected
    assert to_microcents(str(dollars)) == expected
    assert to_microcents(dollars) == expected


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=1, max_value=9), st.data())
def test_any_fraction_of_a_microcent_is_refused(whole: int, extra_digits: int, data: st.DataObject) -> None:
    part = data.draw(st.integers(min_value=1, max_value=10**extra_digits - 1))
    # (whole * 10^k + part) / 10^(8 + k) dollars: never a whole number of µ¢ since 0 < part < 10^k.
    dollars = Decimal(whole * 10**extra_digits + part).scaleb(-(8 + extra_digits))
    with pytest.raises(ValueError):
        to_microcents(str(dollars))
    with pytest.raises(ValueError):
        to_microcents(dollars)
