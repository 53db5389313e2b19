//! `MeteringCore`: the native half of `usagemeter.MeteringService`.
//!
//! Every hot method (`increment_usage`, `try_increment_usage`, credit checks) runs here without
//! a Python frame, Python object or Python lock: arguments are borrowed, the plan comes from a
//! lock-free cache, and only the returned `int` is created. Python code runs only on the slow
//! paths: resolving a user's plan when the cache misses (the event listeners), a custom `clock`,
//! and alarms. None of it runs while a ledger lock is held.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::exceptions::{PyPermissionError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyIterator, PyList, PyString, PyTuple};

use super::actor::{PyActor, OTHER_APPS};
use super::convert::{self, money_to_int};
use super::costmap::PyCostMap;
use super::errors::{ledger_error, StoreClosedError};
use super::meter::PyMeter;
use super::persistence::{self, AlarmHook, Persistence};
use crate::error::LedgerError;
use crate::ledger::month::MonthId;
use crate::ledger::pools::RoundedBudget;
use crate::ledger::record::{TypeId, UsageReport};
use crate::ledger::{
    Account, Booking, Budget, ChargeMode, Ledger, Plan, Receipt, Unmapped, UsageItem,
};
use crate::money::Money;

/// A resolved plan, cached per user until `expires_at_ms`.
struct CachedPlan {
    policy: Py<PyAny>,
    expires_at_ms: i64,
}

/// Python callables installed once by `MeteringService.__init__`.
struct Hooks {
    /// `resolve(actor) -> Policy`: runs the subscription events.
    resolve_policy: Py<PyAny>,
    /// `alarm(kind, actor, usage_type, message)`: dispatches `metering:alarm`; never raises.
    raise_alarm: Py<PyAny>,
}

/// The ledger and plan cache behind `MeteringService`. Use `MeteringService`, not this class.
#[pyclass(subclass, frozen, module = "usagemeter._core", name = "MeteringCore")]
pub struct MeteringCore {
    ledger: Arc<Ledger>,
    cost_map: Py<PyCostMap>,
    clock: Option<Py<PyAny>>,
    subscription_ttl_ms: i64,
    plans: papaya::HashMap<Box<str>, CachedPlan, foldhash::fast::RandomState>,
    hooks: OnceLock<Hooks>,
    /// The alarm callable again, shared with the snapshot thread (which reports store errors).
    alarm: AlarmHook,
    persistence: Option<Persistence>,
    closed: AtomicBool,
}

impl Drop for MeteringCore {
    /// A service dropped without `close()` still writes its last snapshot and stops its thread
    /// (with the GIL released, since the thread may need it to report an error).
    fn drop(&mut self) {
        if let Some(persistence) = &self.persistence {
            Python::attach(|py| {
                if let Err(error) = persistence.close(py) {
                    error.write_unraisable(py, None);
                }
            });
        }
    }
}

fn as_actor<'a>(actor: &'a Bound<'_, PyAny>) -> PyResult<&'a PyActor> {
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

fn parse_month(label: &str) -> PyResult<MonthId> {
    MonthId::parse(label)
        .ok_or_else(|| PyValueError::new_err(format!("month must be 'YYYY-MM', got {label:?}")))
}

fn not_metered() -> PyErr {
    PyValueError::new_err("the system actor is not metered: it has no budget")
}

/// `{"total": µ¢, "<type>": {"units", "cost", "count"}}`.
fn report_dict<'py>(
    py: Python<'py>,
    ledger: &Ledger,
    report: &UsageReport,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("total", money_to_int(py, report.total))?;
    for (usage_type, counter) in &report.by_type {
        let entry = PyDict::new(py);
        entry.set_item("units", counter.units)?;
        entry.set_item("cost", money_to_int(py, counter.cost))?;
        entry.set_item("count", counter.count)?;
        dict.set_item(&*ledger.type_name(*usage_type), entry)?;
    }
    Ok(dict)
}

fn totals_dict<'py>(py: Python<'py>, total: Money, count: u128) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("total", money_to_int(py, total))?;
    dict.set_item("count", count)?;
    Ok(dict)
}

fn addons_dict<'py>(py: Python<'py>, budget: &RoundedBudget) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("purchased_credits", budget.purchased)?;
    dict.set_item("consumed_purchase_credits", budget.consumed)?;
    Ok(dict)
}

/// One batch item, with its usage type still owned by Python so the name is borrowed.
struct OwnedItem<'py> {
    usage_type: Bound<'py, PyAny>,
    units: u64,
    cost_override: Option<Money>,
}

fn batch_item<'py>(item: &Bound<'py, PyAny>) -> PyResult<OwnedItem<'py>> {
    if let Ok(tuple) = item.cast::<PyTuple>() {
        return item_of_fields(tuple.len(), |at| tuple.get_item(at));
    }
    if let Ok(list) = item.cast::<PyList>() {
        return item_of_fields(list.len(), |at| list.get_item(at));
    }
    Err(PyTypeError::new_err(
        "each usage must be a (usage_type, amount[, cost_override]) tuple",
    ))
}

/// A batch item from its `len` fields, read by `field` (no copy of the tuple or list).
fn item_of_fields<'py>(
    len: usize,
    field: impl Fn(usize) -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<OwnedItem<'py>> {
    if !(2..=3).contains(&len) {
        return Err(PyValueError::new_err(format!(
            "each usage must have 2 or 3 fields (usage_type, amount[, cost_override]), got {len}"
        )));
    }
    let usage_type = field(0)?;
    convert::usage_type(&usage_type)?;
    let units = convert::units(&field(1)?, "amount")?;
    let cost_override = match len {
        3 => convert::optional_microcents(Some(&field(2)?), "cost_override")?,
        _ => None,
    };
    Ok(OwnedItem {
        usage_type,
        units,
        cost_override,
    })
}

impl MeteringCore {
    /// Every operation reads the clock first, so this is also where a closed service refuses.
    fn now_ms(&self, py: Python<'_>) -> PyResult<i64> {
        self.ensure_open()?;
        let Some(clock) = &self.clock else {
            return Ok(system_now_ms());
        };
        let now = clock.call0(py)?.into_bound(py);
        if let Ok(seconds) = now.cast::<PyInt>() {
            return Ok(seconds.extract::<i64>()?.saturating_mul(1000));
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

    fn ensure_open(&self) -> PyResult<()> {
        match self.closed.load(Ordering::Acquire) {
            true => Err(StoreClosedError::new_err("this MeteringService is closed")),
            false => Ok(()),
        }
    }

    fn hooks(&self) -> PyResult<&Hooks> {
        self.hooks
            .get()
            .ok_or_else(|| PyRuntimeError::new_err("MeteringCore is used through MeteringService"))
    }

    /// Reads the user's cached plan if it has not expired.
    fn cached_plan<T>(
        &self,
        user_id: &str,
        now_ms: i64,
        read: impl FnOnce(&CachedPlan) -> T,
    ) -> Option<T> {
        let plans = self.plans.pin();
        plans
            .get(user_id)
            .filter(|plan| plan.expires_at_ms > now_ms)
            .map(read)
    }

    /// Resolves the user's plan through the events (no lock held) and caches it.
    fn resolve_plan(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        now_ms: i64,
    ) -> PyResult<(Money, Py<PyAny>)> {
        let policy = self.hooks()?.resolve_policy.call1(py, (actor_obj,))?;
        let allowance = policy.getattr(py, "monthly_allowance")?;
        let allowance = convert::microcents(allowance.bind(py), "monthly_allowance")?;
        let expires_at_ms = now_ms.saturating_add(self.subscription_ttl_ms);
        let cached = CachedPlan {
            policy: policy.clone_ref(py),
            expires_at_ms,
        };
        self.plans
            .pin()
            .insert(Box::from(actor.user_id.as_str()), cached);
        // The hot path reads the allowance from the user's account (no second map lookup).
        self.ledger
            .set_plan(&actor.user_id, allowance, expires_at_ms);
        Ok((allowance, policy))
    }

    /// The user's plan (its `Policy`), cached or resolved.
    fn policy(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        now_ms: i64,
    ) -> PyResult<Py<PyAny>> {
        match self.cached_plan(&actor.user_id, now_ms, |plan| plan.policy.clone_ref(py)) {
            Some(policy) => Ok(policy),
            None => self
                .resolve_plan(py, actor_obj, actor, now_ms)
                .map(|(_, policy)| policy),
        }
    }

    /// Runs `call` with the plan cached in the user's account; if there is none (or it expired),
    /// resolves it through the events (no lock held) and runs `call` again with it.
    fn with_plan<T>(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        now_ms: i64,
        call: impl Fn(Plan) -> Result<T, LedgerError>,
    ) -> PyResult<T> {
        match call(Plan::Cached { now_ms }) {
            Err(LedgerError::PlanNeeded) => {
                let (allowance, _) = self.resolve_plan(py, actor_obj, actor, now_ms)?;
                call(Plan::Fixed(allowance)).map_err(ledger_error)
            }
            result => result.map_err(ledger_error),
        }
    }

    /// Records items for a (non-system) actor, then raises the alarms the receipt calls for.
    fn charge(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        items: &[UsageItem<'_>],
        mode: ChargeMode,
    ) -> PyResult<Receipt> {
        let account = actor.account.get(&self.ledger, &actor.user_id);
        self.charge_with(py, actor_obj, actor, items, |booking| {
            self.ledger.charge(account, booking, items, mode)
        })
    }

    /// Records `units` of a priced usage type for a `Meter` (already holding the account).
    pub(super) fn add_priced<'py>(
        &self,
        py: Python<'py>,
        actor_obj: &Bound<'py, PyAny>,
        actor: &PyActor,
        account: &Account,
        usage_type: TypeId,
        amount: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyInt>> {
        let units = convert::units(amount, "amount")?;
        if actor.is_system {
            return Ok(money_to_int(py, Money::ZERO));
        }
        let receipt = self.charge_with(py, actor_obj, actor, &[], |booking| {
            self.ledger
                .charge_priced(account, booking, usage_type, units)
        })?;
        Ok(money_to_int(py, receipt.month_total))
    }

    /// Runs `record` for the actor this month under its plan, then raises the alarms the receipt
    /// calls for (`items`: what `record` records, named in the unmapped-usage alarms).
    fn charge_with(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        items: &[UsageItem<'_>],
        record: impl Fn(&Booking<'_>) -> Result<Receipt, LedgerError>,
    ) -> PyResult<Receipt> {
        let now_ms = self.now_ms(py)?;
        let receipt = self.with_plan(py, actor_obj, actor, now_ms, |plan| {
            record(&Booking {
                user_id: &actor.user_id,
                app_id: actor.booking_app(),
                month: MonthId::from_epoch_ms(now_ms),
                plan,
            })
        })?;
        if receipt.unmapped_items > 0 || receipt.overuse_multiple.is_some() {
            self.raise_alarms(py, actor_obj, items, &receipt, receipt.allowance);
        }
        Ok(receipt)
    }

    fn raise_alarms(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        items: &[UsageItem<'_>],
        receipt: &Receipt,
        allowance: Money,
    ) {
        let Ok(hooks) = self.hooks() else { return };
        let mut alarms: Vec<(&str, Option<&str>, String)> = Vec::new();
        if receipt.unmapped_items > 0 {
            let cost_map = self.ledger.cost_map();
            for item in items
                .iter()
                .filter(|i| i.cost_override.is_none() && i.units > 0)
            {
                if cost_map.get(item.usage_type).is_none() {
                    let message = format!(
                        "usage type {:?} is not in the cost map; recorded at 0 µ¢",
                        item.usage_type
                    );
                    alarms.push(("unmapped_usage", Some(item.usage_type), message));
                }
            }
        }
        if let Some(multiple) = receipt.overuse_multiple {
            let message = format!(
                "month total {} µ¢ reached {multiple}x the monthly allowance of {} µ¢ with no purchased credit left",
                receipt.month_total.to_microcents_half_up(),
                allowance.to_microcents_half_up()
            );
            alarms.push(("overuse", None, message));
        }
        for (kind, usage_type, message) in alarms {
            // The usage is recorded: an alarm that fails must not make the call look failed.
            if let Err(error) = hooks
                .raise_alarm
                .call1(py, (kind, actor_obj, usage_type, message))
            {
                error.write_unraisable(py, Some(hooks.raise_alarm.bind(py)));
            }
        }
    }

    fn month_now(&self, py: Python<'_>) -> PyResult<MonthId> {
        self.now_ms(py).map(MonthId::from_epoch_ms)
    }

    fn budget(&self, py: Python<'_>, actor_obj: &Bound<'_, PyAny>) -> PyResult<Budget> {
        self.budget_of(py, actor_obj, as_actor(actor_obj)?)
    }

    /// `budget` for an actor already extracted (the credit checks have it in hand).
    fn budget_of(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
    ) -> PyResult<Budget> {
        if actor.is_system {
            return Err(not_metered());
        }
        let now_ms = self.now_ms(py)?;
        let month = MonthId::from_epoch_ms(now_ms);
        self.with_plan(py, actor_obj, actor, now_ms, |plan| {
            match actor.account.get(&self.ledger, &actor.user_id) {
                Some(account) => self.ledger.budget_in(account, month, plan),
                None => self.ledger.budget(&actor.user_id, month, plan),
            }
        })
    }

    /// The budget in whole µ¢, for reports (see `RoundedBudget`).
    fn rounded_budget(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
    ) -> PyResult<RoundedBudget> {
        let budget = self.budget(py, actor_obj)?;
        Ok(RoundedBudget::of(
            budget.allowance,
            &budget.pools,
            &budget.credit,
        ))
    }

    /// Whether the actor can pay `cost` (`None`: a cost beyond the ledger's range).
    fn affords(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        cost: Option<Money>,
    ) -> PyResult<bool> {
        if actor.is_system {
            return Ok(true);
        }
        let Some(cost) = cost else { return Ok(false) };
        Ok(self.budget_of(py, actor_obj, actor)?.remaining >= cost)
    }

    fn one_usage(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        usage_type: &Bound<'_, PyAny>,
        amount: &Bound<'_, PyAny>,
        cost_override: Option<&Bound<'_, PyAny>>,
        mode: ChargeMode,
    ) -> PyResult<Option<Receipt>> {
        let actor = as_actor(actor_obj)?;
        let item = UsageItem {
            usage_type: convert::usage_type(usage_type)?,
            units: convert::units(amount, "amount")?,
            cost_override: convert::optional_microcents(cost_override, "cost_override")?,
        };
        if actor.is_system {
            return Ok(None);
        }
        self.charge(py, actor_obj, actor, &[item], mode).map(Some)
    }

    /// Refuses an app actor reading another app's records (checked before anything is read).
    fn check_app_access(actor: &PyActor, app_id: &str) -> PyResult<()> {
        match &actor.app_id {
            Some(own) if own != app_id && app_id != super::actor::GLOBAL_APP => {
                Err(PyPermissionError::new_err(format!(
                    "app {own:?} may not read the usage of app {app_id:?}"
                )))
            }
            _ => Ok(()),
        }
    }

    fn month_details<'py>(
        &self,
        py: Python<'py>,
        actor: &PyActor,
        month: MonthId,
    ) -> PyResult<Bound<'py, PyDict>> {
        let details = PyDict::new(py);
        let (usage, app_totals) = if actor.is_system {
            (UsageReport::default(), Vec::new())
        } else {
            (
                self.ledger.user_usage(&actor.user_id, month),
                self.ledger.app_totals(&actor.user_id, month),
            )
        };
        details.set_item("usage", report_dict(py, &self.ledger, &usage)?)?;
        let apps = PyDict::new(py);
        match &actor.app_id {
            None => {
                for (app, total, count) in &app_totals {
                    apps.set_item(app, totals_dict(py, *total, u128::from(*count))?)?;
                }
            }
            Some(own) => {
                // An app sees its own usage and only the sum of the user's other apps.
                let (mut own_total, mut own_count) = (Money::ZERO, 0u128);
                let (mut other_total, mut other_count) = (Money::ZERO, 0u128);
                for (app, total, count) in &app_totals {
                    let (sum, n) = if app == own {
                        (&mut own_total, &mut own_count)
                    } else {
                        (&mut other_total, &mut other_count)
                    };
                    *sum = Money::from_attocents(sum.attocents() + total.attocents())
                        .expect("bounded by the user's total");
                    *n += u128::from(*count);
                }
                apps.set_item(own, totals_dict(py, own_total, own_count)?)?;
                apps.set_item(OTHER_APPS, totals_dict(py, other_total, other_count)?)?;
            }
        }
        details.set_item("app_totals", apps)?;
        Ok(details)
    }
}

#[pymethods]
impl MeteringCore {
    // One argument per option of `MeteringService.__new__`, which owns the defaults.
    #[allow(clippy::too_many_arguments)]
    #[new]
    #[pyo3(signature = (cost_map, unmapped_free, subscription_ttl_ms, clock=None, store_path=None, store_backend=None, snapshot_interval_ms=1000))]
    fn new(
        py: Python<'_>,
        cost_map: Bound<'_, PyCostMap>,
        unmapped_free: bool,
        subscription_ttl_ms: i64,
        clock: Option<Py<PyAny>>,
        store_path: Option<PathBuf>,
        store_backend: Option<&str>,
        snapshot_interval_ms: u64,
    ) -> PyResult<Self> {
        if subscription_ttl_ms < 0 {
            return Err(PyValueError::new_err(
                "subscription_ttl must not be negative",
            ));
        }
        if snapshot_interval_ms == 0 {
            return Err(PyValueError::new_err("snapshot_interval must be positive"));
        }
        let backend = store_backend.map(persistence::parse_backend).transpose()?;
        let unmapped = if unmapped_free {
            Unmapped::Free
        } else {
            Unmapped::Error
        };
        let ledger = Ledger::new(Arc::clone(&cost_map.get().inner), unmapped);
        let alarm: AlarmHook = Arc::new(OnceLock::new());
        let (ledger, persistence) = match store_path {
            None => (Arc::new(ledger), None),
            Some(path) => {
                let (store, loaded) = persistence::open(py, &path, backend)?;
                let ledger = ledger.track_changes();
                ledger.restore(loaded.users);
                let ledger = Arc::new(ledger);
                let interval = Duration::from_millis(snapshot_interval_ms);
                let persistence =
                    Persistence::start(store, Arc::clone(&ledger), interval, Arc::clone(&alarm));
                (ledger, Some(persistence))
            }
        };
        Ok(MeteringCore {
            ledger,
            cost_map: cost_map.unbind(),
            clock,
            subscription_ttl_ms,
            plans: crate::ledger::record::new_concurrent_map(),
            hooks: OnceLock::new(),
            alarm,
            persistence,
            closed: AtomicBool::new(false),
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

    /// Writes a last snapshot, stops the snapshot thread and releases the store; later calls
    /// raise `StoreClosedError`. Idempotent. If the last snapshot fails the service stays open.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(persistence) = &self.persistence {
            persistence.close(py)?;
        }
        self.closed.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether `close()` has completed.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The store directory, or None for a memory-only service.
    #[getter]
    fn store_path(&self) -> Option<String> {
        self.persistence.as_ref().map(|p| p.dir.clone())
    }

    /// The store backend ("sled" or "redb"), or None for a memory-only service.
    #[getter]
    fn store_backend(&self) -> Option<&'static str> {
        self.persistence.as_ref().map(|p| p.backend.name())
    }

    /// `(user_id, total µ¢, count)` of every user with usage in `month` (`YYYY-MM`; default: this
    /// month), largest total first.
    #[pyo3(signature = (month=None))]
    fn get_actors_usage(
        &self,
        py: Python<'_>,
        month: Option<&str>,
    ) -> PyResult<Vec<(String, Py<PyAny>, u64)>> {
        self.ensure_open()?;
        let month = match month {
            Some(label) => parse_month(label)?,
            None => self.month_now(py)?,
        };
        let mut users = self.ledger.users_in_month(month);
        users.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(users
            .into_iter()
            .map(|(user, total, count)| (user, money_to_int(py, total).into_any().unbind(), count))
            .collect())
    }

    /// Installs the plan resolver and the alarm dispatcher (once).
    fn _install_hooks(
        &self,
        py: Python<'_>,
        resolve_policy: Py<PyAny>,
        raise_alarm: Py<PyAny>,
    ) -> PyResult<()> {
        let _ = self.alarm.set(raise_alarm.clone_ref(py));
        self.hooks
            .set(Hooks {
                resolve_policy,
                raise_alarm,
            })
            .map_err(|_| PyRuntimeError::new_err("hooks are already installed"))
    }

    /// The cost map this service prices with.
    #[getter]
    fn cost_map(&self, py: Python<'_>) -> Py<PyCostMap> {
        self.cost_map.clone_ref(py)
    }

    /// Does nothing with `increment_usage`'s arguments: the floor of a native call, for benchmarks.
    /// PyO3 extracts the same argument types (an `Actor`, a borrowed `str`, an `int`) and the
    /// result is an `int`, so the difference to `increment_usage` is the metering itself.
    #[pyo3(signature = (actor, usage_type, amount, cost_override=None))]
    fn _noop_increment_usage(
        &self,
        actor: &Bound<'_, PyActor>,
        usage_type: &str,
        amount: u64,
        cost_override: Option<u64>,
    ) -> u64 {
        let _ = (actor, usage_type, cost_override);
        amount
    }

    /// Records `amount` units of `usage_type`; returns the user's month total in µ¢.
    #[pyo3(signature = (actor, usage_type, amount, cost_override=None))]
    pub(super) fn increment_usage<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        usage_type: &Bound<'py, PyAny>,
        amount: &Bound<'py, PyAny>,
        cost_override: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyInt>> {
        let receipt = self.one_usage(
            py,
            actor,
            usage_type,
            amount,
            cost_override,
            ChargeMode::Always,
        )?;
        Ok(money_to_int(
            py,
            receipt.map_or(Money::ZERO, |r| r.month_total),
        ))
    }

    /// A handle on `increment_usage(actor, usage_type, amount)` for a pair metered again and
    /// again (a streamed response, a worker's loop): `meter.add(amount)` records exactly what
    /// that call would, with its checks, plan and alarms, without finding the actor's account
    /// and the usage type's price on every call. The usage type is checked now: an invalid one
    /// raises `ValueError`, one the cost map does not price raises `UnknownUsageType` (unless
    /// the service records those for free).
    fn meter(
        slf: &Bound<'_, Self>,
        actor: &Bound<'_, PyAny>,
        usage_type: &Bound<'_, PyAny>,
    ) -> PyResult<PyMeter> {
        let core = slf.get();
        let actor_ref = as_actor(actor)?;
        let name = convert::usage_type(usage_type)?;
        let type_id = core.ledger.meter_type(name).map_err(ledger_error)?;
        let account = (!actor_ref.is_system).then(|| core.ledger.account(&actor_ref.user_id));
        Ok(PyMeter::new(
            slf.clone().unbind(),
            actor.cast::<PyActor>()?.clone().unbind(),
            usage_type.cast::<PyString>()?.clone().unbind(),
            type_id,
            account,
        ))
    }

    /// Records only if the user's remaining budget covers the cost; returns the new total or None.
    #[pyo3(signature = (actor, usage_type, amount, cost_override=None))]
    fn try_increment_usage<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        usage_type: &Bound<'py, PyAny>,
        amount: &Bound<'py, PyAny>,
        cost_override: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyInt>>> {
        let receipt = self.one_usage(
            py,
            actor,
            usage_type,
            amount,
            cost_override,
            ChargeMode::IfAffordable,
        )?;
        Ok(match receipt {
            None => Some(money_to_int(py, Money::ZERO)),
            Some(receipt) if receipt.accepted => Some(money_to_int(py, receipt.month_total)),
            Some(_) => None,
        })
    }

    /// Records several usages as one atomic event: all validated first, all or nothing.
    fn batch_increment_usages<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        usages: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyInt>> {
        let actor_ref = as_actor(actor)?;
        let owned = PyIterator::from_object(usages)?
            .map(|item| batch_item(&item?))
            .collect::<PyResult<Vec<_>>>()?;
        let items = owned
            .iter()
            .map(|o| {
                let usage_type = o
                    .usage_type
                    .cast::<PyString>()
                    .expect("checked in batch_item")
                    .to_str()?;
                Ok(UsageItem {
                    usage_type,
                    units: o.units,
                    cost_override: o.cost_override,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        if actor_ref.is_system {
            return Ok(money_to_int(py, Money::ZERO));
        }
        let receipt = self.charge(py, actor, actor_ref, &items, ChargeMode::Always)?;
        Ok(money_to_int(py, receipt.month_total))
    }

    /// Whether the user's remaining budget covers `amount` units of `usage_type`.
    fn has_enough_credits_for(
        &self,
        py: Python<'_>,
        actor: &Bound<'_, PyAny>,
        usage_type: &Bound<'_, PyAny>,
        amount: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let actor_ref = as_actor(actor)?;
        let usage_type = convert::usage_type(usage_type)?;
        let units = convert::units(amount, "amount")?;
        let cost = match self.ledger.cost_of(usage_type, units) {
            Ok(cost) => Some(cost),
            // A cost beyond the ledger's range is affordable to nobody (but the system actor).
            Err(LedgerError::Overflow(_)) => None,
            Err(error) => return Err(ledger_error(error)),
        };
        self.affords(py, actor, actor_ref, cost)
    }

    /// Whether the user's remaining budget covers `amount` µ¢.
    fn has_enough_credits(
        &self,
        py: Python<'_>,
        actor: &Bound<'_, PyAny>,
        amount: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let actor_ref = as_actor(actor)?;
        let cost = convert::microcents_query(amount, "amount")?;
        self.affords(py, actor, actor_ref, cost)
    }

    /// Whether the user recorded any usage this month.
    fn has_any_usage(&self, py: Python<'_>, actor: &Bound<'_, PyAny>) -> PyResult<bool> {
        let actor = as_actor(actor)?;
        if actor.is_system {
            return Ok(false);
        }
        Ok(self
            .ledger
            .user_usage(&actor.user_id, self.month_now(py)?)
            .count
            > 0)
    }

    /// Allowance left this month plus purchased credit left, in µ¢.
    fn get_remaining_usage<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyInt>> {
        Ok(self
            .rounded_budget(py, actor)?
            .remaining
            .into_pyobject(py)?)
    }

    /// `{"remaining", "monthly_allowance", "addons": {"purchased_credits", "consumed_purchase_credits"}}`.
    fn get_allowed_usage<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let budget = self.rounded_budget(py, actor)?;
        let dict = PyDict::new(py);
        dict.set_item("remaining", budget.remaining)?;
        dict.set_item("monthly_allowance", budget.allowance)?;
        dict.set_item("addons", addons_dict(py, &budget)?)?;
        Ok(dict)
    }

    /// This month's pools: allowance used, purchased credit, overage and what remains, in µ¢.
    fn get_actor_budget<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let budget = self.rounded_budget(py, actor)?;
        let dict = PyDict::new(py);
        dict.set_item("monthly_allowance", budget.allowance)?;
        dict.set_item("allowance_used", budget.allowance_used)?;
        dict.set_item("purchased_credits", budget.purchased)?;
        dict.set_item("consumed_purchase_credits", budget.consumed)?;
        dict.set_item("consumed_this_month", budget.consumed_this_month)?;
        dict.set_item("overage", budget.overage)?;
        dict.set_item("remaining", budget.remaining)?;
        Ok(dict)
    }

    /// `{"purchased_credits", "consumed_purchase_credits"}` in µ¢ (lifetime).
    fn get_actor_addons<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let actor = as_actor(actor)?;
        let budget = match actor.is_system {
            true => RoundedBudget::default(),
            false => {
                let budget = self
                    .ledger
                    .budget(
                        &actor.user_id,
                        self.month_now(py)?,
                        Plan::Fixed(Money::ZERO),
                    )
                    .map_err(ledger_error)?;
                RoundedBudget::of(Money::ZERO, &budget.pools, &budget.credit)
            }
        };
        addons_dict(py, &budget)
    }

    /// Adds purchased credit (µ¢, >= 0) to a user; returns the user's purchased total.
    fn update_addon_credit<'py>(
        &self,
        py: Python<'py>,
        user_id: &str,
        amount: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyInt>> {
        self.ensure_open()?;
        let amount = convert::microcents(amount, "amount")?;
        if user_id.is_empty() {
            return Err(PyValueError::new_err("user_id must be a non-empty string"));
        }
        let credit = self
            .ledger
            .add_purchased(user_id, amount)
            .map_err(ledger_error)?;
        Ok(money_to_int(py, credit.purchased))
    }

    /// Sets the user's month total by booking the difference as `manual_adjustment`.
    fn set_actor_current_month_usage_total<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        total: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyInt>> {
        let actor_ref = as_actor(actor)?;
        let target = convert::microcents(total, "total")?;
        if actor_ref.is_system {
            return Ok(money_to_int(py, Money::ZERO));
        }
        let receipt = self.charge(py, actor, actor_ref, &[], ChargeMode::SetTotal(target))?;
        Ok(money_to_int(py, receipt.month_total))
    }

    /// The user's usage in a month (`YYYY-MM`, UTC): `{"usage": {...}, "app_totals": {...}}`.
    fn get_actor_month_usage_details<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        month: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.ensure_open()?;
        let actor = as_actor(actor)?;
        let month = parse_month(month)?;
        self.month_details(py, actor, month)
    }

    /// The user's usage this month: `{"usage": {...}, "app_totals": {...}}`.
    fn get_actor_current_month_usage_details<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.ensure_open()?;
        let actor = as_actor(actor)?;
        let month = self.month_now(py)?;
        self.month_details(py, actor, month)
    }

    /// The user's usage this month through one app (default: the actor's own app).
    #[pyo3(signature = (actor, app_id=None))]
    fn get_actor_current_month_app_usage_details<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        app_id: Option<&str>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let actor = as_actor(actor)?;
        let app_id = app_id.unwrap_or_else(|| actor.booking_app());
        Self::check_app_access(actor, app_id)?;
        let report = if actor.is_system {
            UsageReport::default()
        } else {
            self.ledger
                .app_usage(&actor.user_id, app_id, self.month_now(py)?)
        };
        report_dict(py, &self.ledger, &report)
    }

    /// `{"total", "count"}` of the user's usage this month through one app.
    fn get_actor_app_usage<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        app_id: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let actor = as_actor(actor)?;
        Self::check_app_access(actor, app_id)?;
        let report = if actor.is_system {
            UsageReport::default()
        } else {
            self.ledger
                .app_usage(&actor.user_id, app_id, self.month_now(py)?)
        };
        totals_dict(py, report.total, report.count)
    }

    /// This month's usage over all actors: `{"total", "<type>": {"units", "cost", "count"}}`.
    ///
    /// Summed from the actors' records when called (7-10 ms per 10,000 actors of 10 usage
    /// types each), so that no charge has to update a figure shared by every actor.
    fn get_global_usage<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let month = self.month_now(py)?;
        let report = py
            .detach(|| self.ledger.global_usage(month))
            .map_err(ledger_error)?;
        report_dict(py, &self.ledger, &report)
    }

    /// The actor's plan (cached per user for `subscription_ttl` seconds).
    fn get_actor_subscription(
        &self,
        py: Python<'_>,
        actor: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let actor_ref = as_actor(actor)?;
        let now_ms = self.now_ms(py)?;
        self.policy(py, actor, actor_ref, now_ms)
    }

    /// Forgets the cached plan of a user, so the next call resolves it again.
    fn invalidate_subscription(&self, user_id: &str) {
        self.plans.pin().remove(user_id);
        self.ledger.forget_plan(user_id);
    }
}
