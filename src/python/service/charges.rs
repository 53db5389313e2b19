//! Recording usage: `increment_usage` and its variants, purchased credit, and the alarms a
//! charge can raise (unmapped usage, overuse).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyIterator, PyList, PyString, PyTuple};

use super::keyed::keyed_total;
use super::{as_actor, MeteringCore};
use crate::error::LedgerError;
use crate::ledger::idempotency::Keyed;
use crate::ledger::month::MonthId;
use crate::ledger::record::TypeId;
use crate::ledger::{
    refund_of_nothing_charged, Account, Booking, ChargeMode, Plan, Receipt, UsageItem,
};
use crate::money::Money;
use crate::python::actor::PyActor;
use crate::python::convert::{self, money_to_int};
use crate::python::errors::ledger_error;

/// One batch item, with its usage type still owned by Python so the name is borrowed.
pub(super) struct OwnedItem<'py> {
    usage_type: Bound<'py, PyAny>,
    units: u64,
    cost_override: Option<Money>,
}

/// The items of a batch argument (an iterable of `(usage_type, amount[, cost_override])`),
/// each checked; the names stay owned by Python (see `usage_items`).
pub(super) fn owned_items<'py>(usages: &Bound<'py, PyAny>) -> PyResult<Vec<OwnedItem<'py>>> {
    PyIterator::from_object(usages)?
        .map(|item| batch_item(&item?))
        .collect()
}

/// `owned` as the ledger's items, borrowing the names.
pub(super) fn usage_items<'a>(owned: &'a [OwnedItem<'_>]) -> PyResult<Vec<UsageItem<'a>>> {
    owned
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
        .collect()
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

/// Whether a charge may wait on the shared ledger: a fleet's worker whose budget lease falls
/// short asks Redis for more (one round trip). `Never` is for `usagemeter.aio`, which sends
/// such a charge to a thread instead of blocking its event loop.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    Allowed,
    Never,
}

impl MeteringCore {
    /// Records items for a (non-system) actor, then raises the alarms the receipt calls for.
    #[allow(clippy::too_many_arguments)] // the service tier is the batch path's option
    fn charge(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        items: &[UsageItem<'_>],
        mode: ChargeMode,
        wait: Wait,
        service_tier: Option<&str>,
    ) -> PyResult<Receipt> {
        // A strict call does not make the account of a user never charged: a refusal must leave
        // nothing behind (the ledger decides it on an empty account, `refusal_without_account`).
        let account = match mode {
            ChargeMode::IfAffordable => actor.account.existing(&self.ledger, &actor.user_id),
            _ => actor.account.get(&self.ledger, &actor.user_id),
        };
        // A table-priced item is priced by the ledger at the booking's clock reading.
        self.charge_with(py, actor_obj, actor, items, wait, |booking| {
            self.ledger
                .charge_request(account, booking, items, mode, service_tier)
        })
    }

    /// `items` with the items of table-priced types priced for this request at the service's
    /// clock now (`Ledger::with_tables`). Out of line: only after the plain index missed.
    #[cold]
    #[inline(never)]
    pub(super) fn items_by_tables<'a>(
        &self,
        py: Python<'_>,
        items: &[UsageItem<'a>],
        service_tier: Option<&str>,
    ) -> PyResult<Vec<UsageItem<'a>>> {
        let now_ms = self.now_ms(py)?;
        self.ledger
            .with_tables(items, service_tier, now_ms)
            .map_err(ledger_error)
    }

    /// `price(items)`, or, when a table prices one of them, `price` of the items priced for
    /// their request now (`items_by_tables`): the estimates' way to price through tables.
    pub(super) fn estimate<'a, T>(
        &self,
        py: Python<'_>,
        items: &[UsageItem<'a>],
        service_tier: Option<&str>,
        price: impl Fn(&[UsageItem<'a>]) -> Result<T, LedgerError>,
    ) -> PyResult<Result<T, LedgerError>> {
        match price(items) {
            Err(LedgerError::PricedByTable(_)) => {
                let priced = self.items_by_tables(py, items, service_tier)?;
                Ok(price(&priced))
            }
            done => Ok(done),
        }
    }

    /// Records `units` of a priced usage type for a `Meter` (already holding the account).
    pub(in crate::python) fn add_priced<'py>(
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
        let receipt = self.charge_with(py, actor_obj, actor, &[], Wait::Allowed, |booking| {
            self.ledger
                .charge_priced(account, booking, usage_type, units)
        })?;
        Ok(money_to_int(py, receipt.month_total))
    }

    /// Runs `record` for the actor this month under its plan, then raises the alarms the receipt
    /// calls for (`items`: what `record` records, named in the unmapped-usage alarms). With
    /// `Wait::Never`, a charge that would ask the fleet for a lease is returned refused, with
    /// `ask_fleet` set, and raises no alarm.
    pub(super) fn charge_with(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        items: &[UsageItem<'_>],
        wait: Wait,
        record: impl Fn(&Booking<'_>) -> Result<Receipt, LedgerError>,
    ) -> PyResult<Receipt> {
        let now_ms = self.now_ms(py)?;
        let (month, day) = MonthId::with_day_from_epoch_ms(now_ms);
        let charge = |plan| {
            record(&Booking {
                user_id: &actor.user_id,
                app_id: actor.booking_app(),
                month,
                day,
                plan,
                now_ms,
            })
        };
        let mut receipt = self.with_plan_charging(py, actor_obj, actor, now_ms, charge)?;
        if receipt.ask_fleet {
            if wait == Wait::Never {
                return Ok(receipt);
            }
            receipt = self.charge_on_new_lease(py, actor_obj, actor, now_ms, receipt, charge)?;
        }
        if receipt.unmapped_items > 0 || receipt.overuse_multiple.is_some() {
            self.raise_alarms(py, actor_obj, items, &receipt, receipt.allowance);
        }
        Ok(receipt)
    }

    /// A fleet's worker whose budget lease does not cover the charge asks the fleet for more
    /// (the last credits of a user go through the shared ledger, one request per call), then
    /// decides again. Twice at most: a lease granted is spent by this worker alone, but another
    /// thread of this process may take it first. Out of line: one process never comes here.
    #[cold]
    #[inline(never)]
    fn charge_on_new_lease(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        now_ms: i64,
        refused: Receipt,
        charge: impl Fn(Plan) -> Result<Receipt, LedgerError> + Copy,
    ) -> PyResult<Receipt> {
        let month = MonthId::from_epoch_ms(now_ms);
        let mut receipt = refused;
        for _ in 0..2 {
            if !receipt.ask_fleet || !self.lease_granted(py, actor, month, now_ms, &receipt) {
                break;
            }
            receipt = self.with_plan_charging(py, actor_obj, actor, now_ms, charge)?;
        }
        Ok(receipt)
    }

    /// Asks the fleet for a lease covering `receipt`'s cost and the actor's outstanding holds,
    /// which the lease keeps (with the GIL released). An error (the shared ledger cannot be
    /// reached) is raised as a `store_error` alarm, and the charge stays refused: strict spending
    /// fails closed.
    fn lease_granted(
        &self,
        py: Python<'_>,
        actor: &PyActor,
        month: MonthId,
        now_ms: i64,
        receipt: &Receipt,
    ) -> bool {
        let (Some(persistence), Some(fleet)) = (&self.persistence, self.fleet()) else {
            return false;
        };
        if !self.ledger.is_online() {
            // The last sync failed: asking now would wait on the same failure (up to the connect
            // timeout) on the caller's thread. Refused; the sync thread keeps trying.
            return false;
        }
        let need = receipt.cost.plus(self.ledger.held(&actor.user_id, now_ms));
        let asked =
            py.detach(|| fleet.request_lease(&actor.user_id, month, need, receipt.allowance));
        match asked {
            Ok(granted) => granted,
            Err(error) => {
                persistence.errors.push(format!(
                    "a budget lease could not be asked for, the charge is refused: {error}"
                ));
                false
            }
        }
    }

    /// A batch's items, checked, then recorded under `how` (`None` for the system actor, whose
    /// items are only checked).
    fn batch(
        &self,
        py: Python<'_>,
        actor: &Bound<'_, PyAny>,
        usages: &Bound<'_, PyAny>,
        (mode, wait): (ChargeMode, Wait),
        service_tier: Option<&str>,
    ) -> PyResult<Option<Receipt>> {
        let actor_ref = as_actor(actor)?;
        let owned = owned_items(usages)?;
        let items = usage_items(&owned)?;
        if actor_ref.is_system {
            self.ensure_open()?;
            for item in &items {
                self.ledger.check_item(item).map_err(ledger_error)?;
            }
            return Ok(None);
        }
        self.charge(py, actor, actor_ref, &items, mode, wait, service_tier)
            .map(Some)
    }

    /// What a `try_*` call returns: the new total, or None when refused (counted for metrics).
    pub(super) fn try_result<'py>(
        &self,
        py: Python<'py>,
        receipt: Option<Receipt>,
    ) -> Option<Bound<'py, PyInt>> {
        match receipt {
            None => Some(money_to_int(py, Money::ZERO)),
            Some(receipt) if receipt.accepted => Some(money_to_int(py, receipt.month_total)),
            Some(_) => {
                self.refused();
                None
            }
        }
    }

    /// What a `_try_*_nowait` call returns: `(True, total or None)` when decided, `(False, None)`
    /// when only a lease request to the fleet could decide (nothing was recorded).
    fn try_result_nowait<'py>(
        &self,
        py: Python<'py>,
        receipt: Option<Receipt>,
    ) -> (bool, Option<Bound<'py, PyInt>>) {
        match receipt {
            Some(ref refused) if !refused.accepted && refused.ask_fleet => (false, None),
            receipt => (true, self.try_result(py, receipt)),
        }
    }

    pub(super) fn raise_alarms(
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

    fn one_usage(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        usage_type: &Bound<'_, PyAny>,
        amount: &Bound<'_, PyAny>,
        cost_override: Option<&Bound<'_, PyAny>>,
        (mode, wait): (ChargeMode, Wait),
    ) -> PyResult<Option<Receipt>> {
        let actor = as_actor(actor_obj)?;
        let item = UsageItem {
            usage_type: convert::usage_type(usage_type)?,
            units: convert::units(amount, "amount")?,
            cost_override: convert::optional_microcents(cost_override, "cost_override")?,
        };
        if actor.is_system {
            // Not metered (and it reads no clock, where others are refused after close), but a
            // closed service and bad input are refused as for anyone.
            self.ensure_open()?;
            self.ledger.check_item(&item).map_err(ledger_error)?;
            return Ok(None);
        }
        self.charge(py, actor_obj, actor, &[item], mode, wait, None)
            .map(Some)
    }
}

#[pymethods]
impl MeteringCore {
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

    /// Records `amount` units of `usage_type`; returns the user's month total in µ¢. With an
    /// `idempotency_key`, a retry records nothing and returns the first call's total
    /// (`keyed.rs`); without one, the call is exactly what it was before keys existed.
    #[pyo3(signature = (actor, usage_type, amount, cost_override=None, *, idempotency_key=None))]
    pub(in crate::python) fn increment_usage<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        usage_type: &Bound<'py, PyAny>,
        amount: &Bound<'py, PyAny>,
        cost_override: Option<&Bound<'py, PyAny>>,
        idempotency_key: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyInt>> {
        if let Some(key) = idempotency_key {
            let item = (usage_type, amount, cost_override);
            let keyed = self.one_usage_keyed(py, actor, item, ChargeMode::Always, key)?;
            return Ok(keyed_total(py, keyed));
        }
        let receipt = self.one_usage(
            py,
            actor,
            usage_type,
            amount,
            cost_override,
            (ChargeMode::Always, Wait::Allowed),
        )?;
        Ok(money_to_int(
            py,
            receipt.map_or(Money::ZERO, |r| r.month_total),
        ))
    }

    /// Records only if the user's remaining budget covers the cost; returns the new total or None.
    #[pyo3(signature = (actor, usage_type, amount, cost_override=None, *, idempotency_key=None))]
    fn try_increment_usage<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        usage_type: &Bound<'py, PyAny>,
        amount: &Bound<'py, PyAny>,
        cost_override: Option<&Bound<'py, PyAny>>,
        idempotency_key: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyInt>>> {
        if let Some(key) = idempotency_key {
            let item = (usage_type, amount, cost_override);
            let keyed = self.one_usage_keyed(py, actor, item, ChargeMode::IfAffordable, key)?;
            return Ok(self.keyed_try_total(py, keyed));
        }
        let receipt = self.one_usage(
            py,
            actor,
            usage_type,
            amount,
            cost_override,
            (ChargeMode::IfAffordable, Wait::Allowed),
        )?;
        Ok(self.try_result(py, receipt))
    }

    /// `try_increment_usage` that never waits on the shared ledger (for `usagemeter.aio`):
    /// returns `(True, total or None)` when it decided, or `(False, None)`, having recorded
    /// nothing, when only a lease request to the fleet could decide (call `try_increment_usage`
    /// off the event loop then).
    #[pyo3(signature = (actor, usage_type, amount, cost_override=None, *, idempotency_key=None))]
    fn _try_increment_usage_nowait<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        usage_type: &Bound<'py, PyAny>,
        amount: &Bound<'py, PyAny>,
        cost_override: Option<&Bound<'py, PyAny>>,
        idempotency_key: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(bool, Option<Bound<'py, PyInt>>)> {
        if let Some(key) = idempotency_key {
            // Keys are refused on a fleet, so a keyed call never waits on a lease: decided here.
            let item = (usage_type, amount, cost_override);
            let keyed = self.one_usage_keyed(py, actor, item, ChargeMode::IfAffordable, key)?;
            return Ok((true, self.keyed_try_total(py, keyed)));
        }
        let receipt = self.one_usage(
            py,
            actor,
            usage_type,
            amount,
            cost_override,
            (ChargeMode::IfAffordable, Wait::Never),
        )?;
        Ok(self.try_result_nowait(py, receipt))
    }

    /// Records several usages as one atomic event: all validated first, all or nothing.
    #[pyo3(signature = (actor, usages, *, idempotency_key=None, service_tier=None))]
    fn batch_increment_usages<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        usages: &Bound<'py, PyAny>,
        idempotency_key: Option<&Bound<'py, PyAny>>,
        service_tier: Option<&str>,
    ) -> PyResult<Bound<'py, PyInt>> {
        if let Some(key) = idempotency_key {
            let keyed =
                self.batch_keyed(py, actor, usages, ChargeMode::Always, key, service_tier)?;
            return Ok(keyed_total(py, keyed));
        }
        let receipt = self.batch(
            py,
            actor,
            usages,
            (ChargeMode::Always, Wait::Allowed),
            service_tier,
        )?;
        Ok(money_to_int(
            py,
            receipt.map_or(Money::ZERO, |r| r.month_total),
        ))
    }

    /// Records several usages as one atomic event only if the user's remaining budget covers
    /// them all together; returns the new month total, or None (nothing recorded).
    #[pyo3(signature = (actor, usages, *, idempotency_key=None, service_tier=None))]
    fn try_batch_increment_usages<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        usages: &Bound<'py, PyAny>,
        idempotency_key: Option<&Bound<'py, PyAny>>,
        service_tier: Option<&str>,
    ) -> PyResult<Option<Bound<'py, PyInt>>> {
        if let Some(key) = idempotency_key {
            let keyed = self.batch_keyed(
                py,
                actor,
                usages,
                ChargeMode::IfAffordable,
                key,
                service_tier,
            )?;
            return Ok(self.keyed_try_total(py, keyed));
        }
        let receipt = self.batch(
            py,
            actor,
            usages,
            (ChargeMode::IfAffordable, Wait::Allowed),
            service_tier,
        )?;
        Ok(self.try_result(py, receipt))
    }

    /// `try_batch_increment_usages` that never waits on the shared ledger (for `usagemeter.aio`),
    /// answered as `_try_increment_usage_nowait` answers.
    #[pyo3(signature = (actor, usages, *, idempotency_key=None, service_tier=None))]
    fn _try_batch_increment_usages_nowait<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        usages: &Bound<'py, PyAny>,
        idempotency_key: Option<&Bound<'py, PyAny>>,
        service_tier: Option<&str>,
    ) -> PyResult<(bool, Option<Bound<'py, PyInt>>)> {
        if let Some(key) = idempotency_key {
            let keyed = self.batch_keyed(
                py,
                actor,
                usages,
                ChargeMode::IfAffordable,
                key,
                service_tier,
            )?;
            return Ok((true, self.keyed_try_total(py, keyed)));
        }
        let receipt = self.batch(
            py,
            actor,
            usages,
            (ChargeMode::IfAffordable, Wait::Never),
            service_tier,
        )?;
        Ok(self.try_result_nowait(py, receipt))
    }

    /// Refunds `units` (default 0) and `cost` (µ¢; default: the price of `units`) of
    /// `usage_type` to the actor this month, booked as `refund:<usage_type>`; returns the user's
    /// month total, the cost given back (µ¢, rounded half up) and whether it was booked now
    /// (False: a retry of `idempotency_key`, which books nothing and returns the first call's
    /// figures). `MeteringService.refund` wraps this (the reason, the event).
    #[pyo3(signature = (actor, usage_type, units=None, cost=None, idempotency_key=None))]
    fn _refund<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        usage_type: &Bound<'py, PyAny>,
        units: Option<&Bound<'py, PyAny>>,
        cost: Option<&Bound<'py, PyAny>>,
        idempotency_key: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyInt>, Bound<'py, PyInt>, bool)> {
        let key = convert::idempotency_key(idempotency_key)?;
        let actor_ref = as_actor(actor)?;
        let usage_type = convert::usage_type(usage_type)?;
        let units = match units {
            Some(units) if !units.is_none() => convert::units(units, "units")?,
            _ => 0,
        };
        let cost = convert::optional_microcents(cost, "cost")?;
        if actor_ref.is_system {
            self.ensure_open()?;
            return Err(PyValueError::new_err(
                "the system actor is not metered: it has nothing to refund",
            ));
        }
        // A user never charged has nothing to refund: no account is created for the refusal.
        // An `Actor` that kept another service's account (one reused after a restart) finds
        // this ledger's by its id.
        let found;
        let account = match actor_ref.account.existing(&self.ledger, &actor_ref.user_id) {
            Some(account) => Some(account),
            None => {
                found = self.ledger.existing_account(&actor_ref.user_id);
                found.as_deref()
            }
        };
        let Some(account) = account else {
            self.ensure_open()?;
            self.ledger
                .refund_cost(usage_type, units, cost)
                .map_err(ledger_error)?;
            return Err(ledger_error(refund_of_nothing_charged(usage_type)));
        };
        if let Some(key) = key {
            let refund = (usage_type, units, cost);
            return match self.refund_keyed(py, actor, actor_ref, account, refund, key)? {
                Keyed::Done(receipt) => Ok((
                    money_to_int(py, receipt.month_total),
                    money_to_int(py, receipt.cost.negated()),
                    true,
                )),
                Keyed::Replayed(outcome) => Ok((
                    money_to_int(py, outcome.total),
                    money_to_int(py, outcome.cost.negated()),
                    false,
                )),
            };
        }
        let receipt = match self.fleet() {
            Some(_) => {
                let now_ms = self.now_ms(py)?;
                self.refund_on_fleet(py, actor, actor_ref, (usage_type, units, cost), now_ms)?
            }
            None => self.charge_with(py, actor, actor_ref, &[], Wait::Allowed, |booking| {
                self.ledger
                    .refund(Some(account), booking, usage_type, units, cost)
            })?,
        };
        Ok((
            money_to_int(py, receipt.month_total),
            money_to_int(py, receipt.cost.negated()),
            true,
        ))
    }

    /// Adds purchased credit (µ¢, >= 0) to a user; returns the user's purchased total (with an
    /// `idempotency_key`, a retry adds nothing and returns the first call's total).
    #[pyo3(signature = (user_id, amount, *, idempotency_key=None))]
    fn update_addon_credit<'py>(
        &self,
        py: Python<'py>,
        user_id: &str,
        amount: &Bound<'py, PyAny>,
        idempotency_key: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyInt>> {
        self.ensure_open()?;
        let amount = convert::microcents(amount, "amount")?;
        if user_id.is_empty() {
            return Err(PyValueError::new_err("user_id must be a non-empty string"));
        }
        if let Some(key) = convert::idempotency_key(idempotency_key)? {
            return self.add_purchased_keyed(py, user_id, amount, key);
        }
        let credit = self
            .ledger
            .add_purchased(user_id, amount)
            .map_err(ledger_error)?;
        Ok(money_to_int(py, credit.purchased))
    }

    /// Sets the user's month total by booking the difference as `manual_adjustment`. Purchased
    /// credit is left alone: raising the total fills the allowance, then overage; lowering it
    /// gives back overage, then allowance. A total below what purchased credit paid this month
    /// raises `ValueError`.
    fn set_actor_current_month_usage_total<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        total: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyInt>> {
        let actor_ref = as_actor(actor)?;
        let target = convert::microcents(total, "total")?;
        if actor_ref.is_system {
            self.ensure_open()?;
            return Ok(money_to_int(py, Money::ZERO));
        }
        let receipt = self.charge(
            py,
            actor,
            actor_ref,
            &[],
            ChargeMode::SetTotal(target),
            Wait::Allowed,
            None,
        )?;
        Ok(money_to_int(py, receipt.month_total))
    }
}
