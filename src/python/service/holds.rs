//! Holds (`crate::ledger::holds`): reserve a worst case before a call, settle the real usage
//! after. `usagemeter.holds.Hold` wraps these private methods (defaults, seconds, the context
//! managers).

use std::cell::Cell;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyInt;

use super::charges::{owned_items, usage_items, Wait};
use super::{as_actor, MeteringCore};
use crate::ledger::holds::{Claim, Hold};
use crate::ledger::idempotency::{FingerprintBuilder, KeyKind, Keyed, KeyedCall};
use crate::ledger::{Receipt, UsageItem};
use crate::money::Money;
use crate::python::convert::{self, money_to_int};
use crate::python::errors::ledger_error;

/// A hold as Python sees it: `(id, amount in µ¢ rounded half up, expiry in epoch ms)`.
type HoldTuple<'py> = (u64, Bound<'py, PyInt>, i64);

fn hold_tuple<'py>(py: Python<'py>, hold: &Hold) -> HoldTuple<'py> {
    (hold.id, money_to_int(py, hold.amount), hold.expires_ms)
}

/// A hold's id: the system actor's holds are id 0 and hold nothing.
fn hold_id(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    if obj.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err("a hold id must be an int, not bool"));
    }
    obj.extract::<u64>()
        .map_err(|_| PyValueError::new_err(format!("not a hold id: {obj}")))
}

fn ttl_ms(obj: &Bound<'_, PyAny>) -> PyResult<i64> {
    if obj.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err("ttl_ms must be an int, not bool"));
    }
    obj.extract::<i64>()
        .map_err(|_| PyValueError::new_err(format!("ttl_ms out of range: {obj}")))
}

#[pymethods]
impl MeteringCore {
    /// Reserves `cost` µ¢, or what the batch `usages` would cost, for `ttl_ms`, if the actor's
    /// remaining budget net of its outstanding holds covers it: `(id, amount, expires_ms)`, or
    /// None (nothing held). Exactly one of `cost` and `usages` is given. On a fleet the hold is
    /// kept in the worker's budget lease (asked for if needed, as `try_increment_usage` does).
    #[pyo3(signature = (actor, cost, usages, ttl_ms, service_tier=None))]
    fn _reserve<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        cost: Option<&Bound<'py, PyAny>>,
        usages: Option<&Bound<'py, PyAny>>,
        ttl_ms: &Bound<'py, PyAny>,
        service_tier: Option<&str>,
    ) -> PyResult<Option<HoldTuple<'py>>> {
        let actor_ref = as_actor(actor)?;
        let ttl_ms = self::ttl_ms(ttl_ms)?;
        let owned = match usages {
            Some(usages) if !usages.is_none() => Some(owned_items(usages)?),
            _ => None,
        };
        let cost = convert::optional_microcents(cost, "cost")?;
        let amount = match (cost, &owned) {
            (Some(cost), None) => cost,
            (None, Some(owned)) => self
                .estimate(py, &usage_items(owned)?, service_tier, |items| {
                    self.ledger.cost_of_items(items)
                })?
                .map_err(ledger_error)?,
            _ => {
                return Err(PyValueError::new_err(
                    "reserve takes either cost (µ¢) or usages, exactly one of them",
                ))
            }
        };
        if actor_ref.is_system {
            // Never metered: a hold of nothing, which settles nothing.
            let expires_ms = self.now_ms(py)?.saturating_add(ttl_ms);
            return Ok(Some((0, money_to_int(py, amount), expires_ms)));
        }
        let id = self.ledger.new_hold_id();
        // As for `try_*`: a refused reserve does not make the account of a user never charged.
        let account = actor_ref.account.existing(&self.ledger, &actor_ref.user_id);
        // The expiry is set from the clock as the charge reads it (once per call).
        let now_ms = Cell::new(0);
        let receipt = self.charge_with(py, actor, actor_ref, &[], Wait::Allowed, |booking| {
            now_ms.set(booking.now_ms);
            self.ledger.reserve(account, booking, id, amount, ttl_ms)
        })?;
        if !receipt.accepted {
            self.refused();
            return Ok(None);
        }
        let hold = Hold {
            id,
            amount,
            expires_ms: now_ms.get() + ttl_ms, // checked by `reserve`
        };
        Ok(Some(hold_tuple(py, &hold)))
    }

    /// Records the real usage of hold `hold_id` (the batch `usages`, or `cost` µ¢ booked as
    /// `usage_type`) and removes the hold, atomically: `(month total, whether the hold was
    /// still live)`. The usage is recorded even if the hold expired. Bad input changes nothing;
    /// a hold settled or released before raises `HoldSettledError` and records nothing.
    ///
    /// With `idempotency_key`, a retry settles nothing and returns the first settle's total
    /// (and False).
    #[pyo3(signature = (actor, hold_id, usages=None, cost=None, usage_type=None, idempotency_key=None, service_tier=None))]
    #[allow(clippy::too_many_arguments)] // one per argument of `Hold.settle`
    fn _settle<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        hold_id: &Bound<'py, PyAny>,
        usages: Option<&Bound<'py, PyAny>>,
        cost: Option<&Bound<'py, PyAny>>,
        usage_type: Option<&Bound<'py, PyAny>>,
        idempotency_key: Option<&Bound<'py, PyAny>>,
        service_tier: Option<&str>,
    ) -> PyResult<(Bound<'py, PyInt>, bool)> {
        let key = convert::idempotency_key(idempotency_key)?;
        let actor_ref = as_actor(actor)?;
        let id = self::hold_id(hold_id)?;
        let owned = match usages {
            Some(usages) if !usages.is_none() => Some(owned_items(usages)?),
            _ => None,
        };
        let cost = convert::optional_microcents(cost, "cost")?;
        let items: Vec<UsageItem<'_>> = match (&owned, cost, usage_type) {
            // A settle is out of line: table-priced items are priced for the request here.
            (Some(owned), None, None) if self.ledger.cost_map().has_tables() => {
                self.items_by_tables(py, &usage_items(owned)?, service_tier)?
            }
            (Some(owned), None, None) => usage_items(owned)?,
            (None, Some(cost), Some(usage_type)) if !usage_type.is_none() => vec![UsageItem {
                usage_type: convert::usage_type(usage_type)?,
                units: 0,
                cost_override: Some(cost),
            }],
            _ => {
                return Err(PyValueError::new_err(
                    "settle takes usages, or cost (µ¢) with the usage type to book it as",
                ))
            }
        };
        if actor_ref.is_system {
            self.ensure_open()?;
            for item in &items {
                self.ledger.check_item(item).map_err(ledger_error)?;
            }
            return Ok((money_to_int(py, Money::ZERO), id == 0));
        }
        let account = actor_ref.account.get(&self.ledger, &actor_ref.user_id);
        let was_live = Cell::new(false);
        let Some(key) = key else {
            let receipt =
                self.charge_with(py, actor, actor_ref, &items, Wait::Allowed, |booking| {
                    let (receipt, hold) = self.ledger.settle(account, booking, id, &items)?;
                    was_live.set(hold.is_some());
                    Ok(receipt)
                })?;
            return Ok((money_to_int(py, receipt.month_total), was_live.get()));
        };
        let mut fingerprint = FingerprintBuilder::new("settle");
        fingerprint.number(id).text(actor_ref.booking_app());
        for item in &items {
            fingerprint
                .text(item.usage_type)
                .number(item.units)
                .money(item.cost_override);
        }
        let fingerprint = fingerprint.finish();
        if self.fleet().is_some() {
            // Recorded on the shared ledger with its key; the hold is this worker's to drop.
            let now_ms = self.now_ms(py)?;
            let call = KeyedCall {
                key,
                fingerprint,
                now_ms,
                kind: KeyKind::Caller,
            };
            // The hold is taken first, under the account's lock: of two settles of one hold
            // (threads, handles, keys), one reaches the fleet; the other is refused, or (with
            // the same key) is a retry that the shared ledger replays.
            let claim = self
                .ledger
                .claim_settle(&actor_ref.user_id, id, key, now_ms)
                .map_err(ledger_error)?;
            let keyed = self.charge_keyed_on_fleet(py, actor, actor_ref, &items, false, &call);
            let taken = match claim {
                Claim::Taken(hold) => hold,
                Claim::Retry => None,
            };
            let keyed = match keyed {
                Ok(keyed) => keyed,
                Err(error) => {
                    if let Claim::Taken(hold) = claim {
                        // Nothing settled it: the hold is outstanding again, for a retry.
                        self.ledger.unclaim_settle(&actor_ref.user_id, id, hold);
                    }
                    return Err(error);
                }
            };
            let total = match keyed {
                Keyed::Done(receipt) => {
                    was_live.set(taken.is_some());
                    receipt.month_total
                }
                Keyed::Replayed(outcome) => outcome.total,
            };
            return Ok((money_to_int(py, total), was_live.get()));
        }
        let replayed = Cell::new(None);
        let receipt = self.charge_with(py, actor, actor_ref, &items, Wait::Allowed, |booking| {
            let call = KeyedCall {
                key,
                fingerprint,
                now_ms: booking.now_ms,
                kind: KeyKind::Caller,
            };
            match self
                .ledger
                .settle_keyed(account, booking, id, &items, &call)?
            {
                Keyed::Done((receipt, hold)) => {
                    was_live.set(hold.is_some());
                    Ok(receipt)
                }
                Keyed::Replayed(outcome) => {
                    replayed.set(Some(outcome.total));
                    // Nothing was recorded now: no alarm to raise.
                    Ok(Receipt {
                        accepted: true,
                        month_total: outcome.total,
                        ..Receipt::default()
                    })
                }
            }
        })?;
        let total = replayed.get().unwrap_or(receipt.month_total);
        Ok((money_to_int(py, total), was_live.get()))
    }

    /// Removes hold `hold_id`; whether it was still live (False: expired or unknown). A hold
    /// settled or released before raises `HoldSettledError`.
    fn _release(
        &self,
        py: Python<'_>,
        actor: &Bound<'_, PyAny>,
        hold_id: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let actor_ref = as_actor(actor)?;
        let id = self::hold_id(hold_id)?;
        let now_ms = self.now_ms(py)?;
        if actor_ref.is_system {
            return Ok(id == 0);
        }
        let hold = self
            .ledger
            .release(&actor_ref.user_id, id, now_ms)
            .map_err(ledger_error)?;
        Ok(hold.is_some())
    }

    /// Makes hold `hold_id` expire `ttl_ms` from now: its new expiry (epoch ms), or None when
    /// it is no longer live (an expired hold is not revived).
    fn _extend(
        &self,
        py: Python<'_>,
        actor: &Bound<'_, PyAny>,
        hold_id: &Bound<'_, PyAny>,
        ttl_ms: &Bound<'_, PyAny>,
    ) -> PyResult<Option<i64>> {
        let actor_ref = as_actor(actor)?;
        let id = self::hold_id(hold_id)?;
        let ttl_ms = self::ttl_ms(ttl_ms)?;
        let now_ms = self.now_ms(py)?;
        if actor_ref.is_system {
            return Ok((id == 0).then(|| now_ms.saturating_add(ttl_ms)));
        }
        let hold = self
            .ledger
            .extend(&actor_ref.user_id, id, ttl_ms, now_ms)
            .map_err(ledger_error)?;
        Ok(hold.map(|hold| hold.expires_ms))
    }

    /// The actor's live holds, `(id, amount µ¢, expires_ms)` each, oldest first.
    fn _holds<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
    ) -> PyResult<Vec<HoldTuple<'py>>> {
        let actor_ref = as_actor(actor)?;
        let now_ms = self.now_ms(py)?;
        if actor_ref.is_system {
            return Ok(Vec::new());
        }
        let holds = self.ledger.holds(&actor_ref.user_id, now_ms);
        Ok(holds.iter().map(|hold| hold_tuple(py, hold)).collect())
    }
}
