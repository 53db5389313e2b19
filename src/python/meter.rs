//! `Meter`: `increment_usage` for one (actor, usage type) pair, resolved once, and
//! `MeteringCore.meter()` that makes one. The method lives here, not in `service/`, so that the
//! service does not import `Meter` while `Meter` imports the service.

use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString};

use super::actor::PyActor;
use super::convert;
use super::errors::ledger_error;
use super::service::{as_actor, MeteringCore};
use crate::ledger::record::TypeId;
use crate::ledger::AccountHandle;

/// `service.meter(actor, usage_type)`: `add(amount)` is `increment_usage(actor, usage_type,
/// amount)`, with the actor's account and the usage type's price found once, when the meter is
/// made, instead of on every call.
#[pyclass(frozen, module = "usagemeter._core", name = "Meter")]
pub struct PyMeter {
    service: Py<MeteringCore>,
    actor: Py<PyActor>,
    usage_type: Py<PyString>,
    /// `None`: the cost map has no price and the service records such usage for free; `add`
    /// then goes through `increment_usage`, which raises the unmapped-usage alarm.
    type_id: Option<TypeId>,
    /// `None` for the system actor, which is never metered.
    account: Option<AccountHandle>,
}

impl PyMeter {
    fn new(
        service: Py<MeteringCore>,
        actor: Py<PyActor>,
        usage_type: Py<PyString>,
        type_id: Option<TypeId>,
        account: Option<AccountHandle>,
    ) -> PyMeter {
        PyMeter {
            service,
            actor,
            usage_type,
            type_id,
            account,
        }
    }
}

#[pymethods]
impl PyMeter {
    /// Records `amount` units; returns the user's month total in µ¢ (as `increment_usage`).
    fn add<'py>(&self, py: Python<'py>, amount: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyInt>> {
        let service = self.service.get();
        let actor_obj = self.actor.bind(py).as_any();
        match (self.type_id, &self.account) {
            (Some(type_id), Some(account)) => {
                service.add_priced(py, actor_obj, self.actor.get(), account, type_id, amount)
            }
            _ => service.increment_usage(
                py,
                actor_obj,
                self.usage_type.bind(py).as_any(),
                amount,
                None,
                None,
            ),
        }
    }

    /// The actor this meter records for.
    #[getter]
    fn actor(&self, py: Python<'_>) -> Py<PyActor> {
        self.actor.clone_ref(py)
    }

    /// The usage type this meter records.
    #[getter]
    fn usage_type(&self, py: Python<'_>) -> Py<PyString> {
        self.usage_type.clone_ref(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Meter({}, {})",
            self.actor.bind(py).repr()?,
            self.usage_type.bind(py).repr()?
        ))
    }
}

#[pymethods]
impl MeteringCore {
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
        core.ensure_open()?;
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
}
