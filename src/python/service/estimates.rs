//! Cost estimates: what usage would cost, whether an actor can afford several usages at once,
//! and how many units of a type the remaining budget buys. Nothing here records anything.

use pyo3::prelude::*;
use pyo3::types::PyInt;

use super::charges::{owned_items, usage_items};
use super::{as_actor, MeteringCore};
use crate::error::LedgerError;
use crate::python::convert::{self, money_to_int};
use crate::python::errors::ledger_error;

#[pymethods]
impl MeteringCore {
    /// What `amount` units of `usage_type` cost (`cost_override`, if given, is the cost), in µ¢
    /// rounded half up as the reports round; the ledger books the exact cost.
    #[pyo3(signature = (usage_type, amount, cost_override=None, *, service_tier=None))]
    fn cost_of<'py>(
        &self,
        py: Python<'py>,
        usage_type: &Bound<'py, PyAny>,
        amount: &Bound<'py, PyAny>,
        cost_override: Option<&Bound<'py, PyAny>>,
        service_tier: Option<&str>,
    ) -> PyResult<Bound<'py, PyInt>> {
        let owned = [(
            convert::usage_type(usage_type)?,
            convert::units(amount, "amount")?,
            convert::optional_microcents(cost_override, "cost_override")?,
        )];
        let items = owned.map(
            |(usage_type, units, cost_override)| crate::ledger::UsageItem {
                usage_type,
                units,
                cost_override,
            },
        );
        let cost = self
            .estimate(py, &items, service_tier, |items| {
                self.ledger.cost_of_items(items)
            })?
            .map_err(ledger_error)?;
        Ok(money_to_int(py, cost))
    }

    /// What the items (as for `batch_increment_usages`) cost together, in µ¢: the exact sum,
    /// rounded half up once. The items are one request: a size tier counts them together, and
    /// `service_tier` chooses a table's service-tier price.
    #[pyo3(signature = (usages, *, service_tier=None))]
    fn cost_of_usages<'py>(
        &self,
        py: Python<'py>,
        usages: &Bound<'py, PyAny>,
        service_tier: Option<&str>,
    ) -> PyResult<Bound<'py, PyInt>> {
        let owned = owned_items(usages)?;
        let cost = self
            .estimate(py, &usage_items(&owned)?, service_tier, |items| {
                self.ledger.cost_of_items(items)
            })?
            .map_err(ledger_error)?;
        Ok(money_to_int(py, cost))
    }

    /// Whether the user's remaining budget covers all the items together (as for
    /// `batch_increment_usages`): the pre-check of a request that uses several types at once.
    #[pyo3(signature = (actor, usages, *, service_tier=None))]
    fn has_enough_credits_for_usages(
        &self,
        py: Python<'_>,
        actor: &Bound<'_, PyAny>,
        usages: &Bound<'_, PyAny>,
        service_tier: Option<&str>,
    ) -> PyResult<bool> {
        let actor_ref = as_actor(actor)?;
        let owned = owned_items(usages)?;
        let priced = self.estimate(py, &usage_items(&owned)?, service_tier, |items| {
            self.ledger.cost_of_items(items)
        })?;
        let cost = match priced {
            Ok(cost) => Some(cost),
            // A cost beyond the ledger's range is affordable to nobody (but the system actor).
            Err(LedgerError::Overflow(_)) => None,
            Err(error) => return Err(ledger_error(error)),
        };
        self.affords(py, actor, actor_ref, cost)
    }

    /// The most units of `usage_type` the user's remaining budget pays for after the items of
    /// `reserved` (e.g. a prompt's tokens, to cap `max_tokens`): 0 when nothing is left; 2**64-1
    /// for a free usage type and for the system actor, which is never metered.
    #[pyo3(signature = (actor, usage_type, reserved=None))]
    fn affordable_units(
        &self,
        py: Python<'_>,
        actor: &Bound<'_, PyAny>,
        usage_type: &Bound<'_, PyAny>,
        reserved: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let actor_ref = as_actor(actor)?;
        let usage_type = convert::usage_type(usage_type)?;
        let owned = match reserved {
            Some(reserved) if !reserved.is_none() => owned_items(reserved)?,
            _ => Vec::new(),
        };
        let reserved_items = usage_items(&owned)?;
        let price = match self.ledger.cost_of(usage_type, 1) {
            Err(LedgerError::PricedByTable(_)) => {
                self.table_unit_price(py, usage_type, &reserved_items)?
            }
            price => price.map_err(ledger_error)?,
        };
        let priced = self.estimate(py, &reserved_items, None, |items| {
            self.ledger.cost_of_items(items)
        })?;
        let reserved = match priced {
            Ok(cost) => Some(cost),
            Err(LedgerError::Overflow(_)) => None,
            Err(error) => return Err(ledger_error(error)),
        };
        if actor_ref.is_system {
            self.ensure_open()?;
            return Ok(u64::MAX);
        }
        let remaining = self.budget_of(py, actor, actor_ref)?.remaining;
        let Some(left) = reserved.and_then(|cost| remaining.checked_sub(cost)) else {
            return Ok(0);
        };
        if !left.is_positive() {
            return Ok(0);
        }
        if !price.is_positive() {
            return Ok(u64::MAX);
        }
        let units = left.attocents() / price.attocents();
        Ok(u64::try_from(units).unwrap_or(u64::MAX))
    }
}

impl MeteringCore {
    /// The price of one more unit of a table-priced type after `reserved` (the request so far):
    /// the tier the request is in with that unit, at the clock now. A conservative cap: a tier
    /// the units would push the request into is not foreseen.
    #[cold]
    #[inline(never)]
    fn table_unit_price(
        &self,
        py: Python<'_>,
        usage_type: &str,
        reserved: &[crate::ledger::UsageItem<'_>],
    ) -> PyResult<crate::money::Money> {
        let mut items = reserved.to_vec();
        items.push(crate::ledger::UsageItem {
            usage_type,
            units: 1,
            cost_override: None,
        });
        let priced = self.items_by_tables(py, &items, None)?;
        let one = priced.last().and_then(|i| i.cost_override);
        one.ok_or_else(|| ledger_error(LedgerError::PricedByTable(usage_type.to_string())))
    }
}
