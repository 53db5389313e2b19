//! The budget (allowance, purchased credit, overage and what remains this month) and the
//! credit checks that read it.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt};

use super::{as_actor, MeteringCore};
use crate::error::LedgerError;
use crate::ledger::month::MonthId;
use crate::ledger::pools::RoundedBudget;
use crate::ledger::{Budget, Plan};
use crate::money::Money;
use crate::python::actor::PyActor;
use crate::python::convert;
use crate::python::errors::ledger_error;

fn not_metered() -> PyErr {
    PyValueError::new_err("the system actor is not metered: it has no budget")
}

/// `{"purchased_credits", "consumed_purchase_credits"}` of a budget.
fn addons_dict<'py>(py: Python<'py>, budget: &RoundedBudget) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("purchased_credits", budget.purchased)?;
    dict.set_item("consumed_purchase_credits", budget.consumed)?;
    Ok(dict)
}

impl MeteringCore {
    fn budget(&self, py: Python<'_>, actor_obj: &Bound<'_, PyAny>) -> PyResult<Budget> {
        self.budget_of(py, actor_obj, as_actor(actor_obj)?)
    }

    /// `budget` for an actor already extracted (the credit checks have it in hand).
    pub(super) fn budget_of(
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
        // A read: the kept (or now kept) account if the user has one; never creates one.
        self.with_plan(py, actor_obj, actor, now_ms, |plan| {
            match actor.account.existing(&self.ledger, &actor.user_id) {
                Some(account) => self.ledger.budget_in(account, month, plan, now_ms),
                None => self.ledger.budget(&actor.user_id, month, plan, now_ms),
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
        Ok(
            RoundedBudget::of(budget.allowance, &budget.pools, &budget.credit)
                .with_held(budget.held),
        )
    }

    /// Whether the actor can pay `cost` (`None`: a cost beyond the ledger's range).
    pub(super) fn affords(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        cost: Option<Money>,
    ) -> PyResult<bool> {
        if actor.is_system {
            self.ensure_open()?; // others are refused when `budget_of` reads the clock
            return Ok(true);
        }
        let Some(cost) = cost else {
            self.ensure_open()?;
            return Ok(false);
        };
        Ok(self.budget_of(py, actor_obj, actor)?.remaining >= cost)
    }
}

#[pymethods]
impl MeteringCore {
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
            // Out of line: a table prices it (its units alone are the request).
            Err(LedgerError::PricedByTable(_)) => self.table_cost(py, usage_type, units)?,
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

    /// Whether the user has budget left this month (`remaining > 0`): the spending gate of the
    /// seed system's `hasAnyUsage`. True for the system actor, which is never metered.
    fn has_any_usage(&self, py: Python<'_>, actor: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.ensure_open()?;
        let actor_ref = as_actor(actor)?;
        if actor_ref.is_system {
            return Ok(true);
        }
        Ok(self
            .budget_of(py, actor, actor_ref)?
            .remaining
            .is_positive())
    }

    /// Whether the user recorded any usage this month (False for the system actor).
    fn has_usage_this_month(&self, py: Python<'_>, actor: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.ensure_open()?;
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
        dict.set_item("held", budget.held)?;
        dict.set_item("remaining", budget.remaining)?;
        Ok(dict)
    }

    /// `{"purchased_credits", "consumed_purchase_credits"}` in µ¢ (lifetime).
    fn get_actor_addons<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.ensure_open()?;
        let actor = as_actor(actor)?;
        let budget = match actor.is_system {
            true => RoundedBudget::default(),
            false => {
                let now_ms = self.now_ms(py)?;
                let budget = self
                    .ledger
                    .budget(
                        &actor.user_id,
                        MonthId::from_epoch_ms(now_ms),
                        Plan::Fixed(Money::ZERO),
                        now_ms,
                    )
                    .map_err(ledger_error)?;
                RoundedBudget::of(Money::ZERO, &budget.pools, &budget.credit)
            }
        };
        addons_dict(py, &budget)
    }
}

impl MeteringCore {
    /// `units` of a table-priced type as one request now (`None`: beyond the ledger's range).
    #[cold]
    #[inline(never)]
    fn table_cost(
        &self,
        py: Python<'_>,
        usage_type: &str,
        units: u64,
    ) -> PyResult<Option<crate::money::Money>> {
        let item = crate::ledger::UsageItem {
            usage_type,
            units,
            cost_override: None,
        };
        match self.ledger.with_tables(&[item], None, self.now_ms(py)?) {
            Ok(priced) => Ok(priced[0].cost_override),
            Err(LedgerError::Overflow(_)) => Ok(None),
            Err(error) => Err(ledger_error(error)),
        }
    }
}
