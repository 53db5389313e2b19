//! Plain copies of ledger state, with usage types by name: what a snapshot writes and a store
//! loads. Type ids are process-local (cost-map indexes), so they never leave the process.

use super::days::{self, DayImages};
use super::idempotency::KeyImage;
use super::month::MonthId;
use super::pools::{Credit, MonthPools};
use super::record::{UsageCounter, RECORD_LIMITS};
use crate::money::Money;

/// One record (an actor's month or one app's month): total, count and per-type counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordImage {
    pub total: Money,
    pub count: u64,
    pub by_type: Vec<(String, UsageCounter)>,
}

/// One user's month: its record, its apps' records, where its charges went and its days.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MonthImage {
    pub usage: RecordImage,
    pub apps: Vec<(String, RecordImage)>,
    pub pools: MonthPools,
    /// The user's figures per day and usage type (`days.rs`): summed over the days, each type's
    /// are the month's (`usage`).
    pub days: DayImages,
}

/// A user: lifetime credit and some of its months (all of them when loading; the changed ones
/// in a snapshot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserImage {
    pub user_id: String,
    pub credit: Credit,
    /// The id and allowance of the plan the user was last resolved to, if known.
    pub plan: Option<(String, Money)>,
    /// Outstanding holds (expired ones may be among them: they hold nothing).
    pub holds: Vec<super::holds::Hold>,
    pub months: Vec<(MonthId, MonthImage)>,
    /// The user's idempotency keys (`idempotency.rs`): all of them, when loading or when they
    /// changed since the last snapshot; `None` when unchanged (or, loading, never stored).
    pub keys: Option<Vec<KeyImage>>,
}

impl RecordImage {
    /// Whether the total and count are the sums of the per-type counters.
    fn sums_hold(&self) -> bool {
        let cost: Option<i128> = self
            .by_type
            .iter()
            .try_fold(0i128, |sum, (_, c)| sum.checked_add(c.cost.attocents()));
        let count: Option<u64> = self
            .by_type
            .iter()
            .try_fold(0u64, |sum, (_, c)| sum.checked_add(c.count));
        cost == Some(self.total.attocents()) && count == Some(self.count)
    }

    /// Whether every figure is within the per-actor limits a charge enforces (`RECORD_LIMITS`).
    fn within_limits(&self) -> bool {
        self.total.fits_record()
            && self.by_type.iter().all(|(_, c)| {
                c.units <= RECORD_LIMITS.units && c.cost.attocents().abs() <= RECORD_LIMITS.money
            })
    }
}

impl MonthImage {
    /// Checks the invariants every stored month must satisfy; a record that passes its checksum
    /// but breaks these was written wrong, and is refused like a corrupted one.
    pub fn check(&self) -> Result<(), String> {
        if !self.usage.sums_hold() {
            return Err("the month total is not the sum of its usage types".into());
        }
        if let Some((app, _)) = self.apps.iter().find(|(_, record)| !record.sums_hold()) {
            return Err(format!(
                "app {app:?}: the total is not the sum of its usage types"
            ));
        }
        if let Some((app, _)) = self.apps.iter().find(|(_, r)| !r.within_limits()) {
            return Err(format!(
                "app {app:?}: a figure is beyond the per-actor limits"
            ));
        }
        let app_sum = self
            .apps
            .iter()
            .try_fold(0i128, |sum, (_, r)| sum.checked_add(r.total.attocents()));
        if app_sum != Some(self.usage.total.attocents()) {
            return Err("the app totals do not add up to the month total".into());
        }
        let pools = &self.pools;
        let pooled = pools
            .allowance_used
            .checked_add(pools.purchased_consumed)
            .and_then(|s| s.checked_add(pools.overage));
        if pooled != Some(self.usage.total) {
            return Err(
                "allowance used + purchased credit + overage is not the month total".into(),
            );
        }
        days::check_days(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn month_with_units(units: u128) -> MonthImage {
        let counter = UsageCounter {
            units,
            cost: Money::ZERO,
            count: 1,
        };
        let record = RecordImage {
            total: Money::ZERO,
            count: 1,
            by_type: vec![("kv:write".into(), counter)],
        };
        MonthImage {
            days: days::undated(&record.by_type),
            usage: record.clone(),
            apps: vec![("os-global".into(), record)],
            pools: MonthPools::default(),
        }
    }

    #[test]
    fn a_record_beyond_the_per_actor_limits_is_refused() {
        month_with_units(u128::from(u64::MAX)).check().unwrap();
        let error = month_with_units(u128::from(u64::MAX) + 1)
            .check()
            .unwrap_err();
        assert!(error.contains("beyond the per-actor limits"), "{error}");
    }
}
