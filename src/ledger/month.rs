//! Calendar months in UTC, as a compact id (`year * 12 + month - 1`).

/// A UTC month: `year * 12 + (month - 1)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MonthId(pub u32);

impl MonthId {
    /// The UTC month containing `epoch_ms` (milliseconds since 1970-01-01T00:00:00Z).
    pub fn from_epoch_ms(epoch_ms: i64) -> MonthId {
        Self::with_day_from_epoch_ms(epoch_ms).0
    }

    /// The UTC month containing `epoch_ms`, and its day in that month (1..=31): a charge's day
    /// for the per-day figures (`days.rs`), from the same clock reading as its month.
    pub fn with_day_from_epoch_ms(epoch_ms: i64) -> (MonthId, u8) {
        let days = epoch_ms.div_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days);
        (MonthId((year * 12 + month - 1) as u32), day as u8)
    }

    /// Parses `YYYY-MM`.
    pub fn parse(label: &str) -> Option<MonthId> {
        let (year, month) = label.split_once('-')?;
        let digits =
            |text: &str, len: usize| text.len() == len && text.bytes().all(|b| b.is_ascii_digit());
        // Digits only: `u32::from_str` would also take "+026" or "+1".
        if !digits(year, 4) || !digits(month, 2) {
            return None;
        }
        let year: u32 = year.parse().ok()?;
        let month: u32 = month.parse().ok()?;
        (1..=12)
            .contains(&month)
            .then(|| MonthId(year * 12 + month - 1))
    }

    pub fn year(self) -> u32 {
        self.0 / 12
    }

    pub fn month(self) -> u32 {
        self.0 % 12 + 1
    }

    /// `YYYY-MM`.
    pub fn label(self) -> String {
        format!("{:04}-{:02}", self.year(), self.month())
    }

    /// The instant the month begins (its first day, 00:00:00.000 UTC), in epoch milliseconds.
    pub fn start_epoch_ms(self) -> i64 {
        days_from_civil(i64::from(self.year()), i64::from(self.month())) * 86_400_000
    }

    /// The month after this one.
    pub fn next(self) -> MonthId {
        MonthId(self.0 + 1)
    }
}

/// Days since 1970-01-01 of the first day of `month` (1-12) of `year`, proleptic Gregorian
/// (Howard Hinnant's `days_from_civil`, the inverse of `civil_year_month` below).
fn days_from_civil(year: i64, month: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5; // the 1st of the month
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Year, month (1-12) and day (1-31) of a day count since 1970-01-01, proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_of_known_instants() {
        assert_eq!(MonthId::from_epoch_ms(0).label(), "1970-01");
        // 2026-10-31T23:59:59.999Z and one millisecond later
        assert_eq!(MonthId::from_epoch_ms(1_793_491_199_999).label(), "2026-10");
        assert_eq!(MonthId::from_epoch_ms(1_793_491_200_000).label(), "2026-11");
        // 2024-02-29T12:00:00Z (leap day)
        assert_eq!(MonthId::from_epoch_ms(1_709_208_000_000).label(), "2024-02");
        // 1969-12-31T23:59:59Z
        assert_eq!(MonthId::from_epoch_ms(-1_000).label(), "1969-12");
    }

    /// Number of days in a month (28..=31).
    fn days_in(month: MonthId) -> u8 {
        let year = month.year();
        let leap =
            year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
        match month.month() {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    #[test]
    fn days_of_known_instants() {
        let day = |ms| MonthId::with_day_from_epoch_ms(ms);
        assert_eq!(day(0), (MonthId::parse("1970-01").unwrap(), 1));
        assert_eq!(
            day(1_793_491_199_999),
            (MonthId::parse("2026-10").unwrap(), 31)
        );
        assert_eq!(
            day(1_793_491_200_000),
            (MonthId::parse("2026-11").unwrap(), 1)
        );
        assert_eq!(
            day(1_709_208_000_000),
            (MonthId::parse("2024-02").unwrap(), 29)
        );
        assert_eq!(day(-1_000), (MonthId::parse("1969-12").unwrap(), 31));
        // Every day of 2024 (a leap year) and 2100 (not one), each month's days in order.
        for year_start_ms in [1_704_067_200_000i64, 4_102_444_800_000] {
            let mut expected = (MonthId::from_epoch_ms(year_start_ms), 1u8);
            for n in 0..365 {
                let got = day(year_start_ms + n * 86_400_000 + 43_200_000);
                assert_eq!(got, expected, "day {n}");
                expected = match expected.1 == days_in(expected.0) {
                    true => (MonthId(expected.0 .0 + 1), 1),
                    false => (expected.0, expected.1 + 1),
                };
            }
        }
    }

    #[test]
    fn months_start_where_the_previous_ends() {
        for ms in [
            0,
            1_793_491_200_000,
            1_709_208_000_000,
            -1_000,
            253_402_300_799_999,
        ] {
            let month = MonthId::from_epoch_ms(ms);
            let start = month.start_epoch_ms();
            assert!(start <= ms, "{}", month.label());
            assert_eq!(MonthId::from_epoch_ms(start), month);
            assert_eq!(MonthId::from_epoch_ms(start - 1).next(), month);
        }
        assert_eq!(
            MonthId::parse("2026-11").unwrap().start_epoch_ms(),
            1_793_491_200_000
        );
    }

    #[test]
    fn labels_round_trip() {
        for label in ["2026-01", "2026-12", "1999-07"] {
            assert_eq!(MonthId::parse(label).unwrap().label(), label);
        }
        for bad in [
            "2026-13", "2026-00", "26-01", "2026/01", "2026-1", "", "+026-01", "2026-+1",
            "20260-01", "2026-01-", " 2026-01",
        ] {
            assert_eq!(MonthId::parse(bad), None, "{bad}");
        }
    }
}
