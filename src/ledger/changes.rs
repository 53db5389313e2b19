//! The users changed since the last snapshot, striped per thread.
//!
//! A charge queues its user here only on the user's first change since the last snapshot (the
//! account's `queued` flag), so the hot path rarely touches it; when it does, each thread appends
//! to its own stripe (a padded mutex nobody else normally takes), so threads never contend on one
//! list.

use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

/// One thread's list of changed user ids.
type Stripe = CachePadded<Mutex<Vec<Box<str>>>>;

pub struct ChangeLog {
    stripes: Box<[Stripe]>,
}

static NEXT_THREAD_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Each thread gets a slot once; threads spread round-robin over the stripes.
    static THREAD_SLOT: usize = NEXT_THREAD_SLOT.fetch_add(1, Ordering::Relaxed);
}

impl ChangeLog {
    pub fn new() -> ChangeLog {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        let count = (threads * 2).next_power_of_two().clamp(4, 64);
        ChangeLog {
            stripes: (0..count)
                .map(|_| CachePadded::new(Mutex::new(Vec::new())))
                .collect(),
        }
    }

    /// Queues a user, in the calling thread's stripe.
    pub fn push(&self, user_id: &str) {
        let slot = THREAD_SLOT.with(|slot| *slot);
        self.stripes[slot & (self.stripes.len() - 1)]
            .lock()
            .push(Box::from(user_id));
    }

    /// Takes the users queued since the last call, from every stripe.
    pub fn take(&self) -> Vec<Box<str>> {
        let mut users = Vec::new();
        for stripe in self.stripes.iter() {
            users.append(&mut stripe.lock());
        }
        users
    }
}

impl Default for ChangeLog {
    fn default() -> Self {
        ChangeLog::new()
    }
}
