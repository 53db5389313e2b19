//! Per-day figures: one user's month per UTC day and usage type (units, cost, count), over all
//! of the user's apps (issue 12, point 6).
//!
//! Every delta a charge books into the month is booked into its day too (charges, refunds as
//! `refund:<type>`, a `set_total`'s `manual_adjustment`), so that summed over the days each usage
//! type's figures are exactly the month's. That invariant is kept by construction (the same
//! deltas, no check that could refuse one but not the other) and verified whenever a month is
//! loaded (`MonthImage::check`).
//!
//! Day 0 (`UNDATED`) holds what a month held before its days were kept: a month read from a
//! store of format 1 or 2 has no per-day figures, so its whole figures load as undated; the days
//! 1..=31 then cover only what was recorded since. Reports show that part apart, never spread
//! over days it may not belong to.
//!
//! # Cost on the hot path
//! The counters are one vector sorted by (day, usage type), keyed by one `u64`. Time moves
//! forward, so today's counters are at the end: a user charging one usage type again today finds
//! its counter with one compare against the last key (`add`); anything else (another type, a day
//! that starts, a clock that went back) takes a binary search and perhaps an insert (`add_from`,
//! out of line), and a batch walks the day once (`add_batch`). Nothing here can fail: a day's
//! units and count are at most the month's (each delta adds to both), which a charge has already
//! checked, and a day's cost is a difference of two month figures within `RECORD_LIMITS`, so at
//! most twice the limit. Measured (`make bench-hot-path`, callgrind, one warm actor):
//! `increment_usage` 2,640 -> 2,728 instructions, `try_increment_usage` 2,707 -> 2,793, a batch
//! item (100 types) 1,204 -> 1,322.
//!
//! # Memory
//! A counter takes 40 bytes (`DayCounter`: units, cost as two `u64`, count, key). The first one
//! is kept inline in the month (a user metered on one day for one type allocates nothing more,
//! and a charge follows no pointer to it): that makes every month 48 bytes larger (`UserMonth`
//! 208 -> 256 bytes, `size_of` on x86-64). The rest grow on the heap by doubling, so a month of
//! `d` days by `t` usage types holds `d * t` counters, 40 to 80 bytes each. A `Vec` instead
//! would add 24 bytes inline, plus a heap block at the first charge.

use smallvec::SmallVec;

use super::image::MonthImage;
use super::record::{join128, split128, Delta, TypeId, UsageCounter, RECORD_LIMITS};
use crate::money::Money;

/// A day of a UTC month, 1..=31; `UNDATED` (0) for figures older than the per-day ones.
pub type Day = u8;

/// The day of figures loaded from a store written before per-day figures were kept.
pub const UNDATED: Day = 0;

/// The last day a month can have.
pub const LAST_DAY: Day = 31;

/// A day's cost of one usage type is a difference of two of its month costs (the month's figure
/// before the day and at its end), each within `RECORD_LIMITS.money`.
pub const MAX_DAY_COST_ATTOCENTS: i128 = 2 * RECORD_LIMITS.money;

/// The key that orders counters by day, then usage type.
#[inline]
fn key(day: Day, usage_type: TypeId) -> u64 {
    (u64::from(day) << 32) | u64::from(usage_type)
}

/// One usage type's figures on one day, 40 bytes (see the module's "Memory").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DayCounter {
    /// `key(day, usage_type)`.
    key: u64,
    units: u64,
    /// Attocents as two `u64` halves: 8-byte alignment keeps the counter at 40 bytes, not 48.
    cost: [u64; 2],
    count: u64,
}

impl DayCounter {
    fn new(key: u64, delta: &Delta) -> DayCounter {
        DayCounter {
            key,
            units: delta.units,
            cost: split128(delta.cost.attocents() as u128),
            count: delta.count,
        }
    }

    /// Adds a delta the month already took (see the module: this cannot leave the ranges).
    #[inline]
    fn add(&mut self, delta: &Delta) {
        self.units += delta.units;
        self.cost = split128((join128(self.cost) as i128 + delta.cost.attocents()) as u128);
        self.count += delta.count;
    }

    fn day(&self) -> Day {
        (self.key >> 32) as Day
    }

    fn usage_type(&self) -> TypeId {
        self.key as TypeId
    }

    fn counter(&self) -> UsageCounter {
        UsageCounter {
            units: u128::from(self.units),
            cost: Money::from_attocents(join128(self.cost) as i128)
                .expect("a day's cost is within twice the record limit"),
            count: self.count,
        }
    }
}

/// One user's month by day and usage type, sorted by (day, type).
#[derive(Clone, Debug, Default)]
pub struct MonthDays(SmallVec<[DayCounter; 1]>);

/// One day of a user's month, summed over its usage types.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DayReport {
    /// 1..=31, or `UNDATED`.
    pub day: Day,
    pub total: Money,
    pub count: u64,
    /// Sorted by type id.
    pub by_type: Vec<(TypeId, UsageCounter)>,
}

impl MonthDays {
    /// Books a charge's deltas (already checked and booked into the month) into `day`.
    #[inline]
    pub fn add(&mut self, day: Day, deltas: &[Delta]) {
        match deltas {
            [delta] => {
                let key = key(day, delta.usage_type);
                match self.0.last_mut() {
                    Some(last) if last.key == key => last.add(delta),
                    _ => {
                        self.add_from(0, key, delta);
                    }
                }
            }
            _ => self.add_batch(day, deltas),
        }
    }

    /// `add` of several deltas. A batch's deltas come sorted by type (`fold_deltas`), as the
    /// day's counters are: each is looked for from where the previous one was, first right
    /// there (a batch of the same types as the day's last one: one compare per item), instead
    /// of a binary search of the whole day per item.
    #[inline(never)]
    fn add_batch(&mut self, day: Day, deltas: &[Delta]) {
        let mut from = 0;
        for delta in deltas {
            let key = key(day, delta.usage_type);
            if from > 0 && self.0[from - 1].key >= key {
                from = 0; // not in ascending order after all: look from the start
            }
            from = self.add_from(from, key, delta) + 1;
        }
    }

    /// Adds `delta` to the counter `key`, looked for at `from` and after; returns its index.
    #[inline(never)]
    fn add_from(&mut self, from: usize, key: u64, delta: &Delta) -> usize {
        let found = match self.0.get(from) {
            Some(counter) if counter.key == key => Ok(from),
            _ => self.0[from..]
                .binary_search_by_key(&key, |c| c.key)
                .map(|at| from + at)
                .map_err(|at| from + at),
        };
        match found {
            Ok(at) => {
                self.0[at].add(delta);
                at
            }
            Err(at) => {
                self.0.insert(at, DayCounter::new(key, delta));
                at
            }
        }
    }

    /// Every counter as `(day, usage type, figures)`, sorted by day then type id.
    pub fn counters(&self) -> impl Iterator<Item = (Day, TypeId, UsageCounter)> + '_ {
        self.0
            .iter()
            .map(|c| (c.day(), c.usage_type(), c.counter()))
    }

    /// The days with figures, in order (`UNDATED` first, if any).
    pub fn report(&self) -> Vec<DayReport> {
        let mut days: Vec<DayReport> = Vec::new();
        for (day, usage_type, counter) in self.counters() {
            if days.last().is_none_or(|d| d.day != day) {
                days.push(DayReport {
                    day,
                    ..DayReport::default()
                });
            }
            let report = days.last_mut().expect("pushed above");
            // A day's total is a difference of two month totals: within twice the record limit.
            report.total = report.total.plus(counter.cost);
            report.count += counter.count;
            report.by_type.push((usage_type, counter));
        }
        days
    }

    /// The days of a loaded month (`MonthImage::check` verified them), types interned by `intern`.
    pub fn from_image(image: &MonthImage, mut intern: impl FnMut(&str) -> TypeId) -> MonthDays {
        let mut counters: SmallVec<[DayCounter; 1]> = image
            .days
            .iter()
            .map(|(day, name, c)| DayCounter {
                key: key(*day, intern(name)),
                units: u64::try_from(c.units).expect("checked: a day's units fit in u64"),
                cost: split128(c.cost.attocents() as u128),
                count: c.count,
            })
            .collect();
        // The image is sorted by name; the ledger sorts by type id.
        counters.sort_unstable_by_key(|c| c.key);
        MonthDays(counters)
    }

    /// Number of (day, type) counters (for tests and memory figures).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The per-day figures of a month image: `(day, usage type, figures)`, sorted by day, then name.
pub type DayImages = Vec<(Day, String, UsageCounter)>;

/// The days of a month read from a store written before per-day figures were kept: the month's
/// own figures, undated.
pub fn undated(by_type: &[(String, UsageCounter)]) -> DayImages {
    let mut days: DayImages = by_type
        .iter()
        .map(|(name, c)| (UNDATED, name.clone(), *c))
        .collect();
    days.sort_by(|a, b| a.1.cmp(&b.1));
    days
}

/// Checks a month image's days: days 0..=31, sorted by (day, name) without repeats, every
/// figure in range, and each usage type's days summing exactly to the month's figures (so a
/// day names no usage type the month lacks).
pub fn check_days(image: &MonthImage) -> Result<(), String> {
    let mut sums: std::collections::BTreeMap<&str, [i128; 3]> = Default::default();
    let mut previous: Option<(Day, &str)> = None;
    for (day, name, c) in &image.days {
        if *day > LAST_DAY {
            return Err(format!(
                "day {day} of the per-day figures is not a day of a month"
            ));
        }
        if previous.is_some_and(|p| p >= (*day, name.as_str())) {
            return Err("the per-day figures are not sorted by day and usage type".into());
        }
        previous = Some((*day, name));
        if c.units > RECORD_LIMITS.units || c.cost.attocents().abs() > MAX_DAY_COST_ATTOCENTS {
            return Err(format!(
                "day {day}, {name:?}: a figure is beyond the limits"
            ));
        }
        let sum = sums.entry(name).or_default();
        sum[0] += c.units as i128;
        sum[1] += c.cost.attocents();
        sum[2] += i128::from(c.count);
    }
    for (name, c) in &image.usage.by_type {
        let days = sums.remove(name.as_str()).unwrap_or_default();
        if days != [c.units as i128, c.cost.attocents(), i128::from(c.count)] {
            return Err(format!(
                "the per-day figures of {name:?} do not add up to the month's"
            ));
        }
    }
    match sums.keys().next() {
        Some(name) => Err(format!(
            "the per-day figures name {name:?}, which the month does not have"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(usage_type: TypeId, units: u64, attocents: i128) -> Delta {
        Delta {
            usage_type,
            units,
            cost: Money::from_attocents(attocents).unwrap(),
            count: 1,
        }
    }

    /// Charges of every kind on several days through two apps: the ledger's days add up to its
    /// month, its image passes the store's checks, and a ledger restored from it has the same days.
    #[test]
    fn a_ledgers_days_add_up_to_its_month_and_survive_an_image() {
        use crate::costmap::CostMap;
        use crate::ledger::month::MonthId;
        use crate::ledger::{Booking, ChargeMode, Ledger, Plan, Unmapped, UsageItem};
        use std::sync::Arc;

        let map = CostMap::from_json_sources([("t.json", r#"{"a": 125, "b": "31.25"}"#)]).unwrap();
        let ledger = Ledger::new(Arc::new(map.clone()), Unmapped::Error).track_changes();
        let month = MonthId(2026 * 12 + 9);
        let item = |usage_type, units| UsageItem {
            usage_type,
            units,
            cost_override: None,
        };
        for (day, app) in [(3, "x"), (1, "y"), (3, "y"), (30, "x"), (3, "x")] {
            let booking = Booking {
                user_id: "u",
                app_id: app,
                month,
                day,
                plan: Plan::Fixed(Money::from_microcents(1_000).unwrap()),
                now_ms: 0,
            };
            let items = [item("a", u64::from(day)), item("b", 3), item("a", 1)];
            ledger
                .charge(None, &booking, &items, ChargeMode::Always)
                .unwrap();
            ledger
                .charge(None, &booking, &items[1..2], ChargeMode::Always)
                .unwrap();
            if day == 30 {
                ledger.refund(None, &booking, "a", 2, None).unwrap();
                let target = ChargeMode::SetTotal(Money::from_microcents(99_999).unwrap());
                ledger.charge(None, &booking, &[], target).unwrap();
            }
        }
        let days = ledger.user_days("u", month);
        assert_eq!(days.iter().map(|d| d.day).collect::<Vec<_>>(), [1, 3, 30]);
        let month_usage = ledger.user_usage("u", month);
        for (usage_type, figures) in &month_usage.by_type {
            let of_type = days
                .iter()
                .flat_map(|d| &d.by_type)
                .filter(|(t, _)| t == usage_type);
            let (units, cost, count) = of_type.fold((0, 0, 0), |(u, c, n), (_, f)| {
                (u + f.units, c + f.cost.attocents(), n + f.count)
            });
            assert_eq!(
                (units, cost, u128::from(count)),
                (figures.units, figures.cost.attocents(), figures.count)
            );
        }
        let total: i128 = days.iter().map(|d| d.total.attocents()).sum();
        assert_eq!(total, month_usage.total.attocents());
        let adjusted = days[2].by_type.iter().map(|(t, _)| ledger.type_name(*t));
        let names: Vec<_> = adjusted.map(|name| name.to_string()).collect();
        assert_eq!(
            names.len(),
            4,
            "a, b, manual_adjustment and refund:a on the 30th: {names:?}"
        );
        let images = ledger.take_changes();
        images[0].months[0].1.check().unwrap();
        let restored = Ledger::new(Arc::new(map), Unmapped::Error);
        restored.restore(images);
        assert_eq!(restored.user_days("u", month), days);
    }

    #[test]
    fn a_counter_takes_40_bytes() {
        assert_eq!(std::mem::size_of::<DayCounter>(), 40);
    }

    #[test]
    fn days_stay_sorted_whatever_the_order_of_the_charges() {
        let mut days = MonthDays::default();
        days.add(3, &[delta(7, 1, 10)]);
        days.add(3, &[delta(7, 2, 20)]); // the last counter: one compare
        days.add(3, &[delta(2, 1, -5)]); // another type today
        days.add(1, &[delta(7, 1, 1)]); // a clock that went back
        days.add(4, &[delta(2, 1, 1), delta(7, 1, 1)]);
        days.add(4, &[delta(2, 0, 0), delta(5, 0, 0), delta(7, 0, 0)]); // a batch walks the day
        days.add(4, &[delta(7, 0, 0), delta(2, 0, 0), delta(7, 0, 0)]); // out of order: still found
        let counters: Vec<_> = days.counters().map(|(d, t, c)| (d, t, c.units)).collect();
        assert_eq!(
            counters,
            vec![
                (1, 7, 1),
                (3, 2, 1),
                (3, 7, 3),
                (4, 2, 1),
                (4, 5, 0),
                (4, 7, 1)
            ]
        );
        let counts: Vec<_> = days.counters().map(|(_, _, c)| c.count).collect();
        assert_eq!(counts, vec![1, 1, 2, 3, 1, 4]);
        let report = days.report();
        assert_eq!(report.len(), 3);
        assert_eq!(report[1].day, 3);
        assert_eq!(report[1].total, Money::from_attocents(25).unwrap());
        assert_eq!(report[1].count, 3);
    }

    #[test]
    fn a_day_holds_twice_the_record_limit_in_cost() {
        let mut days = MonthDays::default();
        let limit = RECORD_LIMITS.money;
        days.add(1, &[delta(1, 0, limit)]);
        days.add(1, &[delta(1, 0, limit)]);
        let (_, _, counter) = days.counters().next().unwrap();
        assert_eq!(counter.cost.attocents(), MAX_DAY_COST_ATTOCENTS);
        days.add(1, &[delta(1, 0, -MAX_DAY_COST_ATTOCENTS)]);
        days.add(1, &[delta(1, 0, -MAX_DAY_COST_ATTOCENTS)]);
        let (_, _, counter) = days.counters().next().unwrap();
        assert_eq!(counter.cost.attocents(), -MAX_DAY_COST_ATTOCENTS);
        assert_eq!(counter.count, 4);
    }
}
