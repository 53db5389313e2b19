//! Usage reports: a user's month (by usage type and by app), one app's share, and the totals
//! over all users. An app actor reads only its own app's records.

use pyo3::exceptions::{PyPermissionError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt};

use super::{as_actor, MeteringCore};
use crate::ledger::days::{DayReport, UNDATED};
use crate::ledger::month::MonthId;
use crate::ledger::record::UsageReport;
use crate::ledger::Ledger;
use crate::money::Money;
use crate::python::actor::{PyActor, OTHER_APPS};
use crate::python::convert::money_to_int;
use crate::python::errors::ledger_error;

fn parse_month(label: &str) -> PyResult<MonthId> {
    MonthId::parse(label)
        .ok_or_else(|| PyValueError::new_err(format!("month must be 'YYYY-MM', got {label:?}")))
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
        let entry = figures_dict(py, counter.units, counter.cost, counter.count)?;
        dict.set_item(&*ledger.type_name(*usage_type), entry)?;
    }
    Ok(dict)
}

/// `{"units", "cost": µ¢, "count"}`: one usage type's figures.
fn figures_dict(
    py: Python<'_>,
    units: u128,
    cost: Money,
    count: u128,
) -> PyResult<Bound<'_, PyDict>> {
    let entry = PyDict::new(py);
    entry.set_item("units", units)?;
    entry.set_item("cost", money_to_int(py, cost))?;
    entry.set_item("count", count)?;
    Ok(entry)
}

/// `{"total": µ¢, "count": int, "by_type": {"<type>": {"units", "cost", "count"}}}`: one day.
fn day_dict<'py>(
    py: Python<'py>,
    ledger: &Ledger,
    day: &DayReport,
) -> PyResult<Bound<'py, PyDict>> {
    let by_type = PyDict::new(py);
    for (usage_type, c) in &day.by_type {
        let entry = figures_dict(py, c.units, c.cost, u128::from(c.count))?;
        by_type.set_item(&*ledger.type_name(*usage_type), entry)?;
    }
    let dict = PyDict::new(py);
    dict.set_item("total", money_to_int(py, day.total))?;
    dict.set_item("count", day.count)?;
    dict.set_item("by_type", by_type)?;
    Ok(dict)
}

fn totals_dict<'py>(py: Python<'py>, total: Money, count: u128) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("total", money_to_int(py, total))?;
    dict.set_item("count", count)?;
    Ok(dict)
}

impl MeteringCore {
    /// Refuses an app actor reading another app's records (checked before anything is read).
    /// The user's own usage without an app (`os-global`) is another app's record too: an app
    /// sees its own record, and the user's other usage only summed into `others`.
    fn check_app_access(actor: &PyActor, app_id: &str) -> PyResult<()> {
        match &actor.app_id {
            Some(own) if own != app_id => Err(PyPermissionError::new_err(format!(
                "app {own:?} may not read the usage of app {app_id:?}"
            ))),
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
        self.ensure_open()?;
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
        self.ensure_open()?;
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

    /// The user's month (`YYYY-MM`, default: this month) per UTC day, over all apps:
    /// `{"month", "days": {"YYYY-MM-DD": {"total", "count", "by_type"}}, "undated"}`.
    #[pyo3(signature = (actor, month=None))]
    fn get_actor_usage_by_day<'py>(
        &self,
        py: Python<'py>,
        actor: &Bound<'py, PyAny>,
        month: Option<&str>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.ensure_open()?;
        let actor = as_actor(actor)?;
        let month = match month {
            Some(label) => parse_month(label)?,
            None => self.month_now(py)?,
        };
        let reports = match actor.is_system {
            true => Vec::new(),
            false => self.ledger.user_days(&actor.user_id, month),
        };
        let days = PyDict::new(py);
        let mut undated = None;
        let label = month.label();
        for report in &reports {
            let dict = day_dict(py, &self.ledger, report)?;
            match report.day {
                UNDATED => undated = Some(dict),
                day => days.set_item(format!("{label}-{day:02}"), dict)?,
            }
        }
        let result = PyDict::new(py);
        result.set_item("month", label)?;
        result.set_item("days", days)?;
        result.set_item("undated", undated)?;
        Ok(result)
    }

    /// `(plan id, monthly allowance µ¢)` of the plan `user_id` was last resolved to (kept in the
    /// store), or None: for reports on a store, where the application's plan events do not run.
    fn _last_plan<'py>(
        &self,
        py: Python<'py>,
        user_id: &str,
    ) -> PyResult<Option<(String, Bound<'py, PyInt>)>> {
        self.ensure_open()?;
        Ok(self
            .ledger
            .last_plan(user_id)
            .map(|(id, allowance)| (id, money_to_int(py, allowance))))
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
}
