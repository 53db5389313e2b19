//! Exact fixed-point money.
//!
//! The ledger counts in **attocents**: 1 µ¢ (microcent) = 10^12 attocents, so a price keeps 12
//! fractional digits of a microcent exactly, and `N calls x 1 unit == 1 call x N units` holds with
//! integer arithmetic. Nothing here ever touches a float.

use std::fmt;

/// Attocents in one microcent: prices keep 12 fractional digits of a µ¢.
pub const ATTOCENTS_PER_MICROCENT: i128 = 1_000_000_000_000;

/// Fractional digits of a microcent that are kept exactly.
pub const FRACTION_DIGITS: u32 = 12;

/// Largest magnitude of any per-actor amount: a price, a cost override, purchased credit, and
/// every total of an actor's or app's month: 10^30 attocents = 10^18 µ¢ (ten billion dollars).
pub const MAX_RECORD_ATTOCENTS: i128 = 1_000_000_000_000_000_000_000_000_000_000;

/// Largest magnitude of any amount at all (the global month, summed over actors): 10^36
/// attocents.
///
/// A million times the per-actor limit, so only a million actors at their own limit can reach
/// it (`get_global_usage` then raises `OverflowError`); and well below `i128::MAX` (~1.7 * 10^38),
/// so adding one more record to a sum in range can never overflow `i128` itself.
pub const MAX_ABS_ATTOCENTS: i128 = 1_000_000_000_000_000_000_000_000_000_000_000_000;

/// An exact amount of money in attocents (signed: manual adjustments may be negative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i128);

impl Money {
    pub const ZERO: Money = Money(0);

    /// Builds an amount from attocents, or `None` outside the ledger's range.
    pub fn from_attocents(attocents: i128) -> Option<Money> {
        (attocents.abs() <= MAX_ABS_ATTOCENTS).then_some(Money(attocents))
    }

    /// Builds an amount from whole microcents, or `None` outside the ledger's range.
    pub fn from_microcents(microcents: i128) -> Option<Money> {
        microcents
            .checked_mul(ATTOCENTS_PER_MICROCENT)
            .and_then(Money::from_attocents)
    }

    pub fn attocents(self) -> i128 {
        self.0
    }

    /// The amount in whole microcents, rounded half up (towards +infinity on a tie).
    pub fn to_microcents_half_up(self) -> i128 {
        (self.0 + ATTOCENTS_PER_MICROCENT / 2).div_euclid(ATTOCENTS_PER_MICROCENT)
    }

    /// Sum, or `None` when it would leave the ledger's range.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).and_then(Money::from_attocents)
    }

    /// Difference, or `None` when it would leave the ledger's range.
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).and_then(Money::from_attocents)
    }

    /// Sum of two amounts already known to be in range; used where the caller has checked.
    /// Panics (a bug, surfaced to Python as an exception) rather than wrapping.
    pub fn plus(self, other: Money) -> Money {
        self.checked_add(other)
            .expect("money sum checked before commit")
    }

    pub fn minus(self, other: Money) -> Money {
        self.checked_sub(other)
            .expect("money difference checked before commit")
    }

    pub fn negated(self) -> Money {
        Money(-self.0)
    }

    pub fn min(self, other: Money) -> Money {
        Money(self.0.min(other.0))
    }

    pub fn max(self, other: Money) -> Money {
        Money(self.0.max(other.0))
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Whether the amount fits a per-actor record (see `MAX_RECORD_ATTOCENTS`).
    pub fn fits_record(self) -> bool {
        self.0.abs() <= MAX_RECORD_ATTOCENTS
    }

    /// Exact decimal text in microcents, without trailing zeros (`31.25`, `0.011175870895`).
    pub fn to_microcent_string(self) -> String {
        let sign = if self.0 < 0 { "-" } else { "" };
        let magnitude = self.0.unsigned_abs();
        let scale = ATTOCENTS_PER_MICROCENT as u128;
        let (whole, fraction) = (magnitude / scale, magnitude % scale);
        if fraction == 0 {
            return format!("{sign}{whole}");
        }
        let digits = format!("{fraction:012}");
        format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} µ¢", self.to_microcent_string())
    }
}

/// A non-negative price per unit, in attocents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price(Money);

impl Price {
    pub fn from_money(money: Money) -> Option<Price> {
        (!money.is_negative()).then_some(Price(money))
    }

    pub fn as_money(self) -> Money {
        self.0
    }

    /// Cost of `units` units, or `None` when it leaves the ledger's range.
    pub fn cost_of(self, units: u64) -> Option<Money> {
        self.0
             .0
            .checked_mul(i128::from(units))
            .and_then(Money::from_attocents)
    }
}

/// Why a decimal text could not be read as money.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecimalError {
    NotANumber,
    Negative,
    TooLarge,
}

impl fmt::Display for DecimalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecimalError::NotANumber => "is not a decimal number",
            DecimalError::Negative => "is negative",
            DecimalError::TooLarge => "is larger than the ledger's range (10^18 µ¢)",
        })
    }
}

/// A decimal read from text and scaled to attocents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedMicrocents {
    pub money: Money,
    /// True when the text had more than 12 fractional digits and was rounded half-even.
    pub rounded: bool,
}

/// Reads a microcent amount such as `31.25`, `1e3` or `0.0111758708953857421875` exactly from its
/// text (JSON number syntax). Digits beyond the 12th fractional digit are rounded half-even.
pub fn parse_microcents(text: &str) -> Result<ParsedMicrocents, DecimalError> {
    let (negative, digits, exponent) = split_decimal(text).ok_or(DecimalError::NotANumber)?;
    // value = digits * 10^exponent µ¢ = digits * 10^(exponent + 12) attocents.
    let shift = exponent + i64::from(FRACTION_DIGITS);
    let (kept, dropped): (String, String) = if shift >= 0 {
        let zeros = usize::try_from(shift).map_err(|_| DecimalError::TooLarge)?;
        if digits.len() + zeros > 40 {
            return Err(DecimalError::TooLarge);
        }
        (format!("{digits}{}", "0".repeat(zeros)), String::new())
    } else {
        let cut = usize::try_from(-shift).unwrap_or(usize::MAX);
        if cut >= digits.len() {
            // Every significant digit is dropped; the zeros between the point where the value is
            // cut and the first significant digit are dropped too, and decide the rounding
            // ("06" is below one half, "6" alone would not be). More zeros than 40 change nothing.
            let zeros = (cut - digits.len()).min(40);
            (String::from("0"), format!("{}{digits}", "0".repeat(zeros)))
        } else {
            let split = digits.len() - cut;
            (digits[..split].to_string(), digits[split..].to_string())
        }
    };
    let mut attocents: i128 = kept.parse().map_err(|_| DecimalError::TooLarge)?;
    let rounded = dropped.bytes().any(|b| b != b'0');
    if rounds_up_half_even(attocents, &dropped) {
        attocents += 1;
    }
    // Any negative value is refused, even one that rounds to zero ("-0.0000000000001"); "-0" is 0.
    if negative && digits.bytes().any(|b| b != b'0') {
        return Err(DecimalError::Negative);
    }
    let money = Money::from_attocents(attocents)
        .filter(|money| money.fits_record())
        .ok_or(DecimalError::TooLarge)?;
    Ok(ParsedMicrocents { money, rounded })
}

/// Half-even: round up when the dropped digits are above one half, or exactly one half and the
/// kept value is odd.
fn rounds_up_half_even(kept: i128, dropped: &str) -> bool {
    let mut bytes = dropped.bytes();
    match bytes.next() {
        None => false,
        Some(first) if first > b'5' => true,
        Some(first) if first < b'5' => false,
        Some(_) => bytes.any(|b| b != b'0') || kept % 2 == 1,
    }
}

/// Splits JSON-number text into (negative, significant digits, power of ten). The digits have no
/// leading zeros (a zero value is `"0"`).
fn split_decimal(text: &str) -> Option<(bool, String, i64)> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], parse_exponent(&rest[at + 1..])?),
        None => (rest, 0),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) if !fraction.is_empty() => (whole, fraction),
        Some(_) => return None,
        None => (mantissa, ""),
    };
    if whole.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let all_digits = format!("{whole}{fraction}");
    let significant = all_digits.trim_start_matches('0');
    let significant = if significant.is_empty() {
        "0"
    } else {
        significant
    };
    let fraction_len = i64::try_from(fraction.len()).ok()?;
    Some((
        negative,
        significant.to_string(),
        exponent.checked_sub(fraction_len)?,
    ))
}

fn parse_exponent(text: &str) -> Option<i64> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: i64 = digits.parse().ok()?;
    Some(if text.starts_with('-') { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ParsedMicrocents {
        parse_microcents(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn reads_integers_fractions_and_exponents_exactly() {
        assert_eq!(
            parse("400").money.attocents(),
            400 * ATTOCENTS_PER_MICROCENT
        );
        assert_eq!(parse("31.25").money.attocents(), 31_250_000_000_000);
        assert_eq!(parse("2.8").money.attocents(), 2_800_000_000_000);
        assert_eq!(parse("1.5e2").money, parse("150").money);
        assert_eq!(parse("15E-1").money, parse("1.5").money);
        assert_eq!(parse("0").money, Money::ZERO);
        assert_eq!(parse("-0").money, Money::ZERO);
        assert!(!parse("0.000000000001").rounded);
    }

    #[test]
    fn rounds_beyond_twelve_digits_half_even_and_says_so() {
        let egress = parse("0.0111758708953857421875");
        assert!(egress.rounded);
        assert_eq!(egress.money.attocents(), 11_175_870_895);
        // exactly half: to even
        assert_eq!(parse("0.0000000000005").money.attocents(), 0);
        assert_eq!(parse("0.0000000000015").money.attocents(), 2);
        assert_eq!(parse("0.0000000000025").money.attocents(), 2);
        // above half
        assert_eq!(parse("0.00000000000050001").money.attocents(), 1);
        assert_eq!(parse("1e-13").money.attocents(), 0);
        assert!(parse("1e-13").rounded);
        // far below the last kept digit: the zeros in between count
        assert_eq!(parse("0.00000000000006").money.attocents(), 0);
        assert_eq!(parse("6e-14").money.attocents(), 0);
        assert_eq!(parse("0.0000000000000009").money.attocents(), 0);
        assert_eq!(parse("6e-13").money.attocents(), 1);
        assert_eq!(parse("5e-13").money.attocents(), 0);
        assert_eq!(parse("5.1e-13").money.attocents(), 1);
    }

    #[test]
    fn refuses_what_is_not_a_plain_decimal() {
        for bad in [
            "", "abc", "NaN", "Infinity", "1.", ".5", "+1", "1e", "1e+", "1.2.3", " 1", "0x10",
        ] {
            assert_eq!(
                parse_microcents(bad),
                Err(DecimalError::NotANumber),
                "{bad:?}"
            );
        }
        assert_eq!(parse_microcents("-1"), Err(DecimalError::Negative));
        assert_eq!(parse_microcents("-0.5"), Err(DecimalError::Negative));
        // Negative even when it rounds to zero at 12 fractional digits.
        assert_eq!(
            parse_microcents("-0.0000000000001"),
            Err(DecimalError::Negative)
        );
        assert_eq!(parse_microcents("-1e-40"), Err(DecimalError::Negative));
        assert_eq!(parse("-0.000").money, Money::ZERO);
        assert_eq!(parse_microcents("1e19"), Err(DecimalError::TooLarge));
        assert_eq!(
            parse_microcents("1000000000000000000.000000000001"),
            Err(DecimalError::TooLarge)
        );
        assert_eq!(parse_microcents("1e999999"), Err(DecimalError::TooLarge));
        assert!(parse_microcents("1e18").is_ok());
    }

    #[test]
    fn rounds_to_microcents_half_up() {
        let half = ATTOCENTS_PER_MICROCENT / 2;
        assert_eq!(Money(half).to_microcents_half_up(), 1);
        assert_eq!(Money(half - 1).to_microcents_half_up(), 0);
        assert_eq!(Money(-half).to_microcents_half_up(), 0);
        assert_eq!(Money(-half - 1).to_microcents_half_up(), -1);
        assert_eq!(
            Money(3 * ATTOCENTS_PER_MICROCENT).to_microcents_half_up(),
            3
        );
    }

    #[test]
    fn cost_is_exact_and_checked() {
        let egress = Price::from_money(parse("0.0111758708953857421875").money).unwrap();
        let one_call = egress.cost_of(1_000_000).unwrap();
        let mut many = Money::ZERO;
        for _ in 0..1_000_000 {
            many = many.plus(egress.cost_of(1).unwrap());
        }
        assert_eq!(one_call, many);
        let huge = Price::from_money(parse("1e18").money).unwrap();
        assert!(huge.cost_of(2).is_some_and(|cost| !cost.fits_record()));
        assert_eq!(huge.cost_of(u64::MAX), None);
        assert_eq!(
            Money::from_attocents(MAX_ABS_ATTOCENTS)
                .unwrap()
                .checked_add(Money(1)),
            None
        );
    }

    #[test]
    fn prints_exact_decimal_text() {
        assert_eq!(parse("31.25").money.to_microcent_string(), "31.25");
        assert_eq!(parse("400").money.to_microcent_string(), "400");
        assert_eq!(
            parse("0.0111758708953857421875")
                .money
                .to_microcent_string(),
            "0.011175870895"
        );
        assert_eq!(Money(-1_500_000_000_000).to_microcent_string(), "-1.5");
    }
}
