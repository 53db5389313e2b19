//! `MeteringCore`: the native half of `usagemeter.MeteringService`.
//!
//! Every hot method (`increment_usage`, `try_increment_usage`, credit checks) runs here without
//! a Python frame, Python object or Python lock: arguments are borrowed, the plan comes from a
//! lock-free cache, and only the returned `int` is created. Python code runs only on the slow
//! paths: resolving a user's plan when the cache misses (the event listeners), a custom `clock`,
//! and alarms. None of it runs while a ledger lock is held.
//!
//! This file holds the struct and its life: construction, `flush`/`close`, the fork rule, the
//! clock and the Python hooks. The methods are split by concept, each file with a `#[pymethods]`
//! block of its own (PyO3's `multiple-pymethods` feature):
//! - `plans.rs`: the per-user plan cache and the subscription methods;
//! - `charges.rs`: recording usage and credit, and the alarms a charge raises;
//! - `checks.rs`: the budget and the credit checks on it;
//! - `estimates.rs`: what usage would cost and what the budget buys (records nothing);
//! - `reports.rs`: usage reports per user, per app and over all users.
//!
//! `meter()` lives with `Meter` in `../meter.rs`, so that this module does not import that one.

mod charges;
mod checks;
mod estimates;
mod fleet_keyed;
mod holds;
mod keyed;
mod plans;
mod reports;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt};

use self::plans::CachedPlan;
use super::actor::PyActor;
use super::costmap::PyCostMap;
use super::errors::StoreClosedError;
use super::persistence::{self, Persistence};
use crate::fleet::sync::{Fleet, FleetOptions};
use crate::ledger::idempotency::KeyLimits;
use crate::ledger::month::MonthId;
use crate::ledger::{Ledger, Unmapped};

/// Each user's resolved plan (`plans.rs`).
type PlanCache = papaya::HashMap<Box<str>, CachedPlan, foldhash::fast::RandomState>;

/// Python callables installed once by `MeteringService.__init__`.
struct Hooks {
    /// `resolve(actor) -> Policy`: runs the subscription events.
    resolve_policy: Py<PyAny>,
    /// `alarm(kind, actor, usage_type, message)`: dispatches `metering:alarm`; never raises.
    raise_alarm: Py<PyAny>,
    /// `monthly_charges(actor) -> [(usage_type, units, cost)] | None`: runs the
    /// `metering:monthlyCharges` listeners (`keyed.rs`).
    monthly_charges: Py<PyAny>,
}

/// The ledger and plan cache behind `MeteringService`. Use `MeteringService`, not this class.
#[pyclass(subclass, frozen, module = "usagemeter._core", name = "MeteringCore")]
pub struct MeteringCore {
    /// Read by `meter()` (`../meter.rs`) to find an account and a price once.
    pub(in crate::python) ledger: Arc<Ledger>,
    cost_map: Py<PyCostMap>,
    clock: Option<Py<PyAny>>,
    subscription_ttl_ms: i64,
    /// Shared with the fleet's sync thread, which drops the plans other workers invalidate.
    plans: Arc<PlanCache>,
    /// The users whose guests' entries were inserted into `plans` since it last dropped them
    /// (`plans.rs`): at most `GUEST_PLANS_MAX`.
    guest_plans: parking_lot::Mutex<Vec<Box<str>>>,
    hooks: OnceLock<Hooks>,
    persistence: Option<Persistence>,
    /// Set when `close()` begins: every later call raises `StoreClosedError`.
    closed: AtomicBool,
    /// Set in a child process after `fork()` (`_forked`): the store and its thread are the
    /// parent's, so this copy refuses every call and never touches them.
    forked: AtomicBool,
    /// Charges refused for want of budget (`try_increment_usage`), for metrics. Counted on the
    /// refusal path only: an accepted charge touches no counter shared by every thread.
    refusals: AtomicU64,
}

impl Drop for MeteringCore {
    /// A service dropped without `close()` still writes its last snapshot and stops its thread.
    /// If that snapshot fails the thread stops all the same (a service nobody can reach could
    /// never be closed again), and the error is reported as unraisable.
    fn drop(&mut self) {
        if self.forked.load(Ordering::Acquire) {
            // The parent's thread is not in this process: its destructor would wait for it.
            std::mem::forget(self.persistence.take());
            return;
        }
        if self.persistence.is_some() {
            Python::attach(|py| {
                if let Err(error) = self.shut(py, true) {
                    error.write_unraisable(py, None);
                }
            });
        }
    }
}

/// The latest instant a clock may return: months are labelled `YYYY-MM`, so year 9999 is the
/// last one that can be recorded and queried (9999-12-31T23:59:59.999Z).
const LAST_EPOCH_MS: i64 = 253_402_300_799_999;
/// The earliest: 0000-01-01T00:00:00Z.
const FIRST_EPOCH_MS: i64 = -62_167_219_200_000;

/// The `Actor` behind a Python argument, or `TypeError`.
pub(in crate::python) fn as_actor<'a>(actor: &'a Bound<'_, PyAny>) -> PyResult<&'a PyActor> {
    let actor = actor.cast::<PyActor>().map_err(|_| {
        PyTypeError::new_err(format!(
            "actor must be a usagemeter.Actor, not {}",
            actor.get_type()
        ))
    })?;
    Ok(actor.get())
}

/// The system clock in milliseconds. On Linux the coarse clock (resolution a few ms, about a
/// quarter of the cost of `SystemTime::now` in `perf` of the increment loop): months and plan
/// expiry need no finer time.
#[cfg(target_os = "linux")]
fn system_now_ms() -> i64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write; CLOCK_REALTIME_COARSE exists on every Linux.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) };
    if status != 0 {
        return fallback_now_ms();
    }
    now.tv_sec * 1000 + now.tv_nsec / 1_000_000
}

#[cfg(not(target_os = "linux"))]
fn system_now_ms() -> i64 {
    fallback_now_ms()
}

fn fallback_now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    since_epoch.as_millis() as i64
}

impl MeteringCore {
    /// Every operation reads the clock first, so this is also where a closed service refuses.
    fn now_ms(&self, py: Python<'_>) -> PyResult<i64> {
        self.ensure_open()?;
        let Some(clock) = &self.clock else {
            return Ok(system_now_ms());
        };
        let now_ms = self.clock_ms(py, clock)?;
        if !(FIRST_EPOCH_MS..=LAST_EPOCH_MS).contains(&now_ms) {
            return Err(PyValueError::new_err(format!(
                "clock() returned {} s, outside the years 0000-9999 that months can name",
                now_ms.div_euclid(1000)
            )));
        }
        Ok(now_ms)
    }

    fn clock_ms(&self, py: Python<'_>, clock: &Py<PyAny>) -> PyResult<i64> {
        let now = clock.call0(py)?.into_bound(py);
        if let Ok(seconds) = now.cast::<PyInt>() {
            // Beyond i64 seconds is beyond year 9999 too: `now_ms` refuses it.
            return Ok(seconds
                .extract::<i64>()
                .unwrap_or(i64::MAX)
                .saturating_mul(1000));
        }
        if let Ok(seconds) = now.cast::<PyFloat>() {
            // Time, not money: a float clock is fine. Millisecond resolution is enough for months.
            let seconds = seconds.value();
            if !seconds.is_finite() {
                return Err(PyValueError::new_err(format!(
                    "clock() returned {seconds}, not a time"
                )));
            }
            return Ok((seconds * 1000.0).floor() as i64);
        }
        Err(PyTypeError::new_err(format!(
            "clock() must return int or float seconds, not {}",
            now.get_type()
        )))
    }

    pub(in crate::python) fn ensure_open(&self) -> PyResult<()> {
        if !self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        if self.forked.load(Ordering::Acquire) {
            return Err(StoreClosedError::new_err(
                "this MeteringService was opened before os.fork(): its store and snapshot thread \
                 belong to the parent process. Open a new MeteringService in this process \
                 (e.g. in a post-fork hook), on its own store",
            ));
        }
        Err(StoreClosedError::new_err("this MeteringService is closed"))
    }

    fn hooks(&self) -> PyResult<&Hooks> {
        self.hooks
            .get()
            .ok_or_else(|| PyRuntimeError::new_err("MeteringCore is used through MeteringService"))
    }

    /// `close()`: marks the service closed (new calls refuse), waits for the calls already
    /// recording (once: a later call finds the ledger sealed), then writes the last snapshot and
    /// stops the thread; `abandon` stops it even if that snapshot fails. Nothing of the store is
    /// touched in a forked child (`_forked`).
    fn shut(&self, py: Python<'_>, abandon: bool) -> PyResult<()> {
        if self.forked.load(Ordering::Acquire) {
            return Ok(());
        }
        if !self.closed.swap(true, Ordering::AcqRel) {
            py.detach(|| self.ledger.seal());
        }
        match (&self.persistence, abandon) {
            (None, _) => Ok(()),
            (Some(persistence), false) => persistence.close(py),
            (Some(persistence), true) => persistence.close_abandoning(py),
        }
    }

    /// The shared ledger, for a fleet's worker.
    /// Counts a charge refused for want of budget (`_stats`).
    #[cold]
    pub(in crate::python) fn refused(&self) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
    }

    pub(in crate::python) fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.persistence.as_ref()?.fleet.as_ref()
    }

    fn month_now(&self, py: Python<'_>) -> PyResult<MonthId> {
        self.now_ms(py).map(MonthId::from_epoch_ms)
    }
}

#[pymethods]
impl MeteringCore {
    // One argument per option of `MeteringService.__new__`, which owns the defaults.
    #[allow(clippy::too_many_arguments)]
    #[new]
    #[pyo3(signature = (cost_map, unmapped_free, subscription_ttl_ms, clock=None, store_path=None, store_backend=None, snapshot_interval_ms=1000, lease_ttl_ms=10_000, serve_offline=false, connect_timeout_ms=5_000, caller_timeout_ms=1_000, idempotency_window_ms=86_400_000, max_idempotency_keys=1_000_000, max_idempotency_keys_per_user=100_000))]
    fn new(
        py: Python<'_>,
        cost_map: Bound<'_, PyCostMap>,
        unmapped_free: bool,
        subscription_ttl_ms: i64,
        clock: Option<Py<PyAny>>,
        store_path: Option<PathBuf>,
        store_backend: Option<&str>,
        snapshot_interval_ms: u64,
        lease_ttl_ms: u64,
        serve_offline: bool,
        connect_timeout_ms: u64,
        caller_timeout_ms: u64,
        idempotency_window_ms: i64,
        max_idempotency_keys: usize,
        max_idempotency_keys_per_user: usize,
    ) -> PyResult<Self> {
        if idempotency_window_ms <= 0 {
            return Err(PyValueError::new_err("idempotency_window must be positive"));
        }
        if subscription_ttl_ms < 0 {
            return Err(PyValueError::new_err(
                "subscription_ttl must not be negative",
            ));
        }
        if snapshot_interval_ms == 0 {
            return Err(PyValueError::new_err("snapshot_interval must be positive"));
        }
        if lease_ttl_ms == 0 || connect_timeout_ms == 0 || caller_timeout_ms == 0 {
            return Err(PyValueError::new_err(
                "lease_ttl, connect_timeout and caller_timeout must be positive",
            ));
        }
        let location = store_path
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        let kind = match (&location, store_backend) {
            (Some(location), backend) => Some(persistence::store_kind(location, backend)?),
            (None, Some(backend)) => {
                persistence::store_kind("", Some(backend))?;
                None
            }
            (None, None) => None,
        };
        let unmapped = if unmapped_free {
            Unmapped::Free
        } else {
            Unmapped::Error
        };
        let ledger =
            Ledger::new(Arc::clone(&cost_map.get().inner), unmapped).with_key_limits(KeyLimits {
                window_ms: idempotency_window_ms,
                per_user: max_idempotency_keys_per_user,
                global: max_idempotency_keys,
            });
        let plans: Arc<PlanCache> = Arc::new(crate::ledger::record::new_concurrent_map());
        let interval = Duration::from_millis(snapshot_interval_ms);
        let (ledger, persistence) = match (store_path, kind) {
            (None, _) | (_, None) => (Arc::new(ledger), None),
            (Some(_), Some(persistence::StoreKind::Shared { cluster })) => {
                let url = location.unwrap_or_default();
                let options = FleetOptions {
                    urls: persistence::shared_urls(&url, cluster)?,
                    cluster,
                    connect_timeout: Duration::from_millis(connect_timeout_ms),
                    lease_ttl: Duration::from_millis(lease_ttl_ms),
                    interval,
                    caller_timeout: Duration::from_millis(caller_timeout_ms),
                };
                let cache = Arc::clone(&plans);
                let (ledger, persistence) = Persistence::join_fleet(
                    py,
                    &url,
                    cluster,
                    || ledger.track_changes().with_leases(serve_offline),
                    options,
                    move |ledger| {
                        Box::new(move |user_id: &str| {
                            ledger.forget_plan(user_id);
                            cache.pin().remove(user_id);
                        })
                    },
                )?;
                (ledger, Some(persistence))
            }
            (Some(path), Some(persistence::StoreKind::Embedded(backend))) => {
                let (store, loaded) = persistence::open(py, &path, backend)?;
                let ledger = ledger.track_changes();
                ledger.restore(loaded.users);
                let ledger = Arc::new(ledger);
                let persistence = Persistence::start(store, Arc::clone(&ledger), interval);
                (ledger, Some(persistence))
            }
        };
        Ok(MeteringCore {
            ledger,
            cost_map: cost_map.unbind(),
            clock,
            subscription_ttl_ms,
            plans,
            hooks: OnceLock::new(),
            persistence,
            closed: AtomicBool::new(false),
            forked: AtomicBool::new(false),
            refusals: AtomicU64::new(0),
            guest_plans: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Blocks until everything recorded before the call is durable; `StoreWriteError` if the
    /// snapshot cannot be written. Nothing to do without a store.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.ensure_open()?;
        match &self.persistence {
            Some(persistence) => persistence.flush(py),
            None => Ok(()),
        }
    }

    /// Refuses every call from now on (`StoreClosedError`), waits for the calls already
    /// recording, writes a last snapshot holding every one of them, stops the snapshot thread
    /// and releases the store. Idempotent. If the last snapshot fails (`StoreWriteError`) the
    /// service stays closed to new calls and the snapshot thread keeps retrying: free space and
    /// call `close()` again.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.shut(py, false)
    }

    /// `close()` for the interpreter's exit: if the last snapshot fails the snapshot thread
    /// stops all the same (the error is raised; what it could not write is lost), so that the
    /// process can end.
    fn _close_at_exit(&self, py: Python<'_>) -> PyResult<()> {
        self.shut(py, true)
    }

    /// Called in a child process after `os.fork()`: this copy of the service refuses every call
    /// from now on (its store and snapshot thread belong to the parent), and the child's copies
    /// of the store's file descriptors are closed, so the store's lock ends with the parent's.
    fn _forked(&self) {
        if let Some(persistence) = &self.persistence {
            self.forked.store(true, Ordering::Release);
            self.closed.store(true, Ordering::Release);
            persistence.close_inherited_descriptors();
        }
    }

    /// Alarms of the background snapshot (or fleet sync) thread not yet raised, as (kind,
    /// message): `store_error`, or `ledger_lost` (the service raises them from its monitor
    /// thread, never from the snapshot thread).
    fn _take_store_errors(&self) -> Vec<(&'static str, String)> {
        match &self.persistence {
            Some(persistence) => persistence.errors.take(),
            None => Vec::new(),
        }
    }

    /// How many users have an account in the ledger (for tests: read-only checks create none).
    fn _account_count(&self) -> usize {
        self.ledger.user_count()
    }

    /// Whether `close()` has begun: every call now raises `StoreClosedError`.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The store directory, or the shared ledger's URL with its password masked (`***`), or
    /// None for a memory-only service.
    #[getter]
    fn store_path(&self) -> Option<String> {
        self.persistence.as_ref().map(|p| p.dir.clone())
    }

    /// The store backend ("sled", "redb", "redis" or "redis-cluster"), or None for a
    /// memory-only service.
    #[getter]
    fn store_backend(&self) -> Option<&'static str> {
        self.persistence.as_ref().map(|p| p.backend)
    }

    /// Counters for metrics: `refusals` (charges refused for want of budget since the service
    /// opened), and with a store `store_failures` (background snapshots or syncs that failed)
    /// and `store_lag_ms` (time since the last one that succeeded: what a crash could lose).
    fn _stats(&self) -> std::collections::HashMap<&'static str, u64> {
        let mut stats =
            std::collections::HashMap::from([("refusals", self.refusals.load(Ordering::Relaxed))]);
        if let Some(persistence) = &self.persistence {
            let health = persistence.snapshotter.health();
            stats.insert("store_failures", health.failures);
            let lag_ms = u64::try_from(health.lag.as_millis()).unwrap_or(u64::MAX);
            stats.insert("store_lag_ms", lag_ms);
        }
        stats
    }

    /// The traffic of this worker's syncs with the shared ledger (None without one): rounds,
    /// round trips, bytes sent, writes, conflicts and lease requests since it opened.
    fn _sync_stats(&self) -> Option<std::collections::HashMap<&'static str, u64>> {
        let stats = self.fleet()?.stats();
        Some(
            [
                ("rounds", stats.rounds),
                ("round_trips", stats.round_trips),
                ("bytes_sent", stats.bytes_sent),
                ("writes", stats.writes),
                ("conflicts", stats.conflicts),
                ("lease_requests", stats.lease_requests),
            ]
            .into(),
        )
    }

    /// This worker's id in the shared ledger (None without one).
    #[getter]
    fn _worker_id(&self) -> Option<String> {
        Some(self.fleet()?.worker().to_string())
    }

    /// Installs the plan resolver, the alarm dispatcher and the monthly charges' listeners (once).
    fn _install_hooks(
        &self,
        resolve_policy: Py<PyAny>,
        raise_alarm: Py<PyAny>,
        monthly_charges: Py<PyAny>,
    ) -> PyResult<()> {
        self.hooks
            .set(Hooks {
                resolve_policy,
                raise_alarm,
                monthly_charges,
            })
            .map_err(|_| PyRuntimeError::new_err("hooks are already installed"))
    }

    /// The cost map this service prices with.
    #[getter]
    fn cost_map(&self, py: Python<'_>) -> Py<PyCostMap> {
        self.cost_map.clone_ref(py)
    }
}
