//! The global month aggregate, striped per thread.
//!
//! Every increment of every actor lands here, so one lock (or one atomic cache line) would make
//! it the hottest key in the process and serialize all threads. Instead each thread writes to its
//! own stripe (a padded mutex nobody else normally takes) and readers sum the stripes. Stripes are
//! at most 64, which keeps the sum inside `i128` (see `money::MAX_ABS_ATTOCENTS`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, MutexGuard};

use super::month::MonthId;
use super::record::{UsageRecord, UsageReport};

/// One thread's share of the global aggregate, and of the list of users changed since the last
/// snapshot (appended here because a charge holds this lock anyway).
#[derive(Default)]
pub struct Stripe {
    pub months: BTreeMap<MonthId, UsageRecord>,
    pub changed_users: Vec<Box<str>>,
}

pub struct StripedAggregate {
    stripes: Box<[CachePadded<Mutex<Stripe>>]>,
}

static NEXT_THREAD_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Each thread gets a slot once; threads spread round-robin over the stripes.
    static THREAD_SLOT: usize = NEXT_THREAD_SLOT.fetch_add(1, Ordering::Relaxed);
}

impl StripedAggregate {
    pub fn new() -> StripedAggregate {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        let count = (threads * 2).next_power_of_two().clamp(4, 64);
        StripedAggregate {
            stripes: (0..count)
                .map(|_| CachePadded::new(Mutex::new(Stripe::default())))
                .collect(),
        }
    }

    /// The calling thread's stripe, locked.
    pub fn lock_own(&self) -> MutexGuard<'_, Stripe> {
        let slot = THREAD_SLOT.with(|slot| *slot);
        self.stripes[slot & (self.stripes.len() - 1)].lock()
    }

    /// The month summed over all stripes.
    pub fn report(&self, month: MonthId) -> UsageReport {
        let mut report = UsageReport::default();
        for stripe in self.stripes.iter() {
            if let Some(record) = stripe.lock().months.get(&month) {
                report.add(record);
            }
        }
        report
    }
}

impl StripedAggregate {
    /// Takes the users changed since the last call, from every stripe.
    pub fn take_changed_users(&self) -> Vec<Box<str>> {
        let mut users = Vec::new();
        for stripe in self.stripes.iter() {
            users.append(&mut stripe.lock().changed_users);
        }
        users
    }

    /// Adds a loaded record to the aggregate (at open, before any thread meters).
    pub fn add_loaded(&self, month: MonthId, record: &UsageRecord) {
        let mut stripe = self.stripes[0].lock();
        let global = stripe.months.entry(month).or_default();
        let deltas: Vec<_> = record.deltas().collect();
        global.apply(&deltas);
    }
}

impl Default for StripedAggregate {
    fn default() -> Self {
        StripedAggregate::new()
    }
}
