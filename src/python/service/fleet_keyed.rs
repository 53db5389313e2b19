//! Keyed calls (idempotency keys, monthly charges) on a fleet: decided and recorded on the
//! shared ledger with their key in one step (`fleet::sync::keyed`), then remembered here.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::MeteringCore;
use crate::fleet::figures::{MonthFigures, UserFigures};
use crate::fleet::sync::{Keyed as FleetKeyed, KeyedWrite};
use crate::ledger::days::Day;
use crate::ledger::idempotency::{monthly_key, Fingerprint, KeyKind, Keyed, KeyedCall, Outcome};
use crate::ledger::month::MonthId;
use crate::ledger::record::UsageCounter;
use crate::ledger::shared_keys::PricedItem;
use crate::ledger::{refund_of_nothing_charged, refund_within, Receipt, UsageItem, REFUND_PREFIX};
use crate::money::Money;
use crate::python::actor::{PyActor, GLOBAL_APP};
use crate::python::errors::{ledger_error, store_error};

/// What a keyed call records, before it is priced against the fleet's figures.
pub(super) enum FleetCall<'a> {
    /// Usage booked to `app` (`strict`: only if the fleet has it free, as `try_*`).
    Charge {
        app: &'a str,
        items: &'a [UsageItem<'a>],
        strict: bool,
    },
    /// A refund of `units` and `cost` of `usage_type` booked to `app`.
    Refund {
        app: &'a str,
        usage_type: &'a str,
        units: u64,
        cost: Money,
    },
    /// Purchased credit.
    Purchase { amount: Money },
}

/// A keyed call's record in the shared ledger: `v1:<fingerprint hex>:<total>:<cost>` (attocents).
fn encode_value(fingerprint: &Fingerprint, outcome: &Outcome) -> Vec<u8> {
    let hex: String = fingerprint.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "v1:{hex}:{}:{}",
        outcome.total.attocents(),
        outcome.cost.attocents()
    )
    .into_bytes()
}

fn decode_value(bytes: &[u8]) -> Option<(Fingerprint, Outcome)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.split(':');
    if parts.next()? != "v1" {
        return None;
    }
    let hex = parts.next()?;
    let mut fingerprint = [0u8; 16];
    if hex.len() != 32 {
        return None;
    }
    for (at, byte) in fingerprint.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * at..2 * at + 2)?, 16).ok()?;
    }
    let money = |part: Option<&str>| Money::from_attocents(part?.parse().ok()?);
    let total = money(parts.next())?;
    let cost = money(parts.next())?;
    Some((fingerprint, Outcome { total, cost }))
}

/// One month's counters of `priced` booked to `app` on `day` (and the day's counters with them).
fn month_of(app: &str, day: Day, priced: &[PricedItem]) -> MonthFigures {
    let mut month = MonthFigures::default();
    for (usage_type, units, cost) in priced {
        let counter = [i128::from(*units), cost.attocents(), 1];
        month
            .counters
            .insert((app.to_string(), usage_type.clone()), counter);
        month.days.insert((day, usage_type.clone()), counter);
    }
    month
}

/// `Ledger::refund`'s check (`refund_within`), on the fleet's figures of the month.
fn check_refund(
    fleet: &UserFigures,
    month: MonthId,
    (app, usage_type, units, cost): (&str, &str, u64, Money),
) -> Result<(), String> {
    let counter = |name: &str| {
        let c = fleet
            .months
            .get(&month)
            .and_then(|m| m.counters.get(&(app.to_string(), name.to_string())))?;
        Some(UsageCounter {
            units: u128::try_from(c[0]).ok()?,
            cost: Money::from_attocents(c[1])?,
            count: u64::try_from(c[2]).ok()?,
        })
    };
    let charged =
        counter(usage_type).ok_or_else(|| refund_of_nothing_charged(usage_type).to_string())?;
    let refunded = counter(&format!("{REFUND_PREFIX}{usage_type}")).unwrap_or_default();
    refund_within(&charged, &refunded, units, cost).map_err(|error| error.to_string())
}

impl MeteringCore {
    /// Runs a keyed call on the fleet's shared ledger: `Ok(None)` when a `strict` charge is not
    /// affordable (nothing recorded, no key kept), else the call done now or replayed. The key is
    /// checked here first (a replay needs no round trip), then decided on the shared ledger,
    /// which records the call and its key together or finds the key there.
    #[allow(clippy::too_many_arguments)] // each is one fact of the call
    pub(super) fn keyed_on_fleet(
        &self,
        py: Python<'_>,
        user_id: &str,
        call: &KeyedCall<'_>,
        month: MonthId,
        allowance: Money,
        what: FleetCall<'_>,
    ) -> PyResult<Option<Keyed<Outcome>>> {
        if let Some(outcome) = self
            .ledger
            .key_replay(user_id, call)
            .map_err(ledger_error)?
        {
            return Ok(Some(Keyed::Replayed(outcome)));
        }
        self.decided_on_fleet(py, user_id, Some(call), call.now_ms, month, allowance, what)
    }

    /// A call decided and recorded on the fleet's shared ledger, with its key (`call`) or with
    /// none (a refund without a key: decided there all the same, so that two workers never give
    /// back the same charge twice).
    #[allow(clippy::too_many_arguments)] // each is one fact of the call
    pub(super) fn decided_on_fleet(
        &self,
        py: Python<'_>,
        user_id: &str,
        call: Option<&KeyedCall<'_>>,
        now_ms: i64,
        month: MonthId,
        allowance: Money,
        what: FleetCall<'_>,
    ) -> PyResult<Option<Keyed<Outcome>>> {
        let Some(fleet) = self.fleet() else {
            return Err(PyValueError::new_err("not a fleet"));
        };
        let (priced, strict) = match &what {
            FleetCall::Charge { items, strict, .. } => (
                self.ledger.priced_items(items).map_err(ledger_error)?.0,
                *strict,
            ),
            _ => (Vec::new(), false),
        };
        let cost_of = |priced: &[PricedItem]| {
            priced
                .iter()
                .try_fold(Money::ZERO, |sum, (_, _, cost)| sum.checked_add(*cost))
        };
        let charge_cost = cost_of(&priced);
        let day = MonthId::with_day_from_epoch_ms(now_ms).1;
        let decide = |fleet_figures: &UserFigures, free: Money| {
            let mut charge = UserFigures::default();
            match &what {
                FleetCall::Charge { app, .. } => {
                    let cost = charge_cost.ok_or("the cost of the call is out of range")?;
                    if strict && cost.is_positive() && free < cost {
                        return Ok(None);
                    }
                    charge.months.insert(month, month_of(app, day, &priced));
                }
                FleetCall::Refund {
                    app,
                    usage_type,
                    units,
                    cost,
                } => {
                    check_refund(fleet_figures, month, (app, usage_type, *units, *cost))?;
                    let name = format!("{REFUND_PREFIX}{usage_type}");
                    let refund = [(name, *units, cost.negated())];
                    charge.months.insert(month, month_of(app, day, &refund));
                }
                FleetCall::Purchase { amount } => {
                    let total = fleet_figures.credit[0] + amount.attocents();
                    if !Money::from_attocents(total).is_some_and(|m| m.fits_record()) {
                        return Err("the user's purchased credit would leave the ledger's range"
                            .to_string());
                    }
                    charge.credit[0] = amount.attocents();
                }
            }
            Ok(Some(charge))
        };
        let outcome_of = |merged: &UserFigures| match &what {
            FleetCall::Purchase { amount } => Outcome {
                total: Money::from_attocents(merged.credit[0]).unwrap_or(Money::ZERO),
                cost: *amount,
            },
            FleetCall::Refund { cost, .. } => Outcome {
                total: month_total(merged, month),
                cost: cost.negated(),
            },
            FleetCall::Charge { .. } => Outcome {
                total: month_total(merged, month),
                cost: charge_cost.unwrap_or(Money::ZERO),
            },
        };
        let fingerprint = call.map_or([0; 16], |call| call.fingerprint);
        let value_of = |merged: &UserFigures| encode_value(&fingerprint, &outcome_of(merged));
        let write = KeyedWrite {
            user_id,
            name: call.map(|call| call.key),
            ttl_ms: call.map_or(0, |call| self.ledger.key_ttl_ms(call)),
            month,
            allowance,
            strict,
            now_ms,
        };
        let written = py
            .detach(|| fleet.keyed_write(&write, &decide, &value_of))
            .map_err(store_error)?;
        let keyed = match written {
            FleetKeyed::Written(merged) => Keyed::Done(outcome_of(&merged)),
            FleetKeyed::Existing(value) => {
                // Only a call with a key names a record that may exist.
                let key = call.map_or("", |call| call.key);
                let Some((stored, outcome)) = decode_value(&value) else {
                    return Err(PyValueError::new_err(format!(
                        "the shared ledger holds an unreadable record of key {key:?}"
                    )));
                };
                if call.is_some_and(|call| call.kind == KeyKind::Caller) && stored != fingerprint {
                    return Err(ledger_error(crate::error::LedgerError::KeyReused(format!(
                        "idempotency key {key:?} was used by a call with another payload (method, \
                         app or items) within its window: use a new key for a new call"
                    ))));
                }
                Keyed::Replayed(outcome)
            }
            FleetKeyed::Refused => return Ok(None),
            FleetKeyed::Invalid(why) => return Err(PyValueError::new_err(why)),
        };
        if let Some(call) = call {
            let (Keyed::Done(outcome) | Keyed::Replayed(outcome)) = keyed;
            self.ledger.remember_key(user_id, call, outcome);
        }
        Ok(Some(keyed))
    }
}

/// The user's month total in merged fleet figures.
fn month_total(figures: &UserFigures, month: MonthId) -> Money {
    let cost = figures.months.get(&month).map_or(0, MonthFigures::cost);
    Money::from_attocents(cost).unwrap_or(Money::ZERO)
}

/// A receipt for a keyed call done on the shared ledger (what the callers read of it).
fn receipt_of(outcome: Outcome, allowance: Money) -> Receipt {
    Receipt {
        accepted: true,
        allowance,
        month_total: outcome.total,
        cost: outcome.cost,
        ..Receipt::default()
    }
}

/// What a keyed call on the fleet returns to the binding's keyed paths.
fn as_receipt(keyed: Option<Keyed<Outcome>>, allowance: Money) -> Keyed<Receipt> {
    match keyed {
        Some(Keyed::Done(outcome)) => Keyed::Done(receipt_of(outcome, allowance)),
        Some(Keyed::Replayed(outcome)) => Keyed::Replayed(outcome),
        None => Keyed::Done(Receipt {
            accepted: false,
            allowance,
            ..Receipt::default()
        }),
    }
}

impl MeteringCore {
    /// The actor's monthly allowance now (its plan resolved as a charge resolves it).
    fn fleet_allowance(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
    ) -> PyResult<Money> {
        Ok(self.budget_of(py, actor_obj, actor)?.allowance)
    }

    /// `charge_keyed` on a fleet.
    pub(super) fn charge_keyed_on_fleet(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        items: &[UsageItem<'_>],
        strict: bool,
        call: &KeyedCall<'_>,
    ) -> PyResult<Keyed<Receipt>> {
        let allowance = self.fleet_allowance(py, actor_obj, actor)?;
        let month = MonthId::from_epoch_ms(call.now_ms);
        let what = FleetCall::Charge {
            app: actor.booking_app(),
            items,
            strict,
        };
        let keyed = self.keyed_on_fleet(py, &actor.user_id, call, month, allowance, what)?;
        Ok(as_receipt(keyed, allowance))
    }

    /// `refund_keyed` on a fleet (`cost` None: the price of `units`).
    pub(super) fn refund_keyed_on_fleet(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        (usage_type, units, cost): (&str, u64, Option<Money>),
        call: &KeyedCall<'_>,
    ) -> PyResult<Keyed<Receipt>> {
        let cost = self
            .ledger
            .refund_cost(usage_type, units, cost)
            .map_err(ledger_error)?;
        let allowance = self.fleet_allowance(py, actor_obj, actor)?;
        let month = MonthId::from_epoch_ms(call.now_ms);
        let what = FleetCall::Refund {
            app: actor.booking_app(),
            usage_type,
            units,
            cost,
        };
        let keyed = self.keyed_on_fleet(py, &actor.user_id, call, month, allowance, what)?;
        Ok(as_receipt(keyed, allowance))
    }

    /// A refund without a key on a fleet (`cost` None: the price of `units`): decided on the
    /// shared ledger's figures, never on this worker's replica alone, which does not hold what
    /// the other workers refunded since the last sync.
    pub(super) fn refund_on_fleet(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        (usage_type, units, cost): (&str, u64, Option<Money>),
        now_ms: i64,
    ) -> PyResult<Receipt> {
        let cost = self
            .ledger
            .refund_cost(usage_type, units, cost)
            .map_err(ledger_error)?;
        let allowance = self.fleet_allowance(py, actor_obj, actor)?;
        let month = MonthId::from_epoch_ms(now_ms);
        let what = FleetCall::Refund {
            app: actor.booking_app(),
            usage_type,
            units,
            cost,
        };
        let keyed =
            self.decided_on_fleet(py, &actor.user_id, None, now_ms, month, allowance, what)?;
        match as_receipt(keyed, allowance) {
            Keyed::Done(receipt) => Ok(receipt),
            // Never: a call without a key finds no record of itself.
            Keyed::Replayed(outcome) => Ok(receipt_of(outcome, allowance)),
        }
    }

    /// `add_purchased_keyed` on a fleet: the user's purchased total after it.
    pub(super) fn purchase_keyed_on_fleet(
        &self,
        py: Python<'_>,
        user_id: &str,
        amount: Money,
        call: &KeyedCall<'_>,
    ) -> PyResult<Money> {
        let month = MonthId::from_epoch_ms(call.now_ms);
        let what = FleetCall::Purchase { amount };
        let keyed = self.keyed_on_fleet(py, user_id, call, month, Money::ZERO, what)?;
        Ok(match keyed {
            Some(Keyed::Done(outcome) | Keyed::Replayed(outcome)) => outcome.total,
            None => Money::ZERO, // a purchase is never refused
        })
    }

    /// A month's monthly charges on a fleet, billed to the user: once across the fleet.
    pub(super) fn monthly_on_fleet(
        &self,
        py: Python<'_>,
        user_id: &str,
        items: &[UsageItem<'_>],
        allowance: Money,
        now_ms: i64,
    ) -> PyResult<Keyed<Receipt>> {
        let month = MonthId::from_epoch_ms(now_ms);
        let key = monthly_key(month);
        let call = KeyedCall {
            key: &key,
            fingerprint: [0; 16],
            now_ms,
            kind: KeyKind::Monthly,
        };
        let what = FleetCall::Charge {
            app: GLOBAL_APP,
            items,
            strict: false,
        };
        let keyed = self.keyed_on_fleet(py, user_id, &call, month, allowance, what)?;
        Ok(as_receipt(keyed, allowance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyed_calls_record_reads_back() {
        let outcome = Outcome {
            total: Money::from_microcents(1_234).unwrap(),
            cost: Money::from_attocents(-7).unwrap(),
        };
        let fingerprint = [0xab; 16];
        let bytes = encode_value(&fingerprint, &outcome);
        assert_eq!(decode_value(&bytes), Some((fingerprint, outcome)));
        for bad in [&b"v2:ab:1:2"[..], b"v1:zz:1:2", b"v1::1:2", b"", b"v1:abab"] {
            assert_eq!(decode_value(bad), None);
        }
    }
}
