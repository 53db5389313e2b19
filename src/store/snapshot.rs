//! The background thread that writes snapshots.
//!
//! Every `interval` (or at once when `flush` asks) it takes the users changed since the last
//! snapshot from the ledger (each copied under its own lock: metering never pauses as a whole),
//! writes them as one atomic batch and makes it durable. A failed write keeps the copies and
//! retries them, merged with newer changes, at the next snapshot; `on_error` reports it.
//!
//! Loss bound: a crash loses at most what changed since the last snapshot that completed, that
//! is the last `interval` plus the snapshot being written. `flush` returns only after a snapshot
//! that started after it was called has completed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::{LedgerStore, StoreError, StoreResult};
use crate::ledger::image::UserImage;
use crate::ledger::Ledger;

/// Called (from the snapshot thread) with the message of each failed background snapshot.
pub type ErrorHook = Box<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
struct Progress {
    /// Snapshots asked for by `flush` and `stop`, numbered from 1.
    requested: u64,
    /// The last requested number covered by a snapshot that completed (successfully or not).
    completed: u64,
    /// The last requested number covered by a snapshot that succeeded: a success writes
    /// everything still unsaved, so it also covers the requests of earlier failed snapshots.
    saved: u64,
    /// The error of the last snapshot that failed.
    last_error: Option<StoreError>,
    /// `stop` asked for a last snapshot, after which the thread ends (if it succeeds, or if
    /// `abandon` says to end anyway).
    stop_requested: bool,
    abandon: bool,
    /// The thread has ended: nothing more is written, and waiting for it would never end.
    stopped: bool,
    /// When the last round succeeded (or the thread started, before any did).
    last_success: Option<Instant>,
    /// Rounds that failed since the thread started.
    failures: u64,
}

/// How the background rounds are going, for metrics (`Snapshotter::health`).
#[derive(Clone, Copy, Debug)]
pub struct Health {
    /// Time since the last round that succeeded, or since the thread started if none did: what a
    /// crash now could lose at most (the store's lag behind memory).
    pub lag: Duration,
    /// Rounds that failed since the thread started.
    pub failures: u64,
}

struct Shared {
    progress: Mutex<Progress>,
    wake: Condvar,
    done: Condvar,
}

pub struct Snapshotter {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The work the background thread does every interval: a snapshot to an embedded store, or a
/// sync with a fleet's shared ledger (`crate::fleet`). `last` is the round of `stop`.
pub trait Round: Send {
    fn run(&mut self, last: bool) -> StoreResult<()>;
}

/// State owned by the snapshot thread.
struct Writer {
    ledger: Arc<Ledger>,
    store: LedgerStore,
    /// Changes of failed snapshots, by user, to write with the next one.
    unsaved: BTreeMap<String, UserImage>,
}

impl Round for Writer {
    fn run(&mut self, _last: bool) -> StoreResult<()> {
        self.snapshot()
    }
}

impl Writer {
    /// Writes everything changed since the last successful snapshot.
    fn snapshot(&mut self) -> StoreResult<()> {
        for user in self.ledger.take_changes() {
            match self.unsaved.get_mut(&user.user_id) {
                // A newer copy of a month replaces the unsaved one; other unsaved months stay.
                Some(pending) => {
                    pending.credit = user.credit;
                    pending.plan = user.plan;
                    pending.holds = user.holds;
                    // Keys are taken whole: a newer copy replaces the unsaved one.
                    if user.keys.is_some() {
                        pending.keys = user.keys;
                    }
                    for (month, image) in user.months {
                        match pending.months.iter_mut().find(|(m, _)| *m == month) {
                            Some(slot) => slot.1 = image,
                            None => pending.months.push((month, image)),
                        }
                    }
                }
                None => {
                    self.unsaved.insert(user.user_id.clone(), user);
                }
            }
        }
        if self.unsaved.is_empty() {
            return Ok(());
        }
        let users: Vec<UserImage> = self.unsaved.values().cloned().collect();
        self.store.write_snapshot(&users)?;
        self.unsaved.clear();
        Ok(())
    }
}

/// A round, with a panic (a bug, or a backend that met damaged data) turned into an error: the
/// thread survives it, keeps what it could not write and retries.
fn run_caught(round: &mut dyn Round, last: bool) -> StoreResult<()> {
    super::guard::quietly_failing("the background round", || round.run(last))
}

fn closed_error() -> StoreError {
    StoreError::Closed("the store is closed".into())
}

impl Snapshotter {
    /// Starts the thread; it owns the store until `stop`.
    pub fn start(
        ledger: Arc<Ledger>,
        store: LedgerStore,
        interval: Duration,
        on_error: ErrorHook,
    ) -> Snapshotter {
        let writer = Writer {
            ledger,
            store,
            unsaved: BTreeMap::new(),
        };
        Snapshotter::start_round(Box::new(writer), "usagemeter-snapshot", interval, on_error)
    }

    /// Starts a thread named `name` that runs `round` every `interval` (and for `flush`/`stop`).
    pub fn start_round(
        mut round: Box<dyn Round>,
        name: &str,
        interval: Duration,
        on_error: ErrorHook,
    ) -> Snapshotter {
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress {
                last_success: Some(Instant::now()),
                ..Progress::default()
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(&thread_shared, &mut *round, interval, &on_error))
            .expect("the background thread starts");
        Snapshotter {
            shared,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Blocks until everything recorded before the call is durable (a snapshot that started
    /// after this call completed), or returns the error of that snapshot. Once the thread has
    /// stopped (or stops while this waits) it returns `StoreError::Closed`, never waits forever.
    pub fn flush(&self) -> StoreResult<()> {
        let mut progress = self.shared.progress.lock();
        let target = Self::request(&self.shared, &mut progress)?;
        Self::wait_for(&self.shared, &mut progress, target)
    }

    fn request(shared: &Shared, progress: &mut Progress) -> StoreResult<u64> {
        if progress.stopped {
            return Err(closed_error());
        }
        progress.requested += 1;
        shared.wake.notify_all();
        Ok(progress.requested)
    }

    fn wait_for(
        shared: &Shared,
        progress: &mut MutexGuard<'_, Progress>,
        target: u64,
    ) -> StoreResult<()> {
        while progress.completed < target && !progress.stopped {
            shared.done.wait(progress);
        }
        if progress.saved >= target {
            return Ok(());
        }
        match (&progress.last_error, progress.completed >= target) {
            (Some(error), true) => Err(error.clone()),
            _ => Err(closed_error()),
        }
    }

    /// The lag behind memory and the failures of the background rounds.
    pub fn health(&self) -> Health {
        let progress = self.shared.progress.lock();
        Health {
            lag: progress
                .last_success
                .map_or(Duration::ZERO, |at| at.elapsed()),
            failures: progress.failures,
        }
    }

    /// Writes a last snapshot, then stops the thread and releases the store. Idempotent. If the
    /// last snapshot fails, the thread keeps running (and retrying) and the error is returned, so
    /// nothing recorded is dropped: free space and stop again.
    pub fn stop(&self) -> StoreResult<()> {
        self.stop_with(false)
    }

    /// `stop`, but the thread ends even if the last snapshot fails (at interpreter exit, or when
    /// a service is dropped without `close()`): its error is returned, and what it could not
    /// write is lost. Never waits on a snapshot that cannot complete.
    pub fn stop_abandoning(&self) -> StoreResult<()> {
        self.stop_with(true)
    }

    fn stop_with(&self, abandon: bool) -> StoreResult<()> {
        let mut thread = self.thread.lock();
        if thread.is_none() {
            return Ok(());
        }
        let result = {
            let mut progress = self.shared.progress.lock();
            let target = Self::request(&self.shared, &mut progress)?;
            progress.stop_requested = true;
            progress.abandon = abandon;
            Self::wait_for(&self.shared, &mut progress, target)
        };
        let stopped = self.shared.progress.lock().stopped;
        if stopped {
            let handle = thread.take().expect("checked above");
            if handle.join().is_err() {
                return Err(StoreError::Write(
                    "the snapshot thread ended by a panic".into(),
                ));
            }
        }
        result
    }
}

fn run(shared: &Shared, round: &mut dyn Round, interval: Duration, on_error: &ErrorHook) {
    loop {
        let (target, stopping) = {
            let mut progress = shared.progress.lock();
            if progress.requested == progress.completed && !progress.stop_requested {
                shared.wake.wait_for(&mut progress, interval);
            }
            (progress.requested, progress.stop_requested)
        };
        let result = run_caught(round, stopping);
        if let Err(error) = &result {
            on_error(&error.to_string());
        }
        let mut progress = shared.progress.lock();
        // Requests made while this snapshot ran may have missed its copies: only the ones made
        // before it started are covered.
        progress.completed = progress.completed.max(target);
        // A last snapshot ends the thread if it succeeded, or if `stop` said to end anyway;
        // otherwise the thread goes on retrying and a later `stop` asks again.
        let ends = stopping && (result.is_ok() || progress.abandon);
        match result {
            Ok(()) => {
                progress.saved = progress.saved.max(target);
                progress.last_success = Some(Instant::now());
            }
            Err(error) => {
                progress.last_error = Some(error);
                progress.failures += 1;
            }
        }
        if stopping {
            progress.stop_requested = false; // not one that came while this snapshot ran
        }
        progress.stopped = ends;
        shared.done.notify_all();
        if ends {
            return;
        }
    }
}
