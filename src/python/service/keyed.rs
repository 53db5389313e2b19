//! Idempotency keys and monthly charges at the boundary: the keyed variants of the charges
//! (`charges.rs` branches here only when a key is given, so a call without one runs exactly the
//! code it ran before keys existed), and the monthly charges applied at a user's first charge of
//! a month (`plans.rs` calls `apply_monthly_if_due` on the plan's slow path) or on demand.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt};

use super::charges::{owned_items, usage_items};
use super::{as_actor, MeteringCore};
use crate::ledger::idempotency::{FingerprintBuilder, KeyKind, Keyed, KeyedCall};
use crate::ledger::month::MonthId;
use crate::ledger::{Account, Booking, ChargeMode, Plan, Receipt, UsageItem};
use crate::money::Money;
use crate::python::actor::{PyActor, GLOBAL_APP};
use crate::python::convert::{self, money_to_int};
use crate::python::errors::ledger_error;

/// One usage's arguments as Python passed them: usage type, amount, cost override.
pub(super) type OneUsage<'a, 'py> = (
    &'a Bound<'py, PyAny>,
    &'a Bound<'py, PyAny>,
    Option<&'a Bound<'py, PyAny>>,
);

/// What a keyed charge returns: the month total now, or the first call's (0 for the system
/// actor, which is not metered).
pub(super) fn keyed_total<'py>(
    py: Python<'py>,
    keyed: Option<Keyed<Receipt>>,
) -> Bound<'py, PyInt> {
    let total = match keyed {
        None => Money::ZERO,
        Some(Keyed::Done(receipt)) => receipt.month_total,
        Some(Keyed::Replayed(outcome)) => outcome.total,
    };
    money_to_int(py, total)
}

/// A fingerprint of a charge: whether it is checked against the budget (`try_*`), the app it is
/// booked to and every item in order. One usage and a batch of that one usage are the same
/// charge: a key passed to both replays.
fn charge_fingerprint(method: &str, app_id: &str, items: &[UsageItem<'_>]) -> [u8; 16] {
    let mut builder = FingerprintBuilder::new(method);
    builder.text(app_id);
    for item in items {
        builder
            .text(item.usage_type)
            .number(item.units)
            .money(item.cost_override);
    }
    builder.finish()
}

fn mode_name(mode: ChargeMode) -> &'static str {
    match mode {
        ChargeMode::IfAffordable => "try_charge",
        _ => "charge",
    }
}

impl MeteringCore {
    /// What a keyed `try_*` call returns: the new total or None when refused now, the first
    /// call's total when replayed (a refusal keeps no key, so a replay was accepted).
    pub(super) fn keyed_try_total<'py>(
        &self,
        py: Python<'py>,
        keyed: Option<Keyed<Receipt>>,
    ) -> Option<Bound<'py, PyInt>> {
        match keyed {
            None => Some(money_to_int(py, Money::ZERO)),
            Some(Keyed::Done(receipt)) => self.try_result(py, Some(receipt)),
            Some(Keyed::Replayed(outcome)) => Some(money_to_int(py, outcome.total)),
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn one_usage_keyed(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        (usage_type, amount, cost_override): OneUsage<'_, '_>,
        mode: ChargeMode,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Keyed<Receipt>>> {
        let item = UsageItem {
            usage_type: convert::usage_type(usage_type)?,
            units: convert::units(amount, "amount")?,
            cost_override: convert::optional_microcents(cost_override, "cost_override")?,
        };
        let items = self.keyed_items(py, vec![item], None)?;
        self.charge_keyed(py, actor_obj, &items, mode, key)
    }

    /// The items of a keyed call, those of table-priced types priced for the request now (a
    /// keyed call is out of line already; a retry is checked against these costs).
    fn keyed_items<'a>(
        &self,
        py: Python<'_>,
        items: Vec<UsageItem<'a>>,
        service_tier: Option<&str>,
    ) -> PyResult<Vec<UsageItem<'a>>> {
        let cost_map = self.ledger.cost_map();
        let tabled = cost_map.has_tables()
            && items
                .iter()
                .any(|i| i.cost_override.is_none() && cost_map.table(i.usage_type).is_some());
        match tabled {
            true => self.items_by_tables(py, &items, service_tier),
            false => Ok(items),
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn batch_keyed(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        usages: &Bound<'_, PyAny>,
        mode: ChargeMode,
        key: &Bound<'_, PyAny>,
        service_tier: Option<&str>,
    ) -> PyResult<Option<Keyed<Receipt>>> {
        let owned = owned_items(usages)?;
        let items = self.keyed_items(py, usage_items(&owned)?, service_tier)?;
        self.charge_keyed(py, actor_obj, &items, mode, key)
    }

    /// Records `items` under the idempotency key `key_obj` (checked first: a bad key changes
    /// nothing), then raises the alarms a charge done now calls for (a replay raises none).
    fn charge_keyed(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        items: &[UsageItem<'_>],
        mode: ChargeMode,
        key_obj: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Keyed<Receipt>>> {
        let actor = as_actor(actor_obj)?;
        let Some(key) = convert::idempotency_key(Some(key_obj))? else {
            unreachable!("callers pass a key that is not None");
        };
        if actor.is_system {
            // Not metered: nothing to remember either. Bad input is refused as for anyone.
            self.ensure_open()?;
            for item in items {
                self.ledger.check_item(item).map_err(ledger_error)?;
            }
            return Ok(None);
        }
        let now_ms = self.now_ms(py)?;
        let call = KeyedCall {
            key,
            fingerprint: charge_fingerprint(mode_name(mode), actor.booking_app(), items),
            now_ms,
            kind: KeyKind::Caller,
        };
        if self.fleet().is_some() {
            let strict = mode == ChargeMode::IfAffordable;
            let keyed = self.charge_keyed_on_fleet(py, actor_obj, actor, items, strict, &call)?;
            return Ok(Some(keyed));
        }
        // A strict call does not make the account of a user never charged (see `charge`).
        let account = match mode {
            ChargeMode::IfAffordable => actor.account.existing(&self.ledger, &actor.user_id),
            _ => actor.account.get(&self.ledger, &actor.user_id),
        };
        let keyed = self.with_plan_charging(py, actor_obj, actor, now_ms, |plan| {
            let booking = Booking::at(&actor.user_id, actor.booking_app(), plan, now_ms);
            self.ledger
                .charge_keyed(account, &booking, items, mode, &call)
        })?;
        if let Keyed::Done(receipt) = &keyed {
            if receipt.unmapped_items > 0 || receipt.overuse_multiple.is_some() {
                self.raise_alarms(py, actor_obj, items, receipt, receipt.allowance);
            }
        }
        Ok(Some(keyed))
    }

    /// A refund under an idempotency key (the actor has an account: checked by the caller).
    pub(super) fn refund_keyed(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        account: &Account,
        refund: (&str, u64, Option<Money>),
        key: &str,
    ) -> PyResult<Keyed<Receipt>> {
        let now_ms = self.now_ms(py)?;
        let mut builder = FingerprintBuilder::new("refund");
        builder
            .text(actor.booking_app())
            .text(refund.0)
            .number(refund.1)
            .money(refund.2);
        let call = KeyedCall {
            key,
            fingerprint: builder.finish(),
            now_ms,
            kind: KeyKind::Caller,
        };
        if self.fleet().is_some() {
            return self.refund_keyed_on_fleet(py, actor_obj, actor, refund, &call);
        }
        self.with_plan_charging(py, actor_obj, actor, now_ms, |plan| {
            let booking = Booking::at(&actor.user_id, actor.booking_app(), plan, now_ms);
            self.ledger
                .refund_keyed(Some(account), &booking, refund, &call)
        })
    }

    /// `update_addon_credit` under an idempotency key.
    pub(super) fn add_purchased_keyed<'py>(
        &self,
        py: Python<'py>,
        user_id: &str,
        amount: Money,
        key: &str,
    ) -> PyResult<Bound<'py, PyInt>> {
        let now_ms = self.now_ms(py)?;
        let mut builder = FingerprintBuilder::new("update_addon_credit");
        builder.money(Some(amount));
        let call = KeyedCall {
            key,
            fingerprint: builder.finish(),
            now_ms,
            kind: KeyKind::Caller,
        };
        if self.fleet().is_some() {
            let purchased = self.purchase_keyed_on_fleet(py, user_id, amount, &call)?;
            return Ok(money_to_int(py, purchased));
        }
        let purchased = match self
            .ledger
            .add_purchased_keyed(user_id, amount, &call)
            .map_err(ledger_error)?
        {
            Keyed::Done(credit) => credit.purchased,
            Keyed::Replayed(outcome) => outcome.total,
        };
        Ok(money_to_int(py, purchased))
    }

    /// At a charge's plan look-up (the slow path, taken at least once per user and month since
    /// the plan cached in the account expires at the month's end): applies the month's monthly
    /// charges if they are not applied yet. The listeners (`MeteringService._monthly_charges_hook`)
    /// answer None when there is nothing to apply (no listener), False when one failed (it
    /// raised an alarm). A charge the ledger refuses raises a `monthly_charges` alarm. Either
    /// way the month stays unclaimed and the user's call goes on; the allowance just cached in
    /// the account is dropped, so that the user's next charge comes back here and tries again
    /// (without it, the hot path would skip them until the plan expired). `AsyncListenerError`
    /// propagates (the same way): `usagemeter.aio` then prepares the charges and calls again.
    #[cold]
    #[inline(never)]
    pub(super) fn apply_monthly_if_due(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        now_ms: i64,
        allowance: Money,
    ) -> PyResult<()> {
        if actor.is_system {
            return Ok(());
        }
        let month = MonthId::from_epoch_ms(now_ms);
        if self
            .ledger
            .monthly_applied(&actor.user_id, month, now_ms)
            .is_some()
        {
            return Ok(());
        }
        let applied = self.apply_monthly_now(py, actor_obj, actor, month, now_ms, allowance);
        if !matches!(applied, Ok(true)) {
            self.ledger.drop_cached_allowance(&actor.user_id);
        }
        applied.map(|_| ())
    }

    /// `apply_monthly_if_due` once it is due: whether nothing is left to do (applied, or no
    /// listener), or it must be tried again (`Ok(false)`, or an error to raise).
    fn apply_monthly_now(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        month: MonthId,
        now_ms: i64,
        allowance: Money,
    ) -> PyResult<bool> {
        let hooks = self.hooks()?;
        let charges = hooks.monthly_charges.call1(py, (actor_obj,))?;
        if charges.is_none(py) {
            return Ok(true);
        }
        if charges.bind(py).is_instance_of::<PyBool>() {
            return Ok(false); // a listener failed; its alarm is raised
        }
        let applied = owned_items(charges.bind(py)).and_then(|owned| {
            let items = usage_items(&owned)?;
            if self.fleet().is_some() {
                return self.monthly_on_fleet(py, &actor.user_id, &items, allowance, now_ms);
            }
            let booking = Booking::at(&actor.user_id, GLOBAL_APP, Plan::Fixed(allowance), now_ms);
            let account = actor.account.get(&self.ledger, &actor.user_id);
            self.ledger
                .apply_monthly(account, &booking, &items, now_ms)
                .map_err(ledger_error)
        });
        if let Err(error) = applied {
            let message = format!(
                "the monthly charges of {} could not be applied (the next charge tries again): {error}",
                month.label()
            );
            if let Err(error) = hooks
                .raise_alarm
                .call1(py, ("monthly_charges", actor_obj, py.None(), message))
            {
                error.write_unraisable(py, Some(hooks.raise_alarm.bind(py)));
            }
            return Ok(false);
        }
        Ok(true)
    }
}

#[pymethods]
impl MeteringCore {
    /// Applies `charges` (`(usage_type, units, cost µ¢)` items) as the actor's monthly charges of
    /// the current month, billed to the user (not to the actor's app), unless the month's are
    /// applied already. Returns `(applied now, cost µ¢)`: the cost booked now, or the first
    /// time. `MeteringService.apply_monthly_charges` wraps this (the listeners).
    fn _apply_monthly_charges<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        charges: &Bound<'py, PyAny>,
    ) -> PyResult<(bool, Bound<'py, PyInt>)> {
        let actor_ref = as_actor(actor)?;
        let owned = owned_items(charges)?;
        let items = usage_items(&owned)?;
        if actor_ref.is_system {
            self.ensure_open()?;
            return Err(PyValueError::new_err(
                "the system actor is not metered: it has no monthly charges",
            ));
        }
        let now_ms = self.now_ms(py)?;
        if self.fleet().is_some() {
            let allowance = self.budget_of(py, actor, actor_ref)?.allowance;
            let keyed = self.monthly_on_fleet(py, &actor_ref.user_id, &items, allowance, now_ms)?;
            return Ok(match keyed {
                Keyed::Done(receipt) => (true, money_to_int(py, receipt.cost)),
                Keyed::Replayed(outcome) => (false, money_to_int(py, outcome.cost)),
            });
        }
        let account = actor_ref.account.get(&self.ledger, &actor_ref.user_id);
        // The plan without the monthly hook (`with_plan`): this is the monthly charge itself.
        let keyed = self.with_plan(py, actor, actor_ref, now_ms, |plan| {
            let booking = Booking::at(&actor_ref.user_id, GLOBAL_APP, plan, now_ms);
            self.ledger.apply_monthly(account, &booking, &items, now_ms)
        })?;
        Ok(match keyed {
            Keyed::Done(receipt) => (true, money_to_int(py, receipt.cost)),
            Keyed::Replayed(outcome) => (false, money_to_int(py, outcome.cost)),
        })
    }

    /// The cost (µ¢) the actor's monthly charges of the current month booked, or None if they
    /// are not applied yet.
    fn _monthly_charges_applied<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyInt>>> {
        let actor_ref = as_actor(actor)?;
        let now_ms = self.now_ms(py)?;
        if actor_ref.is_system {
            return Ok(None);
        }
        let month = MonthId::from_epoch_ms(now_ms);
        let applied = self
            .ledger
            .monthly_applied(&actor_ref.user_id, month, now_ms);
        Ok(applied.map(|outcome| money_to_int(py, outcome.cost)))
    }

    /// Caller idempotency keys held in memory (tests: the bound and the pruning).
    fn _idempotency_key_count(&self) -> usize {
        self.ledger.key_count()
    }
}
