//! A user's figures as plain signed numbers, so that differences can be taken and added: what a
//! worker has not sent yet is its account minus the fleet's figures it last knew, and bringing
//! in the fleet's newer figures adds their difference to the account.
//!
//! Counters are kept per (app, usage type) only; every total (an app's, the month's, the
//! user's per type) is a sum of them and is recomputed when an image is made. Pools and credit
//! are kept as they are, except in `merge`, which re-splits the sent cost over the fleet's pools.

use std::collections::BTreeMap;

use crate::ledger::days::Day;
use crate::ledger::image::{MonthImage, RecordImage, UserImage};
use crate::ledger::month::MonthId;
use crate::ledger::pools::{self, Credit, MonthPools};
use crate::ledger::record::UsageCounter;
use crate::ledger::REFUND_PREFIX;
use crate::money::Money;

/// Units, cost (attocents) and calls of one usage type in one app's month.
pub type Counter = [i128; 3];

/// One user's month.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MonthFigures {
    /// By (app, usage type); a counter that is all zero is left out.
    pub counters: BTreeMap<(String, String), Counter>,
    /// Allowance used, purchased credit consumed, overage (attocents).
    pub pools: [i128; 3],
    /// By (day, usage type), over all apps (`ledger/days.rs`); an all-zero counter is left out.
    /// Added up like the counters, so that two workers' days sum exactly as their months do.
    pub days: BTreeMap<(Day, String), Counter>,
}

/// One user: lifetime credit, last plan, and months.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserFigures {
    /// Purchased, consumed (attocents).
    pub credit: [i128; 2],
    pub plan: Option<(String, Money)>,
    pub months: BTreeMap<MonthId, MonthFigures>,
}

fn add3(a: &mut [i128; 3], b: &[i128; 3], sign: i128) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += sign * y;
    }
}

/// `mine += sign * other`, counter by counter, leaving out those that become zero.
fn add_counters<K: Ord + Clone>(
    mine: &mut BTreeMap<K, Counter>,
    other: &BTreeMap<K, Counter>,
    sign: i128,
) {
    for (key, counter) in other {
        let sum = mine.entry(key.clone()).or_default();
        add3(sum, counter, sign);
        if *sum == [0; 3] {
            mine.remove(key);
        }
    }
}

fn counter_of(c: &UsageCounter) -> Counter {
    [c.units as i128, c.cost.attocents(), i128::from(c.count)]
}

impl MonthFigures {
    pub fn of(image: &MonthImage) -> MonthFigures {
        let mut counters = BTreeMap::new();
        for (app, record) in &image.apps {
            for (usage_type, c) in &record.by_type {
                counters.insert((app.clone(), usage_type.clone()), counter_of(c));
            }
        }
        let days = image
            .days
            .iter()
            .map(|(day, usage_type, c)| ((*day, usage_type.clone()), counter_of(c)))
            .collect();
        MonthFigures {
            counters,
            pools: [
                image.pools.allowance_used.attocents(),
                image.pools.purchased_consumed.attocents(),
                image.pools.overage.attocents(),
            ],
            days,
        }
    }

    /// `self += sign * other`.
    pub fn add(&mut self, other: &MonthFigures, sign: i128) {
        add_counters(&mut self.counters, &other.counters, sign);
        add3(&mut self.pools, &other.pools, sign);
        add_counters(&mut self.days, &other.days, sign);
    }

    pub fn is_zero(&self) -> bool {
        self.counters.is_empty() && self.pools == [0; 3] && self.days.is_empty()
    }

    /// The cost of the month (the sum of its counters' costs).
    pub fn cost(&self) -> i128 {
        self.counters.values().map(|c| c[1]).sum()
    }

    /// The month as the ledger and the stores keep it, refusing figures no ledger can hold.
    pub fn to_image(&self) -> Result<MonthImage, String> {
        let money = |attocents: i128| {
            Money::from_attocents(attocents).ok_or_else(|| format!("{attocents} is out of range"))
        };
        let counter = |c: &Counter| -> Result<UsageCounter, String> {
            Ok(UsageCounter {
                units: u128::try_from(c[0]).map_err(|_| "negative units".to_string())?,
                cost: money(c[1])?,
                count: u64::try_from(c[2]).map_err(|_| "a negative count".to_string())?,
            })
        };
        let mut apps: Vec<(String, RecordImage)> = Vec::new();
        let mut by_type: BTreeMap<&str, Counter> = BTreeMap::new();
        for ((app, usage_type), c) in &self.counters {
            if apps.last().map(|(a, _)| a) != Some(app) {
                apps.push((app.clone(), RecordImage::default()));
            }
            let record = &mut apps.last_mut().expect("pushed above").1;
            record.by_type.push((usage_type.clone(), counter(c)?));
            add3(by_type.entry(usage_type).or_default(), c, 1);
        }
        for (_, record) in &mut apps {
            record.total = money(record.by_type.iter().map(|(_, c)| c.cost.attocents()).sum())?;
            record.count = record.by_type.iter().map(|(_, c)| c.count).sum();
        }
        let mut usage = RecordImage::default();
        for (usage_type, c) in by_type {
            usage.by_type.push((usage_type.to_string(), counter(&c)?));
        }
        usage.total = money(self.cost())?;
        usage.count = usage.by_type.iter().map(|(_, c)| c.count).sum();
        // The map's order, (day, name), is the image's.
        let days = self
            .days
            .iter()
            .map(|((day, usage_type), c)| Ok((*day, usage_type.clone(), counter(c)?)))
            .collect::<Result<_, String>>()?;
        let image = MonthImage {
            usage,
            apps,
            pools: MonthPools {
                allowance_used: money(self.pools[0])?,
                purchased_consumed: money(self.pools[1])?,
                overage: money(self.pools[2])?,
            },
            days,
        };
        image.check()?;
        Ok(image)
    }
}

impl UserFigures {
    pub fn of(image: &UserImage) -> UserFigures {
        UserFigures {
            credit: [
                image.credit.purchased.attocents(),
                image.credit.consumed.attocents(),
            ],
            plan: image.plan.clone(),
            months: image
                .months
                .iter()
                .map(|(month, m)| (*month, MonthFigures::of(m)))
                .collect(),
        }
    }

    /// `self + sign * other`, month by month; the plan is `other`'s when it has one.
    fn add(&mut self, other: &UserFigures, sign: i128) {
        self.credit[0] += sign * other.credit[0];
        self.credit[1] += sign * other.credit[1];
        for (month, figures) in &other.months {
            let mine = self.months.entry(*month).or_default();
            mine.add(figures, sign);
            if mine.is_zero() {
                self.months.remove(month);
            }
        }
        if other.plan.is_some() {
            self.plan.clone_from(&other.plan);
        }
    }

    pub fn plus(&self, other: &UserFigures) -> UserFigures {
        let mut sum = self.clone();
        sum.add(other, 1);
        sum
    }

    pub fn minus(&self, other: &UserFigures) -> UserFigures {
        let mut difference = self.clone();
        difference.add(other, -1);
        difference.plan.clone_from(&self.plan);
        difference
    }

    /// Only `months` of these figures (and the credit and plan).
    pub fn only_months(&self, months: impl IntoIterator<Item = MonthId>) -> UserFigures {
        UserFigures {
            credit: self.credit,
            plan: self.plan.clone(),
            months: months
                .into_iter()
                .filter_map(|m| self.months.get(&m).map(|f| (m, f.clone())))
                .collect(),
        }
    }

    /// Whether a difference changes nothing at all.
    pub fn is_zero(&self) -> bool {
        self.credit == [0; 2] && self.months.is_empty()
    }

    pub fn credit(&self) -> Result<Credit, String> {
        let money = |attocents: i128| {
            Money::from_attocents(attocents).ok_or_else(|| format!("{attocents} is out of range"))
        };
        Ok(Credit {
            purchased: money(self.credit[0])?,
            consumed: money(self.credit[1])?,
        })
    }

    /// The user as the ledger and the stores keep it (only `months` of it, when given).
    pub fn to_image(&self, user_id: &str) -> Result<UserImage, String> {
        let months = self
            .months
            .iter()
            .map(|(month, figures)| Ok((*month, figures.to_image()?)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(UserImage {
            user_id: user_id.to_string(),
            credit: self.credit()?,
            plan: self.plan.clone(),
            holds: Vec::new(),
            months,
            // Idempotency keys are not on the shared ledger yet: a fleet refuses them.
            keys: None,
        })
    }
}

/// The fleet's figures after one worker's unsent `delta` reaches figures `fleet`: counters and
/// purchased credit add up; the pools are split again over the fleet's pools (allowance, then
/// purchased credit, then overage), because the worker split its charges over its own view,
/// which did not hold the other workers' charges. Splitting the month's cost at once splits it
/// as the charges one after the other would (the split fills the pools in order).
pub fn merge(
    fleet: &UserFigures,
    delta: &UserFigures,
    allowance: Money,
) -> Result<UserFigures, String> {
    let mut merged = fleet.clone();
    merged.credit[0] += delta.credit[0];
    if delta.plan.is_some() {
        merged.plan.clone_from(&delta.plan);
    }
    for (month, sent) in &delta.months {
        let target = merged.months.entry(*month).or_default();
        add_counters(&mut target.counters, &sent.counters, 1);
        add_counters(&mut target.days, &sent.days, 1);
        // Refunds (`refund:` types) give back in the reverse order of a charge, purchased credit
        // included; the rest is split as charges (or, negative, as a manual adjustment).
        let refunded: i128 = sent
            .counters
            .iter()
            .filter(|((_, usage_type), _)| usage_type.starts_with(REFUND_PREFIX))
            .map(|(_, c)| c[1])
            .sum();
        let charged = sent.cost() - refunded;
        let money = |attocents: i128| Money::from_attocents(attocents).ok_or("out of range");
        for (cost, is_refund) in [(money(charged)?, false), (money(refunded)?, true)] {
            if cost == Money::ZERO {
                continue;
            }
            let month_pools = MonthPools {
                allowance_used: money(target.pools[0])?,
                purchased_consumed: money(target.pools[1])?,
                overage: money(target.pools[2])?,
            };
            let credit = Credit {
                purchased: money(merged.credit[0])?,
                consumed: money(merged.credit[1])?,
            };
            // A negative cost that is not a refund comes from a manual adjustment: it gives back
            // as the adjustment did (never purchased credit) when it can, else as a refund.
            let split = match cost.is_negative() && !is_refund {
                true => pools::adjustment_split(cost, allowance, &month_pools)
                    .unwrap_or_else(|| pools::split(cost, allowance, &month_pools, &credit)),
                false => pools::split(cost, allowance, &month_pools, &credit),
            };
            target.pools[0] += split.allowance.attocents();
            target.pools[1] += split.purchased.attocents();
            target.pools[2] += split.overage.attocents();
            merged.credit[1] += split.purchased.attocents();
        }
        if target.is_zero() {
            merged.months.remove(month);
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(microcents: i128) -> i128 {
        microcents * crate::money::ATTOCENTS_PER_MICROCENT
    }

    fn month(app: &str, usage_type: &str, units: i128, cost: i128) -> MonthFigures {
        MonthFigures {
            counters: [((app.into(), usage_type.into()), [units, m(cost), 1])].into(),
            pools: [m(cost), 0, 0],
            days: [((7, usage_type.into()), [units, m(cost), 1])].into(),
        }
    }

    fn user(months: Vec<(MonthId, MonthFigures)>, purchased: i128) -> UserFigures {
        UserFigures {
            credit: [m(purchased), 0],
            plan: None,
            months: months.into_iter().collect(),
        }
    }

    #[test]
    fn difference_then_sum_is_the_original() {
        let a = user(vec![(MonthId(1), month("x", "t", 3, 30))], 5);
        let b = user(
            vec![
                (MonthId(1), month("x", "t", 1, 10)),
                (MonthId(2), month("y", "u", 2, 7)),
            ],
            0,
        );
        assert_eq!(b.plus(&a.minus(&b)), a);
        assert!(a.minus(&a).is_zero());
    }

    #[test]
    fn images_round_trip() {
        let a = user(vec![(MonthId(24_000), month("x", "t", 3, 30))], 5);
        let image = a.to_image("alice").unwrap();
        assert_eq!(UserFigures::of(&image), a);
        assert_eq!(image.months[0].1.usage.total.attocents(), m(30));
    }

    #[test]
    fn negative_units_are_refused() {
        let a = user(vec![(MonthId(1), month("x", "t", -1, 0))], 0);
        assert!(a.to_image("alice").is_err());
    }

    #[test]
    fn merge_splits_again_over_the_fleet_pools() {
        // The fleet already used 80 of an allowance of 100; this worker thought all of its 50
        // were within the allowance. Merged: 20 allowance, 25 purchased, 5 overage.
        let fleet = user(vec![(MonthId(1), month("x", "t", 8, 80))], 25);
        let delta = user(vec![(MonthId(1), month("x", "t", 5, 50))], 0);
        let merged = merge(&fleet, &delta, Money::from_attocents(m(100)).unwrap()).unwrap();
        let figures = &merged.months[&MonthId(1)];
        assert_eq!(figures.pools, [m(100), m(25), m(5)]);
        assert_eq!(figures.counters[&("x".into(), "t".into())], [13, m(130), 2]);
        assert_eq!(figures.days[&(7, "t".into())], [13, m(130), 2]);
        figures.to_image().unwrap();
        assert_eq!(merged.credit, [m(25), m(25)]);
    }
}
