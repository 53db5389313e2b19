//! Usage records: a total plus `{units, cost, count}` per usage type, updated all-or-nothing.

use std::collections::hash_map::{Entry, VacantEntry};
use std::collections::HashMap;

use crate::error::{overflow, LedgerResult};
use crate::money::{Money, MAX_RECORD_ATTOCENTS};

/// Interned usage type: a cost-map index, or a later id for types the cost map does not price.
pub type TypeId = u32;

pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A lock-free map for the process-wide indexes (accounts, plans, usage types).
pub type ConcurrentMap<K, V> = papaya::HashMap<K, V, foldhash::fast::RandomState>;

/// Blocking resizes: papaya's default incremental resize leaves lookups probing the old and the
/// new table until writers finish the copy, which made a warm lookup over 1,000,000 accounts
/// the most expensive step of a charge (48% of the time in `cargo bench --bench core`).
pub fn new_concurrent_map<K: std::hash::Hash + Eq, V>() -> ConcurrentMap<K, V> {
    papaya::HashMap::builder()
        .hasher(foldhash::fast::RandomState::default())
        .resize_mode(papaya::ResizeMode::Blocking)
        .build()
}

/// What one usage type has accumulated in one record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageCounter {
    /// Wider than a record's limit (`u64`): reports sum counters of many records.
    pub units: u128,
    pub cost: Money,
    pub count: u64,
}

/// One change to one usage type. A batch is first folded into one delta per type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delta {
    pub usage_type: TypeId,
    pub units: u64,
    pub cost: Money,
    pub count: u64,
}

impl Delta {
    /// Adds `other` (same type) into `self`, refusing a batch whose own sums leave the range.
    pub fn absorb(&mut self, other: &Delta) -> LedgerResult<()> {
        self.units = self
            .units
            .checked_add(other.units)
            .ok_or_else(|| overflow("the batch's units"))?;
        self.cost = self
            .cost
            .checked_add(other.cost)
            .ok_or_else(|| overflow("the batch's cost"))?;
        self.count = self
            .count
            .checked_add(other.count)
            .ok_or_else(|| overflow("the batch's count"))?;
        Ok(())
    }
}

/// Folds deltas so each usage type appears once (a batch may name a type several times), in
/// place: sorted by type without allocating, then each run of one type summed into its first.
pub fn fold_deltas<A: smallvec::Array<Item = Delta>>(
    deltas: &mut smallvec::SmallVec<A>,
) -> LedgerResult<()> {
    deltas.sort_unstable_by_key(|d| d.usage_type);
    let mut kept = 0;
    for at in 0..deltas.len() {
        let delta = deltas[at];
        if at > 0 && deltas[kept - 1].usage_type == delta.usage_type {
            deltas[kept - 1].absorb(&delta)?;
        } else {
            deltas[kept] = delta;
            kept += 1;
        }
    }
    deltas.truncate(kept);
    Ok(())
}

/// How far a record's figures may go before a charge is refused with an overflow error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub units: u128,
    pub money: i128,
}

/// An actor's or app's month: units are `0..=2**64-1` per type, money within 10^18 µ¢.
pub const RECORD_LIMITS: Limits = Limits {
    units: u64::MAX as u128,
    money: MAX_RECORD_ATTOCENTS,
};

/// A total and per-type counters: one app's month of one actor.
///
/// The counters are a hash map by type id. A vector sorted by type id was tried: faster with a
/// few types per record, but 721 -> 1,387 ns per call with 500 types per hot user (then also in
/// the global aggregate; `benches/run.py`, Zipf over the cost map), so the map stays.
#[derive(Clone, Debug, Default)]
pub struct UsageRecord {
    pub total: Money,
    pub count: u64,
    by_type: FastMap<TypeId, StoredCounter>,
}

/// A `UsageCounter` as a record stores it: units in the `u64` a record is limited to, and the
/// 128-bit cost as a pair of `u64`, so it is aligned to 8 bytes rather than 16 and a (type,
/// counter) map entry takes 40 bytes instead of 64. Peak RSS per record at 1,000,000 records
/// (`benches/run.py --only memory`): 222 B with 128-bit fields, 196-202 B with pairs of `u64`,
/// 129 B with 64-bit units and the account's first month and app inline (see `Months`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct StoredCounter {
    units: u64,
    cost: [u64; 2],
    count: u64,
}

pub(crate) fn split128(value: u128) -> [u64; 2] {
    [value as u64, (value >> 64) as u64]
}

pub(crate) fn join128(halves: [u64; 2]) -> u128 {
    u128::from(halves[0]) | (u128::from(halves[1]) << 64)
}

impl From<UsageCounter> for StoredCounter {
    fn from(c: UsageCounter) -> Self {
        StoredCounter {
            units: u64::try_from(c.units).expect("a record's units are within RECORD_LIMITS"),
            cost: split128(c.cost.attocents() as u128),
            count: c.count,
        }
    }
}

impl From<StoredCounter> for UsageCounter {
    fn from(c: StoredCounter) -> Self {
        let cost =
            Money::from_attocents(join128(c.cost) as i128).expect("stored costs are in range");
        UsageCounter {
            units: u128::from(c.units),
            cost,
            count: c.count,
        }
    }
}

// A stored counter's `u64` units are exactly the record's limit.
const _: () = assert!(RECORD_LIMITS.units == u64::MAX as u128);

impl StoredCounter {
    /// The counter with `delta` added, or an overflow error naming `what` if it would leave
    /// `RECORD_LIMITS`. Works on the stored fields directly: this runs on every charge.
    fn plus_checked(&self, delta: &Delta, what: &str) -> LedgerResult<Self> {
        let units = self
            .units
            .checked_add(delta.units)
            .ok_or_else(|| overflow(&format!("{what} units")))?;
        // Both terms are within 10^36 in magnitude, so the sum cannot overflow `i128`.
        let cost = join128(self.cost) as i128 + delta.cost.attocents();
        if cost.abs() > RECORD_LIMITS.money {
            return Err(overflow(&format!("{what} cost")));
        }
        let count = self
            .count
            .checked_add(delta.count)
            .ok_or_else(|| overflow(&format!("{what} count")))?;
        Ok(StoredCounter {
            units,
            cost: split128(cost as u128),
            count,
        })
    }
}

fn money_within(money: Option<Money>) -> Option<Money> {
    money.filter(|m| m.attocents().abs() <= RECORD_LIMITS.money)
}

/// One delta checked against a record by `UsageRecord::prepare`, written by `commit`.
pub struct Prepared<'a> {
    slot: Slot<'a>,
    counter: StoredCounter,
    total: &'a mut Money,
    new_total: Money,
    count: &'a mut u64,
    new_count: u64,
}

/// Where a prepared counter goes: over the old one, or into the map as a new type.
enum Slot<'a> {
    Occupied(&'a mut StoredCounter),
    Vacant(VacantEntry<'a, TypeId, StoredCounter>),
}

impl Prepared<'_> {
    /// Writes the checked figures (nothing here can fail).
    pub fn commit(self) {
        match self.slot {
            Slot::Occupied(stored) => *stored = self.counter,
            Slot::Vacant(entry) => {
                entry.insert(self.counter);
            }
        }
        *self.total = self.new_total;
        *self.count = self.new_count;
    }
}

impl UsageRecord {
    /// Fails, changing nothing, if applying `deltas` (one per type) would leave `RECORD_LIMITS`.
    pub fn check(&self, deltas: &[Delta], what: &str) -> LedgerResult<()> {
        let mut total = Some(self.total);
        let mut count = Some(self.count);
        for delta in deltas {
            let current = self.by_type.get(&delta.usage_type).copied();
            current.unwrap_or_default().plus_checked(delta, what)?;
            total = money_within(total.and_then(|t| t.checked_add(delta.cost)));
            count = count.and_then(|c| c.checked_add(delta.count));
        }
        total.ok_or_else(|| overflow(&format!("{what} total")))?;
        count.ok_or_else(|| overflow(&format!("{what} count")))?;
        Ok(())
    }

    /// `check` and `apply` for one delta with one hash lookup: checks it against `RECORD_LIMITS` and
    /// returns it ready to `commit`; dropping the result (or an error) changes nothing. A new
    /// usage type's counter is inserted only by `commit`.
    pub fn prepare(&mut self, delta: &Delta, what: &str) -> LedgerResult<Prepared<'_>> {
        let UsageRecord {
            total,
            count,
            by_type,
        } = self;
        let new_total = money_within(total.checked_add(delta.cost))
            .ok_or_else(|| overflow(&format!("{what} total")))?;
        let new_count = count
            .checked_add(delta.count)
            .ok_or_else(|| overflow(&format!("{what} count")))?;
        let (slot, current) = match by_type.entry(delta.usage_type) {
            Entry::Occupied(entry) => {
                let current = *entry.get();
                (Slot::Occupied(entry.into_mut()), current)
            }
            Entry::Vacant(entry) => (Slot::Vacant(entry), StoredCounter::default()),
        };
        let counter = current.plus_checked(delta, what)?;
        Ok(Prepared {
            slot,
            counter,
            total,
            new_total,
            count,
            new_count,
        })
    }

    /// Applies deltas that `check` accepted.
    pub fn apply(&mut self, deltas: &[Delta]) {
        for delta in deltas {
            let stored = self.by_type.entry(delta.usage_type).or_default();
            *stored = stored
                .plus_checked(delta, "a record")
                .expect("deltas checked before they are applied");
            self.total = self.total.plus(delta.cost);
            self.count += delta.count;
        }
    }

    pub fn counter(&self, usage_type: TypeId) -> Option<UsageCounter> {
        self.by_type
            .get(&usage_type)
            .map(|stored| UsageCounter::from(*stored))
    }

    pub fn counters(&self) -> impl Iterator<Item = (TypeId, UsageCounter)> + '_ {
        self.by_type
            .iter()
            .map(|(id, stored)| (*id, UsageCounter::from(*stored)))
    }

    pub fn type_count(&self) -> usize {
        self.by_type.len()
    }

    /// The record as deltas from zero (for adding it into an aggregate).
    pub fn deltas(&self) -> impl Iterator<Item = Delta> + '_ {
        self.counters().map(|(id, c)| Delta {
            usage_type: id,
            units: u64::try_from(c.units).expect("a record holds at most 2**64-1 units per type"),
            cost: c.cost,
            count: c.count,
        })
    }

    /// A record from loaded counters (already checked by the store).
    pub fn from_counters(
        total: Money,
        count: u64,
        counters: impl IntoIterator<Item = (TypeId, UsageCounter)>,
    ) -> Self {
        let by_type = counters
            .into_iter()
            .map(|(id, c)| (id, StoredCounter::from(c)))
            .collect();
        UsageRecord {
            total,
            count,
            by_type,
        }
    }
}

/// A read-only sum of records: one user's apps, or every user's (`Ledger::global_usage`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageReport {
    pub total: Money,
    pub count: u128,
    /// Sorted by type id.
    pub by_type: Vec<(TypeId, TypeReport)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TypeReport {
    pub units: u128,
    pub cost: Money,
    pub count: u128,
}

impl UsageReport {
    pub fn of(record: &UsageRecord) -> UsageReport {
        let mut report = UsageReport::default();
        report
            .add(record)
            .expect("one record is within the per-actor limits");
        report
    }

    /// Adds a record in; `None` (the report is then unusable) if a sum of money leaves the
    /// ledger's range, which takes a million records at the per-actor limit (see
    /// `money::MAX_ABS_ATTOCENTS`). Units and counts cannot overflow: records hold at most
    /// `2**64 - 1` of each, and reports sum them in `u128`.
    pub fn add(&mut self, record: &UsageRecord) -> Option<()> {
        self.total = Money::from_attocents(self.total.attocents() + record.total.attocents())?;
        self.count += u128::from(record.count);
        for (usage_type, counter) in record.counters() {
            let at = match self
                .by_type
                .binary_search_by_key(&usage_type, |(id, _)| *id)
            {
                Ok(at) => at,
                Err(at) => {
                    self.by_type.insert(at, (usage_type, TypeReport::default()));
                    at
                }
            };
            let entry = &mut self.by_type[at].1;
            entry.units += counter.units;
            entry.cost = Money::from_attocents(entry.cost.attocents() + counter.cost.attocents())?;
            entry.count += u128::from(counter.count);
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(usage_type: TypeId, units: u64, microcents: i128) -> Delta {
        Delta {
            usage_type,
            units,
            cost: Money::from_microcents(microcents).unwrap(),
            count: 1,
        }
    }

    #[test]
    fn fold_merges_repeated_types() {
        let mut deltas: smallvec::SmallVec<[Delta; 4]> =
            smallvec::smallvec![delta(2, 1, 125), delta(1, 1, 63), delta(2, 1, 125)];
        fold_deltas(&mut deltas).unwrap();
        assert_eq!(
            deltas.to_vec(),
            vec![
                delta(1, 1, 63),
                Delta {
                    count: 2,
                    ..delta(2, 2, 250)
                }
            ]
        );
    }

    #[test]
    fn check_refuses_overflow_and_apply_adds() {
        let mut record = UsageRecord::default();
        let big = delta(7, u64::MAX, 1);
        record.check(&[big], "test").unwrap();
        record.apply(&[big]);
        assert!(record.check(&[delta(7, 1, 1)], "test").is_err());
        assert_eq!(record.counter(7).unwrap().units, u128::from(u64::MAX));
        assert_eq!(record.total, Money::from_microcents(1).unwrap());
        record.check(&[delta(8, 1, 1)], "test").unwrap();
        let at_limit = Money::from_attocents(MAX_RECORD_ATTOCENTS).unwrap();
        let costly = Delta {
            cost: at_limit,
            ..delta(9, 0, 0)
        };
        assert!(record.check(&[costly], "test").is_err());
    }

    #[test]
    fn stored_counters_keep_every_value_a_record_can_hold() {
        for (units, attocents) in [
            (0, 0),
            (u128::from(u64::MAX), -MAX_RECORD_ATTOCENTS),
            (1 << 40, MAX_RECORD_ATTOCENTS),
            (7, -1),
        ] {
            let counter = UsageCounter {
                units,
                cost: Money::from_attocents(attocents).unwrap(),
                count: 9,
            };
            assert_eq!(UsageCounter::from(StoredCounter::from(counter)), counter);
        }
    }

    #[test]
    fn reports_sum_records_without_overflow() {
        let mut record = UsageRecord::default();
        record.apply(&[delta(1, u64::MAX, 5)]);
        let mut report = UsageReport::of(&record);
        report.add(&record).unwrap();
        assert_eq!(report.by_type[0].1.units, 2 * u128::from(u64::MAX));
        assert_eq!(report.total, Money::from_microcents(10).unwrap());
        assert_eq!(report.count, 2);
    }

    #[test]
    fn reports_refuse_a_sum_beyond_the_range() {
        let at_limit = Delta {
            cost: Money::from_attocents(MAX_RECORD_ATTOCENTS).unwrap(),
            ..delta(1, 1, 0)
        };
        let mut record = UsageRecord::default();
        record.apply(&[at_limit]);
        let mut report = UsageReport::default();
        for _ in 0..1_000_000 {
            report.add(&record).unwrap();
        }
        assert_eq!(report.add(&record), None);
    }
}
